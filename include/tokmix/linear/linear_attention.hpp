#pragma once
// Linear attention with a feature map phi (feature_maps.hpp): causal chunked
// prefill and one-token step on one state, and the non-causal form. CPU ports
// usually run the causal form token by token (a rank-1 state update and a
// GEMV per token, memory-bound on the d x d state); the chunked form turns
// the same arithmetic into C x C and C x d matrix products on the tile GEMM.
//
// ref: Katharopoulos et al. 2020, "Transformers are RNNs: Fast Autoregressive
//      Transformers with Linear Attention" (ICML), eqs. 4-6 and 16-20;
//      chunkwise form as in Hua et al. 2022, "Transformer Quality in Linear
//      Time" (FLASH, sec. 3.3) and flash-linear-attention's chunk kernels.
//
// Semantics (docs/semantics.md). Per kv head, with phi applied to rows:
//   S_t = S_{t-1} + phi(k_t) v_t^T      [F, dv]
//   z_t = z_{t-1} + phi(k_t)            [F]
//   o_t = phi(q_t)^T S_t / (phi(q_t)^T z_t + eps)   (normalize)
//   o_t = phi(q_t)^T S_t                            (otherwise)
// Non-causal: S and z sum over all keys. A row whose denominator is exactly 0
// (no key weight at all) outputs zeros, never NaN.
//
// Grouped heads: query head h reads the state of kv head h / (Hq / Hkv); the
// state exists once per kv head (phi(k) v^T does not depend on the query).
//
// Chunked prefill, chunk of C tokens (S0/z0 the state before the chunk,
// A = tril(phi(Q) phi(K)^T), diagonal included):
//   O   = phi(Q) S0 + A V            (written straight into o)
//   den = phi(Q) z0 + row sums of A
//   S  += phi(K)^T V,  z += column sums of phi(K).
// z is kept apart from S (not as a ones column of V) so the products keep
// widths of dv: a 65-wide tile wastes a third of a 16-lane micro-kernel.
//
// Stabilised positive random features (FAVOR+ with feature_map::stabilize):
// exp(w.x' - |x'|^2/2) overflows or flushes to 0 for large |x|. Keys are
// computed as exp(logit - c) with c the running maximum of every key logit
// seen so far (per batch and kv head); when a chunk raises the maximum, S and
// z are rescaled by exp(c_old - c_new) (as an online softmax does). The state
// stores S and z divided by exp(c), with c in key_shift(). Queries subtract
// their own row maximum m_q. In the normalised output both factors multiply
// numerator and denominator and cancel: o = phi_q^T S / (phi_q^T z + eps')
// with eps' = eps * exp(m_q + c), i.e. eps acts on the stabilised
// denominator, as in the Performer reference code. Unnormalised outputs do not
// subtract m_q and are multiplied back by exp(c), so they are the exact
// phi(q)^T S.

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "tokmix/core/third_party.hpp"

#include "tokmix/core/error.hpp"
#include "tokmix/core/scratch.hpp"
#include "tokmix/core/tensor_view.hpp"
#include "tokmix/core/threading.hpp"
#include "tokmix/linear/feature_maps.hpp"
#include "tokmix/simd/arch.hpp"
#include "tokmix/simd/dot.hpp"
#include "tokmix/simd/gemm.hpp"
#include "tokmix/simd/reduce.hpp"

TOKMIX_SIMD_AVX512_WARNINGS_OFF
namespace tokmix {

enum class linear_attention_algorithm {
  chunked,    // C x C intra-chunk products + carried state (the fast prefill)
  recurrent,  // token by token: rank-1 state update and a GEMV (what decode does)
};

struct linear_attention_params {
  feature_map phi;            // default elu + 1
  bool normalize = true;
  float eps = 1e-6f;          // added to the normaliser; finite, >= 0
  index_t chunk_size = 64;    // >= 1; need not divide the sequence length
  linear_attention_algorithm algorithm = linear_attention_algorithm::chunked;
  exec_policy policy;         // threads over batch x kv heads
};

// S, z (and the stabiliser's key_shift) of every batch entry and kv head.
// Initial state in, final state out; fresh = zeros.
class linear_attention_state {
 public:
  linear_attention_state() : linear_attention_state(0, 0, 0, 0) {}
  linear_attention_state(index_t batch, index_t kv_heads, index_t feature_dim, index_t v_dim) {
    require(batch >= 0, "linear_attention_state batch", ">= 0", batch);
    require(kv_heads >= 0, "linear_attention_state kv_heads", ">= 0", kv_heads);
    require(feature_dim >= 0, "linear_attention_state feature_dim", ">= 0", feature_dim);
    require(v_dim >= 0, "linear_attention_state v_dim", ">= 0", v_dim);
    s_.resize(batch, kv_heads, feature_dim, v_dim);
    z_.resize(batch, kv_heads, feature_dim);
    shift_.resize(batch, kv_heads);
    reset();
  }

