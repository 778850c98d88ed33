// Thread-count setting shared by every op.
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <thread>

#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#include <unistd.h>
#endif
#if defined(__linux__)
#include <sched.h>
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

// Size in bytes of cpu0's level-`level` data or unified cache, 0 if unknown. Linux's sysfs
// first: inside a virtual machine glibc's sysconf reads CPUID's host-wide figure (320 MiB of
// L3 on a 2-core EPYC VM whose sysfs, like lscpu, says 32 MiB).
std::int64_t read_cache_bytes(int level) {
  std::int64_t v = 0;
#if defined(__linux__)
  for (int i = 0; i < 8 && v == 0; ++i) {
    char path[96];
    std::snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/level", i);
    std::FILE* f = std::fopen(path, "r");
    if (!f) break;
    int lv = 0;
    const bool ok = std::fscanf(f, "%d", &lv) == 1;
    std::fclose(f);
    if (!ok || lv != level) continue;
    std::snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/type", i);
    char type[32] = {0};
    if ((f = std::fopen(path, "r"))) {
      if (std::fscanf(f, "%31s", type) != 1) type[0] = 0;
      std::fclose(f);
    }
    if (type[0] == 'I') continue;  // instruction cache
    std::snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/size", i);
    if ((f = std::fopen(path, "r"))) {
      long long n = 0;
      char unit = 0;
      const int got = std::fscanf(f, "%lld%c", &n, &unit);
      std::fclose(f);
      if (got >= 1 && n > 0)
        v = n * (got == 2 && unit == 'K' ? 1024 : got == 2 && unit == 'M' ? 1024 * 1024 : 1);
    }
  }
#endif
#if defined(_SC_LEVEL2_CACHE_SIZE) && defined(_SC_LEVEL3_CACHE_SIZE)
  if (v <= 0)
    v = static_cast<std::int64_t>(
        sysconf(level == 2 ? _SC_LEVEL2_CACHE_SIZE : _SC_LEVEL3_CACHE_SIZE));
#endif
  return v > 0 ? v : 0;
}
std::int64_t cache_bytes(int level) {  // read once (set_stream_threshold(-1) asks again)
  static const std::int64_t l2 = read_cache_bytes(2), l3 = read_cache_bytes(3);
  return level == 2 ? l2 : l3;
}

std::int64_t cache_stream_bytes() {
  constexpr std::int64_t kMiB = 1024 * 1024;
  // A fit to the three machines measured (repeated out-of-place calls, plain vs streamed
  // stores; bench/SCALING.md):
  // - 2-core Zen 3 VM, 32 MiB L3, 512 KiB L2: at 1 thread plain wins at 3.2 MB (BN train
  //   259 vs 314 us), streaming at 6.4 MB (1118 vs 664 us);
  // - 2-core Zen 4 VM, 32 MiB L3, 1 MiB L2: at 1 thread plain wins at 6.4 MB (BN eval 204 vs
  //   249 us), 8 MB is a tie, streaming wins at 10.4 MB (559 vs 417 us);
  // - 16-core Xeon, 300 MiB L3, 2 MiB L2: streaming wins at 6.4 MB from 1 to 8 threads.
  // So: 4 MiB under a last-level cache over 64 MiB (the Xeon's shared mesh L3, which did not
  // keep a 12.8 MB working set for the next call); otherwise a quarter of it (input and
  // output in half the cache) but at most 8 L2s, and at least 2 MiB.
  const std::int64_t llc = cache_bytes(3), l2 = cache_bytes(2);
  if (llc <= 0 || llc > 64 * kMiB) return 4 * kMiB;
  std::int64_t q = llc / 4;
  if (l2 > 0 && q > 8 * l2) q = 8 * l2;
  return q < 2 * kMiB ? 2 * kMiB : q;
}

std::int64_t default_stream_threshold() {
  std::int64_t env = 0;
  if (env_stream_bytes(&env)) return env;
  return ops::memory_bound_bytes();
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

#if defined(__linux__)
int current_cpu() { return sched_getcpu(); }

void leave_cpu(int cpu) {
  if (cpu < 0 || cpu >= CPU_SETSIZE || sched_getcpu() != cpu) return;
  // The CPUs this thread may use apart from normcpp's moves: its mask when first moved, or
  // whatever mask someone else has set since (then not the one normcpp last set).
  thread_local cpu_set_t allowed, last;
  thread_local bool moved = false;
  cpu_set_t now;
  if (sched_getaffinity(0, sizeof now, &now) != 0) return;
  if (!moved || !CPU_EQUAL(&now, &last)) allowed = now;
  cpu_set_t set = allowed;
  const auto c = static_cast<std::size_t>(cpu);
  if (!CPU_ISSET(c, &set) || CPU_COUNT(&set) < 2) return;
  CPU_CLR(c, &set);
  if (sched_setaffinity(0, sizeof set, &set) != 0) return;  // best effort: the thread stays
  last = set;
  moved = true;
}
#else
int current_cpu() { return -1; }
void leave_cpu(int) {}
#endif

std::int64_t l2_cache_bytes() { return cache_bytes(2); }
std::int64_t small_llc_bytes() {
  const std::int64_t llc = cache_bytes(3);
  return llc <= 64 * 1024 * 1024 ? llc : 0;
}
std::int64_t memory_bound_bytes() {
  static const std::int64_t b = cache_stream_bytes();
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
