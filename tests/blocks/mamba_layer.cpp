// Tests for include/tokmix/blocks/mamba_layer.hpp against a float64 Mamba-1
// layer written out here (in_proj, causal conv + SiLU, x_proj, dt_proj +
// softplus, the selective recurrence token by token, D skip, z gate,
// out_proj), on small odd sizes, through the shared layer checks
// (blocks/layer_checks.hpp: prefill == steps == chained prefills, NaN-padded
// strided buffers, save/load, bad input, threads, no allocation in steps);
// then mamba_ssm's tensor names and inits, and weights the layer refuses.
#include "tokmix/blocks/mamba_layer.hpp"

#include <cmath>
#include <limits>
#include <vector>

#include <catch2/catch.hpp>

#include "blocks/layer_checks.hpp"
#include "support/compare.hpp"

using namespace tokmix;

namespace tokmix_test {
namespace mamba_ref {

inline std::vector<double> linear(const linear_weights& w, const std::vector<double>& x) {
  std::vector<double> y(static_cast<std::size_t>(w.out_features()));
  for (index_t o = 0; o < w.out_features(); ++o) {
    double s = w.has_bias() ? double(w.bias[o]) : 0.0;
    for (index_t i = 0; i < w.in_features(); ++i) s += double(w.weight(o, i)) * x[static_cast<std::size_t>(i)];
    y[static_cast<std::size_t>(o)] = s;
  }
  return y;
}
inline double silu(double v) { return v / (1 + std::exp(-v)); }
inline double softplus(double v) { return v > 20 ? v : std::log1p(std::exp(v)); }
inline std::vector<double> slice(const std::vector<double>& v, index_t from, index_t n) {
  return std::vector<double>(v.begin() + from, v.begin() + from + n);
}
// Causal depthwise conv + SiLU over a whole sequence (zeros before t = 0), rows [T][C].
inline std::vector<std::vector<double>> conv_silu(const std::vector<std::vector<double>>& x,
                                                  const depthwise_conv_weights& w) {
  const index_t T = static_cast<index_t>(x.size()), C = w.channels(), W = w.width();
  std::vector<std::vector<double>> y(x.size(), std::vector<double>(static_cast<std::size_t>(C)));
  for (index_t t = 0; t < T; ++t)
    for (index_t c = 0; c < C; ++c) {
      double s = w.has_bias() ? w.bias[c] : 0.0;
      for (index_t k = 0; k < W; ++k)
        if (t - (W - 1) + k >= 0) s += double(w.weight(c, k)) * x[t - (W - 1) + k][c];
      y[t][c] = silu(s);
    }
  return y;
}

}  // namespace mamba_ref
}  // namespace tokmix_test

namespace ls = tokmix_test::mamba_ref;

namespace tokmix_test {
namespace mamba_ref {

inline std::vector<double> forward(const mamba_layer_config& c, const mamba_layer_weights& w,
                                   const std::vector<float>& u, index_t B, index_t T) {
  const index_t dm = c.d_model, di = c.d_inner(), N = c.d_state, R = c.rank();
  std::vector<double> out(static_cast<std::size_t>(B * T * dm));
  for (index_t b = 0; b < B; ++b) {
    std::vector<std::vector<double>> xs, zs;
    for (index_t t = 0; t < T; ++t) {
      const std::vector<double> ut(u.begin() + (b * T + t) * dm, u.begin() + (b * T + t + 1) * dm);
      const auto xz = ls::linear(w.in_proj, ut);
      xs.push_back(ls::slice(xz, 0, di));
      zs.push_back(ls::slice(xz, di, di));
    }
    const auto xc = ls::conv_silu(xs, w.conv1d);
    std::vector<double> h(static_cast<std::size_t>(di * N), 0.0);
    for (index_t t = 0; t < T; ++t) {
      const auto dbl = ls::linear(w.x_proj, xc[t]);
      const auto dt = ls::linear(w.dt_proj, ls::slice(dbl, 0, R));
      std::vector<double> y(static_cast<std::size_t>(di));
      for (index_t d = 0; d < di; ++d) {
        const double delta = ls::softplus(dt[d]);
        double s = 0;
        for (index_t n = 0; n < N; ++n) {
          const double A = -std::exp(double(w.A_log(d, n)));
          double& hv = h[d * N + n];
          hv = std::exp(delta * A) * hv + delta * dbl[R + n] * xc[t][d];
          s += dbl[R + N + n] * hv;
        }
        y[d] = (s + w.D[d] * xc[t][d]) * ls::silu(zs[t][d]);
      }
      const auto o = ls::linear(w.out_proj, y);
      std::copy(o.begin(), o.end(), out.begin() + (b * T + t) * dm);
    }
  }
  return out;
}

}  // namespace mamba_ref
}  // namespace tokmix_test

