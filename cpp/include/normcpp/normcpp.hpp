// normcpp C++ API: normalization ops on raw pointers, shapes and layouts. No Python here.
//
// Data is described as N samples x C channels x S spatial positions in one of two memory
// layouts (contiguous N,C,S or channels-last N,S,C); LayerNorm/RMSNorm see `rows` rows of
// `row_len` contiguous elements. Parameters and running statistics are 1-D arrays of float32
// or float64 with an element stride. Invalid arguments throw std::invalid_argument with a
// message that names the argument.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "normcpp/moments.hpp"

namespace normcpp {

enum class DType : int { f16 = 0, f32 = 1, f64 = 2 };
enum class Layout : int { contiguous = 0, channels_last = 1 };

// Activation fused into the output pass of an inference-mode norm (no second memory pass).
// gelu is the exact (erf) form, as PyTorch's default.
enum class Activation : int { none = 0, relu = 1, relu6 = 2, silu = 3, gelu = 4 };

// A read-only 1-D parameter (weight, bias, running stats in eval). data == nullptr: absent.
struct ParamRef {
  const void* data = nullptr;
  DType dtype = DType::f32;  // f32 or f64
  std::int64_t size = 0;
  std::int64_t stride = 1;  // in elements
  bool present() const { return data != nullptr; }
  double get(std::int64_t i) const {
    if (dtype == DType::f64) return static_cast<const double*>(data)[i * stride];
    return static_cast<double>(static_cast<const float*>(data)[i * stride]);
  }
};

// A writable 1-D array (running statistics updated in training).
struct MutParamRef {
  void* data = nullptr;
  DType dtype = DType::f32;  // f32 or f64
  std::int64_t size = 0;
  std::int64_t stride = 1;
  bool present() const { return data != nullptr; }
  ParamRef as_const() const { return {data, dtype, size, stride}; }
  double get(std::int64_t i) const { return as_const().get(i); }
  void set(std::int64_t i, double v) const {
    if (dtype == DType::f64)
      static_cast<double*>(data)[i * stride] = v;
    else
      static_cast<float*>(data)[i * stride] = static_cast<float>(v);
  }
};

// An (N, C, S) tensor and where its result goes. x and y may be the same pointer.
struct NCSRef {
  const void* x = nullptr;
  void* y = nullptr;
  DType dtype = DType::f32;
  std::int64_t N = 0, C = 0, S = 0;
  Layout layout = Layout::contiguous;
};

// Optional per-slot outputs for a backward pass: mean and 1/sqrt(var + eps) in double.
struct SavedStats {
  double* mean = nullptr;
  double* invstd = nullptr;
};

// Running-statistics update rule shared by batch_norm and instance_norm.
// Non-finite batch statistics (NaN/inf in the batch) would destroy the running statistics:
// by default the update throws std::invalid_argument before touching them
// (allow_nonfinite = false); with allow_nonfinite they propagate, as in PyTorch.
struct RunningUpdate {
  MutParamRef mean, var;
  double momentum = 0.1;  // new = (1 - momentum) * old + momentum * batch
  bool allow_nonfinite = false;
};

// BatchNorm: statistics per channel over N and S. training: batch statistics (biased variance)
// and, if running stats are given, their update with the unbiased variance. Otherwise the
// running statistics normalize. saved (training only) receives per-channel mean and invstd.
// act (eval mode only) is applied to the output in the same pass.
void batch_norm(const NCSRef& t, const RunningUpdate& running, ParamRef weight, ParamRef bias,
                bool training, double eps, SavedStats saved = {},
                Activation act = Activation::none);

// InstanceNorm: statistics per (n, c) over S. With use_input_stats and running stats, the
// running stats get the batch mean of the instance means/unbiased variances.
void instance_norm(const NCSRef& t, const RunningUpdate& running, ParamRef weight,
                   ParamRef bias, bool use_input_stats, double eps, SavedStats saved = {});

// GroupNorm: statistics per (n, group of C/groups channels) over those channels and S.
void group_norm(const NCSRef& t, std::int64_t groups, ParamRef weight, ParamRef bias,
                double eps, SavedStats saved = {}, Activation act = Activation::none);

// LayerNorm over rows of row_len contiguous elements; weight/bias are per element (row_len).
void layer_norm(const void* x, void* y, DType dtype, std::int64_t rows, std::int64_t row_len,
                ParamRef weight, ParamRef bias, double eps, SavedStats saved = {},
                Activation act = Activation::none);

// RMSNorm: y = x / sqrt(mean(x^2) + eps) * weight. saved.invstd receives 1/rms per row.
void rms_norm(const void* x, void* y, DType dtype, std::int64_t rows, std::int64_t row_len,
              ParamRef weight, double eps, SavedStats saved = {});

// ---- Backward passes. x is the forward input, dy the gradient of the output, dx receives the
// gradient of the input (same layout; dx may alias dy). mean/invstd are what the forward
// saved (per slot, double). grad_weight/grad_bias (double, per channel or element) are
// optional outputs.
struct NCSGradRef {
  const void* x = nullptr;
  const void* dy = nullptr;
  void* dx = nullptr;
  DType dtype = DType::f32;
  std::int64_t N = 0, C = 0, S = 0;
  Layout layout = Layout::contiguous;
};

// training: through the batch statistics; otherwise of the frozen map dx = dy * w * invstd.
void batch_norm_backward(const NCSGradRef& t, ParamRef weight, const double* mean,
                         const double* invstd, bool training, double* grad_weight,
                         double* grad_bias);
// Per-channel count, mean and M2 (SyncBatchNorm, recalibration). t.y is not used.
void batch_norm_stats(const NCSRef& t, double* count, double* mean, double* m2);
// Per-channel sum(dy) and sum(dy * xhat). t.dx is not used.
void batch_norm_backward_reduce(const NCSGradRef& t, const double* mean, const double* invstd,
                                double* sum_dy, double* sum_dy_xhat);
// dx = w * invstd * (dy - sum_dy / count - xhat * sum_dy_xhat / count) with global sums.
void batch_norm_backward_elemt(const NCSGradRef& t, ParamRef weight, const double* mean,
                               const double* invstd, const double* sum_dy,
                               const double* sum_dy_xhat, double count);
void instance_norm_backward(const NCSGradRef& t, ParamRef weight, const double* mean,
                            const double* invstd, double* grad_weight, double* grad_bias);
void group_norm_backward(const NCSGradRef& t, std::int64_t groups, ParamRef weight,
                         const double* mean, const double* invstd, double* grad_weight,
                         double* grad_bias);
void layer_norm_backward(const void* x, const void* dy, void* dx, DType dtype, std::int64_t rows,
                         std::int64_t row_len, ParamRef weight, const double* mean,
                         const double* invstd, double* grad_weight, double* grad_bias);
// invrms: 1 / sqrt(mean(x^2) + eps) per row, as rms_norm saved it (SavedStats::invstd).
void rms_norm_backward(const void* x, const void* dy, void* dx, DType dtype, std::int64_t rows,
                       std::int64_t row_len, ParamRef weight, const double* invrms,
                       double* grad_weight);

// Threads (OpenMP when built with it). 0 or less restores the default.
void set_num_threads(int n);
int get_num_threads();
bool has_openmp();

// Outputs of at least this many bytes are written with non-temporal (streaming) stores, which
// bypass the caches: no read-for-ownership of each output line, and the inputs keep the cache.
// The values are bitwise the same either way; an output written over an input (in place) is
// never streamed. Default: a quarter of the last-level cache, at most 8 L2 caches and at
// least 2 MiB (4 MiB where the last-level cache is over 64 MiB or its size unknown; sizes
// from Linux's sysfs, else sysconf), and then only where each thread's share of input and output
// (2 x bytes / threads) exceeds half a core's L2 (a smaller share stays cached for its
// reader); or NORMCPP_STREAM_BYTES from the environment, which like a value set here streams
// from exactly that many bytes. A negative value restores the default; 0 streams every output.
void set_stream_threshold(std::int64_t bytes);
std::int64_t get_stream_threshold();

// ISA dispatch. compiled_isas(): levels built into this binary, lowest first.
// select_isa(name): force a level; throws std::invalid_argument for an unknown or uncompiled
// name and std::runtime_error when the CPU lacks it.
std::vector<std::string> compiled_isas();
std::vector<std::string> supported_isas();  // compiled and runnable on this CPU
std::string selected_isa();
void select_isa(const std::string& name);

const char* version();

// ---- Images and dataset statistics
// Element types of image data: uint8, uint16 and the float types.
enum class PixelType : int { u8 = 0, u16 = 1, f16 = 2, f32 = 3, f64 = 4 };

// N images of C channels and P pixels (H * W) each, C-contiguous, either planar
// (N, C, P: Layout::contiguous, i.e. NCHW) or channels-last (N, P, C: Layout::channels_last,
// i.e. NHWC).
struct ImageRef {
  const void* data = nullptr;
  PixelType type = PixelType::u8;
  std::int64_t N = 0, C = 0, P = 0;
  Layout layout = Layout::channels_last;
};

// y = (x * scale - mean[c]) / stdev[c] in one pass: element conversion, per-channel affine and
// layout change. y (out_type f32 or f16) is C-contiguous in out_layout and must not overlap x,
// except y == x with the same layout and element size (in place). mean and stdev have C
// entries; stdev must be finite and non-zero, mean and scale finite. Threads over (image,
// pixel chunk); the result does not depend on the thread count.
void normalize_images(const ImageRef& x, void* y, DType out_type, Layout out_layout,
                      const double* mean, const double* stdev, double scale);

// Per-channel statistics of an image batch (every C-contiguous tensor with a channel axis is
// an ImageRef: N = the product of the dims before it, P = of the dims after it).
// uint8/uint16: exact — sum and sum of squares in integers (sum_sq as two 64-bit words),
// mean = sum / count and m2 = (count * sum_sq - sum^2) / count computed in 128-bit integers
// and rounded once to double. float16/32/64: accumulated in double (blocked two-pass, Chan
// merge in a fixed order): bitwise identical for any thread count. min/max follow np.min:
// NaN propagates (and makes mean and m2 NaN too).
struct ChannelStatsResult {
  std::int64_t count = 0;  // values per channel: N * P
  std::vector<double> mean, m2, min, max;
  bool exact = false;  // integer input: the sums below are filled
  std::vector<std::uint64_t> sum, sum_sq_lo, sum_sq_hi;
};
ChannelStatsResult channel_stats(const ImageRef& x);

}  // namespace normcpp
