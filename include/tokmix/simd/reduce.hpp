#pragma once
// Horizontal reductions of a float row (softmax row max and sum, norms). Four
// independent accumulators hide the add/max latency; the order of additions is
// fixed by n alone, so results are reproducible run to run.

#include <limits>

#include "tokmix/simd/arch.hpp"

TOKMIX_SIMD_AVX512_WARNINGS_OFF
namespace tokmix {
namespace simd {
namespace detail {

// Comparison-based max: a NaN in `x` never wins, so NaN elements are skipped on
// every architecture (what vmaxps happens to do on x86, made explicit).
template <class Arch>
inline fbatch<Arch> max_skip_nan(const fbatch<Arch>& x, const fbatch<Arch>& acc) noexcept {
  return xsimd::select(x > acc, x, acc);
}

template <class Arch>
inline float horizontal_max(const fbatch<Arch>& v) noexcept {
  alignas(Arch::alignment()) float buf[fbatch<Arch>::size];
  v.store_aligned(buf);
  float m = buf[0];
  for (index_t i = 1; i < lanes<Arch>; ++i) m = buf[i] > m ? buf[i] : m;
  return m;
}

template <class Arch>
inline float reduce_max_kernel(Arch, const float* x, index_t n) noexcept {
  using fb = fbatch<Arch>;
  constexpr index_t w = lanes<Arch>;
  const fb ninf(-std::numeric_limits<float>::infinity());
  fb a0 = ninf, a1 = ninf, a2 = ninf, a3 = ninf;
  index_t i = 0;
  for (; i + 4 * w <= n; i += 4 * w) {
    a0 = max_skip_nan(fb::load_unaligned(x + i), a0);
    a1 = max_skip_nan(fb::load_unaligned(x + i + w), a1);
    a2 = max_skip_nan(fb::load_unaligned(x + i + 2 * w), a2);
    a3 = max_skip_nan(fb::load_unaligned(x + i + 3 * w), a3);
  }
  for (; i + w <= n; i += w) a0 = max_skip_nan(fb::load_unaligned(x + i), a0);
  if (i < n) a1 = max_skip_nan(load_partial<Arch>(x + i, n - i, -std::numeric_limits<float>::infinity()), a1);
  return horizontal_max(xsimd::max(xsimd::max(a0, a1), xsimd::max(a2, a3)));
}

template <class Arch>
inline float reduce_sum_kernel(Arch, const float* x, index_t n) noexcept {
  using fb = fbatch<Arch>;
  constexpr index_t w = lanes<Arch>;
  fb a0(0.f), a1(0.f), a2(0.f), a3(0.f);
  index_t i = 0;
  for (; i + 4 * w <= n; i += 4 * w) {
    a0 += fb::load_unaligned(x + i);
    a1 += fb::load_unaligned(x + i + w);
    a2 += fb::load_unaligned(x + i + 2 * w);
    a3 += fb::load_unaligned(x + i + 3 * w);
  }
  for (; i + w <= n; i += w) a0 += fb::load_unaligned(x + i);
  if (i < n) a1 += load_partial<Arch>(x + i, n - i, 0.f);
  return xsimd::hadd((a0 + a1) + (a2 + a3));
}

}  // namespace detail

// max_i x[i]; -inf for n == 0. NaN elements are skipped (fmax semantics), so
// the result is NaN-free; a row of NaNs gives -inf.
inline float reduce_max(const float* x, index_t n) {
  detail::require_length("n", n);
  detail::require_data("x", x, n);
  return detail::reduce_max_kernel(default_arch{}, x, n);
}

// sum_i x[i] in fp32 with 4 x lanes partial sums (error grows like n / (4 lanes),
// not n); 0 for n == 0. NaN and inf propagate.
inline float reduce_sum(const float* x, index_t n) {
  detail::require_length("n", n);
  detail::require_data("x", x, n);
  return detail::reduce_sum_kernel(default_arch{}, x, n);
}

}  // namespace simd
}  // namespace tokmix
TOKMIX_SIMD_AVX512_WARNINGS_ON
