// linformer_attention against a float64 version of its two-stage definition:
// K' = E K and V' = F V computed in float64, then softmax attention of every
// query over the m projected rows. Odd sizes, GQA, headwise / per-head /
// key-value sharing, n > Lk (zero-padded sequences), 16-bit inputs, softcap,
// threads, bad inputs.

#include "tokmix/sparse/linformer.hpp"

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

struct projection {
  index_t He, m, n;
  std::vector<float> w;  // [He, m, n]
  projection(index_t he, index_t m_, index_t n_, unsigned seed) : He(he), m(m_), n(n_) {
    const auto r = tokmix_test::random_floats(static_cast<std::size_t>(he * m_ * n_), seed, -1.f, 1.f);
    const float s = 1.f / std::sqrt(float(n_));
    for (float x : r) w.push_back(x * s);
  }
  tensor_view<const float, 3> view() const { return {w.data(), {He, m, n}}; }
  double at(index_t h, index_t r, index_t j) const { return w[static_cast<std::size_t>((h % He * m + r) * n + j)]; }
};

output reference(const problem& pr, const projection& e, const projection* f, double scale, double softcap) {
  const shape& s = pr.s;
  const index_t m = e.m;
  if (std::isnan(scale)) scale = 1.0 / std::sqrt(double(s.D));
  const projection& fv = f != nullptr ? *f : e;
  std::vector<double> kp(static_cast<std::size_t>(s.B * s.Hkv * m * s.D)), vp(static_cast<std::size_t>(s.B * s.Hkv * m * s.Dv));
  for (index_t b = 0; b < s.B; ++b)
    for (index_t h = 0; h < s.Hkv; ++h)
      for (index_t r = 0; r < m; ++r) {
        for (index_t c = 0; c < s.D; ++c) {
          double a = 0;
          for (index_t j = 0; j < s.Lk; ++j) a += e.at(h, r, j) * pr.ka(b, j, h, c);
          kp[static_cast<std::size_t>(((b * s.Hkv + h) * m + r) * s.D + c)] = a;
        }
        for (index_t c = 0; c < s.Dv; ++c) {
          double a = 0;
          for (index_t j = 0; j < s.Lk; ++j) a += fv.at(h, r, j) * pr.va(b, j, h, c);
          vp[static_cast<std::size_t>(((b * s.Hkv + h) * m + r) * s.Dv + c)] = a;
        }
      }
  output out;
  out.o.assign(pr.o_size(), 0.0);
  out.lse.assign(pr.lse_size(), 0.0);
  std::vector<double> w(static_cast<std::size_t>(m));
  for (index_t b = 0; b < s.B; ++b)
    for (index_t h = 0; h < s.Hq; ++h) {
      const index_t hk = h / (s.Hq / s.Hkv);
      for (index_t i = 0; i < s.Lq; ++i) {
        double mx = -std::numeric_limits<double>::infinity();
        for (index_t r = 0; r < m; ++r) {
          double d = 0;
          for (index_t c = 0; c < s.D; ++c) d += pr.qa(b, i, h, c) * kp[static_cast<std::size_t>(((b * s.Hkv + hk) * m + r) * s.D + c)];
          double x = scale * d;
          if (softcap > 0) x = softcap * std::tanh(x / softcap);
          w[r] = x;
          mx = std::max(mx, x);
        }
        double l = 0;
        for (index_t r = 0; r < m; ++r) l += (w[r] = std::exp(w[r] - mx));
        for (index_t c = 0; c < s.Dv; ++c) {
          double a = 0;
          for (index_t r = 0; r < m; ++r) a += w[r] * vp[static_cast<std::size_t>(((b * s.Hkv + hk) * m + r) * s.Dv + c)];
          out.o[static_cast<std::size_t>(((b * s.Lq + i) * s.Hq + h) * s.Dv + c)] = a / l;
        }
        out.lse[static_cast<std::size_t>((b * s.Hq + h) * s.Lq + i)] = mx + std::log(l);
      }
    }
  return out;
}

}  // namespace

TEST_CASE("linformer: two-stage definition across sizes and sharing modes", "[sparse][linformer]") {
  struct cfg {
    shape s;
    index_t m, n, He;
    bool separate_f;
  };
  const cfg cases[] = {
      {{1, 1, 1, 1, 1, 1, 1}, 1, 1, 1, true},          {{1, 17, 33, 2, 1, 16, 8}, 15, 33, 1, true},
      {{2, 70, 129, 4, 2, 24, 17}, 33, 129, 2, true},  {{1, 40, 65, 4, 4, 8, 8}, 16, 100, 4, false},
      {{2, 130, 257, 2, 2, 32, 32}, 64, 300, 1, false}, {{1, 9, 200, 3, 1, 5, 12}, 200, 200, 1, true},
  };
  unsigned seed = 3;
  for (const cfg& c : cases) {
    const problem pr(c.s, seed);
    const projection e(c.He, c.m, c.n, seed + 10), f(c.He, c.m, c.n, seed + 20);
    ++seed;
    for (float softcap : {0.f, 2.f}) {
      INFO("Lq " << c.s.Lq << " Lk " << c.s.Lk << " m " << c.m << " n " << c.n << " He " << c.He << " softcap " << softcap);
      tokmix::linformer_params p;
      p.softcap = softcap;
      result r(pr, NAN);
      tokmix::linformer_attention(pr.qv(), pr.kv(), pr.vv(), e.view(), c.separate_f ? f.view() : tensor_view<const float, 3>(),
                                  r.ov(pr), r.lv(pr), p);
      const output ref = reference(pr, e, c.separate_f ? &f : nullptr, NAN, softcap);
      TOKMIX_SPARSE_CHECK(r, ref, 2e-5, 1e-4);
    }
  }
}

