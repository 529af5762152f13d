// attention_decode against the float64 reference (tests/attention/reference.hpp)
// on the same sequence: every cache dtype, GQA ratio, 1 and 3 new queries,
// masks, ring caches, split-KV merges, threads, step-by-step decode = full
// causal attention, allocation-free steady state, and errors that write nothing.
//
// Tolerances. fp32 caches: atol 2e-5 + rtol 1e-4 (fp32 accumulation over up to
// 1000 keys, outputs of size ~0.1-1). 16-bit caches are first compared with
// the reference on the *rounded* K/V (same tolerance: the kernel computes in
// fp32), then with the reference on the original fp32 K/V, where the storage
// rounding itself shows: fp16 within 2e-3 abs, bf16 within 1.5e-2 abs
// (inputs uniform in [-1, 1]; fp16 has 11 significant bits, bf16 8).

#include "tokmix/attention/decode.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "attention/reference.hpp"
#include "tokmix/attention/flash_attention.hpp"
#include "tokmix/attention/rope.hpp"
#include "support/compare.hpp"

namespace {

using tokmix::index_t;
using V4 = tokmix::tensor_view<const float, 4>;

// A whole sequence: q [B, L, Hq, D], k [B, L, Hkv, D], v [B, L, Hkv, Dv].
struct sequence {
  index_t B, L, Hq, Hkv, D, Dv;
  std::vector<float> q, k, v;
  sequence(index_t b, index_t l, index_t hq, index_t hkv, index_t d, index_t dv, unsigned seed, float qscale = 1.f)
      : B(b), L(l), Hq(hq), Hkv(hkv), D(d), Dv(dv) {
    q = tokmix_test::random_floats(static_cast<std::size_t>(B * L * Hq * D), seed, -qscale, qscale);
    k = tokmix_test::random_floats(static_cast<std::size_t>(B * L * Hkv * D), seed + 1);
    v = tokmix_test::random_floats(static_cast<std::size_t>(B * L * Hkv * Dv), seed + 2);
  }
  // Tokens [t0, t0 + n) as strided views (no copy).
  V4 qs(index_t t0, index_t n) const { return V4(q.data() + t0 * Hq * D, {B, n, Hq, D}, {L * Hq * D, Hq * D, D, 1}); }
  V4 ks(index_t t0, index_t n) const { return V4(k.data() + t0 * Hkv * D, {B, n, Hkv, D}, {L * Hkv * D, Hkv * D, D, 1}); }
  V4 vs(index_t t0, index_t n) const {
    return V4(v.data() + t0 * Hkv * Dv, {B, n, Hkv, Dv}, {L * Hkv * Dv, Hkv * Dv, Dv, 1});
  }
  // K and V rounded to the storage type T, as the cache will hold them.
  template <class T>
  void round_kv() {
    for (auto& x : k) x = float(T(x));
    for (auto& x : v) x = float(T(x));
  }
};

tokmix::attention_params causal_params(tokmix::attention_params p) {
  if (p.causal_block == 0) p.causal = true;
  return p;
}

// The new queries are the last n tokens; with n > T (rows that see nothing) the first n.
index_t q_start(index_t T_len, index_t n) { return std::max<index_t>(0, T_len - n); }

struct decode_result {
  std::vector<float> o, lse;
};

// Appends tokens [0, T) to a fresh cache (in two chunks) and decodes the last n.
template <class T>
decode_result run_decode(const sequence& s, index_t T_len, index_t n, const tokmix::attention_params& p,
                         index_t capacity = -1) {
  tokmix::kv_cache_options opt;
  opt.batch = s.B;
  opt.kv_heads = s.Hkv;
  opt.head_dim = s.D;
  opt.v_head_dim = s.Dv;
  opt.capacity = capacity < 0 ? T_len + 3 : capacity;
  tokmix::kv_cache<T> cache(opt);
  const index_t first = T_len / 2;
  cache.append(s.ks(0, first), s.vs(0, first));
  cache.append(s.ks(first, T_len - first), s.vs(first, T_len - first));
  decode_result r;
  r.o.assign(static_cast<std::size_t>(s.B * n * s.Hq * s.Dv), std::numeric_limits<float>::quiet_NaN());
  r.lse.assign(static_cast<std::size_t>(s.B * s.Hq * n), std::numeric_limits<float>::quiet_NaN());
  tokmix::attention_decode(s.qs(q_start(T_len, n), n), cache, tokmix::tensor_view<float, 4>(r.o.data(), {s.B, n, s.Hq, s.Dv}),
                           tokmix::tensor_view<float, 3>(r.lse.data(), {s.B, s.Hq, n}), p);
  return r;
}

tokmix_test::attention_reference_output run_reference(const sequence& s, index_t T_len, index_t n,
                                                      const tokmix::attention_params& p) {
  return tokmix_test::attention_reference<float, float, float>(s.qs(q_start(T_len, n), n), s.ks(0, T_len), s.vs(0, T_len),
                                                               causal_params(p));
}

void require_matches(const decode_result& got, const tokmix_test::attention_reference_output& ref, double atol,
                     double rtol) {
  TOKMIX_REQUIRE_CLOSE(got.o.data(), ref.o.data(), got.o.size(), atol, rtol);
  TOKMIX_REQUIRE_CLOSE(got.lse.data(), ref.lse.data(), got.lse.size(), atol, rtol);
}

}  // namespace

