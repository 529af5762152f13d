// Tests for include/tokmix/blocks/retention_layer.hpp against a float64
// MultiScaleRetention written out here token by token: projections, optional
// SiLU short convs, RoPE (rotate-half / interleaved) at absolute positions,
// xPos as flash-attn applies it (q * zeta^(n/s), k * zeta^(-n/s): an
// independent check of the layer's decay folding), k / v heads repeated to the
// q heads, S_t = gamma_h S + k v^T with gamma_h = 1 - 2^(-5-h), o = S^T q /
// sqrt(dk), per-head RMSNorm with or without the swish gate, output
// projection. Then the shared layer checks.
#include "tokmix/blocks/retention_layer.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

#include <catch2/catch.hpp>

#include "blocks/layer_checks.hpp"
#include "blocks/reference_fla_layers.hpp"
#include "support/compare.hpp"

using namespace tokmix;

namespace tokmix_test {
namespace retention_layer_ref {

using namespace fla_layer_ref;

// Rotates (and, with xpos, scales by zeta^(sign n / s)) one head in place.
inline void rope_head(double* v, index_t D, index_t n, const retention_layer_config& c, double sign) {
  const index_t half = D / 2;
  for (index_t i = 0; i < half; ++i) {
    const double a = n * std::pow(c.rope_base, -2.0 * i / D), cs = std::cos(a), sn = std::sin(a);
    const bool rh = c.rope == rope_style::rotate_half;
    const index_t i0 = rh ? i : 2 * i, i1 = rh ? i + half : 2 * i + 1;
    const double x0 = v[i0], x1 = v[i1];
    double f = 1.0;
    if (c.xpos_scale_base > 0) f = std::pow((2.0 * i + 0.4 * D) / (1.4 * D), sign * n / c.xpos_scale_base);
    v[i0] = (x0 * cs - x1 * sn) * f;
    v[i1] = (x1 * cs + x0 * sn) * f;
  }
}

inline std::vector<double> forward(const retention_layer_config& c, const retention_layer_weights& w,
                                   const std::vector<float>& x, index_t B, index_t L) {
  const index_t d = c.d_model, H = c.num_heads, Hkv = c.kv_heads(), rep = H / Hkv;
  const index_t dk = c.head_k_dim(), dv = c.head_v_dim();
  std::vector<double> y(static_cast<std::size_t>(B * L * d));
  for (index_t b = 0; b < B; ++b) {
    const auto xs = rows_of(x, b, L, d);
    auto q = project_all(w.q_proj, xs), k = project_all(w.k_proj, xs), v = project_all(w.v_proj, xs);
    if (c.use_short_conv) {
      q = conv_silu(w.convs.q, q, true);
      k = conv_silu(w.convs.k, k, true);
      v = conv_silu(w.convs.v, v, true);
    }
    for (index_t t = 0; t < L; ++t) {
      for (index_t h = 0; h < H; ++h) rope_head(q[t].data() + h * dk, dk, t, c, 1.0);
      for (index_t h = 0; h < Hkv; ++h) rope_head(k[t].data() + h * dk, dk, t, c, -1.0);
    }
    std::vector<double> S(static_cast<std::size_t>(H * dk * dv), 0.0);
    const double scale = 1.0 / std::sqrt(double(dk));
    for (index_t t = 0; t < L; ++t) {
      std::vector<double> o(static_cast<std::size_t>(H * dv), 0.0);
      for (index_t h = 0; h < H; ++h) {
        const index_t g = h / rep;
        const double gamma = 1.0 - std::pow(2.0, -5.0 - h);
        double* Sh = S.data() + h * dk * dv;
        for (index_t i = 0; i < dk; ++i)
          for (index_t j = 0; j < dv; ++j) Sh[i * dv + j] = gamma * Sh[i * dv + j] + k[t][g * dk + i] * v[t][g * dv + j];
        for (index_t j = 0; j < dv; ++j) {
          double s = 0;
          for (index_t i = 0; i < dk; ++i) s += Sh[i * dv + j] * q[t][h * dk + i] * scale;
          o[h * dv + j] = s;
        }
      }
      std::vector<double> gate;
      if (c.use_output_gate) gate = linear(w.g_proj, xs[t]);
      head_norm(o, H, dv, w.norm, c.use_output_gate ? &gate : nullptr);
      const auto yt = linear(w.o_proj, o);
      std::copy(yt.begin(), yt.end(), y.begin() + (b * L + t) * d);
    }
  }
  return y;
}

}  // namespace retention_layer_ref
}  // namespace tokmix_test

namespace {

retention_layer_weights test_weights(const retention_layer_config& c, std::uint64_t seed) {
  auto w = retention_layer_weights::random(c, seed);
  for (auto* p : {&w.q_proj, &w.k_proj, &w.v_proj, &w.g_proj, &w.o_proj}) p->weight *= 20.f;
  if (c.use_short_conv)
    for (auto* cv : {&w.convs.q, &w.convs.k, &w.convs.v}) {
      cv->weight *= 20.f;
      for (index_t i = 0; i < cv->bias.size(); ++i) cv->bias[i] = 0.2f * std::cos(0.7f * i);
    }
  w.norm = rms_norm_weights::random(c.head_v_dim(), seed + 3, c.norm_eps);
  return w;
}

tokmix_test::layer_checks::layer_case make_case(const retention_layer_config& base, std::uint64_t seed) {
  const auto w = test_weights(base, seed);
  tokmix_test::layer_checks::layer_case lc;
  lc.make = [base, w](const exec_policy& p) {
    auto c = base;
    c.policy = p;
    return std::make_unique<retention_layer>(c, w);
  };
  lc.load = [base](const named_tensors& t, const std::string& prefix) {
    return std::make_unique<retention_layer>(base, retention_layer_weights::load(base, t, prefix));
  };
  lc.reference = [base, w](const std::vector<float>& x, index_t B, index_t L) {
    return tokmix_test::retention_layer_ref::forward(base, w, x, B, L);
  };
  lc.seq = 13;
  lc.split = 6;
  return lc;
}

}  // namespace

