// Long convolutions, diagonal LTI SSMs and AFT at long L (batch 1, one thread):
//   long_conv  d = 256, filter as long as the sequence: the automatic path
//              (`/tokmix`) beside the forced FFT (`/fft`) and SIMD direct sum
//              (`/direct`, up to L = 8192);
//   s4d        H = 256, N = 64, prefill on the automatic path (`/tokmix`)
//              beside the forced FFT kernel path (`/fft`) and recurrence
//              (`/recurrent`), from a non-zero state so all also produce the
//              final state;
//   aft_simple causal and aft_local (window 64, causal) at d = 256.
// Linear-time cases are run at L = 4096 and 65536: t(65536)/t(4096) <= 17 is
// the target (16 is linear).
//
// FLOPs (model counts, the same for every impl of a case so rates compare):
//   long_conv: 2 d sum_t min(t + 1, K)  (the direct sum; the FFT does fewer, so
//              its GFLOPS are direct-equivalent and can pass the peak);
//              short filters (K = 16, 64, 256 at L = 8192) place the switch
//   s4d      : 10 L H N  (complex multiply-add of the state, real output term)
//   aft      : local 4 L d s (exps not counted); simple is reported as
//              bandwidth (q, k, v read and y written once: 16 L d bytes)
#include <cmath>
#include <cstddef>
#include <string>
#include <vector>

#include "common.hpp"
#include "tokmix/ssm/aft.hpp"
#include "tokmix/ssm/long_conv.hpp"
#include "tokmix/ssm/lti.hpp"

