// block_sparse_attention against the float64 softmax reference with the
// equivalent explicit mask (the layout expanded to tokens, ANDed with the
// attention_params mask): odd sizes and block sizes around the 128 tile, GQA,
// Lq != Lk, shared and per-head layouts, causal composition and other
// options, strided and 16-bit inputs, empty rows, threads, decode step by
// step == prefill, and rejection of bad layouts without writing anything.
//
// Tolerance: atol 2e-5 + rtol 1e-4 (fp32 accumulation over <= 400 keys,
// outputs ~0.1-1), as the dense attention tests.

#include "tokmix/sparse/block_sparse.hpp"

#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <vector>

#include <catch2/catch.hpp>

#include "attention/reference.hpp"
#include "sparse/reference.hpp"
#include "support/compare.hpp"

namespace {

using tokmix::block_layout;
using tokmix::index_t;
using tokmix::tensor_view;
using namespace tokmix_test::sparse_ref;

// The layout as a token mask [1|B=1, heads, Lq, Lk] (broadcast over batch), ANDed with `extra` if given.
std::unique_ptr<bool[]> token_mask(const block_layout& l, const shape& s, const bool* extra = nullptr) {
  const index_t H = l.heads(), bs = l.block_size();
  std::unique_ptr<bool[]> m(new bool[static_cast<std::size_t>(H * s.Lq * s.Lk)]);
  for (index_t h = 0; h < H; ++h)
    for (index_t i = 0; i < s.Lq; ++i)
      for (index_t j = 0; j < s.Lk; ++j) {
        const std::size_t at = static_cast<std::size_t>((h * s.Lq + i) * s.Lk + j);
        m[at] = l.visible(h, i / bs, j / bs) && (extra == nullptr || extra[(i * s.Lk + j)]);
      }
  return m;
}

tokmix_test::attention_reference_output reference(const problem& pr, const block_layout& l, tokmix::attention_params p,
                                                  const bool* extra = nullptr) {
  const auto m = token_mask(l, pr.s, extra);
  p.mask = tensor_view<const bool, 4>(m.get(), {1, l.heads(), pr.s.Lq, pr.s.Lk});
  return tokmix_test::attention_reference(pr.qv(), pr.kv(), pr.vv(), p);
}

void check(const problem& pr, const block_layout& l, const tokmix::attention_params& p, double tol = 2e-5) {
  result r(pr);
  tokmix::block_sparse_attention(pr.qv(), pr.kv(), pr.vv(), r.ov(pr), r.lv(pr), l, p);
  const auto ref = reference(pr, l, p);
  TOKMIX_REQUIRE_CLOSE(r.o.data(), ref.o.data(), ref.o.size(), tol, 5 * tol);
  TOKMIX_REQUIRE_CLOSE(r.lse.data(), ref.lse.data(), ref.lse.size(), tol, 5 * tol);
}

block_layout random_layout(index_t heads, index_t nq, index_t nk, index_t bs, double density, unsigned seed) {
  block_layout l(heads, nq, nk, bs);
  std::uint64_t s = seed;
  for (index_t h = 0; h < heads; ++h)
    for (index_t i = 0; i < nq; ++i)
      for (index_t j = 0; j < nk; ++j)
        if (double(tokmix::detail::splitmix64(s) % 1000) < density * 1000) l.set(h, i, j);
  return l;
}

index_t blocks(index_t n, index_t bs) { return (n + bs - 1) / bs; }

}  // namespace

TEST_CASE("block_sparse: random layouts across sizes and block sizes", "[sparse][block_sparse]") {
  struct cfg {
    shape s;
    index_t bs;
  };
  const cfg cases[] = {
      {{1, 1, 1, 1, 1, 8, 8}, 16},          {{1, 37, 37, 2, 1, 16, 16}, 16},     {{2, 200, 200, 2, 2, 32, 24}, 64},
      {{1, 300, 300, 4, 2, 64, 64}, 128},   {{1, 300, 300, 2, 1, 33, 17}, 160},  {{1, 129, 257, 3, 3, 16, 16}, 32},
      {{1, 257, 100, 2, 1, 16, 16}, 128},   {{1, 65, 65, 1, 1, 64, 64}, 7},
  };
  unsigned seed = 11;
  for (const cfg& c : cases) {
    INFO("B " << c.s.B << " Lq " << c.s.Lq << " Lk " << c.s.Lk << " Hq " << c.s.Hq << " D " << c.s.D << " bs " << c.bs);
    const problem pr(c.s, seed++);
    for (index_t heads : {index_t(1), c.s.Hq}) {
      const block_layout l = random_layout(heads, blocks(c.s.Lq, c.bs), blocks(c.s.Lk, c.bs), c.bs, 0.4, seed++);
      tokmix::attention_params p;
      check(pr, l, p);
      p.causal = true;
      check(pr, l, p);
      p.alignment = tokmix::causal_alignment::top_left;
      check(pr, l, p);
    }
  }
}

