// Tests for include/tokmix/blocks/hopfield.hpp against a float64 iteration of
// the modern Hopfield update written from Ramsauer et al. (eq. 3): odd sizes,
// separate values, early stopping by tolerance, one-step retrieval of a
// stored pattern, huge beta without overflow, threads bit for bit, in place,
// NaN-padded outputs, bad inputs that write nothing.
#include "tokmix/blocks/hopfield.hpp"

#include <cmath>
#include <cstdint>
#include <vector>

#include <catch2/catch.hpp>

#include "support/compare.hpp"

using namespace tokmix;

namespace {

struct hop_ref {
  std::vector<double> out, probs;
  std::vector<std::int32_t> iters;
};

// xi_t = X^T softmax(beta X xi_{t-1}) until max |xi_t - xi_{t-1}| < tol or
// n_iter updates; out = xi_T (no values) or V^T p_T.
hop_ref hopfield_ref(const std::vector<float>& X, const std::vector<float>* V, index_t N, index_t d, index_t dv,
                     const std::vector<float>& Q, index_t nq, double beta, index_t n_iter, double tol) {
  hop_ref r;
  for (index_t q = 0; q < nq; ++q) {
    std::vector<double> xi(Q.begin() + q * d, Q.begin() + (q + 1) * d), p(N);
    index_t t = 1;
    for (;; ++t) {
      double m = -INFINITY, z = 0;
      for (index_t i = 0; i < N; ++i) {
        double s = 0;
        for (index_t j = 0; j < d; ++j) s += double(X[i * d + j]) * xi[j];
        p[i] = beta * s;
        m = std::max(m, p[i]);
      }
      for (index_t i = 0; i < N; ++i) z += std::exp(p[i] - m);
      for (index_t i = 0; i < N; ++i) p[i] = std::exp(p[i] - m) / z;
      if (t == n_iter && V) break;
      std::vector<double> next(d, 0.0);
      for (index_t i = 0; i < N; ++i)
        for (index_t j = 0; j < d; ++j) next[j] += p[i] * X[i * d + j];
      double change = 0;
      for (index_t j = 0; j < d; ++j) change = std::max(change, std::abs(next[j] - xi[j]));
      xi = next;
      if (t == n_iter || change < tol) break;
    }
    if (V) {
      for (index_t j = 0; j < dv; ++j) {
        double s = 0;
        for (index_t i = 0; i < N; ++i) s += p[i] * (*V)[i * dv + j];
        r.out.push_back(s);
      }
    } else {
      r.out.insert(r.out.end(), xi.begin(), xi.end());
    }
    r.probs.insert(r.probs.end(), p.begin(), p.end());
    r.iters.push_back(static_cast<std::int32_t>(t));
  }
  return r;
}

}  // namespace

