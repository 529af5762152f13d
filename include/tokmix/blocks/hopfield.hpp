#pragma once
// Modern (continuous) Hopfield retrieval: each query (state pattern) xi is
// moved towards the stored patterns by the update rule
//
//   p_t  = softmax(beta X xi_{t-1})          X: [n_patterns, d], stored patterns as rows
//   xi_t = X^T p_t
//
// repeated up to n_iter times, stopping a query early once
// max_j |xi_t[j] - xi_{t-1}[j]| < tol (tol = 0: always n_iter updates). The
// output is xi_T, or V^T p_T when separate value patterns V [n_patterns, d_v]
// are given (retrieval into another space; with n_iter = 1 that is softmax
// attention with keys X, the paper's Hopfield layer). One update usually suffices near a well-separated stored
// pattern. The softmax is the stable one (max subtracted), so large beta or
// large patterns do not overflow.
//
// beta defaults to 1 / sqrt(d), the scale of the paper's Hopfield layer.
// Queries are processed in fixed blocks of 64 by matrix products (Eigen), so
// a query's result does not depend on the thread count.
//
// ref: Ramsauer et al., "Hopfield Networks is All You Need", ICLR 2021
//      (eq. 3: xi_new = X softmax(beta X^T xi); Theorem 3: retrieval in one update).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "tokmix/core/third_party.hpp"
#include "tokmix/simd/arch.hpp"

#include "tokmix/core/error.hpp"
#include "tokmix/core/scratch.hpp"
#include "tokmix/core/tensor_view.hpp"
#include "tokmix/core/threading.hpp"
#include "tokmix/simd/online_softmax.hpp"