TEMPLATE_TEST_CASE("attention_decode: matches the reference across shapes", "[attention][decode]", float, Eigen::half,
                   Eigen::bfloat16) {
  const index_t n = GENERATE(1, 3);
  const index_t T_len = GENERATE(1, 7, 64, 65, 1000);
  const index_t group = GENERATE(1, 4, 8);
  // Head dims sampled per case rather than crossed with everything else.
  const index_t dims[3] = {64, 128, 80};
  const index_t D = dims[(T_len + group + n) % 3];
  const index_t Hkv = 2, Hq = Hkv * group;
  INFO("n=" << n << " T=" << T_len << " group=" << group << " D=" << D << " type=" << tokmix::storage_type_name<TestType>());
  sequence s(2, std::max(T_len, n), Hq, Hkv, D, D, static_cast<unsigned>(T_len * 31 + group * 7 + n));
  const sequence orig = s;
  s.round_kv<TestType>();
  tokmix::attention_params p;
  const auto got = run_decode<TestType>(s, T_len, n, p);
  require_matches(got, run_reference(s, T_len, n, p), 2e-5, 1e-4);
  if (!std::is_same<TestType, float>::value) {
    const double tol = std::is_same<TestType, Eigen::half>::value ? 2e-3 : 1.5e-2;
    const auto ref32 = run_reference(orig, T_len, n, p);
    TOKMIX_REQUIRE_CLOSE(got.o.data(), ref32.o.data(), got.o.size(), tol, 0.0);
  }
  // n > T: the first rows see no key at all: zeros and lse = -inf, never NaN.
  if (n > T_len) {
    for (index_t h = 0; h < Hq; ++h) REQUIRE(got.lse[static_cast<std::size_t>(h * n)] == -std::numeric_limits<float>::infinity());
  }
}

