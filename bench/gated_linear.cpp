// Gated / decaying linear recurrences (GLA, retention, DeltaNet, gated
// DeltaNet): the chunked prefill (`/tokmix`) against tokmix's own SIMD token
// loop (`/recurrent`) and a naive Eigen token loop (`/naive`: the recurrence
// written with Eigen expressions per token and head, as ggml's CPU ops run
// it) in the same run, at the two head shapes of the issue and L = 512, 4096,
// 65536; plus per-token step latency, and GLA / retention with grouped heads
// (16 query heads on 4 kv heads) beside the ungrouped 16-head run.
//
// FLOPs counted (per head, d_k = d_v = d, chunk C = 64 dividing L, the products
// the chunked kernels run, full C x C tiles although half is masked):
//   GLA, retention      : L/C * (4 C d^2 + 4 C^2 d)          = L (4 d^2 + 4 C d)
//   (gated) delta rule  : L/C * (6 C d^2 + 10 C^2 d + C^3/3) = L (6 d^2 + 10 C d + C^2/3)
// The token loops count their own products: 4 d^2 per token (GLA, retention),
// 6 d^2 (delta rule). Gate exps, masks and L2 norms are not counted.
#include <cmath>
#include <cstddef>
#include <string>
#include <vector>

#include "common.hpp"
#include "tokmix/linear.hpp"

