#pragma once
// Linformer attention: the keys and values are compressed along the sequence
// by learned projections to m << L rows, and every query attends the m
// projected rows with exact softmax.
//
//   K' = E K,  V' = F V          E, F: [m, n] per kv head (or one pair shared by all heads)
//   o_i = sum_r softmax_r(c(scale q_i . K'_r)) V'_r,   c = softcap * tanh(. / softcap) or identity
//
// Cost O(L m D) instead of O(L^2 D). The projection mixes all positions, so
// there is no causal form (nor a decode step). Sharing as in the paper:
// headwise (e, f of shape [1, m, n], the default in the paper's experiments),
// per head ([Hkv, m, n]), key-value (f empty: F = E); layerwise sharing is
// the caller passing the same e to several layers. n is the projection's
// maximum length: a sequence of Lk <= n keys uses the first Lk columns, which
// equals zero-padding it to n.
//
//   q: [B, Lq, Hq, D]  k: [B, Lk, Hkv, D]  v: [B, Lk, Hkv, Dv]  o: [B, Lq, Hq, Dv]
//   e: [He, m, n] float, He in {1, Hkv}   f: [He, m, n] float or empty
//   lse (optional): [B, Hq, Lq], the log-sum-exp over the m projected keys
//
// Stage 1 (the projections) runs as matrix products per (batch, kv head);
// stage 2 is tokmix's flash attention over the m projected rows.
//
// ref: Wang, Li, Khabsa, Fang & Ma, "Linformer: Self-Attention with Linear
//      Complexity", arXiv:2006.04768 (2020), sec. 4 (projections E, F;
//      headwise, key-value and layerwise sharing).

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "tokmix/simd/arch.hpp"

#include "tokmix/attention/flash_attention.hpp"
#include "tokmix/attention/params.hpp"
#include "tokmix/core/error.hpp"
#include "tokmix/core/scratch.hpp"
#include "tokmix/core/tensor_view.hpp"
#include "tokmix/core/threading.hpp"
#include "tokmix/simd/convert.hpp"
#include "tokmix/simd/gemm.hpp"
#include "tokmix/sparse/detail/common.hpp"

