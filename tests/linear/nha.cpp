// NHA against its float64 definition: chunked (chunk sizes that do and do not
// divide L), token loop and steps, from random initial states (slots, rings,
// positions) to the whole final state; windows 1, odd and longer than L; slot
// counts 1 and odd; every slot lag; GQA and separate slot queries/keys;
// chained prefills; packed batches with empty and one-token sequences;
// threads; L = 65536 with extreme gates; bad inputs throw and write nothing.

#include "tokmix/linear/nha.hpp"

#include <cmath>
#include <limits>
#include <vector>

#include "linear/reference_nha.hpp"
#include "support/compare.hpp"

using namespace tokmix;
using namespace tokmix_test::nha_ref;

namespace {

struct config {
  index_t window, slots, lag;
};

// Window 1 (the token alone), odd, exactly the chunk, longer than any L here;
// 1 and odd slot counts; lag 0 (authors' default), = window (-1), and others.
const config configs[] = {{1, 1, -1},  {1, 3, 0},   {5, 7, -1},   {5, 7, 0},  {5, 1, 3},
                          {37, 4, -1}, {16, 5, 20}, {300, 5, -1}, {300, 3, 0}};

}  // namespace

TEST_CASE("nha: chunked, token loop and steps match the float64 definition", "[linear][nha]") {
  // Head dims off, at and around the AVX2 width (8) and twice it.
  const std::size_t dims[][2] = {{7, 9}, {8, 8}, {17, 16}};
  const std::size_t lens[] = {1, 7, 65};
  unsigned seed = 1;
  for (const config& c : configs)
    for (const auto& d : dims)
      for (std::size_t L : lens) {
        const std::size_t hq = (seed % 2) ? 2 : 4, hkv = 2;
        const problem p = make_problem(2, L, hq, hkv, d[0], d[1], c.window, c.slots, c.lag, seed += 7);
        for (index_t ch : {1, 16, 64}) check_mode(p, {mode::chunk, ch, {}}, 2e-5, seed);
        check_mode(p, {mode::recurrent, 64, {}}, 2e-5, seed);
        check_mode(p, {mode::step, 64, {}}, 2e-5, seed);
      }
}

TEST_CASE("nha: strong gates split chunks and still match", "[linear][nha]") {
  for (const config& c : {config{5, 7, -1}, config{5, 7, 0}, config{40, 3, 2}}) {
    const problem p = make_problem(1, 150, 2, 1, 12, 10, c.window, c.slots, c.lag, 404, gates::strong);
    for (index_t ch : {16, 64}) check_mode(p, {mode::chunk, ch, {}}, 2e-5);
    check_mode(p, {mode::recurrent, 64, {}}, 2e-5);
  }
}

TEST_CASE("nha: L = 1000, head dim 64, window 100", "[linear][nha]") {
  const problem p = make_problem(1, 1000, 2, 1, 64, 64, 100, 16, -1, 909);
  check_mode(p, {mode::chunk, 64, {}}, 5e-5);
  check_mode(p, {mode::chunk, 48, {}}, 5e-5);
  check_mode(p, {mode::recurrent, 64, {}}, 5e-5);
  const problem p0 = make_problem(1, 1000, 3, 3, 33, 31, 9, 64, 0, 910);
  check_mode(p0, {mode::chunk, 64, {}}, 5e-5);
}

TEST_CASE("nha: separate slot queries/keys with grouped heads", "[linear][nha]") {
  for (index_t lag : {index_t(-1), index_t(0), index_t(2)}) {
    const problem p = make_problem(2, 70, 6, 2, 13, 11, 9, 5, lag, 515, gates::mild, true);
    for (index_t ch : {7, 32}) check_mode(p, {mode::chunk, ch, {}}, 2e-5);
    check_mode(p, {mode::recurrent, 64, {}}, 2e-5);
    check_mode(p, {mode::step, 64, {}}, 2e-5);
  }
}

