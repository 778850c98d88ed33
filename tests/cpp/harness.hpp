// A minimal test harness for the normcpp C++ API (no external dependencies, so the same
// binary builds natively, under sanitizers and in the aarch64 cross build run by qemu).
//
// Checks are counted, not fatal: a failed check prints what was compared and the run goes on,
// so one report shows every mismatch. Also here: typed storage for float16/float32/float64
// tensors (float16 with its own scalar conversion, independent of the library's), parameter
// arrays with strides, a deterministic random generator and the tolerance rules.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "normcpp/normcpp.hpp"

namespace nt {

using i64 = std::int64_t;
using normcpp::DType;
using normcpp::Layout;

// ------------------------------------------------------------------------------- options
// --quick: fewer large shapes (for emulators and sanitizer builds).
inline bool& quick() {
  static bool q = false;
  return q;
}

// ------------------------------------------------------------------------------- counters
struct Counts {
  long checks = 0;
  long failures = 0;
  long cases = 0;
  // Largest error / tolerance limit among passing expect_close calls, by tolerance class
  // (0: float64-like, 1: float32-like, 2: float16-like).
  double worst_ratio[3] = {0.0, 0.0, 0.0};
};

inline int tol_class(double tol) { return tol > 1e-4 ? 2 : tol > 1e-9 ? 1 : 0; }

inline Counts& counts() {
  static Counts c;
  return c;
}

// At most this many failure reports are printed (the counts stay exact).
constexpr long kMaxReports = 60;

inline void report_failure(const std::string& msg) {
  ++counts().failures;
  if (counts().failures <= kMaxReports) std::printf("FAIL: %s\n", msg.c_str());
  if (counts().failures == kMaxReports) std::printf("(further failures not printed)\n");
  std::fflush(stdout);
}

inline bool check(bool ok, const std::string& what) {
  ++counts().checks;
  if (!ok) report_failure(what);
  return ok;
}

// f() must throw E (exactly this type or derived); anything else is a failure.
template <class E, class F>
bool expect_throw(F&& f, const std::string& what) {
  ++counts().checks;
  try {
    f();
  } catch (const E& e) {
    if (std::strlen(e.what()) == 0) {
      report_failure(what + ": threw with an empty message");
      return false;
    }
    return true;
  } catch (const std::exception& e) {
    report_failure(what + ": threw the wrong exception type: " + e.what());
    return false;
  } catch (...) {
    report_failure(what + ": threw a non-std exception");
    return false;
  }
  report_failure(what + ": did not throw");
  return false;
}

template <class F>
bool expect_no_throw(F&& f, const std::string& what) {
  ++counts().checks;
  try {
    f();
  } catch (const std::exception& e) {
    report_failure(what + ": unexpected exception: " + e.what());
    return false;
  }
  return true;
}

// ------------------------------------------------------------------------------- float16
// Our own binary16 conversions (round to nearest even), independent of the library's.
inline double half_to_double(std::uint16_t h) {
  const int sign = (h & 0x8000) ? -1 : 1;
  const int e = (h >> 10) & 0x1F;
  const int m = h & 0x3FF;
  if (e == 0x1F) return m ? std::nan("") : sign * HUGE_VAL;
  if (e == 0) return sign * std::ldexp(static_cast<double>(m), -24);
  return sign * std::ldexp(static_cast<double>(m + 1024), e - 25);
}

inline std::uint16_t double_to_half(double v) {
  if (std::isnan(v)) return 0x7E00;
  const std::uint16_t sign = std::signbit(v) ? 0x8000 : 0;
  const double a = std::fabs(v);
  if (a == 0.0) return sign;
  if (std::isinf(a)) return static_cast<std::uint16_t>(sign | 0x7C00);
  int e = std::ilogb(a);
  if (e < -14) {  // subnormal (or rounds up to the smallest normal: the encoding is continuous)
    const double m = std::nearbyint(std::ldexp(a, 24));
    return static_cast<std::uint16_t>(sign | static_cast<std::uint16_t>(m));
  }
  double m = std::nearbyint(std::ldexp(a, 10 - e));  // in [1024, 2048]
  if (m >= 2048.0) {
    m = 1024.0;
    ++e;
  }
  if (e > 15) return static_cast<std::uint16_t>(sign | 0x7C00);
  return static_cast<std::uint16_t>(sign | ((e + 15) << 10) | (static_cast<int>(m) - 1024));
}

inline const char* dtype_name(DType d) {
  switch (d) {
    case DType::f16:
      return "f16";
    case DType::f32:
      return "f32";
    case DType::f64:
      return "f64";
  }
  return "?";
}

inline const char* layout_name(Layout l) { return l == Layout::contiguous ? "nchw" : "nhwc"; }

// ------------------------------------------------------------------------------- storage
// A flat array of n elements of a storage dtype, read and written as double.
class Buf {
 public:
  Buf() = default;
  Buf(DType dt, i64 n) : dt_(dt), n_(n), bytes_(static_cast<std::size_t>(n) * esize(dt) + 1) {}
  static std::size_t esize(DType dt) { return dt == DType::f16 ? 2 : dt == DType::f32 ? 4 : 8; }
  DType dtype() const { return dt_; }
  i64 size() const { return n_; }
  void* data() { return n_ ? bytes_.data() : nullptr; }
  const void* data() const { return n_ ? bytes_.data() : nullptr; }
  double get(i64 i) const {
    const unsigned char* p = bytes_.data() + static_cast<std::size_t>(i) * esize(dt_);
    switch (dt_) {
      case DType::f16: {
        std::uint16_t h;
        std::memcpy(&h, p, 2);
        return half_to_double(h);
      }
      case DType::f32: {
        float f;
        std::memcpy(&f, p, 4);
        return f;
      }
      case DType::f64: {
        double d;
        std::memcpy(&d, p, 8);
        return d;
      }
    }
    return 0.0;
  }
  void set(i64 i, double v) {
    unsigned char* p = bytes_.data() + static_cast<std::size_t>(i) * esize(dt_);
    switch (dt_) {
      case DType::f16: {
        const std::uint16_t h = double_to_half(v);
        std::memcpy(p, &h, 2);
        return;
      }
      case DType::f32: {
        const float f = static_cast<float>(v);
        std::memcpy(p, &f, 4);
        return;
      }
      case DType::f64:
        std::memcpy(p, &v, 8);
        return;
    }
  }
  // The raw bytes of the n elements.
  std::vector<unsigned char> bytes() const {
    return std::vector<unsigned char>(
        bytes_.begin(),
        bytes_.begin() + static_cast<std::ptrdiff_t>(static_cast<std::size_t>(n_) * esize(dt_)));
  }
  bool same_bits(const Buf& o) const { return dt_ == o.dt_ && n_ == o.n_ && bytes_ == o.bytes_; }

