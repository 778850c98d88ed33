// Image kernels: fused normalize and exact per-channel statistics. Compiled once per ISA level
// like kernels.cpp (-DNORMCPP_KNS=<level> and that level's flags); everything lives in
// normcpp::kernels::<level> with helpers in an anonymous namespace, so no copy built with
// wider instructions can be picked by the linker for another level.
//
// Normalize: y = x * a[c] + b[c] (a = scale / std, b = -mean / std, from double), converting
// uint8/uint16/float16/float32 to float lanes (float64: double lanes, rounded once at the
// store) and storing float32 or float16. Integers are converted before any arithmetic, so
// nothing wraps. Error: one float32 rounding of a and b and one fused multiply-add, i.e.
// |y - y_exact| <= ~2 ulp(float32) of max(|x * a|, |b|) (float16 output: one more rounding).
// Layouts: same layout (a flat stream whose channel pattern repeats every lcm(C, lanes)
// elements, so coefficients load as vectors), channels-last -> planar and planar ->
// channels-last. Fast path for the common case, uint8 HWC -> CHW: C = 3 deinterleaves 16
// pixels from three 16-byte loads with 9 pshufb (AVX2 / AVX-512 levels) and widens each
// channel with vpmovzxbd; C = 4 reads 32-bit pixels and extracts channel c as
// (p >> 8c) & 255 in u32 lanes (every level); C = 1 is a flat conversion. Other cases go
// through 64-pixel tiles in L1. Measured (AVX2, data in cache, ns per value): uint8 -> float32
// HWC -> CHW 0.062 (C = 1), 0.11 (C = 3), 0.095 (C = 4), 0.41 (tiles; 1.2 when gathering lanes
// into vectors); HWC -> HWC 0.14. 32x224x224x3 uint8 -> float32 NCHW therefore runs at the
// speed of writing the output (bench/image_bench.py, bench/image_results.md).
// Statistics: uint8 0.07 ns/value, float32 0.5 ns/value (in cache).
//
// Integer statistics (uint8/uint16): exact. Lanes accumulate x in uint32 and x^2 in uint32
// (uint8) or uint64 (uint16) over blocks of <= 16384 elements (no lane can wrap: 16384 *
// 65535 < 2^32 and 16384 * 255^2 < 2^32), then fold into uint64 per channel. Channels-last
// data is read as a flat stream with period P = lcm(C, lanes) (widened to >= 2 vectors), one
// accumulator per period position, folded to channel p mod C.
//
// Float statistics (float16/32/64): accumulated in double lanes whatever the input, so float32
// data meets float64 accuracy. Blocks of <= 4096 elements (L1) get an exact two-pass (shift
// K = the block's first value per channel, block mean, then sum(d) and sum(d^2) with
// d = x - mean) and are merged with Chan's formula in double, in block order. min/max follow
// np.min/np.max: a NaN anywhere makes the channel's min and max NaN.
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#elif defined(__aarch64__)
#include <arm_neon.h>
#endif

#include "kernels/half.hpp"
#include "kernels/image_kernels.hpp"
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

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the uint8 C=4 path reads pixels as little-endian uint32"
#endif