TEST_CASE("nha: chained prefills and steps after a prefill", "[linear][nha]") {
  for (const config& c : {config{5, 7, -1}, config{70, 3, 0}, config{9, 4, 12}}) {
    const problem p = make_problem(2, 150, 2, 1, 16, 24, c.window, c.slots, c.lag, 321);
    for (std::size_t split : {std::size_t(1), std::size_t(64), std::size_t(97)}) {
      INFO("window " << c.window << " lag " << c.lag << " split " << split);
      const problem a = slice(p, 0, split), b = slice(p, split, p.seq);
      // prefill(L1) then prefill(L2) == prefill(L1 + L2), outputs and state.
      nha_state whole = make_state(p), parts = make_state(p);
      randomise(p, whole, 5);
      randomise(p, parts, 5);
      const std::vector<float> ow = run(p, whole, {mode::chunk, 32, {}});
      const std::vector<float> oa = run(a, parts, {mode::chunk, 32, {}});
      const std::vector<float> ob = run(b, parts, {mode::chunk, 32, {}});
      std::vector<float> op(p.out_size());
      const std::size_t row = p.hq * p.dv;
      for (std::size_t bi = 0; bi < p.batch; ++bi) {
        std::copy(oa.begin() + std::ptrdiff_t(bi * a.seq * row), oa.begin() + std::ptrdiff_t((bi + 1) * a.seq * row),
                  op.begin() + std::ptrdiff_t(bi * p.seq * row));
        std::copy(ob.begin() + std::ptrdiff_t(bi * b.seq * row), ob.begin() + std::ptrdiff_t((bi + 1) * b.seq * row),
                  op.begin() + std::ptrdiff_t((bi * p.seq + split) * row));
      }
      CHECK(scaled_error(op, ow) <= 1e-5);
      CHECK(scaled_error(parts.slot_keys().data(), whole.slot_keys().data(), std::size_t(whole.slot_keys().size())) <=
            1e-5);
      CHECK(scaled_error(parts.slot_values().data(), whole.slot_values().data(),
                         std::size_t(whole.slot_values().size())) <= 1e-5);
      for (index_t s = 0; s < whole.batch(); ++s) CHECK(parts.positions()(s) == whole.positions()(s));

      // Token loop over a, then steps over b == token loop over everything. Not
      // bit for bit: a window's products split where the ring's keys end and
      // the call's begin, and that point differs between the two runs.
      nha_state rw = make_state(p), rp = make_state(p);
      randomise(p, rw, 6);
      randomise(p, rp, 6);
      const std::vector<float> r_whole = run(p, rw, {mode::recurrent, 64, {}});
      run(a, rp, {mode::recurrent, 64, {}});
      const std::vector<float> r_b = run(b, rp, {mode::step, 64, {}});
      std::vector<float> tail;
      for (std::size_t bi = 0; bi < p.batch; ++bi)
        tail.insert(tail.end(), r_whole.begin() + std::ptrdiff_t((bi * p.seq + split) * row),
                    r_whole.begin() + std::ptrdiff_t((bi + 1) * p.seq * row));
      CHECK(scaled_error(r_b, tail) <= 2e-6);
      // The slot recurrence itself runs the same operations either way: bit for bit.
      const auto sk = rw.slot_keys(), pk = rp.slot_keys();
      CHECK(std::equal(sk.data(), sk.data() + sk.size(), pk.data()));
      const auto sv = rw.slot_values(), pv = rp.slot_values();
      CHECK(std::equal(sv.data(), sv.data() + sv.size(), pv.data()));
      const auto rk = rw.ring_keys(), qk = rp.ring_keys();
      CHECK(std::equal(rk.data(), rk.data() + rk.size(), qk.data()));
    }
  }
}

TEST_CASE("nha: packed sequences with empty and one-token sequences", "[linear][nha]") {
  for (const config& c : {config{5, 7, -1}, config{1, 2, 0}, config{40, 3, 3}}) {
    problem p = make_problem(1, 100, 4, 2, 20, 12, c.window, c.slots, c.lag, 77);
    p.cu = {0, 0, 1, 40, 41, 41, 100};
    for (index_t ch : {16, 64}) check_mode(p, {mode::chunk, ch, {}}, 2e-5, 3);
    check_mode(p, {mode::recurrent, 64, {}}, 2e-5, 3);
  }
  // A packed call with every sequence empty advances nothing and writes nothing.
  problem e = make_problem(1, 0, 2, 1, 8, 8, 4, 3, -1, 5);
  e.cu = {0, 0, 0};
  nha_state st = make_state(e);
  randomise(e, st, 1);
  const ref_state before = from_tokmix(e, st);
  run(e, st, {mode::chunk, 16, {}});
  check_state(e, st, before, 0.0);
}

TEST_CASE("nha: two threads give the serial result bit for bit", "[linear][nha]") {
  const problem p = make_problem(2, 90, 6, 3, 32, 32, 20, 8, -1, 55);
  for (mode md : {mode::chunk, mode::recurrent}) {
    nha_state s1 = make_state(p), s2 = make_state(p);
    randomise(p, s1, 8);
    randomise(p, s2, 8);
    const std::vector<float> o1 = run(p, s1, {md, 32, exec_policy::serial()});
    const std::vector<float> o2 = run(p, s2, {md, 32, exec_policy::threads(2)});
    CHECK(o1 == o2);
    const auto a = s1.slot_values(), b = s2.slot_values();
    CHECK(std::equal(a.data(), a.data() + a.size(), b.data()));
    const auto ka = s1.slot_keys(), kb = s2.slot_keys();
    CHECK(std::equal(ka.data(), ka.data() + ka.size(), kb.data()));
  }
}

