// The SIMD primitives every mixer is built from, against what a kernel would
// otherwise call: exp (tokmix vs glibc expf in a loop vs xsimd::exp), dot and
// axpy (tokmix vs Eigen, in L1 and from DRAM), fp16 -> fp32 widening (tokmix vs
// Eigen's cast, the KV-cache decode path) and the online-softmax row update.
//
// exp counters: Gexp_per_s, plus GFLOPS / frac_of_peak at a nominal 19 FLOP per
// exp (tokmix's own evaluation: 1 + 2 + 2 FMA for the reduction, 6 FMA for the
// polynomial and exponent, counted 2 each, and 1 subtract), the same for every
// impl so that the GFLOPS ratio is the throughput ratio and frac_of_peak says
// how close an exp kernel comes to keeping the FMA pipes busy.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <string>
#include <type_traits>
#include <vector>

#include "common.hpp"
#include "tokmix/simd.hpp"

namespace {

using tokmix::index_t;
namespace ts = tokmix::simd;

constexpr double exp_nominal_flops = 19.0;

std::vector<float> ramp(std::size_t n, float lo, float hi) {
  std::vector<float> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = lo + (hi - lo) * static_cast<float>(i % 1024) / 1024.f;
  return v;
}

void set_exp_counters(benchmark::State& state, index_t n) {
  state.counters["Gexp_per_s"] =
      benchmark::Counter(static_cast<double>(n) * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  tokmix_bench::set_gflops(state, exp_nominal_flops * static_cast<double>(n), 1);
}

// Attention-score-like inputs: [-20, 0] with some masked (-inf) entries.
std::vector<float> exp_inputs(index_t n) {
  auto x = ramp(static_cast<std::size_t>(n), -20.f, 0.f);
  for (std::size_t i = 0; i < x.size(); i += 17) x[i] = -INFINITY;
  return x;
}

void bm_exp_tokmix(benchmark::State& state, index_t n) {
  const auto x = exp_inputs(n);
  std::vector<float> y(x.size());
  for (auto _ : state) {
    ts::exp(x.data(), y.data(), n);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  set_exp_counters(state, n);
}

#if XSIMD_WITH_FMA3_AVX2
// The same kernel pinned to 8-lane AVX2 + FMA, for builds whose default is
// AVX-512: the number comparable with the AVX2 anchors.
void bm_exp_tokmix_avx2(benchmark::State& state, index_t n) {
  const auto x = exp_inputs(n);
  std::vector<float> y(x.size());
  for (auto _ : state) {
    ts::detail::exp_kernel(xsimd::fma3<xsimd::avx2>{}, x.data(), y.data(), n);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  set_exp_counters(state, n);
}

void bm_exp_xsimd_avx2(benchmark::State& state, index_t n) {
  const auto x = exp_inputs(n);
  std::vector<float> y(x.size());
  using arch = xsimd::fma3<xsimd::avx2>;
  for (auto _ : state) {
    ts::detail::map_unary(arch{}, x.data(), y.data(), n, [](const ts::fbatch<arch>& v) { return xsimd::exp(v); });
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  set_exp_counters(state, n);
}
#endif

void bm_exp_std(benchmark::State& state, index_t n) {
  const auto x = exp_inputs(n);
  std::vector<float> y(x.size());
  for (auto _ : state) {
    for (index_t i = 0; i < n; ++i) y[static_cast<std::size_t>(i)] = std::exp(x[static_cast<std::size_t>(i)]);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  set_exp_counters(state, n);
}

void bm_exp_xsimd(benchmark::State& state, index_t n) {
  const auto x = exp_inputs(n);
  std::vector<float> y(x.size());
  using arch = ts::default_arch;
  for (auto _ : state) {
    ts::detail::map_unary(arch{}, x.data(), y.data(), n, [](const ts::fbatch<arch>& v) { return xsimd::exp(v); });
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  set_exp_counters(state, n);
}

void bm_dot(benchmark::State& state, index_t n, bool eigen) {
  const auto a = ramp(static_cast<std::size_t>(n), -1.f, 1.f), b = ramp(static_cast<std::size_t>(n), 0.f, 2.f);
  for (auto _ : state) {
    float s = eigen ? Eigen::Map<const Eigen::VectorXf>(a.data(), n).dot(Eigen::Map<const Eigen::VectorXf>(b.data(), n))
                    : ts::dot(a.data(), b.data(), n);
    benchmark::DoNotOptimize(s);
  }
  tokmix_bench::set_gbps(state, 2.0 * sizeof(float) * static_cast<double>(n), 1);
}

void bm_axpy(benchmark::State& state, index_t n, bool eigen) {
  const auto x = ramp(static_cast<std::size_t>(n), -1.f, 1.f);
  std::vector<float> y(x.size(), 0.f);
  for (auto _ : state) {
    if (eigen)
      Eigen::Map<Eigen::VectorXf>(y.data(), n) += 1e-3f * Eigen::Map<const Eigen::VectorXf>(x.data(), n);
    else
      ts::axpy(1e-3f, x.data(), y.data(), n);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  // x read, y read and written.
  tokmix_bench::set_gbps(state, 3.0 * sizeof(float) * static_cast<double>(n), 1);
}

void bm_half_to_float(benchmark::State& state, index_t n, bool eigen) {
  std::vector<Eigen::half> h(static_cast<std::size_t>(n));
  const auto src = ramp(h.size(), -8.f, 8.f);
  for (std::size_t i = 0; i < h.size(); ++i) h[i] = Eigen::half(src[i]);
  std::vector<float> y(h.size());
  for (auto _ : state) {
    if (eigen)
      Eigen::Map<Eigen::VectorXf>(y.data(), n) = Eigen::Map<const Eigen::Matrix<Eigen::half, Eigen::Dynamic, 1>>(h.data(), n).cast<float>();
    else
      ts::convert(h.data(), y.data(), n);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  tokmix_bench::set_gbps(state, (sizeof(Eigen::half) + sizeof(float)) * static_cast<double>(n), 1);
}

// One score tile per row update, as flash attention calls it (max, exp, sum).
void bm_online_softmax(benchmark::State& state, index_t n) {
  const auto s0 = exp_inputs(n);
  std::vector<float> s(s0.size());
  for (auto _ : state) {
    std::copy(s0.begin(), s0.end(), s.begin());
    float m = -INFINITY, l = 0.f;
    float alpha = ts::online_softmax_update(s.data(), n, m, l);
    benchmark::DoNotOptimize(alpha);
    benchmark::DoNotOptimize(s.data());
  }
  set_exp_counters(state, n);
}

std::string name(const std::string& op, index_t n, const char* impl) {
  return "simd_" + op + "/n:" + std::to_string(n) + "/threads:1/" + impl;
}

template <class F, class... A>
void reg(const std::string& n, F f, A... args) {
  tokmix_bench::defaults(benchmark::RegisterBenchmark(n.c_str(), f, args...))->Unit(benchmark::kMicrosecond);
}

const bool registered = [] {
  for (index_t n : {index_t(4096), index_t(1) << 20}) {
    reg(name("exp", n, "tokmix"), bm_exp_tokmix, n);
#if XSIMD_WITH_FMA3_AVX2
    if (!std::is_same<ts::default_arch, xsimd::fma3<xsimd::avx2>>::value) {
      reg(name("exp", n, "tokmix_avx2"), bm_exp_tokmix_avx2, n);
      reg(name("exp", n, "xsimd_avx2"), bm_exp_xsimd_avx2, n);
    }
#endif
    reg(name("exp", n, "std"), bm_exp_std, n);
    reg(name("exp", n, "xsimd"), bm_exp_xsimd, n);
  }
  reg(name("online_softmax", 512, "tokmix"), bm_online_softmax, index_t(512));
  for (index_t n : {index_t(4096), index_t(1) << 22}) {
    reg(name("dot", n, "tokmix"), bm_dot, n, false);
    reg(name("dot", n, "eigen"), bm_dot, n, true);
    reg(name("axpy", n, "tokmix"), bm_axpy, n, false);
    reg(name("axpy", n, "eigen"), bm_axpy, n, true);
    reg(name("half_to_float", n, "tokmix"), bm_half_to_float, n, false);
    reg(name("half_to_float", n, "eigen"), bm_half_to_float, n, true);
  }
  return true;
}();

}  // namespace
