#pragma once
// Nystrom attention (Nystromformer): softmax attention approximated through m
// landmarks, the segment means of the queries and of the keys.
//
//   Q~_s = mean of q over segment s,  K~_s = mean of k over segment s      (m segments, s = 0..m-1;
//                                      segment s = rows [floor(s L / m), floor((s+1) L / m)))
//   F = softmax(scale Q K~^T)  [Lq, m]    A = softmax(scale Q~ K~^T)  [m, m]    B = softmax(scale Q~ K^T)  [m, Lk]
//   o = F  A^+  (B V)
//
// A^+ is the Moore-Penrose pseudoinverse by the iteration the paper uses
// (Razavi et al. 2014): Z_0 = A^T / (|A|_1 |A|_inf),
// Z <- Z (13 I - A Z (15 I - A Z (7 I - A Z))) / 4, pinv_iterations times.
// With m = L landmarks (segments of one token) and a converged pseudoinverse
// the result is exact softmax attention; fewer landmarks trade accuracy for
// cost O(L m (D + Dv) + m^3). Non-causal only (landmarks summarise the whole
// sequence). The paper's model adds a depthwise convolution of V as a skip
// path; that is a separate layer and not part of this mixer.
//
// Both softmax products with the long side are exact softmax attention, so
// they run on tokmix's flash tiles: B V = attention(Q~, K, V) and
// o = attention(Q, K~, W) with W = A^+ (B V).
//
//   q: [B, Lq, Hq, D]  k: [B, Lk, Hkv, D]  v: [B, Lk, Hkv, Dv]  o: [B, Lq, Hq, Dv]
//   landmarks m: 1 <= m <= min(Lq, Lk)
//
// ref: Xiong, Zeng, Chakraborty, Tan, Fung, Li & Singh, "Nystromformer: A
//      Nystrom-Based Algorithm for Approximating Self-Attention", AAAI 2021
//      (eq. 14 and sec. 3.3, segment-means landmarks, iterative pseudoinverse);
//      Razavi et al., "A New Iterative Method for Finding Approximate Inverses
//      of Complex Matrices", Abstract and Applied Analysis 2014.

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
#include "tokmix/core/element.hpp"
#include "tokmix/core/error.hpp"
#include "tokmix/core/scratch.hpp"
#include "tokmix/core/tensor_view.hpp"
#include "tokmix/core/threading.hpp"
#include "tokmix/simd/gemm.hpp"
#include "tokmix/simd/reduce.hpp"
#include "tokmix/simd/exp.hpp"
#include "tokmix/sparse/detail/common.hpp"

