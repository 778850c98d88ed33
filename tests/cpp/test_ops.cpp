// Every op of the C++ API against the scalar double reference (reference.hpp), for one ISA
// level (the caller selects it): odd shapes, shapes whose slots are split into chunks, both
// layouts, float16/float32/float64, parameters in float32/float64 with element strides, in-place
// calls, running-statistics updates, saved statistics, empty tensors and constant input.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "harness.hpp"
#include "normcpp/normcpp.hpp"
#include "reference.hpp"
#include "suites.hpp"

namespace nt {
namespace {

struct NcsShape {
  i64 N, C, S;
};

// Odd channel counts and spatial sizes (SIMD remainders), and channel counts whose
// channels-last period lcm(C, lanes) exceeds the kernels' limit (131, 257).
const std::vector<NcsShape> kNcsShapes = {
    {2, 1, 5},  {3, 3, 1},  {1, 7, 33}, {4, 17, 257}, {2, 3, 257}, {5, 7, 1},
    {2, 17, 5}, {3, 1, 33}, {2, 6, 33}, {3, 12, 5},   {2, 131, 3}, {1, 257, 5},
};

// Statistic slots larger than the planners' fused size (112 Ki elements today): cut into
// chunks, merged in order, spread over threads. Sizes are not multiples of anything.
const std::vector<NcsShape> kNcsLargeShapes = {
    {2, 3, 70001},   // batch norm NCHW: 140002 per channel, chunk borders inside runs
    {1, 2, 120001},  // instance norm slots of 120001, group norm (G=1) of 240002
    {40001, 3, 3},   // batch norm slots of 120003 elements in 3-element runs
    {3, 17, 2500},   // channels-last batch norm: 127500 elements in one sample
    {1, 3, 40001},   // channels-last instance norm: 120003 elements in one sample
};

struct RowShape {
  i64 rows, L;
};

const std::vector<RowShape> kRowShapes = {
    {1, 1}, {3, 1}, {5, 3}, {2, 7}, {4, 17}, {3, 33}, {7, 257}, {2, 1000}, {300, 5},
    {70, 4}, {130, 8}, {65, 16},  // the short-row kernels, over more than one 64-row group
};
const std::vector<RowShape> kRowLargeShapes = {{20000, 5}, {3, 120001}, {1, 131077}};

constexpr double kEps = 1e-5;

std::string fmt_ncs(const std::string& isa, DType dt, Layout l, const NcsShape& s) {
  char b[160];
  std::snprintf(b, sizeof b, "[%s %s %s N=%lld C=%lld S=%lld]", isa.c_str(), dtype_name(dt),
                layout_name(l), static_cast<long long>(s.N), static_cast<long long>(s.C),
                static_cast<long long>(s.S));
  return b;
}

std::string fmt_rows(const std::string& isa, DType dt, const RowShape& s) {
  char b[160];
  std::snprintf(b, sizeof b, "[%s %s rows=%lld L=%lld]", isa.c_str(), dtype_name(dt),
                static_cast<long long>(s.rows), static_cast<long long>(s.L));
  return b;
}

// Running statistics and parameters are rounded to their storage dtype: tolerance of both.
double tol_with_param(DType dt, DType pdt) {
  return std::max(tol_for(dt), pdt == DType::f32 ? 4e-7 : 0.0);
}

Param make_param(const std::vector<double>& v, DType pdt, i64 stride) {
  Param p(pdt, static_cast<i64>(v.size()), stride);
  for (std::size_t i = 0; i < v.size(); ++i) p.set(static_cast<i64>(i), v[i]);
  return p;
}

// Values as stored (rounded to dtype).
std::vector<double> stored(const std::vector<double>& v, DType dt) {
  Buf b(dt, static_cast<i64>(v.size()));
  std::vector<double> out(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) {
    b.set(static_cast<i64>(i), v[i]);
    out[i] = b.get(static_cast<i64>(i));
  }
  return out;
}

std::vector<double> ones(i64 n) { return std::vector<double>(static_cast<std::size_t>(n), 1.0); }
std::vector<double> zeros(i64 n) { return std::vector<double>(static_cast<std::size_t>(n), 0.0); }

// A copy of buffer b (for in-place calls and for "input unchanged" checks).
Buf copy_of(const Buf& b) { return b; }

// =============================================================================== NCS ops
class NcsCase {
 public:
  NcsCase(const std::string& isa, DType dt, Layout lay, const NcsShape& sh, int variant)
      : dt_(dt),
        lay_(lay),
        N_(sh.N),
        C_(sh.C),
        S_(sh.S),
        variant_(variant),
        tag_(fmt_ncs(isa, dt, lay, sh)),
        rng_(0x5EED0000u + static_cast<std::uint64_t>(variant) * 7919u),
        pdt_(variant % 2 ? DType::f64 : DType::f32),
        stride_(1 + variant % 3),
        inplace_(variant % 4 == 3) {
    if (inplace_) tag_ += "[in-place]";
    const i64 total = N_ * C_ * S_;
    std::vector<double> xv(static_cast<std::size_t>(total)), dyv(xv.size());
    // Per-channel offset and scale (a moderate offset tests the stable variance; float16
    // keeps small magnitudes).
    const bool big = dt != DType::f16 && variant % 3 == 2;
    for (i64 n = 0; n < N_; ++n)
      for (i64 c = 0; c < C_; ++c) {
        const double off =
            big ? 100.0 + static_cast<double>(c % 7) : 1.5 - 0.25 * static_cast<double>(c % 5);
        const double sc = 0.5 + 0.2 * static_cast<double>(c % 4);
        for (i64 s = 0; s < S_; ++s) {
          const auto i = static_cast<std::size_t>((n * C_ + c) * S_ + s);
          xv[i] = off + sc * rng_.normal();
          dyv[i] = rng_.normal() + 0.1;
        }
      }
    x_ = Buf(dt, total);
    dy_ = Buf(dt, total);
    from_logical(x_, xv, lay, N_, C_, S_);
    from_logical(dy_, dyv, lay, N_, C_, S_);
    xl_ = to_logical(x_, lay, N_, C_, S_);
    dyl_ = to_logical(dy_, lay, N_, C_, S_);
    w_.resize(static_cast<std::size_t>(C_));
    b_ = w_;
    rm0_ = w_;
    rv0_ = w_;
    for (i64 c = 0; c < C_; ++c) {
      const auto u = static_cast<std::size_t>(c);
      w_[u] = rng_.uniform() * 3.0 - 1.5;
      b_[u] = rng_.uniform() * 2.0 - 1.0;
      rm0_[u] = rng_.uniform() * 2.0;
      rv0_[u] = 0.5 + rng_.uniform();
    }
    w_ = stored(w_, pdt_);
    b_ = stored(b_, pdt_);
    rm0_ = stored(rm0_, pdt_);
    rv0_ = stored(rv0_, pdt_);
  }

