// Tests for include/tokmix/core/named_tensors.hpp: lookup by name and shape,
// clear errors that add nothing, reproducible name order.
#include "tokmix/core/named_tensors.hpp"

#include <catch2/catch.hpp>

using tokmix::argument_error;
using tokmix::named_tensors;

TEST_CASE("named tensors: insert, look up by name and shape", "[core][named_tensors]") {
  named_tensors t;
  t.insert("b.weight", {2, 3}, {1, 2, 3, 4, 5, 6});
  t.insert("a.bias", {2}, {7, 8});
  t.insert("empty", {0, 4}, {});
  CHECK(t.size() == 3);
  CHECK(t.total_elements() == 8);
  CHECK(t.contains("a.bias"));
  CHECK_FALSE(t.contains("a.weight"));
  CHECK(t.names() == std::vector<std::string>{"a.bias", "b.weight", "empty"});
  const auto& w = t.at("b.weight", {2, 3});
  CHECK(w.data[5] == 6.f);
  CHECK(t.names_not_in({"a.bias"}) == std::vector<std::string>{"b.weight", "empty"});
}

TEST_CASE("named tensors: bad names, shapes and sizes throw and add nothing", "[core][named_tensors]") {
  named_tensors t;
  t.insert("w", {2, 2}, {1, 2, 3, 4});
  try {
    t.at("v");
    FAIL("missing tensor accepted");
  } catch (const argument_error& e) {
    CHECK(e.argument() == "weights");
    CHECK(e.expected().find("'v'") != std::string::npos);
    CHECK(e.actual().find("w") != std::string::npos);
  }
  try {
    t.at("w", {4});
    FAIL("wrong shape accepted");
  } catch (const argument_error& e) {
    CHECK(e.expected() == "shape [4]");
    CHECK(e.actual() == "shape [2, 2]");
  }
  CHECK_THROWS_AS(t.insert("w", {1}, {0}), argument_error);
  CHECK_THROWS_AS(t.insert("x", {2, 2}, {1, 2, 3}), argument_error);
  CHECK_THROWS_AS(t.insert("y", {-1}, {}), argument_error);
  CHECK(t.size() == 1);
  CHECK(t.at("w").data == std::vector<float>{1, 2, 3, 4});
}
