// tokmix/simd/activation.hpp against float64 formulas: every tail length and
// misalignment, NaN padding, in place, and the +-inf / NaN / large-input edges;
// the fused GLU gates act(a) * b likewise, and bit for bit against act then *.
#include "tokmix/simd/activation.hpp"

#include <cmath>
#include <cstring>
#include <algorithm>
#include <functional>
#include <limits>
#include <vector>

#include "support/compare.hpp"

namespace {
namespace ts = tokmix::simd;
using tokmix::index_t;
using arch = ts::default_arch;
constexpr float inf = std::numeric_limits<float>::infinity();

double ref_sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }
double ref_silu(double x) { return x * ref_sigmoid(x); }
double ref_softplus(double x) { return x > 20.0 ? x : std::log1p(std::exp(x)); }
double ref_elu(double x) { return x > 0 ? x : std::expm1(x); }
double ref_elu_plus_one(double x) { return x > 0 ? x + 1.0 : std::exp(x); }
// 0.5 x (1 + tanh(u)) written as x / (1 + exp(-2u)) (the same function; the
// tanh form loses every digit to cancellation in double below x ~ -6).
double ref_gelu_tanh(double x) {
  const double u = std::sqrt(2.0 / 3.14159265358979323846) * (x + 0.044715 * x * x * x);
  return x / (1.0 + std::exp(-2.0 * u));
}
double ref_gelu_erf(double x) { return 0.5 * x * std::erfc(-x / std::sqrt(2.0)); }
double ref_relu(double x) { return x > 0 ? x : 0.0; }

// Measured over [-80, 80] (AVX-512 and AVX2): where |y| > 1e-3 the relative
// error is at most 1.0e-6 (gelu_tanh) and 1.3e-6 (gelu_erf, xsimd's erfc),
// worst near x = -3.4 where the float-rounded argument of exp / erfc is
// amplified; below that the absolute error is < 1e-12.
constexpr double gelu_tanh_rtol = 2e-6;
constexpr double gelu_erf_rtol = 2e-6;

using array_fn = void (*)(const float*, float*, index_t);

struct activation_case {
  const char* name;
  array_fn fn;
  double (*ref)(double);
  double rtol;
  // Absolute slack for results that underflow float (the gelus' tails: the
  // argument of exp is rounded to float, |2u| * 6e-8 relative, and erfc flushes
  // below 1e-38); 0 = relative error only.
  double atol = 0;
};

const activation_case cases[] = {
    {"sigmoid", ts::sigmoid, ref_sigmoid, 3e-7},   {"silu", ts::silu, ref_silu, 3e-7},
    {"softplus", ts::softplus, ref_softplus, 4e-7}, {"elu", ts::elu, ref_elu, 3e-7},
    {"elu_plus_one", ts::elu_plus_one, ref_elu_plus_one, 2e-7},
    {"gelu_tanh", ts::gelu_tanh, ref_gelu_tanh, gelu_tanh_rtol, 1e-9},
    {"gelu_erf", ts::gelu_erf, ref_gelu_erf, gelu_erf_rtol, 1e-9},
    {"relu", ts::relu, ref_relu, 0.0},
};

using gated_fn = void (*)(const float*, const float*, float*, index_t);

struct gated_case {
  const char* name;
  gated_fn fn;
  array_fn act;
  double (*ref)(double);
  double rtol, atol;
};

const gated_case gated_cases[] = {
    {"silu_mul", ts::silu_mul, ts::silu, ref_silu, 4e-7, 0.0},
    {"gelu_tanh_mul", ts::gelu_tanh_mul, ts::gelu_tanh, ref_gelu_tanh, gelu_tanh_rtol, 1e-9},
    {"gelu_erf_mul", ts::gelu_erf_mul, ts::gelu_erf, ref_gelu_erf, gelu_erf_rtol, 1e-9},
    {"relu_mul", ts::relu_mul, ts::relu, ref_relu, 1e-7, 0.0},
};

void check_sweep(const activation_case& c, float lo, float hi, std::size_t n, double atol) {
  std::vector<float> x(n), y(n);
  for (std::size_t i = 0; i < n; ++i) x[i] = static_cast<float>(lo + (hi - lo) * static_cast<double>(i) / (n - 1));
  c.fn(x.data(), y.data(), static_cast<index_t>(n));
  std::vector<double> ref(n);
  for (std::size_t i = 0; i < n; ++i) ref[i] = c.ref(x[i]);
  INFO(c.name << " over [" << lo << ", " << hi << "]: " << tokmix_test::compare(y.data(), ref.data(), n, 1e-30).str());
  TOKMIX_REQUIRE_CLOSE(y.data(), ref.data(), n, std::max(atol, c.atol), c.rtol);
}

}  // namespace

