// Causal depthwise conv1d against the float64 reference; state carrying
// (prefill chains and steps) bit for bit; bad inputs write nothing.

#include "tokmix/ssm/conv1d.hpp"

#include <cstring>
#include <vector>

#include "ssm/reference.hpp"
#include "support/compare.hpp"

using namespace tokmix;
using tokmix_test::random_floats;
using tokmix_test::ssm_buffer;

namespace {

struct conv_case {
  std::size_t batch, seq, channels, width;
  bool bias, silu;
  std::size_t gap;  // extra elements between tokens (non-dense stride)
};

void run_conv_case(const conv_case& cs, unsigned seed) {
  INFO("batch " << cs.batch << " seq " << cs.seq << " channels " << cs.channels << " width " << cs.width << " bias "
                << cs.bias << " silu " << cs.silu << " gap " << cs.gap);
  const std::size_t nx = cs.batch * cs.seq * cs.channels;
  const auto xv = random_floats(nx, seed, -2.f, 2.f);
  const auto wv = random_floats(cs.channels * cs.width, seed + 1, -1.f, 1.f);
  const std::vector<float> bv = cs.bias ? random_floats(cs.channels, seed + 2) : std::vector<float>{};
  const auto hv = random_floats(cs.batch * (cs.width - 1) * cs.channels, seed + 3, -1.f, 1.f);

  ssm_buffer x({cs.batch, cs.seq, cs.channels}, cs.gap), out({cs.batch, cs.seq, cs.channels}, cs.gap);
  ssm_buffer w({cs.channels, cs.width}, 1), b({cs.channels});
  x.fill(xv);
  w.fill(wv);
  b.fill(bv);
  conv1d_state st(cs.batch, cs.channels, cs.width);
  std::memcpy(st.history().data(), hv.data(), hv.size() * sizeof(float));

  conv1d_options opts;
  opts.silu = cs.silu;
  conv1d_prefill(x.cview<3>(), w.cview<2>(), cs.bias ? b.cview<1>() : tensor_view<const float, 1>(), st, out.view<3>(),
                 opts);

  std::vector<double> ref_hist(hv.begin(), hv.end()), ref_out;
  tokmix_test::ssm_ref::conv1d(xv, cs.batch, cs.seq, cs.channels, wv, cs.width, bv, cs.silu, ref_hist, ref_out);
  const auto got = out.dense();
  TOKMIX_REQUIRE_CLOSE(got.data(), ref_out.data(), got.size(), 1e-5, 1e-5);
  TOKMIX_REQUIRE_CLOSE(st.history().data(), ref_hist.data(), ref_hist.size(), 0.0, 0.0);
  REQUIRE(out.pads_untouched());
}

}  // namespace

TEST_CASE("conv1d: prefill matches the float64 reference over odd sizes", "[ssm][conv1d]") {
  unsigned seed = 100;
  for (std::size_t width = 2; width <= 8; ++width)
    for (std::size_t channels : {1, 7, 8, 9, 13, 33, 70})
      for (std::size_t seq : {1, 3, 65}) {
        const bool flag = (width + channels + seq) % 2 == 0;
        run_conv_case({2, seq, channels, width, flag, !flag, channels % 2}, ++seed);
      }
  run_conv_case({1, 7, 129, 4, true, true, 0}, 7);
  run_conv_case({3, 200, 1536 / 8, 4, true, false, 5}, 8);
  run_conv_case({2, 9, 530, 5, true, true, 3}, 9);  // several 256-channel items, ragged last one
}

