// Backward planners. Every norm's gradient has the same shape (PyTorch's formulation):
// per slot two reductions, S = sum(dy * g) and D = sum(dy * g * (x - mean)), with g the
// per-element weight where the weight varies inside a slot (group/layer norm), then one
// elementwise pass dx = a * g * dy + b * (x - mean) + c with
//   a = invstd, b = -invstd^3 * D / M, c = -invstd * S / M   (M elements per slot),
// and b = c = 0 for an eval-mode (frozen) batch norm. The same drivers as the forward pass cut
// the work, so results are bitwise identical for any thread count.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "normcpp/normcpp.hpp"
#include "ops/common.hpp"
#include "ops/drivers.hpp"

namespace normcpp {
namespace ops {
namespace {

// Per-slot scalar coefficients of dx = a * dy + b * (x - m) + c, in the kernel's type.
template <class A>
struct GradCoefs {
  LineVec<A> M, Av, Bv, Cv;
  explicit GradCoefs(i64 n) : M(n), Av(n), Bv(n), Cv(n) {}
  // weight w, invstd r, slot size n; sums S = sum dy * g, D = sum dy * g * (x - m).
  void set(i64 i, double m, double w, double r, double n, double S, double D, bool through) {
    const auto u = static_cast<std::size_t>(i);
    M[u] = static_cast<A>(m);
    Av[u] = static_cast<A>(w * r);
    Bv[u] = static_cast<A>(through ? -w * r * r * r * D / n : 0.0);
    Cv[u] = static_cast<A>(through ? -w * r * S / n : 0.0);
  }
};

// Channel-wise (batch norm) gradient pass over an (N, C, S) tensor in either layout:
// Stats: per-channel (sum dy, sum dy * (x - mu[c])) reported to finish(c, {n, S, D});
// Apply: dx with coefficients cf (filled by finish or beforehand).
template <bool Stats, bool Apply, class T, class Finish>
void channel_grad_pass(const NCSGradRef& t, const typename Kern<T>::A* mu, Finish finish,
                       const GradCoefs<typename Kern<T>::A>& cf) {
  using A = typename Kern<T>::A;
  const auto& k = Kern<T>::get();
  const T* x = static_cast<const T*>(t.x);
  const T* dy = static_cast<const T*>(t.dy);
  T* dx = static_cast<T*>(t.dx);
  const i64 C = t.C;
  const bool st = stream_output<T>(t.N * C * t.S, dx, x, dy);
  if (t.layout == Layout::contiguous) {
    const RunGeom g{C, t.N, t.S, C * t.S, t.S, 2 * static_cast<i64>(sizeof(T))};  // x, dy
    run_driver<Stats, SumMerge>(
        g,
        [&](i64 c, i64 off, i64 len) {
          double out[2];
          k.run_dot(x + off, dy + off, len, mu[c], nullptr, out);
          return Moments{static_cast<double>(len), out[0], out[1]};
        },
        finish,
        [&](i64 c, i64 e0, i64 e1) {
          if constexpr (Apply) {
            const auto u = static_cast<std::size_t>(c);
            for_pieces(g, c, e0, e1, [&](i64 off, i64 len) {
              k.bwd_row(x + off, dy + off, dx + off, len, cf.M[u], cf.Av[u], nullptr, cf.Bv[u],
                        cf.Cv[u], st);
            });
          }
        });
    return;
  }
  cl_driver<Stats, A>(
      CLGeom{1, t.N * t.S, C}, k.cl_scratch_elems(C),
      [&](i64, i64 r0, i64 r1, A* scr, double* acc, double* n) {
        k.cl_dot(x + r0 * C, dy + r0 * C, r1 - r0, C, mu, scr, acc, acc + C);
        *n += static_cast<double>(r1 - r0);
      },
      ClSumMerge{C},
      [&](i64, const double* acc, double n) {
        for (i64 c = 0; c < C; ++c) finish(c, Moments{n, acc[c], acc[C + c]});
      },
      [&](i64, i64 r0, i64 r1, A* scr) {
        if constexpr (Apply)
          k.bwd_cl(x + r0 * C, dy + r0 * C, dx + r0 * C, r1 - r0, C, cf.M.data(), cf.Av.data(),
                   cf.Bv.data(), cf.Cv.data(), scr, st);
      });
}

template <class A>
LineVec<A> to_a(const double* v, i64 n) {
  LineVec<A> out(n);
  for (i64 i = 0; i < n; ++i) out[static_cast<std::size_t>(i)] = static_cast<A>(v[i]);
  return out;
}

template <class T>
void batch_norm_backward_t(const NCSGradRef& t, ParamRef weight, const double* mean,
                           const double* invstd, bool training, double* gw, double* gb) {
  using A = typename Kern<T>::A;
  const i64 C = t.C;
  const std::vector<double> w = param_vector_d(weight, C, 1.0);
  const LineVec<A> mu = to_a<A>(mean, C);
  GradCoefs<A> cf(C);
  auto finish = [&](i64 c, const Moments& s) {
    const auto u = static_cast<std::size_t>(c);
    cf.set(c, mean[c], w[u], invstd[c], s.n, s.mean, s.m2, training);
    if (gw) gw[c] = s.m2 * invstd[c];
    if (gb) gb[c] = s.mean;
  };
  channel_grad_pass<true, true, T>(t, mu.data(), finish, cf);
}

template <class T>
void batch_norm_backward_reduce_t(const NCSGradRef& t, const double* mean, const double* invstd,
                                  double* sum_dy, double* sum_dy_xhat) {
  using A = typename Kern<T>::A;
  const LineVec<A> mu = to_a<A>(mean, t.C);
  for (i64 c = 0; c < t.C; ++c) sum_dy[c] = sum_dy_xhat[c] = 0.0;
  auto finish = [&](i64 c, const Moments& s) {
    sum_dy[c] = s.mean;
    sum_dy_xhat[c] = s.m2 * invstd[c];
  };
  channel_grad_pass<true, false, T>(t, mu.data(), finish, GradCoefs<A>(0));
}

template <class T>
void batch_norm_backward_elemt_t(const NCSGradRef& t, ParamRef weight, const double* mean,
                                 const double* invstd, const double* sum_dy,
                                 const double* sum_dy_xhat, double count) {
  using A = typename Kern<T>::A;
  const i64 C = t.C;
  const std::vector<double> w = param_vector_d(weight, C, 1.0);
  GradCoefs<A> cf(C);
  for (i64 c = 0; c < C; ++c)
    cf.set(c, mean[c], w[static_cast<std::size_t>(c)], invstd[c], count, sum_dy[c],
           sum_dy_xhat[c] / invstd[c], true);
  channel_grad_pass<false, true, T>(t, nullptr, [](i64, const Moments&) {}, cf);
}

// Instance norm (G == C) and group norm share this: slots (n, g) of C / G channels.
template <class T>
void group_backward_t(const NCSGradRef& t, i64 G, ParamRef weight, const double* mean,
                      const double* invstd, double* gw, double* gb) {
  using A = typename Kern<T>::A;
  const auto& k = Kern<T>::get();
  const i64 N = t.N, C = t.C, S = t.S, Cg = C / G;
  const std::vector<double> w = param_vector_d(weight, C, 1.0);
  // Non-empty NCHW groups that are one chunk each go whole to the kernel's slot loop (below), which
  // needs neither the per-channel means nor the coefficients.
  const bool whole = t.layout == Layout::contiguous && Cg * S > 0 && chunks_for(Cg * S) == 1;
  const i64 NCc = whole ? 0 : N * C;
  // Per (n, c): the group's mean, and the sums the reduction produces.
  LineVec<A> mu(NCc);
  for (i64 sg = 0; NCc && sg < N * G; ++sg)  // no division per channel (~30 cycles each)
    std::fill_n(mu.data() + sg * Cg, Cg, static_cast<A>(mean[sg]));
  std::vector<double> sdy(static_cast<std::size_t>(N * C)), sdx(sdy);
  GradCoefs<A> cf(NCc);
  // Coefficients of the channels of slot (n, g) once its channels' sums are known.
  auto finish_group = [&](i64 n, i64 gi) {
    const i64 slot = n * G + gi;
    double Sg = 0.0, Dg = 0.0;
    for (i64 c = gi * Cg; c < (gi + 1) * Cg; ++c) {
      const auto u = static_cast<std::size_t>(n * C + c);
      Sg += w[static_cast<std::size_t>(c)] * sdy[u];
      Dg += w[static_cast<std::size_t>(c)] * sdx[u];
    }
    const double r = invstd[slot], M = static_cast<double>(Cg * S);
    const A mg = static_cast<A>(mean[slot]), bg = static_cast<A>(-r * r * r * Dg / M),
            cg = static_cast<A>(-r * Sg / M);
    for (i64 c = gi * Cg; c < (gi + 1) * Cg; ++c) {
      const auto u = static_cast<std::size_t>(n * C + c);
      cf.M[u] = mg;
      cf.Av[u] = static_cast<A>(w[static_cast<std::size_t>(c)] * r);
      cf.Bv[u] = bg;
      cf.Cv[u] = cg;
    }
  };
  const T* x = static_cast<const T*>(t.x);
  const T* dy = static_cast<const T*>(t.dy);
  T* dx = static_cast<T*>(t.dx);
  const bool st = stream_output<T>(N * C * S, dx, x, dy);
  if (t.layout == Layout::contiguous) {
    // Slots of the drivers are (n, c) planes; Cg == 1 (instance norm) fuses the two passes.
    const RunGeom g{N * C, 1, S, 0, S};
    auto reduce = [&](i64 s, i64 off, i64 len) {
      double out[2];
      k.run_dot(x + off, dy + off, len, mu[static_cast<std::size_t>(s)], nullptr, out);
      return Moments{static_cast<double>(len), out[0], out[1]};
    };
    auto store = [&](i64 s, const Moments& m) {
      sdy[static_cast<std::size_t>(s)] = m.mean;
      sdx[static_cast<std::size_t>(s)] = m.m2;
      if (Cg == 1) finish_group(s / C, s % C);
    };
    auto apply = [&](i64 s, i64 e0, i64 e1) {
      const auto u = static_cast<std::size_t>(s);
      const i64 off = s * S + e0;
      k.bwd_row(x + off, dy + off, dx + off, e1 - e0, cf.M[u], cf.Av[u], nullptr, cf.Bv[u],
                cf.Cv[u], st);
    };
    if (whole) {
      // Slots (groups) small enough to be one chunk: reduced plane by plane, their
      // coefficients, then normalized while they are still in cache (instead of a reduction
      // over the whole tensor and a second read of it from memory: GroupNorm backward NCHW
      // (32,64,56,56) G = 32, 1 thread, 2958-3081 -> 2194-2289 us), by the kernel's slot loop
      // in blocks of slots (one table call a block instead of two a plane and the drivers'
      // calls between: (128,512,7,7) G = 32, 1 thread, min us 3763-3878 -> 1800-1938,
      // (256,64,10,10) 772-784 -> 537-553, InstanceNorm (64,256,14,14) 1306-1355 -> 979-1019).
      const i64 E = Cg * S, slots = N * G;
      const i64 per = std::max(kChunkElems / (4 * E), i64{1});
      const i64 items = (slots + per - 1) / per;
      const double* wp = weight.present() ? w.data() : nullptr;
      parallel_for(items, threads_for(slots * E, items), [&](i64 j, int) {
        const i64 i0 = j * per, i1 = std::min(slots, i0 + per);
        k.slots_bwd(x + i0 * E, dy + i0 * E, dx + i0 * E, i1 - i0, Cg, S, (i0 * Cg) % C, C, wp,
                    mean + i0, invstd + i0, sdy.data() + i0 * Cg, sdx.data() + i0 * Cg, st);
      });
    } else if (Cg == 1) {
      run_driver<true, SumMerge>(g, reduce, store, apply);
    } else {
      run_driver<true, SumMerge>(g, reduce, store, [](i64, i64, i64) {});
      for (i64 n = 0; n < N; ++n)
        for (i64 gi = 0; gi < G; ++gi) finish_group(n, gi);
      run_driver<false>(g, reduce, store, apply);
    }
  } else {
    cl_driver<true, A>(
        CLGeom{N, S, C}, k.cl_scratch_elems(C),
        [&](i64 s, i64 r0, i64 r1, A* scr, double* acc, double* n) {
          const i64 off = (s * S + r0) * C;
          k.cl_dot(x + off, dy + off, r1 - r0, C, mu.data() + s * C, scr, acc, acc + C);
          *n += static_cast<double>(r1 - r0);
        },
        ClSumMerge{C},
        [&](i64 s, const double* acc, double) {
          for (i64 c = 0; c < C; ++c) {
            sdy[static_cast<std::size_t>(s * C + c)] = acc[c];
            sdx[static_cast<std::size_t>(s * C + c)] = acc[C + c];
          }
          for (i64 gi = 0; gi < G; ++gi) finish_group(s, gi);
        },
        [&](i64 s, i64 r0, i64 r1, A* scr) {
          const i64 off = (s * S + r0) * C;
          const auto u = static_cast<std::size_t>(s * C);
          k.bwd_cl(x + off, dy + off, dx + off, r1 - r0, C, cf.M.data() + u, cf.Av.data() + u,
                   cf.Bv.data() + u, cf.Cv.data() + u, scr, st);
        });
  }
  // Parameter gradients, summed over samples in order.
  for (i64 c = 0; c < C; ++c) {
    double a = 0.0, b = 0.0;
    for (i64 n = 0; n < N; ++n) {
      const auto u = static_cast<std::size_t>(n * C + c);
      a += sdx[u] * invstd[n * G + c / Cg];
      b += sdy[u];
    }
    if (gw) gw[c] = a;
    if (gb) gb[c] = b;
  }
}

// Rows per tile_dot_cols call (the kernel's register tile; kFlushRows is a multiple of it).
constexpr i64 kTileRows = 4;
// Row by row (row_backward_fused's `seq` order) the tile kernel computes column sums only,
// and takes tiles of 2 * kTileRows rows where their x and dy fit in this much of L1: G and B
// are then loaded and stored once for 8 rows, not twice (the same bits: the kernel adds rows
// in order). LayerNorm backward (64,197,384) float32, 1 thread, min us of 3-4 alternations:
// 2778-2931 -> 2453-2713 (AVX-512), 2652-2776 -> 2490-2661 (AVX2); with L = 768 (48 KB a
// tile) not faster. kFlushRows is a multiple of 8.
constexpr i64 kSeqTileBytes = 24 * 1024;

// Column sums for layer/rms norm parameter gradients: gw[j] = sum_r dy * (x - m_r) * r_r,
// gb[j] = sum_r dy, by column blocks (one thread each), flushed to double every kFlushRows.
template <class T>
void row_param_grads(const T* x, const T* dy, i64 rows, i64 L, const std::vector<typename Kern<T>::A>& Mr,
                     const std::vector<typename Kern<T>::A>& Ir, double* gw, double* gb) {
  using A = typename Kern<T>::A;
  const auto& k = Kern<T>::get();
  constexpr i64 kCols = 512, kFlushRows = 64;
  const i64 blocks = (L + kCols - 1) / kCols;
  parallel_for(blocks, threads_for(rows * L, blocks), [&](i64 bi, int) {
    const i64 j0 = bi * kCols, w = (L - j0 < kCols) ? L - j0 : kCols;
    std::vector<A> G(static_cast<std::size_t>(w)), B(static_cast<std::size_t>(w));
    for (i64 j = 0; j < w; ++j) {
      if (gw) gw[j0 + j] = 0.0;
      if (gb) gb[j0 + j] = 0.0;
    }
    for (i64 r0 = 0; r0 < rows; r0 += kFlushRows) {
      for (auto& v : G) v = A(0);
      for (auto& v : B) v = A(0);
      const i64 r1 = (rows - r0 < kFlushRows) ? rows : r0 + kFlushRows;
      for (i64 r = r0; r < r1; r += kTileRows) {
        const auto u = static_cast<std::size_t>(r);
        k.tile_dot_cols(x + r * L + j0, dy + r * L + j0, std::min(kTileRows, r1 - r), L, w,
                        &Mr[u], &Ir[u], nullptr, nullptr, G.data(), gb ? B.data() : nullptr);
      }
      for (i64 j = 0; j < w; ++j) {
        if (gw) gw[j0 + j] += static_cast<double>(G[static_cast<std::size_t>(j)]);
        if (gb) gb[j0 + j] += static_cast<double>(B[static_cast<std::size_t>(j)]);
      }
    }
  });
}

// Rows up to this long are differentiated in one visit: x and dy of a row (<= 128 KB in
// float32) stay in cache while the row's two sums, its column-sum contributions (dgamma, dbeta)
// and its dx are computed; longer rows take the two-visit path that splits one row's sums.
constexpr i64 kFusedRowLen = 16384;

// Layer/RMS norm backward in one visit per row. Rows are cut into fixed chunks (a function of
// the shape only); each chunk adds its rows' dgamma/dbeta contributions into its thread's float
// partials, flushed to the chunk's own double partials every kFlushRows rows, and the chunks'
// partials are summed in chunk order: bitwise the same for any thread count. Scratch:
// O((chunks + threads) x L), chunks <= kMaxRowChunks (fewer, larger chunks than the forward's:
// this scratch is allocated and zeroed per call, 1.2 MB at 64 chunks of L = 768). Per tile of
// rows: sums and column sums in one read, then dx row by row (dx may overwrite dy).
constexpr i64 kMaxRowChunks = 16;

template <class T>
void row_backward_fused(const T* x, const T* dy, T* dx, i64 rows, i64 L,
                        const typename Kern<T>::A* Wp, const double* mean, const double* invstd,
                        const std::vector<typename Kern<T>::A>& Mr,
                        const std::vector<typename Kern<T>::A>& Ir, double* gw, double* gb) {
  using A = typename Kern<T>::A;
  const auto& k = Kern<T>::get();
  constexpr i64 kFlushRows = 64;
  const i64 per_chunk_min = (kChunkElems + L - 1) / (L > 0 ? L : 1);
  i64 P = (rows + per_chunk_min - 1) / per_chunk_min;
  if (P > kMaxRowChunks) P = kMaxRowChunks;
  if (P < 1) P = 1;
  const bool cols = gw || gb;
  const bool st = stream_output<T>(rows * L, dx, x, dy);
  const bool from_memory = rows * L * static_cast<i64>(sizeof(T)) >= memory_bound_bytes();
  const int nt = threads_for(rows * L, P);
  const auto uL = static_cast<std::size_t>(L), uP = static_cast<std::size_t>(P);
  // Float accumulators G, B per thread, double partials GD, BD per chunk (allocated up front:
  // no allocation inside the parallel region).
  std::vector<A> facc(cols ? static_cast<std::size_t>(nt) * 2 * uL : 0);
  std::vector<double> dacc(cols ? uP * 2 * uL : 0, 0.0);
  // Tensors that come from memory are first read row by row: the tile kernel reads its
  // rows side by side, a pattern the hardware prefetcher follows badly (64x197x384, 1
  // thread: 3550 -> 2870 us), while from the caches one read of the tile for sums and
  // column sums together is faster (4x197x384: 106 vs 122 us). (The two sum in different
  // orders: the choice depends on the shape and the machine only.)
  const bool seq = from_memory || !cols;
  const i64 tile =
      seq && 4 * kTileRows * L * static_cast<i64>(sizeof(T)) <= kSeqTileBytes ? 2 * kTileRows
                                                                              : kTileRows;
  parallel_for(P, nt, [&](i64 j, int tid) {
    const i64 r0 = chunk_start(rows, P, j), r1 = chunk_start(rows, P, j + 1);
    const auto u = static_cast<std::size_t>(j);
    A* G = cols ? facc.data() + static_cast<std::size_t>(tid) * 2 * uL : nullptr;
    A* B = cols ? G + uL : nullptr;
    double* GD = cols ? dacc.data() + u * 2 * uL : nullptr;
    double* BD = cols ? GD + uL : nullptr;
    for (i64 f0 = r0; f0 < r1; f0 += kFlushRows) {
      const i64 f1 = (r1 - f0 < kFlushRows) ? r1 : f0 + kFlushRows;
      if (cols) {
        std::fill(G, G + L, A(0));
        std::fill(B, B + L, A(0));
      }
      k.bwd_rows(x + f0 * L, dy + f0 * L, dx + f0 * L, f1 - f0, r1 - f1, L, tile, seq,
                 &Mr[static_cast<std::size_t>(f0)], &Ir[static_cast<std::size_t>(f0)],
                 invstd + f0, Wp, mean != nullptr, G, gb ? B : nullptr, st);
      if (cols)
        for (i64 c = 0; c < L; ++c) {
          GD[c] += static_cast<double>(G[c]);
          BD[c] += static_cast<double>(B[c]);
        }
    }
  });
  if (!cols) return;
  for (i64 c = 0; c < L; ++c) {
    double a = 0.0, b = 0.0;
    for (std::size_t j = 0; j < uP; ++j) {
      a += dacc[j * 2 * uL + static_cast<std::size_t>(c)];
      b += dacc[j * 2 * uL + uL + static_cast<std::size_t>(c)];
    }
    if (gw) gw[c] = a;
    if (gb) gb[c] = b;
  }
}

template <class T>
void row_backward_t(const void* xv, const void* dyv, void* dxv, i64 rows, i64 L,
                    ParamRef weight, const double* mean, const double* invstd, double* gw,
                    double* gb) {
  using A = typename Kern<T>::A;
  const auto& k = Kern<T>::get();
  const T* x = static_cast<const T*>(xv);
  const T* dy = static_cast<const T*>(dyv);
  T* dx = static_cast<T*>(dxv);
  std::vector<A> w_store;
  const A* Wp = param_view<A>(weight, L, w_store, rows);
  std::vector<A> Mr(static_cast<std::size_t>(rows)), Ir(Mr);
  for (i64 r = 0; r < rows; ++r) {
    Mr[static_cast<std::size_t>(r)] = static_cast<A>(mean ? mean[r] : 0.0);
    Ir[static_cast<std::size_t>(r)] = static_cast<A>(invstd[r]);
  }
  if (L <= kFusedRowLen) {
    row_backward_fused<T>(x, dy, dx, rows, L, Wp, mean, invstd, Mr, Ir, gw, gb);
    return;
  }
  // Parameter gradients first: dx may overwrite dy (in-place backward).
  if (gw || gb) row_param_grads<T>(x, dy, rows, L, Mr, Ir, gw, gb);
  std::vector<A> Bv(static_cast<std::size_t>(rows)), Cv(Bv);
  const bool st = stream_output<T>(rows * L, dx, x, dy);
  const RunGeom g{rows, 1, L, 0, L};
  run_driver<true, SumMerge>(
      g,
      [&](i64 r, i64 off, i64 len) {
        double out[2];
        k.run_dot(x + off, dy + off, len, Mr[static_cast<std::size_t>(r)],
                  Wp ? Wp + (off - r * L) : nullptr, out);
        return Moments{static_cast<double>(len), out[0], out[1]};
      },
      [&](i64 r, const Moments& s) {
        const auto u = static_cast<std::size_t>(r);
        const double iv = invstd[r], n = static_cast<double>(L);
        Bv[u] = static_cast<A>(-iv * iv * iv * s.m2 / n);
        Cv[u] = static_cast<A>(mean ? -iv * s.mean / n : 0.0);
      },
      [&](i64 r, i64 e0, i64 e1) {
        const auto u = static_cast<std::size_t>(r);
        const i64 off = r * L + e0;
        k.bwd_row(x + off, dy + off, dx + off, e1 - e0, Mr[u], Ir[u], Wp ? Wp + e0 : nullptr,
                  Bv[u], Cv[u], st);
      });
}

// (N, C) data (one spatial position) is channels-last too; that path vectorizes along C.
NCSGradRef prefer_rows(NCSGradRef t) {
  if (t.S == 1) t.layout = Layout::channels_last;
  return t;
}

}  // namespace
}  // namespace ops

void batch_norm_backward(const NCSGradRef& t_in, ParamRef weight, const double* mean,
                         const double* invstd, bool training, double* grad_weight,
                         double* grad_bias) {
  const NCSGradRef t = ops::prefer_rows(t_in);
  ops::check_ncs({t.x, t.dx, t.dtype, t.N, t.C, t.S, t.layout});
  ops::check_param(weight, "weight", t.C, "channel");
  ops::by_dtype(t.dtype, [&](auto tag) {
    ops::batch_norm_backward_t<decltype(tag)>(t, weight, mean, invstd, training, grad_weight,
                                              grad_bias);
  });
}

void batch_norm_backward_reduce(const NCSGradRef& t_in, const double* mean, const double* invstd,
                                double* sum_dy, double* sum_dy_xhat) {
  const NCSGradRef t = ops::prefer_rows(t_in);
  ops::check_ncs({t.x, const_cast<void*>(t.dy), t.dtype, t.N, t.C, t.S, t.layout});
  ops::by_dtype(t.dtype, [&](auto tag) {
    ops::batch_norm_backward_reduce_t<decltype(tag)>(t, mean, invstd, sum_dy, sum_dy_xhat);
  });
}

void batch_norm_backward_elemt(const NCSGradRef& t_in, ParamRef weight, const double* mean,
                               const double* invstd, const double* sum_dy,
                               const double* sum_dy_xhat, double count) {
  const NCSGradRef t = ops::prefer_rows(t_in);
  ops::check_ncs({t.x, t.dx, t.dtype, t.N, t.C, t.S, t.layout});
  ops::check_param(weight, "weight", t.C, "channel");
  if (!(count >= 1.0)) ops::fail("count must be >= 1, got " + ops::str(count));
  ops::by_dtype(t.dtype, [&](auto tag) {
    ops::batch_norm_backward_elemt_t<decltype(tag)>(t, weight, mean, invstd, sum_dy, sum_dy_xhat,
                                                    count);
  });
}

void instance_norm_backward(const NCSGradRef& t_in, ParamRef weight, const double* mean,
                            const double* invstd, double* grad_weight, double* grad_bias) {
  const NCSGradRef t = ops::prefer_rows(t_in);
  ops::check_ncs({t.x, t.dx, t.dtype, t.N, t.C, t.S, t.layout});
  ops::check_param(weight, "weight", t.C, "channel");
  ops::by_dtype(t.dtype, [&](auto tag) {
    ops::group_backward_t<decltype(tag)>(t, t.C, weight, mean, invstd, grad_weight, grad_bias);
  });
}

void group_norm_backward(const NCSGradRef& t_in, std::int64_t groups, ParamRef weight,
                         const double* mean, const double* invstd, double* grad_weight,
                         double* grad_bias) {
  const NCSGradRef t = ops::prefer_rows(t_in);
  ops::check_ncs({t.x, t.dx, t.dtype, t.N, t.C, t.S, t.layout});
  if (groups <= 0 || t.C % groups != 0)
    ops::fail("num_groups (" + ops::str(groups) + ") must be > 0 and divide the number of "
              "channels (" + ops::str(t.C) + ")");
  ops::check_param(weight, "weight", t.C, "channel");
  ops::by_dtype(t.dtype, [&](auto tag) {
    ops::group_backward_t<decltype(tag)>(t, groups, weight, mean, invstd, grad_weight,
                                         grad_bias);
  });
}

void layer_norm_backward(const void* x, const void* dy, void* dx, DType dtype, std::int64_t rows,
                         std::int64_t row_len, ParamRef weight, const double* mean,
                         const double* invstd, double* grad_weight, double* grad_bias) {
  if (ops::check_rows(rows, row_len) > 0 && (!x || !dy || !dx))
    ops::fail("x, dy and dx pointers must not be null");
  ops::check_param(weight, "weight", row_len, "normalized element");
  ops::by_dtype(dtype, [&](auto tag) {
    ops::row_backward_t<decltype(tag)>(x, dy, dx, rows, row_len, weight, mean, invstd,
                                       grad_weight, grad_bias);
  });
}

void rms_norm_backward(const void* x, const void* dy, void* dx, DType dtype, std::int64_t rows,
                       std::int64_t row_len, ParamRef weight, const double* invrms,
                       double* grad_weight) {
  if (ops::check_rows(rows, row_len) > 0 && (!x || !dy || !dx))
    ops::fail("x, dy and dx pointers must not be null");
  ops::check_param(weight, "weight", row_len, "normalized element");
  ops::by_dtype(dtype, [&](auto tag) {
    ops::row_backward_t<decltype(tag)>(x, dy, dx, rows, row_len, weight, nullptr, invrms,
                                       grad_weight, nullptr);
  });
}

}  // namespace normcpp
