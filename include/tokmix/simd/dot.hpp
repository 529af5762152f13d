#pragma once
// The level-1 vector operations attention and recurrent kernels run per row:
// q.k scores, o += p v accumulation, rescaling a running output by a softmax
// correction or a decay. Kept here so those kernels share one tuned version.

#include "tokmix/simd/arch.hpp"

TOKMIX_SIMD_AVX512_WARNINGS_OFF
namespace tokmix {
namespace simd {
namespace detail {

template <class Arch>
inline float dot_kernel(Arch, const float* a, const float* b, index_t n) noexcept {
  using fb = fbatch<Arch>;
  constexpr index_t w = lanes<Arch>;
  fb s0(0.f), s1(0.f), s2(0.f), s3(0.f);
  index_t i = 0;
  for (; i + 4 * w <= n; i += 4 * w) {
    s0 = xsimd::fma(fb::load_unaligned(a + i), fb::load_unaligned(b + i), s0);
    s1 = xsimd::fma(fb::load_unaligned(a + i + w), fb::load_unaligned(b + i + w), s1);
    s2 = xsimd::fma(fb::load_unaligned(a + i + 2 * w), fb::load_unaligned(b + i + 2 * w), s2);
    s3 = xsimd::fma(fb::load_unaligned(a + i + 3 * w), fb::load_unaligned(b + i + 3 * w), s3);
  }
  for (; i + w <= n; i += w) s0 = xsimd::fma(fb::load_unaligned(a + i), fb::load_unaligned(b + i), s0);
  if (i < n) s1 = xsimd::fma(load_partial<Arch>(a + i, n - i, 0.f), load_partial<Arch>(b + i, n - i, 0.f), s1);
  return xsimd::hadd((s0 + s1) + (s2 + s3));
}

// y[i] = f(x[i], y[i]) batch by batch, two batches per iteration.
template <class Arch, class F>
inline void map_binary_inplace(Arch, const float* x, float* y, index_t n, F&& f) noexcept {
  using fb = fbatch<Arch>;
  constexpr index_t w = lanes<Arch>;
  index_t i = 0;
  for (; i + 2 * w <= n; i += 2 * w) {
    const fb r0 = f(fb::load_unaligned(x + i), fb::load_unaligned(y + i));
    const fb r1 = f(fb::load_unaligned(x + i + w), fb::load_unaligned(y + i + w));
    r0.store_unaligned(y + i);
    r1.store_unaligned(y + i + w);
  }
  for (; i + w <= n; i += w) f(fb::load_unaligned(x + i), fb::load_unaligned(y + i)).store_unaligned(y + i);
  if (i < n) store_partial<Arch>(y + i, f(load_partial<Arch>(x + i, n - i, 0.f), load_partial<Arch>(y + i, n - i, 0.f)), n - i);
}

template <class Arch>
inline void axpy_kernel(Arch, float alpha, const float* x, float* y, index_t n) noexcept {
  const fbatch<Arch> a(alpha);
  map_binary_inplace(Arch{}, x, y, n, [a](const fbatch<Arch>& xv, const fbatch<Arch>& yv) { return xsimd::fma(a, xv, yv); });
}

template <class Arch>
inline void scale_kernel(Arch, float alpha, float* x, index_t n) noexcept {
  const fbatch<Arch> a(alpha);
  map_unary(Arch{}, x, x, n, [a](const fbatch<Arch>& v) { return a * v; });
}

template <class Arch>
inline void scale_add_kernel(Arch, float beta, float* y, float alpha, const float* x, index_t n) noexcept {
  const fbatch<Arch> a(alpha), b(beta);
  if (beta == 0.f)
    map_unary(Arch{}, x, y, n, [a](const fbatch<Arch>& xv) { return a * xv; });
  else
    map_binary_inplace(Arch{}, x, y, n,
                       [a, b](const fbatch<Arch>& xv, const fbatch<Arch>& yv) { return xsimd::fma(b, yv, a * xv); });
}

}  // namespace detail

// sum_i a[i] b[i], fp32 with 4 x lanes partial sums; 0 for n == 0.
inline float dot(const float* a, const float* b, index_t n) {
  detail::require_length("n", n);
  detail::require_data("a", a, n);
  detail::require_data("b", b, n);
  return detail::dot_kernel(default_arch{}, a, b, n);
}

// y += alpha x (BLAS saxpy). x and y must not overlap.
inline void axpy(float alpha, const float* x, float* y, index_t n) {
  detail::require_length("n", n);
  detail::require_data("x", x, n);
  detail::require_data("y", y, n);
  detail::axpy_kernel(default_arch{}, alpha, x, y, n);
}

// x *= alpha. A plain multiply: alpha == 0 keeps NaN/inf as NaN.
inline void scale(float alpha, float* x, index_t n) {
  detail::require_length("n", n);
  detail::require_data("x", x, n);
  detail::scale_kernel(default_arch{}, alpha, x, n);
}

// y = beta y + alpha x. As in BLAS, beta == 0 overwrites y without reading it,
// so y may start uninitialised (or hold NaN) when beta is 0. x and y must not overlap.
inline void scale_add(float beta, float* y, float alpha, const float* x, index_t n) {
  detail::require_length("n", n);
  detail::require_data("x", x, n);
  detail::require_data("y", y, n);
  detail::scale_add_kernel(default_arch{}, beta, y, alpha, x, n);
}

}  // namespace simd
}  // namespace tokmix
TOKMIX_SIMD_AVX512_WARNINGS_ON
