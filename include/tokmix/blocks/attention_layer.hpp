#pragma once
// Multi-head softmax attention as a whole layer (HF LlamaAttention and its
// relatives): projections, optional QK-norm, RoPE, a KV cache, the attention
// itself and the output projection, with prefill and one-token decode on one
// state.
//
//   q = x Wq^T (+bq)   k = x Wk^T (+bk)   v = x Wv^T (+bv)      per token, split into heads
//   q, k <- rms_norm(q), rms_norm(k) over head_dim            (qk_norm: Qwen3 q_norm / k_norm)
//   q, k <- rope(q, pos), rope(k, pos)                         (pos = tokens before + t)
//   o_h  = softmax(scale q_h K_g^T, causal [, window]) V_g,    g = h / (Hq / Hkv)   (GQA)
//   y    = concat_h(o_h) Wo^T (+bo)
//
// Shapes: x, y [batch, seq, d_model]; q heads Hq of head_dim D, kv heads Hkv.
// Prefill runs flash_attention over the cached keys plus the new ones
// (bottom-right causal alignment, so a second prefill sees the first);
// step runs attention_decode on the cache. Keys enter the cache already
// rotated (at their absolute positions), in fp32, fp16 or bf16.
//
// Choices (tensor names and defaults follow HF transformers' Llama / Qwen2 /
// Qwen3 / Mistral attention):
// - weights q_proj [Hq*D, d_model], k_proj/v_proj [Hkv*D, d_model], o_proj
//   [d_model, Hq*D]; biases on q/k/v (qkv_bias: Qwen2) and on o (o_bias;
//   Llama's attention_bias sets both); q_norm / k_norm [D] (Qwen3, eps 1e-6).
// - random(): HF's _init_weights, N(0, init_std = 0.02) weights, zero biases,
//   norm gains 1.
// - sliding_window = W > 0: a token sees itself and the W - 1 tokens before it
//   (HF Mistral / Qwen2 sliding_window); the cache is then a ring of W slots
//   whatever max_tokens is, so its memory is fixed. Attention sinks are not
//   offered here.
// - softcap (Gemma-2) and scale pass through to the kernels.
// - Every sequence of a batch sits at the same position (one cache length);
//   left padding / per-row positions are not handled by this layer.
//
// ref: Vaswani et al., "Attention Is All You Need", 2017; Ainslie et al.,
//      "GQA", 2023; Su et al., "RoFormer", 2021; Dehghani et al., "Scaling
//      Vision Transformers to 22B Parameters", 2023 (QK-norm); Beltagy et al.,
//      "Longformer", 2020 (sliding window).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>

#include "tokmix/attention/decode.hpp"
#include "tokmix/attention/flash_attention.hpp"
#include "tokmix/attention/kv_cache.hpp"
#include "tokmix/attention/params.hpp"
#include "tokmix/attention/rope.hpp"
#include "tokmix/blocks/detail/layer_common.hpp"
#include "tokmix/blocks/linear.hpp"
#include "tokmix/blocks/mixer_layer.hpp"
#include "tokmix/blocks/norm.hpp"

TOKMIX_SIMD_AVX512_WARNINGS_OFF
namespace tokmix {

// Element type of the KV cache (compute stays fp32).
enum class kv_storage { fp32, fp16, bf16 };

struct attention_layer_config {
  index_t d_model = 0;
  index_t num_heads = 0;      // query heads
  index_t num_kv_heads = -1;  // -1: num_heads (MHA); must divide num_heads
  index_t head_dim = -1;      // -1: d_model / num_heads
  bool qkv_bias = false;
  bool o_bias = false;
  bool qk_norm = false;
  float qk_norm_eps = 1e-6f;
  bool use_rope = true;
  rope_params rope;            // rotary_dim (-1: head_dim), base (rope_theta), style
  index_t sliding_window = 0;  // 0: full causal attention
  float scale = std::numeric_limits<float>::quiet_NaN();  // NaN: 1/sqrt(head_dim)
  float softcap = 0.f;
  kv_storage cache = kv_storage::fp32;
  double init_std = 0.02;  // random(): HF initializer_range
  exec_policy policy;

  index_t kv_heads() const { return num_kv_heads < 0 ? num_heads : num_kv_heads; }
  index_t dim() const { return head_dim < 0 ? (num_heads > 0 ? d_model / num_heads : 0) : head_dim; }

