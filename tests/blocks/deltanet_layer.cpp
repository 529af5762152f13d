// Tests for include/tokmix/blocks/deltanet_layer.hpp against float64 DeltaNet
// and Gated DeltaNet layers written out here token by token: projections,
// short convs (SiLU on v, on q/k only with the silu activation), relu / elu+1
// / identity activations, sum or L2 q/k norm, beta = sigmoid (or 1), the gate
// g = -exp(A_log) softplus(a + dt_bias), q/k heads repeated to the v heads,
// S_t = alpha (I - beta k k^T) S + beta k v^T, o = S^T q / sqrt(dk), per-head
// RMSNorm with or without the swish gate, output projection. Then the shared
// layer checks.
#include "tokmix/blocks/deltanet_layer.hpp"

#include <cmath>
#include <vector>

#include <catch2/catch.hpp>

#include "blocks/layer_checks.hpp"
#include "blocks/reference_fla_layers.hpp"
#include "support/compare.hpp"

using namespace tokmix;

namespace tokmix_test {
namespace deltanet_layer_ref {

using namespace fla_layer_ref;

inline std::vector<double> forward(const deltanet_layer_config& c, const deltanet_layer_weights& w,
                                   const std::vector<float>& x, index_t B, index_t L) {
  const index_t d = c.d_model, H = c.num_heads, Hv = c.v_heads(), rep = Hv / H, dk = c.dk(), dv = c.dv();
  const bool silu_qk = c.qk_activation == deltanet_qk_activation::silu;
  std::vector<double> y(static_cast<std::size_t>(B * L * d));
  for (index_t b = 0; b < B; ++b) {
    const auto xs = rows_of(x, b, L, d);
    auto q = project_all(w.q_proj, xs), k = project_all(w.k_proj, xs), v = project_all(w.v_proj, xs);
    if (c.use_short_conv) {
      q = conv_silu(w.convs.q, q, silu_qk);
      k = conv_silu(w.convs.k, k, silu_qk);
      v = conv_silu(w.convs.v, v, true);
    } else {
      for (auto* m : {&q, &k})
        for (auto& r : *m)
          for (double& e : r) e = silu_qk ? silu(e) : e;
      for (auto& r : v)
        for (double& e : r) e = silu(e);
    }
    for (auto* m : {&q, &k})
      for (auto& r : *m) {
        for (double& e : r) {
          if (c.qk_activation == deltanet_qk_activation::relu) e = std::max(e, 0.0);
          if (c.qk_activation == deltanet_qk_activation::elu_plus_one) e = e > 0 ? e + 1 : std::exp(e);
        }
        for (index_t h = 0; h < H; ++h) {
          double s = 0;
          for (index_t j = 0; j < dk; ++j)
            s += c.qk_norm == deltanet_qk_norm::sum ? r[h * dk + j] : r[h * dk + j] * r[h * dk + j];
          const double f = c.qk_norm == deltanet_qk_norm::sum ? 1.0 / s : 1.0 / std::sqrt(s + 1e-6);
          for (index_t j = 0; j < dk; ++j) r[h * dk + j] *= f;
        }
      }
    std::vector<double> S(static_cast<std::size_t>(Hv * dk * dv), 0.0);
    const double scale = 1.0 / std::sqrt(double(dk));
    for (index_t t = 0; t < L; ++t) {
      std::vector<double> beta(static_cast<std::size_t>(Hv), 1.0), alpha(static_cast<std::size_t>(Hv), 1.0);
      if (c.has_beta()) {
        const auto bl = linear(w.b_proj, xs[t]);
        for (index_t h = 0; h < Hv; ++h) beta[h] = 1.0 / (1.0 + std::exp(-bl[h]));
      }
      if (c.gated) {
        const auto al = linear(w.a_proj, xs[t]);
        for (index_t h = 0; h < Hv; ++h) {
          const double z = al[h] + w.dt_bias[h];
          alpha[h] = std::exp(-std::exp(double(w.A_log[h])) * std::log1p(std::exp(z)));
        }
      }
      std::vector<double> o(static_cast<std::size_t>(Hv * dv), 0.0);
      for (index_t h = 0; h < Hv; ++h) {
        const index_t g = h / rep;  // the q/k head of v head h
        const double* kt = k[t].data() + g * dk;
        const double* qt = q[t].data() + g * dk;
        double* Sh = S.data() + h * dk * dv;
        // S = alpha (S - beta k (k^T S)) + beta k v^T
        for (index_t j = 0; j < dv; ++j) {
          double ks = 0;
          for (index_t i = 0; i < dk; ++i) ks += kt[i] * Sh[i * dv + j];
          for (index_t i = 0; i < dk; ++i)
            Sh[i * dv + j] = alpha[h] * (Sh[i * dv + j] - beta[h] * kt[i] * ks) + beta[h] * kt[i] * v[t][h * dv + j];
        }
        for (index_t j = 0; j < dv; ++j) {
          double s = 0;
          for (index_t i = 0; i < dk; ++i) s += Sh[i * dv + j] * qt[i] * scale;
          o[h * dv + j] = s;
        }
      }
      std::vector<double> gate;
      if (c.use_gate) gate = linear(w.g_proj, xs[t]);
      head_norm(o, Hv, dv, w.o_norm, c.use_gate ? &gate : nullptr);
      const auto yt = linear(w.o_proj, o);
      std::copy(yt.begin(), yt.end(), y.begin() + (b * L + t) * d);
    }
  }
  return y;
}

}  // namespace deltanet_layer_ref
}  // namespace tokmix_test

