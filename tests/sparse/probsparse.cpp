// probsparse_attention against float64 versions of its definition: the
// sparsity measure on the same sampled keys picks the active queries (up to
// fp32 rounding at the boundary), active rows equal exact softmax attention,
// lazy rows the mean of V (cumulative when causal); the error against exact
// attention shrinks as the budget (factor) grows and vanishes once u = Lq.

#include "tokmix/sparse/probsparse.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include <catch2/catch.hpp>

#include "sparse/reference.hpp"
#include "support/compare.hpp"

namespace {

using tokmix::index_t;
using tokmix::tensor_view;
using namespace tokmix_test::sparse_ref;

struct run_out {
  result r;
  std::vector<std::int32_t> active;
  index_t u;
};

run_out run(const problem& pr, const tokmix::probsparse_params& p) {
  const index_t u = tokmix::probsparse_budget(p.factor, pr.s.Lq);
  run_out x{result(pr), std::vector<std::int32_t>(static_cast<std::size_t>(pr.s.B * pr.s.Hq * u), -7), u};
  tokmix::probsparse_attention(pr.qv(), pr.kv(), pr.vv(), x.r.ov(pr),
                               tensor_view<std::int32_t, 3>(x.active.data(), {pr.s.B, pr.s.Hq, u}), p);
  return x;
}

// Float64 measure M(q_i) on the sampled keys.
double measure(const problem& pr, const tokmix::probsparse_params& p, index_t b, index_t h, index_t i) {
  const index_t ns = tokmix::probsparse_budget(p.factor, pr.s.Lk);
  const double scale = 1.0 / std::sqrt(double(pr.s.D));
  double mx = -1e300, sum = 0;
  for (index_t t = 0; t < ns; ++t) {
    const double s = score(pr, b, h, i, tokmix::probsparse_sample(p.seed, i, t, pr.s.Lk), scale, 0);
    mx = std::max(mx, s);
    sum += s;
  }
  return mx - sum / double(ns);
}

void check_definition(const problem& pr, const tokmix::probsparse_params& p) {
  const shape& s = pr.s;
  const run_out x = run(pr, p);
  const index_t off = p.alignment == tokmix::causal_alignment::bottom_right ? s.Lk - s.Lq : 0;
  const output exact = masked_attention(pr, [&](index_t, index_t, index_t i, index_t j) { return !p.causal || j <= i + off; });
  for (index_t b = 0; b < s.B; ++b)
    for (index_t h = 0; h < s.Hq; ++h) {
      const std::int32_t* a = x.active.data() + (b * s.Hq + h) * x.u;
      // Active set: sorted, distinct, the u largest float64 measures up to rounding.
      double worst_in = 1e300, best_out = -1e300;
      for (index_t t = 0; t < x.u; ++t) {
        REQUIRE(a[t] >= 0);
        REQUIRE(a[t] < s.Lq);
        if (t > 0) REQUIRE(a[t] > a[t - 1]);
        worst_in = std::min(worst_in, measure(pr, p, b, h, a[t]));
      }
      for (index_t i = 0; i < s.Lq; ++i)
        if (!std::binary_search(a, a + x.u, std::int32_t(i))) best_out = std::max(best_out, measure(pr, p, b, h, i));
      REQUIRE(worst_in >= best_out - 1e-5);
      const index_t hk = h / (s.Hq / s.Hkv);
      for (index_t i = 0; i < s.Lq; ++i) {
        const bool act = std::binary_search(a, a + x.u, std::int32_t(i));
        const index_t last = p.causal ? std::min(s.Lk - 1, i + off) : s.Lk - 1;
        for (index_t e = 0; e < s.Dv; ++e) {
          double want;
          if (act) {
            want = exact.o[static_cast<std::size_t>(((b * s.Lq + i) * s.Hq + h) * s.Dv + e)];
          } else {
            double m = 0;
            for (index_t j = 0; j <= last; ++j) m += pr.va(b, j, hk, e);
            want = last >= 0 ? m / double(last + 1) : 0.0;
          }
          const float got = x.r.o[static_cast<std::size_t>(((b * s.Lq + i) * s.Hq + h) * s.Dv + e)];
          INFO("b " << b << " h " << h << " i " << i << " active " << act);
          REQUIRE(std::abs(got - want) <= 2e-5 + 1e-4 * std::abs(want));
        }
      }
    }
}

double rel_error(const std::vector<float>& got, const std::vector<double>& ref) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    num += (got[i] - ref[i]) * (got[i] - ref[i]);
    den += ref[i] * ref[i];
  }
  return std::sqrt(num / den);
}

}  // namespace

