#pragma once
// Retention (RetNet): linear attention with one fixed decay per head. Its
// recurrent, chunked and parallel forms give the same output; the chunked
// prefill here runs the C x C / C x d matrix products, the step continues
// from the state it leaves.
//
// ref: Y. Sun, L. Dong, S. Huang, S. Ma, Y. Xia, J. Xue, J. Wang, F. Wei,
//      "Retentive Network: A Successor to Transformer for Large Language
//      Models", 2023 (eqs. 5-7: parallel, recurrent and chunkwise forms;
//      multi-scale decay gamma_h = 1 - 2^(-5-h)); fla chunk_retention /
//      fused_recurrent_retention. For each kv head (state head) h
//      (gamma = gamma_h) and each query head of its group:
//
//   S_t = gamma S_{t-1} + k_t v_t^T ;  o_t = S_t^T (scale * q_t)
//   parallel: O = (scale Q K^T . D) V,  D_ij = gamma^(i-j) for i >= j, else 0
//
// Grouped heads (GQA/MQA, detail/recurrence.hpp): q and o have heads_q heads,
// k and v heads_kv; query head h reads kv head h / (heads_q / heads_kv). The
// decay shapes the state, which depends only on k, v and gamma, so gamma is
// indexed by kv head (one state per kv head, shared by its query heads) and
// the multi-scale default runs over the heads_kv state heads. With
// heads_q == heads_kv this is RetNet's per-head decay.
//
// Chunk of c tokens: o_i = scale [gamma^(i+1) q_i^T S + sum_{j<=i} gamma^(i-j) (q_i.k_j) v_j],
// S' = gamma^c S + sum_j gamma^(c-1-j) k_j v_j^T. Every power has a
// non-negative exponent, so nothing overflows for any gamma in (0, 1].

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "tokmix/linear/detail/recurrence.hpp"
#include "tokmix/simd/gemm.hpp"

