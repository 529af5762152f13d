// A hybrid model against an all-attention model of the same width and depth,
// in the same run: prefill of L tokens and one decode step at context L, for
// L = 2048, 16384 and 65536 (2 threads, the machine's cores).
//   /tokmix         "MFMFMFAF": Mamba-2, SwiGLU MLPs, one attention block
//                   (the Mamba-2-Hybrid proportions, Waleffe et al. 2024)
//   /all_attention  "AFAFAFAF": every mixer block causal attention (GQA 4/1)
// d_model 256, vocab 4096, attention 4 heads x 64 with 1 KV head, Mamba-2
// d_state 64, headdim 64, expand 2.
//
// FLOPs (a model count, the same formula for both): 2 x (parameters outside
// the embedding) per token, plus per attention layer 2 H D L^2 for a causal
// prefill (both products, half the pairs) or 4 H D L for a step at context L;
// the head counts once per prefill (last token) or step. Counters: tokens_s,
// state_MB (what decode keeps), GFLOPS and frac_of_peak.
#include <memory>
#include <string>
#include <vector>

#include "common.hpp"
#include "tokmix/blocks.hpp"

namespace {

using tokmix::index_t;

constexpr index_t bench_d = 256, bench_vocab = 4096, bench_threads = 2;

struct model {
  std::unique_ptr<tokmix::hybrid_stack> stack;
  double params_nonembed = 0;
  index_t attention_layers = 0;
  tokmix::attention_layer_config attn;
};

model make_model(const std::string& pattern) {
  using namespace tokmix;
  model m;
  const exec_policy pol = exec_policy::threads(bench_threads);
  m.attn.d_model = bench_d;
  m.attn.num_heads = bench_d / 64;
  m.attn.num_kv_heads = 1;
  m.attn.policy = pol;
  mamba2_layer_config m2;
  m2.d_model = bench_d;
  m2.d_state = 64;
  m2.policy = pol;
  const auto mlp = mlp_config::swiglu(bench_d, 8 * bench_d / 3 / 64 * 64);
  stack_layer_kinds k;
  const attention_layer_config ac = m.attn;
  k['A'] = [ac](index_t i) { return std::make_shared<attention_layer>(ac, attention_layer_weights::random(ac, 10 + std::uint64_t(i))); };
  k['M'] = [m2](index_t i) { return std::make_shared<mamba2_layer>(m2, mamba2_layer_weights::random(m2, 20 + std::uint64_t(i))); };
  k['F'] = [mlp, pol](index_t i) { return std::make_shared<mlp_layer>(mlp_weights::random(mlp, 30 + std::uint64_t(i)), pol); };
  hybrid_stack_config cfg;
  cfg.d_model = bench_d;
  cfg.vocab_size = bench_vocab;
  cfg.policy = pol;
  m.stack = std::make_unique<hybrid_stack>(cfg, parse_stack_pattern(pattern, k), 1);
  named_tensors t;
  m.stack->save(t);
  m.params_nonembed = double(t.total_elements()) - double(bench_vocab * bench_d);
  for (char c : pattern) m.attention_layers += c == 'A';
  return m;
}

double attention_flops(const model& m, double L, bool prefill) {
  const double hd = double(m.attn.num_heads * m.attn.dim());
  return double(m.attention_layers) * (prefill ? 2 * hd * L * L : 4 * hd * L);
}

std::vector<std::int32_t> tokens(index_t L) {
  std::vector<std::int32_t> t(static_cast<std::size_t>(L));
  for (index_t i = 0; i < L; ++i) t[std::size_t(i)] = std::int32_t((i * 2654435761u) % bench_vocab);
  return t;
}

void bm_prefill(benchmark::State& state, std::string pattern, index_t L) {
  const model m = make_model(pattern);
  const auto toks = tokens(L);
  std::vector<float> logits(bench_vocab);
  std::size_t bytes = 0;
  for (auto _ : state) {
    auto st = m.stack->make_state(1, L + 1);
    m.stack->prefill(tokmix::tensor_view<const std::int32_t, 2>(toks.data(), {1, L}), st,
                     tokmix::tensor_view<float, 2>(logits.data(), {1, bench_vocab}));
    bytes = st.bytes();
    benchmark::DoNotOptimize(logits.data());
  }
  state.counters["tokens_s"] = benchmark::Counter(double(L), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["state_MB"] = double(bytes) * 1e-6;
  const double flops = 2 * m.params_nonembed * double(L) + 2.0 * bench_vocab * bench_d + attention_flops(m, double(L), true);
  tokmix_bench::set_gflops(state, flops, bench_threads);
}

// One step at context L (the prefill happens once, outside the timing).
void bm_step(benchmark::State& state, std::string pattern, index_t L) {
  const model m = make_model(pattern);
  const auto toks = tokens(L);
  // Context L - 1 once; each step then adds a token (at most `room`, so the
  // context stays within L + room of L).
  constexpr index_t room = 64;
  auto st = m.stack->make_state(1, L + room);
  m.stack->prefill(tokmix::tensor_view<const std::int32_t, 2>(toks.data(), {1, L - 1}), st, {});
  std::vector<float> logits(bench_vocab);
  const std::int32_t next = toks.back();
  for (auto _ : state) {
    if (st.position() >= L + room - 1) state.SkipWithError("more iterations than the state has room for");
    m.stack->step(tokmix::tensor_view<const std::int32_t, 1>(&next, {1}), st,
                  tokmix::tensor_view<float, 2>(logits.data(), {1, bench_vocab}));
    benchmark::DoNotOptimize(logits.data());
  }
  state.counters["tokens_s"] = benchmark::Counter(1.0, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["state_MB"] = double(st.bytes()) * 1e-6;
  const double flops = 2 * m.params_nonembed + 2.0 * bench_vocab * bench_d + attention_flops(m, double(L), false);
  tokmix_bench::set_gflops(state, flops, bench_threads);
}

const bool registered = [] {
  const std::pair<const char*, const char*> models[] = {{"MFMFMFAF", "tokmix"}, {"AFAFAFAF", "all_attention"}};
  for (index_t L : {index_t(2048), index_t(16384), index_t(65536)})
    for (const auto& m : models) {
      const std::string base = "/d:256/L:" + std::to_string(L) + "/threads:2/";
      auto* p = tokmix_bench::defaults(
          benchmark::RegisterBenchmark(("hybrid_prefill" + base + m.second).c_str(), bm_prefill, std::string(m.first), L));
      if (L >= 16384) p->Iterations(1);
      tokmix_bench::defaults(
          benchmark::RegisterBenchmark(("hybrid_step" + base + m.second).c_str(), bm_step, std::string(m.first), L))
          ->Unit(benchmark::kMillisecond)
          ->Iterations(L >= 16384 ? 16 : 48);
    }
  return true;
}();

}  // namespace
