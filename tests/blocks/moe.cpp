// Tests for include/tokmix/blocks/moe.hpp against a float64 mixture of
// experts written from the formula (router, softmax over all experts, top-k
// with lower-index ties, optional renormalisation, weighted sum of expert
// MLPs): odd sizes, Mixtral / Switch settings, ties, one expert taking every
// token, threads, in place, scratch reuse, named tensors, bad inputs.
#include "tokmix/blocks/moe.hpp"

#include <cmath>
#include <cstdint>
#include <vector>

#include <catch2/catch.hpp>

#include "blocks/reference_mlp.hpp"
#include "support/compare.hpp"

using namespace tokmix;

namespace {

struct moe_result {
  std::vector<double> y, logits, weights;
  std::vector<std::int32_t> ids;
};

moe_result moe_ref(const moe_weights& w, const float* x, index_t rows) {
  const moe_config& c = w.config;
  const index_t d = c.d_model(), E = c.n_experts, k = c.top_k;
  moe_result r;
  r.y.assign(static_cast<std::size_t>(rows * d), 0.0);
  for (index_t t = 0; t < rows; ++t) {
    std::vector<double> xr(x + t * d, x + (t + 1) * d), logit(E), p(E);
    double m = -INFINITY, z = 0;
    for (index_t e = 0; e < E; ++e) {
      logit[e] = tokmix_test::mlp_ref::ref_linear(w.router, xr.data(), e);
      m = std::max(m, logit[e]);
    }
    for (index_t e = 0; e < E; ++e) z += std::exp(logit[e] - m);
    for (index_t e = 0; e < E; ++e) p[e] = std::exp(logit[e] - m) / z;
    std::vector<bool> taken(E, false);
    std::vector<std::int32_t> ids;
    std::vector<double> g;
    for (index_t s = 0; s < k; ++s) {
      index_t best = -1;
      for (index_t e = 0; e < E; ++e)
        if (!taken[e] && (best < 0 || p[e] > p[best])) best = e;
      taken[best] = true;
      ids.push_back(static_cast<std::int32_t>(best));
      g.push_back(p[best]);
    }
    double sum = 0;
    for (double v : g) sum += v;
    if (c.normalize_topk)
      for (double& v : g) v /= sum;
    for (index_t s = 0; s < k; ++s) {
      const auto ye = tokmix_test::mlp_ref::mlp_row(w.experts[ids[s]], xr);
      for (index_t o = 0; o < d; ++o) r.y[t * d + o] += g[s] * ye[o];
    }
    r.logits.insert(r.logits.end(), logit.begin(), logit.end());
    r.ids.insert(r.ids.end(), ids.begin(), ids.end());
    r.weights.insert(r.weights.end(), g.begin(), g.end());
  }
  return r;
}

struct moe_out {
  std::vector<float> y, logits, weights;
  std::vector<std::int32_t> ids;
};

moe_out run_moe(const moe_weights& w, const std::vector<float>& x, index_t rows, const exec_policy& pol) {
  const index_t d = w.config.d_model(), E = w.config.n_experts, k = w.config.top_k;
  moe_out o;
  tokmix_test::nan_padded<float> y(static_cast<std::size_t>(rows * d));
  o.logits.assign(static_cast<std::size_t>(rows * E), NAN);
  o.weights.assign(static_cast<std::size_t>(rows * k), NAN);
  o.ids.assign(static_cast<std::size_t>(rows * k), -1);
  moe_params p;
  p.policy = pol;
  p.router_logits = tensor_view<float, 2>(o.logits.data(), {rows, E});
  p.topk_weights = tensor_view<float, 2>(o.weights.data(), {rows, k});
  p.topk_experts = tensor_view<std::int32_t, 2>(o.ids.data(), {rows, k});
  moe_forward(w, tensor_view<const float, 2>(x.data(), {rows, d}), tensor_view<float, 2>(y.data(), {rows, d}), p);
  REQUIRE(std::isnan(y.data()[-1]));
  REQUIRE(std::isnan(y.data()[rows * d]));
  o.y.assign(y.data(), y.data() + rows * d);
  return o;
}

void check_against_ref(const moe_weights& w, const std::vector<float>& x, index_t rows) {
  const auto want = moe_ref(w, x.data(), rows);
  std::vector<float> serial_y;
  std::vector<std::int32_t> serial_ids;
  for (int threads : {1, 2}) {
    CAPTURE(threads);
    const auto got = run_moe(w, x, rows, threads == 1 ? exec_policy::serial() : exec_policy::threads(threads));
    TOKMIX_REQUIRE_CLOSE(got.logits.data(), want.logits.data(), want.logits.size(), 1e-5, 1e-5);
    REQUIRE(got.ids == want.ids);
    TOKMIX_REQUIRE_CLOSE(got.weights.data(), want.weights.data(), want.weights.size(), 1e-6, 1e-5);
    TOKMIX_REQUIRE_CLOSE(got.y.data(), want.y.data(), want.y.size(), 2e-5, 2e-5);
    if (threads == 1) {
      serial_y = got.y;
      serial_ids = got.ids;
    } else {
      REQUIRE(got.ids == serial_ids);
      TOKMIX_REQUIRE_CLOSE(got.y.data(), serial_y.data(), serial_y.size(), 1e-6, 1e-6);
    }
  }
}

}  // namespace