TEST_CASE("attention_decode: mask options", "[attention][decode]") {
  const index_t n = GENERATE(1, 3);
  const index_t T_len = 70, Hkv = 2, Hq = 8, D = 32;
  sequence s(2, T_len, Hq, Hkv, D, 24, 11u + unsigned(n));  // Dv != D
  std::vector<float> slopes = {0.5f, 0.25f, 0.125f, 0.0625f, 0.03f, 0.02f, 0.01f, 0.005f};
  auto bias = tokmix_test::random_floats(static_cast<std::size_t>(Hq * n * T_len), 5, -2.f, 2.f);
  std::unique_ptr<bool[]> mask(new bool[static_cast<std::size_t>(2 * n * T_len)]);
  for (index_t i = 0; i < 2 * n * T_len; ++i) mask[i] = (i * 7919) % 5 != 0;
  // Batch 1, row 0: nothing visible.
  for (index_t j = 0; j < T_len; ++j) mask[static_cast<std::size_t>(n * T_len + j)] = false;

  struct option {
    const char* name;
    tokmix::attention_params p;
  };
  std::vector<option> opts;
  tokmix::attention_params p;
  p.window_left = 9;
  opts.push_back({"window", p});
  p.n_sink = 4;
  opts.push_back({"window+sinks", p});
  p.n_sink = 20;  // sinks overlapping the window span for nothing; still exact
  p.window_left = 55;
  opts.push_back({"window+wide sinks", p});
  p = {};
  p.softcap = 2.f;
  p.scale = 3.f;
  opts.push_back({"softcap", p});
  p = {};
  p.alibi_slopes = tokmix::tensor_view<const float, 1>(slopes.data(), {Hq});
  opts.push_back({"alibi", p});
  p = {};
  p.bias = tokmix::tensor_view<const float, 4>(bias.data(), {1, Hq, n, T_len});
  opts.push_back({"bias", p});
  p = {};
  p.mask = tokmix::tensor_view<const bool, 4>(mask.get(), {2, 1, n, T_len});
  opts.push_back({"mask", p});
  p = {};
  p.causal_block = 4;  // block of new tokens sees its whole block
  opts.push_back({"block-causal", p});
  p.causal = true;
  opts.push_back({"block-causal+causal", p});
  p = {};
  p.window_left = 3;
  p.n_sink = 2;
  p.softcap = 1.5f;
  p.alibi_slopes = tokmix::tensor_view<const float, 1>(slopes.data(), {Hq});
  p.mask = tokmix::tensor_view<const bool, 4>(mask.get(), {2, 1, n, T_len});
  opts.push_back({"all together", p});
  for (const auto& o : opts) {
    INFO(o.name << " n=" << n);
    require_matches(run_decode<float>(s, T_len, n, o.p), run_reference(s, T_len, n, o.p), 2e-5, 1e-4);
  }
  // The fully masked row: zeros, -inf.
  tokmix::attention_params pm;
  pm.mask = tokmix::tensor_view<const bool, 4>(mask.get(), {2, 1, n, T_len});
  const auto r = run_decode<float>(s, T_len, n, pm);
  for (index_t h = 0; h < Hq; ++h) {
    REQUIRE(r.lse[static_cast<std::size_t>((1 * Hq + h) * n)] == -std::numeric_limits<float>::infinity());
    for (index_t e = 0; e < 24; ++e) REQUIRE(r.o[static_cast<std::size_t>(((1 * n + 0) * Hq + h) * 24 + e)] == 0.f);
  }
}

TEST_CASE("attention_decode: 16-bit q and o, Eigen tensors", "[attention][decode]") {
  const index_t T_len = 33, n = 2, Hq = 4, Hkv = 2, D = 32;
  sequence s(1, T_len, Hq, Hkv, D, D, 21u);
  for (auto& x : s.q) x = float(Eigen::bfloat16(x));
  tokmix::kv_cache<float> cache(1, Hkv, D, T_len);
  cache.append(s.ks(0, T_len), s.vs(0, T_len));
  Eigen::Tensor<Eigen::bfloat16, 4, Eigen::RowMajor> q(1, n, Hq, D);
  for (index_t i = 0; i < n; ++i)
    for (index_t h = 0; h < Hq; ++h)
      for (index_t d = 0; d < D; ++d) q(0, i, h, d) = Eigen::bfloat16(s.qs(T_len - n, n)(0, i, h, d));
  Eigen::Tensor<Eigen::half, 4, Eigen::RowMajor> o(1, n, Hq, D);
  Eigen::Tensor<float, 3, Eigen::RowMajor> lse(1, Hq, n);
  tokmix::attention_decode(q, cache, o, lse);
  const auto ref = run_reference(s, T_len, n, {});
  std::vector<float> got(o.size());
  for (index_t i = 0; i < o.size(); ++i) got[static_cast<std::size_t>(i)] = float(o.data()[i]);
  // One fp16 rounding of outputs below 1 in magnitude.
  TOKMIX_REQUIRE_CLOSE(got.data(), ref.o.data(), got.size(), 5e-4, 1e-3);
  TOKMIX_REQUIRE_CLOSE(lse.data(), ref.lse.data(), ref.lse.size(), 2e-5, 1e-4);
}