namespace tokmix {

struct nystrom_params {
  index_t landmarks = 64;       // m, 1 <= m <= min(Lq, Lk)
  index_t pinv_iterations = 6;  // the paper's default; >= 0
  // Multiplies q.k; NaN (the default) means 1/sqrt(head_dim).
  float scale = std::numeric_limits<float>::quiet_NaN();
  exec_policy policy;
};

namespace detail {
namespace sparse {

// Segment s of n rows in m segments: [floor(s n / m), floor((s+1) n / m)).
inline index_t nystrom_segment_begin(index_t s, index_t n, index_t m) { return s * n / m; }

// dst [m, d] (row stride ld_dst) = segment means of the n rows src (row stride ld_src).
template <class T>
void nystrom_segment_means(const T* src, index_t ld_src, index_t n, index_t d, index_t m, float* dst, index_t ld_dst) {
  for (index_t s = 0; s < m; ++s) {
    const index_t r0 = nystrom_segment_begin(s, n, m), r1 = nystrom_segment_begin(s + 1, n, m);
    float* out = dst + s * ld_dst;
    std::fill(out, out + d, 0.f);
    for (index_t r = r0; r < r1; ++r)
      for (index_t e = 0; e < d; ++e) out[e] += to_float(src[r * ld_src + e]);
    const float inv = 1.f / static_cast<float>(r1 - r0);
    for (index_t e = 0; e < d; ++e) out[e] *= inv;
  }
}

// z [m, m] = the iterative pseudoinverse of a [m, m]; t1, t2 [m, m] scratch.
inline void nystrom_pinv(const float* a, index_t m, index_t iterations, float* z, float* az, float* t1, float* t2) {
  float col_max = 0.f, row_max = 0.f;
  for (index_t i = 0; i < m; ++i) {
    float rs = 0.f, cs = 0.f;
    for (index_t j = 0; j < m; ++j) {
      rs += std::abs(a[i * m + j]);
      cs += std::abs(a[j * m + i]);
    }
    row_max = std::max(row_max, rs);
    col_max = std::max(col_max, cs);
  }
  const float inv = 1.f / (col_max * row_max);
  for (index_t i = 0; i < m; ++i)
    for (index_t j = 0; j < m; ++j) z[i * m + j] = a[j * m + i] * inv;
  for (index_t it = 0; it < iterations; ++it) {
    simd::gemm_nn(m, m, m, 1.f, a, m, z, m, 0.f, az, m);  // AZ
    for (index_t x = 0; x < m * m; ++x) t1[x] = -az[x];
    for (index_t i = 0; i < m; ++i) t1[i * m + i] += 7.f;   // 7I - AZ
    simd::gemm_nn(m, m, m, -1.f, az, m, t1, m, 0.f, t2, m);  // -AZ (7I - AZ)
    for (index_t i = 0; i < m; ++i) t2[i * m + i] += 15.f;  // 15I - AZ (7I - AZ)
    simd::gemm_nn(m, m, m, -1.f, az, m, t2, m, 0.f, t1, m);  // -AZ (...)
    for (index_t i = 0; i < m; ++i) t1[i * m + i] += 13.f;  // 13I - AZ (...)
    simd::gemm_nn(m, m, m, 0.25f, z, m, t1, m, 0.f, az, m);  // Z (...) / 4
    std::copy(az, az + m * m, z);
  }
}

}  // namespace sparse
}  // namespace detail

// Nystrom attention (see the top of this file).
template <class Q, class K, class V, class O>
void nystrom_attention(const Q& q_, const K& k_, const V& v_, O&& o_, const nystrom_params& p = {}) {
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
  const index_t B = q.dim(0), Lq = q.dim(1), Hq = q.dim(2), D = q.dim(3), Lk = k.dim(1), Hkv = k.dim(2),
                Dv = v.dim(3), group = Hq / Hkv, m = p.landmarks;
  require(m >= 1 && m <= std::min(Lq, Lk), "params.landmarks",
          "in [1, min(Lq, Lk)] = [1, " + std::to_string(std::min(Lq, Lk)) + "]", m);
  require(p.pinv_iterations >= 0, "params.pinv_iterations", ">= 0", p.pinv_iterations);
  require(std::isnan(p.scale) || std::isfinite(p.scale), "params.scale", "a finite value or NaN (default)", p.scale);
  if (B == 0) return;
  const float scale = std::isnan(p.scale) ? 1.f / std::sqrt(static_cast<float>(D)) : p.scale;

  // Landmarks: Q~ [B, m, Hq, D]; K~ per query head [B, m, Hq, D] (head h holds
  // its kv head's landmarks, so the last product runs with as many kv heads as
  // query heads and W per query head).
  std::vector<float> ql(static_cast<std::size_t>(B * m * Hq * D)), kl(ql.size());
  parallel_for(p.policy, B * (Hq + Hkv), [&](index_t item, int) {
    const index_t b = item / (Hq + Hkv), h = item % (Hq + Hkv);
    if (h < Hq) {
      detail::sparse::nystrom_segment_means(q.ptr(b, 0, h), q.stride(1), Lq, D, m, ql.data() + (b * m * Hq + h) * D,
                                            Hq * D);
    } else {
      const index_t g = h - Hq;
      float* dst = kl.data() + (b * m * Hq + g * group) * D;
      detail::sparse::nystrom_segment_means(k.ptr(b, 0, g), k.stride(1), Lk, D, m, dst, Hq * D);
      for (index_t s = 0; s < m; ++s)
        for (index_t r = 1; r < group; ++r) std::copy(dst + s * Hq * D, dst + s * Hq * D + D, dst + s * Hq * D + r * D);
    }
  });
  const tensor_view<const float, 4> qlv(ql.data(), {B, m, Hq, D}), klv(kl.data(), {B, m, Hq, D});

  // B V = attention(Q~, K, V): [B, m, Hq, Dv].
  attention_params ap;
  ap.scale = scale;
  ap.policy = p.policy;
  std::vector<float> bv(static_cast<std::size_t>(B * m * Hq * Dv)), w(bv.size());
  detail::flash_attention_kernel(xsimd::default_arch{}, qlv, k, v, tensor_view<float, 4>(bv.data(), {B, m, Hq, Dv}),
                                 tensor_view<float, 3>(), ap);

  // W = A^+ (B V) per (batch, query head).
  parallel_for(p.policy, B * Hq, [&](index_t item, int) {
    const index_t b = item / Hq, h = item % Hq;
    scratch_frame frame(5 * scratch_frame::bytes_for<float>(m * m) + scratch_frame::bytes_for<float>(m * Dv) +
                        6 * scratch_arena::alignment);
    float* a = frame.alloc<float>(m * m);
    float* z = frame.alloc<float>(m * m);
    float* az = frame.alloc<float>(m * m);
    float* t1 = frame.alloc<float>(m * m);
    float* t2 = frame.alloc<float>(m * m);
    float* wb = frame.alloc<float>(m * Dv);
    const float* qh = ql.data() + (b * m * Hq + h) * D;
    const float* kh = kl.data() + (b * m * Hq + h) * D;
    simd::gemm_nt(m, m, D, scale, qh, Hq * D, kh, Hq * D, 0.f, a, m);
    for (index_t i = 0; i < m; ++i) {  // row softmax
      float* row = a + i * m;
      const float mx = simd::reduce_max(row, m);
      for (index_t j = 0; j < m; ++j) row[j] -= mx;
      simd::exp(row, row, m);
      const float inv = 1.f / simd::reduce_sum(row, m);
      for (index_t j = 0; j < m; ++j) row[j] *= inv;
    }
    detail::sparse::nystrom_pinv(a, m, p.pinv_iterations, z, az, t1, t2);
    simd::gemm_nn(m, Dv, m, 1.f, z, m, bv.data() + (b * m * Hq + h) * Dv, Hq * Dv, 0.f, wb, Dv);
    for (index_t s = 0; s < m; ++s)
      std::copy(wb + s * Dv, wb + (s + 1) * Dv, w.data() + ((b * m + s) * Hq + h) * Dv);
  });

  // o = attention(Q, K~, W).
  detail::flash_attention_kernel(xsimd::default_arch{}, q, klv, tensor_view<const float, 4>(w.data(), {B, m, Hq, Dv}),
                                 o, tensor_view<float, 3>(), ap);
}

}  // namespace tokmix
