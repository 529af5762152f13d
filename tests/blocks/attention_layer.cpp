// Tests for include/tokmix/blocks/attention_layer.hpp against a float64
// attention layer written out here: projections (+ biases), per-head QK
// RMSNorm, rotate-half / interleaved RoPE at absolute positions, causal
// softmax with GQA, sliding window and softcap, output projection. Then the
// shared layer checks (prefill == steps, chained prefills, save/load, bad
// input, threads, no allocation in steps), fp16 / bf16 caches, the ring cache
// of a sliding window over sequences longer than the window, and capacity.
#include "tokmix/blocks/attention_layer.hpp"

#include <cmath>
#include <vector>

#include <catch2/catch.hpp>

#include "blocks/layer_checks.hpp"
#include "support/compare.hpp"

using namespace tokmix;

namespace tokmix_test {
namespace attention_layer_ref {

// y = x W^T + b for one row, in double.
inline std::vector<double> linear(const linear_weights& w, const std::vector<double>& x) {
  std::vector<double> y(static_cast<std::size_t>(w.out_features()));
  for (index_t o = 0; o < w.out_features(); ++o) {
    double s = w.has_bias() ? double(w.bias[o]) : 0.0;
    for (index_t i = 0; i < w.in_features(); ++i) s += double(w.weight(o, i)) * x[static_cast<std::size_t>(i)];
    y[static_cast<std::size_t>(o)] = s;
  }
  return y;
}

inline void rms_head(double* v, index_t D, const rms_norm_weights& g) {
  double ss = 0;
  for (index_t i = 0; i < D; ++i) ss += v[i] * v[i];
  const double r = 1.0 / std::sqrt(ss / D + g.eps);
  for (index_t i = 0; i < D; ++i) v[i] = v[i] * r * g.weight[i];
}

inline void rope_head(double* v, index_t D, index_t pos, const rope_params& p) {
  const index_t r = p.rotary_dim < 0 ? D : p.rotary_dim, half = r / 2;
  for (index_t i = 0; i < half; ++i) {
    const double a = pos * std::pow(p.base, -2.0 * i / r), c = std::cos(a), s = std::sin(a);
    const index_t i0 = p.style == rope_style::rotate_half ? i : 2 * i;
    const index_t i1 = p.style == rope_style::rotate_half ? i + half : 2 * i + 1;
    const double x0 = v[i0], x1 = v[i1];
    v[i0] = x0 * c - x1 * s;
    v[i1] = x1 * c + x0 * s;
  }
}

inline std::vector<double> forward(const attention_layer_config& c, const attention_layer_weights& w,
                                   const std::vector<float>& x, index_t B, index_t L) {
  const index_t d = c.d_model, D = c.dim(), Hq = c.num_heads, Hkv = c.kv_heads();
  const double scale = std::isnan(c.scale) ? 1.0 / std::sqrt(double(D)) : double(c.scale);
  std::vector<double> y(static_cast<std::size_t>(B * L * d));
  for (index_t b = 0; b < B; ++b) {
    std::vector<std::vector<double>> q(L), k(L), v(L);
    for (index_t t = 0; t < L; ++t) {
      std::vector<double> xt(x.begin() + (b * L + t) * d, x.begin() + (b * L + t + 1) * d);
      q[t] = linear(w.q_proj, xt);
      k[t] = linear(w.k_proj, xt);
      v[t] = linear(w.v_proj, xt);
      for (index_t h = 0; h < Hq; ++h) {
        if (c.qk_norm) rms_head(q[t].data() + h * D, D, w.q_norm);
        if (c.use_rope) rope_head(q[t].data() + h * D, D, t, c.rope);
      }
      for (index_t h = 0; h < Hkv; ++h) {
        if (c.qk_norm) rms_head(k[t].data() + h * D, D, w.k_norm);
        if (c.use_rope) rope_head(k[t].data() + h * D, D, t, c.rope);
      }
    }
    for (index_t t = 0; t < L; ++t) {
      std::vector<double> o(static_cast<std::size_t>(Hq * D), 0.0);
      for (index_t h = 0; h < Hq; ++h) {
        const index_t g = h / (Hq / Hkv);
        const index_t j0 = c.sliding_window > 0 ? std::max<index_t>(0, t - c.sliding_window + 1) : 0;
        std::vector<double> s;
        double m = -1e300;
        for (index_t j = j0; j <= t; ++j) {
          double dot = 0;
          for (index_t e = 0; e < D; ++e) dot += q[t][h * D + e] * k[j][g * D + e];
          dot *= scale;
          if (c.softcap > 0) dot = c.softcap * std::tanh(dot / c.softcap);
          s.push_back(dot);
          m = std::max(m, dot);
        }
        double z = 0;
        for (double& e : s) z += (e = std::exp(e - m));
        for (index_t j = j0; j <= t; ++j)
          for (index_t e = 0; e < D; ++e) o[h * D + e] += s[j - j0] / z * v[j][g * D + e];
      }
      const auto yt = linear(w.o_proj, o);
      std::copy(yt.begin(), yt.end(), y.begin() + (b * L + t) * d);
    }
  }
  return y;
}

}  // namespace attention_layer_ref
}  // namespace tokmix_test