  void run_batch_norm_only() {
    forward_batch_norm_train(true);
    backward_batch_norm(true, true);
    batch_norm_stats();
  }

  void run_all() {
    const i64 G_mid = middle_divisor(C_);
    forward_batch_norm_train(true);
    forward_batch_norm_train(false);
    forward_batch_norm_eval();
    forward_instance_norm(true);
    forward_instance_norm(false);
    forward_instance_norm_eval();
    forward_group_norm(1);
    if (C_ > 1) forward_group_norm(C_);
    if (G_mid) forward_group_norm(G_mid);
    batch_norm_stats();
    backward_batch_norm(true, true);
    backward_batch_norm(true, false);
    backward_batch_norm(false, true);
    backward_reduce_elemt();
    backward_instance_norm();
    backward_group_norm(1);
    if (C_ > 1) backward_group_norm(C_);
    if (G_mid) backward_group_norm(G_mid);
  }

 private:
  static i64 middle_divisor(i64 C) {
    for (i64 g = 2; g < C; ++g)
      if (C % g == 0) return g;
    return 0;
  }
  i64 total() const { return N_ * C_ * S_; }
  double tol() const { return tol_for(dt_); }
  std::string tag(const std::string& what) const { return tag_ + " " + what; }

  // Output buffer; for in-place variants it starts as a copy of the input.
  Buf out_buf() const {
    if (inplace_) return copy_of(x_);
    Buf y(dt_, total());
    for (i64 i = 0; i < total(); ++i) y.set(i, -12345.0);
    return y;
  }
  const void* in_ptr(Buf& y) const { return inplace_ ? y.data() : x_.data(); }
  void check_x_intact(const Buf& x_before, const std::string& what) const {
    check(x_.same_bits(x_before), tag(what + ": input unchanged"));
  }
  std::vector<double> logical(const Buf& b) const { return to_logical(b, lay_, N_, C_, S_); }

  void forward_batch_norm_train(bool full) {
    if (N_ * S_ < 2) return;
    ++counts().cases;
    const double mom = 0.1 + 0.2 * static_cast<double>(variant_ % 3);
    const std::string name = full ? "batch_norm(train, running, affine)" : "batch_norm(train)";
    Param W = make_param(w_, pdt_, stride_), B = make_param(b_, pdt_, stride_);
    Param RM = make_param(rm0_, pdt_, stride_), RV = make_param(rv0_, pdt_, stride_);
    std::vector<double> sm(static_cast<std::size_t>(C_), -1.0), si(sm);
    const Buf x_before = copy_of(x_);
    Buf y = out_buf();
    normcpp::RunningUpdate ru;
    if (full) ru = {RM.mref(), RV.mref(), mom};
    normcpp::batch_norm({in_ptr(y), y.data(), dt_, N_, C_, S_, lay_}, ru,
                        full ? W.ref() : normcpp::ParamRef{}, full ? B.ref() : normcpp::ParamRef{},
                        true, kEps,
                        full ? normcpp::SavedStats{sm.data(), si.data()} : normcpp::SavedStats{});
    const auto r = ncs_forward(
        xl_, N_, C_, S_, C_, [](i64, i64 c) { return c; }, full ? w_ : ones(C_),
        full ? b_ : zeros(C_), kEps);
    expect_close(tag(name + ": y"), logical(y), r.y, r.ymag, tol());
    if (!inplace_) check_x_intact(x_before, name);
    if (!full) return;
    std::vector<double> mmag(sm.size()), erm(sm.size()), ermag(sm.size()), erv(sm.size());
    for (std::size_t c = 0; c < sm.size(); ++c) {
      const double sd = std::sqrt(r.var[c]), cnt = r.count[c];
      mmag[c] = std::fabs(r.mean[c]) + sd;
      erm[c] = (1.0 - mom) * rm0_[c] + mom * r.mean[c];
      ermag[c] = (1.0 - mom) * std::fabs(rm0_[c]) + mom * mmag[c];
      erv[c] = (1.0 - mom) * rv0_[c] + mom * r.var[c] * cnt / (cnt - 1.0);
    }
    expect_close(tag(name + ": saved mean"), sm, r.mean, mmag, tol());
    expect_close(tag(name + ": saved invstd"), si, r.invstd, abs_of(r.invstd), tol());
    const double pt = tol_with_param(dt_, pdt_);
    expect_close(tag(name + ": running_mean"), RM.values(), erm, ermag, pt);
    expect_close(tag(name + ": running_var"), RV.values(), erv, abs_of(erv), pt);
    check(RM.gaps_intact() && RV.gaps_intact(), tag(name + ": strided running stats' gaps"));
  }

