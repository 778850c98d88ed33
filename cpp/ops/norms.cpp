// Planners: each op maps its (shape, layout) onto one of two drivers, which cut the work into
// deterministic items, run them on threads and call the SIMD kernels.
//
//  run driver  — slots made of K contiguous runs of length L (NCHW batch norm: slot = channel,
//                runs = its N planes; instance/group/layer norm: one run per slot). A slot of
//                <= kFuseElems elements is reduced and normalized by one thread in one visit
//                (the second read hits L2). Larger slots are cut into fixed chunks whose
//                moments are merged in chunk order, then normalized in a second pass.
//  cl driver   — channels-last samples (rows x C): per-channel moments of fixed row chunks,
//                merged in chunk order; small samples are fused the same way.
// Chunk boundaries depend only on the shape, so results are bitwise identical for any
// thread count.
#include <cmath>
#include <cstdint>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/kernels.hpp"
#include "normcpp/normcpp.hpp"
#include "ops/parallel.hpp"

namespace normcpp {

double ParamRef::get(std::int64_t i) const {
  if (dtype == DType::f64) return static_cast<const double*>(data)[i * stride];
  return static_cast<double>(static_cast<const float*>(data)[i * stride]);
}

double MutParamRef::get(std::int64_t i) const { return as_const().get(i); }

void MutParamRef::set(std::int64_t i, double v) const {
  if (dtype == DType::f64)
    static_cast<double*>(data)[i * stride] = v;
  else
    static_cast<float*>(data)[i * stride] = static_cast<float>(v);
}

namespace ops {
namespace {

using i64 = std::int64_t;

// A slot this small is reduced and normalized in one visit (fits L2 with its output).
constexpr i64 kFuseElems = 65536;
// Larger slots' statistics are computed in chunks of about this many elements.
constexpr i64 kChunkElems = 32768;

template <class T>
struct Kern;
template <>
struct Kern<half_t> {
  using A = float;
  static const kernels::TypedKernels<half_t, float>& get() { return kernels::active().f16; }
};
template <>
struct Kern<float> {
  using A = float;
  static const kernels::TypedKernels<float, float>& get() { return kernels::active().f32; }
};
template <>
struct Kern<double> {
  using A = double;
  static const kernels::TypedKernels<double, double>& get() { return kernels::active().f64; }
};

[[noreturn]] void fail(const std::string& msg) { throw std::invalid_argument(msg); }

template <class V>
std::string str(const V& v) {
  std::ostringstream os;
  os << v;
  return os.str();
}

void check_eps(double eps) {
  if (!(eps >= 0.0) || std::isinf(eps)) fail("eps must be a finite number >= 0, got " + str(eps));
}

void check_momentum(double m) {
  if (!(m >= 0.0 && m <= 1.0)) fail("momentum must be in [0, 1], got " + str(m));
}

void check_param(const ParamRef& p, const char* name, i64 n, const char* per) {
  if (!p.present()) return;
  if (p.dtype == DType::f16) fail(std::string(name) + " must be float32 or float64");
  if (p.size != n)
    fail(std::string(name) + " must have " + str(n) + " elements (one per " + per + "), got " +
         str(p.size));
}

void check_ncs(const NCSRef& t) {
  if (t.N < 0 || t.C < 1 || t.S < 0) fail("input must have N >= 0, C >= 1 and S >= 0");
  if (!t.x || !t.y) {
    if (t.N * t.C * t.S != 0) fail("input and output pointers must not be null");
  }
}

void check_running(const RunningUpdate& r, i64 C) {
  if (r.mean.present() != r.var.present())
    fail(r.mean.present() ? "running_var is required when running_mean is given"
                          : "running_mean is required when running_var is given");
  check_param(r.mean.as_const(), "running_mean", C, "channel");
  check_param(r.var.as_const(), "running_var", C, "channel");
}

// An optional parameter as a vector of n values (dflt where absent).
template <class A>
std::vector<A> param_vector(const ParamRef& p, i64 n, double dflt) {
  std::vector<A> v(static_cast<std::size_t>(n));
  for (i64 i = 0; i < n; ++i) v[static_cast<std::size_t>(i)] = static_cast<A>(p.present() ? p.get(i) : dflt);
  return v;
}

std::vector<double> param_vector_d(const ParamRef& p, i64 n, double dflt) {
  return param_vector<double>(p, n, dflt);
}

inline double inv_std(double var, double eps) { return 1.0 / std::sqrt(var + eps); }

// ---------------------------------------------------------------------------- run driver
struct RunGeom {
  i64 slots;        // statistic slots
  i64 K;            // runs per slot
  i64 L;            // elements per run (contiguous)
  i64 run_stride;   // elements from run k to run k + 1 of a slot
  i64 slot_stride;  // elements from slot s to slot s + 1
};

inline i64 chunks_for(i64 elems) {
  return elems <= kFuseElems ? 1 : (elems + kChunkElems - 1) / kChunkElems;
}

// Start of chunk j of P over [0, E) (exact, no overflow).
inline i64 chunk_start(i64 E, i64 P, i64 j) {
  const i64 q = E / P, r = E % P;
  return q * j + (j < r ? j : r);
}

// f(offset, len) for each contiguous piece of elements [e0, e1) of slot s.
template <class F>
inline void for_pieces(const RunGeom& g, i64 s, i64 e0, i64 e1, F&& f) {
  while (e0 < e1) {
    const i64 k = e0 / g.L, off = e0 % g.L;
    const i64 len = (g.L - off < e1 - e0) ? g.L - off : e1 - e0;
    f(s * g.slot_stride + k * g.run_stride + off, len);
    e0 += len;
  }
}

template <class T, class Reduce>
Moments reduce_range(const T* x, const RunGeom& g, i64 s, i64 e0, i64 e1, Reduce& reduce) {
  Moments m;
  for_pieces(g, s, e0, e1, [&](i64 off, i64 len) { m = merge_moments(m, reduce(x + off, len)); });
  return m;
}

// Stats: reduce each slot and call finish(s, moments) before apply(s, e0, e1);
// otherwise apply only.
template <bool Stats, class T, class Reduce, class Finish, class Apply>
void run_driver(const T* x, const RunGeom& g, Reduce reduce, Finish finish, Apply apply) {
  const i64 E = g.K * g.L;
  const i64 total = g.slots * E;
  if (total == 0) return;
  const i64 P = chunks_for(E);
  if (P == 1) {
    parallel_for(g.slots, threads_for(total, g.slots), [&](i64 s, int) {
      if constexpr (Stats) finish(s, reduce_range(x, g, s, 0, E, reduce));
      apply(s, i64{0}, E);
    });
    return;
  }
  const i64 items = g.slots * P;
  const int nt = threads_for(total, items);
  if constexpr (Stats) {
    std::vector<Moments> part(static_cast<std::size_t>(items));
    parallel_for(items, nt, [&](i64 i, int) {
      const i64 s = i / P, j = i % P;
      part[static_cast<std::size_t>(i)] =
          reduce_range(x, g, s, chunk_start(E, P, j), chunk_start(E, P, j + 1), reduce);
    });
    for (i64 s = 0; s < g.slots; ++s) {
      Moments m;
      for (i64 j = 0; j < P; ++j) m = merge_moments(m, part[static_cast<std::size_t>(s * P + j)]);
      finish(s, m);
    }
  }
  parallel_for(items, nt, [&](i64 i, int) {
    const i64 s = i / P, j = i % P;
    apply(s, chunk_start(E, P, j), chunk_start(E, P, j + 1));
  });
}

// ----------------------------------------------------------------------------- cl driver
struct CLGeom {
  i64 samples;  // independent (rows x C) matrices, one after another
  i64 rows;
  i64 C;
};

// Stats: per-channel moments of each sample, then finish(s, mean, m2, n) and
// apply(s, r0, r1, scratch); otherwise apply only.
template <bool Stats, class T, class Finish, class Apply>
void cl_driver(const T* x, const CLGeom& g, Finish finish, Apply apply) {
  using A = typename Kern<T>::A;
  const auto& k = Kern<T>::get();
  const i64 E = g.rows * g.C;
  const i64 total = g.samples * E;
  if (total == 0) return;
  i64 P = chunks_for(E);
  if (P > g.rows) P = g.rows;
  const i64 items = g.samples * P;
  const int nt = threads_for(total, items);
  const i64 scr_n = k.cl_scratch_elems(g.C);
  std::vector<A> scratch(static_cast<std::size_t>(scr_n * nt));
  auto scr = [&](int tid) { return scratch.data() + scr_n * tid; };
  if (P == 1) {
    std::vector<double> acc(Stats ? static_cast<std::size_t>(2 * g.C * nt) : 0);
    parallel_for(g.samples, nt, [&](i64 s, int tid) {
      if constexpr (Stats) {
        double* mean = acc.data() + 2 * g.C * tid;
        double* m2 = mean + g.C;
        double n = 0.0;
        k.cl_moments(x + s * E, g.rows, g.C, scr(tid), mean, m2, &n);
        finish(s, static_cast<const double*>(mean), static_cast<const double*>(m2), n);
      }
      apply(s, i64{0}, g.rows, scr(tid));
    });
    return;
  }
  if constexpr (Stats) {
    std::vector<double> pm(static_cast<std::size_t>(2 * items * g.C));
    std::vector<double> pn(static_cast<std::size_t>(items), 0.0);
    parallel_for(items, nt, [&](i64 i, int tid) {
      const i64 s = i / P, j = i % P;
      const i64 r0 = chunk_start(g.rows, P, j), r1 = chunk_start(g.rows, P, j + 1);
      double* mean = pm.data() + 2 * g.C * i;
      k.cl_moments(x + s * E + r0 * g.C, r1 - r0, g.C, scr(tid), mean, mean + g.C,
                   &pn[static_cast<std::size_t>(i)]);
    });
    std::vector<double> mean(static_cast<std::size_t>(g.C)), m2(static_cast<std::size_t>(g.C));
    for (i64 s = 0; s < g.samples; ++s) {
      double n = 0.0;
      for (i64 j = 0; j < P; ++j) {
        const i64 i = s * P + j;
        const double* pmean = pm.data() + 2 * g.C * i;
        for (i64 c = 0; c < g.C; ++c) {
          const Moments m = merge_moments({n, mean[static_cast<std::size_t>(c)], m2[static_cast<std::size_t>(c)]},
                                          {pn[static_cast<std::size_t>(i)], pmean[c], pmean[g.C + c]});
          mean[static_cast<std::size_t>(c)] = m.mean;
          m2[static_cast<std::size_t>(c)] = m.m2;
        }
        n += pn[static_cast<std::size_t>(i)];
      }
      finish(s, static_cast<const double*>(mean.data()), static_cast<const double*>(m2.data()), n);
    }
  }
  parallel_for(items, nt, [&](i64 i, int tid) {
    const i64 s = i / P, j = i % P;
    apply(s, chunk_start(g.rows, P, j), chunk_start(g.rows, P, j + 1), scr(tid));
  });
}

// Contiguous (N, C, S) data through the run driver with y = (x - M[s]) * Sc[s] + B[s] per slot.
template <bool Stats, class T, class Reduce, class Finish>
void per_channel_apply(const NCSRef& t, const RunGeom& g, Reduce reduce, Finish finish,
                       const std::vector<typename Kern<T>::A>& M,
                       const std::vector<typename Kern<T>::A>& Sc,
                       const std::vector<typename Kern<T>::A>& B) {
  const auto& k = Kern<T>::get();
  const T* x = static_cast<const T*>(t.x);
  T* y = static_cast<T*>(t.y);
  run_driver<Stats>(x, g, reduce, finish, [&](i64 s, i64 e0, i64 e1) {
    const auto i = static_cast<std::size_t>(s);
    for_pieces(g, s, e0, e1, [&](i64 off, i64 len) {
      k.apply_scalar(x + off, y + off, len, M[i], Sc[i], B[i]);
    });
  });
}

// ------------------------------------------------------------------------------ the ops
template <class T>
void batch_norm_t(const NCSRef& t, const RunningUpdate& running, ParamRef weight, ParamRef bias,
                  bool training, double eps, SavedStats saved) {
  using A = typename Kern<T>::A;
  const auto& k = Kern<T>::get();
  const i64 N = t.N, C = t.C, S = t.S;
  const i64 n = N * S;
  const std::vector<double> w = param_vector_d(weight, C, 1.0), b = param_vector_d(bias, C, 0.0);
  std::vector<A> M(static_cast<std::size_t>(C)), Sc(M), B(M);
  std::vector<double> mean(static_cast<std::size_t>(C)), var(mean);
  auto set_coefs = [&](i64 c, double m, double v) {
    const auto i = static_cast<std::size_t>(c);
    mean[i] = m;
    var[i] = v;
    M[i] = static_cast<A>(m);
    Sc[i] = static_cast<A>(w[i] * inv_std(v, eps));
    B[i] = static_cast<A>(b[i]);
  };
  const T* x = static_cast<const T*>(t.x);
  T* y = static_cast<T*>(t.y);
  if (!training) {
    for (i64 c = 0; c < C; ++c) set_coefs(c, running.mean.get(c), running.var.get(c));
  }
  if (t.layout == Layout::contiguous) {
    const RunGeom g{C, N, S, C * S, S};
    auto finish = [&](i64 c, const Moments& m) { set_coefs(c, m.mean, clamp_nonneg(m.m2 / m.n)); };
    if (training)
      per_channel_apply<true, T>(t, g, k.run_moments, finish, M, Sc, B);
    else
      per_channel_apply<false, T>(t, g, k.run_moments, finish, M, Sc, B);
  } else {
    const CLGeom g{1, n, C};
    auto finish = [&](i64, const double* mu, const double* m2, double cnt) {
      for (i64 c = 0; c < C; ++c) set_coefs(c, mu[c], clamp_nonneg(m2[c] / cnt));
    };
    auto apply = [&](i64, i64 r0, i64 r1, A* scr) {
      k.apply_cl(x + r0 * C, y + r0 * C, r1 - r0, C, M.data(), Sc.data(), B.data(), scr);
    };
    if (training)
      cl_driver<true>(x, g, finish, apply);
    else
      cl_driver<false>(x, g, finish, apply);
  }
  if (!training || n == 0) return;
  if (running.mean.present()) {
    const double mom = running.momentum;
    const double unbias = static_cast<double>(n) / static_cast<double>(n - 1);
    for (i64 c = 0; c < C; ++c) {
      const auto i = static_cast<std::size_t>(c);
      running.mean.set(c, (1.0 - mom) * running.mean.get(c) + mom * mean[i]);
      running.var.set(c, (1.0 - mom) * running.var.get(c) + mom * var[i] * unbias);
    }
  }
  for (i64 c = 0; c < C; ++c) {
    const auto i = static_cast<std::size_t>(c);
    if (saved.mean) saved.mean[c] = mean[i];
    if (saved.invstd) saved.invstd[c] = inv_std(var[i], eps);
  }
}

template <class T>
void instance_norm_t(const NCSRef& t, const RunningUpdate& running, ParamRef weight,
                     ParamRef bias, double eps, SavedStats saved) {
  using A = typename Kern<T>::A;
  const auto& k = Kern<T>::get();
  const i64 N = t.N, C = t.C, S = t.S, slots = N * C;
  const std::vector<double> w = param_vector_d(weight, C, 1.0), b = param_vector_d(bias, C, 0.0);
  std::vector<A> M(static_cast<std::size_t>(slots)), Sc(M), B(M);
  std::vector<double> mean(static_cast<std::size_t>(slots)), var(mean);
  auto set_coefs = [&](i64 slot, double m, double v) {
    const auto i = static_cast<std::size_t>(slot);
    const auto c = static_cast<std::size_t>(slot % C);
    mean[i] = m;
    var[i] = v;
    M[i] = static_cast<A>(m);
    Sc[i] = static_cast<A>(w[c] * inv_std(v, eps));
    B[i] = static_cast<A>(b[c]);
  };
  const T* x = static_cast<const T*>(t.x);
  T* y = static_cast<T*>(t.y);
  if (t.layout == Layout::contiguous) {
    const RunGeom g{slots, 1, S, 0, S};
    auto finish = [&](i64 s, const Moments& m) { set_coefs(s, m.mean, clamp_nonneg(m.m2 / m.n)); };
    per_channel_apply<true, T>(t, g, k.run_moments, finish, M, Sc, B);
  } else {
    const CLGeom g{N, S, C};
    auto finish = [&](i64 s, const double* mu, const double* m2, double cnt) {
      for (i64 c = 0; c < C; ++c) set_coefs(s * C + c, mu[c], clamp_nonneg(m2[c] / cnt));
    };
    auto apply = [&](i64 s, i64 r0, i64 r1, A* scr) {
      const i64 off = s * S * C + r0 * C;
      const auto i = static_cast<std::size_t>(s * C);
      k.apply_cl(x + off, y + off, r1 - r0, C, M.data() + i, Sc.data() + i, B.data() + i, scr);
    };
    cl_driver<true>(x, g, finish, apply);
  }
  if (slots * S == 0) return;
  if (running.mean.present() && N > 0) {
    const double mom = running.momentum;
    const double unbias = static_cast<double>(S) / static_cast<double>(S - 1);
    for (i64 c = 0; c < C; ++c) {
      double ms = 0.0, vs = 0.0;
      for (i64 s = 0; s < N; ++s) {
        ms += mean[static_cast<std::size_t>(s * C + c)];
        vs += var[static_cast<std::size_t>(s * C + c)];
      }
      const double bm = ms / static_cast<double>(N), bv = vs / static_cast<double>(N) * unbias;
      running.mean.set(c, (1.0 - mom) * running.mean.get(c) + mom * bm);
      running.var.set(c, (1.0 - mom) * running.var.get(c) + mom * bv);
    }
  }
  for (i64 s = 0; s < slots; ++s) {
    const auto i = static_cast<std::size_t>(s);
    if (saved.mean) saved.mean[s] = mean[i];
    if (saved.invstd) saved.invstd[s] = inv_std(var[i], eps);
  }
}

template <class T>
void group_norm_t(const NCSRef& t, i64 G, ParamRef weight, ParamRef bias, double eps,
                  SavedStats saved) {
  using A = typename Kern<T>::A;
  const auto& k = Kern<T>::get();
  const i64 N = t.N, C = t.C, S = t.S, Cg = C / G, slots = N * G;
  const std::vector<double> w = param_vector_d(weight, C, 1.0), b = param_vector_d(bias, C, 0.0);
  const std::vector<A> ba = param_vector<A>(bias, C, 0.0);
  std::vector<double> mean(static_cast<std::size_t>(slots)), istd(mean);
  std::vector<A> Mg(static_cast<std::size_t>(slots)), Ig(Mg);
  auto set_stats = [&](i64 slot, const Moments& m) {
    const auto i = static_cast<std::size_t>(slot);
    mean[i] = m.mean;
    istd[i] = inv_std(clamp_nonneg(m.m2 / m.n), eps);
    Mg[i] = static_cast<A>(mean[i]);
    Ig[i] = static_cast<A>(istd[i]);
  };
  const T* x = static_cast<const T*>(t.x);
  T* y = static_cast<T*>(t.y);
  if (t.layout == Layout::contiguous) {
    const RunGeom g{slots, 1, Cg * S, 0, Cg * S};
    run_driver<true>(x, g, k.run_moments, set_stats, [&](i64 slot, i64 e0, i64 e1) {
      const auto si = static_cast<std::size_t>(slot);
      const i64 c0 = (slot % G) * Cg;
      // Split [e0, e1) at channel boundaries: each channel has its own weight and bias.
      while (e0 < e1) {
        const i64 c = c0 + e0 / S, end = (e0 / S + 1) * S;
        const i64 len = (end < e1 ? end : e1) - e0;
        const auto ci = static_cast<std::size_t>(c);
        const i64 off = slot * Cg * S + e0;
        k.apply_scalar(x + off, y + off, len, Mg[si],
                       static_cast<A>(w[ci] * istd[si]), ba[ci]);
        e0 += len;
      }
    });
  } else {
    std::vector<A> M(static_cast<std::size_t>(N * C)), Sc(M), B(M);
    const CLGeom g{N, S, C};
    auto finish = [&](i64 s, const double* mu, const double* m2, double cnt) {
      for (i64 gi = 0; gi < G; ++gi) {
        Moments m;
        for (i64 c = gi * Cg; c < (gi + 1) * Cg; ++c) m = merge_moments(m, {cnt, mu[c], m2[c]});
        const i64 slot = s * G + gi;
        set_stats(slot, m);
        for (i64 c = gi * Cg; c < (gi + 1) * Cg; ++c) {
          const auto i = static_cast<std::size_t>(s * C + c);
          const auto ci = static_cast<std::size_t>(c);
          M[i] = Mg[static_cast<std::size_t>(slot)];
          Sc[i] = static_cast<A>(w[ci] * istd[static_cast<std::size_t>(slot)]);
          B[i] = ba[ci];
        }
      }
    };
    auto apply = [&](i64 s, i64 r0, i64 r1, A* scr) {
      const i64 off = s * S * C + r0 * C;
      const auto i = static_cast<std::size_t>(s * C);
      k.apply_cl(x + off, y + off, r1 - r0, C, M.data() + i, Sc.data() + i, B.data() + i, scr);
    };
    cl_driver<true>(x, g, finish, apply);
  }
  if (slots * Cg * S == 0) return;
  for (i64 s = 0; s < slots; ++s) {
    const auto i = static_cast<std::size_t>(s);
    if (saved.mean) saved.mean[s] = mean[i];
    if (saved.invstd) saved.invstd[s] = istd[i];
  }
}

template <class T>
void row_norm_t(const void* xv, void* yv, i64 rows, i64 L, ParamRef weight, ParamRef bias,
                double eps, SavedStats saved, bool rms) {
  using A = typename Kern<T>::A;
  const auto& k = Kern<T>::get();
  const T* x = static_cast<const T*>(xv);
  T* y = static_cast<T*>(yv);
  std::vector<A> W, B;
  if (weight.present()) W = param_vector<A>(weight, L, 1.0);
  if (bias.present()) B = param_vector<A>(bias, L, 0.0);
  std::vector<double> mean(static_cast<std::size_t>(rows)), istd(mean);
  std::vector<A> Mr(static_cast<std::size_t>(rows)), Ir(Mr);
  auto finish = [&](i64 r, const Moments& m) {
    const auto i = static_cast<std::size_t>(r);
    mean[i] = rms ? 0.0 : m.mean;
    istd[i] = inv_std(clamp_nonneg(m.m2 / m.n), eps);
    Mr[i] = static_cast<A>(mean[i]);
    Ir[i] = static_cast<A>(istd[i]);
  };
  auto apply = [&](i64 r, i64 e0, i64 e1) {
    const auto i = static_cast<std::size_t>(r);
    const i64 off = r * L + e0;
    k.apply_row(x + off, y + off, e1 - e0, Mr[i], Ir[i], W.empty() ? nullptr : W.data() + e0,
                B.empty() ? nullptr : B.data() + e0);
  };
  const RunGeom g{rows, 1, L, 0, L};
  if (rms) {
    auto sumsq = [&](const T* p, i64 len) {
      return Moments{static_cast<double>(len), 0.0, k.run_sumsq(p, len)};
    };
    run_driver<true>(x, g, sumsq, finish, apply);
  } else {
    run_driver<true>(x, g, k.run_moments, finish, apply);
  }
  if (rows * L == 0) return;
  for (i64 r = 0; r < rows; ++r) {
    const auto i = static_cast<std::size_t>(r);
    if (saved.mean) saved.mean[r] = mean[i];
    if (saved.invstd) saved.invstd[r] = istd[i];
  }
}

template <class F>
void by_dtype(DType dt, F&& f) {
  switch (dt) {
    case DType::f16:
      f(half_t{});
      return;
    case DType::f32:
      f(float{});
      return;
    case DType::f64:
      f(double{});
      return;
  }
  fail("unsupported dtype");
}

}  // namespace
}  // namespace ops

void batch_norm(const NCSRef& t, const RunningUpdate& running, ParamRef weight, ParamRef bias,
                bool training, double eps, SavedStats saved) {
  ops::check_ncs(t);
  ops::check_eps(eps);
  ops::check_momentum(running.momentum);
  ops::check_running(running, t.C);
  ops::check_param(weight, "weight", t.C, "channel");
  ops::check_param(bias, "bias", t.C, "channel");
  if (!training && !running.mean.present())
    ops::fail("running_mean and running_var are required when training=False");
  if (training && t.N * t.S == 1)
    ops::fail("Expected more than 1 value per channel when training, got input with N=" +
              ops::str(t.N) + " and 1 spatial position");
  ops::by_dtype(t.dtype, [&](auto tag) {
    ops::batch_norm_t<decltype(tag)>(t, running, weight, bias, training, eps, saved);
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
    batch_norm(t, {running.mean, running.var, running.momentum}, weight, bias, false, eps);
    return;
  }
  if (t.S == 1 && t.N * t.C > 0)
    ops::fail("Expected more than 1 spatial element when using input statistics, got " +
              ops::str(t.S));
  ops::by_dtype(t.dtype, [&](auto tag) {
    ops::instance_norm_t<decltype(tag)>(t, running, weight, bias, eps, saved);
  });
}

void group_norm(const NCSRef& t, std::int64_t groups, ParamRef weight, ParamRef bias,
                double eps, SavedStats saved) {
  ops::check_ncs(t);
  ops::check_eps(eps);
  if (groups <= 0) ops::fail("num_groups must be > 0, got " + ops::str(groups));
  if (t.C % groups != 0)
    ops::fail("num_groups (" + ops::str(groups) + ") must divide the number of channels (" +
              ops::str(t.C) + ")");
  ops::check_param(weight, "weight", t.C, "channel");
  ops::check_param(bias, "bias", t.C, "channel");
  ops::by_dtype(t.dtype, [&](auto tag) {
    ops::group_norm_t<decltype(tag)>(t, groups, weight, bias, eps, saved);
  });
}

void layer_norm(const void* x, void* y, DType dtype, std::int64_t rows, std::int64_t row_len,
                ParamRef weight, ParamRef bias, double eps, SavedStats saved) {
  ops::check_eps(eps);
  if (rows < 0 || row_len < 0) ops::fail("rows and row_len must be >= 0");
  ops::check_param(weight, "weight", row_len, "normalized element");
  ops::check_param(bias, "bias", row_len, "normalized element");
  ops::by_dtype(dtype, [&](auto tag) {
    ops::row_norm_t<decltype(tag)>(x, y, rows, row_len, weight, bias, eps, saved, false);
  });
}

void rms_norm(const void* x, void* y, DType dtype, std::int64_t rows, std::int64_t row_len,
              ParamRef weight, double eps, SavedStats saved) {
  ops::check_eps(eps);
  if (rows < 0 || row_len < 0) ops::fail("rows and row_len must be >= 0");
  ops::check_param(weight, "weight", row_len, "normalized element");
  ops::by_dtype(dtype, [&](auto tag) {
    ops::row_norm_t<decltype(tag)>(x, y, rows, row_len, weight, ParamRef{}, eps, saved, true);
  });
}

}  // namespace normcpp
