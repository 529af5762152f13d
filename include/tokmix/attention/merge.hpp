#pragma once
// Merging attention results computed over disjoint key sets (split-KV decode,
// ring attention, chunked prefill): with each part's output and log-sum-exp,
//   lse = logaddexp(lse1, lse2),  o = o1 * exp(lse1 - lse) + o2 * exp(lse2 - lse)
// is exactly the attention over the union. A part that saw no key carries
// lse = -inf and drops out; if both did, the row stays o = 0, lse = -inf.
// ref: Milakov & Gimelshein, "Online normalizer calculation for softmax" (2018);
//      FlashDecoding split-KV (Dao et al., 2023).

#include <algorithm>
#include <cmath>
#include <limits>

#include "tokmix/core/error.hpp"
#include "tokmix/core/tensor_view.hpp"

namespace tokmix {

// The weights (w1, w2) and merged lse of two partial rows. Exact for -inf on
// either side (no NaN from -inf - -inf).
struct attention_merge_weights {
  float w1, w2, lse;
};

inline attention_merge_weights attention_merge_coefficients(float lse1, float lse2) {
  const float ninf = -std::numeric_limits<float>::infinity();
  if (lse1 == ninf && lse2 == ninf) return {0.f, 0.f, ninf};
  if (lse2 == ninf) return {1.f, 0.f, lse1};
  if (lse1 == ninf) return {0.f, 1.f, lse2};
  const float m = std::max(lse1, lse2);
  const float e1 = std::exp(lse1 - m), e2 = std::exp(lse2 - m);
  const float sum = e1 + e2;
  return {e1 / sum, e2 / sum, m + std::log(sum)};
}

// Row-level merge for kernels: out[e] = w1 * o1[e] + w2 * o2[e]. `out` may
// alias o1 or o2. Returns the merged lse.                  // o1, o2, out: [dv]
inline float merge_attention_row(const float* o1, float lse1, const float* o2, float lse2, float* out, index_t dv) {
  const attention_merge_weights w = attention_merge_coefficients(lse1, lse2);
  if (w.w2 == 0.f) {
    for (index_t e = 0; e < dv; ++e) out[e] = w.w1 == 0.f ? 0.f : o1[e];
  } else if (w.w1 == 0.f) {
    for (index_t e = 0; e < dv; ++e) out[e] = o2[e];
  } else {
    for (index_t e = 0; e < dv; ++e) out[e] = w.w1 * o1[e] + w.w2 * o2[e];
  }
  return w.lse;
}

// Merges two partial attention results over disjoint key sets.
//   o1, o2, o_out: [batch, seq, heads, dv]   lse1, lse2, lse_out: [batch, heads, seq]
// o_out / lse_out may be the same tensors as o1 / lse1 (in-place accumulate).
template <class O1, class L1, class O2, class L2, class OO, class LO>
void merge_attention_partials(const O1& o1_, const L1& lse1_, const O2& o2_, const L2& lse2_, OO&& o_out_,
                              LO&& lse_out_) {
  const tensor_view<const float, 4> o1 = as_view(o1_), o2 = as_view(o2_);
  const tensor_view<const float, 3> lse1 = as_view(lse1_), lse2 = as_view(lse2_);
  const tensor_view<float, 4> oo = as_view(o_out_);
  const tensor_view<float, 3> lo = as_view(lse_out_);
  require_layout("o1", o1);
  require_layout("o2", o2);
  require_layout("o_out", oo);
  require_layout("lse1", lse1);
  require_layout("lse2", lse2);
  require_layout("lse_out", lo);
  const index_t B = o1.dim(0), L = o1.dim(1), H = o1.dim(2), Dv = o1.dim(3);
  require_shape("o2", o2, {B, L, H, Dv});
  require_shape("o_out", oo, {B, L, H, Dv});
  require_shape("lse1", lse1, {B, H, L});
  require_shape("lse2", lse2, {B, H, L});
  require_shape("lse_out", lo, {B, H, L});
  for (index_t b = 0; b < B; ++b)
    for (index_t i = 0; i < L; ++i)
      for (index_t h = 0; h < H; ++h)
        lo(b, h, i) = merge_attention_row(o1.ptr(b, i, h), lse1(b, h, i), o2.ptr(b, i, h), lse2(b, h, i),
                                          oo.ptr(b, i, h), Dv);
}

}  // namespace tokmix
