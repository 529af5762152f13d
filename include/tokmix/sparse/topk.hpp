#pragma once
// Top-k attention: each query attends exactly its k highest-scoring visible
// keys (all of them when fewer are visible), exact softmax over that set.
//
//   s_ij = scale q_i . k_j,   T(i) = the k largest s_ij over visible j (ties: lower j first),
//   o_i  = sum_{j in T(i)} softmax_j(c(s_ij)) v_j,   c = softcap * tanh(. / softcap) or identity
//
// Selection is on the raw scores (softcap is monotone, so it picks the same
// keys except where it would create ties). Visibility: causal (bottom-right
// or top-left) and the sliding window of attention_params semantics.
//
//   q: [B, Lq, Hq, D]  k: [B, Lk, Hkv, D]  v: [B, Lk, Hkv, Dv]  o: [B, Lq, Hq, Dv]
//   lse (optional): [B, Hq, Lq]
//   indices (optional): [B, Hq, Lq, top_k] int32, the selected keys in
//     increasing order, -1 after the last when fewer than top_k were visible
//
// Cost: top-k still scores every key, so it runs the flash tiles' S^T = K Q^T
// product once (half the FLOPs of dense attention) and never stores a full
// score row: per query and group of up to 16 keys it keeps the two largest
// scores and the argmax, bisects a score bound from the group maxima, and
// takes the k + few keys above it (see topk_query_block). The softmax and
// P V then touch k keys per query.
//
// Decode: the new queries (last n tokens) select among the cached keys
// (causal, window honoured), linear kv_cache.
//
// ref: Gupta et al., "Memory-efficient Transformers via Top-k Attention"
//      (SustaiNLP 2021); Wang et al., "Learning A Sparse Transformer Network
//      for Effective Image Deraining" (DRSformer, CVPR 2023), top-k sparse attention.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "tokmix/simd/arch.hpp"

#include "tokmix/attention/decode.hpp"
#include "tokmix/attention/detail/decode_kernels.hpp"
#include "tokmix/attention/detail/flash_kernel.hpp"
#include "tokmix/attention/flash_attention.hpp"
#include "tokmix/attention/kv_cache.hpp"
#include "tokmix/attention/mask.hpp"
#include "tokmix/attention/params.hpp"
#include "tokmix/core/error.hpp"
#include "tokmix/core/scratch.hpp"
#include "tokmix/core/tensor_view.hpp"
#include "tokmix/core/threading.hpp"
#include "tokmix/simd/convert.hpp"
#include "tokmix/simd/dot.hpp"
#include "tokmix/simd/exp.hpp"
#include "tokmix/simd/reduce.hpp"
#include "tokmix/simd/prefetch.hpp"
#include "tokmix/sparse/detail/common.hpp"
#include "tokmix/sparse/detail/decode_rows.hpp"

TOKMIX_SIMD_AVX512_WARNINGS_OFF