TEST_CASE("hopfield: retrieval == float64 iteration, odd sizes, values, tolerance, threads", "[blocks][hopfield]") {
  const index_t lane = simd::lanes<simd::default_arch>;
  struct shape {
    index_t N, d, nq;
  };
  const shape shapes[] = {{1, 1, 1}, {5, 7, 3}, {70, lane + 1, 100}, {9, 130, 2}, {33, 4, 65}};
  for (const auto& s : shapes)
    for (index_t n_iter : {1, 3, 12})
      for (float tol : {0.f, 1e-3f})
        for (bool values : {false, true}) {
          CAPTURE(s.N, s.d, s.nq, n_iter, tol, values);
          const index_t dv = values ? 6 : s.d;
          const auto X = tokmix_test::random_floats(static_cast<std::size_t>(s.N * s.d), unsigned(s.N + 7 * s.d), -1.f, 1.f);
          const auto V = tokmix_test::random_floats(static_cast<std::size_t>(s.N * dv), unsigned(s.N + 3));
          const auto Q = tokmix_test::random_floats(static_cast<std::size_t>(s.nq * s.d), unsigned(s.nq + s.d), -1.f, 1.f);
          const float beta = 2.f;  // sharp enough that iterations move the state
          const auto want = hopfield_ref(X, values ? &V : nullptr, s.N, s.d, dv, Q, s.nq, beta, n_iter, tol);
          std::vector<float> serial;
          for (int threads : {1, 2}) {
            tokmix_test::nan_padded<float> out(static_cast<std::size_t>(s.nq * dv)), probs(static_cast<std::size_t>(s.nq * s.N));
            std::vector<std::int32_t> iters(static_cast<std::size_t>(s.nq), -1);
            hopfield_params p;
            p.beta = beta;
            p.n_iter = n_iter;
            p.tol = tol;
            p.policy = threads == 1 ? exec_policy::serial() : exec_policy::threads(threads);
            p.probs = tensor_view<float, 2>(probs.data(), {s.nq, s.N});
            p.iterations = tensor_view<std::int32_t, 1>(iters.data(), {s.nq});
            hopfield_retrieve(tensor_view<const float, 2>(X.data(), {s.N, s.d}),
                              values ? tensor_view<const float, 2>(V.data(), {s.N, dv}) : tensor_view<const float, 2>(),
                              tensor_view<const float, 2>(Q.data(), {s.nq, s.d}), tensor_view<float, 2>(out.data(), {s.nq, dv}), p);
            REQUIRE(iters == want.iters);
            TOKMIX_REQUIRE_CLOSE(out.data(), want.out.data(), want.out.size(), 2e-5, 2e-5);
            TOKMIX_REQUIRE_CLOSE(probs.data(), want.probs.data(), want.probs.size(), 2e-6, 2e-5);
            REQUIRE(std::isnan(out.data()[-1]));
            REQUIRE(std::isnan(out.data()[want.out.size()]));
            REQUIRE(std::isnan(probs.data()[want.probs.size()]));
            if (threads == 1) serial.assign(out.data(), out.data() + want.out.size());
            else REQUIRE(std::vector<float>(out.data(), out.data() + want.out.size()) == serial);
          }
        }
}

TEST_CASE("hopfield: a corrupted stored pattern is retrieved in one update; huge beta stays finite", "[blocks][hopfield]") {
  const index_t N = 40, d = 64;
  // Random +-1 patterns are well separated (overlaps ~ sqrt(d) against d).
  auto X = tokmix_test::random_floats(static_cast<std::size_t>(N * d), 17);
  for (float& v : X) v = v < 0 ? -1.f : 1.f;
  std::vector<float> Q(X.begin() + 11 * d, X.begin() + 12 * d);
  for (index_t j = 0; j < d; j += 5) Q[j] = -Q[j];  // flip 13 of 64 signs
  std::vector<float> out(d);
  std::vector<std::int32_t> iters(1);
  hopfield_params p;
  p.beta = 1.f;
  p.n_iter = 5;
  p.tol = 1e-5f;
  p.iterations = tensor_view<std::int32_t, 1>(iters.data(), {1});
  hopfield_retrieve(tensor_view<const float, 2>(X.data(), {N, d}), {}, tensor_view<const float, 2>(Q.data(), {1, d}),
                    tensor_view<float, 2>(out.data(), {1, d}), p);
  for (index_t j = 0; j < d; ++j) CHECK(out[j] == Approx(X[11 * d + j]).margin(1e-5));
  CHECK(iters[0] == 2);  // one update to the pattern, a second that does not move
  // beta * scores ~ 6e6: a plain exp would overflow; the stable softmax picks the nearest pattern.
  p.beta = 1e5f;
  p.n_iter = 1;
  hopfield_retrieve(tensor_view<const float, 2>(X.data(), {N, d}), {}, tensor_view<const float, 2>(Q.data(), {1, d}),
                    tensor_view<float, 2>(out.data(), {1, d}), p);
  for (index_t j = 0; j < d; ++j) CHECK(out[j] == X[11 * d + j]);
}

