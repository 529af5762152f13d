#pragma once
// Attention of a few new query tokens against a kv_cache: the decode step of
// generation (n = 1) and speculative / chunked decode (n > 1). Decode is bound
// by reading the cache, so the kernel is organised around reading each K and V
// byte once per GQA group:
//   for each (batch, kv head, split of the key range):
//     the group's query heads x the n new queries form R query rows;
//     K rows stream through once, each scored against all R rows;
//     V rows stream through once, accumulated into all R output rows;
//     an online softmax per row carries the max and sum across key tiles.
// 16-bit caches are widened in registers as they stream (never into a buffer).
// Splits of the key range (for parallelism when batch x kv_heads is smaller
// than the worker count) are merged exactly with their log-sum-exp.
//
// ref: Dao et al., "Flash-Decoding for long-context inference" (2023): split-KV
//      decode with an lse merge; Ainslie et al., "GQA" (2023): one KV head
//      shared by a group of query heads; Milakov & Gimelshein (2018): online
//      softmax.
//
// Semantics (docs/semantics.md): the new queries are the last n tokens of the
// sequence whose keys are in the cache (append first, then attend), so query i
// sits at absolute position cache.length() - n + i and decode is causal with
// bottom-right alignment (params.causal may stay false; top-left alignment is
// rejected). The exception is block-causal with causal = false: a block of new
// tokens then sees its whole block (ACDiT). Window, sinks, block-causal, softcap, ALiBi, a user bool mask
// and an additive bias ([batch|1, heads_q|1, n, cache.length()], indexed by
// absolute key position) are honoured; segment ids are not (a cache holds one
// sequence per batch row). With a ring cache the mask works on absolute
// positions, and every key the mask shows must still be held (otherwise
// argument_error names the window).
//
// Determinism: the split count depends only on the policy's worker count,
// batch x kv_heads and the key range (attention_decode_splits); each split's
// result does not depend on which thread runs it. So for a fixed policy the
// output is bit-identical run to run, and any two policies that give the same
// split count (e.g. serial and threads(2) when batch x kv_heads >= 4) give
// bit-identical outputs.
//
// Steady state allocates nothing: scratch comes from the per-thread arenas
// (tokmix::scratch_frame), which stop growing after the first call of a shape.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>

#include "tokmix/simd/arch.hpp"

#include "tokmix/attention/detail/decode_kernels.hpp"
#include "tokmix/attention/kv_cache.hpp"
#include "tokmix/attention/mask.hpp"
#include "tokmix/attention/merge.hpp"
#include "tokmix/attention/params.hpp"
#include "tokmix/core/element.hpp"
#include "tokmix/core/error.hpp"
#include "tokmix/core/scratch.hpp"
#include "tokmix/core/tensor_view.hpp"
#include "tokmix/core/threading.hpp"
#include "tokmix/simd/convert.hpp"
#include "tokmix/simd/exp.hpp"
#include "tokmix/simd/reduce.hpp"
#include "tokmix/simd/prefetch.hpp"

