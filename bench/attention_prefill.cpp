// Softmax attention prefill against what CPU users run today: a naive Eigen
// version (full score matrix, softmax, product) and LibTorch's matmul +
// softmax + matmul, in the same process. Also the causal and sliding-window
// savings, and the O(tile) memory claim at L = 65536 (peak RSS growth).
// FLOPs: 4 * B * H * Lq * Lk * D (the two products), half of that for causal;
// for a window, 4 * H * D * (number of visible (query, key) pairs).
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include "common.hpp"
#include "tokmix/attention/flash_attention.hpp"

#if TOKMIX_BENCH_HAVE_TORCH
#include <torch/torch.h>
#endif

namespace {

using tokmix::index_t;

std::vector<float> uniform(std::size_t n, unsigned seed) {
  std::vector<float> v(n);
  unsigned s = seed * 2654435761u + 7;
  for (auto& x : v) {
    s = s * 1664525u + 1013904223u;
    x = static_cast<float>(s >> 8) / 8388608.f - 1.f;
  }
  return v;
}

// q/k/v in the canonical [1, L, H, D] layout.
struct prefill_data {
  index_t L, H, D;
  std::vector<float> q, k, v, o;
  prefill_data(index_t l, index_t h, index_t d)
      : L(l), H(h), D(d), q(uniform(l * h * d, 1)), k(uniform(l * h * d, 2)), v(uniform(l * h * d, 3)), o(l * h * d) {}
  tokmix::tensor_view<const float, 4> view(const std::vector<float>& x) const {
    return tokmix::tensor_view<const float, 4>(x.data(), {1, L, H, D});
  }
};

double prefill_flops(index_t L, index_t H, index_t D, bool causal) {
  const double f = 4.0 * double(H) * double(L) * double(L) * double(D);
  return causal ? f / 2 : f;
}

void bm_tokmix(benchmark::State& state, index_t D, index_t L, index_t H, bool causal, int threads) {
  prefill_data d(L, H, D);
  tokmix::attention_params p;
  p.causal = causal;
  if (threads > 1) p.policy = tokmix::exec_policy::threads(threads);
  tokmix::tensor_view<float, 4> o(d.o.data(), {1, L, H, D});
  for (auto _ : state) {
    tokmix::flash_attention(d.view(d.q), d.view(d.k), d.view(d.v), o, p);
    benchmark::DoNotOptimize(d.o.data());
  }
  tokmix_bench::set_gflops(state, prefill_flops(L, H, D, causal), threads);
}

// Plain Eigen, one head at a time: S = scale Q K^T (L x L), masked, row softmax, O = P V.
void bm_naive(benchmark::State& state, index_t D, index_t L, index_t H, bool causal) {
  using mat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  std::vector<mat> q(H), k(H), v(H);
  for (index_t h = 0; h < H; ++h) {
    q[h] = mat::Random(L, D);
    k[h] = mat::Random(L, D);
    v[h] = mat::Random(L, D);
  }
  mat s(L, L), o(L, D);
  const float scale = 1.f / std::sqrt(float(D));
  for (auto _ : state) {
    for (index_t h = 0; h < H; ++h) {
      s.noalias() = scale * q[h] * k[h].transpose();
      if (causal)
        for (index_t i = 0; i < L; ++i)
          for (index_t j = i + 1; j < L; ++j) s(i, j) = -std::numeric_limits<float>::infinity();
      for (index_t i = 0; i < L; ++i) {
        auto row = s.row(i).array();
        row = (row - row.maxCoeff()).exp();
        row /= row.sum();
      }
      o.noalias() = s * v[h];
      benchmark::DoNotOptimize(o.data());
    }
  }
  tokmix_bench::set_gflops(state, prefill_flops(L, H, D, causal), 1);
}

#if TOKMIX_BENCH_HAVE_TORCH
// What PyTorch 1.13 does without a fused CPU kernel: matmul + softmax + matmul ([1, H, L, D]).
void bm_torch(benchmark::State& state, index_t D, index_t L, index_t H, bool causal, int threads) {
  torch::NoGradGuard no_grad;
  torch::set_num_threads(threads);
  tokmix_bench::set_blas_threads(threads);
  const auto q = torch::rand({1, H, L, D}) * 2 - 1, k = torch::rand({1, H, L, D}) * 2 - 1,
             v = torch::rand({1, H, L, D}) * 2 - 1;
  const double scale = 1.0 / std::sqrt(double(D));
  torch::Tensor mask;
  if (causal) mask = torch::ones({L, L}, torch::kBool).triu(1);
  for (auto _ : state) {
    auto s = torch::matmul(q, k.transpose(-2, -1)) * scale;
    if (causal) s.masked_fill_(mask, -std::numeric_limits<float>::infinity());
    auto o = torch::matmul(torch::softmax(s, -1), v);
    benchmark::DoNotOptimize(o.data_ptr<float>());
  }
  tokmix_bench::set_gflops(state, prefill_flops(L, H, D, causal), threads);
}
#endif

// Causal sliding window of `w` keys back (flash_attn window_size = (w, 0)).
void bm_window(benchmark::State& state, index_t D, index_t L, index_t H, index_t w, int threads) {
  prefill_data d(L, H, D);
  tokmix::attention_params p;
  p.causal = true;
  p.window_left = w;
  if (threads > 1) p.policy = tokmix::exec_policy::threads(threads);
  tokmix::tensor_view<float, 4> o(d.o.data(), {1, L, H, D});
  for (auto _ : state) {
    tokmix::flash_attention(d.view(d.q), d.view(d.k), d.view(d.v), o, p);
    benchmark::DoNotOptimize(d.o.data());
  }
  double pairs = 0;
  for (index_t i = 0; i < L; ++i) pairs += double(std::min(i, w) + 1);
  tokmix_bench::set_gflops(state, 4.0 * double(H) * double(D) * pairs, threads);
}

// Peak resident set (VmHWM) and current RSS in bytes, from /proc/self/status.
double proc_status_bytes(const char* key) {
  std::ifstream f("/proc/self/status");
  std::string line;
  const std::size_t n = std::strlen(key);
  while (std::getline(f, line))
    if (line.compare(0, n, key) == 0) return std::stod(line.substr(n + 1)) * 1024.0;
  return -1;
}

// L = 65536, one head: extra memory must stay O(tile). Reports the peak RSS
// growth during the call (peak reset via /proc/self/clear_refs after the inputs
// are resident), next to what the L x L score matrix alone would take (16 GiB).
void bm_long(benchmark::State& state, index_t D, index_t L, int threads) {
  prefill_data d(L, 1, D);
  tokmix::attention_params p;
  p.causal = true;
  if (threads > 1) p.policy = tokmix::exec_policy::threads(threads);
  tokmix::tensor_view<float, 4> o(d.o.data(), {1, L, 1, D});
  double growth = -1;
  for (auto _ : state) {
    { std::ofstream("/proc/self/clear_refs") << "5"; }
    const double before = proc_status_bytes("VmRSS:");
    tokmix::flash_attention(d.view(d.q), d.view(d.k), d.view(d.v), o, p);
    benchmark::DoNotOptimize(d.o.data());
    growth = std::max(growth, proc_status_bytes("VmHWM:") - before);
  }
  state.counters["peak_rss_growth_MiB"] = growth / (1024.0 * 1024.0);
  tokmix_bench::set_gflops(state, prefill_flops(L, 1, D, true), threads);
}

const bool registered = [] {
  auto reg = [](const std::string& name, auto fn, auto... args) {
    return tokmix_bench::defaults(benchmark::RegisterBenchmark(name.c_str(), fn, args...));
  };
  for (index_t D : {index_t(64), index_t(128)})
    for (index_t L : {index_t(512), index_t(2048), index_t(8192), index_t(16384)})
      for (bool causal : {false, true}) {
        // Fewer heads for long sequences so one run stays short.
        const index_t H = L <= 2048 ? 8 : (L <= 8192 ? 2 : 1);
        const std::string base = "attention_prefill/D:" + std::to_string(D) + "/L:" + std::to_string(L) +
                                 "/causal:" + std::to_string(causal ? 1 : 0) + "/threads:";
        for (int threads : {1, 2}) reg(base + std::to_string(threads) + "/tokmix", bm_tokmix, D, L, H, causal, threads);
        if (L <= 2048) {
          reg(base + "1/naive", bm_naive, D, L, H, causal);
#if TOKMIX_BENCH_HAVE_TORCH
          for (int threads : {1, 2}) reg(base + std::to_string(threads) + "/libtorch", bm_torch, D, L, H, causal, threads);
#endif
        }
      }
  for (index_t L : {index_t(4096), index_t(16384)})
    for (int threads : {1, 2})
      reg("attention_prefill_window/D:64/L:" + std::to_string(L) + "/w:512/causal:1/threads:" +
              std::to_string(threads) + "/tokmix",
          bm_window, index_t(64), L, index_t(4), index_t(512), threads);
  reg("attention_prefill_long/D:64/L:65536/H:1/causal:1/threads:2/tokmix", bm_long, index_t(64), index_t(65536), 2)
      ->Iterations(1);
  // Causal attention at the head shapes of the linear and SSM mixers' benchmarks
  // (12 x 64, 16 x 128, 24 x 64), for the README's crossover table: the L above
  // which each mixer's (linear-time) prefill beats tokmix's own flash attention.
  const index_t shapes[][2] = {{12, 64}, {16, 128}, {24, 64}};
  for (const auto& hd : shapes)
    for (index_t L : {index_t(512), index_t(1024), index_t(2048), index_t(4096), index_t(8192), index_t(16384)}) {
      auto* b = reg("attention_crossover/heads:" + std::to_string(hd[0]) + "/dim:" + std::to_string(hd[1]) + "/L:" +
                        std::to_string(L) + "/causal:1/threads:1/tokmix",
                    bm_tokmix, hd[1], L, hd[0], true, 1);
      if (L >= 8192) b->Iterations(1);
    }
  return true;
}();

}  // namespace