TEST_CASE("conv1d: two prefills == one prefill == steps, bit for bit", "[ssm][conv1d]") {
  for (std::size_t width : {2, 4, 8})
    for (std::size_t channels : {5, 16, 37}) {
      const std::size_t batch = 2, L1 = 6, L2 = 9, L = L1 + L2;
      const auto xv = random_floats(batch * L * channels, 11 + width, -2.f, 2.f);
      const auto wv = random_floats(channels * width, 12);
      const auto bv = random_floats(channels, 13);
      Eigen::Tensor<float, 3, Eigen::RowMajor> x(batch, L, channels);
      std::memcpy(x.data(), xv.data(), xv.size() * sizeof(float));
      Eigen::Tensor<float, 2, Eigen::RowMajor> w(channels, width);
      std::memcpy(w.data(), wv.data(), wv.size() * sizeof(float));
      Eigen::Tensor<float, 1, Eigen::RowMajor> b(channels);
      std::memcpy(b.data(), bv.data(), bv.size() * sizeof(float));
      conv1d_options opts;
      opts.silu = true;

      conv1d_state one(batch, channels, width);
      Eigen::Tensor<float, 3, Eigen::RowMajor> y_one(batch, L, channels);
      conv1d_prefill(x, w, b, one, y_one, opts);

      // The same run split in two.
      conv1d_state two(batch, channels, width);
      Eigen::Tensor<float, 3, Eigen::RowMajor> y_two(batch, L, channels);
      auto xs = as_view(x), ys = as_view(y_two);
      tensor_view<const float, 3> x1(xs.data(), {index_t(batch), index_t(L1), index_t(channels)}, xs.strides());
      tensor_view<const float, 3> x2(xs.ptr(0, L1, 0), {index_t(batch), index_t(L2), index_t(channels)}, xs.strides());
      tensor_view<float, 3> y1(ys.data(), {index_t(batch), index_t(L1), index_t(channels)}, ys.strides());
      tensor_view<float, 3> y2(ys.ptr(0, L1, 0), {index_t(batch), index_t(L2), index_t(channels)}, ys.strides());
      conv1d_prefill(x1, w, b, two, y1, opts);
      conv1d_prefill(x2, w, b, two, y2, opts);

      // Token by token.
      conv1d_state steps(batch, channels, width);
      Eigen::Tensor<float, 3, Eigen::RowMajor> y_steps(batch, L, channels);
      for (std::size_t t = 0; t < L; ++t) {
        tensor_view<const float, 2> xt(xs.ptr(0, t, 0), {index_t(batch), index_t(channels)}, {xs.stride(0), 1});
        tensor_view<float, 2> yt(as_view(y_steps).ptr(0, t, 0), {index_t(batch), index_t(channels)},
                                 {as_view(y_steps).stride(0), 1});
        conv1d_step(xt, w, b, steps, yt, opts);
      }
      const std::size_t n = batch * L * channels, nh = batch * (width - 1) * channels;
      REQUIRE(std::memcmp(y_one.data(), y_two.data(), n * sizeof(float)) == 0);
      REQUIRE(std::memcmp(y_one.data(), y_steps.data(), n * sizeof(float)) == 0);
      REQUIRE(std::memcmp(one.history().data(), two.history().data(), nh * sizeof(float)) == 0);
      REQUIRE(std::memcmp(one.history().data(), steps.history().data(), nh * sizeof(float)) == 0);

      // Stateless form == prefill from a fresh state.
      Eigen::Tensor<float, 3, Eigen::RowMajor> y_free(batch, L, channels);
      conv1d(x, w, b, y_free, opts);
      REQUIRE(std::memcmp(y_one.data(), y_free.data(), n * sizeof(float)) == 0);
    }
}

TEST_CASE("conv1d: taps as a view of a [width, channels] buffer give the same bits", "[ssm][conv1d]") {
  for (std::size_t channels : {1, 13, 40, 300}) {
    const std::size_t batch = 2, L = 11, width = 4;
    const auto xv = random_floats(batch * L * channels, 41);
    const auto wv = random_floats(channels * width, 42);
    const auto bv = random_floats(channels, 43);
    std::vector<float> w_t(width * channels);
    for (std::size_t c = 0; c < channels; ++c)
      for (std::size_t k = 0; k < width; ++k) w_t[k * channels + c] = wv[c * width + k];
    tensor_view<const float, 3> x(xv.data(), {index_t(batch), index_t(L), index_t(channels)});
    tensor_view<const float, 2> w(wv.data(), {index_t(channels), index_t(width)});
    tensor_view<const float, 2> w_by_channel(w_t.data(), {index_t(channels), index_t(width)}, {1, index_t(channels)});
    tensor_view<const float, 1> b(bv.data(), {index_t(channels)});
    std::vector<float> y1(xv.size()), y2(xv.size());
    conv1d_state s1(batch, channels, width), s2(batch, channels, width);
    conv1d_prefill(x, w, b, s1, tensor_view<float, 3>(y1.data(), x.dims()));
    conv1d_prefill(x, w_by_channel, b, s2, tensor_view<float, 3>(y2.data(), x.dims()));
    INFO("channels " << channels);
    REQUIRE(y1 == y2);
    REQUIRE(std::memcmp(s1.history().data(), s2.history().data(), s1.history().size() * sizeof(float)) == 0);
  }
}

