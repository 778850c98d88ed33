// Shared by the planners: kernel lookup per storage type, argument checks, parameters.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels/kernels.hpp"
#include "normcpp/normcpp.hpp"

namespace normcpp {
namespace ops {

using i64 = std::int64_t;

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

[[noreturn]] inline void fail(const std::string& msg) { throw std::invalid_argument(msg); }

template <class V>
std::string str(const V& v) {
  std::ostringstream os;
  os << v;
  return os.str();
}

inline void check_eps(double eps) {
  if (!(eps >= 0.0) || std::isinf(eps)) fail("eps must be a finite number >= 0, got " + str(eps));
}

inline void check_momentum(double m) {
  if (!(m >= 0.0 && m <= 1.0)) fail("momentum must be in [0, 1], got " + str(m));
}

inline void check_param(const ParamRef& p, const char* name, i64 n, const char* per) {
  if (!p.present()) return;
  if (p.dtype == DType::f16) fail(std::string(name) + " must be float32 or float64");
  if (p.size != n)
    fail(std::string(name) + " must have " + str(n) + " elements (one per " + per + "), got " +
         str(p.size));
}

// a * b * c, failing (naming `what`) when the product or its byte size (at most 8 bytes per
// element) does not fit in int64: every index computed later is then in range.
inline i64 checked_elems(i64 a, i64 b, i64 c, const char* what) {
  i64 e = 0;
  if (__builtin_mul_overflow(a, b, &e) || __builtin_mul_overflow(e, c, &e) ||
      e > std::numeric_limits<i64>::max() / 8)
    fail(std::string(what) + " = " + std::to_string(a) + " * " + std::to_string(b) +
         (c == 1 ? std::string() : " * " + std::to_string(c)) +
         " elements, more than any array can hold");
  return e;
}

inline void check_ncs(const NCSRef& t) {
  if (t.N < 0 || t.C < 1 || t.S < 0) fail("input must have N >= 0, C >= 1 and S >= 0");
  const i64 elems = checked_elems(t.N, t.C, t.S, "input has N * C * S");
  if ((!t.x || !t.y) && elems != 0) fail("input and output pointers must not be null");
}

// rows x row_len of a row op: sizes >= 0, the product in range; returns the element count.
inline i64 check_rows(i64 rows, i64 row_len) {
  if (rows < 0 || row_len < 0) fail("rows and row_len must be >= 0");
  return checked_elems(rows, row_len, 1, "input has rows * row_len");
}

inline void check_running(const RunningUpdate& r, i64 C) {
  if (r.mean.present() != r.var.present())
    fail(r.mean.present() ? "running_var is required when running_mean is given"
                          : "running_mean is required when running_var is given");
  check_param(r.mean.as_const(), "running_mean", C, "channel");
  check_param(r.var.as_const(), "running_var", C, "channel");
}

// Copies p[0..n) into out (converting), one typed loop per storage type; a contiguous one of
// the same type by memcpy (this file is compiled at the baseline ISA level: LayerNorm's weight
// and bias copied to a line by param_view, (16,4096) float32, were 4.5% of the call).
template <class S, class A>
void convert_param(const S* src, i64 stride, i64 n, A* out) {
  if constexpr (std::is_same<S, A>::value) {
    if (stride == 1) {
      std::memcpy(out, src, static_cast<std::size_t>(n) * sizeof(A));
      return;
    }
  }
  for (i64 i = 0; i < n; ++i) out[i] = static_cast<A>(src[i * stride]);
}

// The same from a present parameter of either storage type.
template <class A>
void convert_param(const ParamRef& p, i64 n, A* out) {
  if (p.dtype == DType::f64)
    convert_param(static_cast<const double*>(p.data), p.stride, n, out);
  else
    convert_param(static_cast<const float*>(p.data), p.stride, n, out);
}

// An optional parameter as a vector of n values (dflt where absent).
template <class A>
std::vector<A> param_vector(const ParamRef& p, i64 n, double dflt) {
  std::vector<A> v(static_cast<std::size_t>(n), static_cast<A>(dflt));
  if (p.present()) convert_param(p, n, v.data());
  return v;
}

// Elements of A in a 64-byte cache line.
template <class A>
constexpr i64 kLineElems = 64 / static_cast<i64>(sizeof(A));

// The first element of a buffer of A that starts on a 64-byte line; the buffer needs
// kLineElems<A> elements of slack for it.
template <class A>
A* line_start(A* p) {
  const auto addr = reinterpret_cast<std::uintptr_t>(p);
  return p + static_cast<std::ptrdiff_t>((64 - addr % 64) % 64 / sizeof(A));
}

// n values of A, zeros at first, the first on a 64-byte line: per-channel arrays that the
// channels-last kernels load beside every vector of x (a load across two lines costs two; see
// param_view). Not copyable (points into its own buffer); movable.
template <class A>
class LineVec {
 public:
  explicit LineVec(i64 n)
      : buf_(static_cast<std::size_t>(n + kLineElems<A>)),
        off_(static_cast<std::size_t>(line_start(buf_.data()) - buf_.data())) {}
  LineVec(const LineVec&) = delete;
  LineVec& operator=(const LineVec&) = delete;
  LineVec(LineVec&&) noexcept = default;  // the buffer moves with its offset
  A* data() { return buf_.data() + off_; }
  const A* data() const { return buf_.data() + off_; }
  A& operator[](std::size_t i) { return data()[i]; }
  const A& operator[](std::size_t i) const { return data()[i]; }

