// tokmix/simd/norm.hpp (the row sums and scalings of RMSNorm / LayerNorm)
// against float64 references over every tail length around the lane width and
// misaligned starts; outputs must leave their NaN padding untouched and inputs
// are read only inside their range (a NaN read from the padding would poison
// the sums).
#include "tokmix/simd/norm.hpp"

#include <cmath>
#include <limits>
#include <vector>

#include "support/compare.hpp"

namespace {
namespace ts = tokmix::simd;
using tokmix::index_t;

std::vector<index_t> norm_sizes() {
  const index_t w = ts::lanes<ts::default_arch>;
  std::vector<index_t> sizes{0};
  for (index_t n = 1; n <= 5 * w + 1; ++n) sizes.push_back(n);
  sizes.push_back(777);
  return sizes;
}

void require_padding_nan(const tokmix_test::nan_padded<float>& b, index_t n) {
  for (std::size_t i = 0; i < b.storage.size(); ++i)
    if (i < b.pad || i >= b.pad + static_cast<std::size_t>(n)) REQUIRE(std::isnan(b.storage[i]));
}

tokmix_test::nan_padded<float> padded(const std::vector<float>& v, std::size_t off) {
  tokmix_test::nan_padded<float> b(v.size(), 16, off);
  std::copy(v.begin(), v.end(), b.data());
  return b;
}

}  // namespace

TEST_CASE("simd norm: sum_squares and centered_sum_squares", "[simd][norm]") {
  for (index_t n : norm_sizes())
    for (std::size_t off : {0u, 1u, 3u}) {
      CAPTURE(n, off);
      const auto xv = tokmix_test::random_floats(static_cast<std::size_t>(n), unsigned(n * 5 + off), -2.f, 3.f);
      const auto x = padded(xv, off);
      double ss = 0, sum = 0;
      for (float v : xv) {
        ss += double(v) * v;
        sum += v;
      }
      const double mean = n ? sum / n : 0.0;
      double cs = 0;
      for (float v : xv) cs += (v - mean) * (v - mean);
      REQUIRE(std::abs(ts::sum_squares(x.data(), n) - ss) <= 1e-6 * ss + 1e-30);
      REQUIRE(std::abs(ts::centered_sum_squares(x.data(), float(mean), n) - cs) <= 1e-5 * (cs + 1e-6 * n));
    }
  CHECK(ts::sum_squares(nullptr, 0) == 0.f);
  CHECK_THROWS_AS(ts::sum_squares(nullptr, 3), tokmix::argument_error);
  CHECK_THROWS_AS(ts::sum_squares(nullptr, -1), tokmix::argument_error);
}

TEST_CASE("simd norm: fused add with sum / sum of squares", "[simd][norm]") {
  for (index_t n : norm_sizes())
    for (std::size_t off : {0u, 2u}) {
      CAPTURE(n, off);
      const auto xv = tokmix_test::random_floats(static_cast<std::size_t>(n), unsigned(n + 1));
      const auto rv = tokmix_test::random_floats(static_cast<std::size_t>(n), unsigned(n + 2));
      const auto x = padded(xv, off), r = padded(rv, (off + 1) % 4);
      for (bool square : {false, true}) {
        tokmix_test::nan_padded<float> h(static_cast<std::size_t>(n), 16, (off + 3) % 4);
        const float got = square ? ts::add_sum_squares(x.data(), r.data(), h.data(), n)
                                 : ts::add_sum(x.data(), r.data(), h.data(), n);
        double want = 0, mag = 0;
        for (index_t i = 0; i < n; ++i) {
          const float hi = xv[i] + rv[i];
          REQUIRE(h.data()[i] == hi);
          want += square ? double(hi) * hi : hi;
          mag += square ? double(hi) * hi : std::abs(hi);
        }
        REQUIRE(std::abs(got - want) <= 1e-6 * mag + 1e-30);
        require_padding_nan(h, n);
      }
      // In place into the residual.
      auto rr = padded(rv, 0);
      ts::add_sum_squares(x.data(), rr.data(), rr.data(), n);
      for (index_t i = 0; i < n; ++i) REQUIRE(rr.data()[i] == xv[i] + rv[i]);
      require_padding_nan(rr, n);
    }
}

TEST_CASE("simd norm: center_scale with and without gain / bias", "[simd][norm]") {
  for (index_t n : norm_sizes())
    for (int variant = 0; variant < 4; ++variant) {
      CAPTURE(n, variant);
      const bool with_g = variant & 1, with_b = variant & 2;
      const auto xv = tokmix_test::random_floats(static_cast<std::size_t>(n), unsigned(3 * n + variant));
      const auto gv = tokmix_test::random_floats(static_cast<std::size_t>(n), unsigned(7 * n + 1), 0.5f, 1.5f);
      const auto bv = tokmix_test::random_floats(static_cast<std::size_t>(n), unsigned(11 * n + 2));
      const auto x = padded(xv, 1), g = padded(gv, 2), b = padded(bv, 3);
      tokmix_test::nan_padded<float> y(static_cast<std::size_t>(n), 16, 0);
      const float shift = 0.25f, s = 1.75f;
      ts::center_scale(x.data(), shift, s, with_g ? g.data() : nullptr, with_b ? b.data() : nullptr, y.data(), n);
      for (index_t i = 0; i < n; ++i) {
        const double want = (double(xv[i]) - shift) * s * (with_g ? gv[i] : 1.0) + (with_b ? bv[i] : 0.0);
        REQUIRE(std::abs(y.data()[i] - want) <= 1e-6 * (1 + std::abs(want)));
      }
      require_padding_nan(y, n);

    }
  float x[3] = {1, 2, 3};
  CHECK_THROWS_AS(ts::center_scale(x, 0.f, 1.f, nullptr, nullptr, nullptr, 3), tokmix::argument_error);
}
