// tokmix/simd/convert.hpp against Eigen's scalar conversions: every one of the
// 65536 fp16 / bf16 patterns when widening, and when narrowing a broad sample of
// float bit patterns plus every tie between adjacent 16-bit values, subnormals,
// the overflow boundary, inf and NaN. Results must match Eigen bit for bit
// except for NaN payloads (NaN must stay NaN with its sign).
#include "tokmix/simd/convert.hpp"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "support/compare.hpp"

namespace {
namespace ts = tokmix::simd;
using tokmix::index_t;

float from_bits(std::uint32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}
std::uint32_t bits_of(float f) {
  std::uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}
template <class H>
std::uint16_t bits16(H h) {
  return Eigen::numext::bit_cast<std::uint16_t>(h);
}
template <class H>
H from_bits16(std::uint16_t b) {
  return Eigen::numext::bit_cast<H>(b);
}

bool half_is_nan(std::uint16_t b) { return (b & 0x7c00) == 0x7c00 && (b & 0x03ff) != 0; }
bool bf16_is_nan(std::uint16_t b) { return (b & 0x7f80) == 0x7f80 && (b & 0x007f) != 0; }

template <class H>
void check_widen_all() {
  std::vector<H> src(65536);
  for (std::uint32_t b = 0; b < 65536; ++b) src[b] = from_bits16<H>(static_cast<std::uint16_t>(b));
  std::vector<float> dst(src.size());
  ts::convert(src.data(), dst.data(), static_cast<index_t>(src.size()));
  for (std::uint32_t b = 0; b < 65536; ++b) {
    const float ref = static_cast<float>(src[b]);
    INFO("pattern 0x" << std::hex << b << " got 0x" << bits_of(dst[b]) << " ref 0x" << bits_of(ref));
    if (std::isnan(ref)) {
      REQUIRE(std::isnan(dst[b]));
      REQUIRE(std::signbit(dst[b]) == std::signbit(ref));
    } else {
      REQUIRE(bits_of(dst[b]) == bits_of(ref));
    }
  }
}

template <class H>
void check_narrow(const std::vector<float>& src, bool (*is_nan16)(std::uint16_t)) {
  std::vector<H> dst(src.size());
  ts::convert(src.data(), dst.data(), static_cast<index_t>(src.size()));
  for (std::size_t i = 0; i < src.size(); ++i) {
    const std::uint16_t ref = bits16(H(src[i]));
    const std::uint16_t got = bits16(dst[i]);
    INFO("float 0x" << std::hex << bits_of(src[i]) << " (" << src[i] << ") got 0x" << got << " ref 0x" << ref);
    if (is_nan16(ref)) {
      REQUIRE(is_nan16(got));
      REQUIRE((got & 0x8000) == (ref & 0x8000));
    } else {
      REQUIRE(got == ref);
    }
  }
}

// Floats exactly halfway between adjacent 16-bit values (and one float ulp either
// side), for every pattern: these decide round-to-nearest-even.
template <class H>
std::vector<float> ties_and_neighbours() {
  std::vector<float> out;
  for (std::uint32_t b = 0; b < 65535; ++b) {
    if (b == 0x7fff) continue;
    const float lo = static_cast<float>(from_bits16<H>(static_cast<std::uint16_t>(b)));
    const float hi = static_cast<float>(from_bits16<H>(static_cast<std::uint16_t>(b + 1)));
    if (!std::isfinite(lo) || !std::isfinite(hi)) continue;
    const float mid = static_cast<float>((static_cast<double>(lo) + hi) / 2);
    out.push_back(mid);
    out.push_back(std::nextafter(mid, -std::numeric_limits<float>::infinity()));
    out.push_back(std::nextafter(mid, std::numeric_limits<float>::infinity()));
  }
  return out;
}

std::vector<float> broad_sample() {
  std::vector<float> out;
  // Every 4099th bit pattern across all 2^32: every exponent, both signs, NaN payloads.
  for (std::uint64_t b = 0; b < (std::uint64_t(1) << 32); b += 4099) out.push_back(from_bits(static_cast<std::uint32_t>(b)));
  const float special[] = {0.f, -0.f, std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
                           std::numeric_limits<float>::quiet_NaN(), -std::numeric_limits<float>::quiet_NaN(),
                           from_bits(0x7f800001u), from_bits(0xff800001u), from_bits(0x7fbfffffu),
                           std::numeric_limits<float>::min(), std::numeric_limits<float>::denorm_min(),
                           -std::numeric_limits<float>::denorm_min(), std::numeric_limits<float>::max(),
                           -std::numeric_limits<float>::max(), 65504.f, 65519.f, 65519.996f, 65520.f, 65536.f,
                           -65520.f, 6.1035156e-05f, 5.9604645e-08f, 2.9802322e-08f, 2.9802326e-08f, 8.9406967e-08f,
                           3.3895314e38f, 3.3961776e38f, 3.4028235e38f, 1.f, -1.f};
  for (float f : special) out.push_back(f);
  return out;
}

}  // namespace

