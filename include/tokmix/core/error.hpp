#pragma once
// One exception type for every bad input. Its message names the argument, what
// was expected and what came, so a user can fix the call without a debugger.
// Validation always runs to completion before any output or state is written.

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace tokmix {

class argument_error : public std::invalid_argument {
 public:
  argument_error(std::string argument, std::string expected, std::string actual)
      : std::invalid_argument(format(argument, expected, actual)),
        argument_(std::move(argument)),
        expected_(std::move(expected)),
        actual_(std::move(actual)) {}

  const std::string& argument() const noexcept { return argument_; }
  const std::string& expected() const noexcept { return expected_; }
  const std::string& actual() const noexcept { return actual_; }

 private:
  static std::string format(const std::string& a, const std::string& e, const std::string& got) {
    return "tokmix: argument '" + a + "': expected " + e + ", got " + got;
  }
  std::string argument_, expected_, actual_;
};

namespace detail {
template <class T>
std::string to_text(const T& v) {
  std::ostringstream s;
  s << v;
  return s.str();
}
}  // namespace detail

// Throws argument_error unless `ok`. `expected` and `actual` are anything streamable.
template <class E, class A>
inline void require(bool ok, const char* argument, const E& expected, const A& actual) {
  if (!ok) throw argument_error(argument, detail::to_text(expected), detail::to_text(actual));
}

}  // namespace tokmix