  index_t batch() const { return s_.dimension(0); }
  index_t kv_heads() const { return s_.dimension(1); }
  index_t feature_dim() const { return s_.dimension(2); }
  index_t v_dim() const { return s_.dimension(3); }

  void reset() {
    s_.setZero();
    z_.setZero();
    shift_.setZero();
  }

  //                                                  // [batch, kv_heads, feature_dim, v_dim]
  tensor_view<float, 4> S() { return as_view(s_); }
  tensor_view<const float, 4> S() const { return as_view(s_); }
  //                                                  // [batch, kv_heads, feature_dim]
  tensor_view<float, 3> z() { return as_view(z_); }
  tensor_view<const float, 3> z() const { return as_view(z_); }
  // log of the factor S and z are stored divided by (0 unless stabilised
  // positive random features are used).              // [batch, kv_heads]
  tensor_view<float, 2> key_shift() { return as_view(shift_); }
  tensor_view<const float, 2> key_shift() const { return as_view(shift_); }

 private:
  Eigen::Tensor<float, 4, Eigen::RowMajor> s_;
  Eigen::Tensor<float, 3, Eigen::RowMajor> z_;
  Eigen::Tensor<float, 2, Eigen::RowMajor> shift_;
};

// A state sized for these inputs: kv heads and dims from k and v.
inline linear_attention_state make_linear_attention_state(index_t batch, index_t kv_heads, index_t head_dim,
                                                          index_t v_dim, const feature_map& phi) {
  feature_map_validate(phi, head_dim);
  return linear_attention_state(batch, kv_heads, feature_map_dim(phi, head_dim), v_dim);
}

namespace detail {

struct linear_attention_args {
  tensor_view<const float, 4> q, k, v;  // [B, Lq, Hq, dk], [B, Lk, Hkv, dk], [B, Lk, Hkv, dv]
  tensor_view<float, 4> o;              // [B, Lq, Hq, dv]
  linear_attention_state* state;        // null: non-causal
  const linear_attention_params* p;
  bool recurrent;
};

inline void linear_attention_validate(const linear_attention_args& a) {
  require_layout("q", a.q);
  require_layout("k", a.k);
  require_layout("v", a.v);
  require_layout("o", a.o);
  const index_t B = a.q.dim(0), Lq = a.q.dim(1), Hq = a.q.dim(2), dk = a.q.dim(3);
  const index_t Lk = a.k.dim(1), Hkv = a.k.dim(2), dv = a.v.dim(3);
  require(dk >= 1, "q head_dim (dim 3)", ">= 1", dk);
  require_shape("k", a.k, {B, a.state ? Lq : -1, -1, dk});
  require(Hkv >= 1, "k heads (dim 2)", ">= 1", Hkv);
  require(Hq % Hkv == 0, "k heads (dim 2)", "a divisor of the query heads " + std::to_string(Hq), Hkv);
  require_shape("v", a.v, {B, Lk, Hkv, -1});
  require_shape("o", a.o, {B, Lq, Hq, dv});
  // Rows of one head are read as GEMM operands: consecutive tokens may not overlap.
  const struct {
    const char* name;
    index_t len, stride, width;
  } rows[] = {{"q seq stride", Lq, a.q.stride(1), dk},
              {"k seq stride", Lk, a.k.stride(1), dk},
              {"v seq stride", Lk, a.v.stride(1), dv},
              {"o seq stride", Lq, a.o.stride(1), dv}};
  for (const auto& r : rows)
    if (r.len > 1) require(r.stride >= r.width, r.name, ">= the row width " + std::to_string(r.width), r.stride);
  const linear_attention_params& p = *a.p;
  feature_map_validate(p.phi, dk);
  require(p.chunk_size >= 1, "chunk_size", ">= 1", p.chunk_size);
  require(std::isfinite(p.eps) && p.eps >= 0, "eps", "a finite value >= 0", p.eps);
  if (a.state) {
    const index_t F = feature_map_dim(p.phi, dk);
    const linear_attention_state& s = *a.state;
    require(s.batch() == B, "state batch", B, s.batch());
    require(s.kv_heads() == Hkv, "state kv_heads", Hkv, s.kv_heads());
    require(s.feature_dim() == F, "state feature_dim",
            std::to_string(F) + " (" + feature_map_name(p.phi.kind) + " of head_dim " + std::to_string(dk) + ")",
            s.feature_dim());
    require(s.v_dim() == dv, "state v_dim", dv, s.v_dim());
    const auto c = s.key_shift();
    for (index_t b = 0; b < B; ++b)
      for (index_t g = 0; g < Hkv; ++g)
        if (!std::isfinite(c(b, g)))
          throw argument_error("state key_shift", "finite values",
                               detail::to_text(c(b, g)) + " at [" + std::to_string(b) + ", " + std::to_string(g) + "]");
  }
}

inline index_t ld_rows(index_t stride, index_t width) { return std::max(stride, std::max<index_t>(width, 1)); }

// One (batch, kv head): every query head of its group, all chunks.
class linear_attention_item {
 public:
  linear_attention_item(const linear_attention_args& a, index_t b, index_t g) : a_(a), p_(*a.p), b_(b), g_(g) {
    dk_ = a.q.dim(3);
    dv_ = a.v.dim(3);
    F_ = feature_map_dim(p_.phi, dk_);
    group_ = a.q.dim(2) / a.k.dim(2);
    C_ = chunk(a);
    stab_ = positive_random(p_.phi) && p_.phi.stabilize;
    if (stab_) inv_sqrt_m_ = 1.f / std::sqrt(static_cast<float>(p_.phi.random->n_features()));
    ldk_ = ld_rows(a.k.stride(1), dk_);
    ldv_ = ld_rows(a.v.stride(1), dv_);
    ldq_ = ld_rows(a.q.stride(1), dk_);
    ldo_ = ld_rows(a.o.stride(1), dv_);
  }