// Internal helpers pass wide generic vectors by value; their ABI never crosses this file.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace normcpp {
namespace kernels {
namespace NORMCPP_KNS {
namespace {

using i64 = std::int64_t;
using u8 = std::uint8_t;
using u16 = std::uint16_t;
using u32 = std::uint32_t;
using u64 = std::uint64_t;

constexpr i64 W = NORMCPP_VBYTES / 4;   // float / uint32 lanes
constexpr i64 WD = NORMCPP_VBYTES / 8;  // double lanes
// Largest channel period (in elements) kept as per-position coefficients or accumulators.
constexpr i64 kMaxPeriod = 512;
// Elements per statistics block (see the file comment for the bounds it keeps).
constexpr i64 kIntBlock = 16384;
constexpr i64 kFloatBlock = 4096;

typedef float vf __attribute__((vector_size(NORMCPP_VBYTES)));
typedef double vd __attribute__((vector_size(NORMCPP_VBYTES)));       // WD doubles
typedef double vdw __attribute__((vector_size(2 * NORMCPP_VBYTES)));  // W doubles
typedef std::int32_t vi __attribute__((vector_size(NORMCPP_VBYTES)));
typedef std::int64_t vl __attribute__((vector_size(NORMCPP_VBYTES)));  // vd comparisons
typedef u32 vu __attribute__((vector_size(NORMCPP_VBYTES)));
typedef u64 vu64 __attribute__((vector_size(2 * NORMCPP_VBYTES)));   // W uint64
typedef u16 vh __attribute__((vector_size(NORMCPP_VBYTES / 2)));     // W uint16
typedef float vfh __attribute__((vector_size(NORMCPP_VBYTES / 2)));  // WD floats

// Unaligned loads and stores of any vector type (one vmovups each).
template <class V, class E>
inline V vload(const E* p) {
  V v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <class V, class E>
inline void vstore(E* p, const V& v) {
  std::memcpy(p, &v, sizeof v);
}
template <class V, class A>
inline V splat(A x) {
  return V{} + x;
}

inline i64 imin(i64 a, i64 b) { return a < b ? a : b; }
inline i64 imax(i64 a, i64 b) { return a > b ? a : b; }
inline i64 gcd64(i64 a, i64 b) {
  while (b != 0) {
    const i64 t = a % b;
    a = b;
    b = t;
  }
  return a;
}

// Channel period of a channels-last stream for `lanes`-wide vectors: lcm(C, lanes), doubled
// until it spans >= `min_vectors` vectors; 0 when it exceeds kMaxPeriod.
inline i64 period(i64 C, i64 lanes, i64 min_vectors) {
  i64 p = C / gcd64(C, lanes) * lanes;
  while (p < min_vectors * lanes) p *= 2;
  return p <= kMaxPeriod ? p : 0;
}

// Repeat v[0..C) over dst[0..P).
template <class A>
inline void expand_period(const A* v, i64 C, A* dst, i64 P) {
  for (i64 p = 0; p < P; p += C) std::memcpy(dst + p, v, static_cast<std::size_t>(C) * sizeof(A));
}

// ----------------------------------------------------------------------- element access
inline float h2f(u16 h) {
#if defined(__F16C__)
  return _cvtsh_ss(h);
#else
  return half_bits_to_float(h);
#endif
}
inline u16 f2h(float f) {
#if defined(__F16C__)
  return static_cast<u16>(_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#else
  return float_to_half_bits(f);
#endif
}

// W float lanes from W float16 values.
inline vf load_f16(const u16* p) {
#if defined(__AVX512F__)
  return reinterpret_cast<vf>(
      _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))));
#elif defined(__AVX__) && defined(__F16C__)
  return reinterpret_cast<vf>(
      _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
#elif defined(__aarch64__)
  uint16x4_t u;
  std::memcpy(&u, p, sizeof u);
  return reinterpret_cast<vf>(vcvt_f32_f16(vreinterpret_f16_u16(u)));
#else
  vf v;
  for (i64 i = 0; i < W; ++i) v[i] = h2f(p[i]);
  return v;
#endif
}

// W float16 values from W float lanes (round to nearest even).
inline void store_f16(u16* p, vf v) {
#if defined(__AVX512F__)
  _mm256_storeu_si256(
      reinterpret_cast<__m256i*>(p),
      _mm512_cvtps_ph(reinterpret_cast<__m512>(v), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#elif defined(__AVX__) && defined(__F16C__)
  _mm_storeu_si128(
      reinterpret_cast<__m128i*>(p),
      _mm256_cvtps_ph(reinterpret_cast<__m256>(v), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#elif defined(__aarch64__)
  const uint16x4_t u = vreinterpret_u16_f16(vcvt_f16_f32(reinterpret_cast<float32x4_t>(v)));
  std::memcpy(p, &u, sizeof u);
#else
  for (i64 i = 0; i < W; ++i) p[i] = f2h(v[i]);
#endif
}

// W uint8 values as uint32 lanes.
inline vu load_u8_u32(const u8* p) {
#if defined(__AVX512F__)
  return reinterpret_cast<vu>(
      _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
#elif defined(__AVX2__)
  return reinterpret_cast<vu>(
      _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
#elif defined(__SSE2__)
  int b;
  std::memcpy(&b, p, sizeof b);
  const __m128i z = _mm_setzero_si128();
  return reinterpret_cast<vu>(_mm_unpacklo_epi16(_mm_unpacklo_epi8(_mm_cvtsi32_si128(b), z), z));
#else
  typedef u8 vb __attribute__((vector_size(W)));
  return __builtin_convertvector(vload<vb>(p), vu);
#endif
}

// Input element type -> arithmetic: float lanes (W of them), or double lanes for float64.
template <class T>
struct In;

template <>
struct In<u8> {
  using A = float;
  using V = vf;
  static V load(const u8* p) {
    return __builtin_convertvector(reinterpret_cast<vi>(load_u8_u32(p)), vf);
  }
  static A scalar(u8 x) { return static_cast<A>(x); }
};

template <>
struct In<u16> {
  using A = float;
  using V = vf;
  static V load(const u16* p) {
    return __builtin_convertvector(__builtin_convertvector(vload<vh>(p), vi), vf);
  }
  static A scalar(u16 x) { return static_cast<A>(x); }
};

template <>
struct In<half_t> {
  using A = float;
  using V = vf;
  static V load(const half_t* p) { return load_f16(reinterpret_cast<const u16*>(p)); }
  static A scalar(half_t x) { return h2f(x.bits); }
};

template <>
struct In<float> {
  using A = float;
  using V = vf;
  static V load(const float* p) { return vload<vf>(p); }
  static A scalar(float x) { return x; }
};

template <>
struct In<double> {
  using A = double;
  using V = vdw;
  static V load(const double* p) { return vload<vdw>(p); }
  static A scalar(double x) { return x; }
};

inline vf to_vf(vf v) { return v; }
inline vf to_vf(const vdw& v) { return __builtin_convertvector(v, vf); }

// Output element type: stores of W float lanes and of one float.
template <class O>
struct Out;

template <>
struct Out<float> {
  static void store(float* p, vf v) { vstore(p, v); }
  static float scalar(float v) { return v; }
};

template <>
struct Out<half_t> {
  static void store(half_t* p, vf v) { store_f16(reinterpret_cast<u16*>(p), v); }
  static half_t scalar(float v) { return half_t{f2h(v)}; }
};

template <class A>
inline const A* coef_a(const ChannelAffine& k);
template <>
inline const float* coef_a<float>(const ChannelAffine& k) {
  return k.a;
}
template <>
inline const double* coef_a<double>(const ChannelAffine& k) {
  return k.ad;
}
template <class A>
inline const A* coef_b(const ChannelAffine& k);
template <>
inline const float* coef_b<float>(const ChannelAffine& k) {
  return k.b;
}
template <>
inline const double* coef_b<double>(const ChannelAffine& k) {
  return k.bd;
}

// One output element: x * a + b in A, rounded to float, then to O.
template <class T, class O, class A>
inline O scalar_affine(T x, A a, A b) {
  return Out<O>::scalar(static_cast<float>(In<T>::scalar(x) * a + b));
}

// --------------------------------------------------------------------------- normalize

// Same layout: y[i] = x[i] * a[i mod C] + b[i mod C] over npix * C elements.
template <class T, class O>
void normalize_same(const void* xv, void* yv, i64 npix, i64 C, const ChannelAffine& k) {
  using A = typename In<T>::A;
  using V = typename In<T>::V;
  const T* x = static_cast<const T*>(xv);  // may equal y (in place): no restrict
  O* y = static_cast<O*>(yv);
  const A* a = coef_a<A>(k);
  const A* b = coef_b<A>(k);
  const i64 n = npix * C;
  if (C == 1) {
    const V av = splat<V>(a[0]), bv = splat<V>(b[0]);
    i64 i = 0;
    for (; i + 2 * W <= n; i += 2 * W) {
      Out<O>::store(y + i, to_vf(In<T>::load(x + i) * av + bv));
      Out<O>::store(y + i + W, to_vf(In<T>::load(x + i + W) * av + bv));
    }
    for (; i + W <= n; i += W) Out<O>::store(y + i, to_vf(In<T>::load(x + i) * av + bv));
    for (; i < n; ++i) y[i] = scalar_affine<T, O>(x[i], a[0], b[0]);
    return;
  }
  const i64 P = period(C, W, 1);
  if (P) {
    alignas(64) A ap[kMaxPeriod], bp[kMaxPeriod];
    expand_period(a, C, ap, P);
    expand_period(b, C, bp, P);
    i64 i = 0, o = 0;
    for (; i + W <= n; i += W) {
      Out<O>::store(y + i, to_vf(In<T>::load(x + i) * vload<V>(ap + o) + vload<V>(bp + o)));
      o += W;
      if (o == P) o = 0;
    }
    for (i64 j = o; i < n; ++i, ++j) y[i] = scalar_affine<T, O>(x[i], ap[j], bp[j]);
    return;
  }
  for (i64 r = 0; r < npix; ++r) {
    const T* xr = x + r * C;
    O* yr = y + r * C;
    i64 c = 0;
    for (; c + W <= C; c += W)
      Out<O>::store(yr + c, to_vf(In<T>::load(xr + c) * vload<V>(a + c) + vload<V>(b + c)));
    for (; c < C; ++c) yr[c] = scalar_affine<T, O>(xr[c], a[c], b[c]);
  }
}

#if defined(__AVX2__)
// pshufb masks: mask[c][k][j] picks byte 3j + c of the 48-byte group from load k (or 0).
struct RgbMasks {
  std::int8_t m[3][3][16];
};
constexpr RgbMasks make_rgb_masks() {
  RgbMasks r{};
  for (int c = 0; c < 3; ++c)
    for (int k = 0; k < 3; ++k)
      for (int j = 0; j < 16; ++j) {
        const int pos = 3 * j + c - 16 * k;
        r.m[c][k][j] = static_cast<std::int8_t>(pos >= 0 && pos < 16 ? pos : -128);
      }
  return r;
}
constexpr RgbMasks kRgbMasks = make_rgb_masks();

// 16 uint8 values -> x * a + b as float, stored as 16 O values.
template <class O>
inline void store16_u8(O* y, __m128i v, vf a, vf b) {
#if defined(__AVX512F__)
  Out<O>::store(y, reinterpret_cast<vf>(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(v))) * a + b);
#else
  const vf lo = reinterpret_cast<vf>(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v)));
  const vf hi =
      reinterpret_cast<vf>(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(v, 8))));
  Out<O>::store(y, lo * a + b);
  Out<O>::store(y + 8, hi * a + b);
#endif
}

// uint8 RGB (C = 3) channels-last -> planar, 16 pixels per step; returns the pixels done.
template <class O>
i64 rgb_to_planar(const u8* __restrict x, O* __restrict y, i64 npix, i64 ys, const float* a,
                  const float* b) {
  __m128i m[3][3];
  for (int c = 0; c < 3; ++c)
    for (int k = 0; k < 3; ++k)
      m[c][k] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(kRgbMasks.m[c][k]));
  const vf a0 = splat<vf>(a[0]), a1 = splat<vf>(a[1]), a2 = splat<vf>(a[2]);
  const vf b0 = splat<vf>(b[0]), b1 = splat<vf>(b[1]), b2 = splat<vf>(b[2]);
  i64 p = 0;
  for (; p + 16 <= npix; p += 16) {
    const u8* s = x + 3 * p;
    const __m128i v0 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s));
    const __m128i v1 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + 16));
    const __m128i v2 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + 32));
    const __m128i r =
        _mm_or_si128(_mm_or_si128(_mm_shuffle_epi8(v0, m[0][0]), _mm_shuffle_epi8(v1, m[0][1])),
                     _mm_shuffle_epi8(v2, m[0][2]));
    const __m128i g =
        _mm_or_si128(_mm_or_si128(_mm_shuffle_epi8(v0, m[1][0]), _mm_shuffle_epi8(v1, m[1][1])),
                     _mm_shuffle_epi8(v2, m[1][2]));
    const __m128i bl =
        _mm_or_si128(_mm_or_si128(_mm_shuffle_epi8(v0, m[2][0]), _mm_shuffle_epi8(v1, m[2][1])),
                     _mm_shuffle_epi8(v2, m[2][2]));
    store16_u8(y + p, r, a0, b0);
    store16_u8(y + ys + p, g, a1, b1);
    store16_u8(y + 2 * ys + p, bl, a2, b2);
  }
  return p;
}
#endif

