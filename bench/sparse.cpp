// The sparse attention family against tokmix's dense flash attention in the
// same run (the kernel it is built on): block-sparse at ~10% visible blocks,
// routing attention's growth with L, top-k and the other mixers' cost.
//
// FLOPs: the two matrix products on the (query, key) pairs actually attended,
// 4 * D per pair (so a block-sparse GFLOPS is comparable with the dense one);
// routing adds its clustering products (2 * D per token and centroid); top-k
// counts the dense score product (2 * D per pair) plus 2 * D * k per query.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "common.hpp"
#include "tokmix/attention/flash_attention.hpp"
#include "tokmix/sparse.hpp"

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

struct data {
  index_t L, H, D;
  std::vector<float> q, k, v, o;
  data(index_t l, index_t h, index_t d)
      : L(l), H(h), D(d), q(uniform(l * h * d, 1)), k(uniform(l * h * d, 2)), v(uniform(l * h * d, 3)), o(l * h * d) {}
  tokmix::tensor_view<const float, 4> view(const std::vector<float>& x) const { return {x.data(), {1, L, H, D}}; }
  tokmix::tensor_view<float, 4> out() { return {o.data(), {1, L, H, D}}; }
};

tokmix::attention_params params(bool causal, int threads) {
  tokmix::attention_params p;
  p.causal = causal;
  if (threads > 1) p.policy = tokmix::exec_policy::threads(threads);
  return p;
}

// (query, key) pairs a layout shows, after the causal mask (exact, per token).
double visible_pairs(const tokmix::block_layout& l, index_t L, bool causal) {
  const index_t b = l.block_size();
  double pairs = 0;
  for (index_t h = 0; h < l.heads(); ++h)
    for (index_t i = 0; i < l.q_blocks(); ++i)
      for (index_t j = 0; j < l.k_blocks(); ++j) {
        if (!l.visible(h, i, j)) continue;
        const index_t q0 = i * b, q1 = std::min(L, q0 + b), k0 = j * b, k1 = std::min(L, k0 + b);
        for (index_t r = q0; r < q1; ++r) {
          const index_t hi = causal ? std::min(k1, r + 1) : k1;
          pairs += double(std::max<index_t>(0, hi - k0));
        }
      }
  return pairs;
}

void bm_dense(benchmark::State& state, index_t D, index_t L, index_t H, bool causal, int threads) {
  data d(L, H, D);
  const auto p = params(causal, threads);
  for (auto _ : state) {
    tokmix::flash_attention(d.view(d.q), d.view(d.k), d.view(d.v), d.out(), p);
    benchmark::DoNotOptimize(d.o.data());
  }
  const double pairs = causal ? double(L) * double(L + 1) / 2 : double(L) * double(L);
  tokmix_bench::set_gflops(state, 4.0 * double(H) * double(D) * pairs, threads);
}

// BigBird layout (window 3, first block global, `random` blocks per row).
void bm_block_sparse(benchmark::State& state, index_t D, index_t L, index_t H, index_t block, index_t random,
                     bool causal, int threads) {
  data d(L, H, D);
  tokmix::bigbird_layout_options o;
  o.window_blocks = 3;
  o.global_first = 1;
  o.global_last = 0;
  o.random_blocks = random;
  o.causal = causal;
  o.seed = 1;
  const tokmix::block_layout l = tokmix::bigbird_layout(L, block, o);
  const auto p = params(causal, threads);
  for (auto _ : state) {
    tokmix::block_sparse_attention(d.view(d.q), d.view(d.k), d.view(d.v), d.out(), l, p);
    benchmark::DoNotOptimize(d.o.data());
  }
  // Share of the (query, key) pairs the dense kernel with the same causal flag computes.
  const double pairs = visible_pairs(l, L, causal);
  state.counters["visible_fraction"] = pairs / (causal ? double(L) * double(L + 1) / 2 : double(L) * double(L));
  tokmix_bench::set_gflops(state, 4.0 * double(H) * double(D) * pairs, threads);
}

