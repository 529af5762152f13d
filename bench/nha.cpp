// NHA (native hybrid attention): the chunked prefill (`/tokmix`) against
// tokmix's own SIMD token loop (`/recurrent`, the form a decode loop or a
// port of the authors' fused_recurrent kernel runs) in the same run, at the two
// head shapes of the issue and L = 512 .. 65536, window 64, 64 slots (the
// authors' chunk kernel caps the window at its chunk, 64, and defaults the
// slot count to the head dim); plus per-token step latency with a full window.
//
// FLOPs counted (per head, d_k = d_v = d, m slots, window w, chunk C = 64
// dividing L; the products the chunked kernel runs, full tiles although parts
// are masked; the window runs blocks of b = 32 query tokens over span = b + w - 1 keys):
//   slots  : P = Qs Kw^T 2C^2 d, Qs Ks^T 2Cmd, P SG 2C^2 m, (p R) SG^T 2C^2 m,
//            p Vs 2Cmd, B Vw 2C^2 d, state updates 4Cmd
//   window : scores and P V, 4 C span d
//   per token: 4Cd + 4Cm + 8md + 4 span d
// The token loop counts its own: slot update 4md, slot scores and readout 4md,
// window scores and readout 4wd per token. Gate exps and masks are not counted.
#include <cmath>
#include <cstddef>
#include <string>
#include <vector>

#include "common.hpp"
#include "tokmix/linear.hpp"

namespace {

using tokmix::index_t;

constexpr index_t bench_chunk = 64, bench_window = 64, bench_slots = 64;

std::vector<float> uniform(std::size_t n, unsigned seed, float lo, float hi) {
  std::vector<float> v(n);
  unsigned s = seed * 2654435761u + 1;
  for (auto& x : v) {
    s = s * 1664525u + 1013904223u;
    x = lo + (hi - lo) * static_cast<float>(s >> 8) / 16777216.f;
  }
  return v;
}

double chunk_flops(index_t seq, index_t heads, index_t d) {
  const double L = double(seq), H = double(heads), D = double(d), C = double(bench_chunk), M = double(bench_slots);
  const double span = double(tokmix::detail::nha_row_block(bench_window, bench_chunk) + bench_window - 1);
  return H * L * (4 * C * D + 4 * C * M + 8 * M * D + 4 * span * D);
}

double token_loop_flops(index_t seq, index_t heads, index_t d) {
  const double M = double(bench_slots), W = double(bench_window);
  return double(heads) * double(seq) * (8 * M * double(d) + 4 * W * double(d));
}

tokmix::nha_params bench_params(int threads) {
  tokmix::nha_params p;
  p.window = bench_window;
  p.slots = bench_slots;
  p.chunk_size = bench_chunk;
  p.policy = tokmix::exec_policy::threads(threads);
  return p;
}

// One layer's inputs, batch 1, as many kv heads as query heads. q, k and v
// share one buffer (d_k = d_v): the kernels only read them, and at
// L = 65536 x 16 x 128 each would be 512 MB.
struct data {
  index_t seq, heads, d;
  std::vector<float> x, g, o;
  data(index_t l, index_t h, index_t dim) : seq(l), heads(h), d(dim) {
    const std::size_t tok = std::size_t(l * h);
    x = uniform(tok * std::size_t(d), 1, -1.f, 1.f);
    // The authors' slot gate: logsigmoid(x) / 8.
    g = uniform(tok * std::size_t(bench_slots), 2, -2.f, 6.f);
    for (float& e : g) e = -std::log1p(std::exp(-e)) / 8.f;
    o.assign(tok * std::size_t(d), 0.f);
  }
  tokmix::tensor_view<const float, 4> in() const { return {x.data(), {1, seq, heads, d}}; }
  tokmix::tensor_view<const float, 4> g4() const { return {g.data(), {1, seq, heads, bench_slots}}; }
  tokmix::tensor_view<float, 4> out() { return {o.data(), {1, seq, heads, d}}; }
};

// The state keeps evolving across iterations (the window stays full, the
// slots decay): the same work each time.
void bm_prefill(benchmark::State& state, index_t heads, index_t d, index_t seq, int threads, bool chunked) {
  data s(seq, heads, d);
  const tokmix::nha_params p = bench_params(threads);
  tokmix::nha_state st(1, heads, d, d, p);
  for (auto _ : state) {
    if (chunked)
      tokmix::nha_prefill(s.in(), s.in(), s.in(), s.g4(), s.out(), st, p);
    else
      tokmix::nha_recurrent_prefill(s.in(), s.in(), s.in(), s.g4(), s.out(), st, p);
    benchmark::DoNotOptimize(s.o.data());
    benchmark::ClobberMemory();
  }
  tokmix_bench::set_gflops(state, chunked ? chunk_flops(seq, heads, d) : token_loop_flops(seq, heads, d), threads);
}

// One decode token for every head (batch 1), after a prefill that fills the window.
void bm_step(benchmark::State& state, index_t heads, index_t d) {
  data pre(2 * bench_window, heads, d);
  const tokmix::nha_params p = bench_params(1);
  tokmix::nha_state st(1, heads, d, d, p);
  tokmix::nha_prefill(pre.in(), pre.in(), pre.in(), pre.g4(), pre.out(), st, p);
  const tokmix::tensor_view<const float, 3> x(pre.x.data(), {1, heads, d});
  const tokmix::tensor_view<const float, 3> g(pre.g.data(), {1, heads, bench_slots});
  const tokmix::tensor_view<float, 3> o(pre.o.data(), {1, heads, d});
  for (auto _ : state) {
    tokmix::nha_step(x, x, x, g, o, st, p);
    benchmark::DoNotOptimize(pre.o.data());
    benchmark::ClobberMemory();
  }
  state.counters["us_per_token"] =
      benchmark::Counter(1e6, benchmark::Counter::kIsIterationInvariantRate | benchmark::Counter::kInvert);
  tokmix_bench::set_gflops(state, token_loop_flops(1, heads, d), 1);
}

const bool registered = [] {
  const index_t shapes[][2] = {{12, 64}, {16, 128}};
  for (const auto& sh : shapes) {
    const index_t heads = sh[0], d = sh[1];
    const std::string base = "nha/heads:" + std::to_string(heads) + "/dim:" + std::to_string(d) +
                             "/window:" + std::to_string(bench_window) + "/slots:" + std::to_string(bench_slots);
    for (index_t L : {index_t(512), index_t(4096), index_t(16384), index_t(65536)}) {
      for (int threads : {1, 2}) {
        if (threads == 2 && L != 4096) continue;
        const std::string name = base + "/L:" + std::to_string(L) + "/threads:" + std::to_string(threads);
        for (bool chunked : {true, false}) {
          auto* b = tokmix_bench::defaults(benchmark::RegisterBenchmark(
              (name + (chunked ? "/tokmix" : "/recurrent")).c_str(), bm_prefill, heads, d, L, threads, chunked));
          if (L >= 16384) b->Iterations(1);
        }
      }
    }
    tokmix_bench::defaults(benchmark::RegisterBenchmark(("nha_step/heads:" + std::to_string(heads) + "/dim:" +
                                                         std::to_string(d) + "/window:" + std::to_string(bench_window) +
                                                         "/slots:" + std::to_string(bench_slots) + "/threads:1/tokmix")
                                                            .c_str(),
                                                        bm_step, heads, d))
        ->Unit(benchmark::kMicrosecond);
  }
  return true;
}();

}  // namespace
