#pragma once
// What the mixer layers share: checks of their [B, L, d_model] / [B, d_model]
// arguments, projections of strided token rows, the layer scratch frame (on
// the outer arena, so the kernels below take their own scratch from local()
// without nesting in ours), the depthwise conv weights in PyTorch's
// [channels, 1, width] layout, and the reference inits.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

#include "tokmix/blocks/linear.hpp"
#include "tokmix/core/error.hpp"
#include "tokmix/core/named_tensors.hpp"
#include "tokmix/core/random.hpp"
#include "tokmix/core/scratch.hpp"
#include "tokmix/core/tensor_view.hpp"
#include "tokmix/core/threading.hpp"
#include "tokmix/simd/activation.hpp"
#include "tokmix/ssm/conv1d.hpp"

TOKMIX_SIMD_AVX512_WARNINGS_OFF
namespace tokmix {
namespace detail {

// ---- arguments ------------------------------------------------------------

// The address range a view spans (conservatively, first to last element).
template <class T, int R>
inline std::pair<const char*, const char*> layer_span(const tensor_view<T, R>& v) {
  if (v.size() == 0) return {nullptr, nullptr};
  index_t last = 0;
  for (int i = 0; i < R; ++i) last += (v.dim(i) - 1) * v.stride(i);
  const char* b = reinterpret_cast<const char*>(v.data());
  return {b, b + (last + 1) * static_cast<index_t>(sizeof(T))};
}

// y is written while x is still read (projections, then the mixer): the two
// must not share memory. Interleaved views whose spans cross are refused too.
template <int R>
inline void layer_require_disjoint(const tensor_view<const float, R>& x, const tensor_view<float, R>& y) {
  const auto a = layer_span(x), b = layer_span(y);
  if (a.first != nullptr && b.first != nullptr && a.first < b.second && b.first < a.second)
    throw argument_error("y", "memory not overlapping x", "an overlapping view");
}

inline void layer_check_prefill(const tensor_view<const float, 3>& x, const tensor_view<float, 3>& y, index_t d_model,
                                index_t batch) {
  require_layout("x", x);
  require_layout("y", y);
  require_shape("x", x, {batch, -1, d_model});
  require_shape<float, 3>("y", y, x.dims());
  layer_require_disjoint(x, y);
}

inline void layer_check_step(const tensor_view<const float, 2>& x, const tensor_view<float, 2>& y, index_t d_model,
                             index_t batch) {
  require_layout("x", x);
  require_layout("y", y);
  require_shape("x", x, {batch, d_model});
  require_shape<float, 2>("y", y, x.dims());
  layer_require_disjoint(x, y);
}

inline void layer_require_finite(const std::string& name, const float* p, index_t n) {
  for (index_t i = 0; i < n; ++i)
    if (!std::isfinite(p[i]))
      throw argument_error(name, "finite values", detail::to_text(p[i]) + " at flat index " + std::to_string(i));
}

// ---- the layer's own buffers ----------------------------------------------
// A layer keeps the rows of a call in buffers of `ld` floats per token, with
// several tensors side by side at column offsets (q | k | v ...), taken from
// one frame on scratch_arena::outer().

inline std::size_t layer_frame_bytes(std::initializer_list<index_t> floats) {
  std::size_t b = 0;
  for (index_t n : floats) b += scratch_frame::bytes_for<float>(static_cast<std::size_t>(n));
  return b;
}

// [rows, n] at column col of rows ld apart.
inline tensor_view<float, 2> layer_cols(float* p, index_t rows, index_t ld, index_t col, index_t n) {
  return tensor_view<float, 2>(p + col, {rows, n}, {ld, 1});
}
inline tensor_view<const float, 2> layer_ccols(const float* p, index_t rows, index_t ld, index_t col, index_t n) {
  return tensor_view<const float, 2>(p + col, {rows, n}, {ld, 1});
}
// [B, L, n] at column col of token rows ld apart.
inline tensor_view<float, 3> layer_tokens(float* p, index_t B, index_t L, index_t ld, index_t col, index_t n) {
  return tensor_view<float, 3>(p + col, {B, L, n}, {L * ld, ld, 1});
}
// [B, L, H, D] at column col of token rows ld apart.
inline tensor_view<float, 4> layer_heads(float* p, index_t B, index_t L, index_t ld, index_t col, index_t H,
                                         index_t D) {
  return tensor_view<float, 4>(p + col, {B, L, H, D}, {L * ld, ld, D, 1});
}
// [B, H, D] (one token per sequence) at column col of rows ld apart.
inline tensor_view<float, 3> layer_step_heads(float* p, index_t B, index_t ld, index_t col, index_t H, index_t D) {
  return tensor_view<float, 3>(p + col, {B, H, D}, {ld, D, 1});
}
// [B, L, H] / [B, H]: one scalar per head (gates, beta, dt).
inline tensor_view<float, 3> layer_head_scalars(float* p, index_t B, index_t L, index_t ld, index_t col, index_t H) {
  return tensor_view<float, 3>(p + col, {B, L, H}, {L * ld, ld, 1});
}

// ---- projections -----------------------------------------------------------

// out[b*L + l, col + j] = (W x[b, l, :] + b)_j: one product when the token rows
// of x are evenly spaced across the batch, else one per sequence.
//   x: [B, L, in]   out: B*L rows ld apart
inline void layer_project(const linear_weights& w, const tensor_view<const float, 3>& x, float* out, index_t ld,
                          index_t col, const exec_policy& policy) {
  const index_t B = x.dim(0), L = x.dim(1), in = x.dim(2), n_out = w.out_features();
  if (B * L == 0) return;
  if (B == 1 || x.stride(0) == L * x.stride(1)) {
    linear_forward(w, tensor_view<const float, 2>(x.data(), {B * L, in}, {x.stride(1), 1}),
                   layer_cols(out, B * L, ld, col, n_out), policy);
    return;
  }
  for (index_t b = 0; b < B; ++b)
    linear_forward(w, tensor_view<const float, 2>(x.ptr(b), {L, in}, {x.stride(1), 1}),
                   layer_cols(out + b * L * ld, L, ld, col, n_out), policy);
}

// One token per sequence.   x: [B, in]
inline void layer_project_step(const linear_weights& w, const tensor_view<const float, 2>& x, float* out, index_t ld,
                               index_t col, const exec_policy& policy) {
  linear_forward(w, x, layer_cols(out, x.dim(0), ld, col, w.out_features()), policy);
}

// y[b, l, :] = W in[b*L + l, col:] (+ b), written straight into y.   y: [B, L, d]
inline void layer_project_out(const linear_weights& w, const float* in, index_t ld, index_t col,
                              const tensor_view<float, 3>& y, const exec_policy& policy) {
  const index_t B = y.dim(0), L = y.dim(1), n_in = w.in_features(), d = y.dim(2);
  if (B * L == 0) return;
  if (B == 1 || y.stride(0) == L * y.stride(1)) {
    linear_forward(w, layer_ccols(in, B * L, ld, col, n_in), tensor_view<float, 2>(y.data(), {B * L, d}, {y.stride(1), 1}),
                   policy);
    return;
  }
  for (index_t b = 0; b < B; ++b)
    linear_forward(w, layer_ccols(in + b * L * ld, L, ld, col, n_in),
                   tensor_view<float, 2>(y.ptr(b), {L, d}, {y.stride(1), 1}), policy);
}

// ---- inits -----------------------------------------------------------------

// W ~ N(0, std^2), b = 0 (HF / fla _init_weights with initializer_range).
inline linear_weights layer_normal_linear(index_t in, index_t out, bool with_bias, double std, std::uint64_t seed) {
  linear_weights w;
  w.weight.resize(out, in);
  random_stream g(seed);
  for (index_t i = 0; i < w.weight.size(); ++i) w.weight.data()[i] = static_cast<float>(std * g.normal());
  if (with_bias) w.bias = Eigen::VectorXf::Zero(out);
  return w;
}

// W ~ U(-bound, bound), b = 0 unless bias_bound > 0.
inline linear_weights layer_uniform_linear(index_t in, index_t out, bool with_bias, double bound, double bias_bound,
                                           std::uint64_t seed) {
  linear_weights w;
  w.weight.resize(out, in);
  random_stream g(seed);
  for (index_t i = 0; i < w.weight.size(); ++i) w.weight.data()[i] = static_cast<float>(g.uniform(-bound, bound));
  if (with_bias) {
    w.bias.resize(out);
    for (index_t i = 0; i < out; ++i) w.bias[i] = bias_bound > 0 ? static_cast<float>(g.uniform(-bias_bound, bias_bound)) : 0.f;
  }
  return w;
}

// Mamba's dt bias: dt = exp(U(log dt_min, log dt_max)) floored at dt_floor, stored
// as softplus^-1(dt) = dt + log(-expm1(-dt)), so softplus(bias) starts at dt.
inline Eigen::VectorXf layer_dt_bias(index_t n, double dt_min, double dt_max, double dt_floor, std::uint64_t seed) {
  random_stream g(seed);
  Eigen::VectorXf v(n);
  for (index_t i = 0; i < n; ++i) {
    double dt = std::exp(g.uniform01() * (std::log(dt_max) - std::log(dt_min)) + std::log(dt_min));
    dt = std::max(dt, dt_floor);
    v[i] = static_cast<float>(dt + std::log(-std::expm1(-dt)));
  }
  return v;
}

inline Eigen::VectorXf layer_load_vector(const named_tensors& t, const std::string& name, index_t n) {
  const auto& e = t.at(name, {n});
  return Eigen::Map<const Eigen::VectorXf>(e.data.data(), n);
}
inline void layer_save_vector(named_tensors& t, const std::string& name, const Eigen::VectorXf& v) {
  t.insert(name, {static_cast<index_t>(v.size())}, std::vector<float>(v.data(), v.data() + v.size()));
}

inline void layer_require_shape(const char* what, index_t got_rows, index_t got_cols, index_t rows, index_t cols) {
  if (got_rows != rows || got_cols != cols)
    throw argument_error(what, "shape [" + std::to_string(rows) + ", " + std::to_string(cols) + "]",
                         "shape [" + std::to_string(got_rows) + ", " + std::to_string(got_cols) + "]");
}
inline void layer_require_linear(const std::string& name, const linear_weights& w, index_t in, index_t out,
                                 bool with_bias) {
  layer_require_shape((name + ".weight").c_str(), w.out_features(), w.in_features(), out, in);
  if (with_bias != w.has_bias() || (with_bias && w.bias.size() != out))
    throw argument_error(name + ".bias", with_bias ? "[" + std::to_string(out) + "]" : std::string("no bias"),
                         w.has_bias() ? "[" + std::to_string(w.bias.size()) + "]" : std::string("no bias"));
}
inline void layer_require_vector(const std::string& name, const Eigen::VectorXf& v, index_t n) {
  if (v.size() != n)
    throw argument_error(name, "[" + std::to_string(n) + "]", "[" + std::to_string(v.size()) + "]");
}

}  // namespace detail

// ---- depthwise causal conv weights ------------------------------------------

// nn.Conv1d(groups = channels) weights as mamba_ssm's conv1d and fla's
// ShortConvolution store them: `prefix.weight` [channels, 1, width] and,
// optionally, `prefix.bias` [channels].
struct depthwise_conv_weights {
  using matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  matrix weight;         // [channels, width]
  Eigen::VectorXf bias;  // [channels] or empty

