// Planners for images: fused normalize and per-channel dataset statistics (kernels in
// kernels/image_kernels.cpp).
//
//  normalize      — items are (image, pixel chunk); every item writes its own output range,
//                   so any thread count gives the same bytes.
//  channel_stats  — channels-last: items are fixed row ranges of the (N * P) x C matrix;
//                   planar: (channel, fixed range of the channel's N * P values). Item
//                   boundaries depend only on the shape; integer partials are exact sums and
//                   float partials are merged (Chan, double) in item order, so results are
//                   bitwise identical for any thread count.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "kernels/image_kernels.hpp"
#include "normcpp/normcpp.hpp"
#include "ops/common.hpp"
#include "ops/drivers.hpp"
#include "ops/parallel.hpp"

namespace normcpp {
namespace ops {
namespace {

using u64 = std::uint64_t;
using u128 = unsigned __int128;

// Pixels per normalize item.
constexpr i64 kPixChunk = 16384;
// Values per statistics item (at least), and the most items one channel/matrix is cut into.
constexpr i64 kStatChunk = 65536;
constexpr i64 kMaxStatItems = 256;

std::size_t elem_size(PixelType t) {
  switch (t) {
    case PixelType::u8:
      return 1;
    case PixelType::u16:
    case PixelType::f16:
      return 2;
    case PixelType::f32:
      return 4;
    case PixelType::f64:
      return 8;
  }
  fail("images: unsupported element type");
}

int in_index(PixelType t) {
  switch (t) {
    case PixelType::u8:
      return kernels::kInU8;
    case PixelType::u16:
      return kernels::kInU16;
    case PixelType::f16:
      return kernels::kInF16;
    case PixelType::f32:
      return kernels::kInF32;
    case PixelType::f64:
      return kernels::kInF64;
  }
  fail("images: unsupported element type");
}

void check_image(const ImageRef& x) {
  if (x.N < 0 || x.C < 1 || x.P < 0)
    fail("images must have N >= 0, C >= 1 and P >= 0, got N=" + str(x.N) + ", C=" + str(x.C) +
         ", P=" + str(x.P));
  elem_size(x.type);
  if (x.layout != Layout::contiguous && x.layout != Layout::channels_last)
    fail("images: layout must be contiguous (planar) or channels_last");
  if (!x.data && x.N * x.P > 0) fail("images: data pointer must not be null");
}

const char* at(const void* p, i64 elems, std::size_t size) {
  return static_cast<const char*>(p) + static_cast<std::size_t>(elems) * size;
}
char* at(void* p, i64 elems, std::size_t size) {
  return static_cast<char*>(p) + static_cast<std::size_t>(elems) * size;
}

double u128_to_double(u128 v) { return static_cast<double>(v); }

// num / den rounded to double: integer quotient plus the remainder's fraction.
double ratio(u128 num, u128 den) {
  const u128 q = num / den, r = num % den;
  return u128_to_double(q) + u128_to_double(r) / u128_to_double(den);
}

inline double min_nan(double v, double m) { return (v < m || v != v) ? v : m; }
inline double max_nan(double v, double m) { return (v > m || v != v) ? v : m; }

// The work items of a statistics pass: channels-last row ranges, or planar (channel, value
// range) pieces. run(item, rows_or_runs...) is given to the kernels through `visit`.
struct StatPlan {
  bool cl;
  i64 C, items, per;  // cl: items row ranges; planar: per = ranges per channel
  i64 rows;           // cl: N * P rows; planar: N * P values per channel
  RunGeom g;          // planar runs of one channel
  i64 begin(i64 j) const { return chunk_start(rows, per, j); }
  // Item j of channel c, and where its partial results for channel c are (items hold C
  // partials each when channels-last, one when planar).
  std::size_t item(i64 c, i64 j) const { return static_cast<std::size_t>(cl ? j : c * per + j); }
  std::size_t partial(i64 c, i64 j) const {
    return static_cast<std::size_t>(cl ? j * C + c : c * per + j);
  }
};

StatPlan plan_stats(const ImageRef& x) {
  StatPlan s{};
  s.C = x.C;
  // Planar images with one pixel are channels-last rows of C.
  s.cl = x.layout == Layout::channels_last || x.P == 1;
  s.rows = x.N * x.P;
  const i64 total = s.rows * (s.cl ? x.C : 1);
  i64 per = (total + kStatChunk - 1) / kStatChunk;
  if (per > kMaxStatItems) per = kMaxStatItems;
  if (s.cl && per > s.rows / 64) per = s.rows / 64;  // >= 64 rows per item: partials stay small
  if (per < 1) per = 1;
  // uint64 per-item totals: <= 2^31 rows per kernel call (see IntChannelStats).
  while (s.rows / per > (i64{1} << 31)) ++per;
  s.per = per;
  s.items = s.cl ? per : per * x.C;
  s.g = RunGeom{x.C, x.N, x.P, x.C * x.P, x.P};
  return s;
}

// f(item, channel_or_-1, x_offset_elems, rows, C_of_call) for every kernel call of an item.
template <class F>
void for_item_calls(const StatPlan& s, i64 item, F&& f) {
  if (s.cl) {
    const i64 r0 = s.begin(item), r1 = s.begin(item + 1);
    if (r1 > r0) f(r0 * s.C, r1 - r0, s.C);
    return;
  }
  const i64 c = item / s.per, j = item % s.per;
  for_pieces(s.g, c, s.begin(j), s.begin(j + 1), [&](i64 off, i64 len) { f(off, len, i64{1}); });
}

ChannelStatsResult int_channel_stats(const ImageRef& x, const StatPlan& s) {
  const auto& k = kernels::active_image();
  const auto fn = k.int_stats[x.type == PixelType::u8 ? 0 : 1];
  const std::size_t isz = elem_size(x.type);
  const i64 C = x.C;
  const i64 width = s.cl ? C : 1;  // partial accumulators per item
  const auto n = static_cast<std::size_t>(s.items * width);
  std::vector<u64> S(n, 0), Q(n, 0);
  std::vector<std::uint32_t> mn(n, ~std::uint32_t{0}), mx(n, 0);
  const i64 total = x.N * x.P * C;
  const int nt = threads_for(total, s.items);
  const i64 scr_elems = k.stats_scratch_elems(width);
  std::vector<u64> scratch(static_cast<std::size_t>(scr_elems * nt));
  parallel_for(s.items, nt, [&](i64 item, int tid) {
    const auto o = static_cast<std::size_t>(item * width);
    u64* scr = scratch.data() + scr_elems * tid;
    for_item_calls(s, item, [&](i64 off, i64 rows, i64 cc) {
      fn(at(x.data, off, isz), rows, cc, scr, &S[o], &Q[o], &mn[o], &mx[o]);
    });
  });
  ChannelStatsResult r;
  r.exact = true;
  r.count = x.N * x.P;
  const auto Cu = static_cast<std::size_t>(C);
  r.mean.assign(Cu, std::numeric_limits<double>::quiet_NaN());
  r.m2 = r.mean;
  r.min = r.mean;
  r.max = r.mean;
  r.sum.assign(Cu, 0);
  r.sum_sq_lo.assign(Cu, 0);
  r.sum_sq_hi.assign(Cu, 0);
  for (i64 c = 0; c < C; ++c) {
    u128 sum = 0, sq = 0;
    std::uint32_t lo = ~std::uint32_t{0}, hi = 0;
    for (i64 j = 0; j < s.per; ++j) {
      const std::size_t i = s.partial(c, j);
      sum += S[i];
      sq += Q[i];
      lo = mn[i] < lo ? mn[i] : lo;
      hi = mx[i] > hi ? mx[i] : hi;
    }
    const auto cu = static_cast<std::size_t>(c);
    r.sum[cu] = static_cast<u64>(sum);
    r.sum_sq_lo[cu] = static_cast<u64>(sq);
    r.sum_sq_hi[cu] = static_cast<u64>(sq >> 64);
    if (r.count == 0) continue;
    const auto cnt = static_cast<u128>(r.count);
    // count < 2^48: count * sq <= count^2 * 65535^2 < 2^128 and sum^2 <= that.
    r.mean[cu] = ratio(sum, cnt);
    r.m2[cu] = ratio(cnt * sq - sum * sum, cnt);
    r.min[cu] = static_cast<double>(lo);
    r.max[cu] = static_cast<double>(hi);
  }
  return r;
}

ChannelStatsResult float_channel_stats(const ImageRef& x, const StatPlan& s) {
  const auto& k = kernels::active_image();
  const int t = x.type == PixelType::f16 ? 0 : x.type == PixelType::f32 ? 1 : 2;
  const auto fn = k.float_stats[t];
  const std::size_t isz = elem_size(x.type);
  const i64 C = x.C;
  const i64 width = s.cl ? C : 1;
  const auto n = static_cast<std::size_t>(s.items * width);
  const double inf = std::numeric_limits<double>::infinity();
  std::vector<double> cnt(static_cast<std::size_t>(s.items), 0.0), mean(n, 0.0), m2(n, 0.0),
      mn(n, inf), mx(n, -inf);
  const i64 total = x.N * x.P * C;
  const int nt = threads_for(total, s.items);
  const i64 scr_elems = k.stats_scratch_elems(width);
  std::vector<double> scratch(static_cast<std::size_t>(scr_elems * nt));
  parallel_for(s.items, nt, [&](i64 item, int tid) {
    const auto o = static_cast<std::size_t>(item * width);
    double* scr = scratch.data() + scr_elems * tid;
    for_item_calls(s, item, [&](i64 off, i64 rows, i64 cc) {
      fn(at(x.data, off, isz), rows, cc, scr, &cnt[static_cast<std::size_t>(item)], &mean[o],
         &m2[o], &mn[o], &mx[o]);
    });
  });
  ChannelStatsResult r;
  r.count = x.N * x.P;
  const auto Cu = static_cast<std::size_t>(C);
  const double nan = std::numeric_limits<double>::quiet_NaN();
  r.mean.assign(Cu, nan);
  r.m2 = r.mean;
  r.min = r.mean;
  r.max = r.mean;
  for (i64 c = 0; c < C; ++c) {
    Moments m;
    double lo = inf, hi = -inf;
    for (i64 j = 0; j < s.per; ++j) {
      const std::size_t i = s.partial(c, j);
      const double ni = cnt[s.item(c, j)];
      if (ni == 0.0) continue;
      m = merge_moments(m, Moments{ni, mean[i], m2[i]});
      lo = min_nan(mn[i], lo);
      hi = max_nan(mx[i], hi);
    }
    if (r.count == 0) continue;
    const auto cu = static_cast<std::size_t>(c);
    r.mean[cu] = m.mean;
    r.m2[cu] = m.m2;
    r.min[cu] = lo;
    r.max[cu] = hi;
  }
  return r;
}

}  // namespace
}  // namespace ops

void normalize_images(const ImageRef& x, void* y, DType out_type, Layout out_layout,
                      const double* mean, const double* stdev, double scale) {
  using ops::i64;
  using ops::str;
  ops::check_image(x);
  if (out_type != DType::f32 && out_type != DType::f16)
    ops::fail("normalize: the output dtype must be float32 or float16");
  if (out_layout != Layout::contiguous && out_layout != Layout::channels_last)
    ops::fail("normalize: out_layout must be contiguous (planar) or channels_last");
  if (!mean || !stdev) ops::fail("normalize: mean and std must not be null");
  if (!std::isfinite(scale)) ops::fail("scale must be a finite number, got " + str(scale));
  const i64 N = x.N, C = x.C, P = x.P;
  const auto Cu = static_cast<std::size_t>(C);
  std::vector<double> ad(Cu), bd(Cu);
  std::vector<float> af(Cu), bf(Cu);
  for (i64 c = 0; c < C; ++c) {
    const auto u = static_cast<std::size_t>(c);
    if (!std::isfinite(mean[c]))
      ops::fail("mean must be finite, got " + str(mean[c]) + " for channel " + str(c));
    if (!std::isfinite(stdev[c]) || stdev[c] == 0.0)
      ops::fail("std must be finite and non-zero, got " + str(stdev[c]) + " for channel " + str(c));
    ad[u] = scale / stdev[c];
    bd[u] = -mean[c] / stdev[c];
    af[u] = static_cast<float>(ad[u]);
    bf[u] = static_cast<float>(bd[u]);
  }
  const i64 total = N * C * P;
  if (total == 0) return;
  if (!y) ops::fail("normalize: output pointer must not be null");
  const std::size_t isz = ops::elem_size(x.type);
  const std::size_t osz = out_type == DType::f16 ? 2 : 4;
  {  // y must not overlap x, except exactly in place with the same layout and element size
    const auto x0 = reinterpret_cast<std::uintptr_t>(x.data);
    const auto y0 = reinterpret_cast<std::uintptr_t>(y);
    const auto x1 = x0 + static_cast<std::uintptr_t>(total) * isz;
    const auto y1 = y0 + static_cast<std::uintptr_t>(total) * osz;
    const bool in_place = x0 == y0 && isz == osz && x.layout == out_layout;
    if (x0 < y1 && y0 < x1 && !in_place)
      ops::fail(
          "normalize: out overlaps the images (only an exact in-place call with the same "
          "layout and element size is allowed)");
  }
  const auto& k = kernels::active_image();
  const int ti = ops::in_index(x.type);
  const int to = out_type == DType::f16 ? kernels::kOutF16 : kernels::kOutF32;
  const kernels::ChannelAffine aff{af.data(), bf.data(), ad.data(), bd.data()};
  const i64 chunks = (P + ops::kPixChunk - 1) / ops::kPixChunk;
  const i64 items = N * chunks;
  const bool in_cl = x.layout == Layout::channels_last;
  const bool out_cl = out_layout == Layout::channels_last;
  ops::parallel_for(items, ops::threads_for(total, items), [&](i64 item, int) {
    const i64 n = item / chunks, j = item % chunks;
    const i64 p0 = ops::chunk_start(P, chunks, j), len = ops::chunk_start(P, chunks, j + 1) - p0;
    if (in_cl && out_cl) {
      const i64 off = (n * P + p0) * C;
      k.same[ti][to](ops::at(x.data, off, isz), ops::at(y, off, osz), len, C, aff);
    } else if (in_cl) {
      k.to_planar[ti][to](ops::at(x.data, (n * P + p0) * C, isz), ops::at(y, n * C * P + p0, osz),
                          len, C, P, aff);
    } else if (out_cl) {
      k.to_channels_last[ti][to](ops::at(x.data, n * C * P + p0, isz), P,
                                 ops::at(y, (n * P + p0) * C, osz), len, C, aff);
    } else {
      for (i64 c = 0; c < C; ++c) {
        const auto u = static_cast<std::size_t>(c);
        const kernels::ChannelAffine one{&af[u], &bf[u], &ad[u], &bd[u]};
        const i64 off = (n * C + c) * P + p0;
        k.same[ti][to](ops::at(x.data, off, isz), ops::at(y, off, osz), len, 1, one);
      }
    }
  });
}

ChannelStatsResult channel_stats(const ImageRef& x) {
  ops::check_image(x);
  if (x.N * x.P >= (std::int64_t{1} << 48))
    ops::fail("channel_stats: at most 2^48 values per channel in one batch");
  const ops::StatPlan s = ops::plan_stats(x);
  if (x.type == PixelType::u8 || x.type == PixelType::u16) return ops::int_channel_stats(x, s);
  return ops::float_channel_stats(x, s);
}

}  // namespace normcpp
