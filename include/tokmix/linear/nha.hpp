#pragma once
// NHA (Native Hybrid Attention): one softmax over m key/value slots kept by a
// gated linear recurrence (long-term memory) and the exact keys/values of a
// sliding window of recent tokens (short-term memory). No fusion weights: the
// shared softmax decides, per token and head, how much comes from each. The
// window size moves the layer between a pure linear recurrence and full
// attention with the same structure. CPU runtimes have no NHA kernel; this
// header gives a chunked prefill made of matrix products and a one-token step
// on one state, so a prompt is prefilled and then decoded without a re-run.
//
// ref: J. Du, J. Hu, T. Zhang, W. Sun, Y. Cheng, "Native Hybrid Attention for
//      Efficient Sequence Modeling", arXiv:2510.07019, 2025 (the slot
//      memory is Gated Slot Attention's: Y. Zhang et al., "Gated Slot Attention
//      for Efficient Linear-Time Sequence Modeling", NeurIPS 2024); semantics
//      of the authors' chunk_nha / fused_recurrent_nha (github.com/JusenD/NHA).
//
// For query head h, kv head c = h / (Hq / Hkv), token t (its position in its
// sequence, counted across calls by the state), window w >= 1, m >= 1 slots,
// lag >= 0:
//
//   slot memory of kv head c, written with token u = t - lag (nothing while u < 0):
//     alpha_u = exp(g_u)          g_u = log forget gate of token u, [m], finite, <= 0
//     Ks_t = diag(alpha_u) Ks_{t-1} + (1 - alpha_u) ks_u^T            [m, d_k]
//     Vs_t = diag(alpha_u) Vs_{t-1} + (1 - alpha_u) v_u^T             [m, d_v]
//   one softmax over the m slots and the window W_t = { j : max(0, t-w+1) <= j <= t }:
//     a_i = scale qs_t . Ks_t[i]   (i < m)          b_j = scale q_t . k_j   (j in W_t)
//     o_t = ( sum_i e^(a_i - M) Vs_t[i] + sum_j e^(b_j - M) v_j ) / ( sum_i e^(a_i - M) + sum_j e^(b_j - M) )
//     M = the largest of all a_i and b_j (max-subtracted, so no overflow)
//
// q, k are the window's query/key (the authors apply RoPE to them), qs, ks the
// slots' (the authors' feature-mapped copies); the overloads without qs, ks use
// q and k for both. v is shared, as in the paper. The window counts the current
// token: w = 1 is the token alone (flash_attn window_size = (w - 1, 0)).
// lag = w (the default, slot_lag = -1) writes a token into the slots in the
// step it leaves the window, so slots and window hold disjoint tokens;
// lag = 0 writes it on arrival (the authors' default, gsa_kv_shift = 0), any
// other lag is their gsa_kv_shift = lag. Slots always take part in the
// softmax (a zero slot scores 0 on a zero value, as in GSA), and the window
// always holds the current token, so no row is ever empty; a non-positive sum
// (only reachable through NaN/inf inputs) would give zeros rather than NaN.
//
// Chunked prefill (chunk of c written tokens, R_i = sum_{s=1..i} g_s, relative
// to the chunk's first written token 0; S = 1 - exp(g); P_ij = scale qs_i . ks_j, j <= i):
//   a_i = exp(R_i) . [ exp(g_0) . (Ks qs_i) + sum_{j<=i} P_ij (S_j . exp(-R_j)) ]
//   p_i = exp(a_i - max a_i)    (the window's tiles then update max/sum online)
//   slot output_i = (p_i . exp(g_0 + R_i)) Vs + sum_{j<=i} [(p_i . exp(R_i)) . (S_j . exp(-R_j))] v_j
//   Ks' = diag(exp(g_0 + R_{c-1})) Ks + sum_j (S_j . exp(R_{c-1} - R_j)) ks_j^T   (Vs' alike)
// a chunk ends early where min(R_j) would pass -rec_max_span (40), so no factor
// leaves [e^-40, e^40] (any gates, L = 65536 included). The window part runs
// flash-attention style over key tiles of its band, 32 query tokens at a time.
// All query heads of a kv head are stacked into the same products (GQA reads
// k/v/slots once).
//
// Shapes (sequence-first, last dim contiguous):
//   q, qs, o [batch, seq, heads, d_k | d_v]; k, ks, v [batch, seq, kv_heads, d_k | d_v];
//   g [batch, seq, kv_heads, slots]; packed batches: batch 1 and cu_seqlens [n_seqs + 1].
// State per (sequence, kv head): Ks, Vs and the last R = max(w - 1, lag) tokens'
// k, v (and ks, g when lag > 0) in rings, token j at row j % R, and per sequence
// the number of tokens seen.

#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>

#include "tokmix/linear/detail/recurrence.hpp"
#include "tokmix/simd/dot.hpp"
#include "tokmix/simd/gemm.hpp"
#include "tokmix/simd/online_softmax.hpp"
#include "tokmix/simd/reduce.hpp"

TOKMIX_SIMD_AVX512_WARNINGS_OFF
namespace tokmix {

struct nha_params {
  // Multiplies q and qs; NaN (the default) means 1/sqrt(d_k).
  float scale = std::numeric_limits<float>::quiet_NaN();
  // Tokens of the softmax window, the current one included (>= 1).
  index_t window = 64;
  // Slots m of the long-term memory per kv head (>= 1).
  index_t slots = 64;
  // The token written into the slots at step t is t - slot_lag (>= 0);
  // -1 (the default) means slot_lag = window.
  index_t slot_lag = -1;
  // Tokens per chunk of the chunked prefill (>= 1; need not divide seq).
  index_t chunk_size = 64;
  // Packed variable-length batch: batch must be 1, sequence s is tokens
  // [cu_seqlens[s], cu_seqlens[s+1]) and uses state s. Empty = one
  // sequence per batch entry.                                   // [n_seqs + 1]
  tensor_view<const std::int32_t, 1> cu_seqlens;
  exec_policy policy;

