// GLA against the float64 recurrence: chunked (chunk sizes that do and do not
// divide L), token loop and steps; chained prefills; packed batches; threads;
// L = 65536 with gates near 0 and near 1 (chunk splitting keeps every exp in
// range); grouped kv heads (GQA, MQA) against the ungrouped mixer on repeated
// k, v, g; bad inputs throw and write nothing.

#include "tokmix/linear/gla.hpp"

#include <cmath>
#include <limits>
#include <vector>

#include "linear/reference_recurrence.hpp"
#include "support/compare.hpp"

using namespace tokmix;
using namespace tokmix_test::recurrence_ref;

TEST_CASE("gla: chunked, token loop and steps match the float64 recurrence", "[linear][gla]") {
  sweep(kind::gla, gates::mild, 2e-5);
}

TEST_CASE("gla: strong gates split chunks and still match", "[linear][gla]") {
  sweep(kind::gla, gates::strong, 2e-5);
}

TEST_CASE("gla: chained prefills, steps after a prefill", "[linear][gla]") {
  chaining(kind::gla, gates::mild, 1e-5);
  chaining(kind::gla, gates::strong, 1e-5);
}

TEST_CASE("gla: L = 1000, several heads", "[linear][gla]") {
  const problem p = make_problem(kind::gla, 1, 1000, 3, 32, 48, 909);
  check_mode(p, {mode::chunk, 64, {}}, 5e-5);
  check_mode(p, {mode::chunk, 48, {}}, 5e-5);
}

TEST_CASE("gla: packed sequences and threads", "[linear][gla]") {
  varlen(kind::gla, 2e-5);
  threads_match(kind::gla);
}

TEST_CASE("gla: L = 65536 with extreme gates stays finite", "[linear][gla]") {
  long_sequence(kind::gla, gates::near_zero, 1e-5);
  long_sequence(kind::gla, gates::near_one, 2e-4);
  long_sequence(kind::gla, gates::strong, 1e-5);
}

TEST_CASE("gla: a non-dense [B, H, L, D] layout", "[linear][gla]") {
  const index_t B = 2, L = 37, H = 3, D = 16;
  const problem p = make_problem(kind::gla, std::size_t(B), std::size_t(L), std::size_t(H), std::size_t(D),
                                 std::size_t(D), 31);
  // The same data stored [B, H, L, D].
  auto to_bhld = [&](const std::vector<float>& x) {
    std::vector<float> y(x.size());
    for (index_t b = 0; b < B; ++b)
      for (index_t t = 0; t < L; ++t)
        for (index_t h = 0; h < H; ++h)
          for (index_t d = 0; d < D; ++d) y[std::size_t(((b * H + h) * L + t) * D + d)] = x[std::size_t(((b * L + t) * H + h) * D + d)];
    return y;
  };
  const auto q = to_bhld(p.q), k = to_bhld(p.key), v = to_bhld(p.v), g = to_bhld(p.g);
  std::vector<float> o(q.size(), 0.f);
  gla_state st(B, H, D, D);
  gla_params prm;
  prm.chunk_size = 16;
  gla_chunk_prefill(view_from_bhld(q.data(), B, H, L, D), view_from_bhld(k.data(), B, H, L, D),
                    view_from_bhld(v.data(), B, H, L, D), view_from_bhld(g.data(), B, H, L, D),
                    view_from_bhld(o.data(), B, H, L, D), st, prm);
  std::vector<double> Sr(p.state_size(), 0.0), orf;
  recurrent(p, Sr, orf);
  CHECK(scaled_error(o, to_bhld(std::vector<float>(orf.begin(), orf.end()))) <= 2e-5);
}

TEST_CASE("gla: bad inputs throw and write nothing", "[linear][gla]") {
  const index_t B = 1, L = 5, H = 2, dk = 4, dv = 3;
  std::vector<float> q(std::size_t(B * L * H * dk), 0.5f), k = q, g(q.size(), -0.1f), v(std::size_t(B * L * H * dv), 1.f);
  std::vector<float> o(v.size(), 7.f);
  gla_state st(B, H, dk, dv);
  st.S().data()[0] = 3.f;
  auto V4 = [](std::vector<float>& x, index_t d) { return tensor_view<const float, 4>(x.data(), {1, 5, 2, d}); };
  const tensor_view<float, 4> ov(o.data(), {B, L, H, dv});
  auto untouched = [&] {
    for (float x : o)
      if (x != 7.f) return false;
    return st.S().data()[0] == 3.f && st.S().data()[1] == 0.f;
  };
  gla_params prm;
  prm.chunk_size = 0;
  CHECK_THROWS_AS(gla_chunk_prefill(V4(q, dk), V4(k, dk), V4(v, dv), V4(g, dk), ov, st, prm), argument_error);
  prm.chunk_size = 4;
  CHECK_THROWS_AS(gla_chunk_prefill(V4(q, dk), V4(k, dk), V4(v, dv + 1), V4(g, dk), ov, st, prm), argument_error);
  gla_state wrong(B, H, dk + 1, dv);
  CHECK_THROWS_AS(gla_chunk_prefill(V4(q, dk), V4(k, dk), V4(v, dv), V4(g, dk), ov, wrong, prm), argument_error);
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), -std::numeric_limits<float>::infinity(), 0.5f}) {
    g[7] = bad;
    CHECK_THROWS_AS(gla_chunk_prefill(V4(q, dk), V4(k, dk), V4(v, dv), V4(g, dk), ov, st, prm), argument_error);
    CHECK_THROWS_AS(gla_recurrent_prefill(V4(q, dk), V4(k, dk), V4(v, dv), V4(g, dk), ov, st, prm), argument_error);
  }
  g[7] = -0.1f;
  prm.scale = std::numeric_limits<float>::infinity();
  CHECK_THROWS_AS(gla_chunk_prefill(V4(q, dk), V4(k, dk), V4(v, dv), V4(g, dk), ov, st, prm), argument_error);
  CHECK(untouched());
  try {
    prm.scale = std::numeric_limits<float>::quiet_NaN();
    g[7] = 1.f;
    gla_chunk_prefill(V4(q, dk), V4(k, dk), V4(v, dv), V4(g, dk), ov, st, prm);
  } catch (const argument_error& e) {
    CHECK(e.argument() == "g");
  }
}

TEST_CASE("gla: grouped heads (GQA, MQA) equal the ungrouped mixer on repeated k, v, g", "[linear][gla][grouped]") {
  grouped(kind::gla, gates::mild, 2e-5);
  grouped(kind::gla, gates::strong, 2e-5);
}

TEST_CASE("gla: grouped heads that don't divide, or a state per query head, throw and write nothing",
          "[linear][gla][grouped]") {
  grouped_errors(kind::gla);
}