  static index_t chunk(const linear_attention_args& a) {
    const index_t L = std::max(a.q.dim(1), a.k.dim(1));
    return a.recurrent ? 1 : std::max<index_t>(1, std::min(a.p->chunk_size, L));
  }

  static std::size_t scratch_bytes(const linear_attention_args& a) {
    const index_t dk = a.q.dim(3), dv = a.v.dim(3), F = feature_map_dim(a.p->phi, dk), C = chunk(a);
    using sf = scratch_frame;
    // S and z only for the non-causal form; the causal form works in the state.
    return sf::bytes_for<float>(F * dv) + sf::bytes_for<float>(F) + 2 * sf::bytes_for<float>(C * F) +
           sf::bytes_for<float>(C * C) + sf::bytes_for<float>(C) + sf::bytes_for<float>(dk);
  }

  // Buffers from the caller's frame, state loaded.
  void begin(scratch_frame& frame) {
    if (a_.state) {
      // The state's own storage (dense [F, dv] per batch and kv head): a decode
      // step must not copy S in and out.
      s_ = a_.state->S().ptr(b_, g_);
      z_ = a_.state->z().ptr(b_, g_);
    } else {
      s_ = frame.alloc<float>(F_ * dv_);
      z_ = frame.alloc<float>(F_);
    }
    phik_ = frame.alloc<float>(C_ * F_);
    phiq_ = frame.alloc<float>(C_ * F_);
    att_ = frame.alloc<float>(C_ * C_);
    den_ = frame.alloc<float>(C_);
    tmp_ = frame.alloc<float>(dk_);
    load_state();
  }

