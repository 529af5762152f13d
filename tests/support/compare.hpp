#pragma once
// Shared comparison helpers: every kernel test compares against a float64
// reference and reports max abs / max rel error, NMSE and the worst index, so a
// failure says where and by how much.

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

namespace tokmix_test {

struct error_report {
  double max_abs = 0, max_rel = 0, nmse = 0;
  std::size_t worst = 0;  // index of the largest abs error
  std::size_t count = 0;
  bool non_finite = false;  // a non-finite value where the reference is finite
  double got_at_worst = 0, ref_at_worst = 0;

  std::string str() const {
    std::ostringstream s;
    s << "n=" << count << " max_abs=" << max_abs << " max_rel=" << max_rel << " nmse=" << nmse << " worst@" << worst
      << " (got " << got_at_worst << ", ref " << ref_at_worst << ")" << (non_finite ? " NON-FINITE" : "");
    return s.str();
  }
};

// rel error uses max(|ref|, rel_floor) as the denominator so values near zero don't dominate.
template <class Got, class Ref>
error_report compare(const Got* got, const Ref* ref, std::size_t n, double rel_floor = 1e-6) {
  error_report r;
  r.count = n;
  double num = 0, den = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const double g = static_cast<double>(got[i]), f = static_cast<double>(ref[i]);
    if (std::isnan(f) && std::isnan(g)) continue;
    if (std::isinf(f) && g == f) continue;
    if (!std::isfinite(g) || !std::isfinite(f)) {
      if (!r.non_finite) {
        r.worst = i;
        r.got_at_worst = g;
        r.ref_at_worst = f;
      }
      r.non_finite = true;
      continue;
    }
    const double e = std::abs(g - f);
    num += e * e;
    den += f * f;
    if (e > r.max_abs && !r.non_finite) {
      r.max_abs = e;
      r.worst = i;
      r.got_at_worst = g;
      r.ref_at_worst = f;
    }
    r.max_rel = std::max(r.max_rel, e / std::max(std::abs(f), rel_floor));
  }
  r.nmse = den > 0 ? num / den : num;
  return r;
}

template <class Got, class Ref>
error_report compare(const std::vector<Got>& got, const std::vector<Ref>& ref, double rel_floor = 1e-6) {
  REQUIRE(got.size() == ref.size());
  return compare(got.data(), ref.data(), got.size(), rel_floor);
}

// Passes when every element is within atol + rtol*|ref| and nothing is non-finite.
template <class Got, class Ref>
bool all_close(const Got* got, const Ref* ref, std::size_t n, double atol, double rtol, std::string* why = nullptr) {
  for (std::size_t i = 0; i < n; ++i) {
    const double g = static_cast<double>(got[i]), f = static_cast<double>(ref[i]);
    if (std::isnan(f) && std::isnan(g)) continue;
    if (std::isinf(f) && g == f) continue;
    if (!(std::abs(g - f) <= atol + rtol * std::abs(f))) {
      if (why) {
        std::ostringstream s;
        s << "index " << i << ": got " << g << ", ref " << f << " (atol " << atol << ", rtol " << rtol << "); "
          << compare(got, ref, n).str();
        *why = s.str();
      }
      return false;
    }
  }
  return true;
}

#define TOKMIX_REQUIRE_CLOSE(got_ptr, ref_ptr, n, atol, rtol)                                  \
  do {                                                                                         \
    std::string tokmix_why_;                                                                   \
    const bool tokmix_ok_ = ::tokmix_test::all_close((got_ptr), (ref_ptr), (n), (atol), (rtol), &tokmix_why_); \
    INFO(tokmix_why_);                                                                         \
    REQUIRE(tokmix_ok_);                                                                       \
  } while (0)

// Deterministic inputs: tests must be reproducible.
inline std::vector<float> random_floats(std::size_t n, unsigned seed, float lo = -1.f, float hi = 1.f) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(gen);
  return v;
}

// A buffer whose elements outside [pad, pad+n) are NaN: kernels that read past
// their range poison their result. data() sits `misalign` elements past a
// 64-byte boundary, so aligned (misalign 0) and misaligned paths are each
// taken on purpose, not by the allocator's luck.
template <class T = float>
struct nan_padded {
  std::vector<T> storage;
  std::size_t pad;
  nan_padded(std::size_t n, std::size_t pad_elems = 64, std::size_t misalign = 0)
      : storage(n + 2 * pad_elems + misalign + 64 / sizeof(T), T(std::numeric_limits<float>::quiet_NaN())),
        pad(pad_elems) {
    while (reinterpret_cast<std::uintptr_t>(storage.data() + pad) % 64 != 0) ++pad;
    pad += misalign;
  }
  T* data() { return storage.data() + pad; }
  const T* data() const { return storage.data() + pad; }
};

}  // namespace tokmix_test
