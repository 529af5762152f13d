// Tests for include/tokmix/blocks/mamba2_layer.hpp against a float64 Mamba-2
// layer written out here (in_proj split z | xBC | dt, causal conv + SiLU over
// xBC, softplus(dt + dt_bias) with the dt limit, the SSD recurrence token by
// token with grouped B/C and the D skip, the gated group RMSNorm, out_proj),
// on small odd sizes with several heads and groups, through the shared layer
// checks (blocks/layer_checks.hpp); then mamba_ssm's tensor names and inits,
// the norm / gate variants, and weights the layer refuses.
#include "tokmix/blocks/mamba2_layer.hpp"

#include <cmath>
#include <limits>
#include <vector>

#include <catch2/catch.hpp>

#include "blocks/layer_checks.hpp"
#include "support/compare.hpp"

using namespace tokmix;

namespace tokmix_test {
namespace mamba2_ref {

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

inline std::vector<double> forward(const mamba2_layer_config& c, const mamba2_layer_weights& w,
                                   const std::vector<float>& u, index_t Bt, index_t T) {
  const index_t dm = c.d_model, di = c.d_inner(), H = c.heads(), P = c.headdim, G = c.ngroups, N = c.d_state;
  const index_t cd = c.conv_dim(), W = c.d_conv, per_group = H / G;
  std::vector<double> out(static_cast<std::size_t>(Bt * T * dm));
  for (index_t b = 0; b < Bt; ++b) {
    std::vector<std::vector<double>> proj(T), xbc(T);
    for (index_t t = 0; t < T; ++t)
      proj[t] = linear(w.in_proj, std::vector<double>(u.begin() + (b * T + t) * dm, u.begin() + (b * T + t + 1) * dm));
    for (index_t t = 0; t < T; ++t) {  // conv over the xBC channels
      xbc[t].resize(static_cast<std::size_t>(cd));
      for (index_t ch = 0; ch < cd; ++ch) {
        double s = w.conv1d.has_bias() ? w.conv1d.bias[ch] : 0.0;
        for (index_t k = 0; k < W; ++k)
          if (t - (W - 1) + k >= 0) s += double(w.conv1d.weight(ch, k)) * proj[t - (W - 1) + k][di + ch];
        xbc[t][ch] = silu(s);
      }
    }
    std::vector<double> h(static_cast<std::size_t>(H * P * N), 0.0);
    for (index_t t = 0; t < T; ++t) {
      const double* x = xbc[t].data();
      const double* Bv = x + di;
      const double* Cv = x + di + G * N;
      const double* z = proj[t].data();
      std::vector<double> y(static_cast<std::size_t>(di));
      for (index_t hd = 0; hd < H; ++hd) {
        const index_t g = hd / per_group;
        double dt = softplus(proj[t][di + cd + hd] + w.dt_bias[hd]);
        dt = std::min(std::max(dt, double(c.dt_limit_min)), double(c.dt_limit_max));
        const double decay = std::exp(dt * -std::exp(double(w.A_log[hd])));
        for (index_t p = 0; p < P; ++p) {
          double s = 0;
          for (index_t n = 0; n < N; ++n) {
            double& hv = h[(hd * P + p) * N + n];
            hv = decay * hv + dt * x[hd * P + p] * Bv[g * N + n];
            s += hv * Cv[g * N + n];
          }
          const double Dv = c.D_has_hdim ? w.D[hd * P + p] : w.D[hd];
          y[hd * P + p] = s + Dv * x[hd * P + p];
        }
      }
      if (!c.rmsnorm) {
        for (index_t i = 0; i < di; ++i) y[i] *= silu(z[i]);
      } else {
        const index_t gs = di / G;
        for (index_t o = 0; o < di; o += gs) {
          double ss = 0;
          for (index_t i = o; i < o + gs; ++i) {
            const double v = c.norm_before_gate ? y[i] : y[i] * silu(z[i]);
            ss += v * v;
          }
          const double r = 1 / std::sqrt(ss / gs + w.norm.eps);
          for (index_t i = o; i < o + gs; ++i)
            y[i] = (c.norm_before_gate ? y[i] * r * w.norm.weight[i] * silu(z[i])
                                       : y[i] * silu(z[i]) * r * w.norm.weight[i]);
        }
      }
      const auto o = linear(w.out_proj, y);
      std::copy(o.begin(), o.end(), out.begin() + (b * T + t) * dm);
    }
  }
  return out;
}

}  // namespace mamba2_ref
}  // namespace tokmix_test

