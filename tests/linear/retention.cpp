// Retention against the float64 recurrence and RetNet's quadratic masked form
// (Q K^T . D) V: chunked == token loop == steps == parallel; default and custom
// decays, chained prefills, packed batches, threads, L = 65536 with gamma near
// 0 and near 1; grouped kv heads (decay per kv head); bad inputs throw and
// write nothing.

#include "tokmix/linear/retention.hpp"

#include <cmath>
#include <limits>
#include <vector>

#include "linear/reference_recurrence.hpp"
#include "support/compare.hpp"

using namespace tokmix;
using namespace tokmix_test::recurrence_ref;

TEST_CASE("retention: chunked, token loop and steps match the float64 recurrence", "[linear][retention]") {
  sweep(kind::retention, gates::mild, 2e-5);   // RetNet default decays
  sweep(kind::retention, gates::strong, 2e-5); // gamma = 0.5
}

TEST_CASE("retention: the recurrence equals the quadratic masked form", "[linear][retention]") {
  for (std::size_t L : {1, 7, 65, 130}) {
    const problem p = make_problem(kind::retention, 2, L, 3, 33, 20, unsigned(L));
    const std::vector<float> S0 = random_state(p, 3);
    std::vector<double> Sr = to_double(S0), orec, opar;
    recurrent(p, Sr, orec);
    retention_parallel(p, to_double(S0), opar);
    CHECK(scaled_error(orec, opar) <= 1e-12);
    std::vector<float> S = S0;
    const std::vector<float> o = run(p, S, {mode::chunk, 16, {}});
    CHECK(scaled_error(o, opar) <= 2e-5);
  }
}

TEST_CASE("retention: default decays are RetNet's 1 - 2^(-5-h)", "[linear][retention]") {
  CHECK(retention_default_gamma(0) == 1.0 - 1.0 / 32);
  CHECK(retention_default_gamma(3) == 1.0 - 1.0 / 256);
}

TEST_CASE("retention: chained prefills, steps after a prefill", "[linear][retention]") {
  chaining(kind::retention, gates::mild, 1e-5);
}

TEST_CASE("retention: L = 1000, packed sequences, threads", "[linear][retention]") {
  const problem p = make_problem(kind::retention, 1, 1000, 4, 32, 32, 5);
  check_mode(p, {mode::chunk, 64, {}}, 5e-5);
  varlen(kind::retention, 2e-5);
  threads_match(kind::retention);
}

TEST_CASE("retention: L = 65536 with gamma near 0 and near 1 stays finite", "[linear][retention]") {
  long_sequence(kind::retention, gates::near_zero, 1e-5);
  long_sequence(kind::retention, gates::near_one, 2e-4);
}

TEST_CASE("retention: bad inputs throw and write nothing", "[linear][retention]") {
  const index_t B = 1, L = 5, H = 2, dk = 4, dv = 3;
  std::vector<float> q(std::size_t(B * L * H * dk), 0.5f), k = q, v(std::size_t(B * L * H * dv), 1.f);
  std::vector<float> o(v.size(), 7.f);
  retention_state st(B, H, dk, dv);
  st.S().data()[0] = 3.f;
  auto V4 = [](std::vector<float>& x, index_t d) { return tensor_view<const float, 4>(x.data(), {1, 5, 2, d}); };
  const tensor_view<float, 4> ov(o.data(), {B, L, H, dv});
  retention_params prm;
  prm.chunk_size = 0;
  CHECK_THROWS_AS(retention_chunk_prefill(V4(q, dk), V4(k, dk), V4(v, dv), ov, st, prm), argument_error);
  prm.chunk_size = 3;
  std::vector<float> gamma = {0.9f, 0.f};
  prm.gamma = tensor_view<const float, 1>(gamma.data(), {2});
  CHECK_THROWS_AS(retention_chunk_prefill(V4(q, dk), V4(k, dk), V4(v, dv), ov, st, prm), argument_error);
  gamma[1] = 1.5f;
  CHECK_THROWS_AS(retention_recurrent_prefill(V4(q, dk), V4(k, dk), V4(v, dv), ov, st, prm), argument_error);
  gamma[1] = std::numeric_limits<float>::quiet_NaN();
  CHECK_THROWS_AS(retention_chunk_prefill(V4(q, dk), V4(k, dk), V4(v, dv), ov, st, prm), argument_error);
  prm.gamma = tensor_view<const float, 1>(gamma.data(), {1});
  CHECK_THROWS_AS(retention_chunk_prefill(V4(q, dk), V4(k, dk), V4(v, dv), ov, st, prm), argument_error);
  prm.gamma = {};
  CHECK_THROWS_AS(retention_chunk_prefill(V4(q, dk), V4(k, dk + 1), V4(v, dv), ov, st, prm), argument_error);
  std::vector<std::int32_t> cu = {0, 2, 4};  // does not end at seq
  prm.cu_seqlens = tensor_view<const std::int32_t, 1>(cu.data(), {3});
  CHECK_THROWS_AS(retention_chunk_prefill(V4(q, dk), V4(k, dk), V4(v, dv), ov, st, prm), argument_error);
  for (float x : o) CHECK(x == 7.f);
  CHECK(st.S().data()[0] == 3.f);
}

TEST_CASE("retention: grouped heads (GQA, MQA) equal the ungrouped mixer on repeated k, v, decays",
          "[linear][retention][grouped]") {
  grouped(kind::retention, gates::mild, 2e-5);    // RetNet default over the kv heads
  grouped(kind::retention, gates::strong, 2e-5);  // gamma given per kv head
}

TEST_CASE("retention: grouped heads match the quadratic masked form", "[linear][retention][grouped]") {
  const problem p = make_problem(kind::retention, 2, 65, 6, 24, 40, 71, gates::mild, 2);
  const std::vector<float> S0 = random_state(p, 4);
  std::vector<double> opar;
  retention_parallel(p, to_double(S0), opar);
  std::vector<float> S = S0;
  CHECK(scaled_error(run(p, S, {mode::chunk, 16, {}}), opar) <= 2e-5);
}

TEST_CASE("retention: grouped heads that don't divide, a decay per query head, throw and write nothing",
          "[linear][retention][grouped]") {
  grouped_errors(kind::retention);
}
