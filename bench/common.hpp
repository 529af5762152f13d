#pragma once
// Shared by every benchmark in tokmix_bench: the machine's own limits measured
// in-process (fp32 FMA peak, read bandwidth) and the counters that express a
// benchmark against them, so each result says how far from the hardware it is
// on the machine (and under the load) it ran on.
//
// Conventions for benchmark authors:
//   * name: `<case>/<param>:<value>/.../threads:<n>/<impl>`, impl last
//     (`tokmix`, `naive`, `libtorch`, `openblas`, ...); report.py pairs every
//     impl with the `/tokmix` run of the same case.
//   * the thread count is a tokmix exec_policy, part of the name; never use
//     Google Benchmark's ->Threads() (that runs the body on n threads at once).
//   * register through tokmix_bench::defaults(...) (real time, ms): tokmix
//     threads internally, so CPU time of the calling thread would be wrong.
//   * after the loop call set_gflops (compute-bound) or set_gbps (memory-bound)
//     with the work of ONE iteration.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <thread>
#include <vector>

#include <dlfcn.h>
#include <time.h>
#include <unistd.h>

#include <benchmark/benchmark.h>

// First, so Eigen and xsimd come in under tokmix's GCC 12 AVX-512 guard
// (core/third_party.hpp); Dense for the naive peers.
#include "tokmix/simd/arch.hpp"
TOKMIX_SIMD_AVX512_WARNINGS_OFF
#include <Eigen/Dense>
TOKMIX_SIMD_AVX512_WARNINGS_ON

#include "tokmix/core/scratch.hpp"

namespace tokmix_bench {

namespace detail {

using clock = std::chrono::steady_clock;

inline double thread_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

struct thread_times {
  double wall = 0;          // release to the last thread's end
  std::vector<double> cpu;  // CPU time each thread spent in fn
};

// Runs fn(t) on n fresh threads released together.
template <class Fn>
thread_times run_on_threads(int n, Fn&& fn) {
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  std::vector<clock::time_point> ends(static_cast<std::size_t>(n));
  thread_times out;
  out.cpu.resize(static_cast<std::size_t>(n));
  std::vector<std::thread> pool;
  pool.reserve(static_cast<std::size_t>(n));
  for (int t = 0; t < n; ++t) {
    pool.emplace_back([&, t] {
      ready.fetch_add(1);
      while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
      const double c0 = thread_cpu_seconds();
      fn(t);
      out.cpu[static_cast<std::size_t>(t)] = thread_cpu_seconds() - c0;
      ends[static_cast<std::size_t>(t)] = clock::now();
    });
  }
  while (ready.load() < n) std::this_thread::yield();
  const auto start = clock::now();
  go.store(true, std::memory_order_release);
  for (auto& th : pool) th.join();
  const auto end = *std::max_element(ends.begin(), ends.end());
  out.wall = std::chrono::duration<double>(end - start).count();
  return out;
}

// What the hardware does while the probe runs: per-thread work over that
// thread's CPU time, summed, so other processes on a shared machine (which
// take time slices, not speed) do not lower the peak. Capped by the wall-clock
// rate times the thread count / hardware threads ratio when oversubscribed.
inline double rate_from(const thread_times& tt, double work_per_thread) {
  double sum = 0;
  for (double c : tt.cpu) sum += work_per_thread / std::max(c, 1e-9);
  const int hw = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const int n = static_cast<int>(tt.cpu.size());
  if (n > hw) sum *= static_cast<double>(hw) / n;
  return sum;
}

// 12 independent FMA chains: Zen 3 has 2 FMA pipes with 4-cycle latency, so 8
// chains saturate it; 12 leave margin for other microarchitectures.
template <class Arch>
float fma_chains(Arch, long iterations, float seed) {
  using batch = xsimd::batch<float, Arch>;
  const batch m(0.999999f), c(1e-7f * seed);
  batch a0(seed), a1(seed + 1), a2(seed + 2), a3(seed + 3), a4(seed + 4), a5(seed + 5);
  batch a6(seed + 6), a7(seed + 7), a8(seed + 8), a9(seed + 9), a10(seed + 10), a11(seed + 11);
  for (long i = 0; i < iterations; ++i) {
    a0 = xsimd::fma(a0, m, c);
    a1 = xsimd::fma(a1, m, c);
    a2 = xsimd::fma(a2, m, c);
    a3 = xsimd::fma(a3, m, c);
    a4 = xsimd::fma(a4, m, c);
    a5 = xsimd::fma(a5, m, c);
    a6 = xsimd::fma(a6, m, c);
    a7 = xsimd::fma(a7, m, c);
    a8 = xsimd::fma(a8, m, c);
    a9 = xsimd::fma(a9, m, c);
    a10 = xsimd::fma(a10, m, c);
    a11 = xsimd::fma(a11, m, c);
  }
  const batch s = ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7)) + ((a8 + a9) + (a10 + a11));
  return xsimd::hadd(s);
}

