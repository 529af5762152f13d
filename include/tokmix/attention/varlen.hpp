#pragma once
// Attention over a padding-free batch: sequences of different lengths packed
// one after another, delimited by cumulative offsets (flash_attn_varlen_func's
// cu_seqlens convention). Each sequence is an independent problem, so no
// FLOP or byte is spent on padding; all sequences share one thread pool pass.
//
//   q: [total_q, Hq, D]  k: [total_k, Hkv, D]  v: [total_k, Hkv, Dv]  o: [total_q, Hq, Dv]
//   cu_seqlens_q / cu_seqlens_k: int32 [B + 1], 0 = c[0] <= c[1] <= ... <= c[B] = total
//   lse (optional): [Hq, total_q], as flash_attn_varlen_func's softmax_lse
//
// Causal alignment and windows apply per sequence (its own Lq, Lk). Options
// that index a dense [B, Lq, Lk] grid (mask, bias, segment ids) are rejected.
// ref: Dao, FlashAttention-2 varlen API; Zhai et al., ByteTransformer (2023).

#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "tokmix/simd/arch.hpp"

#include "tokmix/attention/detail/flash_kernel.hpp"
#include "tokmix/attention/flash_attention.hpp"
#include "tokmix/attention/mask.hpp"
#include "tokmix/attention/params.hpp"
#include "tokmix/core/error.hpp"
#include "tokmix/core/tensor_view.hpp"