  void forward_batch_norm_eval() {
    ++counts().cases;
    const std::string name = "batch_norm(eval)";
    Param W = make_param(w_, pdt_, stride_), B = make_param(b_, pdt_, stride_);
    Param RM = make_param(rm0_, pdt_, stride_), RV = make_param(rv0_, pdt_, stride_);
    const Buf rm_before = RM.buf(), rv_before = RV.buf();
    std::vector<double> sm(static_cast<std::size_t>(C_), -1.0), si(sm);
    Buf y = out_buf();
    normcpp::batch_norm({in_ptr(y), y.data(), dt_, N_, C_, S_, lay_}, {RM.mref(), RV.mref(), 0.1},
                        W.ref(), B.ref(), false, kEps, {sm.data(), si.data()});
    const auto r = ncs_forward(
        xl_, N_, C_, S_, C_, [](i64, i64 c) { return c; }, w_, b_, kEps, &rm0_, &rv0_);
    expect_close(tag(name + ": y"), logical(y), r.y, r.ymag, tol());
    expect_close(tag(name + ": saved mean"), sm, rm0_, abs_of(rm0_), 1e-15);
    expect_close(tag(name + ": saved invstd"), si, r.invstd, abs_of(r.invstd), 1e-14);
    check(RM.buf().same_bits(rm_before) && RV.buf().same_bits(rv_before),
          tag(name + ": running stats unchanged"));
  }

  void forward_instance_norm(bool full) {
    if (S_ < 2) return;
    ++counts().cases;
    const double mom = 0.25;
    const std::string name =
        full ? "instance_norm(running, affine)" : "instance_norm(no running stats)";
    Param W = make_param(w_, pdt_, stride_), B = make_param(b_, pdt_, stride_);
    Param RM = make_param(rm0_, pdt_, stride_), RV = make_param(rv0_, pdt_, stride_);
    std::vector<double> sm(static_cast<std::size_t>(N_ * C_), -1.0), si(sm);
    Buf y = out_buf();
    normcpp::RunningUpdate ru;
    if (full) ru = {RM.mref(), RV.mref(), mom};
    normcpp::instance_norm(
        {in_ptr(y), y.data(), dt_, N_, C_, S_, lay_}, ru, full ? W.ref() : normcpp::ParamRef{},
        full ? B.ref() : normcpp::ParamRef{}, true, kEps, {sm.data(), si.data()});
    const i64 C = C_;
    const auto r = ncs_forward(
        xl_, N_, C_, S_, N_ * C_, [C](i64 n, i64 c) { return n * C + c; }, full ? w_ : ones(C_),
        full ? b_ : zeros(C_), kEps);
    expect_close(tag(name + ": y"), logical(y), r.y, r.ymag, tol());
    std::vector<double> mmag(sm.size());
    for (std::size_t k = 0; k < sm.size(); ++k)
      mmag[k] = std::fabs(r.mean[k]) + std::sqrt(r.var[k]);
    expect_close(tag(name + ": saved mean"), sm, r.mean, mmag, tol());
    expect_close(tag(name + ": saved invstd"), si, r.invstd, abs_of(r.invstd), tol());
    if (!full) return;
    // Running stats: the batch mean of the instances' means and unbiased variances.
    std::vector<double> erm(static_cast<std::size_t>(C_)), ermag(erm), erv(erm);
    for (i64 c = 0; c < C_; ++c) {
      double ms = 0.0, vs = 0.0, mm = 0.0;
      for (i64 n = 0; n < N_; ++n) {
        const auto k = static_cast<std::size_t>(n * C_ + c);
        ms += r.mean[k];
        vs += r.var[k] * static_cast<double>(S_) / static_cast<double>(S_ - 1);
        mm += mmag[k];
      }
      const auto u = static_cast<std::size_t>(c);
      const double nd = static_cast<double>(N_);
      erm[u] = (1.0 - mom) * rm0_[u] + mom * ms / nd;
      ermag[u] = (1.0 - mom) * std::fabs(rm0_[u]) + mom * mm / nd;
      erv[u] = (1.0 - mom) * rv0_[u] + mom * vs / nd;
    }
    const double pt = tol_with_param(dt_, pdt_);
    expect_close(tag(name + ": running_mean"), RM.values(), erm, ermag, pt);
    expect_close(tag(name + ": running_var"), RV.values(), erv, abs_of(erv), pt);
    check(RM.gaps_intact() && RV.gaps_intact(), tag(name + ": strided running stats' gaps"));
  }