  index_t resolved_lag() const { return slot_lag < 0 ? window : slot_lag; }
};

// Everything a sequence carries between calls. Fresh (or reset) = no history.
// Its window, slots and lag are fixed at construction from the params it will
// be used with.
class nha_state {
 public:
  nha_state() : nha_state(0, 0, 0, 0, nha_params{}) {}
  nha_state(index_t batch, index_t kv_heads, index_t key_dim, index_t value_dim, const nha_params& p = {}) {
    require(batch >= 0, "state batch", ">= 0", batch);
    require(kv_heads >= 0, "state kv_heads", ">= 0", kv_heads);
    require(key_dim >= 0, "state key_dim", ">= 0", key_dim);
    require(value_dim >= 0, "state value_dim", ">= 0", value_dim);
    require(p.window >= 1, "window", ">= 1", p.window);
    require(p.slots >= 1, "slots", ">= 1", p.slots);
    require(p.slot_lag >= -1, "slot_lag", ">= 0 (or -1 for the window size)", p.slot_lag);
    window_ = p.window;
    lag_ = p.resolved_lag();
    ring_ = std::max(window_ - 1, lag_);
    const index_t pend = lag_ > 0 ? ring_ : 0;
    ks_.resize(batch, kv_heads, p.slots, key_dim);
    vs_.resize(batch, kv_heads, p.slots, value_dim);
    rk_.resize(batch, kv_heads, ring_, key_dim);
    rv_.resize(batch, kv_heads, ring_, value_dim);
    rks_.resize(batch, kv_heads, pend, key_dim);
    rg_.resize(batch, kv_heads, pend, p.slots);
    pos_.resize(batch);
    reset();
  }

  index_t batch() const { return pos_.dimension(0); }
  index_t kv_heads() const { return ks_.dimension(1); }
  index_t slots() const { return ks_.dimension(2); }
  index_t key_dim() const { return ks_.dimension(3); }
  index_t value_dim() const { return vs_.dimension(3); }
  index_t window() const { return window_; }
  index_t slot_lag() const { return lag_; }
  // Rows of the token rings: max(window - 1, slot_lag).
  index_t ring_size() const { return ring_; }

  void reset() {
    ks_.setZero();
    vs_.setZero();
    rk_.setZero();
    rv_.setZero();
    rks_.setZero();
    rg_.setZero();
    pos_.setZero();
  }

  tensor_view<float, 4> slot_keys() { return as_view(ks_); }    // [batch, kv_heads, slots, key_dim]
  tensor_view<float, 4> slot_values() { return as_view(vs_); }  // [batch, kv_heads, slots, value_dim]
  tensor_view<float, 4> ring_keys() { return as_view(rk_); }    // [batch, kv_heads, ring, key_dim]
  tensor_view<float, 4> ring_values() { return as_view(rv_); }  // [batch, kv_heads, ring, value_dim]
  // Slot keys and gates of tokens not yet written (empty when slot_lag == 0).
  tensor_view<float, 4> ring_slot_keys() { return as_view(rks_); }  // [batch, kv_heads, ring or 0, key_dim]
  tensor_view<float, 4> ring_gates() { return as_view(rg_); }       // [batch, kv_heads, ring or 0, slots]
  // Tokens each sequence has seen; ring row of token j is j % ring_size().
  tensor_view<std::int64_t, 1> positions() { return as_view(pos_); }  // [batch]
  tensor_view<const float, 4> slot_keys() const { return as_view(ks_); }
  tensor_view<const float, 4> slot_values() const { return as_view(vs_); }
  tensor_view<const std::int64_t, 1> positions() const { return as_view(pos_); }

