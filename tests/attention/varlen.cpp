// flash_attention_varlen: a packed batch (with empty and length-1 sequences)
// equals one flash_attention call per sequence, bit for bit; fp16/bf16 q/k/v
// storage against the float64 reference on the rounded inputs; bad offsets
// are rejected before anything is written.

#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
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

namespace {

// Packed q/k/v stored as TQ/TK/TV in NaN-padded buffers; every sequence of the
// varlen call against the float64 reference on the same (rounded) inputs.
template <class TQ, class TK, class TV>
void check_varlen_storage(const tokmix::attention_params& p, unsigned seed) {
  const index_t Hq = 4, Hkv = 2, D = 64, Dv = 48;
  const std::vector<std::int32_t> lq{5, 0, 1, 70, 3, 130}, lk{5, 4, 1, 70, 0, 129};
  std::vector<std::int32_t> cq{0}, ck{0};
  for (std::size_t i = 0; i < lq.size(); ++i) {
    cq.push_back(cq.back() + lq[i]);
    ck.push_back(ck.back() + lk[i]);
  }
  const index_t Tq = cq.back(), Tk = ck.back(), B = static_cast<index_t>(lq.size());
  tokmix_test::nan_padded<TQ> qd(static_cast<std::size_t>(Tq * Hq * D));
  tokmix_test::nan_padded<TK> kd(static_cast<std::size_t>(Tk * Hkv * D));
  tokmix_test::nan_padded<TV> vd(static_cast<std::size_t>(Tk * Hkv * Dv));
  auto fill = [](auto* dst, index_t n, unsigned s) {
    using T = std::remove_pointer_t<decltype(dst)>;
    const auto r = tokmix_test::random_floats(static_cast<std::size_t>(n), s);
    for (index_t i = 0; i < n; ++i) dst[i] = T(r[static_cast<std::size_t>(i)]);
  };
  fill(qd.data(), Tq * Hq * D, seed);
  fill(kd.data(), Tk * Hkv * D, seed + 1);
  fill(vd.data(), Tk * Hkv * Dv, seed + 2);
  tensor_view<const TQ, 3> q(qd.data(), {Tq, Hq, D});
  tensor_view<const TK, 3> k(kd.data(), {Tk, Hkv, D});
  tensor_view<const TV, 3> v(vd.data(), {Tk, Hkv, Dv});
  tokmix_test::nan_padded<float> o(static_cast<std::size_t>(Tq * Hq * Dv)), lse(static_cast<std::size_t>(Hq * Tq));
  tokmix::flash_attention_varlen(q, k, v, tensor_view<float, 3>(o.data(), {Tq, Hq, Dv}),
                                 tensor_view<const std::int32_t, 1>(cq.data(), {B + 1}),
                                 tensor_view<const std::int32_t, 1>(ck.data(), {B + 1}), 130, 129,
                                 tensor_view<float, 2>(lse.data(), {Hq, Tq}), p);
  REQUIRE(std::isnan(o.data()[-1]));
  REQUIRE(std::isnan(o.data()[Tq * Hq * Dv]));
  REQUIRE(std::isnan(lse.data()[-1]));
  REQUIRE(std::isnan(lse.data()[Hq * Tq]));
  for (index_t b = 0; b < B; ++b) {
    const index_t sq = cq[b], sk = ck[b], nq = lq[b], nk = lk[b];
    if (nq == 0) continue;  // no rows of this sequence in o or lse
    INFO("sequence " << b << " (" << nq << " queries, " << nk << " keys)");
    const auto ref = tokmix_test::attention_reference(tensor_view<const TQ, 4>(qd.data() + sq * Hq * D, {1, nq, Hq, D}),
                                                      tensor_view<const TK, 4>(kd.data() + sk * Hkv * D, {1, nk, Hkv, D}),
                                                      tensor_view<const TV, 4>(vd.data() + sk * Hkv * Dv, {1, nk, Hkv, Dv}), p);
    TOKMIX_REQUIRE_CLOSE(o.data() + sq * Hq * Dv, ref.o.data(), ref.o.size(), 2e-5, 1e-4);
    for (index_t h = 0; h < Hq; ++h)
      TOKMIX_REQUIRE_CLOSE(lse.data() + h * Tq + sq, ref.lse.data() + h * nq, static_cast<std::size_t>(nq), 2e-5, 1e-4);
  }
}

}  // namespace

TEST_CASE("varlen: half and bfloat16 storage == float64 reference on the rounded inputs", "[attention][varlen]") {
  tokmix::attention_params p;
  p.causal = true;
  p.window_left = 40;
  check_varlen_storage<Eigen::half, Eigen::half, Eigen::half>(p, 11);
  check_varlen_storage<Eigen::bfloat16, Eigen::bfloat16, Eigen::bfloat16>(p, 12);
  p = {};
  p.policy = tokmix::exec_policy::threads(2);
  check_varlen_storage<Eigen::half, Eigen::half, Eigen::half>(p, 13);
  check_varlen_storage<Eigen::bfloat16, Eigen::bfloat16, Eigen::bfloat16>(p, 14);
  p.causal = true;
  check_varlen_storage<Eigen::half, Eigen::bfloat16, float>(p, 15);
  check_varlen_storage<float, Eigen::half, Eigen::bfloat16>(p, 16);
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