TEST_CASE("nha: L = 65536 with extreme gates stays finite", "[linear][nha]") {
  for (gates r : {gates::near_zero, gates::near_one, gates::strong}) {
    const problem p = make_problem(1, 65536, 1, 1, 8, 8, 16, 4, -1, 4242, r);
    nha_state st = make_state(p);
    ref_state rs = from_tokmix(p, st);
    std::vector<double> oref;
    recurrent(p, rs, oref);
    const std::vector<float> o = run(p, st, {mode::chunk, 64, {}});
    REQUIRE(all_finite(o.data(), o.size()));
    REQUIRE(all_finite(st.slot_keys().data(), std::size_t(st.slot_keys().size())));
    REQUIRE(all_finite(st.slot_values().data(), std::size_t(st.slot_values().size())));
    INFO("regime " << int(r) << ": out err " << scaled_error(o, oref));
    CHECK(scaled_error(o, oref) <= 2e-4);
    check_state(p, st, rs, 2e-4);
  }
}

TEST_CASE("nha: a non-dense [B, H, L, D] layout", "[linear][nha]") {
  const index_t B = 2, L = 37, H = 3, D = 16;
  const problem p = make_problem(std::size_t(B), std::size_t(L), std::size_t(H), std::size_t(H), std::size_t(D),
                                 std::size_t(D), 6, 5, -1, 31);
  auto to_bhld = [&](const std::vector<float>& x, index_t d) {
    std::vector<float> y(x.size());
    for (index_t b = 0; b < B; ++b)
      for (index_t t = 0; t < L; ++t)
        for (index_t h = 0; h < H; ++h)
          for (index_t e = 0; e < d; ++e)
            y[std::size_t(((b * H + h) * L + t) * d + e)] = x[std::size_t(((b * L + t) * H + h) * d + e)];
    return y;
  };
  const auto q = to_bhld(p.q, D), k = to_bhld(p.k, D), v = to_bhld(p.v, D), g = to_bhld(p.g, p.slots);
  std::vector<float> o(q.size(), 0.f);
  nha_state st = make_state(p);
  ref_state rs = from_tokmix(p, st);
  nha_params prm = p.params();
  prm.chunk_size = 16;
  nha_prefill(view_from_bhld(q.data(), B, H, L, D), view_from_bhld(k.data(), B, H, L, D),
              view_from_bhld(v.data(), B, H, L, D), view_from_bhld(g.data(), B, H, L, p.slots),
              view_from_bhld(o.data(), B, H, L, D), st, prm);
  std::vector<double> oref;
  recurrent(p, rs, oref);
  CHECK(scaled_error(o, to_bhld(std::vector<float>(oref.begin(), oref.end()), D)) <= 2e-5);
}

TEST_CASE("nha: steps allocate nothing after the first", "[linear][nha]") {
  const problem p = make_problem(1, 40, 4, 2, 16, 16, 8, 6, -1, 61);
  nha_state st = make_state(p);
  const problem first = slice(p, 0, 1), rest = slice(p, 1, p.seq);
  run(first, st, {mode::step, 64, {}});
  const std::size_t grown = scratch_arena::local().growth_count();
  run(rest, st, {mode::step, 64, {}});
  CHECK(scratch_arena::local().growth_count() == grown);
}

