// Thread-count setting shared by every op.
#include <atomic>
#include <thread>

#include "normcpp/normcpp.hpp"
#include "ops/parallel.hpp"

namespace normcpp {
namespace {

int default_threads() {
#ifdef _OPENMP
  const int n = omp_get_max_threads();
#else
  const int n = 1;
#endif
  return n < 1 ? 1 : n;
}

std::atomic<int>& thread_setting() {
  static std::atomic<int> n{default_threads()};
  return n;
}

}  // namespace

namespace ops {
int configured_threads() { return thread_setting().load(std::memory_order_relaxed); }
}  // namespace ops

void set_num_threads(int n) { thread_setting().store(n > 0 ? n : default_threads()); }
int get_num_threads() { return thread_setting().load(); }

bool has_openmp() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}

}  // namespace normcpp
