// Invalid arguments: every op throws std::invalid_argument (with a message) and changes
// nothing - not the output, not the running statistics. Plus the ISA and thread controls.
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "harness.hpp"
#include "normcpp/normcpp.hpp"
#include "suites.hpp"

namespace nt {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

// A small valid setup that each invalid call perturbs in one way.
struct Setup {
  static constexpr i64 N = 2, C = 3, S = 5, total = N * C * S;
  Buf x{DType::f32, total}, y{DType::f32, total}, dy{DType::f32, total}, dx{DType::f32, total};
  Param W{DType::f32, C, 1}, B{DType::f64, C, 2}, RM{DType::f32, C, 1}, RV{DType::f64, C, 1};
  Param Wbad{DType::f32, C + 1, 1}, W16{DType::f16, C, 1};
  std::vector<double> mean = std::vector<double>(16, 0.5), invstd = std::vector<double>(16, 2.0);
  std::vector<double> g1 = std::vector<double>(16, 0.0), g2 = g1;
  Buf y0, dx0, rm0, rv0;
  Setup() {
    Rng rng(99);
    for (i64 i = 0; i < total; ++i) {
      x.set(i, rng.normal());
      dy.set(i, rng.normal());
      y.set(i, -7.0);
      dx.set(i, -7.0);
    }
    for (i64 c = 0; c < C; ++c) {
      W.set(c, 1.0);
      B.set(c, 0.0);
      RM.set(c, 0.25);
      RV.set(c, 2.0);
    }
    y0 = y;
    dx0 = dx;
    rm0 = RM.buf();
    rv0 = RV.buf();
  }
  normcpp::NCSRef t(i64 n = N, i64 c = C, i64 s = S, DType dt = DType::f32) {
    return {x.data(), y.data(), dt, n, c, s, Layout::contiguous};
  }
  normcpp::NCSGradRef g(i64 n = N, i64 c = C, i64 s = S) {
    return {x.data(), dy.data(), dx.data(), DType::f32, n, c, s, Layout::channels_last};
  }
  normcpp::RunningUpdate ru(double mom = 0.1) { return {RM.mref(), RV.mref(), mom}; }
  bool unchanged() const {
    return y.same_bits(y0) && dx.same_bits(dx0) && RM.buf().same_bits(rm0) &&
           RV.buf().same_bits(rv0);
  }
};

struct Bad {
  const char* what;
  std::function<void(Setup&)> call;
};

}  // namespace