TEST_CASE("attention_decode: huge logits stay finite", "[attention][decode]") {
  // q scaled so scores reach ~1e4.
  sequence s(1, 50, 4, 1, 64, 64, 77u, 1.f);
  for (auto& x : s.q) x *= 2000.f;
  tokmix::attention_params p;
  const auto got = run_decode<float>(s, 50, 2, p);
  for (float x : got.o) REQUIRE(std::isfinite(x));
  const auto ref = run_reference(s, 50, 2, p);
  TOKMIX_REQUIRE_CLOSE(got.o.data(), ref.o.data(), got.o.size(), 1e-4, 1e-3);
  TOKMIX_REQUIRE_CLOSE(got.lse.data(), ref.lse.data(), got.lse.size(), 0.0, 1e-5);
}

TEST_CASE("attention_decode: step by step equals full causal attention (with RoPE)", "[attention][decode]") {
  const index_t L = 41, Hq = 8, Hkv = 2, D = 48;
  const bool with_rope = GENERATE(false, true);
  sequence s(2, L, Hq, Hkv, D, D, 123u);
  if (with_rope) {  // the full sequence rotated at offset 0 is what prefill would attend
    tokmix::rope_apply(tokmix::tensor_view<float, 4>(s.q.data(), {2, L, Hq, D}), 0);
    tokmix::rope_apply(tokmix::tensor_view<float, 4>(s.k.data(), {2, L, Hkv, D}), 0);
  }
  const sequence raw(2, L, Hq, Hkv, D, D, 123u);
  tokmix::kv_cache<float> cache(2, Hkv, D, L);
  std::vector<float> o(static_cast<std::size_t>(2 * L * Hq * D));
  const tokmix::tensor_view<float, 4> ov(o.data(), {2, L, Hq, D});
  std::vector<float> qt(static_cast<std::size_t>(2 * Hq * D)), kt(static_cast<std::size_t>(2 * Hkv * D));
  index_t t = 0;
  while (t < L) {
    const index_t n = (t % 3 == 2 && t + 2 <= L) ? 2 : 1;  // mostly single tokens, some pairs
    // The decode loop a model runs: rotate the new q/k at offset cache.length(), append, attend.
    std::vector<float> qn(static_cast<std::size_t>(2 * n * Hq * D)), kn(static_cast<std::size_t>(2 * n * Hkv * D));
    const sequence& src = with_rope ? raw : s;
    for (index_t b = 0; b < 2; ++b)
      for (index_t i = 0; i < n; ++i) {
        std::memcpy(&qn[static_cast<std::size_t>((b * n + i) * Hq * D)], src.qs(t + i, 1).ptr(b, 0, 0), sizeof(float) * Hq * D);
        std::memcpy(&kn[static_cast<std::size_t>((b * n + i) * Hkv * D)], src.ks(t + i, 1).ptr(b, 0, 0), sizeof(float) * Hkv * D);
      }
    if (with_rope) {
      tokmix::rope_apply(tokmix::tensor_view<float, 4>(qn.data(), {2, n, Hq, D}), cache.length());
      tokmix::rope_apply(tokmix::tensor_view<float, 4>(kn.data(), {2, n, Hkv, D}), cache.length());
    }
    cache.append(V4(kn.data(), {2, n, Hkv, D}), s.vs(t, n));
    tokmix::attention_decode(V4(qn.data(), {2, n, Hq, D}), cache,
                             tokmix::tensor_view<float, 4>(ov.ptr(0, t, 0), {2, n, Hq, D}, ov.strides()));
    t += n;
  }
  tokmix::attention_params p;
  p.causal = true;
  const auto ref = tokmix_test::attention_reference<float, float, float>(s.qs(0, L), s.ks(0, L), s.vs(0, L), p);
  TOKMIX_REQUIRE_CLOSE(o.data(), ref.o.data(), o.size(), 2e-5, 1e-4);
  // And the prefill kernel on the same sequence.
  std::vector<float> o_prefill(o.size());
  tokmix::flash_attention(s.qs(0, L), s.ks(0, L), s.vs(0, L), tokmix::tensor_view<float, 4>(o_prefill.data(), {2, L, Hq, D}), p);
  TOKMIX_REQUIRE_CLOSE(o.data(), o_prefill.data(), o.size(), 2e-5, 1e-4);
}

