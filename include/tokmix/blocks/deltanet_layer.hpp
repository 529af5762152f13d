#pragma once
// DeltaNet and Gated DeltaNet as whole layers (fla's DeltaNet and
// GatedDeltaNet): projections, short convolutions, the (gated) delta rule, the
// per-head output norm with the optional swish output gate, and the output
// projection, with chunked prefill and one-token decode on one state.
//
//   q, k = act(conv1d(x Wq^T)), act(conv1d(x Wk^T))   act: silu (default), relu, elu + 1, identity
//   v    = silu(conv1d(x Wv^T))                        (no short conv: act / silu of the projections)
//   q, k <- q / sum(q), k / sum(k) per head            (qk_norm = sum; l2 is done in the kernel)
//   beta = sigmoid(x Wb^T)                             (1 without use_beta; per v head)
//   gated: g = -exp(A_log) softplus(x Wa^T + dt_bias),  alpha = exp(g)                 (per v head)
//   S_t  = alpha_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,   k, q L2-normalised (qk_norm = l2)
//   o_t  = S_t^T q_t / sqrt(head_k_dim)
//   o    = rmsnorm(o) * w [* silu(x Wg^T)] over head_v_dim,   y = o Wo^T
//
// Shapes: x, y [batch, seq, d_model]; key_dim = num_heads * head_k_dim,
// value_dim = num_v_heads * head_v_dim; the state S is [batch, num_v_heads,
// head_k_dim, head_v_dim] plus the three conv histories.
//
// Choices (fla/layers/delta_net.py and gated_deltanet.py):
// - deltanet_layer_config::delta_net(d_model): fla DeltaNet's defaults
//   (expand_k = expand_v = 1, 4 heads, use_beta, no output gate, short convs
//   of 4 without bias, qk_activation silu, qk_norm l2, norm_eps 1e-5).
// - ::gated_delta_net(d_model): fla GatedDeltaNet's (head_dim 256, 6 heads,
//   expand_v 2, output gate, short convs); its q/k activation (silu), L2 qk
//   norm and beta are fixed, as in fla. num_v_heads > num_heads (fla's GVA):
//   q and k heads are repeated to the v heads in the layer, since
//   tokmix::*delta_rule_* take one head count.
// - Names: q_proj, k_proj, v_proj, b_proj, a_proj, A_log, dt_bias, g_proj,
//   q_conv1d / k_conv1d / v_conv1d [channels, 1, conv_size], o_norm, o_proj.
// - random(): fla's _init_weights (N(0, 0.02) for every Linear and Conv1d,
//   zero biases, norm gain 1) and GatedDeltaNet's own A_log = log U(0, 16),
//   dt_bias = softplus^-1 of log-uniform dt in [0.001, 0.1] floored at 1e-4.
// - Not offered: allow_neg_eigval (beta in (0, 2); the delta-rule kernels
//   take beta in [0, 1]).
//
// ref: S. Yang, B. Wang, Y. Zhang, Y. Shen, Y. Kim, "Parallelizing Linear
//      Transformers with the Delta Rule over Sequence Length", NeurIPS 2024
//      (sec. 4: the DeltaNet layer); S. Yang, J. Kautz, A. Hatamizadeh,
//      "Gated Delta Networks: Improving Mamba2 with Delta Rule", ICLR 2025;
//      fla DeltaNet / GatedDeltaNet.

#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>

#include "tokmix/blocks/detail/fla_layer_common.hpp"
#include "tokmix/blocks/detail/layer_common.hpp"
#include "tokmix/blocks/linear.hpp"
#include "tokmix/blocks/mixer_layer.hpp"
#include "tokmix/blocks/norm.hpp"
#include "tokmix/linear/delta_rule.hpp"
#include "tokmix/simd/activation.hpp"

