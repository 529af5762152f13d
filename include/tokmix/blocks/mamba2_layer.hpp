#pragma once
// The Mamba-2 mixer as a whole layer (mamba_ssm's Mamba2 module): one input
// projection, the causal conv over x|B|C, the SSD scan, the gated RMSNorm and
// the output projection, with chunked prefill and one-token decode on one
// state (conv history + SSD state).
//
//   [z | xBC | dt] = in_proj(u)            z: [d_inner], xBC: [d_inner + 2 G N], dt: [H]
//   xBC            = silu(conv1d(xBC))      causal, width d_conv, per channel
//   [x | B | C]    = xBC                    x: [H, P], B, C: [G, N]
//   dt_h           = clamp(softplus(dt_h + dt_bias_h), dt_limit)
//   h_t            = exp(dt_h A_h) h_{t-1} + dt_h x_t B_t^T,   A_h = -exp(A_log_h)   (P x N per head)
//   y_t            = h_t C_t + D_h x_t                          head h reads group h / (H / G)
//   y              = rmsnorm(y * silu(z)) * norm.weight          per group of d_inner / G channels
//                    (norm_before_gate: rmsnorm(y) * w * silu(z); rmsnorm = false: y * silu(z))
//   out            = out_proj(y)
//
// Shapes: u, out [batch, seq, d_model]; d_inner = expand * d_model, H =
// d_inner / headdim heads of P = headdim, G = ngroups groups of state N = d_state.
// Tensor names and inits are mamba_ssm's (Mamba2.__init__): in_proj.weight
// [2 d_inner + 2 G N + H, d_model], conv1d.weight [d_inner + 2 G N, 1, d_conv],
// conv1d.bias, dt_bias [H], A_log [H], D [H] (or [d_inner] with D_has_hdim),
// norm.weight [d_inner], out_proj.weight [d_model, d_inner] (+ biases when
// bias). random(): nn.Linear / nn.Conv1d defaults, dt_bias = softplus^-1 of a
// log-uniform dt in [dt_min, dt_max] floored at dt_init_floor, A ~ U(A_init_range),
// D = 1, norm.weight = 1.
// Not offered: d_ssm < d_inner (the gated-MLP side channel) and the fused
// mem-efficient path (the same arithmetic, on the same kernels here).
//
// ref: T. Dao, A. Gu, "Transformers are SSMs: Generalized Models and Efficient
//      Algorithms Through Structured State Space Duality", ICML 2024 (sec. 7,
//      the Mamba-2 block); mamba_ssm/modules/mamba2.py.

#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <utility>

#include "tokmix/blocks/detail/layer_common.hpp"
#include "tokmix/blocks/linear.hpp"
#include "tokmix/blocks/mixer_layer.hpp"
#include "tokmix/blocks/norm.hpp"
#include "tokmix/ssm/conv1d.hpp"
#include "tokmix/ssm/ssd.hpp"

TOKMIX_SIMD_AVX512_WARNINGS_OFF
namespace tokmix {

struct mamba2_layer_config {
  index_t d_model = 0;
  index_t d_state = 128;
  index_t d_conv = 4;
  index_t expand = 2;
  index_t headdim = 64;
  index_t ngroups = 1;
  double A_init_min = 1.0, A_init_max = 16.0;  // A_init_range
  bool D_has_hdim = false;
  bool rmsnorm = true;
  bool norm_before_gate = false;
  float norm_eps = 1e-5f;
  double dt_min = 0.001, dt_max = 0.1, dt_init_floor = 1e-4;
  float dt_limit_min = 0.f, dt_limit_max = std::numeric_limits<float>::infinity();  // dt_limit
  bool bias = false;  // in_proj / out_proj biases
  bool conv_bias = true;
  index_t chunk_size = ssd_default_chunk;  // prefill chunk (mamba_ssm defaults to 256; 64 measures fastest here)
  exec_policy policy;