constexpr int fma_chain_count = 12;

inline double flops_per_fma_iteration() {
  return 2.0 * fma_chain_count * static_cast<double>(xsimd::batch<float>::size);
}

// Sum of one slice with 4 independent accumulators (enough to hide add latency
// at memory speed).
template <class Arch>
float read_sum(Arch, const float* p, std::size_t n) {
  using batch = xsimd::batch<float, Arch>;
  constexpr std::size_t L = batch::size;
  batch s0(0.f), s1(0.f), s2(0.f), s3(0.f);
  const std::size_t body = n / (4 * L) * (4 * L);
  for (std::size_t i = 0; i < body; i += 4 * L) {
    s0 += batch::load_aligned(p + i);
    s1 += batch::load_aligned(p + i + L);
    s2 += batch::load_aligned(p + i + 2 * L);
    s3 += batch::load_aligned(p + i + 3 * L);
  }
  float tail = 0.f;
  for (std::size_t i = body; i < n; ++i) tail += p[i];
  return xsimd::hadd((s0 + s1) + (s2 + s3)) + tail;
}

struct aligned_free {
  void operator()(float* p) const { xsimd::aligned_free(p); }
};

struct std_free {
  void operator()(float* p) const { std::free(p); }
};

// The probe's buffer gets transparent huge pages where the kernel offers them,
// as tokmix's KV caches do: the peak must be the best this machine streams,
// not a 4 KiB-page TLB-bound figure.
inline std::unique_ptr<float, std_free> huge_page_floats(std::size_t n) {
  return std::unique_ptr<float, std_free>(static_cast<float*>(tokmix::alloc_streamed(n * sizeof(float))));
}

template <class Probe>
double cached(std::map<int, double>& cache, std::mutex& m, int threads, Probe&& probe) {
  std::lock_guard<std::mutex> lock(m);
  auto it = cache.find(threads);
  if (it != cache.end()) return it->second;
  const double v = probe();
  cache[threads] = v;
  return v;
}

}  // namespace detail

// Bytes the bandwidth probe streams: at least 256 MB and 4x the last-level
// cache (some server parts have 256+ MB of L3), at most 1 GiB.
inline std::size_t read_probe_bytes() {
  static const std::size_t bytes = [] {
    std::size_t b = std::size_t(256) << 20;
#ifdef _SC_LEVEL3_CACHE_SIZE
    const long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
    if (l3 > 0) b = std::max(b, 4 * static_cast<std::size_t>(l3));
#endif
    return std::min(b, std::size_t(1) << 30);
  }();
  return bytes;
}

