// routing_attention: cluster assignment against float64 similarities (nearest)
// and the capacity rules (balanced); attention against the float64 softmax
// reference with the equivalent mask c(q_i) == c(k_j) (and causal) once the
// clusters are fixed; the online k-means update against its float64 formula;
// threads; decode step by step == causal prefill; bad inputs throw.

#include "tokmix/sparse/routing.hpp"

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

double sim(const float* x, const float* mu, index_t D) {
  double d = 0, n = 0;
  for (index_t e = 0; e < D; ++e) {
    d += double(x[e]) * double(mu[e]);
    n += double(x[e]) * double(x[e]);
  }
  return d / std::sqrt(n);
}

struct ids {
  std::vector<std::int32_t> q, k;
};

ids clusters(const problem& pr, const tokmix::routing_state& st, tokmix::routing_assignment mode) {
  const shape& s = pr.s;
  ids r{std::vector<std::int32_t>(static_cast<std::size_t>(s.B * s.Hq * s.Lq), -1),
        std::vector<std::int32_t>(static_cast<std::size_t>(s.B * s.Hq * s.Lk), -1)};
  tokmix::routing_clusters(pr.qv(), pr.kv(), st, tensor_view<std::int32_t, 3>(r.q.data(), {s.B, s.Hq, s.Lq}),
                           tensor_view<std::int32_t, 3>(r.k.data(), {s.B, s.Hq, s.Lk}), mode);
  return r;
}

const float* qrow(const problem& pr, index_t b, index_t i, index_t h) {
  return pr.q.data() + ((b * pr.s.Lq + i) * pr.s.Hq + h) * pr.s.D;
}
const float* krow(const problem& pr, index_t b, index_t j, index_t hk) {
  return pr.k.data() + ((b * pr.s.Lk + j) * pr.s.Hkv + hk) * pr.s.D;
}

void check_attention(const problem& pr, tokmix::routing_state& st, tokmix::routing_params p) {
  const shape& s = pr.s;
  const ids c = clusters(pr, st, p.assignment);
  result r(pr);
  tokmix::routing_attention(pr.qv(), pr.kv(), pr.vv(), r.ov(pr), r.lv(pr), st, p);
  const index_t off = p.alignment == tokmix::causal_alignment::bottom_right ? s.Lk - s.Lq : 0;
  const auto ref = masked_attention(
      pr,
      [&](index_t b, index_t h, index_t i, index_t j) {
        if (p.causal && j > i + off) return false;
        return c.q[static_cast<std::size_t>((b * s.Hq + h) * s.Lq + i)] ==
               c.k[static_cast<std::size_t>((b * s.Hq + h) * s.Lk + j)];
      },
      p.scale, p.softcap);
  TOKMIX_SPARSE_CHECK(r, ref, 2e-5, 1e-4);
}

}  // namespace

TEST_CASE("routing: nearest clusters match float64 similarities", "[sparse][routing]") {
  const problem pr({2, 300, 257, 4, 2, 24, 16}, 3);
  const tokmix::routing_state st(4, 7, 24, 11);
  const ids c = clusters(pr, st, tokmix::routing_assignment::nearest);
  const shape& s = pr.s;
  for (index_t b = 0; b < s.B; ++b)
    for (index_t h = 0; h < s.Hq; ++h) {
      auto check_row = [&](const float* x, std::int32_t got) {
        REQUIRE(got >= 0);
        REQUIRE(got < 7);
        double best = -2;
        for (index_t m = 0; m < 7; ++m) best = std::max(best, sim(x, st.centroid(h, m), s.D));
        REQUIRE(sim(x, st.centroid(h, got), s.D) >= best - 1e-6);
      };
      for (index_t i = 0; i < s.Lq; ++i) check_row(qrow(pr, b, i, h), c.q[static_cast<std::size_t>((b * s.Hq + h) * s.Lq + i)]);
      for (index_t j = 0; j < s.Lk; ++j)
        check_row(krow(pr, b, j, h / 2), c.k[static_cast<std::size_t>((b * s.Hq + h) * s.Lk + j)]);
    }
  // Centroids are unit vectors, deterministic from the seed.
  const tokmix::routing_state again(4, 7, 24, 11), other(4, 7, 24, 12);
  CHECK(std::equal(st.centroid(0, 0), st.centroid(0, 0) + 4 * 7 * 24, again.centroid(0, 0)));
  CHECK_FALSE(std::equal(st.centroid(0, 0), st.centroid(0, 0) + 4 * 7 * 24, other.centroid(0, 0)));
  for (index_t r = 0; r < 4 * 7; ++r) {
    double n = 0;
    for (index_t e = 0; e < 24; ++e) n += double(st.centroid(0, 0)[r * 24 + e]) * st.centroid(0, 0)[r * 24 + e];
    CHECK(std::abs(n - 1) < 1e-6);
  }
}

