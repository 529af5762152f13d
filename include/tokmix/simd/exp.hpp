#pragma once
// Fast vectorised exp for every softmax, gate and decay in tokmix. It is a
// building block of hotter kernels (online softmax, selective scan), so it is
// branch-free, exact at the edges masked attention relies on (exp(-inf) == 0),
// and about as fast as the FMA units allow.
//
// ref: W. J. Cody and W. Waite, "Software Manual for the Elementary Functions",
//      1980 (additive range reduction with a split ln 2).
//
// Method: x = n ln2 + r with n = round(x / ln2), |r| <= ln2 / 2; ln2 is split
// into a 9-bit head (n * head is exact for |n| < 2^15, so x - n * head is exact
// by Sterbenz) and a tail. exp(r) = 1 + r + r^2 q(r) with q a degree-4
// near-minimax fit (Chebyshev, computed with mpmath; |q - q_true| < 7.2e-8 on
// [-0.354, 0.354]). 2^n is applied by adding n to the exponent field of exp(r),
// which stays valid up to n = 128 because exp(r) < 1 there.
//
// Accuracy, measured against std::exp in double over 2^24 evenly spaced points
// of [-87, 88] and every 37th float bit pattern in [-88, 88.7]: max relative
// error 7.7e-8 (about 0.65 ulp) with FMA (fma3<avx2>, avx512), 9.9e-8 with
// SSE2 only. tests/simd/exp.cpp holds it below 1.2e-7.
//
// Edges: exp(-inf) = +0 exactly; results below FLT_MIN (x < -87.3365) are
// flushed to +0 rather than made subnormal (absolute error < 1.2e-38, and no
// subnormal arithmetic downstream); x > 88.7228 gives +inf; NaN gives NaN.

#include <cmath>
#include <limits>

#include "tokmix/simd/arch.hpp"

TOKMIX_SIMD_AVX512_WARNINGS_OFF
namespace tokmix {
namespace simd {
namespace detail {

constexpr float exp_log2e = 1.44269504088896341f;
constexpr float exp_ln2_hi = 0.693359375f;       // 355/512: n * hi is exact
constexpr float exp_ln2_lo = -2.12194440e-4f;    // ln 2 - hi
constexpr float exp_round_magic = 12582912.f;    // 1.5 * 2^23: adding it rounds to an integer kept in the low mantissa bits
constexpr float exp_min_normal_arg = -87.33654f; // ln(FLT_MIN), rounded up: below it the result would be subnormal
constexpr float exp_max_arg = 88.7228317f;       // largest float whose exp is finite

// q(r) = (exp(r) - 1 - r) / r^2, coefficients highest degree first.
constexpr float exp_q4 = 1.3927684616575004e-3f;
constexpr float exp_q3 = 8.3643806932910689e-3f;
constexpr float exp_q2 = 4.1666545421095535e-2f;
constexpr float exp_q1 = 1.6666569628115476e-1f;
constexpr float exp_q0 = 0.5f;

template <class Arch>
inline fbatch<Arch> exp_q(const fbatch<Arch>& r) noexcept {
  fbatch<Arch> q = xsimd::fma(fbatch<Arch>(exp_q4), r, fbatch<Arch>(exp_q3));
  q = xsimd::fma(q, r, fbatch<Arch>(exp_q2));
  q = xsimd::fma(q, r, fbatch<Arch>(exp_q1));
  return xsimd::fma(q, r, fbatch<Arch>(exp_q0));
}

// exp(r) - 1 for |r| <= ln2/2 without the cancellation of exp(r) - 1 (elu needs it near 0).
template <class Arch>
inline fbatch<Arch> expm1_reduced(const fbatch<Arch>& r) noexcept {
  return xsimd::fma(exp_q(r), r * r, r);
}

}  // namespace detail

template <class Arch>
inline fbatch<Arch> exp_batch(fbatch<Arch> x) noexcept {
  using fb = fbatch<Arch>;
  using ib = ibatch<Arch>;
  const fb t = xsimd::fma(x, fb(detail::exp_log2e), fb(detail::exp_round_magic));
  const fb n = t - fb(detail::exp_round_magic);
  fb r = xsimd::fnma(n, fb(detail::exp_ln2_hi), x);
  r = xsimd::fnma(n, fb(detail::exp_ln2_lo), r);
  // (r q + 1) r + 1 = 1 + r + r^2 q: two FMAs and a short dependency chain.
  const fb p = xsimd::fma(xsimd::fma(detail::exp_q(r), r, fb(1.f)), r, fb(1.f));
  // The low bits of t hold n in two's complement; shifting by 23 moves them to the exponent field.
  const ib e = xsimd::bitwise_cast<ib>(t) << 23;
  fb y = xsimd::bitwise_cast<fb>(xsimd::bitwise_cast<ib>(p) + e);
  y = xsimd::select(x < fb(detail::exp_min_normal_arg), fb(0.f), y);
  // Not (x <= max) covers overflow and NaN; x + inf is +inf for the first and keeps the NaN.
  return xsimd::select(x <= fb(detail::exp_max_arg), y, x + fb(std::numeric_limits<float>::infinity()));
}

namespace detail {
template <class Arch>
inline void exp_kernel(Arch, const float* x, float* y, index_t n) noexcept {
  map_unary(Arch{}, x, y, n, [](const fbatch<Arch>& v) { return exp_batch<Arch>(v); });
}
}  // namespace detail

// y[i] = exp(x[i]) for i in [0, n). In place (y == x) is allowed; other overlaps are not.
inline void exp(const float* x, float* y, index_t n) {
  detail::require_length("n", n);
  detail::require_data("x", x, n);
  detail::require_data("y", y, n);
  detail::exp_kernel(default_arch{}, x, y, n);
}

}  // namespace simd
}  // namespace tokmix
TOKMIX_SIMD_AVX512_WARNINGS_ON
