// Tests for include/tokmix/core/error.hpp: the one exception type and require().
#include "tokmix/core/error.hpp"

#include <stdexcept>
#include <string>

#include <catch2/catch.hpp>

TEST_CASE("argument_error names argument, expected and actual", "[core][error]") {
  const tokmix::argument_error e("query", "shape [1, 2]", "shape [3, 4]");
  const std::string msg = e.what();
  CHECK(msg.find("query") != std::string::npos);
  CHECK(msg.find("shape [1, 2]") != std::string::npos);
  CHECK(msg.find("shape [3, 4]") != std::string::npos);
  // expected comes before actual so the message reads "expected X, got Y"
  CHECK(msg.find("shape [1, 2]") < msg.find("shape [3, 4]"));
  CHECK(e.argument() == "query");
  CHECK(e.expected() == "shape [1, 2]");
  CHECK(e.actual() == "shape [3, 4]");
}

TEST_CASE("argument_error is a std::invalid_argument", "[core][error]") {
  bool caught = false;
  try {
    throw tokmix::argument_error("scale", "a finite value", "nan");
  } catch (const std::invalid_argument& e) {
    caught = true;
    CHECK(std::string(e.what()).find("scale") != std::string::npos);
  }
  CHECK(caught);
}

TEST_CASE("require throws only when the condition fails, with streamed values", "[core][error]") {
  CHECK_NOTHROW(tokmix::require(true, "n", 3, 4));
  try {
    tokmix::require(false, "head_dim", 64, 65);
    FAIL("require(false, ...) did not throw");
  } catch (const tokmix::argument_error& e) {
    CHECK(e.argument() == "head_dim");
    CHECK(e.expected() == "64");
    CHECK(e.actual() == "65");
  }
  try {
    tokmix::require(false, "window", "a positive value", -2.5);
    FAIL("require(false, ...) did not throw");
  } catch (const tokmix::argument_error& e) {
    CHECK(e.expected() == "a positive value");
    CHECK(e.actual() == "-2.5");
  }
}