// Top-k (k keys per query, non-causal): every key is scored, k are attended.
void bm_topk(benchmark::State& state, index_t D, index_t L, index_t H, index_t k, bool causal, int threads) {
  data d(L, H, D);
  tokmix::topk_attention_params p;
  p.top_k = k;
  p.causal = causal;
  if (threads > 1) p.policy = tokmix::exec_policy::threads(threads);
  for (auto _ : state) {
    tokmix::topk_attention(d.view(d.q), d.view(d.k), d.view(d.v), d.out(), p);
    benchmark::DoNotOptimize(d.o.data());
  }
  const double pairs = causal ? double(L) * double(L + 1) / 2 : double(L) * double(L);
  tokmix_bench::set_gflops(state, double(H) * (2.0 * double(D) * pairs + 2.0 * double(D) * double(k) * double(L)),
                           threads);
}

// Routing attention with C ~ sqrt(L) balanced clusters (the O(L^1.5 D) setting):
// FLOPs are the attended pairs (4 D each) plus the clustering products (2 D per
// token and centroid, queries and keys).
void bm_routing(benchmark::State& state, index_t D, index_t L, index_t H, bool causal, int threads) {
  data d(L, H, D);
  const index_t C = static_cast<index_t>(std::lround(std::sqrt(double(L))));
  tokmix::routing_state st(H, C, D, 1);
  tokmix::routing_params p;
  p.assignment = tokmix::routing_assignment::balanced;
  p.causal = causal;
  if (threads > 1) p.policy = tokmix::exec_policy::threads(threads);
  for (auto _ : state) {
    tokmix::routing_attention(d.view(d.q), d.view(d.k), d.view(d.v), d.out(), st, p);
    benchmark::DoNotOptimize(d.o.data());
  }
  // Attended pairs from the clusters actually formed.
  std::vector<std::int32_t> qi(static_cast<std::size_t>(H * L)), ki(qi.size());
  tokmix::routing_clusters(d.view(d.q), d.view(d.k), st, tokmix::tensor_view<std::int32_t, 3>(qi.data(), {1, H, L}),
                           tokmix::tensor_view<std::int32_t, 3>(ki.data(), {1, H, L}), p.assignment);
  double pairs = 0;
  for (index_t h = 0; h < H; ++h) {
    std::vector<std::vector<index_t>> keys(static_cast<std::size_t>(C));
    for (index_t j = 0; j < L; ++j) keys[static_cast<std::size_t>(ki[static_cast<std::size_t>(h * L + j)])].push_back(j);
    for (index_t i = 0; i < L; ++i) {
      const auto& kl = keys[static_cast<std::size_t>(qi[static_cast<std::size_t>(h * L + i)])];
      pairs += causal ? double(std::upper_bound(kl.begin(), kl.end(), i) - kl.begin()) : double(kl.size());
    }
  }
  state.counters["clusters"] = double(C);
  tokmix_bench::set_gflops(state, double(H) * (4.0 * double(D) * pairs + 2.0 * double(D) * double(C) * 2.0 * double(L)),
                           threads);
}

// Dilated sliding window (dilation 4, 128 keys each side along the class = 512 tokens span each way).
void bm_dilated(benchmark::State& state, index_t D, index_t L, index_t H, index_t dilation, bool causal, int threads) {
  data d(L, H, D);
  tokmix::dilated_attention_params p;
  p.dilation = dilation;
  p.window_left = 128;
  p.window_right = causal ? 0 : 128;
  p.causal = causal;
  if (threads > 1) p.policy = tokmix::exec_policy::threads(threads);
  for (auto _ : state) {
    tokmix::dilated_attention(d.view(d.q), d.view(d.k), d.view(d.v), d.out(), p);
    benchmark::DoNotOptimize(d.o.data());
  }
  double pairs = 0;
  for (index_t i = 0; i < L; ++i) {
    const index_t back = std::min<index_t>(128, i / dilation), ahead = causal ? 0 : std::min<index_t>(128, (L - 1 - i) / dilation);
    pairs += double(back + ahead + 1);
  }
  tokmix_bench::set_gflops(state, 4.0 * double(H) * double(D) * pairs, threads);
}

