// Planners: each op maps its (shape, layout) onto one of two drivers, which cut the work into
// deterministic items, run them on threads and call the SIMD kernels.
//
//  run driver  — slots made of K contiguous runs of length L (NCHW batch norm: slot = channel,
//                runs = its N planes; instance/group/layer norm: one run per slot). A slot of
//                <= kFuseElems elements is reduced and normalized by one thread in one visit
//                (the second read hits L2); such slots of several runs go in rounds of slots,
//                their runs in memory order (the second read hits the last-level cache).
//                Larger slots are cut into fixed chunks whose moments are merged in chunk
//                order, then normalized in a second pass. Eval (apply only) walks memory order.
//  cl driver   — channels-last samples (rows x C): per-channel moments of fixed row chunks,
//                merged in chunk order; small samples are fused the same way. Samples too
//                large to fuse with wide rows (few rows, C in the hundreds or more) go by
//                strips of channels over all rows instead (cl_strip_driver): each strip is
//                reduced and normalized in one visit, with no merge.
//  Slots of up to kFuseElems normalized whole skip the drivers where nothing needs the
//  coefficients afterwards: LayerNorm/RMSNorm rows go to the kernel table's norm_rows, and
//  InstanceNorm/GroupNorm NCHW slots (BatchNorm NCHW training of one sample) to norm_slots
//  (fused_slots), a block of rows or slots a call instead of three calls a row or slot.
// Chunk boundaries depend only on the shape, so results are bitwise identical for any
// thread count.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "normcpp/normcpp.hpp"
#include "ops/common.hpp"
#include "ops/drivers.hpp"

