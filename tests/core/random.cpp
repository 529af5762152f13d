// Tests for include/tokmix/core/random.hpp: the same draws for a seed, the
// moments of the uniform and normal transforms, independent derived seeds.
#include "tokmix/core/random.hpp"

#include <cmath>
#include <vector>

#include <catch2/catch.hpp>

TEST_CASE("random stream: reproducible, with the right moments", "[core][random]") {
  tokmix::random_stream a(42), b(42), c(43);
  std::vector<double> xa, xb;
  for (int i = 0; i < 9; ++i) {
    xa.push_back(a.normal());
    xb.push_back(b.normal());
  }
  CHECK(xa == xb);
  CHECK(c.normal() != xa[0]);

  tokmix::random_stream g(7);
  const int n = 200000;
  double su = 0, su2 = 0, sn = 0, sn2 = 0, sn4 = 0, umin = 1, umax = 0;
  for (int i = 0; i < n; ++i) {
    const double u = g.uniform01();
    umin = std::min(umin, u);
    umax = std::max(umax, u);
    su += u;
    su2 += u * u;
    const double z = g.normal();
    sn += z;
    sn2 += z * z;
    sn4 += z * z * z * z;
  }
  CHECK(umin >= 0.0);
  CHECK(umax < 1.0);
  CHECK(std::abs(su / n - 0.5) < 0.005);
  CHECK(std::abs(su2 / n - 1.0 / 3.0) < 0.005);
  CHECK(std::abs(sn / n) < 0.01);
  CHECK(std::abs(sn2 / n - 1.0) < 0.02);
  CHECK(std::abs(sn4 / n - 3.0) < 0.1);
  const double lo = g.uniform(-2.0, -1.5);
  CHECK(lo >= -2.0);
  CHECK(lo < -1.5);
}

TEST_CASE("random stream: derived seeds differ per salt and repeat per call", "[core][random]") {
  using tokmix::random_stream;
  CHECK(random_stream::derive(1, 0) == random_stream::derive(1, 0));
  CHECK(random_stream::derive(1, 0) != random_stream::derive(1, 1));
  CHECK(random_stream::derive(1, 0) != random_stream::derive(2, 0));
}
