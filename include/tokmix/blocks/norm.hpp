#pragma once
// The norms of transformer and hybrid blocks, each row of the last dimension
// normalised on its own:
//
//   RMSNorm     y = x / sqrt(mean(x^2) + eps) * g
//   LayerNorm   y = (x - mean(x)) / sqrt(var(x) + eps) * g + b      (b optional; biased variance)
//   fused add   h = x + residual; residual_out = h; y = norm(h)     (add_rms_norm / add_layer_norm)
//   QK-norm     RMSNorm over head_dim of every head of q or k in [B, L, H, D], gain [D]
//   gated       Mamba-2 RMSNormGated: y = rmsnorm(x * silu(z)) * g per group of group_size
//               channels; norm_before_gate: y = rmsnorm(x) * g * silu(z) (fla FusedRMSNormGated)
//
// The fused add touches x, residual, residual_out and y once each, as the
// fused add-norm kernels of flash-attn / vLLM do: h is written while its sum
// (of squares) accumulates, and the second pass that LayerNorm's variance
// needs reads h back from L1. LayerNorm uses the two-pass variance
// sum((h - mean)^2) / n, which does not cancel for rows with a large mean.
//
// Shapes: x, y (and residual, residual_out) of one shape, rank 2 to 4, any
// strides with a unit-stride last dimension; the gain (and bias) have the
// last extent. Aliasing: y may be x; residual_out may be x or residual; y must
// not overlap residual_out (it is read back from there) and, in the gated norm,
// must not overlap z. Rows are independent, so threads (exec_policy) cut them
// into ranges and give bit-identical results for any worker count.
//
// ref: Zhang & Sennrich, "Root Mean Square Layer Normalization", NeurIPS 2019;
//      Ba, Kiros & Hinton, "Layer Normalization", 2016; Dehghani et al.,
//      "Scaling Vision Transformers to 22B Parameters", 2023 (QK-norm);
//      Dao & Gu, "Transformers are SSMs" (Mamba-2), 2024, sec. 7 (gated norm).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "tokmix/core/third_party.hpp"

#include "tokmix/core/error.hpp"
#include "tokmix/core/named_tensors.hpp"
#include "tokmix/core/random.hpp"
#include "tokmix/core/tensor_view.hpp"
#include "tokmix/core/threading.hpp"
#include "tokmix/simd/activation.hpp"
#include "tokmix/simd/norm.hpp"
#include "tokmix/simd/reduce.hpp"

TOKMIX_SIMD_AVX512_WARNINGS_OFF
namespace tokmix {

namespace detail {

inline void norm_require_eps(float eps) {
  // eps = 0 would turn an all-zero row (padding) into 0 * inf = NaN.
  require(std::isfinite(eps) && eps > 0.f, "norm eps", "a finite value > 0", eps);
}

inline Eigen::VectorXf norm_load_vector(const named_tensors& t, const std::string& name, index_t dim) {
  const auto& e = t.at(name, {dim});
  return Eigen::Map<const Eigen::VectorXf>(e.data.data(), dim);
}

inline void norm_save_vector(named_tensors& t, const std::string& name, const Eigen::VectorXf& v) {
  t.insert(name, {static_cast<index_t>(v.size())}, std::vector<float>(v.data(), v.data() + v.size()));
}

inline Eigen::VectorXf norm_random_vector(index_t dim, std::uint64_t seed, double centre, double spread) {
  random_stream g(seed);
  Eigen::VectorXf v(dim);
  for (index_t i = 0; i < dim; ++i) v[i] = static_cast<float>(centre + g.uniform(-spread, spread));
  return v;
}

}  // namespace detail

struct rms_norm_weights {
  Eigen::VectorXf weight;  // [dim] gain g
  float eps = 1e-6f;

  index_t dim() const { return weight.size(); }