 private:
  std::vector<A> buf_;
  std::size_t off_;
};

// A per-element parameter as contiguous values of type A, read by `rows` rows: the caller's
// own memory when it already is that and starts `at` bytes past a 64-byte line, or is read by
// fewer than 4 rows (no copy: a LayerNorm weight can be as large as the input); else a copy in
// `storage`, converted and `at` bytes past a line (at: a multiple of sizeof(A) below 64, see
// row_grid_offset). The kernels load a weight vector beside every vector of x, and a load
// across two lines costs two (NumPy puts an array of 384 float32 48 bytes off a line:
// LayerNorm (64,197,384) 1 thread 1123-1198 us, 1060 on a line). nullptr when absent.
template <class A>
const A* param_view(const ParamRef& p, i64 n, std::vector<A>& storage, i64 rows,
                    std::size_t at = 0) {
  if (!p.present()) return nullptr;
  const bool same = (p.dtype == DType::f64) == std::is_same<A, double>::value;
  const bool placed = reinterpret_cast<std::uintptr_t>(p.data) % 64 == at;
  if (same && p.stride == 1 && (placed || rows < 4)) return static_cast<const A*>(p.data);
  storage.resize(static_cast<std::size_t>(n + 2 * kLineElems<A>));
  A* out = line_start(storage.data()) + at / sizeof(A);
  convert_param(p, n, out);
  return out;
}

// Where in its cache line a per-element parameter read beside the vectors of an output y of
// rows of L elements of T should start (param_view's `at`): y's offset in its line, where rows
// are whole lines (each starting at that offset) of at least 4, T is A (float32, float64) and
// the rows are written on y's lines (write_row's grid: the kernels write such rows in vectors
// on y's lines, streamed or not, and read a weight on the same grid only where it sits at y's
// offset; `chained` -- silu or gelu -- rows of float32 and float16 are written from their first
// element); else 0 (on a line). An out= from NumPy starts 16 bytes past a line: LayerNorm
// (8,512,768) float32, 1 thread, streamed, weight and bias on lines 680-686 us, at y's offset
// 580-585 (the output cache's y, on a line: 571-587).
template <class T, class A>
std::size_t row_grid_offset(const void* y, i64 L, bool chained) {
  const auto off = static_cast<std::size_t>(reinterpret_cast<std::uintptr_t>(y) % 64);
  const i64 bytes = L * static_cast<i64>(sizeof(T));
  if (!std::is_same<T, A>::value || (chained && !std::is_same<T, double>::value) ||
      bytes % 64 != 0 || bytes < 256 || off % sizeof(T) != 0)
    return 0;
  return off;
}

// Element i of an optional parameter, dflt where it is absent.
inline double param_or(const ParamRef& p, i64 i, double dflt) {
  return p.present() ? p.get(i) : dflt;
}

inline std::vector<double> param_vector_d(const ParamRef& p, i64 n, double dflt) {
  return param_vector<double>(p, n, dflt);
}


template <class F>
inline void by_dtype(DType dt, F&& f) {
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


}  // namespace ops
}  // namespace normcpp
