#pragma once
// float64 references for the MLP blocks, written from the formulas
// (tests/blocks/mlp.cpp, tests/blocks/moe.cpp).
#include <cmath>
#include <vector>

#include "tokmix/blocks/mlp.hpp"

namespace tokmix_test {
namespace mlp_ref {

using tokmix::index_t;
using tokmix::linear_weights;
using tokmix::mlp_activation;
using tokmix::mlp_weights;

inline double ref_act(mlp_activation a, double x) {
  switch (a) {
    case mlp_activation::silu: return x / (1.0 + std::exp(-x));
    case mlp_activation::gelu_tanh: {
      const double u = std::sqrt(2.0 / 3.14159265358979323846) * (x + 0.044715 * x * x * x);
      return 0.5 * x * (1.0 + std::tanh(u));
    }
    case mlp_activation::gelu_erf: return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0)));
    case mlp_activation::relu: return x > 0 ? x : 0.0;
  }
  return 0;
}

inline double ref_linear(const linear_weights& l, const double* in, index_t o) {
  double s = l.has_bias() ? double(l.bias[o]) : 0.0;
  for (index_t i = 0; i < l.in_features(); ++i) s += double(l.weight(o, i)) * in[i];
  return s;
}

// y = W2 (act(W1 x + b1) [* (W3 x + b3)]) + b2, row by row in float64.
inline std::vector<double> mlp_ref(const mlp_weights& w, const float* x, index_t rows, index_t ldx) {
  const index_t d = w.config.d_model, h = w.config.hidden;
  std::vector<double> y(static_cast<std::size_t>(rows * d)), xr(d), g(h);
  for (index_t r = 0; r < rows; ++r) {
    for (index_t i = 0; i < d; ++i) xr[i] = x[r * ldx + i];
    for (index_t j = 0; j < h; ++j) {
      const double a = ref_linear(w.config.gated ? w.gate : w.up, xr.data(), j);
      g[j] = ref_act(w.config.activation, a) * (w.config.gated ? ref_linear(w.up, xr.data(), j) : 1.0);
    }
    for (index_t o = 0; o < d; ++o) y[static_cast<std::size_t>(r * d + o)] = ref_linear(w.down, g.data(), o);
  }
  return y;
}

// One row, float64 in and out.
inline std::vector<double> mlp_row(const mlp_weights& w, const std::vector<double>& x) {
  const index_t d = w.config.d_model, h = w.config.hidden;
  std::vector<double> g(static_cast<std::size_t>(h)), y(static_cast<std::size_t>(d));
  for (index_t j = 0; j < h; ++j) {
    const double a = ref_linear(w.config.gated ? w.gate : w.up, x.data(), j);
    g[j] = ref_act(w.config.activation, a) * (w.config.gated ? ref_linear(w.up, x.data(), j) : 1.0);
  }
  for (index_t o = 0; o < d; ++o) y[o] = ref_linear(w.down, g.data(), o);
  return y;
}

}  // namespace mlp_ref
}  // namespace tokmix_test
