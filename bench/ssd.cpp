// Mamba-2 SSD at the shape (24 heads x P = 64, N = 128, one group,
// batch 1): the chunked prefill (`/tokmix`) against tokmix's own one-token step
// called in a loop over the sequence (`/recurrent`, the only form ggml runs on
// CPU) in the same run, L = 512, 4096, 65536; a chunk-size sweep; per-token
// step latency; Hydra (two chunked scans) at L = 4096.
//
// FLOPs counted for the chunked prefill (chunk Q dividing L; the products it
// runs, full Q x Q tiles although half is masked):
//   per chunk and head : C h^T 2QPN + state update 2QPN + (CB^T . L) X 2Q^2 P
//   per chunk and group: C B^T 2Q^2 N, once per slice of heads (one slice per
//                        thread; it does not depend on the head)
//   total: L (H (4PN + 2QP) + slices 2QN)   (P=64, N=128, Q=64, H=24: 41643 per token and head)
// Token loop: 5PN per token and head (decay multiply, update FMA, output FMA).
// Exps, softplus, D skip are not counted.
#include <cmath>
#include <cstddef>
#include <string>
#include <vector>

#include "common.hpp"
#include "tokmix/ssm/hydra.hpp"
#include "tokmix/ssm/ssd.hpp"

namespace {

using tokmix::index_t;

constexpr index_t bench_heads = 24, bench_p = 64, bench_n = 128;

std::vector<float> uniform(std::size_t n, unsigned seed, float lo, float hi) {
  std::vector<float> v(n);
  unsigned s = seed * 2654435761u + 1;
  for (auto& x : v) {
    s = s * 1664525u + 1013904223u;
    x = lo + (hi - lo) * static_cast<float>(s >> 8) / 16777216.f;
  }
  return v;
}

double chunk_flops(index_t seq, index_t chunk, int threads) {
  const double L = double(seq), H = double(bench_heads), P = double(bench_p), N = double(bench_n);
  const double Q = double(chunk), slices = double(std::min<index_t>(bench_heads, threads));
  return L * (H * (4 * P * N + 2 * Q * P) + slices * 2 * Q * N);
}

double token_loop_flops(index_t seq) { return 5.0 * double(bench_heads) * double(seq) * bench_p * bench_n; }

// One layer's inputs, batch 1, Mamba-2's parameterisation (dt through softplus
// with a bias, A = -exp(A_log), D per head).
struct data {
  index_t seq;
  std::vector<float> x, dt, B, C, A, D, bias, y;
  explicit data(index_t l) : seq(l) {
    const std::size_t tok = std::size_t(l);
    x = uniform(tok * bench_heads * bench_p, 1, -1.f, 1.f);
    dt = uniform(tok * bench_heads, 2, -4.f, 0.f);
    B = uniform(tok * bench_n, 3, -1.f, 1.f);
    C = uniform(tok * bench_n, 4, -1.f, 1.f);
    A = uniform(bench_heads, 5, 0.f, 2.7f);
    for (float& a : A) a = -std::exp(a);
    D = uniform(bench_heads, 6, 0.5f, 1.5f);
    bias = uniform(bench_heads, 7, -2.f, 0.f);
    y.assign(x.size(), 0.f);
  }
  tokmix::ssd_params params(index_t chunk, int threads) const {
    tokmix::ssd_params p;
    p.D = {D.data(), {bench_heads, 1}};
    p.dt_bias = {bias.data(), {bench_heads}};
    p.dt_softplus = true;
    p.chunk_size = chunk;
    p.policy = tokmix::exec_policy::threads(threads);
    return p;
  }
};

void bm_prefill(benchmark::State& state, index_t seq, index_t chunk, int threads, bool chunked) {
  data s(seq);
  const auto prm = s.params(chunk, threads);
  tokmix::ssd_state st(1, bench_heads, bench_p, bench_n);
  const tokmix::tensor_view<const float, 1> A(s.A.data(), {bench_heads});
  for (auto _ : state) {
    if (chunked) {
      tokmix::ssd_prefill({s.x.data(), {1, seq, bench_heads, bench_p}}, {s.dt.data(), {1, seq, bench_heads}}, A,
                          {s.B.data(), {1, seq, 1, bench_n}}, {s.C.data(), {1, seq, 1, bench_n}}, st,
                          {s.y.data(), {1, seq, bench_heads, bench_p}}, prm);
    } else {
      for (index_t t = 0; t < seq; ++t) {
        const std::size_t xo = std::size_t(t) * bench_heads * bench_p, bo = std::size_t(t) * bench_n;
        tokmix::ssd_step({s.x.data() + xo, {1, bench_heads, bench_p}}, {s.dt.data() + t * bench_heads, {1, bench_heads}},
                         A, {s.B.data() + bo, {1, 1, bench_n}}, {s.C.data() + bo, {1, 1, bench_n}}, st,
                         {s.y.data() + xo, {1, bench_heads, bench_p}}, prm);
      }
    }
    benchmark::DoNotOptimize(s.y.data());
    benchmark::ClobberMemory();
  }
  tokmix_bench::set_gflops(state, chunked ? chunk_flops(seq, chunk, threads) : token_loop_flops(seq), threads);
}

// One decode token for every head.
void bm_step(benchmark::State& state) {
  data s(1);
  const auto prm = s.params(1, 1);
  tokmix::ssd_state st(1, bench_heads, bench_p, bench_n);
  for (auto _ : state) {
    tokmix::ssd_step({s.x.data(), {1, bench_heads, bench_p}}, {s.dt.data(), {1, bench_heads}}, {s.A.data(), {bench_heads}},
                     {s.B.data(), {1, 1, bench_n}}, {s.C.data(), {1, 1, bench_n}}, st,
                     {s.y.data(), {1, bench_heads, bench_p}}, prm);
    benchmark::DoNotOptimize(s.y.data());
    benchmark::ClobberMemory();
  }
  state.counters["us_per_token"] =
      benchmark::Counter(1e6, benchmark::Counter::kIsIterationInvariantRate | benchmark::Counter::kInvert);
  tokmix_bench::set_gflops(state, token_loop_flops(1), 1);
}

void bm_hydra(benchmark::State& state, index_t seq, int threads) {
  data s(seq);
  const auto prm = s.params(tokmix::ssd_default_chunk, threads);
  for (auto _ : state) {
    tokmix::hydra_forward({s.x.data(), {1, seq, bench_heads, bench_p}}, {s.dt.data(), {1, seq, bench_heads}},
                          {s.A.data(), {bench_heads}}, {s.B.data(), {1, seq, 1, bench_n}},
                          {s.C.data(), {1, seq, 1, bench_n}}, {s.y.data(), {1, seq, bench_heads, bench_p}}, prm);
    benchmark::DoNotOptimize(s.y.data());
    benchmark::ClobberMemory();
  }
  tokmix_bench::set_gflops(state, 2 * chunk_flops(seq, tokmix::ssd_default_chunk, threads), threads);
}

const bool registered = [] {
  const std::string base = "ssd/heads:24/P:64/N:128";
  for (index_t L : {index_t(512), index_t(4096), index_t(65536)})
    for (int threads : {1, 2}) {
      if (threads == 2 && L != 4096) continue;
      const std::string name = base + "/L:" + std::to_string(L) + "/threads:" + std::to_string(threads);
      for (bool chunked : {true, false}) {
        auto* b = tokmix_bench::defaults(benchmark::RegisterBenchmark(
            (name + (chunked ? "/tokmix" : "/recurrent")).c_str(), bm_prefill, L, tokmix::ssd_default_chunk, threads,
            chunked));
        if (L == 65536) b->Iterations(2);
      }
    }
  for (index_t chunk : {index_t(16), index_t(32), index_t(64), index_t(128), index_t(256)})
    if (chunk != tokmix::ssd_default_chunk)
      tokmix_bench::defaults(benchmark::RegisterBenchmark(
        (base + "/L:4096/chunk:" + std::to_string(chunk) + "/threads:1/tokmix").c_str(), bm_prefill, index_t(4096),
        chunk, 1, true));
  tokmix_bench::defaults(benchmark::RegisterBenchmark((std::string("ssd_step/heads:24/P:64/N:128/threads:1/tokmix")).c_str(), bm_step))
      ->Unit(benchmark::kMicrosecond);
  tokmix_bench::defaults(
      benchmark::RegisterBenchmark("hydra/heads:24/P:64/N:128/L:4096/threads:1/tokmix", bm_hydra, index_t(4096), 1));
  return true;
}();

}  // namespace
