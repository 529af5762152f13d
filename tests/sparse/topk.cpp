// topk_attention against a float64 reference that selects each row's k best
// visible keys (ties: lower index) and takes the softmax over them.
//
// Exact selection: with q, k on a grid of 1/4 and a power-of-two scale every
// score is exact in fp32 too, so the kernel must pick exactly the reference's
// keys, ties included (the grid makes ties frequent). With generic floats the
// selection is checked through the indices output: the picked keys' float64
// scores must all be >= every unpicked visible key's minus 1e-5, and the
// output must be the float64 softmax over the picked set.

#include "tokmix/sparse/topk.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

#include <catch2/catch.hpp>

#include "sparse/reference.hpp"
#include "support/compare.hpp"

namespace {

using tokmix::index_t;
using tokmix::tensor_view;
using namespace tokmix_test::sparse_ref;

bool visible(const tokmix::topk_attention_params& p, const shape& s, index_t i, index_t j) {
  const index_t pos = i + (p.alignment == tokmix::causal_alignment::bottom_right ? s.Lk - s.Lq : 0);
  if (p.causal && j > pos) return false;
  if (p.window_left >= 0 && j < pos - p.window_left) return false;
  if (p.window_right >= 0 && j > pos + p.window_right) return false;
  return true;
}

// Float64 top-k: indices [B, Hq, Lq, k] (-1 padded) and the softmax over them.
struct topk_ref {
  output out;
  std::vector<std::int32_t> idx;
};

topk_ref reference(const problem& pr, const tokmix::topk_attention_params& p) {
  const shape& s = pr.s;
  const double scale = std::isnan(p.scale) ? 1.0 / std::sqrt(double(s.D)) : double(p.scale);
  const index_t K = p.top_k;
  topk_ref r;
  r.idx.assign(static_cast<std::size_t>(s.B * s.Hq * s.Lq * K), -1);
  std::vector<std::vector<index_t>> sel(static_cast<std::size_t>(s.B * s.Hq * s.Lq));
  for (index_t b = 0; b < s.B; ++b)
    for (index_t h = 0; h < s.Hq; ++h)
      for (index_t i = 0; i < s.Lq; ++i) {
        std::vector<std::pair<double, index_t>> c;
        for (index_t j = 0; j < s.Lk; ++j)
          if (visible(p, s, i, j)) c.push_back({score(pr, b, h, i, j, scale, 0), j});
        std::sort(c.begin(), c.end(), [](const auto& x, const auto& y) {
          return x.first > y.first || (x.first == y.first && x.second < y.second);
        });
        std::vector<index_t>& chosen = sel[static_cast<std::size_t>((b * s.Hq + h) * s.Lq + i)];
        for (index_t t = 0; t < std::min<index_t>(K, index_t(c.size())); ++t) chosen.push_back(c[t].second);
        std::sort(chosen.begin(), chosen.end());
        for (std::size_t t = 0; t < chosen.size(); ++t)
          r.idx[static_cast<std::size_t>(((b * s.Hq + h) * s.Lq + i) * K) + t] = static_cast<std::int32_t>(chosen[t]);
      }
  r.out = masked_attention(
      pr,
      [&](index_t b, index_t h, index_t i, index_t j) {
        const auto& c = sel[static_cast<std::size_t>((b * s.Hq + h) * s.Lq + i)];
        return std::binary_search(c.begin(), c.end(), j);
      },
      scale, p.softcap);
  return r;
}

// q and k on the grid {-1, -3/4, ..., 1}: exact fp32 scores under a power-of-two scale.
void quantize(problem& pr) {
  auto q4 = [](float x) { return std::round(x * 4.f) / 4.f; };
  for (index_t t = 0; t < pr.s.B * pr.s.Lq * pr.s.Hq * pr.s.D; ++t) pr.q.data()[t] = q4(pr.q.data()[t]);
  for (index_t t = 0; t < pr.s.B * pr.s.Lk * pr.s.Hkv * pr.s.D; ++t) pr.k.data()[t] = q4(pr.k.data()[t]);
}

struct run_out {
  result r;
  std::vector<std::int32_t> idx;
};

run_out run(const problem& pr, const tokmix::topk_attention_params& p) {
  run_out x{result(pr), std::vector<std::int32_t>(static_cast<std::size_t>(pr.s.B * pr.s.Hq * pr.s.Lq * p.top_k), 77)};
  tokmix::topk_attention(pr.qv(), pr.kv(), pr.vv(), x.r.ov(pr), x.r.lv(pr),
                         tensor_view<std::int32_t, 4>(x.idx.data(), {pr.s.B, pr.s.Hq, pr.s.Lq, p.top_k}), p);
  return x;
}

}  // namespace

