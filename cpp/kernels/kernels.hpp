// The kernel table: every SIMD kernel, one copy per ISA level, picked once at run time.
// Kernels take plain pointers and sizes; they never allocate, throw or know about ops.
#pragma once

#include <cstdint>
#include <string>

#include "kernels/half.hpp"
#include "normcpp/moments.hpp"

namespace normcpp {
namespace kernels {

// Elements per statistics block: small enough to stay in L1 for the second pass.
constexpr std::int64_t kBlock = 2048;
// Largest channel period (lcm(C, lanes)) handled by the periodic channels-last kernels.
constexpr std::int64_t kMaxPeriod = 1024;

// norm_rows normalizes rows of more than kRowGroupMinBytes that have a weight or bias in groups
// of row_group(row bytes) rows (up to kRowGroupRows, and kRowGroupBytes in all): the group's
// moments, then its normalization chunk by chunk across its rows, so each chunk of the weight
// and bias is read from L2 once per group. Its callers hand it whole groups where the threads
// leave each enough rows.
constexpr std::int64_t kRowGroupMinBytes = 8 * 1024;
constexpr std::int64_t kRowGroupRows = 4;
constexpr std::int64_t kRowGroupBytes = 128 * 1024;
inline std::int64_t row_group(std::int64_t row_bytes, bool affine) {
  if (!affine || row_bytes <= kRowGroupMinBytes) return 1;
  const std::int64_t g = kRowGroupBytes / row_bytes;
  return g < 1 ? 1 : g > kRowGroupRows ? kRowGroupRows : g;
}

// T: storage type; A: arithmetic type (float for float16/float32, double for float64).
template <class T, class A>
struct TypedKernels {
  // Moments (n, mean, M2) of x[0..n): L1 blocks, exact two-pass per block, Chan merge.
  Moments (*run_moments)(const T* x, std::int64_t n);
  // Sum of squares of x[0..n), block partials in A, total in double.
  double (*run_sumsq)(const T* x, std::int64_t n);
  // Scratch (elements of A) cl_moments/apply_cl need for C channels.
  std::int64_t (*cl_scratch_elems)(std::int64_t C);
  // Per-channel moments of a rows x C matrix with row stride ld >= C (ld == C: contiguous;
  // ld > C: a strip of channels of wider rows), merged (Chan) into mean[C], m2[C] whose
  // common count is *count (updated).
  void (*cl_moments)(const T* x, std::int64_t rows, std::int64_t C, std::int64_t ld,
                     A* scratch, double* mean, double* m2, double* count);
  // The apply kernels end with activation `act` (normcpp::Activation as int; 0 = none).
  // `stream`: write the output with non-temporal stores where the ISA has them (float32 on
  // x86; the values are bitwise those of plain stores). y[i] = act((x[i] - m) * a + b).
  void (*apply_scalar)(const T* x, T* y, std::int64_t n, A m, A a, A b, int act, bool stream);
  // nruns runs of L elements back to back, run r of channel c = (c0 + r) % C:
  // y = act((x - M[c]) * S[c] + B[c]) (apply_scalar per run, without a call through the table
  // for each: NCHW planes in memory order).
  void (*apply_runs)(const T* x, T* y, std::int64_t nruns, std::int64_t L, std::int64_t c0,
                     std::int64_t C, const A* M, const A* S, const A* B, int act, bool stream);
  // Channels-last rows x C, row stride ld >= C (of x and y):
  // y[r][c] = act((x[r][c] - M[c]) * S[c] + B[c]). hot: x is in L2 (just reduced, or a small
  // tensor), so wide periods may be written in tiles of rows that keep the coefficients in
  // registers; otherwise they are written front to back (the values are the same).
  void (*apply_cl)(const T* x, T* y, std::int64_t rows, std::int64_t C, std::int64_t ld,
                   const A* M, const A* S, const A* B, A* scratch, int act, bool stream,
                   bool hot);
  // One row: y[j] = act((x[j] - m) * s * W[j] + B[j]); W and/or B may be null (1 and 0).
  void (*apply_row)(const T* x, T* y, std::int64_t n, A m, A s, const A* W, const A* B,
                    int act, bool stream);
  // rows x L contiguous, each row normalized whole: its moments by run_moments (rms: mean 0,
  // M2 = run_sumsq), mean[r] and var[r] = max(M2 / L, 0) in double, then apply_row with
  // m = mean[r] and s = 1 / sqrt(var[r] + eps), both rounded to A (LayerNorm/RMSNorm).
  void (*norm_rows)(const T* x, T* y, std::int64_t rows, std::int64_t L, const A* W,
                    const A* B, double eps, bool rms, int act, bool stream, double* mean,
                    double* var);
  // nslots slots of R runs of S elements back to back, run j of slot i being channel
  // (c0 + i * R + j) % C: per slot its moments by run_moments over R * S elements, mean[i] and
  // var[i] = max(M2 / n, 0) in double, then each run y = act((x - m) * s + b) with m = mean,
  // s = w[c] / sqrt(var + eps) and b = b[c] computed in double and rounded to A (w, b null: 1
  // and 0) -- apply_scalar's arithmetic (InstanceNorm, GroupNorm NCHW).
  void (*norm_slots)(const T* x, T* y, std::int64_t nslots, std::int64_t R, std::int64_t S,
                     std::int64_t c0, std::int64_t C, const double* w, const double* b,
                     double eps, int act, bool stream, double* mean, double* var);

