// Causal linear attention (Katharopoulos, elu+1; Performer FAVOR+ m = 256):
// tokmix's chunked prefill against its own token-by-token recurrent form and a
// plain scalar loop of the recurrence (what a direct CPU port runs), at 12
// heads x 64 from 512 to 65536 tokens, plus the per-token step latency.
// Linear scaling shows as t(65536)/t(4096) ~ 16 between the L:4096 and
// L:65536 rows of the same impl.
//
// FLOPs are those of the chunked form (C = 64) for every impl, so GFLOPS of
// the three impls compare like inverse times: per chunk and head
//   2 C F dv   inter-chunk read     + 2 C^2 F   phi(Q) phi(K)^T
//   2 C^2 dv   masked A V           + 2 C F dv  state update
// (feature maps not counted; FAVOR+ adds 2 * 2 C d m for the projections).
#include <cmath>
#include <cstddef>
#include <string>
#include <vector>

#include "common.hpp"
#include "tokmix/linear/linear_attention.hpp"

namespace {

using tokmix::index_t;

std::vector<float> uniform(std::size_t n, unsigned seed, float lo, float hi) {
  std::vector<float> v(n);
  unsigned s = seed * 2654435761u + 1;
  for (auto& x : v) {
    s = s * 1664525u + 1013904223u;
    x = lo + (hi - lo) * static_cast<float>(s >> 8) / 16777216.f;
  }
  return v;
}

struct la_data {
  index_t L, H, d;
  std::vector<float> q, k, v, o;
  la_data(index_t l, index_t h, index_t dim) : L(l), H(h), d(dim) {
    const std::size_t n = static_cast<std::size_t>(l * h * dim);
    q = uniform(n, 1, -1.f, 1.f);
    k = uniform(n, 2, -1.f, 1.f);
    v = uniform(n, 3, -1.f, 1.f);
    o.assign(n, 0.f);
  }
  tokmix::tensor_view<const float, 4> view(const std::vector<float>& x) const {
    return tokmix::tensor_view<const float, 4>(x.data(), {1, L, H, d});
  }
};

double chunked_flops(index_t L, index_t H, index_t d, index_t F, index_t m_proj) {
  const double C = 64, n_chunks = std::ceil(double(L) / C), dv = double(d);
  const double per_chunk = 4 * C * F * dv + 2 * C * C * F + 2 * C * C * dv + 4 * C * dv * double(m_proj);
  return per_chunk * n_chunks * double(H);
}

// The recurrence as a direct port writes it: per token and head, S += phi(k) v^T,
// z += phi(k), o = S^T phi(q) / (z . phi(q) + eps); scalar loops, std::exp.
void naive_elu(la_data& x, std::vector<float>& S, std::vector<float>& z) {
  const index_t H = x.H, d = x.d;
  std::vector<float> pk(static_cast<std::size_t>(d)), pq(static_cast<std::size_t>(d));
  for (index_t t = 0; t < x.L; ++t)
    for (index_t h = 0; h < H; ++h) {
      const std::size_t off = static_cast<std::size_t>((t * H + h) * d);
      float* Sh = &S[static_cast<std::size_t>(h * d * d)];
      float* zh = &z[static_cast<std::size_t>(h * d)];
      for (index_t i = 0; i < d; ++i) {
        const float a = x.k[off + i], b = x.q[off + i];
        pk[i] = a > 0 ? a + 1 : std::exp(a);
        pq[i] = b > 0 ? b + 1 : std::exp(b);
      }
      for (index_t i = 0; i < d; ++i) {
        zh[i] += pk[i];
        for (index_t j = 0; j < d; ++j) Sh[i * d + j] += pk[i] * x.v[off + j];
      }
      float den = 1e-6f;
      for (index_t i = 0; i < d; ++i) den += zh[i] * pq[i];
      for (index_t j = 0; j < d; ++j) {
        float acc = 0;
        for (index_t i = 0; i < d; ++i) acc += pq[i] * Sh[i * d + j];
        x.o[off + j] = acc / den;
      }
    }
}

enum class impl { chunked, recurrent, naive };

void bm_prefill(benchmark::State& state, index_t L, index_t H, index_t d, int threads, impl which, index_t m_favor) {
  la_data x(L, H, d);
  tokmix::random_feature_map w(m_favor > 0 ? d : 1, m_favor > 0 ? m_favor : 1, 7);
  tokmix::linear_attention_params prm;
  prm.phi = m_favor > 0 ? tokmix::feature_map::random_features(w) : tokmix::feature_map::elu_plus_one();
  prm.policy = tokmix::exec_policy::threads(threads);
  prm.algorithm = which == impl::recurrent ? tokmix::linear_attention_algorithm::recurrent
                                           : tokmix::linear_attention_algorithm::chunked;
  const index_t F = tokmix::feature_map_dim(prm.phi, d);
  tokmix::linear_attention_state st(1, H, F, d);
  std::vector<float> S(static_cast<std::size_t>(H * d * d), 0.f), z(static_cast<std::size_t>(H * d), 0.f);
  const tokmix::tensor_view<float, 4> o(x.o.data(), {1, L, H, d});
  for (auto _ : state) {
    // The state keeps growing across iterations: same work, and elu+1 stays finite.
    if (which == impl::naive) naive_elu(x, S, z);
    else tokmix::linear_attention_prefill(x.view(x.q), x.view(x.k), x.view(x.v), st, o, prm);
    benchmark::DoNotOptimize(x.o.data());
    benchmark::ClobberMemory();
  }
  tokmix_bench::set_gflops(state, chunked_flops(L, H, d, F, m_favor), threads);
}

void bm_step(benchmark::State& state, index_t H, index_t d, index_t m_favor) {
  la_data x(1, H, d);
  tokmix::random_feature_map w(m_favor > 0 ? d : 1, m_favor > 0 ? m_favor : 1, 7);
  tokmix::linear_attention_params prm;
  prm.phi = m_favor > 0 ? tokmix::feature_map::random_features(w) : tokmix::feature_map::elu_plus_one();
  const index_t F = tokmix::feature_map_dim(prm.phi, d);
  tokmix::linear_attention_state st(1, H, F, d);
  const tokmix::tensor_view<const float, 3> q(x.q.data(), {1, H, d}), k(x.k.data(), {1, H, d}), v(x.v.data(), {1, H, d});
  const tokmix::tensor_view<float, 3> o(x.o.data(), {1, H, d});
  for (auto _ : state) {
    tokmix::linear_attention_step(q, k, v, st, o, prm);
    benchmark::DoNotOptimize(x.o.data());
    benchmark::ClobberMemory();
  }
  state.counters["us_per_token"] =
      benchmark::Counter(1e-6, benchmark::Counter::kIsIterationInvariantRate | benchmark::Counter::kInvert);
  // Per token and head: state update + read, 2 x 2 F dv, plus FAVOR+'s projections.
  tokmix_bench::set_gflops(state, double(H) * (4.0 * F * d + 4.0 * d * m_favor), 1);
}

const bool registered = [] {
  auto reg = [](const std::string& name, auto fn, auto... args) {
    tokmix_bench::defaults(benchmark::RegisterBenchmark(name.c_str(), fn, args...));
  };
  const index_t H = 12, d = 64;
  for (index_t L : {index_t(512), index_t(4096), index_t(65536)}) {
    const std::string base = "linear_attn_elu/H:12/D:64/L:" + std::to_string(L) + "/B:1/threads:";
    for (int threads : {1, 2}) reg(base + std::to_string(threads) + "/tokmix", bm_prefill, L, H, d, threads, impl::chunked, index_t(0));
    reg(base + "1/recurrent", bm_prefill, L, H, d, 1, impl::recurrent, index_t(0));
    if (L <= 4096) reg(base + "1/naive", bm_prefill, L, H, d, 1, impl::naive, index_t(0));
    const std::string favor = "linear_attn_favor/m:256/H:12/D:64/L:" + std::to_string(L) + "/B:1/threads:";
    for (int threads : {1, 2}) reg(favor + std::to_string(threads) + "/tokmix", bm_prefill, L, H, d, threads, impl::chunked, index_t(256));
    if (L <= 4096) reg(favor + "1/recurrent", bm_prefill, L, H, d, 1, impl::recurrent, index_t(256));
  }
  reg("linear_attn_elu_step/H:12/D:64/B:1/threads:1/tokmix", bm_step, H, d, index_t(0));
  reg("linear_attn_favor_step/m:256/H:12/D:64/B:1/threads:1/tokmix", bm_step, H, d, index_t(256));
  return true;
}();

}  // namespace
