// attention_visibility against the reference predicate written from the
// definitions, and tile classification / key spans against brute force.

#include <random>
#include <vector>

#include <catch2/catch.hpp>

#include "attention/reference.hpp"
#include "tokmix/attention/mask.hpp"

namespace {

using tokmix::index_t;

tokmix::attention_params random_structured_params(std::mt19937& gen) {
  std::uniform_int_distribution<int> coin(0, 1), w(-1, 9), sink(0, 4), blk(0, 5);
  tokmix::attention_params p;
  p.causal = coin(gen) != 0;
  p.alignment = coin(gen) ? tokmix::causal_alignment::bottom_right : tokmix::causal_alignment::top_left;
  p.window_left = coin(gen) ? w(gen) : -1;
  p.window_right = coin(gen) ? w(gen) : -1;
  p.n_sink = coin(gen) ? sink(gen) : 0;
  p.causal_block = coin(gen) ? blk(gen) : 0;
  return p;
}

}  // namespace

TEST_CASE("attention_visibility matches the reference predicate", "[attention][mask]") {
  std::mt19937 gen(7);
  const index_t sizes[] = {1, 2, 7, 13, 20};
  for (int trial = 0; trial < 400; ++trial) {
    const auto p = random_structured_params(gen);
    const index_t lq = sizes[gen() % 5], lk = sizes[gen() % 5];
    const tokmix::attention_visibility vis(p, lq, lk);
    for (index_t i = 0; i < lq; ++i)
      for (index_t j = 0; j < lk; ++j) {
        INFO("trial " << trial << " lq " << lq << " lk " << lk << " i " << i << " j " << j << " causal " << p.causal
                      << " wl " << p.window_left << " wr " << p.window_right << " sink " << p.n_sink << " blk "
                      << p.causal_block);
        REQUIRE(vis.visible(i, j) == tokmix_test::reference_structured_visible(p, lq, lk, i, j));
      }
  }
}

TEST_CASE("tile classification is exact and key_span covers every visible key", "[attention][mask]") {
  std::mt19937 gen(11);
  for (int trial = 0; trial < 300; ++trial) {
    const auto p = random_structured_params(gen);
    const index_t lq = 1 + gen() % 19, lk = 1 + gen() % 19;
    const tokmix::attention_visibility vis(p, lq, lk);
    for (index_t q0 = 0; q0 < lq; q0 += 1 + gen() % 3)
      for (index_t q1 = q0 + 1; q1 <= lq; q1 += 1 + gen() % 4) {
        for (index_t k0 = 0; k0 < lk; k0 += 1 + gen() % 3)
          for (index_t k1 = k0 + 1; k1 <= lk; k1 += 1 + gen() % 4) {
            index_t n_vis = 0;
            for (index_t i = q0; i < q1; ++i)
              for (index_t j = k0; j < k1; ++j) n_vis += tokmix_test::reference_structured_visible(p, lq, lk, i, j);
            const index_t n = (q1 - q0) * (k1 - k0);
            const auto want = n_vis == 0 ? tokmix::tile_visibility::hidden
                                         : (n_vis == n ? tokmix::tile_visibility::full : tokmix::tile_visibility::partial);
            INFO("trial " << trial << " tile [" << q0 << "," << q1 << ")x[" << k0 << "," << k1 << ")");
            REQUIRE(vis.classify(q0, q1, k0, k1) == want);
          }
        const auto span = vis.key_span(q0, q1);
        for (index_t i = q0; i < q1; ++i)
          for (index_t j = 0; j < lk; ++j)
            if (tokmix_test::reference_structured_visible(p, lq, lk, i, j)) {
              REQUIRE(j >= span.first);
              REQUIRE(j < span.second);
            }
      }
  }
}