  index_t d_inner() const { return expand * d_model; }
  index_t heads() const { return headdim > 0 ? d_inner() / headdim : 0; }
  index_t conv_dim() const { return d_inner() + 2 * ngroups * d_state; }
  index_t d_in_proj() const { return 2 * d_inner() + 2 * ngroups * d_state + heads(); }

  void validate() const {
    require(d_model >= 1, "d_model", ">= 1", d_model);
    require(d_state >= 1, "d_state", ">= 1", d_state);
    require(expand >= 1, "expand", ">= 1", expand);
    require(headdim >= 1 && d_inner() % headdim == 0, "headdim",
            "a divisor of d_inner = expand * d_model = " + std::to_string(d_inner()), headdim);
    require(ngroups >= 1 && heads() % ngroups == 0, "ngroups",
            "a divisor of the head count " + std::to_string(heads()), ngroups);
    require(d_conv >= conv1d_min_width && d_conv <= conv1d_max_width, "d_conv",
            "in [" + std::to_string(conv1d_min_width) + ", " + std::to_string(conv1d_max_width) + "]", d_conv);
    require(A_init_min > 0 && A_init_max >= A_init_min, "A_init_range", "0 < min <= max",
            std::to_string(A_init_min) + ", " + std::to_string(A_init_max));
    require(dt_min > 0 && dt_max >= dt_min && dt_init_floor >= 0, "dt_min / dt_max / dt_init_floor",
            "0 < dt_min <= dt_max, dt_init_floor >= 0", std::to_string(dt_min) + " / " + std::to_string(dt_max));
    require(dt_limit_min >= 0.f && std::isfinite(dt_limit_min) && dt_limit_max >= dt_limit_min, "dt_limit",
            "0 <= min (finite) <= max", std::to_string(dt_limit_min) + ", " + std::to_string(dt_limit_max));
    require(chunk_size >= 1, "chunk_size", ">= 1", chunk_size);
    if (rmsnorm) detail::norm_require_eps(norm_eps);
  }
};

struct mamba2_layer_weights {
  linear_weights in_proj, out_proj;
  depthwise_conv_weights conv1d;
  Eigen::VectorXf dt_bias;  // [H]
  Eigen::VectorXf A_log;    // [H]
  Eigen::VectorXf D;        // [H] or [d_inner]
  rms_norm_weights norm;    // [d_inner], used iff config.rmsnorm

  static mamba2_layer_weights random(const mamba2_layer_config& c, std::uint64_t seed) {
    c.validate();
    const index_t H = c.heads();
    auto sub = [&](std::uint64_t k) { return random_stream::derive(seed, k); };
    mamba2_layer_weights w;
    w.in_proj = linear_weights::random(c.d_model, c.d_in_proj(), c.bias, sub(0));
    w.conv1d = depthwise_conv_weights::random(c.conv_dim(), c.d_conv, c.conv_bias, sub(1));
    w.dt_bias = detail::layer_dt_bias(H, c.dt_min, c.dt_max, c.dt_init_floor, sub(2));
    random_stream g(sub(3));
    w.A_log.resize(H);
    for (index_t h = 0; h < H; ++h) w.A_log[h] = static_cast<float>(std::log(g.uniform(c.A_init_min, c.A_init_max)));
    w.D = Eigen::VectorXf::Ones(c.D_has_hdim ? c.d_inner() : H);
    if (c.rmsnorm) w.norm = rms_norm_weights::ones(c.d_inner(), c.norm_eps);
    w.out_proj = linear_weights::random(c.d_inner(), c.d_model, c.bias, sub(4));
    return w;
  }