  // The reference init (torch RMSNorm / HF LlamaRMSNorm): g = 1.
  static rms_norm_weights ones(index_t dim, float eps = 1e-6f) {
    require(dim >= 1, "norm dim", ">= 1", dim);
    detail::norm_require_eps(eps);
    return {Eigen::VectorXf::Ones(dim), eps};
  }
  // g = 1 + U(-0.25, 0.25): for tests and synthetic models that must exercise the gain.
  static rms_norm_weights random(index_t dim, std::uint64_t seed, float eps = 1e-6f) {
    require(dim >= 1, "norm dim", ">= 1", dim);
    detail::norm_require_eps(eps);
    return {detail::norm_random_vector(dim, seed, 1.0, 0.25), eps};
  }
  // `prefix.weight` [dim] (e.g. "input_layernorm", "norm", "q_norm").
  static rms_norm_weights load(const named_tensors& t, const std::string& prefix, index_t dim, float eps = 1e-6f) {
    detail::norm_require_eps(eps);
    return {detail::norm_load_vector(t, prefix + ".weight", dim), eps};
  }
  void save(named_tensors& t, const std::string& prefix) const { detail::norm_save_vector(t, prefix + ".weight", weight); }
};

struct layer_norm_weights {
  Eigen::VectorXf weight;  // [dim] gain g
  Eigen::VectorXf bias;    // [dim] shift b, or empty (nn.LayerNorm(bias=False))
  float eps = 1e-5f;

  index_t dim() const { return weight.size(); }
  bool has_bias() const { return bias.size() != 0; }

  // nn.LayerNorm's init: g = 1, b = 0.
  static layer_norm_weights ones(index_t dim, bool with_bias = true, float eps = 1e-5f) {
    require(dim >= 1, "norm dim", ">= 1", dim);
    detail::norm_require_eps(eps);
    layer_norm_weights w{Eigen::VectorXf::Ones(dim), Eigen::VectorXf(), eps};
    if (with_bias) w.bias = Eigen::VectorXf::Zero(dim);
    return w;
  }
  // g = 1 + U(-0.25, 0.25), b = U(-0.25, 0.25).
  static layer_norm_weights random(index_t dim, bool with_bias, std::uint64_t seed, float eps = 1e-5f) {
    require(dim >= 1, "norm dim", ">= 1", dim);
    detail::norm_require_eps(eps);
    layer_norm_weights w{detail::norm_random_vector(dim, seed, 1.0, 0.25), Eigen::VectorXf(), eps};
    if (with_bias) w.bias = detail::norm_random_vector(dim, random_stream::derive(seed, 1), 0.0, 0.25);
    return w;
  }
  // `prefix.weight` [dim] and, when with_bias, `prefix.bias` [dim].
  static layer_norm_weights load(const named_tensors& t, const std::string& prefix, index_t dim, bool with_bias,
                                 float eps = 1e-5f) {
    detail::norm_require_eps(eps);
    layer_norm_weights w{detail::norm_load_vector(t, prefix + ".weight", dim), Eigen::VectorXf(), eps};
    if (with_bias) w.bias = detail::norm_load_vector(t, prefix + ".bias", dim);
    return w;
  }
  void save(named_tensors& t, const std::string& prefix) const {
    detail::norm_save_vector(t, prefix + ".weight", weight);
    if (has_bias()) detail::norm_save_vector(t, prefix + ".bias", bias);
  }
};

struct gated_rms_norm_options {
  // Channels per normalisation group (mamba's group_size = d_ssm / ngroups);
  // -1 = the whole row. Must divide the row length.
  index_t group_size = -1;
  // false: rmsnorm(x * silu(z)) * g (Mamba-2's default); true: rmsnorm(x) * g * silu(z) (fla).
  bool norm_before_gate = false;
};

namespace detail {

// Rows of a rank 2..4 view: up to three leading dimensions (padded with 1),
// each row d contiguous floats. Inputs are carried as float* but only read.
struct norm_rows {
  float* base = nullptr;
  index_t dims[3] = {1, 1, 1};
  index_t strides[3] = {0, 0, 0};
  index_t d = 0;

