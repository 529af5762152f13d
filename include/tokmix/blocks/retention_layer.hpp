#pragma once
// RetNet's multi-scale retention as a whole layer (fla's MultiScaleRetention):
// projections, optional short convolutions, rotary embeddings on q and k
// (optionally with xPos decay), retention with one fixed decay per head, the
// per-head RMSNorm with the swish output gate, and the output projection, with
// chunked prefill and one-token decode on one state.
//
//   q = x Wq^T,  k = x Wk^T,  v = x Wv^T        (k, v: num_kv_heads heads, repeated to num_heads)
//   q, k <- silu(conv1d(.)), v <- silu(conv1d(v))   (use_short_conv)
//   q, k <- rope(q, n), rope(k, n)                  (n: absolute position, rotate-half over head_k_dim)
//   S_t  = gamma_h S_{t-1} + k_t v_t^T,   o_t = S_t^T q_t / sqrt(head_k_dim),   gamma_h = 1 - 2^(-5-h)
//   o    = rmsnorm(o) * w * silu(x Wg^T)    (use_output_gate; else rmsnorm(o) * w), over head_v_dim
//   y    = o Wo^T
//
// xPos (xpos_scale_base = s > 0): q and k rows are further scaled by
// zeta_i^(n/s) and zeta_i^(-n/s) per rotary pair i, zeta_i = (2i + 0.4 D) /
// (1.4 D) (flash-attn RotaryEmbedding(scale_base = s)). Their product only
// depends on n - m, so it is folded into the decay instead: the layer runs
// GLA with the constant per-channel log decay log gamma_h + log(zeta_i) / s.
// That is exact for any centring of n (flash-attn centres on the sequence,
// which a decode step could not reproduce), and nothing grows with n.
//
// Shapes: x, y [batch, seq, d_model]; key_dim = d_model * expand_k, value_dim
// = d_model * expand_v (both must be integers, as fla asserts), head dims
// key_dim / num_heads and value_dim / num_heads; the state S is [batch,
// num_heads, head_k_dim, head_v_dim] plus the conv histories; the position n
// is kept in the state.
//
// Choices (fla/layers/multiscale_retention.py defaults): expand_k 1,
// expand_v 2, 8 heads, no short conv, output gate with the fused swish norm
// (g_norm_swish_gate.weight; g_norm.weight when fuse_norm = false or without
// the gate), norm_eps 1e-5, rotary base 10000 rotate-half (interleaved is an
// option: torchscale's theta_shift), no xPos. Names: q_proj, k_proj, v_proj,
// g_proj, o_proj, q_conv1d / k_conv1d / v_conv1d. random(): fla's
// _init_weights (N(0, 0.02) for every Linear and Conv1d, zero biases, norm
// gain 1). Not offered: feature_map, gate_fn other than swish.
// num_kv_heads < num_heads: k and v are repeated to the q heads in the layer
// (after RoPE, as fla does), since tokmix::retention_* take one head count.
//
// ref: Y. Sun et al., "Retentive Network: A Successor to Transformer for Large
//      Language Models", 2023 (sec. 2.2 multi-scale retention, gated output,
//      group norm); Y. Sun et al., "A Length-Extrapolatable Transformer", 2022
//      (xPos); fla MultiScaleRetention.

#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>

#include "tokmix/attention/rope.hpp"
#include "tokmix/blocks/detail/fla_layer_common.hpp"
#include "tokmix/blocks/detail/layer_common.hpp"
#include "tokmix/blocks/linear.hpp"
#include "tokmix/blocks/mixer_layer.hpp"
#include "tokmix/blocks/norm.hpp"
#include "tokmix/linear/gla.hpp"
#include "tokmix/linear/retention.hpp"

TOKMIX_SIMD_AVX512_WARNINGS_OFF
namespace tokmix {

struct retention_layer_config {
  index_t d_model = 0;
  index_t num_heads = 8;
  index_t num_kv_heads = -1;  // -1: num_heads
  double expand_k = 1.0;
  double expand_v = 2.0;
  bool use_short_conv = false;
  index_t conv_size = 4;
  bool conv_bias = false;
  bool use_output_gate = true;
  bool fuse_norm = true;  // only the norm's tensor name depends on it
  float norm_eps = 1e-5f;
  double rope_base = 10000.0;
  rope_style rope = rope_style::rotate_half;
  double xpos_scale_base = 0.0;  // > 0: xPos decay (see the header comment)
  index_t chunk_size = 64;
  double init_std = 0.02;
  exec_policy policy;