namespace {

struct shape {
  index_t dm, N, conv, expand, headdim, groups;
  bool D_hdim, rmsnorm, nbg, bias;
};

mamba2_layer_config config_of(const shape& s) {
  mamba2_layer_config c;
  c.d_model = s.dm;
  c.d_state = s.N;
  c.d_conv = s.conv;
  c.expand = s.expand;
  c.headdim = s.headdim;
  c.ngroups = s.groups;
  c.D_has_hdim = s.D_hdim;
  c.rmsnorm = s.rmsnorm;
  c.norm_before_gate = s.nbg;
  c.bias = s.bias;
  c.chunk_size = 4;  // several chunks per prefill, and a partial one
  return c;
}

// Random weights moved off their constant inits (D, norm gain, larger dt),
// so a misindexed skip, gain or decay shows.
mamba2_layer_weights weights_of(const mamba2_layer_config& c, std::uint64_t seed) {
  auto w = mamba2_layer_weights::random(c, seed);
  const auto r = tokmix_test::random_floats(static_cast<std::size_t>(w.D.size() + w.dt_bias.size()), unsigned(seed), -0.5f, 0.5f);
  for (index_t i = 0; i < w.D.size(); ++i) w.D[i] += r[static_cast<std::size_t>(i)];
  for (index_t i = 0; i < w.dt_bias.size(); ++i) w.dt_bias[i] = 2.f * r[static_cast<std::size_t>(w.D.size() + i)];
  if (c.rmsnorm) w.norm = rms_norm_weights::random(c.d_inner(), seed + 1, c.norm_eps);
  return w;
}

}  // namespace

TEST_CASE("mamba2_layer == float64 Mamba-2 layer: shared layer checks on odd sizes", "[blocks][mamba2_layer]") {
  for (const shape s : {shape{6, 5, 4, 2, 3, 1, false, true, false, false},    // 4 heads of 3, one group
                        shape{5, 3, 3, 3, 5, 3, true, true, false, true},      // 3 heads, 3 groups, D per channel
                        shape{8, 9, 2, 2, 4, 2, false, true, true, false},     // norm before gate (fla order)
                        shape{7, 4, 4, 1, 7, 1, false, false, false, false}})  // no norm: z gates in the scan
  {
    CAPTURE(s.dm, s.N, s.headdim, s.groups, s.D_hdim, s.rmsnorm, s.nbg);
    const auto c = config_of(s);
    const auto w = weights_of(c, 60 + s.dm);
    tokmix_test::layer_checks::layer_case lc;
    lc.make = [&](const exec_policy& p) {
      auto cp = c;
      cp.policy = p;
      return std::make_unique<mamba2_layer>(cp, w);
    };
    lc.load = [&](const named_tensors& t, const std::string& prefix) {
      return std::make_unique<mamba2_layer>(c, mamba2_layer_weights::load(c, t, prefix));
    };
    lc.reference = [&](const std::vector<float>& x, index_t B, index_t L) {
      return tokmix_test::mamba2_ref::forward(c, w, x, B, L);
    };
    lc.seq = 11;
    lc.split = 6;
    lc.x_scale = 2.f;
    tokmix_test::layer_checks::run_layer_checks(lc, unsigned(s.dm * 3));
  }
}

