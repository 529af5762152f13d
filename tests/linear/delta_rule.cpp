// DeltaNet and gated DeltaNet against the float64 delta rule: the chunked
// WY/UT prefill, the token loop and steps; with and without the in-kernel L2
// norm; chained prefills, packed batches, threads; L = 65536 with decays near
// 0 and near 1; grouped kv heads (GQA, MQA); bad inputs (beta outside [0, 1],
// non-finite gates, heads that don't divide) throw and write nothing.

#include "tokmix/linear/delta_rule.hpp"

#include <cmath>
#include <limits>
#include <vector>

#include "linear/reference_recurrence.hpp"
#include "support/compare.hpp"

using namespace tokmix;
using namespace tokmix_test::recurrence_ref;

TEST_CASE("delta rule: chunked, token loop and steps match the float64 recurrence", "[linear][delta_rule]") {
  sweep(kind::delta, gates::mild, 5e-5);
}

TEST_CASE("gated delta rule: chunked, token loop and steps match", "[linear][delta_rule]") {
  sweep(kind::gated_delta, gates::mild, 5e-5);
  sweep(kind::gated_delta, gates::strong, 5e-5);
}

TEST_CASE("delta rule: without the in-kernel L2 norm, explicit scale", "[linear][delta_rule]") {
  for (kind k : {kind::delta, kind::gated_delta}) {
    problem p = make_problem(k, 2, 100, 2, 40, 24, 17);
    p.l2norm = false;
    p.scale = 0.3f;
    // Keys of norm <= 1 keep I - beta k k^T a contraction, as the model's normalised keys do.
    for (float& x : p.key) x /= std::sqrt(float(p.dk));
    for (tokmix::index_t c : {1, 16, 64}) check_mode(p, {mode::chunk, c, {}}, 5e-5);
    check_mode(p, {mode::step, 64, {}}, 5e-5);
  }
}

TEST_CASE("delta rule: chained prefills, steps after a prefill", "[linear][delta_rule]") {
  chaining(kind::delta, gates::mild, 2e-5);
  chaining(kind::gated_delta, gates::strong, 2e-5);
}

TEST_CASE("delta rule: L = 1000, packed sequences, threads", "[linear][delta_rule]") {
  const problem p = make_problem(kind::gated_delta, 1, 1000, 2, 64, 64, 5);
  check_mode(p, {mode::chunk, 64, {}}, 1e-4);
  varlen(kind::delta, 5e-5);
  varlen(kind::gated_delta, 5e-5);
  threads_match(kind::delta);
  threads_match(kind::gated_delta);
}

TEST_CASE("delta rule: L = 65536 with decays near 0 and near 1 stays finite", "[linear][delta_rule]") {
  long_sequence(kind::delta, gates::mild, 1e-4);
  long_sequence(kind::gated_delta, gates::near_zero, 1e-5);
  long_sequence(kind::gated_delta, gates::near_one, 1e-4);
}

TEST_CASE("delta rule: bad inputs throw and write nothing", "[linear][delta_rule]") {
  const index_t B = 1, L = 5, H = 2, dk = 4, dv = 3;
  std::vector<float> q(std::size_t(B * L * H * dk), 0.5f), k = q, v(std::size_t(B * L * H * dv), 1.f);
  std::vector<float> beta(std::size_t(B * L * H), 0.5f), g(beta.size(), -0.1f);
  std::vector<float> o(v.size(), 7.f);
  delta_rule_state st(B, H, dk, dv);
  st.S().data()[0] = 3.f;
  auto V4 = [](std::vector<float>& x, index_t d) { return tensor_view<const float, 4>(x.data(), {1, 5, 2, d}); };
  auto V3 = [](std::vector<float>& x) { return tensor_view<const float, 3>(x.data(), {1, 5, 2}); };
  const tensor_view<float, 4> ov(o.data(), {B, L, H, dv});
  delta_rule_params prm;
  prm.chunk_size = 0;
  CHECK_THROWS_AS(delta_rule_chunk_prefill(V4(q, dk), V4(k, dk), V4(v, dv), V3(beta), ov, st, prm), argument_error);
  prm.chunk_size = 2;
  for (float bad : {-0.1f, 1.5f, std::numeric_limits<float>::quiet_NaN()}) {
    beta[3] = bad;
    CHECK_THROWS_AS(delta_rule_chunk_prefill(V4(q, dk), V4(k, dk), V4(v, dv), V3(beta), ov, st, prm), argument_error);
    CHECK_THROWS_AS(gated_delta_rule_recurrent_prefill(V4(q, dk), V4(k, dk), V4(v, dv), V3(g), V3(beta), ov, st, prm),
                    argument_error);
  }
  beta[3] = 0.5f;
  for (float bad : {std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(), 0.25f}) {
    g[4] = bad;
    CHECK_THROWS_AS(gated_delta_rule_chunk_prefill(V4(q, dk), V4(k, dk), V4(v, dv), V3(g), V3(beta), ov, st, prm),
                    argument_error);
  }
  g[4] = -0.1f;
  CHECK_THROWS_AS(gated_delta_rule_chunk_prefill(V4(q, dk), V4(k, dk), V4(v, dv), tensor_view<const float, 3>(),
                                                 V3(beta), ov, st, prm),
                  argument_error);
  CHECK_THROWS_AS(delta_rule_chunk_prefill(V4(q, dk), V4(k, dk), V4(v, dv),
                                           tensor_view<const float, 3>(beta.data(), {1, 5, 1}), ov, st, prm),
                  argument_error);
  prm.l2norm_eps = -1.f;
  CHECK_THROWS_AS(delta_rule_chunk_prefill(V4(q, dk), V4(k, dk), V4(v, dv), V3(beta), ov, st, prm), argument_error);
  for (float x : o) CHECK(x == 7.f);
  CHECK(st.S().data()[0] == 3.f);
}

TEST_CASE("delta rule: grouped heads (GQA, MQA) equal the ungrouped rule on repeated k, v, beta",
          "[linear][delta_rule][grouped]") {
  grouped(kind::delta, gates::mild, 5e-5);
}

TEST_CASE("gated delta rule: grouped heads (GQA, MQA) equal the ungrouped rule on repeated k, v, g, beta",
          "[linear][delta_rule][grouped]") {
  grouped(kind::gated_delta, gates::mild, 5e-5);
  grouped(kind::gated_delta, gates::strong, 5e-5);
}

TEST_CASE("delta rule: grouped heads that don't divide, beta per query head, throw and write nothing",
          "[linear][delta_rule][grouped]") {
  grouped_errors(kind::delta);
  grouped_errors(kind::gated_delta);
}
