#pragma once
// Block-sparse softmax attention: exact softmax over the keys of the key
// blocks a block_layout shows each query block (BigBird, LSG, Sparse
// Transformer, or any user layout), composed with every token-level option of
// attention_params (causal, window, sinks, softcap, ALiBi, bias, masks, segment
// ids). The work runs on the flash attention tiles
// (attention/detail/flash_kernel.hpp), visiting only the visible key blocks
// (adjacent ones merged into one range), so the cost is proportional to the
// number of visible blocks.
//
//   o_i = sum_{j in S(i)} softmax_j(s_ij) v_j,  s_ij = scale q_i . k_j (+ bias),
//   S(i) = { j : layout(h, i / b, j / b) and the attention_params mask shows (i, j) }
//
//   q: [B, Lq, Hq, D]   k: [B, Lk, Hkv, D]   v: [B, Lk, Hkv, Dv]   o: [B, Lq, Hq, Dv]
//   lse (optional): [B, Hq, Lq], natural log
//   layout: heads 1 or Hq, q_blocks = ceil(Lq / b), k_blocks = ceil(Lk / b)
//
// Rows whose layout row is empty (or whose visible blocks the mask hides
// entirely) give o = 0 and lse = -inf. Query head h reads kv head h / (Hq / Hkv)
// and layout head h (or 0 when the layout is shared).
//
// Decode (block_sparse_decode): the n new queries sit at absolute positions
// cache.length() - n + i and use the layout row of their position's block;
// causal as attention_decode (window, sinks and softcap honoured), linear
// caches only, layouts with at least ceil(cache.length() / b) blocks each side
// (build them for the longest sequence). Decode step by step equals the causal
// prefill with the same layout.
//
// Efficient block sizes are 64..128 (the tile is 128 x 128); larger blocks are
// cut into 128-row pieces, smaller ones run as short tiles.
//
// ref: Child et al., "Generating Long Sequences with Sparse Transformers" (2019);
//      Zaheer et al., "Big Bird" (NeurIPS 2020); Gray, Radford & Kingma,
//      "GPU Kernels for Block-Sparse Weights" (OpenAI, 2017) for the layout-
//      driven kernel; Dao, "FlashAttention-2" (2023) for the tiles.

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "tokmix/simd/arch.hpp"

#include "tokmix/attention/decode.hpp"
#include "tokmix/attention/detail/flash_kernel.hpp"
#include "tokmix/attention/flash_attention.hpp"
#include "tokmix/attention/kv_cache.hpp"
#include "tokmix/attention/mask.hpp"
#include "tokmix/attention/params.hpp"
#include "tokmix/core/error.hpp"
#include "tokmix/core/scratch.hpp"
#include "tokmix/core/tensor_view.hpp"
#include "tokmix/core/threading.hpp"
#include "tokmix/sparse/block_layout.hpp"
#include "tokmix/sparse/detail/common.hpp"
#include "tokmix/sparse/detail/decode_rows.hpp"

