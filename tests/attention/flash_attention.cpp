// flash_attention against the float64 reference: sizes around the tile edges,
// head dims, GQA, Lq != Lk, every option alone and in random combinations,
// strided and 16-bit inputs, lse, masked rows, huge logits, thread
// determinism, and rejection of every bad input without touching outputs.

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include <catch2/catch.hpp>

#include "attention/reference.hpp"
#include "support/compare.hpp"
#include "tokmix/attention/flash_attention.hpp"

namespace {

using tokmix::index_t;
using tokmix::tensor_view;
const double ninf = -std::numeric_limits<double>::infinity();

struct shape {
  index_t B, Lq, Lk, Hq, Hkv, D, Dv;
};

// Inputs in NaN-padded buffers (over-reads poison the result), either in the
// canonical [B, L, H, D] layout or PyTorch's [B, H, L, D] seen through strides.
template <class TQ = float, class TK = float, class TV = float>
struct attention_case {
  shape s;
  bool bhld;
  tokmix_test::nan_padded<TQ> q;
  tokmix_test::nan_padded<TK> k;
  tokmix_test::nan_padded<TV> v;

  attention_case(shape s_, unsigned seed, bool bhld_ = false, float amplitude = 1.f)
      : s(s_),
        bhld(bhld_),
        q(s.B * s.Lq * s.Hq * s.D),
        k(s.B * s.Lk * s.Hkv * s.D),
        v(s.B * s.Lk * s.Hkv * s.Dv) {
    fill(q.data(), s.B * s.Lq * s.Hq * s.D, seed, amplitude);
    fill(k.data(), s.B * s.Lk * s.Hkv * s.D, seed + 1, 1.f);
    fill(v.data(), s.B * s.Lk * s.Hkv * s.Dv, seed + 2, 1.f);
  }
  template <class T>
  static void fill(T* p, index_t n, unsigned seed, float amplitude) {
    const auto r = tokmix_test::random_floats(static_cast<std::size_t>(n), seed, -amplitude, amplitude);
    for (index_t i = 0; i < n; ++i) p[i] = T(r[i]);
  }
  template <class T>
  tensor_view<const T, 4> view(const T* p, index_t L, index_t H, index_t D) const {
    if (bhld) return tokmix::view_from_bhld(p, s.B, H, L, D);
    return tensor_view<const T, 4>(p, {s.B, L, H, D});
  }
  tensor_view<const TQ, 4> qv() const { return view(q.data(), s.Lq, s.Hq, s.D); }
  tensor_view<const TK, 4> kv() const { return view(k.data(), s.Lk, s.Hkv, s.D); }
  tensor_view<const TV, 4> vv() const { return view(v.data(), s.Lk, s.Hkv, s.Dv); }
};

struct result {
  std::vector<float> o, lse;
};

template <class C>
result run(const C& c, const tokmix::attention_params& p) {
  const shape& s = c.s;
  result r;
  r.o.assign(static_cast<std::size_t>(s.B * s.Lq * s.Hq * s.Dv), 1e30f);
  r.lse.assign(static_cast<std::size_t>(s.B * s.Hq * s.Lq), 1e30f);
  tensor_view<float, 4> ov(r.o.data(), {s.B, s.Lq, s.Hq, s.Dv});
  tensor_view<float, 3> lv(r.lse.data(), {s.B, s.Hq, s.Lq});
  tokmix::flash_attention(c.qv(), c.kv(), c.vv(), ov, lv, p);
  return r;
}

template <class C>
void check_against_reference(const C& c, const tokmix::attention_params& p, double atol = 2e-5, double rtol = 1e-4) {
  const result got = run(c, p);
  const auto ref = tokmix_test::attention_reference(c.qv(), c.kv(), c.vv(), p);
  TOKMIX_REQUIRE_CLOSE(got.o.data(), ref.o.data(), got.o.size(), atol, rtol);
  TOKMIX_REQUIRE_CLOSE(got.lse.data(), ref.lse.data(), got.lse.size(), atol, rtol);
}

std::string describe(const shape& s) {
  return "B" + std::to_string(s.B) + " Lq" + std::to_string(s.Lq) + " Lk" + std::to_string(s.Lk) + " Hq" +
         std::to_string(s.Hq) + " Hkv" + std::to_string(s.Hkv) + " D" + std::to_string(s.D) + " Dv" +
         std::to_string(s.Dv);
}

}  // namespace

