// Thread count policy and a parallel loop over independent work items (OpenMP if present).
// Items must be independent and deterministic: results never depend on the thread count.
#pragma once

#include <cstdint>

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__x86_64__) || defined(__i386__)
#include <emmintrin.h>
#endif

namespace normcpp {
namespace ops {

// Minimum elements of work a thread must get before another thread is worth starting.
constexpr std::int64_t kMinWorkPerThread = 32768;

int configured_threads();
// The CPU the calling thread runs on (-1 if unknown).
int current_cpu();
// Moves the calling thread off `cpu` if it runs there: takes `cpu` out of the CPUs it may
// use (its mask apart from normcpp's own moves), where another one is left. Linux only.
void leave_cpu(int cpu);
// Output bytes from which the apply kernels stream their stores (set_stream_threshold).
std::int64_t stream_threshold();
// Whether stream_threshold() is the automatic default (not NORMCPP_STREAM_BYTES or
// set_stream_threshold(b >= 0), which stream from exactly b bytes on).
bool stream_threshold_is_auto();
// Bytes of a core's L2 cache (0 if unknown).
std::int64_t l2_cache_bytes();
// Bytes of a last-level cache of at most 64 MiB (0 if unknown or larger: see stream_bytes).
std::int64_t small_llc_bytes();
// Output bytes from which a pass is taken to run from memory rather than the caches: the
// automatic streaming threshold, from the cache sizes alone (not NORMCPP_STREAM_BYTES or
// set_stream_threshold, so that a kernel choice made by it never changes with them).
std::int64_t memory_bound_bytes();

// Threads to use for `work` elements spread over `items` independent items.
inline int threads_for(std::int64_t work, std::int64_t items) {
  std::int64_t nt = configured_threads();
  const std::int64_t by_work = work / kMinWorkPerThread;
  if (by_work < nt) nt = by_work;
  if (items < nt) nt = items;
  return nt < 1 ? 1 : static_cast<int>(nt);
}

// Whether an output of `elems` elements of T is written with streaming stores: from
// stream_threshold() bytes on, unless (the second rule only for the automatic threshold)
// - it is written over an input (in place, out == x or dx == dy): its lines were just read
//   into the cache, and a streaming store to a cached line evicts it -- measured 1.2-4x
//   slower than plain stores (BatchNorm eval in place on (8,256,28,28): 210 us plain, 930 us
//   streamed);
// - each thread's share of input and output fits in half its L2, so the output stays cached
//   for whatever reads it next: on a 16-core Xeon (2 MiB L2) a 6.4 MB output at 16 threads
//   (0.8 MB a thread) took 0.61-0.91x the time with plain stores, while at 8 threads (1.6 MB a
//   thread) and for 12.8 MB at 16 streaming won (plain 1.06-1.42x) -- bench/SCALING.md;
// - several threads write it, and the inputs and the output fit in a last-level cache of at
//   most 64 MiB: the cores together move plain stores through that cache faster than
//   streaming stores to memory, and the output stays there. 2-core Zen 4 VM (32 MiB L3), 2
//   threads, min us, streamed vs plain: BatchNorm eval (16,64,56,56) (12.8 MB) 457-464 vs
//   200-205, train 352 vs 276, LayerNorm (8,512,768) 444-448 vs 291-306, RMSNorm 444-451 vs
//   237-261; but LayerNorm backward (8,512,768) (x, dy and dx: 37.7 MB) 597-626 vs 739-764,
//   hence the inputs count. At one thread streaming still wins from 10 MB
//   (cache_stream_bytes). (Not the 300 MiB mesh L3 of the Xeon above, where streaming won at
//   6.4 MB from 1 to 8 threads.)
// stream_bytes: the rule for an out-of-place output of `bytes` written by `nt` threads from
// `inputs` inputs of the same size.
inline bool stream_bytes(std::int64_t bytes, std::int64_t nt, std::int64_t inputs = 1) {
  if (bytes < stream_threshold()) return false;
  if (!stream_threshold_is_auto()) return true;
  if (nt > 1 && (1 + inputs) * bytes <= small_llc_bytes()) return false;
  return 2 * bytes / (nt < 1 ? 1 : nt) > l2_cache_bytes() / 2;
}
template <class T>
inline bool stream_output(std::int64_t elems, const void* out, const void* in1,
                          const void* in2 = nullptr) {
  if (out == in1 || out == in2) return false;
  return stream_bytes(elems * static_cast<std::int64_t>(sizeof(T)), threads_for(elems, elems),
                      in2 ? 2 : 1);
}

// Orders this thread's streaming (non-temporal) stores before what follows: the kernels'
// streamed outputs are visible to every thread once the parallel region that wrote them ends.
inline void store_fence() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_sfence();
#endif
}

// f(item, thread_index) for item in [0, n), thread_index in [0, nt). Each thread fences its
// stores when its items are done (see store_fence).
//
// A worker that finds itself on the CPU of the thread that opened the region moves off it
// (leave_cpu). After the process has idled (a sleep of 50 ms or more), the OpenMP worker,
// woken, was seen sharing the calling thread's vCPU on a 2-vCPU VM, the two taking turns:
// BatchNorm train (256,1024) at 2 threads took 495-573 us a call for the next 20 calls
// instead of 41-54 (1 thread: 81-85); OMP_PROC_BIND=true removed it, but binds the caller's
// own thread too. Moving only the worker, and only when it shares the caller's CPU, leaves
// the caller and a user's binding alone.
template <class F>
void parallel_for(std::int64_t n, int nt, F&& f) {
#ifdef _OPENMP
  if (nt > 1 && n > 1) {
    const int master_cpu = current_cpu();
#pragma omp parallel num_threads(nt)
    {
      const int tid = omp_get_thread_num();
      if (tid != 0) leave_cpu(master_cpu);
#pragma omp for schedule(static) nowait
      for (std::int64_t i = 0; i < n; ++i) f(i, tid);
      store_fence();
    }
    return;
  }
#else
  (void)nt;
#endif
  for (std::int64_t i = 0; i < n; ++i) f(i, 0);
  store_fence();
}

}  // namespace ops
}  // namespace normcpp