TEST_CASE("no structured option means every tile is fully visible", "[attention][mask]") {
  tokmix::attention_params p;
  p.n_sink = 3;  // sinks alone change nothing
  const tokmix::attention_visibility vis(p, 5, 9);
  REQUIRE_FALSE(vis.structured());
  REQUIRE(vis.classify(0, 5, 0, 9) == tokmix::tile_visibility::full);
  REQUIRE(vis.key_span(0, 5) == std::make_pair(index_t(0), index_t(9)));
}

TEST_CASE("causal alignment offsets", "[attention][mask]") {
  tokmix::attention_params p;
  p.causal = true;
  const tokmix::attention_visibility br(p, 2, 5);  // bottom-right: last query sees all keys
  REQUIRE(br.offset() == 3);
  REQUIRE(br.visible(1, 4));
  REQUIRE_FALSE(br.visible(0, 4));
  p.alignment = tokmix::causal_alignment::top_left;
  const tokmix::attention_visibility tl(p, 2, 5);
  REQUIRE(tl.visible(1, 1));
  REQUIRE_FALSE(tl.visible(1, 2));
  // Bottom-right with more queries than keys: the first rows see nothing.
  p.alignment = tokmix::causal_alignment::bottom_right;
  const tokmix::attention_visibility tall(p, 5, 2);
  REQUIRE(tall.row(0).empty());
  REQUIRE(tall.row(2).empty());
  REQUIRE(tall.visible(3, 0));
}

TEST_CASE("check_attention_params rejects bad options", "[attention][mask]") {
  tokmix::attention_params p;
  REQUIRE_NOTHROW(tokmix::check_attention_params(p, 2, 4, 5, 6));
  p.window_left = -2;
  REQUIRE_THROWS_AS(tokmix::check_attention_params(p, 2, 4, 5, 6), tokmix::argument_error);
  p = {};
  p.window_right = -3;
  REQUIRE_THROWS_AS(tokmix::check_attention_params(p, 2, 4, 5, 6), tokmix::argument_error);
  p = {};
  p.n_sink = -1;
  REQUIRE_THROWS_AS(tokmix::check_attention_params(p, 2, 4, 5, 6), tokmix::argument_error);
  p = {};
  p.softcap = -1.f;
  REQUIRE_THROWS_AS(tokmix::check_attention_params(p, 2, 4, 5, 6), tokmix::argument_error);
  std::vector<char> mask_store(2 * 4 * 5 * 7, 1);
  const bool* mask_data = reinterpret_cast<const bool*>(mask_store.data());
  p = {};
  p.mask = tokmix::tensor_view<const bool, 4>(mask_data, {1, 1, 5, 7});  // wrong seq_k
  REQUIRE_THROWS_AS(tokmix::check_attention_params(p, 2, 4, 5, 6), tokmix::argument_error);
  p.mask = tokmix::tensor_view<const bool, 4>(mask_data, {1, 4, 5, 6});
  REQUIRE_NOTHROW(tokmix::check_attention_params(p, 2, 4, 5, 6));
  p.mask = tokmix::tensor_view<const bool, 4>(mask_data, {1, 3, 5, 6});  // heads neither 1 nor Hq
  REQUIRE_THROWS_AS(tokmix::check_attention_params(p, 2, 4, 5, 6), tokmix::argument_error);
  std::vector<std::int32_t> seg(2 * 6, 0);
  p = {};
  p.q_segment_ids = tokmix::tensor_view<const std::int32_t, 2>(seg.data(), {2, 5});
  REQUIRE_THROWS_AS(tokmix::check_attention_params(p, 2, 4, 5, 6), tokmix::argument_error);  // k ids missing
  p.k_segment_ids = tokmix::tensor_view<const std::int32_t, 2>(seg.data(), {2, 6});
  REQUIRE_NOTHROW(tokmix::check_attention_params(p, 2, 4, 5, 6));
  std::vector<float> slopes(3, 0.5f);
  p = {};
  p.alibi_slopes = tokmix::tensor_view<const float, 1>(slopes.data(), {3});
  REQUIRE_THROWS_AS(tokmix::check_attention_params(p, 2, 4, 5, 6), tokmix::argument_error);
}
