#pragma once
// Causal depthwise conv1d: the short convolution in front of every Mamba block
// (and of many linear-attention layers), with the rolling state decode needs.
// Channel-last like the rest of tokmix, so the kernel runs along the contiguous
// channel axis with SIMD, token by token, and x streams through in address order.
//
// ref: Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective State
//      Spaces" (2023), sec. 3.4; semantics of Dao-AILab causal_conv1d
//      (causal_conv1d_fn with initial/final states, causal_conv1d_update).
//
//   out[b,t,c] = act(bias[c] + sum_{k<W} weight[c,k] * x[b, t-(W-1)+k, c])
//
// where inputs before t = 0 come from the state (the last W-1 inputs of the
// previous call, zeros for a fresh state) and act is identity or SiLU. Work
// items are token ranges; results do not depend on the thread count.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>

#include "tokmix/core/third_party.hpp"
#include "tokmix/simd/arch.hpp"

#include "tokmix/core/error.hpp"
#include "tokmix/core/scratch.hpp"
#include "tokmix/core/tensor_view.hpp"
#include "tokmix/core/threading.hpp"
#include "tokmix/ssm/detail/varlen.hpp"
#include "tokmix/simd/activation.hpp"
#include "tokmix/simd/exp.hpp"

TOKMIX_SIMD_AVX512_WARNINGS_OFF
namespace tokmix {

constexpr index_t conv1d_min_width = 2;
constexpr index_t conv1d_max_width = 8;

struct conv1d_options {
  bool silu = false;  // causal_conv1d activation="silu"

  // Packed variable-length batch (prefill only): batch must be 1, sequence s
  // is tokens [cu_seqlens[s], cu_seqlens[s+1]), never sees another sequence's
  // inputs (causal_conv1d_fn's seq_idx) and uses state s. Empty = one
  // sequence per batch entry.                                   // [n_seqs + 1]
  tensor_view<const std::int32_t, 1> cu_seqlens;

  exec_policy policy;
};

// The last width-1 inputs of each sequence, oldest first, so the next prefill
// or step continues the convolution exactly where the previous call stopped.
// A fresh state is zeros (the sequence starts at t = 0).
class conv1d_state {
 public:
  conv1d_state() : conv1d_state(0, 0, conv1d_min_width) {}
  conv1d_state(index_t batch, index_t channels, index_t width) : width_(width) {
    require(batch >= 0, "conv1d_state batch", ">= 0", batch);
    require(channels >= 0, "conv1d_state channels", ">= 0", channels);
    require(width >= conv1d_min_width && width <= conv1d_max_width, "conv1d_state width",
            "in [" + std::to_string(conv1d_min_width) + ", " + std::to_string(conv1d_max_width) + "]", width);
    history_.resize(batch, width - 1, channels);
    reset();
  }

  index_t batch() const { return history_.dimension(0); }
  index_t channels() const { return history_.dimension(2); }
  index_t width() const { return width_; }

  void reset() { history_.setZero(); }

  // Oldest input first.                                       // [batch, width-1, channels]
  tensor_view<float, 3> history() { return as_view(history_); }
  tensor_view<const float, 3> history() const { return as_view(history_); }