// ProbSparse with Informer's factor 5: u = 5 ceil(ln L) exact rows, the rest means.
void bm_probsparse(benchmark::State& state, index_t D, index_t L, index_t H, bool causal, int threads) {
  data d(L, H, D);
  tokmix::probsparse_params p;
  p.causal = causal;
  if (threads > 1) p.policy = tokmix::exec_policy::threads(threads);
  for (auto _ : state) {
    tokmix::probsparse_attention(d.view(d.q), d.view(d.k), d.view(d.v), d.out(), p);
    benchmark::DoNotOptimize(d.o.data());
  }
  const double u = double(tokmix::probsparse_budget(5, L)), ns = double(tokmix::probsparse_budget(5, L));
  const double pairs = causal ? u * double(L) / 2 : u * double(L);
  tokmix_bench::set_gflops(state, double(H) * (4.0 * double(D) * pairs + 2.0 * double(D) * ns * double(L)), threads);
}

const bool registered = [] {
  auto reg = [](const std::string& name, auto fn, auto... args) {
    return tokmix_bench::defaults(benchmark::RegisterBenchmark(name.c_str(), fn, args...));
  };
  const index_t D = 64, L = 16384, H = 1;
  for (int threads : {1, 2})
    for (bool causal : {false, true}) {
      const std::string tail = "/causal:" + std::to_string(causal ? 1 : 0) + "/threads:" + std::to_string(threads) + "/tokmix";
      reg("block_sparse/D:64/L:16384/layout:dense" + tail, bm_dense, D, L, H, causal, threads);
      // 10% of the blocks: 3 band + 1 global + 8 random of 128 per row (non-causal);
      // causal keeps the same share of the lower triangle (4 random of ~64 past blocks on average).
      reg("block_sparse/D:64/L:16384/layout:bigbird_b128_10pct" + tail, bm_block_sparse, D, L, H, index_t(128),
          causal ? index_t(4) : index_t(8), causal, threads);
      reg("block_sparse/D:64/L:16384/layout:bigbird_b64_10pct" + tail, bm_block_sparse, D, L, H, index_t(64),
          causal ? index_t(11) : index_t(21), causal, threads);
    }
  for (index_t Lt : {index_t(4096), index_t(16384)})
    for (int threads : {1, 2})
      for (bool causal : {false, true}) {
        const std::string tail = "/D:64/L:" + std::to_string(Lt) + "/causal:" + std::to_string(causal ? 1 : 0) +
                                 "/threads:" + std::to_string(threads) + "/tokmix";
        const index_t Ht = Lt <= 4096 ? 4 : 1;
        reg("topk_attention/k:dense" + tail, bm_dense, D, Lt, Ht, causal, threads);
        reg("topk_attention/k:64" + tail, bm_topk, D, Lt, Ht, index_t(64), causal, threads);
      }
  for (index_t Lr : {index_t(8192), index_t(16384), index_t(32768), index_t(65536)})
    for (int threads : {1, 2})
      for (bool causal : {false, true}) {
        const std::string tail = "/D:64/L:" + std::to_string(Lr) + "/causal:" + std::to_string(causal ? 1 : 0) +
                                 "/threads:" + std::to_string(threads) + "/tokmix";
        auto* dense = reg("routing_attention/clusters:dense" + tail, bm_dense, D, Lr, index_t(1), causal, threads);
        if (Lr >= 32768) dense->Iterations(1);
        reg("routing_attention/clusters:sqrtL_balanced" + tail, bm_routing, D, Lr, index_t(1), causal, threads);
      }
  for (int threads : {1, 2})
    for (bool causal : {false, true}) {
      const std::string tail = "/causal:" + std::to_string(causal ? 1 : 0) + "/threads:" + std::to_string(threads) + "/tokmix";
      reg("dilated_attention/D:64/L:16384/dilation:4/w:128" + tail, bm_dilated, D, L, H, index_t(4), causal, threads);
      reg("probsparse_attention/D:64/L:16384/factor:5" + tail, bm_probsparse, D, L, H, causal, threads);
    }
  return true;
}();

}  // namespace
