#pragma once
// The Mamba-1 mixer as a whole layer (mamba_ssm's Mamba module): projections,
// the causal depthwise conv, the selective scan and the gate, with prefill and
// one-token decode on one state (conv history + SSM state).
//
//   [x | z]  = in_proj(u)                                   x, z: [d_inner]
//   x        = silu(conv1d(x))                               causal, width d_conv, per channel
//   [dt|B|C] = x_proj(x)                                     dt: [dt_rank], B, C: [d_state]
//   delta    = softplus(dt_proj(dt))                         [d_inner] (dt_proj.bias inside)
//   h_t      = exp(delta A) h_{t-1} + delta B_t x_t,  A = -exp(A_log)    [d_inner, d_state]
//   y        = (C_t . h_t + D x_t) * silu(z)
//   out      = out_proj(y)
//
// Shapes: u, out [batch, seq, d_model]; d_inner = expand * d_model.
// Tensor names and inits are mamba_ssm's (Mamba.__init__): in_proj.weight
// [2 d_inner, d_model], conv1d.weight [d_inner, 1, d_conv], conv1d.bias,
// x_proj.weight [dt_rank + 2 d_state, d_inner], dt_proj.weight [d_inner,
// dt_rank], dt_proj.bias [d_inner], A_log [d_inner, d_state], D [d_inner],
// out_proj.weight [d_model, d_inner] (+ in_proj/out_proj biases when bias).
// random(): nn.Linear / nn.Conv1d defaults, dt_proj.weight U(+-dt_rank^-0.5
// dt_scale), dt_proj.bias = softplus^-1 of log-uniform dt in [dt_min,
// dt_max] floored at dt_init_floor, A_log = log(1..d_state), D = 1 (the
// "random" dt_init; the model-level out_proj rescale by 1/sqrt(n_layer) is the
// stack's business, not the layer's).
// Deviation: dt_proj's bias is added in the projection rather than as the
// scan's delta_bias; softplus(W dt + b) is the same value either way.
//
// ref: Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective State
//      Spaces", 2023 (sec. 3, fig. 3); mamba_ssm/modules/mamba_simple.py.

#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>

#include "tokmix/blocks/detail/layer_common.hpp"
#include "tokmix/blocks/linear.hpp"
#include "tokmix/blocks/mixer_layer.hpp"
#include "tokmix/ssm/conv1d.hpp"
#include "tokmix/ssm/selective_scan.hpp"

TOKMIX_SIMD_AVX512_WARNINGS_OFF
namespace tokmix {

struct mamba_layer_config {
  index_t d_model = 0;
  index_t d_state = 16;
  index_t d_conv = 4;
  index_t expand = 2;
  index_t dt_rank = -1;  // -1: ceil(d_model / 16) (mamba's "auto")
  bool conv_bias = true;
  bool bias = false;  // in_proj / out_proj biases
  double dt_min = 0.001, dt_max = 0.1, dt_init_floor = 1e-4, dt_scale = 1.0;
  exec_policy policy;

  index_t d_inner() const { return expand * d_model; }
  index_t rank() const { return dt_rank < 0 ? (d_model + 15) / 16 : dt_rank; }

  void validate() const {
    require(d_model >= 1, "d_model", ">= 1", d_model);
    require(d_state >= 1, "d_state", ">= 1", d_state);
    require(expand >= 1, "expand", ">= 1", expand);
    require(dt_rank == -1 || dt_rank >= 1, "dt_rank", ">= 1 (or -1 for ceil(d_model / 16))", dt_rank);
    require(d_conv >= conv1d_min_width && d_conv <= conv1d_max_width, "d_conv",
            "in [" + std::to_string(conv1d_min_width) + ", " + std::to_string(conv1d_max_width) + "]", d_conv);
    require(dt_min > 0 && dt_max >= dt_min && dt_init_floor >= 0, "dt_min / dt_max / dt_init_floor",
            "0 < dt_min <= dt_max, dt_init_floor >= 0", std::to_string(dt_min) + " / " + std::to_string(dt_max));
  }
};

struct mamba_layer_weights {
  using matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  linear_weights in_proj, x_proj, dt_proj, out_proj;
  depthwise_conv_weights conv1d;
  matrix A_log;       // [d_inner, d_state]
  Eigen::VectorXf D;  // [d_inner]

