#pragma once
// Long causal convolutions used as token mixers: Hyena-style per-channel
// filters as long as the sequence (applied by FFT once they are long, since
// the direct sum is O(L * K)), TCNCA-style stacks of dilated depthwise causal
// convolutions (a receptive field of sum (W-1) d_l tokens at O(L * W) per
// layer) with a decode step on a rolling history, and the FSMN memory block.
//
// ref: Poli et al., "Hyena Hierarchy: Towards Larger Convolutional Language
//      Models" (2023), sec. 3 (long implicit filters applied by FFT);
//      Terzic et al., "TCNCA: Temporal Convolution Network with Chunked
//      Attention for Scalable Sequence Processing" (2023) for the dilated
//      causal stack used as a mixer; van den Oord et al., "WaveNet"
//      (2016) for the dilated causal convolution; Zhang et al., "Feedforward
//      Sequential Memory Networks" (2015) for the memory block.
//
//   long_conv:   y[b,t,c] = sum_{k<=t, k<K} h[c,k] x[b,t-k,c]  (+ D[c] x[b,t,c])
//   dilated layer: y[b,t,c] = bias[c] + sum_{k<W} w[c,k] x[b, t-(W-1-k) d, c]
//                (tap W-1 is the current token, as in conv1d), inputs before
//                t = 0 are zeros or the state's history.
//   fsmn_memory: y[b,t,c] = x[b,t,c] + sum_{k<K} a[c,k] x[b,t-k,c]
//
// Channel-last [batch, seq, channels] like the rest of tokmix: the direct
// kernels run along the contiguous channel axis with SIMD; the FFT path
// gathers a block of channels into contiguous per-channel sequences.

#include <algorithm>
#include <cmath>
#include <string>
#include <type_traits>
#include <vector>

#include "tokmix/core/third_party.hpp"
#include "tokmix/simd/arch.hpp"

#include "tokmix/core/error.hpp"
#include "tokmix/core/tensor_view.hpp"
#include "tokmix/core/threading.hpp"
#include "tokmix/simd/activation.hpp"
#include "tokmix/simd/fft.hpp"

