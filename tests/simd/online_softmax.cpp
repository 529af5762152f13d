// tokmix/simd/online_softmax.hpp: tile-by-tile updates must equal one softmax
// over the whole row (float64 reference), fully masked rows never produce NaN,
// and the returned correction rescales an accumulator exactly as documented.
#include "tokmix/simd/online_softmax.hpp"

#include <cmath>
#include <limits>
#include <vector>

#include "support/compare.hpp"

namespace {
namespace ts = tokmix::simd;
using tokmix::index_t;
constexpr float inf = std::numeric_limits<float>::infinity();

// Runs a row through online_softmax_update in tiles of `tile` and accumulates
// o = sum_j p_j v_j with the returned corrections; returns o / l, plus m and l.
struct online_result {
  std::vector<float> probs;  // p_j / l, reconstructed with the final m
  double weighted = 0;       // sum_j softmax_j v_j
  float m = -inf, l = 0;
};

online_result run_online(const std::vector<float>& s, const std::vector<float>& v, index_t tile, std::size_t off) {
  online_result r;
  const auto n = static_cast<index_t>(s.size());
  std::vector<float> p_all(s.size());
  std::vector<float> m_at(s.size());
  float acc = 0;
  for (index_t t0 = 0; t0 < n; t0 += tile) {
    const index_t len = std::min(tile, n - t0);
    tokmix_test::nan_padded<float> buf(static_cast<std::size_t>(len), 16, off);
    std::copy(s.begin() + t0, s.begin() + t0 + len, buf.data());
    const float alpha = ts::online_softmax_update(buf.data(), len, r.m, r.l);
    REQUIRE(!std::isnan(alpha));
    for (std::size_t i = 0; i < buf.storage.size(); ++i)
      if (i < buf.pad || i >= buf.pad + static_cast<std::size_t>(len)) REQUIRE(std::isnan(buf.storage[i]));
    float tile_acc = 0;
    for (index_t j = 0; j < len; ++j) {
      p_all[static_cast<std::size_t>(t0 + j)] = buf.data()[j];
      m_at[static_cast<std::size_t>(t0 + j)] = r.m;
      tile_acc += buf.data()[j] * v[static_cast<std::size_t>(t0 + j)];
    }
    acc = alpha * acc + tile_acc;
  }
  r.probs.resize(s.size());
  for (std::size_t j = 0; j < s.size(); ++j)
    r.probs[j] = r.l > 0 ? static_cast<float>(p_all[j] * std::exp(static_cast<double>(m_at[j]) - r.m) / r.l) : 0.f;
  r.weighted = r.l > 0 ? acc / r.l : 0.0;
  return r;
}

}  // namespace

TEST_CASE("simd online softmax: tiles equal one softmax over the row", "[simd][online_softmax]") {
  const index_t w = ts::lanes<ts::default_arch>;
  for (index_t n : {index_t(1), w - 1, w, w + 1, 3 * w + 1, index_t(100), index_t(257)}) {
    if (n < 1) continue;
    auto s = tokmix_test::random_floats(static_cast<std::size_t>(n), static_cast<unsigned>(n), -8.f, 8.f);
    const auto v = tokmix_test::random_floats(static_cast<std::size_t>(n), static_cast<unsigned>(n + 1));
    // Some masked keys, including the first ones (m starts finite only later).
    for (std::size_t j = 0; j < s.size(); j += 3) s[j] = -inf;
    double m_ref = -INFINITY;
    for (float x : s) m_ref = std::max(m_ref, static_cast<double>(x));
    double l_ref = 0, o_ref = 0;
    for (std::size_t j = 0; j < s.size() && m_ref > -INFINITY; ++j) {
      l_ref += std::exp(s[j] - m_ref);
      o_ref += std::exp(s[j] - m_ref) * v[j];
    }
    std::vector<double> p_ref(s.size());
    for (std::size_t j = 0; j < s.size(); ++j) p_ref[j] = l_ref > 0 ? std::exp(s[j] - m_ref) / l_ref : 0.0;
    o_ref = l_ref > 0 ? o_ref / l_ref : 0.0;

    for (index_t tile : {index_t(1), w - 1, w, 2 * w + 3, index_t(64), n}) {
      if (tile < 1) continue;
      for (std::size_t off : {std::size_t(0), std::size_t(3)}) {
        INFO("n=" << n << " tile=" << tile << " offset=" << off);
        const auto r = run_online(s, v, tile, off);
        if (l_ref == 0) {
          REQUIRE(r.m == -inf);
          REQUIRE(r.l == 0.f);
          continue;
        }
        REQUIRE(r.m == static_cast<float>(m_ref));
        REQUIRE(r.l == Approx(l_ref).epsilon(1e-6));
        TOKMIX_REQUIRE_CLOSE(r.probs.data(), p_ref.data(), r.probs.size(), 1e-7, 1e-6);
        REQUIRE(r.weighted == Approx(o_ref).margin(1e-6).epsilon(1e-5));
      }
    }
  }
}

TEST_CASE("simd online softmax: fully masked rows", "[simd][online_softmax]") {
  const index_t w = ts::lanes<ts::default_arch>;
  for (index_t n : {index_t(1), w, 2 * w + 1}) {
    std::vector<float> s(static_cast<std::size_t>(n), -inf);
    float m = -inf, l = 0;
    const float alpha = ts::online_softmax_update(s.data(), n, m, l);
    CHECK(alpha == 1.f);
    CHECK(m == -inf);
    CHECK(l == 0.f);
    for (float p : s) CHECK(p == 0.f);

    // A later tile with visible keys: alpha = exp(-inf) = 0, nothing NaN.
    std::vector<float> s2(static_cast<std::size_t>(n + 1), 0.5f);
    s2[0] = -inf;
    const float alpha2 = ts::online_softmax_update(s2.data(), n + 1, m, l);
    CHECK(alpha2 == 0.f);
    CHECK(m == 0.5f);
    CHECK(l == static_cast<float>(n));
    CHECK(s2[0] == 0.f);
    CHECK(s2[1] == 1.f);

    // Then a fully masked tile: the running state is untouched and alpha = 1.
    std::vector<float> s3(static_cast<std::size_t>(n), -inf);
    const float alpha3 = ts::online_softmax_update(s3.data(), n, m, l);
    CHECK(alpha3 == 1.f);
    CHECK(m == 0.5f);
    CHECK(l == static_cast<float>(n));
    for (float p : s3) CHECK(p == 0.f);
  }
}

TEST_CASE("simd online softmax: empty tile, unchanged max, errors", "[simd][online_softmax]") {
  float m = 2.f, l = 3.f;
  CHECK(ts::online_softmax_update(nullptr, 0, m, l) == 1.f);
  CHECK(m == 2.f);
  CHECK(l == 3.f);
  std::vector<float> s = {1.f, 2.f, 0.f};
  CHECK(ts::online_softmax_update(s.data(), 3, m, l) == 1.f);  // max did not move: alpha exactly 1
  CHECK(m == 2.f);
  CHECK(l == Approx(3.0 + std::exp(-1.0) + 1.0 + std::exp(-2.0)).epsilon(1e-6));
  CHECK_THROWS_AS(ts::online_softmax_update(s.data(), -1, m, l), tokmix::argument_error);
  CHECK_THROWS_AS(ts::online_softmax_update(nullptr, 2, m, l), tokmix::argument_error);
}
