// Tests for include/tokmix/blocks/norm.hpp against float64 references of
// RMSNorm, LayerNorm (with and without bias), their fused residual-add forms
// (residual_out checked too), QK-norm over [B, L, H, D] and the gated RMSNorm
// of Mamba-2 / fla: odd row lengths around the lane width, strided rows inside
// NaN-filled buffers (overreads poison the result, overwrites show in the
// gaps), in-place use, threads == serial bit for bit, load/save by name, and
// bad shapes that throw and write nothing.
#include "tokmix/blocks/norm.hpp"

#include <cmath>
#include <limits>
#include <vector>

#include <catch2/catch.hpp>

#include "support/compare.hpp"

using namespace tokmix;

namespace {

constexpr float nan_f = std::numeric_limits<float>::quiet_NaN();

// rows x d values at row stride ld (> d), the gaps and tails NaN.
struct strided_rows {
  index_t rows, d, ld;
  std::vector<float> buf;
  strided_rows(index_t r, index_t dd, unsigned seed, float lo = -2.f, float hi = 2.f)
      : rows(r), d(dd), ld(dd + 3), buf(static_cast<std::size_t>(r * (dd + 3) + 8), nan_f) {
    const auto v = tokmix_test::random_floats(static_cast<std::size_t>(r * dd), seed, lo, hi);
    for (index_t i = 0; i < r; ++i)
      for (index_t j = 0; j < dd; ++j) buf[static_cast<std::size_t>(i * ld + j)] = v[static_cast<std::size_t>(i * dd + j)];
  }
  static strided_rows nan_filled(index_t r, index_t dd) {
    strided_rows s(r, dd, 0);
    std::fill(s.buf.begin(), s.buf.end(), nan_f);
    return s;
  }
  float at(index_t i, index_t j) const { return buf[static_cast<std::size_t>(i * ld + j)]; }
  tensor_view<float, 2> view() { return tensor_view<float, 2>(buf.data(), {rows, d}, {ld, 1}); }
  tensor_view<const float, 2> cview() const { return tensor_view<const float, 2>(buf.data(), {rows, d}, {ld, 1}); }
  std::vector<float> dense() const {
    std::vector<float> out(static_cast<std::size_t>(rows * d));
    for (index_t i = 0; i < rows; ++i)
      for (index_t j = 0; j < d; ++j) out[static_cast<std::size_t>(i * d + j)] = at(i, j);
    return out;
  }
  // Every element outside the rows is still NaN.
  bool gaps_nan() const {
    for (std::size_t k = 0; k < buf.size(); ++k) {
      const index_t i = static_cast<index_t>(k) / ld, j = static_cast<index_t>(k) % ld;
      if ((i >= rows || j >= d) && !std::isnan(buf[k])) return false;
    }
    return true;
  }
};

std::vector<double> rms_ref(const std::vector<float>& x, index_t rows, index_t d, const Eigen::VectorXf& g, double eps,
                            index_t group = -1) {
  if (group < 0) group = d;
  std::vector<double> y(x.size());
  for (index_t i = 0; i < rows; ++i)
    for (index_t o = 0; o < d; o += group) {
      double ss = 0;
      for (index_t j = o; j < o + group; ++j) ss += double(x[i * d + j]) * x[i * d + j];
      const double r = 1.0 / std::sqrt(ss / group + eps);
      for (index_t j = o; j < o + group; ++j) y[i * d + j] = x[i * d + j] * r * g[j];
    }
  return y;
}

std::vector<double> ln_ref(const std::vector<double>& x, index_t rows, index_t d, const layer_norm_weights& w) {
  std::vector<double> y(x.size());
  for (index_t i = 0; i < rows; ++i) {
    double m = 0, v = 0;
    for (index_t j = 0; j < d; ++j) m += x[i * d + j];
    m /= d;
    for (index_t j = 0; j < d; ++j) v += (x[i * d + j] - m) * (x[i * d + j] - m);
    v /= d;
    for (index_t j = 0; j < d; ++j)
      y[i * d + j] = (x[i * d + j] - m) / std::sqrt(v + w.eps) * w.weight[j] + (w.has_bias() ? w.bias[j] : 0.0);
  }
  return y;
}

double silu(double v) { return v / (1 + std::exp(-v)); }

std::vector<index_t> row_lengths() { return {1, 3, 7, 8, 9, 15, 17, 33, 100, 257}; }

}  // namespace