TOKMIX_SIMD_AVX512_WARNINGS_OFF
namespace tokmix {

enum class long_conv_path { automatic, direct, fft };

// Filters up to this many live taps take the direct sum under `automatic`:
// below it the SIMD sum over channels beats three transforms per channel.
// Measured (bench/lti.cpp, d = 256, L = 8192, one thread): 16 taps 2.9 ms
// direct vs 85 ms FFT, 64 taps 23 vs 94 ms, 256 taps 71 vs 81 ms.
constexpr index_t long_conv_direct_max_taps = 256;

struct long_conv_options {
  long_conv_path path = long_conv_path::automatic;
  exec_policy policy;
};

namespace detail {

constexpr index_t long_conv_rows_per_item = 64;
constexpr index_t long_conv_fft_channel_block = 16;

inline void long_conv_validate(const tensor_view<const float, 3>& x, const tensor_view<const float, 2>& filter,
                               const tensor_view<const float, 1>& skip, const tensor_view<float, 3>& out) {
  require_layout("x", x);
  require_layout("filter", filter);
  require_layout("out", out);
  require_shape("filter", filter, {x.dim(2), -1});
  require(filter.dim(1) >= 1, "filter taps (dim 1)", ">= 1", filter.dim(1));
  if (skip.data() != nullptr) {
    require_layout("skip", skip);
    require_shape("skip", skip, {x.dim(2)});
  }
  require_shape<float, 3>("out", out, x.dims());
  for (index_t c = 0; c < filter.dim(0); ++c)
    for (index_t k = 0; k < filter.dim(1); ++k)
      require(std::isfinite(filter(c, k)), "filter", "finite values", filter(c, k));
  if (skip.data() != nullptr)
    for (index_t c = 0; c < skip.dim(0); ++c) require(std::isfinite(skip(c)), "skip", "finite values", skip(c));
}

// Taps by tap index, channel fastest, so the direct sum loads them with SIMD.
inline std::vector<float> long_conv_taps_by_tap(const tensor_view<const float, 2>& filter, index_t taps) {
  const index_t ch = filter.dim(0);
  std::vector<float> t(static_cast<std::size_t>(taps * ch));
  for (index_t c = 0; c < ch; ++c)
    for (index_t k = 0; k < taps; ++k) t[static_cast<std::size_t>(k * ch + c)] = filter(c, k);
  return t;
}

// Direct sum for tokens [t0, t1) of one batch entry; x/out at t = 0.
template <class Arch>
inline void long_conv_direct_rows(Arch, const float* x, index_t x_step, float* out, index_t out_step,
                                  const float* taps, index_t n_taps, const float* skip, index_t nch, index_t t0,
                                  index_t t1) {
  using batch = simd::fbatch<Arch>;
  constexpr index_t S = simd::lanes<Arch>;
  const index_t full = nch / S * S;
  for (index_t t = t0; t < t1; ++t) {
    const index_t kmax = std::min(n_taps, t + 1);
    float* o = out + t * out_step;
    const float* xt = x + t * x_step;
    for (index_t j = 0; j < full; j += S) {
      batch acc = skip ? batch::load_unaligned(skip + j) * batch::load_unaligned(xt + j) : batch(0.f);
      for (index_t k = 0; k < kmax; ++k)
        acc = xsimd::fma(batch::load_unaligned(taps + k * nch + j), batch::load_unaligned(xt - k * x_step + j), acc);
      acc.store_unaligned(o + j);
    }
    for (index_t j = full; j < nch; ++j) {
      float acc = skip ? skip[j] * xt[j] : 0.f;
      for (index_t k = 0; k < kmax; ++k) acc += taps[k * nch + j] * xt[j - k * x_step];
      o[j] = acc;
    }
  }
}

template <class Arch>
inline void long_conv_kernel(Arch arch, const tensor_view<const float, 3>& x, const tensor_view<const float, 2>& filter,
                             const tensor_view<const float, 1>& skip, const tensor_view<float, 3>& out,
                             const long_conv_options& opts) {
  const index_t nb = x.dim(0), seq = x.dim(1), nch = x.dim(2);
  if (nb == 0 || seq == 0 || nch == 0) return;
  // Taps at or beyond seq never reach an output.
  const index_t taps = std::min(filter.dim(1), seq);
  const bool direct = opts.path == long_conv_path::direct ||
                      (opts.path == long_conv_path::automatic && taps <= long_conv_direct_max_taps);
  const float* skp = skip.data();
  if (direct) {
    const std::vector<float> tt = long_conv_taps_by_tap(filter, taps);
    const index_t per_b = (seq + long_conv_rows_per_item - 1) / long_conv_rows_per_item;
    parallel_for(opts.policy, nb * per_b, [&](index_t item, int) {
      const index_t b = item / per_b, t0 = (item % per_b) * long_conv_rows_per_item;
      long_conv_direct_rows(arch, x.ptr(b, 0, 0), x.stride(1), out.ptr(b, 0, 0), out.stride(1), tt.data(), taps, skp,
                            nch, t0, std::min(seq, t0 + long_conv_rows_per_item));
    });
    return;
  }
  // FFT: a work item is a block of channels over the whole batch; their
  // sequences are gathered contiguous ([channel][batch][seq]) so one filter
  // spectrum serves every batch entry.
  constexpr index_t CB = long_conv_fft_channel_block;
  const index_t n_blocks = (nch + CB - 1) / CB;
  const int slots = worker_slots(opts.policy);
  std::vector<simd::fft_convolver> conv;
  conv.reserve(static_cast<std::size_t>(slots));
  for (int i = 0; i < slots; ++i) conv.emplace_back(false);
  std::vector<std::vector<float>> sig(static_cast<std::size_t>(slots)), res(static_cast<std::size_t>(slots)),
      filt(static_cast<std::size_t>(slots));
  parallel_for(opts.policy, n_blocks, [&](index_t blk, int w) {
    const index_t c0 = blk * CB, nc = std::min(CB, nch - c0), per_c = nb * seq;
    auto& s = sig[static_cast<std::size_t>(w)];
    auto& r = res[static_cast<std::size_t>(w)];
    auto& f = filt[static_cast<std::size_t>(w)];
    s.resize(static_cast<std::size_t>(nc * per_c));
    r.resize(static_cast<std::size_t>(nc * per_c));
    f.resize(static_cast<std::size_t>(taps));
    for (index_t b = 0; b < nb; ++b)
      for (index_t t = 0; t < seq; ++t) {
        const float* row = x.ptr(b, t, c0);
        for (index_t c = 0; c < nc; ++c) s[static_cast<std::size_t>(c * per_c + b * seq + t)] = row[c];
      }
    for (index_t c = 0; c < nc; ++c) {
      const float* fc = filter.ptr(c0 + c, 0);
      std::copy(fc, fc + taps, f.data());
      conv[static_cast<std::size_t>(w)].convolve_batch(nb, s.data() + c * per_c, seq, seq, f.data(), 0, taps,
                                                       r.data() + c * per_c, seq, seq, 0);
    }
    for (index_t b = 0; b < nb; ++b)
      for (index_t t = 0; t < seq; ++t) {
        float* row = out.ptr(b, t, c0);
        for (index_t c = 0; c < nc; ++c) {
          const std::size_t i = static_cast<std::size_t>(c * per_c + b * seq + t);
          row[c] = skp ? r[i] + skp[c0 + c] * s[i] : r[i];
        }
      }
  });
}

}  // namespace detail

// Hyena-style long convolution, every sequence from zeros. The filter may be
// longer than seq (the extra taps are ignored). `out` must not overlap `x`.
inline void long_conv(tensor_view<const float, 3> x,       // [batch, seq, channels]
                      tensor_view<const float, 2> filter,  // [channels, taps]
                      tensor_view<const float, 1> skip,    // [channels] (D), or empty for none
                      tensor_view<float, 3> out,           // [batch, seq, channels]
                      const long_conv_options& opts = {}) {
  detail::long_conv_validate(x, filter, skip, out);
  detail::long_conv_kernel(simd::default_arch{}, x, filter, skip, out, opts);
}

// FSMN memory block: the input plus a causal depthwise FIR over the current
// and past frames (the unidirectional "vectorized FSMN" of Zhang et al.).
inline void fsmn_memory(tensor_view<const float, 3> x,     // [batch, seq, channels]
                        tensor_view<const float, 2> taps,  // [channels, order + 1], tap k weighs frame t-k
                        tensor_view<float, 3> out,         // [batch, seq, channels]
                        const long_conv_options& opts = {}) {
  require_layout("x", x);
  const std::vector<float> ones(static_cast<std::size_t>(std::max<index_t>(x.dim(2), 0)), 1.f);
  const tensor_view<const float, 1> skip(ones.data(), {x.dim(2)});
  detail::long_conv_validate(x, taps, skip, out);
  detail::long_conv_kernel(simd::default_arch{}, x, taps, skip, out, opts);
}

// ---- dilated causal stacks (TCNCA) --------------------------------------------

struct dilated_conv_layer {
  tensor_view<const float, 2> weight;  // [channels, width]; tap width-1 is the current token
  tensor_view<const float, 1> bias;    // [channels], or empty for none
  index_t dilation = 1;
};

struct dilated_conv_options {
  bool silu = false;  // after every layer
  exec_policy policy;
};

// Per layer, the last (width-1) * dilation inputs of that layer (a ring:
// logical row 0 is the oldest), so prefill and step continue one another.
class dilated_conv_state {
 public:
  dilated_conv_state() = default;
  dilated_conv_state(index_t batch, index_t channels, const std::vector<dilated_conv_layer>& layers)
      : batch_(batch), channels_(channels) {
    require(batch >= 0, "dilated_conv_state batch", ">= 0", batch);
    require(channels >= 0, "dilated_conv_state channels", ">= 0", channels);
    for (std::size_t l = 0; l < layers.size(); ++l) {
      require(layers[l].weight.dim(1) >= 1, "dilated_conv_state layer width", ">= 1", layers[l].weight.dim(1));
      require(layers[l].dilation >= 1, "dilated_conv_state layer dilation", ">= 1", layers[l].dilation);
      spans_.push_back((layers[l].weight.dim(1) - 1) * layers[l].dilation);
      hist_.emplace_back(static_cast<std::size_t>(batch * spans_.back() * channels), 0.f);
      head_.push_back(0);
    }
  }

