// Galerkin- and Fourier-type attention against the float64 L x L form: with
// and without LayerNorm affine, Lq != Lk, grouped heads, empty keys, bad inputs.

#include "tokmix/linear/galerkin.hpp"

#include <cmath>
#include <limits>
#include <vector>

#include "linear/reference_linear.hpp"
#include "support/compare.hpp"

using namespace tokmix;
using tokmix_test::random_floats;
namespace ref = tokmix_test::linear_ref;

TEST_CASE("galerkin / fourier attention == float64 definition", "[linear][galerkin]") {
  const index_t Hq = 4, Hkv = 2, dk = 9, dv = 7;
  for (auto [Lq, Lk] : {std::pair<index_t, index_t>{1, 1}, {7, 7}, {65, 200}, {300, 3}}) {
    const auto p = ref::random_problem(2, Lq, Lk, Hq, Hkv, dk, dv, 10 + unsigned(Lq + Lk));
    for (bool fourier : {false, true})
      for (bool affine : {false, true}) {
        CAPTURE(Lq, Lk, fourier, affine);
        ref::galerkin_affine a;
        galerkin_params prm;
        prm.kind = fourier ? galerkin_kind::fourier : galerkin_kind::galerkin;
        if (affine) {
          a.kw = random_floats(Hkv * dk, 1, 0.5f, 1.5f);
          a.kb = random_floats(Hkv * dk, 2, -0.5f, 0.5f);
          prm.k_norm_weight = tensor_view<const float, 2>(a.kw.data(), {Hkv, dk});
          prm.k_norm_bias = tensor_view<const float, 2>(a.kb.data(), {Hkv, dk});
          if (fourier) {
            a.qw = random_floats(Hq * dk, 3, 0.5f, 1.5f);
            a.qb = random_floats(Hq * dk, 4, -0.5f, 0.5f);
            prm.q_norm_weight = tensor_view<const float, 2>(a.qw.data(), {Hq, dk});
            prm.q_norm_bias = tensor_view<const float, 2>(a.qb.data(), {Hq, dk});
          } else {
            a.vw = random_floats(Hkv * dv, 5, 0.5f, 1.5f);
            a.vb = random_floats(Hkv * dv, 6, -0.5f, 0.5f);
            prm.v_norm_weight = tensor_view<const float, 2>(a.vw.data(), {Hkv, dv});
            prm.v_norm_bias = tensor_view<const float, 2>(a.vb.data(), {Hkv, dv});
          }
        }
        const auto want = ref::galerkin(p, fourier, 1e-5, a);
        tokmix_test::nan_padded<float> o(p.o_size());
        galerkin_attention(tensor_view<const float, 4>(p.q.data(), {2, Lq, Hq, dk}),
                           tensor_view<const float, 4>(p.k.data(), {2, Lk, Hkv, dk}),
                           tensor_view<const float, 4>(p.v.data(), {2, Lk, Hkv, dv}),
                           tensor_view<float, 4>(o.data(), {2, Lq, Hq, dv}), prm);
        TOKMIX_REQUIRE_CLOSE(o.data(), want.data(), p.o_size(), 2e-5, 1e-4);
        REQUIRE(std::isnan(o.data()[-1]));
        REQUIRE(std::isnan(o.data()[p.o_size()]));
      }
  }
}

TEST_CASE("galerkin: no keys gives zeros; threads agree", "[linear][galerkin]") {
  const auto p = ref::random_problem(1, 5, 0, 2, 2, 4, 3, 1);
  std::vector<float> o(p.o_size(), 7.f);
  galerkin_attention(tensor_view<const float, 4>(p.q.data(), {1, 5, 2, 4}), tensor_view<const float, 4>(p.k.data(), {1, 0, 2, 4}),
                     tensor_view<const float, 4>(p.v.data(), {1, 0, 2, 3}), tensor_view<float, 4>(o.data(), {1, 5, 2, 3}));
  for (float x : o) REQUIRE(x == 0.f);
  const auto p2 = ref::random_problem(3, 40, 50, 4, 4, 8, 8, 2);
  std::vector<float> a(p2.o_size()), b(p2.o_size());
  galerkin_params prm;
  prm.kind = galerkin_kind::fourier;
  for (int threads : {1, 2}) {
    prm.policy = exec_policy::threads(threads);
    galerkin_attention(tensor_view<const float, 4>(p2.q.data(), {3, 40, 4, 8}), tensor_view<const float, 4>(p2.k.data(), {3, 50, 4, 8}),
                       tensor_view<const float, 4>(p2.v.data(), {3, 50, 4, 8}),
                       tensor_view<float, 4>((threads == 1 ? a : b).data(), {3, 40, 4, 8}), prm);
  }
  REQUIRE(a == b);
}