TEST_CASE("probsparse: active queries, exact rows and mean rows follow the definition", "[sparse][probsparse]") {
  const shape shapes[] = {{1, 1, 1, 1, 1, 8, 8}, {1, 37, 37, 2, 1, 16, 16}, {2, 200, 200, 4, 2, 32, 24},
                          {1, 120, 250, 2, 2, 16, 16}, {1, 250, 120, 2, 1, 16, 8}};
  unsigned seed = 3;
  for (const shape& s : shapes) {
    const problem pr(s, seed++, 2.f);
    for (index_t factor : {1, 3}) {
      tokmix::probsparse_params p;
      p.factor = factor;
      p.seed = seed;
      INFO("L " << s.Lq << "x" << s.Lk << " factor " << factor);
      check_definition(pr, p);
      p.causal = true;
      check_definition(pr, p);
      p.alignment = tokmix::causal_alignment::top_left;
      check_definition(pr, p);
    }
  }
}

TEST_CASE("probsparse: the error against exact attention shrinks with the budget", "[sparse][probsparse]") {
  // Peaked attention (large q) so lazy rows are a real approximation.
  const problem pr({1, 300, 300, 2, 2, 32, 32}, 21, 3.f);
  for (bool causal : {false, true}) {
    const output exact = masked_attention(pr, [&](index_t, index_t, index_t i, index_t j) { return !causal || j <= i; });
    double prev = 1e300;
    for (index_t factor : {1, 4, 16, 60}) {
      tokmix::probsparse_params p;
      p.factor = factor;
      p.causal = causal;
      const run_out x = run(pr, p);
      const double err = rel_error(x.r.o, exact.o);
      INFO("causal " << causal << " factor " << factor << " u " << x.u << " relative error " << err);
      CHECK(err <= prev);  // active sets grow with u (same measure), so the error cannot grow
      if (x.u == 300) CHECK(err <= 2e-6);  // u = Lq: exact attention
      else CHECK(err > 1e-3);             // still an approximation
      prev = err;
    }
    CHECK(prev <= 2e-6);
  }
}

TEST_CASE("probsparse: threads give the serial result bit for bit", "[sparse][probsparse]") {
  const problem pr({2, 300, 300, 4, 2, 32, 32}, 5);
  tokmix::probsparse_params p;
  p.causal = true;
  const run_out a = run(pr, p);
  p.policy = tokmix::exec_policy::threads(2);
  const run_out b = run(pr, p);
  CHECK(a.r.o == b.r.o);
  CHECK(a.active == b.active);
}

TEST_CASE("probsparse: bad parameters throw and write nothing", "[sparse][probsparse]") {
  const problem pr({1, 20, 20, 2, 1, 8, 8}, 1);
  tokmix::probsparse_params p;
  p.factor = 0;
  result r(pr);
  CHECK_THROWS_WITH(tokmix::probsparse_attention(pr.qv(), pr.kv(), pr.vv(), r.ov(pr), p), Catch::Contains("factor"));
  CHECK(r.untouched());
  p.factor = 2;
  std::vector<std::int32_t> act(2 * 3, 5);
  CHECK_THROWS_WITH(tokmix::probsparse_attention(pr.qv(), pr.kv(), pr.vv(), r.ov(pr),
                                                 tensor_view<std::int32_t, 3>(act.data(), {1, 2, 3}), p),
                    Catch::Contains("active"));
  CHECK(r.untouched());
  for (std::int32_t x : act) CHECK(x == 5);
}

TEST_CASE("probsparse: fp16 and bf16 inputs equal the float path on the rounded values", "[sparse][probsparse]") {
  const problem pr({1, 200, 200, 2, 1, 32, 32}, 43, 2.f);
  tokmix::probsparse_params p;
  p.causal = true;
  const rounded_copy<Eigen::half> h(pr);
  const rounded_copy<Eigen::bfloat16> bf(pr);
  result a(pr), b(pr), c(pr), d(pr);
  tokmix::probsparse_attention(h.qv(), h.kv(), h.vv(), a.ov(pr), p);
  tokmix::probsparse_attention(h.exact.qv(), h.exact.kv(), h.exact.vv(), b.ov(pr), p);
  tokmix::probsparse_attention(bf.qv(), bf.kv(), bf.vv(), c.ov(pr), p);
  tokmix::probsparse_attention(bf.exact.qv(), bf.exact.kv(), bf.exact.vv(), d.ov(pr), p);
  TOKMIX_REQUIRE_CLOSE(a.o.data(), b.o.data(), a.o.size(), 1e-6, 1e-5);
  TOKMIX_REQUIRE_CLOSE(c.o.data(), d.o.data(), c.o.size(), 1e-6, 1e-5);
}