void suite_invalid() {
  using normcpp::ParamRef;
  const DType bad_dtype = static_cast<DType>(7);
  const std::vector<Bad> cases = {
      // ---- batch_norm
      {"batch_norm C=0",
       [](Setup& s) { normcpp::batch_norm(s.t(2, 0, 5), s.ru(), {}, {}, true, 1e-5); }},
      {"batch_norm N<0",
       [](Setup& s) { normcpp::batch_norm(s.t(-1), s.ru(), {}, {}, true, 1e-5); }},
      {"batch_norm S<0",
       [](Setup& s) { normcpp::batch_norm(s.t(2, 3, -1), s.ru(), {}, {}, true, 1e-5); }},
      {"batch_norm N*C*S overflows int64",
       [](Setup& s) {
         normcpp::batch_norm(s.t(std::int64_t{1} << 40, 1 << 20, 1 << 20), s.ru(), {}, {}, true,
                             1e-5);
       }},
      {"batch_norm N*C*S bytes overflow int64",
       [](Setup& s) {
         normcpp::batch_norm(s.t(std::int64_t{1} << 31, std::int64_t{1} << 31, 2), s.ru(), {}, {}, true, 1e-5);
       }},
      {"batch_norm null input",
       [](Setup& s) {
         auto t = s.t();
         t.x = nullptr;
         normcpp::batch_norm(t, s.ru(), {}, {}, true, 1e-5);
       }},
      {"batch_norm null output",
       [](Setup& s) {
         auto t = s.t();
         t.y = nullptr;
         normcpp::batch_norm(t, s.ru(), {}, {}, true, 1e-5);
       }},
      {"batch_norm eps<0",
       [](Setup& s) { normcpp::batch_norm(s.t(), s.ru(), {}, {}, true, -1e-5); }},
      {"batch_norm eps=NaN",
       [](Setup& s) { normcpp::batch_norm(s.t(), s.ru(), {}, {}, true, kNaN); }},
      {"batch_norm eps=inf",
       [](Setup& s) { normcpp::batch_norm(s.t(), s.ru(), {}, {}, true, kInf); }},
      {"batch_norm momentum<0",
       [](Setup& s) { normcpp::batch_norm(s.t(), s.ru(-0.1), {}, {}, true, 1e-5); }},
      {"batch_norm momentum>1",
       [](Setup& s) { normcpp::batch_norm(s.t(), s.ru(1.5), {}, {}, true, 1e-5); }},
      {"batch_norm momentum=NaN",
       [](Setup& s) { normcpp::batch_norm(s.t(), s.ru(kNaN), {}, {}, true, 1e-5); }},
      {"batch_norm running_mean without running_var",
       [](Setup& s) {
         normcpp::batch_norm(s.t(), {s.RM.mref(), {}, 0.1}, {}, {}, true, 1e-5);
       }},
      {"batch_norm running_var without running_mean",
       [](Setup& s) {
         normcpp::batch_norm(s.t(), {{}, s.RV.mref(), 0.1}, {}, {}, true, 1e-5);
       }},
      {"batch_norm running_mean of C+1",
       [](Setup& s) {
         Param rm(DType::f32, Setup::C + 1, 1);
         normcpp::batch_norm(s.t(), {rm.mref(), s.RV.mref(), 0.1}, {}, {}, true, 1e-5);
       }},
      {"batch_norm running_var float16",
       [](Setup& s) {
         Param rv(DType::f16, Setup::C, 1);
         normcpp::batch_norm(s.t(), {s.RM.mref(), rv.mref(), 0.1}, {}, {}, true, 1e-5);
       }},
      {"batch_norm weight of C+1",
       [](Setup& s) { normcpp::batch_norm(s.t(), s.ru(), s.Wbad.ref(), {}, true, 1e-5); }},
      {"batch_norm bias of C+1",
       [](Setup& s) { normcpp::batch_norm(s.t(), s.ru(), s.W.ref(), s.Wbad.ref(), true, 1e-5); }},
      {"batch_norm weight float16",
       [](Setup& s) { normcpp::batch_norm(s.t(), s.ru(), s.W16.ref(), {}, true, 1e-5); }},
      {"batch_norm eval without running stats",
       [](Setup& s) { normcpp::batch_norm(s.t(), {}, {}, {}, false, 1e-5); }},
      {"batch_norm train with one value per channel",
       [](Setup& s) { normcpp::batch_norm(s.t(1, 3, 1), s.ru(), {}, {}, true, 1e-5); }},
      {"batch_norm unknown dtype",
       [bad_dtype](Setup& s) {
         normcpp::batch_norm(s.t(2, 3, 5, bad_dtype), s.ru(), {}, {}, true, 1e-5);
       }},
      // ---- instance_norm
      {"instance_norm one spatial element",
       [](Setup& s) { normcpp::instance_norm(s.t(2, 3, 1), s.ru(), {}, {}, true, 1e-5); }},
      {"instance_norm eval without running stats",
       [](Setup& s) { normcpp::instance_norm(s.t(), {}, {}, {}, false, 1e-5); }},
      {"instance_norm weight of C+1",
       [](Setup& s) { normcpp::instance_norm(s.t(), s.ru(), s.Wbad.ref(), {}, true, 1e-5); }},
      {"instance_norm momentum>1",
       [](Setup& s) { normcpp::instance_norm(s.t(), s.ru(2.0), {}, {}, true, 1e-5); }},
      {"instance_norm eps<0",
       [](Setup& s) { normcpp::instance_norm(s.t(), s.ru(), {}, {}, true, -1.0); }},
      {"instance_norm C=0",
       [](Setup& s) { normcpp::instance_norm(s.t(2, 0, 5), s.ru(), {}, {}, true, 1e-5); }},
      // ---- group_norm
      {"group_norm groups=0", [](Setup& s) { normcpp::group_norm(s.t(), 0, {}, {}, 1e-5); }},
      {"group_norm groups<0", [](Setup& s) { normcpp::group_norm(s.t(), -3, {}, {}, 1e-5); }},
      {"group_norm groups not dividing C",
       [](Setup& s) { normcpp::group_norm(s.t(), 2, {}, {}, 1e-5); }},
      {"group_norm groups > C", [](Setup& s) { normcpp::group_norm(s.t(), 6, {}, {}, 1e-5); }},
      {"group_norm weight of C+1",
       [](Setup& s) { normcpp::group_norm(s.t(), 3, s.Wbad.ref(), {}, 1e-5); }},
      {"group_norm bias float16",
       [](Setup& s) { normcpp::group_norm(s.t(), 3, {}, s.W16.ref(), 1e-5); }},
      {"group_norm eps=NaN", [](Setup& s) { normcpp::group_norm(s.t(), 1, {}, {}, kNaN); }},
      // ---- layer_norm / rms_norm
      {"layer_norm rows<0",
       [](Setup& s) {
         normcpp::layer_norm(s.x.data(), s.y.data(), DType::f32, -1, 5, {}, {}, 1e-5);
       }},
      {"layer_norm rows*row_len overflows int64",
       [](Setup& s) {
         normcpp::layer_norm(s.x.data(), s.y.data(), DType::f32, std::int64_t{1} << 40,
                             std::int64_t{1} << 30, {}, {}, 1e-5);
       }},
      {"layer_norm row_len<0",
       [](Setup& s) {
         normcpp::layer_norm(s.x.data(), s.y.data(), DType::f32, 2, -5, {}, {}, 1e-5);
       }},
      {"layer_norm weight of wrong length",
       [](Setup& s) {
         normcpp::layer_norm(s.x.data(), s.y.data(), DType::f32, 5, 6, s.W.ref(), {}, 1e-5);
       }},
      {"layer_norm bias of wrong length",
       [](Setup& s) {
         normcpp::layer_norm(s.x.data(), s.y.data(), DType::f32, 10, 3, {}, s.Wbad.ref(), 1e-5);
       }},
      {"layer_norm eps<0",
       [](Setup& s) {
         normcpp::layer_norm(s.x.data(), s.y.data(), DType::f32, 10, 3, {}, {}, -1e-3);
       }},
      {"layer_norm unknown dtype",
       [bad_dtype](Setup& s) {
         normcpp::layer_norm(s.x.data(), s.y.data(), bad_dtype, 10, 3, {}, {}, 1e-5);
       }},
      {"rms_norm weight of wrong length",
       [](Setup& s) {
         normcpp::rms_norm(s.x.data(), s.y.data(), DType::f32, 10, 3, s.Wbad.ref(), 1e-5);
       }},
      {"rms_norm weight float16",
       [](Setup& s) {
         normcpp::rms_norm(s.x.data(), s.y.data(), DType::f32, 10, 3, s.W16.ref(), 1e-5);
       }},
      {"rms_norm eps=inf",
       [](Setup& s) { normcpp::rms_norm(s.x.data(), s.y.data(), DType::f32, 10, 3, {}, kInf); }},
      {"rms_norm rows<0",
       [](Setup& s) { normcpp::rms_norm(s.x.data(), s.y.data(), DType::f32, -2, 3, {}, 1e-5); }},
      // ---- batch_norm_stats and the backward passes
      {"batch_norm_stats C=0",
       [](Setup& s) {
         normcpp::batch_norm_stats(s.t(2, 0, 5), s.g1.data(), s.g2.data(), s.mean.data());
       }},
      {"batch_norm_stats null input",
       [](Setup& s) {
         auto t = s.t();
         t.x = nullptr;
         normcpp::batch_norm_stats(t, s.g1.data(), s.g2.data(), s.mean.data());
       }},
      {"batch_norm_backward weight of C+1",
       [](Setup& s) {
         normcpp::batch_norm_backward(s.g(), s.Wbad.ref(), s.mean.data(), s.invstd.data(), true,
                                      s.g1.data(), s.g2.data());
       }},
      {"batch_norm_backward C=0",
       [](Setup& s) {
         normcpp::batch_norm_backward(s.g(2, 0, 5), {}, s.mean.data(), s.invstd.data(), true,
                                      nullptr, nullptr);
       }},
      {"batch_norm_backward null dx",
       [](Setup& s) {
         auto g = s.g();
         g.dx = nullptr;
         normcpp::batch_norm_backward(g, {}, s.mean.data(), s.invstd.data(), true, nullptr,
                                      nullptr);
       }},
      {"batch_norm_backward_reduce null dy",
       [](Setup& s) {
         auto g = s.g();
         g.dy = nullptr;
         normcpp::batch_norm_backward_reduce(g, s.mean.data(), s.invstd.data(), s.g1.data(),
                                             s.g2.data());
       }},
      {"batch_norm_backward_elemt count=0",
       [](Setup& s) {
         normcpp::batch_norm_backward_elemt(s.g(), {}, s.mean.data(), s.invstd.data(), s.g1.data(),
                                            s.g2.data(), 0.0);
       }},
      {"batch_norm_backward_elemt count=NaN",
       [](Setup& s) {
         normcpp::batch_norm_backward_elemt(s.g(), {}, s.mean.data(), s.invstd.data(), s.g1.data(),
                                            s.g2.data(), kNaN);
       }},
      {"batch_norm_backward_elemt weight of C+1",
       [](Setup& s) {
         normcpp::batch_norm_backward_elemt(s.g(), s.Wbad.ref(), s.mean.data(), s.invstd.data(),
                                            s.g1.data(), s.g2.data(), 30.0);
       }},
      {"instance_norm_backward weight of C+1",
       [](Setup& s) {
         normcpp::instance_norm_backward(s.g(), s.Wbad.ref(), s.mean.data(), s.invstd.data(),
                                         nullptr, nullptr);
       }},
      {"instance_norm_backward N<0",
       [](Setup& s) {
         normcpp::instance_norm_backward(s.g(-1), {}, s.mean.data(), s.invstd.data(), nullptr,
                                         nullptr);
       }},
      {"group_norm_backward groups=0",
       [](Setup& s) {
         normcpp::group_norm_backward(s.g(), 0, {}, s.mean.data(), s.invstd.data(), nullptr,
                                      nullptr);
       }},
      {"group_norm_backward groups not dividing C",
       [](Setup& s) {
         normcpp::group_norm_backward(s.g(), 2, {}, s.mean.data(), s.invstd.data(), nullptr,
                                      nullptr);
       }},
      {"group_norm_backward weight float16",
       [](Setup& s) {
         normcpp::group_norm_backward(s.g(), 3, s.W16.ref(), s.mean.data(), s.invstd.data(),
                                      nullptr, nullptr);
       }},
      {"layer_norm_backward weight of wrong length",
       [](Setup& s) {
         normcpp::layer_norm_backward(s.x.data(), s.dy.data(), s.dx.data(), DType::f32, 10, 3,
                                      s.Wbad.ref(), s.mean.data(), s.invstd.data(), nullptr,
                                      nullptr);
       }},
      {"layer_norm_backward unknown dtype",
       [bad_dtype](Setup& s) {
         normcpp::layer_norm_backward(s.x.data(), s.dy.data(), s.dx.data(), bad_dtype, 10, 3, {},
                                      s.mean.data(), s.invstd.data(), nullptr, nullptr);
       }},
      {"layer_norm_backward rows<0",
       [](Setup& s) {
         normcpp::layer_norm_backward(s.x.data(), s.dy.data(), s.dx.data(), DType::f32, -1, 3, {},
                                      s.mean.data(), s.invstd.data(), nullptr, nullptr);
       }},
      {"layer_norm_backward row_len<0",
       [](Setup& s) {
         normcpp::layer_norm_backward(s.x.data(), s.dy.data(), s.dx.data(), DType::f32, 10, -3, {},
                                      s.mean.data(), s.invstd.data(), nullptr, nullptr);
       }},
      {"rms_norm_backward rows<0",
       [](Setup& s) {
         normcpp::rms_norm_backward(s.x.data(), s.dy.data(), s.dx.data(), DType::f32, -1, 3, {},
                                    s.invstd.data(), nullptr);
       }},
      {"rms_norm_backward row_len<0",
       [](Setup& s) {
         normcpp::rms_norm_backward(s.x.data(), s.dy.data(), s.dx.data(), DType::f32, 10, -3, {},
                                    s.invstd.data(), nullptr);
       }},
      {"rms_norm_backward weight of wrong length",
       [](Setup& s) {
         normcpp::rms_norm_backward(s.x.data(), s.dy.data(), s.dx.data(), DType::f32, 10, 3,
                                    s.Wbad.ref(), s.invstd.data(), nullptr);
       }},
  };
  for (const Bad& b : cases) {
    ++counts().cases;
    Setup s;
    expect_throw<std::invalid_argument>([&] { b.call(s); }, std::string("invalid: ") + b.what);
    check(s.unchanged(), std::string("invalid: ") + b.what +
                             ": output and running statistics unchanged after the error");
  }

  // ---- ISA selection
  ++counts().cases;
  const std::vector<std::string> compiled = normcpp::compiled_isas();
  const std::vector<std::string> supported = normcpp::supported_isas();
  check(!compiled.empty() && !supported.empty(), "compiled_isas/supported_isas not empty");
  for (const auto& s : supported) {
    bool in = false;
    for (const auto& c : compiled) in = in || c == s;
    check(in, "supported ISA '" + s + "' is compiled");
  }
  const std::string before = normcpp::selected_isa();
  expect_throw<std::invalid_argument>([] { normcpp::select_isa("no-such-isa"); },
                                      "select_isa(unknown name)");
  expect_throw<std::invalid_argument>([] { normcpp::select_isa(""); }, "select_isa(\"\")");
  for (const auto& c : compiled) {
    bool runs = false;
    for (const auto& s : supported) runs = runs || c == s;
    if (!runs)
      expect_throw<std::runtime_error>([&] { normcpp::select_isa(c); },
                                       "select_isa(" + c + ") on a CPU without it");
  }
  check(normcpp::selected_isa() == before, "a failed select_isa keeps the selected level");
  for (const auto& s : supported) {
    normcpp::select_isa(s);
    check(normcpp::selected_isa() == s, "select_isa(" + s + ") selects it");
  }
  normcpp::select_isa(before);

  // ---- threads and version
  ++counts().cases;
  const int dflt = normcpp::get_num_threads();
  check(dflt >= 1, "get_num_threads() >= 1");
  normcpp::set_num_threads(3);
  check(normcpp::get_num_threads() == 3, "set_num_threads(3)");
  normcpp::set_num_threads(0);
  check(normcpp::get_num_threads() == dflt, "set_num_threads(0) restores the default");
  normcpp::set_num_threads(-5);
  check(normcpp::get_num_threads() == dflt, "set_num_threads(-5) restores the default");
  check(normcpp::version() != nullptr && normcpp::version()[0] != '\0', "version() not empty");
}

}  // namespace nt