  index_t batch() const { return batch_; }
  index_t channels() const { return channels_; }
  index_t layers() const { return static_cast<index_t>(spans_.size()); }
  index_t span(index_t layer) const { return spans_[static_cast<std::size_t>(layer)]; }

  void reset() {
    for (auto& h : hist_) std::fill(h.begin(), h.end(), 0.f);
    std::fill(head_.begin(), head_.end(), 0);
  }

  // Input `back` tokens before the next one (1 <= back <= span) of layer l, batch b.
  float* row(index_t l, index_t b, index_t back) {
    const index_t sp = span(l);
    const index_t phys = (head_[static_cast<std::size_t>(l)] + sp - back) % sp;
    return hist_[static_cast<std::size_t>(l)].data() + (b * sp + phys) * channels_;
  }
  const float* row(index_t l, index_t b, index_t back) const { return const_cast<dilated_conv_state*>(this)->row(l, b, back); }

  // Appends one input row per batch entry (rows at `x + b * step`) to layer l.
  void push(index_t l, const float* x, index_t step) {
    const index_t sp = span(l);
    if (sp == 0) return;
    index_t& h = head_[static_cast<std::size_t>(l)];
    for (index_t b = 0; b < batch_; ++b)
      std::copy(x + b * step, x + b * step + channels_,
                hist_[static_cast<std::size_t>(l)].data() + (b * sp + h) * channels_);
    h = (h + 1) % sp;
  }