  void validate() const {
    require(d_model >= 1, "d_model", ">= 1", d_model);
    require(num_heads >= 1, "num_heads", ">= 1", num_heads);
    require(head_dim >= 1 || (head_dim == -1 && d_model % num_heads == 0), "head_dim",
            ">= 1, or -1 with num_heads dividing d_model = " + std::to_string(d_model), head_dim);
    require(kv_heads() >= 1 && num_heads % kv_heads() == 0, "num_kv_heads",
            "a divisor of num_heads = " + std::to_string(num_heads) + " (or -1)", num_kv_heads);
    require(sliding_window >= 0, "sliding_window", ">= 0 (0 = none)", sliding_window);
    require(std::isnan(scale) || std::isfinite(scale), "scale", "finite or NaN (default)", scale);
    require(std::isfinite(softcap) && softcap >= 0.f, "softcap", "finite and >= 0", softcap);
    if (qk_norm) detail::norm_require_eps(qk_norm_eps);
    if (use_rope) {
      const index_t r = rope.rotary_dim < 0 ? dim() : rope.rotary_dim;
      require(r >= 2 && r % 2 == 0 && r <= dim(), "rope.rotary_dim",
              "an even number in [2, head_dim = " + std::to_string(dim()) + "] (or -1)", rope.rotary_dim);
      require(std::isfinite(rope.base) && rope.base > 0, "rope.base", "finite and > 0", rope.base);
    }
  }
};

struct attention_layer_weights {
  linear_weights q_proj, k_proj, v_proj, o_proj;
  rms_norm_weights q_norm, k_norm;  // [head_dim] each, used iff config.qk_norm

  static attention_layer_weights random(const attention_layer_config& c, std::uint64_t seed) {
    c.validate();
    const index_t D = c.dim(), qd = c.num_heads * D, kd = c.kv_heads() * D;
    attention_layer_weights w;
    w.q_proj = detail::layer_normal_linear(c.d_model, qd, c.qkv_bias, c.init_std, random_stream::derive(seed, 0));
    w.k_proj = detail::layer_normal_linear(c.d_model, kd, c.qkv_bias, c.init_std, random_stream::derive(seed, 1));
    w.v_proj = detail::layer_normal_linear(c.d_model, kd, c.qkv_bias, c.init_std, random_stream::derive(seed, 2));
    w.o_proj = detail::layer_normal_linear(qd, c.d_model, c.o_bias, c.init_std, random_stream::derive(seed, 3));
    if (c.qk_norm) {
      w.q_norm = rms_norm_weights::ones(D, c.qk_norm_eps);
      w.k_norm = rms_norm_weights::ones(D, c.qk_norm_eps);
    }
    return w;
  }

  // `prefix` + q_proj.weight, ... (HF names; prefix e.g. "model.layers.0.self_attn.").
  static attention_layer_weights load(const attention_layer_config& c, const named_tensors& t,
                                      const std::string& prefix = "") {
    c.validate();
    const index_t D = c.dim(), qd = c.num_heads * D, kd = c.kv_heads() * D;
    attention_layer_weights w;
    w.q_proj = linear_weights::load(t, prefix + "q_proj", c.d_model, qd, c.qkv_bias);
    w.k_proj = linear_weights::load(t, prefix + "k_proj", c.d_model, kd, c.qkv_bias);
    w.v_proj = linear_weights::load(t, prefix + "v_proj", c.d_model, kd, c.qkv_bias);
    w.o_proj = linear_weights::load(t, prefix + "o_proj", qd, c.d_model, c.o_bias);
    if (c.qk_norm) {
      w.q_norm = rms_norm_weights::load(t, prefix + "q_norm", D, c.qk_norm_eps);
      w.k_norm = rms_norm_weights::load(t, prefix + "k_norm", D, c.qk_norm_eps);
    }
    return w;
  }

  void save(named_tensors& t, const std::string& prefix = "") const {
    q_proj.save(t, prefix + "q_proj");
    k_proj.save(t, prefix + "k_proj");
    v_proj.save(t, prefix + "v_proj");
    o_proj.save(t, prefix + "o_proj");
    if (q_norm.dim() > 0) q_norm.save(t, prefix + "q_norm");
    if (k_norm.dim() > 0) k_norm.save(t, prefix + "k_norm");
  }

