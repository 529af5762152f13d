// tokmix/simd/dot.hpp (dot, axpy, scale, scale_add) against float64 references
// over every tail length and misalignment; outputs must not touch their NaN padding.
#include "tokmix/simd/dot.hpp"

#include <cmath>
#include <limits>
#include <vector>

#include "support/compare.hpp"

namespace {
namespace ts = tokmix::simd;
using tokmix::index_t;

std::vector<index_t> test_sizes() {
  const index_t w = ts::lanes<ts::default_arch>;
  std::vector<index_t> sizes;
  for (index_t n = 1; n <= 5 * w + 1; ++n) sizes.push_back(n);
  sizes.push_back(777);
  return sizes;
}

template <class T>
void require_padding_intact(const tokmix_test::nan_padded<T>& b, index_t n) {
  for (std::size_t i = 0; i < b.storage.size(); ++i)
    if (i < b.pad || i >= b.pad + static_cast<std::size_t>(n)) REQUIRE(std::isnan(b.storage[i]));
}

struct operands {
  tokmix_test::nan_padded<float> x, y;
  std::vector<float> xv, yv;
  operands(index_t n, std::size_t off, unsigned seed)
      : x(static_cast<std::size_t>(n), 16, off),
        y(static_cast<std::size_t>(n), 16, (off + 2) % 4),
        xv(tokmix_test::random_floats(static_cast<std::size_t>(n), seed)),
        yv(tokmix_test::random_floats(static_cast<std::size_t>(n), seed + 1)) {
    std::copy(xv.begin(), xv.end(), x.data());
    std::copy(yv.begin(), yv.end(), y.data());
  }
};

}  // namespace

TEST_CASE("simd dot: lengths and misalignment", "[simd][dot]") {
  for (index_t n : test_sizes()) {
    for (std::size_t off = 0; off <= 3; ++off) {
      operands o(n, off, static_cast<unsigned>(n * 4 + off));
      double ref = 0, mag = 0;
      for (index_t i = 0; i < n; ++i) {
        ref += static_cast<double>(o.xv[i]) * o.yv[i];
        mag += std::abs(static_cast<double>(o.xv[i]) * o.yv[i]);
      }
      INFO("n=" << n << " offset=" << off);
      const double got = ts::dot(o.x.data(), o.y.data(), n);
      REQUIRE(std::abs(got - ref) <= 2e-7 * mag * std::log2(n + 1.0));
    }
  }
  CHECK(ts::dot(nullptr, nullptr, 0) == 0.f);
}

TEST_CASE("simd axpy / scale / scale_add: lengths and misalignment", "[simd][dot]") {
  const float alpha = 0.75f, beta = -1.25f;
  for (index_t n : test_sizes()) {
    for (std::size_t off = 0; off <= 3; ++off) {
      INFO("n=" << n << " offset=" << off);
      const auto nn = static_cast<std::size_t>(n);
      std::vector<double> ref(nn);
      {
        operands o(n, off, static_cast<unsigned>(n + off));
        for (std::size_t i = 0; i < nn; ++i) ref[i] = o.yv[i] + static_cast<double>(alpha) * o.xv[i];
        ts::axpy(alpha, o.x.data(), o.y.data(), n);
        TOKMIX_REQUIRE_CLOSE(o.y.data(), ref.data(), nn, 1e-7, 2e-7);
        require_padding_intact(o.y, n);
      }
      {
        operands o(n, off, static_cast<unsigned>(n + off + 10));
        for (std::size_t i = 0; i < nn; ++i) ref[i] = static_cast<double>(alpha) * o.xv[i];
        ts::scale(alpha, o.x.data(), n);
        TOKMIX_REQUIRE_CLOSE(o.x.data(), ref.data(), nn, 0.0, 1e-7);
        require_padding_intact(o.x, n);
      }
      {
        operands o(n, off, static_cast<unsigned>(n + off + 20));
        for (std::size_t i = 0; i < nn; ++i) ref[i] = static_cast<double>(beta) * o.yv[i] + static_cast<double>(alpha) * o.xv[i];
        ts::scale_add(beta, o.y.data(), alpha, o.x.data(), n);
        TOKMIX_REQUIRE_CLOSE(o.y.data(), ref.data(), nn, 1e-7, 2e-7);
        require_padding_intact(o.y, n);
      }
      {
        // beta == 0 overwrites y without reading it: NaN in y must not survive.
        operands o(n, off, static_cast<unsigned>(n + off + 30));
        std::fill(o.y.data(), o.y.data() + n, std::numeric_limits<float>::quiet_NaN());
        for (std::size_t i = 0; i < nn; ++i) ref[i] = static_cast<double>(alpha) * o.xv[i];
        ts::scale_add(0.f, o.y.data(), alpha, o.x.data(), n);
        TOKMIX_REQUIRE_CLOSE(o.y.data(), ref.data(), nn, 0.0, 1e-7);
        require_padding_intact(o.y, n);
      }
    }
  }
}

TEST_CASE("simd dot family: argument errors", "[simd][dot]") {
  float a = 1.f, b = 2.f;
  CHECK_THROWS_AS(ts::dot(&a, &b, -1), tokmix::argument_error);
  CHECK_THROWS_AS(ts::axpy(1.f, nullptr, &b, 1), tokmix::argument_error);
  CHECK_THROWS_AS(ts::scale(1.f, nullptr, 2), tokmix::argument_error);
  CHECK_THROWS_AS(ts::scale_add(1.f, &b, 1.f, &a, -3), tokmix::argument_error);
  CHECK(b == 2.f);
}