  void forward_instance_norm_eval() {
    ++counts().cases;
    const std::string name = "instance_norm(use_input_stats=false)";
    Param W = make_param(w_, pdt_, stride_), B = make_param(b_, pdt_, stride_);
    Param RM = make_param(rm0_, pdt_, stride_), RV = make_param(rv0_, pdt_, stride_);
    const Buf rm_before = RM.buf(), rv_before = RV.buf();
    Buf y = out_buf();
    normcpp::instance_norm({in_ptr(y), y.data(), dt_, N_, C_, S_, lay_},
                           {RM.mref(), RV.mref(), 0.1}, W.ref(), B.ref(), false, kEps);
    const auto r = ncs_forward(
        xl_, N_, C_, S_, C_, [](i64, i64 c) { return c; }, w_, b_, kEps, &rm0_, &rv0_);
    expect_close(tag(name + ": y"), logical(y), r.y, r.ymag, tol());
    check(RM.buf().same_bits(rm_before) && RV.buf().same_bits(rv_before),
          tag(name + ": running stats unchanged"));
  }

  void forward_group_norm(i64 G) {
    ++counts().cases;
    const std::string name = "group_norm(G=" + std::to_string(G) + ")";
    const bool affine = (variant_ + G) % 2 == 0;
    Param W = make_param(w_, pdt_, stride_), B = make_param(b_, pdt_, stride_);
    std::vector<double> sm(static_cast<std::size_t>(N_ * G), -1.0), si(sm);
    Buf y = out_buf();
    normcpp::group_norm({in_ptr(y), y.data(), dt_, N_, C_, S_, lay_}, G,
                        affine ? W.ref() : normcpp::ParamRef{},
                        affine ? B.ref() : normcpp::ParamRef{}, kEps, {sm.data(), si.data()});
    const i64 Cg = C_ / G;
    const auto r = ncs_forward(
        xl_, N_, C_, S_, N_ * G, [G, Cg](i64 n, i64 c) { return n * G + c / Cg; },
        affine ? w_ : ones(C_), affine ? b_ : zeros(C_), kEps);
    expect_close(tag(name + ": y"), logical(y), r.y, r.ymag, tol());
    std::vector<double> mmag(sm.size());
    for (std::size_t k = 0; k < sm.size(); ++k)
      mmag[k] = std::fabs(r.mean[k]) + std::sqrt(r.var[k]);
    expect_close(tag(name + ": saved mean"), sm, r.mean, mmag, tol());
    expect_close(tag(name + ": saved invstd"), si, r.invstd, abs_of(r.invstd), tol());
  }

  void batch_norm_stats() {
    ++counts().cases;
    std::vector<double> cnt(static_cast<std::size_t>(C_), -1.0), mean(cnt), m2(cnt);
    normcpp::batch_norm_stats({x_.data(), nullptr, dt_, N_, C_, S_, lay_}, cnt.data(), mean.data(),
                              m2.data());
    const auto r = ncs_forward(
        xl_, N_, C_, S_, C_, [](i64, i64 c) { return c; }, ones(C_), zeros(C_), kEps);
    std::vector<double> em2(cnt.size()), mmag(cnt.size());
    for (std::size_t c = 0; c < cnt.size(); ++c) {
      em2[c] = r.var[c] * r.count[c];
      mmag[c] = std::fabs(r.mean[c]) + std::sqrt(r.var[c]);
    }
    expect_close(tag("batch_norm_stats: count"), cnt, r.count, r.count, 0.0);
    expect_close(tag("batch_norm_stats: mean"), mean, r.mean, mmag, tol());
    expect_close(tag("batch_norm_stats: m2"), m2, em2, em2, tol());
  }

  // Forward statistics of batch norm in training (mean, invstd per channel).
  FwdRef bn_stats() const {
    return ncs_forward(
        xl_, N_, C_, S_, C_, [](i64, i64 c) { return c; }, ones(C_), zeros(C_), kEps);
  }

  // dx buffer for backward calls: in-place variants alias dy (a copy of it).
  struct GradOut {
    Buf dx;
    const void* dy;
  };
  GradOut grad_out() const {
    GradOut g;
    if (inplace_) {
      g.dx = copy_of(dy_);
      g.dy = nullptr;  // set by caller to g.dx.data()
    } else {
      g.dx = Buf(dt_, total());
      for (i64 i = 0; i < total(); ++i) g.dx.set(i, -12345.0);
      g.dy = dy_.data();
    }
    return g;
  }