TOKMIX_SIMD_AVX512_WARNINGS_OFF
namespace tokmix {

enum class deltanet_qk_activation { silu, relu, elu_plus_one, identity };
enum class deltanet_qk_norm { l2, sum };

struct deltanet_layer_config {
  index_t d_model = 0;
  bool gated = false;       // false: fla DeltaNet; true: fla GatedDeltaNet
  index_t num_heads = 4;    // q / k heads
  index_t num_v_heads = -1; // gated only: v heads (a multiple of num_heads); -1: num_heads
  index_t head_k_dim = -1;  // -1: d_model / num_heads
  index_t head_v_dim = -1;  // -1: head_k_dim
  bool use_beta = true;     // DeltaNet only (false: beta = 1)
  bool use_gate = false;    // output gate g_proj + FusedRMSNormGated
  bool use_short_conv = true;
  index_t conv_size = 4;
  bool conv_bias = false;
  deltanet_qk_activation qk_activation = deltanet_qk_activation::silu;
  deltanet_qk_norm qk_norm = deltanet_qk_norm::l2;
  float norm_eps = 1e-5f;
  index_t chunk_size = 64;
  double init_std = 0.02;
  exec_policy policy;

  // fla DeltaNet(hidden_size = d_model, expand_k = expand_v = 1, num_heads).
  static deltanet_layer_config delta_net(index_t d_model, index_t num_heads = 4) {
    deltanet_layer_config c;
    c.d_model = d_model;
    c.num_heads = num_heads;
    return c;
  }
  // fla GatedDeltaNet(hidden_size = d_model, head_dim, num_heads, expand_v).
  static deltanet_layer_config gated_delta_net(index_t d_model, index_t head_dim = 256, index_t num_heads = 6,
                                               index_t head_v_dim = 512) {
    deltanet_layer_config c;
    c.d_model = d_model;
    c.gated = true;
    c.num_heads = num_heads;
    c.head_k_dim = head_dim;
    c.head_v_dim = head_v_dim;
    c.use_gate = true;
    return c;
  }

  index_t v_heads() const { return gated && num_v_heads > 0 ? num_v_heads : num_heads; }
  index_t dk() const { return head_k_dim < 0 ? (num_heads > 0 ? d_model / num_heads : 0) : head_k_dim; }
  index_t dv() const { return head_v_dim < 0 ? dk() : head_v_dim; }
  index_t key_dim() const { return num_heads * dk(); }
  index_t value_dim() const { return v_heads() * dv(); }
  index_t rep() const { return v_heads() / std::max<index_t>(num_heads, 1); }
  bool has_beta() const { return gated || use_beta; }

  void validate() const {
    require(d_model >= 1, "d_model", ">= 1", d_model);
    require(num_heads >= 1, "num_heads", ">= 1", num_heads);
    require(head_k_dim >= 1 || (head_k_dim == -1 && d_model % num_heads == 0), "head_k_dim",
            ">= 1, or -1 with num_heads dividing d_model = " + std::to_string(d_model), head_k_dim);
    require(head_v_dim >= 1 || head_v_dim == -1, "head_v_dim", ">= 1 (or -1 for head_k_dim)", head_v_dim);
    require(num_v_heads == -1 || (gated && num_v_heads >= num_heads && num_v_heads % num_heads == 0), "num_v_heads",
            "-1, or (gated only) a multiple of num_heads = " + std::to_string(num_heads), num_v_heads);
    if (gated) {
      require(qk_activation == deltanet_qk_activation::silu, "qk_activation", "silu (fixed in Gated DeltaNet)",
              "another activation");
      require(qk_norm == deltanet_qk_norm::l2, "qk_norm", "l2 (fixed in Gated DeltaNet)", "sum");
      require(use_beta, "use_beta", "true (fixed in Gated DeltaNet)", "false");
    }
    require(chunk_size >= 1, "chunk_size", ">= 1", chunk_size);
    if (use_short_conv)
      require(conv_size >= conv1d_min_width && conv_size <= conv1d_max_width, "conv_size",
              "in [" + std::to_string(conv1d_min_width) + ", " + std::to_string(conv1d_max_width) + "]", conv_size);
    detail::norm_require_eps(norm_eps);
  }
};

struct deltanet_layer_weights {
  linear_weights q_proj, k_proj, v_proj, b_proj, a_proj, g_proj, o_proj;
  Eigen::VectorXf A_log, dt_bias;  // [num_v_heads], gated only
  detail::fla_short_convs convs;   // used iff use_short_conv
  rms_norm_weights o_norm;         // [head_v_dim]