  void check(const attention_layer_config& c) const {
    const index_t D = c.dim(), qd = c.num_heads * D, kd = c.kv_heads() * D;
    detail::layer_require_linear("q_proj", q_proj, c.d_model, qd, c.qkv_bias);
    detail::layer_require_linear("k_proj", k_proj, c.d_model, kd, c.qkv_bias);
    detail::layer_require_linear("v_proj", v_proj, c.d_model, kd, c.qkv_bias);
    detail::layer_require_linear("o_proj", o_proj, qd, c.d_model, c.o_bias);
    if (c.qk_norm) {
      require(q_norm.dim() == D, "q_norm weight", "[" + std::to_string(D) + "]", "[" + std::to_string(q_norm.dim()) + "]");
      require(k_norm.dim() == D, "k_norm weight", "[" + std::to_string(D) + "]", "[" + std::to_string(k_norm.dim()) + "]");
      detail::norm_require_eps(q_norm.eps);
      detail::norm_require_eps(k_norm.eps);
    }
  }
};

// The KV cache of one attention layer (linear, or a ring for a sliding window).
class attention_layer_state : public mixer_layer_state {
 public:
  using cache_type = std::variant<kv_cache<float>, kv_cache<Eigen::half>, kv_cache<Eigen::bfloat16>>;

  attention_layer_state(kv_storage storage, const kv_cache_options& o) : cache_(make(storage, o)) {}

  const char* layer_name() const override { return "attention"; }
  index_t batch() const override { return std::visit([](const auto& c) { return c.batch(); }, cache_); }
  index_t position() const override { return std::visit([](const auto& c) { return c.length(); }, cache_); }
  std::size_t bytes() const override {
    return std::visit(
        [](const auto& c) { return cache_bytes(c.options(), sizeof(typename std::decay_t<decltype(c)>::value_type)); },
        cache_);
  }
  void reset() override {
    std::visit([](auto& c) { c.clear(); }, cache_);
  }

  index_t capacity() const { return std::visit([](const auto& c) { return c.capacity(); }, cache_); }
  kv_cache_mode mode() const { return std::visit([](const auto& c) { return c.mode(); }, cache_); }
  cache_type& cache() { return cache_; }
  const cache_type& cache() const { return cache_; }

  static std::size_t cache_bytes(const kv_cache_options& o, std::size_t elem) {
    const index_t dv = o.v_head_dim < 0 ? o.head_dim : o.v_head_dim;
    return static_cast<std::size_t>(o.batch * o.kv_heads * o.capacity * (o.head_dim + dv)) * elem;
  }

 private:
  static cache_type make(kv_storage s, const kv_cache_options& o) {
    switch (s) {
      case kv_storage::fp16: return cache_type(std::in_place_index<1>, o);
      case kv_storage::bf16: return cache_type(std::in_place_index<2>, o);
      default: return cache_type(std::in_place_index<0>, o);
    }
  }
  cache_type cache_;
};

class attention_layer : public mixer_layer {
 public:
  attention_layer(const attention_layer_config& config, attention_layer_weights weights)
      : cfg_(config), w_(std::move(weights)) {
    cfg_.validate();
    w_.check(cfg_);
  }

  const attention_layer_config& config() const { return cfg_; }
  const attention_layer_weights& weights() const { return w_; }

  const char* name() const override { return "attention"; }
  index_t d_model() const override { return cfg_.d_model; }
  const exec_policy& policy() const override { return cfg_.policy; }
  void save(named_tensors& t, const std::string& prefix) const override { w_.save(t, prefix); }

  std::unique_ptr<mixer_layer_state> make_state(index_t batch, index_t max_tokens) const override {
    return std::make_unique<attention_layer_state>(cfg_.cache, cache_options(batch, max_tokens));
  }
  std::size_t state_bytes(index_t batch, index_t max_tokens) const override {
    const std::size_t e = cfg_.cache == kv_storage::fp32 ? sizeof(float) : 2;
    return attention_layer_state::cache_bytes(cache_options(batch, max_tokens), e);
  }

  // x, y: [batch, seq, d_model]
  void prefill(tensor_view<const float, 3> x, tensor_view<float, 3> y, attention_layer_state& state) const {
    detail::layer_check_prefill(x, y, cfg_.d_model, state.batch());
    const index_t L = x.dim(1);
    require_room(state, L);
    if (L == 0) return;
    std::visit([&](auto& cache) { prefill_impl(x, y, cache); }, state.cache());
  }

