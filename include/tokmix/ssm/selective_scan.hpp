#pragma once
// Mamba-1 selective scan (S6), prefill and one-token step on one state.
// CPU ports of it (mamba_ssm's reference loop, ggml's ssm_scan) compute one
// scalar expf per (token, channel, state) element, which dominates their time;
// here the channel axis is the SIMD axis, so exp, softplus, the D skip and the
// z gate run on whole batches, and a batch of state elements costs one
// vectorised exp and two FMAs, with A and h held in registers over a block of
// tokens. Work items are (sequence, channel range); results do not depend on
// the thread count.
//
// ref: Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective State
//      Spaces" (2023), Algorithm 2 and sec. 3.3; semantics of mamba_ssm
//      selective_scan_fn / selective_scan_ref (prefill) and
//      selective_state_update (step). For channel d, state n, group g(d):
//
//   delta_t[d] = softplus(delta[t,d] + delta_bias[d])      (softplus optional)
//   h_t[d,n]   = exp(delta_t[d] A[d,n]) h_{t-1}[d,n] + delta_t[d] B[t,g,n] u[t,d]
//   y[t,d]     = (sum_n C[t,g,n] h_t[d,n] + D[d] u[t,d]) * silu(z[t,d])   (D, z optional)
//
// Channel d uses group d / (d_inner / G) of B and C, as grouped heads do.
// A is mamba's [d_inner, d_state]; a view of a [d_state, d_inner] buffer
// (strides {1, d_inner}) is read in place instead of transposed per call,
// which halves a decode step. A, D and delta_bias must be finite.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>

#include "tokmix/core/third_party.hpp"
#include "tokmix/simd/arch.hpp"

#include "tokmix/core/error.hpp"
#include "tokmix/core/scratch.hpp"
#include "tokmix/core/tensor_view.hpp"
#include "tokmix/core/threading.hpp"
#include "tokmix/simd/activation.hpp"
#include "tokmix/simd/exp.hpp"
#include "tokmix/ssm/detail/varlen.hpp"

TOKMIX_SIMD_AVX512_WARNINGS_OFF
namespace tokmix {

struct selective_scan_params {
  tensor_view<const float, 1> D;           // [d_inner] skip; empty = none
  tensor_view<const float, 1> delta_bias;  // [d_inner] added to delta; empty = none
  bool delta_softplus = false;             // delta <- softplus(delta + delta_bias)

  // Packed variable-length batch: batch must be 1, sequence s is tokens
  // [cu_seqlens[s], cu_seqlens[s+1]) and uses state s. Empty = one
  // sequence per batch entry.                                   // [n_seqs + 1]
  tensor_view<const std::int32_t, 1> cu_seqlens;

  exec_policy policy;
};

// h of every sequence: initial state in, final state out. Fresh = zeros.
// Stored [batch, d_state, d_inner] so the kernel's SIMD axis (channels) is
// contiguous and a step touches the state in place, with no transposition;
// h() shows it in mamba's [batch, d_inner, d_state] order through strides.
class selective_scan_state {
 public:
  selective_scan_state() : selective_scan_state(0, 0, 0) {}
  selective_scan_state(index_t batch, index_t d_inner, index_t d_state) {
    require(batch >= 0, "selective_scan_state batch", ">= 0", batch);
    require(d_inner >= 0, "selective_scan_state d_inner", ">= 0", d_inner);
    require(d_state >= 0, "selective_scan_state d_state", ">= 0", d_state);
    h_.resize(batch, d_state, d_inner);
    reset();
  }

  index_t batch() const { return h_.dimension(0); }
  index_t d_inner() const { return h_.dimension(2); }
  index_t d_state() const { return h_.dimension(1); }

  void reset() { h_.setZero(); }

  // h()(b, d, n) is h[d, n] of sequence b; the last dimension is not unit-stride.
  //                                                     // [batch, d_inner, d_state]
  tensor_view<float, 3> h() { return as_view(h_).permuted({0, 2, 1}); }
  tensor_view<const float, 3> h() const { return as_view(h_).permuted({0, 2, 1}); }

