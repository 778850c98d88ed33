// SIMD kernels for normalization. This file is compiled once per ISA level (CMake passes
// -DNORMCPP_KNS=<level> and that level's -m flags); everything in it lives in
// normcpp::kernels::<level>, with internal linkage for helpers so no copy built with wider
// instructions can be picked by the linker for another level.
//
// Vectors are GCC/Clang vector extensions sized for the level (16 bytes baseline/NEON,
// 32 AVX2, 64 AVX-512), so one source serves every level; float16 is converted in registers
// with F16C / AVX-512 / NEON instructions where present.
//
// Statistics (run_moments, cl_moments): data is cut into blocks of kBlock elements (8 KB of
// float32, L1-resident). Per block, d = x - K and d^2 are summed about a shift K: the block's
// moments are (len, K + sum(d)/len, sum(d^2) - sum(d)^2/len), computed in double and merged
// across blocks with Chan's formula in double. K comes from a few of the block's elements and
// is kept when it lies within about a standard deviation of the block mean (then the
// subtraction costs at most a bit or two of the float32 lane sums); otherwise a second pass
// sums about the block mean m_b = K + sum(d)/len itself. The deviations are O(std), so float32
// lane sums lose nothing to cancellation: for 1e4 + N(0,1) data the variance error is ~1e-6
// relative (a naive float32 E[x^2] - E[x]^2 loses all digits). Constant data gives K == the
// constant, d = 0 exactly, hence mean == the constant and M2 == 0 exactly. (See
// block_moments, short_moments for runs of <= kShortRun elements, cl_moments for
// channels-last blocks.)
// Results depend only on the block boundaries, never on threads. Measured: memory-bound (one
// read per pass from L1 is ~4x faster than the DRAM read it replaces).
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#elif defined(__aarch64__)
#include <arm_neon.h>
#endif

#include "kernels/kernels.hpp"
#include "kernels/lines.hpp"

#ifndef NORMCPP_KNS
#error "NORMCPP_KNS (the ISA namespace) must be defined"
#endif

#if defined(__AVX512F__)
#define NORMCPP_VBYTES 64
#elif defined(__AVX__)
#define NORMCPP_VBYTES 32
#else
#define NORMCPP_VBYTES 16
#endif

// Forces inlining of the per-vector pieces (activations, the element lambdas of write_row):
// GCC otherwise outlines a lambda used at several call sites once it holds an activation, and
// a call per vector (arguments and result through the stack) costs more than the arithmetic.
#define NORMCPP_ALWAYS_INLINE __attribute__((always_inline))
// Keeps each activation's copy of an apply kernel a function of its own: inlined into one
// dispatcher, the activations' constants and spills gave every call (activation or not) a
// large stack frame to set up.
#define NORMCPP_NOINLINE __attribute__((noinline))

// Row vectors wider than a level's registers (short_rows' 16-lane rows at the AVX2 level, 8
// lanes at baseline) pass through always-inline helpers of this file only: GCC's note that
// their calling convention differs between ISA levels concerns no real call.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