// uint8 RGBA (C = 4) channels-last -> planar: W pixels as uint32 lanes, channel c is
// (pixel >> 8c) & 255. Returns the pixels done.
template <class O>
i64 rgba_to_planar(const u8* __restrict x, O* __restrict y, i64 npix, i64 ys, const float* a,
                   const float* b) {
  vf av[4], bv[4];
  for (int c = 0; c < 4; ++c) {
    av[c] = splat<vf>(a[c]);
    bv[c] = splat<vf>(b[c]);
  }
  i64 p = 0;
  for (; p + W <= npix; p += W) {
    const vu v = vload<vu>(x + 4 * p);
    for (int c = 0; c < 4; ++c) {
      const vi ch = reinterpret_cast<vi>((v >> static_cast<u32>(8 * c)) & 255u);
      Out<O>::store(y + c * ys + p, __builtin_convertvector(ch, vf) * av[c] + bv[c]);
    }
  }
  return p;
}

// Channels-last -> planar: y[c * ys + p] = x[p * C + c] * a[c] + b[c].
template <class T, class O>
void normalize_to_planar(const void* xv, void* yv, i64 npix, i64 C, i64 ys,
                         const ChannelAffine& k) {
  if (C == 1) return normalize_same<T, O>(xv, yv, npix, 1, k);
  using A = typename In<T>::A;
  const T* __restrict x = static_cast<const T*>(xv);
  O* __restrict y = static_cast<O*>(yv);
  const A* a = coef_a<A>(k);
  const A* b = coef_b<A>(k);
  i64 p = 0;
  if constexpr (std::is_same_v<T, u8>) {
    // The vector paths store on y's lines: the pixels before its first line boundary one by
    // one, as the tail, where every plane starts at the same offset in its line (planes of
    // whole lines). A store across two lines costs two: 1 thread, median us, base vs this
    // interleaved: 32x224x224x3 into float32 NCHW 16 or 48 bytes past a line 1909-1919 ->
    // 1215 (on a line: 1188-1196; without out=, NumPy's array 16 bytes past one, 1957 ->
    // 1211), 8x224x224x4 706 -> 436; float16 output unchanged.
    if ((C == 3 || C == 4) && ys * static_cast<i64>(sizeof(O)) % 64 == 0) {
      const i64 h = imin(npix, line_lead(y));
      for (; p < h; ++p)
        for (i64 c = 0; c < C; ++c)
          y[c * ys + p] = scalar_affine<T, O>(x[p * C + c], a[c], b[c]);
    }
#if defined(__AVX2__)
    if (C == 3) p += rgb_to_planar(x + 3 * p, y + p, npix - p, ys, a, b);
#endif
    if (C == 4) p += rgba_to_planar(x + 4 * p, y + p, npix - p, ys, a, b);
  }
  // General case: tiles of 64 pixels (in L1), one channel at a time, strided scalar reads
  // and contiguous writes. Measured (AVX2, in cache): 0.41 ns/value, vs 1.2 ns/value for
  // gathering lanes into vectors and 0.1 ns/value for the uint8 C = 3/4 paths above.
  constexpr i64 kTile = 64;
  for (; p + kTile <= npix; p += kTile) {
    for (i64 c = 0; c < C; ++c) {
      const T* s = x + p * C + c;
      O* d = y + c * ys + p;
      for (i64 i = 0; i < kTile; ++i) d[i] = scalar_affine<T, O>(s[i * C], a[c], b[c]);
    }
  }
  for (; p < npix; ++p)
    for (i64 c = 0; c < C; ++c) y[c * ys + p] = scalar_affine<T, O>(x[p * C + c], a[c], b[c]);
}

