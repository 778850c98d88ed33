// The two work drivers every planner uses (see norms.cpp for the picture). Both cut work
// into items whose boundaries depend only on the shape, so results never depend on threads.
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <vector>

#include "normcpp/moments.hpp"
#include "ops/parallel.hpp"

namespace normcpp {
namespace ops {

using i64 = std::int64_t;

// A slot this small is reduced and normalized in one visit: its 448 KB of float32 still sit in
// a 512 KB L2 for the second read (a BN channel of (32, 64, 56, 56) is 100,352 elements).
constexpr i64 kFuseElems = 112 * 1024;
// Slots of several runs are reduced and normalized in rounds of about this many elements
// (4 MB of float32: in the last-level cache between the two visits) where the last-level
// cache is at most 64 MiB; see mem_round_elems for larger ones.
constexpr i64 kMemRoundElems = 1024 * 1024;
// Larger slots' statistics are computed in chunks of about this many elements.
constexpr i64 kChunkElems = 32768;

// ---------------------------------------------------------------------------- run driver
struct RunGeom {
  i64 slots;        // statistic slots
  i64 K;            // runs per slot
  i64 L;            // elements per run (contiguous)
  i64 run_stride;   // elements from run k to run k + 1 of a slot
  i64 slot_stride;  // elements from slot s to slot s + 1
  i64 elem_bytes = 4;  // bytes read per element, all inputs together (sizes the rounds)
};

// Elements of a round of slots of several runs (run_driver) for nt threads. Where the
// last-level cache is small (a Zen's 32 MiB), kMemRoundElems: the round is re-read from it.
// Where it is larger (the 300 MiB mesh L3 of a Xeon) or unknown, half an L2 of input a
// thread, re-read from the L2s: on the 2-vCPU Xeon (2 MiB L2) rounds of 4 MB re-read from
// its L3 were the slower ones. Median us, interleaved, 1 MB -> 4 MB of float32 a round at 1
// thread: BatchNorm training NCHW (32,64,56,56) 2918-3135 vs 3223-3447, (8,256,28,28)
// 712-862 vs 813-940; its backward (x and dy) at 1 thread, 0.5 MB of each a round, 4342 vs
// 5425 and 1244 vs 1457; at 2 threads twice that a round, forward 1624-1657 vs 1652-1665,
// backward 2413 vs 2774.
inline i64 mem_round_elems(const RunGeom& g, int nt) {
  const i64 l2 = l2_cache_bytes();
  if (small_llc_bytes() > 0 || l2 <= 0) return kMemRoundElems;
  return static_cast<i64>(nt) * (l2 / 2) / std::max(g.elem_bytes, i64{1});
}

// At most this many chunks per slot, so partial-result scratch is O(slots), not O(input).
constexpr i64 kMaxChunks = 64;

// Chunks of a slot of `elems` elements: a function of the shape only, never of the threads.
inline i64 chunks_for(i64 elems) {
  if (elems <= kFuseElems) return 1;
  const i64 p = (elems + kChunkElems - 1) / kChunkElems;
  return p < kMaxChunks ? p : kMaxChunks;
}

// Slots taken per round when slots of E elements are cut into P chunks each: a round computes
// its slots' statistics, then normalizes them while their data is still in the last-level
// cache (statistics of every slot first would read all of the input twice from memory:
// instance norm NHWC (32,64,56,56), 800 KB per sample). A round holds about kRoundElems of
// data per thread (an L2's worth: one such sample a thread, re-read from L2 rather than from
// the shared L3: min 2330 -> 2250 us at 1 thread; 2 MB a thread before), or enough chunks to keep
// the nt threads busy (4 each) if that is more. Results do not depend on the rounds: the same
// chunks are merged in the same order.
constexpr i64 kRoundElems = 256 * 1024;
inline i64 round_slots(i64 slots, i64 P, i64 E, int nt) {
  i64 g = kRoundElems * static_cast<i64>(nt) / E;
  const i64 busy = (4 * static_cast<i64>(nt) + P - 1) / P;
  if (g < busy) g = busy;
  if (g < 1) g = 1;
  if (g >= slots) return slots;
  const i64 rounds = (slots + g - 1) / g;  // as many rounds, evened out (8,8,8,8 not 10,10,10,2)
  return (slots + rounds - 1) / rounds;
}

// Start of chunk j of P over [0, E) (exact, no overflow).
inline i64 chunk_start(i64 E, i64 P, i64 j) {
  const i64 q = E / P, r = E % P;
  return q * j + (j < r ? j : r);
}

// f(offset, len) for each contiguous piece of elements [e0, e1) of slot s.
template <class F>
inline void for_pieces(const RunGeom& g, i64 s, i64 e0, i64 e1, F&& f) {
  if (g.K == 1) {  // one run per slot: one piece (no divisions: a tiny slot's overhead)
    if (e0 < e1) f(s * g.slot_stride + e0, e1 - e0);
    return;
  }
  while (e0 < e1) {
    const i64 k = e0 / g.L, off = e0 % g.L;
    const i64 len = (g.L - off < e1 - e0) ? g.L - off : e1 - e0;
    f(s * g.slot_stride + k * g.run_stride + off, len);
    e0 += len;
  }
}

// How partial results of one slot combine: Chan's merge for moments, a plain sum for the
// backward pass's (count, sum dy, sum dy * (x - mean)) triples.
struct ChanMerge {
  Moments operator()(const Moments& a, const Moments& b) const { return merge_moments(a, b); }
};
struct SumMerge {
  Moments operator()(const Moments& a, const Moments& b) const {
    return {a.n + b.n, a.mean + b.mean, a.m2 + b.m2};
  }
};

template <class Merge, class Reduce>
Moments reduce_range(const RunGeom& g, i64 s, i64 e0, i64 e1, Reduce& reduce) {
  if (g.K == 1 && e0 < e1) return reduce(s, s * g.slot_stride + e0, e1 - e0);  // one piece
  Moments m;
  for_pieces(g, s, e0, e1, [&](i64 off, i64 len) { m = Merge{}(m, reduce(s, off, len)); });
  return m;
}

// Stats: reduce(s, offset, len) over each slot's pieces, merged with Merge, then
// finish(s, result) before apply(s, e0, e1); otherwise apply only.
template <bool Stats, class Merge = ChanMerge, class Reduce, class Finish, class Apply>
void run_driver(const RunGeom& g, Reduce reduce, Finish finish, Apply apply) {
  const i64 E = g.K * g.L;
  const i64 total = g.slots * E;
  if (total == 0) return;
  if constexpr (!Stats) {
    if (g.K > 1) {
      // Apply only: runs in memory order (run k of every slot, then run k + 1), each thread a
      // contiguous range of them. Slot by slot, every run would jump run_stride ahead, and a
      // run shorter than a page hides the stream from the hardware prefetcher (BatchNorm eval
      // NCHW (8, 256, 28, 28), runs of 3 KB: 1.5x a copy slot by slot, 1.1x in memory order).
      // Long runs are cut in chunks so that threads share few of them evenly.
      i64 Pr = (g.L + kChunkElems - 1) / kChunkElems;
      if (Pr > kMaxChunks) Pr = kMaxChunks;
      const i64 items = g.K * g.slots * Pr;
      parallel_for(items, threads_for(total, items), [&](i64 i, int) {
        const i64 run = i / Pr, j = i % Pr, k = run / g.slots;
        apply(run % g.slots, k * g.L + chunk_start(g.L, Pr, j),
              k * g.L + chunk_start(g.L, Pr, j + 1));
      });
      return;
    }
  }
  const i64 P = chunks_for(E);
  if (P == 1 && g.K > 1) {
    // Slots of several runs (BatchNorm NCHW: a channel is N planes, run_stride apart): rounds
    // of slots, each round's runs reduced in memory order (run k of every slot of the round,
    // then run k + 1), each slot's run moments merged in run order (reduce_range's values),
    // then the round normalized in memory order while it is still in the caches. Slot by
    // slot, the reads jump run_stride ahead after every run: BatchNorm training statistics
    // NCHW (32,64,56,56) took 1.7x a sequential read (1747 vs 1051 us); in rounds 1.0x, and
    // the training forward 2650-2880 -> 2300 us (1 thread, min of interleaved runs).
    const i64 round = mem_round_elems(g, threads_for(total, g.slots * g.K));
    const i64 gs = std::min(g.slots, std::max(round / E, i64{1}));
    std::vector<Moments> part(static_cast<std::size_t>(gs * g.K));
    const int nt = threads_for(total, gs * g.K);
    for (i64 s0 = 0; s0 < g.slots; s0 += gs) {
      const i64 ns = std::min(gs, g.slots - s0);
      parallel_for(ns * g.K, nt, [&](i64 i, int) {
        const i64 k = i / ns, s = s0 + i % ns;
        part[static_cast<std::size_t>((s - s0) * g.K + k)] =
            reduce(s, s * g.slot_stride + k * g.run_stride, g.L);
      });
      for (i64 j = 0; j < ns; ++j) {
        Moments m;
        for (i64 k = 0; k < g.K; ++k) m = Merge{}(m, part[static_cast<std::size_t>(j * g.K + k)]);
        finish(s0 + j, m);
      }
      parallel_for(ns * g.K, nt, [&](i64 i, int) {
        const i64 k = i / ns;
        apply(s0 + i % ns, k * g.L, (k + 1) * g.L);
      });
    }
    return;
  }
  if (P == 1) {
    parallel_for(g.slots, threads_for(total, g.slots), [&](i64 s, int) {
      if constexpr (Stats) finish(s, reduce_range<Merge>(g, s, 0, E, reduce));
      apply(s, i64{0}, E);
    });
    return;
  }
  const int nt = threads_for(total, g.slots * P);
  const i64 gs = Stats ? round_slots(g.slots, P, E, nt) : g.slots;
  std::vector<Moments> part(Stats ? static_cast<std::size_t>(gs * P) : 0);
  for (i64 s0 = 0; s0 < g.slots; s0 += gs) {
    const i64 items = (g.slots - s0 < gs ? g.slots - s0 : gs) * P;
    if constexpr (Stats) {
      parallel_for(items, nt, [&](i64 i, int) {
        const i64 s = s0 + i / P, j = i % P;
        part[static_cast<std::size_t>(i)] =
            reduce_range<Merge>(g, s, chunk_start(E, P, j), chunk_start(E, P, j + 1), reduce);
      });
      for (i64 i = 0; i < items; i += P) {
        Moments m;
        for (i64 j = 0; j < P; ++j) m = Merge{}(m, part[static_cast<std::size_t>(i + j)]);
        finish(s0 + i / P, m);
      }
    }
    parallel_for(items, nt, [&](i64 i, int) {
      const i64 s = s0 + i / P, j = i % P;
      apply(s, chunk_start(E, P, j), chunk_start(E, P, j + 1));
    });
  }
}

// ----------------------------------------------------------------------------- cl driver
struct CLGeom {
  i64 samples;  // independent (rows x C) matrices, one after another
  i64 rows;
  i64 C;
};

// Channels-last samples. Per sample, per-channel accumulators acc[0..2C) (and a count) start
// at zero; reduce(s, r0, r1, scratch, acc, &n) adds rows [r0, r1) of sample s;
// merge(acc, &n, part, pn) folds a later chunk's accumulators in; then finish(s, acc, n)
// and apply(s, r0, r1, scratch). Without Stats: apply only. `A` is the scratch element type.
template <bool Stats, class A, class Reduce, class Merge, class Finish, class Apply>
void cl_driver(const CLGeom& g, i64 scratch_elems, Reduce reduce, Merge merge, Finish finish,
               Apply apply) {
  const i64 E = g.rows * g.C;
  const i64 total = g.samples * E;
  if (total == 0) return;
  i64 P = chunks_for(E);
  if (P > g.rows) P = g.rows;
  const i64 items = g.samples * P;
  const int nt = threads_for(total, items);
  // uninitialized: the kernels write their scratch before reading it
  std::unique_ptr<A[]> scratch(new A[static_cast<std::size_t>(scratch_elems * nt)]);
  auto scr = [&](int tid) { return scratch.get() + scratch_elems * tid; };
  const auto acc_n = static_cast<std::size_t>(2 * g.C);
  // Whole samples, each by one thread, where a sample is one chunk, or where samples of several
  // chunks split evenly over the threads: the same chunks reduced and merged in the same order
  // as by the rounds below (the same bits), but with no barrier between a sample's statistics
  // and its normalization and no merge on one thread while the others wait -- what a round's
  // threads did anyway, sample for sample, as the rounds give each thread one sample's
  // chunks. 2-vCPU Xeon, 2 threads, min us, rounds vs this: GroupNorm NHWC (32,64,56,56)
  // float16 1112-1225 vs 1076-1113, float32 1311-1369 vs 1251-1397 (medians 1545-1633 vs
  // 1414-1489); InstanceNorm (8,256,28,28) 466-477 vs 435-455; InstanceNorm backward
  // (8,256,28,28) 687-712 vs 619-647.
  if (P == 1 || (Stats && nt > 1 && g.samples % nt == 0)) {
    // uninitialized: each sample zeroes its thread's accumulators (and chunk's) first
    const std::size_t per = P == 1 ? acc_n : 2 * acc_n;
    std::unique_ptr<double[]> acc(new double[Stats ? per * static_cast<std::size_t>(nt) : 1]);
    parallel_for(g.samples, nt, [&](i64 s, int tid) {
      if constexpr (Stats) {
        double* a = acc.get() + per * static_cast<std::size_t>(tid);
        for (std::size_t i = 0; i < acc_n; ++i) a[i] = 0.0;
        double n = 0.0;
        if (P == 1) {
          reduce(s, i64{0}, g.rows, scr(tid), a, &n);
        } else {
          double* pc = a + acc_n;
          for (i64 j = 0; j < P; ++j) {
            for (std::size_t i = 0; i < acc_n; ++i) pc[i] = 0.0;
            double pn = 0.0;
            reduce(s, chunk_start(g.rows, P, j), chunk_start(g.rows, P, j + 1), scr(tid), pc,
                   &pn);
            merge(a, &n, static_cast<const double*>(pc), pn);
          }
        }
        finish(s, static_cast<const double*>(a), n);
      }
      for (i64 j = 0; j < P; ++j)
        apply(s, chunk_start(g.rows, P, j), chunk_start(g.rows, P, j + 1), scr(tid));
    });
    return;
  }
  const i64 gs = Stats ? round_slots(g.samples, P, E, nt) : g.samples;
  // uninitialized: zeroed at the start of each round
  const std::size_t part_n = Stats ? acc_n * static_cast<std::size_t>(gs * P) : 0;
  std::unique_ptr<double[]> part(new double[part_n > 0 ? part_n : 1]);
  std::vector<double> pn(Stats ? static_cast<std::size_t>(gs * P) : 0);
  std::vector<double> acc(Stats ? acc_n : 0);
  for (i64 s0 = 0; s0 < g.samples; s0 += gs) {
    const i64 round = (g.samples - s0 < gs ? g.samples - s0 : gs) * P;
    if constexpr (Stats) {
      std::fill(part.get(), part.get() + part_n, 0.0);
      for (auto& v : pn) v = 0.0;
      parallel_for(round, nt, [&](i64 i, int tid) {
        const i64 s = s0 + i / P, j = i % P;
        reduce(s, chunk_start(g.rows, P, j), chunk_start(g.rows, P, j + 1), scr(tid),
               part.get() + acc_n * static_cast<std::size_t>(i),
               &pn[static_cast<std::size_t>(i)]);
      });
      for (i64 i0 = 0; i0 < round; i0 += P) {
        for (auto& v : acc) v = 0.0;
        double n = 0.0;
        for (i64 j = 0; j < P; ++j) {
          const auto i = static_cast<std::size_t>(i0 + j);
          merge(acc.data(), &n, static_cast<const double*>(part.get() + acc_n * i), pn[i]);
        }
        finish(s0 + i0 / P, static_cast<const double*>(acc.data()), n);
      }
    }
    parallel_for(round, nt, [&](i64 i, int tid) {
      const i64 s = s0 + i / P, j = i % P;
      apply(s, chunk_start(g.rows, P, j), chunk_start(g.rows, P, j + 1), scr(tid));
    });
  }
}

// Channel strips: a channels-last sample too large to fuse (rows * C > kFuseElems) whose rows
// are wide (BatchNorm (256, 1024)) is cut into strips of channels over all of its rows
// instead of chunks of rows. A strip's moments need no merge, and its data (<= kFuseElems
// elements) is still in L2 when it is normalized: the input is read once from memory, not
// twice, and each block of the statistics has the rows for one pass (a strip of 256 channels
// of 256 rows: blocks of 128 rows). Strips are runs of at least kMinStrip elements, so the
// prefetchers follow them, and whole vectors of 16 elements wide but the last.
constexpr i64 kMinStrip = 256;
// Strips of a (rows x C) sample: 0 where it is fused whole or its strips would be too narrow;
// at least 4 where C allows it (work for 2 and 4 threads). A function of the shape only.
inline i64 cl_strips(i64 rows, i64 C) {
  if (rows * C <= kFuseElems) return 0;
  const i64 wmax = kFuseElems / rows;
  if (wmax < kMinStrip) return 0;
  return std::max((C + wmax - 1) / wmax, std::min(i64{4}, C / kMinStrip));
}
inline i64 cl_strip_width(i64 C, i64 strips) { return ((C + strips - 1) / strips + 15) / 16 * 16; }

// cl_driver by strips (cl_strips(rows, C) of them, > 0): per sample s and strip [c0, c1),
// reduce(s, c0, c1, scratch, mean, m2, &n) sets the strip's per-channel moments (count n
// from 0), finish(s, c0, c1, mean, m2, n), then apply(s, c0, c1, scratch) in the same visit.
// Without Stats: apply only.
template <bool Stats, class A, class Reduce, class Finish, class Apply>
void cl_strip_driver(const CLGeom& g, i64 strips, i64 scratch_elems, Reduce reduce,
                     Finish finish, Apply apply) {
  const i64 w = cl_strip_width(g.C, strips);
  const i64 items = g.samples * strips;
  const int nt = threads_for(g.samples * g.rows * g.C, items);
  // uninitialized: the kernels write their scratch, and cl_moments its moments, first
  std::unique_ptr<A[]> scratch(new A[static_cast<std::size_t>(scratch_elems * nt)]);
  std::unique_ptr<double[]> acc(new double[static_cast<std::size_t>(Stats ? 2 * w * nt : 1)]);
  parallel_for(items, nt, [&](i64 i, int tid) {
    const i64 s = i / strips, c0 = std::min(g.C, (i % strips) * w), c1 = std::min(g.C, c0 + w);
    if (c0 == c1) return;
    A* scr = scratch.get() + scratch_elems * tid;
    if constexpr (Stats) {
      double* mean = acc.get() + 2 * w * tid;
      double* m2 = mean + w;
      double n = 0.0;
      reduce(s, c0, c1, scr, mean, m2, &n);
      finish(s, c0, c1, static_cast<const double*>(mean), static_cast<const double*>(m2), n);
    }
    apply(s, c0, c1, scr);
  });
}

// Merges for cl_driver accumulators of C channels: (mean, m2) by Chan, or plain sums.
struct ClChanMerge {
  i64 C;
  void operator()(double* acc, double* n, const double* part, double pn) const {
    for (i64 c = 0; c < C; ++c) {
      const Moments m = merge_moments({*n, acc[c], acc[C + c]}, {pn, part[c], part[C + c]});
      acc[c] = m.mean;
      acc[C + c] = m.m2;
    }
    *n += pn;
  }
};
struct ClSumMerge {
  i64 C;
  void operator()(double* acc, double* n, const double* part, double pn) const {
    for (i64 c = 0; c < 2 * C; ++c) acc[c] += part[c];
    *n += pn;
  }
};

}  // namespace ops
}  // namespace normcpp
