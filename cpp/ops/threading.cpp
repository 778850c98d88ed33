// Thread-count setting shared by every op.
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <thread>

#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#include <unistd.h>
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

// NORMCPP_STREAM_BYTES, if set to a valid byte count.
bool env_stream_bytes(std::int64_t* bytes) {
  if (const char* env = std::getenv("NORMCPP_STREAM_BYTES")) {
    char* end = nullptr;
    const long long v = std::strtoll(env, &end, 10);
    if (end != env && *end == '\0' && v >= 0) {
      *bytes = static_cast<std::int64_t>(v);
      return true;
    }
  }
  return false;
}

std::int64_t default_stream_threshold() {
  std::int64_t env = 0;
  if (env_stream_bytes(&env)) return env;
  constexpr std::int64_t kMiB = 1024 * 1024;
  std::int64_t llc = 0;
#if defined(_SC_LEVEL3_CACHE_SIZE)
  llc = static_cast<std::int64_t>(sysconf(_SC_LEVEL3_CACHE_SIZE));
  if (llc <= 0) llc = static_cast<std::int64_t>(sysconf(_SC_LEVEL2_CACHE_SIZE));
#endif
  // An eighth of the reported last-level cache, within [2, 4] MiB: virtual machines report
  // the host's whole L3 (256 MiB on this project's 2-core EPYC VM), of which a core's share is
  // far smaller. Measured there (repeated out-of-place calls, 1 thread): at 3.2 MB plain
  // stores win (BN train 259 vs 314 us), at 6.4 MB streaming wins (1118 vs 664 us).
  if (llc <= 0) return 4 * kMiB;
  const std::int64_t q = llc / 8;
  return q < 2 * kMiB ? 2 * kMiB : (q > 4 * kMiB ? 4 * kMiB : q);
}

std::atomic<std::int64_t>& stream_setting() {
  static std::atomic<std::int64_t> b{default_stream_threshold()};
  return b;
}

// Whether the threshold is the automatic one (also subject to the L2 rule of
// ops::stream_output) rather than set by NORMCPP_STREAM_BYTES or set_stream_threshold.
std::atomic<bool>& stream_auto() {
  static std::atomic<bool> a{[] {
    std::int64_t env = 0;
    return !env_stream_bytes(&env);
  }()};
  return a;
}

}  // namespace

namespace ops {
int configured_threads() { return thread_setting().load(std::memory_order_relaxed); }
std::int64_t l2_cache_bytes() {
  static const std::int64_t b = [] {
    std::int64_t v = 0;
#if defined(_SC_LEVEL2_CACHE_SIZE)
    v = static_cast<std::int64_t>(sysconf(_SC_LEVEL2_CACHE_SIZE));
#endif
    return v > 0 ? v : std::int64_t{0};
  }();
  return b;
}
std::int64_t stream_threshold() { return stream_setting().load(std::memory_order_relaxed); }
bool stream_threshold_is_auto() { return stream_auto().load(std::memory_order_relaxed); }
}  // namespace ops

void set_stream_threshold(std::int64_t bytes) {
  stream_setting().store(bytes < 0 ? default_stream_threshold() : bytes);
  std::int64_t env = 0;
  stream_auto().store(bytes < 0 && !env_stream_bytes(&env));
}
std::int64_t get_stream_threshold() { return stream_setting().load(); }

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