TEST_CASE("rms_norm and add_rms_norm == float64, strided rows, residual_out", "[blocks][norm]") {
  for (index_t d : row_lengths())
    for (index_t rows : {1, 5, 130}) {
      CAPTURE(d, rows);
      const auto w = rms_norm_weights::random(d, 7 + d, 1e-5f);
      const strided_rows x(rows, d, unsigned(d * 31 + rows)), res(rows, d, unsigned(d * 17 + rows + 1));
      const auto xd = x.dense(), rd = res.dense();

      auto y = strided_rows::nan_filled(rows, d);
      rms_norm(x.cview(), w, y.view());
      const auto want = rms_ref(xd, rows, d, w.weight, w.eps);
      TOKMIX_REQUIRE_CLOSE(y.dense().data(), want.data(), want.size(), 2e-6, 2e-6);
      REQUIRE(y.gaps_nan());

      std::vector<float> h(xd.size());  // the fp32 sum is what residual_out must hold, bit for bit
      for (std::size_t i = 0; i < xd.size(); ++i) h[i] = xd[i] + rd[i];
      const auto want_add = rms_ref(h, rows, d, w.weight, w.eps);
      auto y2 = strided_rows::nan_filled(rows, d), ro = strided_rows::nan_filled(rows, d);
      add_rms_norm(x.cview(), res.cview(), w, y2.view(), ro.view());
      TOKMIX_REQUIRE_CLOSE(y2.dense().data(), want_add.data(), want_add.size(), 2e-6, 2e-6);
      REQUIRE(ro.dense() == h);
      REQUIRE(y2.gaps_nan());
      REQUIRE(ro.gaps_nan());

      // In place: residual updated where it lies, y written over x.
      strided_rows xi = x, ri = res;
      add_rms_norm(xi.cview(), ri.cview(), w, xi.view(), ri.view());
      REQUIRE(xi.dense() == y2.dense());
      REQUIRE(ri.dense() == ro.dense());

      // Threads: the same bits.
      auto y3 = strided_rows::nan_filled(rows, d);
      rms_norm(x.cview(), w, y3.view(), exec_policy::threads(2));
      REQUIRE(y3.dense() == y.dense());
    }
}

TEST_CASE("layer_norm and add_layer_norm == float64, with and without bias", "[blocks][norm]") {
  for (index_t d : row_lengths())
    for (bool bias : {true, false}) {
      const index_t rows = 9;
      CAPTURE(d, bias);
      const auto w = layer_norm_weights::random(d, bias, 3 + d);
      // A large common offset: the two-pass variance must not cancel.
      const strided_rows x(rows, d, unsigned(d + 5), 99.f, 101.f), res(rows, d, unsigned(d + 6));
      const auto xd = x.dense(), rd = res.dense();
      std::vector<double> xdd(xd.begin(), xd.end());

      auto y = strided_rows::nan_filled(rows, d);
      layer_norm(x.cview(), w, y.view());
      const auto want = ln_ref(xdd, rows, d, w);
      // d = 1 normalises to exactly b; elsewhere fp32 rounding of x around 100 sets the floor.
      TOKMIX_REQUIRE_CLOSE(y.dense().data(), want.data(), want.size(), 2e-4, 2e-4);
      REQUIRE(y.gaps_nan());

      std::vector<double> hf(xd.size());
      for (std::size_t i = 0; i < xd.size(); ++i) hf[i] = float(xd[i] + rd[i]);
      const auto want_add = ln_ref(hf, rows, d, w);
      auto y2 = strided_rows::nan_filled(rows, d), ro = strided_rows::nan_filled(rows, d);
      add_layer_norm(x.cview(), res.cview(), w, y2.view(), ro.view(), exec_policy::threads(2));
      TOKMIX_REQUIRE_CLOSE(y2.dense().data(), want_add.data(), want_add.size(), 2e-4, 2e-4);
      TOKMIX_REQUIRE_CLOSE(ro.dense().data(), hf.data(), hf.size(), 0.0, 0.0);
      REQUIRE(y2.gaps_nan());
      REQUIRE(ro.gaps_nan());
      auto y3 = strided_rows::nan_filled(rows, d), ro3 = strided_rows::nan_filled(rows, d);
      add_layer_norm(x.cview(), res.cview(), w, y3.view(), ro3.view());
      REQUIRE(y3.dense() == y2.dense());
    }
}

