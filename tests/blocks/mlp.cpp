// Tests for include/tokmix/blocks/mlp.hpp against float64 MLPs written from
// the formulas (SwiGLU / GeGLU / ReGLU and the plain two-layer MLP): odd
// sizes, strided rows, NaN-padded outputs, threads, in place, row chunks,
// scratch reuse, named-tensor round trips and bad inputs that write nothing.
#include "tokmix/blocks/mlp.hpp"

#include <cmath>
#include <vector>

#include <catch2/catch.hpp>

#include "blocks/reference_mlp.hpp"
#include "support/compare.hpp"

using namespace tokmix;
using tokmix_test::mlp_ref::mlp_ref;

namespace {

const mlp_activation all_acts[] = {mlp_activation::silu, mlp_activation::gelu_tanh, mlp_activation::gelu_erf,
                                   mlp_activation::relu};

struct size_case {
  index_t d, h, rows;
};

}  // namespace

TEST_CASE("mlp: gated and plain MLPs == float64, odd sizes, strides, threads", "[blocks][mlp]") {
  const index_t lane = simd::lanes<simd::default_arch>;
  const size_case sizes[] = {{1, 1, 1}, {7, 5, 3}, {lane + 1, 33, 70}, {130, 96, 150}, {16, 300, 2}};
  for (mlp_activation act : all_acts)
    for (bool gated : {true, false})
      for (bool bias : {false, true})
        for (const auto& sz : sizes) {
          CAPTURE(mlp_activation_name(act), gated, bias, sz.d, sz.h, sz.rows);
          const mlp_config cfg{sz.d, sz.h, act, gated, bias};
          const auto w = mlp_weights::random(cfg, 7 + sz.d * 3 + sz.h);
          const index_t ldx = sz.d + 5;
          // Inputs of a few units so the gelus and silu see their curved part.
          const auto xb = tokmix_test::random_floats(static_cast<std::size_t>(sz.rows * ldx), unsigned(sz.rows + sz.d), -3.f, 3.f);
          const auto want = mlp_ref(w, xb.data(), sz.rows, ldx);
          std::vector<float> serial;
          for (int threads : {1, 2}) {
            tokmix_test::nan_padded<float> y(static_cast<std::size_t>(sz.rows * sz.d));
            mlp_forward(w, tensor_view<const float, 2>(xb.data(), {sz.rows, sz.d}, {ldx, 1}),
                        tensor_view<float, 2>(y.data(), {sz.rows, sz.d}),
                        threads == 1 ? exec_policy::serial() : exec_policy::threads(threads));
            TOKMIX_REQUIRE_CLOSE(y.data(), want.data(), want.size(), 2e-5, 2e-5);
            REQUIRE(std::isnan(y.data()[-1]));
            REQUIRE(std::isnan(y.data()[sz.rows * sz.d]));
            if (threads == 1) serial.assign(y.data(), y.data() + want.size());
            else TOKMIX_REQUIRE_CLOSE(y.data(), serial.data(), serial.size(), 1e-6, 1e-6);
          }
        }
}

TEST_CASE("mlp: more rows than one chunk, in place, scratch reused", "[blocks][mlp]") {
  const auto w = mlp_weights::random(mlp_config::swiglu(24, 40), 5);
  const index_t rows = detail::mlp_row_chunk * 2 + 37;
  const auto xb = tokmix_test::random_floats(static_cast<std::size_t>(rows * 24), 9, -2.f, 2.f);
  const auto want = mlp_ref(w, xb.data(), rows, 24);
  for (int threads : {1, 2}) {
    const exec_policy pol = threads == 1 ? exec_policy::serial() : exec_policy::threads(threads);
    std::vector<float> y(xb.size(), -1.f);
    mlp_forward(w, tensor_view<const float, 2>(xb.data(), {rows, 24}), tensor_view<float, 2>(y.data(), {rows, 24}), pol);
    TOKMIX_REQUIRE_CLOSE(y.data(), want.data(), want.size(), 2e-5, 2e-5);
    // In place: y is x.
    std::vector<float> z = xb;
    mlp_forward(w, tensor_view<const float, 2>(z.data(), {rows, 24}), tensor_view<float, 2>(z.data(), {rows, 24}), pol);
    REQUIRE(z == y);
    // Same size again: the arena does not grow.
    const std::size_t grown = scratch_arena::local().growth_count();
    mlp_forward(w, tensor_view<const float, 2>(xb.data(), {rows, 24}), tensor_view<float, 2>(y.data(), {rows, 24}), pol);
    mlp_forward(w, tensor_view<const float, 2>(xb.data(), {1, 24}), tensor_view<float, 2>(y.data(), {1, 24}), pol);
    CHECK(scratch_arena::local().growth_count() == grown);
  }
  // Zero rows is a no-op.
  mlp_forward(w, tensor_view<const float, 2>(xb.data(), {0, 24}), tensor_view<float, 2>(nullptr, {0, 24}));
}

