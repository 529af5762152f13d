// The main example: a hybrid language model built from tokmix layers. It
// builds the model from a seed (or loads a safetensors file), prefills a
// prompt of N tokens, decodes M tokens one by one, and prints
//   - prefill and decode tokens/s, and the time spent per mixer type;
//   - the model's decode-state memory beside the KV cache an all-attention
//     model of the same width and depth would need;
//   - the largest difference between the last logits of the chunked prefill
//     and those of stepping the prompt token by token (they must agree).
//
//   ./hybrid_lm                                   # Mamba-2 hybrid, 512-token prompt, 32 new tokens
//   ./hybrid_lm --pattern "DFWFDFWFDFAF" --prompt 2048 --decode 64 --threads 2
//   ./hybrid_lm --save model.safetensors          # write the random model
//   ./hybrid_lm --weights model.safetensors       # and run it from the file
//
// Pattern letters (see blocks/hybrid_stack.hpp for the grammar: "(AM)" runs
// two kinds in parallel, lower case is a half-step Macaron block):
//   A attention (GQA, RoPE)   W sliding-window attention   M Mamba-2   S Mamba-1
//   G GLA   D gated DeltaNet   R retention (RetNet)   F SwiGLU MLP   E MoE (8 experts, top-2)
// The default "MFMFMFAFMFMFMF" is the Mamba-2-Hybrid recipe of Waleffe et
// al. (2024): 43% Mamba-2, 7% attention, 50% MLP.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <tokmix/blocks.hpp>
#include <tokmix/io.hpp>

namespace {

using tokmix::index_t;
using clock_type = std::chrono::steady_clock;

struct options {
  std::string pattern = "MFMFMFAFMFMFMF";
  index_t d_model = 512, vocab = 8192, prompt = 512, decode = 32, window = 256;
  int threads = 1;
  std::uint64_t seed = 42;
  std::string weights, save;
};

[[noreturn]] void usage(const char* argv0, const std::string& why) {
  std::fprintf(stderr,
               "%s\nusage: %s [--pattern P] [--d-model D] [--vocab V] [--prompt N] [--decode M] [--window W]\n"
               "          [--threads T] [--seed S] [--weights file.safetensors] [--save file.safetensors]\n",
               why.c_str(), argv0);
  std::exit(2);
}

options parse(int argc, char** argv) {
  options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage(argv[0], "missing value after " + a);
      return argv[++i];
    };
    auto number = [&]() -> long long {
      const std::string v = value();
      char* end = nullptr;
      const long long n = std::strtoll(v.c_str(), &end, 10);
      if (end == v.c_str() || *end != '\0' || n < 0) usage(argv[0], "not a non-negative integer: " + a + " " + v);
      return n;
    };
    if (a == "--pattern") o.pattern = value();
    else if (a == "--d-model") o.d_model = number();
    else if (a == "--vocab") o.vocab = number();
    else if (a == "--prompt") o.prompt = number();
    else if (a == "--decode") o.decode = number();
    else if (a == "--window") o.window = number();
    else if (a == "--threads") o.threads = static_cast<int>(number());
    else if (a == "--seed") o.seed = static_cast<std::uint64_t>(number());
    else if (a == "--weights") o.weights = value();
    else if (a == "--save") o.save = value();
    else usage(argv[0], "unknown argument " + a);
  }
  if (o.d_model < 128 || o.d_model % 128 != 0) usage(argv[0], "--d-model must be a multiple of 128");
  if (o.prompt < 1 || o.vocab < 2) usage(argv[0], "--prompt must be >= 1 and --vocab >= 2");
  return o;
}

// Layer configurations derived from the width, as the reference models scale them.
struct layer_configs {
  tokmix::attention_layer_config attn, window;
  tokmix::mamba2_layer_config mamba2;
  tokmix::mamba_layer_config mamba;
  tokmix::gla_layer_config gla;
  tokmix::deltanet_layer_config delta;
  tokmix::retention_layer_config retention;
  tokmix::mlp_config mlp;
  tokmix::moe_config moe;