  // Causal: tokens [t0, t0 + n) (n <= C) of every query head of the group.
  void causal_chunk(index_t t0, index_t n) {
    keys(t0, n);
    if (a_.recurrent) {
      // S += phi(k_t) v_t^T, z += phi(k_t); then read with the query (inclusive).
      const float* vr = a_.v.ptr(b_, t0, g_);
      for (index_t f = 0; f < F_; ++f) simd::detail::axpy_kernel(simd::default_arch{}, phik_[f], vr, s_ + f * dv_, dv_);
      simd::detail::axpy_kernel(simd::default_arch{}, 1.f, phik_, z_, F_);
      for (index_t r = 0; r < group_; ++r) queries(t0, 1, r, false);
    } else {
      for (index_t r = 0; r < group_; ++r) queries(t0, n, r, true);
      update_state(t0, n);
    }
  }

  void finish() {
    if (a_.state) store_state();
  }

  // Non-causal: all keys into S and z, then every query.
  void non_causal() {
    const index_t Lk = a_.k.dim(1), Lq = a_.q.dim(1);
    for (index_t t0 = 0; t0 < Lk; t0 += C_) {
      const index_t n = std::min(C_, Lk - t0);
      keys(t0, n);
      update_state(t0, n);
    }
    for (index_t t0 = 0; t0 < Lq; t0 += C_)
      for (index_t r = 0; r < group_; ++r) queries(t0, std::min(C_, Lq - t0), r, false);
  }

 private:
  void load_state() {
    empty_ = true;
    shift_ = 0.f;
    if (!a_.state) {
      std::fill(s_, s_ + F_ * dv_, 0.f);
      std::fill(z_, z_ + F_, 0.f);
      return;
    }
    shift_ = a_.state->key_shift()(b_, g_);
    // Only the stabiliser needs to know whether the state is still empty
    // (then the first key maximum sets the shift, which may be negative).
    if (stab_) {
      for (index_t i = 0; i < F_ * dv_ && empty_; ++i) empty_ = s_[i] == 0.f;
      for (index_t i = 0; i < F_ && empty_; ++i) empty_ = z_[i] == 0.f;
    } else {
      empty_ = false;
    }
  }

  void store_state() { a_.state->key_shift()(b_, g_) = shift_; }

  // S += phi(K)^T V, z += column sums of phi(K), for the keys last loaded.
  void update_state(index_t t0, index_t n) {
    simd::gemm_tn(F_, dv_, n, 1.f, phik_, F_, a_.v.ptr(b_, t0, g_), ldv_, 1.f, s_, dv_);
    for (index_t i = 0; i < n; ++i) simd::detail::axpy_kernel(simd::default_arch{}, 1.f, phik_ + i * F_, z_, F_);
  }

  // phi(K) of tokens [t0, t0 + n); moves the key shift if needed.
  void keys(index_t t0, index_t n) {
    const float* kp = a_.k.ptr(b_, t0, g_);
    if (stab_) {
      positive_logits(p_.phi, dk_, kp, ldk_, n, phik_, F_);
      const float mx = row_max(phik_, n * F_);
      const float c_new = empty_ ? mx : std::max(shift_, mx);
      if (!empty_ && c_new > shift_) {
        const float r = std::exp(shift_ - c_new);
        simd::detail::scale_kernel(simd::default_arch{}, r, s_, F_ * dv_);
        simd::detail::scale_kernel(simd::default_arch{}, r, z_, F_);
      }
      shift_ = c_new;
      for (index_t i = 0; i < n; ++i) exp_shifted_row(simd::default_arch{}, phik_ + i * F_, F_, shift_, inv_sqrt_m_);
    } else {
      feature_rows(p_.phi, dk_, kp, ldk_, n, phik_, F_, tmp_);
    }
    if (n > 0) empty_ = false;
  }

