// tokmix_bench entry point: measures the machine's limits first (so every
// frac_of_peak in this run is relative to the same process, under the same
// load), records them and the build's setup in the JSON context, then runs
// every registered benchmark.
#include <cstdio>
#include <string>

#include <benchmark/benchmark.h>

#include "common.hpp"
#include "tokmix/version.hpp"

namespace {

std::string fixed(double v, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

}  // namespace

int main(int argc, char** argv) {
  // Listing runs nothing, so it skips the probes (a few seconds).
  bool listing = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--benchmark_list_tests" || a == "--benchmark_list_tests=true") listing = true;
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;

  benchmark::AddCustomContext("tokmix_version", TOKMIX_VERSION_STRING);
  benchmark::AddCustomContext("simd_arch", xsimd::default_arch::name());
#if defined(TOKMIX_BENCH_HAVE_TORCH)
  benchmark::AddCustomContext("libtorch_peer", "yes");
#else
  benchmark::AddCustomContext("libtorch_peer", "no");
#endif
#if defined(TOKMIX_BENCH_HAVE_CBLAS)
  benchmark::AddCustomContext("cblas_peer", "yes");
#else
  benchmark::AddCustomContext("cblas_peer", "no");
#endif

  for (int threads : {1, 2}) {
    if (listing) break;
    const double peak = tokmix_bench::fma_peak_gflops(threads);
    const double bw = tokmix_bench::read_bandwidth_gbps(threads);
    const std::string t = std::to_string(threads);
    std::fprintf(stderr, "tokmix_bench: threads=%d fp32 FMA peak %.1f GFLOP/s, read bandwidth %.1f GB/s (%s)\n",
                 threads, peak, bw, xsimd::default_arch::name());
    benchmark::AddCustomContext("fma_peak_gflops_threads_" + t, fixed(peak, 2));
    benchmark::AddCustomContext("read_bandwidth_gbps_threads_" + t, fixed(bw, 2));
  }

  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