TEST_CASE("routing: balanced clusters respect the capacity and the preference order", "[sparse][routing]") {
  const problem pr({1, 301, 301, 2, 1, 16, 16}, 5);
  const index_t C = 6, cap = (301 + C - 1) / C;
  const tokmix::routing_state st(2, C, 16, 2);
  const ids near = clusters(pr, st, tokmix::routing_assignment::nearest);
  const ids bal = clusters(pr, st, tokmix::routing_assignment::balanced);
  for (int side = 0; side < 2; ++side)
    for (index_t h = 0; h < 2; ++h) {
      const std::vector<std::int32_t>& b = side == 0 ? bal.q : bal.k;
      const std::vector<std::int32_t>& n = side == 0 ? near.q : near.k;
      std::vector<index_t> count(static_cast<std::size_t>(C), 0);
      for (index_t t = 0; t < 301; ++t) ++count[static_cast<std::size_t>(b[h * 301 + t])];
      for (index_t m = 0; m < C; ++m) CHECK(count[static_cast<std::size_t>(m)] <= cap);
      index_t moved = 0;
      for (index_t t = 0; t < 301; ++t) {
        const std::int32_t got = b[h * 301 + t];
        if (got == n[h * 301 + t]) continue;
        ++moved;
        // Moved tokens: every cluster they prefer to the one they got is full.
        const float* x = side == 0 ? qrow(pr, 0, t, h) : krow(pr, 0, t, 0);
        const double sg = sim(x, st.centroid(h, got), 16);
        for (index_t m = 0; m < C; ++m)
          if (sim(x, st.centroid(h, m), 16) > sg + 1e-6) CHECK(count[static_cast<std::size_t>(m)] == cap);
      }
      CHECK(moved > 0);  // the data is unbalanced enough for the rule to act
    }
}

TEST_CASE("routing: attention within clusters equals the masked reference", "[sparse][routing]") {
  const shape shapes[] = {{1, 1, 1, 1, 1, 8, 8}, {1, 37, 37, 2, 1, 16, 16}, {2, 300, 300, 4, 2, 32, 24},
                          {1, 130, 260, 2, 2, 16, 16}, {1, 260, 130, 2, 1, 16, 8}};
  unsigned seed = 7;
  for (const shape& s : shapes) {
    const problem pr(s, seed++);
    for (index_t C : {1, 3, 8})
      for (auto mode : {tokmix::routing_assignment::nearest, tokmix::routing_assignment::balanced}) {
        tokmix::routing_state st(s.Hq, C, s.D, seed);
        tokmix::routing_params p;
        p.assignment = mode;
        INFO("L " << s.Lq << "x" << s.Lk << " C " << C << " balanced " << (mode == tokmix::routing_assignment::balanced));
        check_attention(pr, st, p);
        p.causal = true;
        check_attention(pr, st, p);
        p.alignment = tokmix::causal_alignment::top_left;
        p.softcap = 3.f;
        check_attention(pr, st, p);
      }
  }
}