  // Outputs of query head g*group + r for tokens [t0, t0 + n), written in
  // place into o and then scaled. causal_chunk: add the intra-chunk masked
  // product against the keys last loaded.
  void queries(index_t t0, index_t n, index_t r, bool causal_chunk) {
    const index_t h = g_ * group_ + r;
    const float* qp = a_.q.ptr(b_, t0, h);
    float* op = a_.o.ptr(b_, t0, h);
    const bool norm = p_.normalize;
    if (stab_) {
      positive_logits(p_.phi, dk_, qp, ldq_, n, phiq_, F_);
      for (index_t i = 0; i < n; ++i) {
        float* row = phiq_ + i * F_;
        exp_shifted_row(simd::default_arch{}, row, F_, norm ? row_max(row, F_) : 0.f, inv_sqrt_m_);
      }
    } else {
      feature_rows(p_.phi, dk_, qp, ldq_, n, phiq_, F_, tmp_);
    }
    const auto arch = simd::default_arch{};
    if (n == 1) {
      // GEMV: rows of S weighted by phi(q) (also the recurrent step's read).
      std::fill(op, op + dv_, 0.f);
      for (index_t f = 0; f < F_; ++f) simd::detail::axpy_kernel(arch, phiq_[f], s_ + f * dv_, op, dv_);
      if (norm) den_[0] = simd::detail::dot_kernel(arch, phiq_, z_, F_);
      if (causal_chunk) {
        const float w = simd::detail::dot_kernel(arch, phiq_, phik_, F_);
        simd::detail::axpy_kernel(arch, w, a_.v.ptr(b_, t0, g_), op, dv_);
        den_[0] += w;
      }
    } else {
      simd::gemm_nn(n, dv_, F_, 1.f, phiq_, F_, s_, dv_, 0.f, op, ldo_);
      if (norm) simd::gemm_nn(n, 1, F_, 1.f, phiq_, F_, z_, 1, 0.f, den_, 1);
      if (causal_chunk) {
        simd::gemm_nt(n, n, F_, 1.f, phiq_, F_, phik_, F_, 0.f, att_, n);
        for (index_t i = 0; i < n; ++i) {
          float* ai = att_ + i * n;
          std::fill(ai + i + 1, ai + n, 0.f);
          if (norm) den_[i] += simd::detail::reduce_sum_kernel(arch, ai, i + 1);
        }
        simd::gemm_nn(n, dv_, n, 1.f, att_, n, a_.v.ptr(b_, t0, g_), ldv_, 1.f, op, ldo_);
      }
    }
    const float out_mult = !norm && stab_ ? std::exp(shift_) : 1.f;
    for (index_t i = 0; i < n; ++i) {
      float mult = out_mult;
      if (norm) {
        const float den = den_[i] + p_.eps;
        mult = den == 0.f ? 0.f : 1.f / den;
      }
      if (mult != 1.f) simd::detail::scale_kernel(arch, mult, op + i * ldo_, dv_);
    }
  }

