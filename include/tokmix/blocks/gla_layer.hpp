#pragma once
// Gated linear attention as a whole layer (fla's GatedLinearAttention):
// projections, optional short convolutions, the low-rank forget gate, the GLA
// recurrence, the per-head output norm with the swish output gate, and the
// output projection, with chunked prefill and one-token decode on one state.
//
//   q = x Wq^T,  k = x Wk^T,  v = x Wv^T        (k, v: num_kv_heads heads, repeated to num_heads)
//   q, k, v <- silu(conv1d(.))                  (use_short_conv)
//   gk = logsigmoid(W2 (W1 x) + b2) / gate_logit_normalizer   (max'd with clamp_min if set)
//   S_t = diag(exp(gk_t)) S_{t-1} + k_t v_t^T,   o_t = S_t^T q_t / sqrt(head_k_dim)     per head
//   o = rmsnorm(o) * w * silu(x Wg^T)            (use_output_gate; else rmsnorm(o) * w), over head_v_dim
//   y = o Wo^T
//
// Shapes: x, y [batch, seq, d_model]; key_dim = int(d_model * expand_k),
// value_dim = int(d_model * expand_v), head_k_dim = key_dim / num_heads,
// head_v_dim = value_dim / num_heads; the state S is [batch, num_heads,
// head_k_dim, head_v_dim] (+ the conv histories).
//
// Choices (fla/layers/gla.py defaults): expand_k 0.5, expand_v 1, 4 heads,
// no short conv (conv_size 4, no conv bias when on), output gate with the
// fused swish norm (tensor g_norm_swish_gate.weight; g_norm.weight when
// fuse_norm = false or without the gate; same arithmetic), norm_eps 1e-5,
// gate_logit_normalizer 16, gate_low_rank_dim 16, no clamp. Names: q_proj,
// k_proj, v_proj, g_proj, gk_proj.0 (no bias), gk_proj.1 (with bias), o_proj,
// q_conv1d / k_conv1d / v_conv1d [channels, 1, conv_size]. random(): fla's
// _init_weights (N(0, 0.02) for every Linear and Conv1d, zero biases, norm
// gain 1). Not offered: feature_map (fla's default is none), gate_fn other
// than swish. num_kv_heads < num_heads: k, v and the gate are repeated to the
// q heads in the layer (fla does the same before its kernel), since
// tokmix::gla_* take one head count.
//
// ref: S. Yang, B. Wang, Y. Shen, R. Panda, Y. Kim, "Gated Linear Attention
//      Transformers with Hardware-Efficient Training", ICML 2024 (sec. 4.4:
//      the GLA layer, low-rank gate, swish output gate); fla GatedLinearAttention.

#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <utility>

#include "tokmix/blocks/detail/fla_layer_common.hpp"
#include "tokmix/blocks/detail/layer_common.hpp"
#include "tokmix/blocks/linear.hpp"
#include "tokmix/blocks/mixer_layer.hpp"
#include "tokmix/blocks/norm.hpp"
#include "tokmix/linear/gla.hpp"

TOKMIX_SIMD_AVX512_WARNINGS_OFF
namespace tokmix {

struct gla_layer_config {
  index_t d_model = 0;
  index_t num_heads = 4;
  index_t num_kv_heads = -1;  // -1: num_heads
  double expand_k = 0.5;
  double expand_v = 1.0;
  bool use_short_conv = false;
  index_t conv_size = 4;
  bool conv_bias = false;
  bool use_output_gate = true;
  bool fuse_norm = true;  // only the norm's tensor name depends on it
  float norm_eps = 1e-5f;
  float gate_logit_normalizer = 16.f;
  index_t gate_low_rank_dim = 16;
  float clamp_min = -std::numeric_limits<float>::infinity();  // -inf: no clamp
  index_t chunk_size = 64;
  double init_std = 0.02;
  exec_policy policy;

  index_t kv_heads() const { return num_kv_heads < 0 ? num_heads : num_kv_heads; }
  index_t groups() const { return num_heads / std::max<index_t>(kv_heads(), 1); }
  index_t key_dim() const { return static_cast<index_t>(static_cast<double>(d_model) * expand_k); }
  index_t value_dim() const { return static_cast<index_t>(static_cast<double>(d_model) * expand_v); }
  index_t head_k_dim() const { return key_dim() / num_heads; }
  index_t head_v_dim() const { return value_dim() / num_heads; }
  index_t key_dim_per_group() const { return key_dim() / groups(); }
  index_t value_dim_per_group() const { return value_dim() / groups(); }
  std::string norm_name() const { return use_output_gate && fuse_norm ? "g_norm_swish_gate" : "g_norm"; }