namespace tokmix {

// How many pieces attention_decode cuts the visible key range into: enough
// (batch, kv head, split) items to keep every worker busy, never pieces under
// 512 keys, and 1 on a single worker.
inline index_t attention_decode_splits(const exec_policy& policy, index_t batch, index_t kv_heads, index_t keys) {
  const index_t w = policy.mode() == exec_policy::kind::serial ? 1 : std::max(1, policy.workers());
  if (w <= 1) return 1;
  const index_t items = std::max<index_t>(1, batch * kv_heads);
  if (items >= 2 * w) return 1;
  const index_t want = (2 * w + items - 1) / items;
  return std::max<index_t>(1, std::min(want, keys / 512));
}

namespace detail {

// Key tile: small enough that a V tile stays in L1 across the PV column passes.
inline index_t decode_tile(index_t d, index_t dv) {
  const index_t m = std::max<index_t>(1, std::max(d, dv));
  index_t t = 16;
  while (t * 2 * m <= 4096 && t < 128) t *= 2;
  return t;
}

struct decode_plan {
  index_t batch = 0, n = 0, heads_q = 0, kv_heads = 0, group = 0, rows = 0, d = 0, dv = 0, length = 0;
  float scale = 1.f;
  index_t sink_end = 0;            // keys [0, sink_end) (sinks hidden by the window)
  index_t main_b = 0, main_e = 0;  // keys [main_b, main_e): the causal / window span
  index_t splits = 1;
  index_t tile = 32;
  bool any_bias = false;
  bool data_mask = false;
};

// Decode is causal: the new queries must not see each other's future. The one
// exception is block-causal without causal, where a block of new tokens sees
// its whole block (ACDiT), which the cache holds once the block is appended.
inline attention_params decode_visibility_params(const attention_params& p) {
  attention_params v = p;
  if (p.causal_block == 0) v.causal = true;
  return v;
}

template <class T>
void decode_require_held(const kv_cache<T>& cache, index_t a, index_t e, const attention_params& params) {
  if (a >= e) return;
  const index_t gap_b = std::min(cache.n_sink(), cache.length()), gap_e = cache.first_window_position();
  if (std::max(a, gap_b) < std::min(e, gap_e))
    throw argument_error("params.window_left",
                         "a window (and n_sink) showing only keys the ring cache still holds: positions [0, " +
                             std::to_string(gap_b) + ") and [" + std::to_string(gap_e) + ", " +
                             std::to_string(cache.length()) + "); a ring of capacity C with s sinks fits window_left <= C - s - n",
                         "window_left " + std::to_string(params.window_left) + ", n_sink " +
                             std::to_string(params.n_sink) + ": visible keys [" + std::to_string(a) + ", " +
                             std::to_string(e) + ")");
}

// Validates everything and lays out the work; writes nothing.
template <class QV, class T, class OV>
decode_plan decode_prepare(const QV& q, const kv_cache<T>& cache, const OV& o, const tensor_view<float, 3>* lse,
                           const attention_params& params, const exec_policy& policy, index_t split_override) {
  require_layout("q_new", q);
  require_layout("o", o);
  decode_plan pl;
  pl.batch = cache.batch();
  pl.kv_heads = cache.kv_heads();
  pl.d = cache.head_dim();
  pl.dv = cache.v_head_dim();
  pl.length = cache.length();
  require_shape("q_new", q, {pl.batch, -1, -1, pl.d});
  pl.n = q.dim(1);
  pl.heads_q = q.dim(2);
  require(pl.heads_q >= 1 && pl.heads_q % pl.kv_heads == 0, "q_new",
          "a head count that is a multiple of the cache's kv_heads (" + std::to_string(pl.kv_heads) + ")", pl.heads_q);
  require_shape("o", o, {pl.batch, pl.n, pl.heads_q, pl.dv});
  if (lse != nullptr) {
    require_layout("lse", *lse);
    require_shape("lse", *lse, {pl.batch, pl.heads_q, pl.n});
  }
  check_attention_params(params, pl.batch, pl.heads_q, pl.n, pl.length);
  require(params.alignment == causal_alignment::bottom_right, "params.alignment",
          "bottom_right (decode queries are the last tokens of the cached sequence)", "top_left");
  require(params.q_segment_ids.data() == nullptr, "params.q_segment_ids",
          "empty in decode (a cache holds one sequence per batch row)", "segment ids");
  pl.group = pl.heads_q / pl.kv_heads;
  pl.rows = pl.group * pl.n;
  pl.scale = std::isnan(params.scale) ? 1.f / std::sqrt(static_cast<float>(pl.d)) : params.scale;
  pl.any_bias = params.alibi_slopes.data() != nullptr || params.bias.data() != nullptr;
  pl.data_mask = params.mask.data() != nullptr;
  pl.tile = decode_tile(pl.d, pl.dv);

  const attention_visibility vis(decode_visibility_params(params), pl.n, pl.length);
  index_t mb = pl.length, me = 0, se = 0;
  for (index_t i = 0; i < pl.n; ++i) {
    const attention_row_bounds r = vis.row(i);
    if (r.lo <= r.hi) {
      mb = std::min(mb, r.lo);
      me = std::max(me, r.hi + 1);
    }
    se = std::max(se, r.sink_end);
  }
  if (mb >= me) mb = me = 0;
  if (se > 0 && (me == 0 || se >= mb)) {  // sinks touch the span (or there is none): one range
    mb = 0;
    me = std::max(me, se);
    se = 0;
  }
  pl.sink_end = se;
  pl.main_b = mb;
  pl.main_e = me;
  decode_require_held(cache, 0, se, params);
  decode_require_held(cache, mb, me, params);
  pl.splits = split_override > 0 ? std::max<index_t>(1, std::min(split_override, std::max<index_t>(1, me - mb)))
                                  : attention_decode_splits(policy, pl.batch, pl.kv_heads, me - mb);
  return pl;
}

// Scratch one (batch, kv head, split) item needs.
template <class T>
std::size_t decode_item_bytes(const decode_plan& pl) {
  const std::size_t R = static_cast<std::size_t>(pl.rows), tile = static_cast<std::size_t>(pl.tile);
  std::size_t bytes = scratch_frame::bytes_for<float>(R * static_cast<std::size_t>(pl.d)) +
                      scratch_frame::bytes_for<float>(R * tile) +
                      scratch_frame::bytes_for<float>(R * static_cast<std::size_t>(pl.dv)) +
                      2 * scratch_frame::bytes_for<float>(R);
  return bytes + 2 * scratch_arena::alignment;
}


// Runs one (b, kv head g, split) item. Leaves in o_acc[R, dv] the normalised
// partial output and in lse_out[R] its log-sum-exp (-inf, o = 0 when the split
// saw no key for that row).
template <class Arch, class QE, class T>
void decode_item(Arch, const decode_plan& pl, const tensor_view<const QE, 4>& q, const kv_cache<T>& cache,
                 const attention_params& params, const attention_visibility& vis, index_t b, index_t g,
                 index_t split, float* o_acc, float* lse_out) {
  using fb = xsimd::batch<float, Arch>;
  constexpr index_t w = static_cast<index_t>(fb::size);
  const index_t R = pl.rows, D = pl.d, Dv = pl.dv, tile = pl.tile, n = pl.n;
  const float ninf = -std::numeric_limits<float>::infinity();
  scratch_frame frame(decode_item_bytes<T>(pl));
  float* qs = frame.alloc<float>(static_cast<std::size_t>(R * D));
  float* s = frame.alloc<float>(static_cast<std::size_t>(R * tile));
  float* m = frame.alloc<float>(static_cast<std::size_t>(R));
  float* l = frame.alloc<float>(static_cast<std::size_t>(R));
  // Row r = hh * n + i: query head g * group + hh, new token i. Scale folded into q.
  for (index_t hh = 0; hh < pl.group; ++hh)
    for (index_t i = 0; i < n; ++i) {
      const QE* src = q.ptr(b, i, g * pl.group + hh);
      float* dst = qs + (hh * n + i) * D;
      for (index_t e = 0; e < D; ++e) dst[e] = pl.scale * to_float(src[e]);
    }
  for (index_t r = 0; r < R; ++r) {
    m[r] = ninf;
    l[r] = 0.f;
  }
  std::fill(o_acc, o_acc + R * Dv, 0.f);

  const T* kh = cache.k_head(b, g);
  const T* vh = cache.v_head(b, g);
  const index_t off = pl.length - n;
  const float cap = params.softcap;

  // Each tile's rows are first read in one ascending pass (simd::touch_bytes):
  // the score kernel's interleaved rows and the PV kernel's column passes
  // (stride one row) leave Zen 3's L2 stream prefetcher idle, a plain pass
  // keeps it running ahead of the next tiles. fp32 touches K and V before the
  // scores, 16-bit caches only V, after them (touching 16-bit K as well measured
  // no gain; their widening leaves more compute per byte to hide misses behind).
  // A/B, 32q/8kv D128 KV4096, 1 thread: f32 4.5 -> 3.7 ms, fp16 2.1 -> 1.95 ms;
  // 2 threads: f32 2.7 -> 1.9 ms, fp16 1.16 -> 1.02 ms.
  constexpr bool touch_kv_first = std::is_same<T, float>::value;
  auto run_tile = [&](index_t p0, index_t c) {
    const tile_visibility tv = vis.classify(0, n, p0, p0 + c);
    if (tv == tile_visibility::hidden) return;
    const index_t slot = cache.slot_of(p0);
    const std::size_t v_bytes = static_cast<std::size_t>(c * Dv) * sizeof(T);
    if (touch_kv_first) {
      simd::touch_bytes(kh + slot * D, static_cast<std::size_t>(c * D) * sizeof(T));
      simd::touch_bytes(vh + slot * Dv, v_bytes);
    }
    decode_scores(Arch{}, qs, D, R, kh + slot * D, D, c, D, s, tile);
    if (!touch_kv_first) simd::touch_bytes(vh + slot * Dv, v_bytes);
    for (index_t r = 0; r < R; ++r) {
      float* sr = s + r * tile;
      const index_t hh = r / n, i = r % n, h = g * pl.group + hh;
      if (cap > 0.f) {
        // cap * tanh(s / cap) = cap - 2 cap / (exp(2 s / cap) + 1): exact limits at +-inf,
        // absolute error ~cap * 1e-7 near 0, which is what a logit needs.
        const fb two_inv(2.f / cap), cb(cap), two_cap(2.f * cap), one(1.f);
        index_t j = 0;
        for (; j + w <= c; j += w) {
          const fb e2 = simd::exp_batch<Arch>(fb::load_unaligned(sr + j) * two_inv);
          (cb - two_cap / (e2 + one)).store_unaligned(sr + j);
        }
        for (; j < c; ++j) sr[j] = cap * std::tanh(sr[j] / cap);
      }
      if (pl.any_bias)
        for (index_t j = 0; j < c; ++j) sr[j] += attention_additive_bias(params, off, b, h, i, p0 + j);
      if (tv == tile_visibility::partial || pl.data_mask) {
        const attention_row_bounds rb = vis.row(i);
        for (index_t j = 0; j < c; ++j)
          if (!rb.contains(p0 + j) || (pl.data_mask && !attention_data_visible(params, b, h, i, p0 + j))) sr[j] = ninf;
      }
      const float mx = simd::reduce_max(sr, c);
      const float m_new = std::max(m[r], mx);
      if (m_new == ninf) {  // nothing visible to this row yet: contribute nothing
        std::fill(sr, sr + c, 0.f);
        continue;
      }
      const float alpha = m[r] == ninf ? 0.f : std::exp(m[r] - m_new);
      const fb mb(m_new);
      index_t j = 0;
      for (; j + w <= c; j += w) simd::exp_batch<Arch>(fb::load_unaligned(sr + j) - mb).store_unaligned(sr + j);
      for (; j < c; ++j) sr[j] = std::exp(sr[j] - m_new);
      l[r] = l[r] * alpha + simd::reduce_sum(sr, c);
      if (alpha != 1.f) {
        float* orow = o_acc + r * Dv;
        for (index_t e = 0; e < Dv; ++e) orow[e] *= alpha;
      }
      m[r] = m_new;
    }
    decode_pv(Arch{}, s, tile, R, vh + slot * Dv, Dv, c, Dv, o_acc, Dv);
  };

  // Ask for the next tile's K and V rows while this one computes: the score and
  // PV loops touch rows in an order the hardware prefetchers follow poorly.
  // Keys [p0, p0 + c) requested ahead of use (clipped to held runs), so the
  // loads of the score and PV loops find their lines on the way.
  auto prefetch_keys = [&](index_t p0, index_t c) {
    while (c > 0) {
      const index_t run = std::min(c, cache.contiguous_run(p0));
      const index_t slot = cache.slot_of(p0);
      simd::prefetch_bytes(kh + slot * D, static_cast<std::size_t>(run * D) * sizeof(T));
      simd::prefetch_bytes(vh + slot * Dv, static_cast<std::size_t>(run * Dv) * sizeof(T));
      p0 += run;
      c -= run;
    }
  };
  // Two tiles ahead: on the (loaded, shared) development machine 0-8 tiles and
  // L1/L2 targets measured the same within noise; kept for quieter machines.
  constexpr index_t ahead = 2;
  auto run_range = [&](index_t a, index_t e) {
    prefetch_keys(a, std::min(e - a, ahead * tile));
    for (index_t p = a; p < e;) {
      const index_t c = std::min({tile, e - p, cache.contiguous_run(p)});
      const index_t f0 = std::max(p + ahead * tile, a + ahead * tile);
      if (f0 < e) prefetch_keys(f0, std::min(c, e - f0));
      run_tile(p, c);
      p += c;
    }
  };
  if (split == 0) run_range(0, pl.sink_end);
  const index_t span = pl.main_e - pl.main_b;
  run_range(pl.main_b + span * split / pl.splits, pl.main_b + span * (split + 1) / pl.splits);

  for (index_t r = 0; r < R; ++r) {
    float* orow = o_acc + r * Dv;
    if (l[r] > 0.f) {
      const float inv = 1.f / l[r];
      for (index_t e = 0; e < Dv; ++e) orow[e] *= inv;
      lse_out[r] = m[r] + std::log(l[r]);
    } else {
      std::fill(orow, orow + Dv, 0.f);
      lse_out[r] = ninf;
    }
  }
}

template <class OE>
inline void decode_store_row(const float* src, OE* dst, index_t n) {
  for (index_t e = 0; e < n; ++e) dst[e] = from_float<OE>(src[e]);
}

template <class QE, class T, class OE>
void attention_decode_run(const tensor_view<const QE, 4>& q, const kv_cache<T>& cache, const tensor_view<OE, 4>& o,
                          const tensor_view<float, 3>* lse, const attention_params& params, index_t split_override) {
  const decode_plan pl = decode_prepare(q, cache, o, lse, params, params.policy, split_override);
  if (pl.n == 0) return;
  const attention_visibility vis(decode_visibility_params(params), pl.n, pl.length);
  const index_t R = pl.rows, Dv = pl.dv, S = pl.splits;
  const index_t items = pl.batch * pl.kv_heads * S;
  // Partial results of every item live in the caller's arena (visible to all workers).
  const std::size_t part_o = scratch_frame::bytes_for<float>(static_cast<std::size_t>(items * R * Dv));
  const std::size_t part_l = scratch_frame::bytes_for<float>(static_cast<std::size_t>(items * R));
  scratch_frame frame(part_o + part_l + decode_item_bytes<T>(pl) + 2 * scratch_arena::alignment);
  float* po = frame.alloc<float>(static_cast<std::size_t>(items * R * Dv));
  float* pls = frame.alloc<float>(static_cast<std::size_t>(items * R));

  auto write_rows = [&](index_t b, index_t g, const float* orows, const float* lrows) {
    for (index_t r = 0; r < R; ++r) {
      const index_t hh = r / pl.n, i = r % pl.n, h = g * pl.group + hh;
      decode_store_row(orows + r * Dv, o.ptr(b, i, h), Dv);
      if (lse != nullptr) (*lse)(b, h, i) = lrows[r];
    }
  };

  parallel_for(params.policy, items, [&](index_t item, int) {
    const index_t split = item % S, bg = item / S, g = bg % pl.kv_heads, b = bg / pl.kv_heads;
    float* orows = po + item * R * Dv;
    float* lrows = pls + item * R;
    decode_item(xsimd::default_arch{}, pl, q, cache, params, vis, b, g, split, orows, lrows);
    if (S == 1) write_rows(b, g, orows, lrows);
  });
  if (S == 1) return;
  // Exact lse merge of the splits, always in split order.
  for (index_t bg = 0; bg < pl.batch * pl.kv_heads; ++bg) {
    float* o0 = po + bg * S * R * Dv;
    float* l0 = pls + bg * S * R;
    for (index_t sp = 1; sp < S; ++sp)
      for (index_t r = 0; r < R; ++r)
        l0[r] = merge_attention_row(o0 + r * Dv, l0[r], o0 + (sp * R + r) * Dv, l0[sp * R + r], o0 + r * Dv, Dv);
    write_rows(bg / pl.kv_heads, bg % pl.kv_heads, o0, l0);
  }
}

}  // namespace detail

// o = softmax(scale * q_new K^T + masks/biases) V over the cache, for the n new
// queries whose keys/values were just appended (apply RoPE to q at offset
// cache.length() - n, the same positions the keys got).
//   q_new: [batch, n, heads_q, head_dim]   (float, Eigen::half or Eigen::bfloat16)
//   o:     [batch, n, heads_q, v_head_dim] (float, Eigen::half or Eigen::bfloat16; must not alias q_new)
template <class Q, class T, class O>
void attention_decode(const Q& q_new, const kv_cache<T>& cache, O&& o, const attention_params& params = {}) {
  const auto qv = as_view(q_new);
  const auto ov = as_view(o);
  using QE = typename decltype(qv)::value_type;
  using OE = typename decltype(ov)::value_type;
  static_assert(is_storage_type<QE>::value && is_storage_type<OE>::value, "q_new and o hold float, half or bfloat16");
  detail::attention_decode_run<QE, T, OE>(tensor_view<const QE, 4>(qv), cache, tensor_view<OE, 4>(ov), nullptr,
                                          params, 0);
}

// Same, also writing lse = log sum_j exp(s_ij) (natural log, -inf for a row
// that sees no key). Argument order as flash_attention.   // lse: [batch, heads_q, n]
template <class Q, class T, class O, class L,
          class = std::enable_if_t<!std::is_same<std::decay_t<L>, attention_params>::value>>
void attention_decode(const Q& q_new, const kv_cache<T>& cache, O&& o, L&& lse, const attention_params& params = {}) {
  const auto qv = as_view(q_new);
  const auto ov = as_view(o);
  using QE = typename decltype(qv)::value_type;
  using OE = typename decltype(ov)::value_type;
  static_assert(is_storage_type<QE>::value && is_storage_type<OE>::value, "q_new and o hold float, half or bfloat16");
  const tensor_view<float, 3> lv = as_view(lse);
  detail::attention_decode_run<QE, T, OE>(tensor_view<const QE, 4>(qv), cache, tensor_view<OE, 4>(ov), &lv, params,
                                          0);
}

}  // namespace tokmix
