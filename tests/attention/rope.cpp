// rope: both pairings against a float64 rotation written from the RoFormer
// formula, partial rotary, offsets vs explicit positions vs tables, the
// relative-position property, 16-bit storage and errors.

#include "tokmix/attention/rope.hpp"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "support/compare.hpp"

namespace {

using tokmix::index_t;

// Float64 rotation of one head row at position pos.
std::vector<double> rope_reference_row(const float* x, index_t d, index_t r, double base, double pos,
                                       tokmix::rope_style style) {
  std::vector<double> out(x, x + d);
  for (index_t i = 0; i < r / 2; ++i) {
    const double theta = pos * std::pow(base, -2.0 * double(i) / double(r));
    const index_t a = style == tokmix::rope_style::rotate_half ? i : 2 * i;
    const index_t b = style == tokmix::rope_style::rotate_half ? i + r / 2 : 2 * i + 1;
    out[a] = double(x[a]) * std::cos(theta) - double(x[b]) * std::sin(theta);
    out[b] = double(x[b]) * std::cos(theta) + double(x[a]) * std::sin(theta);
  }
  return out;
}

// x lives in a NaN-filled buffer with a row stride larger than D so any
// write or read outside the rows shows up.
struct padded_x {
  index_t B, L, H, D, row;
  tokmix_test::nan_padded<float> buf;
  padded_x(index_t b, index_t l, index_t h, index_t d)
      : B(b), L(l), H(h), D(d), row(d + 3), buf(static_cast<std::size_t>(b * l * h * (d + 3))) {
    auto vals = tokmix_test::random_floats(static_cast<std::size_t>(B * L * H * D), 7u + unsigned(D));
    std::size_t k = 0;
    for (index_t t = 0; t < B * L * H; ++t)
      for (index_t e = 0; e < D; ++e) buf.data()[t * row + e] = vals[k++];
  }
  tokmix::tensor_view<float, 4> view() { return tokmix::tensor_view<float, 4>(buf.data(), {B, L, H, D}, {L * H * row, H * row, row, 1}); }
  float* at(index_t b, index_t l, index_t h) { return buf.data() + ((b * L + l) * H + h) * row; }
  bool padding_is_nan() const {
    for (std::size_t i = 0; i < buf.storage.size(); ++i) {
      const std::ptrdiff_t rel = static_cast<std::ptrdiff_t>(i) - static_cast<std::ptrdiff_t>(buf.pad);
      const bool inside = rel >= 0 && rel < B * L * H * row && rel % row < D;
      if (!inside && !std::isnan(buf.storage[i])) return false;
    }
    return true;
  }
};

}  // namespace

TEST_CASE("rope: matches the float64 rotation", "[attention][rope]") {
  const auto style = GENERATE(tokmix::rope_style::rotate_half, tokmix::rope_style::interleaved);
  struct shape {
    index_t d, r;
  };
  const shape sh = GENERATE(shape{64, -1}, shape{128, -1}, shape{80, 32}, shape{2, 2}, shape{9, 8}, shape{34, 18},
                            shape{96, 48});
  const index_t offset = GENERATE(0, 1000, 131071);
  const double base = sh.d == 80 ? 500000.0 : 10000.0;
  const index_t r = sh.r < 0 ? sh.d : sh.r;
  padded_x x(2, 3, 2, sh.d);
  const padded_x orig = x;
  tokmix::rope_params p;
  p.rotary_dim = sh.r;
  p.base = base;
  p.style = style;
  tokmix::rope_apply(x.view(), offset, p);
  INFO("d=" << sh.d << " r=" << r << " offset=" << offset << " style=" << int(style));
  REQUIRE(x.padding_is_nan());
  padded_x& o = const_cast<padded_x&>(orig);
  for (index_t b = 0; b < 2; ++b)
    for (index_t l = 0; l < 3; ++l)
      for (index_t h = 0; h < 2; ++h) {
        const auto ref = rope_reference_row(o.at(b, l, h), sh.d, r, base, double(offset + l), style);
        // cos/sin rounded to fp32 and a few fp32 operations: a few ulp of |x| <= 1.
        TOKMIX_REQUIRE_CLOSE(x.at(b, l, h), ref.data(), static_cast<std::size_t>(sh.d), 4e-7, 1e-6);
        // Dims past rotary_dim are untouched, bit for bit.
        REQUIRE(std::memcmp(x.at(b, l, h) + r, o.at(b, l, h) + r, sizeof(float) * std::size_t(sh.d - r)) == 0);
      }
}

