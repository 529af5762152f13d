// Benchmarks of the peak probes themselves: they should report frac_of_peak
// close to 1, which checks that the counters and the probes agree. The Eigen
// read is a peer showing what an ordinary vectorised reduction reaches.
#include <cstddef>
#include <memory>
#include <string>

#include "common.hpp"

namespace {

void bm_fma_peak(benchmark::State& state, int threads) {
  constexpr long iterations = 2'000'000;
  std::vector<float> sink(static_cast<std::size_t>(threads));
  for (auto _ : state) {
    tokmix_bench::detail::run_on_threads(threads, [&](int t) {
      sink[static_cast<std::size_t>(t)] =
          tokmix_bench::detail::fma_chains(xsimd::default_arch{}, iterations, 1.0f + static_cast<float>(t));
    });
    benchmark::DoNotOptimize(sink.data());
  }
  tokmix_bench::set_gflops(state, tokmix_bench::detail::flops_per_fma_iteration() * iterations * threads, threads);
}

// One thread only: a multi-threaded Eigen reduction is not what this measures.
void bm_read(benchmark::State& state, bool eigen) {
  const std::size_t n = tokmix_bench::read_probe_bytes() / sizeof(float);
  std::unique_ptr<float, tokmix_bench::detail::aligned_free> buf(
      static_cast<float*>(xsimd::aligned_malloc(n * sizeof(float), 64)));
  std::fill(buf.get(), buf.get() + n, 1.0f);
  for (auto _ : state) {
    float s = eigen ? Eigen::Map<const Eigen::VectorXf, Eigen::Aligned64>(buf.get(), static_cast<Eigen::Index>(n)).sum()
                    : tokmix_bench::detail::read_sum(xsimd::default_arch{}, buf.get(), n);
    benchmark::DoNotOptimize(s);
  }
  tokmix_bench::set_gbps(state, static_cast<double>(n * sizeof(float)), 1);
}

const bool registered = [] {
  for (int threads : {1, 2})
    tokmix_bench::defaults(benchmark::RegisterBenchmark(
        ("probe_fma_peak/threads:" + std::to_string(threads) + "/tokmix").c_str(), bm_fma_peak, threads));
  tokmix_bench::defaults(benchmark::RegisterBenchmark("probe_read/threads:1/tokmix", bm_read, false));
  tokmix_bench::defaults(benchmark::RegisterBenchmark("probe_read/threads:1/eigen", bm_read, true));
  return true;
}();

}  // namespace
