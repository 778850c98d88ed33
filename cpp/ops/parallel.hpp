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
// Output bytes from which the apply kernels stream their stores (set_stream_threshold).
std::int64_t stream_threshold();
// Whether an output of `elems` elements of T is written with streaming stores. Never over an
// input (in place, out == x or dx == dy): its lines were just read into the cache, and a
// streaming store to a cached line evicts it -- measured 1.2-4x slower than plain stores
// (BatchNorm eval in place on (8,256,28,28): 210 us plain, 930 us streamed).
template <class T>
inline bool stream_output(std::int64_t elems, const void* out, const void* in1,
                          const void* in2 = nullptr) {
  return out != in1 && out != in2 &&
         elems * static_cast<std::int64_t>(sizeof(T)) >= stream_threshold();
}

// Threads to use for `work` elements spread over `items` independent items.
inline int threads_for(std::int64_t work, std::int64_t items) {
  std::int64_t nt = configured_threads();
  const std::int64_t by_work = work / kMinWorkPerThread;
  if (by_work < nt) nt = by_work;
  if (items < nt) nt = items;
  return nt < 1 ? 1 : static_cast<int>(nt);
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
template <class F>
void parallel_for(std::int64_t n, int nt, F&& f) {
#ifdef _OPENMP
  if (nt > 1 && n > 1) {
#pragma omp parallel num_threads(nt)
    {
      const int tid = omp_get_thread_num();
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
