// Kernelized attention with relative positions: the FFT (Toeplitz) evaluation
// against the float64 O(L^2) sum from the definition, with the FFT forced and
// with the automatic direct/FFT choice; causal and not, normalised and not,
// grouped heads, -inf and large biases (stabiliser), bad inputs.

#include "tokmix/linear/kernelized_relpos.hpp"

#include <cmath>
#include <limits>
#include <vector>

#include "linear/reference_linear.hpp"
#include "support/compare.hpp"

using namespace tokmix;
using tokmix_test::random_floats;
namespace ref = tokmix_test::linear_ref;

namespace {

struct run_views {
  tensor_view<const float, 4> q, k, v;
};
run_views views_of(const ref::problem& p) {
  return {tensor_view<const float, 4>(p.q.data(), {p.B, p.Lq, p.Hq, p.dk}),
          tensor_view<const float, 4>(p.k.data(), {p.B, p.Lk, p.Hkv, p.dk}),
          tensor_view<const float, 4>(p.v.data(), {p.B, p.Lk, p.Hkv, p.dv})};
}

}  // namespace

TEST_CASE("kernelized relpos: FFT path == direct O(L^2) sum", "[linear][kernelized_relpos]") {
  random_feature_map pos(8, 16, 11);
  for (index_t L : {1, 7, 64, 100}) {
    const auto p = ref::random_problem(1, L, L, 4, 2, 8, 5, 40 + unsigned(L));
    // Bias: a smooth decay plus noise, with one far-left entry masked (-inf).
    auto bias = random_floats(static_cast<std::size_t>(4 * (2 * L - 1)), 90 + unsigned(L), -0.5f, 0.5f);
    for (index_t h = 0; h < 4; ++h)
      for (index_t r = 0; r < 2 * L - 1; ++r) bias[static_cast<std::size_t>(h * (2 * L - 1) + r)] -= 0.05f * float(h + 1) * std::abs(float(r - (L - 1)));
    if (L > 3) bias[0] = -std::numeric_limits<float>::infinity();
    const tensor_view<const float, 2> bv(bias.data(), {4, 2 * L - 1});
    for (const auto& f : {feature_map::elu_plus_one(), feature_map::random_features(pos)})
      for (bool causal : {false, true})
        for (bool normalize : {true, false})
          for (bool force : {true, false}) {
            CAPTURE(L, feature_map_name(f.kind), causal, normalize, force);
            kernelized_relpos_params prm;
            prm.phi = f;
            prm.causal = causal;
            prm.normalize = normalize;
            prm.eps = 1e-4f;
            prm.force_fft = force;
            const auto want = ref::kernelized_relpos(p, f, bias, causal, normalize, 1e-4);
            tokmix_test::nan_padded<float> o(p.o_size());
            const auto in = views_of(p);
            kernelized_relpos_attention(in.q, in.k, in.v, bv, tensor_view<float, 4>(o.data(), {1, L, 4, 5}), prm);
            // fp32 FFT error scales with the largest |w v| summed, not with each output.
            double scale = 0;
            for (double x : want) scale = std::max(scale, std::abs(x));
            TOKMIX_REQUIRE_CLOSE(o.data(), want.data(), p.o_size(), 3e-5 * (normalize ? 1.0 : scale + 1.0), 1e-4);
            REQUIRE(std::isnan(o.data()[-1]));
            REQUIRE(std::isnan(o.data()[p.o_size()]));
          }
  }
}

TEST_CASE("kernelized relpos: large biases are stabilised, threads agree", "[linear][kernelized_relpos]") {
  const index_t L = 150;
  const auto p = ref::random_problem(2, L, L, 2, 2, 6, 4, 77);
  // exp(100) overflows fp32. The spread stays small: FFT rounding is relative to
  // the largest weight in a sum, so rows whose few visible weights are e^-10
  // of the maximum would only be accurate to ~1e-3 (inherent to the FFT form).
  auto bias = random_floats(static_cast<std::size_t>(2 * (2 * L - 1)), 78, 98.f, 100.f);
  const tensor_view<const float, 2> bv(bias.data(), {2, 2 * L - 1});
  const auto want = ref::kernelized_relpos(p, feature_map::elu_plus_one(), bias, true, true, 0.0);
  std::vector<float> first;
  for (int threads : {1, 2}) {
    kernelized_relpos_params prm;
    prm.causal = true;
    prm.eps = 0.f;
    prm.policy = exec_policy::threads(threads);
    std::vector<float> o(p.o_size());
    const auto in = views_of(p);
    kernelized_relpos_attention(in.q, in.k, in.v, bv, tensor_view<float, 4>(o.data(), {2, L, 2, 4}), prm);
    TOKMIX_REQUIRE_CLOSE(o.data(), want.data(), o.size(), 5e-5, 1e-4);
    if (first.empty()) first = o;
    else REQUIRE(first == o);
  }
}

TEST_CASE("kernelized relpos: bad inputs throw and write nothing", "[linear][kernelized_relpos]") {
  const index_t L = 5;
  const auto p = ref::random_problem(1, L, L, 2, 1, 4, 3, 5);
  std::vector<float> bias(static_cast<std::size_t>(2 * (2 * L - 1)), 0.f), o(p.o_size(), 7.f);
  const auto in = views_of(p);
  const tensor_view<float, 4> ov(o.data(), {1, L, 2, 3});
  const tensor_view<const float, 2> bv(bias.data(), {2, 2 * L - 1});
  kernelized_relpos_params good;
  auto expect_throw = [&](auto&& fn) {
    CHECK_THROWS_AS(fn(), argument_error);
    for (float x : o) REQUIRE(x == 7.f);
  };
  expect_throw([&] { kernelized_relpos_attention(in.q, in.k, in.v, tensor_view<const float, 2>(bias.data(), {2, 2 * L - 2}), ov, good); });
  expect_throw([&] { kernelized_relpos_attention(in.q, in.k, in.v, tensor_view<const float, 2>(bias.data(), {1, 2 * L - 1}), ov, good); });
  const tensor_view<const float, 4> k_short(p.k.data(), {1, L - 1, 1, 4});
  const tensor_view<const float, 4> v_short(p.v.data(), {1, L - 1, 1, 3});
  expect_throw([&] { kernelized_relpos_attention(in.q, k_short, v_short, bv, ov, good); });
  kernelized_relpos_params bad = good;
  bad.eps = std::numeric_limits<float>::infinity();
  expect_throw([&] { kernelized_relpos_attention(in.q, in.k, in.v, bv, ov, bad); });
  bias[3] = std::numeric_limits<float>::quiet_NaN();
  expect_throw([&] { kernelized_relpos_attention(in.q, in.k, in.v, bv, ov, good); });
  bias[3] = std::numeric_limits<float>::infinity();
  expect_throw([&] { kernelized_relpos_attention(in.q, in.k, in.v, bv, ov, good); });
}