// Planar -> channels-last: y[p * C + c] = x[c * xs + p] * a[c] + b[c].
template <class T, class O>
void normalize_to_channels_last(const void* xv, i64 xs, void* yv, i64 npix, i64 C,
                                const ChannelAffine& k) {
  if (C == 1) return normalize_same<T, O>(xv, yv, npix, 1, k);
  using A = typename In<T>::A;
  const T* __restrict x = static_cast<const T*>(xv);
  O* __restrict y = static_cast<O*>(yv);
  const A* a = coef_a<A>(k);
  const A* b = coef_b<A>(k);
  alignas(64) O tmp[W];
  i64 p = 0;
  for (; p + W <= npix; p += W) {
    O* d = y + p * C;
    for (i64 c = 0; c < C; ++c) {
      Out<O>::store(tmp, to_vf(In<T>::load(x + c * xs + p) * a[c] + b[c]));
      for (i64 i = 0; i < W; ++i) d[i * C + c] = tmp[i];
    }
  }
  for (; p < npix; ++p)
    for (i64 c = 0; c < C; ++c) y[p * C + c] = scalar_affine<T, O>(x[c * xs + p], a[c], b[c]);
}

// -------------------------------------------------------------------- integer statistics

// W integers as uint32 lanes.
inline vu load_u32(const u8* p) { return load_u8_u32(p); }
inline vu load_u32(const u16* p) { return __builtin_convertvector(vload<vh>(p), vu); }

