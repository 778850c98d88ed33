// Thread-count setting shared by every op.
#include <atomic>
#include <thread>

#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#endif

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

std::atomic<int>& thread_setting();

#if defined(__unix__) || defined(__APPLE__)
std::atomic<bool> g_forked{false};

// A forked child cannot use the parent's OpenMP pool (GNU libgomp hangs in it), and forked
// workers would oversubscribe the cores anyway: a forked child always runs serially.
void drop_to_one_thread_in_child() {
  g_forked.store(true);
  thread_setting().store(1);
}
#endif

std::atomic<int>& thread_setting() {
  static std::atomic<int> n{[] {
#if defined(__unix__) || defined(__APPLE__)
    pthread_atfork(nullptr, nullptr, &drop_to_one_thread_in_child);
#endif
    return default_threads();
  }()};
  return n;
}

}  // namespace

namespace ops {
int configured_threads() { return thread_setting().load(std::memory_order_relaxed); }
}  // namespace ops

void set_num_threads(int n) {
#if defined(__unix__) || defined(__APPLE__)
  if (g_forked.load()) return;  // see drop_to_one_thread_in_child
#endif
  thread_setting().store(n > 0 ? n : default_threads());
}
int get_num_threads() { return thread_setting().load(); }

bool has_openmp() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}

}  // namespace normcpp
