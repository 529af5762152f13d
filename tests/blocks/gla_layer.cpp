// Tests for include/tokmix/blocks/gla_layer.hpp against a float64 GLA layer
// written out here token by token: projections, optional SiLU short convs,
// the low-rank logsigmoid gate (normaliser, clamp), k / v / gate heads
// repeated to the q heads, the recurrence S_t = diag(exp(g_t)) S_{t-1} + k v^T,
// o = S^T q / sqrt(dk), per-head RMSNorm with or without the swish gate, and
// the output projection. Then the shared layer checks.
#include "tokmix/blocks/gla_layer.hpp"

#include <cmath>
#include <vector>

#include <catch2/catch.hpp>

#include "blocks/layer_checks.hpp"
#include "blocks/reference_fla_layers.hpp"
#include "support/compare.hpp"

using namespace tokmix;

namespace tokmix_test {
namespace gla_layer_ref {

using namespace fla_layer_ref;

inline std::vector<double> forward(const gla_layer_config& c, const gla_layer_weights& w, const std::vector<float>& x,
                                   index_t B, index_t L) {
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
    auto gk = project_all(w.gk_proj1, project_all(w.gk_proj0, xs));
    for (auto& row : gk)
      for (double& e : row) {
        const double ls = std::min(e, 0.0) - std::log1p(std::exp(-std::abs(e)));
        e = std::max(ls / c.gate_logit_normalizer, double(c.clamp_min));
      }
    std::vector<double> S(static_cast<std::size_t>(H * dk * dv), 0.0);
    const double scale = 1.0 / std::sqrt(double(dk));
    for (index_t t = 0; t < L; ++t) {
      std::vector<double> o(static_cast<std::size_t>(H * dv), 0.0);
      for (index_t h = 0; h < H; ++h) {
        const index_t g = h / rep;  // the kv head this q head reads
        double* Sh = S.data() + h * dk * dv;
        for (index_t i = 0; i < dk; ++i)
          for (index_t j = 0; j < dv; ++j)
            Sh[i * dv + j] = std::exp(gk[t][g * dk + i]) * Sh[i * dv + j] + k[t][g * dk + i] * v[t][g * dv + j];
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

}  // namespace gla_layer_ref
}  // namespace tokmix_test

namespace {

gla_layer_weights test_weights(const gla_layer_config& c, std::uint64_t seed) {
  auto w = gla_layer_weights::random(c, seed);
  // fla's N(0, 0.02) makes every signal tiny; scale up so the gate, the
  // norm and the recurrence all matter.
  for (auto* p : {&w.q_proj, &w.k_proj, &w.v_proj, &w.g_proj, &w.o_proj}) p->weight *= 20.f;
  w.gk_proj0.weight *= 40.f;
  w.gk_proj1.weight *= 40.f;
  for (index_t i = 0; i < w.gk_proj1.bias.size(); ++i) w.gk_proj1.bias[i] = 0.5f * std::sin(1.3f * i + seed);
  if (c.use_short_conv)
    for (auto* cv : {&w.convs.q, &w.convs.k, &w.convs.v}) {
      cv->weight *= 20.f;
      for (index_t i = 0; i < cv->bias.size(); ++i) cv->bias[i] = 0.2f * std::cos(0.7f * i);
    }
  w.norm = rms_norm_weights::random(c.head_v_dim(), seed + 3, c.norm_eps);
  return w;
}

tokmix_test::layer_checks::layer_case make_case(const gla_layer_config& base, std::uint64_t seed) {
  const auto w = test_weights(base, seed);
  tokmix_test::layer_checks::layer_case lc;
  lc.make = [base, w](const exec_policy& p) {
    auto c = base;
    c.policy = p;
    return std::make_unique<gla_layer>(c, w);
  };
  lc.load = [base](const named_tensors& t, const std::string& prefix) {
    return std::make_unique<gla_layer>(base, gla_layer_weights::load(base, t, prefix));
  };
  lc.reference = [base, w](const std::vector<float>& x, index_t B, index_t L) {
    return tokmix_test::gla_layer_ref::forward(base, w, x, B, L);
  };
  return lc;
}

}  // namespace

TEST_CASE("gla_layer: fla defaults, GQA heads, short convs, no gate, clamp, small chunks", "[blocks][gla_layer]") {
  struct variant {
    index_t d, h, hkv;
    double ek, ev;
    bool conv, conv_bias, gate, fuse;
    float clamp;
    index_t rank, chunk;
  };
  const float none = -std::numeric_limits<float>::infinity();
  const variant vs[] = {
      {16, 4, -1, 0.5, 1.0, false, false, true, true, none, 16, 64},  // fla defaults
      {15, 3, 1, 0.6, 1.0, true, true, true, true, none, 5, 4},       // MQA, convs with bias, chunk 4
      {14, 2, 2, 1.0, 2.0, true, false, false, true, none, 3, 3},     // no output gate (g_norm)
      {12, 4, 2, 1.0, 0.67, false, false, true, false, -0.05f, 7, 5},  // GQA, clamp_min, unfused name
  };
  unsigned n = 0;
  for (const auto& v : vs) {
    CAPTURE(n);
    gla_layer_config c;
    c.d_model = v.d;
    c.num_heads = v.h;
    c.num_kv_heads = v.hkv;
    c.expand_k = v.ek;
    c.expand_v = v.ev;
    c.use_short_conv = v.conv;
    c.conv_bias = v.conv_bias;
    c.use_output_gate = v.gate;
    c.fuse_norm = v.fuse;
    c.clamp_min = v.clamp;
    c.gate_low_rank_dim = v.rank;
    c.chunk_size = v.chunk;
    auto lc = make_case(c, 40 + n);
    lc.seq = 13;
    lc.split = 6;
    tokmix_test::layer_checks::run_layer_checks(lc, 70 + n);
    ++n;
  }
}

TEST_CASE("gla_layer: names, init, state size, config checks", "[blocks][gla_layer]") {
  gla_layer_config c;
  c.d_model = 16;
  c.use_short_conv = true;
  const auto w = gla_layer_weights::random(c, 1);
  named_tensors t;
  w.save(c, t, "");
  CHECK(t.names() == std::vector<std::string>{"g_norm_swish_gate.weight", "g_proj.weight", "gk_proj.0.weight",
                                              "gk_proj.1.bias", "gk_proj.1.weight", "k_conv1d.weight", "k_proj.weight",
                                              "o_proj.weight", "q_conv1d.weight", "q_proj.weight", "v_conv1d.weight",
                                              "v_proj.weight"});
  CHECK(t.at("gk_proj.0.weight").shape == std::vector<index_t>{16, 16});
  CHECK(t.at("q_conv1d.weight").shape == std::vector<index_t>{8, 1, 4});
  CHECK(w.gk_proj1.bias.isZero());
  CHECK(w.norm.weight.isOnes());
  const gla_layer layer(c, w);
  // S: [B, 4, 2, 4]; conv histories of 3 inputs over 8 + 8 + 16 channels.
  CHECK(layer.state_bytes(2, 0) == std::size_t(2 * 4 * 2 * 4 * 4 + 2 * 3 * 32 * 4));
  auto bad = c;
  bad.num_kv_heads = 3;
  CHECK_THROWS_AS(gla_layer_weights::random(bad, 1), argument_error);
  bad = c;
  bad.expand_k = 0.1;  // key_dim 1 < 4 heads
  CHECK_THROWS_AS(gla_layer_weights::random(bad, 1), argument_error);
  bad = c;
  bad.gate_logit_normalizer = 0;
  CHECK_THROWS_AS(gla_layer_weights::random(bad, 1), argument_error);
  bad = c;
  bad.clamp_min = 0.5f;
  CHECK_THROWS_AS(gla_layer_weights::random(bad, 1), argument_error);
  auto w2 = w;
  w2.gk_proj1.bias.resize(0);
  try {
    gla_layer l(c, w2);
    FAIL("missing gk_proj.1 bias accepted");
  } catch (const argument_error& e) {
    CHECK(e.argument() == "gk_proj.1.bias");
  }
}