TEST_CASE("simd convert: fp16 -> fp32, all 65536 patterns", "[simd][convert]") { check_widen_all<Eigen::half>(); }

TEST_CASE("simd convert: bf16 -> fp32, all 65536 patterns", "[simd][convert]") { check_widen_all<Eigen::bfloat16>(); }

TEST_CASE("simd convert: fp32 -> fp16, broad sample and every tie", "[simd][convert]") {
  check_narrow<Eigen::half>(broad_sample(), half_is_nan);
  check_narrow<Eigen::half>(ties_and_neighbours<Eigen::half>(), half_is_nan);
  const float overflow[] = {65536.f, 1e10f, -1e10f, 65520.f};
  Eigen::half h[4];
  ts::convert(overflow, h, 4);
  CHECK(bits16(h[0]) == 0x7c00);
  CHECK(bits16(h[1]) == 0x7c00);
  CHECK(bits16(h[2]) == 0xfc00);
  CHECK(bits16(h[3]) == 0x7c00);  // 65520 is the tie between 65504 and 65536: even is inf
}

TEST_CASE("simd convert: fp32 -> bf16, broad sample and every tie", "[simd][convert]") {
  check_narrow<Eigen::bfloat16>(broad_sample(), bf16_is_nan);
  check_narrow<Eigen::bfloat16>(ties_and_neighbours<Eigen::bfloat16>(), bf16_is_nan);
}

TEST_CASE("simd convert: lengths, misalignment, padding", "[simd][convert]") {
  const index_t w = ts::lanes<ts::default_arch>;
  for (index_t n = 1; n <= 3 * w + 1; ++n) {
    for (std::size_t off = 0; off <= 3; ++off) {
      INFO("n=" << n << " offset=" << off);
      const auto nn = static_cast<std::size_t>(n);
      const auto v = tokmix_test::random_floats(nn, static_cast<unsigned>(n * 11 + off), -100.f, 100.f);
      tokmix_test::nan_padded<float> x(nn, 16, off), back(nn, 16, 3 - off);
      std::copy(v.begin(), v.end(), x.data());
      tokmix_test::nan_padded<Eigen::half> h(nn, 16, off);
      tokmix_test::nan_padded<Eigen::bfloat16> b(nn, 16, (off + 1) % 4);
      ts::convert(x.data(), h.data(), n);
      ts::convert(x.data(), b.data(), n);
      for (std::size_t i = 0; i < h.storage.size(); ++i)
        if (i < h.pad || i >= h.pad + nn) REQUIRE(Eigen::numext::isnan(h.storage[i]));
      for (std::size_t i = 0; i < b.storage.size(); ++i)
        if (i < b.pad || i >= b.pad + nn) REQUIRE(Eigen::numext::isnan(b.storage[i]));
      for (std::size_t i = 0; i < nn; ++i) {
        REQUIRE(bits16(h.data()[i]) == bits16(Eigen::half(v[i])));
        REQUIRE(bits16(b.data()[i]) == bits16(Eigen::bfloat16(v[i])));
      }
      ts::convert(h.data(), back.data(), n);
      for (std::size_t i = 0; i < nn; ++i) REQUIRE(back.data()[i] == static_cast<float>(Eigen::half(v[i])));
      ts::convert(b.data(), back.data(), n);
      for (std::size_t i = 0; i < nn; ++i) REQUIRE(back.data()[i] == static_cast<float>(Eigen::bfloat16(v[i])));
      for (std::size_t i = 0; i < back.storage.size(); ++i)
        if (i < back.pad || i >= back.pad + nn) REQUIRE(std::isnan(back.storage[i]));
      ts::convert(x.data(), back.data(), n);  // fp32 -> fp32 copy
      REQUIRE(std::memcmp(back.data(), v.data(), nn * sizeof(float)) == 0);
    }
  }
  Eigen::half h;
  float f = 0;
  CHECK_THROWS_AS(ts::convert(&h, &f, -1), tokmix::argument_error);
  CHECK_THROWS_AS(ts::convert(&f, static_cast<Eigen::bfloat16*>(nullptr), 1), tokmix::argument_error);
}