 private:
  index_t batch_ = 0, channels_ = 0;
  std::vector<index_t> spans_;
  std::vector<std::vector<float>> hist_;
  std::vector<index_t> head_;
};

namespace detail {

inline void dilated_validate(index_t batch, index_t channels, const std::vector<dilated_conv_layer>& layers,
                             const dilated_conv_state* state) {
  require(!layers.empty(), "layers", "at least one layer", 0);
  for (std::size_t l = 0; l < layers.size(); ++l) {
    const auto& ly = layers[l];
    require_layout("layer weight", ly.weight);
    require_shape("layer weight", ly.weight, {channels, -1});
    require(ly.weight.dim(1) >= 1, "layer weight width (dim 1)", ">= 1", ly.weight.dim(1));
    require(ly.dilation >= 1, "layer dilation", ">= 1", ly.dilation);
    if (ly.bias.data() != nullptr) {
      require_layout("layer bias", ly.bias);
      require_shape("layer bias", ly.bias, {channels});
    }
    for (index_t c = 0; c < channels; ++c)
      for (index_t k = 0; k < ly.weight.dim(1); ++k)
        require(std::isfinite(ly.weight(c, k)), "layer weight", "finite values", ly.weight(c, k));
  }
  if (state) {
    require(state->batch() == batch, "state batch", batch, state->batch());
    require(state->channels() == channels, "state channels", channels, state->channels());
    require(state->layers() == static_cast<index_t>(layers.size()), "state layers", layers.size(), state->layers());
    for (std::size_t l = 0; l < layers.size(); ++l)
      require(state->span(static_cast<index_t>(l)) == (layers[l].weight.dim(1) - 1) * layers[l].dilation,
              "state span", (layers[l].weight.dim(1) - 1) * layers[l].dilation, state->span(static_cast<index_t>(l)));
  }
}

// One layer over tokens [t0, t1) of batch entry b: input rows at in + t*in_step
// (t >= 0) or from the state (t < 0; zeros without a state).
template <class Arch>
inline void dilated_layer_rows(Arch, const float* in, index_t in_step, float* out, index_t out_step,
                               const float* wt /*[W, C]*/, const float* bias, index_t width, index_t dilation,
                               const dilated_conv_state* st, index_t layer, index_t b, const float* zeros,
                               index_t nch, bool silu, index_t t0, index_t t1) {
  using batch = simd::fbatch<Arch>;
  constexpr index_t S = simd::lanes<Arch>;
  const index_t full = nch / S * S;
  std::vector<const float*> src(static_cast<std::size_t>(width));
  for (index_t t = t0; t < t1; ++t) {
    for (index_t k = 0; k < width; ++k) {
      const index_t ts = t - (width - 1 - k) * dilation;
      src[static_cast<std::size_t>(k)] = ts >= 0 ? in + ts * in_step : (st ? st->row(layer, b, -ts) : zeros);
    }
    float* o = out + t * out_step;
    for (index_t j = 0; j < full; j += S) {
      batch acc = bias ? batch::load_unaligned(bias + j) : batch(0.f);
      for (index_t k = 0; k < width; ++k)
        acc = xsimd::fma(batch::load_unaligned(wt + k * nch + j), batch::load_unaligned(src[static_cast<std::size_t>(k)] + j),
                         acc);
      if (silu) acc = simd::silu_batch<Arch>(acc);
      acc.store_unaligned(o + j);
    }
    for (index_t j = full; j < nch; ++j) {
      float acc = bias ? bias[j] : 0.f;
      for (index_t k = 0; k < width; ++k) acc += wt[k * nch + j] * src[static_cast<std::size_t>(k)][j];
      if (silu) acc = acc / (1.f + std::exp(-acc));
      o[j] = acc;
    }
  }
}

template <class Arch>
inline void dilated_kernel(Arch arch, const tensor_view<const float, 3>& x,
                           const std::vector<dilated_conv_layer>& layers, dilated_conv_state* state,
                           const tensor_view<float, 3>& out, const dilated_conv_options& opts) {
  const index_t nb = x.dim(0), seq = x.dim(1), nch = x.dim(2);
  if (nb == 0 || seq == 0 || nch == 0) return;
  const std::vector<float> zeros(static_cast<std::size_t>(nch), 0.f);
  // Intermediate layer outputs, dense [batch, seq, channels].
  std::vector<float> buf[2];
  const std::size_t n = static_cast<std::size_t>(nb * seq * nch);
  const index_t n_layers = static_cast<index_t>(layers.size());
  if (n_layers > 1) buf[0].resize(n);
  if (n_layers > 2) buf[1].resize(n);
  const float* in = x.data();
  index_t in_bs = x.stride(0), in_ts = x.stride(1);
  const index_t per_b = (seq + long_conv_rows_per_item - 1) / long_conv_rows_per_item;
  for (index_t l = 0; l < n_layers; ++l) {
    const auto& ly = layers[static_cast<std::size_t>(l)];
    const index_t width = ly.weight.dim(1);
    const std::vector<float> wt = long_conv_taps_by_tap(ly.weight, width);
    const bool last = l == n_layers - 1;
    float* o = last ? out.data() : buf[l % 2].data();
    const index_t o_bs = last ? out.stride(0) : seq * nch, o_ts = last ? out.stride(1) : nch;
    parallel_for(opts.policy, nb * per_b, [&](index_t item, int) {
      const index_t b = item / per_b, t0 = (item % per_b) * long_conv_rows_per_item;
      dilated_layer_rows(arch, in + b * in_bs, in_ts, o + b * o_bs, o_ts, wt.data(), ly.bias.data(), width,
                         ly.dilation, state, l, b, zeros.data(), nch, opts.silu, t0,
                         std::min(seq, t0 + long_conv_rows_per_item));
    });
    // The layer's inputs are consumed: roll its history by the last span of them.
    if (state)
      for (index_t t = std::max<index_t>(0, seq - state->span(l)); t < seq; ++t) state->push(l, in + t * in_ts, in_bs);
    in = o;
    in_bs = o_bs;
    in_ts = o_ts;
  }
}

}  // namespace detail

// Stack without state: every sequence starts from zeros. `out` must not overlap `x`.
inline void dilated_conv(tensor_view<const float, 3> x,  // [batch, seq, channels]
                         const std::vector<dilated_conv_layer>& layers, tensor_view<float, 3> out,  // [batch, seq, channels]
                         const dilated_conv_options& opts = {}) {
  require_layout("x", x);
  require_layout("out", out);
  require_shape<float, 3>("out", out, x.dims());
  detail::dilated_validate(x.dim(0), x.dim(2), layers, nullptr);
  detail::dilated_kernel(simd::default_arch{}, x, layers, nullptr, out, opts);
}

// Continues from `state` and leaves in it each layer's last span inputs, so
// prefill(L1) then prefill(L2) equals prefill(L1 + L2) equals L1 + L2 steps.
inline void dilated_conv_prefill(tensor_view<const float, 3> x,  // [batch, seq, channels]
                                 const std::vector<dilated_conv_layer>& layers, dilated_conv_state& state,
                                 tensor_view<float, 3> out,  // [batch, seq, channels]
                                 const dilated_conv_options& opts = {}) {
  require_layout("x", x);
  require_layout("out", out);
  require_shape<float, 3>("out", out, x.dims());
  detail::dilated_validate(x.dim(0), x.dim(2), layers, &state);
  detail::dilated_kernel(simd::default_arch{}, x, layers, &state, out, opts);
}

// One token per batch entry.
inline void dilated_conv_step(tensor_view<const float, 2> x,  // [batch, channels]
                              const std::vector<dilated_conv_layer>& layers, dilated_conv_state& state,
                              tensor_view<float, 2> out,  // [batch, channels]
                              const dilated_conv_options& opts = {}) {
  require_layout("x", x);
  require_layout("out", out);
  require_shape<float, 2>("out", out, x.dims());
  const tensor_view<const float, 3> x3(x.data(), {x.dim(0), 1, x.dim(1)}, {x.stride(0), x.stride(0), x.stride(1)});
  const tensor_view<float, 3> o3(out.data(), {out.dim(0), 1, out.dim(1)}, {out.stride(0), out.stride(0), out.stride(1)});
  detail::dilated_validate(x.dim(0), x.dim(1), layers, &state);
  detail::dilated_kernel(simd::default_arch{}, x3, layers, &state, o3, opts);
}

}  // namespace tokmix
TOKMIX_SIMD_AVX512_WARNINGS_ON
