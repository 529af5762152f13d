// Long causal convolutions (direct and FFT paths), FSMN memory and dilated
// causal stacks against float64 references; the stack's prefill chains and
// steps agree; bad inputs write nothing.

#include "tokmix/ssm/long_conv.hpp"

#include <cmath>
#include <limits>
#include <vector>

#include "ssm/reference.hpp"
#include "ssm/reference_lti.hpp"
#include "support/compare.hpp"

using namespace tokmix;
using tokmix_test::random_floats;
using tokmix_test::ssm_buffer;

namespace {

void run_long_conv(std::size_t B, std::size_t L, std::size_t C, std::size_t K, bool skip, long_conv_path path,
                   unsigned seed) {
  INFO("B " << B << " L " << L << " C " << C << " K " << K << " skip " << skip << " path " << int(path));
  const auto xv = random_floats(B * L * C, seed, -1.f, 1.f);
  const auto hv = random_floats(C * K, seed + 1, -1.f, 1.f);
  const std::vector<float> dv = skip ? random_floats(C, seed + 2) : std::vector<float>{};
  ssm_buffer x({B, L, C}, C % 3), out({B, L, C}, 2), h({C, K}, 1), d({C});
  x.fill(xv);
  h.fill(hv);
  d.fill(dv);
  long_conv_options o;
  o.path = path;
  long_conv(x.cview<3>(), h.cview<2>(), skip ? d.cview<1>() : tensor_view<const float, 1>(), out.view<3>(), o);
  const auto ref = tokmix_test::lti_ref::long_conv(xv, B, L, C, hv, K, dv);
  const auto got = out.dense();
  const double tol = 2e-5 * std::sqrt(double(std::min(K, L)));
  TOKMIX_REQUIRE_CLOSE(got.data(), ref.data(), got.size(), tol, 1e-4);
  REQUIRE(out.pads_untouched());
}

}  // namespace

TEST_CASE("long_conv: direct and FFT paths match the float64 reference", "[ssm][long_conv]") {
  unsigned seed = 300;
  for (auto path : {long_conv_path::direct, long_conv_path::fft, long_conv_path::automatic})
    for (std::size_t C : {1, 13, 16, 33})
      for (std::size_t L : {1, 7, 65})
        for (std::size_t K : {std::size_t(1), std::size_t(5), L, L + 9}) run_long_conv(2, L, C, K, (C + L) % 2 == 0, path, ++seed);
  run_long_conv(1, 1000, 17, 1000, true, long_conv_path::fft, 1);
  run_long_conv(1, 1000, 17, 300, false, long_conv_path::direct, 2);
}

TEST_CASE("long_conv: FFT path == direct path", "[ssm][long_conv]") {
  const std::size_t B = 2, L = 257, C = 35, K = 200;
  const auto xv = random_floats(B * L * C, 5), hv = random_floats(C * K, 6), dv = random_floats(C, 7);
  std::vector<float> y1(B * L * C), y2(B * L * C);
  const tensor_view<const float, 3> x(xv.data(), {index_t(B), index_t(L), index_t(C)});
  const tensor_view<const float, 2> h(hv.data(), {index_t(C), index_t(K)});
  const tensor_view<const float, 1> d(dv.data(), {index_t(C)});
  long_conv_options o;
  o.path = long_conv_path::direct;
  long_conv(x, h, d, tensor_view<float, 3>(y1.data(), {index_t(B), index_t(L), index_t(C)}), o);
  o.path = long_conv_path::fft;
  o.policy = exec_policy::threads(2);
  long_conv(x, h, d, tensor_view<float, 3>(y2.data(), {index_t(B), index_t(L), index_t(C)}), o);
  TOKMIX_REQUIRE_CLOSE(y2.data(), y1.data(), y1.size(), 1e-4, 1e-4);
}

