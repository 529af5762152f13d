// The compressed-KV mixers of the sparse family against tokmix's dense flash
// attention in the same run: Linformer (m projected rows), Nystrom (m
// landmarks) and the Set Transformer ISAB (m inducing points), at L = 4096
// and 16384, D = 64, 4 heads (one 4 x 64 = 256-wide set for ISAB).
//
// FLOPs: the matrix products each mixer runs (softmax products count 4 * D per
// (query, key) pair as in the dense benchmarks; projections 2 per multiply-add).
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "common.hpp"
#include "tokmix/attention/flash_attention.hpp"
#include "tokmix/sparse/inducing.hpp"
#include "tokmix/sparse/linformer.hpp"
#include "tokmix/sparse/nystrom.hpp"

namespace {

using tokmix::index_t;

std::vector<float> uniform(std::size_t n, unsigned seed, float amp = 1.f) {
  std::vector<float> v(n);
  unsigned s = seed * 2654435761u + 11;
  for (auto& x : v) {
    s = s * 1664525u + 1013904223u;
    x = amp * (static_cast<float>(s >> 8) / 8388608.f - 1.f);
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

tokmix::exec_policy policy(int threads) {
  return threads > 1 ? tokmix::exec_policy::threads(threads) : tokmix::exec_policy{};
}

void bm_dense(benchmark::State& state, index_t L, index_t H, index_t D, int threads) {
  data d(L, H, D);
  tokmix::attention_params p;
  p.policy = policy(threads);
  for (auto _ : state) {
    tokmix::flash_attention(d.view(d.q), d.view(d.k), d.view(d.v), d.out(), p);
    benchmark::DoNotOptimize(d.o.data());
  }
  tokmix_bench::set_gflops(state, 4.0 * double(H) * double(D) * double(L) * double(L), threads);
}

void bm_linformer(benchmark::State& state, index_t L, index_t H, index_t D, index_t m, int threads) {
  data d(L, H, D);
  const std::vector<float> e = uniform(static_cast<std::size_t>(m * L), 4, 1.f / std::sqrt(float(L))),
                           f = uniform(static_cast<std::size_t>(m * L), 5, 1.f / std::sqrt(float(L)));
  tokmix::linformer_params p;
  p.policy = policy(threads);
  const tokmix::tensor_view<const float, 3> ev(e.data(), {1, m, L}), fv(f.data(), {1, m, L});
  for (auto _ : state) {
    tokmix::linformer_attention(d.view(d.q), d.view(d.k), d.view(d.v), ev, fv, d.out(), p);
    benchmark::DoNotOptimize(d.o.data());
  }
  tokmix_bench::set_gflops(state, double(H) * (2.0 * 2.0 * double(m) * double(L) * double(D) + 4.0 * double(L) * double(m) * double(D)),
                           threads);
}

void bm_nystrom(benchmark::State& state, index_t L, index_t H, index_t D, index_t m, int threads) {
  data d(L, H, D);
  tokmix::nystrom_params p;
  p.landmarks = m;
  p.policy = policy(threads);
  for (auto _ : state) {
    tokmix::nystrom_attention(d.view(d.q), d.view(d.k), d.view(d.v), d.out(), p);
    benchmark::DoNotOptimize(d.o.data());
  }
  const double mm = double(m);
  const double per_head = 2.0 * 4.0 * double(L) * mm * double(D) + 2.0 * mm * mm * double(D) +
                          double(p.pinv_iterations) * 4.0 * 2.0 * mm * mm * mm + 2.0 * mm * mm * double(D);
  tokmix_bench::set_gflops(state, double(H) * per_head, threads);
}

// ISAB on one set of L elements of width dv = H * D (dIn = dv), m inducing points.
void bm_isab(benchmark::State& state, index_t L, index_t H, index_t D, index_t m, int threads) {
  const index_t dv = H * D;
  const std::vector<float> x = uniform(static_cast<std::size_t>(L * dv), 6), ind = uniform(static_cast<std::size_t>(m * dv), 7);
  std::vector<float> out(x.size());
  const tokmix::mab_weights m0 = tokmix::mab_weights::random(dv, dv, dv, false, 8),
                            m1 = tokmix::mab_weights::random(dv, dv, dv, false, 9);
  tokmix::mab_params p;
  p.heads = H;
  p.policy = policy(threads);
  const tokmix::tensor_view<const float, 3> xv(x.data(), {1, L, dv});
  const tokmix::tensor_view<const float, 2> iv(ind.data(), {m, dv});
  for (auto _ : state) {
    tokmix::isab_forward(xv, iv, tokmix::tensor_view<float, 3>(out.data(), {1, L, dv}), m0, m1, p);
    benchmark::DoNotOptimize(out.data());
  }
  const double n = double(L), mm = double(m), w = double(dv);
  // MAB0: q (m rows), k, v (L rows), attention m x L, FF (m rows); MAB1: q (L), k, v (m), attention L x m, FF (L).
  const double flops = 2.0 * w * w * (mm + 2.0 * n + mm) + 4.0 * mm * n * w + 2.0 * w * w * (n + 2.0 * mm + n) +
                       4.0 * n * mm * w;
  tokmix_bench::set_gflops(state, flops, threads);
}

const bool registered = [] {
  auto reg = [](const std::string& name, auto fn, auto... args) {
    return tokmix_bench::defaults(benchmark::RegisterBenchmark(name.c_str(), fn, args...));
  };
  const index_t H = 4, D = 64;
  for (index_t L : {index_t(4096), index_t(16384)})
    for (int threads : {1, 2}) {
      const std::string tail = "/D:64/heads:4/L:" + std::to_string(L) + "/threads:" + std::to_string(threads) + "/tokmix";
      reg("compressed_kv/dense" + tail, bm_dense, L, H, D, threads);
      reg("compressed_kv/linformer_m:256" + tail, bm_linformer, L, H, D, index_t(256), threads);
      reg("compressed_kv/nystrom_m:64" + tail, bm_nystrom, L, H, D, index_t(64), threads);
      reg("compressed_kv/isab_m:32" + tail, bm_isab, L, H, D, index_t(32), threads);
    }
  return true;
}();

}  // namespace