namespace tokmix {
namespace detail {
namespace sparse {

inline void check_block_layout(const block_layout& l, index_t seq_q, index_t seq_k, index_t heads_q, bool at_least) {
  require(!l.empty() || (seq_q == 0 || seq_k == 0), "layout", "a non-empty block_layout", "an empty layout");
  const index_t b = l.block_size();
  const index_t nq = (seq_q + b - 1) / b, nk = (seq_k + b - 1) / b;
  const std::string how = at_least ? "at least " : "";
  require(at_least ? l.q_blocks() >= nq : l.q_blocks() == nq, "layout",
          how + std::to_string(nq) + " query blocks (" + std::to_string(seq_q) + " queries / block " +
              std::to_string(b) + ")",
          std::to_string(l.q_blocks()) + " query blocks");
  require(at_least ? l.k_blocks() >= nk : l.k_blocks() == nk, "layout",
          how + std::to_string(nk) + " key blocks (" + std::to_string(seq_k) + " keys / block " + std::to_string(b) +
              ")",
          std::to_string(l.k_blocks()) + " key blocks");
  require(l.heads() == 1 || l.heads() == heads_q, "layout", "1 or " + std::to_string(heads_q) + " heads (query heads)",
          std::to_string(l.heads()) + " heads");
}

// Visible key blocks of every (layout head, query block) as merged key ranges.
struct block_ranges {
  std::vector<flash::flash_key_range> r;
  std::vector<index_t> first;  // [heads * q_blocks + 1] offsets into r
  const flash::flash_key_range* at(index_t idx) const {
    static const flash::flash_key_range none{0, 0};
    return first[idx] < first[idx + 1] ? r.data() + first[idx] : &none;  // never nullptr: nullptr means "all keys"
  }
  index_t count(index_t idx) const { return first[idx + 1] - first[idx]; }
};

inline void row_ranges(const block_layout& l, index_t h, index_t qb, index_t lk, std::vector<flash::flash_key_range>& out) {
  const std::uint8_t* row = l.row(h, qb);
  const index_t b = l.block_size(), nk = std::min(l.k_blocks(), (lk + b - 1) / b);
  for (index_t j = 0; j < nk;) {
    if (!row[j]) {
      ++j;
      continue;
    }
    index_t e = j;
    while (e < nk && row[e]) ++e;
    out.push_back({j * b, std::min(e * b, lk)});
    j = e;
  }
}

inline block_ranges layout_ranges(const block_layout& l, index_t lk) {
  block_ranges br;
  br.first.reserve(static_cast<std::size_t>(l.heads() * l.q_blocks() + 1));
  br.first.push_back(0);
  for (index_t h = 0; h < l.heads(); ++h)
    for (index_t i = 0; i < l.q_blocks(); ++i) {
      row_ranges(l, h, i, lk, br.r);
      br.first.push_back(static_cast<index_t>(br.r.size()));
    }
  return br;
}

template <class Arch, class TQ, class TK, class TV>
void block_sparse_kernel(Arch, const tensor_view<const TQ, 4>& q, const tensor_view<const TK, 4>& k,
                         const tensor_view<const TV, 4>& v, const tensor_view<float, 4>& o,
                         const tensor_view<float, 3>& lse, const block_layout& layout, const attention_params& p) {
  const index_t B = q.dim(0), Lq = q.dim(1), Hq = q.dim(2), Lk = k.dim(1);
  if (B == 0 || Lq == 0) return;
  const flash::flash_shape sh{Hq, k.dim(2), q.dim(3), v.dim(3), resolve_attention_scale(p, q.dim(3))};
  const block_ranges br = layout_ranges(layout, Lk);
  // Work pieces: layout query blocks cut to at most flash::block_q rows.
  struct piece {
    index_t qb, q0, q1;
  };
  std::vector<piece> pieces;
  const index_t bs = layout.block_size();
  for (index_t qb = 0; qb < layout.q_blocks(); ++qb)
    for (index_t r0 = qb * bs; r0 < std::min(Lq, (qb + 1) * bs); r0 += flash::block_q)
      pieces.push_back({qb, r0, std::min({Lq, (qb + 1) * bs, r0 + flash::block_q})});
  const index_t np = static_cast<index_t>(pieces.size());
  std::vector<flash::flash_problem<TQ, TK, TV>> probs;
  probs.reserve(static_cast<std::size_t>(B));
  for (index_t b = 0; b < B; ++b) probs.push_back(batch_problem(q, k, v, o, lse, b));
  const attention_visibility vis(p, Lq, Lk);
  const bool shared = layout.heads() == 1;
  // Item order: batch, piece (last first: causal rows cost most), head (a GQA group's heads share K/V in cache).
  parallel_for(p.policy, B * np * Hq, [&](index_t item, int) {
    const index_t b = item / (np * Hq), rest = item % (np * Hq);
    const piece& pc = pieces[static_cast<std::size_t>(np - 1 - rest / Hq)];
    const index_t h = rest % Hq;
    const index_t idx = (shared ? 0 : h) * layout.q_blocks() + pc.qb;
    flash::flash_query_block<Arch>(probs[static_cast<std::size_t>(b)], sh, p, vis, h, pc.q0, pc.q1, br.at(idx),
                                   br.count(idx));
  });
}

template <class OE>
inline void store_row(const float* src, OE* dst, index_t n) {
  for (index_t e = 0; e < n; ++e) dst[e] = from_float<OE>(src[e]);
}

template <class Arch, class QE, class T, class OE>
void block_sparse_decode_run(Arch, const tensor_view<const QE, 4>& q, const kv_cache<T>& cache,
                             const tensor_view<OE, 4>& o, const tensor_view<float, 3>* lse, const block_layout& layout,
                             const attention_params& p) {
  check_sparse_decode("block_sparse_decode", q, cache, o, lse, p);
  const index_t B = cache.batch(), n = q.dim(1), Hq = q.dim(2), Hkv = cache.kv_heads(), len = cache.length();
  const index_t D = cache.head_dim(), Dv = cache.v_head_dim(), group = Hq / Hkv;
  check_attention_params(p, B, Hq, n, len);
  check_block_layout(layout, len, len, Hq, true);
  if (n == 0) return;
  const float scale = resolve_attention_scale(p, D);
  const attention_visibility vis(decode_visibility_params(p), n, len);
  const bool shared = layout.heads() == 1;
  // Rows of one item: the whole GQA group when the layout is shared, else one head.
  const index_t R = shared ? group : 1, units = shared ? Hkv : Hq;
  parallel_for(p.policy, B * units * n, [&](index_t item, int) {
    const index_t i = item % n, u = (item / n) % units, b = item / (n * units);
    const index_t g = shared ? u : u / group, h0 = shared ? u * group : u;
    scratch_frame frame(decode_rows_bytes(R, D, Dv) + scratch_frame::bytes_for<float>(R));
    decode_rows<Arch, T> dr(frame, R, D, Dv, cache.k_head(b, g), cache.v_head(b, g), p.softcap);
    float* lrow = frame.alloc<float>(static_cast<std::size_t>(R));
    for (index_t r = 0; r < R; ++r) {
      const QE* src = q.ptr(b, i, h0 + r);
      float* dst = dr.q_row(r);
      for (index_t e = 0; e < D; ++e) dst[e] = scale * to_float(src[e]);
    }
    const index_t pos = len - n + i, bs = layout.block_size();
    flash::flash_key_range iv[2];
    const index_t niv = row_intervals(vis.row(i), iv);
    const std::uint8_t* row = layout.row(shared ? 0 : h0, pos / bs);
    const index_t nk = (len + bs - 1) / bs;
    for (index_t j = 0; j < nk;) {
      if (!row[j]) {
        ++j;
        continue;
      }
      index_t e = j;
      while (e < nk && row[e]) ++e;
      for (index_t t = 0; t < niv; ++t) {
        const index_t a = std::max(j * bs, iv[t].begin), z = std::min(std::min(e * bs, len), iv[t].end);
        if (a < z) dr.run(a, z - a, 1);
      }
      j = e;
    }
    dr.finish(lrow);
    for (index_t r = 0; r < R; ++r) {
      store_row(dr.o_row(r), o.ptr(b, i, h0 + r), Dv);
      if (lse != nullptr) (*lse)(b, h0 + r, i) = lrow[r];
    }
  });
}

}  // namespace sparse
}  // namespace detail

// Block-sparse attention prefill (see the top of this file).
//   q: [B, Lq, Hq, D]  k: [B, Lk, Hkv, D]  v: [B, Lk, Hkv, Dv]  o: [B, Lq, Hq, Dv]  lse: [B, Hq, Lq] or empty
// Throws argument_error, before writing anything, on any inconsistent shape,
// option or layout (block counts, heads).
template <class Q, class K, class V, class O>
void block_sparse_attention(const Q& q_, const K& k_, const V& v_, O&& o_, tensor_view<float, 3> lse,
                            const block_layout& layout, const attention_params& p = {}) {
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
  detail::sparse::check_block_layout(layout, q.dim(1), k.dim(1), q.dim(2), false);
  detail::sparse::block_sparse_kernel(xsimd::default_arch{}, q, k, v, o, lse, layout, p);
}

template <class Q, class K, class V, class O>
void block_sparse_attention(const Q& q, const K& k, const V& v, O&& o, const block_layout& layout,
                            const attention_params& p = {}) {
  block_sparse_attention(q, k, v, std::forward<O>(o), tensor_view<float, 3>(), layout, p);
}

template <class Q, class K, class V, class O, class L,
          class = std::enable_if_t<!std::is_same<std::decay_t<L>, block_layout>::value &&
                                   !std::is_same<std::decay_t<L>, tensor_view<float, 3>>::value>>
void block_sparse_attention(const Q& q, const K& k, const V& v, O&& o, L&& lse, const block_layout& layout,
                            const attention_params& p = {}) {
  block_sparse_attention(q, k, v, std::forward<O>(o), tensor_view<float, 3>(as_view(lse)), layout, p);
}

// Decode against a linear kv_cache (append the new keys first).
//   q_new: [B, n, Hq, D] (float, half, bfloat16)   o: [B, n, Hq, Dv] (float, half, bfloat16)
template <class Q, class T, class O>
void block_sparse_decode(const Q& q_new, const kv_cache<T>& cache, O&& o, const block_layout& layout,
                         const attention_params& p = {}) {
  const auto qv = as_view(q_new);
  const auto ov = as_view(o);
  using QE = typename decltype(qv)::value_type;
  using OE = typename decltype(ov)::value_type;
  static_assert(is_storage_type<QE>::value && is_storage_type<OE>::value, "q_new and o hold float, half or bfloat16");
  detail::sparse::block_sparse_decode_run(xsimd::default_arch{}, tensor_view<const QE, 4>(qv), cache,
                                          tensor_view<OE, 4>(ov), nullptr, layout, p);
}

// Same, also writing lse.                                   // lse: [B, Hq, n]
template <class Q, class T, class O, class L,
          class = std::enable_if_t<!std::is_same<std::decay_t<L>, block_layout>::value>>
void block_sparse_decode(const Q& q_new, const kv_cache<T>& cache, O&& o, L&& lse, const block_layout& layout,
                         const attention_params& p = {}) {
  const auto qv = as_view(q_new);
  const auto ov = as_view(o);
  using QE = typename decltype(qv)::value_type;
  using OE = typename decltype(ov)::value_type;
  static_assert(is_storage_type<QE>::value && is_storage_type<OE>::value, "q_new and o hold float, half or bfloat16");
  const tensor_view<float, 3> lv = as_view(lse);
  detail::sparse::block_sparse_decode_run(xsimd::default_arch{}, tensor_view<const QE, 4>(qv), cache,
                                          tensor_view<OE, 4>(ov), &lv, layout, p);
}

}  // namespace tokmix