  static deltanet_layer_weights random(const deltanet_layer_config& c, std::uint64_t seed) {
    c.validate();
    const double s = c.init_std;
    const index_t d = c.d_model, kd = c.key_dim(), vd = c.value_dim(), hv = c.v_heads();
    auto sub = [&](std::uint64_t i) { return random_stream::derive(seed, i); };
    deltanet_layer_weights w;
    w.q_proj = detail::layer_normal_linear(d, kd, false, s, sub(0));
    w.k_proj = detail::layer_normal_linear(d, kd, false, s, sub(1));
    w.v_proj = detail::layer_normal_linear(d, vd, false, s, sub(2));
    if (c.has_beta()) w.b_proj = detail::layer_normal_linear(d, hv, false, s, sub(3));
    if (c.gated) {
      w.a_proj = detail::layer_normal_linear(d, hv, false, s, sub(4));
      random_stream g(sub(5));
      w.A_log.resize(hv);
      for (index_t h = 0; h < hv; ++h) {
        double a = 0;
        while (a <= 0) a = g.uniform(0.0, 16.0);  // U(0, 16); log(0) would be -inf
        w.A_log[h] = static_cast<float>(std::log(a));
      }
      w.dt_bias = detail::layer_dt_bias(hv, 0.001, 0.1, 1e-4, sub(6));
    }
    if (c.use_gate) w.g_proj = detail::layer_normal_linear(d, vd, false, s, sub(7));
    w.o_proj = detail::layer_normal_linear(vd, d, false, s, sub(8));
    if (c.use_short_conv) w.convs = detail::fla_short_convs::normal(kd, kd, vd, c.conv_size, c.conv_bias, s, sub(9));
    w.o_norm = rms_norm_weights::ones(c.dv(), c.norm_eps);
    return w;
  }

  static deltanet_layer_weights load(const deltanet_layer_config& c, const named_tensors& t,
                                     const std::string& prefix = "") {
    c.validate();
    const index_t d = c.d_model, kd = c.key_dim(), vd = c.value_dim(), hv = c.v_heads();
    deltanet_layer_weights w;
    w.q_proj = linear_weights::load(t, prefix + "q_proj", d, kd, false);
    w.k_proj = linear_weights::load(t, prefix + "k_proj", d, kd, false);
    w.v_proj = linear_weights::load(t, prefix + "v_proj", d, vd, false);
    if (c.has_beta()) w.b_proj = linear_weights::load(t, prefix + "b_proj", d, hv, false);
    if (c.gated) {
      w.a_proj = linear_weights::load(t, prefix + "a_proj", d, hv, false);
      w.A_log = detail::layer_load_vector(t, prefix + "A_log", hv);
      w.dt_bias = detail::layer_load_vector(t, prefix + "dt_bias", hv);
    }
    if (c.use_gate) w.g_proj = linear_weights::load(t, prefix + "g_proj", d, vd, false);
    w.o_proj = linear_weights::load(t, prefix + "o_proj", vd, d, false);
    if (c.use_short_conv) w.convs = detail::fla_short_convs::load(t, prefix, kd, kd, vd, c.conv_size, c.conv_bias);
    w.o_norm = rms_norm_weights::load(t, prefix + "o_norm", c.dv(), c.norm_eps);
    return w;
  }

