// kv_cache: storage, conversion, linear and ring slot mapping, errors that
// leave the cache untouched.

#include "tokmix/attention/kv_cache.hpp"

#include <cstdint>
#include <vector>

#include "support/compare.hpp"

namespace {

using tokmix::index_t;

// A value exactly representable in fp16 and bf16 (multiples of 1/8 below 32),
// distinct per (batch, position, head, dim) so a misplaced row is noticed.
float token_value(index_t b, index_t p, index_t h, index_t d, float which) {
  return which * (static_cast<float>((b * 7 + p * 5 + h * 3 + d) % 200) * 0.125f - 12.f);
}

// k or v for positions [p0, p0 + n): [B, n, H, D]
std::vector<float> make_tokens(index_t B, index_t p0, index_t n, index_t H, index_t D, float which) {
  std::vector<float> x(static_cast<std::size_t>(B * n * H * D));
  for (index_t b = 0; b < B; ++b)
    for (index_t t = 0; t < n; ++t)
      for (index_t h = 0; h < H; ++h)
        for (index_t d = 0; d < D; ++d) x[static_cast<std::size_t>(((b * n + t) * H + h) * D + d)] = token_value(b, p0 + t, h, d, which);
  return x;
}

template <class T>
void append_positions(tokmix::kv_cache<T>& c, index_t n) {
  const index_t B = c.batch(), H = c.kv_heads(), D = c.head_dim(), Dv = c.v_head_dim();
  auto k = make_tokens(B, c.length(), n, H, D, 1.f);
  auto v = make_tokens(B, c.length(), n, H, Dv, -1.f);
  c.append(tokmix::tensor_view<const float, 4>(k.data(), {B, n, H, D}), tokmix::tensor_view<const float, 4>(v.data(), {B, n, H, Dv}));
}

// Every held position's slot holds exactly that position's K and V.
template <class T>
void check_contents(const tokmix::kv_cache<T>& c) {
  const auto K = c.keys();
  const auto V = c.values();
  index_t held = 0;
  for (index_t p = 0; p < c.length(); ++p) {
    if (!c.holds(p)) continue;
    ++held;
    const index_t s = c.slot_of(p);
    REQUIRE(s >= 0);
    REQUIRE(s < c.capacity());
    for (index_t b = 0; b < c.batch(); ++b)
      for (index_t h = 0; h < c.kv_heads(); ++h) {
        for (index_t d = 0; d < c.head_dim(); ++d) {
          INFO("p=" << p << " b=" << b << " h=" << h << " d=" << d);
          REQUIRE(tokmix::to_float(K(b, s, h, d)) == token_value(b, p, h, d, 1.f));
          REQUIRE(tokmix::to_float(c.k_head(b, h)[s * c.head_dim() + d]) == token_value(b, p, h, d, 1.f));
        }
        for (index_t d = 0; d < c.v_head_dim(); ++d)
          REQUIRE(tokmix::to_float(V(b, s, h, d)) == token_value(b, p, h, d, -1.f));
      }
  }
  REQUIRE(held == c.size());
}

}  // namespace

TEMPLATE_TEST_CASE("kv_cache: linear append stores rows by position", "[attention][kv_cache]", float, Eigen::half,
                   Eigen::bfloat16) {
  tokmix::kv_cache<TestType> c(2, 3, 20, 33);
  REQUIRE(c.length() == 0);
  REQUIRE(c.size() == 0);
  REQUIRE(reinterpret_cast<std::uintptr_t>(c.k_head(0, 0)) % 64 == 0);
  for (index_t n : {1, 7, 1, 3, 0, 21}) {
    append_positions(c, n);
    check_contents(c);
  }
  REQUIRE(c.length() == 33);
  REQUIRE(c.size() == 33);
  REQUIRE(c.contiguous_run(5) == 28);
  // Full: one more token is an error naming k_new, and nothing changes.
  std::vector<float> k1(2 * 3 * 20, 99.f), v1 = k1;
  REQUIRE_THROWS_AS(c.append(tokmix::tensor_view<const float, 4>(k1.data(), {2, 1, 3, 20}),
                             tokmix::tensor_view<const float, 4>(v1.data(), {2, 1, 3, 20})),
                    tokmix::argument_error);
  REQUIRE(c.length() == 33);
  check_contents(c);
  c.truncate(10);
  REQUIRE(c.length() == 10);
  append_positions(c, 5);
  check_contents(c);
  c.clear();
  REQUIRE(c.length() == 0);
  append_positions(c, 2);
  check_contents(c);
}

TEST_CASE("kv_cache: a cache past the huge-page size holds every row of its last slot", "[attention][kv_cache]") {
  // 2 x 3 x 1100 slots x 160 dims of fp32: 4.2 MB of K, V on its own boundary,
  // allocated on 2 MiB boundaries (rounded up): filling it to capacity must
  // keep every row, the last V row included, where ASan would see an overrun.
  static_assert(2 * 3 * 1100 * 160 * sizeof(float) > tokmix::huge_page_bytes, "the case must take the huge-page path");
  tokmix::kv_cache<float> c(2, 3, 160, 1100);
  REQUIRE(reinterpret_cast<std::uintptr_t>(c.k_head(0, 0)) % 64 == 0);
  append_positions(c, 1000);
  append_positions(c, 100);
  REQUIRE(c.length() == 1100);
  check_contents(c);
}