TEST_CASE("flash_attention: sizes around tile edges, head dims, GQA, both causal alignments",
          "[attention][flash]") {
  const index_t lens[] = {1, 7, 63, 64, 65, 257};
  const index_t dims[] = {32, 64, 80, 96, 128, 256};
  const index_t ratios[] = {1, 4, 8};
  std::mt19937 gen(3);
  for (int trial = 0; trial < 36; ++trial) {
    shape s;
    s.B = 1 + trial % 2;
    s.Lq = lens[trial % 6];
    s.Lk = trial < 12 ? s.Lq : lens[gen() % 6];
    s.Hkv = 1 + trial % 2;
    s.Hq = s.Hkv * ratios[(trial / 2) % 3];
    s.D = dims[(trial / 3) % 6];
    s.Dv = trial % 5 == 0 ? dims[gen() % 4] : s.D;
    if (s.D == 256 || s.Lq * s.Lk > 10000) s.Hq = s.Hkv;  // keep the reference fast
    const attention_case<> c(s, 100 + trial);
    for (int mode = 0; mode < 3; ++mode) {
      tokmix::attention_params p;
      p.causal = mode > 0;
      p.alignment = mode == 2 ? tokmix::causal_alignment::top_left : tokmix::causal_alignment::bottom_right;
      INFO(describe(s) << " mode " << mode);
      check_against_reference(c, p);
    }
  }
}

TEST_CASE("flash_attention: each option alone", "[attention][flash]") {
  const shape s{2, 70, 90, 4, 2, 40, 24};
  const attention_case<> c(s, 7);
  std::vector<float> slopes{0.5f, 0.25f, 0.125f, 0.0625f};
  std::vector<std::int32_t> qseg(s.B * s.Lq), kseg(s.B * s.Lk);
  for (index_t b = 0; b < s.B; ++b) {
    for (index_t i = 0; i < s.Lq; ++i) qseg[b * s.Lq + i] = static_cast<std::int32_t>((i + b * 5) / 23);
    for (index_t j = 0; j < s.Lk; ++j) kseg[b * s.Lk + j] = static_cast<std::int32_t>((j + b * 3) / 29);
  }
  const auto bias_data = tokmix_test::random_floats(static_cast<std::size_t>(s.B * s.Hq * s.Lq * s.Lk), 9, -2.f, 2.f);
  std::vector<char> mask_data(static_cast<std::size_t>(s.B * s.Hq * s.Lq * s.Lk));
  std::mt19937 gen(5);
  for (auto& x : mask_data) x = (gen() % 4) != 0;
  const bool* mask_ptr = reinterpret_cast<const bool*>(mask_data.data());

  for (int opt = 0; opt < 19; ++opt) {
    tokmix::attention_params p;
    switch (opt) {
      case 0: p.scale = 0.37f; break;
      case 1: p.window_left = 10; break;
      case 2: p.window_right = 5; break;
      case 3: p.window_left = 17; p.window_right = 0; p.causal = true; break;
      case 4: p.window_left = 3; p.window_right = 3; p.n_sink = 4; break;
      case 5: p.causal = true; p.window_left = 8; p.n_sink = 2; break;
      case 6: p.causal_block = 16; break;
      case 7: p.causal_block = 7; p.alignment = tokmix::causal_alignment::top_left; break;
      case 8: p.softcap = 2.f; p.scale = 3.f; break;
      case 9: p.alibi_slopes = tensor_view<const float, 1>(slopes.data(), {s.Hq}); break;
      case 10: p.alibi_slopes = tensor_view<const float, 1>(slopes.data(), {s.Hq}); p.causal = true; break;
      case 11:
        p.q_segment_ids = tensor_view<const std::int32_t, 2>(qseg.data(), {s.B, s.Lq});
        p.k_segment_ids = tensor_view<const std::int32_t, 2>(kseg.data(), {s.B, s.Lk});
        break;
      case 12: p.mask = tensor_view<const bool, 4>(mask_ptr, {s.B, s.Hq, s.Lq, s.Lk}); break;
      case 13: p.mask = tensor_view<const bool, 4>(mask_ptr, {1, 1, s.Lq, s.Lk}); break;
      case 14: p.mask = tensor_view<const bool, 4>(mask_ptr, {1, s.Hq, s.Lq, s.Lk}); break;
      case 15: p.mask = tensor_view<const bool, 4>(mask_ptr, {s.B, 1, s.Lq, s.Lk}); break;
      case 16: p.bias = tensor_view<const float, 4>(bias_data.data(), {s.B, s.Hq, s.Lq, s.Lk}); break;
      case 17: p.bias = tensor_view<const float, 4>(bias_data.data(), {1, s.Hq, s.Lq, s.Lk}); break;
      case 18: p.bias = tensor_view<const float, 4>(bias_data.data(), {s.B, 1, s.Lq, s.Lk}); break;
    }
    INFO("option " << opt);
    check_against_reference(c, p);
  }
}

