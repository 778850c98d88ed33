// The test suites of the normcpp C++ test binary (main.cpp runs them).
#pragma once

#include <string>

namespace nt {

// Every op against the scalar reference with the currently selected ISA level `isa`.
void suite_ops(const std::string& isa);
// Bitwise identical results for 1, 2 and 3 threads, with the currently selected ISA level.
void suite_threads(const std::string& isa);
// Invalid arguments throw std::invalid_argument and change nothing; ISA selection errors.
void suite_invalid();

}  // namespace nt
