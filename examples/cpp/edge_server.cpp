// An edge-server use of the normcpp C++ API (no Python): requests arrive in batches; each batch
// goes through
//   1. BatchNorm in eval mode on channels-last (NHWC) feature maps, in place, with the model's
//      running statistics and affine parameters (the CNN stem of a vision model), and
//   2. LayerNorm over the hidden size of a batch of token embeddings (a transformer block).
// It prints the ISA level the library picked, the threads, and per-batch timings.
//
//   edge_server [--isa baseline|avx2|avx512|neon] [--threads N] [--batches N] [--batch N]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <random>
#include <string>
#include <vector>

#include "normcpp/normcpp.hpp"

namespace {

using Clock = std::chrono::steady_clock;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& e : v) s += (s.empty() ? "" : ",") + e;
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  std::string isa;
  int threads = 0, batches = 20;
  std::int64_t batch = 16;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--isa" && i + 1 < argc) {
      isa = argv[++i];
    } else if (a == "--threads" && i + 1 < argc) {
      threads = std::atoi(argv[++i]);
    } else if (a == "--batches" && i + 1 < argc) {
      batches = std::max(1, std::atoi(argv[++i]));
    } else if (a == "--batch" && i + 1 < argc) {
      batch = std::max(1, std::atoi(argv[++i]));
    } else {
      std::fprintf(stderr, "usage: %s [--isa NAME] [--threads N] [--batches N] [--batch N]\n",
                   argv[0]);
      return 2;
    }
  }
  try {
    if (!isa.empty()) normcpp::select_isa(isa);
    if (threads > 0) normcpp::set_num_threads(threads);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "edge_server: %s\n", e.what());
    return 2;
  }
  std::printf("normcpp %s | ISA: %s (compiled: %s; this CPU: %s) | threads: %d%s\n",
              normcpp::version(), normcpp::selected_isa().c_str(),
              join(normcpp::compiled_isas()).c_str(), join(normcpp::supported_isas()).c_str(),
              normcpp::get_num_threads(), normcpp::has_openmp() ? " (OpenMP)" : "");

  // ---- model state: a BatchNorm2d(64) and a LayerNorm(768), float32 parameters.
  const std::int64_t C = 64, H = 56, W = 56, T = 128, D = 768;
  std::mt19937 gen(1234);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> run_mean(C), run_var(C), bn_w(C), bn_b(C), ln_w(D), ln_b(D);
  for (std::int64_t c = 0; c < C; ++c) {
    run_mean[c] = 0.1f * normal(gen);
    run_var[c] = 1.0f + 0.1f * std::fabs(normal(gen));
    bn_w[c] = 1.0f + 0.05f * normal(gen);
    bn_b[c] = 0.05f * normal(gen);
  }
  for (std::int64_t j = 0; j < D; ++j) {
    ln_w[j] = 1.0f;
    ln_b[j] = 0.0f;
  }
  const normcpp::ParamRef bw{bn_w.data(), normcpp::DType::f32, C, 1};
  const normcpp::ParamRef bb{bn_b.data(), normcpp::DType::f32, C, 1};
  const normcpp::ParamRef lw{ln_w.data(), normcpp::DType::f32, D, 1};
  const normcpp::ParamRef lb{ln_b.data(), normcpp::DType::f32, D, 1};
  // Eval mode reads the running statistics only; MutParamRef is the API's type for them.
  const normcpp::RunningUpdate running{{run_mean.data(), normcpp::DType::f32, C, 1},
                                       {run_var.data(), normcpp::DType::f32, C, 1},
                                       0.1};

  // ---- request buffers (reused for every batch: no allocation on the serving path).
  std::vector<float> images(static_cast<std::size_t>(batch * H * W * C));  // NHWC
  std::vector<float> tokens(static_cast<std::size_t>(batch * T * D));
  std::vector<double> bn_ms, ln_ms;
  for (int it = 0; it < batches; ++it) {
    for (auto& v : images) v = normal(gen);
    for (auto& v : tokens) v = 2.0f + 3.0f * normal(gen);

    auto t0 = Clock::now();
    // BatchNorm eval, channels-last, in place (x == y).
    normcpp::batch_norm({images.data(), images.data(), normcpp::DType::f32, batch, C, H * W,
                         normcpp::Layout::channels_last},
                        running, bw, bb, /*training=*/false, 1e-5);
    auto t1 = Clock::now();
    // LayerNorm over D for every token of every sequence, in place.
    normcpp::layer_norm(tokens.data(), tokens.data(), normcpp::DType::f32, batch * T, D, lw, lb,
                        1e-5);
    auto t2 = Clock::now();
    bn_ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
    ln_ms.push_back(std::chrono::duration<double, std::milli>(t2 - t1).count());
  }

  // ---- sanity: every normalized token has mean ~0 and variance ~1.
  double worst = 0.0;
  for (std::int64_t r = 0; r < batch * T; r += 97) {
    double m = 0.0, q = 0.0;
    for (std::int64_t j = 0; j < D; ++j) m += tokens[static_cast<std::size_t>(r * D + j)];
    m /= static_cast<double>(D);
    for (std::int64_t j = 0; j < D; ++j) {
      const double d = tokens[static_cast<std::size_t>(r * D + j)] - m;
      q += d * d;
    }
    worst = std::max({worst, std::fabs(m), std::fabs(q / static_cast<double>(D) - 1.0)});
  }

  const double bn_mb = static_cast<double>(images.size() * sizeof(float)) / 1e6;
  const double ln_mb = static_cast<double>(tokens.size() * sizeof(float)) / 1e6;
  const double bn_t = median(bn_ms), ln_t = median(ln_ms);
  std::printf(
      "batch_norm eval NHWC  %lldx%lldx%lldx%lld f32 in place: %8.3f ms/batch  "
      "(%.1f GB/s read+write)\n",
      static_cast<long long>(batch), static_cast<long long>(H), static_cast<long long>(W),
      static_cast<long long>(C), bn_t, 2.0 * bn_mb / bn_t);
  std::printf(
      "layer_norm %lldx%lld rows of %lld f32 in place:       %8.3f ms/batch  "
      "(%.1f GB/s read+write)\n",
      static_cast<long long>(batch), static_cast<long long>(T), static_cast<long long>(D), ln_t,
      2.0 * ln_mb / ln_t);
  std::printf("median of %d batches; layer_norm check: max |mean|, |var - 1| = %.2e\n", batches,
              worst);
  if (!(worst < 1e-3)) {
    std::fprintf(stderr, "edge_server: layer_norm output is not normalized\n");
    return 1;
  }
  return 0;
}