TOKMIX_SIMD_AVX512_WARNINGS_OFF
namespace tokmix {

struct hopfield_params {
  float beta = std::numeric_limits<float>::quiet_NaN();  // inverse temperature; NaN = 1 / sqrt(d)
  index_t n_iter = 1;  // at most this many updates per query (>= 1)
  float tol = 0.f;     // stop a query once its largest change is < tol (0: never early)
  exec_policy policy;
  // Optional outputs (empty views: not written); written only on success.
  tensor_view<float, 2> probs;                 // [n_queries, n_patterns]: p_T of each query
  tensor_view<std::int32_t, 1> iterations;     // [n_queries]: updates done (1..n_iter)
};

namespace detail {

constexpr index_t hopfield_block = 64;

template <class A, class B>
inline bool hopfield_overlap(const tensor_view<A, 2>& a, const tensor_view<B, 2>& b) {
  if (a.size() == 0 || b.size() == 0) return false;
  const auto* a0 = static_cast<const void*>(a.data());
  const auto* b0 = static_cast<const void*>(b.data());
  const auto* a1 = static_cast<const void*>(a.data() + (a.dim(0) - 1) * a.stride(0) + (a.dim(1) - 1) * a.stride(1));
  const auto* b1 = static_cast<const void*>(b.data() + (b.dim(0) - 1) * b.stride(0) + (b.dim(1) - 1) * b.stride(1));
  return !(std::less<const void*>()(a1, b0) || std::less<const void*>()(b1, a0));
}

inline void hopfield_validate(const tensor_view<const float, 2>& X, const tensor_view<const float, 2>& V,
                              const tensor_view<const float, 2>& Q, const tensor_view<float, 2>& out,
                              const hopfield_params& p) {
  require_layout("patterns", X);
  require_layout("queries", Q);
  require_layout("out", out);
  const index_t N = X.dim(0), d = X.dim(1);
  require(N >= 1, "patterns", "at least one stored pattern", "shape " + X.shape_string());
  require(d >= 1, "patterns", "a pattern dimension >= 1", "shape " + X.shape_string());
  require_shape("queries", Q, {-1, d});
  const bool values = V.data() != nullptr;
  index_t dv = d;
  if (values) {
    require_layout("values", V);
    require_shape("values", V, {N, -1});
    dv = V.dim(1);
  }
  require_shape("out", out, {Q.dim(0), dv});
  require(!hopfield_overlap(out, X), "out", "memory not overlapping the patterns", "overlapping views");
  if (values) require(!hopfield_overlap(out, V), "out", "memory not overlapping the values", "overlapping views");
  if (static_cast<const float*>(out.data()) == Q.data())
    require(out.strides() == Q.strides(), "out", "the strides of queries when out is queries (in place)",
            "other strides over the same buffer");
  else
    require(!hopfield_overlap(out, Q), "out", "memory not overlapping the queries (or the queries themselves)",
            "overlapping views");
  require(std::isnan(p.beta) || (std::isfinite(p.beta) && p.beta > 0.f), "beta", "a finite value > 0 (NaN: 1/sqrt(d))",
          p.beta);
  require(p.n_iter >= 1, "n_iter", ">= 1", p.n_iter);
  require(p.tol >= 0.f, "tol", ">= 0", p.tol);  // NaN fails too
  if (p.probs.data() != nullptr) {
    require_layout("probs", p.probs);
    require_shape("probs", p.probs, {Q.dim(0), N});
  }
  if (p.iterations.data() != nullptr) {
    require_layout("iterations", p.iterations);
    require_shape("iterations", p.iterations, {Q.dim(0)});
  }
}

}  // namespace detail

// Retrieves every query.          patterns: [n_patterns, d]      values: [n_patterns, d_v] or empty (= patterns)
//                                 queries:  [n_queries, d]       out:    [n_queries, d_v]
// `out` may be `queries` itself (in place, same strides); it must not
// overlap anything else. Scratch comes from the calling thread's arena.
inline void hopfield_retrieve(tensor_view<const float, 2> patterns, tensor_view<const float, 2> values,
                              tensor_view<const float, 2> queries, tensor_view<float, 2> out,
                              const hopfield_params& p = {}) {
  detail::hopfield_validate(patterns, values, queries, out, p);
  const index_t N = patterns.dim(0), d = patterns.dim(1), nq = queries.dim(0);
  if (nq == 0) return;
  const bool sep = values.data() != nullptr;
  const index_t dv = sep ? values.dim(1) : d;
  const float beta = std::isnan(p.beta) ? 1.f / std::sqrt(static_cast<float>(d)) : p.beta;
  const index_t blk = detail::hopfield_block, n_blocks = (nq + blk - 1) / blk;
  const int workers = static_cast<int>(std::min<index_t>(worker_slots(p.policy), n_blocks));
  using matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using stride = Eigen::OuterStride<>;
  using cmap = Eigen::Map<const matrix, 0, stride>;
  using map = Eigen::Map<matrix, 0, stride>;
  const cmap X(patterns.data(), N, d, stride(patterns.stride(0)));

  struct buffers {
    float *xi, *xn, *s, *prob;
    std::int32_t* iters;  // 0 while the query is still moving
  };
  const auto fl = [](index_t n) { return scratch_frame::bytes_for<float>(static_cast<std::size_t>(n)); };
  const index_t rows = std::min(blk, nq);  // per block
  const std::size_t per_worker = fl(rows * d) * 2 + fl(rows * N) * 2 + scratch_frame::bytes_for<std::int32_t>(rows);
  scratch_frame frame(per_worker * static_cast<std::size_t>(workers) +
                      scratch_frame::bytes_for<buffers>(static_cast<std::size_t>(workers)));
  buffers* buf = frame.alloc<buffers>(static_cast<std::size_t>(workers));
  for (int w = 0; w < workers; ++w) {
    buffers& b = buf[w];
    b.xi = frame.alloc<float>(static_cast<std::size_t>(rows * d));
    b.xn = frame.alloc<float>(static_cast<std::size_t>(rows * d));
    b.s = frame.alloc<float>(static_cast<std::size_t>(rows * N));
    b.prob = frame.alloc<float>(static_cast<std::size_t>(rows * N));
    b.iters = frame.alloc<std::int32_t>(static_cast<std::size_t>(rows));
  }
  // A block copies its query rows before anything else and writes only its
  // own output rows, so out may be the queries.
  parallel_for(p.policy, n_blocks, [&](index_t bi, int worker) {
    const buffers& b = buf[worker];
    const index_t q0 = bi * blk, nb = std::min(blk, nq - q0);
    map Xi(b.xi, nb, d, stride(d)), Xn(b.xn, nb, d, stride(d)), S(b.s, nb, N, stride(N)), P(b.prob, nb, N, stride(N));
    Xi = cmap(queries.ptr(q0, 0), nb, d, stride(queries.stride(0)));
    std::fill(b.iters, b.iters + nb, 0);
    index_t moving = nb;
    for (index_t t = 1; t <= p.n_iter && moving > 0; ++t) {
      S.noalias() = (beta * Xi) * X.transpose();
      for (index_t r = 0; r < nb; ++r) {
        if (b.iters[r] != 0) continue;
        float* pr = b.prob + r * N;
        std::copy(b.s + r * N, b.s + (r + 1) * N, pr);
        float m = -std::numeric_limits<float>::infinity(), l = 0.f;
        simd::detail::online_softmax_update_kernel(simd::default_arch{}, pr, N, m, l);
        const float inv = 1.f / l;
        for (index_t j = 0; j < N; ++j) pr[j] *= inv;
      }
      const bool last = t == p.n_iter;
      if (last && sep) {  // xi_T is not needed: out = V^T p_T
        for (index_t r = 0; r < nb; ++r)
          if (b.iters[r] == 0) b.iters[r] = static_cast<std::int32_t>(t);
        break;
      }
      Xn.noalias() = P * X;
      for (index_t r = 0; r < nb; ++r) {
        if (b.iters[r] != 0) continue;
        float change = 0.f;
        for (index_t j = 0; j < d; ++j) change = std::max(change, std::abs(b.xn[r * d + j] - b.xi[r * d + j]));
        std::copy(b.xn + r * d, b.xn + (r + 1) * d, b.xi + r * d);
        if (last || change < p.tol || std::isnan(change)) {
          b.iters[r] = static_cast<std::int32_t>(t);
          --moving;
        }
      }
    }
    map O(out.ptr(q0, 0), nb, dv, stride(out.stride(0)));
    if (sep) O.noalias() = P * cmap(values.data(), N, dv, stride(values.stride(0)));
    else O = Xi;
    if (p.probs.data() != nullptr)
      for (index_t r = 0; r < nb; ++r) std::copy(b.prob + r * N, b.prob + (r + 1) * N, p.probs.ptr(q0 + r, 0));
    if (p.iterations.data() != nullptr)
      for (index_t r = 0; r < nb; ++r) *p.iterations.ptr(q0 + r) = b.iters[r];
  });
}

}  // namespace tokmix
TOKMIX_SIMD_AVX512_WARNINGS_ON
