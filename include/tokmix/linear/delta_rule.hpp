#pragma once
// DeltaNet and gated DeltaNet: linear attention whose state is corrected by
// the delta rule instead of only accumulated. The recurrence reads the state
// before every write, so CPU runtimes (ggml's gated_delta_net) run it token by
// token; the chunked prefill here folds a chunk's sequential corrections into
// one triangular matrix T (the UT / WY representation), after which
// everything is C x C and C x d matrix products.
//
// ref: S. Yang, B. Wang, Y. Zhang, Y. Shen, Y. Kim, "Parallelizing Linear
//      Transformers with the Delta Rule over Sequence Length", NeurIPS 2024
//      (sec. 3: WY/UT form, chunkwise algorithm); S. Yang, J. Kautz,
//      A. Hatamizadeh, "Gated Delta Networks: Improving Mamba2 with Delta
//      Rule", ICLR 2025 (sec. 3.3, gated chunkwise form); semantics of fla
//      chunk_delta_rule / chunk_gated_delta_rule and their fused_recurrent_*
//      (use_qk_l2norm_in_kernel). For each kv head (state head) and each
//      query head of its group:
//
//   S_t = alpha_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T      alpha_t = exp(g_t), 1 ungated
//   o_t = S_t^T (scale * q_t)
//
// Grouped heads (GQA/MQA, detail/recurrence.hpp): q and o have heads_q heads,
// k, v, beta and g heads_kv; query head h reads kv head h / (heads_q / heads_kv).
// The correction reads only k, v, beta and g, so S, T, W and U below are kv
// quantities, built once per kv head and chunk; only the two q products run
// per query head.
//
// Chunk of c tokens, gamma_i = exp(g_0 + r_i) with r_i = sum_{s=1..i} g_s and
// Gam_ij = exp(r_i - r_j) (j <= i, all factors <= 1):
//
//   T  = (I + strict_tril(diag(beta) (K K^T . Gam)))^-1 diag(beta)   (forward substitution)
//   W  = T diag(gamma) K ;  U = T V - W S                        (the chunk's corrected values)
//   O  = scale [diag(gamma) Q S + (tril(Q K^T) . Gam) U]
//   S' = gamma_{c-1} S + (diag(exp(r_{c-1} - r_j)) K)^T U
//
// As in GLA, a chunk ends early if r_j would pass -rec_max_span, so the
// cumulative sums never mix a huge gate with small ones.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "tokmix/linear/detail/recurrence.hpp"
#include "tokmix/simd/dot.hpp"
#include "tokmix/simd/gemm.hpp"