TEST_CASE("routing: online k-means update follows its formula", "[sparse][routing]") {
  const problem pr({2, 90, 70, 2, 1, 12, 12}, 9);
  tokmix::routing_state st(2, 4, 12, 3, 0.9f);
  const std::vector<float> mu0(st.centroid(0, 0), st.centroid(0, 0) + 2 * 4 * 12);
  const ids c = clusters(pr, st, tokmix::routing_assignment::nearest);
  // Reference: mu <- normalise(0.9 mu + 0.1 s / |s|), s = sum of unit vectors assigned.
  std::vector<double> want(mu0.begin(), mu0.end());
  for (index_t h = 0; h < 2; ++h)
    for (index_t m = 0; m < 4; ++m) {
      std::vector<double> sum(12, 0.0);
      auto add = [&](const float* x) {
        double n = 0;
        for (index_t e = 0; e < 12; ++e) n += double(x[e]) * x[e];
        for (index_t e = 0; e < 12; ++e) sum[static_cast<std::size_t>(e)] += x[e] / std::sqrt(n);
      };
      for (index_t b = 0; b < 2; ++b) {
        for (index_t i = 0; i < 90; ++i)
          if (c.q[static_cast<std::size_t>((b * 2 + h) * 90 + i)] == m) add(qrow(pr, b, i, h));
        for (index_t j = 0; j < 70; ++j)
          if (c.k[static_cast<std::size_t>((b * 2 + h) * 70 + j)] == m) add(krow(pr, b, j, 0));
      }
      double sn = 0;
      for (double x : sum) sn += x * x;
      if (sn == 0) continue;
      double* w = want.data() + (h * 4 + m) * 12;
      double wn = 0;
      for (index_t e = 0; e < 12; ++e) {
        w[e] = 0.9 * w[e] + 0.1 * sum[static_cast<std::size_t>(e)] / std::sqrt(sn);
        wn += w[e] * w[e];
      }
      for (index_t e = 0; e < 12; ++e) w[e] /= std::sqrt(wn);
    }
  tokmix::routing_state via_call = st;
  st.update(pr.qv(), pr.kv());
  TOKMIX_REQUIRE_CLOSE(st.centroid(0, 0), want.data(), want.size(), 1e-6, 1e-5);
  // update_centroids in a prefill call: attends with the old centroids, then updates.
  result r1(pr), r2(pr);
  tokmix::routing_state fixed = via_call;
  tokmix::routing_params p;
  tokmix::routing_attention(pr.qv(), pr.kv(), pr.vv(), r1.ov(pr), r1.lv(pr), fixed, p);
  p.update_centroids = true;
  tokmix::routing_attention(pr.qv(), pr.kv(), pr.vv(), r2.ov(pr), r2.lv(pr), via_call, p);
  CHECK(r1.o == r2.o);
  CHECK(std::equal(st.centroid(0, 0), st.centroid(0, 0) + 2 * 4 * 12, via_call.centroid(0, 0)));
}

TEST_CASE("routing: threads give the serial result bit for bit", "[sparse][routing]") {
  const problem pr({2, 400, 400, 4, 2, 32, 32}, 13);
  for (auto mode : {tokmix::routing_assignment::nearest, tokmix::routing_assignment::balanced}) {
    tokmix::routing_state st(4, 5, 32, 1);
    tokmix::routing_params p;
    p.assignment = mode;
    p.causal = true;
    result a(pr), b(pr);
    tokmix::routing_attention(pr.qv(), pr.kv(), pr.vv(), a.ov(pr), a.lv(pr), st, p);
    p.policy = tokmix::exec_policy::threads(2);
    tokmix::routing_attention(pr.qv(), pr.kv(), pr.vv(), b.ov(pr), b.lv(pr), st, p);
    CHECK(a.o == b.o);
    CHECK(a.lse == b.lse);
  }
}

TEST_CASE("routing: decode step by step equals the causal prefill", "[sparse][routing]") {
  const index_t B = 2, L = 120, Hq = 4, Hkv = 2, D = 16, C = 4;
  const problem pr({B, L, L, Hq, Hkv, D, D}, 17);
  tokmix::routing_state st(Hq, C, D, 5);
  tokmix::routing_params p;
  p.causal = true;
  result full(pr);
  tokmix::routing_attention(pr.qv(), pr.kv(), pr.vv(), full.ov(pr), full.lv(pr), st, p);
  tokmix::kv_cache<float> cache(B, Hkv, D, L);
  tokmix::routing_key_clusters kc(B, Hq, C);
  for (index_t t = 0; t < L;) {
    const index_t n = t % 2 == 0 ? 1 : std::min<index_t>(3, L - t);
    std::vector<float> kn(static_cast<std::size_t>(B * n * Hkv * D)), vn(kn.size()), qn(static_cast<std::size_t>(B * n * Hq * D));
    for (index_t b = 0; b < B; ++b)
      for (index_t i = 0; i < n; ++i) {
        for (index_t h = 0; h < Hkv; ++h)
          for (index_t e = 0; e < D; ++e) {
            kn[((b * n + i) * Hkv + h) * D + e] = float(pr.ka(b, t + i, h, e));
            vn[((b * n + i) * Hkv + h) * D + e] = float(pr.va(b, t + i, h, e));
          }
        for (index_t h = 0; h < Hq; ++h)
          for (index_t e = 0; e < D; ++e) qn[((b * n + i) * Hq + h) * D + e] = float(pr.qa(b, t + i, h, e));
      }
    const tensor_view<const float, 4> kv(kn.data(), {B, n, Hkv, D}), vv(vn.data(), {B, n, Hkv, D});
    cache.append(kv, vv);
    kc.append(kv, st);
    std::vector<float> on(static_cast<std::size_t>(B * n * Hq * D)), ln(static_cast<std::size_t>(B * Hq * n));
    tokmix::routing_attention_decode(tensor_view<const float, 4>(qn.data(), {B, n, Hq, D}), cache, kc, st,
                                     tensor_view<float, 4>(on.data(), {B, n, Hq, D}),
                                     tensor_view<float, 3>(ln.data(), {B, Hq, n}), p);
    for (index_t b = 0; b < B; ++b)
      for (index_t i = 0; i < n; ++i)
        for (index_t h = 0; h < Hq; ++h) {
          const float lf = full.lse[static_cast<std::size_t>((b * Hq + h) * L + t + i)];
          const float ld = ln[static_cast<std::size_t>((b * Hq + h) * n + i)];
          if (std::isinf(lf)) CHECK(ld == lf);
          else CHECK(std::abs(ld - lf) <= 1e-5f);
          for (index_t e = 0; e < D; ++e)
            REQUIRE(std::abs(on[((b * n + i) * Hq + h) * D + e] - full.o[((b * L + t + i) * Hq + h) * D + e]) <= 2e-5f);
        }
    t += n;
  }
}