  void validate() const {
    require(d_model >= 1, "d_model", ">= 1", d_model);
    require(num_heads >= 1, "num_heads", ">= 1", num_heads);
    require(kv_heads() >= 1 && num_heads % kv_heads() == 0, "num_kv_heads",
            "a divisor of num_heads = " + std::to_string(num_heads) + " (or -1)", num_kv_heads);
    require(key_dim() >= num_heads && key_dim() % num_heads == 0, "expand_k",
            "key_dim = int(d_model * expand_k) a positive multiple of num_heads", key_dim());
    require(value_dim() >= num_heads && value_dim() % num_heads == 0, "expand_v",
            "value_dim = int(d_model * expand_v) a positive multiple of num_heads", value_dim());
    require(gate_low_rank_dim >= 1, "gate_low_rank_dim", ">= 1", gate_low_rank_dim);
    require(std::isfinite(gate_logit_normalizer) && gate_logit_normalizer > 0.f, "gate_logit_normalizer",
            "finite and > 0", gate_logit_normalizer);
    require(!std::isnan(clamp_min) && clamp_min <= 0.f, "clamp_min", "<= 0 (or -inf for none)", clamp_min);
    require(chunk_size >= 1, "chunk_size", ">= 1", chunk_size);
    if (use_short_conv)
      require(conv_size >= conv1d_min_width && conv_size <= conv1d_max_width, "conv_size",
              "in [" + std::to_string(conv1d_min_width) + ", " + std::to_string(conv1d_max_width) + "]", conv_size);
    detail::norm_require_eps(norm_eps);
  }
};

struct gla_layer_weights {
  linear_weights q_proj, k_proj, v_proj, g_proj, gk_proj0, gk_proj1, o_proj;
  detail::fla_short_convs convs;  // used iff use_short_conv
  rms_norm_weights norm;          // [head_v_dim]

  static gla_layer_weights random(const gla_layer_config& c, std::uint64_t seed) {
    c.validate();
    const double s = c.init_std;
    const index_t d = c.d_model, kd = c.key_dim(), vd = c.value_dim(), kg = c.key_dim_per_group(),
                  vg = c.value_dim_per_group(), r = c.gate_low_rank_dim;
    auto sub = [&](std::uint64_t i) { return random_stream::derive(seed, i); };
    gla_layer_weights w;
    w.q_proj = detail::layer_normal_linear(d, kd, false, s, sub(0));
    w.k_proj = detail::layer_normal_linear(d, kg, false, s, sub(1));
    w.v_proj = detail::layer_normal_linear(d, vg, false, s, sub(2));
    if (c.use_output_gate) w.g_proj = detail::layer_normal_linear(d, vd, false, s, sub(3));
    w.gk_proj0 = detail::layer_normal_linear(d, r, false, s, sub(4));
    w.gk_proj1 = detail::layer_normal_linear(r, kg, true, s, sub(5));
    w.o_proj = detail::layer_normal_linear(vd, d, false, s, sub(6));
    if (c.use_short_conv) w.convs = detail::fla_short_convs::normal(kd, kg, vg, c.conv_size, c.conv_bias, s, sub(7));
    w.norm = rms_norm_weights::ones(c.head_v_dim(), c.norm_eps);
    return w;
  }

  static gla_layer_weights load(const gla_layer_config& c, const named_tensors& t, const std::string& prefix = "") {
    c.validate();
    const index_t d = c.d_model, kd = c.key_dim(), vd = c.value_dim(), kg = c.key_dim_per_group(),
                  vg = c.value_dim_per_group(), r = c.gate_low_rank_dim;
    gla_layer_weights w;
    w.q_proj = linear_weights::load(t, prefix + "q_proj", d, kd, false);
    w.k_proj = linear_weights::load(t, prefix + "k_proj", d, kg, false);
    w.v_proj = linear_weights::load(t, prefix + "v_proj", d, vg, false);
    if (c.use_output_gate) w.g_proj = linear_weights::load(t, prefix + "g_proj", d, vd, false);
    w.gk_proj0 = linear_weights::load(t, prefix + "gk_proj.0", d, r, false);
    w.gk_proj1 = linear_weights::load(t, prefix + "gk_proj.1", r, kg, true);
    w.o_proj = linear_weights::load(t, prefix + "o_proj", vd, d, false);
    if (c.use_short_conv) w.convs = detail::fla_short_convs::load(t, prefix, kd, kg, vg, c.conv_size, c.conv_bias);
    w.norm = rms_norm_weights::load(t, prefix + c.norm_name(), c.head_v_dim(), c.norm_eps);
    return w;
  }