  index_t channels() const { return weight.rows(); }
  index_t width() const { return weight.cols(); }
  bool has_bias() const { return bias.size() != 0; }

  // nn.Conv1d's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = width per channel.
  static depthwise_conv_weights random(index_t channels, index_t width, bool with_bias, std::uint64_t seed) {
    depthwise_conv_weights w;
    w.weight.resize(channels, width);
    random_stream g(seed);
    const double bound = 1.0 / std::sqrt(static_cast<double>(width));
    for (index_t i = 0; i < w.weight.size(); ++i) w.weight.data()[i] = static_cast<float>(g.uniform(-bound, bound));
    if (with_bias) {
      w.bias.resize(channels);
      for (index_t i = 0; i < channels; ++i) w.bias[i] = static_cast<float>(g.uniform(-bound, bound));
    }
    return w;
  }
  // W ~ N(0, std^2), b = 0 (fla's _init_weights treats Conv1d as Linear).
  static depthwise_conv_weights normal(index_t channels, index_t width, bool with_bias, double std,
                                       std::uint64_t seed) {
    depthwise_conv_weights w;
    w.weight.resize(channels, width);
    random_stream g(seed);
    for (index_t i = 0; i < w.weight.size(); ++i) w.weight.data()[i] = static_cast<float>(std * g.normal());
    if (with_bias) w.bias = Eigen::VectorXf::Zero(channels);
    return w;
  }
  static depthwise_conv_weights load(const named_tensors& t, const std::string& prefix, index_t channels,
                                     index_t width, bool with_bias) {
    const auto& e = t.at(prefix + ".weight", {channels, 1, width});
    depthwise_conv_weights w;
    w.weight = Eigen::Map<const matrix>(e.data.data(), channels, width);
    if (with_bias) w.bias = detail::layer_load_vector(t, prefix + ".bias", channels);
    return w;
  }
  void save(named_tensors& t, const std::string& prefix) const {
    t.insert(prefix + ".weight", {channels(), 1, width()},
             std::vector<float>(weight.data(), weight.data() + weight.size()));
    if (has_bias()) detail::layer_save_vector(t, prefix + ".bias", bias);
  }
  void check(const std::string& name, index_t want_channels, index_t want_width, bool with_bias) const {
    detail::layer_require_shape((name + ".weight").c_str(), channels(), width(), want_channels, want_width);
    require(want_width >= conv1d_min_width && want_width <= conv1d_max_width, (name + " width").c_str(),
            "in [" + std::to_string(conv1d_min_width) + ", " + std::to_string(conv1d_max_width) + "]", want_width);
    if (with_bias) detail::layer_require_vector(name + ".bias", bias, want_channels);
    else require(!has_bias(), (name + ".bias").c_str(), "no bias", "a bias");
  }
};

namespace detail {

// A depthwise conv prepared for the kernel: taps transposed to [width,
// channels] once, so conv1d reads them in place on every call.
struct layer_conv {
  depthwise_conv_weights::matrix taps;  // [width, channels]
  Eigen::VectorXf bias;                 // [channels] or empty
  bool silu = true;

