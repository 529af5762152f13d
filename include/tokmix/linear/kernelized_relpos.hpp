#pragma once
// Kernelized attention with relative positional encoding: the weights
// phi(q_i).phi(k_j) * exp(b_{j-i}) cannot be summed into one state (the bias
// depends on i - j), but for each feature f and value column e the sum over j
// is a Toeplitz matrix-vector product, which an FFT does in O(L log L). Total
// cost O(F (dv + 1) L log L) per head instead of O(L^2 (F + dv)).
//
// ref: S. Luo et al. 2021, "Stable, Fast and Accurate: Kernelized Attention
//      with Relative Positional Encoding" (NeurIPS), sec. 3.2-3.3 (the
//      Toeplitz decomposition and the FFT evaluation).
//
//   w_ij = phi(q_i).phi(k_j) * exp(b[h, j - i])   (causal: only j <= i)
//   o_i  = sum_j w_ij v_j / (sum_j w_ij + eps)     (normalize)
//   o_i  = sum_j w_ij v_j                           (otherwise)
// For each feature f and column e of v_aug = [v, 1]:
//   D_fe[i] = sum_j exp(b_{j-i}) phi(k_j)_f v_aug[j, e]      (Toeplitz, by FFT)
//   o_aug[i, e] = sum_f phi(q_i)_f D_fe[i].
// Stabiliser: exp(b - max b) replaces exp(b); the factor cancels in the
// normalised form (eps then acts on the stabilised denominator) and is
// multiplied back into unnormalised outputs. Bias entries may be -inf (weight 0).
//
// Accuracy: FFT rounding is ~1e-7 relative to the largest weight exp(b - max b)
// in a sum, not to each output; rows that see only weights far below the
// maximum (e.g. early causal rows under a steep bias) lose digits accordingly.
// Small problems use the exact direct sum (see fft_convolver).
//
// Rows whose normaliser is exactly 0 output zeros. Lq must equal Lk (relative
// positions need one axis); grouped heads as in docs/semantics.md; the bias is per
// query head.

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "tokmix/core/error.hpp"
#include "tokmix/core/tensor_view.hpp"
#include "tokmix/core/threading.hpp"
#include "tokmix/linear/feature_maps.hpp"
#include "tokmix/simd/fft.hpp"

