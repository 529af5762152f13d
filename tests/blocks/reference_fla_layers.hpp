#pragma once
// Float64 pieces of the fla-style layer references (GLA, DeltaNet, retention),
// written plainly: a token's projection, a depthwise causal conv over a whole
// sequence from zeros, the per-head RMSNorm with the optional swish gate.
#include <cmath>
#include <vector>

#include "tokmix/blocks/detail/layer_common.hpp"
#include "tokmix/blocks/linear.hpp"
#include "tokmix/blocks/norm.hpp"

namespace tokmix_test {
namespace fla_layer_ref {

using tokmix::index_t;
using rows = std::vector<std::vector<double>>;

// Token rows of sequence b of x [B, L, d].
inline rows rows_of(const std::vector<float>& x, index_t b, index_t L, index_t d) {
  rows r(static_cast<std::size_t>(L));
  for (index_t t = 0; t < L; ++t) r[t].assign(x.begin() + (b * L + t) * d, x.begin() + (b * L + t + 1) * d);
  return r;
}

inline std::vector<double> linear(const tokmix::linear_weights& w, const std::vector<double>& x) {
  std::vector<double> y(static_cast<std::size_t>(w.out_features()));
  for (index_t o = 0; o < w.out_features(); ++o) {
    double s = w.has_bias() ? double(w.bias[o]) : 0.0;
    for (index_t i = 0; i < w.in_features(); ++i) s += double(w.weight(o, i)) * x[static_cast<std::size_t>(i)];
    y[static_cast<std::size_t>(o)] = s;
  }
  return y;
}

inline rows project_all(const tokmix::linear_weights& w, const rows& xs) {
  rows out;
  for (const auto& x : xs) out.push_back(linear(w, x));
  return out;
}

inline double silu(double v) { return v / (1.0 + std::exp(-v)); }

// out[t, c] = act(bias[c] + sum_k w[c, k] x[t - (W-1) + k, c]), zeros before t = 0.
inline rows conv_silu(const tokmix::depthwise_conv_weights& w, const rows& x, bool act) {
  const index_t W = w.width(), C = w.channels(), L = static_cast<index_t>(x.size());
  rows out(x.size(), std::vector<double>(static_cast<std::size_t>(C)));
  for (index_t t = 0; t < L; ++t)
    for (index_t c = 0; c < C; ++c) {
      double s = w.has_bias() ? double(w.bias[c]) : 0.0;
      for (index_t k = 0; k < W; ++k) {
        const index_t ts = t - (W - 1) + k;
        if (ts >= 0) s += double(w.weight(c, k)) * x[ts][c];
      }
      out[t][c] = act ? silu(s) : s;
    }
  return out;
}

// Per head of dv: o = o / sqrt(mean(o^2) + eps) * w (* silu(g) when given).
inline void head_norm(std::vector<double>& o, index_t H, index_t dv, const tokmix::rms_norm_weights& w,
                      const std::vector<double>* g) {
  for (index_t h = 0; h < H; ++h) {
    double ss = 0;
    for (index_t j = 0; j < dv; ++j) ss += o[h * dv + j] * o[h * dv + j];
    const double r = 1.0 / std::sqrt(ss / dv + w.eps);
    for (index_t j = 0; j < dv; ++j) {
      double v = o[h * dv + j] * r * w.weight[j];
      if (g) v *= silu((*g)[h * dv + j]);
      o[h * dv + j] = v;
    }
  }
}

}  // namespace fla_layer_ref
}  // namespace tokmix_test
