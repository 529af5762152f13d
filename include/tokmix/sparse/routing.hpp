#pragma once
// Routing attention (Routing Transformer): queries and keys are clustered by
// online k-means on the unit sphere, and attention is exact softmax within
// each cluster.
//
//   c(x)  = argmax_m  mu_m . x / |x|          (per query head h, centroids mu of head h;
//                                              keys of kv head h / (Hq / Hkv) use head h's centroids)
//   o_i   = sum_{j : c(k_j) = c(q_i)} softmax_j(s_ij) v_j,   s_ij = scale q_i . k_j
//           (and j <= i + Lk - Lq when causal, bottom-right; j <= i top-left)
//
// Assignment modes:
//   nearest   each token to its nearest centroid (the paper's definition);
//   balanced  every cluster takes at most ceil(L / C) queries and as many keys
//             (the paper's implementation balances clusters with a top-k per
//             centroid): tokens are placed in order of decreasing similarity to
//             their nearest centroid, each into its most similar centroid that
//             still has room (ties: lower index). Each token is in exactly one
//             cluster, so the result is still exact softmax under the mask
//             c(q_i) = c(k_j), and the cost is bounded by C (L / C)^2 D = L^2 D / C,
//             i.e. O(L^1.5 D) with C ~ sqrt(L), whatever the data.
//
// Centroid update (online k-means with decay lambda, Roy et al. eq. 8, on unit
// vectors): per cluster m, s_m = sum of the unit queries and keys assigned to m
// (nearest assignment) in the call; mu_m <- normalise(lambda mu_m + (1 - lambda)
// s_m / |s_m|) for clusters that received a token; others keep mu_m.
// routing_state::update does it explicitly; routing_params::update_centroids
// does it after the attention of a prefill call (so the call itself attends
// with the centroids it started with). Initial centroids: unit Gaussian
// directions from a seed (deterministic), or set_centroids.
//
//   q: [B, Lq, Hq, D]  k: [B, Lk, Hkv, D]  v: [B, Lk, Hkv, Dv]  o: [B, Lq, Hq, Dv]  lse: [B, Hq, Lq] or empty
//   routing_state: centroids [Hq, C, D]
//
// Decode (nearest assignment, causal): routing_key_clusters keeps the cluster
// of every cached key per query head (append it with the same keys as the
// kv_cache); the new query attends the cached keys of its cluster.
//
// ref: Roy, Saffar, Vaswani & Grangier, "Efficient Content-Based Sparse
//      Attention with Routing Transformers", TACL 2021 (sec. 4: routing
//      attention, online mini-batch k-means with exponential decay; balanced
//      top-k clusters in their implementation).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "tokmix/simd/arch.hpp"

#include "tokmix/attention/detail/flash_kernel.hpp"
#include "tokmix/attention/flash_attention.hpp"
#include "tokmix/attention/kv_cache.hpp"
#include "tokmix/attention/params.hpp"
#include "tokmix/core/error.hpp"
#include "tokmix/core/scratch.hpp"
#include "tokmix/core/tensor_view.hpp"
#include "tokmix/core/threading.hpp"
#include "tokmix/simd/convert.hpp"
#include "tokmix/simd/dot.hpp"
#include "tokmix/simd/gemm.hpp"
#include "tokmix/simd/prefetch.hpp"
#include "tokmix/sparse/block_layout.hpp"
#include "tokmix/sparse/detail/common.hpp"
#include "tokmix/sparse/detail/decode_rows.hpp"

namespace tokmix {

enum class routing_assignment {
  nearest,   // each token to its nearest centroid
  balanced,  // at most ceil(L / C) tokens per cluster and side
};

struct routing_params {
  // Multiplies q.k; NaN (the default) means 1/sqrt(head_dim).
  float scale = std::numeric_limits<float>::quiet_NaN();
  bool causal = false;
  causal_alignment alignment = causal_alignment::bottom_right;
  routing_assignment assignment = routing_assignment::nearest;
  float softcap = 0.f;
  // After the attention, one online k-means step with this call's q and k.
  bool update_centroids = false;
  exec_policy policy;
};

// Centroids per query head: [heads, n_clusters, head_dim], unit rows.
class routing_state {
 public:
  routing_state(index_t heads, index_t n_clusters, index_t head_dim, std::uint64_t seed = 0, float decay = 0.999f)
      : h_(heads), c_(n_clusters), d_(head_dim), decay_(decay) {
    require(heads >= 1, "heads", ">= 1", heads);
    require(n_clusters >= 1, "n_clusters", ">= 1", n_clusters);
    require(head_dim >= 1, "head_dim", ">= 1", head_dim);
    require(std::isfinite(decay) && decay >= 0.f && decay < 1.f, "decay", "in [0, 1)", decay);
    mu_.resize(static_cast<std::size_t>(heads * n_clusters * head_dim));
    std::uint64_t s = seed ^ 0xC0FFEE1234567ull;
    for (std::size_t i = 0; i < mu_.size(); i += 2) {  // Box-Muller pairs
      const double u1 = (double((detail::splitmix64(s) >> 11) + 1)) * 0x1.0p-53;
      const double u2 = double(detail::splitmix64(s) >> 11) * 0x1.0p-53;
      const double r = std::sqrt(-2.0 * std::log(u1)), t = 6.283185307179586 * u2;
      mu_[i] = static_cast<float>(r * std::cos(t));
      if (i + 1 < mu_.size()) mu_[i + 1] = static_cast<float>(r * std::sin(t));
    }
    for (index_t r = 0; r < heads * n_clusters; ++r) normalise(mu_.data() + r * head_dim, head_dim);
    cp_ = (n_clusters + 15) / 16 * 16;
    transpose();
  }