TEST_CASE("galerkin / fourier attention: threads(2) == float64 definition == serial", "[linear][galerkin]") {
  // B x Hkv = 6 items over two workers, grouped heads, Lq != Lk, with affine.
  const index_t B = 2, Lq = 19, Lk = 33, Hq = 6, Hkv = 3, dk = 9, dv = 7;
  const auto p = ref::random_problem(B, Lq, Lk, Hq, Hkv, dk, dv, 990);
  for (bool fourier : {false, true}) {
    ref::galerkin_affine a;
    galerkin_params prm;
    prm.kind = fourier ? galerkin_kind::fourier : galerkin_kind::galerkin;
    a.kw = random_floats(Hkv * dk, 991, 0.5f, 1.5f);
    a.kb = random_floats(Hkv * dk, 992, -0.5f, 0.5f);
    prm.k_norm_weight = tensor_view<const float, 2>(a.kw.data(), {Hkv, dk});
    prm.k_norm_bias = tensor_view<const float, 2>(a.kb.data(), {Hkv, dk});
    if (fourier) {
      a.qw = random_floats(Hq * dk, 993, 0.5f, 1.5f);
      prm.q_norm_weight = tensor_view<const float, 2>(a.qw.data(), {Hq, dk});
    } else {
      a.vb = random_floats(Hkv * dv, 994, -0.5f, 0.5f);
      prm.v_norm_bias = tensor_view<const float, 2>(a.vb.data(), {Hkv, dv});
    }
    const auto want = ref::galerkin(p, fourier, 1e-5, a);
    std::vector<float> serial;
    for (int threads : {1, 2}) {
      CAPTURE(fourier, threads);
      prm.policy = exec_policy::threads(threads);
      tokmix_test::nan_padded<float> o(p.o_size());
      galerkin_attention(tensor_view<const float, 4>(p.q.data(), {B, Lq, Hq, dk}),
                         tensor_view<const float, 4>(p.k.data(), {B, Lk, Hkv, dk}),
                         tensor_view<const float, 4>(p.v.data(), {B, Lk, Hkv, dv}),
                         tensor_view<float, 4>(o.data(), {B, Lq, Hq, dv}), prm);
      TOKMIX_REQUIRE_CLOSE(o.data(), want.data(), p.o_size(), 2e-5, 1e-4);
      REQUIRE(std::isnan(o.data()[-1]));
      REQUIRE(std::isnan(o.data()[p.o_size()]));
      const std::vector<float> got(o.data(), o.data() + p.o_size());
      if (threads == 1) serial = got;
      else REQUIRE(got == serial);
    }
  }
}

TEST_CASE("galerkin: bad inputs throw and write nothing", "[linear][galerkin]") {
  const auto p = ref::random_problem(1, 4, 4, 2, 1, 4, 3, 9);
  std::vector<float> o(p.o_size(), 7.f), w(8, 1.f);
  const tensor_view<const float, 4> q(p.q.data(), {1, 4, 2, 4}), k(p.k.data(), {1, 4, 1, 4}), v(p.v.data(), {1, 4, 1, 3});
  const tensor_view<float, 4> ov(o.data(), {1, 4, 2, 3});
  auto expect_throw = [&](const galerkin_params& prm, tensor_view<const float, 4> kk, tensor_view<const float, 4> vv) {
    CHECK_THROWS_AS(galerkin_attention(q, kk, vv, ov, prm), argument_error);
    for (float x : o) REQUIRE(x == 7.f);
  };
  galerkin_params prm;
  prm.q_norm_weight = tensor_view<const float, 2>(w.data(), {2, 4});  // galerkin does not normalise q
  expect_throw(prm, k, v);
  prm = {};
  prm.kind = galerkin_kind::fourier;
  prm.v_norm_bias = tensor_view<const float, 2>(w.data(), {1, 3});  // fourier does not normalise v
  expect_throw(prm, k, v);
  prm = {};
  prm.k_norm_weight = tensor_view<const float, 2>(w.data(), {2, 4});  // k has 1 head
  expect_throw(prm, k, v);
  w[1] = std::numeric_limits<float>::quiet_NaN();
  prm = {};
  prm.k_norm_weight = tensor_view<const float, 2>(w.data(), {1, 4});
  expect_throw(prm, k, v);
  prm = {};
  prm.norm_eps = -1.f;
  expect_throw(prm, k, v);
  expect_throw({}, tensor_view<const float, 4>(p.k.data(), {1, 4, 1, 3}), v);
  expect_throw({}, k, tensor_view<const float, 4>(p.v.data(), {1, 3, 1, 3}));
}