TEST_CASE("retention_layer: fla defaults, GQA, short convs, no gate, interleaved RoPE, xPos", "[blocks][retention_layer]") {
  struct variant {
    index_t d, h, hkv;
    double ek, ev;
    bool conv, conv_bias, gate, fuse;
    rope_style style;
    double xpos;
    index_t chunk;
  };
  const variant vs[] = {
      {16, 8, -1, 1.0, 2.0, false, false, true, true, rope_style::rotate_half, 0, 64},  // fla defaults
      {12, 3, 1, 0.5, 1.0, true, true, true, true, rope_style::rotate_half, 0, 4},      // MQA, convs
      {10, 1, 1, 1.0, 0.7, false, false, false, true, rope_style::interleaved, 0, 5},   // no gate (g_norm)
      {12, 2, 1, 1.0, 1.0, false, false, true, false, rope_style::rotate_half, 8, 4},   // xPos, unfused name
      {12, 2, 2, 1.0, 0.5, true, false, true, true, rope_style::interleaved, 5, 64},    // xPos interleaved, convs
  };
  unsigned n = 0;
  for (const auto& v : vs) {
    CAPTURE(n);
    retention_layer_config c;
    c.d_model = v.d;
    c.num_heads = v.h;
    c.num_kv_heads = v.hkv;
    c.expand_k = v.ek;
    c.expand_v = v.ev;
    c.use_short_conv = v.conv;
    c.conv_bias = v.conv_bias;
    c.use_output_gate = v.gate;
    c.fuse_norm = v.fuse;
    c.rope = v.style;
    c.xpos_scale_base = v.xpos;
    c.chunk_size = v.chunk;
    tokmix_test::layer_checks::run_layer_checks(make_case(c, 20 + n), 30 + n);
    ++n;
  }
}

TEST_CASE("retention_layer: xPos decode far from the origin, names, state size, config checks", "[blocks][retention_layer]") {
  // xPos folded into the decay stays finite where scaling k by zeta^(-n/s)
  // would overflow fp32 (n / s = 3000: zeta_0^-3000 ~ 1e1600).
  retention_layer_config c;
  c.d_model = 8;
  c.num_heads = 2;
  c.expand_v = 1.0;
  c.xpos_scale_base = 2;
  const retention_layer layer(c, retention_layer_weights::random(c, 3));
  auto s = layer.make_state(1, 0);
  std::vector<float> x(6000 * 8), y(6000 * 8);
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = std::sin(0.37f * i);
  layer.prefill(tensor_view<const float, 3>(x.data(), {1, 6000, 8}), tensor_view<float, 3>(y.data(), {1, 6000, 8}), *s);
  layer.step(tensor_view<const float, 2>(x.data(), {1, 8}), tensor_view<float, 2>(y.data(), {1, 8}), *s);
  CHECK(std::all_of(y.begin(), y.end(), [](float v) { return std::isfinite(v); }));
  CHECK(s->position() == 6001);

  retention_layer_config d;
  d.d_model = 16;
  d.num_heads = 4;
  d.num_kv_heads = 2;
  d.use_short_conv = true;
  const auto w = retention_layer_weights::random(d, 1);
  named_tensors t;
  w.save(d, t, "attn.");
  CHECK(t.names() == std::vector<std::string>{"attn.g_norm_swish_gate.weight", "attn.g_proj.weight",
                                              "attn.k_conv1d.weight", "attn.k_proj.weight", "attn.o_proj.weight",
                                              "attn.q_conv1d.weight", "attn.q_proj.weight", "attn.v_conv1d.weight",
                                              "attn.v_proj.weight"});
  CHECK(t.at("attn.k_proj.weight").shape == std::vector<index_t>{8, 16});
  CHECK(t.at("attn.v_proj.weight").shape == std::vector<index_t>{16, 16});
  const retention_layer l2(d, w);
  // S [B, 4, 4, 8] + conv histories of 16 + 8 + 16 channels.
  CHECK(l2.state_bytes(3, 0) == std::size_t(3 * 4 * 4 * 8 * 4 + 3 * 3 * 40 * 4));

  // A state of the other kernel (xPos vs plain) is refused.
  auto sx = layer.make_state(1, 0);
  auto c2 = c;
  c2.xpos_scale_base = 0;
  const retention_layer plain(c2, retention_layer_weights::random(c2, 3));
  std::vector<float> yo(8, -2.f);
  tokmix_test::layer_checks::require_argument_error(
      [&] { plain.step(tensor_view<const float, 2>(x.data(), {1, 8}), tensor_view<float, 2>(yo.data(), {1, 8}), *sx); });
  for (float v : yo) CHECK(v == -2.f);

  auto bad = d;
  bad.expand_k = 0.55;  // 8.8 channels
  CHECK_THROWS_AS(retention_layer_weights::random(bad, 1), argument_error);
  bad = d;
  bad.num_heads = 16;  // head_k_dim 1: no rotary pair
  bad.num_kv_heads = -1;
  CHECK_THROWS_AS(retention_layer_weights::random(bad, 1), argument_error);
  bad = d;
  bad.xpos_scale_base = -1;
  CHECK_THROWS_AS(retention_layer_weights::random(bad, 1), argument_error);
}
