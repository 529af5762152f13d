// How user code plugs its own mixer into a tokmix hybrid stack: implement
// tokmix::mixer_layer (and a mixer_layer_state for what decode must keep),
// give it a letter in the pattern, and the stack runs it beside tokmix's own
// layers with one state object, prefill and step.
//
// The mixer here is RWKV's token shift with a learned projection (Peng et
// al. 2023): y_t = W (mu . x_t + (1 - mu) . x_{t-1}), x_{-1} = 0; its decode
// state is the previous token's input. The example builds "SFAF S F" (shift,
// MLP, attention, MLP, shift, MLP), prefills a prompt, decodes a few tokens
// and checks that prefill and step agree.
//
//   ./custom_mixer
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <vector>

#include <tokmix/blocks.hpp>

namespace {

using tokmix::index_t;

// What decode needs: the last input row of each sequence.
class token_shift_state final : public tokmix::mixer_layer_state {
 public:
  token_shift_state(index_t batch, index_t d) : batch_(batch), prev(static_cast<std::size_t>(batch * d), 0.f) {}
  const char* layer_name() const override { return "token_shift"; }
  index_t batch() const override { return batch_; }
  index_t position() const override { return position_; }
  std::size_t bytes() const override { return prev.size() * sizeof(float); }
  void reset() override {
    std::fill(prev.begin(), prev.end(), 0.f);
    position_ = 0;
  }
  index_t batch_, position_ = 0;
  std::vector<float> prev;  // [batch, d]
};

class token_shift_layer final : public tokmix::mixer_layer {
 public:
  token_shift_layer(index_t d, std::uint64_t seed)
      : d_(d), proj_(tokmix::linear_weights::random(d, d, false, seed)), mu_(static_cast<std::size_t>(d)) {
    tokmix::random_stream g(tokmix::random_stream::derive(seed, 1));
    for (auto& m : mu_) m = static_cast<float>(g.uniform(0.2, 0.8));
  }
  const char* name() const override { return "token_shift"; }
  index_t d_model() const override { return d_; }
  std::unique_ptr<tokmix::mixer_layer_state> make_state(index_t batch, index_t) const override {
    return std::make_unique<token_shift_state>(batch, d_);
  }
  std::size_t state_bytes(index_t batch, index_t) const override { return std::size_t(batch * d_) * sizeof(float); }

  // x, y: [batch, seq, d]. Validate everything first, then write.
  void prefill(tokmix::tensor_view<const float, 3> x, tokmix::tensor_view<float, 3> y,
               tokmix::mixer_layer_state& s) const override {
    auto& st = tokmix::detail::mixer_state_cast<token_shift_state>(s, name());
    tokmix::require_shape("x", x, {st.batch(), -1, d_});
    tokmix::require_shape("y", y, {st.batch(), x.dim(1), d_});
    const index_t B = x.dim(0), L = x.dim(1);
    std::vector<float> mixed(static_cast<std::size_t>(B * L * d_));
    for (index_t b = 0; b < B; ++b)
      for (index_t t = 0; t < L; ++t)
        for (index_t e = 0; e < d_; ++e) {
          const float prev = t > 0 ? x(b, t - 1, e) : st.prev[std::size_t(b * d_ + e)];
          mixed[std::size_t((b * L + t) * d_ + e)] = mu_[std::size_t(e)] * x(b, t, e) + (1 - mu_[std::size_t(e)]) * prev;
        }
    for (index_t b = 0; b < B && L > 0; ++b)
      for (index_t e = 0; e < d_; ++e) st.prev[std::size_t(b * d_ + e)] = x(b, L - 1, e);
    for (index_t b = 0; b < B; ++b)
      tokmix::linear_forward(proj_, tokmix::tensor_view<const float, 2>(mixed.data() + b * L * d_, {L, d_}),
                             tokmix::tensor_view<float, 2>(y.ptr(b), {L, d_}, {y.stride(1), 1}));
    st.position_ += L;
  }