namespace normcpp {
namespace ops {
namespace {

// Whether a pass over `elems` elements of T (read and written) fits in one core's L2: data a
// kernel may take to be there when it starts -- reduced just before, or a tensor small enough
// that the previous layer's output is still there (apply_cl's `hot`). The fused size where
// the L2 is unknown. (BN eval NHWC (4,160,14,14), 500 KB in and out, 1 thread min us: taken
// to be hot 12.2-12.8, not hot 12.9-13.2; at AVX2 12.1-12.5 vs 14.3-14.6.)
template <class T>
bool fits_l2(i64 elems) {
  const i64 l2 = l2_cache_bytes();
  return l2 > 0 ? 2 * elems * static_cast<i64>(sizeof(T)) <= l2 : elems <= kFuseElems;
}

// y = (x - M[c]) * Sc[c] + B[c] per channel over an (N, C, S) tensor in either layout, after
// (Stats) per-channel moments over N and S reported to finish(c, moments). Channels-last, the
// channels are finished in ranges, each followed by finished(c0, c1) before its channels are
// applied (coefficients a range at a time); NCHW has only finish(c), right before channel c is
// applied. Without Apply, only the statistics are computed.
template <bool Stats, bool Apply, class T, class Finish, class Finished>
void channel_pass(const NCSRef& t, Finish finish, Finished finished, const typename Kern<T>::A* M,
                  const typename Kern<T>::A* Sc, const typename Kern<T>::A* B, int act = 0) {
  using A = typename Kern<T>::A;
  const auto& k = Kern<T>::get();
  const T* x = static_cast<const T*>(t.x);
  T* y = static_cast<T*>(t.y);
  const i64 C = t.C;
  const bool st = stream_output<T>(t.N * C * t.S, t.y, t.x);
  if (t.layout == Layout::contiguous && !Stats && Apply && t.S <= kChunkElems) {
    // Apply only, planes in memory order, whole planes per work item: one kernel call per
    // item, not per plane (BN eval (8,256,28,28): 2048 planes of 784).
    const i64 runs = t.N * C;
    const i64 per = std::max(kChunkElems / std::max(t.S, i64{1}), i64{1});  // planes an item
    const i64 items = (runs + per - 1) / per;
    parallel_for(items, threads_for(runs * t.S, items), [&](i64 j, int) {
      const i64 r0 = j * per, r1 = std::min(runs, r0 + per);
      k.apply_runs(x + r0 * t.S, y + r0 * t.S, r1 - r0, t.S, r0 % C, C, M, Sc, B, act, st);
    });
    return;
  }
  if (t.layout == Layout::contiguous) {
    const RunGeom g{C, t.N, t.S, C * t.S, t.S, static_cast<i64>(sizeof(T))};
    run_driver<Stats>(
        g, [&](i64, i64 off, i64 len) { return k.run_moments(x + off, len); }, finish,
        [&](i64 c, i64 e0, i64 e1) {
          if constexpr (Apply)
            for_pieces(g, c, e0, e1, [&](i64 off, i64 len) {
              k.apply_scalar(x + off, y + off, len, M[c], Sc[c], B[c], act, st);
            });
        });
    return;
  }
  const i64 rows = t.N * t.S, strips = Stats ? cl_strips(rows, C) : 0;
  if (strips) {
    cl_strip_driver<Stats, A>(
        CLGeom{1, rows, C}, strips, k.cl_scratch_elems(C),
        [&](i64, i64 c0, i64 c1, A* scr, double* mean, double* m2, double* n) {
          k.cl_moments(x + c0, rows, c1 - c0, C, scr, mean, m2, n);
        },
        [&](i64, i64 c0, i64 c1, const double* mean, const double* m2, double n) {
          for (i64 c = c0; c < c1; ++c) finish(c, Moments{n, mean[c - c0], m2[c - c0]});
          finished(c0, c1);
        },
        [&](i64, i64 c0, i64 c1, A* scr) {
          if constexpr (Apply)
            k.apply_cl(x + c0, y + c0, rows, c1 - c0, C, M + c0, Sc + c0, B + c0, scr, act, st,
                       true);
        });
    return;
  }
  const bool hot = fits_l2<T>(rows * C);
  cl_driver<Stats, A>(
      CLGeom{1, rows, C}, k.cl_scratch_elems(C),
      [&](i64, i64 r0, i64 r1, A* scr, double* acc, double* n) {
        k.cl_moments(x + r0 * C, r1 - r0, C, C, scr, acc, acc + C, n);
      },
      ClChanMerge{C},
      [&](i64, const double* acc, double n) {
        for (i64 c = 0; c < C; ++c) finish(c, Moments{n, acc[c], acc[C + c]});
        finished(i64{0}, C);
      },
      [&](i64, i64 r0, i64 r1, A* scr) {
        if constexpr (Apply)
          k.apply_cl(x + r0 * C, y + r0 * C, r1 - r0, C, C, M, Sc, B, scr, act, st, hot);
      });
}

// Per-channel affine coefficients of a normalization: M = mean, Sc = weight * invstd, B = bias.
// Up to kInline slots live inside the object (no allocation: a tiny call is malloc-bound);
// more take two allocations, whatever the number of arrays. Not copyable (points into itself).
template <class A>
struct Coefs {
  static constexpr i64 kInline = 64;
  i64 n;
  // M, Sc and B each start on a 64-byte line: channels-last kernels load them a vector per
  // vector of x, and a vector load that crosses a line costs two (BN eval NHWC (8,256,28,28)
  // float32, the C++ loop with the scales and shifts 16 or 48 bytes off a line: 1.13x the
  // time of aligned ones; 32 bytes off: the same).
  static constexpr i64 kLine = kLineElems<A>;
  alignas(64) A ainline[3 * kInline];
  double dinline[4 * kInline];
  std::unique_ptr<A[]> abuf;  // uninitialized: every slot is set before it is read
  std::unique_ptr<double[]> dbuf;
  A *M, *Sc, *B;
  double *mean, *var, *w, *b;  // w, b: only for set_range
  explicit Coefs(i64 count) : n(count) {
    static_assert(kInline % kLine == 0, "inline arrays must keep their lines");
    A* a = ainline;
    double* d = dinline;
    i64 stride = kInline;
    if (count > kInline) {
      stride = (count + kLine - 1) / kLine * kLine;
      abuf.reset(new A[static_cast<std::size_t>(3 * stride + kLine)]);
      dbuf.reset(new double[static_cast<std::size_t>(4 * count)]);
      a = line_start(abuf.get());
      d = dbuf.get();
    }
    M = a;
    Sc = a + stride;
    B = a + 2 * stride;
    mean = d;
    var = d + count;
    w = d + 2 * count;
    b = d + 3 * count;
  }
  Coefs(const Coefs&) = delete;
  Coefs& operator=(const Coefs&) = delete;
  void set(i64 i, double m, double v, double w, double b, double eps) {
    set_is(i, m, v, w, b, inv_std(v, eps));
  }
  // set() given is = inv_std(v, eps) (slots that share their statistics: the same values).
  void set_is(i64 i, double m, double v, double w, double b, double is) {
    const auto u = static_cast<std::size_t>(i);
    mean[u] = m;
    var[u] = v;
    M[u] = static_cast<A>(m);
    Sc[u] = static_cast<A>(w * is);
    B[u] = static_cast<A>(b);
  }
  // Slots [i0, i1) at once from mean[], var[] and the parameters (bitwise set()'s values):
  // the kernel takes the square roots and divisions 4 at a time. Slot i has parameter i.
  template <class T>
  void set_range(i64 i0, i64 i1, ParamRef weight, ParamRef bias, double eps) {
    for (i64 i = i0; i < i1; ++i) {
      if (weight.present()) w[i] = weight.get(i);
      if (bias.present()) b[i] = bias.get(i);
    }
    const auto u = static_cast<std::size_t>(i0);
    Kern<T>::get().coefs(i1 - i0, mean + u, var + u, weight.present() ? w + u : nullptr,
                         bias.present() ? b + u : nullptr, eps, M + u, Sc + u, B + u);
  }
};

inline double biased_var(const Moments& m) { return clamp_nonneg(m.m2 / m.n); }

// Throws before any running statistic changes if a batch statistic is NaN or infinite.
void check_finite_update(const RunningUpdate& r, const double* mean, const double* var, i64 n,
                         i64 C) {
  if (r.allow_nonfinite) return;
  // x - x is 0 for a finite x and NaN for NaN or +-inf: one branch-free (vectorizable) pass
  // decides the common case; the loop below names the first bad channel.
  double z = 0.0;
  for (i64 i = 0; i < n; ++i) z += (mean[i] - mean[i]) + (var[i] - var[i]);
  if (z == 0.0) return;
  for (i64 i = 0; i < n; ++i) {
    if (std::isfinite(mean[i]) && std::isfinite(var[i])) continue;
    fail("non-finite batch statistics for channel " + str(i % C) +
         " (mean=" + str(mean[i]) + ", var=" + str(var[i]) +
         "): running_mean and running_var were left unchanged; the input has NaN or inf "
         "values (pass nonfinite='propagate' to update them anyway, as PyTorch does)");
  }
}

// In place (out is the input) with running statistics to guard, the statistics are computed
// and checked before anything is written: a call that raises must leave its input unchanged,
// and a fused slot would already have been normalized. Costs a second read of the input.
inline bool guard_in_place(const NCSRef& t, const RunningUpdate& r) {
  return t.x == t.y && r.mean.present() && !r.allow_nonfinite;
}

void update_running(const RunningUpdate& r, i64 c, double mean, double unbiased_var) {
  r.mean.set(c, (1.0 - r.momentum) * r.mean.get(c) + r.momentum * mean);
  r.var.set(c, (1.0 - r.momentum) * r.var.get(c) + r.momentum * unbiased_var);
}

// update_running for channels [0, C) from batch means and biased variances (times unbias):
// the same arithmetic, in one loop without per-element dtype dispatch for the common case
// of contiguous float32 running statistics.
void update_running_all(const RunningUpdate& r, const double* mean, const double* var, i64 C,
                        double unbias) {
  const double m = r.momentum, k = 1.0 - m;
  if (r.mean.dtype == DType::f32 && r.var.dtype == DType::f32 && r.mean.stride == 1 &&
      r.var.stride == 1) {
    float* rm = static_cast<float*>(r.mean.data);
    float* rv = static_cast<float*>(r.var.data);
    for (i64 c = 0; c < C; ++c) {
      rm[c] = static_cast<float>(k * static_cast<double>(rm[c]) + m * mean[c]);
      rv[c] = static_cast<float>(k * static_cast<double>(rv[c]) + m * (var[c] * unbias));
    }
    return;
  }
  for (i64 c = 0; c < C; ++c) update_running(r, c, mean[c], var[c] * unbias);
}

void write_saved(SavedStats saved, const double* mean, const double* var, i64 n, double eps) {
  for (i64 i = 0; i < n; ++i) {
    if (saved.mean) saved.mean[i] = mean[i];
    if (saved.invstd) saved.invstd[i] = inv_std(var[i], eps);
  }
}

// NCHW slots of R runs of S elements, each slot (R * S <= kFuseElems, > 0) reduced and
// normalized whole by the kernel's slot loop (norm_slots), blocks of slots a work item (one
// table call per block, not three per slot; results depend only on the slot): mean[i] and
// var[i] per slot; run j of slot i is channel (i * R + j) % C. wbuf, bbuf: C doubles each
// (the caller's Coefs w and b: no allocation for a small call), set from the parameters.
template <class T>
void fused_slots(const NCSRef& t, i64 slots, i64 R, ParamRef weight, ParamRef bias, double eps,
                 int act, bool st, double* mean, double* var, double* wbuf, double* bbuf) {
  const auto& k = Kern<T>::get();
  for (i64 c = 0; c < t.C; ++c) {
    if (weight.present()) wbuf[c] = weight.get(c);
    if (bias.present()) bbuf[c] = bias.get(c);
  }
  const double* wp = weight.present() ? wbuf : nullptr;
  const double* bp = bias.present() ? bbuf : nullptr;
  const T* x = static_cast<const T*>(t.x);
  T* y = static_cast<T*>(t.y);
  const i64 E = R * t.S;
  const i64 per = std::max(kChunkElems / (4 * E), i64{1});
  const i64 items = (slots + per - 1) / per;
  parallel_for(items, threads_for(slots * E, items), [&](i64 j, int) {
    const i64 i0 = j * per, i1 = std::min(slots, i0 + per);
    k.norm_slots(x + i0 * E, y + i0 * E, i1 - i0, R, t.S, (i0 * R) % t.C, t.C, wp, bp, eps,
                 act, st, mean + i0, var + i0);
  });
}

// ------------------------------------------------------------------------------ the ops
template <class T>
void batch_norm_t(const NCSRef& t, const RunningUpdate& running, ParamRef weight, ParamRef bias,
                  bool training, double eps, SavedStats saved, int act) {
  using A = typename Kern<T>::A;
  const i64 C = t.C, n = t.N * t.S;
  Coefs<A> cf(C);
  // NCHW: each channel's coefficients as it is finished (a tiny call has few channels: no
  // kernel call for each). Channels-last: ranges of channels through the coefs kernel
  // (C = 4096: 94 -> 80 us for (64, 4096)); the values are the same.
  const bool by_range = t.layout != Layout::contiguous;
  auto finish = [&](i64 c, const Moments& m) {
    if (by_range) {
      cf.mean[c] = m.mean;
      cf.var[c] = biased_var(m);
    } else {
      cf.set(c, m.mean, biased_var(m), param_or(weight, c, 1.0), param_or(bias, c, 0.0), eps);
    }
  };
  auto finished = [&](i64 c0, i64 c1) { cf.template set_range<T>(c0, c1, weight, bias, eps); };
  if (!training) {
    for (i64 c = 0; c < C; ++c) {
      cf.mean[c] = running.mean.get(c);
      cf.var[c] = running.var.get(c);
    }
    finished(0, C);
    channel_pass<false, true, T>(t, finish, finished, cf.M, cf.Sc, cf.B, act);
    write_saved(saved, cf.mean, cf.var, cf.n, eps);
    return;
  }
  if (guard_in_place(t, running)) {
    channel_pass<true, false, T>(t, finish, finished, cf.M, cf.Sc, cf.B);
    if (n > 0) check_finite_update(running, cf.mean, cf.var, cf.n, C);
    channel_pass<false, true, T>(t, finish, finished, cf.M, cf.Sc, cf.B);
  } else if (t.layout == Layout::contiguous && t.N == 1 && n > 0 && t.S <= kFuseElems) {
    // One sample: a channel is one plane, normalized whole as InstanceNorm's are.
    fused_slots<T>(t, C, 1, weight, bias, eps, 0, stream_output<T>(C * t.S, t.y, t.x), cf.mean,
                   cf.var, cf.w, cf.b);
  } else {
    channel_pass<true, true, T>(t, finish, finished, cf.M, cf.Sc, cf.B);
  }
  if (n == 0) return;
  if (running.mean.present()) {
    check_finite_update(running, cf.mean, cf.var, cf.n, C);
    update_running_all(running, cf.mean, cf.var, C,
                       static_cast<double>(n) / static_cast<double>(n - 1));
  }
  write_saved(saved, cf.mean, cf.var, cf.n, eps);
}

template <class T>
void instance_norm_t(const NCSRef& t, const RunningUpdate& running, ParamRef weight,
                     ParamRef bias, double eps, SavedStats saved) {
  using A = typename Kern<T>::A;
  const auto& k = Kern<T>::get();
  const i64 N = t.N, C = t.C, S = t.S, slots = N * C;
  Coefs<A> cf(slots);
  auto finish = [&](i64 slot, const Moments& m) {
    const i64 c = slot % C;
    cf.set(slot, m.mean, biased_var(m), param_or(weight, c, 1.0), param_or(bias, c, 0.0), eps);
  };
  const T* x = static_cast<const T*>(t.x);
  T* y = static_cast<T*>(t.y);
  // pass(stats, apply): one visit per slot doing either or both.
  const bool st = stream_output<T>(slots * S, y, x);
  auto pass = [&](auto stats, auto apply) {
    constexpr bool St = decltype(stats)::value, Ap = decltype(apply)::value;
    if (t.layout == Layout::contiguous) {
      const RunGeom g{slots, 1, S, 0, S};
      run_driver<St>(
          g, [&](i64, i64 off, i64 len) { return k.run_moments(x + off, len); }, finish,
          [&](i64 s, i64 e0, i64 e1) {
            const auto u = static_cast<std::size_t>(s);
            const i64 off = s * S + e0;
            if constexpr (Ap)
              k.apply_scalar(x + off, y + off, e1 - e0, cf.M[u], cf.Sc[u], cf.B[u], 0, st);
          });
    } else if (const i64 strips = St ? cl_strips(S, C) : 0) {
      cl_strip_driver<St, A>(
          CLGeom{N, S, C}, strips, k.cl_scratch_elems(C),
          [&](i64 s, i64 c0, i64 c1, A* scr, double* mean, double* m2, double* n) {
            k.cl_moments(x + s * S * C + c0, S, c1 - c0, C, scr, mean, m2, n);
          },
          [&](i64 s, i64 c0, i64 c1, const double* mean, const double* m2, double n) {
            for (i64 c = c0; c < c1; ++c)
              finish(s * C + c, Moments{n, mean[c - c0], m2[c - c0]});
          },
          [&](i64 s, i64 c0, i64 c1, A* scr) {
            const i64 off = s * S * C + c0;
            const auto u = static_cast<std::size_t>(s * C + c0);
            if constexpr (Ap)
              k.apply_cl(x + off, y + off, S, c1 - c0, C, cf.M + u, cf.Sc + u, cf.B + u, scr, 0,
                         st, true);
          });
    } else {
      cl_driver<St, A>(
          CLGeom{N, S, C}, k.cl_scratch_elems(C),
          [&](i64 s, i64 r0, i64 r1, A* scr, double* acc, double* n) {
            k.cl_moments(x + (s * S + r0) * C, r1 - r0, C, C, scr, acc, acc + C, n);
          },
          ClChanMerge{C},
          [&](i64 s, const double* acc, double n) {
            for (i64 c = 0; c < C; ++c) finish(s * C + c, Moments{n, acc[c], acc[C + c]});
          },
          [&](i64 s, i64 r0, i64 r1, A* scr) {
            const i64 off = (s * S + r0) * C;
            const auto u = static_cast<std::size_t>(s * C);
            if constexpr (Ap)
              k.apply_cl(x + off, y + off, r1 - r0, C, C, cf.M + u, cf.Sc + u, cf.B + u, scr, 0,
                         st, fits_l2<T>(S * C));
          });
    }
  };
  using Yes = std::true_type;
  using No = std::false_type;
  if (guard_in_place(t, running)) {
    pass(Yes{}, No{});
    if (slots * S > 0) check_finite_update(running, cf.mean, cf.var, cf.n, C);
    pass(No{}, Yes{});
  } else if (t.layout == Layout::contiguous && slots * S > 0 && S <= kFuseElems) {
    fused_slots<T>(t, slots, 1, weight, bias, eps, 0, st, cf.mean, cf.var, cf.w, cf.b);
  } else {
    pass(Yes{}, Yes{});
  }
  if (slots * S == 0) return;
  if (running.mean.present()) {
    check_finite_update(running, cf.mean, cf.var, cf.n, C);
    const double unbias = static_cast<double>(S) / static_cast<double>(S - 1);
    for (i64 c = 0; c < C; ++c) {
      double ms = 0.0, vs = 0.0;
      for (i64 s = 0; s < N; ++s) {
        ms += cf.mean[static_cast<std::size_t>(s * C + c)];
        vs += cf.var[static_cast<std::size_t>(s * C + c)];
      }
      update_running(running, c, ms / static_cast<double>(N),
                     vs / static_cast<double>(N) * unbias);
    }
  }
  write_saved(saved, cf.mean, cf.var, cf.n, eps);
}

template <class T>
void group_norm_t(const NCSRef& t, i64 G, ParamRef weight, ParamRef bias, double eps,
                  SavedStats saved, int act) {
  using A = typename Kern<T>::A;
  const auto& k = Kern<T>::get();
  const i64 N = t.N, C = t.C, S = t.S, Cg = C / G, slots = N * G;
  std::vector<double> mean(static_cast<std::size_t>(slots)), var(mean);
  if (t.layout == Layout::contiguous && slots * Cg * S > 0 && Cg * S <= kFuseElems) {
    std::vector<double> wb(static_cast<std::size_t>(2 * C));
    fused_slots<T>(t, slots, Cg, weight, bias, eps, act,
                   stream_output<T>(slots * Cg * S, t.y, t.x), mean.data(), var.data(),
                   wb.data(), wb.data() + C);
    write_saved(saved, mean.data(), var.data(), slots, eps);
    return;
  }
  // Per (n, c) coefficients: the group's mean, weight[c] * the group's invstd, bias[c].
  Coefs<A> cf(N * C);
  auto finish = [&](i64 slot, const Moments& m) {
    const auto u = static_cast<std::size_t>(slot);
    mean[u] = m.mean;
    var[u] = biased_var(m);
    const i64 n = slot / G, c0 = (slot % G) * Cg;
    const double is = inv_std(var[u], eps);  // once for the group's channels
    for (i64 c = c0; c < c0 + Cg; ++c)
      cf.set_is(n * C + c, mean[u], var[u], param_or(weight, c, 1.0), param_or(bias, c, 0.0),
                is);
  };
  const T* x = static_cast<const T*>(t.x);
  T* y = static_cast<T*>(t.y);
  const bool st = stream_output<T>(slots * Cg * S, y, x);
  if (t.layout == Layout::contiguous) {
    const RunGeom g{slots, 1, Cg * S, 0, Cg * S};
    run_driver<true>(
        g, [&](i64, i64 off, i64 len) { return k.run_moments(x + off, len); }, finish,
        [&](i64 slot, i64 e0, i64 e1) {
          // [e0, e1) split at channel boundaries: each channel has its own coefficients.
          const i64 nc0 = (slot / G) * C + (slot % G) * Cg;
          while (e0 < e1) {
            const i64 end = (e0 / S + 1) * S;
            const i64 len = (end < e1 ? end : e1) - e0;
            const auto u = static_cast<std::size_t>(nc0 + e0 / S);
            const i64 off = slot * Cg * S + e0;
            k.apply_scalar(x + off, y + off, len, cf.M[u], cf.Sc[u], cf.B[u], act, st);
            e0 += len;
          }
        });
  } else {
    cl_driver<true, A>(
        CLGeom{N, S, C}, k.cl_scratch_elems(C),
        [&](i64 s, i64 r0, i64 r1, A* scr, double* acc, double* n) {
          k.cl_moments(x + (s * S + r0) * C, r1 - r0, C, C, scr, acc, acc + C, n);
        },
        ClChanMerge{C},
        [&](i64 s, const double* acc, double n) {
          // Every channel of a group counts the same n rows: the group's mean is the mean of
          // theirs and its M2 theirs plus n times the squared spread of their means (exact; a
          // chain of pairwise merges waited on a division each: GroupNorm (4,1000,7,7) G = 8).
          for (i64 gi = 0; gi < G; ++gi) {
            double sm = 0.0;
            for (i64 c = gi * Cg; c < (gi + 1) * Cg; ++c) sm += acc[c];
            const double mg = sm / static_cast<double>(Cg);
            double m2 = 0.0, dd = 0.0;
            for (i64 c = gi * Cg; c < (gi + 1) * Cg; ++c) {
              const double d = acc[c] - mg;
              m2 += acc[C + c];
              dd += d * d;
            }
            finish(s * G + gi, Moments{n * static_cast<double>(Cg), mg, m2 + n * dd});
          }
        },
        [&](i64 s, i64 r0, i64 r1, A* scr) {
          const i64 off = (s * S + r0) * C;
          const auto u = static_cast<std::size_t>(s * C);
          k.apply_cl(x + off, y + off, r1 - r0, C, C, cf.M + u, cf.Sc + u, cf.B + u, scr, act,
                     st, fits_l2<T>(S * C));
        });
  }
  if (slots * Cg * S == 0) return;
  write_saved(saved, mean.data(), var.data(), static_cast<i64>(mean.size()), eps);
}

// Rows this short (without a fused activation) skip the generic path's per-row kernel calls
// (statistics, coefficients, apply: ~450 instructions, far more than a LayerNorm(8) row's
// work): float32 rows of 4, 8 or 16 go to the kernel table's short_rows (one vector per row),
// the rest through one plain loop per row (statistics in double, exact two-pass). Results
// depend only on the row, never on threads.
constexpr i64 kShortRow = 16;

// Storage value in the kernels' arithmetic type (float for float16/float32, double for float64).
inline float as_acc(float v) { return v; }
inline double as_acc(double v) { return v; }
inline float as_acc(half_t v) { return half_bits_to_float(v.bits); }
template <class T>
inline T from_acc(typename Kern<T>::A v) {
  if constexpr (std::is_same<T, half_t>::value)
    return half_t{float_to_half_bits(v)};
  else
    return v;
}

// N > 0: the row length as a compile-time constant, the loops fully unrolled (a vectorized
// loop's set-up costs more than 8 elements: LayerNorm(8) module call 50k -> 40k instructions);
// N == 0: L at run time.
template <class T, int N>
void short_rows_n(const T* x, T* y, i64 rows, i64 Lrt, const typename Kern<T>::A* W,
                  const typename Kern<T>::A* B, double eps, bool rms, double* mean,
                  double* invstd) {
  using A = typename Kern<T>::A;
  const i64 L = N > 0 ? N : Lrt;
  const i64 per = kChunkElems / L;  // rows per work item
  const i64 items = (rows + per - 1) / per;
  parallel_for(items, threads_for(rows * L, items), [&](i64 j, int) {
    const i64 r1 = (j + 1) * per < rows ? (j + 1) * per : rows;
    if (N > 0 && Kern<T>::get().short_rows(x + j * per * L, y + j * per * L, r1 - j * per, L,
                                           W, B, eps, rms, mean + j * per, invstd + j * per))
      return;
    // Each step for a group of rows before the next: a row's steps form one chain of
    // dependent double operations (sum, divide, sum, square root, divide: ~130 cycles), and
    // rows taken one after another overlapped little (LayerNorm (500000,10) float32 at 1
    // thread: 73 cycles a row).
    constexpr i64 kGroup = 64;
    for (i64 g0 = j * per; g0 < r1; g0 += kGroup) {
      const i64 g1 = g0 + kGroup < r1 ? g0 + kGroup : r1;
      for (i64 r = g0; r < g1; ++r) {
        const T* xr = x + r * L;
        double m = 0.0;
        if (!rms) {
          for (i64 e = 0; e < L; ++e) m += static_cast<double>(as_acc(xr[e]));
          m /= static_cast<double>(L);
        }
        mean[r] = m;
      }
      for (i64 r = g0; r < g1; ++r) {
        const T* xr = x + r * L;
        const double m = mean[r];
        double q = 0.0;
        for (i64 e = 0; e < L; ++e) {
          const double d = static_cast<double>(as_acc(xr[e])) - m;
          q += d * d;
        }
        invstd[r] = q;  // the sum of squares until the next loop
      }
      for (i64 r = g0; r < g1; ++r) invstd[r] = inv_std(invstd[r] / static_cast<double>(L), eps);
      for (i64 r = g0; r < g1; ++r) {
        const T* xr = x + r * L;
        T* yr = y + r * L;
        const A ma = static_cast<A>(mean[r]), ia = static_cast<A>(invstd[r]);
        if (W && B)
          for (i64 e = 0; e < L; ++e) yr[e] = from_acc<T>((as_acc(xr[e]) - ma) * ia * W[e] + B[e]);
        else
          for (i64 e = 0; e < L; ++e) {
            A t = (as_acc(xr[e]) - ma) * ia;
            if (W) t = t * W[e];
            if (B) t = t + B[e];
            yr[e] = from_acc<T>(t);
          }
      }
    }
  });
}

// mean[r] and invstd[r] of each row (rms: mean 0) are written.
template <class T>
void short_rows(const T* x, T* y, i64 rows, i64 L, const typename Kern<T>::A* W,
                const typename Kern<T>::A* B, double eps, bool rms, double* mean,
                double* invstd) {
  switch (L) {
    case 4:
      return short_rows_n<T, 4>(x, y, rows, L, W, B, eps, rms, mean, invstd);
    case 8:
      return short_rows_n<T, 8>(x, y, rows, L, W, B, eps, rms, mean, invstd);
    case 16:
      return short_rows_n<T, 16>(x, y, rows, L, W, B, eps, rms, mean, invstd);
    default:
      return short_rows_n<T, 0>(x, y, rows, L, W, B, eps, rms, mean, invstd);
  }
}

template <class T>
void row_norm_t(const void* xv, void* yv, i64 rows, i64 L, ParamRef weight, ParamRef bias,
                double eps, SavedStats saved, bool rms, int act) {
  using A = typename Kern<T>::A;
  const auto& k = Kern<T>::get();
  const T* x = static_cast<const T*>(xv);
  T* y = static_cast<T*>(yv);
  std::vector<A> w_store, b_store;
  const bool short_rows_path = L <= kShortRow && act == 0;
  const std::size_t at =
      short_rows_path ? 0
                      : row_grid_offset<T, A>(y, L, act == static_cast<int>(Activation::silu) ||
                                                        act == static_cast<int>(Activation::gelu));
  const A* W = param_view<A>(weight, L, w_store, rows, at);
  const A* B = param_view<A>(bias, L, b_store, rows, at);
  if (short_rows_path) {
    if (rows * L == 0) return;
    // The statistics go straight into the saved arrays where they are asked for.
    std::vector<double> scratch(static_cast<std::size_t>((saved.mean ? 0 : rows) +
                                                         (saved.invstd ? 0 : rows)));
    double* m = saved.mean ? saved.mean : scratch.data();
    double* is = saved.invstd ? saved.invstd : scratch.data() + (saved.mean ? 0 : rows);
    short_rows<T>(x, y, rows, L, W, B, eps, rms, m, is);
    return;
  }
  const bool st = stream_output<T>(rows * L, y, x);
  std::vector<double> mean(static_cast<std::size_t>(rows)), var(mean);
  if (L <= kFuseElems) {
    // Rows normalized whole, each by one thread: the kernel's row loop, blocks of ~8K
    // elements a work item (results depend only on the row).
    if (rows * L == 0) return;
    i64 per = std::max(kChunkElems / (4 * L), i64{1});
    const i64 group = kernels::row_group(L * static_cast<i64>(sizeof(T)), W || B);
    if (per < group) {  // whole groups of long rows (see norm_rows) where each thread gets rows
      const i64 t = threads_for(rows * L, rows);
      per = std::max(per, std::min(group, (rows + t - 1) / t));
    }
    const i64 items = (rows + per - 1) / per;
    parallel_for(items, threads_for(rows * L, items), [&](i64 j, int) {
      const i64 r0 = j * per, r1 = std::min(rows, r0 + per);
      k.norm_rows(x + r0 * L, y + r0 * L, r1 - r0, L, W, B, eps, rms, act, st,
                  mean.data() + r0, var.data() + r0);
    });
    write_saved(saved, mean.data(), var.data(), rows, eps);
    return;
  }
  // Longer rows: chunks of each row reduced in parallel and merged, then normalized.
  std::vector<A> Mr(static_cast<std::size_t>(rows)), Ir(Mr);
  auto finish = [&](i64 r, const Moments& m) {
    const auto i = static_cast<std::size_t>(r);
    mean[i] = rms ? 0.0 : m.mean;
    var[i] = biased_var(m);
    Mr[i] = static_cast<A>(mean[i]);
    Ir[i] = static_cast<A>(inv_std(var[i], eps));
  };
  auto apply = [&](i64 r, i64 e0, i64 e1) {
    const auto i = static_cast<std::size_t>(r);
    const i64 off = r * L + e0;
    k.apply_row(x + off, y + off, e1 - e0, Mr[i], Ir[i], W ? W + e0 : nullptr,
                B ? B + e0 : nullptr, act, st);
  };
  const RunGeom g{rows, 1, L, 0, L};
  if (rms) {
    // Moments with the mean pinned at 0: M2 = sum of squares, merged by Chan's formula.
    run_driver<true>(
        g,
        [&](i64, i64 off, i64 len) {
          return Moments{static_cast<double>(len), 0.0, k.run_sumsq(x + off, len)};
        },
        finish, apply);
  } else {
    run_driver<true>(
        g, [&](i64, i64 off, i64 len) { return k.run_moments(x + off, len); }, finish, apply);
  }
  write_saved(saved, mean.data(), var.data(), static_cast<i64>(mean.size()), eps);
}

}  // namespace
}  // namespace ops

// Statistics of empty slots are undefined: NaN, as np.mean of an empty array.
// Returns at once when no statistic is requested: n may be a huge channel count of an empty
// input (the loop would otherwise run n empty iterations unless the optimizer removes it).
static void saved_nan(SavedStats saved, std::int64_t n) {
  if (!saved.mean && !saved.invstd) return;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  for (std::int64_t i = 0; i < n; ++i) {
    if (saved.mean) saved.mean[i] = nan;
    if (saved.invstd) saved.invstd[i] = nan;
  }
}

// With one spatial position (N, C) data is channels-last too, and that path vectorizes along
// C instead of walking N*C runs of length 1.
static NCSRef prefer_rows(const NCSRef& t) {
  NCSRef r = t;
  if (r.S == 1) r.layout = Layout::channels_last;
  return r;
}

void batch_norm(const NCSRef& t_in, const RunningUpdate& running, ParamRef weight, ParamRef bias,
                bool training, double eps, SavedStats saved, Activation act) {
  const NCSRef t = prefer_rows(t_in);
  ops::check_ncs(t);
  ops::check_eps(eps);
  ops::check_momentum(running.momentum);
  ops::check_running(running, t.C);
  ops::check_param(weight, "weight", t.C, "channel");
  ops::check_param(bias, "bias", t.C, "channel");
  if (!training && !running.mean.present())
    ops::fail("running_mean and running_var are required when training=False");
  if (training && act != Activation::none)
    ops::fail("activation is fused only in inference: use training=False (eval mode)");
  if (training && t.N * t.S == 1)
    ops::fail("Expected more than 1 value per channel when training, got input with N=" +
              ops::str(t.N) + " and 1 spatial position");
  if (t.N * t.S == 0) {  // nothing to normalize, no statistics to update
    if (training) saved_nan(saved, t.C);
    return;
  }
  ops::by_dtype(t.dtype, [&](auto tag) {
    ops::batch_norm_t<decltype(tag)>(t, running, weight, bias, training, eps, saved,
                                     static_cast<int>(act));
  });
}

void batch_norm_stats(const NCSRef& t_in, double* count, double* mean, double* m2) {
  const NCSRef t = prefer_rows(t_in);
  ops::check_ncs({t.x, const_cast<void*>(t.x), t.dtype, t.N, t.C, t.S, t.layout});
  for (std::int64_t c = 0; c < t.C; ++c) count[c] = mean[c] = m2[c] = 0.0;
  ops::by_dtype(t.dtype, [&](auto tag) {
    using T = decltype(tag);
    ops::channel_pass<true, false, T>(
        t,
        [&](std::int64_t c, const Moments& m) {
          count[c] = m.n;
          mean[c] = m.mean;
          m2[c] = m.m2;
        },
        [](std::int64_t, std::int64_t) {}, nullptr, nullptr, nullptr);
  });
}

void instance_norm(const NCSRef& t, const RunningUpdate& running, ParamRef weight,
                   ParamRef bias, bool use_input_stats, double eps, SavedStats saved) {
  ops::check_ncs(t);
  ops::check_eps(eps);
  ops::check_momentum(running.momentum);
  ops::check_running(running, t.C);
  ops::check_param(weight, "weight", t.C, "channel");
  ops::check_param(bias, "bias", t.C, "channel");
  if (!use_input_stats) {
    if (!running.mean.present())
      ops::fail("running_mean and running_var are required when use_input_stats=False");
    batch_norm(t, running, weight, bias, false, eps);
    return;
  }
  if (t.S == 1 && t.N * t.C > 0)
    ops::fail("Expected more than 1 spatial element when using input statistics, got " +
              ops::str(t.S));
  if (t.N * t.S == 0) {
    saved_nan(saved, t.N * t.C);
    return;
  }
  ops::by_dtype(t.dtype, [&](auto tag) {
    ops::instance_norm_t<decltype(tag)>(t, running, weight, bias, eps, saved);
  });
}

void group_norm(const NCSRef& t_in, std::int64_t groups, ParamRef weight, ParamRef bias,
                double eps, SavedStats saved, Activation act) {
  const NCSRef t = prefer_rows(t_in);
  ops::check_ncs(t);
  ops::check_eps(eps);
  if (groups <= 0) ops::fail("num_groups must be > 0, got " + ops::str(groups));
  if (t.C % groups != 0)
    ops::fail("num_groups (" + ops::str(groups) + ") must divide the number of channels (" +
              ops::str(t.C) + ")");
  ops::check_param(weight, "weight", t.C, "channel");
  ops::check_param(bias, "bias", t.C, "channel");
  if (t.N * t.S == 0) {
    saved_nan(saved, t.N * groups);
    return;
  }
  ops::by_dtype(t.dtype, [&](auto tag) {
    ops::group_norm_t<decltype(tag)>(t, groups, weight, bias, eps, saved, static_cast<int>(act));
  });
}

void layer_norm(const void* x, void* y, DType dtype, std::int64_t rows, std::int64_t row_len,
                ParamRef weight, ParamRef bias, double eps, SavedStats saved, Activation act) {
  ops::check_eps(eps);
  const std::int64_t elems = ops::check_rows(rows, row_len);
  if (elems > 0 && (!x || !y)) ops::fail("input and output pointers must not be null");
  ops::check_param(weight, "weight", row_len, "normalized element");
  ops::check_param(bias, "bias", row_len, "normalized element");
  if (elems == 0) {
    saved_nan(saved, rows);
    return;
  }
  ops::by_dtype(dtype, [&](auto tag) {
    ops::row_norm_t<decltype(tag)>(x, y, rows, row_len, weight, bias, eps, saved, false,
                                   static_cast<int>(act));
  });
}

void rms_norm(const void* x, void* y, DType dtype, std::int64_t rows, std::int64_t row_len,
              ParamRef weight, double eps, SavedStats saved) {
  ops::check_eps(eps);
  const std::int64_t elems = ops::check_rows(rows, row_len);
  if (elems > 0 && (!x || !y)) ops::fail("input and output pointers must not be null");
  ops::check_param(weight, "weight", row_len, "normalized element");
  if (elems == 0) {
    saved_nan(saved, rows);
    return;
  }
  ops::by_dtype(dtype, [&](auto tag) {
    ops::row_norm_t<decltype(tag)>(x, y, rows, row_len, weight, ParamRef{}, eps, saved, true, 0);
  });
}

}  // namespace normcpp
