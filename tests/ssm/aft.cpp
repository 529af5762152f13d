// AFT (full, simple, local; causal and not) against a float64 log-sum-exp
// reference, extreme k, causal AFT-simple prefill chains and steps, bad
// inputs write nothing.

#include "tokmix/ssm/aft.hpp"

#include <cmath>
#include <limits>
#include <vector>

#include "ssm/reference.hpp"
#include "ssm/reference_lti.hpp"
#include "support/compare.hpp"

using namespace tokmix;
using tokmix_test::random_floats;
using tokmix_test::ssm_buffer;

namespace {

enum class kind { simple, full, local };

// Returns the (dense) output after checking it against the reference.
std::vector<float> run_aft(kind kd, std::size_t B, std::size_t L, std::size_t d, std::size_t s, bool causal,
                           unsigned seed, float k_scale = 2.f, const exec_policy& policy = {}) {
  INFO("kind " << int(kd) << " B " << B << " L " << L << " d " << d << " s " << s << " causal " << causal << " k_scale "
               << k_scale << " workers " << policy.workers());
  const auto qv = random_floats(B * L * d, seed, -3.f, 3.f), kv = random_floats(B * L * d, seed + 1, -k_scale, k_scale),
             vv = random_floats(B * L * d, seed + 2);
  ssm_buffer q({B, L, d}, 1), k({B, L, d}, 2), v({B, L, d}), y({B, L, d}, 3);
  q.fill(qv);
  k.fill(kv);
  v.fill(vv);
  aft_options o;
  o.causal = causal;
  o.policy = policy;
  std::vector<float> wf, wb;
  std::vector<double> ref;
  if (kd == kind::simple) {
    aft_simple(q.cview<3>(), k.cview<3>(), v.cview<3>(), y.view<3>(), o);
    ref = tokmix_test::lti_ref::aft(qv, kv, vv, B, L, d, [](std::size_t, std::size_t) { return 0.0; }, causal);
  } else if (kd == kind::full) {
    wf = random_floats(L * L, seed + 3, -2.f, 2.f);
    aft_full(q.cview<3>(), k.cview<3>(), v.cview<3>(), tensor_view<const float, 2>(wf.data(), {index_t(L), index_t(L)}),
             y.view<3>(), o);
    ref = tokmix_test::lti_ref::aft(qv, kv, vv, B, L, d, [&](std::size_t t, std::size_t tp) { return double(wf[t * L + tp]); },
                                    causal);
  } else {
    const std::size_t nw = 2 * s - 1;
    wb = random_floats(L * nw, seed + 4, -2.f, 3.f);
    aft_local(q.cview<3>(), k.cview<3>(), v.cview<3>(), tensor_view<const float, 2>(wb.data(), {index_t(L), index_t(nw)}),
              index_t(s), y.view<3>(), o);
    ref = tokmix_test::lti_ref::aft(
        qv, kv, vv, B, L, d,
        [&](std::size_t t, std::size_t tp) {
          const long diff = long(tp) - long(t);
          return std::abs(diff) < long(s) ? double(wb[t * nw + std::size_t(diff + long(s) - 1)]) : 0.0;
        },
        causal);
  }
  const auto got = y.dense();
  TOKMIX_REQUIRE_CLOSE(got.data(), ref.data(), got.size(), 2e-5, 2e-4);
  REQUIRE(y.pads_untouched());
  return got;
}

}  // namespace

TEST_CASE("aft: simple, full and local match the float64 reference", "[ssm][aft]") {
  unsigned seed = 600;
  for (bool causal : {false, true})
    for (std::size_t d : {1, 13, 33, 70})
      for (std::size_t L : {1, 7, 65}) {
        run_aft(kind::simple, 2, L, d, 0, causal, ++seed);
        run_aft(kind::full, 2, L, d, 0, causal, ++seed);
        for (std::size_t s : {std::size_t(1), std::size_t(3), L + 2}) run_aft(kind::local, 2, L, d, s, causal, ++seed);
      }
  run_aft(kind::local, 1, 1000, 17, 32, true, 1);
  run_aft(kind::simple, 1, 1000, 17, 0, false, 2);
}

TEST_CASE("aft: k = +-1e3 stays finite", "[ssm][aft]") {
  for (bool causal : {false, true}) {
    run_aft(kind::simple, 1, 40, 19, 0, causal, 11, 1e3f);
    run_aft(kind::local, 1, 40, 19, 4, causal, 12, 1e3f);
    run_aft(kind::full, 1, 40, 19, 0, causal, 13, 1e3f);
  }
}