  explicit layer_configs(const options& o) {
    const index_t d = o.d_model;
    const tokmix::exec_policy pol = o.threads > 1 ? tokmix::exec_policy::threads(o.threads) : tokmix::exec_policy::serial();
    attn.d_model = d;
    attn.num_heads = d / 64;
    attn.num_kv_heads = std::max<index_t>(1, d / 256);
    attn.policy = pol;
    window = attn;
    window.sliding_window = o.window;
    mamba2.d_model = d;
    mamba2.d_state = 64;
    mamba2.policy = pol;
    mamba.d_model = d;
    mamba.policy = pol;
    gla.d_model = d;
    gla.num_heads = d / 128;
    gla.policy = pol;
    delta = tokmix::deltanet_layer_config::gated_delta_net(d, 64, d / 128, 128);
    delta.policy = pol;
    retention.d_model = d;
    retention.num_heads = d / 128;
    retention.policy = pol;
    mlp = tokmix::mlp_config::swiglu(d, (8 * d / 3 + 63) / 64 * 64);
    moe = tokmix::moe_config::mixtral(d, (8 * d / 3 / 4 + 63) / 64 * 64, 8, 2);
  }
};

// One factory per letter: a random layer from the seed, or the layer's
// tensors from the file under the stack's prefix for that block.
template <class Layer, class Weights, class Config>
tokmix::stack_layer_factory kind(const Config& c, char letter, std::uint64_t seed, const tokmix::named_tensors* file,
                                 const std::vector<tokmix::stack_block>* layout, const tokmix::hybrid_stack* names) {
  return [=](index_t i) -> std::shared_ptr<const tokmix::mixer_layer> {
    if (file == nullptr)
      return std::make_shared<Layer>(c, Weights::random(c, tokmix::random_stream::derive(seed, std::uint64_t(i))));
    const auto& b = (*layout)[std::size_t(i)];
    return std::make_shared<Layer>(c, Weights::load(c, *file, names->mixer_prefix(i, index_t(b.kinds.find(letter)))));
  };
}

template <class Layer, class Weights, class Config>
tokmix::stack_layer_factory ffn_kind(const Config& c, char letter, std::uint64_t seed, const tokmix::named_tensors* file,
                                     const std::vector<tokmix::stack_block>* layout, const tokmix::hybrid_stack* names,
                                     tokmix::exec_policy pol) {
  return [=](index_t i) -> std::shared_ptr<const tokmix::mixer_layer> {
    if (file == nullptr)
      return std::make_shared<Layer>(Weights::random(c, tokmix::random_stream::derive(seed, std::uint64_t(i))), pol);
    const auto& b = (*layout)[std::size_t(i)];
    const std::string p = names->mixer_prefix(i, index_t(b.kinds.find(letter)));
    return std::make_shared<Layer>(Weights::load(*file, p.substr(0, p.size() - 1), c), pol);
  };
}

tokmix::stack_layer_kinds make_kinds(const layer_configs& lc, std::uint64_t seed, const tokmix::named_tensors* file,
                                     const std::vector<tokmix::stack_block>* layout, const tokmix::hybrid_stack* names) {
  using namespace tokmix;
  stack_layer_kinds k;
  k['A'] = kind<attention_layer, attention_layer_weights>(lc.attn, 'A', seed + 1, file, layout, names);
  k['W'] = kind<attention_layer, attention_layer_weights>(lc.window, 'W', seed + 2, file, layout, names);
  k['M'] = kind<mamba2_layer, mamba2_layer_weights>(lc.mamba2, 'M', seed + 3, file, layout, names);
  k['S'] = kind<mamba_layer, mamba_layer_weights>(lc.mamba, 'S', seed + 4, file, layout, names);
  k['G'] = kind<gla_layer, gla_layer_weights>(lc.gla, 'G', seed + 5, file, layout, names);
  k['D'] = kind<deltanet_layer, deltanet_layer_weights>(lc.delta, 'D', seed + 6, file, layout, names);
  k['R'] = kind<retention_layer, retention_layer_weights>(lc.retention, 'R', seed + 7, file, layout, names);
  k['F'] = ffn_kind<mlp_layer, mlp_weights>(lc.mlp, 'F', seed + 8, file, layout, names, lc.attn.policy);
  k['E'] = ffn_kind<moe_layer, moe_weights>(lc.moe, 'E', seed + 9, file, layout, names, lc.attn.policy);
  return k;
}