  layer_conv() = default;
  layer_conv(const depthwise_conv_weights& w, bool act) : taps(w.weight.transpose()), bias(w.bias), silu(act) {}

  index_t channels() const { return taps.cols(); }
  index_t width() const { return taps.rows(); }
  // [channels, width] seen through strides.
  tensor_view<const float, 2> weight_view() const {
    return tensor_view<const float, 2>(taps.data(), {channels(), width()}, {1, channels()});
  }
  tensor_view<const float, 1> bias_view() const {
    return bias.size() ? tensor_view<const float, 1>(bias.data(), {bias.size()}) : tensor_view<const float, 1>();
  }
  void prefill(const tensor_view<const float, 3>& x, conv1d_state& s, const tensor_view<float, 3>& out,
               const exec_policy& policy) const {
    conv1d_options o;
    o.silu = silu;
    o.policy = policy;
    conv1d_prefill(x, weight_view(), bias_view(), s, out, o);
  }
  void step(const tensor_view<const float, 2>& x, conv1d_state& s, const tensor_view<float, 2>& out,
            const exec_policy& policy) const {
    conv1d_options o;
    o.silu = silu;
    o.policy = policy;
    conv1d_step(x, weight_view(), bias_view(), s, out, o);
  }
};

inline std::size_t layer_conv_state_bytes(index_t batch, index_t channels, index_t width) {
  return static_cast<std::size_t>(batch * (width - 1) * channels) * sizeof(float);
}

// y = silu(x) over rows (the activation of a projection without its short conv).
inline void layer_silu_rows(float* p, index_t rows, index_t cols, index_t ld) {
  for (index_t r = 0; r < rows; ++r) simd::detail::silu_kernel(simd::default_arch{}, p + r * ld, p + r * ld, cols);
}

}  // namespace detail
}  // namespace tokmix
TOKMIX_SIMD_AVX512_WARNINGS_ON