TEST_CASE("moe: top-k mixture == float64, odd sizes, Mixtral and unnormalised weights", "[blocks][moe]") {
  const index_t lane = simd::lanes<simd::default_arch>;
  struct shape {
    index_t d, h, E, k, rows;
  };
  const shape shapes[] = {{1, 3, 1, 1, 4}, {7, 5, 3, 2, 9}, {lane + 1, 24, 8, 2, 300}, {130, 40, 5, 5, 20}, {16, 8, 8, 3, 1}};
  for (const auto& s : shapes)
    for (bool normalize : {true, false})
      for (bool gated : {true, false}) {
        CAPTURE(s.d, s.h, s.E, s.k, s.rows, normalize, gated);
        moe_config c;
        c.n_experts = s.E;
        c.top_k = s.k;
        c.normalize_topk = normalize;
        c.router_bias = !gated;
        c.expert = gated ? mlp_config::swiglu(s.d, s.h) : mlp_config::plain(s.d, s.h, mlp_activation::gelu_tanh);
        const auto w = moe_weights::random(c, 100 + s.d + s.E);
        const auto x = tokmix_test::random_floats(static_cast<std::size_t>(s.rows * s.d), unsigned(s.rows * 3 + s.d), -2.f, 2.f);
        check_against_ref(w, x, s.rows);
      }
}

TEST_CASE("moe: Switch top-1 scales by the router probability", "[blocks][moe]") {
  const auto w = moe_weights::random(moe_config::switch_top1(9, 12, 4), 8);
  const index_t rows = 33;
  const auto x = tokmix_test::random_floats(static_cast<std::size_t>(rows * 9), 4, -3.f, 3.f);
  check_against_ref(w, x, rows);
  const auto got = run_moe(w, x, rows, exec_policy::serial());
  for (index_t r = 0; r < rows; ++r) {
    CHECK(got.weights[r] > 0.25f);  // the largest of 4 probabilities, not renormalised to 1
    CHECK(got.weights[r] < 1.f);
  }
}