TEST_CASE("routing: bad inputs throw and write nothing", "[sparse][routing]") {
  const problem pr({1, 20, 20, 2, 1, 8, 8}, 1);
  auto expect = [&](tokmix::routing_state st, const char* what) {
    result r(pr);
    CHECK_THROWS_WITH(tokmix::routing_attention(pr.qv(), pr.kv(), pr.vv(), r.ov(pr), r.lv(pr), st), Catch::Contains(what));
    CHECK(r.untouched());
  };
  expect(tokmix::routing_state(3, 2, 8), "query heads");
  expect(tokmix::routing_state(2, 2, 16), "head_dim");
  CHECK_THROWS_WITH(tokmix::routing_state(2, 0, 8), Catch::Contains("n_clusters"));
  CHECK_THROWS_WITH(tokmix::routing_state(2, 2, 8, 0, 1.f), Catch::Contains("decay"));
  tokmix::routing_state st(2, 2, 8);
  std::vector<float> zero(2 * 2 * 8, 0.f);
  CHECK_THROWS_WITH(st.set_centroids(tensor_view<const float, 3>(zero.data(), {2, 2, 8})), Catch::Contains("non-zero"));
  tokmix::kv_cache<float> cache(1, 1, 8, 20);
  tokmix::routing_key_clusters kc(1, 2, 2);
  std::vector<float> kn(8, 0.5f), q(16, 0.1f), o(16, 7.f);
  cache.append(tensor_view<const float, 4>(kn.data(), {1, 1, 1, 8}), tensor_view<const float, 4>(kn.data(), {1, 1, 1, 8}));
  CHECK_THROWS_WITH(tokmix::routing_attention_decode(tensor_view<const float, 4>(q.data(), {1, 1, 2, 8}), cache, kc, st,
                                                     tensor_view<float, 4>(o.data(), {1, 1, 2, 8})),
                    Catch::Contains("key_clusters"));
  kc.append(tensor_view<const float, 4>(kn.data(), {1, 1, 1, 8}), st);
  tokmix::routing_params bal;
  bal.assignment = tokmix::routing_assignment::balanced;
  CHECK_THROWS_WITH(tokmix::routing_attention_decode(tensor_view<const float, 4>(q.data(), {1, 1, 2, 8}), cache, kc, st,
                                                     tensor_view<float, 4>(o.data(), {1, 1, 2, 8}), bal),
                    Catch::Contains("nearest"));
  for (float x : o) CHECK(x == 7.f);
}

TEST_CASE("routing: fp16 and bf16 inputs equal the float path on the rounded values", "[sparse][routing]") {
  const problem pr({1, 200, 200, 2, 1, 32, 32}, 41);
  tokmix::routing_state st(2, 4, 32, 9);
  tokmix::routing_params p;
  p.causal = true;
  p.assignment = tokmix::routing_assignment::balanced;
  const rounded_copy<Eigen::half> h(pr);
  const rounded_copy<Eigen::bfloat16> bf(pr);
  result a(pr), b(pr), c(pr), d(pr);
  tokmix::routing_attention(h.qv(), h.kv(), h.vv(), a.ov(pr), a.lv(pr), st, p);
  tokmix::routing_attention(h.exact.qv(), h.exact.kv(), h.exact.vv(), b.ov(pr), b.lv(pr), st, p);
  tokmix::routing_attention(bf.qv(), bf.kv(), bf.vv(), c.ov(pr), c.lv(pr), st, p);
  tokmix::routing_attention(bf.exact.qv(), bf.exact.kv(), bf.exact.vv(), d.ov(pr), d.lv(pr), st, p);
  TOKMIX_REQUIRE_CLOSE(a.o.data(), b.o.data(), a.o.size(), 1e-6, 1e-5);
  TOKMIX_REQUIRE_CLOSE(c.o.data(), d.o.data(), c.o.size(), 1e-6, 1e-5);
}