  void save(const gla_layer_config& c, named_tensors& t, const std::string& prefix = "") const {
    q_proj.save(t, prefix + "q_proj");
    k_proj.save(t, prefix + "k_proj");
    v_proj.save(t, prefix + "v_proj");
    if (c.use_output_gate) g_proj.save(t, prefix + "g_proj");
    gk_proj0.save(t, prefix + "gk_proj.0");
    gk_proj1.save(t, prefix + "gk_proj.1");
    o_proj.save(t, prefix + "o_proj");
    if (c.use_short_conv) convs.save(t, prefix);
    norm.save(t, prefix + c.norm_name());
  }

  void check(const gla_layer_config& c) const {
    const index_t d = c.d_model, kd = c.key_dim(), vd = c.value_dim(), kg = c.key_dim_per_group(),
                  vg = c.value_dim_per_group(), r = c.gate_low_rank_dim;
    detail::layer_require_linear("q_proj", q_proj, d, kd, false);
    detail::layer_require_linear("k_proj", k_proj, d, kg, false);
    detail::layer_require_linear("v_proj", v_proj, d, vg, false);
    if (c.use_output_gate) detail::layer_require_linear("g_proj", g_proj, d, vd, false);
    detail::layer_require_linear("gk_proj.0", gk_proj0, d, r, false);
    detail::layer_require_linear("gk_proj.1", gk_proj1, r, kg, true);
    detail::layer_require_linear("o_proj", o_proj, vd, d, false);
    if (c.use_short_conv) convs.check(kd, kg, vg, c.conv_size, c.conv_bias);
    detail::fla_require_norm((c.norm_name() + ".weight").c_str(), norm, c.head_v_dim());
  }
};

// The recurrent state S per (sequence, head) and the conv histories.
class gla_layer_state : public mixer_layer_state {
 public:
  gla_layer_state(index_t batch, const gla_layer_config& c)
      : S_(batch, c.num_heads, c.head_k_dim(), c.head_v_dim()), short_conv_(c.use_short_conv) {
    if (short_conv_)
      conv_ = detail::fla_conv_states(batch, c.key_dim(), c.key_dim_per_group(), c.value_dim_per_group(), c.conv_size);
  }

  const char* layer_name() const override { return "gla"; }
  index_t batch() const override { return S_.batch(); }
  index_t position() const override { return position_; }
  std::size_t bytes() const override { return state_bytes(batch(), cfg_dims()); }
  void reset() override {
    S_.reset();
    if (short_conv_) conv_.reset();
    position_ = 0;
  }

  gla_state& recurrent() { return S_; }
  const gla_state& recurrent() const { return S_; }

  struct dims {
    index_t heads, dk, dv, cq, ck, cv, width;
    bool conv;
  };
  static std::size_t state_bytes(index_t batch, const dims& d) {
    std::size_t b = static_cast<std::size_t>(batch * d.heads * d.dk * d.dv) * sizeof(float);
    if (d.conv) b += detail::fla_conv_states::bytes(batch, d.cq, d.ck, d.cv, d.width);
    return b;
  }

 private:
  friend class gla_layer;
  dims cfg_dims() const {
    return {S_.heads(), S_.key_dim(), S_.value_dim(), conv_.q.channels(), conv_.k.channels(), conv_.v.channels(),
            conv_.q.width(), short_conv_};
  }
  gla_state S_;
  bool short_conv_;
  detail::fla_conv_states conv_;
  index_t position_ = 0;
};

class gla_layer : public mixer_layer {
 public:
  gla_layer(const gla_layer_config& config, gla_layer_weights weights) : cfg_(config), w_(std::move(weights)) {
    cfg_.validate();
    w_.check(cfg_);
    if (cfg_.use_short_conv) conv_ = detail::fla_conv_runtime(w_.convs, true);
  }

  const gla_layer_config& config() const { return cfg_; }
  const gla_layer_weights& weights() const { return w_; }

  const char* name() const override { return "gla"; }
  index_t d_model() const override { return cfg_.d_model; }
  const exec_policy& policy() const override { return cfg_.policy; }
  void save(named_tensors& t, const std::string& prefix) const override { w_.save(cfg_, t, prefix); }