  index_t count() const { return dims[0] * dims[1] * dims[2]; }
  float* row(index_t r) const {
    const index_t i2 = r % dims[2];
    r /= dims[2];
    const index_t i1 = r % dims[1], i0 = r / dims[1];
    return base + i0 * strides[0] + i1 * strides[1] + i2 * strides[2];
  }
};

template <class T, int R>
norm_rows make_norm_rows(const tensor_view<T, R>& v) {
  static_assert(R >= 2 && R <= 4, "norms take rank 2 to 4 views ([..., dim])");
  norm_rows rows;
  rows.base = const_cast<float*>(static_cast<const float*>(v.data()));
  for (int i = 0; i < R - 1; ++i) {
    rows.dims[3 - (R - 1) + i] = v.dim(i);
    rows.strides[3 - (R - 1) + i] = v.stride(i);
  }
  rows.d = v.dim(R - 1);
  return rows;
}

template <class X>
using norm_view_t = tensor_view<const float, view_of_t<const X>::rank>;

template <int R>
void norm_check_pair(const char* xname, const tensor_view<const float, R>& x, const char* yname,
                     const tensor_view<float, R>& y) {
  require_layout(xname, x);
  require_layout(yname, y);
  require_shape<float, R>(yname, y, x.dims());
}

template <int R>
void norm_check_gain(const tensor_view<const float, R>& x, index_t gain_dim, const char* what) {
  require(x.dim(R - 1) >= 1, "x", "a last dimension >= 1", "shape " + x.shape_string());
  require(gain_dim == x.dim(R - 1), what, "[" + std::to_string(x.dim(R - 1)) + "] (the last extent of x)",
          "[" + std::to_string(gain_dim) + "]");
}

// Rows per work item: ~32 KiB of input, so an item's rows stay in L1/L2.
inline index_t norm_rows_per_item(index_t d) { return std::max<index_t>(1, 8192 / std::max<index_t>(d, 1)); }

template <class F>
void norm_for_rows(const exec_policy& policy, index_t n_rows, index_t d, F&& f) {
  const index_t per = norm_rows_per_item(d);
  parallel_for(policy, (n_rows + per - 1) / per, [&](index_t item, int) {
    const index_t r1 = std::min(n_rows, (item + 1) * per);
    for (index_t r = item * per; r < r1; ++r) f(r);
  });
}

inline float norm_inv_rms(float sum_sq, index_t d, float eps) {
  return static_cast<float>(1.0 / std::sqrt(static_cast<double>(sum_sq) / static_cast<double>(d) + eps));
}

// One RMSNorm row: y = x * rstd * g.
template <class Arch>
inline void rms_norm_row(Arch arch, const float* x, const float* g, float eps, float* y, index_t d) {
  const float r = norm_inv_rms(simd::detail::sum_squares_kernel(arch, x, d), d, eps);
  simd::detail::center_scale_kernel(arch, x, 0.f, r, g, nullptr, y, d);
}

// One LayerNorm row from x already in place (h for the fused form).
template <class Arch>
inline void layer_norm_row(Arch arch, const float* x, float sum, const float* g, const float* b, float eps, float* y,
                           index_t d) {
  const float mean = static_cast<float>(static_cast<double>(sum) / static_cast<double>(d));
  const float var = simd::detail::centered_sum_squares_kernel(arch, x, mean, d);
  const float r = norm_inv_rms(var, d, eps);
  simd::detail::center_scale_kernel(arch, x, mean, r, g, b, y, d);
}

}  // namespace detail

// y = x / sqrt(mean(x^2) + eps) * g over the last dimension.
//   x, y: [..., dim] (rank 2 to 4)   w.weight: [dim]
template <class X, class Y>
void rms_norm(const X& x_in, const rms_norm_weights& w, Y&& y_in, const exec_policy& policy = {}) {
  const detail::norm_view_t<X> x = as_view(x_in);
  constexpr int R = decltype(x)::rank;
  const tensor_view<float, R> y = as_view(y_in);
  detail::norm_check_pair("x", x, "y", y);
  detail::norm_check_gain(x, w.dim(), "norm weight");
  detail::norm_require_eps(w.eps);
  const auto xr = detail::make_norm_rows(x), yr = detail::make_norm_rows(y);
  const float* g = w.weight.data();
  detail::norm_for_rows(policy, xr.count(), xr.d, [&](index_t r) {
    detail::rms_norm_row(simd::default_arch{}, xr.row(r), g, w.eps, yr.row(r), xr.d);
  });
}

// h = x + residual; residual_out = h; y = rms_norm(h).
//   x, residual, y, residual_out: [..., dim]   w.weight: [dim]
template <class X, class Res, class Y, class RO>
void add_rms_norm(const X& x_in, const Res& residual_in, const rms_norm_weights& w, Y&& y_in, RO&& residual_out_in,
                  const exec_policy& policy = {}) {
  const detail::norm_view_t<X> x = as_view(x_in);
  constexpr int R = decltype(x)::rank;
  const tensor_view<const float, R> res = as_view(residual_in);
  const tensor_view<float, R> y = as_view(y_in), ro = as_view(residual_out_in);
  detail::norm_check_pair("x", x, "y", y);
  detail::norm_check_pair("x", x, "residual_out", ro);
  require_layout("residual", res);
  require_shape<const float, R>("residual", res, x.dims());
  detail::norm_check_gain(x, w.dim(), "norm weight");
  detail::norm_require_eps(w.eps);
  const auto xr = detail::make_norm_rows(x), rr = detail::make_norm_rows(res), yr = detail::make_norm_rows(y),
             hr = detail::make_norm_rows(ro);
  const float* g = w.weight.data();
  const index_t d = xr.d;
  detail::norm_for_rows(policy, xr.count(), d, [&](index_t r) {
    const simd::default_arch arch{};
    float* h = hr.row(r);
    const float ss = simd::detail::add_and_sum_kernel<true>(arch, xr.row(r), rr.row(r), h, d);
    simd::detail::center_scale_kernel(arch, h, 0.f, detail::norm_inv_rms(ss, d, w.eps), g, nullptr, yr.row(r), d);
  });
}

// y = (x - mean) / sqrt(var + eps) * g + b over the last dimension.
//   x, y: [..., dim]   w.weight, w.bias: [dim] (bias may be empty)
template <class X, class Y>
void layer_norm(const X& x_in, const layer_norm_weights& w, Y&& y_in, const exec_policy& policy = {}) {
  const detail::norm_view_t<X> x = as_view(x_in);
  constexpr int R = decltype(x)::rank;
  const tensor_view<float, R> y = as_view(y_in);
  detail::norm_check_pair("x", x, "y", y);
  detail::norm_check_gain(x, w.dim(), "norm weight");
  if (w.has_bias()) detail::norm_check_gain(x, w.bias.size(), "norm bias");
  detail::norm_require_eps(w.eps);
  const auto xr = detail::make_norm_rows(x), yr = detail::make_norm_rows(y);
  const float* g = w.weight.data();
  const float* b = w.has_bias() ? w.bias.data() : nullptr;
  detail::norm_for_rows(policy, xr.count(), xr.d, [&](index_t r) {
    const simd::default_arch arch{};
    const float* xp = xr.row(r);
    detail::layer_norm_row(arch, xp, simd::detail::reduce_sum_kernel(arch, xp, xr.d), g, b, w.eps, yr.row(r), xr.d);
  });
}

// h = x + residual; residual_out = h; y = layer_norm(h).
//   x, residual, y, residual_out: [..., dim]   w.weight, w.bias: [dim]
template <class X, class Res, class Y, class RO>
void add_layer_norm(const X& x_in, const Res& residual_in, const layer_norm_weights& w, Y&& y_in, RO&& residual_out_in,
                    const exec_policy& policy = {}) {
  const detail::norm_view_t<X> x = as_view(x_in);
  constexpr int R = decltype(x)::rank;
  const tensor_view<const float, R> res = as_view(residual_in);
  const tensor_view<float, R> y = as_view(y_in), ro = as_view(residual_out_in);
  detail::norm_check_pair("x", x, "y", y);
  detail::norm_check_pair("x", x, "residual_out", ro);
  require_layout("residual", res);
  require_shape<const float, R>("residual", res, x.dims());
  detail::norm_check_gain(x, w.dim(), "norm weight");
  if (w.has_bias()) detail::norm_check_gain(x, w.bias.size(), "norm bias");
  detail::norm_require_eps(w.eps);
  const auto xr = detail::make_norm_rows(x), rr = detail::make_norm_rows(res), yr = detail::make_norm_rows(y),
             hr = detail::make_norm_rows(ro);
  const float* g = w.weight.data();
  const float* b = w.has_bias() ? w.bias.data() : nullptr;
  const index_t d = xr.d;
  detail::norm_for_rows(policy, xr.count(), d, [&](index_t r) {
    const simd::default_arch arch{};
    float* h = hr.row(r);
    const float sum = simd::detail::add_and_sum_kernel<false>(arch, xr.row(r), rr.row(r), h, d);
    detail::layer_norm_row(arch, h, sum, g, b, w.eps, yr.row(r), d);
  });
}

// QK-norm: RMSNorm over head_dim of every (batch, token, head) row, one gain
// of [head_dim] shared by the heads (Qwen3 / OLMo-2 q_norm and k_norm).
//   x: [batch, seq, heads, head_dim], normalised in place   w.weight: [head_dim]
template <class X>
void qk_norm(X&& x_in, const rms_norm_weights& w, const exec_policy& policy = {}) {
  const tensor_view<float, 4> x = as_view(x_in);
  require_layout("x", x);
  detail::norm_check_gain(tensor_view<const float, 4>(x), w.dim(), "qk_norm weight");
  detail::norm_require_eps(w.eps);
  const auto xr = detail::make_norm_rows(x);
  const float* g = w.weight.data();
  detail::norm_for_rows(policy, xr.count(), xr.d, [&](index_t r) {
    float* p = xr.row(r);
    detail::rms_norm_row(simd::default_arch{}, p, g, w.eps, p, xr.d);
  });
}

// Gated RMSNorm per group of channels:
//   norm_before_gate = false: y = rmsnorm(x * silu(z)) * g       (mamba_ssm RMSNormGated)
//   norm_before_gate = true:  y = rmsnorm(x) * g * silu(z)       (fla FusedRMSNormGated)
// The mean of squares runs over each group of group_size channels.
//   x, z, y: [..., dim] (rank 2 to 4)   w.weight: [dim]
template <class X, class Z, class Y>
void gated_rms_norm(const X& x_in, const Z& z_in, const rms_norm_weights& w, Y&& y_in,
                    const gated_rms_norm_options& opt = {}, const exec_policy& policy = {}) {
  const detail::norm_view_t<X> x = as_view(x_in);
  constexpr int R = decltype(x)::rank;
  const tensor_view<const float, R> z = as_view(z_in);
  const tensor_view<float, R> y = as_view(y_in);
  detail::norm_check_pair("x", x, "y", y);
  require_layout("z", z);
  require_shape<const float, R>("z", z, x.dims());
  detail::norm_check_gain(x, w.dim(), "norm weight");
  detail::norm_require_eps(w.eps);
  const index_t d = x.dim(R - 1);
  const index_t gs = opt.group_size < 0 ? d : opt.group_size;
  require(gs >= 1 && d % gs == 0, "group_size", "a divisor of the last extent " + std::to_string(d) + " (or -1)",
          opt.group_size);
  const auto xr = detail::make_norm_rows(x), zr = detail::make_norm_rows(z), yr = detail::make_norm_rows(y);
  const float* g = w.weight.data();
  detail::norm_for_rows(policy, xr.count(), d, [&](index_t r) {
    const simd::default_arch arch{};
    const float* xp = xr.row(r);
    const float* zp = zr.row(r);
    float* yp = yr.row(r);
    for (index_t o = 0; o < d; o += gs) {
      if (opt.norm_before_gate) {
        detail::rms_norm_row(arch, xp + o, g + o, w.eps, yp + o, gs);
        simd::detail::gated_activation_kernel<simd::activation_kind::silu>(arch, zp + o, yp + o, yp + o, gs);
      } else {
        simd::detail::gated_activation_kernel<simd::activation_kind::silu>(arch, zp + o, xp + o, yp + o, gs);
        detail::rms_norm_row(arch, yp + o, g + o, w.eps, yp + o, gs);
      }
    }
  });
}

}  // namespace tokmix
TOKMIX_SIMD_AVX512_WARNINGS_ON