TEST_CASE("hopfield: in place over the queries, default beta, scratch reused", "[blocks][hopfield]") {
  const index_t N = 12, d = 10, nq = 130;
  const auto X = tokmix_test::random_floats(static_cast<std::size_t>(N * d), 1);
  const auto Q = tokmix_test::random_floats(static_cast<std::size_t>(nq * d), 2);
  const auto want = hopfield_ref(X, nullptr, N, d, d, Q, nq, 1.0 / std::sqrt(double(d)), 2, 0.0);
  for (int threads : {1, 2}) {
    hopfield_params p;
    p.n_iter = 2;
    p.policy = threads == 1 ? exec_policy::serial() : exec_policy::threads(threads);
    std::vector<float> z = Q;
    hopfield_retrieve(tensor_view<const float, 2>(X.data(), {N, d}), {}, tensor_view<const float, 2>(z.data(), {nq, d}),
                      tensor_view<float, 2>(z.data(), {nq, d}), p);
    TOKMIX_REQUIRE_CLOSE(z.data(), want.out.data(), want.out.size(), 2e-6, 2e-5);
    const std::size_t grown = scratch_arena::local().growth_count();
    std::vector<float> out(Q.size());
    hopfield_retrieve(tensor_view<const float, 2>(X.data(), {N, d}), {}, tensor_view<const float, 2>(Q.data(), {nq, d}),
                      tensor_view<float, 2>(out.data(), {nq, d}), p);
    CHECK(scratch_arena::local().growth_count() == grown);
    CHECK(out == z);
  }
}

TEST_CASE("hopfield: bad inputs throw argument_error and write nothing", "[blocks][hopfield]") {
  std::vector<float> X(6 * 4, 0.5f), V(6 * 3, 1.f), Q(2 * 4, 1.f), out(2 * 4, -7.f), probs(2 * 6, -7.f);
  const tensor_view<const float, 2> xv(X.data(), {6, 4}), vv(V.data(), {6, 3}), qv(Q.data(), {2, 4});
  const tensor_view<float, 2> ov(out.data(), {2, 4});
  auto expect_arg = [&](auto&& call, const std::string& argument) {
    try {
      call();
      FAIL("accepted");
    } catch (const argument_error& e) {
      CHECK(e.argument() == argument);
    }
  };
  hopfield_params p;
  p.probs = tensor_view<float, 2>(probs.data(), {2, 6});
  expect_arg([&] { hopfield_retrieve(xv, {}, tensor_view<const float, 2>(Q.data(), {2, 3}), ov, p); }, "queries");
  expect_arg([&] { hopfield_retrieve(xv, {}, qv, tensor_view<float, 2>(out.data(), {2, 3}), p); }, "out");
  expect_arg([&] { hopfield_retrieve(xv, vv, qv, ov, p); }, "out");  // values give [2, 3]
  expect_arg([&] { hopfield_retrieve(xv, tensor_view<const float, 2>(V.data(), {5, 3}), qv, tensor_view<float, 2>(out.data(), {2, 3}), p); }, "values");
  expect_arg([&] { hopfield_retrieve(tensor_view<const float, 2>(X.data(), {0, 4}), {}, qv, ov, p); }, "patterns");
  expect_arg([&] { hopfield_retrieve(xv, {}, qv, tensor_view<float, 2>(X.data(), {2, 4}), p); }, "out");  // over the patterns
  expect_arg([&] { hopfield_retrieve(xv, {}, qv, tensor_view<float, 2>(Q.data() + 1, {2, 4}, {3, 1}), p); }, "out");
  hopfield_params q = p;
  q.beta = -1.f;
  expect_arg([&] { hopfield_retrieve(xv, {}, qv, ov, q); }, "beta");
  q = p;
  q.beta = INFINITY;
  expect_arg([&] { hopfield_retrieve(xv, {}, qv, ov, q); }, "beta");
  q = p;
  q.n_iter = 0;
  expect_arg([&] { hopfield_retrieve(xv, {}, qv, ov, q); }, "n_iter");
  q = p;
  q.tol = NAN;
  expect_arg([&] { hopfield_retrieve(xv, {}, qv, ov, q); }, "tol");
  q = p;
  q.probs = tensor_view<float, 2>(probs.data(), {2, 5});
  expect_arg([&] { hopfield_retrieve(xv, {}, qv, ov, q); }, "probs");
  std::vector<std::int32_t> iters(3, -7);
  q = p;
  q.iterations = tensor_view<std::int32_t, 1>(iters.data(), {3});
  expect_arg([&] { hopfield_retrieve(xv, {}, qv, ov, q); }, "iterations");
  for (float v : out) CHECK(v == -7.f);
  for (float v : probs) CHECK(v == -7.f);
  for (auto v : iters) CHECK(v == -7);
}