TEST_CASE("simd activations: accuracy sweeps", "[simd][activation]") {
  for (const auto& c : cases) {
    check_sweep(c, -80.f, 80.f, 200001, 0.0);
    check_sweep(c, -1.f, 1.f, 100001, 0.0);  // elu near 0: no cancellation
  }
}

TEST_CASE("simd activations: lengths, misalignment, padding, in place", "[simd][activation]") {
  const index_t w = ts::lanes<arch>;
  for (const auto& c : cases) {
    for (index_t n = 1; n <= 3 * w + 1; ++n) {
      for (std::size_t off = 0; off <= 3; ++off) {
        tokmix_test::nan_padded<float> x(static_cast<std::size_t>(n), 16, off), y(static_cast<std::size_t>(n), 16, 3 - off);
        const auto v = tokmix_test::random_floats(static_cast<std::size_t>(n), static_cast<unsigned>(n * 5 + off), -25.f, 25.f);
        std::copy(v.begin(), v.end(), x.data());
        std::vector<double> ref(v.size());
        for (std::size_t i = 0; i < v.size(); ++i) ref[i] = c.ref(v[i]);
        INFO(c.name << " n=" << n << " offset=" << off);
        c.fn(x.data(), y.data(), n);
        TOKMIX_REQUIRE_CLOSE(y.data(), ref.data(), static_cast<std::size_t>(n), c.atol, c.rtol);
        for (std::size_t i = 0; i < y.storage.size(); ++i)
          if (i < y.pad || i >= y.pad + static_cast<std::size_t>(n)) REQUIRE(std::isnan(y.storage[i]));
        c.fn(x.data(), x.data(), n);
        REQUIRE(std::memcmp(x.data(), y.data(), static_cast<std::size_t>(n) * sizeof(float)) == 0);
      }
    }
  }
}

TEST_CASE("simd gated activations: act(a) * b over lengths, misalignment, padding, in place", "[simd][activation]") {
  const index_t w = ts::lanes<arch>;
  for (const auto& c : gated_cases) {
    for (index_t n = 1; n <= 3 * w + 1; ++n) {
      for (std::size_t off = 0; off <= 2; ++off) {
        const auto un = static_cast<std::size_t>(n);
        tokmix_test::nan_padded<float> a(un, 16, off), b(un, 16, 2 - off), y(un, 16, off + 1);
        const auto va = tokmix_test::random_floats(un, static_cast<unsigned>(n * 7 + off), -12.f, 12.f);
        const auto vb = tokmix_test::random_floats(un, static_cast<unsigned>(n * 7 + off + 100), -3.f, 3.f);
        std::copy(va.begin(), va.end(), a.data());
        std::copy(vb.begin(), vb.end(), b.data());
        std::vector<double> ref(un);
        for (std::size_t i = 0; i < un; ++i) ref[i] = c.ref(va[i]) * double(vb[i]);
        INFO(c.name << " n=" << n << " offset=" << off);
        c.fn(a.data(), b.data(), y.data(), n);
        TOKMIX_REQUIRE_CLOSE(y.data(), ref.data(), un, 3 * c.atol, c.rtol);
        for (std::size_t i = 0; i < y.storage.size(); ++i)
          if (i < y.pad || i >= y.pad + un) REQUIRE(std::isnan(y.storage[i]));
        // Fused == the array activation followed by a float multiply, bit for bit.
        std::vector<float> act(un);
        c.act(a.data(), act.data(), n);
        for (std::size_t i = 0; i < un; ++i) act[i] *= vb[i];
        REQUIRE(std::memcmp(act.data(), y.data(), un * sizeof(float)) == 0);
        // In place over either operand.
        std::vector<float> ia(va), ib(vb);
        c.fn(ia.data(), ib.data(), ia.data(), n);
        REQUIRE(std::memcmp(ia.data(), y.data(), un * sizeof(float)) == 0);
        ia = va;
        c.fn(ia.data(), ib.data(), ib.data(), n);
        REQUIRE(std::memcmp(ib.data(), y.data(), un * sizeof(float)) == 0);
      }
    }
  }
  std::vector<float> a(4, 1.f), y(4);
  CHECK_THROWS_AS(ts::silu_mul(a.data(), nullptr, y.data(), 4), tokmix::argument_error);
  CHECK_THROWS_AS(ts::gelu_erf_mul(a.data(), a.data(), y.data(), -1), tokmix::argument_error);
  ts::relu_mul(nullptr, nullptr, nullptr, 0);  // empty is fine
}

