// tokmix/simd/exp.hpp against std::exp in double: accuracy sweep, edges that
// masked attention relies on, and every length/misalignment of the array form.
#include "tokmix/simd/exp.hpp"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "support/compare.hpp"

namespace {

namespace ts = tokmix::simd;
using arch = ts::default_arch;
constexpr float inf = std::numeric_limits<float>::infinity();

double max_rel_error(const std::vector<float>& x) {
  std::vector<float> y(x.size());
  ts::exp(x.data(), y.data(), static_cast<tokmix::index_t>(x.size()));
  double worst = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double ref = std::exp(static_cast<double>(x[i]));
    worst = std::max(worst, std::abs(static_cast<double>(y[i]) - ref) / ref);
  }
  return worst;
}

}  // namespace

TEST_CASE("simd exp: relative error over a dense sweep of [-87, 88]", "[simd][exp]") {
  // Measured on Zen 3: 7.7e-8 with FMA (fma3<avx2>), 9.9e-8 with SSE2 only.
  const std::size_t n = std::size_t(1) << 22;
  std::vector<float> x(n);
  for (std::size_t i = 0; i < n; ++i) x[i] = static_cast<float>(-87.0 + 175.0 * static_cast<double>(i) / (n - 1));
  const double sweep = max_rel_error(x);
  INFO("max rel error over [-87, 88]: " << sweep);
  CHECK(sweep < 1.2e-7);

  // Every float of [-1, 1] is too many; every 64th bit pattern covers all mantissa regions.
  std::vector<float> y;
  for (std::uint32_t b = 0; b <= 0x3f800000u; b += 64) {
    float f;
    std::memcpy(&f, &b, 4);
    y.push_back(f);
    y.push_back(-f);
  }
  const double near_zero = max_rel_error(y);
  INFO("max rel error over [-1, 1]: " << near_zero);
  CHECK(near_zero < 1.2e-7);
}

TEST_CASE("simd exp: edge values", "[simd][exp]") {
  const std::vector<float> x = {-inf, inf, -88.f, -100.f, -1e30f, 89.f, 1e30f, 0.f, -0.f,
                                88.7228317f, -87.33654f, -87.3365479f, std::numeric_limits<float>::quiet_NaN()};
  std::vector<float> y(x.size());
  ts::exp(x.data(), y.data(), static_cast<tokmix::index_t>(x.size()));
  CHECK(y[0] == 0.f);
  CHECK(!std::signbit(y[0]));
  CHECK(y[1] == inf);
  CHECK(y[2] == 0.f);  // exp(-88) is subnormal: flushed to 0
  CHECK(y[3] == 0.f);
  CHECK(y[4] == 0.f);
  CHECK(y[5] == inf);
  CHECK(y[6] == inf);
  CHECK(y[7] == 1.f);
  CHECK(y[8] == 1.f);
  CHECK(std::isfinite(y[9]));  // largest argument with a finite result
  CHECK(y[9] == Approx(std::exp(88.7228317)).epsilon(2e-7));
  CHECK(y[10] >= std::numeric_limits<float>::min());  // smallest argument kept normal
  CHECK(y[11] == 0.f);
  CHECK(std::isnan(y[12]));

  // NaN with assorted payloads and signs stays NaN (the exponent trick must not turn it into a number).
  for (std::uint32_t bits : {0x7fc00000u, 0xffc00000u, 0x7f800001u, 0x7fffffffu, 0xff8001ffu, 0x7fc001ffu, 0x7fa5a5a5u}) {
    float f;
    std::memcpy(&f, &bits, 4);
    float out = 0;
    ts::exp(&f, &out, 1);
    INFO("NaN bits " << std::hex << bits);
    CHECK(std::isnan(out));
  }
}

TEST_CASE("simd exp: batch form equals array form", "[simd][exp]") {
  const auto x = tokmix_test::random_floats(ts::lanes<arch>, 7, -20.f, 20.f);
  std::vector<float> y(x.size()), z(x.size());
  ts::exp(x.data(), y.data(), static_cast<tokmix::index_t>(x.size()));
  ts::exp_batch<arch>(ts::fbatch<arch>::load_unaligned(x.data())).store_unaligned(z.data());
  CHECK(std::memcmp(y.data(), z.data(), y.size() * sizeof(float)) == 0);
}

TEST_CASE("simd exp: lengths, misalignment, padding, in place", "[simd][exp]") {
  const tokmix::index_t w = ts::lanes<arch>;
  for (tokmix::index_t n = 0; n <= 3 * w + 1; ++n) {
    for (std::size_t off = 0; off <= 3; ++off) {
      tokmix_test::nan_padded<float> x(static_cast<std::size_t>(n), 16, off), y(static_cast<std::size_t>(n), 16, 3 - off);
      const auto v = tokmix_test::random_floats(static_cast<std::size_t>(n), static_cast<unsigned>(100 * n + off), -30.f, 30.f);
      std::copy(v.begin(), v.end(), x.data());
      std::vector<double> ref(static_cast<std::size_t>(n));
      for (tokmix::index_t i = 0; i < n; ++i) ref[i] = std::exp(static_cast<double>(v[i]));
      INFO("n=" << n << " offset=" << off);
      ts::exp(x.data(), y.data(), n);
      TOKMIX_REQUIRE_CLOSE(y.data(), ref.data(), static_cast<std::size_t>(n), 0.0, 2e-7);
      for (std::size_t i = 0; i < y.storage.size(); ++i)
        if (i < y.pad || i >= y.pad + static_cast<std::size_t>(n)) REQUIRE(std::isnan(y.storage[i]));
      ts::exp(x.data(), x.data(), n);  // in place
      REQUIRE(std::memcmp(x.data(), y.data(), static_cast<std::size_t>(n) * sizeof(float)) == 0);
    }
  }
}

TEST_CASE("simd exp: bad length throws", "[simd][exp]") {
  float x = 0, y = 0;
  CHECK_THROWS_AS(ts::exp(&x, &y, -1), tokmix::argument_error);
  CHECK_THROWS_AS(ts::exp(nullptr, &y, 1), tokmix::argument_error);
  CHECK_NOTHROW(ts::exp(nullptr, nullptr, 0));
}
