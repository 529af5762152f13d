#pragma once
// Gated linear attention (GLA): a linear-attention state with a per-key-channel
// forget gate. CPU runtimes run it only as a token loop (ggml's gated_linear_attn);
// the chunked prefill here turns the work into C x C and C x d matrix
// products, and a token step continues from the state it leaves.
//
// ref: S. Yang, B. Wang, Y. Shen, R. Panda, Y. Kim, "Gated Linear Attention
//      Transformers with Hardware-Efficient Training", ICML 2024 (sec. 4,
//      chunkwise form with chunk-relative cumulative gates); semantics of fla
//      chunk_gla / fused_recurrent_gla. For each kv head (state head) and
//      each query head h of its group:
//
//   S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T        g_t = log alpha_t <= 0, shape of k_t
//   o_t = S_t^T (scale * q_{t,h})
//
// Grouped heads (GQA/MQA, detail/recurrence.hpp): q and o have heads_q heads,
// k, v and g heads_kv; query head h reads kv head h / (heads_q / heads_kv).
// The gate is per key channel, so it belongs to the kv side with k: S depends
// on k, v, g only and is kept (and updated) once per kv head; only the q
// products run per query head.
//
// Chunk of c tokens starting at token 0 of the chunk, r_i = sum_{s=1..i} g_s
// (the first token's gate g_0 left out, so a huge g_0 never swamps the sums):
//
//   o_i  = scale [ (q_i . exp(g_0 + r_i))^T S  +  sum_{j<=i} ((q_i . exp(r_i)) . (k_j . exp(-r_j))) v_j ]
//   S'   = diag(exp(g_0 + r_{c-1})) S + sum_j (k_j . exp(r_{c-1} - r_j)) v_j^T
//
// exp(-r_j) grows with the decay inside the chunk, so a chunk ends early where
// max_d(-r_j) would pass rec_max_span (40): no factor ever exceeds e^40 or falls
// below e^-40 before its product is formed, for any gates (L = 65536 with
// alpha ~ 0 gives one-token chunks, still exact). Realistic gates (fla's
// logsigmoid / 16) keep the full chunk.

#include <algorithm>
#include <cstdint>
#include <limits>

#include "tokmix/linear/detail/recurrence.hpp"
#include "tokmix/simd/gemm.hpp"
#include "tokmix/simd/reduce.hpp"

TOKMIX_SIMD_AVX512_WARNINGS_OFF
namespace tokmix {

struct gla_params {
  // Multiplies q; NaN (the default) means 1/sqrt(d_k).
  float scale = std::numeric_limits<float>::quiet_NaN();
  // Tokens per chunk of the chunked prefill (>= 1; need not divide seq).
  index_t chunk_size = 64;
  // Packed variable-length batch: batch must be 1, sequence s is tokens
  // [cu_seqlens[s], cu_seqlens[s+1]) and uses state s. Empty = one
  // sequence per batch entry.                                   // [n_seqs + 1]
  tensor_view<const std::int32_t, 1> cu_seqlens;
  exec_policy policy;
};

// S per (sequence, kv head): [batch or n_seqs, heads_kv, d_k, d_v]; initial in, final out.
class gla_state : public detail::kv_state {
 public:
  using detail::kv_state::kv_state;
};

namespace detail {

struct gla_args {
  rec_io io;
  tensor_view<const float, 4> g;  // [batch, seq, heads_kv, d_k]
  gla_state* state;
  const gla_params* params;
};

inline void gla_validate(const gla_args& a, bool chunked) {
  rec_validate(a.io, a.params->cu_seqlens, *a.state, chunked, a.params->chunk_size);
  require_layout("g", a.g);
  require_shape<const float, 4>("g", a.g, a.io.k.dims());
  rec_require_scale(a.params->scale);
  rec_require_values("g", a.g, -std::numeric_limits<float>::max(), 0.f);
}

template <class Arch>
inline void gla_recurrent_kernel(Arch arch, const gla_args& a) {
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
    for (index_t t = it.t0; t < it.t1; ++t) {
      rec_exp_rel(arch, a.g.ptr(it.bi, t, it.h, 0), 0.f, 1.f, decay, dk);
      rec_scale_mul(arch, scale, io.q.ptr(it.bi, t, it.hq0, 0), nullptr, qs, dk);
      rec_decay_update(arch, decay, io.k.ptr(it.bi, t, it.h, 0), io.v.ptr(it.bi, t, it.h, 0), qs, it.S, dk, dv,
                       io.o.ptr(it.bi, t, it.hq0, 0));
      rec_group_outputs(arch, io, it, t, qs, false, 0.f, scale);
    }
  }, a.g);
}