  void save(const deltanet_layer_config& c, named_tensors& t, const std::string& prefix = "") const {
    q_proj.save(t, prefix + "q_proj");
    k_proj.save(t, prefix + "k_proj");
    v_proj.save(t, prefix + "v_proj");
    if (c.has_beta()) b_proj.save(t, prefix + "b_proj");
    if (c.gated) {
      a_proj.save(t, prefix + "a_proj");
      detail::layer_save_vector(t, prefix + "A_log", A_log);
      detail::layer_save_vector(t, prefix + "dt_bias", dt_bias);
    }
    if (c.use_gate) g_proj.save(t, prefix + "g_proj");
    o_proj.save(t, prefix + "o_proj");
    if (c.use_short_conv) convs.save(t, prefix);
    o_norm.save(t, prefix + "o_norm");
  }

  void check(const deltanet_layer_config& c) const {
    const index_t d = c.d_model, kd = c.key_dim(), vd = c.value_dim(), hv = c.v_heads();
    detail::layer_require_linear("q_proj", q_proj, d, kd, false);
    detail::layer_require_linear("k_proj", k_proj, d, kd, false);
    detail::layer_require_linear("v_proj", v_proj, d, vd, false);
    if (c.has_beta()) detail::layer_require_linear("b_proj", b_proj, d, hv, false);
    if (c.gated) {
      detail::layer_require_linear("a_proj", a_proj, d, hv, false);
      detail::layer_require_vector("A_log", A_log, hv);
      detail::layer_require_vector("dt_bias", dt_bias, hv);
      detail::layer_require_finite("A_log", A_log.data(), hv);
      detail::layer_require_finite("dt_bias", dt_bias.data(), hv);
    }
    if (c.use_gate) detail::layer_require_linear("g_proj", g_proj, d, vd, false);
    detail::layer_require_linear("o_proj", o_proj, vd, d, false);
    if (c.use_short_conv) convs.check(kd, kd, vd, c.conv_size, c.conv_bias);
    detail::fla_require_norm("o_norm.weight", o_norm, c.dv());
  }
};

// The recurrent state S per (sequence, v head) and the conv histories.
class deltanet_layer_state : public mixer_layer_state {
 public:
  deltanet_layer_state(index_t batch, const deltanet_layer_config& c)
      : name_(c.gated ? "gated_delta_net" : "delta_net"),
        S_(batch, c.v_heads(), c.dk(), c.dv()),
        short_conv_(c.use_short_conv),
        bytes_(bytes_for(batch, c)) {
    if (short_conv_) conv_ = detail::fla_conv_states(batch, c.key_dim(), c.key_dim(), c.value_dim(), c.conv_size);
  }

  const char* layer_name() const override { return name_; }
  index_t batch() const override { return S_.batch(); }
  index_t position() const override { return position_; }
  std::size_t bytes() const override { return bytes_; }
  void reset() override {
    S_.reset();
    if (short_conv_) conv_.reset();
    position_ = 0;
  }

  delta_rule_state& recurrent() { return S_; }
  const delta_rule_state& recurrent() const { return S_; }

  static std::size_t bytes_for(index_t batch, const deltanet_layer_config& c) {
    std::size_t b = static_cast<std::size_t>(batch * c.v_heads() * c.dk() * c.dv()) * sizeof(float);
    if (c.use_short_conv) b += detail::fla_conv_states::bytes(batch, c.key_dim(), c.key_dim(), c.value_dim(), c.conv_size);
    return b;
  }

 private:
  friend class deltanet_layer;
  const char* name_;
  delta_rule_state S_;
  bool short_conv_;
  std::size_t bytes_;
  detail::fla_conv_states conv_;
  index_t position_ = 0;
};

class deltanet_layer : public mixer_layer {
 public:
  deltanet_layer(const deltanet_layer_config& config, deltanet_layer_weights weights)
      : cfg_(config), w_(std::move(weights)) {
    cfg_.validate();
    w_.check(cfg_);
    if (cfg_.use_short_conv) conv_ = detail::fla_conv_runtime(w_.convs, cfg_.qk_activation == deltanet_qk_activation::silu);
    if (cfg_.gated) neg_A_ = -w_.A_log.array().exp();
  }

  const deltanet_layer_config& config() const { return cfg_; }
  const deltanet_layer_weights& weights() const { return w_; }