  void backward_batch_norm(bool training, bool full) {
    ++counts().cases;
    const std::string name = std::string("batch_norm_backward(") + (training ? "train" : "eval") +
                             (full ? ", affine, grads)" : ")");
    std::vector<double> mean, invstd;
    if (training) {
      const FwdRef f = bn_stats();
      mean = f.mean;
      invstd = f.invstd;
    } else {
      mean = rm0_;
      for (double v : rv0_) invstd.push_back(1.0 / std::sqrt(v + kEps));
    }
    Param W = make_param(w_, pdt_, stride_);
    std::vector<double> gw(static_cast<std::size_t>(C_), -1.0), gb(gw);
    GradOut g = grad_out();
    const void* dyp = inplace_ ? g.dx.data() : g.dy;
    const Buf x_before = copy_of(x_), dy_before = copy_of(dy_);
    normcpp::batch_norm_backward({x_.data(), dyp, g.dx.data(), dt_, N_, C_, S_, lay_},
                                 full ? W.ref() : normcpp::ParamRef{}, mean.data(), invstd.data(),
                                 training, full ? gw.data() : nullptr, full ? gb.data() : nullptr);
    const auto r = ncs_backward(
        xl_, dyl_, N_, C_, S_, C_, [](i64, i64 c) { return c; }, full ? w_ : ones(C_), mean, invstd,
        training);
    expect_close(tag(name + ": dx"), logical(g.dx), r.dx, r.dxmag, tol());
    check(x_.same_bits(x_before) && dy_.same_bits(dy_before), tag(name + ": inputs unchanged"));
    if (!full) return;
    expect_close(tag(name + ": grad_weight"), gw, r.gw, r.gwmag, tol());
    expect_close(tag(name + ": grad_bias"), gb, r.gb, r.gbmag, tol());
  }

  void backward_reduce_elemt() {
    ++counts().cases;
    const FwdRef f = bn_stats();
    std::vector<double> sdy(static_cast<std::size_t>(C_), -1.0), sdxh(sdy);
    normcpp::batch_norm_backward_reduce({x_.data(), dy_.data(), nullptr, dt_, N_, C_, S_, lay_},
                                        f.mean.data(), f.invstd.data(), sdy.data(), sdxh.data());
    const auto r = ncs_backward(
        xl_, dyl_, N_, C_, S_, C_, [](i64, i64 c) { return c; }, ones(C_), f.mean, f.invstd, true);
    expect_close(tag("batch_norm_backward_reduce: sum_dy"), sdy, r.sdy, r.sdymag, tol());
    expect_close(tag("batch_norm_backward_reduce: sum_dy_xhat"), sdxh, r.sdxh, r.sdxhmag, tol());
    if (N_ * S_ == 0) return;
    // elemt with "global" sums and count, as from an all-reduce over several processes.
    ++counts().cases;
    const double count = static_cast<double>(N_ * S_) * 1.5 + 1.0;
    std::vector<double> gs(sdy.size()), gx(sdy.size());
    for (std::size_t c = 0; c < gs.size(); ++c) {
      gs[c] = r.sdy[c] * 1.5 + 0.25;
      gx[c] = r.sdxh[c] * 1.5 - 0.125;
    }
    Param W = make_param(w_, pdt_, stride_);
    GradOut g = grad_out();
    const void* dyp = inplace_ ? g.dx.data() : g.dy;
    normcpp::batch_norm_backward_elemt({x_.data(), dyp, g.dx.data(), dt_, N_, C_, S_, lay_},
                                       W.ref(), f.mean.data(), f.invstd.data(), gs.data(),
                                       gx.data(), count);
    const auto e = ncs_backward(
        xl_, dyl_, N_, C_, S_, C_, [](i64, i64 c) { return c; }, w_, f.mean, f.invstd, true, &gs,
        &gx, count);
    expect_close(tag("batch_norm_backward_elemt: dx"), logical(g.dx), e.dx, e.dxmag, tol());
  }

  void backward_instance_norm() {
    if (S_ < 2) return;
    ++counts().cases;
    const i64 C = C_;
    auto slot = [C](i64 n, i64 c) { return n * C + c; };
    const FwdRef f = ncs_forward(xl_, N_, C_, S_, N_ * C_, slot, ones(C_), zeros(C_), kEps);
    Param W = make_param(w_, pdt_, stride_);
    std::vector<double> gw(static_cast<std::size_t>(C_), -1.0), gb(gw);
    GradOut g = grad_out();
    const void* dyp = inplace_ ? g.dx.data() : g.dy;
    normcpp::instance_norm_backward({x_.data(), dyp, g.dx.data(), dt_, N_, C_, S_, lay_}, W.ref(),
                                    f.mean.data(), f.invstd.data(), gw.data(), gb.data());
    const auto r = ncs_backward(xl_, dyl_, N_, C_, S_, N_ * C_, slot, w_, f.mean, f.invstd, true);
    expect_close(tag("instance_norm_backward: dx"), logical(g.dx), r.dx, r.dxmag, tol());
    expect_close(tag("instance_norm_backward: grad_weight"), gw, r.gw, r.gwmag, tol());
    expect_close(tag("instance_norm_backward: grad_bias"), gb, r.gb, r.gbmag, tol());
  }

  void backward_group_norm(i64 G) {
    ++counts().cases;
    const std::string name = "group_norm_backward(G=" + std::to_string(G) + ")";
    const bool affine = (variant_ + G) % 2 == 1;
    const i64 Cg = C_ / G;
    auto slot = [G, Cg](i64 n, i64 c) { return n * G + c / Cg; };
    const FwdRef f = ncs_forward(xl_, N_, C_, S_, N_ * G, slot, ones(C_), zeros(C_), kEps);
    Param W = make_param(w_, pdt_, stride_);
    std::vector<double> gw(static_cast<std::size_t>(C_), -1.0), gb(gw);
    GradOut g = grad_out();
    const void* dyp = inplace_ ? g.dx.data() : g.dy;
    normcpp::group_norm_backward({x_.data(), dyp, g.dx.data(), dt_, N_, C_, S_, lay_}, G,
                                 affine ? W.ref() : normcpp::ParamRef{}, f.mean.data(),
                                 f.invstd.data(), gw.data(), gb.data());
    const auto r = ncs_backward(xl_, dyl_, N_, C_, S_, N_ * G, slot, affine ? w_ : ones(C_), f.mean,
                                f.invstd, true);
    expect_close(tag(name + ": dx"), logical(g.dx), r.dx, r.dxmag, tol());
    expect_close(tag(name + ": grad_weight"), gw, r.gw, r.gwmag, tol());
    expect_close(tag(name + ": grad_bias"), gb, r.gb, r.gbmag, tol());
  }