TEST_CASE("rope: explicit positions and tables agree with offsets", "[attention][rope]") {
  const auto style = GENERATE(tokmix::rope_style::rotate_half, tokmix::rope_style::interleaved);
  const index_t D = 40, L = 5;
  tokmix::rope_params p;
  p.style = style;
  padded_x a(2, L, 3, D);
  padded_x b = a, c = a, d = a;
  tokmix::rope_apply(a.view(), 17, p);
  // positions [1, L] broadcast over batch
  std::vector<std::int32_t> pos(L);
  for (index_t l = 0; l < L; ++l) pos[l] = std::int32_t(17 + l);
  tokmix::rope_apply(b.view(), tokmix::tensor_view<const std::int32_t, 2>(pos.data(), {1, L}), p);
  const tokmix::rope_table table(64, D);
  tokmix::rope_apply(c.view(), 17, table, style);
  tokmix::rope_apply(d.view(), tokmix::tensor_view<const std::int32_t, 2>(pos.data(), {1, L}), table, style);
  for (index_t bb = 0; bb < 2; ++bb)
    for (index_t l = 0; l < L; ++l)
      for (index_t h = 0; h < 3; ++h)
        for (index_t e = 0; e < D; ++e) {
          REQUIRE(a.at(bb, l, h)[e] == b.at(bb, l, h)[e]);
          REQUIRE(a.at(bb, l, h)[e] == c.at(bb, l, h)[e]);
          REQUIRE(a.at(bb, l, h)[e] == d.at(bb, l, h)[e]);
        }

  // Per-batch positions (left-padded batch): batch 1 shifted by 3.
  padded_x f(2, L, 3, D);
  padded_x g = f;
  std::vector<std::int32_t> pos2(2 * L);
  for (index_t l = 0; l < L; ++l) {
    pos2[l] = std::int32_t(l);
    pos2[L + l] = std::int32_t(l + 3);
  }
  tokmix::rope_apply(f.view(), tokmix::tensor_view<const std::int32_t, 2>(pos2.data(), {2, L}), p);
  for (index_t bb = 0; bb < 2; ++bb)
    for (index_t l = 0; l < L; ++l)
      for (index_t h = 0; h < 3; ++h) {
        const auto ref = rope_reference_row(g.at(bb, l, h), D, D, 10000.0, double(l + 3 * bb), style);
        TOKMIX_REQUIRE_CLOSE(f.at(bb, l, h), ref.data(), static_cast<std::size_t>(D), 4e-7, 1e-6);
      }
}

TEST_CASE("rope: q.k depends only on the position difference", "[attention][rope]") {
  const auto style = GENERATE(tokmix::rope_style::rotate_half, tokmix::rope_style::interleaved);
  const index_t D = 64;
  auto q0 = tokmix_test::random_floats(D, 1), k0 = tokmix_test::random_floats(D, 2);
  tokmix::rope_params p;
  p.style = style;
  auto rotated_dot = [&](index_t mq, index_t mk) {
    std::vector<float> q = q0, k = k0;
    tokmix::rope_apply(tokmix::tensor_view<float, 4>(q.data(), {1, 1, 1, D}), mq, p);
    tokmix::rope_apply(tokmix::tensor_view<float, 4>(k.data(), {1, 1, 1, D}), mk, p);
    double s = 0;
    for (index_t i = 0; i < D; ++i) s += double(q[i]) * double(k[i]);
    return s;
  };
  for (index_t delta : {0, 1, 5, 100}) {
    const double s0 = rotated_dot(delta, 0);
    for (index_t shift : {1, 37, 4096, 100000}) {
      INFO("delta " << delta << " shift " << shift);
      REQUIRE(std::abs(rotated_dot(shift + delta, shift) - s0) < 2e-5);
    }
  }
  // And it does depend on the difference.
  REQUIRE(std::abs(rotated_dot(3, 0) - rotated_dot(0, 0)) > 1e-3);
}