TEST_CASE("topk: exact selection with ties across sizes, k and masks", "[sparse][topk]") {
  const shape shapes[] = {{1, 1, 1, 1, 1, 16, 8},       {1, 37, 37, 2, 1, 16, 16}, {2, 150, 150, 4, 2, 16, 24},
                          {1, 130, 300, 2, 2, 16, 16},  {1, 300, 129, 2, 1, 16, 16}};
  unsigned seed = 5;
  for (const shape& s : shapes) {
    problem pr(s, seed++);
    quantize(pr);
    for (index_t K : {1, 5, 64, 400}) {
      tokmix::topk_attention_params p;
      p.top_k = K;
      p.scale = 0.25f;
      for (int mode = 0; mode < 4; ++mode) {
        p.causal = mode >= 1;
        p.alignment = mode == 2 ? tokmix::causal_alignment::top_left : tokmix::causal_alignment::bottom_right;
        p.window_left = mode == 3 ? 40 : -1;
        p.softcap = mode == 3 ? 1.5f : 0.f;
        INFO("L " << s.Lq << "x" << s.Lk << " k " << K << " mode " << mode);
        const run_out got = run(pr, p);
        const topk_ref ref = reference(pr, p);
        REQUIRE(got.idx == ref.idx);
        TOKMIX_SPARSE_CHECK(got.r, ref.out, 2e-5, 1e-4);
      }
    }
  }
}

TEST_CASE("topk: generic floats pick a correct top-k set", "[sparse][topk]") {
  // k = 24 over 250 keys: one key per group; k = 3 and 8 over 1000 keys:
  // groups of 15 and 16 keys, some holding two keys above the bound (rescored).
  const problem p1({1, 200, 250, 4, 2, 48, 40}, 91), p2({1, 150, 1000, 2, 1, 32, 32}, 92);
  for (int c = 0; c < 6; ++c) {
    const problem& pr = c < 2 ? p1 : p2;
    const bool causal = c % 2 == 1;
    tokmix::topk_attention_params p;
    p.top_k = c < 2 ? 24 : c < 4 ? 8 : 3;
    p.causal = causal;
    INFO("case " << c);
    const run_out got = run(pr, p);
    const double scale = 1.0 / std::sqrt(double(pr.s.D));
    const shape& s = pr.s;
    for (index_t h = 0; h < s.Hq; ++h)
      for (index_t i = 0; i < s.Lq; ++i) {
        const std::int32_t* sel = got.idx.data() + (h * s.Lq + i) * p.top_k;
        index_t nvis = 0;
        for (index_t j = 0; j < s.Lk; ++j) nvis += visible(p, s, i, j);
        const index_t n = std::min<index_t>(p.top_k, nvis);
        double worst_in = std::numeric_limits<double>::infinity(), best_out = -worst_in;
        for (index_t t = 0; t < p.top_k; ++t) {
          if (t >= n) {
            REQUIRE(sel[t] == -1);
            continue;
          }
          REQUIRE(visible(p, s, i, sel[t]));
          if (t > 0) REQUIRE(sel[t] > sel[t - 1]);
          worst_in = std::min(worst_in, score(pr, 0, h, i, sel[t], scale, 0));
        }
        for (index_t j = 0; j < s.Lk; ++j)
          if (visible(p, s, i, j) && !std::binary_search(sel, sel + n, std::int32_t(j)))
            best_out = std::max(best_out, score(pr, 0, h, i, j, scale, 0));
        REQUIRE(worst_in >= best_out - 1e-5);
      }
    const output ref = masked_attention(pr, [&](index_t, index_t h, index_t i, index_t j) {
      const std::int32_t* sel = got.idx.data() + (h * s.Lq + i) * p.top_k;
      return std::find(sel, sel + p.top_k, std::int32_t(j)) != sel + p.top_k;
    });
    TOKMIX_SPARSE_CHECK(got.r, ref, 2e-5, 1e-4);
  }
}