TEST_CASE("norms of all-zero rows give zeros, never NaN", "[blocks][norm]") {
  std::vector<float> x(2 * 13, 0.f), y(x.size(), nan_f);
  const tensor_view<const float, 2> xv(x.data(), {2, 13});
  rms_norm(xv, rms_norm_weights::random(13, 1), tensor_view<float, 2>(y.data(), {2, 13}));
  for (float v : y) CHECK(v == 0.f);
  std::fill(y.begin(), y.end(), nan_f);
  layer_norm(xv, layer_norm_weights::ones(13, false), tensor_view<float, 2>(y.data(), {2, 13}));
  for (float v : y) CHECK(v == 0.f);
}

TEST_CASE("qk_norm: RMSNorm over head_dim of each head, rank-4 strided view", "[blocks][norm]") {
  for (index_t D : {1, 7, 8, 9, 64, 65}) {
    const index_t B = 2, L = 5, H = 3, ld = H * D + 4;  // token rows padded inside a wider buffer
    CAPTURE(D);
    const auto w = rms_norm_weights::random(D, 5 + D);
    std::vector<float> buf(static_cast<std::size_t>(B * L * ld), nan_f);
    const auto vals = tokmix_test::random_floats(static_cast<std::size_t>(B * L * H * D), unsigned(D));
    std::vector<float> dense(vals.size());
    for (index_t t = 0; t < B * L; ++t)
      for (index_t e = 0; e < H * D; ++e) {
        buf[static_cast<std::size_t>(t * ld + e)] = vals[static_cast<std::size_t>(t * H * D + e)];
        dense[static_cast<std::size_t>(t * H * D + e)] = vals[static_cast<std::size_t>(t * H * D + e)];
      }
    const auto want = rms_ref(dense, B * L * H, D, w.weight, w.eps);
    for (int threads : {1, 2}) {
      auto b2 = buf;
      tensor_view<float, 4> x(b2.data(), {B, L, H, D}, {L * ld, ld, D, 1});
      qk_norm(x, w, threads == 1 ? exec_policy::serial() : exec_policy::threads(2));
      for (index_t t = 0; t < B * L; ++t) {
        for (index_t e = 0; e < H * D; ++e) {
          const double got = b2[static_cast<std::size_t>(t * ld + e)], ref = want[static_cast<std::size_t>(t * H * D + e)];
          REQUIRE(std::abs(got - ref) <= 2e-6 * (1 + std::abs(ref)));
        }
        for (index_t e = H * D; e < ld; ++e) REQUIRE(std::isnan(b2[static_cast<std::size_t>(t * ld + e)]));
      }
    }
  }
}

TEST_CASE("gated_rms_norm: Mamba-2 groups (gate then norm) and fla (norm then gate)", "[blocks][norm]") {
  for (index_t d : {1, 8, 12, 17, 96})
    for (index_t groups : {1, 2, 4})
      for (bool nbg : {false, true}) {
        if (d % groups) continue;
        const index_t rows = 6, gs = d / groups;
        CAPTURE(d, groups, nbg);
        const auto w = rms_norm_weights::random(d, 9 + d, 1e-5f);
        const strided_rows x(rows, d, unsigned(d * 3 + groups)), z(rows, d, unsigned(d * 5 + groups), -4.f, 4.f);
        const auto xd = x.dense(), zd = z.dense();
        std::vector<double> want(xd.size());
        for (index_t i = 0; i < rows; ++i)
          for (index_t o = 0; o < d; o += gs) {
            double ss = 0;
            for (index_t j = o; j < o + gs; ++j) {
              const double t = nbg ? xd[i * d + j] : xd[i * d + j] * silu(zd[i * d + j]);
              ss += t * t;
            }
            const double r = 1.0 / std::sqrt(ss / gs + w.eps);
            for (index_t j = o; j < o + gs; ++j) {
              const double t = nbg ? xd[i * d + j] : xd[i * d + j] * silu(zd[i * d + j]);
              want[i * d + j] = t * r * w.weight[j] * (nbg ? silu(zd[i * d + j]) : 1.0);
            }
          }
        gated_rms_norm_options opt;
        opt.group_size = groups == 1 ? -1 : gs;
        opt.norm_before_gate = nbg;
        auto y = strided_rows::nan_filled(rows, d);
        gated_rms_norm(x.cview(), z.cview(), w, y.view(), opt);
        TOKMIX_REQUIRE_CLOSE(y.dense().data(), want.data(), want.size(), 3e-6, 3e-6);
        REQUIRE(y.gaps_nan());
        auto y2 = strided_rows::nan_filled(rows, d);
        gated_rms_norm(x.cview(), z.cview(), w, y2.view(), opt, exec_policy::threads(2));
        REQUIRE(y2.dense() == y.dense());
        strided_rows xi = x;  // in place over x
        gated_rms_norm(xi.cview(), z.cview(), w, xi.view(), opt);
        REQUIRE(xi.dense() == y.dense());
      }
}