TEST_CASE("block_sparse: builders with causal composition and attention options", "[sparse][block_sparse]") {
  const shape s{1, 333, 333, 4, 2, 32, 32};
  const problem pr(s, 5);
  tokmix::bigbird_layout_options bo;
  bo.random_blocks = 2;
  bo.heads = 4;
  const block_layout bb = tokmix::bigbird_layout(s.Lq, 32, bo);
  tokmix::attention_params p;
  check(pr, bb, p);
  bo.causal = true;
  const block_layout bbc = tokmix::bigbird_layout(s.Lq, 32, bo);
  p.causal = true;
  check(pr, bbc, p);
  // Window + sinks + softcap + ALiBi on top of a Sparse Transformer layout.
  tokmix::sparse_transformer_options so;
  so.stride = 3;
  const block_layout st = tokmix::sparse_transformer_strided_layout(s.Lq, 16, so);
  p.window_left = 100;
  p.n_sink = 5;
  p.softcap = 2.f;
  const float slopes[4] = {0.5f, 0.25f, 0.125f, 0.0625f};
  p.alibi_slopes = tensor_view<const float, 1>(slopes, {4});
  check(pr, st, p);
  const block_layout lsg = tokmix::lsg_layout(s.Lq, 64, {});
  tokmix::attention_params q;
  q.causal_block = 50;
  check(pr, lsg, q);
  // A user mask ANDed with the layout.
  std::unique_ptr<bool[]> um(new bool[static_cast<std::size_t>(s.Lq * s.Lk)]);
  for (index_t i = 0; i < s.Lq * s.Lk; ++i) um[i] = (i * 7919) % 5 != 0;
  tokmix::attention_params pm;
  pm.mask = tensor_view<const bool, 4>(um.get(), {1, 1, s.Lq, s.Lk});
  result r(pr);
  tokmix::block_sparse_attention(pr.qv(), pr.kv(), pr.vv(), r.ov(pr), r.lv(pr), bb, pm);
  const auto ref = reference(pr, bb, tokmix::attention_params{}, um.get());
  TOKMIX_REQUIRE_CLOSE(r.o.data(), ref.o.data(), ref.o.size(), 2e-5, 1e-4);
  TOKMIX_REQUIRE_CLOSE(r.lse.data(), ref.lse.data(), ref.lse.size(), 2e-5, 1e-4);
}

TEST_CASE("block_sparse: empty layout rows give zeros and lse -inf", "[sparse][block_sparse]") {
  const shape s{1, 100, 100, 2, 1, 16, 16};
  const problem pr(s, 9);
  block_layout l(1, 4, 4, 32);
  l.set(0, 1, 0);
  l.set(0, 3, 2);
  l.set(0, 3, 3);  // rows 0 and 2 empty; with causal, block 1 sees block 0 only
  for (bool causal : {false, true}) {
    tokmix::attention_params p;
    p.causal = causal;
    result r(pr);
    tokmix::block_sparse_attention(pr.qv(), pr.kv(), pr.vv(), r.ov(pr), r.lv(pr), l, p);
    for (index_t i = 0; i < 32; ++i)
      for (index_t h = 0; h < 2; ++h) {
        CHECK(r.lse[static_cast<std::size_t>(h * 100 + i)] == -std::numeric_limits<float>::infinity());
        CHECK(r.lse[static_cast<std::size_t>(h * 100 + 64 + i)] == -std::numeric_limits<float>::infinity());
        for (index_t e = 0; e < 16; ++e) {
          CHECK(r.o[static_cast<std::size_t>((i * 2 + h) * 16 + e)] == 0.f);
          CHECK(r.o[static_cast<std::size_t>(((64 + i) * 2 + h) * 16 + e)] == 0.f);
        }
      }
    check(pr, l, p);
  }
  block_layout none(1, 4, 4, 32);
  check(pr, none, {});
}