namespace {

mamba_layer_config small(index_t dm, index_t N, index_t conv, index_t rank, bool conv_bias, bool bias) {
  mamba_layer_config c;
  c.d_model = dm;
  c.d_state = N;
  c.d_conv = conv;
  c.dt_rank = rank;
  c.conv_bias = conv_bias;
  c.bias = bias;
  return c;
}

// Random weights with D and A_log moved off their constant inits, so a
// misindexed skip or decay shows.
mamba_layer make(const mamba_layer_config& c, std::uint64_t seed) {
  auto w = mamba_layer_weights::random(c, seed);
  const auto r = tokmix_test::random_floats(static_cast<std::size_t>(w.A_log.size() + w.D.size()), unsigned(seed), -0.5f, 0.5f);
  for (index_t i = 0; i < w.A_log.size(); ++i) w.A_log.data()[i] += r[static_cast<std::size_t>(i)];
  for (index_t i = 0; i < w.D.size(); ++i) w.D[i] += r[static_cast<std::size_t>(w.A_log.size() + i)];
  if (c.bias)
    for (index_t i = 0; i < w.in_proj.bias.size(); ++i) w.in_proj.bias[i] *= 3.f;
  return mamba_layer(c, std::move(w));
}

}  // namespace

TEST_CASE("mamba_layer == float64 Mamba-1 layer: shared layer checks on odd sizes", "[blocks][mamba_layer]") {
  struct shape {
    index_t dm, N, conv, rank;
    bool conv_bias, bias;
  };
  for (const shape s : {shape{5, 3, 4, -1, true, false}, shape{9, 16, 3, 2, false, true}, shape{12, 7, 2, 3, true, true}}) {
    CAPTURE(s.dm, s.N, s.conv, s.rank);
    const auto c = small(s.dm, s.N, s.conv, s.rank, s.conv_bias, s.bias);
    const auto w = make(c, 40 + s.dm).weights();
    tokmix_test::layer_checks::layer_case lc;
    lc.make = [&](const exec_policy& p) {
      auto cp = c;
      cp.policy = p;
      return std::make_unique<mamba_layer>(cp, w);
    };
    lc.load = [&](const named_tensors& t, const std::string& prefix) {
      return std::make_unique<mamba_layer>(c, mamba_layer_weights::load(c, t, prefix));
    };
    lc.reference = [&](const std::vector<float>& x, index_t B, index_t L) {
      return tokmix_test::mamba_ref::forward(c, w, x, B, L);
    };
    lc.seq = 11;
    lc.split = 5;
    lc.x_scale = 2.f;
    tokmix_test::layer_checks::run_layer_checks(lc, unsigned(s.dm));
  }
}

TEST_CASE("mamba_layer: mamba_ssm names, save -> load exact, missing / misshapen tensors, bad weights",
          "[blocks][mamba_layer]") {
  const auto c = small(6, 4, 4, -1, true, false);
  const auto layer = make(c, 5);
  named_tensors t;
  layer.save(t, "backbone.layers.0.mixer.");
  const std::string p = "backbone.layers.0.mixer.";
  CHECK(t.names() == std::vector<std::string>{p + "A_log", p + "D", p + "conv1d.bias", p + "conv1d.weight",
                                              p + "dt_proj.bias", p + "dt_proj.weight", p + "in_proj.weight",
                                              p + "out_proj.weight", p + "x_proj.weight"});
  CHECK(t.at(p + "conv1d.weight").shape == std::vector<index_t>{12, 1, 4});
  CHECK(t.at(p + "x_proj.weight").shape == std::vector<index_t>{1 + 8, 12});
  const mamba_layer back(c, mamba_layer_weights::load(c, t, p));
  CHECK(back.weights().A_log == layer.weights().A_log);

  auto w = layer.weights();
  w.A_log(1, 2) = std::numeric_limits<float>::infinity();
  CHECK_THROWS_AS(mamba_layer(c, w), argument_error);
  w = layer.weights();
  w.A_log(0, 0) = 100.f;  // -exp(100) overflows
  CHECK_THROWS_AS(mamba_layer(c, w), argument_error);
  w = layer.weights();
  w.D.resize(3);
  CHECK_THROWS_AS(mamba_layer(c, w), argument_error);
  auto bad = c;
  bad.d_conv = 9;
  CHECK_THROWS_AS(mamba_layer_weights::random(bad, 1), argument_error);
}

TEST_CASE("mamba_layer: init as mamba_ssm, state bytes",
          "[blocks][mamba_layer]") {
  auto c = small(16, 16, 4, -1, true, false);
  const auto w = mamba_layer_weights::random(c, 1);
  CHECK(w.A_log(3, 5) == Approx(std::log(6.0)));
  CHECK(w.D == Eigen::VectorXf::Ones(32));
  for (index_t d = 0; d < 32; ++d) {  // softplus(dt bias) in [dt_min, dt_max]
    const double dt = std::log1p(std::exp(double(w.dt_proj.bias[d])));
    CHECK(dt >= 0.001 * 0.999);
    CHECK(dt <= 0.1 * 1.001);
  }
  const mamba_layer layer(c, w);
  CHECK(std::string(layer.name()) == "mamba");
  CHECK(layer.state_bytes(3, 0) == std::size_t(3 * (3 * 32 + 32 * 16)) * sizeof(float));
  CHECK(layer.make_state(3, 0)->bytes() == layer.state_bytes(3, 0));
}
