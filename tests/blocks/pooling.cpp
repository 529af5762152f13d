// Tests for include/tokmix/blocks/pooling.hpp against float64 window means
// written from the PoolFormer formula (count_include_pad=False): odd sizes,
// pool sizes beyond the sequence, strided inputs, NaN-padded outputs, threads
// bit for bit, causal prefill chunks == steps == one call, bad inputs.
#include "tokmix/blocks/pooling.hpp"

#include <cmath>
#include <vector>

#include <catch2/catch.hpp>

#include "support/compare.hpp"

using namespace tokmix;

namespace {

// x is [B, L, D] with token stride ld (>= D) and batch stride L * ld.
std::vector<double> pool_ref(const std::vector<float>& x, index_t B, index_t L, index_t D, index_t ld, index_t pool,
                             bool causal, bool subtract) {
  std::vector<double> y(static_cast<std::size_t>(B * L * D));
  for (index_t b = 0; b < B; ++b)
    for (index_t t = 0; t < L; ++t) {
      const index_t lo = causal ? std::max<index_t>(0, t - pool + 1) : std::max<index_t>(0, t - pool / 2);
      const index_t hi = causal ? t : std::min(L - 1, t + pool / 2);
      for (index_t c = 0; c < D; ++c) {
        double s = 0;
        for (index_t u = lo; u <= hi; ++u) s += x[(b * L + u) * ld + c];
        double v = s / double(hi - lo + 1);
        if (subtract) v -= x[(b * L + t) * ld + c];
        y[(b * L + t) * D + c] = v;
      }
    }
  return y;
}

}  // namespace

TEST_CASE("pooling: centred and causal windows == float64, odd sizes, strides, threads", "[blocks][pooling]") {
  const index_t lane = simd::lanes<simd::default_arch>;
  for (index_t D : {index_t(1), index_t(7), lane + 1, index_t(130)})
    for (index_t L : {1, 2, 5, 70, 131})
      for (index_t pool : {1, 3, 5, 9, 67})
        for (bool causal : {false, true})
          for (bool subtract : {true, false}) {
            const index_t B = 2, ld = D + 3;
            CAPTURE(D, L, pool, causal, subtract);
            const auto x = tokmix_test::random_floats(static_cast<std::size_t>(B * L * ld), unsigned(D * 31 + L + pool));
            const auto want = pool_ref(x, B, L, D, ld, pool, causal, subtract);
            const tensor_view<const float, 3> xv(x.data(), {B, L, D}, {L * ld, ld, 1});
            std::vector<float> serial;
            for (int threads : {1, 2}) {
              tokmix_test::nan_padded<float> y(want.size());
              pooling_params p;
              p.pool_size = pool;
              p.subtract_input = subtract;
              p.policy = threads == 1 ? exec_policy::serial() : exec_policy::threads(threads);
              const tensor_view<float, 3> yv(y.data(), {B, L, D});
              if (causal) pooling_causal(xv, yv, p);
              else pooling_mixer(xv, yv, p);
              TOKMIX_REQUIRE_CLOSE(y.data(), want.data(), want.size(), 1e-6, 1e-5);
              REQUIRE(std::isnan(y.data()[-1]));
              REQUIRE(std::isnan(y.data()[want.size()]));
              if (threads == 1) serial.assign(y.data(), y.data() + want.size());
              else REQUIRE(std::vector<float>(y.data(), y.data() + want.size()) == serial);
            }
          }
}

TEST_CASE("pooling: the edges average only the tokens they hold", "[blocks][pooling]") {
  // x = t along the sequence, one channel: pool 3 at t = 0 averages {0, 1}.
  std::vector<float> x = {0, 1, 2, 3}, y(4);
  pooling_params p;
  p.subtract_input = false;
  pooling_mixer(tensor_view<const float, 3>(x.data(), {1, 4, 1}), tensor_view<float, 3>(y.data(), {1, 4, 1}), p);
  CHECK(y == std::vector<float>{0.5f, 1.f, 2.f, 2.5f});
  pooling_causal(tensor_view<const float, 3>(x.data(), {1, 4, 1}), tensor_view<float, 3>(y.data(), {1, 4, 1}), p);
  CHECK(y == std::vector<float>{0.f, 0.5f, 1.f, 2.f});
  p.subtract_input = true;
  pooling_mixer(tensor_view<const float, 3>(x.data(), {1, 4, 1}), tensor_view<float, 3>(y.data(), {1, 4, 1}), p);
  CHECK(y == std::vector<float>{0.5f, 0.f, 0.f, -0.5f});
}