TEST_CASE("nha: bad inputs throw and write nothing", "[linear][nha]") {
  const index_t B = 1, L = 5, Hq = 2, Hk = 1, dk = 4, dv = 3, m = 3;
  std::vector<float> q(std::size_t(B * L * Hq * dk), 0.5f), k(std::size_t(B * L * Hk * dk), 0.25f);
  std::vector<float> v(std::size_t(B * L * Hk * dv), 1.f), g(std::size_t(B * L * Hk * m), -0.1f);
  std::vector<float> o(std::size_t(B * L * Hq * dv), 7.f);
  nha_params prm;
  prm.window = 3;
  prm.slots = m;
  nha_state st(B, Hk, dk, dv, prm);
  st.slot_keys().data()[0] = 3.f;
  st.ring_values().data()[0] = 4.f;
  st.positions()(0) = 2;
  auto Q = [&] { return tensor_view<const float, 4>(q.data(), {B, L, Hq, dk}); };
  auto K = [&](index_t d) { return tensor_view<const float, 4>(k.data(), {B, L, Hk, d}); };
  auto V = [&](index_t d) { return tensor_view<const float, 4>(v.data(), {B, L, Hk, d}); };
  auto Gt = [&](index_t s) { return tensor_view<const float, 4>(g.data(), {B, L, Hk, s}); };
  const tensor_view<float, 4> O(o.data(), {B, L, Hq, dv});
  auto untouched = [&] {
    for (float x : o)
      if (x != 7.f) return false;
    return st.slot_keys().data()[0] == 3.f && st.slot_keys().data()[1] == 0.f && st.ring_values().data()[0] == 4.f &&
           st.positions()(0) == 2;
  };
  auto expect_throw = [&](const nha_params& pr, const char* arg, auto&& call) {
    try {
      call(pr);
      FAIL("no throw for " << arg);
    } catch (const argument_error& e) {
      CHECK(e.argument() == arg);
    }
    CHECK(untouched());
  };
  auto prefill = [&](const nha_params& pr) { nha_prefill(Q(), K(dk), V(dv), Gt(m), O, st, pr); };
  auto recur = [&](const nha_params& pr) { nha_recurrent_prefill(Q(), K(dk), V(dv), Gt(m), O, st, pr); };

  nha_params bad = prm;
  bad.chunk_size = 0;
  expect_throw(bad, "chunk_size", prefill);
  bad = prm;
  bad.window = 0;
  expect_throw(bad, "window", prefill);
  expect_throw(bad, "window", recur);
  bad = prm;
  bad.slots = 0;
  expect_throw(bad, "slots", prefill);
  bad = prm;
  bad.slot_lag = -2;
  expect_throw(bad, "slot_lag", prefill);
  bad = prm;
  bad.scale = std::numeric_limits<float>::infinity();
  expect_throw(bad, "scale", prefill);
  bad = prm;
  bad.window = 4;  // the state was built for window 3
  expect_throw(bad, "state window", prefill);
  bad = prm;
  bad.slot_lag = 0;  // the state's lag is the window (3)
  expect_throw(bad, "state slot_lag", prefill);
  expect_throw(prm, "k", [&](const nha_params& pr) { nha_prefill(Q(), K(dk + 1), V(dv), Gt(m), O, st, pr); });
  expect_throw(prm, "o", [&](const nha_params& pr) { nha_prefill(Q(), K(dk), V(dv - 1), Gt(m), O, st, pr); });
  expect_throw(prm, "g", [&](const nha_params& pr) { nha_prefill(Q(), K(dk), V(dv), Gt(m - 1), O, st, pr); });
  // 2 query heads over 3 kv heads: not a grouping (k/v/g extents follow).
  std::vector<float> k3(std::size_t(B * L * 3 * dk), 0.f);
  expect_throw(prm, "q heads (dim 2)", [&](const nha_params& pr) {
    nha_prefill(Q(), tensor_view<const float, 4>(k3.data(), {B, L, 3, dk}), V(dv), Gt(m), O, st, pr);
  });
  nha_state wrong(B, Hk, dk + 1, dv, prm);
  try {
    nha_prefill(Q(), K(dk), V(dv), Gt(m), O, wrong, prm);
    FAIL("no throw for a state of another key_dim");
  } catch (const argument_error& e) {
    CHECK(e.argument() == "state key_dim");
  }
  for (float badg : {std::numeric_limits<float>::quiet_NaN(), -std::numeric_limits<float>::infinity(),
                     std::numeric_limits<float>::infinity(), 0.5f}) {
    g[7] = badg;
    expect_throw(prm, "g", prefill);
    expect_throw(prm, "g", recur);
  }
  g[7] = -0.1f;
  // cu_seqlens on a step, and bad offsets on a prefill.
  std::vector<std::int32_t> cu = {0, 2, 5};
  nha_params with_cu = prm;
  with_cu.cu_seqlens = tensor_view<const std::int32_t, 1>(cu.data(), {3});
  const tensor_view<const float, 3> q3(q.data(), {1, Hq, dk}), k3v(k.data(), {1, Hk, dk}), v3(v.data(), {1, Hk, dv}),
      g3(g.data(), {1, Hk, m});
  const tensor_view<float, 3> o3(o.data(), {1, Hq, dv});
  expect_throw(with_cu, "cu_seqlens", [&](const nha_params& pr) { nha_step(q3, k3v, v3, g3, o3, st, pr); });
  expect_throw(with_cu, "state batch", prefill);  // 2 sequences, a 1-sequence state
  cu = {0, 3, 2};
  expect_throw(with_cu, "cu_seqlens", prefill);
  // A corrupted position.
  st.positions()(0) = -1;
  try {
    prefill(prm);
    FAIL("no throw for a negative position");
  } catch (const argument_error& e) {
    CHECK(e.argument() == "state positions");
  }
  st.positions()(0) = 2;
  CHECK(untouched());
  // And a good call does write.
  nha_prefill(Q(), K(dk), V(dv), Gt(m), O, st, prm);
  CHECK(o[0] != 7.f);
  CHECK(st.positions()(0) == 2 + L);
}