TEST_CASE("conv1d: packed variable-length batches, empty sequences included", "[ssm][conv1d]") {
  const std::vector<std::int32_t> cu = {0, 0, 3, 4, 4, 70, 72};
  const std::size_t total = 72, channels = 21, width = 4, n_seqs = cu.size() - 1;
  const auto xv = random_floats(total * channels, 51, -2.f, 2.f);
  const auto wv = random_floats(channels * width, 52);
  const auto bv = random_floats(channels, 53);
  const auto hv = random_floats(n_seqs * (width - 1) * channels, 54);
  tensor_view<const float, 3> x(xv.data(), {1, index_t(total), index_t(channels)});
  tensor_view<const float, 2> w(wv.data(), {index_t(channels), index_t(width)});
  tensor_view<const float, 1> b(bv.data(), {index_t(channels)});
  conv1d_options opts;
  opts.silu = true;
  opts.cu_seqlens = tensor_view<const std::int32_t, 1>(cu.data(), {index_t(cu.size())});
  opts.policy = exec_policy::threads(2);
  conv1d_state packed(n_seqs, channels, width);
  std::memcpy(packed.history().data(), hv.data(), hv.size() * sizeof(float));
  std::vector<float> y(xv.size()), y_free(xv.size());
  conv1d_prefill(x, w, b, packed, tensor_view<float, 3>(y.data(), x.dims()), opts);
  conv1d(x, w, b, tensor_view<float, 3>(y_free.data(), x.dims()), opts);

  const std::size_t hn = (width - 1) * channels;
  for (std::size_t s = 0; s < n_seqs; ++s) {
    INFO("sequence " << s);
    const std::size_t t0 = cu[s], len = cu[s + 1] - cu[s];
    const std::vector<float> xs(xv.begin() + t0 * channels, xv.begin() + (t0 + len) * channels);
    // Alone, from its own state: the same bits.
    conv1d_state alone(1, channels, width);
    std::memcpy(alone.history().data(), hv.data() + s * hn, hn * sizeof(float));
    std::vector<float> ya(xs.size()), ya_free(xs.size());
    conv1d_options one;
    one.silu = true;
    tensor_view<const float, 3> xsv(xs.data(), {1, index_t(len), index_t(channels)});
    conv1d_prefill(xsv, w, b, alone, tensor_view<float, 3>(ya.data(), xsv.dims()), one);
    conv1d(xsv, w, b, tensor_view<float, 3>(ya_free.data(), xsv.dims()), one);
    REQUIRE(std::equal(ya.begin(), ya.end(), y.begin() + t0 * channels));
    REQUIRE(std::equal(ya_free.begin(), ya_free.end(), y_free.begin() + t0 * channels));
    REQUIRE(std::memcmp(alone.history().data(), packed.history().data() + s * hn, hn * sizeof(float)) == 0);
    // And the float64 reference.
    std::vector<double> ref_hist(hv.begin() + s * hn, hv.begin() + (s + 1) * hn), ref_out;
    tokmix_test::ssm_ref::conv1d(xs, 1, len, channels, wv, width, bv, true, ref_hist, ref_out);
    if (len > 0) TOKMIX_REQUIRE_CLOSE(ya.data(), ref_out.data(), ref_out.size(), 1e-5, 1e-5);
  }

  // Bad packings throw and write nothing.
  std::vector<float> y_bad(xv.size(), 42.f);
  conv1d_state before = packed;
  const std::vector<std::int32_t> short_cu = {0, 3, 71}, down = {0, 5, 4, 72};
  conv1d_options bad = opts;
  bad.cu_seqlens = tensor_view<const std::int32_t, 1>(short_cu.data(), {3});
  conv1d_state two(2, channels, width);
  CHECK_THROWS_AS(conv1d_prefill(x, w, b, two, tensor_view<float, 3>(y_bad.data(), x.dims()), bad), argument_error);
  bad.cu_seqlens = tensor_view<const std::int32_t, 1>(down.data(), {4});
  conv1d_state three(3, channels, width);
  CHECK_THROWS_AS(conv1d_prefill(x, w, b, three, tensor_view<float, 3>(y_bad.data(), x.dims()), bad), argument_error);
  // State count != n_seqs.
  CHECK_THROWS_AS(conv1d_prefill(x, w, b, two, tensor_view<float, 3>(y_bad.data(), x.dims()), opts), argument_error);
  // Batch 2 with cu_seqlens.
  std::vector<float> x2(2 * xv.size());
  CHECK_THROWS_AS(conv1d_prefill(tensor_view<const float, 3>(x2.data(), {2, index_t(total), index_t(channels)}), w, b,
                                 packed, tensor_view<float, 3>(x2.data(), {2, index_t(total), index_t(channels)}), opts),
                  argument_error);
  // A step takes no packing.
  CHECK_THROWS_AS(conv1d_step(tensor_view<const float, 2>(xv.data(), {1, index_t(channels)}), w, b, packed,
                              tensor_view<float, 2>(y_bad.data(), {1, index_t(channels)}), opts),
                  argument_error);
  for (float v : y_bad) REQUIRE(v == 42.f);
  REQUIRE(std::memcmp(before.history().data(), packed.history().data(), n_seqs * hn * sizeof(float)) == 0);
}