  index_t kv_heads() const { return num_kv_heads < 0 ? num_heads : num_kv_heads; }
  index_t groups() const { return num_heads / std::max<index_t>(kv_heads(), 1); }
  index_t key_dim() const { return static_cast<index_t>(std::llround(static_cast<double>(d_model) * expand_k)); }
  index_t value_dim() const { return static_cast<index_t>(std::llround(static_cast<double>(d_model) * expand_v)); }
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
    require(std::abs(static_cast<double>(d_model) * expand_k - static_cast<double>(key_dim())) < 1e-6 &&
                key_dim() >= num_heads && key_dim() % num_heads == 0,
            "expand_k", "d_model * expand_k an integer multiple of num_heads", static_cast<double>(d_model) * expand_k);
    require(std::abs(static_cast<double>(d_model) * expand_v - static_cast<double>(value_dim())) < 1e-6 &&
                value_dim() >= num_heads && value_dim() % num_heads == 0,
            "expand_v", "d_model * expand_v an integer multiple of num_heads", static_cast<double>(d_model) * expand_v);
    require(head_k_dim() % 2 == 0, "head_k_dim", "even (rotary pairs)", head_k_dim());
    require(std::isfinite(rope_base) && rope_base > 0, "rope_base", "finite and > 0", rope_base);
    require(std::isfinite(xpos_scale_base) && xpos_scale_base >= 0, "xpos_scale_base", "finite and >= 0 (0 = off)",
            xpos_scale_base);
    require(chunk_size >= 1, "chunk_size", ">= 1", chunk_size);
    if (use_short_conv)
      require(conv_size >= conv1d_min_width && conv_size <= conv1d_max_width, "conv_size",
              "in [" + std::to_string(conv1d_min_width) + ", " + std::to_string(conv1d_max_width) + "]", conv_size);
    detail::norm_require_eps(norm_eps);
  }
};

struct retention_layer_weights {
  linear_weights q_proj, k_proj, v_proj, g_proj, o_proj;
  detail::fla_short_convs convs;  // used iff use_short_conv
  rms_norm_weights norm;          // [head_v_dim]

  static retention_layer_weights random(const retention_layer_config& c, std::uint64_t seed) {
    c.validate();
    const double s = c.init_std;
    const index_t d = c.d_model, kd = c.key_dim(), vd = c.value_dim(), kg = c.key_dim_per_group(),
                  vg = c.value_dim_per_group();
    auto sub = [&](std::uint64_t i) { return random_stream::derive(seed, i); };
    retention_layer_weights w;
    w.q_proj = detail::layer_normal_linear(d, kd, false, s, sub(0));
    w.k_proj = detail::layer_normal_linear(d, kg, false, s, sub(1));
    w.v_proj = detail::layer_normal_linear(d, vg, false, s, sub(2));
    if (c.use_output_gate) w.g_proj = detail::layer_normal_linear(d, vd, false, s, sub(3));
    w.o_proj = detail::layer_normal_linear(vd, d, false, s, sub(4));
    if (c.use_short_conv) w.convs = detail::fla_short_convs::normal(kd, kg, vg, c.conv_size, c.conv_bias, s, sub(5));
    w.norm = rms_norm_weights::ones(c.head_v_dim(), c.norm_eps);
    return w;
  }

  static retention_layer_weights load(const retention_layer_config& c, const named_tensors& t,
                                      const std::string& prefix = "") {
    c.validate();
    const index_t d = c.d_model, kd = c.key_dim(), vd = c.value_dim(), kg = c.key_dim_per_group(),
                  vg = c.value_dim_per_group();
    retention_layer_weights w;
    w.q_proj = linear_weights::load(t, prefix + "q_proj", d, kd, false);
    w.k_proj = linear_weights::load(t, prefix + "k_proj", d, kg, false);
    w.v_proj = linear_weights::load(t, prefix + "v_proj", d, vg, false);
    if (c.use_output_gate) w.g_proj = linear_weights::load(t, prefix + "g_proj", d, vd, false);
    w.o_proj = linear_weights::load(t, prefix + "o_proj", vd, d, false);
    if (c.use_short_conv) w.convs = detail::fla_short_convs::load(t, prefix, kd, kg, vg, c.conv_size, c.conv_bias);
    w.norm = rms_norm_weights::load(t, prefix + c.norm_name(), c.head_v_dim(), c.norm_eps);
    return w;
  }

