// Scalar double references for every op, written from the textbook / PyTorch formulas and
// independent of the library: two-pass statistics with compensated (Neumaier) double sums, no
// blocking, no SIMD. (Not long double: that is a slow software quad type on aarch64/qemu.)
//
// Tensors are "logical" arrays in (n, c, s) order whatever the memory layout; rows-ops use
// (row, j). Each reference returns values and magnitudes: the magnitude of an element is the
// sum of the absolute values of the terms the formula adds (plus a few ulps of |x|, |mean| and
// the spread for the rounding of x - mean in the kernel's arithmetic type), which is what a
// tolerance must scale with when terms cancel.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "harness.hpp"

namespace nt {

// Memory index of logical (n, c, s) in a layout.
inline i64 mem_index(Layout l, i64 C, i64 S, i64 n, i64 c, i64 s) {
  return l == Layout::contiguous ? (n * C + c) * S + s : (n * S + s) * C + c;
}

inline std::vector<double> to_logical(const Buf& b, Layout l, i64 N, i64 C, i64 S) {
  std::vector<double> v(static_cast<std::size_t>(N * C * S));
  for (i64 n = 0; n < N; ++n)
    for (i64 c = 0; c < C; ++c)
      for (i64 s = 0; s < S; ++s)
        v[static_cast<std::size_t>((n * C + c) * S + s)] = b.get(mem_index(l, C, S, n, c, s));
  return v;
}

inline void from_logical(Buf& b, const std::vector<double>& v, Layout l, i64 N, i64 C, i64 S) {
  for (i64 n = 0; n < N; ++n)
    for (i64 c = 0; c < C; ++c)
      for (i64 s = 0; s < S; ++s)
        b.set(mem_index(l, C, S, n, c, s), v[static_cast<std::size_t>((n * C + c) * S + s)]);
}

// A compensated sum (Neumaier): error ~ 1 ulp of the result, independent of the count.
struct Acc {
  double s = 0.0, c = 0.0;
  Acc& operator+=(double x) {
    const double t = s + x;
    c += std::fabs(s) >= std::fabs(x) ? (s - t) + x : (x - t) + s;
    s = t;
    return *this;
  }
  double value() const { return s + c; }
  explicit operator double() const { return value(); }
};

// Relative size of the rounding of x and mean (in units of the tolerance's reference
// magnitude): a few ulps of |x| + |mean| + std (the mean's own error scales with the data's
// spread) in the kernel's arithmetic type; it enters as |xhat| + share * ((|x|+|m|)/std + 1).
constexpr double kRoundingShare = 0.01;

// --------------------------------------------------------------------------- forward, NCS
struct FwdRef {
  std::vector<double> y, ymag;            // logical output and magnitudes
  std::vector<double> mean, var, invstd;  // per slot (biased variance)
  std::vector<double> count;              // elements per slot
};

// Normalization of an (N, C, S) tensor by slots: slot_of(n, c) in [0, slots). With
// fixed_mean/fixed_var (per channel, eval mode) no statistics are computed.
template <class SlotOf>
FwdRef ncs_forward(const std::vector<double>& x, i64 N, i64 C, i64 S, i64 slots, SlotOf slot_of,
                   const std::vector<double>& w, const std::vector<double>& b, double eps,
                   const std::vector<double>* fixed_mean = nullptr,
                   const std::vector<double>* fixed_var = nullptr) {
  FwdRef r;
  const auto us = static_cast<std::size_t>(slots);
  r.mean.assign(us, 0.0);
  r.var.assign(us, 0.0);
  r.invstd.assign(us, 0.0);
  r.count.assign(us, 0.0);
  auto at = [&](i64 n, i64 c, i64 s) { return x[static_cast<std::size_t>((n * C + c) * S + s)]; };
  if (fixed_mean) {
    for (std::size_t i = 0; i < us; ++i) {
      r.mean[i] = (*fixed_mean)[i];
      r.var[i] = (*fixed_var)[i];
    }
  } else {
    std::vector<Acc> sum(us), sq(us), cnt(us);
    for (i64 n = 0; n < N; ++n)
      for (i64 c = 0; c < C; ++c) {
        const auto k = static_cast<std::size_t>(slot_of(n, c));
        for (i64 s = 0; s < S; ++s) {
          sum[k] += at(n, c, s);
          cnt[k] += 1.0;
        }
      }
    for (std::size_t k = 0; k < us; ++k) {
      r.count[k] = cnt[k].value();
      r.mean[k] = r.count[k] > 0 ? sum[k].value() / r.count[k] : 0.0;
    }
    for (i64 n = 0; n < N; ++n)
      for (i64 c = 0; c < C; ++c) {
        const auto k = static_cast<std::size_t>(slot_of(n, c));
        const double m = r.mean[k];
        for (i64 s = 0; s < S; ++s) {
          const double d = at(n, c, s) - m;
          sq[k] += d * d;
        }
      }
    for (std::size_t k = 0; k < us; ++k)
      r.var[k] = r.count[k] > 0 ? sq[k].value() / r.count[k] : 0.0;
  }
  for (std::size_t k = 0; k < us; ++k) r.invstd[k] = 1.0 / std::sqrt(r.var[k] + eps);
  r.y.assign(x.size(), 0.0);
  r.ymag.assign(x.size(), 0.0);
  for (i64 n = 0; n < N; ++n)
    for (i64 c = 0; c < C; ++c) {
      const auto k = static_cast<std::size_t>(slot_of(n, c));
      const double m = r.mean[k], rs = r.invstd[k];
      const double wc = w[static_cast<std::size_t>(c)], bc = b[static_cast<std::size_t>(c)];
      for (i64 s = 0; s < S; ++s) {
        const auto i = static_cast<std::size_t>((n * C + c) * S + s);
        const double xh = (x[i] - m) * rs;
        r.y[i] = xh * wc + bc;
        const double axh =
            std::fabs(xh) + kRoundingShare * ((std::fabs(x[i]) + std::fabs(m)) * rs + 1.0);
        r.ymag[i] = axh * std::fabs(wc) + std::fabs(bc);
      }
    }
  return r;
}

// --------------------------------------------------------------------------- backward, NCS
struct BwdRef {
  std::vector<double> dx, dxmag;      // logical
  std::vector<double> gw, gwmag;      // per channel: sum dy * xhat
  std::vector<double> gb, gbmag;      // per channel: sum dy
  std::vector<double> sdy, sdymag;    // per slot: sum dy (batch norm reduce)
  std::vector<double> sdxh, sdxhmag;  // per slot: sum dy * xhat
};

// Gradient of a slot normalization (slot_of as in ncs_forward), PyTorch's formula:
//   dx = r * (w_c dy - mean_slot(w dy) - xhat * mean_slot(w dy xhat))   (through = true)
//   dx = r * w_c * dy                                                     (through = false)
// With elemt_sums (batch_norm_backward_elemt): the slot sums of dy and dy * xhat and the
// count are given instead of computed (slot == channel there).
template <class SlotOf>
BwdRef ncs_backward(const std::vector<double>& x, const std::vector<double>& dy, i64 N, i64 C,
                    i64 S, i64 slots, SlotOf slot_of, const std::vector<double>& w,
                    const std::vector<double>& mean, const std::vector<double>& invstd,
                    bool through, const std::vector<double>* given_sdy = nullptr,
                    const std::vector<double>* given_sdxh = nullptr, double given_count = 0.0) {
  BwdRef r;
  const auto us = static_cast<std::size_t>(slots), uc = static_cast<std::size_t>(C);
  std::vector<Acc> Sg(us), Dg(us), Sa(us), Da(us), M(us);
  std::vector<Acc> sdy(us), sdxh(us);
  std::vector<Acc> gw(uc), gb(uc), gwa(uc), gba(uc);
  auto xhat_of = [&](std::size_t i, std::size_t k) { return (x[i] - mean[k]) * invstd[k]; };
  auto axh_of = [&](std::size_t i, std::size_t k) {
    return std::fabs(xhat_of(i, k)) +
           kRoundingShare * ((std::fabs(x[i]) + std::fabs(mean[k])) * invstd[k] + 1.0);
  };
  for (i64 n = 0; n < N; ++n)
    for (i64 c = 0; c < C; ++c) {
      const auto k = static_cast<std::size_t>(slot_of(n, c));
      const auto cu = static_cast<std::size_t>(c);
      const double wc = w[cu];
      for (i64 s = 0; s < S; ++s) {
        const auto i = static_cast<std::size_t>((n * C + c) * S + s);
        const double xh = xhat_of(i, k), axh = axh_of(i, k);
        Sg[k] += wc * dy[i];
        Dg[k] += wc * dy[i] * xh;
        Sa[k] += std::fabs(wc * dy[i]);
        Da[k] += std::fabs(wc * dy[i]) * axh;
        M[k] += 1.0;
        sdy[k] += dy[i];
        sdxh[k] += dy[i] * xh;
        gw[cu] += dy[i] * xh;
        gb[cu] += dy[i];
        gwa[cu] += std::fabs(dy[i]) * axh;
        gba[cu] += std::fabs(dy[i]);
      }
    }
  r.gw.resize(uc);
  r.gb.resize(uc);
  r.gwmag.resize(uc);
  r.gbmag.resize(uc);
  for (std::size_t c = 0; c < uc; ++c) {
    r.gw[c] = static_cast<double>(gw[c]);
    r.gb[c] = static_cast<double>(gb[c]);
    r.gwmag[c] = static_cast<double>(gwa[c]);
    r.gbmag[c] = static_cast<double>(gba[c]);
  }
  r.sdy.resize(us);
  r.sdxh.resize(us);
  r.sdymag.resize(us);
  r.sdxhmag.resize(us);
  for (std::size_t k = 0; k < us; ++k) {
    r.sdy[k] = static_cast<double>(sdy[k]);
    r.sdxh[k] = static_cast<double>(sdxh[k]);
    // Slot == channel wherever these are used (batch norm), so the channel sums' magnitudes
    // apply; for other slot maps they are not checked.
    r.sdymag[k] = k < uc ? r.gbmag[k] : 0.0;
    r.sdxhmag[k] = k < uc ? r.gwmag[k] : 0.0;
  }
  r.dx.assign(x.size(), 0.0);
  r.dxmag.assign(x.size(), 0.0);
  for (i64 n = 0; n < N; ++n)
    for (i64 c = 0; c < C; ++c) {
      const auto k = static_cast<std::size_t>(slot_of(n, c));
      const double wc = w[static_cast<std::size_t>(c)], rs = invstd[k];
      double ms, md, msa, mda;  // mean of (w dy), of (w dy xhat) and their magnitudes
      if (given_sdy) {
        ms = wc * (*given_sdy)[k] / given_count;
        md = wc * (*given_sdxh)[k] / given_count;
        msa = std::fabs(ms);
        mda = std::fabs(md);
      } else {
        const double m = static_cast<double>(M[k]);
        ms = static_cast<double>(Sg[k]) / m;
        md = static_cast<double>(Dg[k]) / m;
        msa = static_cast<double>(Sa[k]) / m;
        mda = static_cast<double>(Da[k]) / m;
      }
      for (i64 s = 0; s < S; ++s) {
        const auto i = static_cast<std::size_t>((n * C + c) * S + s);
        const double xh = xhat_of(i, k), axh = axh_of(i, k);
        if (through) {
          r.dx[i] = rs * (wc * dy[i] - ms - xh * md);
          r.dxmag[i] = rs * (std::fabs(wc * dy[i]) + msa + axh * mda);
        } else {
          r.dx[i] = rs * wc * dy[i];
          r.dxmag[i] = std::fabs(r.dx[i]);
        }
      }
    }
  return r;
}

// --------------------------------------------------------------------------- rows
struct RowFwdRef {
  std::vector<double> y, ymag, mean, invstd;
};

// LayerNorm (rms = false) or RMSNorm (rms = true: mean fixed at 0) over rows of L.
inline RowFwdRef row_forward(const std::vector<double>& x, i64 rows, i64 L,
                             const std::vector<double>& w, const std::vector<double>& b, double eps,
                             bool rms) {
  RowFwdRef r;
  const auto ur = static_cast<std::size_t>(rows);
  r.mean.assign(ur, 0.0);
  r.invstd.assign(ur, 0.0);
  r.y.assign(x.size(), 0.0);
  r.ymag.assign(x.size(), 0.0);
  for (i64 q = 0; q < rows; ++q) {
    const double* p = x.data() + q * L;
    const double ld = static_cast<double>(L);
    Acc sum;
    if (!rms)
      for (i64 j = 0; j < L; ++j) sum += p[j];
    const double md = L && !rms ? sum.value() / ld : 0.0;
    Acc sq;
    for (i64 j = 0; j < L; ++j) sq += (p[j] - md) * (p[j] - md);
    const double var = L ? sq.value() / ld : 0.0;
    const double rs = 1.0 / std::sqrt(var + eps);
    r.mean[static_cast<std::size_t>(q)] = md;
    r.invstd[static_cast<std::size_t>(q)] = rs;
    for (i64 j = 0; j < L; ++j) {
      const auto i = static_cast<std::size_t>(q * L + j);
      const double wj = w[static_cast<std::size_t>(j)], bj = b[static_cast<std::size_t>(j)];
      const double xh = (p[j] - md) * rs;
      r.y[i] = xh * wj + bj;
      const double axh =
          std::fabs(xh) + kRoundingShare * ((std::fabs(p[j]) + std::fabs(md)) * rs + 1.0);
      r.ymag[i] = axh * std::fabs(wj) + std::fabs(bj);
    }
  }
  return r;
}

struct RowBwdRef {
  std::vector<double> dx, dxmag, gw, gwmag, gb, gbmag;
};

// LayerNorm / RMSNorm gradient (rms: no mean term):
//   dx = r * (g - mean(g) - xhat * mean(g * xhat)),  g = w * dy,  xhat = (x - mean) * r
//   gw[j] = sum_rows dy * xhat,  gb[j] = sum_rows dy.
inline RowBwdRef row_backward(const std::vector<double>& x, const std::vector<double>& dy, i64 rows,
                              i64 L, const std::vector<double>& w, const std::vector<double>& mean,
                              const std::vector<double>& invstd, bool rms) {
  RowBwdRef r;
  const auto ul = static_cast<std::size_t>(L);
  r.dx.assign(x.size(), 0.0);
  r.dxmag.assign(x.size(), 0.0);
  std::vector<Acc> gw(ul), gb(ul), gwa(ul), gba(ul);
  for (i64 q = 0; q < rows; ++q) {
    const auto uq = static_cast<std::size_t>(q);
    const double m = rms ? 0.0 : mean[uq], rs = invstd[uq];
    Acc Sg, Dg, Sa, Da;
    for (i64 j = 0; j < L; ++j) {
      const auto i = static_cast<std::size_t>(q * L + j);
      const auto uj = static_cast<std::size_t>(j);
      const double xh = (x[i] - m) * rs;
      const double axh =
          std::fabs(xh) + kRoundingShare * ((std::fabs(x[i]) + std::fabs(m)) * rs + 1.0);
      const double g = w[uj] * dy[i];
      Sg += g;
      Dg += g * xh;
      Sa += std::fabs(g);
      Da += std::fabs(g) * axh;
      gw[uj] += dy[i] * xh;
      gb[uj] += dy[i];
      gwa[uj] += std::fabs(dy[i]) * axh;
      gba[uj] += std::fabs(dy[i]);
    }
    const double ld = static_cast<double>(L);
    const double ms = rms ? 0.0 : static_cast<double>(Sg) / ld;
    const double msa = rms ? 0.0 : static_cast<double>(Sa) / ld;
    const double md = static_cast<double>(Dg) / ld, mda = static_cast<double>(Da) / ld;
    for (i64 j = 0; j < L; ++j) {
      const auto i = static_cast<std::size_t>(q * L + j);
      const double xh = (x[i] - m) * rs;
      const double axh =
          std::fabs(xh) + kRoundingShare * ((std::fabs(x[i]) + std::fabs(m)) * rs + 1.0);
      const double g = w[static_cast<std::size_t>(j)] * dy[i];
      r.dx[i] = rs * (g - ms - xh * md);
      r.dxmag[i] = rs * (std::fabs(g) + msa + axh * mda);
    }
  }
  r.gw.resize(ul);
  r.gb.resize(ul);
  r.gwmag.resize(ul);
  r.gbmag.resize(ul);
  for (std::size_t j = 0; j < ul; ++j) {
    r.gw[j] = static_cast<double>(gw[j]);
    r.gb[j] = static_cast<double>(gb[j]);
    r.gwmag[j] = static_cast<double>(gwa[j]);
    r.gbmag[j] = static_cast<double>(gba[j]);
  }
  return r;
}

}  // namespace nt
