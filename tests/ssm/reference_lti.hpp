#pragma once
// Float64 references for the long-convolution, diagonal LTI and AFT mixers,
// written straight from the definitions (loops over the formula, no
// reordering), so the tests compare the fast paths against the math.

#include <algorithm>
#include <cmath>
#include <complex>
#include <cstddef>
#include <vector>

namespace tokmix_test {
namespace lti_ref {

using cd = std::complex<double>;

// y[b,t,c] = sum_{k<=t,k<K} h[c,k] x[b,t-k,c] + skip[c] x[b,t,c]; x dense [B, L, C].
inline std::vector<double> long_conv(const std::vector<float>& x, std::size_t B, std::size_t L, std::size_t C,
                                     const std::vector<float>& h, std::size_t K, const std::vector<float>& skip) {
  std::vector<double> y(B * L * C, 0.0);
  for (std::size_t b = 0; b < B; ++b)
    for (std::size_t t = 0; t < L; ++t)
      for (std::size_t c = 0; c < C; ++c) {
        double acc = skip.empty() ? 0.0 : double(skip[c]) * x[(b * L + t) * C + c];
        for (std::size_t k = 0; k <= t && k < K; ++k) acc += double(h[c * K + k]) * x[(b * L + t - k) * C + c];
        y[(b * L + t) * C + c] = acc;
      }
  return y;
}

struct dilated_layer_ref {
  std::vector<float> w;  // [C, W]
  std::size_t width;
  std::vector<float> bias;  // [C] or empty
  std::size_t dilation;
};

// Stack from zeros: y = layer_n(... layer_0(x)), tap W-1 is the current token.
inline std::vector<double> dilated(const std::vector<float>& x, std::size_t B, std::size_t L, std::size_t C,
                                   const std::vector<dilated_layer_ref>& layers, bool silu) {
  std::vector<double> in(x.begin(), x.end());
  for (const auto& ly : layers) {
    std::vector<double> out(B * L * C, 0.0);
    for (std::size_t b = 0; b < B; ++b)
      for (std::size_t t = 0; t < L; ++t)
        for (std::size_t c = 0; c < C; ++c) {
          double acc = ly.bias.empty() ? 0.0 : ly.bias[c];
          for (std::size_t k = 0; k < ly.width; ++k) {
            const long ts = long(t) - long((ly.width - 1 - k) * ly.dilation);
            if (ts >= 0) acc += double(ly.w[c * ly.width + k]) * in[(b * L + std::size_t(ts)) * C + c];
          }
          if (silu) acc = acc / (1.0 + std::exp(-acc));
          out[(b * L + t) * C + c] = acc;
        }
    in.swap(out);
  }
  return in;
}


// Diagonal LTI recurrence in complex float64. u dense [B, L, H]; params
// [H, N] (discretised); s (re/im interleaved as complex) [B, H, N] in/out.
struct lti_sys_ref {
  std::size_t H, N;
  std::vector<cd> lambda, b, c;
  std::vector<double> d;  // [H] or empty
};

inline std::vector<double> lti(const std::vector<float>& u, std::size_t B, std::size_t L, const lti_sys_ref& p,
                               std::vector<cd>& s) {
  const std::size_t H = p.H, N = p.N;
  std::vector<double> y(B * L * H, 0.0);
  for (std::size_t bi = 0; bi < B; ++bi)
    for (std::size_t h = 0; h < H; ++h)
      for (std::size_t t = 0; t < L; ++t) {
        const double ut = u[(bi * L + t) * H + h];
        double acc = p.d.empty() ? 0.0 : p.d[h] * ut;
        for (std::size_t n = 0; n < N; ++n) {
          cd& st = s[(bi * H + h) * N + n];
          st = p.lambda[h * N + n] * st + p.b[h * N + n] * ut;
          acc += (p.c[h * N + n] * st).real();
        }
        y[(bi * L + t) * H + h] = acc;
      }
  return y;
}


// AFT from the definition with a log-sum-exp per (t, c); w(t, t') is the full
// bias (0 outside a local window is the caller's business). Dense [B, L, d].
template <class W>
std::vector<double> aft(const std::vector<float>& q, const std::vector<float>& k, const std::vector<float>& v,
                        std::size_t B, std::size_t L, std::size_t d, W&& w, bool causal) {
  std::vector<double> y(B * L * d);
  for (std::size_t b = 0; b < B; ++b)
    for (std::size_t t = 0; t < L; ++t)
      for (std::size_t c = 0; c < d; ++c) {
        const std::size_t end = causal ? t + 1 : L;
        double mx = -1e300;
        for (std::size_t tp = 0; tp < end; ++tp) mx = std::max(mx, double(k[(b * L + tp) * d + c]) + w(t, tp));
        double num = 0, den = 0;
        for (std::size_t tp = 0; tp < end; ++tp) {
          const double e = std::exp(double(k[(b * L + tp) * d + c]) + w(t, tp) - mx);
          num += e * v[(b * L + tp) * d + c];
          den += e;
        }
        const double qq = q[(b * L + t) * d + c];
        y[(b * L + t) * d + c] = 1.0 / (1.0 + std::exp(-qq)) * num / den;
      }
  return y;
}

}  // namespace lti_ref
}  // namespace tokmix_test