TEST_CASE("topk: 16-bit inputs and threads", "[sparse][topk]") {
  problem pr({2, 200, 200, 4, 2, 16, 16}, 13);
  quantize(pr);  // grid values are exact in bf16 and fp16
  tokmix::topk_attention_params p;
  p.top_k = 16;
  p.scale = 0.25f;
  p.causal = true;
  const run_out a = run(pr, p);
  const std::size_t nq = static_cast<std::size_t>(2 * 200 * 4 * 16), nk = static_cast<std::size_t>(2 * 200 * 2 * 16);
  std::vector<Eigen::half> qh(nq), kh(nk), vh(nk);
  for (std::size_t t = 0; t < nq; ++t) qh[t] = Eigen::half(pr.q.data()[t]);
  for (std::size_t t = 0; t < nk; ++t) {
    kh[t] = Eigen::half(pr.k.data()[t]);
    vh[t] = Eigen::half(pr.v.data()[t]);
  }
  problem rounded = pr;
  for (std::size_t t = 0; t < nk; ++t) rounded.v.data()[t] = float(vh[t]);
  result r(pr);
  tokmix::topk_attention(tensor_view<const Eigen::half, 4>(qh.data(), {2, 200, 4, 16}),
                         tensor_view<const Eigen::half, 4>(kh.data(), {2, 200, 2, 16}),
                         tensor_view<const Eigen::half, 4>(vh.data(), {2, 200, 2, 16}), r.ov(pr), r.lv(pr), p);
  const topk_ref ref = reference(rounded, p);
  TOKMIX_SPARSE_CHECK(r, ref.out, 2e-5, 1e-4);
  p.policy = tokmix::exec_policy::threads(2);
  const run_out b = run(pr, p);
  CHECK(a.r.o == b.r.o);
  CHECK(a.r.lse == b.r.lse);
  CHECK(a.idx == b.idx);
}

TEST_CASE("topk: decode step by step equals the causal prefill", "[sparse][topk]") {
  const index_t L = 140, Hq = 4, Hkv = 2, D = 16;
  problem pr({1, L, L, Hq, Hkv, D, D}, 17);
  quantize(pr);
  tokmix::topk_attention_params p;
  p.top_k = 9;
  p.scale = 0.25f;
  p.causal = true;
  p.window_left = 100;
  const run_out full = run(pr, p);
  tokmix::kv_cache<float> cache(1, Hkv, D, L);
  for (index_t t = 0; t < L;) {
    const index_t n = t % 3 == 0 ? 1 : std::min<index_t>(3, L - t);
    std::vector<float> kn(static_cast<std::size_t>(n * Hkv * D)), vn(kn.size()), qn(static_cast<std::size_t>(n * Hq * D));
    for (index_t i = 0; i < n; ++i) {
      for (index_t h = 0; h < Hkv; ++h)
        for (index_t e = 0; e < D; ++e) {
          kn[(i * Hkv + h) * D + e] = float(pr.ka(0, t + i, h, e));
          vn[(i * Hkv + h) * D + e] = float(pr.va(0, t + i, h, e));
        }
      for (index_t h = 0; h < Hq; ++h)
        for (index_t e = 0; e < D; ++e) qn[(i * Hq + h) * D + e] = float(pr.qa(0, t + i, h, e));
    }
    cache.append(tensor_view<const float, 4>(kn.data(), {1, n, Hkv, D}), tensor_view<const float, 4>(vn.data(), {1, n, Hkv, D}));
    std::vector<float> on(static_cast<std::size_t>(n * Hq * D)), ln(static_cast<std::size_t>(Hq * n));
    tokmix::topk_attention_decode(tensor_view<const float, 4>(qn.data(), {1, n, Hq, D}), cache,
                                  tensor_view<float, 4>(on.data(), {1, n, Hq, D}),
                                  tensor_view<float, 3>(ln.data(), {1, Hq, n}), p);
    for (index_t i = 0; i < n; ++i)
      for (index_t h = 0; h < Hq; ++h) {
        CHECK(std::abs(ln[h * n + i] - full.r.lse[h * L + t + i]) <= 1e-5f);
        for (index_t e = 0; e < D; ++e)
          REQUIRE(std::abs(on[(i * Hq + h) * D + e] - full.r.o[((t + i) * Hq + h) * D + e]) <= 2e-5f);
      }
    t += n;
  }
}

TEST_CASE("topk: K rows 2 KiB apart (packed tiles) select exactly", "[sparse][topk]") {
  // 8 kv heads x 64: every K row starts 2 KiB after the previous one, the
  // stride that makes the score pass pack its K tiles.
  problem pr({2, 70, 90, 8, 8, 64, 64}, 23);
  quantize(pr);
  for (bool causal : {false, true}) {
    tokmix::topk_attention_params p;
    p.top_k = 7;
    p.scale = 0.25f;
    p.causal = causal;
    const run_out got = run(pr, p);
    const topk_ref ref = reference(pr, p);
    REQUIRE(got.idx == ref.idx);
    TOKMIX_SPARSE_CHECK(got.r, ref.out, 2e-5, 1e-4);
  }
}