  DType dt_;
  Layout lay_;
  i64 N_, C_, S_;
  int variant_;
  std::string tag_;
  Rng rng_;
  DType pdt_;
  i64 stride_;
  bool inplace_;
  Buf x_, dy_;
  std::vector<double> xl_, dyl_, w_, b_, rm0_, rv0_;
};

// =============================================================================== row ops
class RowCase {
 public:
  RowCase(const std::string& isa, DType dt, const RowShape& sh, int variant)
      : dt_(dt),
        R_(sh.rows),
        L_(sh.L),
        variant_(variant),
        tag_(fmt_rows(isa, dt, sh)),
        rng_(0xABCD0000u + static_cast<std::uint64_t>(variant) * 104729u),
        pdt_(variant % 2 ? DType::f32 : DType::f64),
        stride_(1 + variant % 2),
        inplace_(variant % 3 == 1) {
    if (inplace_) tag_ += "[in-place]";
    const i64 total = R_ * L_;
    x_ = Buf(dt, total);
    dy_ = Buf(dt, total);
    const bool big = dt != DType::f16 && variant % 4 == 2;
    for (i64 q = 0; q < R_; ++q) {
      const double off =
          big ? 50.0 + static_cast<double>(q % 3) : 0.5 * static_cast<double>(q % 3) - 0.4;
      for (i64 j = 0; j < L_; ++j) {
        x_.set(q * L_ + j, off + (0.6 + 0.1 * static_cast<double>(j % 5)) * rng_.normal());
        dy_.set(q * L_ + j, rng_.normal() - 0.05);
      }
    }
    xl_.resize(static_cast<std::size_t>(total));
    dyl_ = xl_;
    for (i64 i = 0; i < total; ++i) {
      xl_[static_cast<std::size_t>(i)] = x_.get(i);
      dyl_[static_cast<std::size_t>(i)] = dy_.get(i);
    }
    w_.resize(static_cast<std::size_t>(L_));
    b_ = w_;
    for (auto& v : w_) v = rng_.uniform() * 3.0 - 1.5;
    for (auto& v : b_) v = rng_.uniform() * 2.0 - 1.0;
    w_ = stored(w_, pdt_);
    b_ = stored(b_, pdt_);
  }

  void run_all() {
    forward(false, true);
    forward(false, false);
    forward(true, true);
    forward(true, false);
    backward(false, true);
    backward(false, false);
    backward(true, true);
    backward(true, false);
  }

 private:
  i64 total() const { return R_ * L_; }
  double tol() const { return tol_for(dt_); }
  std::string tag(const std::string& what) const { return tag_ + " " + what; }
  std::vector<double> values(const Buf& b) const {
    std::vector<double> v(static_cast<std::size_t>(total()));
    for (i64 i = 0; i < total(); ++i) v[static_cast<std::size_t>(i)] = b.get(i);
    return v;
  }

  void forward(bool rms, bool affine) {
    ++counts().cases;
    const std::string name =
        std::string(rms ? "rms_norm" : "layer_norm") + (affine ? "(affine)" : "()");
    Param W = make_param(w_, pdt_, stride_), B = make_param(b_, pdt_, stride_);
    std::vector<double> sm(static_cast<std::size_t>(R_), -1.0), si(sm);
    Buf y = inplace_ ? x_ : Buf(dt_, total());
    const Buf x_before = x_;
    const void* xp = inplace_ ? y.data() : x_.data();
    if (rms)
      normcpp::rms_norm(xp, y.data(), dt_, R_, L_, affine ? W.ref() : normcpp::ParamRef{}, kEps,
                        {sm.data(), si.data()});
    else
      normcpp::layer_norm(xp, y.data(), dt_, R_, L_, affine ? W.ref() : normcpp::ParamRef{},
                          affine ? B.ref() : normcpp::ParamRef{}, kEps, {sm.data(), si.data()});
    const auto r = row_forward(xl_, R_, L_, affine ? w_ : ones(L_), affine && !rms ? b_ : zeros(L_),
                               kEps, rms);
    expect_close(tag(name + ": y"), values(y), r.y, r.ymag, tol());
    check(x_.same_bits(x_before), tag(name + ": input unchanged"));
    if (L_ == 0) return;
    std::vector<double> mmag(sm.size());
    for (std::size_t q = 0; q < sm.size(); ++q) mmag[q] = std::fabs(r.mean[q]) + 1.0 / r.invstd[q];
    expect_close(tag(name + ": saved mean"), sm, r.mean, mmag, tol());
    expect_close(tag(name + ": saved invstd"), si, r.invstd, abs_of(r.invstd), tol());
  }

