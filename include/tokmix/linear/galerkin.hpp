#pragma once
// Softmax-free "Galerkin" and "Fourier" attention of the Galerkin Transformer
// (operator learning on PDE grids): layer-normalised products divided by the
// sequence length, computed right to left so the cost is linear in L
// (a d x d matrix per head instead of an L x L one).
//
// ref: S. Cao 2021, "Choose a Transformer: Fourier or Galerkin" (NeurIPS),
//      eqs. (6) and (7), and its reference code (per-head LayerNorm).
//
//   galerkin: o = Q (LN(K)^T LN(V)) / Lk
//   fourier:  o = (LN(Q) LN(K)^T) V / Lk = LN(Q) (LN(K)^T V) / Lk
// LN normalises each row over the head dim (mean 0, variance 1, eps inside the
// square root), without affine unless weights/biases are given ([heads, dim]
// of the normalised tensor). Non-causal; Lq and Lk may differ; grouped heads
// as in docs/semantics.md (query head h uses kv head h / (Hq / Hkv)).

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "tokmix/core/error.hpp"
#include "tokmix/core/tensor_view.hpp"
#include "tokmix/core/threading.hpp"
#include "tokmix/simd/gemm.hpp"

namespace tokmix {

enum class galerkin_kind { galerkin, fourier };

struct galerkin_params {
  galerkin_kind kind = galerkin_kind::galerkin;
  float norm_eps = 1e-5f;
  // Optional LayerNorm affine of the normalised tensors (galerkin: k and v;
  // fourier: q and k); empty = none.                    // [heads of that tensor, its head dim]
  tensor_view<const float, 2> q_norm_weight, q_norm_bias, k_norm_weight, k_norm_bias, v_norm_weight, v_norm_bias;
  exec_policy policy;  // threads over batch x kv heads
};

namespace detail {

inline void galerkin_check_affine(const char* name, const tensor_view<const float, 2>& p, bool used, index_t heads,
                                  index_t dim, const char* kind) {
  if (p.data() == nullptr) return;
  require(used, name, std::string("empty (not normalised by ") + kind + " attention)", "shape " + p.shape_string());
  require_layout(name, p);
  require_shape(name, p, {heads, dim});
  for (index_t h = 0; h < heads; ++h)
    for (index_t i = 0; i < dim; ++i)
      if (!std::isfinite(p(h, i)))
        throw argument_error(name, "finite values",
                             detail::to_text(p(h, i)) + " at [" + std::to_string(h) + ", " + std::to_string(i) + "]");
}

// Rows [t0, t0 + n) of head h of x, layer-normalised into out [n, dim].
inline void galerkin_layer_norm(const tensor_view<const float, 4>& x, index_t b, index_t t0, index_t n, index_t h,
                                float eps, const tensor_view<const float, 2>& w, const tensor_view<const float, 2>& bias,
                                float* out) {
  const index_t dim = x.dim(3);
  for (index_t r = 0; r < n; ++r) {
    const float* xr = x.ptr(b, t0 + r, h);
    double mean = 0, var = 0;
    for (index_t i = 0; i < dim; ++i) mean += xr[i];
    mean /= static_cast<double>(dim);
    for (index_t i = 0; i < dim; ++i) var += (xr[i] - mean) * (xr[i] - mean);
    var /= static_cast<double>(dim);
    const float m = static_cast<float>(mean), rstd = static_cast<float>(1.0 / std::sqrt(var + eps));
    float* o = out + r * dim;
    for (index_t i = 0; i < dim; ++i) {
      float y = (xr[i] - m) * rstd;
      if (w.data()) y *= w(h, i);
      if (bias.data()) y += bias(h, i);
      o[i] = y;
    }
  }
}

}  // namespace detail

//   q: [batch, q_len, q_heads, head_dim]   k: [batch, k_len, kv_heads, head_dim]
//   v: [batch, k_len, kv_heads, v_dim]     o: [batch, q_len, q_heads, v_dim]
// k_len == 0 gives zeros.
inline void galerkin_attention(tensor_view<const float, 4> q, tensor_view<const float, 4> k,
                               tensor_view<const float, 4> v, tensor_view<float, 4> o,
                               const galerkin_params& params = {}) {
  require_layout("q", q);
  require_layout("k", k);
  require_layout("v", v);
  require_layout("o", o);
  const index_t B = q.dim(0), Lq = q.dim(1), Hq = q.dim(2), dk = q.dim(3);
  const index_t Lk = k.dim(1), Hkv = k.dim(2), dv = v.dim(3);
  require(dk >= 1, "q head_dim (dim 3)", ">= 1", dk);
  require(dv >= 1, "v head_dim (dim 3)", ">= 1", dv);
  require_shape("k", k, {B, -1, -1, dk});
  require(Hkv >= 1, "k heads (dim 2)", ">= 1", Hkv);
  require(Hq % Hkv == 0, "k heads (dim 2)", "a divisor of the query heads " + std::to_string(Hq), Hkv);
  require_shape("v", v, {B, Lk, Hkv, -1});
  require_shape("o", o, {B, Lq, Hq, dv});
  if (Lq > 1) require(q.stride(1) >= dk, "q seq stride", ">= head_dim", q.stride(1));
  if (Lq > 1) require(o.stride(1) >= dv, "o seq stride", ">= v_dim", o.stride(1));
  require(std::isfinite(params.norm_eps) && params.norm_eps >= 0, "norm_eps", "a finite value >= 0", params.norm_eps);
  const bool gal = params.kind == galerkin_kind::galerkin;
  const char* kind = gal ? "galerkin" : "fourier";
  detail::galerkin_check_affine("q_norm_weight", params.q_norm_weight, !gal, Hq, dk, kind);
  detail::galerkin_check_affine("q_norm_bias", params.q_norm_bias, !gal, Hq, dk, kind);
  detail::galerkin_check_affine("k_norm_weight", params.k_norm_weight, true, Hkv, dk, kind);
  detail::galerkin_check_affine("k_norm_bias", params.k_norm_bias, true, Hkv, dk, kind);
  detail::galerkin_check_affine("v_norm_weight", params.v_norm_weight, gal, Hkv, dv, kind);
  detail::galerkin_check_affine("v_norm_bias", params.v_norm_bias, gal, Hkv, dv, kind);
  if (B == 0 || Lq == 0 || Hq == 0) return;

  const index_t group = Hq / Hkv, C = 128;
  const float inv_l = Lk > 0 ? 1.f / static_cast<float>(Lk) : 0.f;
  parallel_for(params.policy, B * Hkv, [&](index_t item, int) {
    const index_t b = item / Hkv, g = item % Hkv;
    std::vector<float> m(static_cast<std::size_t>(dk * dv), 0.f), kn(static_cast<std::size_t>(C * dk)),
        vn(static_cast<std::size_t>(C * dv)), qn(static_cast<std::size_t>(C * dk));
    // M = LN(K)^T (LN(V) or V), summed over key chunks.
    for (index_t t0 = 0; t0 < Lk; t0 += C) {
      const index_t n = std::min(C, Lk - t0);
      detail::galerkin_layer_norm(k, b, t0, n, g, params.norm_eps, params.k_norm_weight, params.k_norm_bias, kn.data());
      const float* vp = vn.data();
      index_t ldv = dv;
      if (gal) {
        detail::galerkin_layer_norm(v, b, t0, n, g, params.norm_eps, params.v_norm_weight, params.v_norm_bias, vn.data());
      } else {
        vp = v.ptr(b, t0, g);
        ldv = n > 1 ? v.stride(1) : dv;
        if (n > 1 && ldv < dv) {  // overlapping rows: copy
          for (index_t r = 0; r < n; ++r) std::copy(v.ptr(b, t0 + r, g), v.ptr(b, t0 + r, g) + dv, vn.data() + r * dv);
          vp = vn.data();
          ldv = dv;
        }
      }
      simd::gemm_tn(dk, dv, n, 1.f, kn.data(), dk, vp, ldv, 1.f, m.data(), dv);
    }
    for (index_t r = 0; r < group; ++r) {
      const index_t h = g * group + r;
      for (index_t t0 = 0; t0 < Lq; t0 += C) {
        const index_t n = std::min(C, Lq - t0);
        const float* qp = q.ptr(b, t0, h);
        index_t ldq = n > 1 ? q.stride(1) : dk;
        if (!gal) {
          detail::galerkin_layer_norm(q, b, t0, n, h, params.norm_eps, params.q_norm_weight, params.q_norm_bias,
                                      qn.data());
          qp = qn.data();
          ldq = dk;
        }
        simd::gemm_nn(n, dv, dk, inv_l, qp, ldq, m.data(), dv, 0.f, o.ptr(b, t0, h), n > 1 ? o.stride(1) : dv);
      }
    }
  });
}

}  // namespace tokmix
