// Tests for include/tokmix/blocks/ffn_layer.hpp: the MLP and MoE layers give
// the row-wise mlp_forward / moe_forward results through prefill (dense and
// strided batches) and step, keep no state, save under the stack's prefixes,
// and refuse states of other layers and bad shapes without writing.
#include "tokmix/blocks/ffn_layer.hpp"

#include <cmath>
#include <vector>

#include <catch2/catch.hpp>

#include "support/compare.hpp"

using namespace tokmix;

namespace {

template <class Layer, class Rows>
void check_layer(const Layer& layer, Rows&& rows_ref) {
  const index_t B = 3, L = 5, d = layer.d_model();
  const auto x = tokmix_test::random_floats(static_cast<std::size_t>(B * L * d), 4);
  std::vector<float> want(x.size());
  rows_ref(tensor_view<const float, 2>(x.data(), {B * L, d}), tensor_view<float, 2>(want.data(), {B * L, d}));
  auto st = layer.make_state(B, 16);
  CHECK(st->bytes() == 0);
  CHECK(layer.state_bytes(B, 16) == 0);
  tokmix_test::nan_padded<float> y(x.size());
  layer.prefill(tensor_view<const float, 3>(x.data(), {B, L, d}), tensor_view<float, 3>(y.data(), {B, L, d}), *st);
  TOKMIX_REQUIRE_CLOSE(y.data(), want.data(), want.size(), 1e-6, 1e-6);
  REQUIRE(std::isnan(y.data()[-1]));
  REQUIRE(std::isnan(y.data()[B * L * d]));
  CHECK(st->position() == L);
  // Sequences strided apart (a [B, L+2, d] buffer seen as [B, L, d]).
  std::vector<float> wide(static_cast<std::size_t>(B * (L + 2) * d), 0.f), yw(wide.size(), -3.f);
  for (index_t b = 0; b < B; ++b)
    std::copy(x.begin() + b * L * d, x.begin() + (b + 1) * L * d, wide.begin() + b * (L + 2) * d);
  layer.prefill(tensor_view<const float, 3>(wide.data(), {B, L, d}, {(L + 2) * d, d, 1}),
                tensor_view<float, 3>(yw.data(), {B, L, d}, {(L + 2) * d, d, 1}), *st);
  for (index_t b = 0; b < B; ++b) {
    TOKMIX_REQUIRE_CLOSE(yw.data() + b * (L + 2) * d, want.data() + b * L * d, std::size_t(L * d), 1e-6, 1e-6);
    CHECK(yw[std::size_t(b * (L + 2) * d + L * d)] == -3.f);
  }
  // Steps: token t of every sequence.
  std::vector<float> xt(static_cast<std::size_t>(B * d)), yt(xt.size());
  for (index_t t = 0; t < L; ++t) {
    for (index_t b = 0; b < B; ++b) std::copy(x.begin() + (b * L + t) * d, x.begin() + (b * L + t + 1) * d, xt.begin() + b * d);
    layer.step(tensor_view<const float, 2>(xt.data(), {B, d}), tensor_view<float, 2>(yt.data(), {B, d}), *st);
    for (index_t b = 0; b < B; ++b)
      TOKMIX_REQUIRE_CLOSE(yt.data() + b * d, want.data() + (b * L + t) * d, std::size_t(d), 1e-6, 1e-6);
  }
  CHECK(st->position() == 3 * L);
  // Bad batch, bad width, a state of another kind: nothing written.
  std::fill(yt.begin(), yt.end(), -7.f);
  CHECK_THROWS_AS(layer.step(tensor_view<const float, 2>(xt.data(), {B - 1, d}), tensor_view<float, 2>(yt.data(), {B - 1, d}), *st),
                  argument_error);
  stateless_layer_state other("attention", B);
  CHECK_THROWS_AS(layer.step(tensor_view<const float, 2>(xt.data(), {B, d}), tensor_view<float, 2>(yt.data(), {B, d}), other),
                  argument_error);
  for (float v : yt) CHECK(v == -7.f);
}

}  // namespace

TEST_CASE("ffn layers: MLP and MoE through prefill and step == row-wise forward", "[blocks][ffn_layer]") {
  const auto mw = mlp_weights::random(mlp_config::swiglu(13, 29), 3);
  const mlp_layer mlp(mw, exec_policy::threads(2));
  check_layer(mlp, [&](tensor_view<const float, 2> x, tensor_view<float, 2> y) { mlp_forward(mw, x, y); });
  const auto ew = moe_weights::random(moe_config::mixtral(13, 11, 5, 2), 4);
  const moe_layer moe(ew);
  check_layer(moe, [&](tensor_view<const float, 2> x, tensor_view<float, 2> y) { moe_forward(ew, x, y); });
  named_tensors t;
  mlp.save(t, "layers.3.mixer.");
  CHECK(t.contains("layers.3.mixer.gate_proj.weight"));
  CHECK(t.contains("layers.3.mixer.down_proj.weight"));
  moe.save(t, "layers.4.mixer.");
  CHECK(t.contains("layers.4.mixer.gate.weight"));
  CHECK(t.contains("layers.4.mixer.experts.4.up_proj.weight"));
  const mlp_layer back(mlp_weights::load(t, "layers.3.mixer", mw.config));
  CHECK(back.weights().down.weight == mw.down.weight);
}