  std::unique_ptr<mixer_layer_state> make_state(index_t batch, index_t) const override {
    require(batch >= 1, "batch", ">= 1", batch);
    return std::make_unique<gla_layer_state>(batch, cfg_);
  }
  std::size_t state_bytes(index_t batch, index_t) const override {
    return gla_layer_state::state_bytes(batch, {cfg_.num_heads, cfg_.head_k_dim(), cfg_.head_v_dim(), cfg_.key_dim(),
                                                cfg_.key_dim_per_group(), cfg_.value_dim_per_group(), cfg_.conv_size,
                                                cfg_.use_short_conv});
  }

  // x, y: [batch, seq, d_model]
  void prefill(tensor_view<const float, 3> x, tensor_view<float, 3> y, gla_layer_state& state) const {
    detail::layer_check_prefill(x, y, cfg_.d_model, state.batch());
    const index_t B = x.dim(0), L = x.dim(1);
    if (L == 0) return;
    run(B, L, state, [&](const linear_weights& w, float* out, index_t ld, index_t col) {
      detail::layer_project(w, x, out, ld, col, cfg_.policy);
    }, [&](float* o, index_t ld) { detail::layer_project_out(w_.o_proj, o, ld, 0, y, cfg_.policy); });
    state.position_ += L;
  }

  // x, y: [batch, d_model]
  void step(tensor_view<const float, 2> x, tensor_view<float, 2> y, gla_layer_state& state) const {
    detail::layer_check_step(x, y, cfg_.d_model, state.batch());
    const index_t B = x.dim(0);
    run(B, 1, state, [&](const linear_weights& w, float* out, index_t ld, index_t col) {
      detail::layer_project_step(w, x, out, ld, col, cfg_.policy);
    }, [&](float* o, index_t ld) {
      linear_forward(w_.o_proj, detail::layer_ccols(o, B, ld, 0, cfg_.value_dim()), y, cfg_.policy);
    });
    state.position_ += 1;
  }

  void prefill(tensor_view<const float, 3> x, tensor_view<float, 3> y, mixer_layer_state& state) const override {
    prefill(x, y, detail::mixer_state_cast<gla_layer_state>(state, name()));
  }
  void step(tensor_view<const float, 2> x, tensor_view<float, 2> y, mixer_layer_state& state) const override {
    step(x, y, detail::mixer_state_cast<gla_layer_state>(state, name()));
  }

