// Run-time ISA dispatch: the best compiled level this CPU supports, chosen on first use;
// select_isa() forces a lower one (NORMCPP_ISA in Python, for tests).
#include <atomic>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/image_kernels.hpp"
#include "kernels/kernels.hpp"
#include "normcpp/normcpp.hpp"

namespace normcpp {
namespace kernels {

#define NORMCPP_DECLARE_LEVEL(ns)        \
  namespace ns {                         \
  const KernelTable& table();            \
  const ImageKernelTable& image_table(); \
  }
#ifdef NORMCPP_HAVE_BASELINE
NORMCPP_DECLARE_LEVEL(baseline)
#endif
#ifdef NORMCPP_HAVE_AVX2
NORMCPP_DECLARE_LEVEL(avx2)
#endif
#ifdef NORMCPP_HAVE_AVX512
NORMCPP_DECLARE_LEVEL(avx512)
#endif
#ifdef NORMCPP_HAVE_NEON
NORMCPP_DECLARE_LEVEL(neon)
#endif

namespace {

struct Level {
  const char* name;
  const KernelTable& (*table)();
  bool (*runs_here)();
  const ImageKernelTable& (*image)();
};

bool always() { return true; }
#if defined(__x86_64__) || defined(__i386__)
bool cpu_avx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
         __builtin_cpu_supports("f16c");
}
bool cpu_avx512() {
  __builtin_cpu_init();
  return cpu_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
}
#endif

// Lowest level first.
const std::vector<Level>& levels() {
  static const std::vector<Level> all = {
#ifdef NORMCPP_HAVE_BASELINE
      {"baseline", &baseline::table, &always, &baseline::image_table},
#endif
#ifdef NORMCPP_HAVE_NEON
      {"neon", &neon::table, &always, &neon::image_table},
#endif
#ifdef NORMCPP_HAVE_AVX2
      {"avx2", &avx2::table, &cpu_avx2, &avx2::image_table},
#endif
#ifdef NORMCPP_HAVE_AVX512
      {"avx512", &avx512::table, &cpu_avx512, &avx512::image_table},
#endif
  };
  return all;
}

const KernelTable* best() {
  const KernelTable* t = nullptr;
  for (const Level& l : levels())
    if (l.runs_here()) t = &l.table();
  return t;
}

std::atomic<const KernelTable*>& current() {
  static std::atomic<const KernelTable*> t{best()};
  return t;
}

}  // namespace

const KernelTable& active() { return *current().load(std::memory_order_relaxed); }

const ImageKernelTable& active_image() {
  const KernelTable* t = &active();
  for (const Level& l : levels())
    if (&l.table() == t) return l.image();
  return levels().front().image();
}

}  // namespace kernels

std::vector<std::string> compiled_isas() {
  std::vector<std::string> out;
  for (const auto& l : kernels::levels()) out.emplace_back(l.name);
  return out;
}

std::vector<std::string> supported_isas() {
  std::vector<std::string> out;
  for (const auto& l : kernels::levels())
    if (l.runs_here()) out.emplace_back(l.name);
  return out;
}

std::string selected_isa() { return kernels::active().name; }

void select_isa(const std::string& name) {
  for (const auto& l : kernels::levels()) {
    if (name != l.name) continue;
    if (!l.runs_here())
      throw std::runtime_error("ISA level '" + name + "' is compiled in but this CPU lacks it");
    kernels::current().store(&l.table(), std::memory_order_relaxed);
    return;
  }
  std::string known;
  for (const auto& l : kernels::levels()) known += (known.empty() ? "" : ", ") + std::string(l.name);
  throw std::invalid_argument("unknown ISA level '" + name + "' (compiled: " + known + ")");
}

const char* version() { return NORMCPP_VERSION; }

}  // namespace normcpp