TEST_CASE("mlp: save and load by Llama names, custom names, random is seeded", "[blocks][mlp]") {
  const mlp_config cfg = mlp_config::geglu(12, 20, true);
  const auto w = mlp_weights::random(cfg, 42);
  const auto again = mlp_weights::random(cfg, 42);
  CHECK(w.gate.weight == again.gate.weight);
  CHECK(w.down.weight == again.down.weight);
  CHECK(w.gate.weight != w.up.weight);  // independent sub-streams
  named_tensors t;
  w.save(t, "model.layers.0.mlp");
  CHECK(t.names() == std::vector<std::string>{"model.layers.0.mlp.down_proj.weight", "model.layers.0.mlp.gate_proj.weight",
                                              "model.layers.0.mlp.up_proj.weight"});
  CHECK(t.at("model.layers.0.mlp.gate_proj.weight").shape == std::vector<index_t>{20, 12});
  CHECK(t.at("model.layers.0.mlp.down_proj.weight").shape == std::vector<index_t>{12, 20});
  const auto back = mlp_weights::load(t, "model.layers.0.mlp", cfg);
  CHECK(back.gate.weight == w.gate.weight);
  CHECK(back.up.weight == w.up.weight);
  CHECK(back.down.weight == w.down.weight);
  CHECK(t.names_not_in(back.tensor_names("model.layers.0.mlp")).empty());
  // Saving twice adds nothing the second time.
  CHECK_THROWS_AS(w.save(t, "model.layers.0.mlp"), argument_error);
  CHECK(t.size() == 3);
  // Wrong hidden size: the tensor is named in the error.
  try {
    mlp_weights::load(t, "model.layers.0.mlp", mlp_config::geglu(12, 21, true));
    FAIL("wrong shape accepted");
  } catch (const argument_error& e) {
    CHECK(e.argument() == "tensor 'model.layers.0.mlp.gate_proj.weight'");
  }
  CHECK_THROWS_AS(mlp_weights::load(t, "other", cfg), argument_error);

  // timm-style plain MLP: fc1 / fc2 with biases.
  const mlp_config plain = mlp_config::plain(8, 32, mlp_activation::gelu_erf);
  const auto p = mlp_weights::random(plain, 3);
  const mlp_names timm{"", "fc1", "fc2"};
  named_tensors pt;
  p.save(pt, "blocks.0.mlp", timm);
  CHECK(pt.names() == std::vector<std::string>{"blocks.0.mlp.fc1.bias", "blocks.0.mlp.fc1.weight", "blocks.0.mlp.fc2.bias",
                                               "blocks.0.mlp.fc2.weight"});
  const auto pb = mlp_weights::load(pt, "blocks.0.mlp", plain, timm);
  const auto xb = tokmix_test::random_floats(5 * 8, 1);
  std::vector<float> y1(5 * 8), y2(5 * 8);
  mlp_forward(p, tensor_view<const float, 2>(xb.data(), {5, 8}), tensor_view<float, 2>(y1.data(), {5, 8}));
  mlp_forward(pb, tensor_view<const float, 2>(xb.data(), {5, 8}), tensor_view<float, 2>(y2.data(), {5, 8}));
  CHECK(y1 == y2);
}

TEST_CASE("mlp: bad inputs throw argument_error and write nothing", "[blocks][mlp]") {
  const auto w = mlp_weights::random(mlp_config::swiglu(8, 16), 1);
  std::vector<float> x(3 * 8, 1.f), y(3 * 8, -7.f);
  const tensor_view<const float, 2> xv(x.data(), {3, 8});
  const tensor_view<float, 2> yv(y.data(), {3, 8});
  auto expect_arg = [&](auto&& call, const std::string& argument) {
    try {
      call();
      FAIL("accepted");
    } catch (const argument_error& e) {
      CHECK(e.argument() == argument);
      CHECK(!e.expected().empty());
      CHECK(!e.actual().empty());
    }
  };
  expect_arg([&] { mlp_forward(w, tensor_view<const float, 2>(x.data(), {4, 6}), yv); }, "x");
  expect_arg([&] { mlp_forward(w, xv, tensor_view<float, 2>(y.data(), {2, 8})); }, "y");
  expect_arg([&] { mlp_forward(w, tensor_view<const float, 2>(x.data(), {3, 4}, {8, 2}), yv); }, "x");
  expect_arg([&] { mlp_forward(w, tensor_view<const float, 2>(y.data(), {3, 8}, {0, 1}), yv); }, "y");
  mlp_weights bad = w;
  bad.up = linear_weights::random(8, 15, false, 2);
  expect_arg([&] { mlp_forward(bad, xv, yv); }, "mlp up (W3)");
  bad = w;
  bad.config.bias = true;
  expect_arg([&] { mlp_forward(bad, xv, yv); }, "mlp gate (W1)");
  bad = w;
  bad.config.gated = false;
  expect_arg([&] { mlp_forward(bad, xv, yv); }, "mlp gate (W1)");
  expect_arg([&] { mlp_weights::random(mlp_config::swiglu(0, 4), 1); }, "mlp d_model");
  expect_arg([&] { mlp_weights::random(mlp_config::swiglu(4, 0), 1); }, "mlp hidden");
  for (float v : y) CHECK(v == -7.f);
  named_tensors t;
  expect_arg([&] { bad.save(t, "m"); }, "mlp gate (W1)");
  CHECK(t.empty());
}
