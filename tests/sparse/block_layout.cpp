// block_layout and its builders against their definitions, written here per
// block (BigBird band + globals + exactly r random blocks, LSG, Sparse
// Transformer strided/fixed from the paper's token sets at block granularity),
// determinism from the seed, per-head layouts, causal composition, and the
// validation of user layouts (dense masks, CSR lists).

#include "tokmix/sparse/block_layout.hpp"

#include <cstdint>
#include <vector>

#include <catch2/catch.hpp>

using tokmix::block_layout;
using tokmix::index_t;

namespace {

index_t row_count(const block_layout& l, index_t h, index_t i) {
  index_t n = 0;
  for (index_t j = 0; j < l.k_blocks(); ++j) n += l.visible(h, i, j);
  return n;
}

}  // namespace

TEST_CASE("block_layout: bigbird band, globals and exactly r random blocks", "[sparse][block_layout]") {
  tokmix::bigbird_layout_options o;
  o.window_blocks = 3;
  o.global_first = 1;
  o.global_last = 1;
  o.random_blocks = 2;
  o.seed = 7;
  o.heads = 3;
  const index_t seq = 1000, bs = 64, n = 16;  // 1000 / 64 -> 16 blocks, the last one short
  const block_layout l = tokmix::bigbird_layout(seq, bs, o);
  REQUIRE(l.heads() == 3);
  REQUIRE(l.q_blocks() == n);
  REQUIRE(l.k_blocks() == n);
  for (index_t h = 0; h < 3; ++h)
    for (index_t i = 0; i < n; ++i) {
      index_t structured = 0;
      for (index_t j = 0; j < n; ++j) {
        const bool band = j >= i - 1 && j <= i + 1;
        const bool global = i == 0 || i == n - 1 || j == 0 || j == n - 1;
        if (band || global) {
          CHECK(l.visible(h, i, j));
          ++structured;
        }
      }
      // Global rows see everything; the others get exactly 2 more (random) blocks.
      const bool global_row = i == 0 || i == n - 1;
      CHECK(row_count(l, h, i) == (global_row ? n : structured + 2));
    }
  // Deterministic from the seed, different per head and per seed.
  const block_layout again = tokmix::bigbird_layout(seq, bs, o);
  o.seed = 8;
  const block_layout other = tokmix::bigbird_layout(seq, bs, o);
  bool same = true, heads_differ = false, seeds_differ = false;
  for (index_t i = 0; i < n; ++i)
    for (index_t j = 0; j < n; ++j) {
      same = same && l.visible(1, i, j) == again.visible(1, i, j);
      heads_differ = heads_differ || l.visible(0, i, j) != l.visible(1, i, j);
      seeds_differ = seeds_differ || l.visible(0, i, j) != other.visible(0, i, j);
    }
  CHECK(same);
  CHECK(heads_differ);
  CHECK(seeds_differ);
}

TEST_CASE("block_layout: causal builders keep the past only and draw random blocks from it", "[sparse][block_layout]") {
  tokmix::bigbird_layout_options o;
  o.random_blocks = 3;
  o.causal = true;
  const block_layout l = tokmix::bigbird_layout(20 * 32, 32, o);
  for (index_t i = 0; i < l.q_blocks(); ++i) {
    for (index_t j = i + 1; j < l.k_blocks(); ++j) CHECK_FALSE(l.visible(0, i, j));
    // band (i-1, i), global column 0, then 3 random among the rest of the past.
    const index_t structured = (i >= 2 ? 3 : i + 1);
    CHECK(row_count(l, 0, i) == std::min(i + 1, structured + 3));
  }
}

TEST_CASE("block_layout: LSG local + sparse + global", "[sparse][block_layout]") {
  tokmix::lsg_layout_options o;
  o.local_blocks = 1;
  o.sparse_blocks = 2;
  o.sparse_stride = 3;
  o.global_blocks = 2;
  const index_t n = 20;
  const block_layout l = tokmix::lsg_layout(n * 16, 16, o);
  for (index_t i = 0; i < n; ++i)
    for (index_t j = 0; j < n; ++j) {
      const index_t d = i > j ? i - j : j - i;
      const bool want = d <= 1 || d == 4 || d == 7 || i < 2 || j < 2;
      CHECK(l.visible(0, i, j) == want);
    }
}

TEST_CASE("block_layout: sparse transformer strided and fixed patterns", "[sparse][block_layout]") {
  tokmix::sparse_transformer_options o;
  o.stride = 4;
  o.summary_blocks = 1;
  o.causal = true;
  const index_t n = 17, bs = 8;
  // Token-level definitions (Child et al. 2019, sec. 4.2) with l = 4 blocks and c = 1 block:
  // a block pair (i, j) is in the layout iff some token pair of it is in A1 | A2.
  const block_layout s = tokmix::sparse_transformer_strided_layout(n * bs, bs, o);
  const block_layout f = tokmix::sparse_transformer_fixed_layout(n * bs, bs, o);
  for (index_t i = 0; i < n; ++i)
    for (index_t j = 0; j < n; ++j) {
      const bool causal = j <= i;
      CHECK(s.visible(0, i, j) == (causal && (i - j < 4 || (i - j) % 4 == 0)));
      CHECK(f.visible(0, i, j) == (causal && (i / 4 == j / 4 || j % 4 == 3)));
    }
  // Split heads: even heads A1 only, odd heads A2 only.
  o.heads = 2;
  o.head_mode = tokmix::sparse_transformer_heads::split;
  const block_layout sp = tokmix::sparse_transformer_fixed_layout(n * bs, bs, o);
  for (index_t i = 0; i < n; ++i)
    for (index_t j = 0; j < n; ++j) {
      CHECK(sp.visible(0, i, j) == (j <= i && i / 4 == j / 4));
      CHECK(sp.visible(1, i, j) == (j <= i && j % 4 == 3));
    }
  // Non-causal strided looks both ways.
  o.heads = 1;
  o.head_mode = tokmix::sparse_transformer_heads::merged;
  o.causal = false;
  const block_layout nc = tokmix::sparse_transformer_strided_layout(n * bs, bs, o);
  for (index_t i = 0; i < n; ++i)
    for (index_t j = 0; j < n; ++j) {
      const index_t d = i > j ? i - j : j - i;
      CHECK(nc.visible(0, i, j) == (d < 4 || d % 4 == 0));
    }
}

