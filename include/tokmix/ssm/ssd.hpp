#pragma once
// Mamba-2 state-space duality (SSD): chunked prefill and one-token step on one
// state. CPU ports (mamba_ssm's reference loop, ggml's ssm_scan) run the
// recurrence token by token, a rank-1 update of a P x N state per token and
// head; the chunked form turns almost all of the work into matrix products of
// chunk-sized tiles, which run near the FMA peak (simd::gemm_*).
//
// ref: T. Dao, A. Gu, "Transformers are SSMs: Generalized Models and Efficient
//      Algorithms Through Structured State Space Duality", ICML 2024, sec. 6
//      (the SSD algorithm: intra-chunk, chunk states, state passing, output);
//      semantics of mamba_ssm mamba_chunk_scan_combined / ssd_minimal_discrete
//      (prefill) and selective_state_update (step). For head h, group g(h):
//
//   dt_t   = clamp(softplus(dt[t,h] + dt_bias[h]), dt_min, dt_max)   (softplus optional)
//   h_t    = exp(dt_t A_h) h_{t-1} + dt_t x_t B_t^T                  (P x N)
//   y_t    = (h_t C_t + D_h x_t) * silu(z_t)                         (D, z optional)
//
// Head h uses group h / (heads / groups) of B and C (grouped heads).
//
// Chunked form, chunk of l tokens starting with state h, cum_i = sum_{k<=i} dt_k A:
//   Y  = diag(exp(cum)) C h^T  +  (C B^T . L) (dt . X),   L_ij = exp(cum_i - cum_j), j <= i
//   h <- exp(cum_last) h + (exp(cum_last - cum) . dt . X)^T B
// Every exponent is a difference cum_i - cum_j <= 0 taken in double (no exp of
// a large positive number, no cancellation of two large float sums).
// C B^T does not depend on the head: it is computed once per chunk for all the
// heads of a group (walked chunk-major, so B, C and x stay in cache). Per token
// and head that leaves 4PN + 2QP FLOPs of products, plus 2QN per group.
// While a prefill runs, each state is held transposed (N x P): both state
// products then read it with P contiguous (C h^T as an nn product, the update
// as a tn product), where the public P x N layout would make the C h^T product
// transpose the whole state once per chunk and head.
//
// Deviations from mamba_ssm, on purpose:
//   * dt is always clamped to [dt_min, dt_max] (defaults 0 and +inf); mamba
//     skips the clamp at the default limits, so there a negative step (no
//     softplus) would make the state grow. Here it counts as dt = 0.
//   * A must be finite and <= 0 (mamba parameterises A = -exp(A_log)); a
//     positive A would make the state grow and the chunk decays overflow.
//   * dt * A is floored at -1e4 per token: exp(-1e4) is already 0 in float,
//     and the floor keeps cumulative sums finite for any finite dt.

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
#include "tokmix/simd/activation.hpp"
#include "tokmix/simd/dot.hpp"
#include "tokmix/simd/exp.hpp"
#include "tokmix/simd/gemm.hpp"
#include "tokmix/simd/prefetch.hpp"

TOKMIX_SIMD_AVX512_WARNINGS_OFF
namespace tokmix {

// Default chunk length. Measured (bench/ssd.cpp, 24 heads x P = 64, N = 128,
// L = 4096, one AVX-512 core, medians of 3, two runs): chunk 16 47 ms, 32
// 41-42 ms, 64 52-54 ms, 128 and 256 about 2x slower (the masked half of the
// chunk x chunk tile grows, and the tiles leave L1). The token loop: 89-91 ms.
constexpr index_t ssd_default_chunk = 32;

struct ssd_params {
  // Skip term: [heads, 1] (one D per head) or [heads, head_dim]; empty = none.
  tensor_view<const float, 2> D;
  tensor_view<const float, 1> dt_bias;  // [heads] added to dt; empty = none
  bool dt_softplus = false;             // dt <- softplus(dt + dt_bias)
  float dt_min = 0.f;                   // dt clamped to [dt_min, dt_max] after softplus
  float dt_max = std::numeric_limits<float>::infinity();
  index_t chunk_size = ssd_default_chunk;  // tokens per chunk (prefill only), >= 1

  // Packed variable-length batch: batch must be 1, sequence s is tokens
  // [cu_seqlens[s], cu_seqlens[s+1]) and uses state s. Empty = one sequence
  // per batch entry.                                              // [n_seqs + 1]
  tensor_view<const std::int32_t, 1> cu_seqlens;