namespace tokmix {

struct linformer_params {
  // Multiplies q.k'; NaN (the default) means 1/sqrt(head_dim).
  float scale = std::numeric_limits<float>::quiet_NaN();
  float softcap = 0.f;
  exec_policy policy;
};

namespace detail {
namespace sparse {

// Rows of one (batch, kv head) of x: [Lk, d] as fp32, in place when they
// already are (returns the pointer and its row stride).
template <class T>
inline const float* rows_as_f32(const T* src, index_t row, index_t n, index_t d, float* buf, index_t* ld) {
  if constexpr (std::is_same<T, float>::value) {
    *ld = row;
    return src;
  } else {
    for (index_t t = 0; t < n; ++t) simd::convert(src + t * row, buf + t * d, d);
    *ld = d;
    return buf;
  }
}

inline void check_linformer_projection(const char* name, const tensor_view<const float, 3>& e, index_t Hkv,
                                       index_t Lk) {
  require_layout(name, e);
  require(e.dim(0) == 1 || e.dim(0) == Hkv, name,
          "1 (shared by all heads) or " + std::to_string(Hkv) + " (per kv head) projections",
          "shape " + e.shape_string());
  require(e.dim(1) >= 1, name, "m >= 1 projected rows", "shape " + e.shape_string());
  require(e.dim(2) >= Lk, name, "n >= the " + std::to_string(Lk) + " keys (columns per projection)",
          "shape " + e.shape_string());
  require(Lk >= 1, "k", "at least one key", "shape [*, 0, *, *]");
}

}  // namespace sparse
}  // namespace detail

// Linformer attention (see the top of this file). f may be an empty view (F = E).
template <class Q, class K, class V, class O>
void linformer_attention(const Q& q_, const K& k_, const V& v_, tensor_view<const float, 3> e,
                         tensor_view<const float, 3> f, O&& o_, tensor_view<float, 3> lse,
                         const linformer_params& p = {}) {
  const auto qv = as_view(q_);
  const auto kv = as_view(k_);
  const auto vv = as_view(v_);
  using TQ = std::remove_const_t<typename decltype(qv)::element_type>;
  using TK = std::remove_const_t<typename decltype(kv)::element_type>;
  using TV = std::remove_const_t<typename decltype(vv)::element_type>;
  detail::check_attention_storage<TQ, TK, TV>();
  const tensor_view<const TQ, 4> q = qv;
  const tensor_view<const TK, 4> k = kv;
  const tensor_view<const TV, 4> v = vv;
  const tensor_view<float, 4> o = as_view(o_);
  detail::sparse::check_qkv(q, k, v, o, lse);
  const index_t B = q.dim(0), Lk = k.dim(1), Hkv = k.dim(2), D = q.dim(3), Dv = v.dim(3);
  detail::sparse::check_linformer_projection("e", e, Hkv, Lk);
  const bool share_kv = f.data() == nullptr;
  if (!share_kv) {
    detail::sparse::check_linformer_projection("f", f, Hkv, Lk);
    require_shape("f", f, {-1, e.dim(1), -1});
  }
  require(std::isnan(p.scale) || std::isfinite(p.scale), "params.scale", "a finite value or NaN (default)", p.scale);
  require(std::isfinite(p.softcap) && p.softcap >= 0.f, "params.softcap", "a finite value >= 0", p.softcap);
  if (B == 0 || q.dim(1) == 0) return;
  const tensor_view<const float, 3> fe = share_kv ? e : f;
  const index_t m = e.dim(1);

  // Stage 1: K' [B, m, Hkv, D] and V' [B, m, Hkv, Dv].
  std::vector<float> kp(static_cast<std::size_t>(B * m * Hkv * D)), vp(static_cast<std::size_t>(B * m * Hkv * Dv));
  const bool widen = !std::is_same<TK, float>::value || !std::is_same<TV, float>::value;
  parallel_for(p.policy, B * Hkv, [&](index_t item, int) {
    const index_t b = item / Hkv, h = item % Hkv;
    scratch_frame frame(widen ? scratch_frame::bytes_for<float>(Lk * std::max(D, Dv)) + scratch_arena::alignment : 0);
    float* buf = widen ? frame.alloc<float>(Lk * std::max(D, Dv)) : nullptr;
    const float* eh = e.ptr(e.dim(0) == 1 ? 0 : h);
    const float* fh = fe.ptr(fe.dim(0) == 1 ? 0 : h);
    index_t ld = 0;
    const float* kr = detail::sparse::rows_as_f32(k.ptr(b, 0, h), k.stride(1), Lk, D, buf, &ld);
    simd::gemm_nn(m, D, Lk, 1.f, eh, e.stride(1), kr, ld, 0.f, kp.data() + (b * m * Hkv + h) * D, Hkv * D);
    const float* vr = detail::sparse::rows_as_f32(v.ptr(b, 0, h), v.stride(1), Lk, Dv, buf, &ld);
    simd::gemm_nn(m, Dv, Lk, 1.f, fh, fe.stride(1), vr, ld, 0.f, vp.data() + (b * m * Hkv + h) * Dv, Hkv * Dv);
  });

  // Stage 2: exact softmax over the m projected rows.
  attention_params ap;
  ap.scale = std::isnan(p.scale) ? 1.f / std::sqrt(static_cast<float>(D)) : p.scale;
  ap.softcap = p.softcap;
  ap.policy = p.policy;
  detail::flash_attention_kernel(xsimd::default_arch{}, q, tensor_view<const float, 4>(kp.data(), {B, m, Hkv, D}),
                                 tensor_view<const float, 4>(vp.data(), {B, m, Hkv, Dv}), o, lse, ap);
}

template <class Q, class K, class V, class O>
void linformer_attention(const Q& q, const K& k, const V& v, tensor_view<const float, 3> e,
                         tensor_view<const float, 3> f, O&& o, const linformer_params& p = {}) {
  linformer_attention(q, k, v, e, f, std::forward<O>(o), tensor_view<float, 3>(), p);
}

}  // namespace tokmix