  index_t heads() const { return h_; }
  index_t n_clusters() const { return c_; }
  index_t head_dim() const { return d_; }
  float decay() const { return decay_; }
  void set_decay(float d) {
    require(std::isfinite(d) && d >= 0.f && d < 1.f, "decay", "in [0, 1)", d);
    decay_ = d;
  }

  // [heads, n_clusters, head_dim]
  tensor_view<const float, 3> centroids() const { return {mu_.data(), {h_, c_, d_}}; }
  const float* centroid(index_t h, index_t m) const { return mu_.data() + (h * c_ + m) * d_; }
  // Head h's centroids transposed in column blocks of 64: block j holds
  // columns [64 j, 64 j + w) as [head_dim][w] (w = 64, less in the last block),
  // zero padded to padded_clusters() columns. Each block is one contiguous
  // stream (16 KiB at head_dim 64); a plain [head_dim][C] layout strided by
  // 256 floats at C = 256 lost a third of the speed to L1 set conflicts.
  const float* centroids_t(index_t h) const { return mut_.data() + h * d_ * cp_; }
  index_t padded_clusters() const { return cp_; }

  // Replaces the centroids (each row is normalised; zero rows are rejected).
  template <class C>
  void set_centroids(const C& c_in) {
    const tensor_view<const float, 3> c = as_view(c_in);
    require_layout("centroids", c);
    require_shape("centroids", c, {h_, c_, d_});
    for (index_t h = 0; h < h_; ++h)
      for (index_t m = 0; m < c_; ++m) {
        double n = 0;
        for (index_t e = 0; e < d_; ++e) n += double(c(h, m, e)) * double(c(h, m, e));
        require(n > 0 && std::isfinite(n), "centroids", "finite, non-zero rows",
                "row (" + std::to_string(h) + ", " + std::to_string(m) + ") with squared norm " + std::to_string(n));
      }
    for (index_t h = 0; h < h_; ++h)
      for (index_t m = 0; m < c_; ++m) {
        float* dst = mu_.data() + (h * c_ + m) * d_;
        for (index_t e = 0; e < d_; ++e) dst[e] = c(h, m, e);
        normalise(dst, d_);
      }
    transpose();
  }

  // One online k-means step (see the top of the file) with q: [B, Lq, heads, D]
  // and k: [B, Lk, Hkv, D] (keys of kv head h / (heads / Hkv) count for head h).
  template <class Q, class K>
  void update(const Q& q, const K& k);

  // mu_m <- normalise(decay mu_m + (1 - decay) s_m / |s_m|) from per-cluster sums s: [heads, C, D].
  void apply_sums(const double* sums) {
    for (index_t r = 0; r < h_ * c_; ++r) {
      const double* s = sums + r * d_;
      double n = 0;
      for (index_t e = 0; e < d_; ++e) n += s[e] * s[e];
      if (!(n > 0)) continue;
      const double inv = 1.0 / std::sqrt(n);
      float* mu = mu_.data() + r * d_;
      for (index_t e = 0; e < d_; ++e) mu[e] = static_cast<float>(decay_ * double(mu[e]) + (1.0 - decay_) * s[e] * inv);
      normalise(mu, d_);
    }
    transpose();
  }

 private:
  static void normalise(float* x, index_t n) {
    double s = 0;
    for (index_t e = 0; e < n; ++e) s += double(x[e]) * double(x[e]);
    if (!(s > 0)) {
      x[0] = 1.f;
      return;
    }
    const double inv = 1.0 / std::sqrt(s);
    for (index_t e = 0; e < n; ++e) x[e] = static_cast<float>(x[e] * inv);
  }

  // Column m, row e of the blocked transpose (see centroids_t).
  static index_t detail_mut_offset(index_t m, index_t e, index_t d, index_t cp) {
    const index_t blk = m / 64, bw = std::min<index_t>(64, cp - blk * 64);
    return blk * 64 * d + e * bw + m % 64;
  }
  void transpose() {
    mut_.assign(static_cast<std::size_t>(h_ * d_ * cp_), 0.f);
    for (index_t h = 0; h < h_; ++h)
      for (index_t m = 0; m < c_; ++m)
        for (index_t e = 0; e < d_; ++e)
          mut_[static_cast<std::size_t>(h * d_ * cp_ + detail_mut_offset(m, e, d_, cp_))] =
              mu_[static_cast<std::size_t>((h * c_ + m) * d_ + e)];
  }