namespace tokmix {

namespace detail {

inline void check_cu_seqlens(const char* name, const tensor_view<const std::int32_t, 1>& cu, index_t total,
                             index_t max_seqlen) {
  require_layout(name, cu);
  require(cu.dim(0) >= 1, name, "length batch + 1 >= 1", cu.dim(0));
  require(cu(0) == 0, name, "first offset 0", cu(0));
  for (index_t i = 1; i < cu.dim(0); ++i) {
    require(cu(i) >= cu(i - 1), name, "non-decreasing offsets",
            "offset " + std::to_string(cu(i)) + " after " + std::to_string(cu(i - 1)) + " at index " + std::to_string(i));
    if (max_seqlen >= 0)
      require(cu(i) - cu(i - 1) <= max_seqlen, name, "sequence lengths <= max_seqlen " + std::to_string(max_seqlen),
              "length " + std::to_string(cu(i) - cu(i - 1)) + " at sequence " + std::to_string(i - 1));
  }
  require(cu(cu.dim(0) - 1) == total, name, "last offset == total tokens " + std::to_string(total),
          cu(cu.dim(0) - 1));
}

}  // namespace detail

// Packed variable-length attention. max_seqlen_q / max_seqlen_k bound each
// sequence's length (checked; pass -1 for no bound). Throws argument_error,
// before writing anything, on inconsistent shapes, bad offsets or options.
template <class Q, class K, class V, class O, class CQ, class CK>
void flash_attention_varlen(const Q& q_, const K& k_, const V& v_, O&& o_, const CQ& cu_seqlens_q,
                            const CK& cu_seqlens_k, index_t max_seqlen_q, index_t max_seqlen_k,
                            tensor_view<float, 2> lse, const attention_params& p = {}) {
  const auto qv = as_view(q_);
  const auto kv = as_view(k_);
  const auto vv = as_view(v_);
  using TQ = std::remove_const_t<typename decltype(qv)::element_type>;
  using TK = std::remove_const_t<typename decltype(kv)::element_type>;
  using TV = std::remove_const_t<typename decltype(vv)::element_type>;
  detail::check_attention_storage<TQ, TK, TV>();
  const tensor_view<const TQ, 3> q = qv;
  const tensor_view<const TK, 3> k = kv;
  const tensor_view<const TV, 3> v = vv;
  const tensor_view<float, 3> o = as_view(o_);
  const tensor_view<const std::int32_t, 1> cq = as_view(cu_seqlens_q), ck = as_view(cu_seqlens_k);

  require_layout("q", q);
  require_layout("k", k);
  require_layout("v", v);
  require_layout("o", o);
  const index_t Tq = q.dim(0), Hq = q.dim(1), D = q.dim(2);
  const index_t Tk = k.dim(0), Hkv = k.dim(1), Dv = v.dim(2);
  require(D >= 1, "q", "head_dim >= 1", "shape " + q.shape_string());
  require_shape("k", k, {-1, -1, D});
  require(Hkv >= 1 && Hq % Hkv == 0, "k", "kv heads dividing the " + std::to_string(Hq) + " query heads",
          std::to_string(Hkv) + " kv heads (shape " + k.shape_string() + ")");
  require_shape("v", v, {Tk, Hkv, -1});
  require_shape("o", o, {Tq, Hq, Dv});
  if (lse.data() != nullptr) {
    require_layout("lse", lse);
    require_shape("lse", lse, {Hq, Tq});
  }
  require(p.mask.data() == nullptr, "params.mask", "empty in flash_attention_varlen (use per-sequence calls)",
          "a mask of shape " + p.mask.shape_string());
  require(p.bias.data() == nullptr, "params.bias", "empty in flash_attention_varlen (use per-sequence calls)",
          "a bias of shape " + p.bias.shape_string());
  require(p.q_segment_ids.data() == nullptr && p.k_segment_ids.data() == nullptr, "params.q_segment_ids",
          "empty in flash_attention_varlen (cu_seqlens already delimit the sequences)", "segment ids");
  require(max_seqlen_q >= -1, "max_seqlen_q", ">= -1", max_seqlen_q);
  require(max_seqlen_k >= -1, "max_seqlen_k", ">= -1", max_seqlen_k);
  detail::check_cu_seqlens("cu_seqlens_q", cq, Tq, max_seqlen_q);
  detail::check_cu_seqlens("cu_seqlens_k", ck, Tk, max_seqlen_k);
  require(cq.dim(0) == ck.dim(0), "cu_seqlens_k", "length " + std::to_string(cq.dim(0)) + " (as cu_seqlens_q)",
          ck.dim(0));
  const index_t B = cq.dim(0) - 1;
  for (index_t b = 0; b < B; ++b)
    require(ck(b + 1) - ck(b) <= detail::flash::max_keys, "cu_seqlens_k",
            "sequences of at most 2^24 keys (mask positions are compared in fp32)", ck(b + 1) - ck(b));
  // Window, sinks, softcap, ALiBi: per-sequence shapes do not matter for these checks.
  check_attention_params(p, B, Hq, 0, 0);

  detail::flash::flash_shape sh{Hq, Hkv, D, Dv, detail::resolve_attention_scale(p, D)};
  std::vector<detail::flash::flash_problem<TQ, TK, TV>> probs(static_cast<std::size_t>(B));
  const bool has_lse = lse.data() != nullptr;
  for (index_t b = 0; b < B; ++b) {
    const index_t sq = cq(b), sk = ck(b);
    auto& pr = probs[b];
    pr.q = q.data() + sq * q.stride(0);
    pr.q_row = q.stride(0);
    pr.q_head = q.stride(1);
    pr.k = k.data() + sk * k.stride(0);
    pr.k_row = k.stride(0);
    pr.k_head = k.stride(1);
    pr.v = v.data() + sk * v.stride(0);
    pr.v_row = v.stride(0);
    pr.v_head = v.stride(1);
    pr.o = o.data() + sq * o.stride(0);
    pr.o_row = o.stride(0);
    pr.o_head = o.stride(1);
    pr.lse = has_lse ? lse.data() + sq * lse.stride(1) : nullptr;
    pr.lse_head = has_lse ? lse.stride(0) : 0;
    pr.lse_row = has_lse ? lse.stride(1) : 0;
    pr.lq = cq(b + 1) - sq;
    pr.lk = ck(b + 1) - sk;
    pr.batch_index = b;
  }
  detail::flash::flash_run<xsimd::default_arch>(probs.data(), B, sh, p);
}

template <class Q, class K, class V, class O, class CQ, class CK>
void flash_attention_varlen(const Q& q, const K& k, const V& v, O&& o, const CQ& cu_seqlens_q, const CK& cu_seqlens_k,
                            index_t max_seqlen_q, index_t max_seqlen_k, const attention_params& p = {}) {
  flash_attention_varlen(q, k, v, std::forward<O>(o), cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                         tensor_view<float, 2>(), p);
}

}  // namespace tokmix
