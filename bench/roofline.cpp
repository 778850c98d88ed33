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
//   interleaved_256 the same in pieces of 256 bytes (4 vectors: the finest a kernel's loop
//                   could interleave)
//   rounds_400K_4K  interleaved_4K over rounds of 400 KB (half a sample: the two read
//                   streams 400 KB apart, the normalized round in L2)
//   rounds_3.2M_4K  interleaved_4K over rounds of 3.2 MB (4 samples: streams 3.2 MB apart,
//                   the normalized round in L3, as normcpp's BatchNorm NCHW rounds)
//   bn_rounds_4K    rounds_3.2M_4K in BatchNorm NCHW's layout (see bn_rounds)
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
// Rounds of R elements (R divides the data): round r + 1's statistics `piece` elements at a
// time between pieces of round r's normalization, so the two read streams are R apart.
void interleaved(long piece, long R = kSample) {
  const long rounds = kSamples * kSample / R;
  stats(X, R);
  for (long s = 0; s < rounds; ++s)
    for (long b = 0; b < R; b += piece) {
      const long n = std::min(piece, R - b);
      if (s + 1 < rounds) stats(X + (s + 1) * R + b, n);
      apply(X + s * R + b, Y + s * R + b, n);
    }
}

// interleaved_4K's schedule in BatchNorm NCHW's layout: the data as (32, 64, 3136), rounds
// of 8 channels; in each round, sample by sample, the next round's 8 planes (100 KB in a row,
// then a jump to the next sample) read for statistics between 4 KB pieces of the same
// sample's planes of the current round.
void bn_rounds(long piece) {
  constexpr long N = 32, C = 64, L = 3136, gs = 8, rounds = C / gs, span = gs * L;
  const auto at = [&](long r, long k) { return k * C * L + r * span; };
  for (long k = 0; k < N; ++k) stats(X + at(0, k), span);
  for (long r = 0; r < rounds; ++r)
    for (long k = 0; k < N; ++k)
      for (long b = 0; b < span; b += piece) {
        const long n = std::min(piece, span - b);
        if (r + 1 < rounds) stats(X + at(r + 1, k) + b, n);
        apply(X + at(r, k) + b, Y + at(r, k) + b, n);
      }
}

}  // namespace

int main() {
  const long total = kSamples * kSample;
  X = static_cast<float*>(std::aligned_alloc(64, total * sizeof(float)));
  Y = static_cast<float*>(std::aligned_alloc(64, total * sizeof(float)));
  for (long i = 0; i < total; ++i) X[i] = Y[i] = static_cast<float>(i % 7);
  const char* names[] = {"copy_plain",      "copy_stream",     "stats",
                         "eval",            "stats+apply",     "interleaved_4K",
                         "interleaved_64K", "interleaved_256", "rounds_400K_4K",
                         "rounds_3.2M_4K",  "bn_rounds_4K"};
  constexpr int kV = 11, kReps = 40;
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
        case 6: interleaved(16384); break;
        case 7: interleaved(64); break;
        case 8: interleaved(1024, kSample / 2); break;
        case 9: interleaved(1024, 4 * kSample); break;
        default: bn_rounds(1024); break;
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