// r[j] = r[j-1] + g[j] over d_k; returns min_d r[j].
template <class Arch>
inline float gla_cumsum_row(Arch, const float* prev, const float* g, float* r, index_t n) {
  using fb = sx::fbatch<Arch>;
  constexpr index_t w = sx::lanes<Arch>;
  fb mn(0.f);
  index_t i = 0;
  for (; i + w <= n; i += w) {
    const fb x = fb::load_unaligned(prev + i) + fb::load_unaligned(g + i);
    x.store_unaligned(r + i);
    mn = xsimd::min(mn, x);
  }
  float m = -sx::detail::horizontal_max<Arch>(-mn);
  for (; i < n; ++i) {
    r[i] = prev[i] + g[i];
    m = std::min(m, r[i]);
  }
  return m;
}

template <class Arch>
inline void gla_chunk_kernel(Arch arch, const gla_args& a) {
  const rec_io& io = a.io;
  const index_t dk = io.q.dim(3), dv = io.v.dim(3);
  const index_t C = std::min<index_t>(a.params->chunk_size, std::max<index_t>(io.q.dim(1), 1));
  const float scale = rec_scale(a.params->scale, dk);
  const index_t ldq = io.q.stride(1), ldk = io.k.stride(1), ldv = io.v.stride(1), ldo = io.o.stride(1);
  const index_t ldg = a.g.stride(1);

  const std::size_t mat = scratch_frame::bytes_for<float>(C * dk);
  const std::size_t vec = scratch_frame::bytes_for<float>(dk);
  const std::size_t slot = 5 * mat + scratch_frame::bytes_for<float>(C * C) + 3 * vec;
  const int slots = worker_slots(a.params->policy);
  scratch_frame frame(slot * slots);
  float* base = frame.alloc<float>(slot / sizeof(float) * slots);

  rec_for_each(io, a.params->cu_seqlens, *a.state, a.params->policy, C, [&](const rec_item& it, int worker) {
    float* p = base + slot / sizeof(float) * worker;
    auto take = [&p](std::size_t bytes) {
      float* r = p;
      p += bytes / sizeof(float);
      return r;
    };
    float* r = take(mat);     // [C, d_k] chunk-relative cumulative gates r_i, then exp(r_i)
    float* qi = take(mat);    // [C, d_k] scale q_i exp(r_i)
    float* kg = take(mat);    // [C, d_k] k_j exp(-r_j)
    float* qx = take(mat);    // [C, d_k] scale q_i exp(g_0 + r_i)
    float* ke = take(mat);    // [C, d_k] k_j exp(r_{c-1} - r_j)
    float* A = take(scratch_frame::bytes_for<float>(C * C));  // [C, C]
    float* e0 = take(vec);
    float* el = take(vec);
    float* ec = take(vec);
    float* S = it.S;

    for (index_t pos = it.t0; pos < it.t1;) {
      const index_t cmax = std::min(C, it.t1 - pos);
      const float* g0 = a.g.ptr(it.bi, pos, it.h, 0);
      std::fill(r, r + dk, 0.f);
      index_t c = 1;
      for (; c < cmax; ++c) {
        const float mn = gla_cumsum_row(arch, r + (c - 1) * dk, g0 + c * ldg, r + c * dk, dk);
        if (mn < -rec_max_span) break;
      }
      const float* kc = io.k.ptr(it.bi, pos, it.h, 0);
      const float* vc = io.v.ptr(it.bi, pos, it.h, 0);

      // The kv side, once for the whole group: gate factors and scaled keys.
      rec_exp_rel(arch, g0, 0.f, 1.f, e0, dk);
      rec_exp_rel(arch, r + (c - 1) * dk, 0.f, 1.f, el, dk);
      rec_scale_mul(arch, 1.f, e0, el, ec, dk);
      for (index_t i = 0; i < c; ++i) {
        float* krow = ke + i * dk;  // exp(-r_i) staged here, overwritten below
        rec_exp_rel(arch, r + i * dk, 0.f, -1.f, krow, dk);
        rec_exp_rel(arch, r + i * dk, 0.f, 1.f, r + i * dk, dk);
        rec_scale_mul(arch, 1.f, kc + i * ldk, krow, kg + i * dk, dk);
        rec_scale_mul(arch, 1.f, kg + i * dk, el, krow, dk);
      }
      // Per query head, on the carried state: inter-chunk term, then the
      // masked intra-chunk term.
      for (index_t hq = it.hq0; hq < it.hq0 + it.nq; ++hq) {
        const float* qc = io.q.ptr(it.bi, pos, hq, 0);
        float* oc = io.o.ptr(it.bi, pos, hq, 0);
        for (index_t i = 0; i < c; ++i) {
          rec_scale_mul(arch, scale, qc + i * ldq, r + i * dk, qi + i * dk, dk);
          rec_scale_mul(arch, 1.f, qi + i * dk, e0, qx + i * dk, dk);
        }
        simd::gemm_nn(c, dv, dk, 1.f, qx, dk, S, dv, 0.f, oc, ldo);
        simd::gemm_nt(c, c, dk, 1.f, qi, dk, kg, dk, 0.f, A, C);
        rec_causal_mask(A, C, c, nullptr, 0);
        simd::gemm_nn(c, dv, c, 1.f, A, C, vc, ldv, 1.f, oc, ldo);
      }
      rec_scale_state_rows(arch, S, dk, dv, ec);
      simd::gemm_tn(dk, dv, c, 1.f, ke, dk, vc, ldv, 1.f, S, dv);
      pos += c;
    }
  }, a.g);
}

}  // namespace detail