TEST_CASE("topk: decode from a 16-bit cache equals the prefill", "[sparse][topk]") {
  const index_t L = 90, Hq = 4, Hkv = 1, D = 24;
  problem pr({1, L, L, Hq, Hkv, D, D}, 19);
  quantize(pr);  // grid q, k: exact scores; v rounded to bf16 below for the reference
  for (index_t t = 0; t < L * Hkv * D; ++t) pr.v.data()[t] = float(Eigen::bfloat16(pr.v.data()[t]));
  tokmix::topk_attention_params p;
  p.top_k = 12;
  p.scale = 0.25f;
  p.causal = true;
  const run_out full = run(pr, p);
  tokmix::kv_cache<Eigen::bfloat16> cache(1, Hkv, D, L);
  cache.append(tensor_view<const float, 4>(pr.k.data(), {1, L - 5, Hkv, D}),
               tensor_view<const float, 4>(pr.v.data(), {1, L - 5, Hkv, D}));
  cache.append(tensor_view<const float, 4>(pr.k.data() + (L - 5) * Hkv * D, {1, 5, Hkv, D}),
               tensor_view<const float, 4>(pr.v.data() + (L - 5) * Hkv * D, {1, 5, Hkv, D}));
  std::vector<float> on(static_cast<std::size_t>(5 * Hq * D), NAN);
  tokmix::topk_attention_decode(tensor_view<const float, 4>(pr.q.data() + (L - 5) * Hq * D, {1, 5, Hq, D}), cache,
                                tensor_view<float, 4>(on.data(), {1, 5, Hq, D}), p);
  for (std::size_t t = 0; t < on.size(); ++t)
    REQUIRE(std::abs(on[t] - full.r.o[static_cast<std::size_t>((L - 5) * Hq * D) + t]) <= 2e-5f);
  // Bad parameters at decode: nothing written.
  std::vector<float> sentinel(on.size(), 7.f);
  p.top_k = 0;
  CHECK_THROWS_WITH(tokmix::topk_attention_decode(tensor_view<const float, 4>(pr.q.data(), {1, 5, Hq, D}), cache,
                                                  tensor_view<float, 4>(sentinel.data(), {1, 5, Hq, D}), p),
                    Catch::Contains("params.top_k") && Catch::Contains(">= 1"));
  p.top_k = 3;
  CHECK_THROWS_WITH(tokmix::topk_attention_decode(tensor_view<const float, 4>(pr.q.data(), {1, 5, Hq, D}), cache,
                                                  tensor_view<float, 4>(sentinel.data(), {1, 5, Hq, D - 1}), p),
                    Catch::Contains("argument 'o'") && Catch::Contains("shape [1, 5, 4, 24]"));
  for (float x : sentinel) CHECK(x == 7.f);
}

TEST_CASE("topk: bad parameters throw and write nothing", "[sparse][topk]") {
  const problem pr({1, 20, 20, 2, 1, 8, 8}, 1);
  for (index_t K : {0, -3}) {
    tokmix::topk_attention_params p;
    p.top_k = K;
    result r(pr);
    CHECK_THROWS_WITH(tokmix::topk_attention(pr.qv(), pr.kv(), pr.vv(), r.ov(pr), r.lv(pr), p),
                      Catch::Contains("top_k") && Catch::Contains(">= 1"));
    CHECK(r.untouched());
  }
  tokmix::topk_attention_params p;
  p.top_k = 4;
  result r(pr);
  std::vector<std::int32_t> idx(static_cast<std::size_t>(2 * 20 * 3), 5);
  CHECK_THROWS_WITH(tokmix::topk_attention(pr.qv(), pr.kv(), pr.vv(), r.ov(pr), r.lv(pr),
                                           tensor_view<std::int32_t, 4>(idx.data(), {1, 2, 20, 3}), p),
                    Catch::Contains("argument 'indices'") && Catch::Contains("shape [1, 2, 20, 4]"));
  CHECK(r.untouched());
  for (std::int32_t x : idx) CHECK(x == 5);
  p.window_right = -2;
  CHECK_THROWS_WITH(tokmix::topk_attention(pr.qv(), pr.kv(), pr.vv(), r.ov(pr), p), Catch::Contains("window_right"));
  CHECK(r.untouched());
}