// uint8: x^2 <= 65025 sums in uint32 lanes within a block; uint16: in uint64 lanes.
template <class T>
struct SqAcc;
template <>
struct SqAcc<u8> {
  using V = vu;
  static void add(V& q, vu v) { q += v * v; }
};
template <>
struct SqAcc<u16> {
  using V = vu64;
  static void add(V& q, vu v) { q += __builtin_convertvector(v * v, vu64); }  // v*v < 2^32
};

// One block (<= kIntBlock elements): nrows rows of L elements (row stride L) plus `tail`
// elements of one more row; per position j: S[j] += x, Q[j] += x^2, Mn/Mx[j] min/max.
template <class T>
void int_block(const T* x, i64 nrows, i64 L, i64 tail, u64* S, u64* Q, u64* Mn, u64* Mx) {
  using QV = typename SqAcc<T>::V;
  i64 j = 0;
  for (; j + 2 * W <= L; j += 2 * W) {
    vu s0{}, s1{}, lo0 = splat<vu>(~0u), lo1 = lo0, hi0{}, hi1{};
    QV q0{}, q1{};
    const T* p = x + j;
    for (i64 r = 0; r < nrows; ++r, p += L) {
      const vu v0 = load_u32(p), v1 = load_u32(p + W);
      s0 += v0;
      s1 += v1;
      SqAcc<T>::add(q0, v0);
      SqAcc<T>::add(q1, v1);
      lo0 = v0 < lo0 ? v0 : lo0;
      lo1 = v1 < lo1 ? v1 : lo1;
      hi0 = v0 > hi0 ? v0 : hi0;
      hi1 = v1 > hi1 ? v1 : hi1;
    }
    for (i64 i = 0; i < W; ++i) {
      S[j + i] += s0[i];
      S[j + W + i] += s1[i];
      Q[j + i] += q0[i];
      Q[j + W + i] += q1[i];
      if (lo0[i] < Mn[j + i]) Mn[j + i] = lo0[i];
      if (lo1[i] < Mn[j + W + i]) Mn[j + W + i] = lo1[i];
      if (hi0[i] > Mx[j + i]) Mx[j + i] = hi0[i];
      if (hi1[i] > Mx[j + W + i]) Mx[j + W + i] = hi1[i];
    }
  }
  for (; j + W <= L; j += W) {
    vu s0{}, lo0 = splat<vu>(~0u), hi0{};
    QV q0{};
    const T* p = x + j;
    for (i64 r = 0; r < nrows; ++r, p += L) {
      const vu v0 = load_u32(p);
      s0 += v0;
      SqAcc<T>::add(q0, v0);
      lo0 = v0 < lo0 ? v0 : lo0;
      hi0 = v0 > hi0 ? v0 : hi0;
    }
    for (i64 i = 0; i < W; ++i) {
      S[j + i] += s0[i];
      Q[j + i] += q0[i];
      if (lo0[i] < Mn[j + i]) Mn[j + i] = lo0[i];
      if (hi0[i] > Mx[j + i]) Mx[j + i] = hi0[i];
    }
  }
  for (; j < L; ++j) {
    u64 s = 0, q = 0, lo = Mn[j], hi = Mx[j];
    for (i64 r = 0; r < nrows; ++r) {
      const u64 v = x[r * L + j];
      s += v;
      q += v * v;
      lo = v < lo ? v : lo;
      hi = v > hi ? v : hi;
    }
    S[j] += s;
    Q[j] += q;
    Mn[j] = lo;
    Mx[j] = hi;
  }
  const T* last = x + nrows * L;
  for (i64 t = 0; t < tail; ++t) {
    const u64 v = last[t];
    S[t] += v;
    Q[t] += v * v;
    if (v < Mn[t]) Mn[t] = v;
    if (v > Mx[t]) Mx[t] = v;
  }
}

