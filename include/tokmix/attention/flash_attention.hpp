#pragma once
// Exact softmax attention over full sequences (prefill, encoders, cross-
// attention) with every option of attention_params, in O(tile) extra memory.
// The tile kernel lives in detail/flash_kernel.hpp; this header validates,
// resolves defaults and hands the work to it.
//
//   tokmix::attention_params p;
//   p.causal = true;
//   tokmix::flash_attention(q, k, v, o, p);        // o: [B, Lq, Hq, Dv]
//   tokmix::flash_attention(q, k, v, o, lse, p);   // lse: [B, Hq, Lq], natural log
//
// Semantics: docs/semantics.md, "Softmax attention".
// ref: Dao et al., FlashAttention / FlashAttention-2 (2022, 2023).

#include <cmath>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "tokmix/simd/arch.hpp"

#include "tokmix/attention/detail/flash_kernel.hpp"
#include "tokmix/attention/mask.hpp"
#include "tokmix/attention/params.hpp"
#include "tokmix/core/error.hpp"
#include "tokmix/core/tensor_view.hpp"

namespace tokmix {

namespace detail {

// q/k/v element types, minus const, must be storage types.
template <class TQ, class TK, class TV>
constexpr void check_attention_storage() {
  static_assert(is_storage_type_v<TQ>, "q must hold float, Eigen::half or Eigen::bfloat16");
  static_assert(is_storage_type_v<TK>, "k must hold float, Eigen::half or Eigen::bfloat16");
  static_assert(is_storage_type_v<TV>, "v must hold float, Eigen::half or Eigen::bfloat16");
}

inline float resolve_attention_scale(const attention_params& p, index_t head_dim) {
  return std::isnan(p.scale) ? 1.f / std::sqrt(static_cast<float>(head_dim)) : p.scale;
}

template <class Arch, class TQ, class TK, class TV>
void flash_attention_kernel(Arch, tensor_view<const TQ, 4> q, tensor_view<const TK, 4> k,
                            tensor_view<const TV, 4> v, tensor_view<float, 4> o, tensor_view<float, 3> lse,
                            const attention_params& p) {
  const index_t B = q.dim(0);
  flash::flash_shape sh{q.dim(2), k.dim(2), q.dim(3), v.dim(3), resolve_attention_scale(p, q.dim(3))};
  std::vector<flash::flash_problem<TQ, TK, TV>> probs(static_cast<std::size_t>(B));
  const bool has_lse = lse.data() != nullptr;
  for (index_t b = 0; b < B; ++b) {
    auto& pr = probs[b];
    pr.q = q.ptr(b);
    pr.q_row = q.stride(1);
    pr.q_head = q.stride(2);
    pr.k = k.ptr(b);
    pr.k_row = k.stride(1);
    pr.k_head = k.stride(2);
    pr.v = v.ptr(b);
    pr.v_row = v.stride(1);
    pr.v_head = v.stride(2);
    pr.o = o.ptr(b);
    pr.o_row = o.stride(1);
    pr.o_head = o.stride(2);
    pr.lse = has_lse ? lse.ptr(b) : nullptr;
    pr.lse_head = has_lse ? lse.stride(1) : 0;
    pr.lse_row = has_lse ? lse.stride(2) : 0;
    pr.lq = q.dim(1);
    pr.lk = k.dim(1);
    pr.batch_index = b;
  }
  flash::flash_run<Arch>(probs.data(), B, sh, p);
}

// Shape checks shared by the dense entry point (and the tests): all of them
// run before any output is written.
template <class TQ, class TK, class TV>
void check_flash_attention_args(const tensor_view<const TQ, 4>& q, const tensor_view<const TK, 4>& k,
                                const tensor_view<const TV, 4>& v, const tensor_view<float, 4>& o,
                                const tensor_view<float, 3>& lse, const attention_params& p) {
  require_layout("q", q);
  require_layout("k", k);
  require_layout("v", v);
  require_layout("o", o);
  const index_t B = q.dim(0), Lq = q.dim(1), Hq = q.dim(2), D = q.dim(3);
  const index_t Lk = k.dim(1), Hkv = k.dim(2), Dv = v.dim(3);
  require(D >= 1, "q", "head_dim >= 1", "shape " + q.shape_string());
  require_shape("k", k, {B, -1, -1, D});
  require(Hkv >= 1 && Hq % Hkv == 0, "k", "kv heads dividing the " + std::to_string(Hq) + " query heads",
          std::to_string(Hkv) + " kv heads (shape " + k.shape_string() + ")");
  require_shape("v", v, {B, Lk, Hkv, -1});
  require_shape("o", o, {B, Lq, Hq, Dv});
  if (lse.data() != nullptr) {
    require_layout("lse", lse);
    require_shape("lse", lse, {B, Hq, Lq});
  }
  check_attention_params(p, B, Hq, Lq, Lk);
  require(Lk <= flash::max_keys, "k", "at most 2^24 keys (mask positions are compared in fp32)",
          "shape " + k.shape_string());
}

}  // namespace detail

// o = softmax(scale * q k^T + bias, masked) v for every batch and query head.
//   q: [B, Lq, Hq, D]   k: [B, Lk, Hkv, D]   v: [B, Lk, Hkv, Dv]   o: [B, Lq, Hq, Dv]
//   lse: [B, Hq, Lq] (natural log) or an empty view to skip it.
// Any strides with a unit-stride last dimension (view_from_bhld for PyTorch's
// [B, H, L, D]). Query head h reads kv head h / (Hq / Hkv). Rows that see no
// key give o = 0 and lse = -inf. Throws argument_error, before writing
// anything, on any inconsistent shape or option.
template <class Q, class K, class V, class O>
void flash_attention(const Q& q_, const K& k_, const V& v_, O&& o_, tensor_view<float, 3> lse,
                     const attention_params& p = {}) {
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
  detail::check_flash_attention_args(q, k, v, o, lse, p);
  detail::flash_attention_kernel(xsimd::default_arch{}, q, k, v, o, lse, p);
}

template <class Q, class K, class V, class O>
void flash_attention(const Q& q, const K& k, const V& v, O&& o, const attention_params& p = {}) {
  flash_attention(q, k, v, std::forward<O>(o), tensor_view<float, 3>(), p);
}

// Same, with lse given as any rank-3 float tensor / map / view.
template <class Q, class K, class V, class O, class L,
          class = std::enable_if_t<!std::is_same<std::decay_t<L>, attention_params>::value &&
                                   !std::is_same<std::decay_t<L>, tensor_view<float, 3>>::value>>
void flash_attention(const Q& q, const K& k, const V& v, O&& o, L&& lse, const attention_params& p = {}) {
  flash_attention(q, k, v, std::forward<O>(o), tensor_view<float, 3>(as_view(lse)), p);
}

}  // namespace tokmix