  // x, y: [batch, d_model]
  void step(tensor_view<const float, 2> x, tensor_view<float, 2> y, attention_layer_state& state) const {
    detail::layer_check_step(x, y, cfg_.d_model, state.batch());
    require_room(state, 1);
    std::visit([&](auto& cache) { step_impl(x, y, cache); }, state.cache());
  }

  void prefill(tensor_view<const float, 3> x, tensor_view<float, 3> y, mixer_layer_state& state) const override {
    prefill(x, y, detail::mixer_state_cast<attention_layer_state>(state, name()));
  }
  void step(tensor_view<const float, 2> x, tensor_view<float, 2> y, mixer_layer_state& state) const override {
    step(x, y, detail::mixer_state_cast<attention_layer_state>(state, name()));
  }

 private:
  kv_cache_options cache_options(index_t batch, index_t max_tokens) const {
    require(batch >= 1, "batch", ">= 1", batch);
    kv_cache_options o;
    o.batch = batch;
    o.kv_heads = cfg_.kv_heads();
    o.head_dim = cfg_.dim();
    if (cfg_.sliding_window > 0) {
      o.mode = kv_cache_mode::ring;
      o.capacity = cfg_.sliding_window;
    } else {
      require(max_tokens >= 1, "max_tokens", ">= 1 (the KV capacity of full attention)", max_tokens);
      o.capacity = max_tokens;
    }
    return o;
  }

  void require_room(const attention_layer_state& s, index_t n) const {
    if (s.mode() == kv_cache_mode::linear && s.position() + n > s.capacity())
      throw argument_error("x", "at most " + std::to_string(s.capacity() - s.position()) +
                                    " new tokens (KV capacity " + std::to_string(s.capacity()) + ", " +
                                    std::to_string(s.position()) + " cached)",
                           std::to_string(n) + " tokens");
  }

  attention_params params() const {
    attention_params p;
    p.causal = true;
    p.scale = cfg_.scale;
    p.softcap = cfg_.softcap;
    if (cfg_.sliding_window > 0) p.window_left = cfg_.sliding_window - 1;
    p.policy = cfg_.policy;
    return p;
  }

  // Columns of the fused q|k|v scratch rows.
  index_t qkv_width() const { return (cfg_.num_heads + 2 * cfg_.kv_heads()) * cfg_.dim(); }

  // Projections, QK-norm and RoPE of n tokens per sequence at position pos.
  void project_qkv(const tensor_view<float, 4>& q, const tensor_view<float, 4>& k, index_t pos) const {
    if (cfg_.qk_norm) {
      qk_norm(q, w_.q_norm, cfg_.policy);
      qk_norm(k, w_.k_norm, cfg_.policy);
    }
    if (cfg_.use_rope) {
      rope_apply(q, pos, cfg_.rope);
      rope_apply(k, pos, cfg_.rope);
    }
  }