  // x, y: [batch, d]
  void step(tokmix::tensor_view<const float, 2> x, tokmix::tensor_view<float, 2> y,
            tokmix::mixer_layer_state& s) const override {
    prefill(tokmix::tensor_view<const float, 3>(x.data(), {x.dim(0), 1, d_}, {x.stride(0), d_, 1}),
            tokmix::tensor_view<float, 3>(y.data(), {y.dim(0), 1, d_}, {y.stride(0), d_, 1}), s);
  }

  void save(tokmix::named_tensors& t, const std::string& prefix) const override {
    proj_.save(t, prefix + "proj");
    t.insert(prefix + "mu", {d_}, mu_);
  }
  const tokmix::exec_policy& policy() const override { return policy_; }

 private:
  index_t d_;
  tokmix::linear_weights proj_;
  std::vector<float> mu_;
  tokmix::exec_policy policy_;
};

}  // namespace

int main() {
  const index_t d = 64, vocab = 256, prompt = 48, decode = 8;

  tokmix::attention_layer_config attn;
  attn.d_model = d;
  attn.num_heads = 4;
  attn.num_kv_heads = 2;
  const auto mlp = tokmix::mlp_config::swiglu(d, 172);

  tokmix::stack_layer_kinds kinds;
  kinds['S'] = [&](index_t i) { return std::make_shared<token_shift_layer>(d, 100 + std::uint64_t(i)); };
  kinds['A'] = [&](index_t i) {
    return std::make_shared<tokmix::attention_layer>(attn, tokmix::attention_layer_weights::random(attn, 200 + std::uint64_t(i)));
  };
  kinds['F'] = [&](index_t i) { return std::make_shared<tokmix::mlp_layer>(tokmix::mlp_weights::random(mlp, 300 + std::uint64_t(i))); };

  tokmix::hybrid_stack_config cfg;
  cfg.d_model = d;
  cfg.vocab_size = vocab;
  const tokmix::hybrid_stack model(cfg, tokmix::parse_stack_pattern("SFAF S F", kinds), 7);

  std::vector<std::int32_t> tokens(prompt);
  for (index_t t = 0; t < prompt; ++t) tokens[std::size_t(t)] = std::int32_t((t * 37 + 11) % vocab);

  // Prefill the prompt, then decode greedily.
  auto state = model.make_state(1, prompt + decode);
  std::vector<float> logits(vocab), all(static_cast<std::size_t>(prompt * vocab));
  model.prefill(tokmix::tensor_view<const std::int32_t, 2>(tokens.data(), {1, prompt}), state,
                tokmix::tensor_view<float, 2>(logits.data(), {1, vocab}), nullptr,
                tokmix::tensor_view<float, 3>(all.data(), {1, prompt, vocab}));
  std::printf("custom_mixer: pattern SFAF S F, d_model %td, state %zu bytes after %td tokens\n", d, state.bytes(), prompt);
  for (const auto& kv : state.bytes_by_kind()) std::printf("  %-12s %8zu bytes\n", kv.first.c_str(), kv.second);
  std::printf("decoded:");
  for (index_t i = 0; i < decode; ++i) {
    const std::int32_t next =
        std::int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
    std::printf(" %d", next);
    model.step(tokmix::tensor_view<const std::int32_t, 1>(&next, {1}), state, tokmix::tensor_view<float, 2>(logits.data(), {1, vocab}));
  }
  std::printf("\n");

  // Prefill and step agree: replay the prompt token by token.
  auto replay = model.make_state(1, prompt);
  double max_diff = 0;
  for (index_t t = 0; t < prompt; ++t) {
    model.step(tokmix::tensor_view<const std::int32_t, 1>(&tokens[std::size_t(t)], {1}), replay,
               tokmix::tensor_view<float, 2>(logits.data(), {1, vocab}));
    for (index_t v = 0; v < vocab; ++v)
      max_diff = std::max(max_diff, double(std::abs(logits[std::size_t(v)] - all[std::size_t(t * vocab + v)])));
  }
  std::printf("prefill vs token-by-token logits: max |diff| = %.3g\n", max_diff);
  return max_diff < 1e-3 ? 0 : 1;
}