  // The storage as it is.                               // [batch, d_state, d_inner]
  tensor_view<float, 3> h_by_state() { return as_view(h_); }
  tensor_view<const float, 3> h_by_state() const { return as_view(h_); }

 private:
  Eigen::Tensor<float, 3, Eigen::RowMajor> h_;
};

namespace detail {

struct selective_scan_args {
  tensor_view<const float, 3> u, delta;  // [batch, seq, d_inner]
  tensor_view<const float, 2> A;         // [d_inner, d_state]
  tensor_view<const float, 4> B, C;      // [batch, seq, groups, d_state]
  tensor_view<const float, 3> z;         // [batch, seq, d_inner] or empty
  tensor_view<float, 3> y;               // [batch, seq, d_inner]
  selective_scan_state* state;
  const selective_scan_params* params;
};

template <class T, int R>
inline bool selective_scan_given(const tensor_view<T, R>& v) {
  return v.data() != nullptr;
}

// Every element of a parameter finite. Runs on every call (steps included), so
// it is vectorised along the unit-stride dimension: x - x is 0 for finite x and
// NaN otherwise, and a NaN anywhere survives the sum.
template <class Arch>
inline bool selective_scan_all_finite(Arch, const float* p, index_t n, index_t step) {
  using batch = simd::fbatch<Arch>;
  constexpr index_t S = simd::lanes<Arch>;
  if (step != 1) {
    float acc = 0.f;
    for (index_t i = 0; i < n; ++i) acc += p[i * step] - p[i * step];
    return acc == 0.f;
  }
  batch acc(0.f);
  index_t i = 0;
  for (; i + S <= n; i += S) {
    const batch v = batch::load_unaligned(p + i);
    acc += v - v;
  }
  float tail = 0.f;
  for (; i < n; ++i) tail += p[i] - p[i];
  return xsimd::hadd(acc) + tail == 0.f;
}

inline void selective_scan_require_finite(const char* name, const tensor_view<const float, 2>& v) {
  // Rows along whichever dimension is unit-stride.
  const bool by_row = v.stride(1) == 1 || v.dim(1) <= 1;
  const index_t outer = by_row ? v.dim(0) : v.dim(1), inner = by_row ? v.dim(1) : v.dim(0);
  const index_t outer_step = by_row ? v.stride(0) : v.stride(1), inner_step = by_row ? v.stride(1) : v.stride(0);
  for (index_t r = 0; r < outer; ++r)
    if (!selective_scan_all_finite(simd::default_arch{}, v.data() + r * outer_step, inner, inner == 1 ? 1 : inner_step))
      for (index_t i = 0; i < inner; ++i) {
        const float x = v.data()[r * outer_step + i * inner_step];
        if (!std::isfinite(x))
          throw argument_error(name, "finite values",
                               detail::to_text(x) + " at [" + std::to_string(by_row ? r : i) + ", " +
                                   std::to_string(by_row ? i : r) + "]");
      }
}

inline void selective_scan_require_finite(const char* name, const tensor_view<const float, 1>& v) {
  selective_scan_require_finite(name, tensor_view<const float, 2>(v.data(), {1, v.dim(0)}, {0, v.stride(0)}));
}

inline void selective_scan_validate(const selective_scan_args& a) {
  require_layout("u", a.u);
  require_layout("delta", a.delta);
  // A may also be the transpose of a [d_state, d_inner] buffer (unit stride on
  // d_inner): then the kernel reads it in place, which is what decode wants.
  if (!(a.A.stride(0) == 1 && a.A.dim(1) > 1)) require_layout("A", a.A);
  else require_layout("A (transposed view)", a.A.permuted({1, 0}));
  require_layout("B", a.B);
  require_layout("C", a.C);
  require_layout("y", a.y);
  const index_t batch = a.u.dim(0), seq = a.u.dim(1), d_inner = a.u.dim(2);
  const index_t d_state = a.A.dim(1), groups = a.B.dim(2);
  require_shape<const float, 3>("delta", a.delta, a.u.dims());
  require_shape("A", a.A, {d_inner, -1});
  require_shape("B", a.B, {batch, seq, -1, d_state});
  require(groups >= 1, "B groups (dim 2)", ">= 1", groups);
  require_shape<const float, 4>("C", a.C, a.B.dims());
  require(d_inner % groups == 0, "B groups (dim 2)", "a divisor of d_inner = " + std::to_string(d_inner), groups);
  if (selective_scan_given(a.z)) {
    require_layout("z", a.z);
    require_shape<const float, 3>("z", a.z, a.u.dims());
  }
  require_shape<float, 3>("y", a.y, a.u.dims());
  const selective_scan_params& p = *a.params;
  if (selective_scan_given(p.D)) {
    require_layout("D", p.D);
    require_shape("D", p.D, {d_inner});
  }
  if (selective_scan_given(p.delta_bias)) {
    require_layout("delta_bias", p.delta_bias);
    require_shape("delta_bias", p.delta_bias, {d_inner});
  }
  index_t n_states = batch;
  if (selective_scan_given(p.cu_seqlens)) {
    ssm_require_cu_seqlens(p.cu_seqlens, batch, seq);
    n_states = p.cu_seqlens.dim(0) - 1;
  }
  require(a.state->batch() == n_states, "state batch", n_states, a.state->batch());
  require(a.state->d_inner() == d_inner, "state d_inner", d_inner, a.state->d_inner());
  require(a.state->d_state() == d_state, "state d_state", d_state, a.state->d_state());
  selective_scan_require_finite("A", a.A);
  if (selective_scan_given(p.D)) selective_scan_require_finite("D", p.D);
  if (selective_scan_given(p.delta_bias)) selective_scan_require_finite("delta_bias", p.delta_bias);
}

// One channel range of one sequence. A and h are laid out [d_state][channel]
// (in scratch or where they live) so the loop over n reads whole batches;
// per-channel constants and the pass buffers are padded to whole batches with
// zeros, whose lanes compute harmless values that are never stored.
struct selective_scan_block {
  index_t t0, t1;       // token range
  index_t bi;           // batch index of the inputs
  index_t c0, nch;      // first channel, channel count
  index_t g;            // group of B and C
  index_t width;        // nch rounded up to lanes
  const float* at;      // A(c0 + i, n) at at[n * at_step + i]
  index_t at_step;
  float* ht;            // h(c0 + i, n) at ht[n * ht_step + i]: the state itself
  index_t ht_step;
  const float* dskip;   // [width] or null
  const float* dbias;   // [width] or null
  float* dtb;           // [time_block, width]: delta after bias and softplus
  float* dtub;          // [time_block, width]: delta * u
  float* yb;            // [time_block, width]: C . h
};

// Tokens per pass: the per-token work (softplus, the gate) runs as its own
// vectorised pass over a block of tokens instead of sitting, with its long
// latency chain, in front of every state update it feeds. The three pass
// buffers (3 * 16 * chunk floats, 48 KiB at 256 channels) stay in L2.
constexpr index_t selective_scan_time_block = 16;

template <bool Partial, class Arch>
inline void selective_scan_prologue(Arch, const selective_scan_args& a, const selective_scan_block& k, index_t t,
                                    index_t row, index_t j, index_t nvalid) {
  using batch = simd::fbatch<Arch>;
  auto load = [&](const float* p) { return Partial ? simd::detail::load_partial<Arch>(p, nvalid, 0.f) : batch::load_unaligned(p); };
  const index_t c = k.c0 + j;
  batch dt = load(a.delta.ptr(k.bi, t, c));
  if (k.dbias) dt += batch::load_aligned(k.dbias + j);
  if (a.params->delta_softplus) dt = simd::softplus_batch<Arch>(dt);
  dt.store_aligned(k.dtb + row * k.width + j);
  (dt * load(a.u.ptr(k.bi, t, c))).store_aligned(k.dtub + row * k.width + j);
}

template <bool Partial, class Arch>
inline void selective_scan_epilogue(Arch, const selective_scan_args& a, const selective_scan_block& k, index_t t,
                                    index_t row, index_t j, index_t nvalid) {
  using batch = simd::fbatch<Arch>;
  auto load = [&](const float* p) { return Partial ? simd::detail::load_partial<Arch>(p, nvalid, 0.f) : batch::load_unaligned(p); };
  const index_t c = k.c0 + j;
  batch y = batch::load_aligned(k.yb + row * k.width + j);
  if (k.dskip) y = xsimd::fma(batch::load_aligned(k.dskip + j), load(a.u.ptr(k.bi, t, c)), y);
  if (selective_scan_given(a.z)) y *= simd::silu_batch<Arch>(load(a.z.ptr(k.bi, t, c)));
  float* yp = a.y.ptr(k.bi, t, c);
  if (Partial) simd::detail::store_partial<Arch>(yp, y, nvalid);
  else y.store_unaligned(yp);
}

// The recurrence proper for one batch of channels and NB state indices over a
// block of tokens: A and h of those states live in registers for the whole
// block, so each state element costs one exp batch and two FMAs, with only the
// broadcasts of B and C read from memory. y accumulates over n in ascending
// order whatever the blocking, so results do not depend on NB.
template <int NB, bool Partial, class Arch>
inline void selective_scan_update(Arch, const selective_scan_block& k, index_t rows, index_t j, index_t n0,
                                  const float* const* bt, const float* const* ct) {
  using batch = simd::fbatch<Arch>;
  const index_t w = k.width, nv = k.nch - j;
  // A and h are read where they live; past the last channel the lanes get
  // A = 0 and h = 0 (with u = 0 there, h stays 0) and are never stored.
  auto load = [&](const float* p) {
    return Partial ? simd::detail::load_partial<Arch>(p, nv, 0.f) : batch::load_unaligned(p);
  };
  batch a[NB], h[NB];
  for (int i = 0; i < NB; ++i) {
    a[i] = load(k.at + (n0 + i) * k.at_step + j);
    h[i] = load(k.ht + (n0 + i) * k.ht_step + j);
  }
  for (index_t r = 0; r < rows; ++r) {
    const batch dt = batch::load_aligned(k.dtb + r * w + j);
    const batch dtu = batch::load_aligned(k.dtub + r * w + j);
    float* yp = k.yb + r * w + j;
    batch y = n0 == 0 ? batch(0.f) : batch::load_aligned(yp);
    const float* b = bt[r] + n0;
    const float* c = ct[r] + n0;
    for (int i = 0; i < NB; ++i) {
      const batch decay = simd::exp_batch<Arch>(dt * a[i]);
      h[i] = xsimd::fma(decay, h[i], dtu * batch(b[i]));
      y = xsimd::fma(h[i], batch(c[i]), y);
    }
    y.store_aligned(yp);
  }
  for (int i = 0; i < NB; ++i) {
    float* hp = k.ht + (n0 + i) * k.ht_step + j;
    if (Partial) simd::detail::store_partial<Arch>(hp, h[i], nv);
    else h[i].store_unaligned(hp);
  }
}

template <bool Partial, class Arch>
inline void selective_scan_update_all(Arch arch, const selective_scan_block& k, index_t n_state, index_t rows,
                                      index_t j, const float* const* bt, const float* const* ct) {
  // Registers for A and h: 16 of AVX-512's 32, 8 of AVX2's 16, leaving the rest
  // to the exp's temporaries.
  constexpr int nb = simd::lanes<Arch> >= 16 ? 8 : 4;
  index_t n = 0;
  for (; n + nb <= n_state; n += nb) selective_scan_update<nb, Partial>(arch, k, rows, j, n, bt, ct);
  for (; n < n_state; ++n) selective_scan_update<1, Partial>(arch, k, rows, j, n, bt, ct);
}

template <class Arch>
inline void selective_scan_block_run(Arch arch, const selective_scan_args& a, const selective_scan_block& k) {
  constexpr index_t S = simd::lanes<Arch>;
  const index_t full = k.nch / S * S, n_state = a.A.dim(1);
  const float* bt[selective_scan_time_block];
  const float* ct[selective_scan_time_block];
  for (index_t tb = k.t0; tb < k.t1; tb += selective_scan_time_block) {
    const index_t te = std::min(k.t1, tb + selective_scan_time_block), rows = te - tb;
    for (index_t t = tb; t < te; ++t) {
      for (index_t j = 0; j < full; j += S) selective_scan_prologue<false>(arch, a, k, t, t - tb, j, S);
      if (full < k.nch) selective_scan_prologue<true>(arch, a, k, t, t - tb, full, k.nch - full);
      bt[t - tb] = a.B.ptr(k.bi, t, k.g, 0);
      ct[t - tb] = a.C.ptr(k.bi, t, k.g, 0);
    }
    for (index_t j = 0; j < full; j += S) selective_scan_update_all<false>(arch, k, n_state, rows, j, bt, ct);
    if (full < k.nch) selective_scan_update_all<true>(arch, k, n_state, rows, full, bt, ct);
    for (index_t t = tb; t < te; ++t) {
      for (index_t j = 0; j < full; j += S) selective_scan_epilogue<false>(arch, a, k, t, t - tb, j, S);
      if (full < k.nch) selective_scan_epilogue<true>(arch, a, k, t, t - tb, full, k.nch - full);
    }
  }
}

// Channels per work item: a multiple of the lanes. Wide, because every token
// row of u, delta, z and y is d_inner floats apart, so each row visit lands on
// a new page where hardware prefetchers restart; 256 channels make it 1 KiB of
// contiguous reads (measured ~25% faster than 64 at d_inner 1536), while the
// item's A (d_state * chunk floats, 16 KiB at N = 16) stays in L1.
template <class Arch>
inline index_t selective_scan_chunk(index_t d_state) {
  constexpr index_t S = simd::lanes<Arch>;
  const index_t fit = 8192 / std::max<index_t>(d_state, 1) / S * S;
  return std::max(S, std::min<index_t>(256, fit));
}

template <class Arch>
inline void selective_scan_kernel(Arch arch, const selective_scan_args& a) {
  constexpr index_t S = simd::lanes<Arch>;
  const selective_scan_params& p = *a.params;
  const index_t batch = a.u.dim(0), seq = a.u.dim(1), d_inner = a.u.dim(2);
  const index_t d_state = a.A.dim(1), groups = a.B.dim(2);
  const bool varlen = selective_scan_given(p.cu_seqlens);
  const index_t n_seqs = varlen ? p.cu_seqlens.dim(0) - 1 : batch;
  if (n_seqs == 0 || d_inner == 0 || seq == 0) return;

  const index_t per_group = d_inner / groups;
  const index_t chunk = std::min(selective_scan_chunk<Arch>(d_state), (per_group + S - 1) / S * S);
  const index_t chunks = (per_group + chunk - 1) / chunk;
  const int slots = worker_slots(p.policy);
  const index_t tblock = selective_scan_time_block;
  // A with unit stride on d_inner is read in place; mamba's [d_inner, d_state]
  // is transposed per item into the worker's scratch.
  const bool a_direct = a.A.stride(0) == 1;
  const std::size_t at_bytes = a_direct ? 0 : scratch_frame::bytes_for<float>(chunk * d_state);
  const std::size_t slot_bytes = at_bytes + 2 * scratch_frame::bytes_for<float>(chunk) +
                                 3 * scratch_frame::bytes_for<float>(tblock * chunk);
  scratch_frame frame(slot_bytes * slots);
  float* base = frame.alloc<float>(slot_bytes / sizeof(float) * slots);

  auto state_h = a.state->h_by_state();
  parallel_for(p.policy, n_seqs * groups * chunks, [&](index_t item, int worker) {
    const index_t s = item / (groups * chunks);
    const index_t g = item / chunks % groups;
    const index_t c0 = g * per_group + item % chunks * chunk;
    selective_scan_block k;
    k.bi = varlen ? 0 : s;
    k.t0 = varlen ? p.cu_seqlens(s) : 0;
    k.t1 = varlen ? p.cu_seqlens(s + 1) : seq;
    if (k.t0 == k.t1) return;  // empty sequence: state stays as it is
    k.c0 = c0;
    k.nch = std::min(chunk, (g + 1) * per_group - c0);
    k.g = g;
    k.width = (k.nch + S - 1) / S * S;

    float* mem = base + slot_bytes / sizeof(float) * worker;
    float* at = mem;
    float* dskip = at + at_bytes / sizeof(float);
    float* dbias = dskip + scratch_frame::bytes_for<float>(chunk) / sizeof(float);
    k.dtb = dbias + scratch_frame::bytes_for<float>(chunk) / sizeof(float);
    k.dtub = k.dtb + scratch_frame::bytes_for<float>(tblock * chunk) / sizeof(float);
    k.yb = k.dtub + scratch_frame::bytes_for<float>(tblock * chunk) / sizeof(float);
    const index_t w = k.width;
    if (a_direct) {
      k.at = a.A.ptr(c0, 0);
      k.at_step = a.A.stride(1);
    } else {
      // Local copies of the strides keep the loop in registers (it is most of
      // a decode step's cost when A comes in mamba's layout).
      const float* src = a.A.ptr(c0, 0);
      const index_t s_d = a.A.stride(0), s_n = a.A.stride(1), nch = k.nch;
      for (index_t i = 0; i < nch; ++i)
        for (index_t n = 0; n < d_state; ++n) at[n * w + i] = src[i * s_d + n * s_n];
      for (index_t n = 0; n < d_state; ++n) std::fill(at + n * w + nch, at + (n + 1) * w, 0.f);
      k.at = at;
      k.at_step = w;
    }
    k.ht = state_h.ptr(s, 0, c0);
    k.ht_step = state_h.stride(1);
    for (index_t i = 0; i < w; ++i) {
      const bool valid = i < k.nch;
      dskip[i] = valid && selective_scan_given(p.D) ? p.D(c0 + i) : 0.f;
      dbias[i] = valid && selective_scan_given(p.delta_bias) ? p.delta_bias(c0 + i) : 0.f;
    }
    k.dskip = selective_scan_given(p.D) ? dskip : nullptr;
    k.dbias = selective_scan_given(p.delta_bias) ? dbias : nullptr;

    selective_scan_block_run(arch, a, k);
  });
}

// A one-token tensor [batch, ...] seen as [batch, 1, ...], so the step runs the
// prefill kernel and the two agree bit for bit.
template <class T, int R>
inline tensor_view<T, R + 1> selective_scan_one_token(const tensor_view<T, R>& v) {
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

inline void selective_scan_run(const selective_scan_args& a) {
  selective_scan_validate(a);
  selective_scan_kernel(simd::default_arch{}, a);
}

}  // namespace detail

// selective_scan_fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus) with
// the initial state taken from `state` and the final state left in it.
// `y` must not overlap any input.
inline void selective_scan_prefill(tensor_view<const float, 3> u,      // [batch, seq, d_inner]
                                   tensor_view<const float, 3> delta,  // [batch, seq, d_inner]
                                   tensor_view<const float, 2> A,      // [d_inner, d_state]
                                   tensor_view<const float, 4> B,      // [batch, seq, groups, d_state]
                                   tensor_view<const float, 4> C,      // [batch, seq, groups, d_state]
                                   tensor_view<const float, 3> z,      // [batch, seq, d_inner]; empty = no gate
                                   selective_scan_state& state,        // [batch or n_seqs, d_inner, d_state]
                                   tensor_view<float, 3> y,            // [batch, seq, d_inner]
                                   const selective_scan_params& params = {}) {
  detail::selective_scan_run({u, delta, A, B, C, z, y, &state, &params});
}

// Without the z gate.
inline void selective_scan_prefill(tensor_view<const float, 3> u,      // [batch, seq, d_inner]
                                   tensor_view<const float, 3> delta,  // [batch, seq, d_inner]
                                   tensor_view<const float, 2> A,      // [d_inner, d_state]
                                   tensor_view<const float, 4> B,      // [batch, seq, groups, d_state]
                                   tensor_view<const float, 4> C,      // [batch, seq, groups, d_state]
                                   selective_scan_state& state,        // [batch or n_seqs, d_inner, d_state]
                                   tensor_view<float, 3> y,            // [batch, seq, d_inner]
                                   const selective_scan_params& params = {}) {
  detail::selective_scan_run({u, delta, A, B, C, tensor_view<const float, 3>(), y, &state, &params});
}

// One token per sequence (selective_state_update semantics), on the state a
// prefill leaves: prefill(L) then steps == steps from the start, bit for bit.
inline void selective_scan_step(tensor_view<const float, 2> u,      // [batch, d_inner]
                                tensor_view<const float, 2> delta,  // [batch, d_inner]
                                tensor_view<const float, 2> A,      // [d_inner, d_state]
                                tensor_view<const float, 3> B,      // [batch, groups, d_state]
                                tensor_view<const float, 3> C,      // [batch, groups, d_state]
                                tensor_view<const float, 2> z,      // [batch, d_inner]; empty = no gate
                                selective_scan_state& state,        // [batch, d_inner, d_state]
                                tensor_view<float, 2> y,            // [batch, d_inner]
                                const selective_scan_params& params = {}) {
  require(!detail::selective_scan_given(params.cu_seqlens), "cu_seqlens", "empty for a step (one token per batch entry)",
          "size " + std::to_string(params.cu_seqlens.dim(0)));
  using detail::selective_scan_one_token;
  // The shape checks must see the rank-2/3 extents before they are reshaped.
  require_layout("u", u);
  require_shape<const float, 2>("delta", delta, u.dims());
  require_shape<float, 2>("y", y, u.dims());
  require(B.dim(0) == u.dim(0), "B batch (dim 0)", u.dim(0), B.dim(0));
  require(C.dim(0) == u.dim(0), "C batch (dim 0)", u.dim(0), C.dim(0));
  if (detail::selective_scan_given(z)) require_shape<const float, 2>("z", z, u.dims());
  tensor_view<const float, 3> z3;
  if (detail::selective_scan_given(z)) z3 = selective_scan_one_token(z);
  detail::selective_scan_run({selective_scan_one_token(u), selective_scan_one_token(delta), A,
                              selective_scan_one_token(B), selective_scan_one_token(C), z3,
                              selective_scan_one_token(y), &state, &params});
}

// Without the z gate.
inline void selective_scan_step(tensor_view<const float, 2> u,      // [batch, d_inner]
                                tensor_view<const float, 2> delta,  // [batch, d_inner]
                                tensor_view<const float, 2> A,      // [d_inner, d_state]
                                tensor_view<const float, 3> B,      // [batch, groups, d_state]
                                tensor_view<const float, 3> C,      // [batch, groups, d_state]
                                selective_scan_state& state,        // [batch, d_inner, d_state]
                                tensor_view<float, 2> y,            // [batch, d_inner]
                                const selective_scan_params& params = {}) {
  selective_scan_step(u, delta, A, B, C, tensor_view<const float, 2>(), state, y, params);
}

}  // namespace tokmix
TOKMIX_SIMD_AVX512_WARNINGS_ON