 private:
  index_t width_;
  Eigen::Tensor<float, 3, Eigen::RowMajor> history_;
};

namespace detail {

// Tokens per work item. Items split the sequence, not the channels: a token
// row is contiguous, so an item streams one contiguous stretch of x and out,
// which is what the hardware prefetchers follow (items of a channel range
// instead jump a row stride per token and restart the prefetchers on every
// page, measured 2-5x slower once x leaves the cache).
constexpr index_t conv1d_rows_per_item = 64;

// One batch entry; pointers at its t = 0, channel 0.
struct conv1d_block {
  const float* x;
  index_t x_step;  // between tokens
  float* out;
  index_t out_step;
  const float* wt;    // tap k of channel c at wt[k * wt_step + c]
  index_t wt_step;
  const float* bias;  // [channels] or null
  const float* hist;  // [width-1, channels]; rows of zeros for a fresh start
  index_t hist_step;
  index_t channels;
  bool silu;
};

// Token-major: for each token, the W input rows it needs (from the history
// for the first W-1 tokens) are read where they are; the previous rows are
// still in L1, so x is read from memory once, in address order.
template <int W, class Arch>
inline void conv1d_rows(Arch, const conv1d_block& b, index_t t0, index_t t1) {
  using batch = simd::fbatch<Arch>;
  constexpr index_t S = simd::lanes<Arch>;
  constexpr int H = W - 1;
  const index_t nch = b.channels, full = nch / S * S;
  const float* src[W];
  auto output = [&](float* o, index_t j, auto partial) {
    constexpr bool Partial = decltype(partial)::value;
    const index_t nv = nch - j;
    auto load = [&](const float* p) {
      return Partial ? simd::detail::load_partial<Arch>(p, nv, 0.f) : batch::load_unaligned(p);
    };
    batch acc = b.bias ? load(b.bias + j) : batch(0.f);
    for (int k = 0; k < W; ++k) acc = xsimd::fma(load(b.wt + k * b.wt_step + j), load(src[k] + j), acc);
    if (b.silu) acc = simd::silu_batch<Arch>(acc);
    if (Partial) simd::detail::store_partial<Arch>(o + j, acc, nv);
    else acc.store_unaligned(o + j);
  };
  for (index_t t = t0; t < t1; ++t) {
    for (int k = 0; k < W; ++k) {
      const index_t ts = t - H + k;
      src[k] = ts >= 0 ? b.x + ts * b.x_step : b.hist + (ts + H) * b.hist_step;
    }
    float* o = b.out + t * b.out_step;
    for (index_t j = 0; j < full; j += S) output(o, j, std::false_type{});
    if (full < nch) output(o, full, std::true_type{});
  }
}

template <class Arch>
inline void conv1d_dispatch(Arch arch, index_t width, const conv1d_block& b, index_t t0, index_t t1) {
  switch (width) {
    case 2: return conv1d_rows<2>(arch, b, t0, t1);
    case 3: return conv1d_rows<3>(arch, b, t0, t1);
    case 4: return conv1d_rows<4>(arch, b, t0, t1);
    case 5: return conv1d_rows<5>(arch, b, t0, t1);
    case 6: return conv1d_rows<6>(arch, b, t0, t1);
    case 7: return conv1d_rows<7>(arch, b, t0, t1);
    case 8: return conv1d_rows<8>(arch, b, t0, t1);
    default: return;  // validated before
  }
}

inline void conv1d_validate(const tensor_view<const float, 3>& x, const tensor_view<const float, 2>& weight,
                            const tensor_view<const float, 1>& bias, const conv1d_state* state,
                            const tensor_view<float, 3>& out, const conv1d_options& opts) {
  require_layout("x", x);
  // The taps may also come as a view of a [width, channels] buffer (unit
  // stride on channels): then they are read in place, no per-call transposition.
  if (!(weight.stride(0) == 1 && weight.dim(1) > 1)) require_layout("weight", weight);
  else require_layout("weight (transposed view)", weight.permuted({1, 0}));
  require_layout("out", out);
  const index_t batch = x.dim(0), channels = x.dim(2);
  const index_t width = weight.dim(1);
  require_shape("weight", weight, {channels, -1});
  require(width >= conv1d_min_width && width <= conv1d_max_width, "weight width (dim 1)",
          "in [" + std::to_string(conv1d_min_width) + ", " + std::to_string(conv1d_max_width) + "]", width);
  if (bias.data() != nullptr) {
    require_layout("bias", bias);
    require_shape("bias", bias, {channels});
  }
  require_shape<float, 3>("out", out, x.dims());
  index_t n_states = batch;
  if (opts.cu_seqlens.data() != nullptr) {
    ssm_require_cu_seqlens(opts.cu_seqlens, batch, x.dim(1));
    n_states = opts.cu_seqlens.dim(0) - 1;
  }
  if (state) {
    require(state->batch() == n_states, "state batch", n_states, state->batch());
    require(state->channels() == channels, "state channels", channels, state->channels());
    require(state->width() == width, "state width", width, state->width());
  }
}

// Validated inputs; state may be null (zero history, nothing kept).
template <class Arch>
inline void conv1d_kernel(Arch arch, const tensor_view<const float, 3>& x, const tensor_view<const float, 2>& weight,
                          const tensor_view<const float, 1>& bias, conv1d_state* state, const tensor_view<float, 3>& out,
                          const conv1d_options& opts) {
  const index_t batch = x.dim(0), seq = x.dim(1), channels = x.dim(2), width = weight.dim(1);
  if (batch == 0 || channels == 0 || seq == 0) return;
  const index_t hist_rows = width - 1;
  const ssm_sequences seqs{opts.cu_seqlens, batch, seq};
  const index_t n_seqs = seqs.count();

  // Shared, read-only by the workers: the taps by channel (transposed here
  // unless the caller's view already has unit stride on channels) and the zero
  // history of a stateless call.
  const bool fresh = state == nullptr, w_direct = weight.stride(0) == 1;
  scratch_frame frame((w_direct ? 0 : scratch_frame::bytes_for<float>(channels * width)) +
                      (fresh ? scratch_frame::bytes_for<float>(hist_rows * channels) : 0) +
                      scratch_frame::bytes_for<index_t>(n_seqs + 1));
  float* wt = w_direct ? nullptr : frame.alloc<float>(channels * width);
  float* zeros = fresh ? frame.alloc<float>(hist_rows * channels) : nullptr;
  // first_item[s]: the first work item of sequence s (items never straddle sequences).
  index_t* first_item = frame.alloc<index_t>(n_seqs + 1);
  first_item[0] = 0;
  for (index_t s = 0; s < n_seqs; ++s)
    first_item[s + 1] =
        first_item[s] + (seqs.end(s) - seqs.begin(s) + conv1d_rows_per_item - 1) / conv1d_rows_per_item;
  if (!w_direct) {
    const float* src = weight.data();
    const index_t s_c = weight.stride(0), s_k = weight.stride(1);
    for (index_t c = 0; c < channels; ++c)
      for (index_t k = 0; k < width; ++k) wt[k * channels + c] = src[c * s_c + k * s_k];
  }
  if (fresh) std::fill(zeros, zeros + hist_rows * channels, 0.f);

  // Sequence s as a block: its t = 0 is its first token.
  auto block_of = [&](index_t s) {
    const index_t bi = seqs.batch_of(s), t0 = seqs.begin(s);
    conv1d_block blk;
    blk.x = x.ptr(bi, t0, 0);
    blk.x_step = x.stride(1);
    blk.out = out.ptr(bi, t0, 0);
    blk.out_step = out.stride(1);
    blk.wt = w_direct ? weight.data() : wt;
    blk.wt_step = w_direct ? weight.stride(1) : channels;
    blk.bias = bias.data();
    blk.hist = fresh ? zeros : state->history().ptr(s, 0, 0);
    blk.hist_step = channels;
    blk.channels = channels;
    blk.silu = opts.silu;
    return blk;
  };
  parallel_for(opts.policy, first_item[n_seqs], [&](index_t item, int) {
    const index_t s = std::upper_bound(first_item, first_item + n_seqs + 1, item) - first_item - 1;
    const index_t t0 = (item - first_item[s]) * conv1d_rows_per_item, len = seqs.end(s) - seqs.begin(s);
    conv1d_dispatch(arch, width, block_of(s), t0, std::min(len, t0 + conv1d_rows_per_item));
  });

  // Only now (every item has read the old history) the new one: the last
  // width-1 inputs of (old history, x). Ascending rows read an old row before
  // it is overwritten.
  // An empty sequence keeps its history as it is.
  if (state)
    for (index_t s = 0; s < n_seqs; ++s) {
      float* hist = state->history().ptr(s, 0, 0);
      const index_t bi = seqs.batch_of(s), t0 = seqs.begin(s), len = seqs.end(s) - t0;
      for (index_t k = 0; k < hist_rows; ++k) {
        const index_t ts = len - hist_rows + k;
        const float* from = ts >= 0 ? x.ptr(bi, t0 + ts, 0) : hist + (ts + hist_rows) * channels;
        std::copy(from, from + channels, hist + k * channels);
      }
    }
}

// A [batch, channels] token seen as [batch, 1, channels], so the step runs the
// prefill kernel and the two agree bit for bit.
template <class T>
tensor_view<T, 3> conv1d_as_one_token(const tensor_view<T, 2>& v) {
  return tensor_view<T, 3>(v.data(), {v.dim(0), 1, v.dim(1)}, {v.stride(0), v.stride(0), v.stride(1)});
}

}  // namespace detail

// causal_conv1d_fn without states: every sequence starts from zeros.
inline void conv1d(tensor_view<const float, 3> x,       // [batch, seq, channels]
                   tensor_view<const float, 2> weight,  // [channels, width]
                   tensor_view<const float, 1> bias,    // [channels], or empty for none
                   tensor_view<float, 3> out,           // [batch, seq, channels]
                   const conv1d_options& opts = {}) {
  detail::conv1d_validate(x, weight, bias, nullptr, out, opts);
  detail::conv1d_kernel(simd::default_arch{}, x, weight, bias, nullptr, out, opts);
}

// Continues from `state` and leaves in it the last width-1 inputs, so
// prefill(L1) then prefill(L2) equals prefill(L1 + L2) equals L1 + L2 steps.
// `out` must not overlap `x`.
inline void conv1d_prefill(tensor_view<const float, 3> x,       // [batch, seq, channels]
                           tensor_view<const float, 2> weight,  // [channels, width]
                           tensor_view<const float, 1> bias,    // [channels], or empty for none
                           conv1d_state& state,                 // batch, channels, width
                           tensor_view<float, 3> out,           // [batch, seq, channels]
                           const conv1d_options& opts = {}) {
  detail::conv1d_validate(x, weight, bias, &state, out, opts);
  detail::conv1d_kernel(simd::default_arch{}, x, weight, bias, &state, out, opts);
}

// One token per sequence (causal_conv1d_update with seqlen 1).
inline void conv1d_step(tensor_view<const float, 2> x,       // [batch, channels]
                        tensor_view<const float, 2> weight,  // [channels, width]
                        tensor_view<const float, 1> bias,    // [channels], or empty for none
                        conv1d_state& state,                 // batch, channels, width
                        tensor_view<float, 2> out,           // [batch, channels]
                        const conv1d_options& opts = {}) {
  require(opts.cu_seqlens.data() == nullptr, "cu_seqlens", "empty for a step (one token per batch entry)",
          "size " + std::to_string(opts.cu_seqlens.dim(0)));
  require_layout("x", x);
  require_layout("out", out);
  require_shape<float, 2>("out", out, x.dims());
  const auto x3 = detail::conv1d_as_one_token(x);
  const auto o3 = detail::conv1d_as_one_token(out);
  detail::conv1d_validate(x3, weight, bias, &state, o3, opts);
  detail::conv1d_kernel(simd::default_arch{}, x3, weight, bias, &state, o3, opts);
}

}  // namespace tokmix
TOKMIX_SIMD_AVX512_WARNINGS_ON