  static mamba_layer_weights random(const mamba_layer_config& c, std::uint64_t seed) {
    c.validate();
    const index_t di = c.d_inner(), N = c.d_state, R = c.rank();
    auto sub = [&](std::uint64_t k) { return random_stream::derive(seed, k); };
    mamba_layer_weights w;
    w.in_proj = linear_weights::random(c.d_model, 2 * di, c.bias, sub(0));
    w.conv1d = depthwise_conv_weights::random(di, c.d_conv, c.conv_bias, sub(1));
    w.x_proj = linear_weights::random(di, R + 2 * N, false, sub(2));
    const double std = std::pow(static_cast<double>(R), -0.5) * c.dt_scale;
    w.dt_proj = detail::layer_uniform_linear(R, di, true, std, 0.0, sub(3));
    w.dt_proj.bias = detail::layer_dt_bias(di, c.dt_min, c.dt_max, c.dt_init_floor, sub(4));
    w.A_log.resize(di, N);
    for (index_t d = 0; d < di; ++d)
      for (index_t n = 0; n < N; ++n) w.A_log(d, n) = static_cast<float>(std::log(static_cast<double>(n + 1)));
    w.D = Eigen::VectorXf::Ones(di);
    w.out_proj = linear_weights::random(di, c.d_model, c.bias, sub(5));
    return w;
  }

  // `prefix` + in_proj.weight, conv1d.weight, ... (prefix e.g. "backbone.layers.0.mixer.").
  static mamba_layer_weights load(const mamba_layer_config& c, const named_tensors& t, const std::string& prefix = "") {
    c.validate();
    const index_t di = c.d_inner(), N = c.d_state, R = c.rank();
    mamba_layer_weights w;
    w.in_proj = linear_weights::load(t, prefix + "in_proj", c.d_model, 2 * di, c.bias);
    w.conv1d = depthwise_conv_weights::load(t, prefix + "conv1d", di, c.d_conv, c.conv_bias);
    w.x_proj = linear_weights::load(t, prefix + "x_proj", di, R + 2 * N, false);
    w.dt_proj = linear_weights::load(t, prefix + "dt_proj", R, di, true);
    const auto& a = t.at(prefix + "A_log", {di, N});
    w.A_log = Eigen::Map<const matrix>(a.data.data(), di, N);
    w.D = detail::layer_load_vector(t, prefix + "D", di);
    w.out_proj = linear_weights::load(t, prefix + "out_proj", di, c.d_model, c.bias);
    return w;
  }

  void save(named_tensors& t, const std::string& prefix = "") const {
    in_proj.save(t, prefix + "in_proj");
    conv1d.save(t, prefix + "conv1d");
    x_proj.save(t, prefix + "x_proj");
    dt_proj.save(t, prefix + "dt_proj");
    t.insert(prefix + "A_log", {A_log.rows(), A_log.cols()}, std::vector<float>(A_log.data(), A_log.data() + A_log.size()));
    detail::layer_save_vector(t, prefix + "D", D);
    out_proj.save(t, prefix + "out_proj");
  }

  void check(const mamba_layer_config& c) const {
    const index_t di = c.d_inner(), N = c.d_state, R = c.rank();
    detail::layer_require_linear("in_proj", in_proj, c.d_model, 2 * di, c.bias);
    conv1d.check("conv1d", di, c.d_conv, c.conv_bias);
    detail::layer_require_linear("x_proj", x_proj, di, R + 2 * N, false);
    detail::layer_require_linear("dt_proj", dt_proj, R, di, true);
    detail::layer_require_shape("A_log", A_log.rows(), A_log.cols(), di, N);
    detail::layer_require_vector("D", D, di);
    detail::layer_require_linear("out_proj", out_proj, di, c.d_model, c.bias);
    detail::layer_require_finite("A_log", A_log.data(), A_log.size());
    detail::layer_require_finite("D", D.data(), D.size());
  }
};

// Conv history and SSM state of every sequence.
class mamba_layer_state : public mixer_layer_state {
 public:
  mamba_layer_state(index_t batch, const mamba_layer_config& c)
      : conv_(batch, c.d_inner(), c.d_conv), ssm_(batch, c.d_inner(), c.d_state) {}