TEST_CASE("mamba2_layer: dt limit clamps the step", "[blocks][mamba2_layer]") {
  auto c = config_of(shape{6, 4, 4, 2, 4, 1, false, true, false, false});
  c.dt_limit_min = 0.05f;
  c.dt_limit_max = 0.2f;
  const auto w = weights_of(c, 3);
  const mamba2_layer layer(c, w);
  const index_t B = 2, T = 9;
  const auto x = tokmix_test::random_floats(static_cast<std::size_t>(B * T * c.d_model), 4u, -2.f, 2.f);
  const auto want = tokmix_test::mamba2_ref::forward(c, w, x, B, T);
  std::vector<float> y(x.size());
  auto s = layer.make_state(B, 0);
  layer.prefill(tensor_view<const float, 3>(x.data(), {B, T, c.d_model}), tensor_view<float, 3>(y.data(), {B, T, c.d_model}), *s);
  TOKMIX_REQUIRE_CLOSE(y.data(), want.data(), want.size(), 2e-5, 2e-4);
  auto free = c;
  free.dt_limit_min = 0.f;
  free.dt_limit_max = std::numeric_limits<float>::infinity();
  const auto unclamped = tokmix_test::mamba2_ref::forward(free, w, x, B, T);
  double diff = 0;
  for (std::size_t i = 0; i < want.size(); ++i) diff = std::max(diff, std::abs(want[i] - unclamped[i]));
  CHECK(diff > 1e-3);  // the limit is not a no-op on these inputs
}

TEST_CASE("mamba2_layer: mamba_ssm names and inits, bad weights", "[blocks][mamba2_layer]") {
  mamba2_layer_config c;
  c.d_model = 8;
  c.d_state = 16;
  c.headdim = 4;
  c.ngroups = 2;
  const auto w = mamba2_layer_weights::random(c, 9);
  named_tensors t;
  w.save(t, "backbone.layers.1.mixer.");
  const std::string p = "backbone.layers.1.mixer.";
  CHECK(t.names() == std::vector<std::string>{p + "A_log", p + "D", p + "conv1d.bias", p + "conv1d.weight", p + "dt_bias",
                                              p + "in_proj.weight", p + "norm.weight", p + "out_proj.weight"});
  // [z | x | B | C | dt] = 16 + 16 + 2*2*16 + 4 heads
  CHECK(t.at(p + "in_proj.weight").shape == std::vector<index_t>{16 + 16 + 64 + 4, 8});
  CHECK(t.at(p + "conv1d.weight").shape == std::vector<index_t>{16 + 64, 1, 4});
  for (index_t h = 0; h < 4; ++h) {
    const double A = std::exp(double(w.A_log[h]));
    CHECK(A >= 1.0);
    CHECK(A <= 16.0);
    const double dt = std::log1p(std::exp(double(w.dt_bias[h])));
    CHECK(dt >= 0.001 * 0.999);
    CHECK(dt <= 0.1 * 1.001);
  }
  CHECK(w.D == Eigen::VectorXf::Ones(4));
  CHECK(w.norm.weight == Eigen::VectorXf::Ones(16));
  const mamba2_layer layer(c, w);
  CHECK(std::string(layer.name()) == "mamba2");
  CHECK(layer.state_bytes(2, 0) == std::size_t(2 * 3 * 80 + 2 * 4 * 4 * 16) * sizeof(float));

  auto bad = w;
  bad.A_log[2] = std::numeric_limits<float>::quiet_NaN();
  CHECK_THROWS_AS(mamba2_layer(c, bad), argument_error);
  bad = w;
  bad.dt_bias.resize(3);
  CHECK_THROWS_AS(mamba2_layer(c, bad), argument_error);
  bad = w;
  bad.norm.weight.resize(15);
  CHECK_THROWS_AS(mamba2_layer(c, bad), argument_error);
  auto cbad = c;
  cbad.headdim = 5;  // does not divide d_inner = 16
  CHECK_THROWS_AS(mamba2_layer_weights::random(cbad, 1), argument_error);
  cbad = c;
  cbad.ngroups = 3;  // does not divide 4 heads
  CHECK_THROWS_AS(mamba2_layer_weights::random(cbad, 1), argument_error);
  cbad = c;
  cbad.chunk_size = 0;
  CHECK_THROWS_AS(mamba2_layer(cbad, w), argument_error);
}