TEST_CASE("kv_cache: different V head dim, strided and 16-bit inputs", "[attention][kv_cache]") {
  tokmix::kv_cache_options opt;
  opt.batch = 1;
  opt.kv_heads = 2;
  opt.head_dim = 8;
  opt.v_head_dim = 5;
  opt.capacity = 10;
  tokmix::kv_cache<Eigen::half> c(opt);
  REQUIRE(c.v_head_dim() == 5);
  append_positions(c, 4);
  // K given in PyTorch's [B, H, L, D] layout, seen through strides.
  const index_t n = 3;
  std::vector<float> k_bhld(2 * n * 8);
  for (index_t h = 0; h < 2; ++h)
    for (index_t t = 0; t < n; ++t)
      for (index_t d = 0; d < 8; ++d) k_bhld[static_cast<std::size_t>((h * n + t) * 8 + d)] = token_value(0, 4 + t, h, d, 1.f);
  auto v = make_tokens(1, 4, n, 2, 5, -1.f);
  std::vector<Eigen::half> v_half(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) v_half[i] = Eigen::half(v[i]);
  c.append(tokmix::view_from_bhld(static_cast<const float*>(k_bhld.data()), 1, 2, n, 8),
           tokmix::tensor_view<const Eigen::half, 4>(v_half.data(), {1, n, 2, 5}));
  REQUIRE(c.length() == 7);
  check_contents(c);
}

TEMPLATE_TEST_CASE("kv_cache: ring mode keeps sinks and the latest window", "[attention][kv_cache]", float, Eigen::bfloat16) {
  const index_t n_sink = GENERATE(0, 2);
  auto c = tokmix::kv_cache<TestType>::ring(2, 1, 9, 7, n_sink);
  REQUIRE(c.mode() == tokmix::kv_cache_mode::ring);
  // Chunks smaller and larger than the ring, crossing the wrap point.
  for (index_t n : {1, 3, 2, 1, 1, 4, 9, 1, 1, 1, 2, 6}) {
    append_positions(c, n);
    INFO("length " << c.length());
    REQUIRE(c.size() == std::min<index_t>(c.length(), 7));
    check_contents(c);
    const index_t ring = 7 - n_sink;
    REQUIRE(c.first_window_position() == std::max(n_sink, c.length() - ring));
    for (index_t p = 0; p < c.length(); ++p) REQUIRE(c.holds(p) == (p < n_sink || p >= c.length() - ring));
    // Runs of held positions map to consecutive slots.
    for (index_t p = 0; p < c.length(); ++p) {
      if (!c.holds(p)) continue;
      const index_t run = c.contiguous_run(p);
      REQUIRE(run >= 1);
      for (index_t q = 0; q < run; ++q) {
        REQUIRE(c.holds(p + q));
        REQUIRE(c.slot_of(p + q) == c.slot_of(p) + q);
      }
    }
  }
  REQUIRE_THROWS_AS(c.truncate(0), tokmix::argument_error);
}

TEST_CASE("kv_cache: bad arguments throw and write nothing", "[attention][kv_cache]") {
  REQUIRE_THROWS_AS(tokmix::kv_cache<float>(0, 1, 8, 4), tokmix::argument_error);
  REQUIRE_THROWS_AS(tokmix::kv_cache<float>(1, 1, 8, 0), tokmix::argument_error);
  REQUIRE_THROWS_AS(tokmix::kv_cache<float>(1, 0, 8, 4), tokmix::argument_error);
  REQUIRE_THROWS_AS(tokmix::kv_cache<float>::ring(1, 1, 8, 4, 4), tokmix::argument_error);
  tokmix::kv_cache<float> c(1, 2, 8, 16);
  append_positions(c, 3);
  std::vector<float> k(2 * 2 * 8, 5.f), v = k;
  using V4 = tokmix::tensor_view<const float, 4>;
  // Wrong heads, wrong head dim, different token counts, wrong batch.
  REQUIRE_THROWS_AS(c.append(V4(k.data(), {1, 2, 1, 16}), V4(v.data(), {1, 2, 1, 16})), tokmix::argument_error);
  REQUIRE_THROWS_AS(c.append(V4(k.data(), {1, 1, 2, 16}), V4(v.data(), {1, 1, 2, 8})), tokmix::argument_error);
  REQUIRE_THROWS_AS(c.append(V4(k.data(), {1, 2, 2, 8}), V4(v.data(), {1, 1, 2, 8})), tokmix::argument_error);
  REQUIRE_THROWS_AS(c.append(V4(k.data(), {2, 1, 2, 8}), V4(v.data(), {2, 1, 2, 8})), tokmix::argument_error);
  // Non-unit innermost stride.
  REQUIRE_THROWS_AS(c.append(V4(k.data(), {1, 1, 2, 8}, {32, 16, 8, 2}), V4(v.data(), {1, 1, 2, 8})),
                    tokmix::argument_error);
  try {
    std::vector<float> big(20 * 2 * 8, 1.f);
    c.append(V4(big.data(), {1, 20, 2, 8}), V4(big.data(), {1, 20, 2, 8}));
    FAIL("no throw");
  } catch (const tokmix::argument_error& e) {
    INFO(e.what());
    REQUIRE(e.argument() == "k_new");
    REQUIRE(e.expected().find("capacity 16") != std::string::npos);
  }
  REQUIRE(c.length() == 3);
  check_contents(c);
}