TEST_CASE("norm weights: init, save and load by name, missing / misshapen tensors", "[blocks][norm]") {
  const auto r = rms_norm_weights::random(10, 4);
  for (index_t i = 0; i < 10; ++i) CHECK(std::abs(r.weight[i] - 1.f) <= 0.25f);
  CHECK(rms_norm_weights::random(10, 4).weight == r.weight);
  CHECK(rms_norm_weights::ones(10).weight == Eigen::VectorXf::Ones(10));
  const auto l = layer_norm_weights::random(10, true, 4);
  named_tensors t;
  r.save(t, "q_norm");
  l.save(t, "ln");
  CHECK(t.names() == std::vector<std::string>{"ln.bias", "ln.weight", "q_norm.weight"});
  CHECK(rms_norm_weights::load(t, "q_norm", 10).weight == r.weight);
  const auto l2 = layer_norm_weights::load(t, "ln", 10, true);
  CHECK(l2.weight == l.weight);
  CHECK(l2.bias == l.bias);
  CHECK(!layer_norm_weights::load(t, "ln", 10, false).has_bias());
  try {
    rms_norm_weights::load(t, "k_norm", 10);
    FAIL("missing tensor accepted");
  } catch (const argument_error& e) {
    CHECK(std::string(e.what()).find("k_norm.weight") != std::string::npos);
  }
  try {
    rms_norm_weights::load(t, "q_norm", 11);
    FAIL("misshapen tensor accepted");
  } catch (const argument_error& e) {
    CHECK(e.argument() == "tensor 'q_norm.weight'");
  }
  CHECK_THROWS_AS(rms_norm_weights::ones(4, 0.f), argument_error);
  CHECK_THROWS_AS(rms_norm_weights::ones(0), argument_error);
}

TEST_CASE("norms: bad shapes throw naming the argument and write nothing", "[blocks][norm]") {
  const auto w = rms_norm_weights::random(8, 1);
  const auto lw = layer_norm_weights::random(8, true, 1);
  std::vector<float> x(3 * 8, 1.f), r(3 * 8, 1.f), y(3 * 8, -7.f), ro(3 * 8, -7.f);
  const tensor_view<const float, 2> xv(x.data(), {3, 8}), rv(r.data(), {3, 8});
  const tensor_view<float, 2> yv(y.data(), {3, 8}), rov(ro.data(), {3, 8});
  auto expect_arg = [](auto&& f, const std::string& arg) {
    try {
      f();
      FAIL("accepted");
    } catch (const argument_error& e) {
      CHECK(e.argument() == arg);
    }
  };
  expect_arg([&] { rms_norm(xv, w, tensor_view<float, 2>(y.data(), {3, 7})); }, "y");
  expect_arg([&] { rms_norm(xv, rms_norm_weights::random(9, 1), yv); }, "norm weight");
  expect_arg([&] { rms_norm(tensor_view<const float, 2>(x.data(), {3, 8}, {8, 2}), w, yv); }, "x");
  expect_arg([&] { add_rms_norm(xv, tensor_view<const float, 2>(r.data(), {2, 8}), w, yv, rov); }, "residual");
  expect_arg([&] { add_rms_norm(xv, rv, w, yv, tensor_view<float, 2>(ro.data(), {3, 4})); }, "residual_out");
  layer_norm_weights bad = lw;
  bad.bias.resize(5);
  expect_arg([&] { layer_norm(xv, bad, yv); }, "norm bias");
  expect_arg([&] { add_layer_norm(xv, rv, bad, yv, rov); }, "norm bias");
  rms_norm_weights zero_eps = w;
  zero_eps.eps = 0.f;
  expect_arg([&] { rms_norm(xv, zero_eps, yv); }, "norm eps");
  gated_rms_norm_options opt;
  opt.group_size = 3;
  expect_arg([&] { gated_rms_norm(xv, rv, w, yv, opt); }, "group_size");
  expect_arg([&] { gated_rms_norm(xv, tensor_view<const float, 2>(r.data(), {8, 3}), w, yv); }, "z");
  std::vector<float> q(2 * 3 * 4 * 8, 2.f);
  expect_arg([&] { qk_norm(tensor_view<float, 4>(q.data(), {2, 3, 8, 4}), w); }, "qk_norm weight");
  for (float v : y) CHECK(v == -7.f);
  for (float v : ro) CHECK(v == -7.f);
  for (float v : q) CHECK(v == 2.f);
}
