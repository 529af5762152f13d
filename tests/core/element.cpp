// Tests for include/tokmix/core/element.hpp: storage types and fp32 widening.
#include "tokmix/core/element.hpp"

#include <cmath>
#include <string>

#include <catch2/catch.hpp>

TEST_CASE("storage types are exactly float, half and bfloat16 (const or not)", "[core][element]") {
  STATIC_REQUIRE(tokmix::is_storage_type_v<float>);
  STATIC_REQUIRE(tokmix::is_storage_type_v<const float>);
  STATIC_REQUIRE(tokmix::is_storage_type_v<Eigen::half>);
  STATIC_REQUIRE(tokmix::is_storage_type_v<const Eigen::bfloat16>);
  STATIC_REQUIRE_FALSE(tokmix::is_storage_type_v<double>);
  STATIC_REQUIRE_FALSE(tokmix::is_storage_type_v<int>);
  STATIC_REQUIRE_FALSE(tokmix::is_storage_type_v<float*>);
}

TEST_CASE("storage_type_name", "[core][element]") {
  CHECK(std::string(tokmix::storage_type_name<float>()) == "float");
  CHECK(std::string(tokmix::storage_type_name<const Eigen::half>()) == "half");
  CHECK(std::string(tokmix::storage_type_name<Eigen::bfloat16>()) == "bfloat16");
  CHECK(std::string(tokmix::storage_type_name<double>()) == "unsupported");
}

TEST_CASE("to_float / from_float round-trip representable values", "[core][element]") {
  // Values exactly representable in both half (11-bit mantissa) and bfloat16 (8-bit).
  const float values[] = {0.0f, -0.0f, 1.0f, -2.5f, 0.125f, 96.0f, -1.5f, 3.0f};
  for (float v : values) {
    CHECK(tokmix::to_float(tokmix::from_float<float>(v)) == v);
    CHECK(tokmix::to_float(tokmix::from_float<Eigen::half>(v)) == v);
    CHECK(tokmix::to_float(tokmix::from_float<Eigen::bfloat16>(v)) == v);
  }
}

TEST_CASE("narrowing rounds to nearest within the format's precision", "[core][element]") {
  const float x = 1.0f / 3.0f;
  const float h = tokmix::to_float(tokmix::from_float<Eigen::half>(x));
  const float b = tokmix::to_float(tokmix::from_float<Eigen::bfloat16>(x));
  CHECK(std::abs(h - x) <= x * 0x1p-11f);  // half: 10 stored mantissa bits, round-to-nearest
  CHECK(std::abs(b - x) <= x * 0x1p-8f);   // bfloat16: 7 stored mantissa bits
  CHECK(std::isinf(tokmix::to_float(tokmix::from_float<Eigen::half>(1e6f))));  // beyond half's range
  CHECK(tokmix::to_float(tokmix::from_float<Eigen::bfloat16>(1e30f)) == Approx(1e30f).epsilon(1e-2));
}
