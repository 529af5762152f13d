#pragma once
// Dilated sliding-window and neighbourhood attention, with optional global
// tokens: exact softmax over the keys at multiples of the dilation around
// each query, plus the global positions.
//
// Query i sits at position p = i + (Lk - Lq) (bottom-right, the default) or
// p = i (top-left). With dilation d, window (left, right):
//   sliding (Longformer's dilated window; DiNAT):
//     j visible iff j = p + d t for an integer t in [-left, right]  (-1 = unbounded side),
//   clamped (neighbourhood attention, Hassani et al.): the window of exactly
//     left + right + 1 keys of p's residue class, shifted inward at the
//     sequence ends so every query keeps the full window (when the class has that many keys),
//   causal (sliding only): j <= p as well.
// Global positions G (sorted, distinct, in [0, Lk)): every query also sees the
// keys in G (j <= p when causal), and a query whose position is in G sees
// every key (j <= p when causal). Rows that see nothing give o = 0, lse = -inf.
//
//   q: [B, Lq, Hq, D]  k: [B, Lk, Hkv, D]  v: [B, Lk, Hkv, Dv]  o: [B, Lq, Hq, Dv]  lse: [B, Hq, Lq] or empty
//
// Cost: the residue class of dilation d is itself a (clamped) sliding window
// problem on rows p = r + d a, so the window runs on the flash attention tiles
// over strided views (no gather): O(L * window * D) instead of the O(L * d *
// window * D) a masked band would cost. Global keys outside a row's window
// are a second exact partial merged by log-sum-exp; global query rows run as
// dense rows.
//
// Decode (causal, sliding): the new query at position p sees p - d t for
// t in [0, left] (the whole residue class when left = -1), the global keys
// and, if p is global, everything; linear kv_cache.
//
// ref: Beltagy et al., "Longformer" (2020), dilated sliding window + global
//      attention; Hassani et al., "Neighborhood Attention Transformer" (CVPR
//      2023) and Hassani & Shi, "Dilated Neighborhood Attention Transformer"
//      (2022) for the clamped window and its dilation.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "tokmix/simd/arch.hpp"

#include "tokmix/attention/detail/flash_kernel.hpp"
#include "tokmix/attention/flash_attention.hpp"
#include "tokmix/attention/kv_cache.hpp"
#include "tokmix/attention/merge.hpp"
#include "tokmix/attention/params.hpp"
#include "tokmix/core/error.hpp"
#include "tokmix/core/scratch.hpp"
#include "tokmix/core/tensor_view.hpp"
#include "tokmix/core/threading.hpp"
#include "tokmix/simd/convert.hpp"
#include "tokmix/simd/dot.hpp"
#include "tokmix/sparse/detail/common.hpp"
#include "tokmix/sparse/detail/decode_rows.hpp"