namespace {

// Weights from random() with the parts random() leaves at zero / one given values too.
attention_layer_weights test_weights(const attention_layer_config& c, std::uint64_t seed) {
  auto w = attention_layer_weights::random(c, seed);
  // N(0, 0.02) projections make near-uniform attention; larger ones exercise the softmax.
  for (auto* p : {&w.q_proj, &w.k_proj, &w.v_proj, &w.o_proj}) {
    p->weight *= 15.f;
    if (p->has_bias())
      for (index_t i = 0; i < p->bias.size(); ++i) p->bias[i] = 0.1f * std::sin(1.7f * i + seed);
  }
  if (c.qk_norm) {
    w.q_norm = rms_norm_weights::random(c.dim(), seed + 5, c.qk_norm_eps);
    w.k_norm = rms_norm_weights::random(c.dim(), seed + 6, c.qk_norm_eps);
  }
  return w;
}

tokmix_test::layer_checks::layer_case make_case(const attention_layer_config& base, std::uint64_t seed) {
  const auto w = test_weights(base, seed);
  tokmix_test::layer_checks::layer_case lc;
  lc.make = [base, w](const exec_policy& p) {
    auto c = base;
    c.policy = p;
    return std::make_unique<attention_layer>(c, w);
  };
  lc.load = [base](const named_tensors& t, const std::string& prefix) {
    return std::make_unique<attention_layer>(base, attention_layer_weights::load(base, t, prefix));
  };
  lc.reference = [base, w](const std::vector<float>& x, index_t B, index_t L) {
    return tokmix_test::attention_layer_ref::forward(base, w, x, B, L);
  };
  return lc;
}

}  // namespace

TEST_CASE("attention_layer: MHA / GQA / MQA, QK-norm, RoPE styles, biases, window, softcap", "[blocks][attention_layer]") {
  struct variant {
    index_t d, hq, hkv, hd;
    bool bias, qkn, rope;
    rope_style style;
    index_t rotary, window;
    float softcap;
  };
  const variant vs[] = {
      {12, 3, 3, -1, false, false, true, rope_style::rotate_half, -1, 0, 0.f},   // MHA, Llama
      {13, 6, 2, 6, true, true, true, rope_style::rotate_half, -1, 0, 0.f},     // GQA, Qwen2 bias, Qwen3 norm
      {9, 4, 1, 5, false, false, true, rope_style::interleaved, 2, 0, 0.f},     // MQA, odd head_dim, partial rotary
      {11, 2, 1, 8, true, true, true, rope_style::rotate_half, 4, 4, 0.f},      // sliding window (ring cache)
      {10, 2, 2, 5, false, false, false, rope_style::rotate_half, -1, 3, 2.5f},  // no rope, window 3, softcap
  };
  unsigned n = 0;
  for (const auto& v : vs) {
    CAPTURE(n);
    attention_layer_config c;
    c.d_model = v.d;
    c.num_heads = v.hq;
    c.num_kv_heads = v.hkv;
    c.head_dim = v.hd;
    c.qkv_bias = v.bias;
    c.o_bias = v.bias;
    c.qk_norm = v.qkn;
    c.use_rope = v.rope;
    c.rope.style = v.style;
    c.rope.rotary_dim = v.rotary;
    c.sliding_window = v.window;
    c.softcap = v.softcap;
    auto lc = make_case(c, 100 + n);
    lc.seq = 11;
    lc.split = 5;
    lc.max_tokens = 13;
    tokmix_test::layer_checks::run_layer_checks(lc, 7 + n);
    ++n;
  }
}

TEST_CASE("attention_layer: fp16 and bf16 KV caches", "[blocks][attention_layer]") {
  for (kv_storage s : {kv_storage::fp16, kv_storage::bf16})
    for (index_t window : {0, 5}) {
      CAPTURE(int(s), window);
      attention_layer_config c;
      c.d_model = 12;
      c.num_heads = 3;
      c.num_kv_heads = 1;
      c.sliding_window = window;
      c.cache = s;
      auto lc = make_case(c, 31);
      lc.seq = 10;
      lc.split = 3;
      lc.max_tokens = 10;
      // Keys and values round to 16 bits in the cache.
      lc.atol = s == kv_storage::fp16 ? 3e-3 : 2.5e-2;
      lc.rtol = s == kv_storage::fp16 ? 3e-3 : 2.5e-2;
      tokmix_test::layer_checks::run_layer_checks(lc, 3);
      const attention_layer layer(c, attention_layer_weights::random(c, 1));
      CHECK(layer.state_bytes(2, 10) == std::size_t(2 * 1 * (window ? 5 : 10) * 2 * 4 * 2));  // B Hkv C (K+V) D bytes
    }
}