  void backward(bool rms, bool affine) {
    ++counts().cases;
    const std::string name = std::string(rms ? "rms_norm_backward" : "layer_norm_backward") +
                             (affine ? "(affine, grads)" : "()");
    const auto f = row_forward(xl_, R_, L_, ones(L_), zeros(L_), kEps, rms);
    Param W = make_param(w_, pdt_, stride_);
    std::vector<double> gw(static_cast<std::size_t>(L_), -1.0), gb(gw);
    Buf dx = inplace_ ? dy_ : Buf(dt_, total());
    const Buf dy_before = dy_;
    const void* dyp = inplace_ ? dx.data() : dy_.data();
    if (rms)
      normcpp::rms_norm_backward(x_.data(), dyp, dx.data(), dt_, R_, L_,
                                 affine ? W.ref() : normcpp::ParamRef{}, f.invstd.data(),
                                 affine ? gw.data() : nullptr);
    else
      normcpp::layer_norm_backward(x_.data(), dyp, dx.data(), dt_, R_, L_,
                                   affine ? W.ref() : normcpp::ParamRef{}, f.mean.data(),
                                   f.invstd.data(), affine ? gw.data() : nullptr,
                                   affine ? gb.data() : nullptr);
    const auto r = row_backward(xl_, dyl_, R_, L_, affine ? w_ : ones(L_), f.mean, f.invstd, rms);
    expect_close(tag(name + ": dx"), values(dx), r.dx, r.dxmag, tol());
    check(dy_.same_bits(dy_before), tag(name + ": dy unchanged"));
    if (!affine) return;
    expect_close(tag(name + ": grad_weight"), gw, r.gw, r.gwmag, tol());
    if (!rms) expect_close(tag(name + ": grad_bias"), gb, r.gb, r.gbmag, tol());
  }