namespace {

deltanet_layer_weights test_weights(const deltanet_layer_config& c, std::uint64_t seed) {
  auto w = deltanet_layer_weights::random(c, seed);
  for (auto* p : {&w.q_proj, &w.k_proj, &w.v_proj, &w.g_proj, &w.o_proj}) p->weight *= 20.f;
  for (auto* p : {&w.b_proj, &w.a_proj}) p->weight *= 50.f;
  if (c.use_short_conv)
    for (auto* cv : {&w.convs.q, &w.convs.k, &w.convs.v}) {
      cv->weight *= 20.f;
      for (index_t i = 0; i < cv->bias.size(); ++i) cv->bias[i] = 0.2f * std::cos(0.7f * i);
    }
  w.o_norm = rms_norm_weights::random(c.dv(), seed + 3, c.norm_eps);
  return w;
}

tokmix_test::layer_checks::layer_case make_case(const deltanet_layer_config& base, std::uint64_t seed) {
  const auto w = test_weights(base, seed);
  tokmix_test::layer_checks::layer_case lc;
  lc.make = [base, w](const exec_policy& p) {
    auto c = base;
    c.policy = p;
    return std::make_unique<deltanet_layer>(c, w);
  };
  lc.load = [base](const named_tensors& t, const std::string& prefix) {
    return std::make_unique<deltanet_layer>(base, deltanet_layer_weights::load(base, t, prefix));
  };
  lc.reference = [base, w](const std::vector<float>& x, index_t B, index_t L) {
    return tokmix_test::deltanet_layer_ref::forward(base, w, x, B, L);
  };
  lc.seq = 13;
  lc.split = 6;
  return lc;
}

}  // namespace

TEST_CASE("deltanet_layer: DeltaNet defaults and options (activations, sum norm, no beta, gate, no conv)", "[blocks][deltanet_layer]") {
  struct variant {
    index_t d, h, dk, dv;
    deltanet_qk_activation act;
    deltanet_qk_norm norm;
    bool beta, gate, conv, conv_bias;
    index_t conv_size, chunk;
  };
  using A = deltanet_qk_activation;
  using N = deltanet_qk_norm;
  const variant vs[] = {
      {12, 4, -1, -1, A::silu, N::l2, true, false, true, false, 4, 64},        // fla DeltaNet defaults
      {13, 3, 5, 3, A::relu, N::l2, true, true, true, true, 3, 4},             // relu (a head may be all zeros: l2 with eps), gate, conv bias
      {10, 2, 4, 5, A::elu_plus_one, N::sum, false, false, false, false, 4, 5},  // elu+1, beta = 1, no conv
      {9, 3, 3, 4, A::identity, N::l2, true, true, false, false, 4, 3},        // identity, no conv
  };
  unsigned n = 0;
  for (const auto& v : vs) {
    CAPTURE(n);
    auto c = deltanet_layer_config::delta_net(v.d, v.h);
    c.head_k_dim = v.dk;
    c.head_v_dim = v.dv;
    c.qk_activation = v.act;
    c.qk_norm = v.norm;
    c.use_beta = v.beta;
    c.use_gate = v.gate;
    c.use_short_conv = v.conv;
    c.conv_bias = v.conv_bias;
    c.conv_size = v.conv_size;
    c.chunk_size = v.chunk;
    tokmix_test::layer_checks::run_layer_checks(make_case(c, 50 + n), 80 + n);
    ++n;
  }
}