TEST_CASE("pooling: causal prefill chunks == one prefill == steps, bit for bit", "[blocks][pooling]") {
  for (index_t pool : {1, 2, 4, 7})
    for (index_t D : {3, 20}) {
      CAPTURE(pool, D);
      const index_t B = 3, L = 23;
      const auto x = tokmix_test::random_floats(static_cast<std::size_t>(B * L * D), unsigned(pool * 7 + D));
      pooling_params p;
      p.pool_size = pool;
      std::vector<float> whole(x.size()), chunks(x.size()), steps(x.size());
      pooling_state s_whole(B, D, pool), s_chunks(B, D, pool), s_steps(B, D, pool);
      pooling_prefill(tensor_view<const float, 3>(x.data(), {B, L, D}), s_whole, tensor_view<float, 3>(whole.data(), {B, L, D}), p);
      // Chunks of 1, 2, 5 and the rest, as strided views of the [B, L, D] buffers.
      index_t t0 = 0;
      for (index_t len : {1, 2, 5, 15}) {
        pooling_prefill(tensor_view<const float, 3>(x.data() + t0 * D, {B, len, D}, {L * D, D, 1}), s_chunks,
                        tensor_view<float, 3>(chunks.data() + t0 * D, {B, len, D}, {L * D, D, 1}), p);
        t0 += len;
      }
      REQUIRE(t0 == L);
      for (index_t t = 0; t < L; ++t)
        pooling_step(tensor_view<const float, 2>(x.data() + t * D, {B, D}, {L * D, 1}), s_steps,
                     tensor_view<float, 2>(steps.data() + t * D, {B, D}, {L * D, 1}), p);
      CHECK(chunks == whole);
      CHECK(steps == whole);
      std::vector<float> fresh(x.size());
      pooling_causal(tensor_view<const float, 3>(x.data(), {B, L, D}), tensor_view<float, 3>(fresh.data(), {B, L, D}), p);
      CHECK(fresh == whole);
      for (index_t b = 0; b < B; ++b) {
        CHECK(s_whole.seen(b) == pool - 1);
        CHECK(s_steps.seen(b) == pool - 1);
        for (index_t k = 0; k < pool - 1; ++k)
          for (index_t c = 0; c < D; ++c) {
            CHECK(s_whole.history()(b, k, c) == x[(b * L + L - pool + 1 + k) * D + c]);
            CHECK(s_chunks.history()(b, k, c) == s_whole.history()(b, k, c));
            CHECK(s_steps.history()(b, k, c) == s_whole.history()(b, k, c));
          }
      }
      // Continuing after a reset starts afresh.
      s_whole.reset();
      std::vector<float> again(x.size());
      pooling_prefill(tensor_view<const float, 3>(x.data(), {B, L, D}), s_whole, tensor_view<float, 3>(again.data(), {B, L, D}), p);
      CHECK(again == whole);
    }
}

TEST_CASE("pooling: bad inputs throw argument_error and write nothing", "[blocks][pooling]") {
  std::vector<float> x(2 * 5 * 4, 1.f), y(2 * 5 * 4, -7.f);
  const tensor_view<const float, 3> xv(x.data(), {2, 5, 4});
  const tensor_view<float, 3> yv(y.data(), {2, 5, 4});
  auto expect_arg = [&](auto&& call, const std::string& argument) {
    try {
      call();
      FAIL("accepted");
    } catch (const argument_error& e) {
      CHECK(e.argument() == argument);
    }
  };
  pooling_params p;
  p.pool_size = 4;
  expect_arg([&] { pooling_mixer(xv, yv, p); }, "pool_size");
  p.pool_size = 0;
  expect_arg([&] { pooling_causal(xv, yv, p); }, "pool_size");
  p.pool_size = 3;
  expect_arg([&] { pooling_mixer(xv, tensor_view<float, 3>(y.data(), {2, 4, 4}), p); }, "out");
  expect_arg([&] { pooling_mixer(xv, tensor_view<float, 3>(x.data(), {2, 5, 4}), p); }, "out");                 // in place
  expect_arg([&] { pooling_mixer(xv, tensor_view<float, 3>(x.data() + 4, {2, 5, 4}, {0, 4, 1}), p); }, "out");  // overlap
  expect_arg([&] { pooling_mixer(tensor_view<const float, 3>(x.data(), {2, 5, 2}, {20, 4, 2}), tensor_view<float, 3>(y.data(), {2, 5, 2}), p); }, "x");
  pooling_state s(2, 4, 3), s_other(2, 4, 5), s_batch(1, 4, 3);
  expect_arg([&] { pooling_prefill(xv, s_other, yv, p); }, "state pool_size");
  expect_arg([&] { pooling_prefill(xv, s_batch, yv, p); }, "state batch");
  expect_arg([&] { pooling_step(tensor_view<const float, 2>(x.data(), {2, 3}), s, tensor_view<float, 2>(y.data(), {2, 3}), p); }, "state channels");
  expect_arg([&] { pooling_step(tensor_view<const float, 2>(x.data(), {2, 4}), s, tensor_view<float, 2>(y.data(), {2, 3}), p); }, "out");
  expect_arg([&] { pooling_state(1, 1, 0); }, "pooling_state pool_size");
  expect_arg([&] { s.set_seen(0, 3); }, "pooling_state seen");
  for (float v : y) CHECK(v == -7.f);
  CHECK(s.seen(0) == 0);
  for (index_t i = 0; i < s.history().size(); ++i) CHECK(s.history().data()[i] == 0.f);
}
