// Cache-line arithmetic shared by the kernel files.
#pragma once

#include <cstdint>

namespace normcpp {

// Elements of T from p to the next 64-byte line boundary (0 on a line, or where p is not a
// multiple of sizeof(T)). static: each ISA's kernel file keeps its own copy (see half.hpp).
template <class T>
static inline std::int64_t line_lead(const T* p) {
  const auto addr = reinterpret_cast<std::uintptr_t>(p);
  return addr % sizeof(T) != 0 ? 0
                                : static_cast<std::int64_t>((64 - addr % 64) % 64 / sizeof(T));
}

}  // namespace normcpp
