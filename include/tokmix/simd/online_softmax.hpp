#pragma once
// The row update of flash attention's online softmax: a query row sees its
// keys tile by tile, keeping only a running max m and a running sum l, and the
// caller rescales its output accumulator by the returned correction. Fully
// masked rows (every score -inf so far) are the edge case that must not
// produce NaN (exp(-inf - -inf)); this is the one place that handles it.
//
// ref: Milakov & Gimelshein, "Online normalizer calculation for softmax", 2018;
//      Dao et al., "FlashAttention", NeurIPS 2022 (Algorithm 1).

#include <cmath>
#include <limits>

#include "tokmix/simd/exp.hpp"
#include "tokmix/simd/reduce.hpp"

TOKMIX_SIMD_AVX512_WARNINGS_OFF
namespace tokmix {
namespace simd {
namespace detail {

// s[j] = exp(s[j] - m) in place, returns the sum of the new s[j].
template <class Arch>
inline float exp_shifted_sum_kernel(Arch, float* s, index_t n, float m) noexcept {
  using fb = fbatch<Arch>;
  constexpr index_t w = lanes<Arch>;
  const fb mb(m);
  fb a0(0.f), a1(0.f);
  index_t i = 0;
  for (; i + 2 * w <= n; i += 2 * w) {
    const fb p0 = exp_batch<Arch>(fb::load_unaligned(s + i) - mb);
    const fb p1 = exp_batch<Arch>(fb::load_unaligned(s + i + w) - mb);
    p0.store_unaligned(s + i);
    p1.store_unaligned(s + i + w);
    a0 += p0;
    a1 += p1;
  }
  for (; i + w <= n; i += w) {
    const fb p = exp_batch<Arch>(fb::load_unaligned(s + i) - mb);
    p.store_unaligned(s + i);
    a0 += p;
  }
  if (i < n) {
    // Padding lanes are -inf so they contribute exp(-inf) = 0 to the sum.
    const fb p = exp_batch<Arch>(load_partial<Arch>(s + i, n - i, -std::numeric_limits<float>::infinity()) - mb);
    store_partial<Arch>(s + i, p, n - i);
    a1 += p;
  }
  return xsimd::hadd(a0 + a1);
}

template <class Arch>
inline float online_softmax_update_kernel(Arch, float* s, index_t n, float& m, float& l) noexcept {
  const float m_old = m;
  const float m_tile = reduce_max_kernel(Arch{}, s, n);
  const float m_new = m_tile > m_old ? m_tile : m_old;
  if (m_new == -std::numeric_limits<float>::infinity()) {
    // Nothing visible yet: weights 0, m and l unchanged, accumulator untouched.
    for (index_t j = 0; j < n; ++j) s[j] = 0.f;
    return 1.f;
  }
  const float alpha = m_old == m_new ? 1.f : std::exp(m_old - m_new);
  const float tile_sum = exp_shifted_sum_kernel(Arch{}, s, n, m_new);
  l = l * alpha + tile_sum;
  m = m_new;
  return alpha;
}

}  // namespace detail

// One tile of scores for one query row: s[0..n) holds the (scaled, masked)
// scores on entry and the unnormalised weights p_j = exp(s_j - m_new) on exit.
// State: m (running max, start at -inf) and l (running sum, start at 0).
//   m_new = max(m, max_j s_j); l = l * exp(m - m_new) + sum_j p_j; m = m_new.
// Returns alpha = exp(m_old - m_new): the caller does acc = alpha * acc + sum_j p_j v_j
// and at the end o = acc / l (l == 0 means no key was visible: output zeros).
//
// Fully masked so far (m_new == -inf): every p_j = 0, m stays -inf, l is
// unchanged, and alpha = 1 so the (all-zero) accumulator is left as it is.
// alpha is exactly 1 whenever the max did not move, so callers may skip the
// rescale then. NaN scores are skipped by the max and yield NaN weights (and a
// NaN l); +inf scores give NaN weights.
inline float online_softmax_update(float* s, index_t n, float& m, float& l) {
  detail::require_length("n", n);
  detail::require_data("s", s, n);
  return detail::online_softmax_update_kernel(default_arch{}, s, n, m, l);
}

}  // namespace simd
}  // namespace tokmix
TOKMIX_SIMD_AVX512_WARNINGS_ON
