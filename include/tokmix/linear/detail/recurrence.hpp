#pragma once
// What GLA, retention and the delta rule share: the d_k x d_v state per
// (sequence, kv head), the validation of q/k/v/o, cu_seqlens and gates, the
// work split over sequences x kv heads, and the small vector kernels the token
// loops and the chunk bookkeeping run. Kept in one place so the three mixers
// agree on shapes, error messages and threading, and a fix lands in all of them.
//
// Layout (docs/semantics.md, fla conventions): q [batch, seq, heads_q, d_k],
// k [batch, seq, heads_kv, d_k], v [batch, seq, heads_kv, d_v],
// o [batch, seq, heads_q, d_v], state S [n_states, heads_kv, d_k, d_v] with
// o_t = S_t^T (scale * q_t).
//
// Grouped heads (GQA / MQA): query head h reads kv head h / G, G = heads_q /
// heads_kv (MIXERS.md). The state is a function of k, v, the gates and beta
// only, never of q, so the G query heads of a group would hold G identical
// states: there is one state per kv head, updated once, and each query head
// only forms its own output from it. G = 1 is the ungrouped mixer, unchanged.
// ref: J. Ainslie, J. Lee-Thorp, M. de Jong, Y. Zemlyanskiy, F. Lebron,
//      S. Sanghai, "GQA: Training Generalized Multi-Query Transformer Models
//      from Multi-Head Checkpoints", EMNLP 2023.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>

#include "tokmix/core/third_party.hpp"
#include "tokmix/simd/arch.hpp"

#include "tokmix/core/error.hpp"
#include "tokmix/core/scratch.hpp"
#include "tokmix/core/tensor_view.hpp"
#include "tokmix/core/threading.hpp"
#include "tokmix/simd/exp.hpp"
#include "tokmix/simd/gemm.hpp"
#include "tokmix/simd/prefetch.hpp"

TOKMIX_SIMD_AVX512_WARNINGS_OFF
namespace tokmix {
namespace detail {

// S of every (sequence, kv head): initial state in, final state out. Fresh = zeros.
// Each mixer derives its own named type from it so a GLA state cannot be passed
// to the delta rule by accident.
class kv_state {
 public:
  kv_state() : kv_state(0, 0, 0, 0) {}
  kv_state(index_t batch, index_t heads, index_t key_dim, index_t value_dim) {
    require(batch >= 0, "state batch", ">= 0", batch);
    require(heads >= 0, "state heads", ">= 0", heads);
    require(key_dim >= 0, "state key_dim", ">= 0", key_dim);
    require(value_dim >= 0, "state value_dim", ">= 0", value_dim);
    s_.resize(batch, heads, key_dim, value_dim);
    reset();
  }

  index_t batch() const { return s_.dimension(0); }
  index_t heads() const { return s_.dimension(1); }
  index_t key_dim() const { return s_.dimension(2); }
  index_t value_dim() const { return s_.dimension(3); }

  void reset() { s_.setZero(); }

  //                                                  // [batch, heads, key_dim, value_dim]
  tensor_view<float, 4> S() { return as_view(s_); }
  tensor_view<const float, 4> S() const { return as_view(s_); }

 private:
  Eigen::Tensor<float, 4, Eigen::RowMajor> s_;
};

template <class T, int R>
inline bool rec_given(const tensor_view<T, R>& v) {
  return v.data() != nullptr;
}

// The inputs every mixer of this family takes.
struct rec_io {
  tensor_view<const float, 4> q;  // [batch, seq, heads_q, d_k]
  tensor_view<const float, 4> k;  // [batch, seq, heads_kv, d_k]
  tensor_view<const float, 4> v;  // [batch, seq, heads_kv, d_v]
  tensor_view<float, 4> o;        // [batch, seq, heads_q, d_v]