TEST_CASE("deltanet_layer: Gated DeltaNet (GVA heads, gate, no conv, small chunks)", "[blocks][deltanet_layer]") {
  struct variant {
    index_t d, h, hv, dk, dv;
    bool gate, conv;
    index_t chunk;
  };
  const variant vs[] = {
      {12, 2, -1, 6, 12, true, true, 64},  // fla defaults scaled down (expand_v 2)
      {11, 2, 4, 3, 5, true, true, 4},     // GVA: 4 v heads over 2 q/k heads
      {10, 1, 3, 4, 3, false, false, 5},   // 3 v heads on one q/k head, no gate, no conv
  };
  unsigned n = 0;
  for (const auto& v : vs) {
    CAPTURE(n);
    auto c = deltanet_layer_config::gated_delta_net(v.d, v.dk, v.h, v.dv);
    c.num_v_heads = v.hv;
    c.use_gate = v.gate;
    c.use_short_conv = v.conv;
    c.chunk_size = v.chunk;
    tokmix_test::layer_checks::run_layer_checks(make_case(c, 60 + n), 90 + n);
    ++n;
  }
}

TEST_CASE("deltanet_layer: names, init, kinds, state size, config checks", "[blocks][deltanet_layer]") {
  auto c = deltanet_layer_config::gated_delta_net(16, 4, 2, 8);
  c.num_v_heads = 4;
  const auto w = deltanet_layer_weights::random(c, 1);
  named_tensors t;
  w.save(c, t, "");
  CHECK(t.names() == std::vector<std::string>{"A_log", "a_proj.weight", "b_proj.weight", "dt_bias", "g_proj.weight",
                                              "k_conv1d.weight", "k_proj.weight", "o_norm.weight", "o_proj.weight",
                                              "q_conv1d.weight", "q_proj.weight", "v_conv1d.weight", "v_proj.weight"});
  CHECK(t.at("v_proj.weight").shape == std::vector<index_t>{32, 16});
  CHECK(t.at("A_log").shape == std::vector<index_t>{4});
  for (index_t h = 0; h < 4; ++h) {
    CHECK(std::exp(w.A_log[h]) <= 16.f);
    const double dt = std::log1p(std::exp(double(w.dt_bias[h])));
    CHECK(dt >= 1e-4 * 0.999);
    CHECK(dt <= 0.1 * 1.001);
  }
  const deltanet_layer gated(c, w);
  CHECK(std::string(gated.name()) == "gated_delta_net");
  // S [2, 4 heads, 4, 8] + conv histories (3 inputs) of 8 + 8 + 32 channels.
  CHECK(gated.state_bytes(2, 0) == std::size_t(2 * 4 * 4 * 8 * 4 + 2 * 3 * 48 * 4));

  // A DeltaNet state is the same C++ type but not interchangeable.
  auto cp = deltanet_layer_config::delta_net(16, 4);
  const deltanet_layer plain(cp, deltanet_layer_weights::random(cp, 2));
  auto s = gated.make_state(1, 0);
  std::vector<float> x(16, 0.1f), y(16, -1.f);
  tokmix_test::layer_checks::require_argument_error(
      [&] { plain.step(tensor_view<const float, 2>(x.data(), {1, 16}), tensor_view<float, 2>(y.data(), {1, 16}), *s); },
      "gated_delta_net");
  for (float v : y) CHECK(v == -1.f);

  auto bad = cp;
  bad.num_v_heads = 8;  // GVA is Gated DeltaNet's
  CHECK_THROWS_AS(deltanet_layer_weights::random(bad, 1), argument_error);
  bad = c;
  bad.num_v_heads = 3;
  CHECK_THROWS_AS(deltanet_layer_weights::random(bad, 1), argument_error);
  bad = c;
  bad.qk_norm = deltanet_qk_norm::sum;
  CHECK_THROWS_AS(deltanet_layer_weights::random(bad, 1), argument_error);
  auto w2 = w;
  w2.A_log[1] = std::numeric_limits<float>::infinity();
  CHECK_THROWS_AS(deltanet_layer(c, w2), argument_error);
}
