#pragma once
// Row primitives of RMSNorm / LayerNorm and their fused residual-add forms:
// the sums a norm needs (of x, of x^2, of (x - m)^2, optionally while writing
// h = x + r) and the scalings that write its output. A norm is bound by
// memory, so each primitive touches its rows once; four accumulators hide the
// add latency and the order of additions depends on n alone, so a row's sum
// does not depend on where it sits in a tensor.
//
// ref: Zhang & Sennrich, "Root Mean Square Layer Normalization", NeurIPS 2019;
//      Ba, Kiros & Hinton, "Layer Normalization", 2016.

#include "tokmix/simd/activation.hpp"
#include "tokmix/simd/arch.hpp"

TOKMIX_SIMD_AVX512_WARNINGS_OFF
namespace tokmix {
namespace simd {
namespace detail {

// sum_i f(i), f a batch function of the batch index, with a padded tail whose
// lanes past n are masked to zero by the caller-supplied partial load.
template <class Arch, class Full, class Tail>
inline float sum_rows4(index_t n, Full&& full, Tail&& tail) noexcept {
  using fb = fbatch<Arch>;
  constexpr index_t w = lanes<Arch>;
  fb a0(0.f), a1(0.f), a2(0.f), a3(0.f);
  index_t i = 0;
  for (; i + 4 * w <= n; i += 4 * w) {
    a0 += full(i);
    a1 += full(i + w);
    a2 += full(i + 2 * w);
    a3 += full(i + 3 * w);
  }
  for (; i + w <= n; i += w) a0 += full(i);
  if (i < n) a1 += tail(i, n - i);
  return xsimd::hadd((a0 + a1) + (a2 + a3));
}

template <class Arch>
inline float sum_squares_kernel(Arch, const float* x, index_t n) noexcept {
  using fb = fbatch<Arch>;
  return sum_rows4<Arch>(
      n,
      [&](index_t i) {
        const fb v = fb::load_unaligned(x + i);
        return v * v;
      },
      [&](index_t i, index_t m) {
        const fb v = load_partial<Arch>(x + i, m, 0.f);
        return v * v;
      });
}

template <class Arch>
inline float centered_sum_squares_kernel(Arch, const float* x, float mean, index_t n) noexcept {
  using fb = fbatch<Arch>;
  const fb m(mean);
  return sum_rows4<Arch>(
      n,
      [&](index_t i) {
        const fb v = fb::load_unaligned(x + i) - m;
        return v * v;
      },
      [&](index_t i, index_t k) {
        // Padding lanes load the mean itself, so they add exactly 0.
        const fb v = load_partial<Arch>(x + i, k, mean) - m;
        return v * v;
      });
}

// h = x + r (stored), returns sum h (Square = false) or sum h^2 (Square = true).
template <bool Square, class Arch>
inline float add_and_sum_kernel(Arch, const float* x, const float* r, float* h, index_t n) noexcept {
  using fb = fbatch<Arch>;
  auto f = [](const fb& v) { return Square ? v * v : v; };
  return sum_rows4<Arch>(
      n,
      [&](index_t i) {
        const fb v = fb::load_unaligned(x + i) + fb::load_unaligned(r + i);
        v.store_unaligned(h + i);
        return f(v);
      },
      [&](index_t i, index_t m) {
        const fb v = load_partial<Arch>(x + i, m, 0.f) + load_partial<Arch>(r + i, m, 0.f);
        store_partial<Arch>(h + i, v, m);
        return f(v);
      });
}

// y = (x - shift) * s * g + b; g and b may be null (1 and 0).
template <class Arch>
inline void center_scale_kernel(Arch, const float* x, float shift, float s, const float* g, const float* b, float* y,
                                index_t n) noexcept {
  using fb = fbatch<Arch>;
  constexpr index_t w = lanes<Arch>;
  const fb vs(s), vm(shift);
  auto one = [&](const fb& xv, const fb& gv, const fb& bv) { return xsimd::fma((xv - vm) * vs, gv, bv); };
  index_t i = 0;
  for (; i + w <= n; i += w) {
    const fb gv = g ? fb::load_unaligned(g + i) : fb(1.f);
    const fb bv = b ? fb::load_unaligned(b + i) : fb(0.f);
    one(fb::load_unaligned(x + i), gv, bv).store_unaligned(y + i);
  }
  if (i < n) {
    const index_t m = n - i;
    const fb gv = g ? load_partial<Arch>(g + i, m, 1.f) : fb(1.f);
    const fb bv = b ? load_partial<Arch>(b + i, m, 0.f) : fb(0.f);
    store_partial<Arch>(y + i, one(load_partial<Arch>(x + i, m, 0.f), gv, bv), m);
  }
}

inline void require_add_args(const float* x, const float* r, const float* h, index_t n) {
  require_length("n", n);
  require_data("x", x, n);
  require_data("r", r, n);
  require_data("h", h, n);
}

}  // namespace detail

// sum_i x[i]^2 (0 for n == 0).
inline float sum_squares(const float* x, index_t n) {
  detail::require_length("n", n);
  detail::require_data("x", x, n);
  return detail::sum_squares_kernel(default_arch{}, x, n);
}

// sum_i (x[i] - mean)^2: the second pass of a two-pass variance.
inline float centered_sum_squares(const float* x, float mean, index_t n) {
  detail::require_length("n", n);
  detail::require_data("x", x, n);
  return detail::centered_sum_squares_kernel(default_arch{}, x, mean, n);
}

// h[i] = x[i] + r[i]; returns sum_i h[i]. h may be x or r (in place).
inline float add_sum(const float* x, const float* r, float* h, index_t n) {
  detail::require_add_args(x, r, h, n);
  return detail::add_and_sum_kernel<false>(default_arch{}, x, r, h, n);
}

// h[i] = x[i] + r[i]; returns sum_i h[i]^2. h may be x or r (in place).
inline float add_sum_squares(const float* x, const float* r, float* h, index_t n) {
  detail::require_add_args(x, r, h, n);
  return detail::add_and_sum_kernel<true>(default_arch{}, x, r, h, n);
}

// y[i] = (x[i] - shift) * s * g[i] + b[i]; g = null means 1, b = null means 0.
// y may be x.
inline void center_scale(const float* x, float shift, float s, const float* g, const float* b, float* y, index_t n) {
  detail::require_length("n", n);
  detail::require_data("x", x, n);
  detail::require_data("y", y, n);
  detail::center_scale_kernel(default_arch{}, x, shift, s, g, b, y, n);
}

}  // namespace simd
}  // namespace tokmix
TOKMIX_SIMD_AVX512_WARNINGS_ON