  template <class T>
  void prefill_impl(const tensor_view<const float, 3>& x, const tensor_view<float, 3>& y, kv_cache<T>& cache) const {
    const index_t B = x.dim(0), L = x.dim(1), D = cfg_.dim(), Hq = cfg_.num_heads, Hkv = cfg_.kv_heads();
    const index_t W = qkv_width(), rows = B * L, od = Hq * D;
    const index_t pos = cache.length();
    const bool ring = cache.mode() == kv_cache_mode::ring;
    // A ring holds the window in slot order: the keys the new queries need
    // (the last window - 1 cached positions, then the new ones) are gathered
    // in position order for flash_attention.
    const index_t held = ring ? std::min(pos, cfg_.sliding_window - 1) : 0;
    const index_t n_keys = held + L;
    const std::size_t kv_bytes = ring ? 2 * scratch_frame::bytes_for<T>(static_cast<std::size_t>(B * n_keys * Hkv * D)) : 0;
    scratch_frame frame(scratch_arena::outer(), detail::layer_frame_bytes({rows * W, rows * od}) + kv_bytes);
    float* qkv = frame.alloc<float>(static_cast<std::size_t>(rows * W));
    float* o = frame.alloc<float>(static_cast<std::size_t>(rows * od));
    detail::layer_project(w_.q_proj, x, qkv, W, 0, cfg_.policy);
    detail::layer_project(w_.k_proj, x, qkv, W, od, cfg_.policy);
    detail::layer_project(w_.v_proj, x, qkv, W, od + Hkv * D, cfg_.policy);
    const auto q = detail::layer_heads(qkv, B, L, W, 0, Hq, D);
    const auto k = detail::layer_heads(qkv, B, L, W, od, Hkv, D);
    const auto v = detail::layer_heads(qkv, B, L, W, od + Hkv * D, Hkv, D);
    project_qkv(q, k, pos);
    const auto ov = detail::layer_heads(o, B, L, od, 0, Hq, D);
    const attention_params p = params();
    if (!ring) {
      cache.append(k, v);
      const auto ks = cache.keys(), vs = cache.values();
      const tensor_view<const T, 4> kc(ks.data(), {B, pos + L, Hkv, D}, ks.strides());
      const tensor_view<const T, 4> vc(vs.data(), {B, pos + L, Hkv, D}, vs.strides());
      flash_attention(tensor_view<const float, 4>(q), kc, vc, ov, p);
    } else {
      T* kb = frame.alloc<T>(static_cast<std::size_t>(B * n_keys * Hkv * D));
      T* vb = frame.alloc<T>(static_cast<std::size_t>(B * n_keys * Hkv * D));
      const index_t ld = Hkv * D;
      for (index_t b = 0; b < B; ++b)
        for (index_t h = 0; h < Hkv; ++h) {
          for (index_t i = 0; i < held; ++i) {
            const index_t slot = cache.slot_of(pos - held + i);
            const T* ksrc = cache.k_head(b, h) + slot * D;
            const T* vsrc = cache.v_head(b, h) + slot * D;
            std::copy(ksrc, ksrc + D, kb + (b * n_keys + i) * ld + h * D);
            std::copy(vsrc, vsrc + D, vb + (b * n_keys + i) * ld + h * D);
          }
          for (index_t t = 0; t < L; ++t) {
            detail::convert_row(k.ptr(b, t, h), kb + (b * n_keys + held + t) * ld + h * D, D);
            detail::convert_row(v.ptr(b, t, h), vb + (b * n_keys + held + t) * ld + h * D, D);
          }
        }
      cache.append(k, v);  // after the gather: the append may overwrite the slots read above
      const tensor_view<const T, 4> kc(kb, {B, n_keys, Hkv, D});
      const tensor_view<const T, 4> vc(vb, {B, n_keys, Hkv, D});
      flash_attention(tensor_view<const float, 4>(q), kc, vc, ov, p);
    }
    detail::layer_project_out(w_.o_proj, o, od, 0, y, cfg_.policy);
  }

  template <class T>
  void step_impl(const tensor_view<const float, 2>& x, const tensor_view<float, 2>& y, kv_cache<T>& cache) const {
    const index_t B = x.dim(0), D = cfg_.dim(), Hq = cfg_.num_heads, Hkv = cfg_.kv_heads();
    const index_t W = qkv_width(), od = Hq * D;
    scratch_frame frame(scratch_arena::outer(), detail::layer_frame_bytes({B * W, B * od}));
    float* qkv = frame.alloc<float>(static_cast<std::size_t>(B * W));
    float* o = frame.alloc<float>(static_cast<std::size_t>(B * od));
    detail::layer_project_step(w_.q_proj, x, qkv, W, 0, cfg_.policy);
    detail::layer_project_step(w_.k_proj, x, qkv, W, od, cfg_.policy);
    detail::layer_project_step(w_.v_proj, x, qkv, W, od + Hkv * D, cfg_.policy);
    const auto q = detail::layer_heads(qkv, B, 1, W, 0, Hq, D);
    const auto k = detail::layer_heads(qkv, B, 1, W, od, Hkv, D);
    const auto v = detail::layer_heads(qkv, B, 1, W, od + Hkv * D, Hkv, D);
    project_qkv(q, k, cache.length());
    cache.append(k, v);
    attention_decode(tensor_view<const float, 4>(q), cache, detail::layer_heads(o, B, 1, od, 0, Hq, D), params());
    linear_forward(w_.o_proj, detail::layer_ccols(o, B, od, 0, od), y, cfg_.policy);
  }

  attention_layer_config cfg_;
  attention_layer_weights w_;
};

}  // namespace tokmix
TOKMIX_SIMD_AVX512_WARNINGS_ON