TEST_CASE("aft: causal AFT-simple two prefills == one prefill == steps", "[ssm][aft]") {
  const index_t B = 2, L1 = 9, L2 = 30, L = L1 + L2, d = 37;
  const auto qv = random_floats(std::size_t(B * L * d), 1), kv = random_floats(std::size_t(B * L * d), 2, -5.f, 5.f),
             vv = random_floats(std::size_t(B * L * d), 3);
  const tensor_view<const float, 3> q(qv.data(), {B, L, d}), k(kv.data(), {B, L, d}), v(vv.data(), {B, L, d});
  std::vector<float> y1(qv.size()), y2(qv.size()), y3(qv.size()), y0(qv.size());
  aft_state s1(B, d), s2(B, d), s3(B, d);
  aft_simple_prefill(q, k, v, s1, tensor_view<float, 3>(y1.data(), {B, L, d}));
  aft_options causal;
  causal.causal = true;
  aft_simple(q, k, v, tensor_view<float, 3>(y0.data(), {B, L, d}), causal);
  auto part = [&](const tensor_view<const float, 3>& x, index_t t0, index_t n) {
    return tensor_view<const float, 3>(x.ptr(0, t0, 0), {B, n, d}, x.strides());
  };
  const tensor_view<float, 3> y2v(y2.data(), {B, L, d});
  aft_simple_prefill(part(q, 0, L1), part(k, 0, L1), part(v, 0, L1), s2,
                     tensor_view<float, 3>(y2v.data(), {B, L1, d}, y2v.strides()));
  aft_simple_prefill(part(q, L1, L2), part(k, L1, L2), part(v, L1, L2), s2,
                     tensor_view<float, 3>(y2v.ptr(0, L1, 0), {B, L2, d}, y2v.strides()));
  const tensor_view<float, 3> y3v(y3.data(), {B, L, d});
  auto row = [&](const tensor_view<const float, 3>& x, index_t t) {
    return tensor_view<const float, 2>(x.ptr(0, t, 0), {B, d}, {x.stride(0), 1});
  };
  for (index_t t = 0; t < L; ++t)
    aft_simple_step(row(q, t), row(k, t), row(v, t), s3, tensor_view<float, 2>(y3v.ptr(0, t, 0), {B, d}, {y3v.stride(0), 1}));
  for (std::size_t i = 0; i < y1.size(); ++i) {
    REQUIRE(y1[i] == y0[i]);
    REQUIRE(y2[i] == y1[i]);
    REQUIRE(y3[i] == y1[i]);
  }
  const auto ref = tokmix_test::lti_ref::aft(qv, kv, vv, std::size_t(B), std::size_t(L), std::size_t(d),
                                             [](std::size_t, std::size_t) { return 0.0; }, true);
  TOKMIX_REQUIRE_CLOSE(y1.data(), ref.data(), ref.size(), 2e-5, 2e-4);
}

TEST_CASE("aft: threads give the serial result", "[ssm][aft]") {
  const index_t B = 2, L = 50, d = 150, s = 5;
  const auto qv = random_floats(std::size_t(B * L * d), 1), kv = random_floats(std::size_t(B * L * d), 2),
             vv = random_floats(std::size_t(B * L * d), 3), wv = random_floats(std::size_t(L * (2 * s - 1)), 4);
  const tensor_view<const float, 3> q(qv.data(), {B, L, d}), k(kv.data(), {B, L, d}), v(vv.data(), {B, L, d});
  std::vector<float> y1(qv.size()), y2(qv.size());
  aft_options o;
  aft_local(q, k, v, tensor_view<const float, 2>(wv.data(), {L, 2 * s - 1}), s, tensor_view<float, 3>(y1.data(), {B, L, d}), o);
  o.policy = exec_policy::threads(2);
  aft_local(q, k, v, tensor_view<const float, 2>(wv.data(), {L, 2 * s - 1}), s, tensor_view<float, 3>(y2.data(), {B, L, d}), o);
  for (std::size_t i = 0; i < y1.size(); ++i) REQUIRE(y1[i] == y2[i]);
}

TEST_CASE("aft: threads(2) == float64 reference == serial for simple, full and local", "[ssm][aft]") {
  // Two workers split the channels of each sequence into lane-aligned ranges
  // (d = 13: 8 + 5, d = 150: 80 + 70), tails included.
  unsigned seed = 950;
  for (std::size_t d : {13, 150})
    for (std::size_t B : {1, 2}) {
      const std::size_t L = 37;
      for (bool causal : {false, true}) {
        ++seed;
        for (kind kd : {kind::simple, kind::full, kind::local}) {
          const std::size_t s = kd == kind::local ? 6 : 0;
          const auto serial = run_aft(kd, B, L, d, s, causal, seed);
          const auto threaded = run_aft(kd, B, L, d, s, causal, seed, 2.f, exec_policy::threads(2));
          INFO("kind " << int(kd) << " d " << d << " B " << B << " causal " << causal);
          REQUIRE(threaded == serial);
        }
      }
    }
}