TEST_CASE("linformer: 16-bit inputs, explicit scale and threads", "[sparse][linformer]") {
  problem pr({2, 90, 150, 4, 2, 16, 16}, 41);
  const projection e(2, 24, 160, 42), f(2, 24, 160, 43);
  // Round q, k, v to bf16 so the float64 reference sees the kernel's inputs.
  const std::size_t nq = static_cast<std::size_t>(2 * 90 * 4 * 16), nk = static_cast<std::size_t>(2 * 150 * 2 * 16);
  std::vector<Eigen::bfloat16> qb(nq), kb(nk), vb(nk);
  for (std::size_t t = 0; t < nq; ++t) pr.q.data()[t] = float(qb[t] = Eigen::bfloat16(pr.q.data()[t]));
  for (std::size_t t = 0; t < nk; ++t) {
    pr.k.data()[t] = float(kb[t] = Eigen::bfloat16(pr.k.data()[t]));
    pr.v.data()[t] = float(vb[t] = Eigen::bfloat16(pr.v.data()[t]));
  }
  tokmix::linformer_params p;
  p.scale = 0.3f;
  result r(pr, NAN);
  tokmix::linformer_attention(tensor_view<const Eigen::bfloat16, 4>(qb.data(), {2, 90, 4, 16}),
                              tensor_view<const Eigen::bfloat16, 4>(kb.data(), {2, 150, 2, 16}),
                              tensor_view<const Eigen::bfloat16, 4>(vb.data(), {2, 150, 2, 16}), e.view(), f.view(),
                              r.ov(pr), r.lv(pr), p);
  TOKMIX_SPARSE_CHECK(r, reference(pr, e, &f, 0.3, 0), 2e-5, 1e-4);
  result serial(pr), threaded(pr);
  tokmix::linformer_attention(pr.qv(), pr.kv(), pr.vv(), e.view(), f.view(), serial.ov(pr), serial.lv(pr), p);
  p.policy = tokmix::exec_policy::threads(2);
  tokmix::linformer_attention(pr.qv(), pr.kv(), pr.vv(), e.view(), f.view(), threaded.ov(pr), threaded.lv(pr), p);
  CHECK(serial.o == threaded.o);
  CHECK(serial.lse == threaded.lse);
}

TEST_CASE("linformer: bad inputs throw and write nothing", "[sparse][linformer]") {
  const problem pr({1, 20, 30, 4, 2, 8, 8}, 5);
  const projection ok(2, 6, 30, 6), three_heads(3, 6, 30, 7), short_n(1, 6, 29, 8), other_m(1, 5, 30, 9);
  auto expect = [&](const projection& e, const projection* f, const char* arg, const char* what,
                    tokmix::linformer_params p = {}) {
    result r(pr);
    CHECK_THROWS_WITH(tokmix::linformer_attention(pr.qv(), pr.kv(), pr.vv(), e.view(),
                                                  f != nullptr ? f->view() : tensor_view<const float, 3>(), r.ov(pr),
                                                  r.lv(pr), p),
                      Catch::Contains(std::string("argument '") + arg + "'") && Catch::Contains(what));
    CHECK(r.untouched());
  };
  expect(three_heads, nullptr, "e", "1 (shared by all heads) or 2");
  expect(short_n, nullptr, "e", "n >= the 30 keys");
  expect(ok, &other_m, "f", "shape [*, 6, *]");
  expect(ok, &short_n, "f", "n >= the 30 keys");
  tokmix::linformer_params p;
  p.softcap = -1.f;
  expect(ok, nullptr, "params.softcap", ">= 0", p);
  p = {};
  p.scale = std::numeric_limits<float>::infinity();
  expect(ok, nullptr, "params.scale", "finite", p);
  result r(pr);
  const tensor_view<const float, 4> v_bad(pr.v.data(), {1, 29, 2, 8});
  CHECK_THROWS_WITH(tokmix::linformer_attention(pr.qv(), pr.kv(), v_bad, ok.view(), tensor_view<const float, 3>(),
                                                r.ov(pr), r.lv(pr)),
                    Catch::Contains("argument 'v'"));
  CHECK(r.untouched());
}