namespace normcpp {
namespace kernels {
namespace NORMCPP_KNS {
namespace {

using i64 = std::int64_t;

typedef float vfloat __attribute__((vector_size(NORMCPP_VBYTES)));
typedef double vdouble __attribute__((vector_size(NORMCPP_VBYTES)));
// Unaligned, aliasing views for loads and stores (one vmovups each).
typedef float vfloat_u __attribute__((vector_size(NORMCPP_VBYTES), aligned(1), may_alias));
typedef double vdouble_u __attribute__((vector_size(NORMCPP_VBYTES), aligned(1), may_alias));

inline i64 imin(i64 a, i64 b) { return a < b ? a : b; }
constexpr i64 imax(i64 a, i64 b) { return a > b ? a : b; }
inline i64 gcd64(i64 a, i64 b) {
  while (b != 0) {
    const i64 t = a % b;
    a = b;
    b = t;
  }
  return a;
}

inline Moments merge(const Moments& a, const Moments& b) {
  if (a.n == 0.0) return b;
  const double n = a.n + b.n;
  const double f = b.n / n;
  const double d = b.mean - a.mean;
  return {n, a.mean + d * f, a.m2 + b.m2 + d * d * a.n * f};
}

// Storage type -> arithmetic type, vector type, lanes, loads and stores.
template <class T>
struct VT;

template <>
struct VT<float> {
  using A = float;
  using V = vfloat;
  static constexpr int W = NORMCPP_VBYTES / 4;
  static V load(const float* p) { return *reinterpret_cast<const vfloat_u*>(p); }
  static void store(float* p, V v) { *reinterpret_cast<vfloat_u*>(p) = v; }
  static A to_a(float x) { return x; }
  static float from_a(A x) { return x; }
};

template <>
struct VT<double> {
  using A = double;
  using V = vdouble;
  static constexpr int W = NORMCPP_VBYTES / 8;
  static V load(const double* p) { return *reinterpret_cast<const vdouble_u*>(p); }
  static void store(double* p, V v) { *reinterpret_cast<vdouble_u*>(p) = v; }
  static A to_a(double x) { return x; }
  static double from_a(A x) { return x; }
};

// Scalar binary16 conversions with internal linkage in this level: F16C's one-element forms
// where the level has them -- the same instructions as the vector loads and stores, so a tail
// element converts exactly as it would inside a vector (NaN payloads included) -- else the
// plain C++ of half.hpp. (The software form was ~150 instructions a row of LayerNorm float16
// for the 8 elements of block_moments' shift: 17% of the row's.)
#if defined(__F16C__)
inline float h2f(half_t h) { return _cvtsh_ss(h.bits); }
inline half_t f2h(float f) {
  return half_t{static_cast<std::uint16_t>(_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT))};
}
#else
inline float h2f(half_t h) { return half_bits_to_float(h.bits); }
inline half_t f2h(float f) { return half_t{float_to_half_bits(f)}; }
#endif

template <>
struct VT<half_t> {
  using A = float;
  using V = vfloat;
  static constexpr int W = NORMCPP_VBYTES / 4;
  static V load(const half_t* p) {
#if defined(__AVX512F__)
    return reinterpret_cast<V>(
        _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))));
#elif defined(__AVX__) && defined(__F16C__)
    return reinterpret_cast<V>(
        _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
#elif defined(__aarch64__)
    uint16x4_t u;
    std::memcpy(&u, p, sizeof u);
    return reinterpret_cast<V>(vcvt_f32_f16(vreinterpret_f16_u16(u)));
#else
    V v;
    for (int i = 0; i < W; ++i) v[i] = h2f(p[i]);
    return v;
#endif
  }
  static void store(half_t* p, V v) {
#if defined(__AVX512F__)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p),
                        _mm512_cvtps_ph(reinterpret_cast<__m512>(v),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#elif defined(__AVX__) && defined(__F16C__)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p),
                     _mm256_cvtps_ph(reinterpret_cast<__m256>(v),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#elif defined(__aarch64__)
    const uint16x4_t u = vreinterpret_u16_f16(vcvt_f16_f32(reinterpret_cast<float32x4_t>(v)));
    std::memcpy(p, &u, sizeof u);
#else
    for (int i = 0; i < W; ++i) p[i] = f2h(v[i]);
#endif
  }
  static A to_a(half_t x) { return h2f(x); }
  static half_t from_a(A x) { return f2h(x); }
};

template <class V, class A>
inline V splat(A x) {
  return V{} + x;
}

// {0, 1, 2, ...}: compared with a splat, the mask of a partial vector's lanes.
template <class V, class A>
inline V lane_index() {
  V v{};
  for (int k = 0; k < static_cast<int>(sizeof(V) / sizeof(A)); ++k) v[k] = static_cast<A>(k);
  return v;
}

// Lanes [Off, Off + sizeof...(K)) of v as a vector of that many lanes (an extract, or nothing
// for the low half, in registers).
template <std::size_t Off, class V, std::size_t... K>
NORMCPP_ALWAYS_INLINE inline auto lanes_from(const V& v, std::index_sequence<K...>) {
  return __builtin_shufflevector(v, v, (Off + K)...);
}

// Sum of the lanes: a pairwise tree in the lane type (halves added as vectors: log2(lanes)
// adds and extracts instead of a conversion and a dependent add per lane; it runs once per
// statistics block, which for a small slot is a large share of the work). The halves are
// taken by shuffles: copied out with memcpy, GCC stored the vector to the stack and loaded
// its halves back, a store-forwarding stall on every sum (run_dot of a row of 32 float32:
// ~45 cycles).
template <class V>
NORMCPP_ALWAYS_INLINE inline auto lane_sum(const V& v) {
  using E = std::remove_cv_t<std::remove_reference_t<decltype(v[0])>>;
  constexpr std::size_t n = sizeof(V) / sizeof(E);
  if constexpr (n <= 2) {
    return static_cast<E>(n == 1 ? v[0] : v[0] + v[n - 1]);
  } else {
    constexpr std::size_t h = n / 2;
    return lane_sum(lanes_from<0>(v, std::make_index_sequence<h>{}) +
                    lanes_from<h>(v, std::make_index_sequence<h>{}));
  }
}
template <class V>
NORMCPP_ALWAYS_INLINE inline double hsum(V v) {
  return static_cast<double>(lane_sum(v));
}

// ------------------------------------------------------------------- streaming stores
// A non-temporal ("streaming") store writes a vector to memory past the caches: for an output
// far larger than the last-level cache it saves the read-for-ownership of every output line
// and leaves the cache to the inputs (the planners ask for it above stream_threshold()).
// float32 on x86, and float16 where F16C converts in registers (AVX2, AVX-512); elsewhere
// (float64, baseline float16, aarch64) a streamed row is written with plain stores. Streaming
// stores are weakly ordered: parallel_for fences each thread's stores when its work ends.
template <class T>
constexpr bool kCanStream = false;
#if defined(__SSE2__)
template <>
constexpr bool kCanStream<float> = true;
inline void stream_store(float* p, vfloat v) {
#if defined(__AVX512F__)
  _mm512_stream_ps(p, reinterpret_cast<__m512>(v));
#elif defined(__AVX__)
  _mm256_stream_ps(p, reinterpret_cast<__m256>(v));
#else
  _mm_stream_ps(p, reinterpret_cast<__m128>(v));
#endif
}
#else
inline void stream_store(float* p, vfloat v) { VT<float>::store(p, v); }
#endif
// float16 outputs where F16C converts in registers: a vector of W floats stored as W halves
// (32 bytes at AVX-512, 16 at AVX2), streamed from a line boundary in steps of W, so every
// store is aligned to its size and two or four of them fill a line. The bits are those of
// VT<half_t>::store (the same conversion). 2-vCPU Xeon, medians us, plain vs streamed,
// interleaved: BatchNorm eval (32,64,56,56) float16 NCHW 1 thread 2016-2140 -> 1379-1418,
// 2 threads 1050 -> 692, NHWC 1936-2233 -> 1248-1554; GroupNorm NCHW 3110-3597 -> 2116-2418,
// NHWC 2911-3533 -> 2291-2429 (np.copyto of the same bytes: 1240-1430).
#if defined(__F16C__) && (defined(__AVX512F__) || defined(__AVX__))
template <>
constexpr bool kCanStream<half_t> = true;
inline void stream_store(half_t* p, vfloat v) {
#if defined(__AVX512F__)
  _mm256_stream_si256(reinterpret_cast<__m256i*>(p),
                      _mm512_cvtps_ph(reinterpret_cast<__m512>(v),
                                      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#else
  _mm_stream_si128(reinterpret_cast<__m128i*>(p),
                   _mm256_cvtps_ph(reinterpret_cast<__m256>(v),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#endif
}
#endif

// Rows that are not whole cache lines are streamed only from this many bytes on, unless the
// caller passes a LineCarry (rows in memory order). Their first and last lines are stored
// plainly (below), and streaming stores between such plain lines
// every few lines run slower than plain stores on Zen 4: rows of L floats at 16 bytes past a
// line, 1 thread, streamed vs plain, LayerNorm forward of 5M elements: L = 100 3677 vs 1882 us,
// 250 2153 vs 1329, 500 1479 vs 1352, 1000 1424 vs 1577, 2000 1597 vs 2348; writing the rows
// alone: 100 1732 vs 1303, 250 1276 vs 1268, 1000 877 vs 1410.
constexpr i64 kSeamRowBytes = 3072;
// The same for the LayerNorm/RMSNorm backward sweep (bwd_rows_impl), whose rows read two
// inputs: streaming pays from shorter rows there.
constexpr i64 kSeamSweepBytes = 512;

// One 64-byte line from src (on a line) to dst (on a line) with a streaming store.
template <class T>
inline void stream_line(T* dst, const T* src) {
#if defined(__AVX512F__)
  _mm512_stream_si512(reinterpret_cast<__m512i*>(dst),
                      _mm512_load_si512(reinterpret_cast<const void*>(src)));
#elif defined(__AVX__)
  for (int k = 0; k < 64; k += 32)
    _mm256_stream_si256(reinterpret_cast<__m256i*>(reinterpret_cast<char*>(dst) + k),
                        _mm256_load_si256(reinterpret_cast<const __m256i*>(
                            reinterpret_cast<const char*>(src) + k)));
#elif defined(__SSE2__)
  for (int k = 0; k < 64; k += 16)
    _mm_stream_si128(reinterpret_cast<__m128i*>(reinterpret_cast<char*>(dst) + k),
                     _mm_load_si128(reinterpret_cast<const __m128i*>(
                         reinterpret_cast<const char*>(src) + k)));
#else
  std::memcpy(dst, src, 64);
#endif
}

// The partial last line of a streamed row, held back (write_row with a carry): when the next
// row starts right where this one ends -- rows and planes in memory order -- it completes the
// line and streams it whole, so that a tensor of rows that are not whole lines (NumPy's out=
// arrays start 16 or 48 bytes past a line; rows of 100 floats) is streamed line after line
// like one long row, with no line written partly by plain and partly by streaming stores
// (which costs a partial write to memory) and no plain line between streamed ones. What is
// held when a row does not continue it, and at the end (the destructor), is stored plainly.
template <class T>
struct LineCarry {
  static constexpr i64 kLine = 64 / static_cast<i64>(sizeof(T));
  // The line is buf[kLine, 2 kLine): whole vectors are staged into it, and their lanes outside
  // the elements staged fall into the line before or after it.
  alignas(64) T buf[3 * kLine];
  T* at = nullptr;  // where the line goes (on a line)
  i64 held = 0;     // elements held, < kLine
  LineCarry() = default;
  LineCarry(const LineCarry&) = delete;
  LineCarry& operator=(const LineCarry&) = delete;
  T* line() { return buf + kLine; }
  void flush() {
    if (held)
      std::memcpy(static_cast<void*>(at), line(), static_cast<std::size_t>(held) * sizeof(T));
    held = 0;
  }
  ~LineCarry() { flush(); }
};

// Whether vectors of a per-element array p of A (a LayerNorm weight) taken beside vectors on
// y's lines are on lines too: p at y's offset in a line, A of T's size (row_grid_offset in the
// ops places weights so).
template <class A, class T>
inline bool same_line_offset(const A* p, const T* y) {
  return sizeof(A) == sizeof(T) &&
         (reinterpret_cast<std::uintptr_t>(p) - reinterpret_cast<std::uintptr_t>(y)) % 64 == 0;
}

// write_row's streamed path with a carry (see LineCarry), for rows of nv >= 4 lines of whole
// vectors (carried_rows): the part of y's first line that the carry does not hold and the
// rest of its last line go through the carry's line, the whole lines between are streamed
// directly. The values are write_row's: lanes of vec() below nv, one() from nv.
template <class T, class VecF, class OneF>
NORMCPP_ALWAYS_INLINE inline void write_row_carried(T* y, i64 n, VecF& vec, OneF& one,
                                                    LineCarry<T>& c) {
  using Tr = VT<T>;
  using V = typename Tr::V;
  constexpr i64 W = Tr::W;
  constexpr i64 kLine = 64 / static_cast<i64>(sizeof(T));
  const i64 nv = n - n % W;
  i64 i = 0;
  if (c.held > 0 && c.at + c.held == y) {
    // y continues the held line: its first h elements complete it (whole vectors, below nv
    // as h + W <= 2 lines; their lanes from h on fall past the line).
    const i64 h = kLine - c.held;
    T* d = c.line() + c.held;
    for (; i < h; i += W) Tr::store(d + i, vec(i));
    stream_line(c.at, c.line());
    i = h;
  } else {
    // A fresh start: the elements before y's first line stored plainly one by one (a whole
    // vector would write into the first streamed line; float16 has up to 31 of them).
    c.flush();
    const i64 h = line_lead(y);
    for (; i < h; i += W) {
      const V v = vec(i);
      for (i64 j = 0; j < W && i + j < h; ++j) y[i + j] = Tr::from_a(v[j]);
    }
    i = h;
  }
  const i64 e = i + (nv - i) / kLine * kLine;  // after the last whole line below nv
  const bool part = (nv - e) % W != 0;         // a partial vector before nv
  V last{};
  if (part) last = vec(nv - W);  // before the lines are streamed: y may be x
#pragma GCC unroll 4
  for (; i < e; i += W) stream_store(y + i, vec(i));
  // [e, n) into the line: whole vectors, `last` over the partial one (its lanes before e fall
  // before the line), then one().
  T* d = c.line();
  for (; i + W <= nv; i += W) Tr::store(d + (i - e), vec(i));
  if (part) Tr::store(d + (nv - W - e), last);
  for (i = nv; i < n; ++i) d[i - e] = one(i);
  i64 t = n - e;  // < kLine + W
  c.at = y + e;
  if (t >= kLine) {
    stream_line(c.at, d);
    t -= kLine;
    std::memcpy(static_cast<void*>(d), d + kLine, static_cast<std::size_t>(t) * sizeof(T));
    c.at += kLine;
  }
  c.held = t;
}

// y[0..n) of one elementwise row: vec(i) gives elements [i, i + W) as a vector, one(i) element
// i. Plain: vectors up to nv = n - n % W, then one() for the rest; with `grid` (the caller's
// vec takes any i, not only multiples of W), a row of at least 4 lines off a line is written
// in vectors on y's lines instead (see the plain path). Streamed: only whole 64-byte lines are
// streamed (a line written partly by plain and partly by streaming stores -- at the seams
// between rows -- costs a partial write to memory); the elements before the first and after
// the last whole line are stored plainly; a row that is not whole lines streams from
// kSeamRowBytes on -- or, given a carry, from 4 lines on, through write_row_carried, with only
// the first line of a chain of rows and the last stored plainly. Every element below nv still comes from the same vector arithmetic (lane j
// of vec(i) depends only on element i + j), so the values are bitwise those of the plain path:
// the lanes before the first vector on the grid are lanes of vec(0) and those after its last
// vector lanes of vec(nv - W), both computed before anything is written (y may be x).
template <class T, class VecF, class OneF>
NORMCPP_ALWAYS_INLINE inline void write_row(T* y, i64 n, bool stream, VecF&& vec, OneF&& one,
                                            bool grid = false, LineCarry<T>* carry = nullptr) {
  using Tr = VT<T>;
  using V = typename Tr::V;
  constexpr i64 W = Tr::W;
  constexpr i64 kLine = 64 / static_cast<i64>(sizeof(T));  // elements per cache line
  const i64 nv = n - n % W;
  i64 i = 0;
  if constexpr (kCanStream<T>) {
    const auto addr = reinterpret_cast<std::uintptr_t>(y);
    if (stream && carry && nv >= 4 * kLine && addr % sizeof(T) == 0)
      return write_row_carried(y, n, vec, one, *carry);
    const i64 bytes = n * static_cast<i64>(sizeof(T));
    const bool lines = addr % 64 == 0 && bytes % 64 == 0;
    if (stream && nv >= 4 * kLine && addr % sizeof(T) == 0 && (lines || bytes >= kSeamRowBytes)) {
      const i64 h = line_lead(y);  // to the first line
      const i64 e = h + (nv - h) / kLine * kLine;                          // after the last
      const V first = vec(0), last = vec(nv - W);
      for (; i < h % W; ++i) y[i] = Tr::from_a(first[i]);
      for (; i < h; i += W) Tr::store(y + i, vec(i));
#pragma GCC unroll 4
      for (; i < e; i += W) stream_store(y + i, vec(i));
      for (; i + W <= nv; i += W) Tr::store(y + i, vec(i));
      for (; i < nv; ++i) y[i] = Tr::from_a(last[i - (nv - W)]);
      for (; i < n; ++i) y[i] = one(i);
      return;
    }
  }
  const auto addr = reinterpret_cast<std::uintptr_t>(y);
  const i64 g = line_lead(y) % W;  // grid start
  if (grid && g > 0 && addr % sizeof(T) == 0 && nv >= 4 * kLine) {
    // Vectors on y's lines (a store across two lines costs two; NumPy's large arrays start 16
    // bytes past a line): y[0, W) and y[nv - W, nv) stored whole, across lines, over the ends
    // of the vectors at g + k W between them (the same values). 1 thread, min us: BatchNorm
    // eval NCHW (8,256,28,28) into an out= from np.empty_like 163-165 -> 155-157 (153 on a
    // line), in place 102-103 -> 77, InstanceNorm 247-249 -> 238.
    const V first = vec(0), last = vec(nv - W), second = vec(g);  // before y[0, W) is written
    Tr::store(y, first);
    Tr::store(y + g, second);
    i = g + W;
#pragma GCC unroll 4
    for (; i + W <= nv; i += W) Tr::store(y + i, vec(i));
    Tr::store(y + nv - W, last);
    for (i = nv; i < n; ++i) y[i] = one(i);
    return;
  }
  // Unrolled: the loop's own increment, compare and branch would otherwise be a third of
  // the instructions of a plain affine map.
#pragma GCC unroll 4
  for (; i + W <= nv; i += W) Tr::store(y + i, vec(i));
  for (; i < n; ++i) y[i] = one(i);
}

// Sums of d = x - k and d^2 over x[0..len), lane sums in A (4 vectors apart), totals in
// double. With Keep, d is also stored to keep[0..len) (see norm_rows_impl's kept rows).
template <class T, bool Keep = false>
NORMCPP_ALWAYS_INLINE inline void shifted_sums(const T* x, i64 len, typename VT<T>::A k,
                                               double& sum, double& sumsq,
                                               typename VT<T>::A* keep = nullptr) {
  using Tr = VT<T>;
  using A = typename Tr::A;
  using V = typename Tr::V;
  constexpr i64 W = Tr::W;
  const V kv = splat<V>(k);
  V d0{}, d1{}, d2{}, d3{}, q0{}, q1{}, q2{}, q3{};
  i64 i = 0;
  for (; i + 4 * W <= len; i += 4 * W) {
    const V a = Tr::load(x + i) - kv, b = Tr::load(x + i + W) - kv;
    const V c = Tr::load(x + i + 2 * W) - kv, e = Tr::load(x + i + 3 * W) - kv;
    if constexpr (Keep) {
      VT<A>::store(keep + i, a);
      VT<A>::store(keep + i + W, b);
      VT<A>::store(keep + i + 2 * W, c);
      VT<A>::store(keep + i + 3 * W, e);
    }
    d0 += a;
    q0 += a * a;
    d1 += b;
    q1 += b * b;
    d2 += c;
    q2 += c * c;
    d3 += e;
    q3 += e * e;
  }
  for (; i + W <= len; i += W) {
    const V a = Tr::load(x + i) - kv;
    if constexpr (Keep) VT<A>::store(keep + i, a);
    d0 += a;
    q0 += a * a;
  }
  double sd = hsum((d0 + d1) + (d2 + d3)), sq = hsum((q0 + q1) + (q2 + q3));
  for (; i < len; ++i) {
    const A d = Tr::to_a(x[i]) - k;
    if constexpr (Keep) keep[i] = d;
    sd += static_cast<double>(d);
    sq += static_cast<double>(d * d);
  }
  sum = sd;
  sumsq = sq;
}

// Moments of one block x[0..len), len >= 1 (see the file comment). Pass 1 sums x - K and
// (x - K)^2 about K = the mean of 8 elements spread over the block (in double: a constant
// block gives K == the constant). Kept when 2 S^2 <= len Q, i.e. K within one standard
// deviation of the block mean: then Q <= 2 M2 and M2 = Q - S^2/len costs at most one bit of
// the float32 lane sums (a sample mean of 8 is off by std/sqrt(8) on average: for most data
// one pass suffices). Otherwise pass 2 sums d = x - m_b and d^2 about the block mean
// m_b = K + S/len. One pass instead of two from L1: LayerNorm (8,512,768) at one thread
// 864 -> 708 us (RMSNorm, one pass of sums of squares: 591 us). With Keep, the deviations of
// the last pass, x - shift in A, are stored to keep[0..len) and the shift to *shift.
template <class T, bool Keep = false>
inline Moments block_moments(const T* x, i64 len, typename VT<T>::A* keep = nullptr,
                             typename VT<T>::A* shift = nullptr) {
  using Tr = VT<T>;
  using A = typename Tr::A;
  const double n = static_cast<double>(len);
  double ks = 0.0;
  for (i64 j = 0; j < 8; ++j) ks += static_cast<double>(Tr::to_a(x[(2 * j + 1) * len / 16]));
  const A k = static_cast<A>(ks * 0.125);
  const double rn = 1.0 / n;  // off the dependency chain: len is known before the sums
  double s, q;
  shifted_sums<T, Keep>(x, len, k, s, q, keep);
  if (2.0 * s * s <= n * q) {
    if constexpr (Keep) *shift = k;
    const double sm = s * rn;
    return {n, static_cast<double>(k) + sm, clamp_nonneg(q - s * sm)};
  }
  const A mb = k + static_cast<A>(s * rn);
  shifted_sums<T, Keep>(x, len, mb, s, q, keep);
  if constexpr (Keep) *shift = mb;
  const double sm = s * rn;
  return {n, static_cast<double>(mb) + sm, clamp_nonneg(q - s * sm)};
}

// A run this short (the slots of small tensors: a (1,16,8,8) BatchNorm channel is 64 elements)
// is reduced in one pass when that is accurate: the per-slot dependency chain of two passes
// (sum, horizontal add, divide, then the deviations) is most of a small slot's time.
constexpr i64 kShortRun = 256;

// Moments of x[0..len), 1 <= len <= kShortRun, in one pass about K = x[0]: S = sum(x - K),
// Q = sum((x - K)^2), M2 = Q - S^2/len. Kept when 9 S^2 <= 8 len Q, i.e. K within sqrt(8)
// standard deviations of the mean, so Q <= 9 M2 and the subtraction costs at most ~3 bits of
// the float32 lane sums; otherwise (x[0] an outlier: Q/M2 can reach len + 1) the exact two
// passes. Constant data gives S = Q = 0: mean == the constant, M2 == 0 exactly.
template <class T>
inline Moments short_moments(const T* x, i64 len) {
  using Tr = VT<T>;
  using A = typename Tr::A;
  using V = typename Tr::V;
  constexpr i64 W = Tr::W;
  const A k = Tr::to_a(x[0]);
  const V kv = splat<V>(k);
  V s0{}, s1{}, q0{}, q1{};
  i64 i = 0;
  for (; i + 2 * W <= len; i += 2 * W) {
    const V a = Tr::load(x + i) - kv, b = Tr::load(x + i + W) - kv;
    s0 += a;
    q0 += a * a;
    s1 += b;
    q1 += b * b;
  }
  if (i + W <= len) {
    const V a = Tr::load(x + i) - kv;
    s0 += a;
    q0 += a * a;
    i += W;
  }
  double s = hsum(s0 + s1), q = hsum(q0 + q1);
  for (; i < len; ++i) {
    const A d = Tr::to_a(x[i]) - k;
    s += static_cast<double>(d);
    q += static_cast<double>(d * d);
  }
  const double n = static_cast<double>(len);
  if (9.0 * s * s > 8.0 * n * q) return block_moments(x, len);
  const double rn = 1.0 / n;  // off the dependency chain: len is known before the sums
  const double sm = s * rn;
  return {n, static_cast<double>(k) + sm, clamp_nonneg(q - s * sm)};
}

template <class T>
Moments run_moments(const T* x, i64 n) {
  if (n < 1) return Moments{};
  if (n <= kShortRun) return short_moments(x, n);
  if (n <= kBlock) return block_moments(x, n);  // (merge(empty, m) is m: the same values)
  Moments acc;
  for (i64 b = 0; b < n; b += kBlock) acc = merge(acc, block_moments(x + b, imin(kBlock, n - b)));
  return acc;
}

// Sum of squares of x[0..n), per block of kBlock elements. With Keep, x is also stored to
// keep[0..n) in A (norm_rows_impl's kept rows).
template <class T, bool Keep = false>
inline double sumsq_blocks(const T* x, i64 n, typename VT<T>::A* keep = nullptr) {
  using Tr = VT<T>;
  using A = typename Tr::A;
  using V = typename Tr::V;
  constexpr i64 W = Tr::W;
  double total = 0.0;
  for (i64 b = 0; b < n; b += kBlock) {
    const T* p = x + b;
    A* kp = Keep ? keep + b : nullptr;
    const i64 len = imin(kBlock, n - b);
    V q0{}, q1{}, q2{}, q3{};
    i64 i = 0;
    for (; i + 4 * W <= len; i += 4 * W) {
      const V a = Tr::load(p + i), c = Tr::load(p + i + W);
      const V d = Tr::load(p + i + 2 * W), e = Tr::load(p + i + 3 * W);
      if constexpr (Keep) {
        VT<A>::store(kp + i, a);
        VT<A>::store(kp + i + W, c);
        VT<A>::store(kp + i + 2 * W, d);
        VT<A>::store(kp + i + 3 * W, e);
      }
      q0 += a * a;
      q1 += c * c;
      q2 += d * d;
      q3 += e * e;
    }
    for (; i + W <= len; i += W) {
      const V a = Tr::load(p + i);
      if constexpr (Keep) VT<A>::store(kp + i, a);
      q0 += a * a;
    }
    double s = hsum((q0 + q1) + (q2 + q3));
    for (; i < len; ++i) {
      const A v = Tr::to_a(p[i]);
      if constexpr (Keep) kp[i] = v;
      s += static_cast<double>(v * v);
    }
    total += s;
  }
  return total;
}

template <class T>
double run_sumsq(const T* x, i64 n) {
  return sumsq_blocks(x, n);
}

// Channel period of the flat channels-last stream: lcm(C, W), or 0 when over kMaxPeriod
// (then rows are processed one at a time with scalar channel tails).
template <class T>
inline i64 cl_period(i64 C) {
  constexpr i64 W = VT<T>::W;
  const i64 p = C / gcd64(C, W) * W;
  return p <= kMaxPeriod ? p : 0;
}

// Coefficient patterns over one period are extended by this many elements (a vector may start
// anywhere in the period, and a cache line of output anywhere in it: see cl_stream_lines).
template <class T>
constexpr i64 kPeriodExt = imax(VT<T>::W, 64 / static_cast<i64>(sizeof(T)));

// The period a streamed channels-last output is written with: cl_period extended to whole
// cache lines (C = 3: 24 -> 48 floats), so cl_stream_lines streams it without a period
// position to carry per vector (BN eval NHWC (32,3,224,224): 1.16x -> NCHW's time).
template <class T>
inline i64 cl_stream_period(i64 C) {
  constexpr i64 kLine = 64 / static_cast<i64>(sizeof(T));
  const i64 p = cl_period<T>(C);
  if (p == 0 || p % kLine == 0) return p;
  const i64 q = p / gcd64(p, kLine) * kLine;
  return q <= kMaxPeriod ? q : p;
}

// The pattern a contiguous channels-last block is reduced with (cl_moments, cl_dot): cl_period,
// or where that is one or two vectors, as many whole periods as make four (C = 16 float32 at
// AVX-512: rows of 64). Four vectors a pattern row are four sums (and four sums of squares)
// that do not wait on each other; one vector a row is one chain of dependent adds, whose
// latency data in cache outruns (1 thread, min us: BN statistics NHWC (8,16,28,28) 8.1-8.4 ->
// 4.8-5.3, (128,8,56,56) from L3 235 -> 162; GroupNorm backward NHWC (16,32,28,28) 136 -> 102).
template <class T>
inline i64 cl_stat_period(i64 C) {
  constexpr i64 W = VT<T>::W;
  const i64 p = cl_period<T>(C);
  return p > 0 && p < 3 * W ? 4 * W / p * p : p;
}

// (The last term: room for apply_cl's patterns placed on lines, see expand_coef_patterns.)
template <class T>
i64 cl_scratch_elems(i64 C) {
  constexpr i64 kLineA = 64 / static_cast<i64>(sizeof(typename VT<T>::A));
  const i64 p = imax(imax(cl_period<T>(C), cl_stat_period<T>(C)), cl_stream_period<T>(C));
  return 4 * imax(p, C) + 4 * kPeriodExt<T> + 8 * kLineA;
}

// Repeat v[0..C) over dst[0..P) (dst may be v itself).
// (Few channels element by element: C = 3 took 16 calls of memcpy a period, which with the
// other patterns of a call cost InstanceNorm NHWC small samples ~10% of their time.)
template <class A>
inline void expand_period(const A* v, i64 C, A* dst, i64 P) {
  if (C < 16) {
    for (i64 p = (dst == v ? C : 0), c = 0; p < P; ++p) {
      dst[p] = v[c];
      if (++c == C) c = 0;
    }
    return;
  }
  for (i64 p = (dst == v ? C : 0); p < P; p += C)
    std::memcpy(dst + p, v, static_cast<std::size_t>(C) * sizeof(A));
}

// v[c] += v[c + C] + v[c + 2C] + ... over a pattern of L = k * C positions (k = 1: nothing).
template <class A>
inline void fold_period(A* v, i64 C, i64 L) {
  for (i64 p = C; p < L; p += C)
    for (i64 c = 0; c < C; ++c) v[c] += v[p + c];
}

// expand_period, then the pattern continued for X more values (dst holds P + X): a vector,
// or a cache line of output, may then start anywhere in the period.
template <class A>
inline void expand_period_ext(const A* v, i64 C, A* dst, i64 P, i64 X) {
  expand_period(v, C, dst, P);
  for (i64 i = 0; i < X; i += P)
    std::memcpy(dst + P + i, dst, static_cast<std::size_t>(imin(P, X - i)) * sizeof(A));
}

// Position in a period P of flat element i, for a sequence of calls that mostly steps by W:
// carried over from the previous call when i follows it, else one division.
struct PeriodCursor {
  i64 P, W, next_i = 0, next_o = 0;
  NORMCPP_ALWAYS_INLINE i64 operator()(i64 i) {
    const i64 o = i == next_i ? next_o : i % P;
    next_i = i + W;
    next_o = o + W < P ? o + W : o + W - P;
    return o;
  }
};

// y[0..n) of a channels-last stream whose coefficients repeat with period P (a multiple of
// W): vec(i, o) / one(i, o) give element i with the coefficients at position o of the period.
// A long period is written one period-row at a time with o = the position in the row (no
// cursor to carry: fewer instructions per vector); a short one as one flat stream, the
// position carried by a PeriodCursor. Streamed output never goes by period-rows: those would
// each start off a cache line (NumPy's large arrays sit 16 bytes past one), every row paying a
// scalar head and tail and leaving a line to plain stores. A period of whole lines is streamed
// by cl_stream_lines, any other as the flat stream. Every element gets the same arithmetic.
constexpr i64 kRowPeriod = 64;

// Streamed y[0..n) of a period P that fills whole cache lines, y + h the first line boundary,
// n >= h + P, coefficients extended by kPeriodExt (vec(i, o) as in cl_periodic_write; never in
// place: streamed outputs are not inputs). The stream is cut into rows of P starting at h:
// each such row is whole lines, streamed with the coefficients at h + j -- no per-vector
// period position to carry. The h elements before and the (fewer than P) after the last row
// are stored plainly, every element from a lane of some vector (as in the plain path).
// rows(h, nrows) may stream the whole rows instead and return true (the same values: vec's
// arithmetic with the coefficients at h + j, which it may hold in registers).
struct VecRows {
  bool operator()(i64, i64) const { return false; }
};
template <class T, class VecF, class RowsF = VecRows>
NORMCPP_ALWAYS_INLINE inline void cl_stream_lines(T* y, i64 n, i64 P, i64 h, VecF& vec,
                                                  RowsF rows = {}) {
  using V = typename VT<T>::V;
  constexpr i64 W = VT<T>::W;
  for (i64 i = 0; i < h; i += W) {
    const V v = vec(i, i);
    for (i64 k = 0; k < W && i + k < h; ++k) y[i + k] = VT<T>::from_a(v[k]);
  }
  i64 i0 = h;
  if (rows(h, (n - h) / P)) {
    i0 += (n - h) / P * P;
  } else {
    for (; i0 + P <= n; i0 += P) {
#pragma GCC unroll 4
      for (i64 j = 0; j < P; j += W) stream_store(y + i0 + j, vec(i0 + j, h + j));
    }
  }
  // The elements [i0, n) after the last row: a vector's coefficients start at its element's
  // period position (the pattern is extended past P for vectors that start late in it).
  i64 i = i0;
  for (; i + W <= n; i += W) VT<T>::store(y + i, vec(i, i % P));
  if (i < n) {
    const V v = vec(n - W, (n - W) % P);  // the stream's last vector
    for (; i < n; ++i) y[i] = VT<T>::from_a(v[i - (n - W)]);
  }
}

// write_row as a callable: cl_periodic_write's default way to write its plain rows.
struct PlainRows {
  template <class T, class VecF, class OneF>
  NORMCPP_ALWAYS_INLINE void operator()(T* y, i64 n, bool stream, VecF&& vec, OneF&& one) const {
    write_row(y, n, stream, vec, one);
  }
};

// Rows: how plain rows are written (write_row, or write_row_act for the activations that take
// several vectors at a time, whose vec then gives the values before the activation and which
// never stream); StreamRows: cl_stream_lines' rows.
template <class T, class VecF, class OneF, class Rows = PlainRows, class StreamRows = VecRows>
NORMCPP_ALWAYS_INLINE inline void cl_periodic_write(T* y, i64 n, i64 P, bool stream, VecF& vec,
                                                    OneF& one, Rows rows = {},
                                                    StreamRows srows = {}) {
  if constexpr (kCanStream<T>) {
    constexpr i64 kLine = 64 / static_cast<i64>(sizeof(T));
    const auto addr = reinterpret_cast<std::uintptr_t>(y);
    if (stream && P % kLine == 0 && addr % sizeof(T) == 0) {
      const i64 h = line_lead(y);
      if (n >= h + P) {
        cl_stream_lines(y, n, P, h, vec, srows);
        return;
      }
    }
  }
  if (P >= kRowPeriod && !stream) {
    for (i64 i0 = 0; i0 < n; i0 += P)
      rows(
          y + i0, imin(P, n - i0), false,
          [&](i64 o) NORMCPP_ALWAYS_INLINE { return vec(i0 + o, o); },
          [&](i64 o) { return one(i0 + o, o); });
    return;
  }
  PeriodCursor at{P, VT<T>::W};
  rows(
      y, n, stream, [&](i64 i) NORMCPP_ALWAYS_INLINE { return vec(i, at(i)); },
      [&](i64 i) { return one(i, i % P); });
}

// Asks for the cache lines of [p, p + bytes) to be fetched (a hint: never faults). The second
// statistics pass over a block reads it from L2 while memory sits idle; fetching the next
// block meanwhile keeps memory busy (BN statistics NHWC (32,64,56,56): 0.87x the time, paired
// runs).
inline void prefetch_range(const void* p, i64 bytes) {
  const char* c = static_cast<const char*>(p);
  for (i64 b = 0; b < bytes; b += 64) __builtin_prefetch(c + b, 0, 3);
}

// The same pass for wide rows (wd >= kRowPeriod): rows four at a time, each column vector of
// the four rows added into S (and Q) in memory. The column strips of strip_pass walk the
// block down a column at a stride of a whole row -- with rows of 1-4 KB every line of a strip
// falls into the same few L1 sets and is evicted before the next strip or pass needs it
// (BN statistics of (256, 1024): 160 us for 1 MB); here each row is read front to back.
template <bool Sq, class T>
void row_block_pass(const T* x, i64 nrows, i64 ld, i64 wd, i64 tail, const typename VT<T>::A* K,
                    typename VT<T>::A* S, typename VT<T>::A* Q, const T* next = nullptr) {
  using Tr = VT<T>;
  using A = typename Tr::A;
  using V = typename Tr::V;
  constexpr i64 W = Tr::W;
  i64 r = 0;
  for (; r + 4 <= nrows; r += 4) {
    const T *p0 = x + r * ld, *p1 = p0 + ld, *p2 = p1 + ld, *p3 = p2 + ld;
    if (next) prefetch_range(next + r * ld, 4 * ld * static_cast<i64>(sizeof(T)));
    i64 j = 0;
    for (; j + W <= wd; j += W) {
      const V k = VT<A>::load(K + j);
      const V d0 = Tr::load(p0 + j) - k, d1 = Tr::load(p1 + j) - k;
      const V d2 = Tr::load(p2 + j) - k, d3 = Tr::load(p3 + j) - k;
      VT<A>::store(S + j, VT<A>::load(S + j) + ((d0 + d1) + (d2 + d3)));
      if constexpr (Sq)
        VT<A>::store(Q + j, VT<A>::load(Q + j) + ((d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)));
    }
    for (; j < wd; ++j) {
      const A d0 = Tr::to_a(p0[j]) - K[j], d1 = Tr::to_a(p1[j]) - K[j];
      const A d2 = Tr::to_a(p2[j]) - K[j], d3 = Tr::to_a(p3[j]) - K[j];
      S[j] += (d0 + d1) + (d2 + d3);
      if constexpr (Sq) Q[j] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3);
    }
  }
  // The last rows (fewer than four) and the partial row: one at a time.
  for (; r <= nrows; ++r) {
    const T* p = x + r * ld;
    const i64 n = r < nrows ? wd : tail;
    i64 j = 0;
    for (; j + W <= n; j += W) {
      const V d = Tr::load(p + j) - VT<A>::load(K + j);
      VT<A>::store(S + j, VT<A>::load(S + j) + d);
      if constexpr (Sq) VT<A>::store(Q + j, VT<A>::load(Q + j) + d * d);
    }
    for (; j < n; ++j) {
      const A d = Tr::to_a(p[j]) - K[j];
      S[j] += d;
      if constexpr (Sq) Q[j] += d * d;
    }
  }
}

// All G column vectors of a strip_pass at once (rows of up to 4 vectors): each line of the
// block is read once, not once per 2-vector strip (C = 3, rows of 24 floats: 3 vectors). Per
// column the rows are added in the same order as by the strips, so the sums are the same bits.
template <bool Sq, int G, class T>
NORMCPP_ALWAYS_INLINE inline void strip_all(const T* x, i64 nrows, i64 ld,
                                            const typename VT<T>::A* K, typename VT<T>::A* S,
                                            typename VT<T>::A* Q) {
  using Tr = VT<T>;
  using A = typename Tr::A;
  using V = typename Tr::V;
  constexpr i64 W = Tr::W;
  V k[G], sv[G], qv[G];
#pragma GCC unroll 4
  for (int g = 0; g < G; ++g) {
    k[g] = VT<A>::load(K + g * W);
    sv[g] = VT<A>::load(S + g * W);
    qv[g] = Sq ? VT<A>::load(Q + g * W) : V{};
  }
  const T* p = x;
  for (i64 r = 0; r < nrows; ++r, p += ld) {
#pragma GCC unroll 4
    for (int g = 0; g < G; ++g) {
      const V d = Tr::load(p + g * W) - k[g];
      sv[g] += d;
      if constexpr (Sq) qv[g] += d * d;
    }
  }
#pragma GCC unroll 4
  for (int g = 0; g < G; ++g) {
    VT<A>::store(S + g * W, sv[g]);
    if constexpr (Sq) VT<A>::store(Q + g * W, qv[g]);
  }
}

// One statistics pass over a (nrows x wd) matrix with row stride ld, plus a partial last row
// of `tail` elements: per column j, S[j] += sum(x - K[j]) and, in the second pass (Sq),
// Q[j] += sum((x - K[j])^2). Columns go in register strips of 2 vectors, rows stream by.
template <bool Sq, class T>
void strip_pass(const T* x, i64 nrows, i64 ld, i64 wd, i64 tail, const typename VT<T>::A* K,
                typename VT<T>::A* S, typename VT<T>::A* Q) {
  using Tr = VT<T>;
  using A = typename Tr::A;
  using V = typename Tr::V;
  constexpr i64 W = Tr::W;
  const T* last = x + nrows * ld;
  i64 j = 0;
  if (wd % W == 0 && wd > 2 * W && wd <= 4 * W) {  // (one or two vectors: one strip anyway)
    if (wd == 3 * W)
      strip_all<Sq, 3>(x, nrows, ld, K, S, Q);
    else
      strip_all<Sq, 4>(x, nrows, ld, K, S, Q);
    j = wd;
  }
  for (; j + 2 * W <= wd; j += 2 * W) {
    const V k0 = VT<A>::load(K + j), k1 = VT<A>::load(K + j + W);
    V s0 = VT<A>::load(S + j), s1 = VT<A>::load(S + j + W), q0{}, q1{};
    if constexpr (Sq) {
      q0 = VT<A>::load(Q + j);
      q1 = VT<A>::load(Q + j + W);
    }
    const T* p = x + j;
    for (i64 r = 0; r < nrows; ++r, p += ld) {
      const V d0 = Tr::load(p) - k0, d1 = Tr::load(p + W) - k1;
      s0 += d0;
      s1 += d1;
      if constexpr (Sq) {
        q0 += d0 * d0;
        q1 += d1 * d1;
      }
    }
    VT<A>::store(S + j, s0);
    VT<A>::store(S + j + W, s1);
    if constexpr (Sq) {
      VT<A>::store(Q + j, q0);
      VT<A>::store(Q + j + W, q1);
    }
  }
  for (; j + W <= wd; j += W) {
    const V k0 = VT<A>::load(K + j);
    V s0 = VT<A>::load(S + j), q0{};
    if constexpr (Sq) q0 = VT<A>::load(Q + j);
    const T* p = x + j;
    for (i64 r = 0; r < nrows; ++r, p += ld) {
      const V d0 = Tr::load(p) - k0;
      s0 += d0;
      if constexpr (Sq) q0 += d0 * d0;
    }
    VT<A>::store(S + j, s0);
    if constexpr (Sq) VT<A>::store(Q + j, q0);
  }
  for (; j < wd; ++j) {
    A s = A(0), q = A(0);
    for (i64 r = 0; r < nrows; ++r) {
      const A d = Tr::to_a(x[r * ld + j]) - K[j];
      s += d;
      if constexpr (Sq) q += d * d;
    }
    S[j] += s;
    if constexpr (Sq) Q[j] += q;
  }
  for (i64 t = 0; t < tail; ++t) {
    const A d = Tr::to_a(last[t]) - K[t];
    S[t] += d;
    if constexpr (Sq) Q[t] += d * d;
  }
}

// One statistics pass over a block of nrows pattern rows of L elements with row stride ld
// (plus `tail`): wide rows front to back, narrow ones in column strips -- and rows of up to
// four vectors (64 float32 with AVX-512: C = 64 channels-last) all in registers by strip_all,
// one read of each line with no sums through memory: fewer instructions a line keep up with
// memory (BN statistics NHWC (32,64,56,56), 1 thread: min ~1040 -> ~870 us; an L2-resident
// (1,64,56,56): 16 -> 12 us).
template <bool Sq, class T>
inline void stats_pass(const T* x, i64 nrows, i64 ld, i64 L, i64 tail,
                       const typename VT<T>::A* K, typename VT<T>::A* S, typename VT<T>::A* Q,
                       const T* next = nullptr) {
  constexpr i64 W = VT<T>::W;
  if (L >= kRowPeriod && !(L % W == 0 && L <= 4 * W))
    row_block_pass<Sq>(x, nrows, ld, L, tail, K, S, Q, next);
  else
    strip_pass<Sq>(x, nrows, ld, L, tail, K, S, Q);
}

// Per-channel moments of a channels-last block of rows. With a period P = lcm(C, lanes) the
// block is seen as whole periods (rows of P elements) plus a partial one, and position p
// belongs to channel p mod C; otherwise as rows of C with scalar channel tails. Blocks of
// kClBlock to 2 kClBlock elements (cl_block_rows) stay in L1/L2 for the second pass; each
// block's moments are merged into the running per-channel (mean, m2) in double. Rows with a
// stride ld > C (a strip of the channels of wider rows) are always seen as rows of C.
constexpr i64 kClBlock = 32768;
// Rows per block of a rows x C matrix: blocks of kClBlock elements or more, the rows cut
// evenly so that no short block is left over (each block costs per-channel work -- shift,
// folds, merge -- that for a wide C and few rows weighs as much as its pass over the data:
// GroupNorm NHWC (4,1000,7,7), samples of 49 rows, took blocks of 32 and 17 rows; in one
// block of 49, 65-68 -> 57-61 us at 1 thread, and (16,5,100,100) 142-147 -> 120-129).
inline i64 cl_block_rows(i64 rows, i64 C) {
  const i64 R = imax(1, kClBlock / C), blocks = imax(1, rows / R);
  return (rows + blocks - 1) / blocks;
}

template <class T>
void cl_moments(const T* x, i64 rows, i64 C, i64 ld, typename VT<T>::A* scratch, double* mean,
                double* m2, double* count) {
  using Tr = VT<T>;
  using A = typename Tr::A;
  const bool dense = ld == C;
  const i64 P = dense ? cl_stat_period<T>(C) : 0;
  const i64 L = P ? P : C;  // pattern length
  A* K = scratch;           // block shift, then block mean, per pattern position
  A* S = scratch + L;       // sum of x - K, then of d
  A* Q = scratch + 2 * L;   // sum of d^2
  const i64 R = cl_block_rows(rows, C);
  for (i64 r0 = 0; r0 < rows; r0 += R) {
    const i64 nr = imin(R, rows - r0);
    const T* blk = x + r0 * ld;
    const i64 n = nr * C;
    const i64 nrows = P ? n / P : nr, tail = P ? n - (n / P) * P : 0;
    const i64 rs = P ? P : ld;  // row stride of the pattern rows
    const T* next = dense && r0 + nr < rows ? blk + n : nullptr;
    const double nb = static_cast<double>(nr);
    // S = sum(x - K), Q = sum((x - K)^2) per channel, K[0..C) first repeated over the period.
    const auto deviation_pass = [&] {
      if (P) expand_period(K, C, K, P);
      for (i64 p = 0; p < L; ++p) S[p] = Q[p] = A(0);
      stats_pass<true>(blk, nrows, rs, L, tail, K, S, Q, next);
      fold_period(S, C, L);
      fold_period(Q, C, L);
    };
    // One pass where the block is long enough: K = the mean of m >= 12 rows spread evenly
    // over the block (for data whose mean does not drift within the block, ~std/3.5 or closer
    // to the block mean). Kept when every channel's shift is small against its spread,
    // (S/n)^2 <= (Q/n) / 2: the block's M2 = Q - S^2/n then cancels at most half of Q (one
    // bit of the float32 sums). Otherwise (data whose mean jumps within the block, a constant
    // channel with K rounded off it) the second pass below recomputes S and Q about the
    // block's own mean; short blocks (wide C) take the two passes directly. (For steady data
    // the shift is off by more than the std, failing the test, for ~5e-4 of the channels at
    // m = 12: of 256 channels, about one block in eight takes the second pass. Instance norm
    // (8,256,28,28) NHWC has chunks of 112 rows: m = 14.)
    const i64 m = imin(32, nr / 8);
    bool one_pass = false;
    if (m >= 12) {
      const T* rows_m[32];
      // rows (2i + 1) nr / 2m, i < m: the quotient and remainder stepped by 2 nr (no division
      // a row)
      const i64 step_q = 2 * nr / (2 * m), step_r = 2 * nr % (2 * m);
      for (i64 i = 0, q = nr / (2 * m), r = nr % (2 * m); i < m; ++i) {
        rows_m[i] = blk + q * ld;
        q += step_q;
        r += step_r;
        if (r >= 2 * m) {
          ++q;
          r -= 2 * m;
        }
      }
      const i64 cv = C / Tr::W * Tr::W;  // (vectors: float16 converts 8 at a time, not one)
      for (i64 c = 0; c < cv; c += Tr::W) {
        typename Tr::V k{};
        for (i64 i = 0; i < m; ++i) k = k + Tr::load(rows_m[i] + c);
        VT<A>::store(K + c, k);
      }
      for (i64 c = cv; c < C; ++c) {  // each channel's sum in a register, not through K
        A k = A(0);
        for (i64 i = 0; i < m; ++i) k += Tr::to_a(rows_m[i][c]);
        K[c] = k;
      }
      const A invm = A(1) / static_cast<A>(m);
      for (i64 c = 0; c < C; ++c) K[c] *= invm;
      deviation_pass();
      one_pass = true;
      for (i64 c = 0; c < C; ++c) {
        const double sc = static_cast<double>(S[c]), qc = static_cast<double>(Q[c]);
        one_pass &= 2.0 * sc * sc <= qc * nb;
      }
    } else {
      // Pass 1: K = the block's first row (repeated over the period), S = sum(x - K).
      for (i64 c = 0; c < C; ++c) K[c] = Tr::to_a(blk[c]);
      if (P) expand_period(K, C, K, P);
      for (i64 p = 0; p < L; ++p) S[p] = A(0);
      stats_pass<false>(blk, nrows, rs, L, tail, K, S, Q);
      fold_period(S, C, L);
    }
    if (!one_pass) {
      // Pass 2 about the block mean: K[0..C) = K + S / n. (The per-channel loops here and
      // below are plain so that they vectorize: with a wide C and few rows per block they cost
      // as much as the passes over the data.)
      const A inv = A(1) / static_cast<A>(nr);
      for (i64 c = 0; c < C; ++c) K[c] = K[c] + S[c] * inv;
      deviation_pass();
    }
    // Merge this block's per-channel moments into the running (count, mean, m2).
    const double na = *count;
    const double f = nb / (na + nb);
    if (na == 0.0) {
      for (i64 c = 0; c < C; ++c) {
        const double sc = static_cast<double>(S[c]), qc = static_cast<double>(Q[c]);
        mean[c] = static_cast<double>(K[c]) + sc / nb;
        m2[c] = clamp_nonneg(qc - sc * sc / nb);
      }
    } else {
      for (i64 c = 0; c < C; ++c) {
        const double sc = static_cast<double>(S[c]), qc = static_cast<double>(Q[c]);
        const double d = (static_cast<double>(K[c]) + sc / nb) - mean[c];
        mean[c] += d * f;
        m2[c] += clamp_nonneg(qc - sc * sc / nb) + d * d * na * f;
      }
    }
    *count = na + nb;
  }
}

// LayerNorm/RMSNorm over rows of Lc = 4, 8 or 16 float32 elements, each row one vector of Lc
// lanes (whatever the ISA's width: GCC splits or narrows it). Per group of rows: statistics
// (two-pass, the mean corrected by the sum of deviations, in double from there; rows of 8
// eight at a time, see rows8_stats), then the inverse standard deviations as one vector loop,
// then the outputs. About 54 instructions a row (27 for rows of 8), against ~125 for a scalar
// loop with a square root and division each.
template <int Lc>
struct RowVec;  // (a dependent vector_size in a template is ignored by GCC: one per length)
template <>
struct RowVec<4> {
  typedef float V __attribute__((vector_size(16)));
  typedef float U __attribute__((vector_size(16), aligned(1), may_alias));
};
template <>
struct RowVec<8> {
  typedef float V __attribute__((vector_size(32)));
  typedef float U __attribute__((vector_size(32), aligned(1), may_alias));
};
template <>
struct RowVec<16> {
  typedef float V __attribute__((vector_size(64)));
  typedef float U __attribute__((vector_size(64), aligned(1), may_alias));
};

// Rows of 8: statistics of 8 rows at a time. The 8 x 8 block is transposed in registers, so
// each column vector holds one element of 8 rows and the row sums are vertical adds in the
// same pairwise order as lane_sum's tree -- no horizontal sums per row (LayerNorm(8) on 128
// rows: 54 -> 27 instructions a row, outputs included). A last group of fewer than 8 rows goes
// through the same code from a zero-padded copy, so every row gets the same arithmetic
// wherever it sits.
typedef float f8_t __attribute__((vector_size(32)));
typedef int i8_t __attribute__((vector_size(32)));
typedef float f4_t __attribute__((vector_size(16)));
typedef double d4_t __attribute__((vector_size(32)));

NORMCPP_ALWAYS_INLINE inline void transpose8x8(f8_t r[8]) {
  f8_t t[8], u[8];
#pragma GCC unroll 4
  for (int k = 0; k < 4; ++k) {  // unpacklo / unpackhi of row pairs
    t[2 * k] = __builtin_shuffle(r[2 * k], r[2 * k + 1], i8_t{0, 8, 1, 9, 4, 12, 5, 13});
    t[2 * k + 1] = __builtin_shuffle(r[2 * k], r[2 * k + 1], i8_t{2, 10, 3, 11, 6, 14, 7, 15});
  }
#pragma GCC unroll 2
  for (int h = 0; h < 8; h += 4) {  // 4-row groups: element pairs
    u[h] = __builtin_shuffle(t[h], t[h + 2], i8_t{0, 1, 8, 9, 4, 5, 12, 13});
    u[h + 1] = __builtin_shuffle(t[h], t[h + 2], i8_t{2, 3, 10, 11, 6, 7, 14, 15});
    u[h + 2] = __builtin_shuffle(t[h + 1], t[h + 3], i8_t{0, 1, 8, 9, 4, 5, 12, 13});
    u[h + 3] = __builtin_shuffle(t[h + 1], t[h + 3], i8_t{2, 3, 10, 11, 6, 7, 14, 15});
  }
#pragma GCC unroll 4
  for (int j = 0; j < 4; ++j) {  // 128-bit halves: column j and column j + 4
    r[j] = __builtin_shuffle(u[j], u[j + 4], i8_t{0, 1, 2, 3, 8, 9, 10, 11});
    r[j + 4] = __builtin_shuffle(u[j], u[j + 4], i8_t{4, 5, 6, 7, 12, 13, 14, 15});
  }
}

// Correctly rounded square roots of 4 doubles (bitwise std::sqrt's).
NORMCPP_ALWAYS_INLINE inline d4_t sqrt4(d4_t v) {
#if defined(__AVX__)
  return reinterpret_cast<d4_t>(_mm256_sqrt_pd(reinterpret_cast<__m256d>(v)));
#else
  for (int i = 0; i < 4; ++i) v[i] = std::sqrt(v[i]);
  return v;
#endif
}

// lane_sum's tree over 8 lanes, one tree per lane of the column vectors c[0..8).
NORMCPP_ALWAYS_INLINE inline f8_t column_tree(const f8_t c[8]) {
  return ((c[0] + c[4]) + (c[2] + c[6])) + ((c[1] + c[5]) + (c[3] + c[7]));
}

// Statistics of the 8 rows of 8 at x: mean[8], invstd[8] (double) and their float copies.
NORMCPP_ALWAYS_INLINE inline void rows8_stats(const float* x, bool rms, double eps, double* mean,
                                              double* invstd, float* ma, float* ia) {
  typedef float f8u __attribute__((vector_size(32), aligned(1), may_alias));
  constexpr double invL = 1.0 / 8;
  f8_t c[8];
#pragma GCC unroll 8
  for (int r = 0; r < 8; ++r) c[r] = *reinterpret_cast<const f8u*>(x + 8 * r);
  transpose8x8(c);
  f8_t m0{}, sd{}, sq;
  if (!rms) {
    m0 = column_tree(c) * static_cast<float>(invL);
    f8_t d[8], p[8];
#pragma GCC unroll 8
    for (int j = 0; j < 8; ++j) {
      d[j] = c[j] - m0;
      p[j] = d[j] * d[j];
    }
    sd = column_tree(d);
    sq = column_tree(p);
  } else {
    f8_t p[8];
#pragma GCC unroll 8
    for (int j = 0; j < 8; ++j) p[j] = c[j] * c[j];
    sq = column_tree(p);
  }
#pragma GCC unroll 2
  for (int h = 0; h < 2; ++h) {
    f4_t m0h, sdh, sqh;
    std::memcpy(&m0h, reinterpret_cast<const float*>(&m0) + 4 * h, sizeof m0h);
    std::memcpy(&sdh, reinterpret_cast<const float*>(&sd) + 4 * h, sizeof sdh);
    std::memcpy(&sqh, reinterpret_cast<const float*>(&sq) + 4 * h, sizeof sqh);
    const d4_t sdn = __builtin_convertvector(sdh, d4_t) * invL;
    const d4_t m = __builtin_convertvector(m0h, d4_t) + sdn;
    d4_t q = __builtin_convertvector(sqh, d4_t) * invL - sdn * sdn;
    q = q < 0.0 ? d4_t{} : q;
    const d4_t is = 1.0 / sqrt4(q + eps);
    const f4_t mf = __builtin_convertvector(m, f4_t), isf = __builtin_convertvector(is, f4_t);
    std::memcpy(mean + 4 * h, &m, sizeof m);
    std::memcpy(invstd + 4 * h, &is, sizeof is);
    std::memcpy(ma + 4 * h, &mf, sizeof mf);
    std::memcpy(ia + 4 * h, &isf, sizeof isf);
  }
}

// Statistics of g <= 64 rows of 8 at x, 8 at a time (rows8_stats; the last rows padded).
inline void rows8_group_stats(const float* x, i64 g, bool rms, double eps, double* mean,
                              double* invstd, float* ma, float* ia) {
  i64 r = 0;
  for (; r + 8 <= g; r += 8) rows8_stats(x + r * 8, rms, eps, mean + r, invstd + r, ma + r, ia + r);
  if (r < g) {
    float pad[64] = {};
    double pm[8], pi[8];
    std::memcpy(pad, x + r * 8, static_cast<std::size_t>(g - r) * 8 * sizeof(float));
    rows8_stats(pad, rms, eps, pm, pi, ma + r, ia + r);
    for (i64 k = 0; k < g - r; ++k) {
      mean[r + k] = pm[k];
      invstd[r + k] = pi[k];
    }
  }
}

// The same for rows of Lc = 4 or 16, one row at a time: two-pass in the row's lanes, the mean
// corrected by the sum of deviations, in double from there; then the inverse standard
// deviations as one vector loop.
template <int Lc>
inline void rows_group_stats(const float* x, i64 g, bool rms, double eps, double* mean,
                             double* invstd, float* ma, float* ia) {
  using VL = typename RowVec<Lc>::V;
  using VLu = typename RowVec<Lc>::U;
  constexpr double invL = 1.0 / Lc;
  for (i64 r = 0; r < g; ++r) {
    const VL v = *reinterpret_cast<const VLu*>(x + r * Lc);
    double m = 0.0, q;
    if (!rms) {
      const float m0 = lane_sum(v) * static_cast<float>(invL);
      const VL d = v - m0;
      const double sdn = static_cast<double>(lane_sum(d)) * invL;
      m = static_cast<double>(m0) + sdn;
      q = clamp_nonneg(static_cast<double>(lane_sum(d * d)) * invL - sdn * sdn);
    } else {
      q = static_cast<double>(lane_sum(v * v)) * invL;
    }
    mean[r] = m;
    invstd[r] = q;  // the variance until the next loop
    ma[r] = static_cast<float>(m);
  }
  for (i64 r = 0; r < g; ++r) {
    const double is = inv_std(invstd[r], eps);
    invstd[r] = is;
    ia[r] = static_cast<float>(is);
  }
}

template <int Lc>
void short_rows_f32(const float* x, float* y, i64 rows, const float* Wt, const float* Bs,
                    double eps, bool rms, double* mean, double* invstd) {
  using VL = typename RowVec<Lc>::V;
  using VLu = typename RowVec<Lc>::U;
  const auto ld = [](const float* p) { return *reinterpret_cast<const VLu*>(p); };
  const VL w = Wt ? ld(Wt) : VL{} + 1.0f, b = Bs ? ld(Bs) : VL{};
  constexpr i64 G = 64;
  float ma[G], ia[G];
  for (i64 r0 = 0; r0 < rows; r0 += G) {
    const i64 g = imin(G, rows - r0);
    const float* xg = x + r0 * Lc;
    if constexpr (Lc == 8)
      rows8_group_stats(xg, g, rms, eps, mean + r0, invstd + r0, ma, ia);
    else
      rows_group_stats<Lc>(xg, g, rms, eps, mean + r0, invstd + r0, ma, ia);
    float* yg = y + r0 * Lc;
    for (i64 r = 0; r < g; ++r)
      *reinterpret_cast<VLu*>(yg + r * Lc) = (ld(xg + r * Lc) - ma[r]) * ia[r] * w + b;
  }
}

// Rows of L <= 16 elements: handled here (true) for float32 with L = 4, 8 or 16.
template <class T>
bool short_rows(const T* x, T* y, i64 rows, i64 L, const typename VT<T>::A* Wt,
                const typename VT<T>::A* Bs, double eps, bool rms, double* mean, double* invstd) {
  if constexpr (std::is_same_v<T, float>) {
    switch (L) {
      case 4:
        return short_rows_f32<4>(x, y, rows, Wt, Bs, eps, rms, mean, invstd), true;
      case 8:
        return short_rows_f32<8>(x, y, rows, Wt, Bs, eps, rms, mean, invstd), true;
      case 16:
        return short_rows_f32<16>(x, y, rows, Wt, Bs, eps, rms, mean, invstd), true;
      default:
        return false;
    }
  }
  return false;
}

// ------------------------------------------------------------------- fused activations
// Applied in registers after the affine, so normalize + activation is one pass over memory.
// float: vector exp (range reduction by ln2, degree-6 polynomial, 2^k built in the exponent
// bits; <= 2 ulp) and erfc (Numerical Recipes' Chebyshev fit, relative error < 1.2e-7
// everywhere, so gelu's left tail keeps its relative accuracy). double: libm per lane.
enum Act : int { kNone = 0, kRelu = 1, kRelu6 = 2, kSilu = 3, kGelu = 4 };

typedef int vint __attribute__((vector_size(NORMCPP_VBYTES)));

// max(lo, x) and min(hi, x) keeping a NaN x: one instruction where the ISA has it (x86's max
// and min return their second operand when either is NaN), a compare and a blend otherwise.
NORMCPP_ALWAYS_INLINE inline vfloat max_with(float lo, vfloat x) {
#if defined(__AVX512F__)
  return reinterpret_cast<vfloat>(_mm512_max_ps(_mm512_set1_ps(lo), reinterpret_cast<__m512>(x)));
#elif defined(__AVX__)
  return reinterpret_cast<vfloat>(_mm256_max_ps(_mm256_set1_ps(lo), reinterpret_cast<__m256>(x)));
#elif defined(__SSE__)
  return reinterpret_cast<vfloat>(_mm_max_ps(_mm_set1_ps(lo), reinterpret_cast<__m128>(x)));
#else
  return x < lo ? vfloat{} + lo : x;
#endif
}
NORMCPP_ALWAYS_INLINE inline vfloat min_with(float hi, vfloat x) {
#if defined(__AVX512F__)
  return reinterpret_cast<vfloat>(_mm512_min_ps(_mm512_set1_ps(hi), reinterpret_cast<__m512>(x)));
#elif defined(__AVX__)
  return reinterpret_cast<vfloat>(_mm256_min_ps(_mm256_set1_ps(hi), reinterpret_cast<__m256>(x)));
#elif defined(__SSE__)
  return reinterpret_cast<vfloat>(_mm_min_ps(_mm_set1_ps(hi), reinterpret_cast<__m128>(x)));
#else
  return x > hi ? vfloat{} + hi : x;
#endif
}

// The expensive activations (silu, gelu) are written over N vectors at once, each step for
// all N before the next: their arithmetic is one long dependency chain per vector, and with
// the steps of N vectors interleaved the core overlaps N chains (the scheduler otherwise
// fills with one vector's waiting chain; LayerNorm+gelu 8x512x768 at one thread ~10% faster
// with N = 4, GroupNorm+gelu (32,64,56,56) ~15%). Lane for lane the arithmetic is the same for
// any N: N = 1 is the single-vector form.
#define NORMCPP_EACH(N, body) \
  _Pragma("GCC unroll 4") for (int j = 0; j < (N); ++j) { body; }

// exp(x[j]), or exp(x[j]) / 2 with Half (the factor taken in the exponent: no multiply; below
// x = -86.9 that gives 0 rather than a subnormal), in place. ClampHigh: whether x may exceed
// 88.7 (gelu's argument never does).
template <bool ClampHigh = true, bool Half = false, int N>
NORMCPP_ALWAYS_INLINE inline void vexp_n(vfloat (&x)[N]) {
  vfloat k[N], r[N], r2[N], lo[N], hi[N];
  NORMCPP_EACH(N, x[j] = max_with(-87.3f, x[j]))
  if constexpr (ClampHigh) NORMCPP_EACH(N, x[j] = min_with(88.7f, x[j]))
  NORMCPP_EACH(N, k[j] = (x[j] * 1.44269504088896341f + 12582912.0f) - 12582912.0f)  // round
  NORMCPP_EACH(N, r[j] = (x[j] - k[j] * 0.693359375f) + k[j] * 2.12194440e-4f)
  // sum r^i / i!, i <= 6, by Estrin's scheme: three dependent steps instead of Horner's six
  // (the chain, not the instruction count, sets the speed: Horner's fewer steps of the
  // erfc fit below measured the same).
  NORMCPP_EACH(N, r2[j] = r[j] * r[j])
  NORMCPP_EACH(N, lo[j] = (r[j] + 1.0f) + r2[j] * (r[j] * (1.0f / 6.0f) + 0.5f))
  NORMCPP_EACH(N, hi[j] = (r[j] * (1.0f / 120.0f) + 1.0f / 24.0f) + r2[j] * (1.0f / 720.0f))
  NORMCPP_EACH(N, lo[j] = lo[j] + (r2[j] * r2[j]) * hi[j])
  NORMCPP_EACH(N, x[j] = lo[j] * reinterpret_cast<vfloat>(
                                     (__builtin_convertvector(k[j], vint) + (Half ? 126 : 127))
                                     << 23))
}

template <bool ClampHigh = true, bool Half = false>
NORMCPP_ALWAYS_INLINE inline vfloat vexp(vfloat x) {
  vfloat a[1] = {x};
  vexp_n<ClampHigh, Half>(a);
  return a[0];
}

// 1 / d for gelu's erfc fit: at AVX-512 the 14-bit reciprocal estimate and one Newton step
// (relative error about 2^-24 and a rounding, next to the fit's 1.2e-7), two multiply-adds on
// the FMA ports instead of a division, whose unit takes a vector every ~8-10 cycles: 2-vCPU
// Xeon, LayerNorm+gelu (8,512,768) 1 thread, min us, alternated: 3268-3411 -> 2837-3004.
// d = inf (v = +-inf) gives NaN where the division gave 0; gelu's ends then come out as they
// did (see activate_n). Elsewhere the division. (silu's v / (1 + e) keeps its division: 3%
// there, and its e overflows to inf at v <= -88.7.)
NORMCPP_ALWAYS_INLINE inline vfloat recip(vfloat d) {
#if defined(__AVX512F__)
  const vfloat r = reinterpret_cast<vfloat>(_mm512_rcp14_ps(reinterpret_cast<__m512>(d)));
  return r + r * (1.0f - d * r);
#else
  return 1.0f / d;
#endif
}

// erfc(z[j]) / 2 for z[j] >= 0, in place.
template <int N>
NORMCPP_ALWAYS_INLINE inline void half_erfc_pos_n(vfloat (&z)[N]) {
  vfloat t[N], t2[N], t4[N], p[N], e[N];
  NORMCPP_EACH(N, t[j] = recip(1.0f + 0.5f * z[j]))
  // The degree-9 fit sum c_i t^i by Estrin's scheme (depth 4 instead of 9; see vexp_n).
  NORMCPP_EACH(N, t2[j] = t[j] * t[j])
  NORMCPP_EACH(N, t4[j] = t2[j] * t2[j])
  NORMCPP_EACH(N, p[j] = ((t[j] * 1.00002368f - 1.26551223f) +
                          t2[j] * (t[j] * 0.09678418f + 0.37409196f)) +
                         t4[j] * ((t[j] * 0.27886807f - 0.18628806f) +
                                  t2[j] * (t[j] * 1.48851587f - 1.13520398f)))
  NORMCPP_EACH(N, p[j] = p[j] + (t4[j] * t4[j]) * (t[j] * 0.17087277f - 0.82215223f))
  // the argument is log(erfc(z) (1 + z/2)) <= 0 (up to the fit's error): no upper clamp
  NORMCPP_EACH(N, e[j] = p[j] - z[j] * z[j])
  vexp_n<false, true>(e);
  NORMCPP_EACH(N, z[j] = t[j] * e[j])
}

// Where v's sign bit is set (v < 0, -0, a negative NaN): neg; else pos. On x86 the blend reads
// the sign bit itself (no compare).
NORMCPP_ALWAYS_INLINE inline vfloat select_by_sign(vfloat v, vfloat neg, vfloat pos) {
#if defined(__AVX512F__)
  const __mmask16 m = _mm512_movepi32_mask(reinterpret_cast<__m512i>(v));
  return reinterpret_cast<vfloat>(
      _mm512_mask_blend_ps(m, reinterpret_cast<__m512>(pos), reinterpret_cast<__m512>(neg)));
#elif defined(__AVX__)
  return reinterpret_cast<vfloat>(_mm256_blendv_ps(
      reinterpret_cast<__m256>(pos), reinterpret_cast<__m256>(neg), reinterpret_cast<__m256>(v)));
#else
  return reinterpret_cast<vint>(v) < 0 ? neg : pos;
#endif
}

// The activation of v[0..N) in place.
template <int Act, int N>
NORMCPP_ALWAYS_INLINE inline void activate_n(vfloat (&v)[N]) {
  if constexpr (Act == kRelu) NORMCPP_EACH(N, v[j] = v[j] < 0.0f ? vfloat{} : v[j])  // keeps NaN
  if constexpr (Act == kRelu6) {
    NORMCPP_EACH(N, v[j] = v[j] < 0.0f ? vfloat{} : v[j])
    NORMCPP_EACH(N, v[j] = v[j] > 6.0f ? vfloat{} + 6.0f : v[j])
  }
  if constexpr (Act == kSilu) {
    vfloat e[N];
    NORMCPP_EACH(N, e[j] = -v[j])
    vexp_n(e);
    NORMCPP_EACH(N, v[j] = v[j] / (1.0f + e[j]))
  }
  if constexpr (Act == kGelu) {
    // gelu(v) = v Phi(v): e = v erfc(|v|/sqrt 2) / 2 below 0, v - e above. At v = +inf, e is
    // inf * 0 = NaN: p < v ? p : v (x86's min) then gives v, as the double path does.
    vfloat e[N];
    // |v| by clearing the sign bit (one and, not a compare and a blend)
    NORMCPP_EACH(N, e[j] = reinterpret_cast<vfloat>(reinterpret_cast<vint>(v[j]) & 0x7fffffff) *
                           0.70710678118654752f)
    half_erfc_pos_n(e);
    NORMCPP_EACH(N, e[j] = v[j] * e[j])
    NORMCPP_EACH(N, const vfloat p = v[j] - e[j];
                 v[j] = select_by_sign(v[j], e[j], p < v[j] ? p : v[j]))
  }
}
#undef NORMCPP_EACH

template <int Act>
NORMCPP_ALWAYS_INLINE inline vfloat activate(vfloat v) {
  vfloat a[1] = {v};
  activate_n<Act>(a);
  return a[0];
}


template <int Act>
inline double activate_scalar(double v) {
  if constexpr (Act == kRelu) return v < 0.0 ? 0.0 : v;
  if constexpr (Act == kRelu6) return v < 0.0 ? 0.0 : (v > 6.0 ? 6.0 : v);
  if constexpr (Act == kSilu) return v / (1.0 + std::exp(-v));
  if constexpr (Act == kGelu) return 0.5 * v * std::erfc(-v * 0.70710678118654752440);
  return v;
}

// Streaming stores only pay where the pass is bound by memory: with silu or gelu the apply is
// bound by arithmetic, the output trickles out, and streaming it was measured slower
// (LayerNorm+gelu 8x512x768, one thread: 9.5 ms streamed vs 6.1 ms plain).
template <int Act>
constexpr bool kStreamable = Act != kSilu && Act != kGelu;

template <int Act>
NORMCPP_ALWAYS_INLINE inline vdouble activate(vdouble v) {
  if constexpr (Act == kNone) return v;
  for (unsigned i = 0; i < sizeof(vdouble) / sizeof(double); ++i) v[i] = activate_scalar<Act>(v[i]);
  return v;
}

// The activations worth evaluating several vectors at a time (see vexp_n).
template <int Act>
constexpr bool kChainAct = Act == kSilu || Act == kGelu;

// write_row of activate<Act>(pre(i)): for silu and gelu, the plain path takes four vectors at
// a time through activate_n (the same values; see vexp_n). one(i) includes the activation.
template <int Act, class T, class PreF, class OneF>
NORMCPP_ALWAYS_INLINE inline void write_row_act(T* y, i64 n, bool stream, PreF&& pre,
                                                OneF&& one, bool grid = false,
                                                LineCarry<T>* carry = nullptr) {
  using Tr = VT<T>;
  using V = typename Tr::V;
  if constexpr (kChainAct<Act> && std::is_same_v<V, vfloat>) {
    if (!stream) {
      constexpr i64 W = Tr::W;
      const i64 nv = n - n % W;
      i64 i = 0;
      for (; i + 4 * W <= nv; i += 4 * W) {
        V v[4] = {pre(i), pre(i + W), pre(i + 2 * W), pre(i + 3 * W)};
        activate_n<Act>(v);
        for (int j = 0; j < 4; ++j) Tr::store(y + i + j * W, v[j]);
      }
      for (; i + W <= nv; i += W) Tr::store(y + i, activate<Act>(pre(i)));
      for (; i < n; ++i) y[i] = one(i);
      return;
    }
  }
  write_row(
      y, n, stream, [&](i64 i) NORMCPP_ALWAYS_INLINE { return activate<Act>(pre(i)); }, one,
      grid, carry);
}

// write_row_act as a row writer (see cl_periodic_write).
template <int Act>
struct ActRows {
  template <class T, class PreF, class OneF>
  NORMCPP_ALWAYS_INLINE void operator()(T* y, i64 n, bool stream, PreF&& pre, OneF&& one) const {
    write_row_act<Act>(y, n, stream, pre, one);
  }
};

// The scalar tail: float lanes go through the same vector code so every element of a
// tensor gets bitwise the same function.
template <int Act>
inline float activate_one(float v) {
  if constexpr (Act == kNone) return v;
  const vfloat r = activate<Act>(vfloat{} + v);
  return r[0];
}
template <int Act>
inline double activate_one(double v) {
  return activate_scalar<Act>(v);
}

// Calls f(std::integral_constant<int, Act>) for the run-time activation code.
template <class F>
inline void with_act(int act, F&& f) {
  switch (act) {
    case kRelu:
      return f(std::integral_constant<int, kRelu>{});
    case kRelu6:
      return f(std::integral_constant<int, kRelu6>{});
    case kSilu:
      return f(std::integral_constant<int, kSilu>{});
    case kGelu:
      return f(std::integral_constant<int, kGelu>{});
    default:
      return f(std::integral_constant<int, kNone>{});
  }
}

// Whether write_row streams rows of n elements of T through a carry (stream: streamed at all):
// the row loops then call the row kernels instantiated with Carry, and the others without --
// where the carry is a possibility only, the row kernels set up the carried path's closures on
// every call (BatchNorm eval (128,512,7,7), whose planes never take it: 0.64-0.8x).
template <class T>
constexpr bool carried_rows(i64 n, bool stream) {
  return kCanStream<T> && stream && n - n % VT<T>::W >= 4 * (64 / static_cast<i64>(sizeof(T)));
}
// f(std::true_type{}) for rows of n elements that carried_rows takes, else f(std::false_type{}).
template <class T, class F>
NORMCPP_ALWAYS_INLINE inline void with_carry(i64 n, bool stream, F&& f) {
  if (carried_rows<T>(n, stream))
    f(std::true_type{});
  else
    f(std::false_type{});
}

template <int Act, class T, bool Carry = false>
NORMCPP_NOINLINE void apply_scalar_impl(const T* x, T* y, i64 n, typename VT<T>::A m, typename VT<T>::A a,
                       typename VT<T>::A b, bool stream, LineCarry<T>* carry = nullptr) {
  using Tr = VT<T>;
  using V = typename Tr::V;
  const V mv = splat<V>(m), av = splat<V>(a), bv = splat<V>(b);
  write_row_act<Act>(
      y, n, stream && kStreamable<Act>,
      [&](i64 i) NORMCPP_ALWAYS_INLINE { return (Tr::load(x + i) - mv) * av + bv; },
      [&](i64 i) { return Tr::from_a(activate_one<Act>((Tr::to_a(x[i]) - m) * a + b)); },
      true, Carry ? carry : nullptr);
}

template <class T>
void apply_scalar(const T* x, T* y, i64 n, typename VT<T>::A m, typename VT<T>::A a,
                  typename VT<T>::A b, int act, bool stream) {
  with_act(act, [&](auto tag) {
    apply_scalar_impl<decltype(tag)::value>(x, y, n, m, a, b, stream);
  });
}

template <class T>
void apply_runs(const T* x, T* y, i64 nruns, i64 L, i64 c0, i64 C, const typename VT<T>::A* M,
                const typename VT<T>::A* S, const typename VT<T>::A* B, int act, bool stream) {
  with_act(act, [&](auto tag) {
    constexpr int Act = decltype(tag)::value;
    const auto runs = [&](auto carried) {
      i64 c = c0;
      LineCarry<T> carry;  // the runs are in memory order
      for (i64 r = 0; r < nruns; ++r) {
        apply_scalar_impl<Act, T, decltype(carried)::value>(x + r * L, y + r * L, L, M[c], S[c],
                                                            B[c], stream, &carry);
        if (++c == C) c = 0;
      }
    };
    with_carry<T>(L, stream && kStreamable<Act>, runs);
  });
}

// f(std::integral_constant<int, G>{}) for G = n in [1, Max], returning true; false for any
// other n: the periods whose coefficient vectors the kernels below hold in registers.
template <int Max, class F>
NORMCPP_ALWAYS_INLINE inline bool with_vecs(i64 n, F&& f) {
  if constexpr (Max < 1) {
    return false;
  } else {
    if (n == Max) {
      f(std::integral_constant<int, Max>{});
      return true;
    }
    return with_vecs<Max - 1>(n, f);
  }
}

// Plain-stored channels-last apply with the period's coefficients held in registers: G
// vectors of columns (G * W <= P) of `nrows` period rows at x, y (row stride P), M, S, B the
// coefficients of those columns. Each vector costs one load, not four (the element lambda of
// cl_periodic_write loads M, S and B beside x): BN eval NHWC (1,64,28,28) hot in L2 13.8 us vs
// NCHW 8.2 us before.
template <int Act, int G, bool Stream = false, class T>
NORMCPP_ALWAYS_INLINE inline void cl_group_rows(const T* x, T* y, i64 nrows, i64 P,
                                                const typename VT<T>::A* M,
                                                const typename VT<T>::A* S,
                                                const typename VT<T>::A* B) {
  using Tr = VT<T>;
  using A = typename Tr::A;
  using V = typename Tr::V;
  constexpr i64 W = Tr::W;
  V m[G], s[G], b[G];
#pragma GCC unroll 4
  for (int g = 0; g < G; ++g) {
    m[g] = VT<A>::load(M + g * W);
    s[g] = VT<A>::load(S + g * W);
    b[g] = VT<A>::load(B + g * W);
  }
  for (i64 r = 0; r < nrows; ++r) {
    const T* xr = x + r * P;
    T* yr = y + r * P;
#pragma GCC unroll 4
    for (int g = 0; g < G; ++g) {
      const V v = activate<Act>((Tr::load(xr + g * W) - m[g]) * s[g] + b[g]);
      if constexpr (Stream)
        stream_store(yr + g * W, v);
      else
        Tr::store(yr + g * W, v);
    }
  }
}

// Vectors of a channels-last period whose means cl_mean_rows holds in registers: half the
// vector registers (32 at AVX-512, 16 below), the rest left for x and the loaded coefficients.
constexpr int kClMeanVecs = NORMCPP_VBYTES >= 64 ? 16 : 8;

// Plain-stored channels-last apply of `nrows` whole period rows (P = G * W, G <= kClMeanVecs)
// front to back: the G vectors of means in registers, the scales and shifts loaded beside each
// vector of x. Same arithmetic per element as cl_group_rows. For x read from the last-level
// cache or memory, this beats cl_tiled_write's column groups over tiles of rows (each tile
// walked four times, a group of columns at a time) and also a front-to-back walk that loads
// all three coefficients (Zen 4, BN eval NHWC (8,256,28,28) float32 from L3, the C++ loops
// alone, min us: tiles 175-180, three loads 157-168, means in registers 140-148, the NCHW
// apply 146-151; C = 128: tiles 191, means in registers 148). Hot in L2 (up to ~400 KB of x)
// the tiles' single load per vector wins by 3-5%, so they stay for hot data.
template <int Act, class T>
NORMCPP_ALWAYS_INLINE inline void cl_mean_rows(const T* x, T* y, i64 nrows, i64 G,
                                               const typename VT<T>::A* M,
                                               const typename VT<T>::A* S,
                                               const typename VT<T>::A* B) {
  using Tr = VT<T>;
  using A = typename Tr::A;
  using V = typename Tr::V;
  constexpr i64 W = Tr::W;
  const i64 P = G * W;
  V m[kClMeanVecs];
#pragma GCC unroll 16
  for (int g = 0; g < kClMeanVecs; ++g) m[g] = g < G ? VT<A>::load(M + g * W) : V{};
  for (i64 r = 0; r < nrows; ++r) {
    const T* xr = x + r * P;
    T* yr = y + r * P;
#pragma GCC unroll 16
    for (int g = 0; g < kClMeanVecs; ++g) {
      if (g >= G) break;
      Tr::store(yr + g * W, activate<Act>((Tr::load(xr + g * W) - m[g]) * VT<A>::load(S + g * W) +
                                          VT<A>::load(B + g * W)));
    }
  }
}

// y[0..n) of a channels-last stream of period P (a multiple of W, <= kMaxPeriod) with plain
// stores: whole period rows through cl_group_rows -- a period of up to 4 vectors in one
// sweep; a wider one, where x is hot in L2, as column groups of 4 vectors over tiles of rows
// that stay in L1 (one load a vector), else front to back: by cl_mean_rows where its means
// fit in registers, by vec (all three coefficients loaded) beyond -- and the partial last row
// with vec/one as in cl_periodic_write. Same arithmetic per element as vec, so the values are
// bitwise those of the other paths. (Front to back for wide periods, Python, 1 thread, min
// us, BN eval NHWC (4,512,28,28): tiles 176-196, vec 164-168; BN eval (1568,1024) 180-190 vs
// 167-171; about 3% slower for samples of 200K elements that the bench keeps in L2.)
template <int Act, class T, class VecF, class OneF>
NORMCPP_ALWAYS_INLINE inline void cl_tiled_write(const T* x, T* y, i64 n, i64 P,
                                                 const typename VT<T>::A* M,
                                                 const typename VT<T>::A* S,
                                                 const typename VT<T>::A* B, bool hot,
                                                 VecF& vec, OneF& one) {
  constexpr i64 W = VT<T>::W;
  const i64 nrows = n / P, G = P / W;
  const auto group = [&](i64 g0, i64 gs, i64 r0, i64 nr) {  // gs in [1, 4]
    const i64 off = r0 * P + g0 * W;
    with_vecs<4>(gs, [&](auto G) NORMCPP_ALWAYS_INLINE {
      cl_group_rows<Act, decltype(G)::value>(x + off, y + off, nr, P, M + g0 * W, S + g0 * W,
                                             B + g0 * W);
    });
  };
  if (G <= 4) {
    group(0, G, 0, nrows);
  } else if (G <= kClMeanVecs && !hot) {
    cl_mean_rows<Act>(x, y, nrows, G, M, S, B);
  } else if (!hot) {
    return cl_periodic_write(y, n, P, false, vec, one);  // rows and tail, in memory order
  } else {
    const i64 R = imax(1, 2048 / P);  // 8 KB of float32 a tile
    for (i64 r0 = 0; r0 < nrows; r0 += R)
      for (i64 g0 = 0; g0 < G; g0 += 4) group(g0, imin(4, G - g0), r0, imin(R, nrows - r0));
  }
  const i64 i0 = nrows * P;
  write_row(
      y + i0, n - i0, false, [&](i64 o) NORMCPP_ALWAYS_INLINE { return vec(i0 + o, o); },
      [&](i64 o) { return one(i0 + o, o); });
}

// M, S and B's patterns over a period P extended by kPeriodExt (expand_period_ext), E apart in
// scratch (cl_scratch_elems), each starting `lead` elements before a line so that its position
// lead is on one; returns the first (the others at + E, + 2E).
template <class T>
typename VT<T>::A* expand_coef_patterns(const typename VT<T>::A* M, const typename VT<T>::A* S,
                                        const typename VT<T>::A* B, i64 C, i64 P, i64 lead,
                                        typename VT<T>::A* scratch, i64& E) {
  using A = typename VT<T>::A;
  constexpr i64 kLineA = 64 / static_cast<i64>(sizeof(A));
  constexpr i64 X = kPeriodExt<T>;
  E = (P + X + kLineA - 1) / kLineA * kLineA;
  A* base = scratch + line_lead(scratch) + (kLineA - lead % kLineA) % kLineA;
  expand_period_ext(M, C, base, P, X);
  expand_period_ext(S, C, base + E, P, X);
  expand_period_ext(B, C, base + 2 * E, P, X);
  return base;
}

// Where cl_tiled_write can store on y's lines although y starts off one (an out= from NumPy:
// 16 or 48 bytes past a line): y's elements before its first line, h > 0, with the stream's
// period P (cl_stream_period: whole lines) and at least h + P elements; else 0.
template <class T>
i64 cl_lines_lead(const T* y, i64 n, i64 C) {
  const i64 h = line_lead(y), P = cl_stream_period<T>(C);
  return h > 0 && P > 0 && P % (64 / static_cast<i64>(sizeof(T))) == 0 && n >= h + P ? h : 0;
}

// cl_tiled_write with its stores on y's lines (h = cl_lines_lead): the stream cut into rows of
// P from y + h, the coefficients read from pattern position h (expand_coef_patterns with lead
// h puts it on a line), and the h elements before stored last, as lanes of vectors computed
// before anything is written (y may be x). Every element gets vec's arithmetic with its
// channel's coefficients, as before (bitwise the same). A store across two lines costs two:
// 1 thread, median us, x 16 and out= 48 bytes past a line, base vs this interleaved: BN eval
// (256,1024) float32 93 -> 75 (65-70 into an out= on a line), float16 44 -> 30, NHWC
// (1,256,14,14) 11.2 -> 8.6, InstanceNorm and GroupNorm NHWC (1,256,14,14) 16.4-16.7 ->
// 13.6-14.1; data from memory (8,256,28,28): no change.
template <int Act, class T, class VecF, class OneF>
NORMCPP_ALWAYS_INLINE inline void cl_tiled_write_on_lines(
    const T* x, T* y, i64 n, i64 P, i64 h, const typename VT<T>::A* M,
    const typename VT<T>::A* S, const typename VT<T>::A* B, bool hot, VecF& vec, OneF& one) {
  using Tr = VT<T>;
  constexpr i64 W = Tr::W;
  typename Tr::V head[(64 / static_cast<i64>(sizeof(T)) + W - 1) / W];
  for (i64 i = 0, k = 0; i < h; i += W, ++k) head[k] = vec(i, i);
  const auto vec_h = [&](i64 i, i64 o) NORMCPP_ALWAYS_INLINE { return vec(h + i, h + o); };
  const auto one_h = [&](i64 i, i64 o) { return one(h + i, h + o); };
  cl_tiled_write<Act>(x + h, y + h, n - h, P, M + h, S + h, B + h, hot, vec_h, one_h);
  for (i64 i = 0, k = 0; i < h; i += W, ++k) Tr::store(y + i, head[k]);
}

template <int Act, class T>
NORMCPP_NOINLINE void apply_cl_impl(const T* x, T* y, i64 rows, i64 C, i64 ld,
                                    const typename VT<T>::A* M, const typename VT<T>::A* S,
                                    const typename VT<T>::A* B, typename VT<T>::A* scratch,
                                    bool stream, bool hot) {
  using Tr = VT<T>;
  using A = typename Tr::A;
  const bool st = stream && kStreamable<Act>;
  const bool plain = !st && kStreamable<Act>;
  // y's elements before its first line where the plain stores go on its lines, else 0
  const i64 lead = ld == C && plain ? cl_lines_lead(y, rows * C, C) : 0;
  const i64 P = ld != C                        ? 0
                : lead || (st && kCanStream<T>) ? cl_stream_period<T>(C)
                                                : cl_period<T>(C);
  // Element i with the coefficients at channel position o of Mp, Sp, Bp.
  const A *Mp = M, *Sp = S, *Bp = B;
  const auto vec = [&](i64 i, i64 o) NORMCPP_ALWAYS_INLINE {
    return activate<Act>((Tr::load(x + i) - VT<A>::load(Mp + o)) * VT<A>::load(Sp + o) +
                         VT<A>::load(Bp + o));
  };
  const auto one = [&](i64 i, i64 o) {
    return Tr::from_a(activate_one<Act>((Tr::to_a(x[i]) - Mp[o]) * Sp[o] + Bp[o]));
  };
  if (P) {
    // The channel pattern over one period P (a multiple of W), extended by kPeriodExt -- except
    // where the period is C itself and the stores are plain: every vector then starts at a
    // multiple of W inside one period, and M, S, B are read as they are. (Writing the scratch
    // in every call cost BN eval NHWC (8,256,28,28) about 5% in its 49 chunks of 128 rows: the
    // first loads of the fresh copy wait behind the stores of y.)
    if (st || P != C || lead) {
      i64 E = 0;
      Mp = expand_coef_patterns<T>(M, S, B, C, P, lead, scratch, E);
      Sp = Mp + E;
      Bp = Mp + 2 * E;
    }
    // Plain stores, every period however wide, through cl_tiled_write: for data hot in L2,
    // row by row (a load of each coefficient beside each vector of x) took the same min but
    // 1.2x the median of its tiles for BN eval (256, 1024) and NHWC (4,7,7,1024) (41 vs 34 us,
    // 31 vs 27 us at 1 thread; 38 vs 33 us at AVX2); other data goes front to back there.
    if (plain) {
      if (lead)
        cl_tiled_write_on_lines<Act>(x, y, rows * C, P, lead, Mp, Sp, Bp, hot, vec, one);
      else
        cl_tiled_write<Act>(x, y, rows * C, P, Mp, Sp, Bp, hot, vec, one);
      return;
    }
    if constexpr (kChainAct<Act>) {  // never streamed (kStreamable)
      const auto pre = [&](i64 i, i64 o) NORMCPP_ALWAYS_INLINE {
        return (Tr::load(x + i) - VT<A>::load(Mp + o)) * VT<A>::load(Sp + o) +
               VT<A>::load(Bp + o);
      };
      cl_periodic_write(y, rows * C, P, false, pre, one, ActRows<Act>{});
      return;
    }
    // Streamed periods of up to 4 vectors: their coefficients held in registers, as in the
    // plain path.
    const auto stream_rows = [&](i64 h, i64 nrows) NORMCPP_ALWAYS_INLINE {
      if constexpr (kCanStream<T>)
        return with_vecs<4>(P / Tr::W, [&](auto G) NORMCPP_ALWAYS_INLINE {
          cl_group_rows<Act, decltype(G)::value, true>(x + h, y + h, nrows, P, Mp + h, Sp + h,
                                                       Bp + h);
        });
      return false;
    };
    cl_periodic_write(y, rows * C, P, st, vec, one, PlainRows{}, stream_rows);
    return;
  }
  // Wide channel counts, strips: row by row. (Rows four at a time, each vector of
  // coefficients loaded once for the four, took 0.75x the time on Zen 4 for BN (256,1024)
  // strips but 1.45x on a 16-core Xeon, likely 4K aliasing between rows 4 KB apart (loads of
  // one row waiting on the stores to another): not kept.)
  for (i64 i0 = 0; i0 < rows * ld; i0 += ld)
    write_row(
        y + i0, C, st, [&](i64 c) NORMCPP_ALWAYS_INLINE { return vec(i0 + c, c); },
        [&](i64 c) { return one(i0 + c, c); });
}

template <class T>
void apply_cl(const T* x, T* y, i64 rows, i64 C, i64 ld, const typename VT<T>::A* M,
              const typename VT<T>::A* S, const typename VT<T>::A* B,
              typename VT<T>::A* scratch, int act, bool stream, bool hot) {
  with_act(act, [&](auto tag) {
    apply_cl_impl<decltype(tag)::value>(x, y, rows, C, ld, M, S, B, scratch, stream, hot);
  });
}

// y = act((x - m) * s * w + b) over a row of n elements. With Kept, the row comes as d[0..n),
// its deviations x - K in A (block_moments' kept row), and y = act((d * s + m) * w + b): m is
// then the offset -(mean - K) * s.
template <int Act, class T, bool HasW, bool HasB, bool Kept = false, bool Carry = false>
NORMCPP_NOINLINE void apply_row_impl(const T* x, T* y, i64 n, typename VT<T>::A m,
                                     typename VT<T>::A s, const typename VT<T>::A* Wt,
                                     const typename VT<T>::A* Bs, bool stream,
                                     const typename VT<T>::A* d = nullptr,
                                     LineCarry<T>* carry = nullptr) {
  using Tr = VT<T>;
  using A = typename Tr::A;
  using V = typename Tr::V;
  const V mv = splat<V>(m), sv = splat<V>(s);
  // On y's lines only where the weights are read on lines there too (see same_line_offset).
  const bool grid = (!HasW || same_line_offset(Wt, y)) && (!HasB || same_line_offset(Bs, y));
  write_row_act<Act>(
      y, n, stream && kStreamable<Act>,
      [&](i64 i) NORMCPP_ALWAYS_INLINE {
        V v;
        if constexpr (Kept)
          v = VT<A>::load(d + i) * sv + mv;
        else
          v = (Tr::load(x + i) - mv) * sv;
        if constexpr (HasW) v = v * VT<A>::load(Wt + i);
        if constexpr (HasB) v = v + VT<A>::load(Bs + i);
        return v;
      },
      [&](i64 i) {
        A v;
        if constexpr (Kept)
          v = d[i] * s + m;
        else
          v = (Tr::to_a(x[i]) - m) * s;
        if constexpr (HasW) v = v * Wt[i];
        if constexpr (HasB) v = v + Bs[i];
        return Tr::from_a(activate_one<Act>(v));
      },
      grid, Carry ? carry : nullptr);
}

template <class T>
void apply_row(const T* x, T* y, i64 n, typename VT<T>::A m, typename VT<T>::A s,
               const typename VT<T>::A* Wt, const typename VT<T>::A* Bs, int act, bool stream) {
  with_act(act, [&](auto tag) {
    constexpr int Act = decltype(tag)::value;
    if (Wt && Bs) return apply_row_impl<Act, T, true, true>(x, y, n, m, s, Wt, Bs, stream);
    if (Wt) return apply_row_impl<Act, T, true, false>(x, y, n, m, s, Wt, Bs, stream);
    if (Bs) return apply_row_impl<Act, T, false, true>(x, y, n, m, s, Wt, Bs, stream);
    apply_row_impl<Act, T, false, false>(x, y, n, m, s, Wt, Bs, stream);
  });
}

// A row or slot of up to this many bytes has its moments taken before the previous one is
// normalized (norm_rows, norm_slots): the two then sit together in half of L1.
constexpr i64 kAheadBytes = 8 * 1024;
// Rows prefetched ahead by norm_rows: kRowsAhead rows ahead where a row takes kAheadBytes or less,
// else the next row where it takes kRowPrefetchBytes or less.
constexpr i64 kRowsAhead = 3;
constexpr i64 kRowPrefetchBytes = 16 * 1024;

// Long rows' normalization in groups (kernels.hpp's row_group), kApplyChunk elements at a time
// across the group's rows. Row by row, a row of 16 KB with its weight and bias (48 KB) and its
// output does not fit L1, and every vector of the normalization waits on the weight and bias
// from L2. The same arithmetic on every element (bitwise the same). float32, min us, base vs
// grouped interleaved in one process: 1 thread LayerNorm (128,4096) 243 -> 219, (1024,4096)
// 1866 -> 1742, (128,8192) 459 -> 436, (64,16384) 490 -> 467, RMSNorm (128,4096) 219 -> 212;
// 2 threads LayerNorm (128,4096) 110 -> 96, (1024,4096) 951 -> 885; float16 rows unchanged.
constexpr i64 kApplyChunk = 1024;  // elements: a multiple of every vector width and line

// LayerNorm/RMSNorm rows normalized whole, one after another (TypedKernels::norm_rows): per
// row its moments, the coefficients in double, then apply_row_impl, with no call through the
// kernel table per row (LayerNorm (512,384) L2-resident, 1 thread, min: 48 -> 41 us; from
// memory (64,197,384) 1508 -> 1314 us). A row's moments are taken before the previous row is
// normalized, where both fit kAheadBytes: the reads of row r + 1 then go out ahead of row r's
// stores instead of waiting behind them (and the moments' dependency chain -- horizontal sums,
// square root, division -- runs beside the stores), and rows kRowsAhead ahead are prefetched.
// 1 thread, min us, against moments then normalization row by row with the next row
// prefetched: LayerNorm (8,512,768) 581-593 -> 545-571, (50000,100) 1770-1807 -> 1598-1641,
// (512,384) 37.6-38.6 -> 35-37, (64,197,384) from memory 1001-1043 -> 1013-1038; 2 threads
// (50000,100) 909-918 -> 808. (Moments one row ahead without the prefetch: (8,512,768) 497-527
// but (64,197,384) 1164-1324.) A prefetch past the end of an array would be harmless (it never
// faults); none is issued there.
template <int Act, class T, bool HasW, bool HasB>
NORMCPP_NOINLINE void norm_rows_impl(const T* x, T* y, i64 rows, i64 L,
                                     const typename VT<T>::A* Wt, const typename VT<T>::A* Bs,
                                     double eps, bool rms, bool stream, double* mean,
                                     double* var) {
  using A = typename VT<T>::A;
  const i64 bytes = L * static_cast<i64>(sizeof(T));
  const double n = static_cast<double>(L);
  auto moments = [&](i64 r) NORMCPP_ALWAYS_INLINE {
    const T* xr = x + r * L;
    if (rms) {
      mean[r] = 0.0;
      var[r] = clamp_nonneg(run_sumsq(xr, L) / n);
    } else {
      const Moments m = run_moments(xr, L);
      mean[r] = m.mean;
      var[r] = clamp_nonneg(m.m2 / m.n);
    }
  };
  const bool ahead = bytes <= kAheadBytes;
  const i64 pf = ahead ? kRowsAhead : bytes <= kRowPrefetchBytes ? 1 : 0;  // rows ahead
  static_assert(kAheadBytes == kRowGroupMinBytes, "rows normalized ahead are not grouped");
  LineCarry<T> carry;  // rows normalized whole, in memory order (below the grouped ones)
  if ((HasW || HasB) && !ahead) {
    // Long rows with a weight or bias: a group's moments, then its normalization in chunks.
    const i64 G = row_group(bytes, true);
    A inv[kRowGroupRows];
    for (i64 r0 = 0; r0 < rows; r0 += G) {
      const i64 g = std::min(G, rows - r0);
      for (i64 r = r0; r < r0 + g; ++r) {
        moments(r);
        inv[r - r0] = static_cast<A>(inv_std(var[r], eps));
      }
      for (i64 j = 0; j < L; j += kApplyChunk) {
        const i64 k = std::min(kApplyChunk, L - j);
        for (i64 r = r0; r < r0 + g; ++r)
          apply_row_impl<Act, T, HasW, HasB>(x + r * L + j, y + r * L + j, k,
                                             static_cast<A>(mean[r]), inv[r - r0],
                                             HasW ? Wt + j : Wt, HasB ? Bs + j : Bs, stream);
      }
    }
    return;
  }
  if constexpr (std::is_same_v<T, half_t>) {
    if (ahead && L > kShortRun && L <= kBlock) {
      // float16 rows kept: the values that the moments convert from the row -- its deviations
      // x - K about block_moments' shift, or x itself for RMSNorm -- are stored (float32, in
      // L1) and the normalization reads them instead of converting the row again (conversions
      // are most of a float16 row's arithmetic). The same moments; y = (d * s + c) * w + b
      // with c = -(mean - K) * s (RMSNorm: c = 0, bitwise x * s as before). 2-vCPU Xeon, 1
      // thread, out=, medians us, plain vs kept, interleaved: LayerNorm (64,197,384) 1435 ->
      // 1250, (4096,300) 630 -> 536, (1,128,2048) 47 -> 42, (8,512,768) 799 -> 767; RMSNorm
      // (4096,300) 405 -> 326, (1,128,2048) 37 -> 30, (8,512,768) 656 -> 666.
      alignas(64) A kept[2][kBlock];
      A shift[2] = {0, 0};
      const double rn = 1.0 / n;
      auto keep = [&](i64 r) NORMCPP_ALWAYS_INLINE {
        const T* xr = x + r * L;
        if (rms) {
          mean[r] = 0.0;
          var[r] = clamp_nonneg(sumsq_blocks<T, true>(xr, L, kept[r & 1]) / n);
        } else {
          const Moments m = block_moments<T, true>(xr, L, kept[r & 1], &shift[r & 1]);
          mean[r] = m.mean;
          var[r] = clamp_nonneg(m.m2 * rn);
        }
      };
      const auto loop = [&](auto carried) {
        if (rows > 0) keep(0);
        for (i64 r = 0; r < rows; ++r) {
          if (r + pf < rows) prefetch_range(x + (r + pf) * L, bytes);
          if (r + 1 < rows) keep(r + 1);
          const double is = inv_std(var[r], eps);
          apply_row_impl<Act, T, HasW, HasB, true, decltype(carried)::value>(
              x + r * L, y + r * L, L, static_cast<A>(-(mean[r] - shift[r & 1]) * is),
              static_cast<A>(is), Wt, Bs, stream, kept[r & 1], &carry);
        }
      };
      with_carry<T>(L, stream && kStreamable<Act>, loop);
      return;
    }
  }
  const auto loop = [&](auto carried) {
    if (rows > 0 && ahead) moments(0);
    for (i64 r = 0; r < rows; ++r) {
      const T* xr = x + r * L;
      if (pf && r + pf < rows) prefetch_range(xr + pf * L, bytes);
      if (!ahead)
        moments(r);
      else if (r + 1 < rows)
        moments(r + 1);
      apply_row_impl<Act, T, HasW, HasB, false, decltype(carried)::value>(
          xr, y + r * L, L, static_cast<A>(mean[r]), static_cast<A>(inv_std(var[r], eps)), Wt,
          Bs, stream, nullptr, &carry);
    }
  };
  with_carry<T>(L, stream && kStreamable<Act>, loop);
}

template <class T>
void norm_rows(const T* x, T* y, i64 rows, i64 L, const typename VT<T>::A* Wt,
               const typename VT<T>::A* Bs, double eps, bool rms, int act, bool stream,
               double* mean, double* var) {
  with_act(act, [&](auto tag) {
    constexpr int Act = decltype(tag)::value;
    if (Wt && Bs)
      return norm_rows_impl<Act, T, true, true>(x, y, rows, L, Wt, Bs, eps, rms, stream, mean,
                                                var);
    if (Wt)
      return norm_rows_impl<Act, T, true, false>(x, y, rows, L, Wt, Bs, eps, rms, stream, mean,
                                                 var);
    if (Bs)
      return norm_rows_impl<Act, T, false, true>(x, y, rows, L, Wt, Bs, eps, rms, stream, mean,
                                                 var);
    norm_rows_impl<Act, T, false, false>(x, y, rows, L, Wt, Bs, eps, rms, stream, mean, var);
  });
}

// Slots of R runs of S elements normalized whole, one after another (TypedKernels::norm_slots:
// InstanceNorm and GroupNorm NCHW with small planes): per slot its moments, then each run with
// its channel's coefficients. A slot of one run (InstanceNorm) of up to kAheadBytes has its
// moments taken before the previous one is normalized, as in norm_rows_impl (1 thread, min us:
// InstanceNorm (8,256,28,28) 241-242 -> 227-232, (64,256,14,14) 742-750 -> 652-660,
// (128,512,7,7) 1623-1630 -> 1345). GroupNorm's slots of several runs were slower so
// ((128,512,7,7) G = 32: 772-844 -> 920-1044), and so were planes of 12.5 KB ((1,64,56,56)
// 22.7-23.5 -> 25.4-25.9: the previous plane no longer in L1). (Prefetching the next slot as
// norm_rows does made InstanceNorm 6-17% slower: planes of 3-12.5 KB, mostly in cache
// already.)
template <int Act, class T>
NORMCPP_NOINLINE void norm_slots_impl(const T* x, T* y, i64 nslots, i64 R, i64 S, i64 c0,
                                      i64 C, const double* w, const double* b, double eps,
                                      bool stream, double* mean, double* var) {
  using A = typename VT<T>::A;
  const i64 E = R * S;
  auto moments = [&](i64 i) NORMCPP_ALWAYS_INLINE {
    const Moments m = run_moments(x + i * E, E);
    mean[i] = m.mean;
    var[i] = clamp_nonneg(m.m2 / m.n);
  };
  i64 c = c0;
  const bool ahead = R == 1 && E * static_cast<i64>(sizeof(T)) <= kAheadBytes;
  LineCarry<T> carry;  // slots and their runs in memory order
  const auto loop = [&](auto carried) {
    if (nslots > 0 && ahead) moments(0);
    for (i64 i = 0; i < nslots; ++i) {
      const T* xs = x + i * E;
      if (!ahead) moments(i);
      else if (i + 1 < nslots) moments(i + 1);
      const double is = inv_std(var[i], eps);
      const A ma = static_cast<A>(mean[i]);
      for (i64 j = 0; j < R; ++j) {
        const A sc = static_cast<A>((w ? w[c] : 1.0) * is), bc = static_cast<A>(b ? b[c] : 0.0);
        apply_scalar_impl<Act, T, decltype(carried)::value>(xs + j * S, y + i * E + j * S, S, ma,
                                                            sc, bc, stream, &carry);
        if (++c == C) c = 0;
      }
    }
  };
  with_carry<T>(S, stream && kStreamable<Act>, loop);
}

template <class T>
void norm_slots(const T* x, T* y, i64 nslots, i64 R, i64 S, i64 c0, i64 C, const double* w,
                const double* b, double eps, int act, bool stream, double* mean, double* var) {
  with_act(act, [&](auto tag) {
    norm_slots_impl<decltype(tag)::value>(x, y, nslots, R, S, c0, C, w, b, eps, stream, mean,
                                          var);
  });
}

template <class T>
void coefs(i64 n, const double* mean, const double* var, const double* w, const double* b,
           double eps, typename VT<T>::A* M, typename VT<T>::A* S, typename VT<T>::A* B) {
  using A = typename VT<T>::A;
  i64 i = 0;
  // 4 lanes at a time: the scalar loop is bound by the throughput of the double sqrt and
  // division (17 cycles a channel: 6.6 us of a BatchNorm eval call with C = 1024).
  for (; i + 4 <= n; i += 4) {
    d4_t v, s = {1.0, 1.0, 1.0, 1.0};
    std::memcpy(&v, var + i, sizeof v);
    if (w) std::memcpy(&s, w + i, sizeof s);
    s = s * (1.0 / sqrt4(v + eps));
    for (int j = 0; j < 4; ++j) S[i + j] = static_cast<A>(s[j]);
  }
  for (; i < n; ++i) S[i] = static_cast<A>((w ? w[i] : 1.0) * inv_std(var[i], eps));
  for (i = 0; i < n; ++i) {
    M[i] = static_cast<A>(mean[i]);
    B[i] = static_cast<A>(b ? b[i] : 0.0);
  }
}

// ---------------------------------------------------------------------------- backward

template <class T, bool HasW>
void run_dot_impl(const T* x, const T* dy, i64 n, typename VT<T>::A m,
                  const typename VT<T>::A* Wt, double* out) {
  using Tr = VT<T>;
  using A = typename Tr::A;
  using V = typename Tr::V;
  constexpr i64 W = Tr::W;
  const V mv = splat<V>(m);
  double s = 0.0, d = 0.0;
  for (i64 b = 0; b < n; b += kBlock) {
    const i64 len = imin(kBlock, n - b);
    V s0{}, s1{}, d0{}, d1{};
    i64 i = b;
    for (; i + 2 * W <= b + len; i += 2 * W) {
      V g0 = Tr::load(dy + i), g1 = Tr::load(dy + i + W);
      if constexpr (HasW) {
        g0 *= VT<A>::load(Wt + i);
        g1 *= VT<A>::load(Wt + i + W);
      }
      s0 += g0;
      s1 += g1;
      d0 += g0 * (Tr::load(x + i) - mv);
      d1 += g1 * (Tr::load(x + i + W) - mv);
    }
    for (; i + W <= b + len; i += W) {
      V g0 = Tr::load(dy + i);
      if constexpr (HasW) g0 *= VT<A>::load(Wt + i);
      s0 += g0;
      d0 += g0 * (Tr::load(x + i) - mv);
    }
    if (i < b + len && b + len >= W) {
      // The rest: the vector that ends the block, loaded whole, its lanes before i masked
      // out (one vector instead of up to W - 1 scalar steps in double).
      const i64 j = b + len - W;
      V g0 = Tr::load(dy + j);
      if constexpr (HasW) g0 *= VT<A>::load(Wt + j);
      const V p = g0 * (Tr::load(x + j) - mv);
      const auto own = lane_index<V, A>() >= splat<V>(static_cast<A>(i - j));
      s1 += own ? g0 : V{};
      d1 += own ? p : V{};
      i = b + len;
    }
    double bs = hsum(s0 + s1), bd = hsum(d0 + d1);
    for (; i < b + len; ++i) {
      A g = Tr::to_a(dy[i]);
      if constexpr (HasW) g *= Wt[i];
      bs += static_cast<double>(g);
      bd += static_cast<double>(g * (Tr::to_a(x[i]) - m));
    }
    s += bs;
    d += bd;
  }
  out[0] = s;
  out[1] = d;
}

template <class T>
void run_dot(const T* x, const T* dy, i64 n, typename VT<T>::A m, const typename VT<T>::A* Wt,
             double* out) {
  if (Wt)
    run_dot_impl<T, true>(x, dy, n, m, Wt, out);
  else
    run_dot_impl<T, false>(x, dy, n, m, Wt, out);
}

// S[j] += sum dy, D[j] += sum dy * (x - K[j]) over a (nrows x wd) matrix with row stride ld
// plus a partial last row of `tail` elements (see strip_pass).
template <class T>
void strip_dot(const T* x, const T* dy, i64 nrows, i64 ld, i64 wd, i64 tail,
               const typename VT<T>::A* K, typename VT<T>::A* S, typename VT<T>::A* D) {
  using Tr = VT<T>;
  using A = typename Tr::A;
  using V = typename Tr::V;
  constexpr i64 W = Tr::W;
  i64 j = 0;
  for (; j + W <= wd; j += W) {
    const V k0 = VT<A>::load(K + j);
    V s0 = VT<A>::load(S + j), d0 = VT<A>::load(D + j);
    for (i64 r = 0; r < nrows; ++r) {
      const V g = Tr::load(dy + r * ld + j);
      s0 += g;
      d0 += g * (Tr::load(x + r * ld + j) - k0);
    }
    VT<A>::store(S + j, s0);
    VT<A>::store(D + j, d0);
  }
  for (; j < wd; ++j) {
    A s = A(0), d = A(0);
    for (i64 r = 0; r < nrows; ++r) {
      const A g = Tr::to_a(dy[r * ld + j]);
      s += g;
      d += g * (Tr::to_a(x[r * ld + j]) - K[j]);
    }
    S[j] += s;
    D[j] += d;
  }
  const i64 last = nrows * ld;
  for (i64 t = 0; t < tail; ++t) {
    const A g = Tr::to_a(dy[last + t]);
    S[t] += g;
    D[t] += g * (Tr::to_a(x[last + t]) - K[t]);
  }
}

// strip_dot for wide rows (wd >= kRowPeriod), four rows at a time (see row_block_pass).
template <class T>
void row_block_dot(const T* x, const T* dy, i64 nrows, i64 ld, i64 wd, i64 tail,
                   const typename VT<T>::A* K, typename VT<T>::A* S, typename VT<T>::A* D) {
  using Tr = VT<T>;
  using A = typename Tr::A;
  using V = typename Tr::V;
  constexpr i64 W = Tr::W;
  i64 r = 0;
  for (; r + 4 <= nrows; r += 4) {
    const i64 o0 = r * ld, o1 = o0 + ld, o2 = o1 + ld, o3 = o2 + ld;
    i64 j = 0;
    for (; j + W <= wd; j += W) {
      const V k = VT<A>::load(K + j);
      const V g0 = Tr::load(dy + o0 + j), g1 = Tr::load(dy + o1 + j);
      const V g2 = Tr::load(dy + o2 + j), g3 = Tr::load(dy + o3 + j);
      VT<A>::store(S + j, VT<A>::load(S + j) + ((g0 + g1) + (g2 + g3)));
      VT<A>::store(D + j, VT<A>::load(D + j) + ((g0 * (Tr::load(x + o0 + j) - k) +
                                                  g1 * (Tr::load(x + o1 + j) - k)) +
                                                 (g2 * (Tr::load(x + o2 + j) - k) +
                                                  g3 * (Tr::load(x + o3 + j) - k))));
    }
    for (; j < wd; ++j)
      for (const i64 o : {o0, o1, o2, o3}) {
        const A g = Tr::to_a(dy[o + j]);
        S[j] += g;
        D[j] += g * (Tr::to_a(x[o + j]) - K[j]);
      }
  }
  for (; r <= nrows; ++r) {  // the last rows (fewer than four) and the partial row
    const i64 o = r * ld, n = r < nrows ? wd : tail;
    i64 j = 0;
    for (; j + W <= n; j += W) {
      const V g = Tr::load(dy + o + j);
      VT<A>::store(S + j, VT<A>::load(S + j) + g);
      VT<A>::store(D + j, VT<A>::load(D + j) + g * (Tr::load(x + o + j) - VT<A>::load(K + j)));
    }
    for (; j < n; ++j) {
      const A g = Tr::to_a(dy[o + j]);
      S[j] += g;
      D[j] += g * (Tr::to_a(x[o + j]) - K[j]);
    }
  }
}

template <class T>
void cl_dot(const T* x, const T* dy, i64 rows, i64 C, const typename VT<T>::A* M,
            typename VT<T>::A* scratch, double* sdy, double* sdx) {
  using A = typename VT<T>::A;
  const i64 P = cl_stat_period<T>(C);
  const i64 L = P ? P : C;
  A* K = scratch;
  A* S = scratch + L;
  A* D = scratch + 2 * L;
  std::memcpy(K, M, static_cast<std::size_t>(C) * sizeof(A));
  if (P) expand_period(K, C, K, P);
  const i64 R = cl_block_rows(rows, C);
  for (i64 r0 = 0; r0 < rows; r0 += R) {
    const i64 nr = imin(R, rows - r0);
    const i64 n = nr * C;
    const i64 nrows = P ? n / P : nr, tail = P ? n - (n / P) * P : 0;
    for (i64 p = 0; p < L; ++p) S[p] = D[p] = A(0);
    if (L >= kRowPeriod)
      row_block_dot(x + r0 * C, dy + r0 * C, nrows, L, L, tail, K, S, D);
    else
      strip_dot(x + r0 * C, dy + r0 * C, nrows, L, L, tail, K, S, D);
    for (i64 c = 0; c < C; ++c) {
      double s = 0.0, d = 0.0;
      for (i64 p = c; p < L; p += C) {
        s += static_cast<double>(S[p]);
        d += static_cast<double>(D[p]);
      }
      sdy[c] += s;
      sdx[c] += d;
    }
  }
}

// A tile of R rows (row stride ld) by n columns, each element read once. Dots: per row r,
// out[2r] = sum dy * W and out[2r+1] = sum dy * W * (x - M[r]) (run_dot's blocks and sums).
// Column sums: G[j] += sum_r dy * (x - M[r]) * S[r] and, HasB, B[j] += sum_r dy -- G and B are
// loaded and stored once per tile instead of once per row.
template <class T, int R, bool Dots, bool HasW, bool HasB>
void tile_dot_cols_impl(const T* x, const T* dy, i64 ld, i64 n, const typename VT<T>::A* M,
                        const typename VT<T>::A* S, const typename VT<T>::A* Wt, double* out,
                        typename VT<T>::A* G, typename VT<T>::A* B) {
  using Tr = VT<T>;
  using A = typename Tr::A;
  using V = typename Tr::V;
  constexpr i64 W = Tr::W;
  V mv[R], sv[R];
  double ds[R], dd[R];
  for (int r = 0; r < R; ++r) {
    mv[r] = splat<V>(M[r]);
    sv[r] = splat<V>(S[r]);
    ds[r] = dd[r] = 0.0;
  }
  for (i64 b = 0; b < n; b += kBlock) {
    const i64 end = b + imin(kBlock, n - b);
    V s[R], d[R];
    for (int r = 0; r < R; ++r) s[r] = d[r] = V{};
    i64 j = b;
    for (; j + W <= end; j += W) {
      V gacc = VT<A>::load(G + j), bacc{}, wv{};
      if constexpr (HasB) bacc = VT<A>::load(B + j);
      if constexpr (Dots && HasW) wv = VT<A>::load(Wt + j);
      for (int r = 0; r < R; ++r) {
        const V g = Tr::load(dy + r * ld + j);
        const V xc = Tr::load(x + r * ld + j) - mv[r];
        if constexpr (Dots) {
          const V gw = HasW ? g * wv : g;
          s[r] += gw;
          d[r] += gw * xc;
        }
        gacc += g * (xc * sv[r]);
        if constexpr (HasB) bacc += g;
      }
      VT<A>::store(G + j, gacc);
      if constexpr (HasB) VT<A>::store(B + j, bacc);
    }
    for (int r = 0; r < R; ++r) {
      double bs = 0.0, bd = 0.0;
      if constexpr (Dots) {
        bs = hsum(s[r]);
        bd = hsum(d[r]);
      }
      for (i64 t = j; t < end; ++t) {
        const A g = Tr::to_a(dy[r * ld + t]);
        const A xc = Tr::to_a(x[r * ld + t]) - M[r];
        if constexpr (Dots) {
          const A gw = HasW ? g * Wt[t] : g;
          bs += static_cast<double>(gw);
          bd += static_cast<double>(gw * xc);
        }
        G[t] += g * (xc * S[r]);
        if constexpr (HasB) B[t] += g;
      }
      ds[r] += bs;
      dd[r] += bd;
    }
  }
  if constexpr (Dots)
    for (int r = 0; r < R; ++r) {
      out[2 * r] = ds[r];
      out[2 * r + 1] = dd[r];
    }
}

template <class T, int R, bool HasB>
void tile_dot_cols_r(const T* x, const T* dy, i64 ld, i64 n, const typename VT<T>::A* M,
                     const typename VT<T>::A* S, const typename VT<T>::A* Wt, double* out,
                     typename VT<T>::A* G, typename VT<T>::A* B) {
  if (!out)
    tile_dot_cols_impl<T, R, false, false, HasB>(x, dy, ld, n, M, S, Wt, out, G, B);
  else if (Wt)
    tile_dot_cols_impl<T, R, true, true, HasB>(x, dy, ld, n, M, S, Wt, out, G, B);
  else
    tile_dot_cols_impl<T, R, true, false, HasB>(x, dy, ld, n, M, S, Wt, out, G, B);
}

constexpr bool kSweep8 = NORMCPP_VBYTES >= 32;

template <class T>
void tile_dot_cols(const T* x, const T* dy, i64 nr, i64 ld, i64 n, const typename VT<T>::A* M,
                   const typename VT<T>::A* S, const typename VT<T>::A* Wt, double* out,
                   typename VT<T>::A* G, typename VT<T>::A* B) {
  constexpr int R = 4;
  // Column sums only: 8 rows a sweep where the level has the registers for their 16
  // coefficient vectors (AVX2: 2490-2661 vs 2652-2776 us for LayerNorm backward (64,197,384);
  // the 16-byte levels, with 16 registers or NEON's 32 of 4 lanes, take two sweeps of 4).
  if (kSweep8 && nr == 2 * R && !out) {
    if (B)
      tile_dot_cols_impl<T, 2 * R, false, false, true>(x, dy, ld, n, M, S, Wt, out, G, B);
    else
      tile_dot_cols_impl<T, 2 * R, false, false, false>(x, dy, ld, n, M, S, Wt, out, G, B);
    return;
  }
  i64 r = 0;
  for (; r + R <= nr; r += R) {
    double* o = out ? out + 2 * r : nullptr;
    if (B)
      tile_dot_cols_r<T, R, true>(x + r * ld, dy + r * ld, ld, n, M + r, S + r, Wt, o, G, B);
    else
      tile_dot_cols_r<T, R, false>(x + r * ld, dy + r * ld, ld, n, M + r, S + r, Wt, o, G, B);
  }
  for (; r < nr; ++r) {
    double* o = out ? out + 2 * r : nullptr;
    if (B)
      tile_dot_cols_r<T, 1, true>(x + r * ld, dy + r * ld, ld, n, M + r, S + r, Wt, o, G, B);
    else
      tile_dot_cols_r<T, 1, false>(x + r * ld, dy + r * ld, ld, n, M + r, S + r, Wt, o, G, B);
  }
}

template <class T, bool HasW>
void bwd_row_impl(const T* x, const T* dy, T* dx, i64 n, typename VT<T>::A m,
                  typename VT<T>::A a, const typename VT<T>::A* Wt, typename VT<T>::A b,
                  typename VT<T>::A c, bool stream) {
  using Tr = VT<T>;
  using A = typename Tr::A;
  using V = typename Tr::V;
  const V mv = splat<V>(m), av = splat<V>(a), bv = splat<V>(b), cv = splat<V>(c);
  const bool grid = !HasW || same_line_offset(Wt, dx);  // as in apply_row_impl
  write_row(
      dx, n, stream,
      [&](i64 i) NORMCPP_ALWAYS_INLINE {
        // Each product feeds its own sum, so the compiler's FMA contraction is the same in
        // every copy of this expression (bitwise-equal streamed and plain rows).
        V g = Tr::load(dy + i) * av;
        if constexpr (HasW) g *= VT<A>::load(Wt + i);
        return ((Tr::load(x + i) - mv) * bv + cv) + g;
      },
      [&](i64 i) {
        A g = Tr::to_a(dy[i]) * a;
        if constexpr (HasW) g *= Wt[i];
        return Tr::from_a(((Tr::to_a(x[i]) - m) * b + c) + g);
      },
      grid);
}

template <class T>
void bwd_row(const T* x, const T* dy, T* dx, i64 n, typename VT<T>::A m, typename VT<T>::A a,
             const typename VT<T>::A* Wt, typename VT<T>::A b, typename VT<T>::A c,
             bool stream) {
  if (Wt)
    bwd_row_impl<T, true>(x, dy, dx, n, m, a, Wt, b, c, stream);
  else
    bwd_row_impl<T, false>(x, dy, dx, n, m, a, Wt, b, c, stream);
}

// TypedKernels::slots_bwd: GroupNorm/InstanceNorm backward of small NCHW slots, each read
// once from memory (its sums, then dx while it is in cache) with no call through the table
// per plane.
template <class T>
NORMCPP_NOINLINE void slots_bwd(const T* x, const T* dy, T* dx, i64 nslots, i64 R, i64 S,
                                i64 c0, i64 C, const double* w, const double* mean,
                                const double* invstd, double* sdy, double* sdx, bool stream) {
  using A = typename VT<T>::A;
  const i64 E = R * S;
  const double M = static_cast<double>(E);
  i64 c = c0;
  for (i64 i = 0; i < nslots; ++i) {
    const i64 o = i * E;
    const A m = static_cast<A>(mean[i]);
    double Sg = 0.0, Dg = 0.0;
    i64 cj = c;
    for (i64 j = 0; j < R; ++j) {
      double s[2];
      run_dot_impl<T, false>(x + o + j * S, dy + o + j * S, S, m, nullptr, s);
      sdy[i * R + j] = s[0];
      sdx[i * R + j] = s[1];
      const double wc = w ? w[cj] : 1.0;
      Sg += wc * s[0];
      Dg += wc * s[1];
      if (++cj == C) cj = 0;
    }
    const double r = invstd[i];
    const A b = static_cast<A>(-r * r * r * Dg / M), cc = static_cast<A>(-r * Sg / M);
    for (i64 j = 0; j < R; ++j) {
      const A a = static_cast<A>((w ? w[c] : 1.0) * r);
      bwd_row_impl<T, false>(x + o + j * S, dy + o + j * S, dx + o + j * S, S, m, a, nullptr, b,
                             cc, stream);
      if (++c == C) c = 0;
    }
  }
}

// Column sums and dx of R rows of length L (stride L) in one sweep, once the rows' sums are
// known: per column vector, G += dy * (x - m) * s and B += dy row after row (the order of
// tile_dot_cols: the same bits), and each row's dx = ((x - m) * b + c) + dy * s * w (bwd_row's
// expression, lane by lane: the same bits). One read of x and dy from L1 where tile_dot_cols
// then bwd_row make two (in L1, 6.4 vs 7.8 cycles a vector of a row on Zen 4). Columns [h, e)
// are written by streaming stores, vectors starting on the grid h + k W (h: the columns before
// the rows' dx reach a cache line; every row's must then be the same); columns [0, h) and the
// rest after the last whole vector are partial vectors: loaded whole (a row has at least W
// columns), added to G and B and stored lane by lane only where they are theirs, so no column
// is counted or written twice. pf > 0: the same columns of the R rows pf elements further on
// are prefetched into L2, so that memory reads the next rows while this sweep computes (see
// bwd_rows_impl).
template <class T, int R, bool HasW, bool HasB>
NORMCPP_ALWAYS_INLINE inline void grad_sweep(const T* x, const T* dy, T* dx, i64 L, i64 h,
                                             i64 e, i64 pf, const typename VT<T>::A* M,
                                             const typename VT<T>::A* S,
                                             const typename VT<T>::A* Bc,
                                             const typename VT<T>::A* Cc,
                                             const typename VT<T>::A* Wt, typename VT<T>::A* G,
                                             typename VT<T>::A* B) {
  using Tr = VT<T>;
  using A = typename Tr::A;
  using V = typename Tr::V;
  constexpr i64 W = Tr::W;
  // One prefetch per 64 bytes of a row.
  constexpr i64 kPfMask = W * static_cast<i64>(sizeof(T)) >= 64 ? 0 : 64 / (W * sizeof(T)) - 1;
  V mv[R], sv[R], bv[R], cv[R];
  for (int r = 0; r < R; ++r) {
    mv[r] = splat<V>(M[r]);
    sv[r] = splat<V>(S[r]);
    bv[r] = splat<V>(Bc[r]);
    cv[r] = splat<V>(Cc[r]);
  }
  const V lane = lane_index<V, A>();
  enum { kPlain, kStream, kPart };
  i64 lo = 0, hi = W;  // a kPart vector's own lanes
  const auto col = [&](i64 j, auto kind) NORMCPP_ALWAYS_INLINE {
    constexpr int K = decltype(kind)::value;
    V gacc = VT<A>::load(G + j), bacc{}, wv{};
    if constexpr (HasB) bacc = VT<A>::load(B + j);
    if constexpr (HasW) wv = VT<A>::load(Wt + j);
    if (pf > 0 && (K == kPart || ((j / W) & kPfMask) == 0))
      for (int r = 0; r < R; ++r) {
        __builtin_prefetch(x + pf + r * L + j, 0, 2);
        __builtin_prefetch(dy + pf + r * L + j, 0, 2);
        // dx's lines too where they are stored plainly (each store would otherwise wait for
        // its line: (50000,100) float32 at 1 thread 3986-4363 -> 3125-3158 us).
        if constexpr (K != kStream) __builtin_prefetch(dx + pf + r * L + j, 1, 2);
        if constexpr (K == kPart) {  // the line of its last column too
          __builtin_prefetch(x + pf + r * L + j + W - 1, 0, 2);
          __builtin_prefetch(dy + pf + r * L + j + W - 1, 0, 2);
          __builtin_prefetch(dx + pf + r * L + j + W - 1, 1, 2);
        }
      }
    for (int r = 0; r < R; ++r) {
      const V g = Tr::load(dy + r * L + j);
      const V xc = Tr::load(x + r * L + j) - mv[r];
      V gs = g * sv[r];
      if constexpr (HasW) gs *= wv;
      const V v = (xc * bv[r] + cv[r]) + gs;
      if constexpr (K == kPart) {
        const auto own =
            (lane >= splat<V>(static_cast<A>(lo))) & (lane < splat<V>(static_cast<A>(hi)));
        const V gn = gacc + g * (xc * sv[r]);
        gacc = own ? gn : gacc;
        if constexpr (HasB) {
          const V bn = bacc + g;
          bacc = own ? bn : bacc;
        }
        for (i64 k = lo; k < hi; ++k) dx[r * L + j + k] = Tr::from_a(v[k]);
      } else {
        gacc += g * (xc * sv[r]);
        if constexpr (HasB) bacc += g;
        if constexpr (K == kStream)
          stream_store(dx + r * L + j, v);
        else
          Tr::store(dx + r * L + j, v);
      }
    }
    VT<A>::store(G + j, gacc);
    if constexpr (HasB) VT<A>::store(B + j, bacc);
  };
  using Plain = std::integral_constant<int, kPlain>;
  using Part = std::integral_constant<int, kPart>;
  i64 j = 0;
  if (L >= W) {
    for (; j + W <= h; j += W) col(j, Plain{});
    if (j < h) {
      lo = 0;
      hi = h - j;
      col(j, Part{});
    }
    j = h;
    if constexpr (kCanStream<T>)
      for (; j < e; j += W) col(j, std::integral_constant<int, kStream>{});
    for (; j + W <= L; j += W) col(j, Plain{});
    if (j < L) {
      lo = j - (L - W);
      hi = W;
      col(L - W, Part{});
    }
    return;
  }
  for (int r = 0; r < R; ++r)
    for (i64 t = 0; t < L; ++t) {
      const A g = Tr::to_a(dy[r * L + t]);
      const A xc = Tr::to_a(x[r * L + t]) - M[r];
      G[t] += g * (xc * S[r]);
      if constexpr (HasB) B[t] += g;
      A gs = g * S[r];
      if constexpr (HasW) gs *= Wt[t];
      dx[r * L + t] = Tr::from_a((xc * Bc[r] + Cc[r]) + gs);
    }
}

// Rows of a sweep: as many as the level has registers for (4 coefficient vectors a row).
constexpr int kSweepRows = NORMCPP_VBYTES >= 64 ? 4 : 2;

// LayerNorm/RMSNorm backward of short rows, (K - 1) W < L <= K W (K <= kShortRowVecs): K
// vectors a row, loaded from the row's start (the last one's lanes past the row belong to the
// next rows, or to a copy of the row padded with zeros where the vectors would pass the end
// of the rows), those lanes masked out of the row's two sums; column sums in registers, added
// row after row; dx stored whole where the spare lanes land on rows of this call not yet
// written (they are written again in turn) and dx overlaps no input, otherwise through a
// padded copy. Through run_dot and the sweep a row of 32 float32 took ~56 cycles in cache;
// scalar, a row of L = 10 took ~90 (sums in double one element at a time, column sums in
// memory).
constexpr int kShortRowVecs = NORMCPP_VBYTES >= 64 ? 4 : 2;

template <class T, bool HasW, int K>
NORMCPP_ALWAYS_INLINE inline void short_bwd_rows(const T* x, const T* dy, T* dx, i64 rows,
                                                 i64 ahead, i64 L, const typename VT<T>::A* M,
                                                 const typename VT<T>::A* I,
                                                 const double* invstd,
                                                 const typename VT<T>::A* Wt, bool centered,
                                                 typename VT<T>::A* G, typename VT<T>::A* B) {
  using Tr = VT<T>;
  using A = typename Tr::A;
  using V = typename Tr::V;
  constexpr i64 W = Tr::W;
  const double n = static_cast<double>(L);
  // The last vector's own lanes.
  const auto own = lane_index<V, A>() < splat<V>(static_cast<A>(L - (K - 1) * W));
  V wv[K], gacc[K], bacc[K];
  for (int k = 0; k < K; ++k) {
    wv[k] = splat<V>(A(1));
    gacc[k] = bacc[k] = V{};
  }
  for (i64 t = 0; t < L; ++t) {
    if constexpr (HasW) wv[t / W][t % W] = Wt[t];
    if (G) gacc[t / W][t % W] = G[t];
    if (B) bacc[t / W][t % W] = B[t];
  }
  const i64 total = rows * L;
  const auto overlaps = [&](const T* in) { return dx < in + total && in < dx + total; };
  const bool whole_stores = !overlaps(x) && !overlaps(dy);
  // Rows whose vectors lie inside the rows: r * L + K * W <= total.
  const i64 inside = total >= K * W ? (total - K * W) / L + 1 : 0;
  T xb[K * W], gb[K * W], db[K * W];
  // Rows of 256 bytes or more prefetch the lines of the row 16 rows on (x, dy and dx) into L2:
  // LayerNorm backward of 3M float32 in rows of 64, 1 thread, 1241-1274 us by run_dot and the
  // sweep, 1334-1357 as here without the prefetch, 952-958 with it. (Shorter rows were not
  // faster with it: L = 32 2341-2403 without, 2461-2542 with.)
  const i64 rb = L * static_cast<i64>(sizeof(T));  // bytes a row
  const i64 pf_rows = rb >= 256 ? 16 : 0;
  for (i64 r = 0; r < rows; ++r) {
    const T* xr = x + r * L;
    const T* gr = dy + r * L;
    const bool in = r < inside;
    if (pf_rows && r + pf_rows < rows + ahead)  // rows the caller says may be read
      for (i64 b = 0; b < rb; b += 64) {
        __builtin_prefetch(reinterpret_cast<const char*>(xr + pf_rows * L) + b, 0, 2);
        __builtin_prefetch(reinterpret_cast<const char*>(gr + pf_rows * L) + b, 0, 2);
        __builtin_prefetch(reinterpret_cast<const char*>(dx + (r + pf_rows) * L) + b, 1, 2);
      }
    if (!in) {
      for (i64 t = 0; t < K * W; ++t) {
        xb[t] = t < L ? xr[t] : T{};
        gb[t] = t < L ? gr[t] : T{};
      }
      xr = xb;
      gr = gb;
    }
    const V mv = splat<V>(M[r]);
    V g[K], xc[K], gw[K];
#pragma GCC unroll 4
    for (int k = 0; k < K; ++k) {
      g[k] = Tr::load(gr + k * W);
      xc[k] = Tr::load(xr + k * W) - mv;
      gw[k] = g[k];
      if constexpr (HasW) gw[k] *= wv[k];
    }
    V sv = own ? gw[K - 1] : V{}, dv = own ? gw[K - 1] * xc[K - 1] : V{};
#pragma GCC unroll 4
    for (int k = 0; k < K - 1; ++k) {
      sv += gw[k];
      dv += gw[k] * xc[k];
    }
    const double s = 0.0 + hsum(sv), d = 0.0 + hsum(dv);
    const double iv = invstd[r];
    const V bv = splat<V>(static_cast<A>(-iv * iv * iv * d / n));
    const V cv = splat<V>(static_cast<A>(centered ? -iv * s / n : 0.0));
    const V ivv = splat<V>(I[r]);
    T* out = in && whole_stores ? dx + r * L : db;
#pragma GCC unroll 4
    for (int k = 0; k < K; ++k) {
      gacc[k] += g[k] * (xc[k] * ivv);
      bacc[k] += g[k];
      V gs = g[k] * ivv;
      if constexpr (HasW) gs *= wv[k];
      Tr::store(out + k * W, (xc[k] * bv + cv) + gs);
    }
    if (out == db)
      for (i64 t = 0; t < L; ++t) dx[r * L + t] = db[t];
  }
  for (i64 t = 0; t < L; ++t) {
    if (G) G[t] = gacc[t / W][t % W];
    if (B) B[t] = bacc[t / W][t % W];
  }
}

template <class T, bool HasW>
NORMCPP_NOINLINE void bwd_rows_impl(const T* x, const T* dy, T* dx, i64 rows, i64 ahead, i64 L,
                                    i64 tile, bool seq, const typename VT<T>::A* M,
                                    const typename VT<T>::A* I, const double* invstd,
                                    const typename VT<T>::A* Wt, bool centered,
                                    typename VT<T>::A* G, typename VT<T>::A* B, bool stream) {
  using A = typename VT<T>::A;
  switch (L > 0 ? (L + VT<T>::W - 1) / VT<T>::W : 0) {
    case 1:
      return short_bwd_rows<T, HasW, 1>(x, dy, dx, rows, ahead, L, M, I, invstd, Wt, centered,
                                        G, B);
    case 2:
      return short_bwd_rows<T, HasW, 2>(x, dy, dx, rows, ahead, L, M, I, invstd, Wt, centered,
                                        G, B);
    case 3:
      if constexpr (kShortRowVecs >= 3)
        return short_bwd_rows<T, HasW, 3>(x, dy, dx, rows, ahead, L, M, I, invstd, Wt, centered,
                                          G, B);
      break;
    case 4:
      if constexpr (kShortRowVecs >= 4)
        return short_bwd_rows<T, HasW, 4>(x, dy, dx, rows, ahead, L, M, I, invstd, Wt, centered,
                                          G, B);
      break;
    default:
      break;
  }
  const double n = static_cast<double>(L);
  double sums[16];
  tile = imin(imax(tile, 1), 8);  // the contract's bounds (sums above holds 8 rows)
  seq = seq || !G;                 // without column sums, only run_dot gives the row sums
  // Row by row with column sums (tensors read from memory): per tile, the rows' sums by
  // run_dot, then column sums and dx in one sweep (grad_sweep) which prefetches the next tile
  // into L2. Without the prefetch the tile's memory reads and its sweep take turns; with it
  // they overlap. LayerNorm backward (64,197,384) float32, 1 thread, min us of 3 alternations:
  // 2370-2699 (sweep alone; the three-pass tiles were the same) -> 1737-1922 (L2 hint; the L1
  // hint evicts the tile being swept: 2622-2997); (8,512,768): 1219-1355 -> 1016-1083.
  // Streamed rows that all start on a cache line are swept kSweepRows at a time; others one
  // at a time, each on its own grid of lines (whose first and last lines are stored plainly).
  // Those are streamed only from kSeamSweepBytes on (as in write_row, streaming between plain
  // lines every few lines is slow): 5M float32 elements, 1 thread, streamed vs plain
  // (kSweepRows at a time), L = 100 4475-6458 vs 4131-4165 us, 250 3248-3365 vs 4205-4275, 500
  // 2831 vs 3625.
  constexpr i64 kLine = 64 / static_cast<i64>(sizeof(T));
  constexpr auto kSz = static_cast<i64>(sizeof(T));
  const i64 nv = L - L % VT<T>::W;
  const auto dxa = reinterpret_cast<std::uintptr_t>(dx);
  const bool rows_lined = dxa % 64 == 0 && L * kSz % 64 == 0;
  const bool streamed = kCanStream<T> && stream && nv >= 4 * kLine && dxa % sizeof(T) == 0 &&
                        (rows_lined || L * kSz >= kSeamSweepBytes);
  const bool sweep = seq && G;
  const bool lined = !streamed || rows_lined;
  const i64 e = streamed && lined ? nv / kLine * kLine : 0;
  const i64 readable = rows + imax(ahead, 0);
  for (i64 t0 = 0; t0 < rows; t0 += tile) {
    const i64 nr = imin(tile, rows - t0);
    const T* xt = x + t0 * L;
    const T* dyt = dy + t0 * L;
    if (seq)
      for (i64 r = 0; r < nr; ++r)
        run_dot_impl<T, HasW>(xt + r * L, dyt + r * L, L, M[t0 + r], Wt, sums + 2 * r);
    if (G && !sweep)
      tile_dot_cols(xt, dyt, nr, L, L, M + t0, I + t0, Wt, seq ? nullptr : sums, G, B);
    A bc[8], cc[8];
    for (i64 r = 0; r < nr; ++r) {
      const double iv = invstd[t0 + r];
      bc[r] = static_cast<A>(-iv * iv * iv * sums[2 * r + 1] / n);
      cc[r] = static_cast<A>(centered ? -iv * sums[2 * r] / n : 0.0);
    }
    if (!sweep) {
      for (i64 r = 0; r < nr; ++r)
        bwd_row_impl<T, HasW>(xt + r * L, dyt + r * L, dx + (t0 + r) * L, L, M[t0 + r],
                              I[t0 + r], Wt, bc[r], cc[r], stream);
      continue;
    }
    T* dxt = dx + t0 * L;
    const auto run = [&](i64 r, auto rows_c, i64 h, i64 end) NORMCPP_ALWAYS_INLINE {
      constexpr int Rc = decltype(rows_c)::value;
      // The same rows of the next tile, where they exist.
      const i64 pf = t0 + r + nr + Rc <= readable ? nr * L : 0;
      if (B)
        grad_sweep<T, Rc, HasW, true>(xt + r * L, dyt + r * L, dxt + r * L, L, h, end, pf,
                                      M + t0 + r, I + t0 + r, bc + r, cc + r, Wt, G, B);
      else
        grad_sweep<T, Rc, HasW, false>(xt + r * L, dyt + r * L, dxt + r * L, L, h, end, pf,
                                       M + t0 + r, I + t0 + r, bc + r, cc + r, Wt, G, B);
    };
    using One = std::integral_constant<int, 1>;
    i64 r = 0;
    if (lined)
      for (; r + kSweepRows <= nr; r += kSweepRows)
        run(r, std::integral_constant<int, kSweepRows>{}, 0, e);
    for (; r < nr; ++r) {
      if (lined) {
        run(r, One{}, 0, e);
        continue;
      }
      const auto a = reinterpret_cast<std::uintptr_t>(dxt + r * L);
      const i64 h = static_cast<i64>((64 - a % 64) % 64) / kSz;
      run(r, One{}, h, h + (L - h) / kLine * kLine);
    }
  }
}

template <class T>
void bwd_rows(const T* x, const T* dy, T* dx, i64 rows, i64 ahead, i64 L, i64 tile, bool seq,
              const typename VT<T>::A* M, const typename VT<T>::A* I, const double* invstd,
              const typename VT<T>::A* Wt, bool centered, typename VT<T>::A* G,
              typename VT<T>::A* B, bool stream) {
  if (Wt)
    bwd_rows_impl<T, true>(x, dy, dx, rows, ahead, L, tile, seq, M, I, invstd, Wt, centered, G,
                           B, stream);
  else
    bwd_rows_impl<T, false>(x, dy, dx, rows, ahead, L, tile, seq, M, I, invstd, Wt, centered,
                            G, B, stream);
}

// bwd_cl's period rows (P = G * W) with the coefficients held in registers, as cl_group_rows
// for the forward: the same expression as bwd_cl's vec, so the same values. At most
// kBwdRegVecs vectors a period (4 coefficient vectors each, beside x and dy).
constexpr int kBwdRegVecs = NORMCPP_VBYTES >= 64 ? 4 : 2;
template <int G, bool Stream, class T>
NORMCPP_ALWAYS_INLINE inline void cl_bwd_group_rows(const T* x, const T* dy, T* dx, i64 nrows,
                                                    i64 P, const typename VT<T>::A* M,
                                                    const typename VT<T>::A* Av,
                                                    const typename VT<T>::A* Bv,
                                                    const typename VT<T>::A* Cv) {
  using Tr = VT<T>;
  using A = typename Tr::A;
  using V = typename Tr::V;
  constexpr i64 W = Tr::W;
  V m[G], a[G], b[G], c[G];
#pragma GCC unroll 4
  for (int g = 0; g < G; ++g) {
    m[g] = VT<A>::load(M + g * W);
    a[g] = VT<A>::load(Av + g * W);
    b[g] = VT<A>::load(Bv + g * W);
    c[g] = VT<A>::load(Cv + g * W);
  }
  for (i64 r = 0; r < nrows; ++r) {
    const i64 o = r * P;
#pragma GCC unroll 4
    for (int g = 0; g < G; ++g) {
      const V v = ((Tr::load(x + o + g * W) - m[g]) * b[g] + c[g]) +
                  Tr::load(dy + o + g * W) * a[g];
      if constexpr (Stream)
        stream_store(dx + o + g * W, v);
      else
        Tr::store(dx + o + g * W, v);
    }
  }
}

template <class T>
void bwd_cl(const T* x, const T* dy, T* dx, i64 rows, i64 C, const typename VT<T>::A* M,
            const typename VT<T>::A* Av, const typename VT<T>::A* Bv,
            const typename VT<T>::A* Cv, typename VT<T>::A* scratch, bool stream) {
  using Tr = VT<T>;
  using A = typename Tr::A;
  const i64 P = cl_period<T>(C);
  // Element i with the coefficients at channel position o. dx = (x - M) * B + C + dy * A: each
  // product feeds its own sum (one FMA contraction for every copy of the expression, so
  // streamed and plain outputs are bitwise equal).
  const A *Mp = M, *Ap = Av, *Bp = Bv, *Cp = Cv;
  const auto vec = [&](i64 i, i64 o) NORMCPP_ALWAYS_INLINE {
    return ((Tr::load(x + i) - VT<A>::load(Mp + o)) * VT<A>::load(Bp + o) +
            VT<A>::load(Cp + o)) +
           Tr::load(dy + i) * VT<A>::load(Ap + o);
  };
  const auto one = [&](i64 i, i64 o) {
    return Tr::from_a(((Tr::to_a(x[i]) - Mp[o]) * Bp[o] + Cp[o]) + Tr::to_a(dy[i]) * Ap[o]);
  };
  if (P) {
    constexpr i64 X = kPeriodExt<T>;  // patterns over one period, extended (expand_period_ext)
    const i64 E = P + X;
    expand_period_ext(M, C, scratch, P, X);
    expand_period_ext(Av, C, scratch + E, P, X);
    expand_period_ext(Bv, C, scratch + 2 * E, P, X);
    expand_period_ext(Cv, C, scratch + 3 * E, P, X);
    Mp = scratch;
    Ap = scratch + E;
    Bp = scratch + 2 * E;
    Cp = scratch + 3 * E;
    // Periods of up to kBwdRegVecs vectors: whole period rows with the coefficients in
    // registers (from h, the first line boundary, where streamed), the rest as before.
    const auto group = [&](auto st, i64 h, i64 nrows) NORMCPP_ALWAYS_INLINE {
      constexpr bool S = decltype(st)::value;
      if constexpr (S && !kCanStream<T>)
        return false;
      else
        return with_vecs<kBwdRegVecs>(P / Tr::W, [&](auto G) NORMCPP_ALWAYS_INLINE {
          cl_bwd_group_rows<decltype(G)::value, S>(x + h, dy + h, dx + h, nrows, P, Mp + h,
                                                   Ap + h, Bp + h, Cp + h);
        });
    };
    const i64 n = rows * C;
    if ((!stream || !kCanStream<T>) && group(std::false_type{}, 0, n / P)) {
      const i64 i0 = n / P * P;
      write_row(
          dx + i0, n - i0, false, [&](i64 o) NORMCPP_ALWAYS_INLINE { return vec(i0 + o, o); },
          [&](i64 o) { return one(i0 + o, o); });
      return;
    }
    cl_periodic_write(dx, n, P, stream, vec, one, PlainRows{},
                      [&](i64 h, i64 nrows) NORMCPP_ALWAYS_INLINE {
                        return group(std::true_type{}, h, nrows);
                      });
    return;
  }
  for (i64 i0 = 0; i0 < rows * C; i0 += C)  // wide channel counts: row by row
    write_row(
        dx + i0, C, stream, [&](i64 c) NORMCPP_ALWAYS_INLINE { return vec(i0 + c, c); },
        [&](i64 c) { return one(i0 + c, c); });
}

template <class T>
constexpr TypedKernels<T, typename VT<T>::A> typed() {
  return {&run_moments<T>, &run_sumsq<T>, &cl_scratch_elems<T>, &cl_moments<T>,
          &apply_scalar<T>, &apply_runs<T>, &apply_cl<T>,  &apply_row<T>,        &norm_rows<T>,
          &norm_slots<T>,
          &coefs<T>,        &run_dot<T>,
          &cl_dot<T>,       &tile_dot_cols<T>, &bwd_row<T>,          &slots_bwd<T>,
          &bwd_rows<T>,     &bwd_cl<T>,
          &short_rows<T>};
}

#define NORMCPP_STR2(x) #x
#define NORMCPP_STR(x) NORMCPP_STR2(x)

const KernelTable kTable = {NORMCPP_STR(NORMCPP_KNS), typed<half_t>(), typed<float>(),
                            typed<double>()};

}  // namespace

const KernelTable& table() { return kTable; }

}  // namespace NORMCPP_KNS
}  // namespace kernels
}  // namespace normcpp