TEST_CASE("block_sparse: strided [B, H, L, D] and 16-bit inputs", "[sparse][block_sparse]") {
  const index_t B = 2, L = 150, H = 2, D = 24;
  const problem pr({B, L, L, H, H, D, D}, 21);
  const block_layout l = random_layout(H, blocks(L, 32), blocks(L, 32), 32, 0.5, 3);
  tokmix::attention_params p;
  p.causal = true;
  // Same data stored [B, H, L, D].
  auto to_bhld = [&](const float* x) {
    std::vector<float> y(static_cast<std::size_t>(B * L * H * D));
    for (index_t b = 0; b < B; ++b)
      for (index_t t = 0; t < L; ++t)
        for (index_t h = 0; h < H; ++h)
          for (index_t e = 0; e < D; ++e) y[((b * H + h) * L + t) * D + e] = x[((b * L + t) * H + h) * D + e];
    return y;
  };
  const auto q = to_bhld(pr.q.data()), k = to_bhld(pr.k.data()), v = to_bhld(pr.v.data());
  std::vector<float> o(q.size(), 0.f);
  tokmix::block_sparse_attention(tokmix::view_from_bhld(q.data(), B, H, L, D), tokmix::view_from_bhld(k.data(), B, H, L, D),
                                 tokmix::view_from_bhld(v.data(), B, H, L, D), tokmix::view_from_bhld(o.data(), B, H, L, D),
                                 l, p);
  const auto ref = reference(pr, l, p);
  std::vector<double> ref_bhld(o.size());
  for (index_t b = 0; b < B; ++b)
    for (index_t t = 0; t < L; ++t)
      for (index_t h = 0; h < H; ++h)
        for (index_t e = 0; e < D; ++e) ref_bhld[((b * H + h) * L + t) * D + e] = ref.o[((b * L + t) * H + h) * D + e];
  TOKMIX_REQUIRE_CLOSE(o.data(), ref_bhld.data(), o.size(), 2e-5, 1e-4);

  // bf16 q/k/v: the kernel widens exactly, so compare with the reference on the rounded values.
  problem rounded = pr;
  const std::size_t nq = static_cast<std::size_t>(B * L * H * D);
  std::vector<Eigen::bfloat16> qb(nq), kb(nq), vb(nq);
  for (std::size_t i = 0; i < nq; ++i) {
    qb[i] = Eigen::bfloat16(pr.q.data()[i]);
    kb[i] = Eigen::bfloat16(pr.k.data()[i]);
    vb[i] = Eigen::bfloat16(pr.v.data()[i]);
    rounded.q.data()[i] = float(qb[i]);
    rounded.k.data()[i] = float(kb[i]);
    rounded.v.data()[i] = float(vb[i]);
  }
  result r(pr);
  tokmix::block_sparse_attention(tensor_view<const Eigen::bfloat16, 4>(qb.data(), {B, L, H, D}),
                                 tensor_view<const Eigen::bfloat16, 4>(kb.data(), {B, L, H, D}),
                                 tensor_view<const Eigen::bfloat16, 4>(vb.data(), {B, L, H, D}), r.ov(pr), r.lv(pr), l, p);
  const auto rref = reference(rounded, l, p);
  TOKMIX_REQUIRE_CLOSE(r.o.data(), rref.o.data(), rref.o.size(), 2e-5, 1e-4);
}

TEST_CASE("block_sparse: threads give the serial result bit for bit", "[sparse][block_sparse]") {
  const shape s{2, 300, 300, 4, 2, 32, 32};
  const problem pr(s, 31);
  const block_layout l = random_layout(4, blocks(300, 64), blocks(300, 64), 64, 0.5, 8);
  tokmix::attention_params p;
  p.causal = true;
  result a(pr), b(pr);
  tokmix::block_sparse_attention(pr.qv(), pr.kv(), pr.vv(), a.ov(pr), a.lv(pr), l, p);
  p.policy = tokmix::exec_policy::threads(2);
  tokmix::block_sparse_attention(pr.qv(), pr.kv(), pr.vv(), b.ov(pr), b.lv(pr), l, p);
  CHECK(a.o == b.o);
  CHECK(a.lse == b.lse);
}

