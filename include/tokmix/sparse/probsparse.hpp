#pragma once
// ProbSparse self-attention (Informer): only the u "active" queries, picked by
// a sparsity measure estimated on sampled keys, get exact softmax attention;
// the other ("lazy") queries get Informer's initial context.
//
//   n_sample = min(Lk, factor * ceil(ln Lk)),   u = min(Lq, factor * ceil(ln Lq))   (Informer's U_part, u)
//   M(q_i)   = max_t s_{i, j_it} - (1 / n_sample) sum_t s_{i, j_it},   s_ij = scale q_i . k_j
//              over the sampled keys j_it (t < n_sample, uniform with replacement,
//              the same samples for every batch entry and head, a pure function of seed)
//   active   = the u queries with the largest M per (batch, head), ties to the lower index
//   o_i      = sum_j softmax_j(s_ij) v_j over the visible keys    (active i)
//   o_i      = mean_j v_j (all keys), or when causal the cumulative mean
//              mean_{j <= i + Lk - Lq} v_j (bottom-right; j <= i top-left)   (lazy i)
//
// Informer's reference code divides the sampled sum by Lk rather than by
// n_sample and uses the cumulative sum for causal lazy rows; tokmix uses the
// sample mean (the estimator of the paper's M) and the cumulative mean (the
// causal analogue of the mean). With u = Lq (factor large enough) the result
// is exact softmax attention.
//
//   q: [B, Lq, Hq, D]  k: [B, Lk, Hkv, D]  v: [B, Lk, Hkv, Dv]  o: [B, Lq, Hq, Dv]
//   active (optional): [B, Hq, u] int32, the active queries in increasing order
//
// Cost: O(Lq n_sample D) for M, O(u Lk D) for the active rows (on the flash
// attention tiles), O(L Dv) for the means: O(L log L D) with u, n_sample ~ ln L.
//
// ref: Zhou et al., "Informer: Beyond Efficient Transformer for Long Sequence
//      Time-Series Forecasting", AAAI 2021 (sec. "Efficient Self-attention
//      Mechanism", eq. 4 and Lemma 1; ProbAttention in the authors' code).

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
#include "tokmix/attention/params.hpp"
#include "tokmix/core/error.hpp"
#include "tokmix/core/scratch.hpp"
#include "tokmix/core/tensor_view.hpp"
#include "tokmix/core/threading.hpp"
#include "tokmix/simd/convert.hpp"
#include "tokmix/simd/dot.hpp"
#include "tokmix/simd/prefetch.hpp"
#include "tokmix/sparse/block_layout.hpp"
#include "tokmix/sparse/detail/common.hpp"