  index_t h_, c_, d_, cp_ = 0;
  float decay_;
  std::vector<float> mu_, mut_;
};

namespace detail {
namespace sparse {

// One row to fp32; f32 rows by SIMD loads (a memmove call per 64-float row costs as much as the copy).
template <class T>
inline void row_to_f32(const T* src, float* dst, index_t n) {
  if constexpr (std::is_same<T, float>::value) {
    using F = xsimd::batch<float, xsimd::default_arch>;
    constexpr index_t W = F::size;
    index_t e = 0;
    for (; e + W <= n; e += W) F::load_unaligned(src + e).store_unaligned(dst + e);
    for (; e < n; ++e) dst[e] = src[e];
  } else {
    simd::convert(src, dst, n);
  }
}

constexpr index_t routing_chunk = 16;  // tokens per similarity block: x and the sims rows stay in L1 (64: 0.65x)

// s[r][c] = x_r . mu_c for MR tokens and NB vectors of centroids: every
// similarity is one FMA chain over the head dim in order, the same for any
// tile shape, so a token gets the same cluster whatever its neighbours (prefill
// chunks, one token in decode).
template <class Arch, int MR, int NB>
inline void routing_sims_tile(const float* x, index_t D, const float* mut, index_t cp, index_t c0, float* s) {
  using F = xsimd::batch<float, Arch>;
  constexpr index_t W = F::size;
  F acc[MR][NB];
  for (int r = 0; r < MR; ++r)
    for (int q = 0; q < NB; ++q) acc[r][q] = F(0.f);
  for (index_t e = 0; e < D; ++e) {
    F b[NB];
    for (int q = 0; q < NB; ++q) {
      const index_t c = c0 + q * W, blk = c / 64, bw = std::min<index_t>(64, cp - blk * 64);
      b[q] = F::load_unaligned(mut + blk * 64 * D + e * bw + c % 64);
    }
    for (int r = 0; r < MR; ++r) {
      const F a(x[r * D + e]);
      for (int q = 0; q < NB; ++q) acc[r][q] = xsimd::fma(a, b[q], acc[r][q]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int q = 0; q < NB; ++q) acc[r][q].store_unaligned(s + r * cp + c0 + q * W);
}

// sims [n][cp] of n fp32 tokens [n][D]. Column blocks outside, token groups
// inside: a block of transposed centroids (D x 64 floats) stays in L1 while
// every token passes.
template <class Arch>
inline void routing_sims(const float* x, index_t n, index_t D, const float* mut, index_t cp, float* sims) {
  constexpr index_t W = xsimd::batch<float, Arch>::size;
  constexpr int NB = W >= 16 ? 4 : 2;  // 4 x NB accumulators + NB loads + 1 broadcast fit the register file
  auto rows = [&](auto nb, index_t c) {
    constexpr int B = decltype(nb)::value;
    index_t r = 0;
    for (; r + 4 <= n; r += 4) routing_sims_tile<Arch, 4, B>(x + r * D, D, mut, cp, c, sims + r * cp);
    switch (n - r) {
      case 3: routing_sims_tile<Arch, 3, B>(x + r * D, D, mut, cp, c, sims + r * cp); break;
      case 2: routing_sims_tile<Arch, 2, B>(x + r * D, D, mut, cp, c, sims + r * cp); break;
      case 1: routing_sims_tile<Arch, 1, B>(x + r * D, D, mut, cp, c, sims + r * cp); break;
      default: break;
    }
  };
  index_t c = 0;
  for (; c + NB * W <= cp; c += NB * W) rows(std::integral_constant<int, NB>{}, c);
  for (; c < cp; c += W) rows(std::integral_constant<int, 1>{}, c);  // cp is a multiple of 16 >= W
}

// The first index of the largest of s[0, n).
template <class Arch>
inline index_t routing_argmax(const float* s, index_t n) {
  using F = xsimd::batch<float, Arch>;
  constexpr index_t W = F::size;
  index_t c = 0, a = 0;
  if (n >= W) {
    alignas(64) float lane_idx[W];
    for (index_t l = 0; l < W; ++l) lane_idx[l] = static_cast<float>(l);
    F best = F::load_unaligned(s), bi = F::load_aligned(lane_idx);
    F idx = bi;
    for (c = W; c + W <= n; c += W) {
      idx = idx + F(static_cast<float>(W));
      const F x = F::load_unaligned(s + c);
      const auto gt = x > best;  // strict: each lane keeps its first maximum
      best = xsimd::select(gt, x, best);
      bi = xsimd::select(gt, idx, bi);
    }
    alignas(64) float bv[W], biv[W];
    best.store_aligned(bv);
    bi.store_aligned(biv);
    a = static_cast<index_t>(biv[0]);
    for (index_t l = 1; l < W; ++l)
      if (bv[l] > s[a] || (bv[l] == s[a] && static_cast<index_t>(biv[l]) < a)) a = static_cast<index_t>(biv[l]);
  } else {
    c = 1;
  }
  for (; c < n; ++c)
    if (s[c] > s[a]) a = c;
  return a;
}

// Cluster ids of n tokens x_t = base + t * row (one head) under head h's
// centroids. best (nullable) gets the best similarity over |x| (the balanced
// order). Ties go to the lower cluster; x = 0 goes to cluster 0.
// xbuf: [routing_chunk][D], sims: [routing_chunk][cp].
template <class T>
void routing_nearest(const T* base, index_t row, index_t n, const routing_state& st, index_t h, std::int32_t* ids,
                     float* best, float* xbuf, float* sims) {
  const index_t C = st.n_clusters(), D = st.head_dim(), cp = st.padded_clusters();
  for (index_t t0 = 0; t0 < n; t0 += routing_chunk) {
    const index_t m = std::min(routing_chunk, n - t0);
    for (index_t t = 0; t < m; ++t) row_to_f32(base + (t0 + t) * row, xbuf + t * D, D);
    routing_sims<xsimd::default_arch>(xbuf, m, D, st.centroids_t(h), cp, sims);
    for (index_t t = 0; t < m; ++t) {
      const float* s = sims + t * cp;
      const index_t a = routing_argmax<xsimd::default_arch>(s, C);
      ids[t0 + t] = static_cast<std::int32_t>(a);
      if (best != nullptr) {
        const float nrm = std::sqrt(simd::dot(xbuf + t * D, xbuf + t * D, D));
        best[t0 + t] = nrm > 0.f ? s[a] / nrm : -2.f;
      }
    }
  }
}

struct routing_rank {
  float best;
  std::int32_t t;
};

// Capacity-constrained assignment (see the top of the file). ids holds the
// nearest clusters on entry and best their normalised similarity.
template <class T>
void routing_balance(const T* base, index_t row, index_t n, const routing_state& st, index_t h, std::int32_t* ids,
                     const float* best, routing_rank* order, index_t* count, float* xbuf, float* sims) {
  const index_t C = st.n_clusters(), D = st.head_dim(), cp = st.padded_clusters();
  const index_t cap = (n + C - 1) / C;
  for (index_t t = 0; t < n; ++t) order[t] = {best[t], static_cast<std::int32_t>(t)};
  std::sort(order, order + n, [](const routing_rank& a, const routing_rank& b) {
    return a.best > b.best || (a.best == b.best && a.t < b.t);
  });
  std::fill(count, count + C, index_t(0));
  index_t w = 0;  // overflowing tokens compacted at the front of order, in order
  for (index_t r = 0; r < n; ++r) {
    const std::int32_t t = order[r].t;
    if (count[ids[t]] < cap) ++count[ids[t]];
    else order[w++].t = t;
  }
  // Overflowing tokens, in order, to their most similar cluster with room
  // (ties: lower cluster); similarities a chunk at a time.
  for (index_t r0 = 0; r0 < w; r0 += routing_chunk) {
    const index_t m = std::min(routing_chunk, w - r0);
    for (index_t r = 0; r < m; ++r) row_to_f32(base + order[r0 + r].t * row, xbuf + r * D, D);
    routing_sims<xsimd::default_arch>(xbuf, m, D, st.centroids_t(h), cp, sims);
    for (index_t r = 0; r < m; ++r) {
      const float* sr = sims + r * cp;
      index_t pick = -1;
      for (index_t c = 0; c < C; ++c)
        if (count[c] < cap && (pick < 0 || sr[c] > sr[pick])) pick = c;
      ids[order[r0 + r].t] = static_cast<std::int32_t>(pick);
      ++count[pick];
    }
  }
}

inline std::size_t routing_assign_bytes(index_t n, index_t C, index_t D) {
  const index_t cp = (C + 15) / 16 * 16;
  return scratch_frame::bytes_for<float>(routing_chunk * D) + scratch_frame::bytes_for<float>(routing_chunk * cp) +
         scratch_frame::bytes_for<float>(n) + scratch_frame::bytes_for<routing_rank>(n) +
         2 * scratch_frame::bytes_for<index_t>(C) + 6 * scratch_arena::alignment;
}

// Cluster ids of q ([B, Hq, Lq]) and k ([B, Hq, Lk]) under state's centroids.
template <class TQ, class TK>
void routing_assign_all(const tensor_view<const TQ, 4>& q, const tensor_view<const TK, 4>& k, const routing_state& st,
                        routing_assignment mode, const exec_policy& policy, std::int32_t* qid, std::int32_t* kid) {
  const index_t B = q.dim(0), Lq = q.dim(1), Hq = q.dim(2), D = q.dim(3), Lk = k.dim(1), group = Hq / k.dim(2);
  const index_t C = st.n_clusters();
  const bool bal = mode == routing_assignment::balanced;
  parallel_for(policy, B * Hq * 2, [&](index_t item, int) {
    const index_t side = item % 2, h = (item / 2) % Hq, b = item / (2 * Hq);
    const index_t n = side == 0 ? Lq : Lk;
    if (n == 0) return;
    scratch_frame frame(routing_assign_bytes(n, C, D));
    float* xbuf = frame.alloc<float>(routing_chunk * D);
    float* sims = frame.alloc<float>(routing_chunk * st.padded_clusters());
    float* best = bal ? frame.alloc<float>(n) : nullptr;
    std::int32_t* ids = (side == 0 ? qid + (b * Hq + h) * Lq : kid + (b * Hq + h) * Lk);
    if (side == 0) {
      routing_nearest(q.ptr(b, 0, h), q.stride(1), n, st, h, ids, best, xbuf, sims);
      if (bal) {
        routing_rank* order = frame.alloc<routing_rank>(n);
        index_t* count = frame.alloc<index_t>(C);
        routing_balance(q.ptr(b, 0, h), q.stride(1), n, st, h, ids, best, order, count, xbuf, sims);
      }
    } else {
      routing_nearest(k.ptr(b, 0, h / group), k.stride(1), n, st, h, ids, best, xbuf, sims);
      if (bal) {
        routing_rank* order = frame.alloc<routing_rank>(n);
        index_t* count = frame.alloc<index_t>(C);
        routing_balance(k.ptr(b, 0, h / group), k.stride(1), n, st, h, ids, best, order, count, xbuf, sims);
      }
    }
  });
}

// Per (b, h): tokens of each cluster in increasing position (counting sort).
struct cluster_lists {
  index_t C = 0;
  std::vector<index_t> start;  // [B * Hq][C + 1]
  std::vector<std::int32_t> pos;  // [B * Hq][L]
  void build(const std::int32_t* ids, index_t units, index_t L, index_t n_clusters) {
    C = n_clusters;
    start.assign(static_cast<std::size_t>(units * (C + 1)), 0);
    pos.resize(static_cast<std::size_t>(units * L));
    std::vector<index_t> fill(static_cast<std::size_t>(C));
    for (index_t u = 0; u < units; ++u) {
      index_t* st = start.data() + u * (C + 1);
      const std::int32_t* id = ids + u * L;
      for (index_t t = 0; t < L; ++t) ++st[id[t] + 1];
      for (index_t c = 0; c < C; ++c) st[c + 1] += st[c];
      for (index_t c = 0; c < C; ++c) fill[static_cast<std::size_t>(c)] = st[c];
      std::int32_t* p = pos.data() + u * L;
      for (index_t t = 0; t < L; ++t) p[fill[static_cast<std::size_t>(id[t])]++] = static_cast<std::int32_t>(t);
    }
  }
  index_t begin(index_t u, index_t c) const { return start[static_cast<std::size_t>(u * (C + 1) + c)]; }
  index_t end(index_t u, index_t c) const { return start[static_cast<std::size_t>(u * (C + 1) + c + 1)]; }
  index_t max_size() const {
    index_t m = 0;
    for (std::size_t u = 0; u + 1 < start.size(); ++u)
      if ((u + 1) % static_cast<std::size_t>(C + 1) != 0) m = std::max(m, start[u + 1] - start[u]);
    return m;
  }
};

template <class Arch, class TQ, class TK, class TV>
void routing_kernel(Arch, const tensor_view<const TQ, 4>& q, const tensor_view<const TK, 4>& k,
                    const tensor_view<const TV, 4>& v, const tensor_view<float, 4>& o, const tensor_view<float, 3>& lse,
                    const routing_state& st, const routing_params& p) {
  const index_t B = q.dim(0), Lq = q.dim(1), Hq = q.dim(2), D = q.dim(3), Lk = k.dim(1), Hkv = k.dim(2),
                Dv = v.dim(3), group = Hq / Hkv, C = st.n_clusters();
  if (B == 0 || Lq == 0) return;
  std::vector<std::int32_t> qid(static_cast<std::size_t>(B * Hq * Lq)), kid(static_cast<std::size_t>(B * Hq * Lk));
  routing_assign_all(q, k, st, p.assignment, p.policy, qid.data(), kid.data());
  cluster_lists ql, kl;
  ql.build(qid.data(), B * Hq, Lq, C);
  kl.build(kid.data(), B * Hq, Lk, C);
  const index_t mq = ql.max_size(), mk = kl.max_size();
  const float scale = std::isnan(p.scale) ? 1.f / std::sqrt(static_cast<float>(D)) : p.scale;
  const flash::flash_shape sh{1, 1, D, Dv, scale};
  const attention_params fp = gathered_params(scale, p.softcap);
  const index_t off = p.alignment == causal_alignment::bottom_right ? Lk - Lq : 0;
  const std::size_t bytes = scratch_frame::bytes_for<float>(mq * (D + Dv + 1)) +
                            scratch_frame::bytes_for<float>(mk * (D + Dv)) + scratch_frame::bytes_for<index_t>(mq) +
                            flash::flash_scratch_bytes<Arch>(D, Dv, true, true) + 8 * scratch_arena::alignment;
  parallel_for(p.policy, B * Hq * C, [&](index_t item, int) {
    const index_t c = item % C, u = item / C, h = u % Hq, b = u / Hq, hk = h / group;
    const index_t qb = ql.begin(u, c), nq = ql.end(u, c) - qb, kb = kl.begin(u, c), nk = kl.end(u, c) - kb;
    if (nq == 0) return;
    const std::int32_t* qp = ql.pos.data() + u * Lq + qb;
    const std::int32_t* kp = kl.pos.data() + u * Lk + kb;
    scratch_frame frame(bytes);
    float* qg = frame.alloc<float>(std::max<index_t>(1, nq * D));
    float* og = frame.alloc<float>(std::max<index_t>(1, nq * Dv));
    float* lg = frame.alloc<float>(std::max<index_t>(1, nq));
    float* kg = frame.alloc<float>(std::max<index_t>(1, nk * D));
    float* vg = frame.alloc<float>(std::max<index_t>(1, nk * Dv));
    index_t* hi = frame.alloc<index_t>(std::max<index_t>(1, nq));
    // The cluster's rows are scattered over the sequence: request them a few
    // rows ahead so the cache misses overlap (at L = 65536 K and V are far out of L2).
    constexpr index_t ahead = 8;
    auto prefetch_row = [](const void* p, index_t bytes) { simd::prefetch_bytes(p, static_cast<std::size_t>(bytes)); };
    for (index_t a = 0; a < nq; ++a) {
      if (a + ahead < nq) prefetch_row(q.ptr(b, qp[a + ahead], h), D * index_t(sizeof(TQ)));
      row_to_f32(q.ptr(b, qp[a], h), qg + a * D, D);
    }
    for (index_t a = 0; a < nk; ++a) {
      if (a + ahead < nk) {
        prefetch_row(k.ptr(b, kp[a + ahead], hk), D * index_t(sizeof(TK)));
        prefetch_row(v.ptr(b, kp[a + ahead], hk), Dv * index_t(sizeof(TV)));
      }
      row_to_f32(k.ptr(b, kp[a], hk), kg + a * D, D);
      row_to_f32(v.ptr(b, kp[a], hk), vg + a * Dv, Dv);
    }
    for (index_t a = 0; a < nq; ++a) {
      if (!p.causal) {
        hi[a] = nk - 1;
        continue;
      }
      const index_t lim = qp[a] + off;  // keys at positions <= lim
      hi[a] = static_cast<index_t>(std::upper_bound(kp, kp + nk, lim) - kp) - 1;
    }
    flash::flash_problem<float, float, float> pr;
    pr.q = qg;
    pr.q_row = D;
    pr.q_head = 0;
    pr.k = kg;
    pr.k_row = D;
    pr.k_head = 0;
    pr.v = vg;
    pr.v_row = Dv;
    pr.v_head = 0;
    pr.o = og;
    pr.o_row = Dv;
    pr.o_head = 0;
    pr.lse = lg;
    pr.lse_head = 0;
    pr.lse_row = 1;
    pr.lq = nq;
    pr.lk = nk;
    pr.batch_index = b;
    const row_interval_visibility vis(nullptr, hi, nq, nk);
    for (index_t a0 = 0; a0 < nq; a0 += flash::block_q)
      flash::flash_query_block<Arch>(pr, sh, fp, vis, 0, a0, std::min(nq, a0 + flash::block_q));
    for (index_t a = 0; a < nq; ++a) {
      row_to_f32(og + a * Dv, o.ptr(b, qp[a], h), Dv);
      if (lse.data() != nullptr) lse(b, h, qp[a]) = lg[a];
    }
  });
}

template <class TQ, class TK>
void routing_check(const tensor_view<const TQ, 4>& q, const tensor_view<const TK, 4>& k, const routing_state& st) {
  require(st.heads() == q.dim(2), "state", "centroids for " + std::to_string(q.dim(2)) + " query heads",
          std::to_string(st.heads()) + " heads");
  require(st.head_dim() == q.dim(3), "state", "head_dim " + std::to_string(q.dim(3)),
          "head_dim " + std::to_string(st.head_dim()));
  (void)k;
}

}  // namespace sparse
}  // namespace detail

template <class Q, class K>
void routing_state::update(const Q& q_, const K& k_) {
  const auto qv = as_view(q_);
  const auto kv = as_view(k_);
  using TQ = std::remove_const_t<typename decltype(qv)::element_type>;
  using TK = std::remove_const_t<typename decltype(kv)::element_type>;
  const tensor_view<const TQ, 4> q = qv;
  const tensor_view<const TK, 4> k = kv;
  require_layout("q", q);
  require_layout("k", k);
  require_shape("q", q, {-1, -1, h_, d_});
  require_shape("k", k, {q.dim(0), -1, -1, d_});
  require(k.dim(2) >= 1 && h_ % k.dim(2) == 0, "k", "kv heads dividing the " + std::to_string(h_) + " query heads",
          k.dim(2));
  const index_t B = q.dim(0), Lq = q.dim(1), Lk = k.dim(1), group = h_ / k.dim(2);
  std::vector<std::int32_t> qid(static_cast<std::size_t>(B * h_ * Lq)), kid(static_cast<std::size_t>(B * h_ * Lk));
  detail::sparse::routing_assign_all(q, k, *this, routing_assignment::nearest, exec_policy::serial(), qid.data(),
                                     kid.data());
  std::vector<double> sums(static_cast<std::size_t>(h_ * c_ * d_), 0.0);
  std::vector<float> x(static_cast<std::size_t>(d_));
  auto add = [&](index_t h, std::int32_t m, float* xr) {
    double n = 0;
    for (index_t e = 0; e < d_; ++e) n += double(xr[e]) * double(xr[e]);
    if (!(n > 0)) return;
    const double inv = 1.0 / std::sqrt(n);
    double* s = sums.data() + (h * c_ + m) * d_;
    for (index_t e = 0; e < d_; ++e) s[e] += double(xr[e]) * inv;
  };
  for (index_t b = 0; b < B; ++b)
    for (index_t h = 0; h < h_; ++h) {
      for (index_t t = 0; t < Lq; ++t) {
        detail::sparse::row_to_f32(q.ptr(b, t, h), x.data(), d_);
        add(h, qid[static_cast<std::size_t>((b * h_ + h) * Lq + t)], x.data());
      }
      for (index_t t = 0; t < Lk; ++t) {
        detail::sparse::row_to_f32(k.ptr(b, t, h / group), x.data(), d_);
        add(h, kid[static_cast<std::size_t>((b * h_ + h) * Lk + t)], x.data());
      }
    }
  apply_sums(sums.data());
}

// The cluster ids routing_attention uses: q_ids [B, Hq, Lq], k_ids [B, Hq, Lk]
// (k_ids of query head h are its kv head's keys under head h's centroids).
template <class Q, class K, class QI, class KI>
void routing_clusters(const Q& q_, const K& k_, const routing_state& st, QI&& q_ids_, KI&& k_ids_,
                      routing_assignment mode = routing_assignment::nearest, const exec_policy& policy = {}) {
  const auto qv = as_view(q_);
  const auto kv = as_view(k_);
  using TQ = std::remove_const_t<typename decltype(qv)::element_type>;
  using TK = std::remove_const_t<typename decltype(kv)::element_type>;
  const tensor_view<const TQ, 4> q = qv;
  const tensor_view<const TK, 4> k = kv;
  const tensor_view<std::int32_t, 3> qi = as_view(q_ids_), ki = as_view(k_ids_);
  require_layout("q", q);
  require_layout("k", k);
  require_shape("k", k, {q.dim(0), -1, -1, q.dim(3)});
  require(k.dim(2) >= 1 && q.dim(2) % k.dim(2) == 0, "k", "kv heads dividing the query heads", k.dim(2));
  detail::sparse::routing_check(q, k, st);
  require_layout("q_ids", qi);
  require_layout("k_ids", ki);
  require_shape("q_ids", qi, {q.dim(0), q.dim(2), q.dim(1)});
  require_shape("k_ids", ki, {q.dim(0), q.dim(2), k.dim(1)});
  const index_t B = q.dim(0), Hq = q.dim(2), Lq = q.dim(1), Lk = k.dim(1);
  std::vector<std::int32_t> a(static_cast<std::size_t>(B * Hq * Lq)), c(static_cast<std::size_t>(B * Hq * Lk));
  detail::sparse::routing_assign_all(q, k, st, mode, policy, a.data(), c.data());
  for (index_t b = 0; b < B; ++b)
    for (index_t h = 0; h < Hq; ++h) {
      for (index_t t = 0; t < Lq; ++t) qi(b, h, t) = a[static_cast<std::size_t>((b * Hq + h) * Lq + t)];
      for (index_t t = 0; t < Lk; ++t) ki(b, h, t) = c[static_cast<std::size_t>((b * Hq + h) * Lk + t)];
    }
}

// Routing attention prefill (see the top of this file).
template <class Q, class K, class V, class O>
void routing_attention(const Q& q_, const K& k_, const V& v_, O&& o_, tensor_view<float, 3> lse, routing_state& state,
                       const routing_params& p = {}) {
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
  detail::sparse::routing_check(q, k, state);
  require(std::isnan(p.scale) || std::isfinite(p.scale), "params.scale", "a finite value or NaN (default)", p.scale);
  require(std::isfinite(p.softcap) && p.softcap >= 0.f, "params.softcap", "a finite value >= 0", p.softcap);
  detail::sparse::routing_kernel(xsimd::default_arch{}, q, k, v, o, lse, state, p);
  if (p.update_centroids) state.update(q, k);
}

template <class Q, class K, class V, class O>
void routing_attention(const Q& q, const K& k, const V& v, O&& o, routing_state& state, const routing_params& p = {}) {
  routing_attention(q, k, v, std::forward<O>(o), tensor_view<float, 3>(), state, p);
}

// The cluster of every cached key, per query head, for routing decode: append
// the same keys as to the kv_cache, with the same state.
class routing_key_clusters {
 public:
  routing_key_clusters(index_t batch, index_t heads_q, index_t n_clusters)
      : b_(batch), h_(heads_q), c_(n_clusters), lists_(static_cast<std::size_t>(batch * heads_q * n_clusters)) {
    require(batch >= 1 && heads_q >= 1 && n_clusters >= 1, "batch / heads_q / n_clusters", ">= 1",
            std::to_string(batch) + " / " + std::to_string(heads_q) + " / " + std::to_string(n_clusters));
  }
  index_t length() const { return len_; }
  // k_new: [batch, n, Hkv, D]
  template <class K>
  void append(const K& k_new, const routing_state& st) {
    const auto kv0 = as_view(k_new);
    using TK = std::remove_const_t<typename decltype(kv0)::element_type>;
    const tensor_view<const TK, 4> k = kv0;
    require_layout("k_new", k);
    require(st.heads() == h_ && st.n_clusters() == c_, "state",
            std::to_string(h_) + " heads x " + std::to_string(c_) + " clusters",
            std::to_string(st.heads()) + " x " + std::to_string(st.n_clusters()));
    require_shape("k_new", k, {b_, -1, -1, st.head_dim()});
    require(k.dim(2) >= 1 && h_ % k.dim(2) == 0, "k_new", "kv heads dividing " + std::to_string(h_), k.dim(2));
    const index_t n = k.dim(1), group = h_ / k.dim(2), D = st.head_dim();
    std::vector<float> x(static_cast<std::size_t>(D)), sims(static_cast<std::size_t>(st.padded_clusters()));
    std::int32_t id = 0;
    for (index_t b = 0; b < b_; ++b)
      for (index_t h = 0; h < h_; ++h)
        for (index_t t = 0; t < n; ++t) {
          detail::sparse::routing_nearest(k.ptr(b, t, h / group), 0, 1, st, h, &id, nullptr, x.data(), sims.data());
          lists_[static_cast<std::size_t>((b * h_ + h) * c_ + id)].push_back(static_cast<std::int32_t>(len_ + t));
        }
    len_ += n;
  }
  void clear() {
    for (auto& l : lists_) l.clear();
    len_ = 0;
  }
  const std::vector<std::int32_t>& keys(index_t b, index_t h, index_t m) const {
    return lists_[static_cast<std::size_t>((b * h_ + h) * c_ + m)];
  }
  index_t batch() const { return b_; }
  index_t heads() const { return h_; }
  index_t n_clusters() const { return c_; }