// fla chunk_gla(q, k, v, g, scale, initial_state, output_final_state=True):
// the chunked prefill, initial state taken from `state`, final state left in it.
// `o` must not overlap any input.
inline void gla_chunk_prefill(tensor_view<const float, 4> q,  // [batch, seq, heads_q, d_k]
                              tensor_view<const float, 4> k,  // [batch, seq, heads_kv, d_k]
                              tensor_view<const float, 4> v,  // [batch, seq, heads_kv, d_v]
                              tensor_view<const float, 4> g,  // [batch, seq, heads_kv, d_k] log decay, finite, <= 0
                              tensor_view<float, 4> o,        // [batch, seq, heads_q, d_v]
                              gla_state& state,               // [batch or n_seqs, heads_kv, d_k, d_v]
                              const gla_params& params = {}) {
  const detail::gla_args a{{q, k, v, o}, g, &state, &params};
  detail::gla_validate(a, true);
  detail::gla_chunk_kernel(xsimd::default_arch{}, a);
}

// The same result by the token recurrence (fla fused_recurrent_gla): the
// baseline the chunked form is measured against, and what gla_step runs.
inline void gla_recurrent_prefill(tensor_view<const float, 4> q,  // [batch, seq, heads_q, d_k]
                                  tensor_view<const float, 4> k,  // [batch, seq, heads_kv, d_k]
                                  tensor_view<const float, 4> v,  // [batch, seq, heads_kv, d_v]
                                  tensor_view<const float, 4> g,  // [batch, seq, heads_kv, d_k]
                                  tensor_view<float, 4> o,        // [batch, seq, heads_q, d_v]
                                  gla_state& state,               // [batch or n_seqs, heads_kv, d_k, d_v]
                                  const gla_params& params = {}) {
  const detail::gla_args a{{q, k, v, o}, g, &state, &params};
  detail::gla_validate(a, false);
  detail::gla_recurrent_kernel(xsimd::default_arch{}, a);
}

// One token per batch entry on the state a prefill leaves.
inline void gla_step(tensor_view<const float, 3> q,  // [batch, heads_q, d_k]
                     tensor_view<const float, 3> k,  // [batch, heads_kv, d_k]
                     tensor_view<const float, 3> v,  // [batch, heads_kv, d_v]
                     tensor_view<const float, 3> g,  // [batch, heads_kv, d_k]
                     tensor_view<float, 3> o,        // [batch, heads_q, d_v]
                     gla_state& state,               // [batch, heads_kv, d_k, d_v]
                     const gla_params& params = {}) {
  require(!detail::rec_given(params.cu_seqlens), "cu_seqlens", "empty for a step (one token per batch entry)",
          "size " + std::to_string(params.cu_seqlens.dim(0)));
  using detail::rec_one_token;
  gla_recurrent_prefill(rec_one_token(q), rec_one_token(k), rec_one_token(v), rec_one_token(g), rec_one_token(o),
                        state, params);
}

}  // namespace tokmix
TOKMIX_SIMD_AVX512_WARNINGS_ON