template <class T>
void int_stats(const void* xv, i64 rows, i64 C, u64* scratch, u64* S, u64* Q, u32* mn, u32* mx) {
  const T* x = static_cast<const T*>(xv);
  const i64 P = period(C, W, 2);
  const i64 L = P ? P : C;
  u64* Sp = scratch;
  u64* Qp = scratch + L;
  u64* Mn = scratch + 2 * L;
  u64* Mx = scratch + 3 * L;
  for (i64 p = 0; p < L; ++p) {
    Sp[p] = Qp[p] = Mx[p] = 0;
    Mn[p] = ~u64{0};
  }
  // Blocks of whole C-rows (so each block starts at channel 0) of <= kIntBlock elements.
  const i64 R = imax(1, kIntBlock / C);
  for (i64 r0 = 0; r0 < rows; r0 += R) {
    const i64 n = imin(R, rows - r0) * C;
    const i64 nrows = n / L, tail = n - nrows * L;
    int_block(x + r0 * C, nrows, L, tail, Sp, Qp, Mn, Mx);
  }
  for (i64 p = 0; p < L; ++p) {
    const i64 c = p % C;
    S[c] += Sp[p];
    Q[c] += Qp[p];
    if (Mn[p] < mn[c]) mn[c] = static_cast<u32>(Mn[p]);
    if (Mx[p] > mx[c]) mx[c] = static_cast<u32>(Mx[p]);
  }
}

// ---------------------------------------------------------------------- float statistics

// WD doubles from WD input values.
inline vd load_d(const double* p) { return vload<vd>(p); }
inline vd load_d(const float* p) { return __builtin_convertvector(vload<vfh>(p), vd); }
inline vd load_d(const half_t* p) {
#if defined(__AVX512F__)
  return reinterpret_cast<vd>(
      _mm512_cvtps_pd(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)))));
#elif defined(__AVX__) && defined(__F16C__)
  return reinterpret_cast<vd>(
      _mm256_cvtps_pd(_mm_cvtph_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)))));
#else
  vd v;
  for (i64 i = 0; i < WD; ++i) v[i] = static_cast<double>(h2f(p[i].bits));
  return v;
#endif
}
inline double to_d(double x) { return x; }
inline double to_d(float x) { return static_cast<double>(x); }
inline double to_d(half_t x) { return static_cast<double>(h2f(x.bits)); }

// NaN-propagating min/max (np.min semantics): once NaN, stays NaN.
inline vd vmin_nan(vd v, vd m) { return ((v < m) | (v != v)) ? v : m; }
inline vd vmax_nan(vd v, vd m) { return ((v > m) | (v != v)) ? v : m; }
inline double min_nan(double v, double m) { return (v < m || v != v) ? v : m; }
inline double max_nan(double v, double m) { return (v > m || v != v) ? v : m; }