  // `prefix` + in_proj.weight, conv1d.weight, ... (prefix e.g. "backbone.layers.0.mixer.").
  static mamba2_layer_weights load(const mamba2_layer_config& c, const named_tensors& t,
                                   const std::string& prefix = "") {
    c.validate();
    const index_t H = c.heads();
    mamba2_layer_weights w;
    w.in_proj = linear_weights::load(t, prefix + "in_proj", c.d_model, c.d_in_proj(), c.bias);
    w.conv1d = depthwise_conv_weights::load(t, prefix + "conv1d", c.conv_dim(), c.d_conv, c.conv_bias);
    w.dt_bias = detail::layer_load_vector(t, prefix + "dt_bias", H);
    w.A_log = detail::layer_load_vector(t, prefix + "A_log", H);
    w.D = detail::layer_load_vector(t, prefix + "D", c.D_has_hdim ? c.d_inner() : H);
    if (c.rmsnorm) w.norm = rms_norm_weights::load(t, prefix + "norm", c.d_inner(), c.norm_eps);
    w.out_proj = linear_weights::load(t, prefix + "out_proj", c.d_inner(), c.d_model, c.bias);
    return w;
  }

  void save(named_tensors& t, const std::string& prefix = "") const {
    in_proj.save(t, prefix + "in_proj");
    conv1d.save(t, prefix + "conv1d");
    detail::layer_save_vector(t, prefix + "dt_bias", dt_bias);
    detail::layer_save_vector(t, prefix + "A_log", A_log);
    detail::layer_save_vector(t, prefix + "D", D);
    if (norm.dim() > 0) norm.save(t, prefix + "norm");
    out_proj.save(t, prefix + "out_proj");
  }

  void check(const mamba2_layer_config& c) const {
    const index_t H = c.heads();
    detail::layer_require_linear("in_proj", in_proj, c.d_model, c.d_in_proj(), c.bias);
    conv1d.check("conv1d", c.conv_dim(), c.d_conv, c.conv_bias);
    detail::layer_require_vector("dt_bias", dt_bias, H);
    detail::layer_require_vector("A_log", A_log, H);
    detail::layer_require_vector("D", D, c.D_has_hdim ? c.d_inner() : H);
    if (c.rmsnorm) {
      detail::layer_require_vector("norm.weight", norm.weight, c.d_inner());
      detail::norm_require_eps(norm.eps);
    }
    detail::layer_require_linear("out_proj", out_proj, c.d_inner(), c.d_model, c.bias);
    detail::layer_require_finite("dt_bias", dt_bias.data(), dt_bias.size());
    detail::layer_require_finite("A_log", A_log.data(), A_log.size());
    detail::layer_require_finite("D", D.data(), D.size());
  }
};

// Conv history (over x|B|C) and SSD state of every sequence.
class mamba2_layer_state : public mixer_layer_state {
 public:
  mamba2_layer_state(index_t batch, const mamba2_layer_config& c)
      : conv_(batch, c.conv_dim(), c.d_conv), ssm_(batch, c.heads(), c.headdim, c.d_state) {}

  const char* layer_name() const override { return "mamba2"; }
  index_t batch() const override { return ssm_.batch(); }
  index_t position() const override { return position_; }
  std::size_t bytes() const override {
    return state_bytes(batch(), conv_.channels(), conv_.width(), ssm_.heads(), ssm_.head_dim(), ssm_.d_state());
  }
  void reset() override {
    conv_.reset();
    ssm_.reset();
    position_ = 0;
  }

  conv1d_state& conv() { return conv_; }
  ssd_state& ssm() { return ssm_; }
  const conv1d_state& conv() const { return conv_; }
  const ssd_state& ssm() const { return ssm_; }

  static std::size_t state_bytes(index_t batch, index_t conv_dim, index_t width, index_t heads, index_t P, index_t N) {
    return detail::layer_conv_state_bytes(batch, conv_dim, width) +
           static_cast<std::size_t>(batch * heads * P * N) * sizeof(float);
  }