  const linear_attention_args& a_;
  const linear_attention_params& p_;
  index_t b_, g_;
  index_t dk_ = 0, dv_ = 0, F_ = 0, group_ = 1, C_ = 1, ldk_ = 1, ldv_ = 1, ldq_ = 1, ldo_ = 1;
  bool stab_ = false, empty_ = true;
  float inv_sqrt_m_ = 1.f, shift_ = 0.f;
  float *s_ = nullptr, *z_ = nullptr, *phik_ = nullptr, *phiq_ = nullptr, *att_ = nullptr, *den_ = nullptr,
        *tmp_ = nullptr;
};

inline void linear_attention_run(const linear_attention_args& a) {
  linear_attention_validate(a);
  const index_t B = a.q.dim(0), Hkv = a.k.dim(2);
  if (B == 0 || a.q.dim(2) == 0) return;
  if (a.state && a.q.dim(1) == 0) return;
  if (!a.state) {
    parallel_for(a.p->policy, B * Hkv, [&](index_t item, int) {
      linear_attention_item it(a, item / Hkv, item % Hkv);
      scratch_frame frame(linear_attention_item::scratch_bytes(a));
      it.begin(frame);
      it.non_causal();
    });
    return;
  }
  // Causal: a work item is a block of kv heads of one batch entry, walked
  // chunk-major (all heads of the block for chunk c, then chunk c+1). Rows of
  // one head sit H*D floats apart, mostly on different pages, where hardware
  // prefetchers stop; walking neighbouring heads together reads whole rows of
  // the [B, L, H, D] tensors instead. Measured at 12 x 64, L = 4096, one
  // thread: head-major spent a third of the prefill waiting for q/k rows.
  // Heads are independent, so the blocking never changes results.
  const index_t workers = std::max<index_t>(1, a.p->policy.workers());
  const index_t blocks_per_b = std::min(Hkv, std::max<index_t>(1, (workers + B - 1) / B));
  const index_t hb = (Hkv + blocks_per_b - 1) / blocks_per_b;
  const index_t nblk = (Hkv + hb - 1) / hb;
  const index_t L = a.q.dim(1), C = linear_attention_item::chunk(a);
  parallel_for(a.p->policy, B * nblk, [&](index_t item, int) {
    const index_t b = item / nblk, g0 = (item % nblk) * hb, g1 = std::min(Hkv, g0 + hb);
    std::vector<linear_attention_item> heads;
    heads.reserve(static_cast<std::size_t>(g1 - g0));
    for (index_t g = g0; g < g1; ++g) heads.emplace_back(a, b, g);
    scratch_frame frame(static_cast<std::size_t>(g1 - g0) * linear_attention_item::scratch_bytes(a));
    for (auto& h : heads) h.begin(frame);
    for (index_t t0 = 0; t0 < L; t0 += C)
      for (auto& h : heads) h.causal_chunk(t0, std::min(C, L - t0));
    for (auto& h : heads) h.finish();
  });
}

// A one-token [B, H, D] view as a [B, 1, H, D] sequence.
template <class T>
tensor_view<T, 4> as_one_token(const tensor_view<T, 3>& x) {
  return tensor_view<T, 4>(x.data(), {x.dim(0), 1, x.dim(1), x.dim(2)}, {x.stride(0), 0, x.stride(1), x.stride(2)});
}

}  // namespace detail

// Causal prefill of L tokens from `state` (updated to the state after them).
//   q: [batch, seq, q_heads, head_dim]   k: [batch, seq, kv_heads, head_dim]
//   v: [batch, seq, kv_heads, v_dim]     o: [batch, seq, q_heads, v_dim]
//   state: linear_attention_state(batch, kv_heads, feature_map_dim(phi, head_dim), v_dim)
inline void linear_attention_prefill(tensor_view<const float, 4> q, tensor_view<const float, 4> k,
                                     tensor_view<const float, 4> v, linear_attention_state& state,
                                     tensor_view<float, 4> o, const linear_attention_params& params = {}) {
  detail::linear_attention_run({q, k, v, o, &state, &params,
                                params.algorithm == linear_attention_algorithm::recurrent});
}

// One token per batch entry; the same state as prefill.
//   q: [batch, q_heads, head_dim]  k: [batch, kv_heads, head_dim]
//   v: [batch, kv_heads, v_dim]    o: [batch, q_heads, v_dim]
inline void linear_attention_step(tensor_view<const float, 3> q, tensor_view<const float, 3> k,
                                  tensor_view<const float, 3> v, linear_attention_state& state,
                                  tensor_view<float, 3> o, const linear_attention_params& params = {}) {
  require_layout("q", q);
  require_layout("k", k);
  require_layout("v", v);
  require_layout("o", o);
  detail::linear_attention_run({detail::as_one_token(q), detail::as_one_token(k), detail::as_one_token(v),
                                detail::as_one_token(o), &state, &params, true});
}

// Non-causal: every query sees every key; Lq and Lk may differ. No state.
//   q: [batch, q_len, q_heads, head_dim]  k: [batch, k_len, kv_heads, head_dim]
//   v: [batch, k_len, kv_heads, v_dim]    o: [batch, q_len, q_heads, v_dim]
inline void linear_attention(tensor_view<const float, 4> q, tensor_view<const float, 4> k,
                             tensor_view<const float, 4> v, tensor_view<float, 4> o,
                             const linear_attention_params& params = {}) {
  detail::linear_attention_run({q, k, v, o, nullptr, &params, false});
}

}  // namespace tokmix
TOKMIX_SIMD_AVX512_WARNINGS_ON