namespace tokmix {

struct kernelized_relpos_params {
  feature_map phi;         // default elu + 1 (Luo et al. use positive random features)
  bool causal = false;     // only keys j <= i
  bool normalize = true;
  float eps = 1e-6f;       // finite, >= 0
  bool force_fft = false;  // tests: FFT even where the direct sum is cheaper
  exec_policy policy;      // threads over batch x kv heads
};

//   q: [batch, seq, q_heads, head_dim]   k: [batch, seq, kv_heads, head_dim]
//   v: [batch, seq, kv_heads, v_dim]     o: [batch, seq, q_heads, v_dim]
//   rel_bias: [q_heads, 2 * seq - 1], entry (h, (j - i) + seq - 1) is b[h, j - i]
inline void kernelized_relpos_attention(tensor_view<const float, 4> q, tensor_view<const float, 4> k,
                                        tensor_view<const float, 4> v, tensor_view<const float, 2> rel_bias,
                                        tensor_view<float, 4> o, const kernelized_relpos_params& params = {}) {
  require_layout("q", q);
  require_layout("k", k);
  require_layout("v", v);
  require_layout("o", o);
  require_layout("rel_bias", rel_bias);
  const index_t B = q.dim(0), L = q.dim(1), Hq = q.dim(2), dk = q.dim(3);
  const index_t Hkv = k.dim(2), dv = v.dim(3);
  require(dk >= 1, "q head_dim (dim 3)", ">= 1", dk);
  require_shape("k", k, {B, L, -1, dk});
  require(Hkv >= 1, "k heads (dim 2)", ">= 1", Hkv);
  require(Hq % Hkv == 0, "k heads (dim 2)", "a divisor of the query heads " + std::to_string(Hq), Hkv);
  require_shape("v", v, {B, L, Hkv, -1});
  require_shape("o", o, {B, L, Hq, dv});
  require_shape("rel_bias", rel_bias, {Hq, std::max<index_t>(0, 2 * L - 1)});
  if (L > 1) {
    require(q.stride(1) >= dk, "q seq stride", ">= head_dim", q.stride(1));
    require(k.stride(1) >= dk, "k seq stride", ">= head_dim", k.stride(1));
  }
  feature_map_validate(params.phi, dk);
  require(std::isfinite(params.eps) && params.eps >= 0, "eps", "a finite value >= 0", params.eps);
  for (index_t h = 0; h < Hq; ++h)
    for (index_t r = 0; r < 2 * L - 1; ++r) {
      const float x = rel_bias(h, r);
      if (std::isnan(x) || x == std::numeric_limits<float>::infinity())
        throw argument_error("rel_bias", "finite values or -inf",
                             detail::to_text(x) + " at [" + std::to_string(h) + ", " + std::to_string(r) + "]");
    }
  if (B == 0 || L == 0 || Hq == 0) return;

  const index_t F = feature_map_dim(params.phi, dk), dva = dv + 1, group = Hq / Hkv, N = 2 * L - 1;
  parallel_for(params.policy, B * Hkv, [&](index_t item, int) {
    const index_t b = item / Hkv, g = item % Hkv;
    simd::fft_convolver conv(!params.force_fft);
    // Column-major ([feature or column, token]) copies so every loop below
    // runs over contiguous tokens.
    std::vector<float> rows(static_cast<std::size_t>(L * F)), phikt(static_cast<std::size_t>(F * L)),
        phiqt(static_cast<std::size_t>(F * L)), vt(static_cast<std::size_t>(dva * L)),
        sig(static_cast<std::size_t>(dva * L)), dcol(static_cast<std::size_t>(dva * L)),
        oaugt(static_cast<std::size_t>(dva * L)), filt(static_cast<std::size_t>(N)), tmp(static_cast<std::size_t>(dk));
    auto transpose_in = [&](const float* src, index_t ld_src, index_t cols, float* dst) {
      for (index_t j = 0; j < L; ++j)
        for (index_t c = 0; c < cols; ++c) dst[c * L + j] = src[j * ld_src + c];
    };
    // Exact phi (no shifts): the bias stabiliser is the only one this form
    // applies; positive random features enter with their exact values.
    detail::feature_rows(params.phi, dk, k.ptr(b, 0, g), std::max(k.stride(1), dk), L, rows.data(), F, tmp.data());
    transpose_in(rows.data(), F, F, phikt.data());
    for (index_t j = 0; j < L; ++j) {
      const float* vr = v.ptr(b, j, g);
      for (index_t e = 0; e < dv; ++e) vt[static_cast<std::size_t>(e * L + j)] = vr[e];
      vt[static_cast<std::size_t>(dv * L + j)] = 1.f;
    }
    for (index_t r = 0; r < group; ++r) {
      const index_t h = g * group + r;
      // filter[s] = exp(b[L-1-s] - bmax): y_i = sum_j x_j c(j - i) = (x * filter)[i + L - 1].
      float bmax = -std::numeric_limits<float>::infinity();
      for (index_t s = 0; s < N; ++s) {
        const index_t rel = L - 1 - s;  // j - i
        if (params.causal && rel > 0) continue;
        bmax = std::max(bmax, rel_bias(h, rel + L - 1));
      }
      const float shift = std::isfinite(bmax) ? bmax : 0.f;
      for (index_t s = 0; s < N; ++s) {
        const index_t rel = L - 1 - s;
        filt[static_cast<std::size_t>(s)] = params.causal && rel > 0 ? 0.f : std::exp(rel_bias(h, rel + L - 1) - shift);
      }
      detail::feature_rows(params.phi, dk, q.ptr(b, 0, h), std::max(q.stride(1), dk), L, rows.data(), F, tmp.data());
      transpose_in(rows.data(), F, F, phiqt.data());
      std::fill(oaugt.begin(), oaugt.end(), 0.f);
      for (index_t f = 0; f < F; ++f) {
        // Signals for feature f: phi(k_j)_f * v_aug[j, e], one per column e.
        const float* pk = phikt.data() + f * L;
        for (index_t e = 0; e < dva; ++e) {
          const float* ve = vt.data() + e * L;
          float* se = sig.data() + e * L;
          for (index_t j = 0; j < L; ++j) se[j] = pk[j] * ve[j];
        }
        conv.convolve_batch(dva, sig.data(), L, L, filt.data(), 0, N, dcol.data(), L, L, L - 1);
        const float* pq = phiqt.data() + f * L;
        for (index_t e = 0; e < dva; ++e) {
          const float* de = dcol.data() + e * L;
          float* oe = oaugt.data() + e * L;
          for (index_t i = 0; i < L; ++i) oe[i] += pq[i] * de[i];
        }
      }
      const float out_mult = params.normalize ? 1.f : std::exp(shift);
      const float* den_row = oaugt.data() + dv * L;
      for (index_t i = 0; i < L; ++i) {
        float mult = out_mult;
        if (params.normalize) {
          const float den = den_row[i] + params.eps;
          mult = den == 0.f ? 0.f : 1.f / den;
        }
        float* dst = o.ptr(b, i, h);
        for (index_t e = 0; e < dv; ++e) dst[e] = mult * oaugt[static_cast<std::size_t>(e * L + i)];
      }
    }
  });
}

}  // namespace tokmix
