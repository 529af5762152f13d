// Feature maps against their float64 definitions. The quadratic maps store a
// packed triangle, so they are compared through what attention uses: the
// kernel values phi(q_i).phi(k_j). Elementwise maps are also compared value by
// value; odd head dims and NaN-padded outputs catch over-reads and writes.

#include "tokmix/linear/feature_maps.hpp"

#include <cmath>
#include <limits>
#include <vector>

#include "linear/reference_linear.hpp"
#include "support/compare.hpp"

using namespace tokmix;
using tokmix_test::random_floats;
namespace ref = tokmix_test::linear_ref;

namespace {

// phi(x_i).phi(y_j) for all pairs through apply_feature_map, in double.
std::vector<double> gram(const feature_map& f, const std::vector<float>& x, const std::vector<float>& y, index_t rows,
                         index_t d) {
  const index_t F = feature_map_dim(f, d);
  const index_t ldo = F + 3;  // padded rows: the pad must stay NaN
  tokmix_test::nan_padded<float> px(static_cast<std::size_t>(rows * ldo)), py(static_cast<std::size_t>(rows * ldo));
  apply_feature_map(f, tensor_view<const float, 2>(x.data(), {rows, d}),
                    tensor_view<float, 2>(px.data(), {rows, F}, {ldo, 1}));
  apply_feature_map(f, tensor_view<const float, 2>(y.data(), {rows, d}),
                    tensor_view<float, 2>(py.data(), {rows, F}, {ldo, 1}));
  for (index_t r = 0; r < rows; ++r)
    for (index_t c = F; c < ldo && r + 1 < rows; ++c) REQUIRE(std::isnan(px.data()[r * ldo + c]));
  REQUIRE(std::isnan(px.data()[-1]));
  std::vector<double> g;
  for (index_t i = 0; i < rows; ++i)
    for (index_t j = 0; j < rows; ++j) {
      double s = 0;
      for (index_t c = 0; c < F; ++c) s += double(px.data()[i * ldo + c]) * py.data()[j * ldo + c];
      g.push_back(s);
    }
  return g;
}

std::vector<double> gram_ref(const feature_map& f, const std::vector<float>& x, const std::vector<float>& y,
                             index_t rows, index_t d) {
  std::vector<double> g;
  for (index_t i = 0; i < rows; ++i)
    for (index_t j = 0; j < rows; ++j)
      g.push_back(ref::dot(ref::phi(f, &x[static_cast<std::size_t>(i * d)], d), ref::phi(f, &y[static_cast<std::size_t>(j * d)], d)));
  return g;
}

}  // namespace

TEST_CASE("feature maps: kernel values match the float64 definitions", "[linear][feature_maps]") {
  const index_t rows = 5;
  for (index_t d : {1, 7, 8, 9, 16, 33}) {
    CAPTURE(d);
    const auto x = random_floats(static_cast<std::size_t>(rows * d), 1 + unsigned(d), -1.5f, 1.5f);
    const auto y = random_floats(static_cast<std::size_t>(rows * d), 2 + unsigned(d), -1.5f, 1.5f);
    const auto gamma = random_floats(static_cast<std::size_t>(d), 3, 0.5f, 1.5f);
    const auto beta = random_floats(static_cast<std::size_t>(d), 4, -0.3f, 0.3f);
    random_feature_map pos(d, 19, 7), trig(d, 19, 8, random_feature_kind::trigonometric);
    const feature_map maps[] = {
        feature_map::identity(),
        feature_map::elu_plus_one(),
        feature_map::relu(),
        feature_map::based_taylor(),
        feature_map::based_taylor(0.3f),
        feature_map::rebased(),
        feature_map::rebased(tensor_view<const float, 1>(gamma.data(), {d}), tensor_view<const float, 1>(beta.data(), {d})),
        feature_map::random_features(pos),
        feature_map::random_features(trig),
    };
    for (const auto& f : maps) {
      CAPTURE(feature_map_name(f.kind));
      const auto got = gram(f, x, y, rows, d);
      const auto want = gram_ref(f, x, y, rows, d);
      TOKMIX_REQUIRE_CLOSE(got.data(), want.data(), got.size(), 2e-5, 2e-5);
    }
  }
}