 private:
  // One call over L tokens per sequence (L = 1: the step). Rows of the raw
  // buffer: q | k | v | gk | gate low rank | g; conv outputs and repeated
  // heads go to their own buffers, the kernel reads q | k | v | gk views.
  template <class Project, class Output>
  void run(index_t B, index_t L, gla_layer_state& st, Project&& project, Output&& output) const {
    const index_t rows = B * L, H = cfg_.num_heads, dk = cfg_.head_k_dim(), dv = cfg_.head_v_dim();
    const index_t kd = cfg_.key_dim(), vd = cfg_.value_dim(), kg = cfg_.key_dim_per_group(),
                  vg = cfg_.value_dim_per_group(), r = cfg_.gate_low_rank_dim, rep = cfg_.groups();
    const bool conv = cfg_.use_short_conv, gate = cfg_.use_output_gate;
    // raw columns
    const index_t c_q = 0, c_k = kd, c_v = c_k + kg, c_gk = c_v + vg, c_lr = c_gk + kg, c_g = c_lr + r;
    const index_t ld_raw = c_g + (gate ? vd : 0);
    const index_t ld_conv = kd + kg + vg;            // q | k | v after the convs
    const index_t ld_rep = kd + vd + kd;             // k | v | gk repeated to H heads
    scratch_frame frame(scratch_arena::outer(),
                        detail::layer_frame_bytes({rows * ld_raw, conv ? rows * ld_conv : 0,
                                                   rep > 1 ? rows * ld_rep : 0, rows * vd}));
    float* raw = frame.alloc<float>(static_cast<std::size_t>(rows * ld_raw));
    float* cv = conv ? frame.alloc<float>(static_cast<std::size_t>(rows * ld_conv)) : nullptr;
    float* rp = rep > 1 ? frame.alloc<float>(static_cast<std::size_t>(rows * ld_rep)) : nullptr;
    float* o = frame.alloc<float>(static_cast<std::size_t>(rows * vd));

    project(w_.q_proj, raw, ld_raw, c_q);
    project(w_.k_proj, raw, ld_raw, c_k);
    project(w_.v_proj, raw, ld_raw, c_v);
    project(w_.gk_proj0, raw, ld_raw, c_lr);
    linear_forward(w_.gk_proj1, detail::layer_ccols(raw, rows, ld_raw, c_lr, r),
                   detail::layer_cols(raw, rows, ld_raw, c_gk, kg), cfg_.policy);
    if (gate) project(w_.g_proj, raw, ld_raw, c_g);

    // gk = max(logsigmoid(gk) / normaliser, clamp_min)
    const float inv_norm = 1.f / cfg_.gate_logit_normalizer;
    for (index_t i = 0; i < rows; ++i) {
      float* gk = raw + i * ld_raw + c_gk;
      for (index_t j = 0; j < kg; ++j) gk[j] = std::max(detail::fla_logsigmoid(gk[j]) * inv_norm, cfg_.clamp_min);
    }

    // q, k, v: after the short convs, at (base, ld, column).
    const float* qb = raw + c_q;
    const float* kb = raw + c_k;
    const float* vb = raw + c_v;
    index_t ld_qkv = ld_raw;
    if (conv) {
      auto conv_in = [&](index_t col, index_t n) {
        return tensor_view<const float, 3>(raw + col, {B, L, n}, {L * ld_raw, ld_raw, 1});
      };
      auto conv_out = [&](index_t col, index_t n) { return detail::layer_tokens(cv, B, L, ld_conv, col, n); };
      if (L == 1 && rows == B) {
        conv_.q.step(detail::layer_ccols(raw, B, ld_raw, c_q, kd), st.conv_.q, detail::layer_cols(cv, B, ld_conv, 0, kd), cfg_.policy);
        conv_.k.step(detail::layer_ccols(raw, B, ld_raw, c_k, kg), st.conv_.k, detail::layer_cols(cv, B, ld_conv, kd, kg), cfg_.policy);
        conv_.v.step(detail::layer_ccols(raw, B, ld_raw, c_v, vg), st.conv_.v, detail::layer_cols(cv, B, ld_conv, kd + kg, vg), cfg_.policy);
      } else {
        conv_.q.prefill(conv_in(c_q, kd), st.conv_.q, conv_out(0, kd), cfg_.policy);
        conv_.k.prefill(conv_in(c_k, kg), st.conv_.k, conv_out(kd, kg), cfg_.policy);
        conv_.v.prefill(conv_in(c_v, vg), st.conv_.v, conv_out(kd + kg, vg), cfg_.policy);
      }
      qb = cv;
      kb = cv + kd;
      vb = cv + kd + kg;
      ld_qkv = ld_conv;
    }
    const float* gb = raw + c_gk;
    index_t ld_k = ld_qkv, ld_v = ld_qkv, ld_g = ld_raw;
    if (rep > 1) {
      detail::fla_repeat_heads(kb, ld_qkv, rp, ld_rep, rows, cfg_.kv_heads(), dk, rep);
      detail::fla_repeat_heads(vb, ld_qkv, rp + kd, ld_rep, rows, cfg_.kv_heads(), dv, rep);
      detail::fla_repeat_heads(gb, ld_raw, rp + kd + vd, ld_rep, rows, cfg_.kv_heads(), dk, rep);
      kb = rp;
      vb = rp + kd;
      gb = rp + kd + vd;
      ld_k = ld_v = ld_g = ld_rep;
    }

    gla_params p;
    p.chunk_size = cfg_.chunk_size;
    p.policy = cfg_.policy;
    auto heads = [&](const float* base, index_t ld, index_t D) {
      return tensor_view<const float, 4>(base, {B, L, H, D}, {L * ld, ld, D, 1});
    };
    if (L == 1 && rows == B) {
      auto sh = [&](const float* base, index_t ld, index_t D) {
        return tensor_view<const float, 3>(base, {B, H, D}, {ld, D, 1});
      };
      gla_step(sh(qb, ld_qkv, dk), sh(kb, ld_k, dk), sh(vb, ld_v, dv), sh(gb, ld_g, dk),
               detail::layer_step_heads(o, B, vd, 0, H, dv), st.S_, p);
    } else {
      gla_chunk_prefill(heads(qb, ld_qkv, dk), heads(kb, ld_k, dk), heads(vb, ld_v, dv), heads(gb, ld_g, dk),
                        detail::layer_heads(o, B, L, vd, 0, H, dv), st.S_, p);
    }
    detail::fla_output_norm(o, vd, gate ? raw + c_g : nullptr, ld_raw, rows, H, dv, w_.norm, cfg_.policy);
    output(o, vd);
  }

  gla_layer_config cfg_;
  gla_layer_weights w_;
  detail::fla_conv_runtime conv_;
};

}  // namespace tokmix
TOKMIX_SIMD_AVX512_WARNINGS_ON