TEST_CASE("simd activations: edges", "[simd][activation]") {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<float> x = {-inf, inf, nan, -1000.f, 1000.f, 0.f, 20.f, 20.5f, 1e30f, -1e30f};
  std::vector<float> y(x.size());
  const auto n = static_cast<index_t>(x.size());

  ts::sigmoid(x.data(), y.data(), n);
  CHECK(y[0] == 0.f);
  CHECK(y[1] == 1.f);
  CHECK(std::isnan(y[2]));
  CHECK(y[3] == 0.f);
  CHECK(y[4] == 1.f);
  CHECK(y[5] == 0.5f);

  ts::silu(x.data(), y.data(), n);
  CHECK(y[0] == 0.f);  // the limit, not -inf * 0
  CHECK(y[1] == inf);
  CHECK(std::isnan(y[2]));
  CHECK(y[3] == 0.f);
  CHECK(y[4] == 1000.f);
  CHECK(y[5] == 0.f);
  CHECK(y[8] == 1e30f);
  CHECK(y[9] == 0.f);

  ts::softplus(x.data(), y.data(), n);
  CHECK(y[0] == 0.f);
  CHECK(y[1] == inf);
  CHECK(std::isnan(y[2]));
  CHECK(y[3] == 0.f);
  CHECK(y[4] == 1000.f);
  CHECK(y[5] == Approx(std::log(2.0)).epsilon(1e-7));
  CHECK(y[6] == Approx(20.0).epsilon(1e-7));  // at the threshold: log1p(exp(20)) still
  CHECK(y[7] == 20.5f);                        // above it: x exactly
  CHECK(y[8] == 1e30f);

  ts::elu(x.data(), y.data(), n);
  CHECK(y[0] == -1.f);
  CHECK(y[1] == inf);
  CHECK(std::isnan(y[2]));
  CHECK(y[3] == -1.f);
  CHECK(y[4] == 1000.f);
  CHECK(y[5] == 0.f);

  ts::elu_plus_one(x.data(), y.data(), n);
  CHECK(y[0] == 0.f);
  CHECK(y[1] == inf);
  CHECK(std::isnan(y[2]));
  CHECK(y[3] == 0.f);
  CHECK(y[4] == 1001.f);
  CHECK(y[5] == 1.f);

  ts::gelu_tanh(x.data(), y.data(), n);
  CHECK(y[0] == 0.f);
  CHECK(y[1] == inf);
  CHECK(std::isnan(y[2]));
  CHECK(y[3] == 0.f);
  CHECK(y[4] == 1000.f);
  CHECK(y[5] == 0.f);
  CHECK(y[8] == 1e30f);  // x^3 overflows to inf: still x
  CHECK(y[9] == 0.f);

  ts::gelu_erf(x.data(), y.data(), n);
  CHECK(y[0] == 0.f);
  CHECK(y[1] == inf);
  CHECK(std::isnan(y[2]));
  CHECK(y[3] == 0.f);
  CHECK(y[4] == 1000.f);
  CHECK(y[5] == 0.f);
  CHECK(y[8] == 1e30f);
  CHECK(y[9] == 0.f);

  ts::relu(x.data(), y.data(), n);
  CHECK(y[0] == 0.f);
  CHECK(y[1] == inf);
  CHECK(std::isnan(y[2]));  // NaN stays NaN (torch.relu)
  CHECK(y[3] == 0.f);
  CHECK(y[6] == 20.f);

  // Batch forms agree with array forms bit for bit.
  const auto v = tokmix_test::random_floats(static_cast<std::size_t>(ts::lanes<arch>), 3, -10.f, 10.f);
  std::vector<float> a(v.size()), b(v.size());
  const auto xb = ts::fbatch<arch>::load_unaligned(v.data());
  ts::silu(v.data(), a.data(), static_cast<index_t>(v.size()));
  ts::silu_batch<arch>(xb).store_unaligned(b.data());
  CHECK(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
  ts::softplus(v.data(), a.data(), static_cast<index_t>(v.size()));
  ts::softplus_batch<arch>(xb).store_unaligned(b.data());
  CHECK(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);

  CHECK_THROWS_AS(ts::silu(x.data(), y.data(), -2), tokmix::argument_error);
  CHECK_THROWS_AS(ts::elu(nullptr, y.data(), 2), tokmix::argument_error);
}