namespace {

using tokmix::index_t;

enum class mixer { gla, retention, delta, gated_delta };

const char* mixer_name(mixer m) {
  switch (m) {
    case mixer::gla: return "gla";
    case mixer::retention: return "retention";
    case mixer::delta: return "delta_rule";
    case mixer::gated_delta: return "gated_delta_rule";
  }
  return "";
}

std::vector<float> uniform(std::size_t n, unsigned seed, float lo, float hi) {
  std::vector<float> v(n);
  unsigned s = seed * 2654435761u + 1;
  for (auto& x : v) {
    s = s * 1664525u + 1013904223u;
    x = lo + (hi - lo) * static_cast<float>(s >> 8) / 16777216.f;
  }
  return v;
}

constexpr index_t bench_chunk = 64;

double chunk_flops(mixer m, index_t seq, index_t heads, index_t d) {
  const double L = double(seq), H = double(heads), D = double(d), C = double(bench_chunk);
  if (m == mixer::gla || m == mixer::retention) return H * L * (4 * D * D + 4 * C * D);
  return H * L * (6 * D * D + 10 * C * D + C * C / 3);
}

double token_loop_flops(mixer m, index_t seq, index_t heads, index_t d) {
  const double per = (m == mixer::gla || m == mixer::retention) ? 4.0 : 6.0;
  return per * double(heads) * double(seq) * double(d) * double(d);
}

// One layer's inputs, batch 1. q, k and v share one buffer (d_k = d_v): the
// kernels only read them, and at L = 65536 x 16 x 128 each would be 512 MB.
struct data {
  index_t seq, heads, d;
  std::vector<float> x, g, beta, o;
  data(mixer m, index_t l, index_t h, index_t dim) : seq(l), heads(h), d(dim) {
    const std::size_t tok = std::size_t(l * h);
    x = uniform(tok * std::size_t(d), 1, -1.f, 1.f);
    if (m == mixer::gla || m == mixer::gated_delta) {
      // fla's GLA gate: logsigmoid(x) / 16.
      g = uniform(m == mixer::gla ? tok * std::size_t(d) : tok, 2, -2.f, 6.f);
      for (float& e : g) e = -std::log1p(std::exp(-e)) / 16.f;
    }
    if (m == mixer::delta || m == mixer::gated_delta) beta = uniform(tok, 3, 0.05f, 0.95f);
    o.assign(tok * std::size_t(d), 0.f);
  }
  tokmix::tensor_view<const float, 4> in() const { return {x.data(), {1, seq, heads, d}}; }
  tokmix::tensor_view<const float, 4> g4() const { return {g.data(), {1, seq, heads, d}}; }
  tokmix::tensor_view<const float, 3> g3() const { return {g.data(), {1, seq, heads}}; }
  tokmix::tensor_view<const float, 3> b3() const { return {beta.data(), {1, seq, heads}}; }
  tokmix::tensor_view<float, 4> out() { return {o.data(), {1, seq, heads, d}}; }
};

// The state keeps evolving across iterations: the same work each time, and
// the decays / delta rule keep it bounded.
void bm_prefill(benchmark::State& state, mixer m, index_t heads, index_t d, index_t seq, int threads, bool chunked) {
  data s(m, seq, heads, d);
  const auto policy = tokmix::exec_policy::threads(threads);
  tokmix::gla_state gs(1, heads, d, d);
  tokmix::retention_state rs(1, heads, d, d);
  tokmix::delta_rule_state ds(1, heads, d, d);
  tokmix::gla_params gp;
  gp.policy = policy;
  tokmix::retention_params rp;
  rp.policy = policy;
  tokmix::delta_rule_params dp;
  dp.policy = policy;
  dp.use_qk_l2norm = true;
  for (auto _ : state) {
    switch (m) {
      case mixer::gla:
        if (chunked) tokmix::gla_chunk_prefill(s.in(), s.in(), s.in(), s.g4(), s.out(), gs, gp);
        else tokmix::gla_recurrent_prefill(s.in(), s.in(), s.in(), s.g4(), s.out(), gs, gp);
        break;
      case mixer::retention:
        if (chunked) tokmix::retention_chunk_prefill(s.in(), s.in(), s.in(), s.out(), rs, rp);
        else tokmix::retention_recurrent_prefill(s.in(), s.in(), s.in(), s.out(), rs, rp);
        break;
      case mixer::delta:
        if (chunked) tokmix::delta_rule_chunk_prefill(s.in(), s.in(), s.in(), s.b3(), s.out(), ds, dp);
        else tokmix::delta_rule_recurrent_prefill(s.in(), s.in(), s.in(), s.b3(), s.out(), ds, dp);
        break;
      case mixer::gated_delta:
        if (chunked) tokmix::gated_delta_rule_chunk_prefill(s.in(), s.in(), s.in(), s.g3(), s.b3(), s.out(), ds, dp);
        else tokmix::gated_delta_rule_recurrent_prefill(s.in(), s.in(), s.in(), s.g3(), s.b3(), s.out(), ds, dp);
        break;
    }
    benchmark::DoNotOptimize(s.o.data());
    benchmark::ClobberMemory();
  }
  tokmix_bench::set_gflops(state, chunked ? chunk_flops(m, seq, heads, d) : token_loop_flops(m, seq, heads, d),
                           threads);
}

// One decode token for every head (batch 1).
void bm_step(benchmark::State& state, mixer m, index_t heads, index_t d) {
  data s(m, 1, heads, d);
  const tokmix::tensor_view<const float, 3> x(s.x.data(), {1, heads, d});
  const tokmix::tensor_view<const float, 3> g3(s.g.data(), {1, heads, d});
  const tokmix::tensor_view<const float, 2> g2(s.g.data(), {1, heads}), b2(s.beta.data(), {1, heads});
  const tokmix::tensor_view<float, 3> o(s.o.data(), {1, heads, d});
  tokmix::gla_state gs(1, heads, d, d);
  tokmix::retention_state rs(1, heads, d, d);
  tokmix::delta_rule_state ds(1, heads, d, d);
  tokmix::delta_rule_params dp;
  dp.use_qk_l2norm = true;
  for (auto _ : state) {
    switch (m) {
      case mixer::gla: tokmix::gla_step(x, x, x, g3, o, gs); break;
      case mixer::retention: tokmix::retention_step(x, x, x, o, rs); break;
      case mixer::delta: tokmix::delta_rule_step(x, x, x, b2, o, ds, dp); break;
      case mixer::gated_delta: tokmix::gated_delta_rule_step(x, x, x, g2, b2, o, ds, dp); break;
    }
    benchmark::DoNotOptimize(s.o.data());
    benchmark::ClobberMemory();
  }
  state.counters["us_per_token"] = benchmark::Counter(1e6, benchmark::Counter::kIsIterationInvariantRate |
                                                               benchmark::Counter::kInvert);
  tokmix_bench::set_gflops(state, token_loop_flops(m, 1, heads, d), 1);
}

// Grouped heads (GQA): heads_q query heads share the states of heads_kv kv
// heads. Chunked GLA / retention only; FLOPs per chunk: the q side (q S, the
// masked q k^T, A v) per query head, the state update per kv head:
//   L (heads_q (2 d^2 + 4 C d) + heads_kv 2 d^2).
void bm_prefill_grouped(benchmark::State& state, mixer m, index_t heads_q, index_t heads_kv, index_t d, index_t seq) {
  data sq(m, seq, heads_q, d), skv(m, seq, heads_kv, d);
  tokmix::gla_state gs(1, heads_kv, d, d);
  tokmix::retention_state rs(1, heads_kv, d, d);
  const tokmix::tensor_view<const float, 4> q = sq.in(), kv = skv.in();
  for (auto _ : state) {
    if (m == mixer::gla) tokmix::gla_chunk_prefill(q, kv, kv, skv.g4(), sq.out(), gs, tokmix::gla_params{});
    else tokmix::retention_chunk_prefill(q, kv, kv, sq.out(), rs, tokmix::retention_params{});
    benchmark::DoNotOptimize(sq.o.data());
    benchmark::ClobberMemory();
  }
  const double L = double(seq), D = double(d), C = double(bench_chunk);
  tokmix_bench::set_gflops(state, L * (double(heads_q) * (2 * D * D + 4 * C * D) + double(heads_kv) * 2 * D * D), 1);
}

// The recurrence token by token with Eigen expressions, per head:
//   S = diag(alpha) S (GLA per key channel; retention, gated delta: scalar),
//   delta rule: S -= beta k (k^T S); then S += (beta) k v^T; o = S^T (scale q).
void bm_naive(benchmark::State& state, mixer m, index_t heads, index_t d, index_t seq) {
  data s(m, seq, heads, d);
  using mat = Eigen::MatrixXf;
  using vec = Eigen::VectorXf;
  using cmap = Eigen::Map<const vec>;
  std::vector<mat> S(static_cast<std::size_t>(heads), mat::Zero(d, d));
  const float scale = 1.f / std::sqrt(float(d));
  vec kS(d);
  for (auto _ : state) {
    for (index_t t = 0; t < seq; ++t)
      for (index_t h = 0; h < heads; ++h) {
        const std::size_t row = std::size_t((t * heads + h) * d), tok = std::size_t(t * heads + h);
        const cmap q(s.x.data() + row, d), k(s.x.data() + row, d), v(s.x.data() + row, d);
        mat& Sh = S[std::size_t(h)];
        switch (m) {
          case mixer::gla: Sh = cmap(s.g.data() + row, d).array().exp().matrix().asDiagonal() * Sh; break;
          case mixer::retention: Sh *= 1.f - std::ldexp(1.f, -5 - int(h)); break;
          case mixer::gated_delta: Sh *= std::exp(s.g[tok]); break;
          case mixer::delta: break;
        }
        if (m == mixer::delta || m == mixer::gated_delta) {
          const float beta = s.beta[tok];
          kS.noalias() = Sh.transpose() * k;
          Sh.noalias() += (beta * k) * (v - kS).transpose();
        } else {
          Sh.noalias() += k * v.transpose();
        }
        Eigen::Map<vec>(s.o.data() + row, d).noalias() = Sh.transpose() * (scale * q);
      }
    benchmark::DoNotOptimize(s.o.data());
    benchmark::ClobberMemory();
  }
  tokmix_bench::set_gflops(state, token_loop_flops(m, seq, heads, d), 1);
}

const bool registered = [] {
  const index_t shapes[][2] = {{12, 64}, {16, 128}};
  for (mixer m : {mixer::gla, mixer::retention, mixer::delta, mixer::gated_delta}) {
    for (const auto& sh : shapes) {
      const index_t heads = sh[0], d = sh[1];
      const std::string base = std::string(mixer_name(m)) + "/heads:" + std::to_string(heads) + "/dim:" + std::to_string(d);
      for (index_t L : {index_t(512), index_t(4096), index_t(65536)}) {
        for (int threads : {1, 2}) {
          if (threads == 2 && L != 4096) continue;
          const std::string name = base + "/L:" + std::to_string(L) + "/threads:" + std::to_string(threads);
          for (bool chunked : {true, false}) {
            auto* b = tokmix_bench::defaults(benchmark::RegisterBenchmark(
                (name + (chunked ? "/tokmix" : "/recurrent")).c_str(), bm_prefill, m, heads, d, L, threads, chunked));
            if (L == 65536) b->Iterations(1);
          }
          if (threads == 1 && L <= 4096)
            tokmix_bench::defaults(benchmark::RegisterBenchmark((name + "/naive").c_str(), bm_naive, m, heads, d, L));
        }
      }
      tokmix_bench::defaults(benchmark::RegisterBenchmark(
                                 (std::string(mixer_name(m)) + "_step/heads:" + std::to_string(heads) + "/dim:" +
                                  std::to_string(d) + "/threads:1/tokmix")
                                     .c_str(),
                                 bm_step, m, heads, d))
          ->Unit(benchmark::kMicrosecond);
    }
  }
  for (mixer m : {mixer::gla, mixer::retention})
    tokmix_bench::defaults(benchmark::RegisterBenchmark(
        (std::string(mixer_name(m)) + "/heads:16/kv_heads:4/dim:128/L:4096/threads:1/tokmix").c_str(),
        bm_prefill_grouped, m, index_t(16), index_t(4), index_t(128), index_t(4096)));
  return true;
}();

}  // namespace