  exec_policy policy;
};

// h of every sequence and head: initial state in, final state out. Fresh = zeros.
class ssd_state {
 public:
  ssd_state() : ssd_state(0, 0, 0, 0) {}
  ssd_state(index_t batch, index_t heads, index_t head_dim, index_t d_state) {
    require(batch >= 0, "ssd_state batch", ">= 0", batch);
    require(heads >= 0, "ssd_state heads", ">= 0", heads);
    require(head_dim >= 0, "ssd_state head_dim", ">= 0", head_dim);
    require(d_state >= 0, "ssd_state d_state", ">= 0", d_state);
    h_.resize(batch, heads, head_dim, d_state);
    reset();
  }

  index_t batch() const { return h_.dimension(0); }
  index_t heads() const { return h_.dimension(1); }
  index_t head_dim() const { return h_.dimension(2); }
  index_t d_state() const { return h_.dimension(3); }

  void reset() { h_.setZero(); }

  //                                                     // [batch, heads, head_dim, d_state]
  tensor_view<float, 4> h() { return as_view(h_); }
  tensor_view<const float, 4> h() const { return as_view(h_); }

 private:
  Eigen::Tensor<float, 4, Eigen::RowMajor> h_;
};

namespace detail {

// Floor of dt * A per token (see the header comment).
constexpr float ssd_log_decay_floor = -1e4f;

struct ssd_args {
  tensor_view<const float, 4> x;     // [batch, seq, heads, head_dim]
  tensor_view<const float, 3> dt;    // [batch, seq, heads]
  tensor_view<const float, 1> A;     // [heads]
  tensor_view<const float, 4> B, C;  // [batch, seq, groups, d_state]
  tensor_view<const float, 4> z;     // [batch, seq, heads, head_dim] or empty
  tensor_view<float, 4> y;           // [batch, seq, heads, head_dim]
  tensor_view<float, 4> h;           // [n_states, heads, head_dim, d_state], dense
  const ssd_params* params;
  bool epilogue = true;              // D skip and z gate (Hydra applies them after combining scans)
};

template <class T, int R>
inline bool ssd_given(const tensor_view<T, R>& v) {
  return v.data() != nullptr;
}

template <int R>
inline void ssd_require_finite(const char* name, const tensor_view<const float, R>& v, bool non_positive = false) {
  // Parameters are small (heads x head_dim at most); a full pass costs nothing.
  const index_t n = v.size();
  index_t idx[R] = {};
  for (index_t i = 0; i < n; ++i) {
    index_t off = 0;
    for (int k = 0; k < R; ++k) off += idx[k] * v.stride(k);
    const float e = v.data()[off];
    if (!std::isfinite(e)) throw argument_error(name, "finite values", to_text(e) + " at flat index " + std::to_string(i));
    if (non_positive && e > 0.f)
      throw argument_error(name, "values <= 0 (A = -exp(A_log))", to_text(e) + " at flat index " + std::to_string(i));
    for (int k = R - 1; k >= 0; --k) {
      if (++idx[k] < v.dim(k)) break;
      idx[k] = 0;
    }
  }
}

// Row stride the products may use: any stride for a single row.
template <class T, int R>
inline index_t ssd_row_stride(const tensor_view<T, R>& v, int seq_dim) {
  return std::max({v.stride(seq_dim), v.dim(R - 1), index_t(1)});
}

template <class T, int R>
inline void ssd_require_rows(const char* name, const tensor_view<T, R>& v, int seq_dim) {
  if (v.dim(seq_dim) > 1 && v.dim(R - 1) > 0)
    require(v.stride(seq_dim) >= v.dim(R - 1), name,
            "a sequence stride >= the last extent " + std::to_string(v.dim(R - 1)) + " (rows must not overlap)",
            "stride " + std::to_string(v.stride(seq_dim)));
}

inline void ssd_validate_params(const ssd_params& p, index_t heads, index_t head_dim) {
  if (ssd_given(p.D)) {
    require_layout("D", p.D);
    require(p.D.dim(0) == heads && (p.D.dim(1) == 1 || p.D.dim(1) == head_dim), "D",
            "shape [" + std::to_string(heads) + ", 1] or [" + std::to_string(heads) + ", " + std::to_string(head_dim) + "]",
            "shape " + p.D.shape_string());
    ssd_require_finite("D", p.D);
  }
  if (ssd_given(p.dt_bias)) {
    require_layout("dt_bias", p.dt_bias);
    require_shape("dt_bias", p.dt_bias, {heads});
    ssd_require_finite("dt_bias", p.dt_bias);
  }
  require(p.dt_min >= 0.f && !std::isinf(p.dt_min), "dt_min", "a finite value >= 0", p.dt_min);
  require(p.dt_max >= p.dt_min, "dt_max", ">= dt_min = " + to_text(p.dt_min), p.dt_max);
  require(p.chunk_size >= 1, "chunk_size", ">= 1", p.chunk_size);
}

// Shapes shared by the prefill and Hydra; returns the number of sequences.
inline index_t ssd_validate_io(const ssd_args& a, bool allow_varlen) {
  require_layout("x", a.x);
  require_layout("dt", a.dt);
  require_layout("A", a.A);
  require_layout("B", a.B);
  require_layout("C", a.C);
  require_layout("y", a.y);
  const index_t batch = a.x.dim(0), seq = a.x.dim(1), heads = a.x.dim(2), head_dim = a.x.dim(3);
  const index_t groups = a.B.dim(2);
  require_shape("dt", a.dt, {batch, seq, heads});
  require_shape("A", a.A, {heads});
  require_shape("B", a.B, {batch, seq, -1, -1});
  require(groups >= 1, "B groups (dim 2)", ">= 1", groups);
  require(heads % groups == 0, "B groups (dim 2)", "a divisor of heads = " + std::to_string(heads), groups);
  require_shape<const float, 4>("C", a.C, a.B.dims());
  if (ssd_given(a.z)) {
    require_layout("z", a.z);
    require_shape<const float, 4>("z", a.z, a.x.dims());
  }
  require_shape<float, 4>("y", a.y, a.x.dims());
  ssd_require_rows("x", a.x, 1);
  ssd_require_rows("B", a.B, 1);
  ssd_require_rows("C", a.C, 1);
  ssd_require_rows("y", a.y, 1);
  const ssd_params& p = *a.params;
  ssd_validate_params(p, heads, head_dim);
  ssd_require_finite("A", a.A, true);
  index_t n_states = batch;
  if (ssd_given(p.cu_seqlens)) {
    require(allow_varlen, "cu_seqlens", "empty here (one sequence per batch entry)",
            "size " + std::to_string(p.cu_seqlens.dim(0)));
    const auto& cu = p.cu_seqlens;
    require_layout("cu_seqlens", cu);
    require(batch == 1, "x batch (dim 0) with cu_seqlens", 1, batch);
    require(cu.dim(0) >= 1, "cu_seqlens size", ">= 1 (n_seqs + 1)", cu.dim(0));
    require(cu(0) == 0, "cu_seqlens[0]", 0, cu(0));
    for (index_t s = 1; s < cu.dim(0); ++s)
      if (cu(s) < cu(s - 1))
        throw argument_error("cu_seqlens", "non-decreasing offsets",
                             std::to_string(cu(s)) + " after " + std::to_string(cu(s - 1)) + " at " + std::to_string(s));
    require(cu(cu.dim(0) - 1) == seq, "cu_seqlens[n_seqs]", "seq = " + std::to_string(seq), cu(cu.dim(0) - 1));
    n_states = cu.dim(0) - 1;
  }
  return n_states;
}

// Step size of one token, as the prefill and the step both compute it.
inline float ssd_dt(float raw, float bias, const ssd_params& p) {
  float v = raw + bias;
  if (p.dt_softplus) v = v > simd::softplus_threshold ? v : std::log1p(std::exp(v));
  return std::min(std::max(v, p.dt_min), p.dt_max);
}

inline float ssd_log_decay(float dt, float a) { return std::max(dt * a, ssd_log_decay_floor); }

// y = (src + D x) * silu(z) over one row of head_dim (src may be y); d is one
// D per channel (d_stride 1) or one per head (d_stride 0); d, z may be null.
template <class Arch>
inline void ssd_epilogue_row(Arch, float* y, const float* src, const float* x, const float* d, index_t d_stride,
                             const float* z, index_t n) noexcept {
  using batch = simd::fbatch<Arch>;
  constexpr index_t w = simd::lanes<Arch>;
  auto body = [&](index_t i, index_t cnt) {
    auto load = [&](const float* p) {
      return cnt == w ? batch::load_unaligned(p) : simd::detail::load_partial<Arch>(p, cnt, 0.f);
    };
    batch v = load(src + i);
    if (d) v = xsimd::fma(d_stride ? load(d + i) : batch(d[0]), load(x + i), v);
    if (z) v *= simd::silu_batch<Arch>(load(z + i));
    if (cnt == w) v.store_unaligned(y + i);
    else simd::detail::store_partial<Arch>(y + i, v, cnt);
  };
  index_t i = 0;
  for (; i + w <= n; i += w) body(i, w);
  if (i < n) body(i, n - i);
}

// y[i] = x[i] exp(e[i]) over [0, n); e = -inf (the causal mask) writes an
// exact 0, even over a non-finite x[i].
template <class Arch>
inline void ssd_mul_exp(Arch, float* y, const float* x, const float* e, index_t n) noexcept {
  using fb = simd::fbatch<Arch>;
  constexpr index_t w = simd::lanes<Arch>;
  const fb ninf(-std::numeric_limits<float>::infinity());
  auto f = [&](const fb& xv, const fb& ev) { return xsimd::select(ev > ninf, xv * simd::exp_batch<Arch>(ev), fb(0.f)); };
  index_t i = 0;
  for (; i + w <= n; i += w) f(fb::load_unaligned(x + i), fb::load_unaligned(e + i)).store_unaligned(y + i);
  if (i < n)
    simd::detail::store_partial<Arch>(
        y + i, f(simd::detail::load_partial<Arch>(x + i, n - i, 0.f), simd::detail::load_partial<Arch>(e + i, n - i, 0.f)),
        n - i);
}

// Per-worker buffers of the chunk loop.
struct ssd_work {
  float* dtv;    // [chunk]        step sizes
  double* cum;   // [chunk]        cumulative dt * A inside the chunk
  float* row;    // [chunk]        exponents / decays of one row
  float* CB;     // [chunk, chunk] C B^T, shared by the heads of one group
  float* S;      // [chunk, chunk] C B^T . L of one head
  float* xd;     // [chunk, head_dim] dt . X, then decayed to the chunk end
  float* yt;     // [chunk, head_dim] the chunk's output before the skip and gate
  float* stage;  // [head_dim * d_state] staging for the state transposes
};

inline std::size_t ssd_work_bytes(index_t chunk, index_t head_dim, index_t d_state) {
  return 2 * scratch_frame::bytes_for<float>(chunk) + scratch_frame::bytes_for<double>(chunk) +
         2 * scratch_frame::bytes_for<float>(chunk * chunk) + 2 * scratch_frame::bytes_for<float>(chunk * head_dim) +
         scratch_frame::bytes_for<float>(head_dim * d_state);
}

inline ssd_work ssd_carve(float* base, index_t chunk, index_t head_dim) {
  ssd_work w;
  unsigned char* p = reinterpret_cast<unsigned char*>(base);
  auto take = [&p](std::size_t bytes) {
    unsigned char* q = p;
    p += bytes;
    return q;
  };
  w.dtv = reinterpret_cast<float*>(take(scratch_frame::bytes_for<float>(chunk)));
  w.cum = reinterpret_cast<double*>(take(scratch_frame::bytes_for<double>(chunk)));
  w.row = reinterpret_cast<float*>(take(scratch_frame::bytes_for<float>(chunk)));
  w.CB = reinterpret_cast<float*>(take(scratch_frame::bytes_for<float>(chunk * chunk)));
  w.S = reinterpret_cast<float*>(take(scratch_frame::bytes_for<float>(chunk * chunk)));
  w.xd = reinterpret_cast<float*>(take(scratch_frame::bytes_for<float>(chunk * head_dim)));
  w.yt = reinterpret_cast<float*>(take(scratch_frame::bytes_for<float>(chunk * head_dim)));
  w.stage = reinterpret_cast<float*>(p);
  return w;
}

// h [rows, cols] -> [cols, rows] in place, through `stage` (rows * cols floats).
inline void ssd_transpose_state(float* h, index_t rows, index_t cols, float* stage) noexcept {
  for (index_t r = 0; r < rows; ++r)
    for (index_t c = 0; c < cols; ++c) stage[c * rows + r] = h[r * cols + c];
  std::copy(stage, stage + rows * cols, h);
}

// One head on one chunk [c0, c0 + l) of batch entry bi; w.CB holds C B^T of
// the chunk; ht is the head's state transposed, [d_state, head_dim], dense.
template <class Arch>
void ssd_head_chunk(Arch arch, const ssd_args& a, index_t bi, index_t c0, index_t l, index_t head, index_t g, float* ht,
                    const ssd_work& w) {
  const ssd_params& p = *a.params;
  const index_t P = a.x.dim(3), N = a.B.dim(3), Q = p.chunk_size;
  const float A = a.A(head);
  const float bias = ssd_given(p.dt_bias) ? p.dt_bias(head) : 0.f;
  const index_t ldb = ssd_row_stride(a.B, 1), ldc = ssd_row_stride(a.C, 1);
  const index_t ldy = ssd_row_stride(a.y, 1);

  double run = 0;
  for (index_t j = 0; j < l; ++j) {
    const float v = ssd_dt(a.dt(bi, c0 + j, head), bias, p);
    w.dtv[j] = v;
    run += static_cast<double>(ssd_log_decay(v, A));
    w.cum[j] = run;
  }
  for (index_t j = 0; j < l; ++j)
    simd::detail::scale_add_kernel(arch, 0.f, w.xd + j * P, w.dtv[j], a.x.ptr(bi, c0 + j, head, 0), P);
  const float* Cp = a.C.ptr(bi, c0, g, 0);
  const float* Bp = a.B.ptr(bi, c0, g, 0);
  float* yp = a.y.ptr(bi, c0, head, 0);

  // State to output: Y = diag(exp(cum)) C h^T. Y is built in an L1-sized tile
  // and leaves for y (strided rows, usually cold) in one pass at the end.
  simd::gemm_nn(l, P, N, 1.f, Cp, ldc, ht, P, 0.f, w.yt, P);
  for (index_t i = 0; i < l; ++i) w.row[i] = static_cast<float>(w.cum[i]);
  simd::detail::exp_kernel(arch, w.row, w.row, l);
  for (index_t i = 0; i < l; ++i) simd::detail::scale_kernel(arch, w.row[i], w.yt + i * P, P);

  // Intra-chunk: Y += (C B^T . L) (dt . X), on the full l x l tile (skipping
  // the zeros above the diagonal in row blocks measured slower: narrow products).
  // Only the visible j <= i part of each row goes through exp; the two plain
  // loops (no select) let the compiler vectorise the double differences.
  for (index_t i = 0; i < l; ++i) {
    const double ci = w.cum[i];
    for (index_t j = 0; j <= i; ++j) w.row[j] = static_cast<float>(ci - w.cum[j]);
    ssd_mul_exp(arch, w.S + i * Q, w.CB + i * Q, w.row, i + 1);
    std::fill(w.S + i * Q + i + 1, w.S + i * Q + l, 0.f);
  }
  simd::gemm_nn(l, P, l, 1.f, w.S, Q, w.xd, P, 1.f, w.yt, P);

  const bool skip = a.epilogue && ssd_given(p.D), gate = a.epilogue && ssd_given(a.z);
  const float* dskip = skip ? p.D.ptr(head, 0) : nullptr;
  const index_t dstride = skip && p.D.dim(1) != 1 ? 1 : 0;
  for (index_t i = 0; i < l; ++i) {
    if (skip || gate)
      ssd_epilogue_row(arch, yp + i * ldy, w.yt + i * P, a.x.ptr(bi, c0 + i, head, 0), dskip, dstride,
                       gate ? a.z.ptr(bi, c0 + i, head, 0) : nullptr, P);
    else
      std::copy(w.yt + i * P, w.yt + (i + 1) * P, yp + i * ldy);
  }

  // Chunk state: h <- exp(cum_last) h + (exp(cum_last - cum) . dt . X)^T B,
  // here transposed: h^T <- exp(cum_last) h^T + B^T (exp(cum_last - cum) . dt . X).
  const double last = w.cum[l - 1];
  for (index_t j = 0; j < l; ++j) w.row[j] = static_cast<float>(last - w.cum[j]);
  simd::detail::exp_kernel(arch, w.row, w.row, l);
  for (index_t j = 0; j < l; ++j) simd::detail::scale_kernel(arch, w.row[j], w.xd + j * P, P);
  float decay_all = static_cast<float>(last);
  simd::detail::exp_kernel(arch, &decay_all, &decay_all, 1);
  simd::gemm_tn(N, P, l, 1.f, Bp, ldb, w.xd, P, decay_all, ht, P);
}

// Heads [h0, h1) of one B/C group over tokens [t0, t1) of batch entry bi,
// chunk-major: C B^T of a chunk is computed once for all of them (it does not
// depend on the head), and the chunk's B, C and x rows stay in cache while
// the heads pass over them. States of sequence s.
template <class Arch>
void ssd_heads(Arch arch, const ssd_args& a, index_t s, index_t bi, index_t t0, index_t t1, index_t h0, index_t h1,
               index_t g, const ssd_work& w) {
  const index_t N = a.B.dim(3), Q = a.params->chunk_size;
  const index_t ldb = ssd_row_stride(a.B, 1), ldc = ssd_row_stride(a.C, 1);
  const index_t P = a.x.dim(3), ldx = ssd_row_stride(a.x, 1), ldy = ssd_row_stride(a.y, 1);
  for (index_t head = h0; head < h1; ++head) ssd_transpose_state(a.h.ptr(s, head, 0, 0), P, N, w.stage);
  for (index_t c0 = t0; c0 < t1; c0 += Q) {
    const index_t l = std::min(Q, t1 - c0);
    simd::gemm_nt(l, l, N, 1.f, a.C.ptr(bi, c0, g, 0), ldc, a.B.ptr(bi, c0, g, 0), ldb, 0.f, w.CB, Q);
    for (index_t head = h0; head < h1; ++head) {
      // The next head's x and y rows lie one token stride apart (a new page
      // each, out of the hardware prefetchers' reach): asking for them one
      // head-chunk of work ahead measured ~7% faster at L = 65536 (DRAM-resident).
      const index_t nh = head + 1 < h1 ? head + 1 : h0, nc = head + 1 < h1 ? c0 : c0 + Q;
      if (nc < t1) {
        const index_t nl = std::min(Q, t1 - nc);
        simd::prefetch_rows(a.x.ptr(bi, nc, nh, 0), ldx, nl, P);
        simd::prefetch_rows(a.y.ptr(bi, nc, nh, 0), ldy, nl, P, true);
      }
      ssd_head_chunk(arch, a, bi, c0, l, head, g, a.h.ptr(s, head, 0, 0), w);
    }
  }
  for (index_t head = h0; head < h1; ++head) ssd_transpose_state(a.h.ptr(s, head, 0, 0), N, P, w.stage);
}

// Work items: (sequence, group, slice of the group's heads). Slices exist only
// to give every worker an item; results do not depend on them (each head's
// arithmetic is the same whichever slice it lands in).
template <class Arch>
void ssd_kernel(Arch arch, const ssd_args& a, index_t n_states) {
  const ssd_params& p = *a.params;
  const index_t heads = a.x.dim(2), P = a.x.dim(3), seq = a.x.dim(1), groups = a.B.dim(2);
  if (a.x.size() == 0) return;  // nothing to write and no state to move
  const index_t per_group = heads / groups;
  const bool varlen = ssd_given(p.cu_seqlens);
  const index_t Q = std::max<index_t>(1, std::min(p.chunk_size, std::max<index_t>(seq, 1)));
  const int slots = worker_slots(p.policy);
  const std::size_t slot_bytes = ssd_work_bytes(Q, P, a.B.dim(3));
  scratch_frame frame(slot_bytes * slots);
  float* base = frame.alloc<float>(slot_bytes / sizeof(float) * slots);
  ssd_params local = p;
  local.chunk_size = Q;  // chunks never longer than the sequence: scratch stays small for short inputs
  ssd_args b = a;
  b.params = &local;
  const index_t outer = n_states * groups;
  const index_t slices = std::min<index_t>(per_group, std::max<index_t>(1, (p.policy.workers() + outer - 1) / outer));
  const index_t per_slice = (per_group + slices - 1) / slices;

  parallel_for(p.policy, outer * slices, [&](index_t item, int worker) {
    const index_t s = item / (groups * slices), g = item / slices % groups, sl = item % slices;
    const index_t bi = varlen ? 0 : s;
    const index_t t0 = varlen ? p.cu_seqlens(s) : 0;
    const index_t t1 = varlen ? p.cu_seqlens(s + 1) : seq;
    const index_t h0 = g * per_group + sl * per_slice, h1 = std::min(h0 + per_slice, (g + 1) * per_group);
    if (t0 == t1 || h0 >= h1) return;  // empty sequence: state stays as it is
    const ssd_work w = ssd_carve(base + slot_bytes / sizeof(float) * worker, Q, P);
    ssd_heads(arch, b, s, bi, t0, t1, h0, h1, g, w);
  });
}

// h[p, :] = decay h[p, :] + (dt x_p) B, y_p = h[p, :] . C for every p.
template <class Arch>
inline void ssd_step_head(Arch, float* h, index_t P, index_t N, float decay, float dt, const float* x, const float* B,
                          const float* C, float* y) noexcept {
  using batch = simd::fbatch<Arch>;
  constexpr index_t w = simd::lanes<Arch>;
  const batch vd(decay);
  for (index_t p = 0; p < P; ++p) {
    float* hp = h + p * N;
    const float xp = dt * x[p];
    const batch vx(xp);
    batch acc0(0.f), acc1(0.f);
    index_t n = 0;
    for (; n + 2 * w <= N; n += 2 * w) {
      const batch h0 = xsimd::fma(vx, batch::load_unaligned(B + n), vd * batch::load_unaligned(hp + n));
      const batch h1 = xsimd::fma(vx, batch::load_unaligned(B + n + w), vd * batch::load_unaligned(hp + n + w));
      h0.store_unaligned(hp + n);
      h1.store_unaligned(hp + n + w);
      acc0 = xsimd::fma(h0, batch::load_unaligned(C + n), acc0);
      acc1 = xsimd::fma(h1, batch::load_unaligned(C + n + w), acc1);
    }
    for (; n + w <= N; n += w) {
      const batch h0 = xsimd::fma(vx, batch::load_unaligned(B + n), vd * batch::load_unaligned(hp + n));
      h0.store_unaligned(hp + n);
      acc0 = xsimd::fma(h0, batch::load_unaligned(C + n), acc0);
    }
    float sum = xsimd::hadd(acc0 + acc1);
    for (; n < N; ++n) {
      hp[n] = decay * hp[n] + xp * B[n];
      sum += hp[n] * C[n];
    }
    y[p] = sum;
  }
}

inline void ssd_run(const ssd_args& a) {
  const index_t n_states = ssd_validate_io(a, true);
  const index_t heads = a.x.dim(2), head_dim = a.x.dim(3), d_state = a.B.dim(3);
  require(a.h.dim(0) == n_states, "state batch", n_states, a.h.dim(0));
  require(a.h.dim(1) == heads, "state heads", heads, a.h.dim(1));
  require(a.h.dim(2) == head_dim, "state head_dim", head_dim, a.h.dim(2));
  require(a.h.dim(3) == d_state, "state d_state", d_state, a.h.dim(3));
  ssd_kernel(simd::default_arch{}, a, n_states);
}

}  // namespace detail

// mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size, D, z, dt_bias,
// dt_softplus, dt_limit) with the initial state taken from `state` and the
// final state left in it. `y` must not overlap any input.
inline void ssd_prefill(tensor_view<const float, 4> x,   // [batch, seq, heads, head_dim]
                        tensor_view<const float, 3> dt,  // [batch, seq, heads]
                        tensor_view<const float, 1> A,   // [heads]
                        tensor_view<const float, 4> B,   // [batch, seq, groups, d_state]
                        tensor_view<const float, 4> C,   // [batch, seq, groups, d_state]
                        tensor_view<const float, 4> z,   // [batch, seq, heads, head_dim]; empty = no gate
                        ssd_state& state,                // [batch or n_seqs, heads, head_dim, d_state]
                        tensor_view<float, 4> y,         // [batch, seq, heads, head_dim]
                        const ssd_params& params = {}) {
  detail::ssd_args a{x, dt, A, B, C, z, y, state.h(), &params};
  detail::ssd_run(a);
}

// Without the z gate.
inline void ssd_prefill(tensor_view<const float, 4> x,   // [batch, seq, heads, head_dim]
                        tensor_view<const float, 3> dt,  // [batch, seq, heads]
                        tensor_view<const float, 1> A,   // [heads]
                        tensor_view<const float, 4> B,   // [batch, seq, groups, d_state]
                        tensor_view<const float, 4> C,   // [batch, seq, groups, d_state]
                        ssd_state& state,                // [batch or n_seqs, heads, head_dim, d_state]
                        tensor_view<float, 4> y,         // [batch, seq, heads, head_dim]
                        const ssd_params& params = {}) {
  ssd_prefill(x, dt, A, B, C, tensor_view<const float, 4>(), state, y, params);
}

// One token per sequence (selective_state_update semantics for Mamba-2), on the
// state a prefill leaves: prefill(L) then steps == steps from the start, to
// float rounding (the prefill sums in a different order). chunk_size and
// cu_seqlens do not apply.
inline void ssd_step(tensor_view<const float, 3> x,   // [batch, heads, head_dim]
                     tensor_view<const float, 2> dt,  // [batch, heads]
                     tensor_view<const float, 1> A,   // [heads]
                     tensor_view<const float, 3> B,   // [batch, groups, d_state]
                     tensor_view<const float, 3> C,   // [batch, groups, d_state]
                     tensor_view<const float, 3> z,   // [batch, heads, head_dim]; empty = no gate
                     ssd_state& state,                // [batch, heads, head_dim, d_state]
                     tensor_view<float, 3> y,         // [batch, heads, head_dim]
                     const ssd_params& params = {}) {
  using detail::ssd_given;
  require(!ssd_given(params.cu_seqlens), "cu_seqlens", "empty for a step (one token per batch entry)",
          "size " + std::to_string(params.cu_seqlens.dim(0)));
  require_layout("x", x);
  require_layout("dt", dt);
  require_layout("A", A);
  require_layout("B", B);
  require_layout("C", C);
  require_layout("y", y);
  const index_t batch = x.dim(0), heads = x.dim(1), P = x.dim(2), groups = B.dim(1), N = B.dim(2);
  require_shape("dt", dt, {batch, heads});
  require_shape("A", A, {heads});
  require_shape("B", B, {batch, -1, -1});
  require(groups >= 1, "B groups (dim 1)", ">= 1", groups);
  require(heads % groups == 0, "B groups (dim 1)", "a divisor of heads = " + std::to_string(heads), groups);
  require_shape<const float, 3>("C", C, B.dims());
  if (ssd_given(z)) {
    require_layout("z", z);
    require_shape<const float, 3>("z", z, x.dims());
  }
  require_shape<float, 3>("y", y, x.dims());
  detail::ssd_validate_params(params, heads, P);
  detail::ssd_require_finite("A", A, true);
  require(state.batch() == batch, "state batch", batch, state.batch());
  require(state.heads() == heads, "state heads", heads, state.heads());
  require(state.head_dim() == P, "state head_dim", P, state.head_dim());
  require(state.d_state() == N, "state d_state", N, state.d_state());

  auto h = state.h();
  const index_t per_group = groups ? heads / groups : 1;
  parallel_for(params.policy, batch * heads, [&](index_t item, int) {
    const index_t b = item / heads, hd = item % heads, g = hd / per_group;
    const float bias = ssd_given(params.dt_bias) ? params.dt_bias(hd) : 0.f;
    const float d = detail::ssd_dt(dt(b, hd), bias, params);
    float decay = detail::ssd_log_decay(d, A(hd));
    simd::detail::exp_kernel(simd::default_arch{}, &decay, &decay, 1);
    float* yp = y.ptr(b, hd, 0);
    const float* xp = x.ptr(b, hd, 0);
    detail::ssd_step_head(simd::default_arch{}, h.ptr(b, hd, 0, 0), P, N, decay, d, xp, B.ptr(b, g, 0), C.ptr(b, g, 0),
                          yp);
    const float* dskip = ssd_given(params.D) ? params.D.ptr(hd, 0) : nullptr;
    const index_t dstride = ssd_given(params.D) && params.D.dim(1) != 1 ? 1 : 0;
    if (dskip || ssd_given(z))
      detail::ssd_epilogue_row(simd::default_arch{}, yp, yp, xp, dskip, dstride, ssd_given(z) ? z.ptr(b, hd, 0) : nullptr, P);
  });
}

// Without the z gate.
inline void ssd_step(tensor_view<const float, 3> x,   // [batch, heads, head_dim]
                     tensor_view<const float, 2> dt,  // [batch, heads]
                     tensor_view<const float, 1> A,   // [heads]
                     tensor_view<const float, 3> B,   // [batch, groups, d_state]
                     tensor_view<const float, 3> C,   // [batch, groups, d_state]
                     ssd_state& state,                // [batch, heads, head_dim, d_state]
                     tensor_view<float, 3> y,         // [batch, heads, head_dim]
                     const ssd_params& params = {}) {
  ssd_step(x, dt, A, B, C, tensor_view<const float, 3>(), state, y, params);
}

}  // namespace tokmix
TOKMIX_SIMD_AVX512_WARNINGS_ON