  const char* layer_name() const override { return "mamba"; }
  index_t batch() const override { return ssm_.batch(); }
  index_t position() const override { return position_; }
  std::size_t bytes() const override { return state_bytes(batch(), ssm_.d_inner(), ssm_.d_state(), conv_.width()); }
  void reset() override {
    conv_.reset();
    ssm_.reset();
    position_ = 0;
  }

  conv1d_state& conv() { return conv_; }
  selective_scan_state& ssm() { return ssm_; }
  const conv1d_state& conv() const { return conv_; }
  const selective_scan_state& ssm() const { return ssm_; }

  static std::size_t state_bytes(index_t batch, index_t d_inner, index_t d_state, index_t width) {
    return detail::layer_conv_state_bytes(batch, d_inner, width) +
           static_cast<std::size_t>(batch * d_inner * d_state) * sizeof(float);
  }

 private:
  friend class mamba_layer;
  conv1d_state conv_;
  selective_scan_state ssm_;
  index_t position_ = 0;
};

class mamba_layer : public mixer_layer {
 public:
  mamba_layer(const mamba_layer_config& config, mamba_layer_weights weights) : cfg_(config), w_(std::move(weights)) {
    cfg_.validate();
    w_.check(cfg_);
    const index_t di = cfg_.d_inner(), N = cfg_.d_state;
    // A = -exp(A_log), kept [d_state, d_inner] so the scan reads it in place.
    a_t_.resize(N, di);
    for (index_t d = 0; d < di; ++d)
      for (index_t n = 0; n < N; ++n) a_t_(n, d) = -std::exp(w_.A_log(d, n));
    detail::layer_require_finite("A = -exp(A_log)", a_t_.data(), a_t_.size());
    conv_ = detail::layer_conv(w_.conv1d, true);
  }

  const mamba_layer_config& config() const { return cfg_; }
  const mamba_layer_weights& weights() const { return w_; }

  const char* name() const override { return "mamba"; }
  index_t d_model() const override { return cfg_.d_model; }
  const exec_policy& policy() const override { return cfg_.policy; }
  void save(named_tensors& t, const std::string& prefix) const override { w_.save(t, prefix); }

  std::unique_ptr<mixer_layer_state> make_state(index_t batch, index_t /*max_tokens*/) const override {
    require(batch >= 1, "batch", ">= 1", batch);
    return std::make_unique<mamba_layer_state>(batch, cfg_);
  }
  std::size_t state_bytes(index_t batch, index_t /*max_tokens*/) const override {
    return mamba_layer_state::state_bytes(batch, cfg_.d_inner(), cfg_.d_state, cfg_.d_conv);
  }

  // u, out: [batch, seq, d_model]
  void prefill(tensor_view<const float, 3> u, tensor_view<float, 3> out, mamba_layer_state& s) const {
    detail::layer_check_prefill(u, out, cfg_.d_model, s.batch());
    const index_t B = u.dim(0), L = u.dim(1), di = cfg_.d_inner(), N = cfg_.d_state, R = cfg_.rank();
    if (L == 0) return;
    const index_t rows = B * L, wd = R + 2 * N;
    scratch_frame frame(scratch_arena::outer(),
                        detail::layer_frame_bytes({rows * 2 * di, rows * di, rows * wd, rows * di, rows * di}));
    float* xz = frame.alloc<float>(static_cast<std::size_t>(rows * 2 * di));
    float* xc = frame.alloc<float>(static_cast<std::size_t>(rows * di));
    float* dbl = frame.alloc<float>(static_cast<std::size_t>(rows * wd));
    float* dt = frame.alloc<float>(static_cast<std::size_t>(rows * di));
    float* y = frame.alloc<float>(static_cast<std::size_t>(rows * di));
    const exec_policy& pol = cfg_.policy;
    detail::layer_project(w_.in_proj, u, xz, 2 * di, 0, pol);
    conv_.prefill(detail::layer_tokens(xz, B, L, 2 * di, 0, di), s.conv_, detail::layer_tokens(xc, B, L, di, 0, di), pol);
    linear_forward(w_.x_proj, detail::layer_ccols(xc, rows, di, 0, di), detail::layer_cols(dbl, rows, wd, 0, wd), pol);
    linear_forward(w_.dt_proj, detail::layer_ccols(dbl, rows, wd, 0, R), detail::layer_cols(dt, rows, di, 0, di), pol);
    const auto Bv = detail::layer_heads(dbl, B, L, wd, R, 1, N);
    const auto Cv = detail::layer_heads(dbl, B, L, wd, R + N, 1, N);
    selective_scan_prefill(detail::layer_tokens(xc, B, L, di, 0, di), detail::layer_tokens(dt, B, L, di, 0, di),
                           a_view(), Bv, Cv, detail::layer_tokens(xz, B, L, 2 * di, di, di), s.ssm_,
                           detail::layer_tokens(y, B, L, di, 0, di), scan_params());
    detail::layer_project_out(w_.out_proj, y, di, 0, out, pol);
    s.position_ += L;
  }

