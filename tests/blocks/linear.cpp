// Tests for include/tokmix/blocks/linear.hpp against a float64 x W^T + b:
// odd sizes, strided rows, threads split by rows and by features, loading
// and saving named tensors, bad shapes that write nothing.
#include "tokmix/blocks/linear.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

#include <catch2/catch.hpp>

#include "support/compare.hpp"

using namespace tokmix;

namespace {

std::vector<double> linear_ref(const linear_weights& w, const float* x, index_t rows, index_t ldx) {
  const index_t in = w.in_features(), out = w.out_features();
  std::vector<double> y(static_cast<std::size_t>(rows * out));
  for (index_t r = 0; r < rows; ++r)
    for (index_t o = 0; o < out; ++o) {
      double s = w.has_bias() ? double(w.bias[o]) : 0.0;
      for (index_t i = 0; i < in; ++i) s += double(x[r * ldx + i]) * double(w.weight(o, i));
      y[static_cast<std::size_t>(r * out + o)] = s;
    }
  return y;
}

}  // namespace

TEST_CASE("linear: x W^T + b == float64, odd sizes, strides, threads", "[blocks][linear]") {
  for (index_t in : {1, 7, 9, 64, 130})
    for (index_t out : {1, 8, 17, 96})
      for (index_t rows : {1, 3, 65, 300})
        for (bool bias : {false, true}) {
          CAPTURE(in, out, rows, bias);
          const auto w = linear_weights::random(in, out, bias, 11 + in * 7 + out);
          const index_t ldx = in + 3;  // rows strided inside a wider buffer
          const auto xb = tokmix_test::random_floats(static_cast<std::size_t>(rows * ldx), unsigned(rows + in));
          const auto want = linear_ref(w, xb.data(), rows, ldx);
          for (int threads : {1, 2, 3}) {
            tokmix_test::nan_padded<float> y(static_cast<std::size_t>(rows * out));
            const exec_policy pol = threads == 1 ? exec_policy::serial() : exec_policy::threads(threads);
            linear_forward(w, tensor_view<const float, 2>(xb.data(), {rows, in}, {ldx, 1}),
                           tensor_view<float, 2>(y.data(), {rows, out}), pol);
            TOKMIX_REQUIRE_CLOSE(y.data(), want.data(), want.size(), 1e-5, 1e-5);
            REQUIRE(std::isnan(y.data()[-1]));
            REQUIRE(std::isnan(y.data()[rows * out]));
          }
        }
}

TEST_CASE("linear: random init bounds, save and load round trip", "[blocks][linear]") {
  const auto w = linear_weights::random(50, 20, true, 3);
  float wmax = 0, bmax = 0;
  for (index_t i = 0; i < w.weight.size(); ++i) wmax = std::max(wmax, std::abs(w.weight.data()[i]));
  for (index_t i = 0; i < w.bias.size(); ++i) bmax = std::max(bmax, std::abs(w.bias[i]));
  CHECK(wmax <= 1.f / std::sqrt(50.f));
  CHECK(bmax <= 1.f / std::sqrt(50.f));
  CHECK(wmax > 0.1f);
  const auto again = linear_weights::random(50, 20, true, 3);
  CHECK(w.weight == again.weight);
  named_tensors t;
  w.save(t, "proj");
  CHECK(t.names() == std::vector<std::string>{"proj.bias", "proj.weight"});
  const auto back = linear_weights::load(t, "proj", 50, 20, true);
  CHECK(back.weight == w.weight);
  CHECK(back.bias == w.bias);
  CHECK_THROWS_AS(linear_weights::load(t, "proj", 20, 50, true), argument_error);
  CHECK_THROWS_AS(linear_weights::load(t, "other", 50, 20, false), argument_error);
}

TEST_CASE("linear: bad shapes throw and write nothing", "[blocks][linear]") {
  const auto w = linear_weights::random(8, 4, true, 1);
  std::vector<float> x(3 * 8, 1.f), y(3 * 4, -7.f);
  const tensor_view<const float, 2> xv(x.data(), {3, 8});
  try {
    linear_forward(w, tensor_view<const float, 2>(x.data(), {4, 6}), tensor_view<float, 2>(y.data(), {3, 4}));
    FAIL("bad x accepted");
  } catch (const argument_error& e) {
    CHECK(e.argument() == "x");
  }
  try {
    linear_forward(w, xv, tensor_view<float, 2>(y.data(), {3, 3}));
    FAIL("bad y accepted");
  } catch (const argument_error& e) {
    CHECK(e.argument() == "y");
  }
  CHECK_THROWS_AS(linear_forward(w, tensor_view<const float, 2>(x.data(), {3, 8}, {8, 2}), tensor_view<float, 2>(y.data(), {3, 4})),
                  argument_error);
  linear_weights bad = w;
  bad.bias.resize(3);
  CHECK_THROWS_AS(linear_forward(bad, xv, tensor_view<float, 2>(y.data(), {3, 4})), argument_error);
  for (float v : y) CHECK(v == -7.f);
}