TEST_CASE("attention_decode: ring cache with window and sinks equals full attention", "[attention][decode]") {
  const index_t L = 60, Hq = 4, Hkv = 2, D = 16;
  const index_t n_sink = GENERATE(0, 3);
  const index_t w = 10, n_max = 2;
  auto ring = tokmix::kv_cache<Eigen::half>::ring(1, Hkv, D, n_sink + w + n_max, n_sink);
  sequence s(1, L, Hq, Hkv, D, D, 9u);
  s.round_kv<Eigen::half>();
  tokmix::attention_params p;
  p.window_left = w;
  p.n_sink = n_sink;
  index_t t = 0;
  while (t < L) {
    const index_t n = (t / 7) % 2 == 0 ? 1 : std::min<index_t>(n_max, L - t);
    ring.append(s.ks(t, n), s.vs(t, n));
    t += n;
    std::vector<float> o(static_cast<std::size_t>(n * Hq * D)), lse(static_cast<std::size_t>(Hq * n));
    tokmix::attention_decode(s.qs(t - n, n), ring, tokmix::tensor_view<float, 4>(o.data(), {1, n, Hq, D}),
                             tokmix::tensor_view<float, 3>(lse.data(), {1, Hq, n}), p);
    const auto ref = run_reference(s, t, n, p);
    INFO("t=" << t << " n=" << n);
    TOKMIX_REQUIRE_CLOSE(o.data(), ref.o.data(), o.size(), 2e-5, 1e-4);
    TOKMIX_REQUIRE_CLOSE(lse.data(), ref.lse.data(), lse.size(), 2e-5, 1e-4);
  }
  // A window wider than the ring would need evicted keys: a clear error, o untouched.
  std::vector<float> o(static_cast<std::size_t>(Hq * D), 7.f);
  p.window_left = w + n_max + 1;
  REQUIRE_THROWS_AS(tokmix::attention_decode(s.qs(L - 1, 1), ring, tokmix::tensor_view<float, 4>(o.data(), {1, 1, Hq, D}), p),
                    tokmix::argument_error);
  p.window_left = -1;
  REQUIRE_THROWS_AS(tokmix::attention_decode(s.qs(L - 1, 1), ring, tokmix::tensor_view<float, 4>(o.data(), {1, 1, Hq, D}), p),
                    tokmix::argument_error);
  for (float x : o) REQUIRE(x == 7.f);
}