  const char* name() const override { return cfg_.gated ? "gated_delta_net" : "delta_net"; }
  index_t d_model() const override { return cfg_.d_model; }
  const exec_policy& policy() const override { return cfg_.policy; }
  void save(named_tensors& t, const std::string& prefix) const override { w_.save(cfg_, t, prefix); }

  std::unique_ptr<mixer_layer_state> make_state(index_t batch, index_t) const override {
    require(batch >= 1, "batch", ">= 1", batch);
    return std::make_unique<deltanet_layer_state>(batch, cfg_);
  }
  std::size_t state_bytes(index_t batch, index_t) const override { return deltanet_layer_state::bytes_for(batch, cfg_); }

  // x, y: [batch, seq, d_model]
  void prefill(tensor_view<const float, 3> x, tensor_view<float, 3> y, deltanet_layer_state& state) const {
    detail::layer_check_prefill(x, y, cfg_.d_model, state.batch());
    require_kind(state);
    const index_t L = x.dim(1);
    if (L == 0) return;
    run(x.dim(0), L, state, [&](const linear_weights& w, float* out, index_t ld, index_t col) {
      detail::layer_project(w, x, out, ld, col, cfg_.policy);
    }, [&](float* o, index_t ld) { detail::layer_project_out(w_.o_proj, o, ld, 0, y, cfg_.policy); });
    state.position_ += L;
  }

  // x, y: [batch, d_model]
  void step(tensor_view<const float, 2> x, tensor_view<float, 2> y, deltanet_layer_state& state) const {
    detail::layer_check_step(x, y, cfg_.d_model, state.batch());
    require_kind(state);
    const index_t B = x.dim(0);
    run(B, 1, state, [&](const linear_weights& w, float* out, index_t ld, index_t col) {
      detail::layer_project_step(w, x, out, ld, col, cfg_.policy);
    }, [&](float* o, index_t ld) {
      linear_forward(w_.o_proj, detail::layer_ccols(o, B, ld, 0, cfg_.value_dim()), y, cfg_.policy);
    });
    state.position_ += 1;
  }

  void prefill(tensor_view<const float, 3> x, tensor_view<float, 3> y, mixer_layer_state& state) const override {
    prefill(x, y, detail::mixer_state_cast<deltanet_layer_state>(state, name()));
  }
  void step(tensor_view<const float, 2> x, tensor_view<float, 2> y, mixer_layer_state& state) const override {
    step(x, y, detail::mixer_state_cast<deltanet_layer_state>(state, name()));
  }

 private:
  // A DeltaNet state has the same C++ type as a Gated DeltaNet one; the
  // layer it came from must match too (and its shapes, checked by the kernel).
  void require_kind(const deltanet_layer_state& s) const {
    if (std::string(s.layer_name()) != name())
      throw argument_error("state", std::string("a state made by a ") + name() + " layer",
                           std::string("a state of a ") + s.layer_name() + " layer");
    require(s.S_.heads() == cfg_.v_heads() && s.S_.key_dim() == cfg_.dk() && s.S_.value_dim() == cfg_.dv(), "state",
            "a state made by this layer's make_state", "a state of other head shapes");
  }