TEST_CASE("flash_attention: random option combinations", "[attention][flash]") {
  std::mt19937 gen(21);
  const index_t lens[] = {1, 5, 33, 64, 65, 130};
  for (int trial = 0; trial < 40; ++trial) {
    shape s;
    s.B = 1 + gen() % 2;
    s.Lq = lens[gen() % 6];
    s.Lk = lens[gen() % 6];
    s.Hkv = 1 + gen() % 2;
    s.Hq = s.Hkv * (1 + gen() % 4);
    s.D = 8 * (1 + gen() % 6);
    s.Dv = 8 * (1 + gen() % 6);
    const attention_case<> c(s, 300 + trial, gen() % 2 == 0);
    std::vector<float> slopes(s.Hq);
    for (index_t h = 0; h < s.Hq; ++h) slopes[h] = 0.3f / float(h + 1);
    std::vector<std::int32_t> qseg(s.B * s.Lq), kseg(s.B * s.Lk);
    for (auto& x : qseg) x = static_cast<std::int32_t>(gen() % 3);
    for (auto& x : kseg) x = static_cast<std::int32_t>(gen() % 3);
    const auto bias = tokmix_test::random_floats(static_cast<std::size_t>(s.Lq * s.Lk), 400 + trial, -1.f, 1.f);
    std::vector<char> mask(static_cast<std::size_t>(s.B * s.Lq * s.Lk));
    for (auto& x : mask) x = gen() % 5 != 0;

    tokmix::attention_params p;
    p.causal = gen() % 2;
    p.alignment = gen() % 2 ? tokmix::causal_alignment::bottom_right : tokmix::causal_alignment::top_left;
    if (gen() % 2) p.window_left = static_cast<index_t>(gen() % 40) - 1;
    if (gen() % 3 == 0) p.window_right = static_cast<index_t>(gen() % 20) - 1;
    if (gen() % 3 == 0) p.n_sink = gen() % 5;
    if (gen() % 4 == 0) p.causal_block = 1 + gen() % 20;
    if (gen() % 4 == 0) p.softcap = 1.f + float(gen() % 10);
    if (gen() % 4 == 0) p.alibi_slopes = tensor_view<const float, 1>(slopes.data(), {s.Hq});
    if (gen() % 4 == 0) {
      p.q_segment_ids = tensor_view<const std::int32_t, 2>(qseg.data(), {s.B, s.Lq});
      p.k_segment_ids = tensor_view<const std::int32_t, 2>(kseg.data(), {s.B, s.Lk});
    }
    if (gen() % 4 == 0) p.bias = tensor_view<const float, 4>(bias.data(), {1, 1, s.Lq, s.Lk});
    if (gen() % 4 == 0) p.mask = tensor_view<const bool, 4>(reinterpret_cast<const bool*>(mask.data()), {s.B, 1, s.Lq, s.Lk});
    INFO("trial " << trial << " " << describe(s) << " causal " << p.causal << " wl " << p.window_left << " wr "
                  << p.window_right << " sink " << p.n_sink << " blk " << p.causal_block << " softcap " << p.softcap);
    check_against_reference(c, p);
  }
}

TEST_CASE("flash_attention: strided [B, H, L, D] inputs and outputs", "[attention][flash]") {
  const shape s{2, 67, 130, 8, 2, 64, 64};
  const attention_case<> c(s, 11, true);
  tokmix::attention_params p;
  p.causal = true;
  // Output also through strides: a [B, H, L, Dv] buffer.
  std::vector<float> o(static_cast<std::size_t>(s.B * s.Hq * s.Lq * s.Dv), 1e30f);
  tokmix::flash_attention(c.qv(), c.kv(), c.vv(), tokmix::view_from_bhld(o.data(), s.B, s.Hq, s.Lq, s.Dv), p);
  const auto ref = tokmix_test::attention_reference(c.qv(), c.kv(), c.vv(), p);
  std::vector<double> ref_bhld(o.size());
  for (index_t b = 0; b < s.B; ++b)
    for (index_t i = 0; i < s.Lq; ++i)
      for (index_t h = 0; h < s.Hq; ++h)
        for (index_t e = 0; e < s.Dv; ++e) ref_bhld[((b * s.Hq + h) * s.Lq + i) * s.Dv + e] = ref.o_at(b, i, h, e);
  TOKMIX_REQUIRE_CLOSE(o.data(), ref_bhld.data(), o.size(), 2e-5, 1e-4);
}