TEST_CASE("attention_decode: split-KV merge and threads", "[attention][decode]") {
  const index_t T_len = 1500, n = 2, D = 64;
  SECTION("forced splits equal the reference; threads(2) == serial bit for bit") {
    sequence s(1, T_len, 4, 1, D, D, 5u);
    tokmix::kv_cache<Eigen::bfloat16> cache(1, 1, D, T_len);
    s.round_kv<Eigen::bfloat16>();
    cache.append(s.ks(0, T_len), s.vs(0, T_len));
    tokmix::attention_params p;
    p.window_left = 900;
    p.n_sink = 5;
    const auto ref = run_reference(s, T_len, n, p);
    for (index_t splits : {1, 2, 3, 7}) {
      std::vector<float> o1(static_cast<std::size_t>(n * 4 * D)), o2 = o1, l1(static_cast<std::size_t>(4 * n)), l2 = l1;
      const tokmix::tensor_view<float, 3> lv1(l1.data(), {1, 4, n}), lv2(l2.data(), {1, 4, n});
      p.policy = tokmix::exec_policy::serial();
      tokmix::detail::attention_decode_run<float, Eigen::bfloat16, float>(
          s.qs(T_len - n, n), cache, tokmix::tensor_view<float, 4>(o1.data(), {1, n, 4, D}), &lv1, p, splits);
      p.policy = tokmix::exec_policy::threads(2);
      tokmix::detail::attention_decode_run<float, Eigen::bfloat16, float>(
          s.qs(T_len - n, n), cache, tokmix::tensor_view<float, 4>(o2.data(), {1, n, 4, D}), &lv2, p, splits);
      INFO("splits " << splits);
      REQUIRE(std::memcmp(o1.data(), o2.data(), o1.size() * sizeof(float)) == 0);
      REQUIRE(std::memcmp(l1.data(), l2.data(), l1.size() * sizeof(float)) == 0);
      TOKMIX_REQUIRE_CLOSE(o1.data(), ref.o.data(), o1.size(), 2e-5, 1e-4);
      TOKMIX_REQUIRE_CLOSE(l1.data(), ref.lse.data(), l1.size(), 2e-5, 1e-4);
    }
    // The public entry point splits this MQA case on 2 workers and stays exact.
    REQUIRE(tokmix::attention_decode_splits(tokmix::exec_policy::threads(2), 1, 1, 1500) == 2);
    REQUIRE(tokmix::attention_decode_splits(tokmix::exec_policy::serial(), 1, 1, 1500) == 1);
    std::vector<float> o(static_cast<std::size_t>(n * 4 * D));
    p.policy = tokmix::exec_policy::threads(2);
    tokmix::attention_decode(s.qs(q_start(T_len, n), n), cache, tokmix::tensor_view<float, 4>(o.data(), {1, n, 4, D}), p);
    TOKMIX_REQUIRE_CLOSE(o.data(), ref.o.data(), o.size(), 2e-5, 1e-4);
  }
  SECTION("batch x kv_heads >= 2 x workers: one split, threads(2) == serial") {
    sequence s(2, 300, 16, 4, D, D, 6u);
    REQUIRE(tokmix::attention_decode_splits(tokmix::exec_policy::threads(2), 2, 4, 300) == 1);
    tokmix::attention_params p;
    const auto a = run_decode<float>(s, 300, 1, p);
    p.policy = tokmix::exec_policy::threads(2);
    const auto b = run_decode<float>(s, 300, 1, p);
    REQUIRE(std::memcmp(a.o.data(), b.o.data(), a.o.size() * sizeof(float)) == 0);
    REQUIRE(std::memcmp(a.lse.data(), b.lse.data(), a.lse.size() * sizeof(float)) == 0);
  }
}

TEST_CASE("attention_decode: steady state allocates no scratch", "[attention][decode]") {
  const index_t T_len = 200, Hq = 8, Hkv = 2, D = 64;
  sequence s(1, T_len, Hq, Hkv, D, D, 3u);
  tokmix::kv_cache<Eigen::half> cache(1, Hkv, D, T_len);
  cache.append(s.ks(0, T_len - 5), s.vs(0, T_len - 5));
  std::vector<float> o(static_cast<std::size_t>(Hq * D)), lse(static_cast<std::size_t>(Hq));
  tokmix::attention_params p;
  p.window_left = 100;
  auto step = [&](index_t t) {
    cache.append(s.ks(t, 1), s.vs(t, 1));
    tokmix::attention_decode(s.qs(t, 1), cache, tokmix::tensor_view<float, 4>(o.data(), {1, 1, Hq, D}),
                             tokmix::tensor_view<float, 3>(lse.data(), {1, Hq, 1}), p);
  };
  step(T_len - 5);
  const std::size_t growths = tokmix::scratch_arena::local().growth_count();
  for (index_t t = T_len - 4; t < T_len; ++t) step(t);
  REQUIRE(tokmix::scratch_arena::local().growth_count() == growths);
  REQUIRE(tokmix::scratch_arena::local().in_use() == 0);
}

