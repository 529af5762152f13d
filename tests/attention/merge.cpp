// merge_attention_partials: two partial results over disjoint key sets merge
// into the result over the union, including parts that saw no key at all.

#include <cmath>
#include <limits>
#include <vector>

#include <catch2/catch.hpp>

#include "attention/reference.hpp"
#include "support/compare.hpp"
#include "tokmix/attention/flash_attention.hpp"
#include "tokmix/attention/merge.hpp"

namespace {
using tokmix::index_t;
const float ninf = -std::numeric_limits<float>::infinity();
}  // namespace

TEST_CASE("row merge handles -inf on either side", "[attention][merge]") {
  const float a[3] = {1, 2, 3}, b[3] = {-1, 5, 7};
  float out[3];
  REQUIRE(tokmix::merge_attention_row(a, ninf, b, ninf, out, 3) == ninf);
  REQUIRE((out[0] == 0 && out[1] == 0 && out[2] == 0));
  REQUIRE(tokmix::merge_attention_row(a, 0.5f, b, ninf, out, 3) == 0.5f);
  REQUIRE((out[0] == 1 && out[1] == 2 && out[2] == 3));
  REQUIRE(tokmix::merge_attention_row(a, ninf, b, -3.f, out, 3) == -3.f);
  REQUIRE((out[0] == -1 && out[1] == 5 && out[2] == 7));
  // Equal weights: the mean, lse + log 2.
  const float l = tokmix::merge_attention_row(a, 1.f, b, 1.f, out, 3);
  REQUIRE(l == Approx(1.f + std::log(2.f)));
  REQUIRE(out[1] == Approx(3.5f));
  // Huge lse gap: no overflow.
  const float big = tokmix::merge_attention_row(a, 1e4f, b, -1e4f, out, 3);
  REQUIRE(big == 1e4f);
  REQUIRE(out[2] == 3.f);
}

TEST_CASE("merged split-KV results equal attention over all keys", "[attention][merge]") {
  const index_t B = 2, Lq = 9, Lk = 23, H = 4, Hkv = 2, D = 16, Dv = 8;
  auto qd = tokmix_test::random_floats(B * Lq * H * D, 1), kd = tokmix_test::random_floats(B * Lk * Hkv * D, 2),
       vd = tokmix_test::random_floats(B * Lk * Hkv * Dv, 3);
  tokmix::tensor_view<const float, 4> q(qd.data(), {B, Lq, H, D});
  tokmix::tensor_view<const float, 4> k(kd.data(), {B, Lk, Hkv, D});
  tokmix::tensor_view<const float, 4> v(vd.data(), {B, Lk, Hkv, Dv});
  tokmix::attention_params p;
  p.causal = true;  // bottom-right: early rows see few keys, so some parts are empty
  const auto whole = tokmix_test::attention_reference(q, k, v, p);

  for (index_t split : {index_t(0), index_t(5), index_t(16), index_t(23)}) {
    // Part 1: keys [0, split), part 2: keys [split, Lk), each through the real kernel
    // using sub-views of K/V; causality is expressed with a bool mask.
    std::vector<char> m1(Lq * Lk, 0), m2(Lq * Lk, 0);
    const index_t off = Lk - Lq;
    for (index_t i = 0; i < Lq; ++i)
      for (index_t j = 0; j < Lk; ++j) {
        const bool vis = j <= i + off;
        (j < split ? m1 : m2)[i * Lk + j] = vis;
      }
    tokmix::attention_params p1, p2;
    p1.mask = tokmix::tensor_view<const bool, 4>(reinterpret_cast<const bool*>(m1.data()), {1, 1, Lq, Lk});
    p2.mask = tokmix::tensor_view<const bool, 4>(reinterpret_cast<const bool*>(m2.data()), {1, 1, Lq, Lk});
    std::vector<float> o1(B * Lq * H * Dv), o2(o1.size()), l1(B * H * Lq), l2(l1.size());
    tokmix::tensor_view<float, 4> o1v(o1.data(), {B, Lq, H, Dv}), o2v(o2.data(), {B, Lq, H, Dv});
    tokmix::tensor_view<float, 3> l1v(l1.data(), {B, H, Lq}), l2v(l2.data(), {B, H, Lq});
    tokmix::flash_attention(q, k, v, o1v, l1v, p1);
    tokmix::flash_attention(q, k, v, o2v, l2v, p2);
    // In place into part 1.
    tokmix::merge_attention_partials(o1v, l1v, o2v, l2v, o1v, l1v);
    INFO("split " << split);
    TOKMIX_REQUIRE_CLOSE(o1.data(), whole.o.data(), o1.size(), 1e-5, 1e-4);
    TOKMIX_REQUIRE_CLOSE(l1.data(), whole.lse.data(), l1.size(), 1e-5, 1e-5);
  }
}

TEST_CASE("merge_attention_partials validates shapes before writing", "[attention][merge]") {
  std::vector<float> o(2 * 3 * 4 * 5, 1.f), l(2 * 4 * 3, 0.f), out(o.size(), 42.f), lout(l.size(), 42.f);
  tokmix::tensor_view<const float, 4> ov(o.data(), {2, 3, 4, 5});
  tokmix::tensor_view<const float, 3> lv(l.data(), {2, 4, 3});
  tokmix::tensor_view<const float, 3> bad_l(l.data(), {2, 3, 4});
  tokmix::tensor_view<float, 4> outv(out.data(), {2, 3, 4, 5});
  tokmix::tensor_view<float, 3> loutv(lout.data(), {2, 4, 3});
  REQUIRE_THROWS_AS(tokmix::merge_attention_partials(ov, lv, ov, bad_l, outv, loutv), tokmix::argument_error);
  for (float x : out) REQUIRE(x == 42.f);
  for (float x : lout) REQUIRE(x == 42.f);
  tokmix::merge_attention_partials(ov, lv, ov, lv, outv, loutv);
  for (float x : out) REQUIRE(x == Approx(1.f));
  for (float x : lout) REQUIRE(x == Approx(std::log(2.f)));
}
