#pragma once
// Pointwise nonlinearities of the mixers: silu (Mamba gate, SwiGLU), softplus
// (Mamba's delta), sigmoid (AFT, gates), elu and elu + 1 (linear-attention
// feature map), gelu (tanh approximation and exact erf) and relu (MLPs), and
// the fused gated products act(a) * b of GLU MLPs (SwiGLU, GeGLU, ReGLU).
// Batch-level forms are for use inside fused kernels; array forms (in place
// allowed, y == x, y == a or y == b) for everything else. The exp-based ones
// are built on exp_batch, so they inherit its edge behaviour: no NaN from
// +-inf inputs, NaN stays NaN.

#include <limits>

#include "tokmix/simd/exp.hpp"

TOKMIX_SIMD_AVX512_WARNINGS_OFF
namespace tokmix {
namespace simd {

// Above this softplus(x) returns x (PyTorch's default threshold; the neglected
// log1p(exp(-x)) is < 2.1e-9, below half an ulp of x).
constexpr float softplus_threshold = 20.f;

// 1 / (1 + exp(-x)); sigmoid(-inf) = 0, sigmoid(+inf) = 1.
template <class Arch>
inline fbatch<Arch> sigmoid_batch(const fbatch<Arch>& x) noexcept {
  using fb = fbatch<Arch>;
  return fb(1.f) / (fb(1.f) + exp_batch<Arch>(-x));
}

// x * sigmoid(x); silu(-inf) = -0 (the limit) rather than -inf * 0.
template <class Arch>
inline fbatch<Arch> silu_batch(const fbatch<Arch>& x) noexcept {
  using fb = fbatch<Arch>;
  const fb y = x / (fb(1.f) + exp_batch<Arch>(-x));
  return xsimd::select(x == fb(-std::numeric_limits<float>::infinity()), fb(-0.f), y);
}

// log(1 + exp(x)), x itself above softplus_threshold (no overflow for large x).
// ref: torch.nn.functional.softplus (beta = 1, threshold = 20).
template <class Arch>
inline fbatch<Arch> softplus_batch(const fbatch<Arch>& x) noexcept {
  using fb = fbatch<Arch>;
  return xsimd::select(x > fb(softplus_threshold), x, xsimd::log1p(exp_batch<Arch>(x)));
}

// x for x > 0, exp(x) - 1 otherwise (alpha = 1). Near 0 the polynomial of
// exp(r) - 1 is used directly, avoiding the cancellation of exp(x) - 1.
// ref: Clevert, Unterthiner, Hochreiter, "Fast and Accurate Deep Network Learning by ELUs", 2016.
template <class Arch>
inline fbatch<Arch> elu_batch(const fbatch<Arch>& x) noexcept {
  using fb = fbatch<Arch>;
  const fb small = detail::expm1_reduced<Arch>(x);
  const fb neg = xsimd::select(x > fb(-0.34657359f), small, exp_batch<Arch>(x) - fb(1.f));
  return xsimd::select(x > fb(0.f), x, neg);
}

// elu(x) + 1: x + 1 for x > 0, exp(x) otherwise; positive, so usable as a
// linear-attention feature map.
// ref: Katharopoulos et al., "Transformers are RNNs", ICML 2020 (phi = elu + 1).
template <class Arch>
inline fbatch<Arch> elu_plus_one_batch(const fbatch<Arch>& x) noexcept {
  using fb = fbatch<Arch>;
  return xsimd::select(x > fb(0.f), x + fb(1.f), exp_batch<Arch>(x));
}

// GELU, tanh approximation: 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3).
// Evaluated as x * sigmoid(2u) (1 + tanh(u) = 2 / (1 + exp(-2u))), which has no
// cancellation for negative x; gelu_tanh(-inf) = -0 (the limit).
// ref: Hendrycks & Gimpel, "Gaussian Error Linear Units (GELUs)", 2016, eq. 2;
//      torch.nn.functional.gelu(approximate="tanh").
template <class Arch>
inline fbatch<Arch> gelu_tanh_batch(const fbatch<Arch>& x) noexcept {
  using fb = fbatch<Arch>;
  constexpr float c1 = 1.5957691216057308f;       // 2 sqrt(2/pi)
  constexpr float c3 = 0.071354816273371643f;     // 2 sqrt(2/pi) 0.044715
  const fb two_u = x * xsimd::fma(fb(c3), x * x, fb(c1));
  const fb y = x / (fb(1.f) + exp_batch<Arch>(-two_u));
  return xsimd::select(x == fb(-std::numeric_limits<float>::infinity()), fb(-0.f), y);
}

// GELU, exact: x Phi(x) = 0.5 x erfc(-x / sqrt 2) (erfc rather than 1 + erf,
// which cancels for negative x); gelu_erf(-inf) = -0.
// ref: Hendrycks & Gimpel 2016, eq. 1; torch.nn.functional.gelu(approximate="none").
template <class Arch>
inline fbatch<Arch> gelu_erf_batch(const fbatch<Arch>& x) noexcept {
  using fb = fbatch<Arch>;
  const fb y = fb(0.5f) * x * xsimd::erfc(x * fb(-0.70710678118654752f));
  return xsimd::select(x == fb(-std::numeric_limits<float>::infinity()), fb(-0.f), y);
}

// max(x, 0), NaN stays NaN (torch.relu).
template <class Arch>
inline fbatch<Arch> relu_batch(const fbatch<Arch>& x) noexcept {
  using fb = fbatch<Arch>;
  return xsimd::select(x < fb(0.f), fb(0.f), x);
}

// The activations an MLP applies to its hidden layer (plain or gated), as a
// compile-time choice for fused kernels.
enum class activation_kind { silu, gelu_tanh, gelu_erf, relu };

template <activation_kind K, class Arch>
inline fbatch<Arch> activation_batch(const fbatch<Arch>& x) noexcept {
  if constexpr (K == activation_kind::silu) return silu_batch<Arch>(x);
  else if constexpr (K == activation_kind::gelu_tanh) return gelu_tanh_batch<Arch>(x);
  else if constexpr (K == activation_kind::gelu_erf) return gelu_erf_batch<Arch>(x);
  else return relu_batch<Arch>(x);
}

namespace detail {

// y[i] = f(a[i], b[i]); y may be a or b (each batch is loaded before it is stored).
template <class Arch, class F>
inline void map_binary(Arch, const float* a, const float* b, float* y, index_t n, F&& f) noexcept {
  using fb = fbatch<Arch>;
  constexpr index_t w = lanes<Arch>;
  index_t i = 0;
  for (; i + 2 * w <= n; i += 2 * w) {
    const fb r0 = f(fb::load_unaligned(a + i), fb::load_unaligned(b + i));
    const fb r1 = f(fb::load_unaligned(a + i + w), fb::load_unaligned(b + i + w));
    r0.store_unaligned(y + i);
    r1.store_unaligned(y + i + w);
  }
  for (; i + w <= n; i += w) f(fb::load_unaligned(a + i), fb::load_unaligned(b + i)).store_unaligned(y + i);
  if (i < n) store_partial<Arch>(y + i, f(load_partial<Arch>(a + i, n - i, 0.f), load_partial<Arch>(b + i, n - i, 0.f)), n - i);
}

template <activation_kind K, class Arch>
inline void activation_kernel(Arch, const float* x, float* y, index_t n) noexcept {
  map_unary(Arch{}, x, y, n, [](const fbatch<Arch>& v) { return activation_batch<K, Arch>(v); });
}

// y = act(a) * b, the gate of a GLU MLP, in one pass over a and b.
template <activation_kind K, class Arch>
inline void gated_activation_kernel(Arch, const float* a, const float* b, float* y, index_t n) noexcept {
  map_binary(Arch{}, a, b, y, n,
             [](const fbatch<Arch>& av, const fbatch<Arch>& bv) { return activation_batch<K, Arch>(av) * bv; });
}

inline void require_binary(const float* a, const float* b, const float* y, index_t n) {
  require_length("n", n);
  require_data("a", a, n);
  require_data("b", b, n);
  require_data("y", y, n);
}

template <class Arch>
inline void sigmoid_kernel(Arch, const float* x, float* y, index_t n) noexcept {
  map_unary(Arch{}, x, y, n, [](const fbatch<Arch>& v) { return sigmoid_batch<Arch>(v); });
}
template <class Arch>
inline void silu_kernel(Arch, const float* x, float* y, index_t n) noexcept {
  map_unary(Arch{}, x, y, n, [](const fbatch<Arch>& v) { return silu_batch<Arch>(v); });
}
template <class Arch>
inline void softplus_kernel(Arch, const float* x, float* y, index_t n) noexcept {
  map_unary(Arch{}, x, y, n, [](const fbatch<Arch>& v) { return softplus_batch<Arch>(v); });
}
template <class Arch>
inline void elu_kernel(Arch, const float* x, float* y, index_t n) noexcept {
  map_unary(Arch{}, x, y, n, [](const fbatch<Arch>& v) { return elu_batch<Arch>(v); });
}
template <class Arch>
inline void elu_plus_one_kernel(Arch, const float* x, float* y, index_t n) noexcept {
  map_unary(Arch{}, x, y, n, [](const fbatch<Arch>& v) { return elu_plus_one_batch<Arch>(v); });
}

inline void require_unary(const float* x, const float* y, index_t n) {
  require_length("n", n);
  require_data("x", x, n);
  require_data("y", y, n);
}

}  // namespace detail

inline void sigmoid(const float* x, float* y, index_t n) {
  detail::require_unary(x, y, n);
  detail::sigmoid_kernel(default_arch{}, x, y, n);
}
inline void silu(const float* x, float* y, index_t n) {
  detail::require_unary(x, y, n);
  detail::silu_kernel(default_arch{}, x, y, n);
}
inline void softplus(const float* x, float* y, index_t n) {
  detail::require_unary(x, y, n);
  detail::softplus_kernel(default_arch{}, x, y, n);
}
inline void elu(const float* x, float* y, index_t n) {
  detail::require_unary(x, y, n);
  detail::elu_kernel(default_arch{}, x, y, n);
}
inline void elu_plus_one(const float* x, float* y, index_t n) {
  detail::require_unary(x, y, n);
  detail::elu_plus_one_kernel(default_arch{}, x, y, n);
}

inline void gelu_tanh(const float* x, float* y, index_t n) {
  detail::require_unary(x, y, n);
  detail::activation_kernel<activation_kind::gelu_tanh>(default_arch{}, x, y, n);
}
inline void gelu_erf(const float* x, float* y, index_t n) {
  detail::require_unary(x, y, n);
  detail::activation_kernel<activation_kind::gelu_erf>(default_arch{}, x, y, n);
}
inline void relu(const float* x, float* y, index_t n) {
  detail::require_unary(x, y, n);
  detail::activation_kernel<activation_kind::relu>(default_arch{}, x, y, n);
}

// Fused GLU gates, y[i] = act(a[i]) * b[i]: SwiGLU (silu), GeGLU (gelu tanh /
// erf), ReGLU (relu). y may be a or b; no other overlap.
// ref: Shazeer, "GLU Variants Improve Transformer", 2020.
inline void silu_mul(const float* a, const float* b, float* y, index_t n) {
  detail::require_binary(a, b, y, n);
  detail::gated_activation_kernel<activation_kind::silu>(default_arch{}, a, b, y, n);
}
inline void gelu_tanh_mul(const float* a, const float* b, float* y, index_t n) {
  detail::require_binary(a, b, y, n);
  detail::gated_activation_kernel<activation_kind::gelu_tanh>(default_arch{}, a, b, y, n);
}
inline void gelu_erf_mul(const float* a, const float* b, float* y, index_t n) {
  detail::require_binary(a, b, y, n);
  detail::gated_activation_kernel<activation_kind::gelu_erf>(default_arch{}, a, b, y, n);
}
inline void relu_mul(const float* a, const float* b, float* y, index_t n) {
  detail::require_binary(a, b, y, n);
  detail::gated_activation_kernel<activation_kind::relu>(default_arch{}, a, b, y, n);
}

}  // namespace simd
}  // namespace tokmix
TOKMIX_SIMD_AVX512_WARNINGS_ON