TEST_CASE("rope: 16-bit storage", "[attention][rope]") {
  const index_t D = 32, L = 4;
  auto vals = tokmix_test::random_floats(static_cast<std::size_t>(L * D), 9);
  std::vector<Eigen::half> h(vals.size());
  std::vector<Eigen::bfloat16> bf(vals.size());
  for (std::size_t i = 0; i < vals.size(); ++i) {
    h[i] = Eigen::half(vals[i]);
    bf[i] = Eigen::bfloat16(vals[i]);
  }
  tokmix::rope_params p;
  p.rotary_dim = 16;
  tokmix::rope_apply(tokmix::tensor_view<Eigen::half, 4>(h.data(), {1, L, 1, D}), 5, p);
  tokmix::rope_apply(tokmix::tensor_view<Eigen::bfloat16, 4>(bf.data(), {1, L, 1, D}), 5, p);
  for (index_t l = 0; l < L; ++l) {
    std::vector<float> in_h(D), in_b(D);
    for (index_t e = 0; e < D; ++e) {
      in_h[e] = float(Eigen::half(vals[l * D + e]));
      in_b[e] = float(Eigen::bfloat16(vals[l * D + e]));
    }
    const auto ref_h = rope_reference_row(in_h.data(), D, 16, 10000.0, double(5 + l), tokmix::rope_style::rotate_half);
    const auto ref_b = rope_reference_row(in_b.data(), D, 16, 10000.0, double(5 + l), tokmix::rope_style::rotate_half);
    // One rounding to the storage type: 2^-11 (fp16) and 2^-8 (bf16) relative, |x| <= ~1.4.
    TOKMIX_REQUIRE_CLOSE(h.data() + l * D, ref_h.data(), static_cast<std::size_t>(D), 1e-3, 1e-3);
    TOKMIX_REQUIRE_CLOSE(bf.data() + l * D, ref_b.data(), static_cast<std::size_t>(D), 8e-3, 8e-3);
  }
}

TEST_CASE("rope: bad arguments throw and leave x untouched", "[attention][rope]") {
  const index_t D = 16;
  std::vector<float> x = tokmix_test::random_floats(2 * 3 * D, 3);
  const std::vector<float> before = x;
  const tokmix::tensor_view<float, 4> v(x.data(), {2, 3, 1, D});
  tokmix::rope_params p;
  p.rotary_dim = 7;
  REQUIRE_THROWS_AS(tokmix::rope_apply(v, 0, p), tokmix::argument_error);
  p.rotary_dim = 18;
  REQUIRE_THROWS_AS(tokmix::rope_apply(v, 0, p), tokmix::argument_error);
  p.rotary_dim = 0;
  REQUIRE_THROWS_AS(tokmix::rope_apply(v, 0, p), tokmix::argument_error);
  p.rotary_dim = -1;
  p.base = 0;
  REQUIRE_THROWS_AS(tokmix::rope_apply(v, 0, p), tokmix::argument_error);
  p.base = std::numeric_limits<double>::quiet_NaN();
  REQUIRE_THROWS_AS(tokmix::rope_apply(v, 0, p), tokmix::argument_error);
  p = tokmix::rope_params{};
  std::vector<std::int32_t> pos(4, 0);
  REQUIRE_THROWS_AS(tokmix::rope_apply(v, tokmix::tensor_view<const std::int32_t, 2>(pos.data(), {1, 4}), p),
                    tokmix::argument_error);
  REQUIRE_THROWS_AS(tokmix::rope_apply(v, tokmix::tensor_view<const std::int32_t, 2>(pos.data(), {3, 3}), p),
                    tokmix::argument_error);
  const tokmix::rope_table table(10, D);
  REQUIRE_THROWS_AS(tokmix::rope_apply(v, 8, table), tokmix::argument_error);  // positions 8..10
  REQUIRE_THROWS_AS(tokmix::rope_apply(v, -1, table), tokmix::argument_error);
  const tokmix::rope_table narrow(10, 18);
  REQUIRE_THROWS_AS(tokmix::rope_apply(v, 0, narrow), tokmix::argument_error);  // rotary_dim 18 > D
  REQUIRE_THROWS_AS(tokmix::rope_table(10, 5), tokmix::argument_error);
  REQUIRE(x == before);
  // Strided last dimension is rejected.
  REQUIRE_THROWS_AS(tokmix::rope_apply(tokmix::tensor_view<float, 4>(x.data(), {1, 1, 1, 8}, {16, 16, 16, 2}), 0),
                    tokmix::argument_error);
  REQUIRE(x == before);
}
