// dilated_attention against the float64 softmax reference with the explicit
// mask written from the definition (sliding / clamped windows in steps of the
// dilation, causal, global keys and global query rows), across dilations,
// odd sizes, GQA, Lq != Lk, both alignments, threads, decode step by step ==
// causal prefill, and bad parameters throwing without writing.

#include "tokmix/sparse/dilated.hpp"

#include <cmath>
#include <cstdint>
#include <limits>
#include <set>
#include <vector>

#include <catch2/catch.hpp>

#include "sparse/reference.hpp"
#include "support/compare.hpp"

namespace {

using tokmix::index_t;
using tokmix::tensor_view;
using namespace tokmix_test::sparse_ref;

index_t mod(index_t a, index_t d) { return ((a % d) + d) % d; }

// The visible set, straight from the definition (see dilated.hpp).
predicate dilated_mask(const tokmix::dilated_attention_params& p, const shape& s, const std::set<index_t>& globals) {
  return [=](index_t, index_t, index_t i, index_t j) {
    const index_t pos = i + (p.alignment == tokmix::causal_alignment::bottom_right ? s.Lk - s.Lq : 0);
    if (p.causal && j > pos) return false;
    if (globals.count(pos) || globals.count(j)) return true;
    const index_t d = p.dilation;
    if (mod(j - pos, d) != 0) return false;
    if (p.mode == tokmix::dilated_window::sliding) {
      const index_t t = (j - pos) / d;
      return (p.window_left < 0 || t >= -p.window_left) && (p.window_right < 0 || t <= p.window_right);
    }
    // Clamped: the K keys of pos's class nearest in class order, shifted inward at the ends.
    std::vector<index_t> cls;
    for (index_t x = mod(pos, d); x < s.Lk; x += d) cls.push_back(x);
    const index_t K = p.window_left + p.window_right + 1, n = static_cast<index_t>(cls.size());
    const index_t a = (pos - mod(pos, d)) / d;
    index_t start = a - p.window_left;
    if (start > n - K) start = n - K;
    if (start < 0) start = 0;
    for (index_t t = start; t < std::min(n, start + K); ++t)
      if (cls[static_cast<std::size_t>(t)] == j) return true;
    return false;
  };
}

void check(const problem& pr, tokmix::dilated_attention_params p, const std::vector<std::int32_t>& globals = {}) {
  p.global_positions = globals.empty() ? tensor_view<const std::int32_t, 1>()
                                       : tensor_view<const std::int32_t, 1>(globals.data(), {index_t(globals.size())});
  result r(pr);
  tokmix::dilated_attention(pr.qv(), pr.kv(), pr.vv(), r.ov(pr), r.lv(pr), p);
  const std::set<index_t> gs(globals.begin(), globals.end());
  const auto ref = masked_attention(pr, dilated_mask(p, pr.s, gs), p.scale, p.softcap);
  TOKMIX_SPARSE_CHECK(r, ref, 2e-5, 1e-4);
}

}  // namespace

TEST_CASE("dilated: sliding windows across dilations, sizes and alignments", "[sparse][dilated]") {
  const shape shapes[] = {{1, 1, 1, 1, 1, 8, 8}, {1, 37, 37, 2, 1, 16, 16}, {2, 150, 150, 4, 2, 24, 20},
                          {1, 100, 257, 2, 2, 16, 16}, {1, 200, 90, 2, 1, 16, 8}};
  unsigned seed = 3;
  for (const shape& s : shapes) {
    const problem pr(s, seed++);
    for (index_t d : {1, 2, 3, 7})
      for (index_t left : {-1, 0, 5})
        for (index_t right : {-1, 0, 2}) {
          INFO("L " << s.Lq << "x" << s.Lk << " d " << d << " window " << left << "," << right);
          tokmix::dilated_attention_params p;
          p.dilation = d;
          p.window_left = left;
          p.window_right = right;
          check(pr, p);
          p.causal = true;
          check(pr, p);
          p.alignment = tokmix::causal_alignment::top_left;
          check(pr, p);
        }
  }
}

TEST_CASE("dilated: clamped neighbourhoods and global tokens", "[sparse][dilated]") {
  const problem pr({1, 150, 150, 2, 1, 32, 32}, 17);
  for (index_t d : {1, 4}) {
    tokmix::dilated_attention_params p;
    p.dilation = d;
    p.mode = tokmix::dilated_window::clamped;
    p.window_left = 3;
    p.window_right = 3;
    check(pr, p);
    p.window_right = 0;
    check(pr, p);
    p.window_left = 40;  // wider than a class of dilation 4 (38 keys): the whole class
    check(pr, p);
    check(pr, p, {0, 1, 77, 149});
  }
  tokmix::dilated_attention_params p;
  p.dilation = 3;
  p.window_left = 4;
  p.window_right = 4;
  p.softcap = 1.5f;
  check(pr, p, {0, 5, 6, 100});
  p.causal = true;
  check(pr, p, {0, 5, 6, 100});
  // Lq != Lk: global query rows map through the alignment.
  const problem cross({2, 60, 150, 4, 2, 16, 16}, 19);
  check(cross, p, {3, 100, 120, 149});
  p.alignment = tokmix::causal_alignment::top_left;
  check(cross, p, {3, 40, 120});
}