TEST_CASE("long_conv: FSMN memory is the input plus the FIR", "[ssm][long_conv]") {
  const std::size_t B = 1, L = 30, C = 19, K = 6;
  const auto xv = random_floats(B * L * C, 8), av = random_floats(C * K, 9);
  std::vector<float> y(B * L * C);
  fsmn_memory(tensor_view<const float, 3>(xv.data(), {index_t(B), index_t(L), index_t(C)}),
              tensor_view<const float, 2>(av.data(), {index_t(C), index_t(K)}),
              tensor_view<float, 3>(y.data(), {index_t(B), index_t(L), index_t(C)}));
  const auto ref = tokmix_test::lti_ref::long_conv(xv, B, L, C, av, K, std::vector<float>(C, 1.f));
  TOKMIX_REQUIRE_CLOSE(y.data(), ref.data(), y.size(), 1e-5, 1e-5);
}

namespace {

struct stack_fixture {
  std::size_t C;
  std::vector<tokmix_test::lti_ref::dilated_layer_ref> ref;
  std::vector<dilated_conv_layer> layers;
  stack_fixture(std::size_t channels, std::vector<std::pair<std::size_t, std::size_t>> wd, unsigned seed) : C(channels) {
    for (auto p : wd) ref.push_back({random_floats(C * p.first, ++seed), p.first, random_floats(C, ++seed), p.second});
    ref[0].bias.clear();
    for (const auto& r : ref)
      layers.push_back({tensor_view<const float, 2>(r.w.data(), {index_t(C), index_t(r.width)}),
                        r.bias.empty() ? tensor_view<const float, 1>()
                                       : tensor_view<const float, 1>(r.bias.data(), {index_t(C)}),
                        index_t(r.dilation)});
  }
};

}  // namespace

TEST_CASE("dilated_conv: stack matches the float64 reference", "[ssm][long_conv]") {
  unsigned seed = 400;
  for (std::size_t C : {1, 13, 33})
    for (std::size_t L : {1, 7, 65})
      for (bool silu : {false, true}) {
        INFO("C " << C << " L " << L << " silu " << silu);
        stack_fixture f(C, {{3, 1}, {2, 2}, {4, 5}, {1, 3}}, ++seed);
        const std::size_t B = 2;
        const auto xv = random_floats(B * L * C, ++seed);
        ssm_buffer x({B, L, C}, 1), out({B, L, C}, 3);
        x.fill(xv);
        dilated_conv_options o;
        o.silu = silu;
        dilated_conv(x.cview<3>(), f.layers, out.view<3>(), o);
        const auto ref = tokmix_test::lti_ref::dilated(xv, B, L, C, f.ref, silu);
        const auto got = out.dense();
        TOKMIX_REQUIRE_CLOSE(got.data(), ref.data(), got.size(), 1e-5, 1e-5);
        REQUIRE(out.pads_untouched());
      }
}

TEST_CASE("dilated_conv: two prefills == one prefill == steps", "[ssm][long_conv]") {
  for (std::size_t C : {5, 16, 33}) {
    stack_fixture f(C, {{2, 1}, {3, 4}, {2, 16}}, unsigned(C));
    const std::size_t B = 2, L1 = 11, L2 = 40, L = L1 + L2;
    const auto xv = random_floats(B * L * C, 77);
    const tensor_view<const float, 3> x(xv.data(), {index_t(B), index_t(L), index_t(C)});
    dilated_conv_options o;
    o.silu = true;
    std::vector<float> y_one(B * L * C), y_two(B * L * C), y_step(B * L * C);
    dilated_conv_state s_one(index_t(B), index_t(C), f.layers);
    dilated_conv_prefill(x, f.layers, s_one, tensor_view<float, 3>(y_one.data(), x.dims()), o);
    const auto ref = tokmix_test::lti_ref::dilated(xv, B, L, C, f.ref, true);
    TOKMIX_REQUIRE_CLOSE(y_one.data(), ref.data(), ref.size(), 1e-5, 1e-5);

    dilated_conv_state s_two(index_t(B), index_t(C), f.layers);
    const tensor_view<float, 3> y2(y_two.data(), x.dims());
    dilated_conv_prefill(tensor_view<const float, 3>(x.data(), {index_t(B), index_t(L1), index_t(C)}, x.strides()),
                         f.layers, s_two,
                         tensor_view<float, 3>(y2.data(), {index_t(B), index_t(L1), index_t(C)}, y2.strides()), o);
    dilated_conv_prefill(tensor_view<const float, 3>(x.ptr(0, L1, 0), {index_t(B), index_t(L2), index_t(C)}, x.strides()),
                         f.layers, s_two,
                         tensor_view<float, 3>(y2.ptr(0, L1, 0), {index_t(B), index_t(L2), index_t(C)}, y2.strides()),
                         o);
    for (std::size_t i = 0; i < y_one.size(); ++i) REQUIRE(y_two[i] == y_one[i]);

    dilated_conv_state s_step(index_t(B), index_t(C), f.layers);
    const tensor_view<float, 3> ys(y_step.data(), x.dims());
    for (std::size_t t = 0; t < L; ++t)
      dilated_conv_step(tensor_view<const float, 2>(x.ptr(0, t, 0), {index_t(B), index_t(C)}, {x.stride(0), 1}),
                        f.layers, s_step, tensor_view<float, 2>(ys.ptr(0, t, 0), {index_t(B), index_t(C)}, {ys.stride(0), 1}),
                        o);
    for (std::size_t i = 0; i < y_one.size(); ++i) REQUIRE(y_step[i] == y_one[i]);
  }
}