TOKMIX_SIMD_AVX512_WARNINGS_OFF
namespace tokmix {

struct delta_rule_params {
  // Multiplies q (after the optional L2 norm); NaN (the default) means 1/sqrt(d_k).
  float scale = std::numeric_limits<float>::quiet_NaN();
  // fla use_qk_l2norm_in_kernel: q and k become x / sqrt(sum x^2 + l2norm_eps).
  bool use_qk_l2norm = false;
  float l2norm_eps = 1e-6f;
  // Tokens per chunk of the chunked prefill (>= 1; need not divide seq).
  index_t chunk_size = 64;
  // Packed variable-length batch (see gla_params::cu_seqlens).   // [n_seqs + 1]
  tensor_view<const std::int32_t, 1> cu_seqlens;
  exec_policy policy;
};

// S per (sequence, kv head): [batch or n_seqs, heads_kv, d_k, d_v]; initial in,
// final out. Shared by the plain and the gated delta rule.
class delta_rule_state : public detail::kv_state {
 public:
  using detail::kv_state::kv_state;
};

namespace detail {

struct delta_args {
  rec_io io;
  tensor_view<const float, 3> g;     // [batch, seq, heads_kv] or empty (ungated)
  tensor_view<const float, 3> beta;  // [batch, seq, heads_kv]
  bool gated;
  delta_rule_state* state;
  const delta_rule_params* params;
};

inline void delta_validate(const delta_args& a, bool chunked) {
  rec_validate(a.io, a.params->cu_seqlens, *a.state, chunked, a.params->chunk_size);
  const auto& k = a.io.k;
  require_layout("beta", a.beta);
  require_shape("beta", a.beta, {k.dim(0), k.dim(1), k.dim(2)});
  if (a.gated) {
    require_layout("g", a.g);
    require_shape("g", a.g, {k.dim(0), k.dim(1), k.dim(2)});
  }
  rec_require_scale(a.params->scale);
  require(std::isfinite(a.params->l2norm_eps) && a.params->l2norm_eps >= 0.f, "l2norm_eps", "finite and >= 0",
          a.params->l2norm_eps);
  rec_require_values("beta", a.beta, 0.f, 1.f);
  if (a.gated) rec_require_values("g", a.g, -std::numeric_limits<float>::max(), 0.f);
}

template <class Arch>
inline void delta_recurrent_kernel(Arch arch, const delta_args& a) {
  const rec_io& io = a.io;
  const delta_rule_params& p = *a.params;
  const index_t dk = io.q.dim(3), dv = io.v.dim(3);
  const float scale = rec_scale(p.scale, dk);
  const bool gated = a.gated;
  const std::size_t slot = 2 * scratch_frame::bytes_for<float>(dk);
  const int slots = worker_slots(p.policy);
  scratch_frame frame(slot * slots);
  float* base = frame.alloc<float>(slot / sizeof(float) * slots);
  rec_for_each(io, p.cu_seqlens, *a.state, p.policy, rec_token_window, [&](const rec_item& it, int worker) {
    float* kn = base + slot / sizeof(float) * worker;
    float* qs = kn + scratch_frame::bytes_for<float>(dk) / sizeof(float);
    for (index_t t = it.t0; t < it.t1; ++t) {
      rec_normalise(arch, io.k.ptr(it.bi, t, it.h, 0), kn, dk, p.use_qk_l2norm, p.l2norm_eps, 1.f);
      rec_normalise(arch, io.q.ptr(it.bi, t, it.hq0, 0), qs, dk, p.use_qk_l2norm, p.l2norm_eps, scale);
      const float alpha = gated ? std::exp(a.g(it.bi, t, it.h)) : 1.f;
      rec_delta_update(arch, alpha, a.beta(it.bi, t, it.h), kn, io.v.ptr(it.bi, t, it.h, 0), qs, it.S, dk, dv,
                       io.o.ptr(it.bi, t, it.hq0, 0));
      rec_group_outputs(arch, io, it, t, qs, p.use_qk_l2norm, p.l2norm_eps, scale);
    }
  });
}

// T = (I + A)^-1 diag(beta) for the strictly lower c x c matrix A (row i read
// at a + i*lda, columns j < i), by forward substitution: row i of (I + A)^-1 is
// e_i - sum_{j<i} A_ij row_j. Rows of T are ldt floats (a multiple of the
// lanes), zero past the diagonal, so every update runs on whole batches:
// columns [b*w, (b+1)*w) only gather rows j >= b*w (earlier rows are zero there).
// beta holds ldt entries (zero past c).
template <class Arch>
inline void delta_build_t(Arch, const float* a, index_t lda, const float* beta, float* T, index_t ldt, index_t c) {
  using fb = sx::fbatch<Arch>;
  constexpr index_t w = sx::lanes<Arch>;
  for (index_t i = 0; i < c; ++i) {
    float* ti = T + i * ldt;
    const float* ai = a + i * lda;
    index_t col = 0;
    for (; col < i; col += w) {
      fb acc0(0.f), acc1(0.f);
      index_t j = col;
      for (; j + 2 <= i; j += 2) {
        acc0 = xsimd::fnma(fb(ai[j]), fb::load_aligned(T + j * ldt + col), acc0);
        acc1 = xsimd::fnma(fb(ai[j + 1]), fb::load_aligned(T + (j + 1) * ldt + col), acc1);
      }
      if (j < i) acc0 = xsimd::fnma(fb(ai[j]), fb::load_aligned(T + j * ldt + col), acc0);
      (acc0 + acc1).store_aligned(ti + col);
    }
    for (; col < ldt; col += w) fb(0.f).store_aligned(ti + col);
    ti[i] = 1.f;
  }
  // Only now: the substitution above needs the rows of (I + A)^-1 itself.
  for (index_t i = 0; i < c; ++i)
    for (index_t col = 0; col <= i; col += w)
      (fb::load_aligned(T + i * ldt + col) * fb::load_aligned(beta + col)).store_aligned(T + i * ldt + col);
}

template <class Arch>
inline void delta_chunk_kernel(Arch arch, const delta_args& a) {
  const rec_io& io = a.io;
  const delta_rule_params& p = *a.params;
  const index_t dk = io.q.dim(3), dv = io.v.dim(3);
  const index_t C = std::min<index_t>(p.chunk_size, std::max<index_t>(io.q.dim(1), 1));
  const float scale = rec_scale(p.scale, dk);
  const bool gated = a.gated;
  const index_t ldq = io.q.stride(1), ldk = io.k.stride(1), ldv = io.v.stride(1), ldo = io.o.stride(1);

  const std::size_t mk = scratch_frame::bytes_for<float>(C * dk);
  const std::size_t mv = scratch_frame::bytes_for<float>(C * dv);
  // T's rows padded to whole batches (and aligned) for delta_build_t.
  constexpr index_t w = sx::lanes<Arch>;
  const index_t ldt = (C + w - 1) / w * w;
  const std::size_t mc = scratch_frame::bytes_for<float>(C * ldt);
  const std::size_t vc = scratch_frame::bytes_for<float>(ldt);
  const std::size_t slot = 4 * mk + mv + 3 * mc + 3 * vc;
  const int slots = worker_slots(p.policy);
  scratch_frame frame(slot * slots);
  float* base = frame.alloc<float>(slot / sizeof(float) * slots);

  rec_for_each(io, p.cu_seqlens, *a.state, p.policy, C, [&](const rec_item& it, int worker) {
    float* ptr = base + slot / sizeof(float) * worker;
    auto take = [&ptr](std::size_t bytes) {
      float* r = ptr;
      ptr += bytes / sizeof(float);
      return r;
    };
    float* qn = take(mk);   // [C, d_k] scale * (normalised) q
    float* kn = take(mk);   // [C, d_k] (normalised) k
    float* kw = take(mk);   // [C, d_k] gated: gamma_i k_i, then gamma_i q_i, then exp(r_{c-1} - r_j) k_j
    float* W = take(mk);    // [C, d_k]
    float* U = take(mv);    // [C, d_v]
    float* M = take(mc);    // [C, C] K K^T, then Q K^T
    float* T = take(mc);    // [C, ldt]
    float* Gm = take(mc);   // [C, C] Gam (gated only)
    float* r = take(vc);    // [C] r_i
    float* bt = take(vc);   // [ldt] beta_i, zero past the chunk
    float* gam = take(vc);  // [C] gamma_i
    float* S = it.S;

    for (index_t pos = it.t0; pos < it.t1;) {
      const index_t cmax = std::min(C, it.t1 - pos);
      index_t c = cmax;
      float g0 = 0.f;
      if (gated) {
        g0 = a.g(it.bi, pos, it.h);
        r[0] = 0.f;
        for (c = 1; c < cmax; ++c) {
          r[c] = r[c - 1] + a.g(it.bi, pos + c, it.h);
          if (r[c] < -rec_max_span) break;
        }
      }
      const float* kc = io.k.ptr(it.bi, pos, it.h, 0);
      const float* vcp = io.v.ptr(it.bi, pos, it.h, 0);
      std::fill(bt, bt + ldt, 0.f);
      for (index_t i = 0; i < c; ++i) {
        rec_normalise(arch, kc + i * ldk, kn + i * dk, dk, p.use_qk_l2norm, p.l2norm_eps, 1.f);
        bt[i] = a.beta(it.bi, pos + i, it.h);
      }
      if (gated) {
        const float e0 = std::exp(g0);
        rec_exp_rel(arch, r, 0.f, 1.f, gam, c);
        for (index_t i = 0; i < c; ++i) gam[i] *= e0;
        for (index_t i = 0; i < c; ++i) rec_exp_rel(arch, r, r[i], -1.f, Gm + i * C, i + 1);
      }

      // T = (I + A)^-1 diag(beta), A = strict_tril(diag(beta) (K K^T . Gam)).
      simd::gemm_nt(c, c, dk, 1.f, kn, dk, kn, dk, 0.f, M, C);
      for (index_t i = 0; i < c; ++i) {
        float* mi = M + i * C;
        const float* gi = Gm + i * C;
        for (index_t j = 0; j < i; ++j) mi[j] *= bt[i] * (gated ? gi[j] : 1.f);
      }
      delta_build_t(arch, M, C, bt, T, ldt, c);

      // diag(gamma) X for the chunk's rows of x (written to kw), or x itself ungated.
      auto decayed = [&](const float* x) -> const float* {
        if (!gated) return x;
        for (index_t i = 0; i < c; ++i) rec_scale_mul(arch, gam[i], x + i * dk, nullptr, kw + i * dk, dk);
        return kw;
      };

      // U = T V - T diag(gamma) K S: the values each token writes after the corrections.
      simd::gemm_nn(c, dk, c, 1.f, T, ldt, decayed(kn), dk, 0.f, W, dk);
      simd::gemm_nn(c, dv, c, 1.f, T, ldt, vcp, ldv, 0.f, U, dv);
      simd::gemm_nn(c, dv, dk, -1.f, W, dk, S, dv, 1.f, U, dv);

      // Outputs of each query head of the group: decayed carried state, then
      // the masked intra-chunk term.
      for (index_t hq = it.hq0; hq < it.hq0 + it.nq; ++hq) {
        const float* qc = io.q.ptr(it.bi, pos, hq, 0);
        float* oc = io.o.ptr(it.bi, pos, hq, 0);
        for (index_t i = 0; i < c; ++i)
          rec_normalise(arch, qc + i * ldq, qn + i * dk, dk, p.use_qk_l2norm, p.l2norm_eps, scale);
        simd::gemm_nn(c, dv, dk, 1.f, decayed(qn), dk, S, dv, 0.f, oc, ldo);
        simd::gemm_nt(c, c, dk, 1.f, qn, dk, kn, dk, 0.f, M, C);
        rec_causal_mask(M, C, c, gated ? Gm : nullptr, C);
        simd::gemm_nn(c, dv, c, 1.f, M, C, U, dv, 1.f, oc, ldo);
      }

      // State: S' = gamma_{c-1} S + Kend^T U.
      const float* ke = kn;
      if (gated) {
        simd::detail::scale_kernel(arch, gam[c - 1], S, dk * dv);
        for (index_t j = 0; j < c; ++j) {
          const float f = Gm[(c - 1) * C + j];
          rec_scale_mul(arch, f, kn + j * dk, nullptr, kw + j * dk, dk);
        }
        ke = kw;
      }
      simd::gemm_tn(dk, dv, c, 1.f, ke, dk, U, dv, 1.f, S, dv);
      pos += c;
    }
  });
}

inline tensor_view<const float, 3> delta_no_gate() { return tensor_view<const float, 3>(); }

}  // namespace detail

// fla chunk_delta_rule(q, k, v, beta, scale, initial_state, output_final_state=True,
// use_qk_l2norm_in_kernel): chunked prefill, initial state from `state`, final
// state left in it. `o` must not overlap any input.
inline void delta_rule_chunk_prefill(tensor_view<const float, 4> q,     // [batch, seq, heads_q, d_k]
                                     tensor_view<const float, 4> k,     // [batch, seq, heads_kv, d_k]
                                     tensor_view<const float, 4> v,     // [batch, seq, heads_kv, d_v]
                                     tensor_view<const float, 3> beta,  // [batch, seq, heads_kv] in [0, 1]
                                     tensor_view<float, 4> o,           // [batch, seq, heads_q, d_v]
                                     delta_rule_state& state,           // [batch or n_seqs, heads_kv, d_k, d_v]
                                     const delta_rule_params& params = {}) {
  const detail::delta_args a{{q, k, v, o}, detail::delta_no_gate(), beta, false, &state, &params};
  detail::delta_validate(a, true);
  detail::delta_chunk_kernel(xsimd::default_arch{}, a);
}

// The token recurrence (fla fused_recurrent_delta_rule): the baseline of the
// chunked form, and what delta_rule_step runs.
inline void delta_rule_recurrent_prefill(tensor_view<const float, 4> q,     // [batch, seq, heads_q, d_k]
                                         tensor_view<const float, 4> k,     // [batch, seq, heads_kv, d_k]
                                         tensor_view<const float, 4> v,     // [batch, seq, heads_kv, d_v]
                                         tensor_view<const float, 3> beta,  // [batch, seq, heads_kv]
                                         tensor_view<float, 4> o,           // [batch, seq, heads_q, d_v]
                                         delta_rule_state& state,           // [batch or n_seqs, heads_kv, d_k, d_v]
                                         const delta_rule_params& params = {}) {
  const detail::delta_args a{{q, k, v, o}, detail::delta_no_gate(), beta, false, &state, &params};
  detail::delta_validate(a, false);
  detail::delta_recurrent_kernel(xsimd::default_arch{}, a);
}

// One token per batch entry on the state a prefill leaves.
inline void delta_rule_step(tensor_view<const float, 3> q,     // [batch, heads_q, d_k]
                            tensor_view<const float, 3> k,     // [batch, heads_kv, d_k]
                            tensor_view<const float, 3> v,     // [batch, heads_kv, d_v]
                            tensor_view<const float, 2> beta,  // [batch, heads_kv]
                            tensor_view<float, 3> o,           // [batch, heads_q, d_v]
                            delta_rule_state& state,           // [batch, heads_kv, d_k, d_v]
                            const delta_rule_params& params = {}) {
  require(!detail::rec_given(params.cu_seqlens), "cu_seqlens", "empty for a step (one token per batch entry)",
          "size " + std::to_string(params.cu_seqlens.dim(0)));
  using detail::rec_one_token;
  delta_rule_recurrent_prefill(rec_one_token(q), rec_one_token(k), rec_one_token(v), rec_one_token(beta),
                               rec_one_token(o), state, params);
}

// fla chunk_gated_delta_rule: as delta_rule_chunk_prefill with S_{t-1} first
// multiplied by exp(g_t).
inline void gated_delta_rule_chunk_prefill(tensor_view<const float, 4> q,     // [batch, seq, heads_q, d_k]
                                           tensor_view<const float, 4> k,     // [batch, seq, heads_kv, d_k]
                                           tensor_view<const float, 4> v,     // [batch, seq, heads_kv, d_v]
                                           tensor_view<const float, 3> g,     // [batch, seq, heads_kv] log decay, <= 0
                                           tensor_view<const float, 3> beta,  // [batch, seq, heads_kv] in [0, 1]
                                           tensor_view<float, 4> o,           // [batch, seq, heads_q, d_v]
                                           delta_rule_state& state,           // [batch or n_seqs, heads_kv, d_k, d_v]
                                           const delta_rule_params& params = {}) {
  const detail::delta_args a{{q, k, v, o}, g, beta, true, &state, &params};
  detail::delta_validate(a, true);
  detail::delta_chunk_kernel(xsimd::default_arch{}, a);
}

// fla fused_recurrent_gated_delta_rule: the token recurrence of the gated form.
inline void gated_delta_rule_recurrent_prefill(tensor_view<const float, 4> q,     // [batch, seq, heads_q, d_k]
                                               tensor_view<const float, 4> k,     // [batch, seq, heads_kv, d_k]
                                               tensor_view<const float, 4> v,     // [batch, seq, heads_kv, d_v]
                                               tensor_view<const float, 3> g,     // [batch, seq, heads_kv]
                                               tensor_view<const float, 3> beta,  // [batch, seq, heads_kv]
                                               tensor_view<float, 4> o,           // [batch, seq, heads_q, d_v]
                                               delta_rule_state& state,  // [batch or n_seqs, heads_kv, d_k, d_v]
                                               const delta_rule_params& params = {}) {
  const detail::delta_args a{{q, k, v, o}, g, beta, true, &state, &params};
  detail::delta_validate(a, false);
  detail::delta_recurrent_kernel(xsimd::default_arch{}, a);
}

// One token per batch entry of the gated delta rule.
inline void gated_delta_rule_step(tensor_view<const float, 3> q,     // [batch, heads_q, d_k]
                                  tensor_view<const float, 3> k,     // [batch, heads_kv, d_k]
                                  tensor_view<const float, 3> v,     // [batch, heads_kv, d_v]
                                  tensor_view<const float, 2> g,     // [batch, heads_kv]
                                  tensor_view<const float, 2> beta,  // [batch, heads_kv]
                                  tensor_view<float, 3> o,           // [batch, heads_q, d_v]
                                  delta_rule_state& state,           // [batch, heads_kv, d_k, d_v]
                                  const delta_rule_params& params = {}) {
  require(!detail::rec_given(params.cu_seqlens), "cu_seqlens", "empty for a step (one token per batch entry)",
          "size " + std::to_string(params.cu_seqlens.dim(0)));
  using detail::rec_one_token;
  gated_delta_rule_recurrent_prefill(rec_one_token(q), rec_one_token(k), rec_one_token(v), rec_one_token(g),
                                     rec_one_token(beta), rec_one_token(o), state, params);
}

}  // namespace tokmix
TOKMIX_SIMD_AVX512_WARNINGS_ON