// One register strip of NV vectors (NV * WD columns) over nrows rows of stride L: per column,
// S += sum(x - K); pass 2 (Sq) also Q += sum((x - K)^2); pass 1 (!Sq) min/max into Mn/Mx.
// Rows go two at a time into separate sums (two add chains per column); min/max use plain
// minpd/maxpd (a NaN never wins) plus a NaN mask applied at the end.
template <bool Sq, int NV, class T>
inline void float_strip(const T* x, i64 nrows, i64 L, const double* K, double* S, double* Q,
                        double* Mn, double* Mx) {
  vd k[NV], s0[NV], s1[NV], q0[NV], q1[NV], lo[NV], hi[NV];
  vl nan[NV];
  for (int v = 0; v < NV; ++v) {
    k[v] = vload<vd>(K + v * WD);
    s0[v] = s1[v] = q0[v] = q1[v] = vd{};
    nan[v] = vl{};
    lo[v] = splat<vd>(std::numeric_limits<double>::infinity());
    hi[v] = -lo[v];
  }
  i64 r = 0;
  for (; r + 2 <= nrows; r += 2) {
    const T* p = x + r * L;
    for (int v = 0; v < NV; ++v) {
      const vd a = load_d(p + v * WD), b = load_d(p + L + v * WD);
      const vd da = a - k[v], db = b - k[v];
      s0[v] += da;
      s1[v] += db;
      if constexpr (Sq) {
        q0[v] += da * da;
        q1[v] += db * db;
      } else {
        lo[v] = a < lo[v] ? a : lo[v];
        lo[v] = b < lo[v] ? b : lo[v];
        hi[v] = a > hi[v] ? a : hi[v];
        hi[v] = b > hi[v] ? b : hi[v];
        nan[v] |= (a != a) | (b != b);
      }
    }
  }
  if (r < nrows) {
    const T* p = x + r * L;
    for (int v = 0; v < NV; ++v) {
      const vd a = load_d(p + v * WD);
      const vd da = a - k[v];
      s0[v] += da;
      if constexpr (Sq) {
        q0[v] += da * da;
      } else {
        lo[v] = a < lo[v] ? a : lo[v];
        hi[v] = a > hi[v] ? a : hi[v];
        nan[v] |= (a != a);
      }
    }
  }
  for (int v = 0; v < NV; ++v) {
    vstore(S + v * WD, vload<vd>(S + v * WD) + (s0[v] + s1[v]));
    if constexpr (Sq) {
      vstore(Q + v * WD, vload<vd>(Q + v * WD) + (q0[v] + q1[v]));
    } else {
      const vd qnan = splat<vd>(std::numeric_limits<double>::quiet_NaN());
      const vd mn = vmin_nan(nan[v] ? qnan : lo[v], vload<vd>(Mn + v * WD));
      const vd mx = vmax_nan(nan[v] ? qnan : hi[v], vload<vd>(Mx + v * WD));
      vstore(Mn + v * WD, mn);
      vstore(Mx + v * WD, mx);
    }
  }
}

// One statistics pass over nrows rows of L elements (row stride L) plus `tail` elements:
// per position j, S[j] += sum(x - K[j]); pass 2 (Sq) also Q[j] += sum((x - K[j])^2);
// pass 1 (!Sq) also min/max into Mn[j]/Mx[j].
template <bool Sq, class T>
void float_pass(const T* x, i64 nrows, i64 L, i64 tail, const double* K, double* S, double* Q,
                double* Mn, double* Mx) {
  i64 j = 0;
  for (; j + 2 * WD <= L; j += 2 * WD)
    float_strip<Sq, 2>(x + j, nrows, L, K + j, S + j, Q + j, Mn + j, Mx + j);
  for (; j + WD <= L; j += WD)
    float_strip<Sq, 1>(x + j, nrows, L, K + j, S + j, Q + j, Mn + j, Mx + j);
  for (; j < L; ++j) {
    double s = 0.0, q = 0.0, lo = Mn[j], hi = Mx[j];
    for (i64 r = 0; r < nrows; ++r) {
      const double v = to_d(x[r * L + j]);
      const double d = v - K[j];
      s += d;
      if constexpr (Sq) {
        q += d * d;
      } else {
        lo = min_nan(v, lo);
        hi = max_nan(v, hi);
      }
    }
    S[j] += s;
    if constexpr (Sq) {
      Q[j] += q;
    } else {
      Mn[j] = lo;
      Mx[j] = hi;
    }
  }
  const T* last = x + nrows * L;
  for (i64 t = 0; t < tail; ++t) {
    const double v = to_d(last[t]);
    const double d = v - K[t];
    S[t] += d;
    if constexpr (Sq) {
      Q[t] += d * d;
    } else {
      Mn[t] = min_nan(v, Mn[t]);
      Mx[t] = max_nan(v, Mx[t]);
    }
  }
}