  // Affine coefficients of n slots from their statistics, in double then rounded once:
  // M[i] = mean[i], S[i] = w[i] * (1 / sqrt(var[i] + eps)), B[i] = b[i] (w, b may be null: 1
  // and 0). Bitwise the scalar formula's (correctly rounded sqrt and division).
  void (*coefs)(std::int64_t n, const double* mean, const double* var, const double* w,
                const double* b, double eps, A* M, A* S, A* B);

  // ---- backward
  // out[0] = sum dy * W, out[1] = sum dy * W * (x - m) over n elements (W null: 1); block
  // partials in A, totals in double.
  void (*run_dot)(const T* x, const T* dy, std::int64_t n, A m, const A* W, double* out);
  // Channels-last rows x C: sdy[c] += sum dy, sdx[c] += sum dy * (x - M[c]).
  void (*cl_dot)(const T* x, const T* dy, std::int64_t rows, std::int64_t C, const A* M,
                 A* scratch, double* sdy, double* sdx);
  // A tile of nr rows (row stride ld, n columns), each element read once: out (if not null)
  // gets run_dot's two sums per row, out[2r], out[2r+1], with M[r] and W; column sums
  // G[j] += sum_r dy[r][j] * (x[r][j] - M[r]) * S[r] and B[j] += sum_r dy[r][j] (B may be null),
  // added row after row (so any cut of the rows into tiles gives the same bits). Rows go 4 at
  // a time through registers (without out, 8 at a time at AVX2 and AVX-512: G and B loaded
  // and stored once for the 8), the rest one by one.
  void (*tile_dot_cols)(const T* x, const T* dy, std::int64_t nr, std::int64_t ld,
                        std::int64_t n, const A* M, const A* S, const A* W, double* out, A* G,
                        A* B);
  // dx[i] = a * W[i] * dy[i] + b * (x[i] - m) + c (W null: 1); `stream` as for apply.
  void (*bwd_row)(const T* x, const T* dy, T* dx, std::int64_t n, A m, A a, const A* W, A b,
                  A c, bool stream);
  // GroupNorm/InstanceNorm NCHW backward of nslots whole slots of R runs of S elements back
  // to back, run j of slot i being channel c = (c0 + i * R + j) % C: each run's two sums by
  // run_dot (m = mean[i] rounded to A, no weight) into sdy[i * R + j] and sdx[i * R + j]; per
  // slot, in double, Sg = sum_j w[c] * sdy and Dg = sum_j w[c] * sdx in run order (w null: 1),
  // b = -r^3 * Dg / (R * S) and c = -r * Sg / (R * S) (r = invstd[i]) rounded to A; then each
  // run's bwd_row with a = w[c] * r rounded to A (one table call for many small slots instead
  // of two calls a plane).
  void (*slots_bwd)(const T* x, const T* dy, T* dx, std::int64_t nslots, std::int64_t R,
                    std::int64_t S, std::int64_t c0, std::int64_t C, const double* w,
                    const double* mean, const double* invstd, double* sdy, double* sdx,
                    bool stream);
  // LayerNorm/RMSNorm backward of rows x L contiguous, tiles of `tile` rows (1 to 8): per
  // tile, each row's two sums s, d by run_dot (seq, or G null: no column sums) or by
  // tile_dot_cols together with the column sums into G, B (not seq), then each row's bwd_row
  // with m = M[r], a = I[r] and, in double rounded to A, b = -iv^3 d / L and c = centered ?
  // -iv s / L : 0 (iv = invstd[r]). Seq with G: after run_dot, the column sums and dx in one
  // sweep (the same values) that prefetches the next tile, up to `ahead` rows past the last.
  // Rows of up to 4 vectors (2 below AVX-512): whole vectors a row, the row's lanes summed at
  // once (not run_dot's blocks), column sums added row after row.
  void (*bwd_rows)(const T* x, const T* dy, T* dx, std::int64_t rows, std::int64_t ahead,
                   std::int64_t L, std::int64_t tile, bool seq, const A* M, const A* I,
                   const double* invstd, const A* W, bool centered, A* G, A* B, bool stream);
  // Channels-last rows x C: dx = Av[c] * dy + Bv[c] * (x - M[c]) + Cv[c]; `stream` as for
  // apply.
  void (*bwd_cl)(const T* x, const T* dy, T* dx, std::int64_t rows, std::int64_t C,
                 const A* M, const A* Av, const A* Bv, const A* Cv, A* scratch, bool stream);

  // ---- LayerNorm/RMSNorm over short rows (no activation)
  // rows x L contiguous: y = (x - mean) * invstd * W + B per row (W, B: L values or null;
  // rms: mean 0), mean[r] and invstd[r] = 1 / sqrt(var + eps) (biased var) written, in
  // double. Returns false, touching nothing, where this level has no kernel for (T, L) (the
  // caller then runs its scalar loop).
  bool (*short_rows)(const T* x, T* y, std::int64_t rows, std::int64_t L, const A* W,
                     const A* B, double eps, bool rms, double* mean, double* invstd);
};

struct KernelTable {
  const char* name;
  TypedKernels<half_t, float> f16;
  TypedKernels<float, float> f32;
  TypedKernels<double, double> f64;
};

// The table in use (chosen at first use: best level the CPU runs, or NORMCPP_ISA via select).
const KernelTable& active();

}  // namespace kernels
}  // namespace normcpp