TEST_CASE("flash_attention: half and bfloat16 storage", "[attention][flash]") {
  const shape s{1, 65, 100, 4, 1, 64, 48};
  tokmix::attention_params p;
  p.causal = true;
  p.window_left = 40;
  {
    const attention_case<float, Eigen::half, Eigen::half> c(s, 31);
    check_against_reference(c, p);
  }
  {
    const attention_case<float, Eigen::bfloat16, Eigen::bfloat16> c(s, 32);
    check_against_reference(c, p);
  }
  {
    const attention_case<Eigen::half, Eigen::bfloat16, float> c(s, 33);
    check_against_reference(c, p);
  }
  {
    const attention_case<Eigen::bfloat16, float, Eigen::half> c(s, 34, true);
    check_against_reference(c, p);
  }
}

TEST_CASE("flash_attention: rows that see no key give zeros and lse = -inf", "[attention][flash]") {
  const shape s{1, 20, 8, 2, 2, 16, 16};
  const attention_case<> c(s, 41);
  SECTION("bottom-right causal with Lq > Lk") {
    tokmix::attention_params p;
    p.causal = true;
    const result r = run(c, p);
    const auto ref = tokmix_test::attention_reference(c.qv(), c.kv(), c.vv(), p);
    for (index_t i = 0; i < 12; ++i)
      for (index_t h = 0; h < 2; ++h) {
        REQUIRE(r.lse[h * s.Lq + i] == -std::numeric_limits<float>::infinity());
        for (index_t e = 0; e < s.Dv; ++e) REQUIRE(r.o[(i * s.Hq + h) * s.Dv + e] == 0.f);
      }
    TOKMIX_REQUIRE_CLOSE(r.o.data(), ref.o.data(), r.o.size(), 2e-5, 1e-4);
    TOKMIX_REQUIRE_CLOSE(r.lse.data(), ref.lse.data(), r.lse.size(), 2e-5, 1e-4);
  }
  SECTION("bool mask hiding whole rows, and a -inf bias") {
    std::vector<char> mask(static_cast<std::size_t>(s.Lq * s.Lk), 1);
    for (index_t j = 0; j < s.Lk; ++j) mask[3 * s.Lk + j] = 0;
    std::vector<float> bias(static_cast<std::size_t>(s.Lq * s.Lk), 0.f);
    for (index_t j = 0; j < s.Lk; ++j) bias[5 * s.Lk + j] = -std::numeric_limits<float>::infinity();
    tokmix::attention_params p;
    p.mask = tensor_view<const bool, 4>(reinterpret_cast<const bool*>(mask.data()), {1, 1, s.Lq, s.Lk});
    p.bias = tensor_view<const float, 4>(bias.data(), {1, 1, s.Lq, s.Lk});
    const result r = run(c, p);
    for (index_t row : {3, 5})
      for (index_t h = 0; h < 2; ++h) {
        REQUIRE(r.lse[h * s.Lq + row] == -std::numeric_limits<float>::infinity());
        for (index_t e = 0; e < s.Dv; ++e) REQUIRE(r.o[(row * s.Hq + h) * s.Dv + e] == 0.f);
      }
    for (float x : r.o) REQUIRE(std::isfinite(x));
  }
  SECTION("no keys at all") {
    const shape s0{1, 5, 0, 2, 1, 16, 16};
    const attention_case<> c0(s0, 42);
    const result r = run(c0, {});
    for (float x : r.o) REQUIRE(x == 0.f);
    for (float x : r.lse) REQUIRE(x == -std::numeric_limits<float>::infinity());
  }
}