TEST_CASE("moe: ties go to the lower expert index", "[blocks][moe]") {
  auto c = moe_config::mixtral(6, 10, 5, 2);
  auto w = moe_weights::random(c, 3);
  const index_t rows = 7;
  const auto x = tokmix_test::random_floats(static_cast<std::size_t>(rows * 6), 5, 0.5f, 1.f);  // positive inputs
  // A zero router: every probability 1/5, so the choice is experts 0 and 1, weights 1/2.
  w.router.weight.setZero();
  auto got = run_moe(w, x, rows, exec_policy::serial());
  for (index_t r = 0; r < rows; ++r) {
    CHECK(got.ids[r * 2] == 0);
    CHECK(got.ids[r * 2 + 1] == 1);
    CHECK(got.weights[r * 2] == 0.5f);
  }
  check_against_ref(w, x, rows);
  // Experts 3 and 1 share the largest router row (and 4 is just below), so their logits are equal.
  w.router.weight.row(3).setConstant(1.f);
  w.router.weight.row(1).setConstant(1.f);
  w.router.weight.row(4).setConstant(0.5f);
  got = run_moe(w, x, rows, exec_policy::threads(2));
  for (index_t r = 0; r < rows; ++r) {
    CHECK(got.logits[r * 5 + 1] == got.logits[r * 5 + 3]);
    CHECK(got.ids[r * 2] == 1);
    CHECK(got.ids[r * 2 + 1] == 3);
    CHECK(got.weights[r * 2] == got.weights[r * 2 + 1]);
  }
  check_against_ref(w, x, rows);
}

TEST_CASE("moe: one expert takes every token over several blocks; in place; scratch reused", "[blocks][moe]") {
  moe_config c = moe_config::mixtral(10, 14, 6, 1);
  c.router_bias = true;
  auto w = moe_weights::random(c, 21);
  w.router.bias.setZero();
  w.router.bias[4] = 50.f;  // expert 4 wins every token
  const index_t rows = 2 * detail::moe_expert_rows + 45;
  const auto x = tokmix_test::random_floats(static_cast<std::size_t>(rows * 10), 6, -1.f, 1.f);
  check_against_ref(w, x, rows);
  const auto ref = run_moe(w, x, rows, exec_policy::threads(2));
  for (index_t r = 0; r < rows; ++r) REQUIRE(ref.ids[r] == 4);
  // Three items for one expert and two workers: the same bits as serial.
  CHECK(run_moe(w, x, rows, exec_policy::serial()).y == ref.y);
  for (int threads : {1, 2}) {
    const exec_policy pol = threads == 1 ? exec_policy::serial() : exec_policy::threads(threads);
    std::vector<float> z = x;
    moe_params p;
    p.policy = pol;
    moe_forward(w, tensor_view<const float, 2>(z.data(), {rows, 10}), tensor_view<float, 2>(z.data(), {rows, 10}), p);
    REQUIRE(z == ref.y);
    // Another routing of the same size: the arena does not grow.
    const std::size_t grown = scratch_arena::local().growth_count();
    w.router.bias[4] = 0.f;
    std::vector<float> y(x.size());
    moe_forward(w, tensor_view<const float, 2>(x.data(), {rows, 10}), tensor_view<float, 2>(y.data(), {rows, 10}), p);
    moe_forward(w, tensor_view<const float, 2>(x.data(), {3, 10}), tensor_view<float, 2>(y.data(), {3, 10}), p);
    CHECK(scratch_arena::local().growth_count() == grown);
    w.router.bias[4] = 50.f;
  }
}

