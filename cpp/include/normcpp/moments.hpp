// Moments of a set of values: count, mean and M2 = sum of squared deviations, merged with
// Chan's parallel formula. Everything here is double precision.
#pragma once

#include <cmath>

namespace normcpp {

struct Moments {
  double n = 0.0;
  double mean = 0.0;
  double m2 = 0.0;
};

// Chan et al.: exact merge of two disjoint sets' moments (n, mean, M2).
inline Moments merge_moments(const Moments& a, const Moments& b) {
  if (a.n == 0.0) return b;
  if (b.n == 0.0) return a;
  const double n = a.n + b.n;
  const double f = b.n / n;
  const double d = b.mean - a.mean;
  return {n, a.mean + d * f, a.m2 + b.m2 + d * d * a.n * f};
}

// max(v, 0) that keeps NaN (std::max would too, but this reads as intended).
inline double clamp_nonneg(double v) { return v < 0.0 ? 0.0 : v; }

// 1 / sqrt(var + eps), in double (the planners' and the kernels' one formula).
inline double inv_std(double var, double eps) { return 1.0 / std::sqrt(var + eps); }

}  // namespace normcpp