namespace tokmix {

enum class dilated_window {
  sliding,  // truncated at the sequence ends (Longformer)
  clamped,  // shifted inward to keep left + right + 1 keys (neighbourhood attention)
};

struct dilated_attention_params {
  // Multiplies q.k; NaN (the default) means 1/sqrt(head_dim).
  float scale = std::numeric_limits<float>::quiet_NaN();
  index_t dilation = 1;     // >= 1
  index_t window_left = -1;   // steps of `dilation` back, -1 = unbounded (sliding only)
  index_t window_right = -1;  // steps ahead, -1 = unbounded (sliding only)
  dilated_window mode = dilated_window::sliding;
  bool causal = false;      // sliding only
  causal_alignment alignment = causal_alignment::bottom_right;
  // Global positions (key coordinates), sorted and distinct.        // [n_global]
  tensor_view<const std::int32_t, 1> global_positions;
  float softcap = 0.f;      // > 0: s <- softcap * tanh(s / softcap)
  exec_policy policy;
};

namespace detail {
namespace sparse {

inline void check_dilated_params(const dilated_attention_params& p, index_t seq_k) {
  require(p.dilation >= 1, "params.dilation", ">= 1", p.dilation);
  require(p.window_left >= -1, "params.window_left", ">= -1", p.window_left);
  require(p.window_right >= -1, "params.window_right", ">= -1", p.window_right);
  require(std::isnan(p.scale) || std::isfinite(p.scale), "params.scale", "a finite value or NaN (default)", p.scale);
  require(std::isfinite(p.softcap) && p.softcap >= 0.f, "params.softcap", "a finite value >= 0", p.softcap);
  if (p.mode == dilated_window::clamped) {
    require(p.window_left >= 0 && p.window_right >= 0, "params.window_left / window_right",
            "bounded (>= 0) sides for a clamped neighbourhood",
            std::to_string(p.window_left) + " / " + std::to_string(p.window_right));
    require(!p.causal, "params.causal", "false for a clamped neighbourhood (use the sliding mode)", "true");
  }
  const auto& g = p.global_positions;
  if (g.data() != nullptr) {
    require_layout("params.global_positions", g);
    for (index_t t = 0; t < g.dim(0); ++t) {
      require(g(t) >= 0 && g(t) < seq_k, "params.global_positions", "positions in [0, " + std::to_string(seq_k) + ")",
              std::to_string(g(t)) + " at index " + std::to_string(t));
      if (t > 0)
        require(g(t) > g(t - 1), "params.global_positions", "strictly increasing positions",
                std::to_string(g(t)) + " after " + std::to_string(g(t - 1)));
    }
  }
}

// The window of class index a in a residue class of nk keys: [lo, hi] (empty when lo > hi).
inline std::pair<index_t, index_t> dilated_class_window(const dilated_attention_params& p, index_t a, index_t nk) {
  if (p.mode == dilated_window::clamped) {
    const index_t K = p.window_left + p.window_right + 1;
    const index_t start = std::max<index_t>(0, std::min(a - p.window_left, nk - K));
    return {start, std::min(nk - 1, start + K - 1)};
  }
  index_t lo = p.window_left < 0 ? 0 : std::max<index_t>(0, a - p.window_left);
  index_t hi = p.window_right < 0 ? nk - 1 : std::min(nk - 1, a + p.window_right);
  if (p.causal) hi = std::min(hi, a);
  return {lo, hi};
}

// Whether key j is in the dilated window of the query at position pos (positions in key coordinates).
inline bool dilated_in_window(const dilated_attention_params& p, index_t pos, index_t j, index_t lk) {
  const index_t d = p.dilation;
  const index_t r = ((pos % d) + d) % d;
  if (((j % d) + d) % d != r) return false;
  const index_t nk = lk > r ? (lk - r + d - 1) / d : 0;
  const index_t a = floor_div(pos - r, d), b = (j - r) / d;
  const auto w = dilated_class_window(p, a, nk);
  return b >= w.first && b <= w.second;
}

inline bool is_global(const tensor_view<const std::int32_t, 1>& g, index_t pos) {
  if (g.data() == nullptr) return false;
  index_t lo = 0, hi = g.dim(0);
  while (lo < hi) {
    const index_t mid = (lo + hi) / 2;
    if (g(mid) < pos) lo = mid + 1;
    else hi = mid;
  }
  return lo < g.dim(0) && g(lo) == pos;
}

template <class T>
inline void to_f32(const T* src, float* dst, index_t n) {
  if constexpr (std::is_same<T, float>::value) std::copy(src, src + n, dst);
  else simd::convert(src, dst, n);
}

template <class Arch, class TQ, class TK, class TV>
void dilated_kernel(Arch, const tensor_view<const TQ, 4>& q, const tensor_view<const TK, 4>& k,
                    const tensor_view<const TV, 4>& v, const tensor_view<float, 4>& o, const tensor_view<float, 3>& lse,
                    const dilated_attention_params& p) {
  const index_t B = q.dim(0), Lq = q.dim(1), Hq = q.dim(2), D = q.dim(3), Lk = k.dim(1), Hkv = k.dim(2),
                Dv = v.dim(3);
  if (B == 0 || Lq == 0) return;
  const index_t dil = p.dilation, group = Hq / Hkv;
  const index_t off = p.alignment == causal_alignment::bottom_right ? Lk - Lq : 0;
  const float scale = std::isnan(p.scale) ? 1.f / std::sqrt(static_cast<float>(D)) : p.scale;
  const flash::flash_shape sh{Hq, Hkv, D, Dv, scale};
  const attention_params fp = gathered_params(scale, p.softcap);
  const float ninf = -std::numeric_limits<float>::infinity();

  // ---- part A: the window, one strided sub-problem per residue class ----
  struct klass {
    index_t first_q, nq, nk, row0;  // query rows first_q + dil * a', a' < nq; keys r + dil * b, b < nk
  };
  std::vector<klass> classes(static_cast<std::size_t>(dil));
  std::vector<index_t> lo(static_cast<std::size_t>(Lq)), hi(static_cast<std::size_t>(Lq));
  index_t rows = 0;
  for (index_t r = 0; r < dil; ++r) {
    klass& c = classes[static_cast<std::size_t>(r)];
    c.first_q = (((r - off) % dil) + dil) % dil;
    c.nq = c.first_q < Lq ? (Lq - c.first_q + dil - 1) / dil : 0;
    c.nk = r < Lk ? (Lk - r + dil - 1) / dil : 0;
    c.row0 = rows;
    const index_t a0 = floor_div(c.first_q + off - r, dil);
    for (index_t t = 0; t < c.nq; ++t) {
      const auto w = dilated_class_window(p, a0 + t, c.nk);
      lo[static_cast<std::size_t>(rows + t)] = w.first;
      hi[static_cast<std::size_t>(rows + t)] = w.second;
    }
    rows += c.nq;
  }
  struct piece {
    index_t r, a0, a1;
  };
  std::vector<piece> pieces;
  for (index_t r = 0; r < dil; ++r)
    for (index_t a = 0; a < classes[static_cast<std::size_t>(r)].nq; a += flash::block_q)
      pieces.push_back({r, a, std::min(classes[static_cast<std::size_t>(r)].nq, a + flash::block_q)});
  const index_t np = static_cast<index_t>(pieces.size());
  // lse of the window part, [B, Hq, Lq] (needed to merge the global keys).
  std::vector<float> lse_a(static_cast<std::size_t>(B * Hq * Lq), ninf);
  parallel_for(p.policy, B * np * Hq, [&](index_t item, int) {
    const index_t b = item / (np * Hq), pc_i = (item / Hq) % np, h = item % Hq;
    const piece& pc = pieces[static_cast<std::size_t>(pc_i)];
    const klass& c = classes[static_cast<std::size_t>(pc.r)];
    flash::flash_problem<TQ, TK, TV> pr;
    pr.q = q.ptr(b, c.first_q);
    pr.q_row = dil * q.stride(1);
    pr.q_head = q.stride(2);
    pr.k = c.nk > 0 ? k.ptr(b, pc.r) : k.ptr(b);
    pr.k_row = dil * k.stride(1);
    pr.k_head = k.stride(2);
    pr.v = c.nk > 0 ? v.ptr(b, pc.r) : v.ptr(b);
    pr.v_row = dil * v.stride(1);
    pr.v_head = v.stride(2);
    pr.o = o.ptr(b, c.first_q);
    pr.o_row = dil * o.stride(1);
    pr.o_head = o.stride(2);
    pr.lse = lse_a.data() + b * Hq * Lq + c.first_q;
    pr.lse_head = Lq;
    pr.lse_row = dil;
    pr.lq = c.nq;
    pr.lk = c.nk;
    pr.batch_index = b;
    const row_interval_visibility vis(lo.data() + c.row0, hi.data() + c.row0, c.nq, c.nk);
    flash::flash_query_block<Arch>(pr, sh, fp, vis, h, pc.a0, pc.a1);
  });

  const auto& G = p.global_positions;
  const index_t ng = G.data() != nullptr ? G.dim(0) : 0;
  if (ng > 0) {
    // ---- part B: global keys outside each row's window, merged by lse ----
    const std::size_t bytes = scratch_frame::bytes_for<float>(ng * (D + Dv)) + scratch_frame::bytes_for<float>(ng) +
                              scratch_frame::bytes_for<float>(D + 2 * Dv) + 4 * scratch_arena::alignment;
    parallel_for(p.policy, B * Hkv, [&](index_t item, int) {
      const index_t b = item / Hkv, g = item % Hkv;
      scratch_frame frame(bytes);
      float* kg = frame.alloc<float>(static_cast<std::size_t>(ng * D));
      float* vg = frame.alloc<float>(static_cast<std::size_t>(ng * Dv));
      float* s = frame.alloc<float>(static_cast<std::size_t>(ng));
      float* qr = frame.alloc<float>(static_cast<std::size_t>(D + 2 * Dv));
      float* ob = qr + D;
      float* tmp = ob + Dv;
      for (index_t t = 0; t < ng; ++t) {
        to_f32(k.ptr(b, G(t), g), kg + t * D, D);
        to_f32(v.ptr(b, G(t), g), vg + t * Dv, Dv);
      }
      for (index_t i = 0; i < Lq; ++i) {
        const index_t pos = i + off;
        if (is_global(G, pos)) continue;  // part C
        for (index_t hh = 0; hh < group; ++hh) {
          const index_t h = g * group + hh;
          to_f32(q.ptr(b, i, h), qr, D);
          float mx = ninf;
          for (index_t t = 0; t < ng; ++t) {
            const index_t j = G(t);
            if ((p.causal && j > pos) || dilated_in_window(p, pos, j, Lk)) {
              s[t] = ninf;
              continue;
            }
            float x = scale * simd::dot(qr, kg + t * D, D);
            if (p.softcap > 0.f) x = p.softcap * std::tanh(x / p.softcap);
            s[t] = x;
            mx = std::max(mx, x);
          }
          if (mx == ninf) continue;
          float l = 0.f;
          std::fill(ob, ob + Dv, 0.f);
          for (index_t t = 0; t < ng; ++t) {
            if (s[t] == ninf) continue;
            const float w = std::exp(s[t] - mx);
            l += w;
            simd::axpy(w, vg + t * Dv, ob, Dv);
          }
          simd::scale(1.f / l, ob, Dv);
          float* orow = o.ptr(b, i, h);
          float& la = lse_a[static_cast<std::size_t>((b * Hq + h) * Lq + i)];
          std::copy(orow, orow + Dv, tmp);
          la = merge_attention_row(tmp, la, ob, mx + std::log(l), orow, Dv);
        }
      }
    });
    // ---- part C: global query rows see every key (up to their position when causal) ----
    std::vector<index_t> gq;  // query rows whose position is global
    for (index_t t = 0; t < ng; ++t)
      if (G(t) - off >= 0 && G(t) - off < Lq) gq.push_back(G(t) - off);
    const index_t ngq = static_cast<index_t>(gq.size());
    if (ngq > 0) {
      std::vector<float> qbuf(static_cast<std::size_t>(B * ngq * Hq * D));
      std::vector<float> obuf(static_cast<std::size_t>(B * ngq * Hq * Dv));
      std::vector<float> lbuf(static_cast<std::size_t>(B * Hq * ngq));
      std::vector<index_t> ghi(static_cast<std::size_t>(ngq));
      for (index_t t = 0; t < ngq; ++t) ghi[static_cast<std::size_t>(t)] = p.causal ? gq[static_cast<std::size_t>(t)] + off : Lk - 1;
      for (index_t b = 0; b < B; ++b)
        for (index_t t = 0; t < ngq; ++t)
          for (index_t h = 0; h < Hq; ++h)
            to_f32(q.ptr(b, gq[static_cast<std::size_t>(t)], h), qbuf.data() + ((b * ngq + t) * Hq + h) * D, D);
      const index_t nb = (ngq + flash::block_q - 1) / flash::block_q;
      const row_interval_visibility vis(nullptr, ghi.data(), ngq, Lk);
      parallel_for(p.policy, B * nb * Hq, [&](index_t item, int) {
        const index_t b = item / (nb * Hq), blk = (item / Hq) % nb, h = item % Hq;
        flash::flash_problem<float, TK, TV> pr;
        pr.q = qbuf.data() + b * ngq * Hq * D;
        pr.q_row = Hq * D;
        pr.q_head = D;
        pr.k = k.ptr(b);
        pr.k_row = k.stride(1);
        pr.k_head = k.stride(2);
        pr.v = v.ptr(b);
        pr.v_row = v.stride(1);
        pr.v_head = v.stride(2);
        pr.o = obuf.data() + b * ngq * Hq * Dv;
        pr.o_row = Hq * Dv;
        pr.o_head = Dv;
        pr.lse = lbuf.data() + b * Hq * ngq;
        pr.lse_head = ngq;
        pr.lse_row = 1;
        pr.lq = ngq;
        pr.lk = Lk;
        pr.batch_index = b;
        flash::flash_query_block<Arch>(pr, sh, fp, vis, h, blk * flash::block_q,
                                       std::min(ngq, (blk + 1) * flash::block_q));
      });
      for (index_t b = 0; b < B; ++b)
        for (index_t t = 0; t < ngq; ++t)
          for (index_t h = 0; h < Hq; ++h) {
            const index_t i = gq[static_cast<std::size_t>(t)];
            const float* src = obuf.data() + ((b * ngq + t) * Hq + h) * Dv;
            std::copy(src, src + Dv, o.ptr(b, i, h));
            lse_a[static_cast<std::size_t>((b * Hq + h) * Lq + i)] = lbuf[static_cast<std::size_t>((b * Hq + h) * ngq + t)];
          }
    }
  }
  if (lse.data() != nullptr)
    for (index_t b = 0; b < B; ++b)
      for (index_t h = 0; h < Hq; ++h)
        for (index_t i = 0; i < Lq; ++i) lse(b, h, i) = lse_a[static_cast<std::size_t>((b * Hq + h) * Lq + i)];
}

template <class Arch, class QE, class T, class OE>
void dilated_decode_run(Arch, const tensor_view<const QE, 4>& q, const kv_cache<T>& cache, const tensor_view<OE, 4>& o,
                        const tensor_view<float, 3>* lse, const dilated_attention_params& p) {
  attention_params ap;
  ap.scale = p.scale;
  ap.softcap = p.softcap;
  check_sparse_decode("dilated_attention_decode", q, cache, o, lse, ap);
  const index_t len = cache.length();
  // Global positions may lie beyond the tokens decoded so far (they apply once reached).
  check_dilated_params(p, index_t(1) << 31);
  require(p.mode == dilated_window::sliding, "params.mode", "sliding in decode (a clamped window looks ahead)",
          "clamped");
  require(p.alignment == causal_alignment::bottom_right, "params.alignment",
          "bottom_right (decode queries are the last tokens of the cached sequence)", "top_left");
  const index_t B = cache.batch(), n = q.dim(1), Hq = q.dim(2), Hkv = cache.kv_heads(), group = Hq / Hkv;
  const index_t D = cache.head_dim(), Dv = cache.v_head_dim(), dil = p.dilation;
  if (n == 0) return;
  const float scale = std::isnan(p.scale) ? 1.f / std::sqrt(static_cast<float>(D)) : p.scale;
  const auto& G = p.global_positions;
  const index_t ng = G.data() != nullptr ? G.dim(0) : 0;
  parallel_for(p.policy, B * Hkv * n, [&](index_t item, int) {
    const index_t i = item % n, g = (item / n) % Hkv, b = item / (n * Hkv);
    const index_t pos = len - n + i;
    scratch_frame frame(decode_rows_bytes(group, D, Dv) + scratch_frame::bytes_for<float>(group) +
                        scratch_frame::bytes_for<std::int32_t>(ng));
    decode_rows<Arch, T> dr(frame, group, D, Dv, cache.k_head(b, g), cache.v_head(b, g), p.softcap);
    float* lrow = frame.alloc<float>(static_cast<std::size_t>(group));
    std::int32_t* extra = frame.alloc<std::int32_t>(static_cast<std::size_t>(std::max<index_t>(ng, 1)));
    for (index_t r = 0; r < group; ++r) {
      const QE* src = q.ptr(b, i, g * group + r);
      float* dst = dr.q_row(r);
      for (index_t e = 0; e < D; ++e) dst[e] = scale * to_float(src[e]);
    }
    if (is_global(G, pos)) {
      dr.run(0, pos + 1, 1);
    } else {
      const index_t steps = p.window_left < 0 ? pos / dil : std::min(p.window_left, pos / dil);
      dr.run(pos - steps * dil, steps + 1, dil);
      index_t ne = 0;
      for (index_t t = 0; t < ng && G(t) <= pos; ++t) {
        const index_t j = G(t);
        const bool in_window = (pos - j) % dil == 0 && (pos - j) / dil <= steps;
        if (!in_window) extra[ne++] = static_cast<std::int32_t>(j);
      }
      dr.gather(extra, ne);
    }
    dr.finish(lrow);
    for (index_t r = 0; r < group; ++r) {
      const index_t h = g * group + r;
      const float* src = dr.o_row(r);
      OE* dst = o.ptr(b, i, h);
      for (index_t e = 0; e < Dv; ++e) dst[e] = from_float<OE>(src[e]);
      if (lse != nullptr) (*lse)(b, h, i) = lrow[r];
    }
  });
}

}  // namespace sparse
}  // namespace detail

// Dilated sliding-window / neighbourhood attention prefill (see the top of this file).
//   q: [B, Lq, Hq, D]  k: [B, Lk, Hkv, D]  v: [B, Lk, Hkv, Dv]  o: [B, Lq, Hq, Dv]  lse: [B, Hq, Lq] or empty
template <class Q, class K, class V, class O>
void dilated_attention(const Q& q_, const K& k_, const V& v_, O&& o_, tensor_view<float, 3> lse,
                       const dilated_attention_params& p = {}) {
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
  detail::sparse::check_dilated_params(p, k.dim(1));
  detail::sparse::dilated_kernel(xsimd::default_arch{}, q, k, v, o, lse, p);
}

template <class Q, class K, class V, class O>
void dilated_attention(const Q& q, const K& k, const V& v, O&& o, const dilated_attention_params& p = {}) {
  dilated_attention(q, k, v, std::forward<O>(o), tensor_view<float, 3>(), p);
}

template <class Q, class K, class V, class O, class L,
          class = std::enable_if_t<!std::is_same<std::decay_t<L>, dilated_attention_params>::value &&
                                   !std::is_same<std::decay_t<L>, tensor_view<float, 3>>::value>>
void dilated_attention(const Q& q, const K& k, const V& v, O&& o, L&& lse, const dilated_attention_params& p = {}) {
  dilated_attention(q, k, v, std::forward<O>(o), tensor_view<float, 3>(as_view(lse)), p);
}

// Causal decode against a linear kv_cache (append the new keys first).
//   q_new: [B, n, Hq, D]   o: [B, n, Hq, Dv]   lse (optional): [B, Hq, n]
template <class Q, class T, class O>
void dilated_attention_decode(const Q& q_new, const kv_cache<T>& cache, O&& o, const dilated_attention_params& p = {}) {
  const auto qv = as_view(q_new);
  const auto ov = as_view(o);
  using QE = typename decltype(qv)::value_type;
  using OE = typename decltype(ov)::value_type;
  static_assert(is_storage_type<QE>::value && is_storage_type<OE>::value, "q_new and o hold float, half or bfloat16");
  detail::sparse::dilated_decode_run(xsimd::default_arch{}, tensor_view<const QE, 4>(qv), cache, tensor_view<OE, 4>(ov),
                                     nullptr, p);
}

template <class Q, class T, class O, class L,
          class = std::enable_if_t<!std::is_same<std::decay_t<L>, dilated_attention_params>::value>>
void dilated_attention_decode(const Q& q_new, const kv_cache<T>& cache, O&& o, L&& lse,
                              const dilated_attention_params& p = {}) {
  const auto qv = as_view(q_new);
  const auto ov = as_view(o);
  using QE = typename decltype(qv)::value_type;
  using OE = typename decltype(ov)::value_type;
  static_assert(is_storage_type<QE>::value && is_storage_type<OE>::value, "q_new and o hold float, half or bfloat16");
  const tensor_view<float, 3> lv = as_view(lse);
  detail::sparse::dilated_decode_run(xsimd::default_arch{}, tensor_view<const QE, 4>(qv), cache, tensor_view<OE, 4>(ov),
                                     &lv, p);
}

}  // namespace tokmix