TEST_CASE("attention_decode: bad arguments throw and write nothing", "[attention][decode]") {
  const index_t D = 16;
  sequence s(1, 10, 4, 2, D, D, 1u);
  tokmix::kv_cache<float> cache(1, 2, D, 10);
  cache.append(s.ks(0, 10), s.vs(0, 10));
  std::vector<float> o(static_cast<std::size_t>(4 * D), 7.f), lse(4, 7.f);
  const tokmix::tensor_view<float, 4> ov(o.data(), {1, 1, 4, D});
  const tokmix::tensor_view<float, 3> lv(lse.data(), {1, 4, 1});
  tokmix::attention_params p;
  auto expect_throw = [&](auto&& call, const char* argument) {
    try {
      call();
      FAIL("no exception for " << argument);
    } catch (const tokmix::argument_error& e) {
      INFO(e.what());
      REQUIRE(e.argument() == argument);
    }
    for (float x : o) REQUIRE(x == 7.f);
    for (float x : lse) REQUIRE(x == 7.f);
  };
  // Cache overflow on append.
  expect_throw([&] { cache.append(s.ks(9, 1), s.vs(9, 1)); }, "k_new");
  // Head dim, batch, heads that don't divide.
  std::vector<float> qbig(static_cast<std::size_t>(2 * 3 * 2 * D), 0.f);
  expect_throw([&] { tokmix::attention_decode(V4(qbig.data(), {1, 1, 4, D + 1}), cache, ov, lv, p); }, "q_new");
  expect_throw([&] { tokmix::attention_decode(V4(qbig.data(), {2, 1, 4, D}), cache, ov, lv, p); }, "q_new");
  expect_throw([&] { tokmix::attention_decode(V4(qbig.data(), {1, 1, 3, D}), cache, tokmix::tensor_view<float, 4>(o.data(), {1, 1, 3, D}), p); },
               "q_new");
  // Output shapes.
  expect_throw([&] { tokmix::attention_decode(s.qs(9, 1), cache, tokmix::tensor_view<float, 4>(o.data(), {1, 1, 4, D - 1}), p); }, "o");
  expect_throw([&] { tokmix::attention_decode(s.qs(9, 1), cache, ov, tokmix::tensor_view<float, 3>(lse.data(), {1, 1, 4}), p); }, "lse");
  // Options.
  p.window_left = -2;
  expect_throw([&] { tokmix::attention_decode(s.qs(9, 1), cache, ov, lv, p); }, "params.window_left");
  p = {};
  p.alignment = tokmix::causal_alignment::top_left;
  expect_throw([&] { tokmix::attention_decode(s.qs(9, 1), cache, ov, lv, p); }, "params.alignment");
  p = {};
  std::vector<std::int32_t> seg(10, 0);
  p.q_segment_ids = tokmix::tensor_view<const std::int32_t, 2>(seg.data(), {1, 1});
  p.k_segment_ids = tokmix::tensor_view<const std::int32_t, 2>(seg.data(), {1, 10});
  expect_throw([&] { tokmix::attention_decode(s.qs(9, 1), cache, ov, lv, p); }, "params.q_segment_ids");
  p = {};
  std::vector<float> bias(4 * 9, 0.f);
  p.bias = tokmix::tensor_view<const float, 4>(bias.data(), {1, 4, 1, 9});  // cache holds 10 keys
  expect_throw([&] { tokmix::attention_decode(s.qs(9, 1), cache, ov, lv, p); }, "params.bias");
}