TEST_CASE("long_conv direct path, fsmn_memory, dilated stack: threads(2) == float64 reference == serial",
          "[ssm][long_conv]") {
  // L = 150 is three row blocks of 64 per sequence, so two workers share rows
  // of one sequence as well as the two sequences.
  const std::size_t B = 2, L = 150, C = 19, K = 12;
  const auto xv = random_floats(B * L * C, 900), hv = random_floats(C * K, 901), dv = random_floats(C, 902);
  const auto want_conv = tokmix_test::lti_ref::long_conv(xv, B, L, C, hv, K, dv);
  const auto want_fsmn = tokmix_test::lti_ref::long_conv(xv, B, L, C, hv, K, std::vector<float>(C, 1.f));
  stack_fixture f(C, {{3, 1}, {2, 2}, {4, 5}, {2, 7}}, 903);
  const auto want_stack = tokmix_test::lti_ref::dilated(xv, B, L, C, f.ref, true);
  ssm_buffer x({B, L, C}, 3), h({C, K}, 1), d({C});
  x.fill(xv);
  h.fill(hv);
  d.fill(dv);
  std::vector<float> serial[4];
  for (int threads : {1, 2}) {
    INFO("threads " << threads);
    std::vector<float> got[4];
    long_conv_options lo;
    lo.path = long_conv_path::direct;
    lo.policy = exec_policy::threads(threads);
    {
      ssm_buffer out({B, L, C}, 2);
      long_conv(x.cview<3>(), h.cview<2>(), d.cview<1>(), out.view<3>(), lo);
      got[0] = out.dense();
      TOKMIX_REQUIRE_CLOSE(got[0].data(), want_conv.data(), got[0].size(), 2e-5 * std::sqrt(double(K)), 1e-4);
      REQUIRE(out.pads_untouched());
    }
    {
      // automatic takes the direct sum at 12 taps.
      lo.path = long_conv_path::automatic;
      ssm_buffer out({B, L, C}, 1);
      fsmn_memory(x.cview<3>(), h.cview<2>(), out.view<3>(), lo);
      got[1] = out.dense();
      TOKMIX_REQUIRE_CLOSE(got[1].data(), want_fsmn.data(), got[1].size(), 2e-5 * std::sqrt(double(K)), 1e-4);
      REQUIRE(out.pads_untouched());
    }
    dilated_conv_options dop;
    dop.silu = true;
    dop.policy = exec_policy::threads(threads);
    {
      ssm_buffer out({B, L, C}, 3);
      dilated_conv(x.cview<3>(), f.layers, out.view<3>(), dop);
      got[2] = out.dense();
      TOKMIX_REQUIRE_CLOSE(got[2].data(), want_stack.data(), got[2].size(), 1e-5, 1e-5);
      REQUIRE(out.pads_untouched());
    }
    {
      // Two threaded prefills (70 + 80 tokens) carry the state between them.
      ssm_buffer out({B, L, C}, 2);
      dilated_conv_state st(index_t(B), index_t(C), f.layers);
      const auto xs = x.cview<3>();
      const auto os = out.view<3>();
      const index_t L1 = 70, L2 = index_t(L) - L1;
      dilated_conv_prefill(tensor_view<const float, 3>(xs.data(), {index_t(B), L1, index_t(C)}, xs.strides()), f.layers,
                           st, tensor_view<float, 3>(os.data(), {index_t(B), L1, index_t(C)}, os.strides()), dop);
      dilated_conv_prefill(tensor_view<const float, 3>(xs.ptr(0, L1, 0), {index_t(B), L2, index_t(C)}, xs.strides()),
                           f.layers, st,
                           tensor_view<float, 3>(os.ptr(0, L1, 0), {index_t(B), L2, index_t(C)}, os.strides()), dop);
      got[3] = out.dense();
      TOKMIX_REQUIRE_CLOSE(got[3].data(), want_stack.data(), got[3].size(), 1e-5, 1e-5);
      REQUIRE(out.pads_untouched());
    }
    for (int i = 0; i < 4; ++i) {
      INFO("output " << i);
      if (threads == 1) serial[i] = got[i];
      else REQUIRE(got[i] == serial[i]);  // row blocks are independent: bit-identical
    }
  }
}