TEST_CASE("conv1d: threads give the serial result", "[ssm][conv1d]") {
  const std::size_t batch = 2, L = 33, channels = 600, width = 4;
  const auto xv = random_floats(batch * L * channels, 21);
  const auto wv = random_floats(channels * width, 22);
  tensor_view<const float, 3> x(xv.data(), {index_t(batch), index_t(L), index_t(channels)});
  tensor_view<const float, 2> w(wv.data(), {index_t(channels), index_t(width)});
  std::vector<float> y1(xv.size()), y2(xv.size());
  conv1d_state s1(batch, channels, width), s2(batch, channels, width);
  conv1d_options opts;
  conv1d_prefill(x, w, {}, s1, tensor_view<float, 3>(y1.data(), x.dims()), opts);
  opts.policy = exec_policy::threads(2);
  conv1d_prefill(x, w, {}, s2, tensor_view<float, 3>(y2.data(), x.dims()), opts);
  REQUIRE(y1 == y2);
}

TEST_CASE("conv1d: bad shapes throw argument_error and write nothing", "[ssm][conv1d]") {
  const index_t batch = 2, L = 5, channels = 6;
  std::vector<float> xv = random_floats(batch * L * channels, 31), wv = random_floats(channels * 9, 32);
  std::vector<float> bv = random_floats(channels + 1, 33);
  std::vector<float> yv(xv.size(), 42.f);
  tensor_view<const float, 3> x(xv.data(), {batch, L, channels});
  tensor_view<float, 3> y(yv.data(), {batch, L, channels});
  conv1d_state st(batch, channels, 4);
  for (index_t i = 0; i < st.history().size(); ++i) st.history().data()[i] = 7.f;

  auto untouched = [&] {
    for (float v : yv)
      if (v != 42.f) return false;
    for (index_t i = 0; i < st.history().size(); ++i)
      if (st.history().data()[i] != 7.f) return false;
    return true;
  };
  const tensor_view<const float, 2> w4(wv.data(), {channels, 4});
  // Width out of range (1 and 9) on the weight.
  CHECK_THROWS_AS(conv1d_prefill(x, tensor_view<const float, 2>(wv.data(), {channels, 1}), {}, st, y), argument_error);
  CHECK_THROWS_AS(conv1d_prefill(x, tensor_view<const float, 2>(wv.data(), {channels, 9}), {}, st, y), argument_error);
  CHECK_THROWS_AS(conv1d(x, tensor_view<const float, 2>(wv.data(), {channels, 9}), {}, y), argument_error);
  // Weight / bias / output / state that do not match x.
  CHECK_THROWS_AS(conv1d_prefill(x, tensor_view<const float, 2>(wv.data(), {channels + 1, 4}), {}, st, y),
                  argument_error);
  CHECK_THROWS_AS(conv1d_prefill(x, w4, tensor_view<const float, 1>(bv.data(), {channels + 1}), st, y), argument_error);
  CHECK_THROWS_AS(conv1d_prefill(x, w4, {}, st, tensor_view<float, 3>(yv.data(), {batch, L - 1, channels})),
                  argument_error);
  conv1d_state wrong_width(batch, channels, 3), wrong_batch(batch + 1, channels, 4);
  CHECK_THROWS_AS(conv1d_prefill(x, w4, {}, wrong_width, y), argument_error);
  CHECK_THROWS_AS(conv1d_prefill(x, w4, {}, wrong_batch, y), argument_error);
  // Non-unit inner stride.
  CHECK_THROWS_AS(conv1d_prefill(tensor_view<const float, 3>(xv.data(), {batch, L, 3}, {L * channels, channels, 2}),
                                 tensor_view<const float, 2>(wv.data(), {3, 4}), {}, st, y),
                  argument_error);
  // Step with a mismatched output.
  CHECK_THROWS_AS(conv1d_step(tensor_view<const float, 2>(xv.data(), {batch, channels}), w4, {}, st,
                              tensor_view<float, 2>(yv.data(), {batch, channels + 1})),
                  argument_error);
  CHECK_THROWS_AS(conv1d_state(1, 4, 9), argument_error);
  CHECK_THROWS_AS(conv1d_state(1, 4, 1), argument_error);
  REQUIRE(untouched());

  try {
    conv1d_prefill(x, tensor_view<const float, 2>(wv.data(), {channels, 9}), {}, st, y);
  } catch (const argument_error& e) {
    CHECK(e.argument().find("width") != std::string::npos);
    CHECK(e.actual() == "9");
  }
}