 private:
  DType dt_ = DType::f32;
  i64 n_ = 0;
  std::vector<unsigned char> bytes_;
};

// A 1-D parameter of `size` elements (float32 or float64) stored with an element stride;
// the gaps hold a sentinel that must never change.
class Param {
 public:
  static constexpr double kSentinel = -777.0;
  Param() = default;
  Param(DType dt, i64 size, i64 stride) : dt_(dt), size_(size), stride_(stride) {
    buf_ = Buf(dt, size * stride);
    for (i64 i = 0; i < size * stride; ++i) buf_.set(i, kSentinel);
  }
  bool present() const { return size_ > 0 || stride_ > 0; }
  i64 size() const { return size_; }
  double get(i64 i) const { return buf_.get(i * stride_); }
  void set(i64 i, double v) { buf_.set(i * stride_, v); }
  normcpp::ParamRef ref() const {
    if (!present()) return {};
    return {size_ ? buf_.data() : static_cast<const void*>(&dummy_), dt_, size_, stride_};
  }
  normcpp::MutParamRef mref() {
    if (!present()) return {};
    return {size_ ? buf_.data() : static_cast<void*>(&dummy_), dt_, size_, stride_};
  }
  // The gaps between strided elements still hold the sentinel.
  bool gaps_intact() const {
    for (i64 i = 0; i < size_ * stride_; ++i)
      if (i % stride_ != 0 && buf_.get(i) != kSentinel) return false;
    return true;
  }
  std::vector<double> values() const {
    std::vector<double> v(static_cast<std::size_t>(size_));
    for (i64 i = 0; i < size_; ++i) v[static_cast<std::size_t>(i)] = get(i);
    return v;
  }
  const Buf& buf() const { return buf_; }