  template <class Project, class Output>
  void run(index_t B, index_t L, deltanet_layer_state& st, Project&& project, Output&& output) const {
    const index_t rows = B * L, H = cfg_.num_heads, Hv = cfg_.v_heads(), dk = cfg_.dk(), dv = cfg_.dv();
    const index_t kd = cfg_.key_dim(), vd = cfg_.value_dim(), rep = cfg_.rep();
    const bool conv = cfg_.use_short_conv, gate = cfg_.use_gate, gated = cfg_.gated;
    // Raw rows: q | k | v | beta | g (gated) | output gate.
    const index_t c_q = 0, c_k = kd, c_v = 2 * kd, c_b = c_v + vd, c_a = c_b + Hv, c_g = c_a + (gated ? Hv : 0);
    const index_t ld_raw = c_g + (gate ? vd : 0);
    const index_t ld_conv = 2 * kd + vd;
    const index_t ld_rep = 2 * kd * rep;
    scratch_frame frame(scratch_arena::outer(),
                        detail::layer_frame_bytes({rows * ld_raw, conv ? rows * ld_conv : 0,
                                                   rep > 1 ? rows * ld_rep : 0, rows * vd}));
    float* raw = frame.alloc<float>(static_cast<std::size_t>(rows * ld_raw));
    float* cv = conv ? frame.alloc<float>(static_cast<std::size_t>(rows * ld_conv)) : nullptr;
    float* rp = rep > 1 ? frame.alloc<float>(static_cast<std::size_t>(rows * ld_rep)) : nullptr;
    float* o = frame.alloc<float>(static_cast<std::size_t>(rows * vd));
    const simd::default_arch arch{};

    project(w_.q_proj, raw, ld_raw, c_q);
    project(w_.k_proj, raw, ld_raw, c_k);
    project(w_.v_proj, raw, ld_raw, c_v);
    if (cfg_.has_beta()) project(w_.b_proj, raw, ld_raw, c_b);
    if (gated) project(w_.a_proj, raw, ld_raw, c_a);
    if (gate) project(w_.g_proj, raw, ld_raw, c_g);

    // Per-head scalars: beta = sigmoid(b) (or 1); g = -exp(A_log) softplus(a + dt_bias).
    for (index_t i = 0; i < rows; ++i) {
      float* b = raw + i * ld_raw + c_b;
      if (cfg_.has_beta()) simd::detail::sigmoid_kernel(arch, b, b, Hv);
      else std::fill(b, b + Hv, 1.f);
      if (gated) {
        float* a = raw + i * ld_raw + c_a;
        for (index_t h = 0; h < Hv; ++h) a[h] += w_.dt_bias[h];
        simd::detail::softplus_kernel(arch, a, a, Hv);
        for (index_t h = 0; h < Hv; ++h) a[h] *= neg_A_[h];
      }
    }

    // q | k | v after the convs (or the activations of the projections).
    float* qkv = raw;
    index_t ld_qkv = ld_raw;
    const bool silu_qk = cfg_.qk_activation == deltanet_qk_activation::silu;
    if (conv) {
      auto conv_in = [&](index_t col, index_t n) {
        return tensor_view<const float, 3>(raw + col, {B, L, n}, {L * ld_raw, ld_raw, 1});
      };
      if (L == 1) {
        conv_.q.step(detail::layer_ccols(raw, B, ld_raw, c_q, kd), st.conv_.q, detail::layer_cols(cv, B, ld_conv, 0, kd), cfg_.policy);
        conv_.k.step(detail::layer_ccols(raw, B, ld_raw, c_k, kd), st.conv_.k, detail::layer_cols(cv, B, ld_conv, kd, kd), cfg_.policy);
        conv_.v.step(detail::layer_ccols(raw, B, ld_raw, c_v, vd), st.conv_.v, detail::layer_cols(cv, B, ld_conv, 2 * kd, vd), cfg_.policy);
      } else {
        conv_.q.prefill(conv_in(c_q, kd), st.conv_.q, detail::layer_tokens(cv, B, L, ld_conv, 0, kd), cfg_.policy);
        conv_.k.prefill(conv_in(c_k, kd), st.conv_.k, detail::layer_tokens(cv, B, L, ld_conv, kd, kd), cfg_.policy);
        conv_.v.prefill(conv_in(c_v, vd), st.conv_.v, detail::layer_tokens(cv, B, L, ld_conv, 2 * kd, vd), cfg_.policy);
      }
      qkv = cv;
      ld_qkv = ld_conv;
    } else {
      if (silu_qk) detail::layer_silu_rows(raw + c_q, rows, 2 * kd, ld_raw);
      detail::layer_silu_rows(raw + c_v, rows, vd, ld_raw);
    }
    for (index_t i = 0; i < rows; ++i) {
      float* qk = qkv + i * ld_qkv;
      switch (cfg_.qk_activation) {
        case deltanet_qk_activation::relu:
          for (index_t j = 0; j < 2 * kd; ++j) qk[j] = std::max(qk[j], 0.f);
          break;
        case deltanet_qk_activation::elu_plus_one: simd::detail::elu_plus_one_kernel(arch, qk, qk, 2 * kd); break;
        default: break;
      }
      if (cfg_.qk_norm == deltanet_qk_norm::sum)
        for (index_t h = 0; h < 2 * H; ++h) {
          float* p = qk + h * dk;
          double s = 0;
          for (index_t j = 0; j < dk; ++j) s += p[j];
          const float inv = static_cast<float>(1.0 / s);
          for (index_t j = 0; j < dk; ++j) p[j] *= inv;
        }
    }

    // q, k repeated to the v heads (GVA).
    const float* qb = qkv;
    const float* kb = qkv + kd;
    index_t ld_qk = ld_qkv;
    if (rep > 1) {
      detail::fla_repeat_heads(qkv, ld_qkv, rp, ld_rep, rows, H, dk, rep);
      detail::fla_repeat_heads(qkv + kd, ld_qkv, rp + kd * rep, ld_rep, rows, H, dk, rep);
      qb = rp;
      kb = rp + kd * rep;
      ld_qk = ld_rep;
    }
    const float* vb = qkv + 2 * kd;

    delta_rule_params p;
    p.use_qk_l2norm = cfg_.qk_norm == deltanet_qk_norm::l2;
    p.chunk_size = cfg_.chunk_size;
    p.policy = cfg_.policy;
    if (L == 1) {
      auto sh = [&](const float* base, index_t ld, index_t D) {
        return tensor_view<const float, 3>(base, {B, Hv, D}, {ld, D, 1});
      };
      const tensor_view<const float, 2> beta(raw + c_b, {B, Hv}, {ld_raw, 1});
      const auto ov = detail::layer_step_heads(o, B, vd, 0, Hv, dv);
      if (gated)
        gated_delta_rule_step(sh(qb, ld_qk, dk), sh(kb, ld_qk, dk), sh(vb, ld_qkv, dv),
                              tensor_view<const float, 2>(raw + c_a, {B, Hv}, {ld_raw, 1}), beta, ov, st.S_, p);
      else
        delta_rule_step(sh(qb, ld_qk, dk), sh(kb, ld_qk, dk), sh(vb, ld_qkv, dv), beta, ov, st.S_, p);
    } else {
      auto heads = [&](const float* base, index_t ld, index_t D) {
        return tensor_view<const float, 4>(base, {B, L, Hv, D}, {L * ld, ld, D, 1});
      };
      auto scalars = [&](index_t col) {
        return tensor_view<const float, 3>(raw + col, {B, L, Hv}, {L * ld_raw, ld_raw, 1});
      };
      const auto ov = detail::layer_heads(o, B, L, vd, 0, Hv, dv);
      if (gated)
        gated_delta_rule_chunk_prefill(heads(qb, ld_qk, dk), heads(kb, ld_qk, dk), heads(vb, ld_qkv, dv), scalars(c_a),
                                       scalars(c_b), ov, st.S_, p);
      else
        delta_rule_chunk_prefill(heads(qb, ld_qk, dk), heads(kb, ld_qk, dk), heads(vb, ld_qkv, dv), scalars(c_b), ov,
                                 st.S_, p);
    }
    detail::fla_output_norm(o, vd, gate ? raw + c_g : nullptr, ld_raw, rows, Hv, dv, w_.o_norm, cfg_.policy);
    output(o, vd);
  }

  deltanet_layer_config cfg_;
  deltanet_layer_weights w_;
  detail::fla_conv_runtime conv_;
  Eigen::VectorXf neg_A_;  // -exp(A_log), gated only
};

}  // namespace tokmix
TOKMIX_SIMD_AVX512_WARNINGS_ON