TEST_CASE("dilated: threads give the serial result bit for bit", "[sparse][dilated]") {
  const problem pr({2, 400, 400, 4, 2, 32, 32}, 23);
  const std::vector<std::int32_t> g = {0, 200};
  tokmix::dilated_attention_params p;
  p.dilation = 2;
  p.window_left = 64;
  p.causal = true;
  p.global_positions = tensor_view<const std::int32_t, 1>(g.data(), {2});
  result a(pr), b(pr);
  tokmix::dilated_attention(pr.qv(), pr.kv(), pr.vv(), a.ov(pr), a.lv(pr), p);
  p.policy = tokmix::exec_policy::threads(2);
  tokmix::dilated_attention(pr.qv(), pr.kv(), pr.vv(), b.ov(pr), b.lv(pr), p);
  CHECK(a.o == b.o);
  CHECK(a.lse == b.lse);
}

TEST_CASE("dilated: decode step by step equals the causal prefill", "[sparse][dilated]") {
  const index_t B = 1, L = 120, Hq = 4, Hkv = 2, D = 16;
  const problem pr({B, L, L, Hq, Hkv, D, D}, 29);
  const std::vector<std::int32_t> g = {0, 7, 50};
  for (index_t left : {-1, 6}) {
    tokmix::dilated_attention_params p;
    p.dilation = 3;
    p.window_left = left;
    p.causal = true;
    p.global_positions = tensor_view<const std::int32_t, 1>(g.data(), {3});
    result full(pr);
    tokmix::dilated_attention(pr.qv(), pr.kv(), pr.vv(), full.ov(pr), full.lv(pr), p);
    tokmix::kv_cache<float> cache(B, Hkv, D, L);
    for (index_t t = 0; t < L;) {
      const index_t n = t % 2 == 0 ? 1 : std::min<index_t>(2, L - t);
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
      cache.append(tensor_view<const float, 4>(kn.data(), {B, n, Hkv, D}), tensor_view<const float, 4>(vn.data(), {B, n, Hkv, D}));
      std::vector<float> on(static_cast<std::size_t>(n * Hq * D)), ln(static_cast<std::size_t>(Hq * n));
      tokmix::dilated_attention_decode(tensor_view<const float, 4>(qn.data(), {B, n, Hq, D}), cache,
                                       tensor_view<float, 4>(on.data(), {B, n, Hq, D}),
                                       tensor_view<float, 3>(ln.data(), {B, Hq, n}), p);
      for (index_t i = 0; i < n; ++i)
        for (index_t h = 0; h < Hq; ++h) {
          CHECK(std::abs(ln[h * n + i] - full.lse[h * L + t + i]) <= 1e-5f);
          for (index_t e = 0; e < D; ++e)
            REQUIRE(std::abs(on[(i * Hq + h) * D + e] - full.o[((t + i) * Hq + h) * D + e]) <= 2e-5f);
        }
      t += n;
    }
  }
}

TEST_CASE("dilated: bad parameters throw and write nothing", "[sparse][dilated]") {
  const problem pr({1, 50, 50, 2, 1, 16, 16}, 31);
  auto expect = [&](const tokmix::dilated_attention_params& p, const char* what) {
    result r(pr);
    CHECK_THROWS_WITH(tokmix::dilated_attention(pr.qv(), pr.kv(), pr.vv(), r.ov(pr), r.lv(pr), p), Catch::Contains(what));
    CHECK(r.untouched());
  };
  tokmix::dilated_attention_params p;
  p.dilation = 0;
  expect(p, "dilation");
  p = {};
  p.window_left = -2;
  expect(p, "window_left");
  p = {};
  p.mode = tokmix::dilated_window::clamped;
  expect(p, "bounded");
  p.window_left = p.window_right = 2;
  p.causal = true;
  expect(p, "causal");
  p = {};
  const std::int32_t unsorted[3] = {5, 3, 9}, out_of_range[2] = {3, 50};
  p.global_positions = tensor_view<const std::int32_t, 1>(unsorted, {3});
  expect(p, "strictly increasing");
  p.global_positions = tensor_view<const std::int32_t, 1>(out_of_range, {2});
  expect(p, "[0, 50)");
  p = {};
  result r(pr);
  const tensor_view<const float, 4> k_bad(pr.k.data(), {1, 49, 1, 16});
  CHECK_THROWS_WITH(tokmix::dilated_attention(pr.qv(), k_bad, pr.vv(), r.ov(pr), r.lv(pr), p), Catch::Contains("v"));
  CHECK(r.untouched());
}

TEST_CASE("dilated: fp16 and bf16 inputs equal the float path on the rounded values", "[sparse][dilated]") {
  const problem pr({1, 150, 150, 2, 1, 32, 32}, 37);
  const std::vector<std::int32_t> g = {0, 70};
  tokmix::dilated_attention_params p;
  p.dilation = 3;
  p.window_left = 10;
  p.causal = true;
  p.global_positions = tensor_view<const std::int32_t, 1>(g.data(), {2});
  const rounded_copy<Eigen::half> h(pr);
  const rounded_copy<Eigen::bfloat16> bf(pr);
  result a(pr), b(pr), c(pr), d(pr);
  tokmix::dilated_attention(h.qv(), h.kv(), h.vv(), a.ov(pr), a.lv(pr), p);
  tokmix::dilated_attention(h.exact.qv(), h.exact.kv(), h.exact.vv(), b.ov(pr), b.lv(pr), p);
  tokmix::dilated_attention(bf.qv(), bf.kv(), bf.vv(), c.ov(pr), c.lv(pr), p);
  tokmix::dilated_attention(bf.exact.qv(), bf.exact.kv(), bf.exact.vv(), d.ov(pr), d.lv(pr), p);
  TOKMIX_REQUIRE_CLOSE(a.o.data(), b.o.data(), a.o.size(), 1e-6, 1e-5);
  TOKMIX_REQUIRE_CLOSE(c.o.data(), d.o.data(), c.o.size(), 1e-6, 1e-5);
}