TEST_CASE("flash_attention: logits of +-1e4 stay finite and accurate", "[attention][flash]") {
  const shape s{1, 70, 70, 2, 1, 32, 32};
  // |q| up to 1e3 and scale 1: logits up to ~1e4 in magnitude.
  const attention_case<> c(s, 51, false, 1000.f);
  tokmix::attention_params p;
  p.scale = 1.f;
  p.causal = true;
  const result r = run(c, p);
  for (float x : r.o) REQUIRE(std::isfinite(x));
  for (float x : r.lse) REQUIRE(std::isfinite(x));
  const auto ref = tokmix_test::attention_reference(c.qv(), c.kv(), c.vv(), p);
  // fp32 scores carry ~1e-7 relative error, i.e. ~1e-3 absolute at 1e4.
  TOKMIX_REQUIRE_CLOSE(r.o.data(), ref.o.data(), r.o.size(), 2e-2, 2e-2);
  TOKMIX_REQUIRE_CLOSE(r.lse.data(), ref.lse.data(), r.lse.size(), 1e-2, 1e-5);
}

TEST_CASE("flash_attention: a long sequence", "[attention][flash]") {
  const shape s{1, 1000, 1000, 2, 1, 64, 64};
  const attention_case<> c(s, 61);
  tokmix::attention_params p;
  p.causal = true;
  check_against_reference(c, p);
  p.causal = false;
  p.window_left = 100;
  p.window_right = 30;
  p.n_sink = 4;
  check_against_reference(c, p);
}

TEST_CASE("flash_attention: two threads give the serial result bit for bit", "[attention][flash]") {
  const shape s{2, 300, 300, 4, 2, 64, 64};
  const attention_case<> c(s, 71);
  for (bool causal : {false, true}) {
    tokmix::attention_params p;
    p.causal = causal;
    const result serial = run(c, p);
    p.policy = tokmix::exec_policy::threads(2);
    const result threaded = run(c, p);
    REQUIRE(serial.o == threaded.o);
    REQUIRE(serial.lse == threaded.lse);
  }
}

TEST_CASE("flash_attention: Eigen::Tensor and TensorMap arguments", "[attention][flash]") {
  Eigen::Tensor<float, 4, Eigen::RowMajor> q(1, 9, 4, 16), k(1, 11, 2, 16), v(1, 11, 2, 8), o(1, 9, 4, 8);
  q.setRandom();
  k.setRandom();
  v.setRandom();
  Eigen::Tensor<float, 3, Eigen::RowMajor> lse(1, 4, 9);
  tokmix::attention_params p;
  p.causal = true;
  tokmix::flash_attention(q, k, v, o, lse, p);
  std::vector<float> o2(o.size());
  Eigen::TensorMap<Eigen::Tensor<float, 4, Eigen::RowMajor>> om(o2.data(), 1, 9, 4, 8);
  Eigen::TensorMap<Eigen::Tensor<const float, 4, Eigen::RowMajor>> qm(q.data(), 1, 9, 4, 16);
  tokmix::flash_attention(qm, k, v, om, p);
  for (index_t i = 0; i < o.size(); ++i) REQUIRE(o.data()[i] == o2[i]);
  const auto ref = tokmix_test::attention_reference(tokmix::as_view(std::as_const(q)), tokmix::as_view(std::as_const(k)), tokmix::as_view(std::as_const(v)), p);
  TOKMIX_REQUIRE_CLOSE(o.data(), ref.o.data(), static_cast<std::size_t>(o.size()), 2e-5, 1e-4);
  TOKMIX_REQUIRE_CLOSE(lse.data(), ref.lse.data(), static_cast<std::size_t>(lse.size()), 2e-5, 1e-4);
}

