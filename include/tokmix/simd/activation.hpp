#pragma once
// Pointwise nonlinearities of the mixers: silu (Mamba gate, SwiGLU), softplus
// (Mamba's delta), sigmoid (AFT, gates), elu and elu + 1 (linear-attention
// feature map). Batch-level forms are for use inside fused kernels; array forms
// (in place allowed, y == x) for everything else. All are built on exp_batch, so
// they inherit its edge behaviour: no NaN from +-inf inputs, NaN stays NaN.

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

namespace detail {

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

}  // namespace simd
}  // namespace tokmix
TOKMIX_SIMD_AVX512_WARNINGS_ON