namespace tokmix {

struct probsparse_params {
  index_t factor = 5;  // Informer's c (>= 1)
  // Multiplies q.k; NaN (the default) means 1/sqrt(head_dim).
  float scale = std::numeric_limits<float>::quiet_NaN();
  bool causal = false;
  causal_alignment alignment = causal_alignment::bottom_right;
  std::uint64_t seed = 0;  // key samples
  exec_policy policy;
};

// factor * ceil(ln n), capped at n (0 for n = 0).
inline index_t probsparse_budget(index_t factor, index_t n) {
  if (n <= 0) return 0;
  const index_t c = static_cast<index_t>(std::ceil(std::log(static_cast<double>(n))));
  return std::min(n, factor * std::max<index_t>(c, 1));
}

// The t-th sampled key of query i (of Lk keys) under `seed`.
inline index_t probsparse_sample(std::uint64_t seed, index_t i, index_t t, index_t seq_k) {
  std::uint64_t s = seed ^ (0x9E6C63D0676A9A99ull * static_cast<std::uint64_t>(i + 1)) ^
                    (0xD6E8FEB86659FD93ull * static_cast<std::uint64_t>(t + 1));
  return static_cast<index_t>(detail::splitmix64(s) % static_cast<std::uint64_t>(seq_k));
}

namespace detail {
namespace sparse {

inline void check_probsparse_params(const probsparse_params& p) {
  require(p.factor >= 1, "params.factor", ">= 1", p.factor);
  require(std::isnan(p.scale) || std::isfinite(p.scale), "params.scale", "a finite value or NaN (default)", p.scale);
}

template <class T>
inline void to_f32_row(const T* src, float* dst, index_t n) {
  if constexpr (std::is_same<T, float>::value) {
    for (index_t e = 0; e < n; ++e) dst[e] = src[e];
  } else {
    simd::convert(src, dst, n);
  }
}

template <class Arch, class TQ, class TK, class TV>
void probsparse_kernel(Arch, const tensor_view<const TQ, 4>& q, const tensor_view<const TK, 4>& k,
                       const tensor_view<const TV, 4>& v, const tensor_view<float, 4>& o,
                       const tensor_view<std::int32_t, 3>& active_out, const probsparse_params& p) {
  const index_t B = q.dim(0), Lq = q.dim(1), Hq = q.dim(2), D = q.dim(3), Lk = k.dim(1), Hkv = k.dim(2),
                Dv = v.dim(3), group = Hq / Hkv;
  if (B == 0 || Lq == 0) return;
  const index_t ns = probsparse_budget(p.factor, Lk), u = probsparse_budget(p.factor, Lq);
  const float scale = std::isnan(p.scale) ? 1.f / std::sqrt(static_cast<float>(D)) : p.scale;
  const index_t off = p.alignment == causal_alignment::bottom_right ? Lk - Lq : 0;

  // 1. The sparsity measure and the u active queries per (b, h), in increasing order.
  std::vector<std::int32_t> active(static_cast<std::size_t>(B * Hq * u));
  std::vector<index_t> samples(static_cast<std::size_t>(Lq * ns));
  for (index_t i = 0; i < Lq; ++i)
    for (index_t t = 0; t < ns; ++t) samples[static_cast<std::size_t>(i * ns + t)] = probsparse_sample(p.seed, i, t, Lk);
  parallel_for(p.policy, B * Hq, [&](index_t item, int) {
    const index_t b = item / Hq, h = item % Hq, hk = h / group;
    std::vector<float> qr(static_cast<std::size_t>(D)), kr(static_cast<std::size_t>(D));
    std::vector<std::pair<float, std::int32_t>> m(static_cast<std::size_t>(Lq));
    for (index_t i = 0; i < Lq; ++i) {
      to_f32_row(q.ptr(b, i, h), qr.data(), D);
      float mx = -std::numeric_limits<float>::infinity(), sum = 0.f;
      for (index_t t = 0; t < ns; ++t) {
        // The samples are scattered rows: ask for one 8 samples ahead so the misses overlap.
        const index_t ahead = i * ns + t + 8;
        if (ahead < Lq * ns) {
          simd::prefetch_bytes(k.ptr(b, samples[static_cast<std::size_t>(ahead)], hk),
                               static_cast<std::size_t>(D) * sizeof(TK));
        }
        const TK* kp = k.ptr(b, samples[static_cast<std::size_t>(i * ns + t)], hk);
        const float* kf;
        if constexpr (std::is_same<TK, float>::value) {
          kf = kp;
        } else {
          to_f32_row(kp, kr.data(), D);
          kf = kr.data();
        }
        const float s = scale * simd::detail::dot_kernel(Arch{}, qr.data(), kf, D);
        mx = std::max(mx, s);
        sum += s;
      }
      m[static_cast<std::size_t>(i)] = {ns > 0 ? mx - sum / static_cast<float>(ns) : 0.f, static_cast<std::int32_t>(i)};
    }
    auto better = [](const std::pair<float, std::int32_t>& a, const std::pair<float, std::int32_t>& c) {
      return a.first > c.first || (a.first == c.first && a.second < c.second);
    };
    if (u < Lq) std::nth_element(m.begin(), m.begin() + u, m.end(), better);
    std::int32_t* dst = active.data() + (b * Hq + h) * u;
    for (index_t t = 0; t < u; ++t) dst[t] = m[static_cast<std::size_t>(t)].second;
    std::sort(dst, dst + u);
  });

  // 2. Lazy rows: the mean of V (cumulative when causal), per (b, kv head).
  parallel_for(p.policy, B * Hkv, [&](index_t item, int) {
    const index_t b = item / Hkv, g = item % Hkv;
    std::vector<double> acc(static_cast<std::size_t>(Dv), 0.0);
    std::vector<float> vr(static_cast<std::size_t>(Dv)), mean(static_cast<std::size_t>(Dv));
    std::vector<char> is_active(static_cast<std::size_t>(Lq));
    auto write_lazy = [&](index_t i, const float* row) {
      for (index_t hh = 0; hh < group; ++hh) {
        const index_t h = g * group + hh;
        const std::int32_t* a = active.data() + (b * Hq + h) * u;
        if (std::binary_search(a, a + u, static_cast<std::int32_t>(i))) continue;
        float* dst = o.ptr(b, i, h);
        for (index_t e = 0; e < Dv; ++e) dst[e] = row[e];
      }
    };
    if (!p.causal) {
      for (index_t j = 0; j < Lk; ++j) {
        to_f32_row(v.ptr(b, j, g), vr.data(), Dv);
        for (index_t e = 0; e < Dv; ++e) acc[static_cast<std::size_t>(e)] += vr[static_cast<std::size_t>(e)];
      }
      for (index_t e = 0; e < Dv; ++e)
        mean[static_cast<std::size_t>(e)] = Lk > 0 ? static_cast<float>(acc[static_cast<std::size_t>(e)] / double(Lk)) : 0.f;
      for (index_t i = 0; i < Lq; ++i) write_lazy(i, mean.data());
      return;
    }
    // Causal: rows in order of their last visible key i + off.
    index_t next = 0;  // keys summed so far: [0, next)
    for (index_t i = 0; i < Lq; ++i) {
      const index_t last = std::min(Lk - 1, i + off);
      for (; next <= last; ++next) {
        to_f32_row(v.ptr(b, next, g), vr.data(), Dv);
        for (index_t e = 0; e < Dv; ++e) acc[static_cast<std::size_t>(e)] += vr[static_cast<std::size_t>(e)];
      }
      const index_t cnt = last + 1;
      for (index_t e = 0; e < Dv; ++e)
        mean[static_cast<std::size_t>(e)] = cnt > 0 ? static_cast<float>(acc[static_cast<std::size_t>(e)] / double(cnt)) : 0.f;
      write_lazy(i, mean.data());
    }
  });

  // 3. Active rows: exact attention on the flash tiles, queries gathered per batch entry.
  if (u == 0) return;
  const flash::flash_shape sh{1, 1, D, Dv, scale};
  const attention_params fp = gathered_params(scale, 0.f);
  const index_t nb = (u + flash::block_q - 1) / flash::block_q;
  const std::size_t bytes = scratch_frame::bytes_for<float>(u * D) + scratch_frame::bytes_for<float>(u * Dv) +
                            scratch_frame::bytes_for<index_t>(u) +
                            flash::flash_scratch_bytes<Arch>(D, Dv, true, true) + 6 * scratch_arena::alignment;
  parallel_for(p.policy, B * Hq * nb, [&](index_t item, int) {
    const index_t blk = item % nb, h = (item / nb) % Hq, b = item / (nb * Hq);
    const index_t a0 = blk * flash::block_q, a1 = std::min(u, a0 + flash::block_q), na = a1 - a0;
    const std::int32_t* act = active.data() + (b * Hq + h) * u + a0;
    scratch_frame frame(bytes);
    float* qg = frame.alloc<float>(na * D);
    float* og = frame.alloc<float>(na * Dv);
    index_t* hi = frame.alloc<index_t>(na);
    for (index_t a = 0; a < na; ++a) {
      to_f32_row(q.ptr(b, act[a], h), qg + a * D, D);
      hi[a] = p.causal ? std::min(Lk - 1, act[a] + off) : Lk - 1;
    }
    flash::flash_problem<float, TK, TV> pr;
    pr.q = qg;
    pr.q_row = D;
    pr.q_head = 0;
    pr.k = k.ptr(b, 0, h / group);
    pr.k_row = k.stride(1);
    pr.k_head = 0;
    pr.v = v.ptr(b, 0, h / group);
    pr.v_row = v.stride(1);
    pr.v_head = 0;
    pr.o = og;
    pr.o_row = Dv;
    pr.o_head = 0;
    pr.lse = nullptr;
    pr.lse_head = pr.lse_row = 0;
    pr.lq = na;
    pr.lk = Lk;
    pr.batch_index = b;
    const row_interval_visibility vis(nullptr, hi, na, Lk);
    flash::flash_query_block<Arch>(pr, sh, fp, vis, 0, 0, na);
    for (index_t a = 0; a < na; ++a) {
      float* dst = o.ptr(b, act[a], h);
      for (index_t e = 0; e < Dv; ++e) dst[e] = og[a * Dv + e];
    }
  });
  if (active_out.data() != nullptr)
    for (index_t b = 0; b < B; ++b)
      for (index_t h = 0; h < Hq; ++h)
        for (index_t t = 0; t < u; ++t) active_out(b, h, t) = active[static_cast<std::size_t>((b * Hq + h) * u + t)];
}

}  // namespace sparse
}  // namespace detail

// ProbSparse attention (see the top of this file).
//   q: [B, Lq, Hq, D]  k: [B, Lk, Hkv, D]  v: [B, Lk, Hkv, Dv]  o: [B, Lq, Hq, Dv]
//   active: [B, Hq, probsparse_budget(factor, Lq)] int32 or empty
template <class Q, class K, class V, class O>
void probsparse_attention(const Q& q_, const K& k_, const V& v_, O&& o_, tensor_view<std::int32_t, 3> active,
                          const probsparse_params& p = {}) {
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
  detail::sparse::check_qkv(q, k, v, o, tensor_view<float, 3>());
  detail::sparse::check_probsparse_params(p);
  if (active.data() != nullptr) {
    require_layout("active", active);
    require_shape("active", active, {q.dim(0), q.dim(2), probsparse_budget(p.factor, q.dim(1))});
  }
  detail::sparse::probsparse_kernel(xsimd::default_arch{}, q, k, v, o, active, p);
}

template <class Q, class K, class V, class O>
void probsparse_attention(const Q& q, const K& k, const V& v, O&& o, const probsparse_params& p = {}) {
  probsparse_attention(q, k, v, std::forward<O>(o), tensor_view<std::int32_t, 3>(), p);
}

}  // namespace tokmix