TEST_CASE("aft: threaded causal AFT-simple prefills carry the state == float64 reference", "[ssm][aft]") {
  const index_t B = 2, L1 = 20, L2 = 27, L = L1 + L2, d = 45;
  const auto qv = random_floats(std::size_t(B * L * d), 961), kv = random_floats(std::size_t(B * L * d), 962, -5.f, 5.f),
             vv = random_floats(std::size_t(B * L * d), 963);
  ssm_buffer q({std::size_t(B), std::size_t(L), std::size_t(d)}, 1), k({std::size_t(B), std::size_t(L), std::size_t(d)}, 2),
      v({std::size_t(B), std::size_t(L), std::size_t(d)}), y({std::size_t(B), std::size_t(L), std::size_t(d)}, 3);
  q.fill(qv);
  k.fill(kv);
  v.fill(vv);
  aft_options o;
  o.policy = exec_policy::threads(2);
  aft_state st(B, d);
  auto part = [&](const tensor_view<const float, 3>& x, index_t t0, index_t n) {
    return tensor_view<const float, 3>(x.ptr(0, t0, 0), {B, n, d}, x.strides());
  };
  const auto yv = y.view<3>();
  aft_simple_prefill(part(q.cview<3>(), 0, L1), part(k.cview<3>(), 0, L1), part(v.cview<3>(), 0, L1), st,
                     tensor_view<float, 3>(yv.data(), {B, L1, d}, yv.strides()), o);
  aft_simple_prefill(part(q.cview<3>(), L1, L2), part(k.cview<3>(), L1, L2), part(v.cview<3>(), L1, L2), st,
                     tensor_view<float, 3>(yv.ptr(0, L1, 0), {B, L2, d}, yv.strides()), o);
  const auto ref = tokmix_test::lti_ref::aft(qv, kv, vv, std::size_t(B), std::size_t(L), std::size_t(d),
                                             [](std::size_t, std::size_t) { return 0.0; }, true);
  const auto got = y.dense();
  TOKMIX_REQUIRE_CLOSE(got.data(), ref.data(), ref.size(), 2e-5, 2e-4);
  REQUIRE(y.pads_untouched());
}

TEST_CASE("aft: bad shapes and params throw argument_error and write nothing", "[ssm][aft]") {
  const index_t B = 1, L = 6, d = 5, s = 2;
  std::vector<float> qv(std::size_t(B * L * d), 0.5f), wv(std::size_t(L * L), 0.1f), y(qv.size(), -7.f);
  const tensor_view<const float, 3> q(qv.data(), {B, L, d});
  const tensor_view<float, 3> yv(y.data(), {B, L, d});
  CHECK_THROWS_AS(aft_simple(q, tensor_view<const float, 3>(qv.data(), {B, L - 1, d}), q, yv), argument_error);
  CHECK_THROWS_AS(aft_simple(q, q, q, tensor_view<float, 3>(y.data(), {B, L, d - 1})), argument_error);
  CHECK_THROWS_AS(aft_full(q, q, q, tensor_view<const float, 2>(wv.data(), {L, L - 1}), yv), argument_error);
  CHECK_THROWS_AS(aft_local(q, q, q, tensor_view<const float, 2>(wv.data(), {L, 3}), 0, yv), argument_error);
  CHECK_THROWS_AS(aft_local(q, q, q, tensor_view<const float, 2>(wv.data(), {L, 3}), -1, yv), argument_error);
  CHECK_THROWS_AS(aft_local(q, q, q, tensor_view<const float, 2>(wv.data(), {L, 4}), s, yv), argument_error);
  wv[7] = std::numeric_limits<float>::quiet_NaN();
  CHECK_THROWS_AS(aft_full(q, q, q, tensor_view<const float, 2>(wv.data(), {L, L}), yv), argument_error);
  CHECK_THROWS_AS(aft_local(q, q, q, tensor_view<const float, 2>(wv.data(), {L, 3}), s, yv), argument_error);
  aft_state st(B + 1, d);
  CHECK_THROWS_AS(aft_simple_prefill(q, q, q, st, yv), argument_error);
  aft_state st2(B, d + 1);
  CHECK_THROWS_AS(aft_simple_step(tensor_view<const float, 2>(qv.data(), {B, d}), tensor_view<const float, 2>(qv.data(), {B, d}),
                                  tensor_view<const float, 2>(qv.data(), {B, d}), st2, tensor_view<float, 2>(y.data(), {B, d})),
                  argument_error);
  for (float x : y) REQUIRE(x == -7.f);
}
