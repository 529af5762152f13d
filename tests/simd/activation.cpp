// tokmix/simd/activation.hpp against float64 formulas: every tail length and
// misalignment, NaN padding, in place, and the +-inf / NaN / large-input edges.
#include "tokmix/simd/activation.hpp"

#include <cmath>
#include <cstring>
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

using array_fn = void (*)(const float*, float*, index_t);

struct activation_case {
  const char* name;
  array_fn fn;
  double (*ref)(double);
  double rtol;
};

const activation_case cases[] = {
    {"sigmoid", ts::sigmoid, ref_sigmoid, 3e-7},   {"silu", ts::silu, ref_silu, 3e-7},
    {"softplus", ts::softplus, ref_softplus, 4e-7}, {"elu", ts::elu, ref_elu, 3e-7},
    {"elu_plus_one", ts::elu_plus_one, ref_elu_plus_one, 2e-7},
};

void check_sweep(const activation_case& c, float lo, float hi, std::size_t n, double atol) {
  std::vector<float> x(n), y(n);
  for (std::size_t i = 0; i < n; ++i) x[i] = static_cast<float>(lo + (hi - lo) * static_cast<double>(i) / (n - 1));
  c.fn(x.data(), y.data(), static_cast<index_t>(n));
  std::vector<double> ref(n);
  for (std::size_t i = 0; i < n; ++i) ref[i] = c.ref(x[i]);
  INFO(c.name << " over [" << lo << ", " << hi << "]: " << tokmix_test::compare(y.data(), ref.data(), n, 1e-30).str());
  TOKMIX_REQUIRE_CLOSE(y.data(), ref.data(), n, atol, c.rtol);
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
        TOKMIX_REQUIRE_CLOSE(y.data(), ref.data(), static_cast<std::size_t>(n), 0.0, c.rtol);
        for (std::size_t i = 0; i < y.storage.size(); ++i)
          if (i < y.pad || i >= y.pad + static_cast<std::size_t>(n)) REQUIRE(std::isnan(y.storage[i]));
        c.fn(x.data(), x.data(), n);
        REQUIRE(std::memcmp(x.data(), y.data(), static_cast<std::size_t>(n) * sizeof(float)) == 0);
      }
    }
  }
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