// fp32 FMA peak in GFLOP/s on `threads` threads, measured once per process and
// thread count (best of several trials, rates over each thread's CPU time).
inline double fma_peak_gflops(int threads) {
  static std::map<int, double> cache;
  static std::mutex m;
  threads = std::max(1, threads);
  return detail::cached(cache, m, threads, [threads] {
    constexpr long iterations = 40'000'000;  // ~0.1 s per trial at ~100 GFLOP/s
    std::vector<float> sink(static_cast<std::size_t>(threads));
    double best = 0;
    for (int trial = 0; trial < 5; ++trial) {
      const auto tt = detail::run_on_threads(threads, [&](int t) {
        sink[static_cast<std::size_t>(t)] =
            detail::fma_chains(xsimd::default_arch{}, iterations, 1.0f + static_cast<float>(t + trial));
      });
      benchmark::DoNotOptimize(sink.data());
      best = std::max(best, detail::rate_from(tt, detail::flops_per_fma_iteration() * iterations) * 1e-9);
    }
    return best;
  });
}

// Read-only streaming bandwidth in GB/s (1e9 bytes/s) on `threads` threads,
// measured once per process and thread count.
inline double read_bandwidth_gbps(int threads) {
  static std::map<int, double> cache;
  static std::mutex m;
  threads = std::max(1, threads);
  return detail::cached(cache, m, threads, [threads] {
    const std::size_t n = read_probe_bytes() / sizeof(float);
    auto buf = detail::huge_page_floats(n);
    // Each thread reads the slice it wrote (first touch places pages near it).
    const std::size_t per = (n / static_cast<std::size_t>(threads)) / 64 * 64;
    auto slice_begin = [&](int t) { return static_cast<std::size_t>(t) * per; };
    auto slice_end = [&](int t) { return t == threads - 1 ? n : slice_begin(t + 1); };
    detail::run_on_threads(threads, [&](int t) {
      std::fill(buf.get() + slice_begin(t), buf.get() + slice_end(t), 1.0f);
    });
    std::vector<float> sink(static_cast<std::size_t>(threads));
    double best = 0;
    for (int trial = 0; trial < 5; ++trial) {
      const auto tt = detail::run_on_threads(threads, [&](int t) {
        sink[static_cast<std::size_t>(t)] =
            detail::read_sum(xsimd::default_arch{}, buf.get() + slice_begin(t), slice_end(t) - slice_begin(t));
      });
      benchmark::DoNotOptimize(sink.data());
      // Slices are equal but for the last's remainder: use the average size.
      best = std::max(best, detail::rate_from(tt, static_cast<double>(n * sizeof(float)) / threads) * 1e-9);
    }
    return best;
  });
}

// Compute-bound result: GFLOPS and frac_of_peak (vs fma_peak_gflops(threads)).
inline void set_gflops(benchmark::State& state, double flops_per_iteration, int threads) {
  const double peak = fma_peak_gflops(threads);
  const double giga = flops_per_iteration * 1e-9;
  state.counters["GFLOPS"] = benchmark::Counter(giga, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["frac_of_peak"] = benchmark::Counter(giga / peak, benchmark::Counter::kIsIterationInvariantRate);
}

// Memory-bound result: GBps and frac_of_peak (vs read_bandwidth_gbps(threads)).
inline void set_gbps(benchmark::State& state, double bytes_per_iteration, int threads) {
  const double peak = read_bandwidth_gbps(threads);
  const double giga = bytes_per_iteration * 1e-9;
  state.counters["GBps"] = benchmark::Counter(giga, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["frac_of_peak"] = benchmark::Counter(giga / peak, benchmark::Counter::kIsIterationInvariantRate);
}

// Threads of the BLAS under a peer. Debian's LibTorch runs its products on
// OpenBLAS, whose own thread pool ignores torch::set_num_threads: without this
// a "threads:1" LibTorch run used every core. Found at run time, so builds
// without OpenBLAS are unaffected.
inline void set_blas_threads(int threads) {
  using setter = void (*)(int);
  if (auto f = reinterpret_cast<setter>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"))) f(threads);
}

// The registration settings every tokmix benchmark uses (see the top of this file).
inline benchmark::internal::Benchmark* defaults(benchmark::internal::Benchmark* b) {
  return b->UseRealTime()->Unit(benchmark::kMillisecond);
}

}  // namespace tokmix_bench