TEST_CASE("block_sparse: decode step by step equals the causal prefill", "[sparse][block_sparse]") {
  const index_t B = 2, L = 150, Hq = 4, Hkv = 2, D = 32;
  const problem pr({B, L, L, Hq, Hkv, D, D}, 41);
  for (index_t heads : {index_t(1), Hq}) {
    // Layout built for a longer sequence than decoded (decode needs at least the blocks in use).
    const block_layout l = random_layout(heads, blocks(200, 16), blocks(200, 16), 16, 0.3, unsigned(heads));
    block_layout exact(heads, blocks(L, 16), blocks(L, 16), 16);
    for (index_t h = 0; h < heads; ++h)
      for (index_t i = 0; i < exact.q_blocks(); ++i)
        for (index_t j = 0; j < exact.k_blocks(); ++j) exact.set(h, i, j, l.visible(h, i, j));
    tokmix::attention_params p;
    p.causal = true;
    result full(pr);
    tokmix::block_sparse_attention(pr.qv(), pr.kv(), pr.vv(), full.ov(pr), full.lv(pr), exact, p);
    tokmix::kv_cache<float> cache(B, Hkv, D, L);
    for (index_t t = 0; t < L;) {
      const index_t n = t < 10 ? 1 : std::min<index_t>(3, L - t);  // single steps, then 3 at a time
      std::vector<float> kn(static_cast<std::size_t>(B * n * Hkv * D)), vn(kn.size()), qn(static_cast<std::size_t>(B * n * Hq * D));
      for (index_t b = 0; b < B; ++b)
        for (index_t i = 0; i < n; ++i) {
          for (index_t h = 0; h < Hkv; ++h)
            for (index_t e = 0; e < D; ++e) {
              kn[((b * n + i) * Hkv + h) * D + e] = float(pr.ka(b, t + i, h, e));
              vn[((b * n + i) * Hkv + h) * D + e] = float(pr.va(b, t + i, h, e));
            }
          for (index_t h = 0; h < Hq; ++h)
            for (index_t e = 0; e < D; ++e) qn[((b * n + i) * Hq + h) * D + e] = float(pr.qa(b, t + i, h, e));
        }
      cache.append(tensor_view<const float, 4>(kn.data(), {B, n, Hkv, D}), tensor_view<const float, 4>(vn.data(), {B, n, Hkv, D}));
      std::vector<float> on(static_cast<std::size_t>(B * n * Hq * D)), ln(static_cast<std::size_t>(B * Hq * n));
      tokmix::block_sparse_decode(tensor_view<const float, 4>(qn.data(), {B, n, Hq, D}), cache,
                                  tensor_view<float, 4>(on.data(), {B, n, Hq, D}),
                                  tensor_view<float, 3>(ln.data(), {B, Hq, n}), l, p);
      for (index_t b = 0; b < B; ++b)
        for (index_t i = 0; i < n; ++i)
          for (index_t h = 0; h < Hq; ++h) {
            const float lf = full.lse[static_cast<std::size_t>((b * Hq + h) * L + t + i)];
            const float ld = ln[static_cast<std::size_t>((b * Hq + h) * n + i)];
            if (std::isinf(lf)) CHECK(ld == lf);
            else CHECK(std::abs(ld - lf) <= 1e-5f);
            for (index_t e = 0; e < D; ++e)
              REQUIRE(std::abs(on[((b * n + i) * Hq + h) * D + e] - full.o[((b * L + t + i) * Hq + h) * D + e]) <= 2e-5f);
          }
      t += n;
    }
  }
}

TEST_CASE("block_sparse: bad layouts and inputs throw and write nothing", "[sparse][block_sparse]") {
  const shape s{1, 100, 100, 4, 2, 16, 16};
  const problem pr(s, 3);
  auto expect_throw = [&](const block_layout& l, const tokmix::attention_params& p, const char* what) {
    result r(pr);
    CHECK_THROWS_WITH(tokmix::block_sparse_attention(pr.qv(), pr.kv(), pr.vv(), r.ov(pr), r.lv(pr), l, p),
                      Catch::Contains(what));
    CHECK(r.untouched());
  };
  expect_throw(block_layout(1, 3, 4, 32), {}, "query blocks");   // 100 / 32 -> 4 blocks
  expect_throw(block_layout(1, 4, 5, 32), {}, "key blocks");
  expect_throw(block_layout(2, 4, 4, 32), {}, "heads");          // neither 1 nor 4
  expect_throw(block_layout(), {}, "layout");
  tokmix::attention_params bad;
  bad.window_left = -3;
  expect_throw(block_layout(1, 4, 4, 32), bad, "window_left");
  // Decode: layout too short for the cache, ring caches.
  tokmix::kv_cache<float> cache(1, 2, 16, 100);
  std::vector<float> kn(static_cast<std::size_t>(100 * 2 * 16), 0.5f);
  cache.append(tensor_view<const float, 4>(kn.data(), {1, 100, 2, 16}), tensor_view<const float, 4>(kn.data(), {1, 100, 2, 16}));
  std::vector<float> q(4 * 16, 0.1f), o(4 * 16, 7.f);
  CHECK_THROWS_WITH(tokmix::block_sparse_decode(tensor_view<const float, 4>(q.data(), {1, 1, 4, 16}), cache,
                                                tensor_view<float, 4>(o.data(), {1, 1, 4, 16}), block_layout(1, 3, 4, 32)),
                    Catch::Contains("at least 4 query blocks"));
  auto ring = tokmix::kv_cache<float>::ring(1, 2, 16, 64);
  CHECK_THROWS_WITH(tokmix::block_sparse_decode(tensor_view<const float, 4>(q.data(), {1, 1, 4, 16}), ring,
                                                tensor_view<float, 4>(o.data(), {1, 1, 4, 16}), block_layout(1, 4, 4, 32)),
                    Catch::Contains("linear kv_cache"));
  for (float x : o) CHECK(x == 7.f);
}