TEST_CASE("flash_attention: bad inputs throw before writing", "[attention][flash]") {
  const index_t B = 2, L = 5, H = 4, Hkv = 2, D = 8;
  std::vector<float> q(B * L * H * D, 0.5f), k(B * L * Hkv * D, 0.5f), v(B * L * Hkv * D, 0.5f);
  std::vector<float> o(B * L * H * D, 42.f), lse(B * H * L, 42.f);
  tensor_view<const float, 4> qv(q.data(), {B, L, H, D}), kv(k.data(), {B, L, Hkv, D}), vv(v.data(), {B, L, Hkv, D});
  tensor_view<float, 4> ov(o.data(), {B, L, H, D});
  tensor_view<float, 3> lv(lse.data(), {B, H, L});
  auto untouched = [&] {
    for (float x : o) REQUIRE(x == 42.f);
    for (float x : lse) REQUIRE(x == 42.f);
  };
  auto expect_throw = [&](auto&& f) {
    REQUIRE_THROWS_AS(f(), tokmix::argument_error);
    untouched();
  };
  tokmix::attention_params p;
  expect_throw([&] { tokmix::flash_attention(qv, tensor_view<const float, 4>(k.data(), {B, L, Hkv, D - 1}), vv, ov, lv, p); });
  expect_throw([&] { tokmix::flash_attention(qv, tensor_view<const float, 4>(k.data(), {1, L, Hkv, D}), vv, ov, lv, p); });
  expect_throw([&] { tokmix::flash_attention(qv, tensor_view<const float, 4>(k.data(), {B, L, 3, D / 2}), vv, ov, lv, p); });
  expect_throw([&] { tokmix::flash_attention(qv, tensor_view<const float, 4>(k.data(), {B, L, 3, D}), tensor_view<const float, 4>(v.data(), {B, L, 3, D}), ov, lv, p); });
  expect_throw([&] { tokmix::flash_attention(qv, kv, tensor_view<const float, 4>(v.data(), {B, L - 1, Hkv, D}), ov, lv, p); });
  expect_throw([&] { tokmix::flash_attention(qv, kv, vv, tensor_view<float, 4>(o.data(), {B, L, H, D - 1}), lv, p); });
  expect_throw([&] { tokmix::flash_attention(qv, kv, vv, ov, tensor_view<float, 3>(lse.data(), {B, L, H}), p); });
  // Bad stride: last dimension not unit-stride.
  expect_throw([&] { tokmix::flash_attention(tensor_view<const float, 4>(q.data(), {B, L, H, D / 2}, {L * H * D, H * D, D, 2}), tensor_view<const float, 4>(k.data(), {B, L, Hkv, D / 2}), tensor_view<const float, 4>(v.data(), {B, L, Hkv, D / 2}), tensor_view<float, 4>(o.data(), {B, L, H, D / 2}), lv, p); });
  expect_throw([&] { tokmix::flash_attention(qv, kv, vv, tensor_view<float, 4>(o.data(), {B, L, H, D}, {L * H * D, H * D, D, 0}), lv, p); });
  p.window_left = -2;
  expect_throw([&] { tokmix::flash_attention(qv, kv, vv, ov, lv, p); });
  p = {};
  std::vector<char> mask(L * L, 1);
  p.mask = tensor_view<const bool, 4>(reinterpret_cast<const bool*>(mask.data()), {1, 1, L, L - 1});
  expect_throw([&] { tokmix::flash_attention(qv, kv, vv, ov, lv, p); });
  p = {};
  std::vector<float> bias(3 * L * L);
  p.bias = tensor_view<const float, 4>(bias.data(), {3, 1, L, L});
  expect_throw([&] { tokmix::flash_attention(qv, kv, vv, ov, lv, p); });
  p = {};
  std::vector<std::int32_t> seg(B * L);
  p.q_segment_ids = tensor_view<const std::int32_t, 2>(seg.data(), {B, L});
  p.k_segment_ids = tensor_view<const std::int32_t, 2>(seg.data(), {B, L - 1});
  expect_throw([&] { tokmix::flash_attention(qv, kv, vv, ov, lv, p); });
  p = {};
  tokmix::flash_attention(qv, kv, vv, ov, lv, p);  // and the good call works
  for (float x : o) REQUIRE(x == Approx(0.5f));
}

TEST_CASE("flash kernel exp2 on non-positive inputs", "[attention][flash]") {
  using arch = xsimd::default_arch;
  using batch = xsimd::batch<float, arch>;
  constexpr std::size_t W = batch::size;
  double worst = 0;
  alignas(64) float in[W], out[W];
  for (int i = 0; i <= 126 * 4096; i += static_cast<int>(W)) {
    for (std::size_t l = 0; l < W; ++l) in[l] = -static_cast<float>(i + static_cast<int>(l)) / 4096.f;
    tokmix::detail::flash::exp2_nonpositive<arch>(batch::load_aligned(in)).store_aligned(out);
    for (std::size_t l = 0; l < W; ++l)
      if (in[l] >= -125.f) worst = std::max(worst, std::abs(out[l] / std::exp2(double(in[l])) - 1.0));
  }
  INFO("max relative error " << worst);
  REQUIRE(worst < 3e-7);
  const float edge[] = {-std::numeric_limits<float>::infinity(), -1e30f, -200.f, -126.25f, 0.f};
  for (float x : edge) {
    tokmix::detail::flash::exp2_nonpositive<arch>(batch(x)).store_aligned(out);
    if (x < -126.f) REQUIRE(out[0] == 0.f);
    else REQUIRE(out[0] == 1.f);
  }
}