  DType dt_;
  i64 R_, L_;
  int variant_;
  std::string tag_;
  Rng rng_;
  DType pdt_;
  i64 stride_;
  bool inplace_;
  Buf x_, dy_;
  std::vector<double> xl_, dyl_, w_, b_;
};

// =============================================================================== special
// Constant input: statistics are exact, so every normalized value is exactly 0 and the output
// is exactly the bias (rounded to the storage dtype), and the variance is exactly 0.
void constant_input(const std::string& isa, DType dt, Layout lay) {
  const i64 N = 3, C = 5, S = 700;
  const i64 total = N * C * S;
  Buf x(dt, total), y(dt, total);
  for (i64 i = 0; i < total; ++i) x.set(i, 2.5);
  std::vector<double> bias(static_cast<std::size_t>(C));
  for (i64 c = 0; c < C; ++c)
    bias[static_cast<std::size_t>(c)] = 0.25 * static_cast<double>(c) - 0.5;
  Param B = make_param(bias, DType::f32, 1), W = make_param(ones(C), DType::f64, 1);
  const std::string t = fmt_ncs(isa, dt, lay, {N, C, S}) + " constant input";
  auto y_is_bias = [&](const std::string& what) {
    bool ok = true;
    for (i64 n = 0; n < N && ok; ++n)
      for (i64 c = 0; c < C && ok; ++c)
        for (i64 s = 0; s < S && ok; ++s)
          ok = y.get(mem_index(lay, C, S, n, c, s)) == bias[static_cast<std::size_t>(c)];
    check(ok, t + " " + what + ": y is exactly the bias");
  };
  std::vector<double> sm(static_cast<std::size_t>(N * C)), si(sm);
  ++counts().cases;
  normcpp::batch_norm({x.data(), y.data(), dt, N, C, S, lay}, {}, W.ref(), B.ref(), true, 1e-5,
                      {sm.data(), si.data()});
  y_is_bias("batch_norm");
  check(sm[0] == 2.5 && si[0] == 1.0 / std::sqrt(1e-5),
        t + " batch_norm: mean exact, variance exactly 0");
  ++counts().cases;
  normcpp::instance_norm({x.data(), y.data(), dt, N, C, S, lay}, {}, W.ref(), B.ref(), true, 1e-5);
  y_is_bias("instance_norm");
  ++counts().cases;
  normcpp::group_norm({x.data(), y.data(), dt, N, C, S, lay}, 1, W.ref(), B.ref(), 1e-5,
                      {sm.data(), si.data()});
  y_is_bias("group_norm");
  check(sm[0] == 2.5 && si[0] == 1.0 / std::sqrt(1e-5), t + " group_norm: exact statistics");
  std::vector<double> cnt(static_cast<std::size_t>(C)), mean(cnt), m2(cnt);
  ++counts().cases;
  normcpp::batch_norm_stats({x.data(), nullptr, dt, N, C, S, lay}, cnt.data(), mean.data(),
                            m2.data());
  check(mean[0] == 2.5 && m2[0] == 0.0 && m2[C - 1] == 0.0, t + " batch_norm_stats: exact");
  if (lay == Layout::contiguous) {
    Param Bl = make_param(std::vector<double>(static_cast<std::size_t>(S), 0.75), DType::f32, 1);
    ++counts().cases;
    normcpp::layer_norm(x.data(), y.data(), dt, N * C, S, {}, Bl.ref(), 1e-5);
    bool ok = true;
    for (i64 i = 0; i < total && ok; ++i) ok = y.get(i) == 0.75;
    check(ok, t + " layer_norm: y is exactly the bias");
  }
}

// Empty tensors (a zero dimension): every op returns without touching memory or throwing,
// and leaves running statistics alone.
void empty_tensors(const std::string& isa) {
  const std::vector<NcsShape> shapes = {{0, 3, 5}, {2, 3, 0}, {0, 1, 0}};
  for (const auto& sh : shapes)
    for (Layout lay : {Layout::contiguous, Layout::channels_last}) {
      const std::string t = fmt_ncs(isa, DType::f32, lay, sh) + " empty";
      const i64 C = sh.C;
      Param RM = make_param(ones(C), DType::f32, 1), RV = make_param(ones(C), DType::f32, 1);
      const Buf rm0 = RM.buf(), rv0 = RV.buf();
      std::vector<double> d(static_cast<std::size_t>(C * 2 + 1), 0.5), e(d), f(d);
      float dummy[1] = {0.f};
      const normcpp::NCSRef ref{dummy, dummy, DType::f32, sh.N, sh.C, sh.S, lay};
      const normcpp::NCSGradRef g{dummy, dummy, dummy, DType::f32, sh.N, sh.C, sh.S, lay};
      ++counts().cases;
      expect_no_throw(
          [&] {
            normcpp::batch_norm(ref, {RM.mref(), RV.mref(), 0.1}, {}, {}, true, 1e-5);
            normcpp::batch_norm(ref, {RM.mref(), RV.mref(), 0.1}, {}, {}, false, 1e-5);
            if (sh.S != 1)
              normcpp::instance_norm(ref, {RM.mref(), RV.mref(), 0.1}, {}, {}, true, 1e-5);
            normcpp::group_norm(ref, 1, {}, {}, 1e-5);
            normcpp::batch_norm_stats(ref, d.data(), e.data(), f.data());
            normcpp::batch_norm_backward(g, {}, d.data(), e.data(), true, f.data(), f.data());
            normcpp::batch_norm_backward_reduce(g, d.data(), e.data(), f.data(), f.data());
            normcpp::batch_norm_backward_elemt(g, {}, d.data(), e.data(), d.data(), e.data(), 1.0);
            normcpp::instance_norm_backward(g, {}, d.data(), e.data(), f.data(), f.data());
            normcpp::group_norm_backward(g, 1, {}, d.data(), e.data(), f.data(), f.data());
          },
          t + ": NCS ops");
      check(dummy[0] == 0.f, t + ": no write to an empty output");
      check(RM.buf().same_bits(rm0) && RV.buf().same_bits(rv0), t + ": running stats unchanged");
    }
  float dummy[1] = {0.f};
  std::vector<double> d(8, 0.5);
  ++counts().cases;
  expect_no_throw(
      [&] {
        normcpp::layer_norm(dummy, dummy, DType::f32, 0, 7, {}, {}, 1e-5);
        normcpp::layer_norm(dummy, dummy, DType::f32, 3, 0, {}, {}, 1e-5);
        normcpp::rms_norm(dummy, dummy, DType::f32, 0, 7, {}, 1e-5);
        normcpp::rms_norm(dummy, dummy, DType::f32, 3, 0, {}, 1e-5);
        normcpp::layer_norm_backward(dummy, dummy, dummy, DType::f32, 0, 7, {}, d.data(), d.data(),
                                     d.data(), d.data());
        normcpp::rms_norm_backward(dummy, dummy, dummy, DType::f32, 0, 7, {}, d.data(), d.data());
      },
      "[" + isa + "] empty rows ops");
  check(dummy[0] == 0.f, "[" + isa + "] empty rows ops: no write");
}

// Slots so large that their chunk count hits the planners' cap (64 chunks of >= 32 Ki
// elements today), float32 only (the cost is in the reference).
void huge_slots(const std::string& isa) {
  NcsCase(isa, DType::f32, Layout::contiguous, {1, 1, 2200001}, 1).run_batch_norm_only();
  NcsCase(isa, DType::f32, Layout::channels_last, {2, 2, 1100001}, 2).run_batch_norm_only();
  RowCase(isa, DType::f32, {1, 2200001}, 0).run_all();
}

}  // namespace

void suite_ops(const std::string& isa) {
  int variant = 0;
  for (DType dt : {DType::f32, DType::f64, DType::f16}) {
    for (Layout lay : {Layout::contiguous, Layout::channels_last}) {
      for (const auto& sh : kNcsShapes) NcsCase(isa, dt, lay, sh, variant++).run_all();
      // --quick (emulators, sanitizers): one large shape per layout and dtype.
      for (std::size_t i = 0; i < kNcsLargeShapes.size(); ++i)
        if (!quick() || i == (lay == Layout::contiguous ? 0u : 3u))
          NcsCase(isa, dt, lay, kNcsLargeShapes[i], variant++).run_all();
    }
    for (const auto& sh : kRowShapes) RowCase(isa, dt, sh, variant++).run_all();
    for (std::size_t i = 0; i < kRowLargeShapes.size(); ++i)
      if (!quick() || i == 1) RowCase(isa, dt, kRowLargeShapes[i], variant++).run_all();
    for (Layout lay : {Layout::contiguous, Layout::channels_last}) constant_input(isa, dt, lay);
  }
  if (!quick()) huge_slots(isa);
  empty_tensors(isa);
}

}  // namespace nt