TOKMIX_SIMD_AVX512_WARNINGS_OFF
namespace tokmix {

struct retention_params {
  // Decay of each kv (state) head in (0, 1]; empty = RetNet's
  // 1 - 2^(-5-h) over the kv heads h.                             // [heads_kv]
  tensor_view<const float, 1> gamma;
  // Multiplies q; NaN (the default) means 1/sqrt(d_k).
  float scale = std::numeric_limits<float>::quiet_NaN();
  // Tokens per chunk of the chunked prefill (>= 1; need not divide seq).
  index_t chunk_size = 64;
  // Packed variable-length batch (see gla_params::cu_seqlens).   // [n_seqs + 1]
  tensor_view<const std::int32_t, 1> cu_seqlens;
  exec_policy policy;
};

// S per (sequence, kv head): [batch or n_seqs, heads_kv, d_k, d_v]; initial in, final out.
class retention_state : public detail::kv_state {
 public:
  using detail::kv_state::kv_state;
};

// RetNet's default decay of kv head h: 1 - 2^(-5-h).
inline double retention_default_gamma(index_t h) { return 1.0 - std::ldexp(1.0, static_cast<int>(-5 - h)); }

namespace detail {

struct retention_args {
  rec_io io;
  retention_state* state;
  const retention_params* params;
};

inline void retention_validate(const retention_args& a, bool chunked) {
  rec_validate(a.io, a.params->cu_seqlens, *a.state, chunked, a.params->chunk_size);
  rec_require_scale(a.params->scale);
  const auto& gm = a.params->gamma;
  if (rec_given(gm)) {
    require_layout("gamma", gm);
    require_shape("gamma", gm, {a.io.kv_heads()});
    rec_require_values("gamma", gm, std::numeric_limits<float>::min(), 1.f);
  }
}

// log gamma_h of kv head h in double: the powers are formed from it, and 1 - 2^-29 is not a float.
inline double retention_log_gamma(const retention_params& p, index_t h) {
  if (rec_given(p.gamma)) return std::log(static_cast<double>(p.gamma(h)));
  return std::log1p(-std::ldexp(1.0, static_cast<int>(-5 - h)));
}

template <class Arch>
inline void retention_recurrent_kernel(Arch arch, const retention_args& a) {
  const rec_io& io = a.io;
  const index_t dk = io.q.dim(3), dv = io.v.dim(3);
  const float scale = rec_scale(a.params->scale, dk);
  const std::size_t slot = 2 * scratch_frame::bytes_for<float>(dk);
  const int slots = worker_slots(a.params->policy);
  scratch_frame frame(slot * slots);
  float* base = frame.alloc<float>(slot / sizeof(float) * slots);
  rec_for_each(io, a.params->cu_seqlens, *a.state, a.params->policy, rec_token_window, [&](const rec_item& it, int worker) {
    float* decay = base + slot / sizeof(float) * worker;
    float* qs = decay + scratch_frame::bytes_for<float>(dk) / sizeof(float);
    std::fill(decay, decay + dk, static_cast<float>(std::exp(retention_log_gamma(*a.params, it.h))));
    for (index_t t = it.t0; t < it.t1; ++t) {
      rec_scale_mul(arch, scale, io.q.ptr(it.bi, t, it.hq0, 0), nullptr, qs, dk);
      rec_decay_update(arch, decay, io.k.ptr(it.bi, t, it.h, 0), io.v.ptr(it.bi, t, it.h, 0), qs, it.S, dk, dv,
                       io.o.ptr(it.bi, t, it.hq0, 0));
      rec_group_outputs(arch, io, it, t, qs, false, 0.f, scale);
    }
  });
}

template <class Arch>
inline void retention_chunk_kernel(Arch arch, const retention_args& a) {
  const rec_io& io = a.io;
  const index_t dk = io.q.dim(3), dv = io.v.dim(3);
  const index_t C = std::min<index_t>(a.params->chunk_size, std::max<index_t>(io.q.dim(1), 1));
  const float scale = rec_scale(a.params->scale, dk);
  const index_t ldq = io.q.stride(1), ldk = io.k.stride(1), ldv = io.v.stride(1), ldo = io.o.stride(1);

  const std::size_t mat = scratch_frame::bytes_for<float>(C * dk);
  const std::size_t slot = 2 * mat + scratch_frame::bytes_for<float>(C * C);
  const int slots = worker_slots(a.params->policy);
  const index_t heads = io.kv_heads();
  const std::size_t table = scratch_frame::bytes_for<float>(heads * (C + 1));
  scratch_frame frame(slot * slots + table);
  float* base = frame.alloc<float>(slot / sizeof(float) * slots);
  // gamma_h^i for i in [0, C], every kv head: read-only, shared by the workers.
  float* powers = frame.alloc<float>(static_cast<std::size_t>(heads * (C + 1)));
  for (index_t h = 0; h < heads; ++h) {
    const double lg = retention_log_gamma(*a.params, h);
    for (index_t i = 0; i <= C; ++i) powers[h * (C + 1) + i] = static_cast<float>(std::exp(lg * static_cast<double>(i)));
  }

  rec_for_each(io, a.params->cu_seqlens, *a.state, a.params->policy, C, [&](const rec_item& it, int worker) {
    float* qx = base + slot / sizeof(float) * worker;          // [C, d_k] scale gamma^(i+1) q_i
    float* ke = qx + mat / sizeof(float);                        // [C, d_k] gamma^(c-1-j) k_j
    float* A = ke + mat / sizeof(float);                         // [C, C]
    const float* pw = powers + it.h * (C + 1);                   // [C + 1] gamma^i
    float* S = it.S;
    for (index_t pos = it.t0; pos < it.t1; pos += C) {
      const index_t c = std::min(C, it.t1 - pos);
      const float* kc = io.k.ptr(it.bi, pos, it.h, 0);
      const float* vc = io.v.ptr(it.bi, pos, it.h, 0);
      for (index_t i = 0; i < c; ++i) rec_scale_mul(arch, pw[c - 1 - i], kc + i * ldk, nullptr, ke + i * dk, dk);
      // Per query head, on the carried state: inter-chunk, then intra-chunk term.
      for (index_t hq = it.hq0; hq < it.hq0 + it.nq; ++hq) {
        const float* qc = io.q.ptr(it.bi, pos, hq, 0);
        float* oc = io.o.ptr(it.bi, pos, hq, 0);
        for (index_t i = 0; i < c; ++i) rec_scale_mul(arch, scale * pw[i + 1], qc + i * ldq, nullptr, qx + i * dk, dk);
        simd::gemm_nn(c, dv, dk, 1.f, qx, dk, S, dv, 0.f, oc, ldo);
        simd::gemm_nt(c, c, dk, scale, qc, ldq, kc, ldk, 0.f, A, C);
        for (index_t i = 0; i < c; ++i) {
          float* row = A + i * C;
          for (index_t j = 0; j <= i; ++j) row[j] *= pw[i - j];
          for (index_t j = i + 1; j < c; ++j) row[j] = 0.f;
        }
        simd::gemm_nn(c, dv, c, 1.f, A, C, vc, ldv, 1.f, oc, ldo);
      }
      simd::gemm_tn(dk, dv, c, 1.f, ke, dk, vc, ldv, pw[c], S, dv);
    }
  });
}

}  // namespace detail

// fla chunk_retention: the chunked prefill, initial state taken from `state`,
// final state left in it. `o` must not overlap any input.
inline void retention_chunk_prefill(tensor_view<const float, 4> q,  // [batch, seq, heads_q, d_k]
                                    tensor_view<const float, 4> k,  // [batch, seq, heads_kv, d_k]
                                    tensor_view<const float, 4> v,  // [batch, seq, heads_kv, d_v]
                                    tensor_view<float, 4> o,        // [batch, seq, heads_q, d_v]
                                    retention_state& state,         // [batch or n_seqs, heads_kv, d_k, d_v]
                                    const retention_params& params = {}) {
  const detail::retention_args a{{q, k, v, o}, &state, &params};
  detail::retention_validate(a, true);
  detail::retention_chunk_kernel(xsimd::default_arch{}, a);
}

// The token recurrence (fla fused_recurrent_retention): the baseline of the
// chunked form, and what retention_step runs.
inline void retention_recurrent_prefill(tensor_view<const float, 4> q,  // [batch, seq, heads_q, d_k]
                                        tensor_view<const float, 4> k,  // [batch, seq, heads_kv, d_k]
                                        tensor_view<const float, 4> v,  // [batch, seq, heads_kv, d_v]
                                        tensor_view<float, 4> o,        // [batch, seq, heads_q, d_v]
                                        retention_state& state,         // [batch or n_seqs, heads_kv, d_k, d_v]
                                        const retention_params& params = {}) {
  const detail::retention_args a{{q, k, v, o}, &state, &params};
  detail::retention_validate(a, false);
  detail::retention_recurrent_kernel(xsimd::default_arch{}, a);
}

// One token per batch entry on the state a prefill leaves.
inline void retention_step(tensor_view<const float, 3> q,  // [batch, heads_q, d_k]
                           tensor_view<const float, 3> k,  // [batch, heads_kv, d_k]
                           tensor_view<const float, 3> v,  // [batch, heads_kv, d_v]
                           tensor_view<float, 3> o,        // [batch, heads_q, d_v]
                           retention_state& state,         // [batch, heads_kv, d_k, d_v]
                           const retention_params& params = {}) {
  require(!detail::rec_given(params.cu_seqlens), "cu_seqlens", "empty for a step (one token per batch entry)",
          "size " + std::to_string(params.cu_seqlens.dim(0)));
  using detail::rec_one_token;
  retention_recurrent_prefill(rec_one_token(q), rec_one_token(k), rec_one_token(v), rec_one_token(o), state, params);
}

}  // namespace tokmix
TOKMIX_SIMD_AVX512_WARNINGS_ON