 private:
  index_t b_, h_, c_;
  index_t len_ = 0;
  std::vector<std::vector<std::int32_t>> lists_;
};

namespace detail {
namespace sparse {

template <class Arch, class QE, class T, class OE>
void routing_decode_run(Arch, const tensor_view<const QE, 4>& q, const kv_cache<T>& cache,
                        const routing_key_clusters& kc, const routing_state& st, const tensor_view<OE, 4>& o,
                        const tensor_view<float, 3>* lse, const routing_params& p) {
  attention_params ap;
  ap.scale = p.scale;
  ap.softcap = p.softcap;
  check_sparse_decode("routing_attention_decode", q, cache, o, lse, ap);
  const index_t B = cache.batch(), n = q.dim(1), Hq = q.dim(2), Hkv = cache.kv_heads(), group = Hq / Hkv;
  const index_t D = cache.head_dim(), Dv = cache.v_head_dim(), len = cache.length(), C = st.n_clusters();
  require(st.heads() == Hq && st.head_dim() == D, "state", std::to_string(Hq) + " heads of dim " + std::to_string(D),
          std::to_string(st.heads()) + " heads of dim " + std::to_string(st.head_dim()));
  require(kc.heads() == Hq && kc.batch() == B && kc.n_clusters() == C, "key_clusters",
          "batch " + std::to_string(B) + ", " + std::to_string(Hq) + " heads, " + std::to_string(C) + " clusters",
          "batch " + std::to_string(kc.batch()) + ", " + std::to_string(kc.heads()) + " heads, " +
              std::to_string(kc.n_clusters()) + " clusters");
  require(kc.length() == len, "key_clusters", "length() == cache.length() = " + std::to_string(len), kc.length());
  require(p.assignment == routing_assignment::nearest, "params.assignment", "nearest in decode", "balanced");
  if (n == 0) return;
  const float scale = std::isnan(p.scale) ? 1.f / std::sqrt(static_cast<float>(D)) : p.scale;
  parallel_for(p.policy, B * Hq * n, [&](index_t item, int) {
    const index_t i = item % n, h = (item / n) % Hq, b = item / (n * Hq), g = h / group;
    const index_t pos = len - n + i;
    scratch_frame frame(decode_rows_bytes(1, D, Dv) + scratch_frame::bytes_for<float>(D) +
                        scratch_frame::bytes_for<float>(st.padded_clusters()) + 2 * scratch_arena::alignment);
    decode_rows<Arch, T> dr(frame, 1, D, Dv, cache.k_head(b, g), cache.v_head(b, g), p.softcap);
    float* x = frame.alloc<float>(D);
    float* sims = frame.alloc<float>(st.padded_clusters());
    std::int32_t best = 0;
    routing_nearest(q.ptr(b, i, h), 0, 1, st, h, &best, nullptr, x, sims);
    float* qr = dr.q_row(0);
    for (index_t e = 0; e < D; ++e) qr[e] = scale * x[e];  // x: q as fp32 (routing_nearest widened it)
    const auto& keys = kc.keys(b, h, best);
    const index_t cnt = static_cast<index_t>(std::upper_bound(keys.begin(), keys.end(), static_cast<std::int32_t>(pos)) -
                                             keys.begin());
    dr.gather(keys.data(), cnt);
    float l;
    dr.finish(&l);
    OE* dst = o.ptr(b, i, h);
    const float* src = dr.o_row(0);
    for (index_t e = 0; e < Dv; ++e) dst[e] = from_float<OE>(src[e]);
    if (lse != nullptr) (*lse)(b, h, i) = l;
  });
}

}  // namespace sparse
}  // namespace detail

// Causal decode (nearest assignment) against a linear kv_cache whose keys were
// also appended to key_clusters with the same state.
//   q_new: [B, n, Hq, D]   o: [B, n, Hq, Dv]   lse (optional): [B, Hq, n]
template <class Q, class T, class O>
void routing_attention_decode(const Q& q_new, const kv_cache<T>& cache, const routing_key_clusters& key_clusters,
                              const routing_state& state, O&& o, const routing_params& p = {}) {
  const auto qv = as_view(q_new);
  const auto ov = as_view(o);
  using QE = typename decltype(qv)::value_type;
  using OE = typename decltype(ov)::value_type;
  static_assert(is_storage_type<QE>::value && is_storage_type<OE>::value, "q_new and o hold float, half or bfloat16");
  detail::sparse::routing_decode_run(xsimd::default_arch{}, tensor_view<const QE, 4>(qv), cache, key_clusters, state,
                                     tensor_view<OE, 4>(ov), nullptr, p);
}

template <class Q, class T, class O, class L,
          class = std::enable_if_t<!std::is_same<std::decay_t<L>, routing_params>::value>>
void routing_attention_decode(const Q& q_new, const kv_cache<T>& cache, const routing_key_clusters& key_clusters,
                              const routing_state& state, O&& o, L&& lse, const routing_params& p = {}) {
  const auto qv = as_view(q_new);
  const auto ov = as_view(o);
  using QE = typename decltype(qv)::value_type;
  using OE = typename decltype(ov)::value_type;
  static_assert(is_storage_type<QE>::value && is_storage_type<OE>::value, "q_new and o hold float, half or bfloat16");
  const tensor_view<float, 3> lv = as_view(lse);
  detail::sparse::routing_decode_run(xsimd::default_arch{}, tensor_view<const QE, 4>(qv), cache, key_clusters, state,
                                     tensor_view<OE, 4>(ov), &lv, p);
}

}  // namespace tokmix