  void save(const retention_layer_config& c, named_tensors& t, const std::string& prefix = "") const {
    q_proj.save(t, prefix + "q_proj");
    k_proj.save(t, prefix + "k_proj");
    v_proj.save(t, prefix + "v_proj");
    if (c.use_output_gate) g_proj.save(t, prefix + "g_proj");
    o_proj.save(t, prefix + "o_proj");
    if (c.use_short_conv) convs.save(t, prefix);
    norm.save(t, prefix + c.norm_name());
  }

  void check(const retention_layer_config& c) const {
    const index_t d = c.d_model, kd = c.key_dim(), vd = c.value_dim(), kg = c.key_dim_per_group(),
                  vg = c.value_dim_per_group();
    detail::layer_require_linear("q_proj", q_proj, d, kd, false);
    detail::layer_require_linear("k_proj", k_proj, d, kg, false);
    detail::layer_require_linear("v_proj", v_proj, d, vg, false);
    if (c.use_output_gate) detail::layer_require_linear("g_proj", g_proj, d, vd, false);
    detail::layer_require_linear("o_proj", o_proj, vd, d, false);
    if (c.use_short_conv) convs.check(kd, kg, vg, c.conv_size, c.conv_bias);
    detail::fla_require_norm((c.norm_name() + ".weight").c_str(), norm, c.head_v_dim());
  }
};

// S per (sequence, head), the conv histories and the position (for RoPE).
class retention_layer_state : public mixer_layer_state {
 public:
  retention_layer_state(index_t batch, const retention_layer_config& c)
      : xpos_(c.xpos_scale_base > 0), short_conv_(c.use_short_conv), bytes_(bytes_for(batch, c)) {
    // Retention and xPos-as-GLA run different kernels with their own state types.
    if (xpos_) gla_ = gla_state(batch, c.num_heads, c.head_k_dim(), c.head_v_dim());
    else ret_ = retention_state(batch, c.num_heads, c.head_k_dim(), c.head_v_dim());
    batch_ = batch;
    if (short_conv_)
      conv_ = detail::fla_conv_states(batch, c.key_dim(), c.key_dim_per_group(), c.value_dim_per_group(), c.conv_size);
  }

  const char* layer_name() const override { return "retention"; }
  index_t batch() const override { return batch_; }
  index_t position() const override { return position_; }
  std::size_t bytes() const override { return bytes_; }
  void reset() override {
    ret_.reset();
    gla_.reset();
    if (short_conv_) conv_.reset();
    position_ = 0;
  }

  // [batch, heads, head_k_dim, head_v_dim]
  tensor_view<const float, 4> S() const { return xpos_ ? gla_.S() : ret_.S(); }

  static std::size_t bytes_for(index_t batch, const retention_layer_config& c) {
    std::size_t b = static_cast<std::size_t>(batch * c.num_heads * c.head_k_dim() * c.head_v_dim()) * sizeof(float);
    if (c.use_short_conv)
      b += detail::fla_conv_states::bytes(batch, c.key_dim(), c.key_dim_per_group(), c.value_dim_per_group(),
                                          c.conv_size);
    return b;
  }

 private:
  friend class retention_layer;
  bool xpos_, short_conv_;
  std::size_t bytes_;
  index_t batch_ = 0;
  retention_state ret_;
  gla_state gla_;
  detail::fla_conv_states conv_;
  index_t position_ = 0;
};

class retention_layer : public mixer_layer {
 public:
  retention_layer(const retention_layer_config& config, retention_layer_weights weights)
      : cfg_(config), w_(std::move(weights)) {
    cfg_.validate();
    w_.check(cfg_);
    if (cfg_.use_short_conv) conv_ = detail::fla_conv_runtime(w_.convs, true);
    rope_.rotary_dim = cfg_.head_k_dim();
    rope_.base = cfg_.rope_base;
    rope_.style = cfg_.rope;
    if (cfg_.xpos_scale_base > 0) {
      // Per channel of a head: log gamma_h + log(zeta_pair) / scale_base.
      const index_t H = cfg_.num_heads, dk = cfg_.head_k_dim(), half = dk / 2;
      xpos_gate_.resize(H * dk);
      for (index_t h = 0; h < H; ++h)
        for (index_t i = 0; i < dk; ++i) {
          const index_t pair = cfg_.rope == rope_style::rotate_half ? i % half : i / 2;
          const double zeta = (2.0 * pair + 0.4 * dk) / (1.4 * dk);
          xpos_gate_[h * dk + i] = static_cast<float>(std::log(retention_default_gamma(h)) +
                                                      std::log(zeta) / cfg_.xpos_scale_base);
        }
    }
  }