 private:
  friend class mamba2_layer;
  conv1d_state conv_;
  ssd_state ssm_;
  index_t position_ = 0;
};

class mamba2_layer : public mixer_layer {
 public:
  mamba2_layer(const mamba2_layer_config& config, mamba2_layer_weights weights) : cfg_(config), w_(std::move(weights)) {
    cfg_.validate();
    w_.check(cfg_);
    a_ = -w_.A_log.array().exp();
    detail::layer_require_finite("A = -exp(A_log)", a_.data(), a_.size());
    conv_ = detail::layer_conv(w_.conv1d, true);
  }

  const mamba2_layer_config& config() const { return cfg_; }
  const mamba2_layer_weights& weights() const { return w_; }

  const char* name() const override { return "mamba2"; }
  index_t d_model() const override { return cfg_.d_model; }
  const exec_policy& policy() const override { return cfg_.policy; }
  void save(named_tensors& t, const std::string& prefix) const override { w_.save(t, prefix); }

  std::unique_ptr<mixer_layer_state> make_state(index_t batch, index_t /*max_tokens*/) const override {
    require(batch >= 1, "batch", ">= 1", batch);
    return std::make_unique<mamba2_layer_state>(batch, cfg_);
  }
  std::size_t state_bytes(index_t batch, index_t /*max_tokens*/) const override {
    return mamba2_layer_state::state_bytes(batch, cfg_.conv_dim(), cfg_.d_conv, cfg_.heads(), cfg_.headdim,
                                           cfg_.d_state);
  }

  // u, out: [batch, seq, d_model]
  void prefill(tensor_view<const float, 3> u, tensor_view<float, 3> out, mamba2_layer_state& s) const {
    detail::layer_check_prefill(u, out, cfg_.d_model, s.batch());
    const index_t B = u.dim(0), L = u.dim(1);
    if (L == 0) return;
    const index_t rows = B * L, di = cfg_.d_inner(), H = cfg_.heads(), P = cfg_.headdim, G = cfg_.ngroups,
                  N = cfg_.d_state, cd = cfg_.conv_dim(), dip = cfg_.d_in_proj();
    scratch_frame frame(scratch_arena::outer(), detail::layer_frame_bytes({rows * dip, rows * cd, rows * di}));
    float* zxbcdt = frame.alloc<float>(static_cast<std::size_t>(rows * dip));
    float* xbc = frame.alloc<float>(static_cast<std::size_t>(rows * cd));
    float* y = frame.alloc<float>(static_cast<std::size_t>(rows * di));
    const exec_policy& pol = cfg_.policy;
    detail::layer_project(w_.in_proj, u, zxbcdt, dip, 0, pol);
    conv_.prefill(detail::layer_tokens(zxbcdt, B, L, dip, di, cd), s.conv_, detail::layer_tokens(xbc, B, L, cd, 0, cd),
                  pol);
    const tensor_view<const float, 4> z =
        cfg_.rmsnorm ? tensor_view<const float, 4>() : detail::layer_heads(zxbcdt, B, L, dip, 0, H, P);
    ssd_prefill(detail::layer_heads(xbc, B, L, cd, 0, H, P), detail::layer_head_scalars(zxbcdt, B, L, dip, di + cd, H),
                a_view(), detail::layer_heads(xbc, B, L, cd, di, G, N), detail::layer_heads(xbc, B, L, cd, di + G * N, G, N),
                z, s.ssm_, detail::layer_heads(y, B, L, di, 0, H, P), ssd_params_for(pol));
    if (cfg_.rmsnorm) gate_norm(y, zxbcdt, rows, pol);
    detail::layer_project_out(w_.out_proj, y, di, 0, out, pol);
    s.position_ += L;
  }