TEST_CASE("long_conv / dilated_conv: bad shapes and params throw and write nothing", "[ssm][long_conv]") {
  const index_t B = 1, L = 9, C = 5;
  std::vector<float> xv(B * L * C, 1.f), hv(C * 4, 0.5f), dv(C, 1.f), y(B * L * C, -7.f);
  const tensor_view<const float, 3> x(xv.data(), {B, L, C});
  const tensor_view<float, 3> out(y.data(), {B, L, C});
  auto untouched = [&] {
    for (float v : y) REQUIRE(v == -7.f);
  };
  CHECK_THROWS_AS(long_conv(x, tensor_view<const float, 2>(hv.data(), {C - 1, 4}), {}, out), argument_error);
  CHECK_THROWS_AS(long_conv(x, tensor_view<const float, 2>(hv.data(), {C, 0}), {}, out), argument_error);
  CHECK_THROWS_AS(long_conv(x, tensor_view<const float, 2>(hv.data(), {C, 4}), tensor_view<const float, 1>(dv.data(), {C - 1}), out),
                  argument_error);
  CHECK_THROWS_AS(long_conv(x, tensor_view<const float, 2>(hv.data(), {C, 4}), {},
                            tensor_view<float, 3>(y.data(), {B, L - 1, C})),
                  argument_error);
  hv[3] = std::numeric_limits<float>::quiet_NaN();
  CHECK_THROWS_AS(long_conv(x, tensor_view<const float, 2>(hv.data(), {C, 4}), {}, out), argument_error);
  hv[3] = 0.5f;
  dv[1] = std::numeric_limits<float>::infinity();
  CHECK_THROWS_AS(long_conv(x, tensor_view<const float, 2>(hv.data(), {C, 4}), tensor_view<const float, 1>(dv.data(), {C}), out),
                  argument_error);
  untouched();

  std::vector<dilated_conv_layer> layers{{tensor_view<const float, 2>(hv.data(), {C, 4}), {}, 2}};
  layers[0].dilation = 0;
  CHECK_THROWS_AS(dilated_conv(x, layers, out), argument_error);
  CHECK_THROWS_AS(dilated_conv_state(B, C, layers), argument_error);
  CHECK_THROWS_AS(dilated_conv(x, {}, out), argument_error);
  layers[0].dilation = 2;
  dilated_conv_state st(B + 1, C, layers);
  CHECK_THROWS_AS(dilated_conv_prefill(x, layers, st, out), argument_error);
  layers[0].weight = tensor_view<const float, 2>(hv.data(), {C + 1, 3});
  CHECK_THROWS_AS(dilated_conv(x, layers, out), argument_error);
  untouched();
}