 private:
  DType dt_ = DType::f32;
  i64 size_ = 0;
  i64 stride_ = 0;
  Buf buf_;
  double dummy_ = 0.0;
};

// ------------------------------------------------------------------------------- random
// splitmix64: deterministic across platforms and compilers.
class Rng {
 public:
  explicit Rng(std::uint64_t seed) : s_(seed) {}
  std::uint64_t next() {
    std::uint64_t z = (s_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // Uniform in [0, 1).
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }
  // Roughly standard normal (Irwin-Hall with 4 terms), bounded: no extreme outliers.
  double normal() {
    return (uniform() + uniform() + uniform() + uniform() - 2.0) * 1.7320508075688772;
  }

 private:
  std::uint64_t s_;
};

// ------------------------------------------------------------------------------- compare
// Relative tolerance by storage dtype, applied to a per-element magnitude (the sum of the
// absolute values of the terms the reference adds, so cancellation does not make it fail).
inline double tol_for(DType d) {
  switch (d) {
    case DType::f16:
      return 3e-3;
    case DType::f32:
      return 2e-5;
    case DType::f64:
      return 1e-12;
  }
  return 0.0;
}

// got[i] must be within tol * (mag[i] + floor) of ref[i]; floor = 1e-3 * mean(mag) keeps
// near-zero magnitudes from demanding the impossible. NaN anywhere is a failure.
inline bool expect_close(const std::string& what, const std::vector<double>& got,
                         const std::vector<double>& ref, const std::vector<double>& mag,
                         double tol) {
  ++counts().checks;
  if (got.size() != ref.size() || mag.size() != ref.size()) {
    report_failure(what + ": size mismatch");
    return false;
  }
  double mean_mag = 0.0;
  for (double m : mag) mean_mag += m;
  mean_mag = ref.empty() ? 0.0 : mean_mag / static_cast<double>(ref.size());
  const double floor = 1e-3 * mean_mag + 1e-300;
  std::size_t bad = 0, first = 0;
  double worst = 0.0;
  std::size_t worst_i = 0;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    const double err = std::fabs(got[i] - ref[i]);
    const double lim = tol * (mag[i] + floor);
    const double ratio = err / lim;
    if (!(err <= lim)) {
      if (bad == 0) first = i;
      ++bad;
    }
    if (!(ratio <= worst)) {
      worst = ratio;
      worst_i = i;
    }
  }
  double& w = counts().worst_ratio[tol_class(tol)];
  if (bad == 0 && worst > w) w = worst;
  if (bad == 0) return true;
  char line[512];
  std::snprintf(line, sizeof line,
                ": %zu of %zu elements off; first at %zu: got %.10g, want %.10g (mag %.3g); "
                "worst at %zu: got %.10g, want %.10g (err/limit %.3g)",
                bad, ref.size(), first, got[first], ref[first], mag[first], worst_i, got[worst_i],
                ref[worst_i], worst);
  report_failure(what + line);
  return false;
}

inline std::vector<double> abs_of(const std::vector<double>& v) {
  std::vector<double> out(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) out[i] = std::fabs(v[i]);
  return out;
}

}  // namespace nt