TEST_CASE("attention_layer: sliding window over many windows, chained prefills longer than the ring", "[blocks][attention_layer]") {
  attention_layer_config c;
  c.d_model = 8;
  c.num_heads = 2;
  c.num_kv_heads = 1;
  c.sliding_window = 4;
  const auto w = test_weights(c, 9);
  const attention_layer layer(c, w);
  const index_t B = 1, L = 23, d = 8;
  const auto x = tokmix_test::random_floats(static_cast<std::size_t>(B * L * d), 5);
  const auto want = tokmix_test::attention_layer_ref::forward(c, w, x, B, L);
  const auto owned = layer.make_state(B, 1);
  auto& s = dynamic_cast<attention_layer_state&>(*owned);
  CHECK(s.capacity() == 4);
  CHECK(s.mode() == kv_cache_mode::ring);
  std::vector<float> y(x.size(), 0.f);
  // Prefills of 1, 7 (longer than the ring), 2, 9 tokens, then steps.
  index_t t = 0;
  for (index_t n : {1, 7, 2, 9}) {
    layer.prefill(tensor_view<const float, 3>(x.data() + t * d, {B, n, d}, {L * d, d, 1}),
                  tensor_view<float, 3>(y.data() + t * d, {B, n, d}, {L * d, d, 1}), s);
    t += n;
  }
  for (; t < L; ++t)
    layer.step(tensor_view<const float, 2>(x.data() + t * d, {B, d}), tensor_view<float, 2>(y.data() + t * d, {B, d}), s);
  TOKMIX_REQUIRE_CLOSE(y.data(), want.data(), y.size(), 2e-5, 2e-4);
  CHECK(s.position() == L);
}

TEST_CASE("attention_layer: KV capacity, config and weight checks", "[blocks][attention_layer]") {
  attention_layer_config c;
  c.d_model = 8;
  c.num_heads = 2;
  const attention_layer layer(c, attention_layer_weights::random(c, 1));
  auto s = layer.make_state(1, 4);
  std::vector<float> x(5 * 8, 0.1f), y(5 * 8, -3.f);
  layer.prefill(tensor_view<const float, 3>(x.data(), {1, 3, 8}), tensor_view<float, 3>(y.data(), {1, 3, 8}), *s);
  std::fill(y.begin(), y.end(), -3.f);
  tokmix_test::layer_checks::require_argument_error(
      [&] { layer.prefill(tensor_view<const float, 3>(x.data(), {1, 2, 8}), tensor_view<float, 3>(y.data(), {1, 2, 8}), *s); },
      "KV capacity");
  layer.step(tensor_view<const float, 2>(x.data(), {1, 8}), tensor_view<float, 2>(y.data(), {1, 8}), *s);
  CHECK(s->position() == 4);
  std::fill(y.begin(), y.end(), -3.f);
  tokmix_test::layer_checks::require_argument_error(
      [&] { layer.step(tensor_view<const float, 2>(x.data(), {1, 8}), tensor_view<float, 2>(y.data(), {1, 8}), *s); });
  for (float v : y) CHECK(v == -3.f);
  CHECK(s->position() == 4);
  CHECK_THROWS_AS(layer.make_state(1, 0), argument_error);
  CHECK_THROWS_AS(layer.make_state(0, 4), argument_error);

  auto bad = c;
  bad.num_kv_heads = 3;
  CHECK_THROWS_AS(attention_layer_weights::random(bad, 1), argument_error);
  bad = c;
  bad.d_model = 9;  // head_dim -1 needs num_heads | d_model
  CHECK_THROWS_AS(attention_layer_weights::random(bad, 1), argument_error);
  bad = c;
  bad.rope.rotary_dim = 3;
  CHECK_THROWS_AS(attention_layer_weights::random(bad, 1), argument_error);
  auto w = attention_layer_weights::random(c, 1);
  w.k_proj = linear_weights::random(8, 6, false, 1);
  try {
    attention_layer l(c, w);
    FAIL("bad k_proj accepted");
  } catch (const argument_error& e) {
    CHECK(e.argument() == "k_proj.weight");
  }
  auto cq = c;
  cq.qk_norm = true;
  auto wq = attention_layer_weights::random(cq, 1);
  CHECK(wq.q_norm.dim() == 4);
  wq.k_norm = rms_norm_weights::ones(3);
  CHECK_THROWS_AS(attention_layer(cq, wq), argument_error);

  // random() is HF's init: N(0, 0.02), zero biases.
  auto cb = c;
  cb.qkv_bias = true;
  const auto wr = attention_layer_weights::random(cb, 4);
  double ss = 0;
  for (index_t i = 0; i < wr.q_proj.weight.size(); ++i) ss += double(wr.q_proj.weight.data()[i]) * wr.q_proj.weight.data()[i];
  CHECK(std::sqrt(ss / wr.q_proj.weight.size()) == Approx(0.02).epsilon(0.3));
  CHECK(wr.q_proj.bias.isZero());
  CHECK(wr.o_proj.bias.size() == 0);
  named_tensors t;
  wr.save(t, "");
  CHECK(t.names() == std::vector<std::string>{"k_proj.bias", "k_proj.weight", "o_proj.weight", "q_proj.bias",
                                              "q_proj.weight", "v_proj.bias", "v_proj.weight"});
}
