#pragma once
// Reproducible random draws for weights and random features: a seed gives the
// same numbers with every standard library (std::mt19937_64 is specified bit
// for bit; the distributions of <random> are not, so the transforms are ours).

#include <cmath>
#include <cstdint>
#include <random>

namespace tokmix {

class random_stream {
 public:
  explicit random_stream(std::uint64_t seed) : gen_(seed) {}

  // Uniform in [0, 1) from the top 53 bits.
  double uniform01() { return static_cast<double>(gen_() >> 11) * (1.0 / 9007199254740992.0); }
  double uniform(double lo, double hi) { return lo + (hi - lo) * uniform01(); }

  // Standard normal, Box-Muller (pairs: the second draw is kept for the next call).
  double normal() {
    if (have_spare_) {
      have_spare_ = false;
      return spare_;
    }
    const double two_pi = 6.283185307179586476925;
    double u1 = 0;
    while (u1 <= 0) u1 = uniform01();
    const double u2 = uniform01();
    const double r = std::sqrt(-2.0 * std::log(u1));
    spare_ = r * std::sin(two_pi * u2);
    have_spare_ = true;
    return r * std::cos(two_pi * u2);
  }

  // A seed for a sub-stream (one per layer / tensor), so adding a tensor
  // does not shift the draws of the others.
  static std::uint64_t derive(std::uint64_t seed, std::uint64_t salt) {
    std::uint64_t z = seed + 0x9e3779b97f4a7c15ull * (salt + 1);  // splitmix64
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }

 private:
  std::mt19937_64 gen_;
  double spare_ = 0;
  bool have_spare_ = false;
};

}  // namespace tokmix