double seconds_since(clock_type::time_point t0) {
  return std::chrono::duration<double>(clock_type::now() - t0).count();
}

std::int32_t argmax(const std::vector<float>& v) {
  return static_cast<std::int32_t>(std::max_element(v.begin(), v.end()) - v.begin());
}

void print_timings(const char* what, const tokmix::stack_timings& t, double total) {
  std::printf("  %s time by mixer type:", what);
  for (const auto& kv : t.seconds) std::printf("  %s %.1f ms (%.0f%%)", kv.first.c_str(), 1e3 * kv.second, 100 * kv.second / total);
  std::printf("\n");
}

int run(const options& o) {
  const layer_configs lc(o);
  tokmix::hybrid_stack_config cfg;
  cfg.d_model = o.d_model;
  cfg.vocab_size = o.vocab;
  cfg.policy = lc.attn.policy;

  // The layout (which block holds which kind, and the weight prefixes) comes
  // from the pattern alone, so file-backed factories know their names.
  const auto plain_kinds = make_kinds(lc, o.seed, nullptr, nullptr, nullptr);
  std::unique_ptr<tokmix::hybrid_stack> model;
  tokmix::named_tensors file;
  if (o.weights.empty()) {
    model = std::make_unique<tokmix::hybrid_stack>(cfg, tokmix::parse_stack_pattern(o.pattern, plain_kinds), o.seed);
  } else {
    file = tokmix::safetensors_load(o.weights);
    tokmix::hybrid_stack_config probe_cfg = cfg;
    probe_cfg.vocab_size = 0;
    const auto layout = tokmix::parse_stack_pattern(o.pattern, plain_kinds);
    const tokmix::hybrid_stack names(probe_cfg, layout, 0);
    model = std::make_unique<tokmix::hybrid_stack>(
        cfg, tokmix::parse_stack_pattern(o.pattern, make_kinds(lc, o.seed, &file, &layout, &names)), file);
    // Every tensor of the file must have been read by someone.
    tokmix::named_tensors again;
    model->save(again);
    const auto unused = file.names_not_in(again.names());
    if (!unused.empty()) {
      std::fprintf(stderr, "hybrid_lm: %zu tensors of %s match no layer of pattern %s (first: %s)\n", unused.size(),
                   o.weights.c_str(), o.pattern.c_str(), unused.front().c_str());
      return 1;
    }
  }
  if (!o.save.empty()) {
    tokmix::named_tensors t;
    model->save(t);
    tokmix::safetensors_write(o.save, t);
    std::printf("hybrid_lm: wrote %zu tensors (%.1f MB) to %s\n", t.size(), 4e-6 * double(t.total_elements()), o.save.c_str());
  }

  tokmix::named_tensors count;
  model->save(count);
  std::printf("hybrid_lm: pattern %s, %td blocks, d_model %td, vocab %td, %.1f M parameters, %d thread(s), %s weights\n",
              o.pattern.c_str(), model->n_blocks(), o.d_model, o.vocab, 1e-6 * double(count.total_elements()),
              o.threads, o.weights.empty() ? "random" : "loaded");

  std::vector<std::int32_t> prompt(static_cast<std::size_t>(o.prompt));
  tokmix::random_stream g(o.seed + 100);
  for (auto& t : prompt) t = static_cast<std::int32_t>(g.uniform01() * double(o.vocab));
  const index_t capacity = o.prompt + o.decode;

  // Prefill, then decode greedily.
  auto state = model->make_state(1, capacity);
  std::vector<float> logits(static_cast<std::size_t>(o.vocab)), prefill_logits;
  tokmix::stack_timings tp, td;
  auto t0 = clock_type::now();
  model->prefill(tokmix::tensor_view<const std::int32_t, 2>(prompt.data(), {1, o.prompt}), state,
                 tokmix::tensor_view<float, 2>(logits.data(), {1, o.vocab}), &tp);
  const double t_prefill = seconds_since(t0);
  prefill_logits = logits;
  std::vector<std::int32_t> generated;
  t0 = clock_type::now();
  for (index_t i = 0; i < o.decode; ++i) {
    const std::int32_t next = argmax(logits);
    generated.push_back(next);
    model->step(tokmix::tensor_view<const std::int32_t, 1>(&next, {1}), state,
                tokmix::tensor_view<float, 2>(logits.data(), {1, o.vocab}), &td);
  }
  const double t_decode = seconds_since(t0);

  std::printf("prefill: %td tokens in %.1f ms = %.0f tokens/s\n", o.prompt, 1e3 * t_prefill, double(o.prompt) / t_prefill);
  print_timings("prefill", tp, t_prefill);
  if (o.decode > 0) {
    std::printf("decode:  %td tokens in %.1f ms = %.1f tokens/s (%.2f ms/token)\n", o.decode, 1e3 * t_decode,
                double(o.decode) / t_decode, 1e3 * t_decode / double(o.decode));
    print_timings("decode", td, t_decode);
    std::printf("  first generated ids:");
    for (std::size_t i = 0; i < std::min<std::size_t>(generated.size(), 12); ++i) std::printf(" %d", generated[i]);
    std::printf("\n");
  }

  // Decode memory against an all-attention model of the same width and depth
  // (every mixer block attention, the same MLPs) at the same context.
  index_t mixer_blocks = 0;
  for (const auto& b : model->blocks())
    for (const auto& l : b.branches)
      if (std::strcmp(l->name(), "mlp") != 0 && std::strcmp(l->name(), "moe") != 0) ++mixer_blocks;
  const tokmix::attention_layer full_attention(lc.attn, tokmix::attention_layer_weights::random(lc.attn, 1));
  const std::size_t kv_bytes = std::size_t(mixer_blocks) * full_attention.state_bytes(1, capacity);
  std::printf("decode state at %td tokens: %.2f MB (", capacity, 1e-6 * double(state.bytes()));
  bool first = true;
  for (const auto& kv : state.bytes_by_kind()) {
    if (kv.second == 0) continue;
    std::printf("%s%s %.2f MB", first ? "" : ", ", kv.first.c_str(), 1e-6 * double(kv.second));
    first = false;
  }
  std::printf(")\n  an all-attention model (%td attention layers) would hold %.2f MB of KV cache: the hybrid needs %.2fx that\n",
              mixer_blocks, 1e-6 * double(kv_bytes), kv_bytes > 0 ? double(state.bytes()) / double(kv_bytes) : 0.0);

  // Chunked prefill == stepping the prompt token by token.
  auto replay = model->make_state(1, capacity);
  for (index_t t = 0; t < o.prompt; ++t)
    model->step(tokmix::tensor_view<const std::int32_t, 1>(&prompt[std::size_t(t)], {1}), replay,
                tokmix::tensor_view<float, 2>(logits.data(), {1, o.vocab}));
  double diff = 0, scale = 0;
  for (index_t v = 0; v < o.vocab; ++v) {
    diff = std::max(diff, double(std::abs(logits[std::size_t(v)] - prefill_logits[std::size_t(v)])));
    scale = std::max(scale, double(std::abs(prefill_logits[std::size_t(v)])));
  }
  const bool ok = diff <= 1e-3 * std::max(1.0, scale);
  std::printf("last logits, chunked prefill vs %td single steps: max |diff| = %.3g (max |logit| %.3g): %s\n", o.prompt,
              diff, scale, ok ? "agree" : "DISAGREE");
  return ok ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  const options o = parse(argc, argv);
  try {
    return run(o);
  } catch (const tokmix::argument_error& e) {
    std::fprintf(stderr, "hybrid_lm: %s\n", e.what());
    return 1;
  }
}