TEST_CASE("block_layout: from_mask, from_csr, merge", "[sparse][block_layout]") {
  bool m[2 * 3 * 4] = {};
  m[0 * 12 + 1 * 4 + 2] = true;
  m[1 * 12 + 2 * 4 + 3] = true;
  const tokmix::tensor_view<const bool, 3> mv(m, {2, 3, 4});
  const block_layout a = block_layout::from_mask(mv, 32);
  CHECK(a.heads() == 2);
  CHECK(a.q_blocks() == 3);
  CHECK(a.k_blocks() == 4);
  CHECK(a.count() == 2);
  CHECK(a.visible(0, 1, 2));
  CHECK(a.visible(1, 2, 3));

  // Head 0: row 0 -> {3, 1, 1}, row 1 -> {}, row 2 -> {0}. Head 1: row 2 -> {2}.
  const std::int32_t ro[2 * 4] = {0, 3, 3, 4, 0, 0, 0, 1};
  const std::int32_t ci[2 * 4] = {3, 1, 1, 0, 2, -5, -5, -5};
  const block_layout c = block_layout::from_csr(4, 32, tokmix::tensor_view<const std::int32_t, 2>(ro, {2, 4}),
                                                tokmix::tensor_view<const std::int32_t, 2>(ci, {2, 4}));
  CHECK(c.count() == 4);
  CHECK(c.visible(0, 0, 3));
  CHECK(c.visible(0, 0, 1));
  CHECK(c.visible(0, 2, 0));
  CHECK(c.visible(1, 2, 2));
  block_layout u = c;
  u.merge(a);
  CHECK(u.count() == 6);
}

TEST_CASE("block_layout: bad layouts throw", "[sparse][block_layout]") {
  CHECK_THROWS_AS(block_layout(0, 2, 2, 16), tokmix::argument_error);
  CHECK_THROWS_AS(block_layout(1, 2, 2, 0), tokmix::argument_error);
  block_layout l(1, 2, 3, 16);
  CHECK_THROWS_AS(l.set(0, 2, 0), tokmix::argument_error);
  CHECK_THROWS_AS(l.set(0, 0, 3), tokmix::argument_error);
  CHECK_THROWS_AS(l.set(1, 0, 0), tokmix::argument_error);
  CHECK_THROWS_AS(l.set(0, -1, 0), tokmix::argument_error);
  const std::int32_t ro_bad_index[3] = {0, 1, 2};
  const std::int32_t ci_bad[2] = {0, 4};
  CHECK_THROWS_WITH(block_layout::from_csr(4, 16, tokmix::tensor_view<const std::int32_t, 2>(ro_bad_index, {1, 3}),
                                           tokmix::tensor_view<const std::int32_t, 2>(ci_bad, {1, 2})),
                    Catch::Contains("col_indices") && Catch::Contains("[0, 4)") && Catch::Contains("got 4"));
  const std::int32_t ro_decreasing[3] = {0, 2, 1};
  const std::int32_t ci_ok[2] = {0, 1};
  CHECK_THROWS_WITH(block_layout::from_csr(4, 16, tokmix::tensor_view<const std::int32_t, 2>(ro_decreasing, {1, 3}),
                                           tokmix::tensor_view<const std::int32_t, 2>(ci_ok, {1, 2})),
                    Catch::Contains("non-decreasing"));
  const std::int32_t ro_long[3] = {0, 1, 3};
  CHECK_THROWS_WITH(block_layout::from_csr(4, 16, tokmix::tensor_view<const std::int32_t, 2>(ro_long, {1, 3}),
                                           tokmix::tensor_view<const std::int32_t, 2>(ci_ok, {1, 2})),
                    Catch::Contains("row_offsets"));
  tokmix::bigbird_layout_options o;
  o.window_blocks = 2;
  CHECK_THROWS_WITH(tokmix::bigbird_layout(256, 32, o), Catch::Contains("window_blocks"));
  tokmix::sparse_transformer_options so;
  so.heads = 1;
  so.head_mode = tokmix::sparse_transformer_heads::split;
  CHECK_THROWS_WITH(tokmix::sparse_transformer_fixed_layout(256, 32, so), Catch::Contains("heads"));
  so.head_mode = tokmix::sparse_transformer_heads::merged;
  so.summary_blocks = 5;
  CHECK_THROWS_WITH(tokmix::sparse_transformer_fixed_layout(256, 32, so), Catch::Contains("summary_blocks"));
  block_layout other(1, 3, 3, 16);
  CHECK_THROWS_AS(l.merge(other), tokmix::argument_error);
}