  // u, out: [batch, d_model]
  void step(tensor_view<const float, 2> u, tensor_view<float, 2> out, mamba2_layer_state& s) const {
    detail::layer_check_step(u, out, cfg_.d_model, s.batch());
    const index_t B = u.dim(0), di = cfg_.d_inner(), H = cfg_.heads(), P = cfg_.headdim, G = cfg_.ngroups,
                  N = cfg_.d_state, cd = cfg_.conv_dim(), dip = cfg_.d_in_proj();
    scratch_frame frame(scratch_arena::outer(), detail::layer_frame_bytes({B * dip, B * cd, B * di}));
    float* zxbcdt = frame.alloc<float>(static_cast<std::size_t>(B * dip));
    float* xbc = frame.alloc<float>(static_cast<std::size_t>(B * cd));
    float* y = frame.alloc<float>(static_cast<std::size_t>(B * di));
    const exec_policy& pol = cfg_.policy;
    detail::layer_project_step(w_.in_proj, u, zxbcdt, dip, 0, pol);
    conv_.step(detail::layer_ccols(zxbcdt, B, dip, di, cd), s.conv_, detail::layer_cols(xbc, B, cd, 0, cd), pol);
    const tensor_view<const float, 3> z =
        cfg_.rmsnorm ? tensor_view<const float, 3>() : detail::layer_step_heads(zxbcdt, B, dip, 0, H, P);
    ssd_step(detail::layer_step_heads(xbc, B, cd, 0, H, P), detail::layer_ccols(zxbcdt, B, dip, di + cd, H), a_view(),
             detail::layer_step_heads(xbc, B, cd, di, G, N), detail::layer_step_heads(xbc, B, cd, di + G * N, G, N), z,
             s.ssm_, detail::layer_step_heads(y, B, di, 0, H, P), ssd_params_for(pol));
    if (cfg_.rmsnorm) gate_norm(y, zxbcdt, B, pol);
    linear_forward(w_.out_proj, detail::layer_ccols(y, B, di, 0, di), out, pol);
    s.position_ += 1;
  }

  void prefill(tensor_view<const float, 3> x, tensor_view<float, 3> y, mixer_layer_state& state) const override {
    prefill(x, y, detail::mixer_state_cast<mamba2_layer_state>(state, name()));
  }
  void step(tensor_view<const float, 2> x, tensor_view<float, 2> y, mixer_layer_state& state) const override {
    step(x, y, detail::mixer_state_cast<mamba2_layer_state>(state, name()));
  }

 private:
  tensor_view<const float, 1> a_view() const { return tensor_view<const float, 1>(a_.data(), {a_.size()}); }

  ssd_params ssd_params_for(const exec_policy& pol) const {
    ssd_params p;
    const index_t H = cfg_.heads();
    p.D = cfg_.D_has_hdim ? tensor_view<const float, 2>(w_.D.data(), {H, cfg_.headdim})
                          : tensor_view<const float, 2>(w_.D.data(), {H, 1});
    p.dt_bias = tensor_view<const float, 1>(w_.dt_bias.data(), {H});
    p.dt_softplus = true;
    p.dt_min = cfg_.dt_limit_min;
    p.dt_max = cfg_.dt_limit_max;
    p.chunk_size = cfg_.chunk_size;
    p.policy = pol;
    return p;
  }

  // y <- rmsnorm(y * silu(z)) * g per group (or the norm-before-gate order), in place.
  void gate_norm(float* y, const float* zxbcdt, index_t rows, const exec_policy& pol) const {
    const index_t di = cfg_.d_inner();
    gated_rms_norm_options o;
    o.group_size = di / cfg_.ngroups;
    o.norm_before_gate = cfg_.norm_before_gate;
    gated_rms_norm(detail::layer_ccols(y, rows, di, 0, di), detail::layer_ccols(zxbcdt, rows, cfg_.d_in_proj(), 0, di),
                   w_.norm, detail::layer_cols(y, rows, di, 0, di), o, pol);
  }

  mamba2_layer_config cfg_;
  mamba2_layer_weights w_;
  Eigen::VectorXf a_;  // [H] A = -exp(A_log)
  detail::layer_conv conv_;
};

}  // namespace tokmix
TOKMIX_SIMD_AVX512_WARNINGS_ON