 private:
  using t4 = Eigen::Tensor<float, 4, Eigen::RowMajor>;
  t4 ks_, vs_, rk_, rv_, rks_, rg_;
  Eigen::Tensor<std::int64_t, 1, Eigen::RowMajor> pos_;
  index_t window_ = 1, lag_ = 1, ring_ = 1;
};

namespace detail {

struct nha_args {
  tensor_view<const float, 4> q, k, qs, ks, v, g;  // see the top of the file
  tensor_view<float, 4> o;
  nha_state* state;
  const nha_params* params;
};

inline void nha_validate(const nha_args& a, bool chunked) {
  const nha_params& p = *a.params;
  require_layout("q", a.q);
  require_layout("k", a.k);
  require_layout("q_slot", a.qs);
  require_layout("k_slot", a.ks);
  require_layout("v", a.v);
  require_layout("g", a.g);
  require_layout("o", a.o);
  const index_t batch = a.q.dim(0), seq = a.q.dim(1), hq = a.q.dim(2), dk = a.q.dim(3);
  const index_t hkv = a.k.dim(2);
  require(hq >= 1, "q heads (dim 2)", ">= 1", hq);
  require(hkv >= 1, "k heads (dim 2)", ">= 1", hkv);
  require(hq % hkv == 0, "q heads (dim 2)", "a multiple of the kv heads " + std::to_string(hkv), hq);
  require(dk >= 1, "q head_dim (dim 3)", ">= 1", dk);
  require_shape("k", a.k, {batch, seq, hkv, dk});
  require_shape("q_slot", a.qs, {batch, seq, hq, dk});
  require_shape("k_slot", a.ks, {batch, seq, hkv, dk});
  require_shape("v", a.v, {batch, seq, hkv, -1});
  const index_t dv = a.v.dim(3);
  require(dv >= 1, "v head_dim (dim 3)", ">= 1", dv);
  require_shape("o", a.o, {batch, seq, hq, dv});
  require(p.window >= 1, "window", ">= 1", p.window);
  require(p.slots >= 1, "slots", ">= 1", p.slots);
  require(p.slot_lag >= -1, "slot_lag", ">= 0 (or -1 for the window size)", p.slot_lag);
  require_shape("g", a.g, {batch, seq, hkv, p.slots});
  if (chunked) require(p.chunk_size >= 1, "chunk_size", ">= 1", p.chunk_size);
  rec_require_scale(p.scale);
  const index_t n_states = rec_validate_cu(p.cu_seqlens, batch, seq);
  const nha_state& st = *a.state;
  require(st.batch() == n_states, "state batch", n_states, st.batch());
  require(st.kv_heads() == hkv, "state kv_heads", hkv, st.kv_heads());
  require(st.key_dim() == dk, "state key_dim", dk, st.key_dim());
  require(st.value_dim() == dv, "state value_dim", dv, st.value_dim());
  require(st.slots() == p.slots, "state slots", p.slots, st.slots());
  require(st.window() == p.window, "state window", p.window, st.window());
  require(st.slot_lag() == p.resolved_lag(), "state slot_lag", p.resolved_lag(), st.slot_lag());
  const auto pos = st.positions();
  for (index_t s = 0; s < n_states; ++s) require(pos(s) >= 0, "state positions", ">= 0", pos(s));
  rec_require_values("g", a.g, -std::numeric_limits<float>::max(), 0.f);
}

// Everything a kernel needs to know about the call, resolved once.
struct nha_shape {
  index_t hq, hkv, grp, dk, dv, m, w, lag, ring, n_seqs;
  float scale;
  bool varlen, own_slot_qk;
  explicit nha_shape(const nha_args& a) {
    const nha_params& p = *a.params;
    hq = a.q.dim(2);
    hkv = a.k.dim(2);
    grp = hq / hkv;
    dk = a.q.dim(3);
    dv = a.v.dim(3);
    m = p.slots;
    w = p.window;
    lag = p.resolved_lag();
    ring = a.state->ring_size();
    varlen = rec_given(p.cu_seqlens);
    n_seqs = varlen ? p.cu_seqlens.dim(0) - 1 : a.q.dim(0);
    scale = rec_scale(p.scale, dk);
    own_slot_qk = a.qs.data() != a.q.data() || a.qs.strides() != a.q.strides() || a.ks.data() != a.k.data() ||
                  a.ks.strides() != a.k.strides();
  }
};

// One (sequence, kv head): its token range and its blocks of the state.
struct nha_item {
  index_t bi, t0, n, hk;
  std::int64_t p0;  // tokens seen before this call
  float *Ks, *Vs, *rk, *rv, *rks, *rg;
};

inline void nha_store_ring(const nha_args& a, const nha_shape& sh, const nha_item& it);

// Runs body(item, b, e, worker) over every (sequence, kv head), the sequence
// cut into windows [b, e) of `window` tokens (local indices). A work item is
// one sequence and a group of kv heads (as many groups as workers), walked
// window by window with the group's heads inside: a window's rows of all heads
// are neighbours in memory ([seq, heads, d]), so they are read and written
// while their pages and lines are cached, instead of every head striding
// through the whole sequence alone (a TLB miss and a cold line per row at long
// L). A head's arithmetic depends only on the window boundaries (multiples of
// `window` from the call's first token), never on the grouping, so results are
// the same for every thread count. Afterwards each head's rings take the
// call's last tokens, and the positions advance.
template <class Body>
inline void nha_for_each(const nha_args& a, const nha_shape& sh, index_t window, Body&& body) {
  nha_state& st = *a.state;
  const auto cu = a.params->cu_seqlens;
  const index_t seq = a.q.dim(1);
  auto pos = st.positions();
  const index_t R = sh.ring, pend = sh.lag > 0 ? R : 0;
  float* ks = st.slot_keys().data();
  float* vs = st.slot_values().data();
  float* rk = st.ring_keys().data();
  float* rv = st.ring_values().data();
  float* rks = st.ring_slot_keys().data();
  float* rg = st.ring_gates().data();
  const exec_policy& policy = a.params->policy;
  const index_t workers = policy.mode() == exec_policy::kind::serial ? 1 : std::max(1, policy.workers());
  const index_t groups = std::min(sh.hkv, workers);
  auto item = [&](index_t s, index_t c) {
    const index_t blk = s * sh.hkv + c;
    nha_item it;
    it.bi = sh.varlen ? 0 : s;
    it.t0 = sh.varlen ? cu(s) : 0;
    it.n = sh.varlen ? cu(s + 1) - cu(s) : seq;
    it.hk = c;
    it.p0 = pos(s);
    it.Ks = ks + blk * sh.m * sh.dk;
    it.Vs = vs + blk * sh.m * sh.dv;
    it.rk = rk + blk * R * sh.dk;
    it.rv = rv + blk * R * sh.dv;
    it.rks = rks + blk * pend * sh.dk;
    it.rg = rg + blk * pend * sh.m;
    return it;
  };
  parallel_for(policy, sh.n_seqs * groups, [&](index_t i, int worker) {
    const index_t s = i / groups, grp = i % groups;
    const index_t c0 = grp * sh.hkv / groups, c1 = (grp + 1) * sh.hkv / groups;
    const index_t n = sh.varlen ? cu(s + 1) - cu(s) : seq;
    for (index_t b = 0; b < n; b += window)
      for (index_t c = c0; c < c1; ++c) body(item(s, c), b, std::min(n, b + window), worker);
    for (index_t c = c0; c < c1; ++c) nha_store_ring(a, sh, item(s, c));
  });
  // Positions move once per sequence, after every kv head has read them.
  for (index_t s = 0; s < sh.n_seqs; ++s) pos(s) += sh.varlen ? cu(s + 1) - cu(s) : seq;
}

// The last ring_size tokens of the call go into the rings (after all reads).
inline void nha_store_ring(const nha_args& a, const nha_shape& sh, const nha_item& it) {
  const std::int64_t R = sh.ring;
  if (R == 0) return;
  const std::int64_t end = it.p0 + it.n, start = std::max<std::int64_t>(it.p0, end - R);
  for (std::int64_t j = start; j < end; ++j) {
    const index_t t = it.t0 + index_t(j - it.p0), row = index_t(j % R);
    const float* k = a.k.ptr(it.bi, t, it.hk, 0);
    const float* v = a.v.ptr(it.bi, t, it.hk, 0);
    std::copy(k, k + sh.dk, it.rk + row * sh.dk);
    std::copy(v, v + sh.dv, it.rv + row * sh.dv);
    if (sh.lag > 0) {
      const float* ks = a.ks.ptr(it.bi, t, it.hk, 0);
      const float* g = a.g.ptr(it.bi, t, it.hk, 0);
      std::copy(ks, ks + sh.dk, it.rks + row * sh.dk);
      std::copy(g, g + sh.m, it.rg + row * sh.m);
    }
  }
}

// The token written into the slots at absolute step `step`: its slot key,
// value and gate rows, or false while step - lag < 0.
struct nha_written {
  const float *ks, *v, *g;
};
inline bool nha_written_token(const nha_args& a, const nha_shape& sh, const nha_item& it, std::int64_t step,
                              nha_written& out) {
  const std::int64_t j = step - sh.lag;
  if (j < 0) return false;
  if (j >= it.p0) {
    const index_t t = it.t0 + index_t(j - it.p0);
    out.ks = a.ks.ptr(it.bi, t, it.hk, 0);
    out.v = a.v.ptr(it.bi, t, it.hk, 0);
    out.g = a.g.ptr(it.bi, t, it.hk, 0);
  } else {  // lag > 0 here, so the pending rings exist
    const index_t row = index_t(j % sh.ring);
    out.ks = it.rks + row * sh.dk;
    out.v = it.rv + row * sh.dv;
    out.g = it.rg + row * sh.m;
  }
  return true;
}

namespace sx = ::tokmix::simd;

// alpha = exp(g) and s = 1 - alpha; s comes from expm1 near g = 0, where
// 1 - exp(g) would lose every digit to cancellation (fla's gates sit there).
template <class Arch>
inline void nha_gate_weights(Arch, const float* g, float* alpha, float* s, index_t n) {
  using fb = sx::fbatch<Arch>;
  constexpr index_t w = sx::lanes<Arch>;
  const fb near(-0.34657359f), one(1.f);  // ln 2 / 2: the range of expm1_reduced
  auto one_batch = [&](const fb& x, fb& al, fb& sv) {
    al = sx::exp_batch<Arch>(x);
    const fb small = -sx::detail::expm1_reduced<Arch>(xsimd::select(x > near, x, fb(0.f)));
    sv = xsimd::select(x > near, small, one - al);
  };
  index_t i = 0;
  fb al, sv;
  for (; i + w <= n; i += w) {
    one_batch(fb::load_unaligned(g + i), al, sv);
    if (alpha) al.store_unaligned(alpha + i);
    sv.store_unaligned(s + i);
  }
  if (i < n) {
    one_batch(sx::detail::load_partial<Arch>(g + i, n - i, 0.f), al, sv);
    if (alpha) sx::detail::store_partial<Arch>(alpha + i, al, n - i);
    sx::detail::store_partial<Arch>(s + i, sv, n - i);
  }
}

// ---- token loop (step, and the baseline the chunked form is measured against) ----

// A run of window keys stored contiguously: the ring's rows (history from
// earlier calls) or the call's own.
struct nha_segment {
  const float *k, *v;
  index_t ldk, ldv, col, cnt;
};

// Window keys [j0, j1) of an item as contiguous runs: the ring part (at most
// one wrap, since j0 >= p0 - (w - 1) >= p0 - R) and the call's own rows.
inline int nha_window_segments(const nha_args& a, const nha_shape& sh, const nha_item& it, std::int64_t j0,
                               std::int64_t j1, nha_segment* out) {
  const std::int64_t R = sh.ring;
  int n = 0;
  for (std::int64_t j = j0, e = std::min(j1, it.p0); j < e;) {
    const index_t row = index_t(j % R), cnt = index_t(std::min<std::int64_t>(e - j, R - row));
    out[n++] = {it.rk + row * sh.dk, it.rv + row * sh.dv, sh.dk, sh.dv, index_t(j - j0), cnt};
    j += cnt;
  }
  if (j1 > it.p0) {
    const std::int64_t b = std::max(j0, it.p0);
    const index_t t = it.t0 + index_t(b - it.p0);
    out[n++] = {a.k.ptr(it.bi, t, it.hk, 0),
                a.v.ptr(it.bi, t, it.hk, 0),
                a.k.stride(1),
                a.v.stride(1),
                index_t(b - j0),
                index_t(j1 - b)};
  }
  return n;
}

// The products below have shapes fixed by the validated call, so they go
// straight to the kernels: simd::gemm_*'s argument checks format their
// messages on every call, which costs as much as a decode step's products.
template <sx::detail::gemm_op Op>
inline void nha_gemm(index_t m, index_t n, index_t k, float alpha, const float* a, index_t lda, const float* b,
                     index_t ldb, float beta, float* c, index_t ldc) {
  sx::detail::gemm_dispatch<Op>(m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
constexpr auto nha_nn = sx::detail::gemm_op::nn;
constexpr auto nha_nt = sx::detail::gemm_op::nt;
constexpr auto nha_tn = sx::detail::gemm_op::tn;

// Query heads read out together in the token loop (bounds a stack array).
constexpr index_t nha_max_group_rows = 8;

// Per token: the slots take the written token, then the group's query heads
// (stacked rows) score the slots and the window in few-row products (dot
// products along d, several keys at a time), one softmax per head, and the
// readout streams the slot and window value rows once for all heads.
template <class Arch>
inline void nha_token_kernel(Arch arch, const nha_args& a) {
  const nha_shape sh(a);
  const index_t m = sh.m, dk = sh.dk, dv = sh.dv, G = sh.grp;
  // Window rows actually reachable this call bound the score buffer (w may exceed any L).
  std::int64_t most = 0;
  {
    auto pos = a.state->positions();
    const index_t seq = a.q.dim(1);
    for (index_t s = 0; s < sh.n_seqs; ++s) {
      const index_t n = sh.varlen ? a.params->cu_seqlens(s + 1) - a.params->cu_seqlens(s) : seq;
      most = std::max<std::int64_t>(most, pos(s) + n);
    }
  }
  using sf = scratch_frame;
  const index_t nwin = index_t(std::min<std::int64_t>(sh.w, std::max<std::int64_t>(most, 1)));
  const index_t ld_sc = m + nwin;
  const std::size_t sz_sc = sf::bytes_for<float>(G * ld_sc), sz_m = sf::bytes_for<float>(m);
  const std::size_t sz_q = sf::bytes_for<float>(G * dk);
  const std::size_t sz_o = sf::bytes_for<float>(std::min(G, nha_max_group_rows) * dv);
  const std::size_t slot = sz_sc + 2 * sz_m + 2 * sz_q + sz_o;
  const int workers = worker_slots(a.params->policy);
  sf frame(slot * std::size_t(workers));
  float* base = frame.alloc<float>(slot / sizeof(float) * std::size_t(workers));

  nha_for_each(a, sh, rec_token_window, [&](const nha_item& it, index_t tb, index_t te, int worker) {
    float* p = base + slot / sizeof(float) * std::size_t(worker);
    auto take = [&p](std::size_t bytes) {
      float* r = p;
      p += bytes / sizeof(float);
      return r;
    };
    float* sc = take(sz_sc);  // [G, m + window] scores, then weights
    float* alpha = take(sz_m);
    float* sw = take(sz_m);
    float* qw = take(sz_q);  // [G, d_k] scale q
    float* qsl = sh.own_slot_qk ? take(sz_q) : qw;
    float* ob = take(sz_o);  // [<= 8, d_v] unnormalised output of up to 8 heads
    const index_t h0 = it.hk * G;
    for (index_t tl = tb; tl < te; ++tl) {
      const std::int64_t step = it.p0 + tl;
      const index_t t = it.t0 + tl;
      nha_written wt;
      if (nha_written_token(a, sh, it, step, wt)) {
        nha_gate_weights(arch, wt.g, alpha, sw, m);
        for (index_t i = 0; i < m; ++i) {
          sx::detail::scale_add_kernel(arch, alpha[i], it.Ks + i * dk, sw[i], wt.ks, dk);
          sx::detail::scale_add_kernel(arch, alpha[i], it.Vs + i * dv, sw[i], wt.v, dv);
        }
      }
      for (index_t gi = 0; gi < G; ++gi) {
        rec_scale_mul(arch, sh.scale, a.q.ptr(it.bi, t, h0 + gi, 0), nullptr, qw + gi * dk, dk);
        if (sh.own_slot_qk) rec_scale_mul(arch, sh.scale, a.qs.ptr(it.bi, t, h0 + gi, 0), nullptr, qsl + gi * dk, dk);
      }
      const std::int64_t j0 = std::max<std::int64_t>(0, step - sh.w + 1);
      const index_t nw = index_t(step - j0 + 1);
      nha_segment seg[3];
      const int ns = nha_window_segments(a, sh, it, j0, step + 1, seg);
      nha_gemm<nha_nt>(G, m, dk, 1.f, qsl, dk, it.Ks, dk, 0.f, sc, ld_sc);
      for (int q = 0; q < ns; ++q)
        nha_gemm<nha_nt>(G, seg[q].cnt, dk, 1.f, qw, dk, seg[q].k, seg[q].ldk, 0.f, sc + m + seg[q].col, ld_sc);
      float inv[nha_max_group_rows];
      for (index_t g0 = 0; g0 < G; g0 += nha_max_group_rows) {
        const index_t gn = std::min(nha_max_group_rows, G - g0);
        float* sg = sc + g0 * ld_sc;
        for (index_t gi = 0; gi < gn; ++gi) {
          float mx = -std::numeric_limits<float>::infinity(), l = 0.f;
          sx::detail::online_softmax_update_kernel(arch, sg + gi * ld_sc, m + nw, mx, l);
          inv[gi] = l > 0.f ? 1.f / l : 0.f;
        }
        nha_gemm<nha_nn>(gn, dv, m, 1.f, sg, ld_sc, it.Vs, dv, 0.f, ob, dv);
        for (int q = 0; q < ns; ++q)
          nha_gemm<nha_nn>(gn, dv, seg[q].cnt, 1.f, sg + m + seg[q].col, ld_sc, seg[q].v, seg[q].ldv, 1.f, ob, dv);
        for (index_t gi = 0; gi < gn; ++gi)
          rec_scale_mul(arch, inv[gi], ob + gi * dv, nullptr, a.o.ptr(it.bi, t, h0 + g0 + gi, 0), dv);
      }
    }
  });
}

// ---- chunked prefill ------------------------------------------------------------

// r = prev + g over the slots; returns min r (the chunk's span so far: gates are <= 0).
template <class Arch>
inline float nha_cumsum_row(Arch, const float* prev, const float* g, float* r, index_t n) {
  using fb = sx::fbatch<Arch>;
  constexpr index_t w = sx::lanes<Arch>;
  fb mn(0.f);
  index_t i = 0;
  for (; i + w <= n; i += w) {
    const fb x = fb::load_unaligned(prev + i) + fb::load_unaligned(g + i);
    x.store_unaligned(r + i);
    mn = xsimd::min(mn, x);
  }
  float out = -sx::detail::horizontal_max<Arch>(-mn);
  for (; i < n; ++i) {
    r[i] = prev[i] + g[i];
    out = std::min(out, r[i]);
  }
  return out;
}

// y = exp(a - b) * x elementwise (y may alias x).
template <class Arch>
inline void nha_exp_diff_mul(Arch, const float* a, const float* b, const float* x, float* y, index_t n) {
  using fb = sx::fbatch<Arch>;
  constexpr index_t w = sx::lanes<Arch>;
  index_t i = 0;
  for (; i + w <= n; i += w)
    (sx::exp_batch<Arch>(fb::load_unaligned(a + i) - fb::load_unaligned(b + i)) * fb::load_unaligned(x + i))
        .store_unaligned(y + i);
  if (i < n) {
    const fb d = sx::detail::load_partial<Arch>(a + i, n - i, 0.f) - sx::detail::load_partial<Arch>(b + i, n - i, 0.f);
    sx::detail::store_partial<Arch>(y + i, sx::exp_batch<Arch>(d) * sx::detail::load_partial<Arch>(x + i, n - i, 0.f),
                                    n - i);
  }
}

// Key tile of the window part: the band of a chunk (c + w - 1 keys) is walked
// in tiles this wide, so the score buffer stays bounded for any window.
constexpr index_t nha_key_tile = 128;

// Tokens per row block of the window part. A block of b rows scores b + w - 1
// keys, w of them visible per row: at w = C = 64 whole chunks score twice what
// they need, blocks of 32 1.5x, blocks of 16 1.25x, but each block packs its key
// tile again; 32 measured fastest (3-8% over 16 and 64 at both bench shapes).
// Past w = 2C the band's waste is small, so whole chunks.
constexpr index_t nha_row_block_tokens = 32;
inline index_t nha_row_block(index_t window, index_t chunk) {
  return window >= 2 * chunk ? chunk : std::min<index_t>(chunk, nha_row_block_tokens);
}

template <class Arch>
inline void nha_chunk_kernel(Arch arch, const nha_args& a) {
  const nha_shape sh(a);
  const index_t m = sh.m, dk = sh.dk, dv = sh.dv, G = sh.grp;
  const index_t seq = a.q.dim(1);
  index_t max_n = 0;
  {
    for (index_t s = 0; s < sh.n_seqs; ++s) {
      max_n = std::max<index_t>(max_n, sh.varlen ? a.params->cu_seqlens(s + 1) - a.params->cu_seqlens(s) : seq);
    }
  }
  const index_t C = std::min<index_t>(a.params->chunk_size, std::max<index_t>(max_n, 1));
  const index_t RB = nha_row_block(sh.w, C);
  const index_t KT = std::min<index_t>(nha_key_tile, RB + std::min<index_t>(sh.w, std::max<index_t>(max_n, 1)) - 1);
  const index_t GC = G * C;

  using sf = scratch_frame;
  const std::size_t sz_cdk = sf::bytes_for<float>(C * dk), sz_cdv = sf::bytes_for<float>(C * dv);
  const std::size_t sz_cm = sf::bytes_for<float>(C * m), sz_m = sf::bytes_for<float>(m);
  const std::size_t sz_q = sf::bytes_for<float>(GC * dk), sz_p = sf::bytes_for<float>(GC * C);
  const std::size_t sz_a = sf::bytes_for<float>(GC * m), sz_acc = sf::bytes_for<float>(GC * dv);
  const std::size_t sz_s = sf::bytes_for<float>(G * RB * KT), sz_row = sf::bytes_for<float>(GC);
  const std::size_t slot = sz_cdk + sz_cdv + 5 * sz_cm + 3 * sz_m + (sh.own_slot_qk ? 2 : 1) * sz_q + sz_p + sz_a +
                           sz_acc + sz_s + 2 * sz_row;
  const int workers = worker_slots(a.params->policy);
  sf frame(slot * std::size_t(workers));
  float* base = frame.alloc<float>(slot / sizeof(float) * std::size_t(workers));
  const index_t ldv = a.v.stride(1);
  constexpr float ninf = -std::numeric_limits<float>::infinity();

  nha_for_each(a, sh, C, [&](const nha_item& it, index_t wb, index_t we, int worker) {
    float* p = base + slot / sizeof(float) * std::size_t(worker);
    auto take = [&p](std::size_t bytes) {
      float* r = p;
      p += bytes / sizeof(float);
      return r;
    };
    float* KW = take(sz_cdk);  // [C, d_k] slot keys written in the chunk's steps
    float* VW = take(sz_cdv);  // [C, d_v] their values
    float* GW = take(sz_cm);   // [C, m]   their log gates (0 where nothing is written)
    float* Rc = take(sz_cm);   // [C, m]   chunk-relative cumulative gates
    float* ER = take(sz_cm);   // [C, m]   exp(R_i)
    float* SG = take(sz_cm);   // [C, m]   (1 - alpha_j) exp(-R_j)
    float* SE = take(sz_cm);   // [C, m]   (1 - alpha_j) exp(R_{c-1} - R_j)
    float* e0 = take(sz_m);    // exp(g_0)
    float* el = take(sz_m);    // exp(R_{c-1})
    float* dec = take(sz_m);   // exp(g_0 + R_{c-1}): the chunk's decay of the carried slots
    float* QW = take(sz_q);    // [G c, d_k] scale q, rows token-major
    float* QS = sh.own_slot_qk ? take(sz_q) : QW;
    float* P = take(sz_p);      // [G c, c] qs . ks, then the slot-readout weights
    float* A = take(sz_a);      // [G c, m] slot scores, then weights
    float* acc = take(sz_acc);  // [G c, d_v] unnormalised output
    float* S = take(sz_s);      // [G RB, KT] window scores of one key tile
    float* mx = take(sz_row);
    float* lsum = take(sz_row);

    for (index_t c0 = wb; c0 < we;) {
      const index_t cmax = std::min(C, we - c0);
      const std::int64_t a0 = it.p0 + c0;
      // The written stream of steps a0 .. a0 + cmax - 1: the call's own rows
      // in place when they all lie in it, else gathered densely.
      const float *kw = KW, *vw = VW, *gw = GW;
      index_t ldkw = dk, ldvw = dv, ldgw = m;
      if (a0 - sh.lag >= it.p0) {
        const index_t t = it.t0 + index_t(a0 - sh.lag - it.p0);
        kw = a.ks.ptr(it.bi, t, it.hk, 0);
        vw = a.v.ptr(it.bi, t, it.hk, 0);
        gw = a.g.ptr(it.bi, t, it.hk, 0);
        ldkw = a.ks.stride(1);
        ldvw = ldv;
        ldgw = a.g.stride(1);
      } else {
        for (index_t i = 0; i < cmax; ++i) {
          nha_written wt;
          if (nha_written_token(a, sh, it, a0 + i, wt)) {
            std::copy(wt.ks, wt.ks + dk, KW + i * dk);
            std::copy(wt.v, wt.v + dv, VW + i * dv);
            std::copy(wt.g, wt.g + m, GW + i * m);
          } else {
            std::fill(KW + i * dk, KW + (i + 1) * dk, 0.f);
            std::fill(VW + i * dv, VW + (i + 1) * dv, 0.f);
            std::fill(GW + i * m, GW + (i + 1) * m, 0.f);
          }
        }
      }
      std::fill(Rc, Rc + m, 0.f);
      index_t c = 1;
      for (; c < cmax; ++c) {
        const float mn = nha_cumsum_row(arch, Rc + (c - 1) * m, gw + c * ldgw, Rc + c * m, m);
        if (mn < -rec_max_span) break;
      }
      const index_t Gc = G * c;
      // Gate factors.
      rec_exp_rel(arch, gw, 0.f, 1.f, e0, m);
      rec_exp_rel(arch, Rc + (c - 1) * m, 0.f, 1.f, el, m);
      rec_scale_mul(arch, 1.f, e0, el, dec, m);
      for (index_t i = 0; i < c; ++i) {
        float* sw = SE + i * m;  // 1 - alpha staged here
        nha_gate_weights(arch, gw + i * ldgw, static_cast<float*>(nullptr), sw, m);
        rec_exp_rel(arch, Rc + i * m, 0.f, 1.f, ER + i * m, m);
        rec_exp_rel(arch, Rc + i * m, 0.f, -1.f, SG + i * m, m);
        rec_scale_mul(arch, 1.f, SG + i * m, sw, SG + i * m, m);
        nha_exp_diff_mul(arch, Rc + (c - 1) * m, Rc + i * m, sw, sw, m);
      }
      // Queries of the group, token-major: row r is token r / G, head r % G,
      // so a run of tokens is a run of rows for every head at once.
      const index_t tc = it.t0 + c0, h0 = it.hk * G;
      for (index_t i = 0; i < c; ++i)
        for (index_t gi = 0; gi < G; ++gi) {
          const index_t r = i * G + gi;
          rec_scale_mul(arch, sh.scale, a.q.ptr(it.bi, tc + i, h0 + gi, 0), nullptr, QW + r * dk, dk);
          if (sh.own_slot_qk)
            rec_scale_mul(arch, sh.scale, a.qs.ptr(it.bi, tc + i, h0 + gi, 0), nullptr, QS + r * dk, dk);
        }
      // Row r keeps columns j <= r / G of a [G c, c] matrix.
      auto causal = [&](float* M) {
        for (index_t r = 0; r < Gc; ++r) std::fill(M + r * c + r / G + 1, M + (r + 1) * c, 0.f);
      };
      // Slot scores.
      nha_gemm<nha_nt>(Gc, c, dk, 1.f, QS, dk, kw, ldkw, 0.f, P, c);
      causal(P);
      nha_gemm<nha_nt>(Gc, m, dk, 1.f, QS, dk, it.Ks, dk, 0.f, A, m);
      for (index_t r = 0; r < Gc; ++r) rec_scale_mul(arch, 1.f, A + r * m, e0, A + r * m, m);
      nha_gemm<nha_nn>(Gc, m, c, 1.f, P, c, SG, m, 1.f, A, m);
      for (index_t r = 0; r < Gc; ++r) {
        float* ar = A + r * m;
        const float* er = ER + (r / G) * m;
        rec_scale_mul(arch, 1.f, ar, er, ar, m);
        mx[r] = ninf;
        lsum[r] = 0.f;
        sx::detail::online_softmax_update_kernel(arch, ar, m, mx[r], lsum[r]);
        rec_scale_mul(arch, 1.f, ar, er, ar, m);  // p . exp(R_i)
      }
      // Slot readout: carried slots, then the chunk's own writes.
      nha_gemm<nha_nt>(Gc, c, m, 1.f, A, m, SG, m, 0.f, P, c);
      causal(P);
      for (index_t r = 0; r < Gc; ++r) rec_scale_mul(arch, 1.f, A + r * m, e0, A + r * m, m);
      nha_gemm<nha_nn>(Gc, dv, m, 1.f, A, m, it.Vs, dv, 0.f, acc, dv);
      nha_gemm<nha_nn>(Gc, dv, c, 1.f, P, c, vw, ldvw, 1.f, acc, dv);
      // Window, a block of RB tokens at a time: those rows see keys
      // [a0 + i0 - w + 1, a0 + i1), walked in tiles with an online softmax.
      for (index_t i0 = 0; i0 < c; i0 += RB) {
        const index_t i1 = std::min(c, i0 + RB), r0 = i0 * G, nr = (i1 - i0) * G;
        const std::int64_t klo = std::max<std::int64_t>(0, a0 + i0 - sh.w + 1), khi = a0 + i1;
        for (std::int64_t jt = klo; jt < khi; jt += KT) {
          const std::int64_t j1 = std::min<std::int64_t>(khi, jt + KT);
          const index_t nt = index_t(j1 - jt);
          nha_segment seg[3];
          const int ns = nha_window_segments(a, sh, it, jt, j1, seg);
          for (int q = 0; q < ns; ++q)
            nha_gemm<nha_nt>(nr, seg[q].cnt, dk, 1.f, QW + r0 * dk, dk, seg[q].k, seg[q].ldk, 0.f, S + seg[q].col, KT);
          for (index_t rr = 0; rr < nr; ++rr) {
            const index_t r = r0 + rr;
            const std::int64_t step = a0 + r / G;
            const index_t lo = index_t(std::max<std::int64_t>(0, step - sh.w + 1 - jt));
            const index_t hi = index_t(std::min<std::int64_t>(nt, step - jt + 1));
            float* sr = S + rr * KT;
            if (hi <= lo) {
              std::fill(sr, sr + nt, 0.f);
              continue;
            }
            std::fill(sr, sr + lo, ninf);
            std::fill(sr + hi, sr + nt, ninf);
            const float alpha = sx::detail::online_softmax_update_kernel(arch, sr, nt, mx[r], lsum[r]);
            if (alpha != 1.f) sx::detail::scale_kernel(arch, alpha, acc + r * dv, dv);
          }
          for (int q = 0; q < ns; ++q)
            nha_gemm<nha_nn>(nr, dv, seg[q].cnt, 1.f, S + seg[q].col, KT, seg[q].v, seg[q].ldv, 1.f, acc + r0 * dv, dv);
        }
      }
      // Normalise into o.
      for (index_t r = 0; r < Gc; ++r) {
        const float inv = lsum[r] > 0.f ? 1.f / lsum[r] : 0.f;
        rec_scale_mul(arch, inv, acc + r * dv, nullptr, a.o.ptr(it.bi, tc + r / G, h0 + r % G, 0), dv);
      }
      // Carry the slots past the chunk.
      rec_scale_state_rows(arch, it.Ks, m, dk, dec);
      nha_gemm<nha_tn>(m, dk, c, 1.f, SE, m, kw, ldkw, 1.f, it.Ks, dk);
      rec_scale_state_rows(arch, it.Vs, m, dv, dec);
      nha_gemm<nha_tn>(m, dv, c, 1.f, SE, m, vw, ldvw, 1.f, it.Vs, dv);
      c0 += c;
    }
  });
}

}  // namespace detail

// The chunked prefill (authors' chunk_nha): initial state taken from `state`,
// final state left in it. `o` must not overlap any input.
inline void nha_prefill(tensor_view<const float, 4> q,       // [batch, seq, heads, d_k]     window queries
                        tensor_view<const float, 4> k,       // [batch, seq, kv_heads, d_k]  window keys
                        tensor_view<const float, 4> q_slot,  // [batch, seq, heads, d_k]     slot queries
                        tensor_view<const float, 4> k_slot,  // [batch, seq, kv_heads, d_k]  keys written into slots
                        tensor_view<const float, 4> v,       // [batch, seq, kv_heads, d_v]
                        tensor_view<const float, 4> g,       // [batch, seq, kv_heads, slots] log forget gates, <= 0
                        tensor_view<float, 4> o,             // [batch, seq, heads, d_v]
                        nha_state& state,                    // [batch or n_seqs, kv_heads, ...]
                        const nha_params& params = {}) {
  const detail::nha_args a{q, k, q_slot, k_slot, v, g, o, &state, &params};
  detail::nha_validate(a, true);
  detail::nha_chunk_kernel(xsimd::default_arch{}, a);
}

// One query/key pair for the window and the slots.
inline void nha_prefill(tensor_view<const float, 4> q,  // [batch, seq, heads, d_k]
                        tensor_view<const float, 4> k,  // [batch, seq, kv_heads, d_k]
                        tensor_view<const float, 4> v,  // [batch, seq, kv_heads, d_v]
                        tensor_view<const float, 4> g,  // [batch, seq, kv_heads, slots]
                        tensor_view<float, 4> o,        // [batch, seq, heads, d_v]
                        nha_state& state, const nha_params& params = {}) {
  nha_prefill(q, k, q, k, v, g, o, state, params);
}

// The same result token by token (authors' fused_recurrent_nha): the baseline
// the chunked form is measured against, and what nha_step runs.
inline void nha_recurrent_prefill(tensor_view<const float, 4> q,       // [batch, seq, heads, d_k]
                                  tensor_view<const float, 4> k,       // [batch, seq, kv_heads, d_k]
                                  tensor_view<const float, 4> q_slot,  // [batch, seq, heads, d_k]
                                  tensor_view<const float, 4> k_slot,  // [batch, seq, kv_heads, d_k]
                                  tensor_view<const float, 4> v,       // [batch, seq, kv_heads, d_v]
                                  tensor_view<const float, 4> g,       // [batch, seq, kv_heads, slots]
                                  tensor_view<float, 4> o,             // [batch, seq, heads, d_v]
                                  nha_state& state, const nha_params& params = {}) {
  const detail::nha_args a{q, k, q_slot, k_slot, v, g, o, &state, &params};
  detail::nha_validate(a, false);
  detail::nha_token_kernel(xsimd::default_arch{}, a);
}

inline void nha_recurrent_prefill(tensor_view<const float, 4> q,  // [batch, seq, heads, d_k]
                                  tensor_view<const float, 4> k,  // [batch, seq, kv_heads, d_k]
                                  tensor_view<const float, 4> v,  // [batch, seq, kv_heads, d_v]
                                  tensor_view<const float, 4> g,  // [batch, seq, kv_heads, slots]
                                  tensor_view<float, 4> o,        // [batch, seq, heads, d_v]
                                  nha_state& state, const nha_params& params = {}) {
  nha_recurrent_prefill(q, k, q, k, v, g, o, state, params);
}

// One token per batch entry on the state a prefill leaves.
inline void nha_step(tensor_view<const float, 3> q,       // [batch, heads, d_k]
                     tensor_view<const float, 3> k,       // [batch, kv_heads, d_k]
                     tensor_view<const float, 3> q_slot,  // [batch, heads, d_k]
                     tensor_view<const float, 3> k_slot,  // [batch, kv_heads, d_k]
                     tensor_view<const float, 3> v,       // [batch, kv_heads, d_v]
                     tensor_view<const float, 3> g,       // [batch, kv_heads, slots]
                     tensor_view<float, 3> o,             // [batch, heads, d_v]
                     nha_state& state,                    // [batch, kv_heads, ...]
                     const nha_params& params = {}) {
  require(!detail::rec_given(params.cu_seqlens), "cu_seqlens", "empty for a step (one token per batch entry)",
          "size " + std::to_string(params.cu_seqlens.dim(0)));
  using detail::rec_one_token;
  nha_recurrent_prefill(rec_one_token(q), rec_one_token(k), rec_one_token(q_slot), rec_one_token(k_slot),
                        rec_one_token(v), rec_one_token(g), rec_one_token(o), state, params);
}

inline void nha_step(tensor_view<const float, 3> q,  // [batch, heads, d_k]
                     tensor_view<const float, 3> k,  // [batch, kv_heads, d_k]
                     tensor_view<const float, 3> v,  // [batch, kv_heads, d_v]
                     tensor_view<const float, 3> g,  // [batch, kv_heads, slots]
                     tensor_view<float, 3> o,        // [batch, heads, d_v]
                     nha_state& state, const nha_params& params = {}) {
  nha_step(q, k, q, k, v, g, o, state, params);
}

}  // namespace tokmix
TOKMIX_SIMD_AVX512_WARNINGS_ON