TEST_CASE("moe: save and load with Mixtral names", "[blocks][moe]") {
  const auto c = moe_config::mixtral(8, 12, 3, 2);
  const auto w = moe_weights::random(c, 77);
  named_tensors t;
  w.save(t, "model.layers.1.block_sparse_moe", moe_names::mixtral());
  CHECK(t.size() == 1 + 3 * 3);
  CHECK(t.contains("model.layers.1.block_sparse_moe.gate.weight"));
  CHECK(t.contains("model.layers.1.block_sparse_moe.experts.2.w3.weight"));
  CHECK(t.at("model.layers.1.block_sparse_moe.experts.0.w2.weight").shape == std::vector<index_t>{8, 12});
  const auto back = moe_weights::load(t, "model.layers.1.block_sparse_moe", c, moe_names::mixtral());
  CHECK(t.names_not_in(back.tensor_names("model.layers.1.block_sparse_moe", moe_names::mixtral())).empty());
  const auto x = tokmix_test::random_floats(5 * 8, 2);
  CHECK(run_moe(w, x, 5, exec_policy::serial()).y == run_moe(back, x, 5, exec_policy::serial()).y);
  CHECK_THROWS_AS(w.save(t, "model.layers.1.block_sparse_moe", moe_names::mixtral()), argument_error);
  CHECK(t.size() == 10);
  // Default (Qwen-MoE style) names are not in this file.
  CHECK_THROWS_AS(moe_weights::load(t, "model.layers.1.block_sparse_moe", c), argument_error);
}

TEST_CASE("moe: bad inputs throw argument_error and write nothing", "[blocks][moe]") {
  const auto w = moe_weights::random(moe_config::mixtral(8, 6, 4, 2), 1);
  std::vector<float> x(3 * 8, 1.f), y(3 * 8, -7.f), logits(3 * 4, -7.f), weights(3 * 2, -7.f);
  std::vector<std::int32_t> ids(3 * 2, -7);
  const tensor_view<const float, 2> xv(x.data(), {3, 8});
  const tensor_view<float, 2> yv(y.data(), {3, 8});
  auto expect_arg = [&](auto&& call, const std::string& argument) {
    try {
      call();
      FAIL("accepted");
    } catch (const argument_error& e) {
      CHECK(e.argument() == argument);
    }
  };
  moe_params p;
  p.router_logits = tensor_view<float, 2>(logits.data(), {3, 4});
  p.topk_weights = tensor_view<float, 2>(weights.data(), {3, 2});
  p.topk_experts = tensor_view<std::int32_t, 2>(ids.data(), {3, 2});
  expect_arg([&] { moe_forward(w, tensor_view<const float, 2>(x.data(), {4, 6}), yv, p); }, "x");
  expect_arg([&] { moe_forward(w, xv, tensor_view<float, 2>(y.data(), {2, 8}), p); }, "y");
  moe_params q = p;
  q.router_logits = tensor_view<float, 2>(logits.data(), {3, 3});
  expect_arg([&] { moe_forward(w, xv, yv, q); }, "router_logits");
  q = p;
  q.topk_experts = tensor_view<std::int32_t, 2>(ids.data(), {3, 1});
  expect_arg([&] { moe_forward(w, xv, yv, q); }, "topk_experts");
  q = p;
  q.topk_weights = tensor_view<float, 2>(weights.data(), {2, 2});
  expect_arg([&] { moe_forward(w, xv, yv, q); }, "topk_weights");
  moe_weights bad = w;
  bad.config.top_k = 5;
  expect_arg([&] { moe_forward(bad, xv, yv, p); }, "moe top_k");
  bad = w;
  bad.experts.pop_back();
  expect_arg([&] { moe_forward(bad, xv, yv, p); }, "moe experts");
  bad = w;
  bad.router = linear_weights::random(8, 3, false, 1);
  expect_arg([&] { moe_forward(bad, xv, yv, p); }, "moe router");
  bad = w;
  bad.experts[2] = mlp_weights::random(mlp_config::swiglu(8, 7), 1);
  expect_arg([&] { moe_forward(bad, xv, yv, p); }, "moe expert config");
  expect_arg([&] { moe_weights::random(moe_config::mixtral(8, 6, 0, 1), 1); }, "moe n_experts");
  expect_arg([&] { moe_weights::random(moe_config::mixtral(8, 6, 4, 0), 1); }, "moe top_k");
  for (float v : y) CHECK(v == -7.f);
  for (float v : logits) CHECK(v == -7.f);
  for (float v : weights) CHECK(v == -7.f);
  for (auto v : ids) CHECK(v == -7);
}