namespace tokmix {

struct topk_attention_params {
  index_t top_k = 64;  // >= 1
  // Multiplies q.k; NaN (the default) means 1/sqrt(head_dim).
  float scale = std::numeric_limits<float>::quiet_NaN();
  bool causal = false;
  causal_alignment alignment = causal_alignment::bottom_right;
  index_t window_left = -1;  // attention_params semantics, -1 = unbounded
  index_t window_right = -1;
  float softcap = 0.f;
  exec_policy policy;
};

namespace detail {
namespace sparse {

inline attention_params topk_visibility_params(const topk_attention_params& p) {
  attention_params a;
  a.causal = p.causal;
  a.alignment = p.alignment;
  a.window_left = p.window_left;
  a.window_right = p.window_right;
  return a;
}

inline void check_topk_params(const topk_attention_params& p) {
  require(p.top_k >= 1, "params.top_k", ">= 1", p.top_k);
  require(p.window_left >= -1, "params.window_left", ">= -1", p.window_left);
  require(p.window_right >= -1, "params.window_right", ">= -1", p.window_right);
  require(std::isnan(p.scale) || std::isfinite(p.scale), "params.scale", "a finite value or NaN (default)", p.scale);
  require(std::isfinite(p.softcap) && p.softcap >= 0.f, "params.softcap", "a finite value >= 0", p.softcap);
}

// The candidate buffer of one query: up to 2k (score, key) pairs and the
// score a new key must beat (the k-th best once the buffer was cut back).
struct topk_candidates {
  float* s;
  std::int32_t* j;
  index_t n;
};

// Keeps the k best of the n candidates (n >= k; ties: lower key first) in
// [0, k), preserving their order (candidates arrive in key order, so the kept
// ones stay sorted by key); returns the k-th best score t. t is found by
// keeping the n - k + 1 smallest scores in a small sorted array when few are
// dropped (the final cut, n = k plus a few: one pass, rare inserts), else by
// one nth_element on plain floats; then one stable compaction.
inline float topk_cut(float* s, std::int32_t* j, index_t n, index_t k, float* tmp) {
  const index_t m = n - k + 1;  // t is the m-th smallest
  float t;
  if (m <= 8) {
    float low[8];
    index_t have = 0;
    for (index_t a = 0; a < n; ++a) {
      const float x = s[a];
      if (have == m && !(x < low[m - 1])) continue;
      index_t pos = have < m ? have++ : m - 1;
      for (; pos > 0 && low[pos - 1] > x; --pos) low[pos] = low[pos - 1];
      low[pos] = x;
    }
    t = low[m - 1];
  } else {
    std::copy(s, s + n, tmp);
    std::nth_element(tmp, tmp + (n - k), tmp + n);
    t = tmp[n - k];
  }
  index_t above = 0;
  for (index_t a = 0; a < n; ++a) above += s[a] > t;
  index_t ties = k - above, w = 0;  // keys scoring exactly t that fit, lowest keys first
  for (index_t a = 0; a < n; ++a) {
    const bool keep = s[a] > t || (s[a] == t && ties > 0);
    if (s[a] == t && keep) --ties;
    s[w] = s[a];
    j[w] = j[a];
    w += keep;
  }
  return t;
}

// out[0:dv] = sum_t w[t] * row(j[t]) for f32 rows: every row is requested
// up front (the rows are scattered, so their cache misses overlap), then
// accumulated four vectors at a time in registers.
template <class Arch>
inline void topk_gather_sum(const float* w, const std::int32_t* j, index_t n, const float* vbase, index_t v_row,
                            index_t dv, float* out) {
  using F = xsimd::batch<float, Arch>;
  constexpr index_t L = F::size;
  for (index_t t = 0; t < n; ++t)
    simd::prefetch_bytes(vbase + static_cast<index_t>(j[t]) * v_row, static_cast<std::size_t>(dv) * sizeof(float));
  index_t c = 0;
  for (; c + 4 * L <= dv; c += 4 * L) {
    F a0(0.f), a1(0.f), a2(0.f), a3(0.f);
    for (index_t t = 0; t < n; ++t) {
      const float* r = vbase + static_cast<index_t>(j[t]) * v_row + c;
      const F wt(w[t]);
      a0 = xsimd::fma(wt, F::load_unaligned(r), a0);
      a1 = xsimd::fma(wt, F::load_unaligned(r + L), a1);
      a2 = xsimd::fma(wt, F::load_unaligned(r + 2 * L), a2);
      a3 = xsimd::fma(wt, F::load_unaligned(r + 3 * L), a3);
    }
    a0.store_unaligned(out + c);
    a1.store_unaligned(out + c + L);
    a2.store_unaligned(out + c + 2 * L);
    a3.store_unaligned(out + c + 3 * L);
  }
  for (; c + L <= dv; c += L) {
    F a(0.f);
    for (index_t t = 0; t < n; ++t) a = xsimd::fma(F(w[t]), F::load_unaligned(vbase + static_cast<index_t>(j[t]) * v_row + c), a);
    a.store_unaligned(out + c);
  }
  for (; c < dv; ++c) {
    float a = 0.f;
    for (index_t t = 0; t < n; ++t) a += w[t] * vbase[static_cast<index_t>(j[t]) * v_row + c];
    out[c] = a;
  }
}

// The softmax over one query's selected keys (in key order) and its P V.
template <class Arch, class TV>
void topk_finish(float* s, std::int32_t* j, index_t n, float softcap, const TV* vbase, index_t v_row, index_t dv,
                 float* vrow, float* out, float* lse_out, std::int32_t* idx_out, index_t top_k, index_t idx_stride) {
  std::fill(out, out + dv, 0.f);
  if (n == 0) {
    *lse_out = -std::numeric_limits<float>::infinity();
  } else {
    if (softcap > 0.f)
      for (index_t t = 0; t < n; ++t) s[t] = softcap * std::tanh(s[t] / softcap);
    const float mx = simd::detail::reduce_max_kernel(Arch{}, s, n);
    for (index_t t = 0; t < n; ++t) s[t] -= mx;
    simd::detail::exp_kernel(Arch{}, s, s, n);  // s now holds the weights
    const float l = simd::detail::reduce_sum_kernel(Arch{}, s, n);
    if constexpr (std::is_same<TV, float>::value) {
      topk_gather_sum<Arch>(s, j, n, vbase, v_row, dv, out);
    } else {
      for (index_t t = 0; t < n; ++t) {
        simd::convert(vbase + static_cast<index_t>(j[t]) * v_row, vrow, dv);
        simd::axpy(s[t], vrow, out, dv);
      }
    }
    simd::scale(1.f / l, out, dv);
    *lse_out = mx + std::log(l);
  }
  if (idx_out != nullptr)
    for (index_t t = 0; t < top_k; ++t) idx_out[t * idx_stride] = t < n ? j[t] : -1;
}

// Keys per group of the bound (see topk_query_block): about 8k groups per
// row span (a tight bound, cheap to bisect), at most topk_max_group keys each.
constexpr index_t topk_max_group = 16;
inline index_t topk_group(index_t span, index_t k) {
  return std::max<index_t>(1, std::min<index_t>(topk_max_group, span / (8 * k)));
}

template <class Arch>
inline std::size_t topk_block_bytes(index_t d, index_t dv, index_t K, index_t span, bool pack_k, bool widen_k) {
  using F = flash::fb<Arch>;
  constexpr index_t NR = 2 * F::size;
  const index_t brp = (flash::block_q + NR - 1) / NR * NR;
  const index_t G = topk_group(span, K);
  const index_t groups = (span + G - 1) / G;
  std::size_t n = scratch_frame::bytes_for<float>(d * brp) + scratch_frame::bytes_for<float>(flash::block_k * NR) +
                  4 * scratch_frame::bytes_for<float>(brp) + scratch_frame::bytes_for<index_t>(brp) +
                  scratch_frame::bytes_for<float>(brp * 2 * K) + scratch_frame::bytes_for<std::int32_t>(brp * 2 * K) +
                  scratch_frame::bytes_for<float>(2 * K) + 2 * scratch_frame::bytes_for<float>(dv) +
                  3 * scratch_frame::bytes_for<float>(groups * brp) + scratch_frame::bytes_for<float>(NR) +
                  scratch_frame::bytes_for<float>(topk_max_group * NR) + scratch_frame::bytes_for<index_t>(brp / NR) +
                  21 * scratch_arena::alignment;
  if (pack_k) n += scratch_frame::bytes_for<float>(flash::block_k * d);
  if (widen_k) n += scratch_frame::bytes_for<float>(topk_max_group * d);
  return n;
}

// Bit c set iff lane c of m is true: select powers of two and add them (exact
// in fp32 for up to 24 lanes), since xsimd 8.1 has no batch_bool to bitmask.
template <class Arch>
inline unsigned topk_lane_bits(const xsimd::batch_bool<float, Arch>& m, const float* pow2) {
  using F = flash::fb<Arch>;
  return static_cast<unsigned>(xsimd::hadd(xsimd::select(m, F::load_aligned(pow2), F(0.f))));
}

// Query rows [q0, q1) of head h, in one pass over the S^T = K Q^T tiles.
//  1. Per query and group of G consecutive keys: the largest score m1, its
//     key a1 and the second largest score m2 (masked keys -inf).
//  2. Per query, by a SIMD bisection over the m1: a score t with at least k
//     groups whose m1 >= t. Then at least k keys score >= t, so every top-k
//     key does, and only groups with m1 >= t can hold one.
//  3. Such a group holds exactly one key >= t (a1, score m1) unless m2 >= t
//     too. Those few groups (about k/16 per query for unstructured scores,
//     more with ties) are rescored with the same micro-kernel, so their
//     scores are bit-identical to the pass's.
// The candidates (typically k plus a few, in key order) then go through the
// 2k buffer and its cuts. Rows with fewer than k non-empty groups take every
// visible key of every group as a candidate.
template <class Arch, class TQ, class TK, class TV>
void topk_query_block(const flash::flash_problem<TQ, TK, TV>& pr, const flash::flash_shape& sh,
                      const topk_attention_params& p, const attention_visibility& vis, index_t h, index_t q0, index_t q1,
                      std::int32_t* idx, index_t idx_head, index_t idx_row) {
  using F = flash::fb<Arch>;
  constexpr index_t W = F::size;
  constexpr index_t NR = 2 * W;
  constexpr bool widen_k = !std::is_same<TK, float>::value;
  const float ninf = -std::numeric_limits<float>::infinity(), pinf = std::numeric_limits<float>::infinity();
  const index_t d = sh.d, dv = sh.dv, K = p.top_k, cap = 2 * K;
  const index_t nq = q1 - q0, brp = (nq + NR - 1) / NR * NR, panels = brp / NR;
  const index_t hk = h / (sh.heads_q / sh.heads_kv);
  const auto span = vis.key_span(q0, q1);
  const index_t G = topk_group(span.second - span.first, K);
  const index_t groups = (span.second - span.first + G - 1) / G;

  // fp32 K rows are packed when their stride aliases in L1 (as in flash_query_block).
  const bool pack_k = widen_k || flash::l1_aliasing_stride<TK>(pr.k_row);
  scratch_frame frame(topk_block_bytes<Arch>(d, dv, K, span.second - span.first, pack_k, widen_k));
  float* qp = frame.alloc<float>(d * brp);               // [panel][d][NR]: Q^T, pre-scaled
  float* sp = frame.alloc<float>(flash::block_k * NR);   // [key][NR]: one S^T panel
  float* bound = frame.alloc<float>(brp);                // t per query (-inf: none, +inf: padding)
  float* thr = frame.alloc<float>(brp);                  // a candidate must score > thr
  float* lo = frame.alloc<float>(brp);                   // row bounds, as floats for SIMD compares
  float* hi = frame.alloc<float>(brp);
  index_t* cnt = frame.alloc<index_t>(brp);
  float* cs = frame.alloc<float>(brp * cap);             // candidate buffers [query][2k]
  std::int32_t* cj = frame.alloc<std::int32_t>(brp * cap);
  float* tmp_s = frame.alloc<float>(cap);
  float* vrow = frame.alloc<float>(dv);
  float* orow = frame.alloc<float>(dv);
  float* g1 = frame.alloc<float>(groups * brp);  // [panel][group][NR]: m1
  float* g2 = frame.alloc<float>(groups * brp);  // m2
  float* ga = frame.alloc<float>(groups * brp);  // a1 (a key index, exact in fp32 below 2^24)
  float* pow2 = frame.alloc<float>(NR);
  float* rs = frame.alloc<float>(topk_max_group * NR);  // [key][NR]: a rescored group
  float* kbuf = pack_k ? frame.alloc<float>(flash::block_k * d) : nullptr;
  float* kgrp = widen_k ? frame.alloc<float>(topk_max_group * d) : nullptr;
  for (index_t c = 0; c < NR; ++c) pow2[c] = static_cast<float>(1u << (c % W));

  std::fill(qp, qp + d * brp, 0.f);
  for (index_t c = 0; c < nq; ++c) {
    const TQ* qrow = pr.q + (q0 + c) * pr.q_row + h * pr.q_head;
    float* dst = qp + (c / NR) * d * NR + (c % NR);
    for (index_t e = 0; e < d; ++e) dst[e * NR] = to_float(qrow[e]) * sh.scale;
  }
  for (index_t c = 0; c < brp; ++c) {
    cnt[c] = 0;
    if (c < nq) {
      const attention_row_bounds rb = vis.row(q0 + c);
      lo[c] = static_cast<float>(rb.lo);
      hi[c] = static_cast<float>(rb.hi);
    } else {
      lo[c] = 0.f;
      hi[c] = -1.f;  // padding columns see no key
    }
  }
  // Group statistics start empty; each panel visits its groups in increasing
  // order, so a group is initialised on first touch (and skipped ones
  // filled) instead of clearing 3 x groups x 128 floats up front.
  index_t* fresh = frame.alloc<index_t>(panels);  // per panel: groups [0, fresh) are initialised
  std::fill(fresh, fresh + panels, index_t(0));
  auto clear_groups = [&](index_t pn, index_t g_end) {
    for (index_t g = fresh[pn]; g < g_end; ++g) {
      const index_t at = (pn * groups + g) * NR;
      std::fill(g1 + at, g1 + at + NR, ninf);
      std::fill(g2 + at, g2 + at + NR, ninf);
      std::fill(ga + at, ga + at + NR, -1.f);
    }
    fresh[pn] = std::max(fresh[pn], g_end);
  };

  const bool structured = vis.structured();
  const TK* kbase = pr.k + hk * pr.k_head;

  // 1. Group statistics over every visible panel x key range.
  for (index_t k0 = span.first; k0 < span.second; k0 += flash::block_k) {
    const index_t k1 = std::min(k0 + flash::block_k, span.second), kt = k1 - k0;
    const tile_visibility tv = structured ? vis.classify(q0, q1, k0, k1) : tile_visibility::full;
    if (tv == tile_visibility::hidden) continue;
    const float* kt_ptr = nullptr;
    index_t ldk = d;
    if (pack_k) {
      for (index_t r = 0; r < kt; ++r) flash::widen(kbase + (k0 + r) * pr.k_row, kbuf + r * d, d);
      kt_ptr = kbuf;
    } else if constexpr (!widen_k) {
      kt_ptr = kbase + k0 * pr.k_row;
      ldk = pr.k_row;
    }
    for (index_t pn = 0; pn < panels; ++pn) {
      const index_t c0 = pn * NR;
      index_t pk0 = k0, pk1 = k1;
      tile_visibility ptv = tv;
      if (tv == tile_visibility::partial) {
        const index_t i0 = q0 + c0, i1 = std::min(q1, i0 + NR);
        const auto ps = vis.key_span(i0, i1);
        pk0 = std::max(k0, ps.first);
        pk1 = std::min(k1, ps.second);
        if (pk0 >= pk1) continue;
        ptv = vis.classify(i0, i1, pk0, pk1);
        if (ptv == tile_visibility::hidden) continue;
      }
      const index_t pkt = pk1 - pk0;
      const bool masked = ptv == tile_visibility::partial;
      flash::panel_product<false, false, Arch>(pkt, d, kt_ptr + (pk0 - k0) * ldk, ldk, qp + pn * d * NR, sp, nullptr);
      const F lo0 = F::load_aligned(lo + c0), lo1 = F::load_aligned(lo + c0 + W);
      const F hi0 = F::load_aligned(hi + c0), hi1 = F::load_aligned(hi + c0 + W);
      for (index_t r = 0; r < pkt;) {
        const index_t j0 = pk0 + r, g = (j0 - span.first) / G;
        const index_t r_end = std::min(pkt, r + (span.first + (g + 1) * G - j0));
        const index_t at = (pn * groups + g) * NR;
        clear_groups(pn, g + 1);
        F m10 = F::load_aligned(g1 + at), m11 = F::load_aligned(g1 + at + W);
        F m20 = F::load_aligned(g2 + at), m21 = F::load_aligned(g2 + at + W);
        F a0 = F::load_aligned(ga + at), a1 = F::load_aligned(ga + at + W);
        for (; r < r_end; ++r) {
          F s0 = F::load_aligned(sp + r * NR), s1 = F::load_aligned(sp + r * NR + W);
          const F jf(static_cast<float>(pk0 + r));
          if (masked) {
            s0 = xsimd::select((jf >= lo0) && (jf <= hi0), s0, F(ninf));
            s1 = xsimd::select((jf >= lo1) && (jf <= hi1), s1, F(ninf));
          }
          const auto b0 = s0 > m10, b1 = s1 > m11;
          m20 = xsimd::max(m20, xsimd::min(s0, m10));
          m21 = xsimd::max(m21, xsimd::min(s1, m11));
          m10 = xsimd::select(b0, s0, m10);
          m11 = xsimd::select(b1, s1, m11);
          a0 = xsimd::select(b0, jf, a0);
          a1 = xsimd::select(b1, jf, a1);
        }
        m10.store_aligned(g1 + at);
        m11.store_aligned(g1 + at + W);
        m20.store_aligned(g2 + at);
        m21.store_aligned(g2 + at + W);
        a0.store_aligned(ga + at);
        a1.store_aligned(ga + at + W);
      }
    }
  }

  for (index_t pn = 0; pn < panels; ++pn) clear_groups(pn, groups);

  // 2. The bound: per lane, bisect t in [min, max] of the finite m1, keeping
  // count(m1 >= t) >= k at the lower end.
  for (index_t c = 0; c < brp; c += W) {
    const index_t pn = c / NR, off = c % NR;
    const float* gm = g1 + pn * groups * NR + off;
    F mn(pinf), mx(ninf), finite(0.f);
    for (index_t g = 0; g < groups; ++g) {
      const F x = F::load_aligned(gm + g * NR);
      const auto f = x > F(ninf);
      mn = xsimd::select(f, xsimd::min(mn, x), mn);
      mx = xsimd::max(mx, x);
      finite += xsimd::select(f, F(1.f), F(0.f));
    }
    const F kf(static_cast<float>(K));
    F tlo = mn, thi = mx;
    for (int it = 0; it < 16; ++it) {
      const F mid = tlo * F(0.5f) + thi * F(0.5f);  // no overflow near FLT_MAX
      // Four partial counts: the adds would otherwise form one latency-bound chain.
      F n0(0.f), n1(0.f), n2(0.f), n3(0.f);
      const F one(1.f), zero(0.f);
      index_t g = 0;
      for (; g + 4 <= groups; g += 4) {
        n0 += xsimd::select(F::load_aligned(gm + g * NR) >= mid, one, zero);
        n1 += xsimd::select(F::load_aligned(gm + (g + 1) * NR) >= mid, one, zero);
        n2 += xsimd::select(F::load_aligned(gm + (g + 2) * NR) >= mid, one, zero);
        n3 += xsimd::select(F::load_aligned(gm + (g + 3) * NR) >= mid, one, zero);
      }
      for (; g < groups; ++g) n0 += xsimd::select(F::load_aligned(gm + g * NR) >= mid, one, zero);
      const auto ok = (n0 + n1) + (n2 + n3) >= kf;
      tlo = xsimd::select(ok, mid, tlo);
      thi = xsimd::select(ok, thi, mid);
    }
    alignas(64) float t[W], fin[W];
    tlo.store_aligned(t);
    finite.store_aligned(fin);
    for (index_t l = 0; l < W; ++l) {
      const index_t col = c + l;
      if (col >= nq) {
        bound[col] = thr[col] = pinf;
      } else if (fin[l] < static_cast<float>(K)) {
        bound[col] = thr[col] = ninf;
      } else {
        bound[col] = t[l];
        thr[col] = std::nextafter(t[l], ninf);  // "> thr" is ">= t"
      }
    }
  }

  // 3. Candidates, group by group (so in key order per query).
  auto insert = [&](index_t c, float sc, index_t j) {
    if (!(sc > thr[c])) return;  // thr rises with every cut
    float* bs = cs + c * cap;
    std::int32_t* bj = cj + c * cap;
    bs[cnt[c]] = sc;
    bj[cnt[c]] = static_cast<std::int32_t>(j);
    if (++cnt[c] == cap) {
      thr[c] = topk_cut(bs, bj, cap, K, tmp_s);
      cnt[c] = K;
    }
  };
  for (index_t pn = 0; pn < panels; ++pn) {
    const index_t c0 = pn * NR;
    const F t0 = F::load_aligned(bound + c0), t1 = F::load_aligned(bound + c0 + W);
    for (index_t g = 0; g < groups; ++g) {
      const index_t at = (pn * groups + g) * NR;
      const F x0 = F::load_aligned(g1 + at), x1 = F::load_aligned(g1 + at + W);
      const auto e0 = (x0 >= t0) && (x0 > F(ninf));
      const auto e1 = (x1 >= t1) && (x1 > F(ninf));
      const bool any0 = xsimd::any(e0), any1 = xsimd::any(e1);
      if (!(any0 || any1)) continue;
      unsigned bits = (any0 ? topk_lane_bits<Arch>(e0, pow2) : 0u) | (any1 ? topk_lane_bits<Arch>(e1, pow2 + W) << W : 0u);
      const index_t jb = span.first + g * G, je = std::min(span.second, jb + G);
      bool rescored = false;
      for (; bits != 0; bits &= bits - 1) {
        const index_t c = static_cast<index_t>(__builtin_ctz(bits)), col = c0 + c;
        if (!(g2[at + c] >= bound[col])) {
          insert(col, g1[at + c], static_cast<index_t>(ga[at + c]));
          continue;
        }
        if (!rescored) {
          const float* kp;
          index_t ld;
          if constexpr (widen_k) {
            for (index_t j = jb; j < je; ++j) flash::widen(kbase + j * pr.k_row, kgrp + (j - jb) * d, d);
            kp = kgrp;
            ld = d;
          } else {
            kp = kbase + jb * pr.k_row;
            ld = pr.k_row;
          }
          flash::panel_product<false, false, Arch>(je - jb, d, kp, ld, qp + pn * d * NR, rs, nullptr);
          rescored = true;
        }
        for (index_t j = jb; j < je; ++j) {
          const float jf = static_cast<float>(j);
          if (jf >= lo[col] && jf <= hi[col]) insert(col, rs[(j - jb) * NR + c], j);
        }
      }
    }
  }

  const TV* vbase = pr.v + hk * pr.v_head;
  for (index_t c = 0; c < nq; ++c) {
    float* bs = cs + c * cap;
    std::int32_t* bj = cj + c * cap;
    index_t n = cnt[c];
    if (n > K) {
      topk_cut(bs, bj, n, K, tmp_s);
      n = K;
    }
    const index_t i = q0 + c;
    float lse_v;
    topk_finish<Arch>(bs, bj, n, p.softcap, vbase, pr.v_row, dv, vrow, orow, &lse_v,
                      idx != nullptr ? idx + h * idx_head + i * idx_row : nullptr, K, 1);
    std::copy(orow, orow + dv, pr.o + i * pr.o_row + h * pr.o_head);
    if (pr.lse != nullptr) pr.lse[h * pr.lse_head + i * pr.lse_row] = lse_v;
  }
}

template <class Arch, class TQ, class TK, class TV>
void topk_kernel(Arch, const tensor_view<const TQ, 4>& q, const tensor_view<const TK, 4>& k,
                 const tensor_view<const TV, 4>& v, const tensor_view<float, 4>& o, const tensor_view<float, 3>& lse,
                 const tensor_view<std::int32_t, 4>& indices, const topk_attention_params& p) {
  const index_t B = q.dim(0), Lq = q.dim(1), Hq = q.dim(2), Lk = k.dim(1);
  if (B == 0 || Lq == 0) return;
  const float scale = std::isnan(p.scale) ? 1.f / std::sqrt(static_cast<float>(q.dim(3))) : p.scale;
  const flash::flash_shape sh{Hq, k.dim(2), q.dim(3), v.dim(3), scale};
  const attention_visibility vis(topk_visibility_params(p), Lq, Lk);
  const index_t nb = (Lq + flash::block_q - 1) / flash::block_q;
  const bool has_idx = indices.data() != nullptr;
  parallel_for(p.policy, B * nb * Hq, [&](index_t item, int) {
    const index_t b = item / (nb * Hq), blk = nb - 1 - (item / Hq) % nb, h = item % Hq;
    const auto pr = batch_problem(q, k, v, o, lse, b);
    topk_query_block<Arch>(pr, sh, p, vis, h, blk * flash::block_q, std::min(Lq, (blk + 1) * flash::block_q),
                           has_idx ? indices.ptr(b) : nullptr, has_idx ? indices.stride(1) : 0,
                           has_idx ? indices.stride(2) : 0);
  });
}

template <class Arch, class QE, class T, class OE>
void topk_decode_run(Arch, const tensor_view<const QE, 4>& q, const kv_cache<T>& cache, const tensor_view<OE, 4>& o,
                     const tensor_view<float, 3>* lse, const topk_attention_params& p) {
  attention_params ap = topk_visibility_params(p);
  ap.scale = p.scale;
  ap.softcap = p.softcap;
  check_sparse_decode("topk_attention_decode", q, cache, o, lse, ap);
  check_topk_params(p);
  const index_t B = cache.batch(), n = q.dim(1), Hq = q.dim(2), Hkv = cache.kv_heads(), group = Hq / Hkv;
  const index_t D = cache.head_dim(), Dv = cache.v_head_dim(), len = cache.length(), K = p.top_k, cap = 2 * K;
  if (n == 0) return;
  const float scale = std::isnan(p.scale) ? 1.f / std::sqrt(static_cast<float>(D)) : p.scale;
  const attention_visibility vis(decode_visibility_params(ap), n, len);
  const index_t R = group, tile = decode_rows_tile(D, Dv);
  // Items: (batch, kv head, new token): the group's heads score each K row once.
  parallel_for(p.policy, B * Hkv * n, [&](index_t item, int) {
    const index_t i = item % n, g = (item / n) % Hkv, b = item / (n * Hkv);
    scratch_frame frame(scratch_frame::bytes_for<float>(R * D) + scratch_frame::bytes_for<float>(R * tile) +
                        scratch_frame::bytes_for<float>(R * cap) + scratch_frame::bytes_for<std::int32_t>(R * cap) +
                        3 * scratch_frame::bytes_for<std::int32_t>(cap) + 2 * scratch_frame::bytes_for<float>(Dv) +
                        scratch_frame::bytes_for<float>(R) + scratch_frame::bytes_for<index_t>(R) +
                        12 * scratch_arena::alignment);
    float* qs = frame.alloc<float>(R * D);
    float* s = frame.alloc<float>(R * tile);
    float* cs = frame.alloc<float>(R * cap);
    std::int32_t* cj = frame.alloc<std::int32_t>(R * cap);
    float* tmp_s = frame.alloc<float>(cap);
    float* vrow = frame.alloc<float>(Dv);
    float* orow = frame.alloc<float>(Dv);
    float* thr = frame.alloc<float>(R);
    index_t* cnt = frame.alloc<index_t>(R);
    for (index_t r = 0; r < R; ++r) {
      const QE* src = q.ptr(b, i, g * group + r);
      for (index_t e = 0; e < D; ++e) qs[r * D + e] = scale * to_float(src[e]);
      thr[r] = -std::numeric_limits<float>::infinity();
      cnt[r] = 0;
    }
    const T* kh = cache.k_head(b, g);
    const attention_row_bounds rb = vis.row(i);
    flash::flash_key_range iv[2];
    const index_t niv = row_intervals(rb, iv);
    for (index_t t = 0; t < niv; ++t)
      for (index_t p0 = iv[t].begin; p0 < iv[t].end; p0 += tile) {
        const index_t c = std::min(tile, iv[t].end - p0);
        decode_scores(Arch{}, qs, D, R, kh + p0 * D, D, c, D, s, tile);
        for (index_t r = 0; r < R; ++r) {
          const float* sr = s + r * tile;
          for (index_t jj = 0; jj < c; ++jj) {
            if (!(sr[jj] > thr[r])) continue;
            cs[r * cap + cnt[r]] = sr[jj];
            cj[r * cap + cnt[r]] = static_cast<std::int32_t>(p0 + jj);
            if (++cnt[r] == cap) {
              thr[r] = topk_cut(cs + r * cap, cj + r * cap, cap, K, tmp_s);
              cnt[r] = K;
            }
          }
        }
      }
    for (index_t r = 0; r < R; ++r) {
      index_t m = cnt[r];
      if (m > K) {
        topk_cut(cs + r * cap, cj + r * cap, m, K, tmp_s);
        m = K;
      }
      float l;
      topk_finish<Arch>(cs + r * cap, cj + r * cap, m, p.softcap, cache.v_head(b, g), Dv, Dv, vrow, orow, &l, nullptr, K, 1);
      const index_t h = g * group + r;
      OE* dst = o.ptr(b, i, h);
      for (index_t e = 0; e < Dv; ++e) dst[e] = from_float<OE>(orow[e]);
      if (lse != nullptr) (*lse)(b, h, i) = l;
    }
  });
}

}  // namespace sparse
}  // namespace detail

// Top-k attention prefill (see the top of this file).
//   q: [B, Lq, Hq, D]  k: [B, Lk, Hkv, D]  v: [B, Lk, Hkv, Dv]  o: [B, Lq, Hq, Dv]
//   lse: [B, Hq, Lq] or empty   indices: [B, Hq, Lq, top_k] int32 or empty
template <class Q, class K, class V, class O>
void topk_attention(const Q& q_, const K& k_, const V& v_, O&& o_, tensor_view<float, 3> lse,
                    tensor_view<std::int32_t, 4> indices, const topk_attention_params& p = {}) {
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
  detail::sparse::check_topk_params(p);
  if (indices.data() != nullptr) {
    require_layout("indices", indices);
    require_shape("indices", indices, {q.dim(0), q.dim(2), q.dim(1), p.top_k});
  }
  detail::sparse::topk_kernel(xsimd::default_arch{}, q, k, v, o, lse, indices, p);
}

template <class Q, class K, class V, class O>
void topk_attention(const Q& q, const K& k, const V& v, O&& o, const topk_attention_params& p = {}) {
  topk_attention(q, k, v, std::forward<O>(o), tensor_view<float, 3>(), tensor_view<std::int32_t, 4>(), p);
}

template <class Q, class K, class V, class O>
void topk_attention(const Q& q, const K& k, const V& v, O&& o, tensor_view<float, 3> lse,
                    const topk_attention_params& p = {}) {
  topk_attention(q, k, v, std::forward<O>(o), lse, tensor_view<std::int32_t, 4>(), p);
}

// Decode against a linear kv_cache (append the new keys first).
//   q_new: [B, n, Hq, D]   o: [B, n, Hq, Dv]   lse (optional): [B, Hq, n]
template <class Q, class T, class O>
void topk_attention_decode(const Q& q_new, const kv_cache<T>& cache, O&& o, const topk_attention_params& p = {}) {
  const auto qv = as_view(q_new);
  const auto ov = as_view(o);
  using QE = typename decltype(qv)::value_type;
  using OE = typename decltype(ov)::value_type;
  static_assert(is_storage_type<QE>::value && is_storage_type<OE>::value, "q_new and o hold float, half or bfloat16");
  detail::sparse::topk_decode_run(xsimd::default_arch{}, tensor_view<const QE, 4>(qv), cache, tensor_view<OE, 4>(ov),
                                  nullptr, p);
}

template <class Q, class T, class O, class L,
          class = std::enable_if_t<!std::is_same<std::decay_t<L>, topk_attention_params>::value>>
void topk_attention_decode(const Q& q_new, const kv_cache<T>& cache, O&& o, L&& lse,
                           const topk_attention_params& p = {}) {
  const auto qv = as_view(q_new);
  const auto ov = as_view(o);
  using QE = typename decltype(qv)::value_type;
  using OE = typename decltype(ov)::value_type;
  static_assert(is_storage_type<QE>::value && is_storage_type<OE>::value, "q_new and o hold float, half or bfloat16");
  const tensor_view<float, 3> lv = as_view(lse);
  detail::sparse::topk_decode_run(xsimd::default_arch{}, tensor_view<const QE, 4>(qv), cache, tensor_view<OE, 4>(ov),
                                  &lv, p);
}

}  // namespace tokmix
TOKMIX_SIMD_AVX512_WARNINGS_ON
