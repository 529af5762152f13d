// tokmix/simd/reduce.hpp against float64 references over every tail length and
// misalignment, with NaN padding that would poison any over-read.
#include "tokmix/simd/reduce.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "support/compare.hpp"

namespace {
namespace ts = tokmix::simd;
using tokmix::index_t;
constexpr float inf = std::numeric_limits<float>::infinity();
}  // namespace

TEST_CASE("simd reduce_max / reduce_sum: lengths and misalignment", "[simd][reduce]") {
  const index_t w = ts::lanes<ts::default_arch>;
  std::vector<index_t> sizes;
  for (index_t n = 1; n <= 5 * w + 1; ++n) sizes.push_back(n);
  sizes.push_back(1000);
  sizes.push_back(4099);
  for (index_t n : sizes) {
    for (std::size_t off = 0; off <= 3; ++off) {
      tokmix_test::nan_padded<float> x(static_cast<std::size_t>(n), 16, off);
      const auto v = tokmix_test::random_floats(static_cast<std::size_t>(n), static_cast<unsigned>(n * 7 + off), -3.f, 2.f);
      std::copy(v.begin(), v.end(), x.data());
      double ref_max = -INFINITY, ref_sum = 0, ref_abs = 0;
      for (float f : v) {
        ref_max = std::max(ref_max, static_cast<double>(f));
        ref_sum += f;
        ref_abs += std::abs(f);
      }
      INFO("n=" << n << " offset=" << off);
      // Any element can be the max: plant it in each position class once.
      REQUIRE(ts::reduce_max(x.data(), n) == static_cast<float>(ref_max));
      const double s = ts::reduce_sum(x.data(), n);
      REQUIRE(std::abs(s - ref_sum) <= 2e-7 * ref_abs * std::log2(static_cast<double>(n) + 1.0) + 1e-30);
    }
  }
}

TEST_CASE("simd reduce_max: max in every position, -inf rows, NaN skipped", "[simd][reduce]") {
  const index_t w = ts::lanes<ts::default_arch>;
  for (index_t n = 1; n <= 3 * w + 1; ++n) {
    for (index_t pos = 0; pos < n; ++pos) {
      tokmix_test::nan_padded<float> x(static_cast<std::size_t>(n), 16, 1);
      std::fill(x.data(), x.data() + n, -5.f);
      x.data()[pos] = 3.f;
      REQUIRE(ts::reduce_max(x.data(), n) == 3.f);
    }
    std::vector<float> masked(static_cast<std::size_t>(n), -inf);
    REQUIRE(ts::reduce_max(masked.data(), n) == -inf);
    std::vector<float> with_nan(static_cast<std::size_t>(n), 1.f);
    with_nan[static_cast<std::size_t>(n / 2)] = std::numeric_limits<float>::quiet_NaN();
    if (n > 1) REQUIRE(ts::reduce_max(with_nan.data(), n) == 1.f);
    else REQUIRE(ts::reduce_max(with_nan.data(), n) == -inf);
  }
  CHECK(ts::reduce_max(nullptr, 0) == -inf);
  CHECK(ts::reduce_sum(nullptr, 0) == 0.f);
  float one = 1.f;
  CHECK_THROWS_AS(ts::reduce_max(&one, -1), tokmix::argument_error);
  CHECK_THROWS_AS(ts::reduce_sum(nullptr, 3), tokmix::argument_error);
}

TEST_CASE("simd reduce_sum: inf and NaN propagate", "[simd][reduce]") {
  std::vector<float> v(37, 1.f);
  v[20] = inf;
  CHECK(ts::reduce_sum(v.data(), 37) == inf);
  v[21] = std::numeric_limits<float>::quiet_NaN();
  CHECK(std::isnan(ts::reduce_sum(v.data(), 37)));
}