namespace {

using tokmix::index_t;
using tokmix::tensor_view;

std::vector<float> uniform(std::size_t n, unsigned seed, float lo, float hi) {
  std::vector<float> v(n);
  unsigned s = seed * 2654435761u + 1;
  for (auto& x : v) {
    s = s * 1664525u + 1013904223u;
    x = lo + (hi - lo) * static_cast<float>(s >> 8) / 16777216.f;
  }
  return v;
}

constexpr index_t conv_d = 256, ssm_h = 256, ssm_n = 64, aft_d = 256, aft_window = 64;

void bm_long_conv(benchmark::State& state, index_t L, index_t K, tokmix::long_conv_path path) {
  const auto x = uniform(std::size_t(L * conv_d), 1, -1.f, 1.f);
  auto h = uniform(std::size_t(K * conv_d), 2, -1.f, 1.f);
  std::vector<float> y(x.size());
  tokmix::long_conv_options o;
  o.path = path;
  for (auto _ : state) {
    tokmix::long_conv(tensor_view<const float, 3>(x.data(), {1, L, conv_d}),
                      tensor_view<const float, 2>(h.data(), {conv_d, K}), {},
                      tensor_view<float, 3>(y.data(), {1, L, conv_d}), o);
    benchmark::DoNotOptimize(y.data());
  }
  // 2 d sum_t min(t + 1, K)
  const double taps = double(K) * double(L) - double(K) * double(K - 1) / 2;
  tokmix_bench::set_gflops(state, 2.0 * double(conv_d) * taps, 1);
}

void bm_s4d(benchmark::State& state, index_t L, tokmix::lti_path path) {
  const std::size_t hn = std::size_t(ssm_h * ssm_n);
  auto ar = uniform(hn, 1, -1.f, -0.01f), ai = uniform(hn, 2, -3.f, 3.f), br = uniform(hn, 3, -1.f, 1.f),
       bi = uniform(hn, 4, -1.f, 1.f), cr = uniform(hn, 5, -1.f, 1.f), ci = uniform(hn, 6, -1.f, 1.f);
  const auto dt = uniform(std::size_t(ssm_h), 7, 0.001f, 0.1f), d = uniform(std::size_t(ssm_h), 8, -1.f, 1.f);
  auto m2 = [](const std::vector<float>& v) { return tensor_view<const float, 2>(v.data(), {ssm_h, ssm_n}); };
  const tokmix::lti_system sys = tokmix::s4d_zoh(m2(ar), m2(ai), m2(br), m2(bi), m2(cr), m2(ci),
                                                 tensor_view<const float, 1>(dt.data(), {ssm_h}),
                                                 tensor_view<const float, 1>(d.data(), {ssm_h}));
  const auto u = uniform(std::size_t(L * ssm_h), 9, -1.f, 1.f);
  std::vector<float> y(u.size());
  tokmix::lti_state st(1, ssm_h, ssm_n);
  tokmix::lti_options o;
  o.path = path;
  for (auto _ : state) {
    state.PauseTiming();
    st.re().data()[0] = 0.5f;  // a non-zero start: the free response is part of the work
    state.ResumeTiming();
    tokmix::lti_prefill(tensor_view<const float, 3>(u.data(), {1, L, ssm_h}), sys.params(), st,
                        tensor_view<float, 3>(y.data(), {1, L, ssm_h}), o);
    benchmark::DoNotOptimize(y.data());
  }
  tokmix_bench::set_gflops(state, 10.0 * double(L) * ssm_h * ssm_n, 1);
}

void bm_aft(benchmark::State& state, index_t L, bool local) {
  const std::size_t n = std::size_t(L * aft_d);
  const auto q = uniform(n, 1, -2.f, 2.f), k = uniform(n, 2, -3.f, 3.f), v = uniform(n, 3, -1.f, 1.f);
  const auto w = uniform(std::size_t(L * (2 * aft_window - 1)), 4, -1.f, 1.f);
  std::vector<float> y(n);
  tokmix::aft_options o;
  o.causal = true;
  const tensor_view<const float, 3> qv(q.data(), {1, L, aft_d}), kv(k.data(), {1, L, aft_d}), vv(v.data(), {1, L, aft_d});
  const tensor_view<float, 3> yv(y.data(), {1, L, aft_d});
  for (auto _ : state) {
    if (local)
      tokmix::aft_local(qv, kv, vv, tensor_view<const float, 2>(w.data(), {L, 2 * aft_window - 1}), aft_window, yv, o);
    else
      tokmix::aft_simple(qv, kv, vv, yv, o);
    benchmark::DoNotOptimize(y.data());
  }
  // AFT-simple streams q, k, v and y once: a bandwidth case.
  if (local) tokmix_bench::set_gflops(state, 4.0 * double(L) * aft_d * aft_window, 1);
  else tokmix_bench::set_gbps(state, 4.0 * double(n) * sizeof(float), 1);
}

// `/tokmix` is the automatic path (what a caller gets by default); the forced
// paths run beside it under their own names.
const char* impl_name(tokmix::long_conv_path p) {
  return p == tokmix::long_conv_path::automatic ? "/tokmix" : p == tokmix::long_conv_path::fft ? "/fft" : "/direct";
}
const char* impl_name(tokmix::lti_path p) {
  return p == tokmix::lti_path::automatic ? "/tokmix" : p == tokmix::lti_path::fft ? "/fft" : "/recurrent";
}

const bool registered = [] {
  using lc = tokmix::long_conv_path;
  for (index_t L : {index_t(1024), index_t(8192), index_t(65536)})
    for (auto path : {lc::automatic, lc::fft, lc::direct}) {
      if (path == lc::direct && L > 8192) continue;
      auto* b = tokmix_bench::defaults(benchmark::RegisterBenchmark(
          ("long_conv/d:256/L:" + std::to_string(L) + "/threads:1" + impl_name(path)).c_str(), bm_long_conv, L, L,
          path));
      if (L >= 8192) b->Iterations(1);
    }
  // Short filters: where long_conv_path::automatic switches (long_conv_direct_max_taps).
  for (index_t K : {index_t(16), index_t(64), index_t(256)})
    for (auto path : {lc::automatic, lc::fft, lc::direct})
      tokmix_bench::defaults(benchmark::RegisterBenchmark(
          ("long_conv/d:256/L:8192/taps:" + std::to_string(K) + "/threads:1" + impl_name(path)).c_str(),
          bm_long_conv, index_t(8192), K, path));
  for (index_t L : {index_t(4096), index_t(65536)})
    for (auto path : {tokmix::lti_path::automatic, tokmix::lti_path::fft, tokmix::lti_path::recurrent}) {
      auto* b = tokmix_bench::defaults(benchmark::RegisterBenchmark(
          ("s4d/H:256/N:64/L:" + std::to_string(L) + "/threads:1" + impl_name(path)).c_str(), bm_s4d, L, path));
      if (L == 65536) b->Iterations(1);
    }
  for (index_t L : {index_t(4096), index_t(65536)})
    for (bool local : {false, true}) {
      auto* b = tokmix_bench::defaults(benchmark::RegisterBenchmark(
          (std::string(local ? "aft_local/window:64" : "aft_simple") + "/d:256/causal/L:" + std::to_string(L) +
           "/threads:1/tokmix")
              .c_str(),
          bm_aft, L, local));
      if (L == 65536) b->Iterations(2);
    }
  return true;
}();

}  // namespace
