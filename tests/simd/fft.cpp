// FFT convolution against the float64 direct sum: causal, full and windowed
// (Toeplitz) outputs, sizes 1..1000, shared and per-signal filters in a
// batch, plan reuse across sizes, bad arguments.

#include "tokmix/simd/fft.hpp"

#include <cmath>
#include <limits>
#include <vector>

#include "support/compare.hpp"

using namespace tokmix;
using tokmix_test::random_floats;

namespace {

std::vector<double> direct_conv(const std::vector<float>& s, const std::vector<float>& f, index_t n_out,
                                index_t offset) {
  std::vector<double> out(static_cast<std::size_t>(n_out), 0.0);
  for (index_t t = 0; t < n_out; ++t) {
    double acc = 0;
    for (index_t j = 0; j < static_cast<index_t>(s.size()); ++j) {
      const index_t r = t + offset - j;
      if (r >= 0 && r < static_cast<index_t>(f.size())) acc += double(s[static_cast<std::size_t>(j)]) * f[static_cast<std::size_t>(r)];
    }
    out[static_cast<std::size_t>(t)] = acc;
  }
  return out;
}

// fp32 FFT error grows ~ eps * log N * sum |s||f|; the bound is relative to that scale.
double scale_of(const std::vector<float>& s, const std::vector<float>& f) {
  double a = 0, b = 0;
  for (float x : s) a = std::max(a, double(std::abs(x)));
  for (float x : f) b = std::max(b, double(std::abs(x)));
  return a * b * std::sqrt(double(std::min(s.size(), f.size())) + 1);
}

}  // namespace

TEST_CASE("fft_good_size is a multiple of 4 with factors 2, 3, 5 only", "[simd][fft]") {
  CHECK(simd::fft_good_size(0) == 4);
  CHECK(simd::fft_good_size(1) == 4);
  CHECK(simd::fft_good_size(13) == 16);
  CHECK(simd::fft_good_size(100) == 100);
  CHECK(simd::fft_good_size(101) == 108);
  for (index_t n : {1, 7, 64, 127, 1999, 131071}) {
    index_t s = simd::fft_good_size(n);
    REQUIRE(s >= n);
    REQUIRE(s % 4 == 0);
    s /= 4;
    for (index_t p : {2, 3, 5})
      while (s % p == 0) s /= p;
    REQUIRE(s == 1);
  }
}

TEST_CASE("fft_convolve (causal) matches the direct sum", "[simd][fft]") {
  for (index_t n : {1, 7, 64, 100, 1000}) {
    CAPTURE(n);
    const auto s = random_floats(static_cast<std::size_t>(n), 11 + unsigned(n));
    const auto f = random_floats(static_cast<std::size_t>(n), 17 + unsigned(n));
    tokmix_test::nan_padded<float> out(static_cast<std::size_t>(n));
    simd::fft_convolve(s.data(), f.data(), out.data(), n);
    const auto ref = direct_conv(s, f, n, 0);
    const double tol = 2e-6 * scale_of(s, f) * std::log2(double(n) + 2);
    TOKMIX_REQUIRE_CLOSE(out.data(), ref.data(), static_cast<std::size_t>(n), tol, 0.0);
    REQUIRE(std::isnan(out.data()[-1]));
    REQUIRE(std::isnan(out.data()[n]));
  }
}

TEST_CASE("fft_convolver: FFT and direct paths, full and Toeplitz windows", "[simd][fft]") {
  simd::fft_convolver fft_only(false), any;
  struct shape {
    index_t ns, nf, n_out, offset;
  };
  const shape shapes[] = {{1, 1, 1, 0},      {7, 3, 9, 0},     {64, 64, 127, 0},  {100, 199, 100, 99},
                          {1000, 1000, 1000, 0}, {1000, 1999, 1000, 999}, {5, 40, 60, 0}, {30, 7, 10, 30},
                          {100, 20, 50, 200}};
  for (const auto& sh : shapes) {
    CAPTURE(sh.ns, sh.nf, sh.n_out, sh.offset);
    const auto s = random_floats(static_cast<std::size_t>(sh.ns), 3 + unsigned(sh.ns));
    const auto f = random_floats(static_cast<std::size_t>(sh.nf), 5 + unsigned(sh.nf));
    const auto ref = direct_conv(s, f, sh.n_out, sh.offset);
    const double tol = 2e-6 * scale_of(s, f) * std::log2(double(sh.ns + sh.nf) + 2);
    for (auto* conv : {&fft_only, &any}) {
      tokmix_test::nan_padded<float> out(static_cast<std::size_t>(sh.n_out));
      conv->convolve(s.data(), sh.ns, f.data(), sh.nf, out.data(), sh.n_out, sh.offset);
      TOKMIX_REQUIRE_CLOSE(out.data(), ref.data(), static_cast<std::size_t>(sh.n_out), tol, 0.0);
      REQUIRE(std::isnan(out.data()[sh.n_out]));
    }
  }
}

TEST_CASE("fft_convolver batch: shared filter and per-signal filters", "[simd][fft]") {
  const index_t count = 5, ns = 100, nf = 199, n_out = 100, offset = 99, stride_out = 103;
  const auto sig = random_floats(static_cast<std::size_t>(count * ns), 21);
  const auto fil = random_floats(static_cast<std::size_t>(count * nf), 22);
  simd::fft_convolver conv(false);
  for (index_t fstride : {index_t(0), nf}) {
    CAPTURE(fstride);
    std::vector<float> out(static_cast<std::size_t>(count * stride_out), std::numeric_limits<float>::quiet_NaN());
    conv.convolve_batch(count, sig.data(), ns, ns, fil.data(), fstride, nf, out.data(), stride_out, n_out, offset);
    for (index_t i = 0; i < count; ++i) {
      const std::vector<float> s(sig.begin() + i * ns, sig.begin() + (i + 1) * ns);
      const std::vector<float> f(fil.begin() + i * fstride, fil.begin() + i * fstride + nf);
      const auto ref = direct_conv(s, f, n_out, offset);
      TOKMIX_REQUIRE_CLOSE(out.data() + i * stride_out, ref.data(), static_cast<std::size_t>(n_out), 1e-4, 0.0);
      for (index_t t = n_out; t < stride_out && i + 1 < count; ++t)
        REQUIRE(std::isnan(out[static_cast<std::size_t>(i * stride_out + t)]));
    }
  }
}

TEST_CASE("fft_convolver: empty inputs give zeros, bad arguments throw and write nothing", "[simd][fft]") {
  simd::fft_convolver conv;
  std::vector<float> out(4, 7.f), x(4, 1.f);
  conv.convolve(x.data(), 0, x.data(), 4, out.data(), 4);
  for (float v : out) CHECK(v == 0.f);
  out.assign(4, 7.f);
  CHECK_THROWS_AS(conv.convolve(x.data(), -1, x.data(), 4, out.data(), 4), argument_error);
  CHECK_THROWS_AS(conv.convolve(x.data(), 4, x.data(), 4, out.data(), 4, -1), argument_error);
  CHECK_THROWS_AS(conv.convolve(nullptr, 4, x.data(), 4, out.data(), 4), argument_error);
  CHECK_THROWS_AS(conv.convolve(x.data(), 4, x.data(), 4, nullptr, 4), argument_error);
  CHECK_THROWS_AS(conv.convolve_batch(2, x.data(), 2, 2, x.data(), 0, 2, out.data(), 1, 2), argument_error);
  for (float v : out) CHECK(v == 7.f);
}