TEST_CASE("feature maps: elementwise maps value by value, feature dims", "[linear][feature_maps]") {
  const index_t d = 13, rows = 3;
  const auto x = random_floats(static_cast<std::size_t>(rows * d), 9, -3.f, 3.f);
  for (auto f : {feature_map::identity(), feature_map::elu_plus_one(), feature_map::relu()}) {
    std::vector<float> out(static_cast<std::size_t>(rows * d));
    apply_feature_map(f, tensor_view<const float, 2>(x.data(), {rows, d}), tensor_view<float, 2>(out.data(), {rows, d}));
    std::vector<double> want;
    for (index_t r = 0; r < rows; ++r)
      for (double v : ref::phi(f, &x[static_cast<std::size_t>(r * d)], d)) want.push_back(v);
    TOKMIX_REQUIRE_CLOSE(out.data(), want.data(), out.size(), 1e-7, 2e-7);
  }
  random_feature_map trig(d, 10, 1, random_feature_kind::trigonometric);
  CHECK(feature_map_dim(feature_map::based_taylor(), 16) == 1 + 16 + 136);
  CHECK(feature_map_dim(feature_map::rebased(), 16) == 136);
  CHECK(feature_map_dim(feature_map::random_features(trig), d) == 20);
  CHECK(feature_map_positive(feature_map::elu_plus_one()));
  CHECK_FALSE(feature_map_positive(feature_map::random_features(trig)));
}

TEST_CASE("feature maps: Based approximates exp(scale q.k) to second order", "[linear][feature_maps]") {
  const index_t d = 16, rows = 4;
  const auto x = random_floats(static_cast<std::size_t>(rows * d), 21, -0.5f, 0.5f);
  const auto y = random_floats(static_cast<std::size_t>(rows * d), 22, -0.5f, 0.5f);
  const auto g = gram(feature_map::based_taylor(), x, y, rows, d);
  for (index_t i = 0; i < rows; ++i)
    for (index_t j = 0; j < rows; ++j) {
      double s = 0;
      for (index_t c = 0; c < d; ++c) s += double(x[static_cast<std::size_t>(i * d + c)]) * y[static_cast<std::size_t>(j * d + c)];
      s /= std::sqrt(double(d));
      REQUIRE(std::abs(g[static_cast<std::size_t>(i * rows + j)] - (1 + s + s * s / 2)) < 1e-5);
      REQUIRE(std::abs(g[static_cast<std::size_t>(i * rows + j)] - std::exp(s)) < std::abs(s * s * s) / 6 * 1.2 + 1e-5);
    }
}

TEST_CASE("feature maps: bad maps throw and write nothing", "[linear][feature_maps]") {
  const index_t d = 4;
  std::vector<float> x(8, 0.5f), out(64, 7.f);
  const tensor_view<const float, 2> xv(x.data(), {2, d});
  auto outv = [&](index_t F) { return tensor_view<float, 2>(out.data(), {2, F}); };
  std::vector<float> bad_gamma = {1, 1, std::numeric_limits<float>::quiet_NaN(), 1}, short_gamma = {1, 1, 1};
  CHECK_THROWS_AS(apply_feature_map(feature_map::based_taylor(std::numeric_limits<float>::infinity()), xv, outv(15)),
                  argument_error);
  CHECK_THROWS_AS(apply_feature_map(feature_map::based_taylor(0.f), xv, outv(15)), argument_error);
  CHECK_THROWS_AS(apply_feature_map(feature_map::rebased(tensor_view<const float, 1>(bad_gamma.data(), {4})), xv, outv(10)),
                  argument_error);
  CHECK_THROWS_AS(apply_feature_map(feature_map::rebased(tensor_view<const float, 1>(short_gamma.data(), {3})), xv, outv(10)),
                  argument_error);
  feature_map no_random;
  no_random.kind = feature_map_kind::random_features;
  CHECK_THROWS_AS(apply_feature_map(no_random, xv, outv(4)), argument_error);
  random_feature_map wrong_dim(5, 8, 1);
  CHECK_THROWS_AS(apply_feature_map(feature_map::random_features(wrong_dim), xv, outv(8)), argument_error);
  CHECK_THROWS_AS(apply_feature_map(feature_map::elu_plus_one(), xv, outv(5)), argument_error);
  for (float v : out) REQUIRE(v == 7.f);
}