  index_t q_heads() const { return q.dim(2); }
  index_t kv_heads() const { return k.dim(2); }
  // Query heads per kv head (valid after rec_validate).
  index_t group() const { return kv_heads() > 0 ? q_heads() / kv_heads() : 1; }
};

// One unit of work: a whole sequence of one kv head (the recurrence is serial
// in t) and the query heads [hq0, hq0 + nq) of its group.
struct rec_item {
  index_t bi;      // batch index of the inputs
  index_t t0, t1;  // token range
  index_t h;       // kv head = state head
  index_t hq0;     // first query head of the group, h * nq
  index_t nq;      // query heads in the group
  float* S;        // [d_k, d_v] dense, this item's state
};

// Checks a packed batch's offsets against the inputs' batch and seq extents;
// returns the number of states the call needs (n_seqs, or batch without cu).
inline index_t rec_validate_cu(const tensor_view<const std::int32_t, 1>& cu, index_t batch, index_t seq) {
  if (!rec_given(cu)) return batch;
  require_layout("cu_seqlens", cu);
  require(batch == 1, "q batch (dim 0) with cu_seqlens", 1, batch);
  require(cu.dim(0) >= 1, "cu_seqlens size", ">= 1 (n_seqs + 1)", cu.dim(0));
  require(cu(0) == 0, "cu_seqlens[0]", 0, cu(0));
  for (index_t s = 1; s < cu.dim(0); ++s)
    if (cu(s) < cu(s - 1))
      throw argument_error("cu_seqlens", "non-decreasing offsets",
                           std::to_string(cu(s)) + " after " + std::to_string(cu(s - 1)) + " at " + std::to_string(s));
  require(cu(cu.dim(0) - 1) == seq, "cu_seqlens[n_seqs]", "seq = " + std::to_string(seq), cu(cu.dim(0) - 1));
  return cu.dim(0) - 1;
}

// Checks q/k/v/o, cu_seqlens and the state against each other; returns nothing
// and writes nothing. `chunked` says whether `chunk_size` is used by the call.
inline void rec_validate(const rec_io& io, const tensor_view<const std::int32_t, 1>& cu, const kv_state& state,
                         bool chunked, index_t chunk_size) {
  require_layout("q", io.q);
  require_layout("k", io.k);
  require_layout("v", io.v);
  require_layout("o", io.o);
  const index_t batch = io.q.dim(0), seq = io.q.dim(1), hq = io.q.dim(2), dk = io.q.dim(3);
  require_shape("k", io.k, {batch, seq, -1, dk});
  const index_t hkv = io.k.dim(2);
  // Every kv head needs a query head: the kernels read the group's first one.
  require(hkv >= 1 ? hq >= hkv && hq % hkv == 0 : hq == 0, "q heads (dim 2)",
          "a positive multiple of k heads (dim 2) = " + std::to_string(hkv), hq);
  require_shape("v", io.v, {batch, seq, hkv, -1});
  const index_t dv = io.v.dim(3);
  require_shape("o", io.o, {batch, seq, hq, dv});
  require(dk >= 1, "q head_dim (dim 3)", ">= 1", dk);
  require(dv >= 1, "v head_dim (dim 3)", ">= 1", dv);
  if (chunked) require(chunk_size >= 1, "chunk_size", ">= 1", chunk_size);
  const index_t n_states = rec_validate_cu(cu, batch, seq);
  require(state.batch() == n_states, "state batch", n_states, state.batch());
  require(state.heads() == hkv, "state heads", "k heads = " + std::to_string(hkv), state.heads());
  require(state.key_dim() == dk, "state key_dim", dk, state.key_dim());
  require(state.value_dim() == dv, "state value_dim", dv, state.value_dim());
}

namespace sx = ::tokmix::simd;

// True iff every x[i] is in [lo, hi] (NaN fails both comparisons).
template <class Arch>
inline bool rec_all_in_range(Arch, const float* x, index_t n, float lo, float hi) {
  using fb = sx::fbatch<Arch>;
  constexpr index_t w = sx::lanes<Arch>;
  const fb vl(lo), vh(hi);
  auto ok = fb(0.f) == fb(0.f);
  index_t i = 0;
  for (; i + 4 * w <= n; i += 4 * w) {
    const fb a = fb::load_unaligned(x + i), b = fb::load_unaligned(x + i + w);
    const fb c = fb::load_unaligned(x + i + 2 * w), d = fb::load_unaligned(x + i + 3 * w);
    ok = ok & (a >= vl) & (a <= vh) & (b >= vl) & (b <= vh) & (c >= vl) & (c <= vh) & (d >= vl) & (d <= vh);
  }
  for (; i + w <= n; i += w) {
    const fb a = fb::load_unaligned(x + i);
    ok = ok & (a >= vl) & (a <= vh);
  }
  bool all = xsimd::all(ok);
  for (; i < n; ++i) all &= (x[i] >= lo) & (x[i] <= hi);
  return all;
}

// A gate/beta tensor: layout, shape and every value finite and in [lo, hi].
// Rows along the last (contiguous) dim are checked with a branch-free loop the
// compiler vectorises; a full pass costs far less than the mixer itself.
template <int R>
inline void rec_require_values(const char* name, const tensor_view<const float, R>& v, float lo, float hi) {
  const index_t n = v.size();
  if (n == 0) return;
  // A dense tensor is one row: the check then runs as one long vector loop.
  bool dense = true;
  for (index_t d = R - 1, s = 1; d >= 0; s *= v.dim(d), --d) dense &= v.dim(d) == 1 || v.stride(d) == s;
  const index_t inner = dense ? n : v.dim(R - 1);
  const index_t rows = n / inner;
  index_t idx[R] = {};
  for (index_t r = 0; r < rows; ++r) {
    index_t off = 0;
    for (int d = 0; d < R - 1; ++d) off += idx[d] * v.stride(d);
    const float* p = v.data() + off;
    if (!rec_all_in_range(sx::default_arch{}, p, inner, lo, hi)) {
      for (index_t i = 0; i < inner; ++i)
        if (!(p[i] >= lo && p[i] <= hi))
          throw argument_error(name, "finite values in [" + to_text(lo) + ", " + to_text(hi) + "]",
                               to_text(p[i]) + " at flat index " + std::to_string(r * inner + i));
    }
    for (int d = R - 2; d >= 0; --d) {
      if (++idx[d] < v.dim(d)) break;
      idx[d] = 0;
    }
  }
}

// q/k/v given as one token per batch entry [batch, heads, d] seen as [batch, 1, heads, d].
template <class T, int R>
inline tensor_view<T, R + 1> rec_one_token(const tensor_view<T, R>& v) {
  typename tensor_view<T, R + 1>::shape_type d{}, st{};
  d[0] = v.dim(0);
  st[0] = v.stride(0);
  d[1] = 1;
  st[1] = v.stride(0);
  for (int i = 1; i < R; ++i) {
    d[i + 1] = v.dim(i);
    st[i + 1] = v.stride(i);
  }
  return tensor_view<T, R + 1>(v.data(), d, st);
}

inline float rec_scale(float scale, index_t dk) {
  return std::isnan(scale) ? static_cast<float>(1.0 / std::sqrt(static_cast<double>(dk))) : scale;
}

inline void rec_require_scale(float scale) {
  require(std::isnan(scale) || std::isfinite(scale), "scale", "finite (or NaN for 1/sqrt(d_k))", scale);
}

// Runs body(item, worker) over every (sequence, kv head), the sequence cut
// into windows of `window` tokens, over the params' policy; the body serves
// the group's query heads itself, so the state is updated once per kv head.
// A work item is one sequence and a range of kv heads (as many ranges as
// workers), walked window by window with the range's heads inside: a window's
// rows of all heads are neighbours in memory ([seq, heads, d] layout), so they
// are read while their pages and lines are still cached, instead of every head
// striding through the whole sequence on its own (a TLB miss per row at long
// L). Each head's arithmetic depends only on its own window boundaries
// (multiples of `window` from the sequence start), never on the split, so
// results are the same for every thread count. Items never share the state
// blocks they write. While one head works on a window, the next item's rows of
// q, o (all its query heads), k, v (and of `gates`, per-key gates shaped like
// k, when given) are requested: with heads interleaved, each row starts a new
// page, out of the hardware prefetchers' reach.
template <class Body>
inline void rec_for_each(const rec_io& io, const tensor_view<const std::int32_t, 1>& cu, kv_state& state,
                         const exec_policy& policy, index_t window, Body&& body,
                         const tensor_view<const float, 4>& gates = {}) {
  const index_t batch = io.q.dim(0), seq = io.q.dim(1), heads = io.kv_heads(), G = io.group();
  const bool varlen = rec_given(cu);
  const index_t n_seqs = varlen ? cu.dim(0) - 1 : batch;
  if (n_seqs == 0 || seq == 0 || heads == 0) return;
  const index_t block = state.key_dim() * state.value_dim();
  const index_t workers = policy.mode() == exec_policy::kind::serial ? 1 : std::max(1, policy.workers());
  const index_t ranges = std::min(heads, workers);
  float* base = state.S().data();
  const bool strided = io.q_heads() > 1;
  // Rows [t, t + rows) of heads [h, h + n) of x: one request per row when the
  // heads sit side by side in a token, else one per head and row.
  auto fetch = [](const auto& x, index_t bi, index_t t, index_t rows, index_t h, index_t n, bool for_write) {
    if (n == 1 || x.stride(2) == x.dim(3)) {
      simd::prefetch_rows(x.ptr(bi, t, h, 0), x.stride(1), rows, n * x.dim(3), for_write);
    } else {
      for (index_t j = 0; j < n; ++j) simd::prefetch_rows(x.ptr(bi, t, h + j, 0), x.stride(1), rows, x.dim(3), for_write);
    }
  };
  parallel_for(policy, n_seqs * ranges, [&](index_t i, int worker) {
    const index_t s = i / ranges, rg = i % ranges;
    const index_t h0 = rg * heads / ranges, h1 = (rg + 1) * heads / ranges;
    const index_t t0 = varlen ? cu(s) : 0, t1 = varlen ? cu(s + 1) : seq;
    rec_item it;
    it.bi = varlen ? 0 : s;
    it.nq = G;
    for (index_t w0 = t0; w0 < t1; w0 += window) {
      it.t0 = w0;
      it.t1 = std::min(t1, w0 + window);
      for (index_t h = h0; h < h1; ++h) {
        if (strided) {
          const index_t nh = h + 1 < h1 ? h + 1 : h0, nw = h + 1 < h1 ? w0 : w0 + window;
          if (nw < t1) {
            const index_t rows = std::min(window, t1 - nw);
            fetch(io.q, it.bi, nw, rows, nh * G, G, false);
            if (io.k.data() != io.q.data()) fetch(io.k, it.bi, nw, rows, nh, 1, false);
            if (io.v.data() != io.q.data()) fetch(io.v, it.bi, nw, rows, nh, 1, false);
            if (rec_given(gates)) fetch(gates, it.bi, nw, rows, nh, 1, false);
            fetch(io.o, it.bi, nw, rows, nh * G, G, true);
          }
        }
        it.h = h;
        it.hq0 = h * G;
        it.S = base + (s * heads + h) * block;
        body(it, worker);
      }
    }
  });
}

// Tokens per window of the token loops: a head's state (d_k x d_v) is reloaded
// once per window, a small cost next to 64 tokens of updates.
constexpr index_t rec_token_window = 64;

// ---- small vector kernels -------------------------------------------------------

// y[i] = a * x[i] * e[i] (e may be null: y = a * x).
template <class Arch>
inline void rec_scale_mul(Arch, float a, const float* x, const float* e, float* y, index_t n) {
  using fb = sx::fbatch<Arch>;
  constexpr index_t w = sx::lanes<Arch>;
  const fb va(a);
  index_t i = 0;
  if (e) {
    for (; i + w <= n; i += w) (va * fb::load_unaligned(x + i) * fb::load_unaligned(e + i)).store_unaligned(y + i);
    for (; i < n; ++i) y[i] = a * x[i] * e[i];
  } else {
    for (; i + w <= n; i += w) (va * fb::load_unaligned(x + i)).store_unaligned(y + i);
    for (; i < n; ++i) y[i] = a * x[i];
  }
}

// y[i] = exp(sign * (x[i] - x0)), the relative-gate factors of a chunk.
template <class Arch>
inline void rec_exp_rel(Arch, const float* x, float x0, float sign, float* y, index_t n) {
  using fb = sx::fbatch<Arch>;
  constexpr index_t w = sx::lanes<Arch>;
  const fb vs(sign), v0(x0);
  index_t i = 0;
  for (; i + w <= n; i += w) sx::exp_batch<Arch>(vs * (fb::load_unaligned(x + i) - v0)).store_unaligned(y + i);
  if (i < n) {
    const fb r = sx::exp_batch<Arch>(vs * (sx::detail::load_partial<Arch>(x + i, n - i, x0) - v0));
    sx::detail::store_partial<Arch>(y + i, r, n - i);
  }
}

// x * a / sqrt(sum x^2 + eps) (fla l2norm: rsqrt(sum x^2 + eps)), or a * x when !normalise.
template <class Arch>
inline void rec_normalise(Arch arch, const float* x, float* y, index_t n, bool normalise, float eps, float a) {
  if (normalise) {
    using fb = sx::fbatch<Arch>;
    constexpr index_t w = sx::lanes<Arch>;
    fb acc(0.f);
    index_t i = 0;
    for (; i + w <= n; i += w) {
      const fb v = fb::load_unaligned(x + i);
      acc = xsimd::fma(v, v, acc);
    }
    float ss = xsimd::hadd(acc);
    for (; i < n; ++i) ss += x[i] * x[i];
    a = a / std::sqrt(ss + eps);
  }
  rec_scale_mul(arch, a, x, nullptr, y, n);
}

// Row i of the c x c matrix m (leading dim ld): columns j > i become 0 and, if
// decay is given, column j <= i is multiplied by decay_row_i[j].
inline void rec_causal_mask(float* m, index_t ld, index_t c, const float* decay, index_t decay_ld) {
  for (index_t i = 0; i < c; ++i) {
    float* r = m + i * ld;
    if (decay) {
      const float* dr = decay + i * decay_ld;
      for (index_t j = 0; j <= i; ++j) r[j] *= dr[j];
    }
    for (index_t j = i + 1; j < c; ++j) r[j] = 0.f;
  }
}

// S[d, :] *= a[d] for a d_k x d_v state (rows contiguous, ld = dv).
template <class Arch>
inline void rec_scale_state_rows(Arch, float* S, index_t dk, index_t dv, const float* a) {
  using fb = sx::fbatch<Arch>;
  constexpr index_t w = sx::lanes<Arch>;
  for (index_t d = 0; d < dk; ++d) {
    float* r = S + d * dv;
    const fb va(a[d]);
    index_t j = 0;
    for (; j + w <= dv; j += w) (va * fb::load_unaligned(r + j)).store_unaligned(r + j);
    for (; j < dv; ++j) r[j] *= a[d];
  }
}

// The token-loop update of GLA and retention on one state, column block by
// column block so the output accumulators and v stay in registers while the
// d_k rows of S stream through L1:
//   S[d, :] = a[d] S[d, :] + k[d] v ;  o = sum_d qs[d] S[d, :]
template <class Arch, int NB>
inline void rec_decay_cols(const float* a, const float* k, const float* v, const float* qs, float* S, index_t dk,
                           index_t dv, index_t j0, float* o) {
  using fb = sx::fbatch<Arch>;
  constexpr index_t w = sx::lanes<Arch>;
  fb vv[NB], acc[NB];
  for (int b = 0; b < NB; ++b) {
    vv[b] = fb::load_unaligned(v + j0 + b * w);
    acc[b] = fb(0.f);
  }
  for (index_t d = 0; d < dk; ++d) {
    float* r = S + d * dv + j0;
    const fb va(a[d]), vk(k[d]), vq(qs[d]);
    for (int b = 0; b < NB; ++b) {
      const fb s = xsimd::fma(vk, vv[b], va * fb::load_unaligned(r + b * w));
      s.store_unaligned(r + b * w);
      acc[b] = xsimd::fma(vq, s, acc[b]);
    }
  }
  for (int b = 0; b < NB; ++b) acc[b].store_unaligned(o + j0 + b * w);
}

template <class Arch>
inline void rec_decay_update(Arch, const float* a, const float* k, const float* v, const float* qs, float* S,
                             index_t dk, index_t dv, float* o) {
  constexpr index_t w = sx::lanes<Arch>;
  index_t j = 0;
  for (; j + 4 * w <= dv; j += 4 * w) rec_decay_cols<Arch, 4>(a, k, v, qs, S, dk, dv, j, o);
  for (; j + w <= dv; j += w) rec_decay_cols<Arch, 1>(a, k, v, qs, S, dk, dv, j, o);
  for (; j < dv; ++j) {
    float acc = 0.f;
    for (index_t d = 0; d < dk; ++d) {
      float& s = S[d * dv + j];
      s = a[d] * s + k[d] * v[j];
      acc += qs[d] * s;
    }
    o[j] = acc;
  }
}

// Token t's outputs of the group's query heads after the first, from the
// state the fused update just left: o_h = S^T (scale * q_h), q_h optionally
// L2-normalised first (the delta rule). qs: d_k floats of scratch.
template <class Arch>
inline void rec_group_outputs(Arch arch, const rec_io& io, const rec_item& it, index_t t, float* qs, bool normalise,
                              float eps, float scale) {
  const index_t dk = io.q.dim(3), dv = io.v.dim(3);
  for (index_t hq = it.hq0 + 1; hq < it.hq0 + it.nq; ++hq) {
    rec_normalise(arch, io.q.ptr(it.bi, t, hq, 0), qs, dk, normalise, eps, scale);
    // o = qs^T S: the one-row product (simd/gemm's row stream).
    simd::detail::gemm_dispatch<simd::detail::gemm_op::nn, Arch>(1, dv, dk, 1.f, qs, dk, it.S, dv, 0.f,
                                                                 io.o.ptr(it.bi, t, hq, 0), dv);
  }
}

// The delta rule's token update on one column block (columns are independent):
//   S *= alpha ; u = beta (v - S^T k) ; S += k u^T ; o = S^T qs
template <class Arch, int NB>
inline void rec_delta_cols(float alpha, float beta, const float* k, const float* v, const float* qs, float* S,
                           index_t dk, index_t dv, index_t j0, float* o) {
  using fb = sx::fbatch<Arch>;
  constexpr index_t w = sx::lanes<Arch>;
  fb acc[NB];
  for (int b = 0; b < NB; ++b) acc[b] = fb(0.f);
  const fb va(alpha);
  for (index_t d = 0; d < dk; ++d) {
    float* r = S + d * dv + j0;
    const fb vk(k[d]);
    for (int b = 0; b < NB; ++b) {
      fb s = fb::load_unaligned(r + b * w);
      if (alpha != 1.f) {
        s = va * s;
        s.store_unaligned(r + b * w);
      }
      acc[b] = xsimd::fma(vk, s, acc[b]);
    }
  }
  fb u[NB];
  const fb vb(beta);
  for (int b = 0; b < NB; ++b) {
    u[b] = vb * (fb::load_unaligned(v + j0 + b * w) - acc[b]);
    acc[b] = fb(0.f);
  }
  for (index_t d = 0; d < dk; ++d) {
    float* r = S + d * dv + j0;
    const fb vk(k[d]), vq(qs[d]);
    for (int b = 0; b < NB; ++b) {
      const fb s = xsimd::fma(vk, u[b], fb::load_unaligned(r + b * w));
      s.store_unaligned(r + b * w);
      acc[b] = xsimd::fma(vq, s, acc[b]);
    }
  }
  for (int b = 0; b < NB; ++b) acc[b].store_unaligned(o + j0 + b * w);
}

template <class Arch>
inline void rec_delta_update(Arch, float alpha, float beta, const float* k, const float* v, const float* qs, float* S,
                             index_t dk, index_t dv, float* o) {
  constexpr index_t w = sx::lanes<Arch>;
  index_t j = 0;
  for (; j + 4 * w <= dv; j += 4 * w) rec_delta_cols<Arch, 4>(alpha, beta, k, v, qs, S, dk, dv, j, o);
  for (; j + w <= dv; j += w) rec_delta_cols<Arch, 1>(alpha, beta, k, v, qs, S, dk, dv, j, o);
  for (; j < dv; ++j) {
    float kS = 0.f;
    for (index_t d = 0; d < dk; ++d) {
      float& s = S[d * dv + j];
      if (alpha != 1.f) s *= alpha;
      kS += k[d] * s;
    }
    const float u = beta * (v[j] - kS);
    float acc = 0.f;
    for (index_t d = 0; d < dk; ++d) {
      float& s = S[d * dv + j];
      s += k[d] * u;
      acc += qs[d] * s;
    }
    o[j] = acc;
  }
}

// Largest exponent a chunk may hold in its relative cumulative gates: the
// factorised intra-chunk products multiply by exp(+span) and exp(-span), which
// must stay far from float overflow (e^88) and from subnormals (e^-87).
constexpr float rec_max_span = 40.f;

}  // namespace detail
}  // namespace tokmix
TOKMIX_SIMD_AVX512_WARNINGS_ON
