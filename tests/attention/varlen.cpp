// flash_attention_varlen: a packed batch (with empty and length-1 sequences)
// equals one flash_attention call per sequence, bit for bit, and bad offsets
// are rejected before anything is written.

#include <cstdint>
#include <limits>
#include <vector>

#include <catch2/catch.hpp>

#include "attention/reference.hpp"
#include "support/compare.hpp"
#include "tokmix/attention/flash_attention.hpp"
#include "tokmix/attention/varlen.hpp"

namespace {
using tokmix::index_t;
using tokmix::tensor_view;
}  // namespace

TEST_CASE("varlen equals per-sequence calls", "[attention][varlen]") {
  const index_t Hq = 4, Hkv = 2, D = 32, Dv = 24;
  // Sequence lengths include empty ones on either side and length 1.
  const std::vector<std::int32_t> lq{5, 0, 1, 70, 3, 0, 130}, lk{5, 4, 1, 70, 0, 0, 129};
  std::vector<std::int32_t> cq{0}, ck{0};
  for (std::size_t i = 0; i < lq.size(); ++i) {
    cq.push_back(cq.back() + lq[i]);
    ck.push_back(ck.back() + lk[i]);
  }
  const index_t Tq = cq.back(), Tk = ck.back(), B = static_cast<index_t>(lq.size());
  const auto qd = tokmix_test::random_floats(Tq * Hq * D, 1), kd = tokmix_test::random_floats(Tk * Hkv * D, 2),
             vd = tokmix_test::random_floats(Tk * Hkv * Dv, 3);
  tensor_view<const float, 3> q(qd.data(), {Tq, Hq, D}), k(kd.data(), {Tk, Hkv, D}), v(vd.data(), {Tk, Hkv, Dv});
  tensor_view<const std::int32_t, 1> cqv(cq.data(), {B + 1}), ckv(ck.data(), {B + 1});
  std::vector<float> slopes{0.1f, 0.2f, 0.3f, 0.4f};

  for (int mode = 0; mode < 4; ++mode) {
    tokmix::attention_params p;
    p.causal = mode >= 1;
    if (mode == 2) {
      p.window_left = 9;
      p.n_sink = 2;
    }
    if (mode == 3) {
      p.alignment = tokmix::causal_alignment::top_left;
      p.alibi_slopes = tensor_view<const float, 1>(slopes.data(), {Hq});
      p.policy = tokmix::exec_policy::threads(2);
    }
    std::vector<float> o(Tq * Hq * Dv, 1e30f), lse(Hq * Tq, 1e30f);
    tokmix::flash_attention_varlen(q, k, v, tensor_view<float, 3>(o.data(), {Tq, Hq, Dv}), cqv, ckv, 130, 129,
                                   tensor_view<float, 2>(lse.data(), {Hq, Tq}), p);
    for (index_t b = 0; b < B; ++b) {
      const index_t sq = cq[b], sk = ck[b], nq = lq[b], nk = lk[b];
      tensor_view<const float, 4> qb(qd.data() + sq * Hq * D, {1, nq, Hq, D});
      tensor_view<const float, 4> kb(kd.data() + sk * Hkv * D, {1, nk, Hkv, D});
      tensor_view<const float, 4> vb(vd.data() + sk * Hkv * Dv, {1, nk, Hkv, Dv});
      std::vector<float> ob(nq * Hq * Dv), lb(Hq * nq);
      tokmix::flash_attention(qb, kb, vb, tensor_view<float, 4>(ob.data(), {1, nq, Hq, Dv}),
                              tensor_view<float, 3>(lb.data(), {1, Hq, nq}), p);
      INFO("mode " << mode << " sequence " << b);
      for (index_t i = 0; i < nq * Hq * Dv; ++i) REQUIRE(o[sq * Hq * Dv + i] == ob[i]);
      for (index_t h = 0; h < Hq; ++h)
        for (index_t i = 0; i < nq; ++i) REQUIRE(lse[h * Tq + sq + i] == lb[h * nq + i]);
      if (nq > 0) {
        const auto ref = tokmix_test::attention_reference(qb, kb, vb, p);
        TOKMIX_REQUIRE_CLOSE(ob.data(), ref.o.data(), ob.size(), 2e-5, 1e-4);
      }
    }
  }
}

TEST_CASE("varlen rejects bad offsets and options without writing", "[attention][varlen]") {
  const index_t T = 6, H = 2, D = 8;
  std::vector<float> qd(T * H * D, 0.5f), o(T * H * D, 42.f), lse(H * T, 42.f);
  tensor_view<const float, 3> q(qd.data(), {T, H, D});
  tensor_view<float, 3> ov(o.data(), {T, H, D});
  tensor_view<float, 2> lv(lse.data(), {H, T});
  auto attempt = [&](std::vector<std::int32_t> cq, std::vector<std::int32_t> ck, index_t mq, index_t mk,
                     const tokmix::attention_params& p) {
    tensor_view<const std::int32_t, 1> a(cq.data(), {static_cast<index_t>(cq.size())});
    tensor_view<const std::int32_t, 1> b(ck.data(), {static_cast<index_t>(ck.size())});
    tokmix::flash_attention_varlen(q, q, q, ov, a, b, mq, mk, lv, p);
  };
  auto untouched = [&] {
    for (float x : o) REQUIRE(x == 42.f);
    for (float x : lse) REQUIRE(x == 42.f);
  };
  const tokmix::attention_params p0;
  REQUIRE_THROWS_AS(attempt({1, 6}, {0, 6}, -1, -1, p0), tokmix::argument_error);         // not starting at 0
  REQUIRE_THROWS_AS(attempt({0, 4, 3, 6}, {0, 2, 4, 6}, -1, -1, p0), tokmix::argument_error);  // decreasing
  REQUIRE_THROWS_AS(attempt({0, 2, 5}, {0, 2, 6}, -1, -1, p0), tokmix::argument_error);  // not ending at total
  REQUIRE_THROWS_AS(attempt({0, 2, 6}, {0, 6}, -1, -1, p0), tokmix::argument_error);     // lengths differ
  REQUIRE_THROWS_AS(attempt({0, 2, 6}, {0, 2, 6}, 3, -1, p0), tokmix::argument_error);   // exceeds max_seqlen_q
  REQUIRE_THROWS_AS(attempt({}, {}, -1, -1, p0), tokmix::argument_error);                // empty offsets
  tokmix::attention_params p;
  p.window_left = -5;
  REQUIRE_THROWS_AS(attempt({0, 6}, {0, 6}, -1, -1, p), tokmix::argument_error);
  std::vector<char> m(T * T, 1);
  p = {};
  p.mask = tensor_view<const bool, 4>(reinterpret_cast<const bool*>(m.data()), {1, 1, T, T});
  REQUIRE_THROWS_AS(attempt({0, 6}, {0, 6}, -1, -1, p), tokmix::argument_error);
  untouched();
  // Wrong packed shapes.
  REQUIRE_THROWS_AS(tokmix::flash_attention_varlen(q, tensor_view<const float, 3>(qd.data(), {T, 3, D - 2}), q, ov,
                                                   tensor_view<const std::int32_t, 1>(), tensor_view<const std::int32_t, 1>(),
                                                   -1, -1, p0),
                    tokmix::argument_error);
  untouched();
  attempt({0, 2, 2, 6}, {0, 1, 3, 6}, 4, 3, p0);
  for (float x : o) REQUIRE(std::isfinite(x));
}