template <class T>
void float_stats(const void* xv, i64 rows, i64 C, double* scratch, double* count, double* mean,
                 double* m2, double* mn, double* mx) {
  const T* x = static_cast<const T*>(xv);
  const i64 P = period(C, WD, 2);
  const i64 L = P ? P : C;
  double* K = scratch;  // block shift, then block mean, per position
  double* S = scratch + L;
  double* Q = scratch + 2 * L;
  double* Mn = scratch + 3 * L;
  double* Mx = scratch + 4 * L;
  for (i64 p = 0; p < L; ++p) {
    Mn[p] = std::numeric_limits<double>::infinity();
    Mx[p] = -std::numeric_limits<double>::infinity();
  }
  const i64 R = imax(1, kFloatBlock / C);
  for (i64 r0 = 0; r0 < rows; r0 += R) {
    const i64 nr = imin(R, rows - r0);
    const T* blk = x + r0 * C;
    const i64 n = nr * C;
    const i64 nrows = n / L, tail = n - nrows * L;
    // Pass 1: K = the block's first row (a finite shift keeps d = O(std)), S = sum(x - K).
    for (i64 c = 0; c < C; ++c) K[c] = to_d(blk[c]);
    for (i64 c = 0; c < C; ++c)
      if (!(K[c] - K[c] == 0.0)) K[c] = 0.0;  // inf or NaN: shift by 0
    if (P) expand_period(K, C, K, P);
    for (i64 p = 0; p < L; ++p) S[p] = 0.0;
    float_pass<false>(blk, nrows, L, tail, K, S, Q, Mn, Mx);
    const double nb = static_cast<double>(nr);
    for (i64 c = 0; c < C; ++c) {
      double s = 0.0;
      for (i64 p = c; p < L; p += C) s += S[p];
      K[c] = K[c] + s / nb;
    }
    if (P) expand_period(K, C, K, P);
    // Pass 2: S = sum(d), Q = sum(d^2), d = x - block mean.
    for (i64 p = 0; p < L; ++p) S[p] = Q[p] = 0.0;
    float_pass<true>(blk, nrows, L, tail, K, S, Q, Mn, Mx);
    const double na = *count;
    const double f = nb / (na + nb);
    for (i64 c = 0; c < C; ++c) {
      double s = 0.0, q = 0.0;
      for (i64 p = c; p < L; p += C) {
        s += S[p];
        q += Q[p];
      }
      const double bm = K[c] + s / nb;
      double bq = q - s * s / nb;
      bq = bq < 0.0 ? 0.0 : bq;
      if (na == 0.0) {
        mean[c] = bm;
        m2[c] = bq;
      } else {
        const double d = bm - mean[c];
        mean[c] += d * f;
        m2[c] += bq + d * d * na * f;
      }
    }
    *count = na + nb;
  }
  for (i64 p = 0; p < L; ++p) {
    const i64 c = p % C;
    mn[c] = min_nan(Mn[p], mn[c]);
    mx[c] = max_nan(Mx[p], mx[c]);
  }
}

i64 stats_scratch_elems(i64 C) { return 5 * (C > kMaxPeriod ? C : kMaxPeriod); }

// ----------------------------------------------------------------------------- the table
#define NORMCPP_STR2(x) #x
#define NORMCPP_STR(x) NORMCPP_STR2(x)

const ImageKernelTable kImageTable = {
    NORMCPP_STR(NORMCPP_KNS),
    {{&normalize_same<u8, float>, &normalize_same<u8, half_t>},
     {&normalize_same<u16, float>, &normalize_same<u16, half_t>},
     {&normalize_same<half_t, float>, &normalize_same<half_t, half_t>},
     {&normalize_same<float, float>, &normalize_same<float, half_t>},
     {&normalize_same<double, float>, &normalize_same<double, half_t>}},
    {{&normalize_to_planar<u8, float>, &normalize_to_planar<u8, half_t>},
     {&normalize_to_planar<u16, float>, &normalize_to_planar<u16, half_t>},
     {&normalize_to_planar<half_t, float>, &normalize_to_planar<half_t, half_t>},
     {&normalize_to_planar<float, float>, &normalize_to_planar<float, half_t>},
     {&normalize_to_planar<double, float>, &normalize_to_planar<double, half_t>}},
    {{&normalize_to_channels_last<u8, float>, &normalize_to_channels_last<u8, half_t>},
     {&normalize_to_channels_last<u16, float>, &normalize_to_channels_last<u16, half_t>},
     {&normalize_to_channels_last<half_t, float>, &normalize_to_channels_last<half_t, half_t>},
     {&normalize_to_channels_last<float, float>, &normalize_to_channels_last<float, half_t>},
     {&normalize_to_channels_last<double, float>, &normalize_to_channels_last<double, half_t>}},
    {&int_stats<u8>, &int_stats<u16>},
    {&float_stats<half_t>, &float_stats<float>, &float_stats<double>},
    &stats_scratch_elems,
};

}  // namespace

const ImageKernelTable& image_table() { return kImageTable; }

}  // namespace NORMCPP_KNS
}  // namespace kernels
}  // namespace normcpp
