// The image kernel table: fused normalize (dtype conversion + per-channel affine + layout
// change) and exact per-channel statistics for dataset preprocessing, one copy per ISA level,
// picked with the same level as the norm kernels (dispatch.cpp). Plain pointers and sizes
// only; no allocation, no exceptions.
#pragma once

#include <cstdint>

namespace normcpp {
namespace kernels {

// Input element types, in table order.
enum ImageIn : int { kInU8 = 0, kInU16 = 1, kInF16 = 2, kInF32 = 3, kInF64 = 4, kNumImageIn = 5 };
// Output element types, in table order.
enum ImageOut : int { kOutF32 = 0, kOutF16 = 1, kNumImageOut = 2 };

// Per-channel affine y = x * a[c] + b[c]: float coefficients for uint8/uint16/float16/float32
// input (float arithmetic), double coefficients for float64 input (double arithmetic, then
// rounded to the output type). All four arrays have C entries.
struct ChannelAffine {
  const float* a;
  const float* b;
  const double* ad;
  const double* bd;
};

// Same layout: x[i] -> y[i] for i in [0, npix * C), channel i mod C (C = 1: a plane).
using NormalizeSame = void (*)(const void* x, void* y, std::int64_t npix, std::int64_t C,
                               const ChannelAffine& k);
// Channels-last x[p * C + c] -> planar y[c * ystride + p], p in [0, npix).
using NormalizeToPlanar = void (*)(const void* x, void* y, std::int64_t npix, std::int64_t C,
                                   std::int64_t ystride, const ChannelAffine& k);
// Planar x[c * xstride + p] -> channels-last y[p * C + c], p in [0, npix).
using NormalizeToChannelsLast = void (*)(const void* x, std::int64_t xstride, void* y,
                                         std::int64_t npix, std::int64_t C, const ChannelAffine& k);

// Exact statistics of a rows x C channels-last matrix of uint8/uint16 (a planar run: C = 1),
// added into per-channel S[c] (sum), Q[c] (sum of squares), mn[c], mx[c]. The caller keeps
// rows <= 2^32 per call so that the uint64 totals cannot wrap.
using IntChannelStats = void (*)(const void* x, std::int64_t rows, std::int64_t C,
                                 std::uint64_t* scratch, std::uint64_t* S, std::uint64_t* Q,
                                 std::uint32_t* mn, std::uint32_t* mx);
// Statistics of a rows x C channels-last matrix of float16/32/64 (planar run: C = 1) merged
// (Chan, double) into per-channel mean[c], m2[c] of common count *count, and min/max into
// mn[c]/mx[c] (start them at +inf/-inf); a NaN makes mn[c] and mx[c] NaN for good.
using FloatChannelStats = void (*)(const void* x, std::int64_t rows, std::int64_t C,
                                   double* scratch, double* count, double* mean, double* m2,
                                   double* mn, double* mx);

struct ImageKernelTable {
  const char* name;
  NormalizeSame same[kNumImageIn][kNumImageOut];
  NormalizeToPlanar to_planar[kNumImageIn][kNumImageOut];
  NormalizeToChannelsLast to_channels_last[kNumImageIn][kNumImageOut];
  IntChannelStats int_stats[2];      // uint8, uint16
  FloatChannelStats float_stats[3];  // float16, float32, float64
  // Scratch elements (8 bytes each) the statistics kernels need for C channels.
  std::int64_t (*stats_scratch_elems)(std::int64_t C);
};

// The image table of the level active() uses.
const ImageKernelTable& active_image();

}  // namespace kernels
}  // namespace normcpp
