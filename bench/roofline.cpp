// One core's memory roofline for a normalization's two visits (issue 3, target 2).
//
// A training-mode norm whose statistic slots fit in L2 reads each slot twice -- statistics,
// then the normalization -- but from memory only once. This program times, with the simplest
// kernels possible (no shift, no merges, no coefficients), how long such a schedule takes on
// one core against a copy of the same bytes, so that normcpp's figures can be read against
// what the machine allows. The data: 32 samples of 800 KB of float32 (25.7 MB, the size of
// (32,64,56,56)); every variant writes its output with streaming stores, as normcpp does for
// outputs this large.
//
//   copy_plain      y = x, plain stores
//   copy_stream     y = x, streaming stores
//   stats           read x once (sums and sums of squares): the statistics visit alone
//   eval            y = a x + b from memory, streamed: the normalization visit alone
//   stats+apply     per sample: statistics, then the normalization re-read from cache
//                   (normcpp's schedule for slots that fit)
//   interleaved_4K  the same, with sample s + 1's statistics done 4 KB at a time between
//                   4 KB pieces of sample s's normalization (reads and stores overlap)
//   interleaved_64K the same in pieces of 64 KB
//
// Build and run (an AVX-512 machine; one thread, so pin it if the machine is busy):
//   g++ -O2 -mavx512f -o /tmp/roofline bench/roofline.cpp && /tmp/roofline
// It prints min and median microseconds over interleaved repeats and each variant's median
// over copy_stream's. bench/RESULTS.md quotes a run.
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace {

constexpr long kSamples = 32, kSample = 200704;  // elements: 800 KB of float32 a sample
float *X, *Y;
volatile float sink;

void copy_plain(const float* x, float* y, long n) {
  for (long i = 0; i < n; i += 16) _mm512_storeu_ps(y + i, _mm512_loadu_ps(x + i));
}
void copy_stream(const float* x, float* y, long n) {
  for (long i = 0; i < n; i += 16) _mm512_stream_ps(y + i, _mm512_loadu_ps(x + i));
}
void stats(const float* x, long n) {
  __m512 s0 = _mm512_setzero_ps(), s1 = s0, q0 = s0, q1 = s0;
  for (long i = 0; i < n; i += 32) {
    const __m512 u = _mm512_loadu_ps(x + i), w = _mm512_loadu_ps(x + i + 16);
    s0 = _mm512_add_ps(s0, u);
    s1 = _mm512_add_ps(s1, w);
    q0 = _mm512_fmadd_ps(u, u, q0);
    q1 = _mm512_fmadd_ps(w, w, q1);
  }
  float lanes[16];
  _mm512_storeu_ps(lanes, _mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(q0, q1)));
  float total = 0.0f;
  for (float v : lanes) total += v;
  sink = sink + total;
}
void apply(const float* x, float* y, long n) {
  const __m512 a = _mm512_set1_ps(1.1f), b = _mm512_set1_ps(0.3f);
  for (long i = 0; i < n; i += 16)
    _mm512_stream_ps(y + i, _mm512_fmadd_ps(_mm512_loadu_ps(x + i), a, b));
}
void interleaved(long piece) {
  stats(X, kSample);
  for (long s = 0; s < kSamples; ++s)
    for (long b = 0; b < kSample; b += piece) {
      const long n = std::min(piece, kSample - b);
      if (s + 1 < kSamples) stats(X + (s + 1) * kSample + b, n);
      apply(X + s * kSample + b, Y + s * kSample + b, n);
    }
}

}  // namespace

int main() {
  const long total = kSamples * kSample;
  X = static_cast<float*>(std::aligned_alloc(64, total * sizeof(float)));
  Y = static_cast<float*>(std::aligned_alloc(64, total * sizeof(float)));
  for (long i = 0; i < total; ++i) X[i] = Y[i] = static_cast<float>(i % 7);
  const char* names[] = {"copy_plain", "copy_stream",    "stats",          "eval",
                         "stats+apply", "interleaved_4K", "interleaved_64K"};
  constexpr int kV = 7, kReps = 40;
  std::vector<std::vector<double>> t(kV);
  for (int rep = 0; rep < kReps; ++rep)
    for (int v = 0; v < kV; ++v) {
      const auto t0 = std::chrono::steady_clock::now();
      switch (v) {
        case 0: copy_plain(X, Y, total); break;
        case 1: copy_stream(X, Y, total); break;
        case 2: stats(X, total); break;
        case 3: apply(X, Y, total); break;
        case 4:
          for (long s = 0; s < kSamples; ++s) {
            stats(X + s * kSample, kSample);
            apply(X + s * kSample, Y + s * kSample, kSample);
          }
          break;
        case 5: interleaved(1024); break;
        default: interleaved(16384); break;
      }
      _mm_sfence();
      t[v].push_back(
          std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0)
              .count());
    }
  for (auto& a : t) std::sort(a.begin(), a.end());
  const double ref = t[1][kReps / 2];
  std::printf("%-16s %8s %8s %8s\n", "variant", "min_us", "med_us", "/copy");
  for (int v = 0; v < kV; ++v)
    std::printf("%-16s %8.0f %8.0f %8.2f\n", names[v], t[v][0], t[v][kReps / 2],
                t[v][kReps / 2] / ref);
  std::free(X);
  std::free(Y);
  return 0;
}
