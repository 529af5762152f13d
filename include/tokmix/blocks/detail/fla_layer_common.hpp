#pragma once
// What the flash-linear-attention style layers (GLA, DeltaNet / Gated
// DeltaNet, RetNet retention) share: the optional short convolutions on q, k
// and v (fla ShortConvolution: depthwise causal conv, SiLU, each with its own
// rolling state), the per-head output norm with or without the swish output
// gate (fla RMSNorm / FusedRMSNormGated over head_v_dim), and the repetition
// of k/v (or q/k) heads to the head count the linear kernels take, which
// need q, k and v with one head count (no GQA inside the kernels).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>

#include "tokmix/blocks/detail/layer_common.hpp"
#include "tokmix/blocks/norm.hpp"
#include "tokmix/ssm/conv1d.hpp"

TOKMIX_SIMD_AVX512_WARNINGS_OFF
namespace tokmix {
namespace detail {

// fla's ShortConvolution triple: q_conv1d, k_conv1d, v_conv1d, widths equal,
// channel counts those of the q, k and v projections.
struct fla_short_convs {
  depthwise_conv_weights q, k, v;

  static fla_short_convs normal(index_t cq, index_t ck, index_t cv, index_t width, bool bias, double std,
                                std::uint64_t seed) {
    return {depthwise_conv_weights::normal(cq, width, bias, std, random_stream::derive(seed, 0)),
            depthwise_conv_weights::normal(ck, width, bias, std, random_stream::derive(seed, 1)),
            depthwise_conv_weights::normal(cv, width, bias, std, random_stream::derive(seed, 2))};
  }
  static fla_short_convs load(const named_tensors& t, const std::string& prefix, index_t cq, index_t ck, index_t cv,
                              index_t width, bool bias) {
    return {depthwise_conv_weights::load(t, prefix + "q_conv1d", cq, width, bias),
            depthwise_conv_weights::load(t, prefix + "k_conv1d", ck, width, bias),
            depthwise_conv_weights::load(t, prefix + "v_conv1d", cv, width, bias)};
  }
  void save(named_tensors& t, const std::string& prefix) const {
    q.save(t, prefix + "q_conv1d");
    k.save(t, prefix + "k_conv1d");
    v.save(t, prefix + "v_conv1d");
  }
  void check(index_t cq, index_t ck, index_t cv, index_t width, bool bias) const {
    q.check("q_conv1d", cq, width, bias);
    k.check("k_conv1d", ck, width, bias);
    v.check("v_conv1d", cv, width, bias);
  }
};

// The three convs ready for the kernel (taps transposed once) and their activations.
struct fla_conv_runtime {
  layer_conv q, k, v;
  fla_conv_runtime() = default;
  fla_conv_runtime(const fla_short_convs& w, bool qk_silu) : q(w.q, qk_silu), k(w.k, qk_silu), v(w.v, true) {}
};

// Rolling conv states of the three convs.
struct fla_conv_states {
  conv1d_state q, k, v;
  fla_conv_states() = default;
  fla_conv_states(index_t batch, index_t cq, index_t ck, index_t cv, index_t width)
      : q(batch, cq, width), k(batch, ck, width), v(batch, cv, width) {}
  void reset() {
    q.reset();
    k.reset();
    v.reset();
  }
  static std::size_t bytes(index_t batch, index_t cq, index_t ck, index_t cv, index_t width) {
    return layer_conv_state_bytes(batch, cq, width) + layer_conv_state_bytes(batch, ck, width) +
           layer_conv_state_bytes(batch, cv, width);
  }
};

// Copies n columns of every row (strided source and destination).
inline void fla_copy_cols(const float* src, index_t ld_src, float* dst, index_t ld_dst, index_t rows, index_t n) {
  for (index_t r = 0; r < rows; ++r) std::copy(src + r * ld_src, src + r * ld_src + n, dst + r * ld_dst);
}

// Head h of the result is head h / rep of the source (fla's repeat
// '... (h d) -> ... (h g) d', the GQA convention), for every row.
//   src: rows of heads * dim floats (ld_src apart)   dst: rows of heads * rep * dim (ld_dst apart)
inline void fla_repeat_heads(const float* src, index_t ld_src, float* dst, index_t ld_dst, index_t rows,
                             index_t heads, index_t dim, index_t rep) {
  for (index_t r = 0; r < rows; ++r)
    for (index_t h = 0; h < heads; ++h)
      for (index_t g = 0; g < rep; ++g)
        std::copy(src + r * ld_src + h * dim, src + r * ld_src + (h + 1) * dim, dst + r * ld_dst + (h * rep + g) * dim);
}

// log(sigmoid(x)) without overflow: min(x, 0) - log1p(exp(-|x|)).
inline float fla_logsigmoid(float x) {
  return std::min(x, 0.f) - static_cast<float>(std::log1p(std::exp(-static_cast<double>(std::fabs(x)))));
}

// The output norm of every head in place, o: rows of heads * dv floats (ld
// apart). With a gate g (rows of heads * dv, ld_g apart):
// o = rmsnorm(o) * w * silu(g) (FusedRMSNormGated); without: o = rmsnorm(o) * w.
inline void fla_output_norm(float* o, index_t ld, const float* g, index_t ld_g, index_t rows, index_t heads,
                            index_t dv, const rms_norm_weights& w, const exec_policy& policy) {
  const tensor_view<float, 3> ov(o, {rows, heads, dv}, {ld, dv, 1});
  if (g != nullptr) {
    gated_rms_norm_options opt;
    opt.norm_before_gate = true;
    gated_rms_norm(ov, tensor_view<const float, 3>(g, {rows, heads, dv}, {ld_g, dv, 1}), w, ov, opt, policy);
  } else {
    rms_norm(ov, w, ov, policy);
  }
}

inline void fla_require_norm(const char* name, const rms_norm_weights& w, index_t dv) {
  require(w.dim() == dv, name, "[" + std::to_string(dv) + "]", "[" + std::to_string(w.dim()) + "]");
  norm_require_eps(w.eps);
}

}  // namespace detail
}  // namespace tokmix
TOKMIX_SIMD_AVX512_WARNINGS_ON