  // u, out: [batch, d_model]
  void step(tensor_view<const float, 2> u, tensor_view<float, 2> out, mamba_layer_state& s) const {
    detail::layer_check_step(u, out, cfg_.d_model, s.batch());
    const index_t B = u.dim(0), di = cfg_.d_inner(), N = cfg_.d_state, R = cfg_.rank(), wd = R + 2 * N;
    scratch_frame frame(scratch_arena::outer(), detail::layer_frame_bytes({B * 2 * di, B * di, B * wd, B * di, B * di}));
    float* xz = frame.alloc<float>(static_cast<std::size_t>(B * 2 * di));
    float* xc = frame.alloc<float>(static_cast<std::size_t>(B * di));
    float* dbl = frame.alloc<float>(static_cast<std::size_t>(B * wd));
    float* dt = frame.alloc<float>(static_cast<std::size_t>(B * di));
    float* y = frame.alloc<float>(static_cast<std::size_t>(B * di));
    const exec_policy& pol = cfg_.policy;
    detail::layer_project_step(w_.in_proj, u, xz, 2 * di, 0, pol);
    conv_.step(detail::layer_ccols(xz, B, 2 * di, 0, di), s.conv_, detail::layer_cols(xc, B, di, 0, di), pol);
    linear_forward(w_.x_proj, detail::layer_ccols(xc, B, di, 0, di), detail::layer_cols(dbl, B, wd, 0, wd), pol);
    linear_forward(w_.dt_proj, detail::layer_ccols(dbl, B, wd, 0, R), detail::layer_cols(dt, B, di, 0, di), pol);
    selective_scan_step(detail::layer_ccols(xc, B, di, 0, di), detail::layer_ccols(dt, B, di, 0, di), a_view(),
                        detail::layer_step_heads(dbl, B, wd, R, 1, N), detail::layer_step_heads(dbl, B, wd, R + N, 1, N),
                        detail::layer_ccols(xz, B, 2 * di, di, di), s.ssm_, detail::layer_cols(y, B, di, 0, di),
                        scan_params());
    linear_forward(w_.out_proj, detail::layer_ccols(y, B, di, 0, di), out, pol);
    s.position_ += 1;
  }

  void prefill(tensor_view<const float, 3> x, tensor_view<float, 3> y, mixer_layer_state& state) const override {
    prefill(x, y, detail::mixer_state_cast<mamba_layer_state>(state, name()));
  }
  void step(tensor_view<const float, 2> x, tensor_view<float, 2> y, mixer_layer_state& state) const override {
    step(x, y, detail::mixer_state_cast<mamba_layer_state>(state, name()));
  }

 private:
  // [d_inner, d_state] over the transposed storage.
  tensor_view<const float, 2> a_view() const {
    return tensor_view<const float, 2>(a_t_.data(), {cfg_.d_inner(), cfg_.d_state}, {1, cfg_.d_inner()});
  }
  selective_scan_params scan_params() const {
    selective_scan_params p;
    p.D = tensor_view<const float, 1>(w_.D.data(), {w_.D.size()});
    p.delta_softplus = true;
    p.policy = cfg_.policy;
    return p;
  }

  mamba_layer_config cfg_;
  mamba_layer_weights w_;
  mamba_layer_weights::matrix a_t_;  // [d_state, d_inner]
  detail::layer_conv conv_;
};

}  // namespace tokmix
TOKMIX_SIMD_AVX512_WARNINGS_ON