  const retention_layer_config& config() const { return cfg_; }
  const retention_layer_weights& weights() const { return w_; }

  const char* name() const override { return "retention"; }
  index_t d_model() const override { return cfg_.d_model; }
  const exec_policy& policy() const override { return cfg_.policy; }
  void save(named_tensors& t, const std::string& prefix) const override { w_.save(cfg_, t, prefix); }

  std::unique_ptr<mixer_layer_state> make_state(index_t batch, index_t) const override {
    require(batch >= 1, "batch", ">= 1", batch);
    return std::make_unique<retention_layer_state>(batch, cfg_);
  }
  std::size_t state_bytes(index_t batch, index_t) const override { return retention_layer_state::bytes_for(batch, cfg_); }

  // x, y: [batch, seq, d_model]
  void prefill(tensor_view<const float, 3> x, tensor_view<float, 3> y, retention_layer_state& state) const {
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
  void step(tensor_view<const float, 2> x, tensor_view<float, 2> y, retention_layer_state& state) const {
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
    prefill(x, y, detail::mixer_state_cast<retention_layer_state>(state, name()));
  }
  void step(tensor_view<const float, 2> x, tensor_view<float, 2> y, mixer_layer_state& state) const override {
    step(x, y, detail::mixer_state_cast<retention_layer_state>(state, name()));
  }

 private:
  void require_kind(const retention_layer_state& s) const {
    require(s.xpos_ == (cfg_.xpos_scale_base > 0), "state", "a state made by this layer's make_state",
            s.xpos_ ? "an xPos retention state" : "a plain retention state");
  }

  template <class Project, class Output>
  void run(index_t B, index_t L, retention_layer_state& st, Project&& project, Output&& output) const {
    const index_t rows = B * L, H = cfg_.num_heads, Hkv = cfg_.kv_heads(), dk = cfg_.head_k_dim(),
                  dv = cfg_.head_v_dim();
    const index_t kd = cfg_.key_dim(), vd = cfg_.value_dim(), kg = cfg_.key_dim_per_group(),
                  vg = cfg_.value_dim_per_group(), rep = cfg_.groups();
    const bool conv = cfg_.use_short_conv, gate = cfg_.use_output_gate, xpos = cfg_.xpos_scale_base > 0;
    const index_t c_q = 0, c_k = kd, c_v = kd + kg, c_g = kd + kg + vg;
    const index_t ld_raw = c_g + (gate ? vd : 0);
    const index_t ld_conv = kd + kg + vg;
    const index_t ld_rep = kd + vd;
    scratch_frame frame(scratch_arena::outer(),
                        detail::layer_frame_bytes({rows * ld_raw, conv ? rows * ld_conv : 0,
                                                   rep > 1 ? rows * ld_rep : 0, rows * vd, xpos ? rows * kd : 0}));
    float* raw = frame.alloc<float>(static_cast<std::size_t>(rows * ld_raw));
    float* cv = conv ? frame.alloc<float>(static_cast<std::size_t>(rows * ld_conv)) : nullptr;
    float* rp = rep > 1 ? frame.alloc<float>(static_cast<std::size_t>(rows * ld_rep)) : nullptr;
    float* o = frame.alloc<float>(static_cast<std::size_t>(rows * vd));
    float* gx = xpos ? frame.alloc<float>(static_cast<std::size_t>(rows * kd)) : nullptr;

    project(w_.q_proj, raw, ld_raw, c_q);
    project(w_.k_proj, raw, ld_raw, c_k);
    project(w_.v_proj, raw, ld_raw, c_v);
    if (gate) project(w_.g_proj, raw, ld_raw, c_g);

    float* qkv = raw;
    index_t ld_qkv = ld_raw;
    if (conv) {
      auto conv_in = [&](index_t col, index_t n) {
        return tensor_view<const float, 3>(raw + col, {B, L, n}, {L * ld_raw, ld_raw, 1});
      };
      if (L == 1) {
        conv_.q.step(detail::layer_ccols(raw, B, ld_raw, c_q, kd), st.conv_.q, detail::layer_cols(cv, B, ld_conv, 0, kd), cfg_.policy);
        conv_.k.step(detail::layer_ccols(raw, B, ld_raw, c_k, kg), st.conv_.k, detail::layer_cols(cv, B, ld_conv, kd, kg), cfg_.policy);
        conv_.v.step(detail::layer_ccols(raw, B, ld_raw, c_v, vg), st.conv_.v, detail::layer_cols(cv, B, ld_conv, kd + kg, vg), cfg_.policy);
      } else {
        conv_.q.prefill(conv_in(c_q, kd), st.conv_.q, detail::layer_tokens(cv, B, L, ld_conv, 0, kd), cfg_.policy);
        conv_.k.prefill(conv_in(c_k, kg), st.conv_.k, detail::layer_tokens(cv, B, L, ld_conv, kd, kg), cfg_.policy);
        conv_.v.prefill(conv_in(c_v, vg), st.conv_.v, detail::layer_tokens(cv, B, L, ld_conv, kd + kg, vg), cfg_.policy);
      }
      qkv = cv;
      ld_qkv = ld_conv;
    }
    // RoPE at the absolute positions, before the k heads are repeated (as fla).
    rope_apply(detail::layer_heads(qkv, B, L, ld_qkv, 0, H, dk), st.position_, rope_);
    rope_apply(detail::layer_heads(qkv, B, L, ld_qkv, kd, Hkv, dk), st.position_, rope_);

    const float* qb = qkv;
    const float* kb = qkv + kd;
    const float* vb = qkv + kd + kg;
    index_t ld_k = ld_qkv, ld_v = ld_qkv;
    if (rep > 1) {
      detail::fla_repeat_heads(kb, ld_qkv, rp, ld_rep, rows, Hkv, dk, rep);
      detail::fla_repeat_heads(vb, ld_qkv, rp + kd, ld_rep, rows, Hkv, dv, rep);
      kb = rp;
      vb = rp + kd;
      ld_k = ld_v = ld_rep;
    }
    if (xpos)
      for (index_t r = 0; r < rows; ++r) std::copy(xpos_gate_.data(), xpos_gate_.data() + kd, gx + r * kd);

    auto heads = [&](const float* base, index_t ld, index_t D) {
      return tensor_view<const float, 4>(base, {B, L, H, D}, {L * ld, ld, D, 1});
    };
    auto sh = [&](const float* base, index_t ld, index_t D) {
      return tensor_view<const float, 3>(base, {B, H, D}, {ld, D, 1});
    };
    if (xpos) {
      gla_params p;
      p.chunk_size = cfg_.chunk_size;
      p.policy = cfg_.policy;
      if (L == 1)
        gla_step(sh(qb, ld_qkv, dk), sh(kb, ld_k, dk), sh(vb, ld_v, dv), sh(gx, kd, dk),
                 detail::layer_step_heads(o, B, vd, 0, H, dv), st.gla_, p);
      else
        gla_chunk_prefill(heads(qb, ld_qkv, dk), heads(kb, ld_k, dk), heads(vb, ld_v, dv), heads(gx, kd, dk),
                          detail::layer_heads(o, B, L, vd, 0, H, dv), st.gla_, p);
    } else {
      retention_params p;
      p.chunk_size = cfg_.chunk_size;
      p.policy = cfg_.policy;
      if (L == 1)
        retention_step(sh(qb, ld_qkv, dk), sh(kb, ld_k, dk), sh(vb, ld_v, dv),
                       detail::layer_step_heads(o, B, vd, 0, H, dv), st.ret_, p);
      else
        retention_chunk_prefill(heads(qb, ld_qkv, dk), heads(kb, ld_k, dk), heads(vb, ld_v, dv),
                                detail::layer_heads(o, B, L, vd, 0, H, dv), st.ret_, p);
    }
    detail::fla_output_norm(o, vd, gate ? raw + c_g : nullptr, ld_raw, rows, H, dv, w_.norm, cfg_.policy);
    output(o, vd);
  }

  retention_layer_config cfg_;
  retention_layer_weights w_;
  detail::fla_conv_runtime conv_;
  rope_params rope_;
  std::vector<float> xpos_gate_;  // [heads * head_k_dim]
};

}  // namespace tokmix
TOKMIX_SIMD_AVX512_WARNINGS_ON
