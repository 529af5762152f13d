#pragma once
// Hybrid stacks: the residual skeleton of a model whose layers are any
// mixer_layer (attention, Mamba, Mamba-2, GLA, DeltaNet, retention, an MLP,
// or the caller's own), described by a per-layer pattern, with one state
// object for the whole model and prefill / step for all of it.
//
//   tokmix::stack_layer_kinds kinds;
//   kinds['M'] = [&](index_t i) { return std::make_shared<tokmix::mamba2_layer>(...); };
//   kinds['A'] = ...;  kinds['F'] = ...;            // an MLP is a stateless mixer_layer
//   tokmix::hybrid_stack_config cfg;                 // d_model, vocab, norms, placement
//   tokmix::hybrid_stack model(cfg, tokmix::parse_stack_pattern("MFMFAF", kinds), seed);
//   auto st = model.make_state(batch, max_tokens);
//   model.prefill(tokens, st, logits);               // tokens [B, L] -> logits [B, vocab]
//   model.step(next, st, logits);                    // next [B]      -> logits [B, vocab]
//
// Pattern grammar (whitespace ignored):
//   X       one block whose mixer is kinds['X']
//   x       the same kind as a half-step block (residual scale 1/2): "fAf" is a
//           Macaron FFN-attention-FFN layer (Lu et al. 2019; Conformer)
//   (XY..)  one block running kinds X, Y, ... in parallel on the same input,
//           outputs combined by hybrid_stack_config::combine (Hymba, MossFormer,
//           LS-attention)
// A kind whose factory returns the same layer object at every call is shared
// across depth (Zamba's shared attention block): its weights exist once, but
// each occurrence keeps its own state (its own KV cache).
//
// Residual placement per block, with s the residual scale and f the mixer:
//   pre   h <- h + s f(norm(h))                       (GPT-2, Llama, Mamba)
//   post  h <- norm(h + s f(h))                       (original Transformer)
//   peri  h <- h + s norm_out(f(norm_in(h)))          (Gemma-2 sandwich / Peri-LN)
// Parallel blocks: f(u) = sum_j f_j(u) (sum), mean_j f_j(u) (mean), or
// mean_j rms_norm_j(f_j(u)) with a gain per branch (normalized_mean, Hymba's
// combination of its attention and SSM heads).
// Model: h = embed[token]; blocks; y = final_norm(h) (pre / peri); logits =
// lm_head y (tied to the embedding unless configured otherwise).
//
// ref: Waleffe et al., "An Empirical Study of Mamba-based Language Models"
//      (2024, the Mamba-2-Hybrid pattern); Glorioso et al., "Zamba" (2024);
//      Dong et al., "Hymba" (2024); Xiong et al., "On Layer Normalization in
//      the Transformer Architecture" (2020, pre vs post); Kim et al.,
//      "Peri-LN" (2025).
//
// Weights (named_tensors, the names a Hugging Face style checkpoint uses):
//   embed_tokens.weight [vocab, d]   lm_head.weight [vocab, d] (untied only)
//   norm.weight (final), layers.{i}.input_norm.weight, layers.{i}.post_norm.weight,
//   layers.{i}.branch_norm.{j}.weight (normalized_mean), and each mixer's own
//   tensors under layers.{i}.mixer. (parallel: layers.{i}.mixer.{j}.; a
//   shared kind under shared.{X}.).

#include <algorithm>
#include <array>
#include <cmath>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "tokmix/blocks/linear.hpp"
#include "tokmix/blocks/mixer_layer.hpp"
#include "tokmix/blocks/norm.hpp"
#include "tokmix/core/error.hpp"
#include "tokmix/core/named_tensors.hpp"
#include "tokmix/core/random.hpp"
#include "tokmix/core/tensor_view.hpp"
#include "tokmix/core/threading.hpp"

namespace tokmix {

enum class norm_placement { pre, post, peri };
enum class stack_norm_kind { rms, layer };
enum class parallel_combine { sum, mean, normalized_mean };

// One residual block: its mixer(s) and residual scale.
struct stack_block {
  std::vector<std::shared_ptr<const mixer_layer>> branches;  // >= 1; > 1 = parallel
  float residual_scale = 1.f;                                // 0.5 for Macaron half-steps
  std::string kinds;                                         // pattern letters, for names and errors
  std::vector<bool> shared;                                  // per branch: the kind is shared across depth
};

// Builds layer `block_index` of kind X. Return the same object on every call
// to share a layer across depth.
using stack_layer_factory = std::function<std::shared_ptr<const mixer_layer>(index_t block_index)>;
using stack_layer_kinds = std::map<char, stack_layer_factory>;

struct hybrid_stack_config {
  index_t d_model = 0;
  index_t vocab_size = 0;  // 0: no embedding / head (forward_hidden only)
  bool tie_embeddings = true;
  stack_norm_kind norm = stack_norm_kind::rms;
  norm_placement placement = norm_placement::pre;
  parallel_combine combine = parallel_combine::normalized_mean;
  float norm_eps = 1e-5f;
  bool final_norm = true;  // ignored under post placement (the last block ends normalised)
  exec_policy policy;
};

namespace detail {

// Throws argument_error naming the position of the first character that breaks
// the grammar, or the letter no factory knows.
inline std::vector<stack_block> parse_stack_pattern_impl(const std::string& pattern, const stack_layer_kinds& kinds) {
  std::vector<stack_block> blocks;
  auto make = [&](char kind, index_t block, std::size_t pos) {
    const auto it = kinds.find(kind);
    if (it == kinds.end() || !it->second) {
      std::string known;
      for (const auto& kv : kinds) known += kv.first;
      throw argument_error("pattern", "a layer kind among \"" + known + "\"",
                           std::string("'") + kind + "' at position " + std::to_string(pos));
    }
    std::shared_ptr<const mixer_layer> layer = it->second(block);
    if (!layer)
      throw argument_error("pattern", std::string("a layer from the factory of '") + kind + "'",
                           "nullptr for block " + std::to_string(block));
    return layer;
  };
  for (std::size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c == ' ' || c == '\t' || c == '\n') continue;
    const index_t index = static_cast<index_t>(blocks.size());
    stack_block b;
    if (c == '(') {
      std::size_t j = i + 1;
      for (; j < pattern.size() && pattern[j] != ')'; ++j) {
        const char k = pattern[j];
        if (k == ' ') continue;
        if (!(k >= 'A' && k <= 'Z'))
          throw argument_error("pattern", "upper-case layer kinds inside (...)",
                               std::string("'") + k + "' at position " + std::to_string(j));
        b.branches.push_back(make(k, index, j));
        b.kinds += k;
      }
      if (j == pattern.size()) throw argument_error("pattern", "')' closing the '(' at position " + std::to_string(i), "end of pattern");
      if (b.branches.size() < 2)
        throw argument_error("pattern", "at least two kinds inside (...)",
                             "(" + b.kinds + ") at position " + std::to_string(i));
      i = j;
    } else if (c >= 'A' && c <= 'Z') {
      b.branches.push_back(make(c, index, i));
      b.kinds += c;
    } else if (c >= 'a' && c <= 'z') {
      const char up = static_cast<char>(c - 'a' + 'A');
      b.branches.push_back(make(up, index, i));
      b.kinds += up;
      b.residual_scale = 0.5f;
    } else {
      throw argument_error("pattern", "layer letters, '(' ... ')' or spaces",
                           std::string("'") + c + "' at position " + std::to_string(i));
    }
    blocks.push_back(std::move(b));
  }
  if (blocks.empty()) throw argument_error("pattern", "at least one block", "\"" + pattern + "\"");
  // A kind is shared when two of its occurrences are the same object.
  std::map<char, std::vector<const mixer_layer*>> seen;
  for (const auto& b : blocks)
    for (std::size_t j = 0; j < b.branches.size(); ++j) seen[b.kinds[j]].push_back(b.branches[j].get());
  for (auto& b : blocks) {
    b.shared.assign(b.branches.size(), false);
    for (std::size_t j = 0; j < b.branches.size(); ++j) {
      const auto& v = seen[b.kinds[j]];
      b.shared[j] = std::count(v.begin(), v.end(), b.branches[j].get()) > 1;
    }
  }
  return blocks;
}

// rms or layer norm weights behind one interface.
struct stack_norm {
  stack_norm_kind kind = stack_norm_kind::rms;
  rms_norm_weights rms;
  layer_norm_weights ln;

  static stack_norm random(stack_norm_kind kind, index_t d, float eps, std::uint64_t seed) {
    stack_norm n;
    n.kind = kind;
    if (kind == stack_norm_kind::rms) n.rms = rms_norm_weights::random(d, seed, eps);
    else n.ln = layer_norm_weights::random(d, true, seed, eps);
    return n;
  }
  static stack_norm load(stack_norm_kind kind, const named_tensors& t, const std::string& prefix, index_t d, float eps) {
    stack_norm n;
    n.kind = kind;
    if (kind == stack_norm_kind::rms) n.rms = rms_norm_weights::load(t, prefix, d, eps);
    else n.ln = layer_norm_weights::load(t, prefix, d, true, eps);
    return n;
  }
  void save(named_tensors& t, const std::string& prefix) const {
    if (kind == stack_norm_kind::rms) rms.save(t, prefix);
    else ln.save(t, prefix);
  }
  template <int R>
  void apply(tensor_view<const float, R> x, tensor_view<float, R> y, const exec_policy& p) const {
    if (kind == stack_norm_kind::rms) rms_norm(x, rms, y, p);
    else layer_norm(x, ln, y, p);
  }
};

}  // namespace detail

// Splits a pattern into blocks, calling each kind's factory once per
// occurrence (block index given). See the grammar at the top of this file.
inline std::vector<stack_block> parse_stack_pattern(const std::string& pattern, const stack_layer_kinds& kinds) {
  return detail::parse_stack_pattern_impl(pattern, kinds);
}

// Wall time spent per layer name() (and "embedding", "norms", "lm_head"),
// accumulated over the calls that were handed it.
struct stack_timings {
  std::map<std::string, double> seconds;
};

// Everything decode needs for the whole model: one state per (block, branch)
// occurrence, the tokens seen, and the step buffers (so a step allocates
// nothing).
class hybrid_stack_state {
 public:
  index_t batch() const { return batch_; }
  index_t position() const { return position_; }
  // Tokens per sequence the state was made for (the KV capacity).
  index_t max_tokens() const { return max_tokens_; }
  // Bytes the layers hold for decode (KV caches, SSM / recurrent states).
  std::size_t bytes() const {
    std::size_t n = 0;
    for (const auto& b : layers_)
      for (const auto& s : b) n += s->bytes();
    return n;
  }
  // Bytes per layer kind name ("attention", "mamba2", ...).
  std::map<std::string, std::size_t> bytes_by_kind() const {
    std::map<std::string, std::size_t> out;
    for (const auto& b : layers_)
      for (const auto& s : b) out[s->layer_name()] += s->bytes();
    return out;
  }
  void reset() {
    for (auto& b : layers_)
      for (auto& s : b) s->reset();
    position_ = 0;
  }
  mixer_layer_state& layer(index_t block, index_t branch = 0) { return *layers_.at(block).at(branch); }

 private:
  friend class hybrid_stack;
  index_t batch_ = 0, position_ = 0, max_tokens_ = 0;
  std::vector<std::vector<std::unique_ptr<mixer_layer_state>>> layers_;
  std::vector<float> h_, u_, f_, g_, acc_;  // [batch, d] step buffers
};

class hybrid_stack {
 public:
  // Random stack weights (embedding, norms, head) from `seed`; the mixers come
  // with their own weights from the factories.
  hybrid_stack(const hybrid_stack_config& cfg, std::vector<stack_block> blocks, std::uint64_t seed)
      : cfg_(cfg), blocks_(std::move(blocks)) {
    check_config();
    const index_t d = cfg_.d_model;
    if (cfg_.vocab_size > 0) {
      // Embedding N(0, 1) / sqrt(d) so h starts at unit RMS; tied head reuses it.
      embed_.weight.resize(cfg_.vocab_size, d);
      random_stream g(random_stream::derive(seed, 1));
      const double s = 1.0 / std::sqrt(static_cast<double>(d));
      for (index_t i = 0; i < embed_.weight.size(); ++i) embed_.weight.data()[i] = static_cast<float>(g.normal() * s);
      if (!cfg_.tie_embeddings) head_ = linear_weights::random(d, cfg_.vocab_size, false, random_stream::derive(seed, 2));
    }
    for (std::size_t i = 0; i < blocks_.size(); ++i) {
      const std::uint64_t bs = random_stream::derive(seed, 100 + i);
      block_norms n;
      if (cfg_.placement != norm_placement::post) n.in = detail::stack_norm::random(cfg_.norm, d, cfg_.norm_eps, random_stream::derive(bs, 0));
      if (cfg_.placement != norm_placement::pre) n.out = detail::stack_norm::random(cfg_.norm, d, cfg_.norm_eps, random_stream::derive(bs, 1));
      if (blocks_[i].branches.size() > 1 && cfg_.combine == parallel_combine::normalized_mean)
        for (std::size_t j = 0; j < blocks_[i].branches.size(); ++j)
          n.branch.push_back(rms_norm_weights::random(d, random_stream::derive(bs, 2 + j), cfg_.norm_eps));
      norms_.push_back(std::move(n));
    }
    if (has_final_norm()) final_ = detail::stack_norm::random(cfg_.norm, d, cfg_.norm_eps, random_stream::derive(seed, 3));
  }

  // The stack's own weights from named tensors (the mixers load theirs in the
  // factories). A missing or misshapen tensor throws argument_error naming it.
  hybrid_stack(const hybrid_stack_config& cfg, std::vector<stack_block> blocks, const named_tensors& t)
      : cfg_(cfg), blocks_(std::move(blocks)) {
    check_config();
    const index_t d = cfg_.d_model;
    const float eps = cfg_.norm_eps;
    if (cfg_.vocab_size > 0) {
      const auto& e = t.at("embed_tokens.weight", {cfg_.vocab_size, d});
      embed_.weight = Eigen::Map<const linear_weights::matrix>(e.data.data(), cfg_.vocab_size, d);
      if (!cfg_.tie_embeddings) head_ = linear_weights::load(t, "lm_head", d, cfg_.vocab_size, false);
    }
    for (std::size_t i = 0; i < blocks_.size(); ++i) {
      const std::string p = "layers." + std::to_string(i) + ".";
      block_norms n;
      if (cfg_.placement != norm_placement::post) n.in = detail::stack_norm::load(cfg_.norm, t, p + "input_norm", d, eps);
      if (cfg_.placement != norm_placement::pre) n.out = detail::stack_norm::load(cfg_.norm, t, p + "post_norm", d, eps);
      if (blocks_[i].branches.size() > 1 && cfg_.combine == parallel_combine::normalized_mean)
        for (std::size_t j = 0; j < blocks_[i].branches.size(); ++j)
          n.branch.push_back(rms_norm_weights::load(t, p + "branch_norm." + std::to_string(j), d, eps));
      norms_.push_back(std::move(n));
    }
    if (has_final_norm()) final_ = detail::stack_norm::load(cfg_.norm, t, "norm", d, eps);
  }

  const hybrid_stack_config& config() const { return cfg_; }
  const std::vector<stack_block>& blocks() const { return blocks_; }
  index_t n_blocks() const { return static_cast<index_t>(blocks_.size()); }

  // Prefix under which block i's branch j keeps its mixer weights.
  std::string mixer_prefix(index_t i, index_t j = 0) const {
    const stack_block& b = blocks_.at(static_cast<std::size_t>(i));
    if (b.shared.at(static_cast<std::size_t>(j))) return std::string("shared.") + b.kinds[static_cast<std::size_t>(j)] + ".";
    const std::string p = "layers." + std::to_string(i) + ".mixer.";
    return b.branches.size() > 1 ? p + std::to_string(j) + "." : p;
  }

  // Every weight of the model: the stack's and each mixer's (shared ones once).
  void save(named_tensors& t) const {
    if (cfg_.vocab_size > 0) {
      t.insert("embed_tokens.weight", {cfg_.vocab_size, cfg_.d_model},
               std::vector<float>(embed_.weight.data(), embed_.weight.data() + embed_.weight.size()));
      if (!cfg_.tie_embeddings) head_.save(t, "lm_head");
    }
    std::vector<const mixer_layer*> saved;
    for (std::size_t i = 0; i < blocks_.size(); ++i) {
      const std::string p = "layers." + std::to_string(i) + ".";
      if (cfg_.placement != norm_placement::post) norms_[i].in.save(t, p + "input_norm");
      if (cfg_.placement != norm_placement::pre) norms_[i].out.save(t, p + "post_norm");
      for (std::size_t j = 0; j < norms_[i].branch.size(); ++j) norms_[i].branch[j].save(t, p + "branch_norm." + std::to_string(j));
      for (std::size_t j = 0; j < blocks_[i].branches.size(); ++j) {
        const mixer_layer* l = blocks_[i].branches[j].get();
        if (std::find(saved.begin(), saved.end(), l) != saved.end()) continue;
        saved.push_back(l);
        l->save(t, mixer_prefix(static_cast<index_t>(i), static_cast<index_t>(j)));
      }
    }
    if (has_final_norm()) final_.save(t, "norm");
  }

  hybrid_stack_state make_state(index_t batch, index_t max_tokens) const {
    require(batch >= 1, "batch", ">= 1", batch);
    require(max_tokens >= 1, "max_tokens", ">= 1", max_tokens);
    hybrid_stack_state s;
    s.batch_ = batch;
    s.max_tokens_ = max_tokens;
    for (const auto& b : blocks_) {
      std::vector<std::unique_ptr<mixer_layer_state>> v;
      for (const auto& l : b.branches) v.push_back(l->make_state(batch, max_tokens));
      s.layers_.push_back(std::move(v));
    }
    const std::size_t n = static_cast<std::size_t>(batch * cfg_.d_model);
    for (auto* buf : {&s.h_, &s.u_, &s.f_, &s.g_, &s.acc_}) buf->assign(n, 0.f);
    return s;
  }

  // bytes() of make_state(batch, max_tokens), without making it.
  std::size_t state_bytes(index_t batch, index_t max_tokens) const {
    std::size_t n = 0;
    for (const auto& b : blocks_)
      for (const auto& l : b.branches) n += l->state_bytes(batch, max_tokens);
    return n;
  }

  // Hidden states through every block (and the final norm):
  //   x, y: [batch, seq, d_model]; y may equal x.
  void forward_hidden(tensor_view<const float, 3> x, tensor_view<float, 3> y, hybrid_stack_state& st,
                      stack_timings* timings = nullptr) const {
    require_layout("x", x);
    require_layout("y", y);
    require_shape("x", x, {st.batch(), -1, cfg_.d_model});
    require_shape("y", y, {st.batch(), x.dim(1), cfg_.d_model});
    check_room(st, x.dim(1));
    const index_t B = x.dim(0), L = x.dim(1), d = cfg_.d_model;
    if (L == 0) return;
    std::vector<float> h(static_cast<std::size_t>(B * L * d));
    for (index_t b = 0; b < B; ++b)
      for (index_t t = 0; t < L; ++t) std::copy(x.ptr(b, t, 0), x.ptr(b, t, 0) + d, h.data() + (b * L + t) * d);
    run_blocks<3>(h.data(), {B, L, d}, st, timings);
    for (index_t b = 0; b < B; ++b)
      for (index_t t = 0; t < L; ++t) std::copy(h.data() + (b * L + t) * d, h.data() + (b * L + t + 1) * d, y.ptr(b, t, 0));
    st.position_ += L;
  }

  // Token prefill: tokens [batch, seq] in [0, vocab); logits of each
  // sequence's last token into logits [batch, vocab] (an empty view skips
  // them), or of every token with all_logits [batch, seq, vocab].
  void prefill(tensor_view<const std::int32_t, 2> tokens, hybrid_stack_state& st, tensor_view<float, 2> logits,
               stack_timings* timings = nullptr, tensor_view<float, 3> all_logits = {}) const {
    require(cfg_.vocab_size > 0, "hybrid_stack vocab_size", "> 0 for token input", cfg_.vocab_size);
    require_layout("tokens", tokens);
    require_shape("tokens", tokens, {st.batch(), -1});
    const index_t B = tokens.dim(0), L = tokens.dim(1), d = cfg_.d_model, V = cfg_.vocab_size;
    if (logits.data() != nullptr) {
      require_layout("logits", logits);
      require_shape("logits", logits, {B, V});
    }
    if (all_logits.data() != nullptr) {
      require_layout("all_logits", all_logits);
      require_shape("all_logits", all_logits, {B, L, V});
    }
    check_tokens(tokens.data(), B, L, tokens.stride(0), tokens.stride(1));
    check_room(st, L);
    if (L == 0) return;
    std::vector<float> h(static_cast<std::size_t>(B * L * d));
    timed(timings, "embedding", [&] {
      for (index_t b = 0; b < B; ++b)
        for (index_t t = 0; t < L; ++t) embed_row(tokens(b, t), h.data() + (b * L + t) * d);
    });
    run_blocks<3>(h.data(), {B, L, d}, st, timings);
    st.position_ += L;
    timed(timings, "lm_head", [&] {
      if (all_logits.data() != nullptr)
        for (index_t b = 0; b < B; ++b)
          head_rows(tensor_view<const float, 2>(h.data() + b * L * d, {L, d}),
                    tensor_view<float, 2>(all_logits.ptr(b, 0, 0), {L, V}, {all_logits.stride(1), 1}));
      if (logits.data() != nullptr)
        head_rows(tensor_view<const float, 2>(h.data() + (L - 1) * d, {B, d}, {L * d, 1}), logits);
    });
  }

  // One token per sequence: tokens [batch] -> logits [batch, vocab].
  // Allocates nothing once every layer has seen its first step.
  void step(tensor_view<const std::int32_t, 1> tokens, hybrid_stack_state& st, tensor_view<float, 2> logits,
            stack_timings* timings = nullptr) const {
    require(cfg_.vocab_size > 0, "hybrid_stack vocab_size", "> 0 for token input", cfg_.vocab_size);
    require_layout("tokens", tokens);
    require_shape("tokens", tokens, {st.batch()});
    require_layout("logits", logits);
    require_shape("logits", logits, {st.batch(), cfg_.vocab_size});
    const index_t B = st.batch(), d = cfg_.d_model;
    check_tokens(tokens.data(), B, 1, tokens.stride(0), 0);
    check_room(st, 1);
    timed(timings, "embedding", [&] {
      for (index_t b = 0; b < B; ++b) embed_row(tokens(b), st.h_.data() + b * d);
    });
    run_blocks<2>(st.h_.data(), {B, d}, st, timings);
    st.position_ += 1;
    timed(timings, "lm_head", [&] { head_rows(tensor_view<const float, 2>(st.h_.data(), {B, d}), logits); });
  }

  // One hidden vector per sequence: x, y [batch, d_model]; y may equal x.
  void step_hidden(tensor_view<const float, 2> x, tensor_view<float, 2> y, hybrid_stack_state& st,
                   stack_timings* timings = nullptr) const {
    require_layout("x", x);
    require_layout("y", y);
    require_shape("x", x, {st.batch(), cfg_.d_model});
    require_shape("y", y, {st.batch(), cfg_.d_model});
    check_room(st, 1);
    const index_t B = st.batch(), d = cfg_.d_model;
    for (index_t b = 0; b < B; ++b) std::copy(x.ptr(b, 0), x.ptr(b, 0) + d, st.h_.data() + b * d);
    run_blocks<2>(st.h_.data(), {B, d}, st, timings);
    st.position_ += 1;
    for (index_t b = 0; b < B; ++b) std::copy(st.h_.data() + b * d, st.h_.data() + (b + 1) * d, y.ptr(b, 0));
  }

 private:
  struct block_norms {
    detail::stack_norm in, out;
    std::vector<rms_norm_weights> branch;
  };

  bool has_final_norm() const { return cfg_.final_norm && cfg_.placement != norm_placement::post; }

  void check_config() const {
    require(cfg_.d_model >= 1, "hybrid_stack d_model", ">= 1", cfg_.d_model);
    require(cfg_.vocab_size >= 0, "hybrid_stack vocab_size", ">= 0", cfg_.vocab_size);
    require(!blocks_.empty(), "hybrid_stack blocks", "at least one block", 0);
    for (std::size_t i = 0; i < blocks_.size(); ++i) {
      const auto& b = blocks_[i];
      const std::string where = "block " + std::to_string(i) + " (" + b.kinds + ")";
      require(!b.branches.empty(), "hybrid_stack blocks", "at least one layer per block", where + " has none");
      require(b.shared.empty() || b.shared.size() == b.branches.size(), "hybrid_stack blocks",
              "one shared flag per branch", where);
      require(std::isfinite(b.residual_scale), "hybrid_stack residual_scale", "a finite value", b.residual_scale);
      for (const auto& l : b.branches) {
        require(l != nullptr, "hybrid_stack blocks", "non-null layers", where);
        require(l->d_model() == cfg_.d_model, "layer d_model",
                std::to_string(cfg_.d_model) + " (hybrid_stack d_model)",
                std::to_string(l->d_model()) + " in " + where + ", a " + l->name() + " layer");
      }
    }
  }

  void check_tokens(const std::int32_t* p, index_t B, index_t L, index_t sb, index_t st) const {
    for (index_t b = 0; b < B; ++b)
      for (index_t t = 0; t < L; ++t) {
        const std::int32_t tok = p[b * sb + t * st];
        if (tok < 0 || tok >= cfg_.vocab_size)
          throw argument_error("tokens", "ids in [0, " + std::to_string(cfg_.vocab_size) + ")",
                               std::to_string(tok) + " at [" + std::to_string(b) + ", " + std::to_string(t) + "]");
      }
  }

  // Checked here so a call that would overflow some layer's KV cache fails
  // before any layer has advanced its state.
  static void check_room(const hybrid_stack_state& st, index_t n) {
    require(st.position() + n <= st.max_tokens(), "state",
            "room for " + std::to_string(n) + " more tokens (max_tokens " + std::to_string(st.max_tokens()) + ")",
            std::to_string(st.position()) + " tokens already held");
  }

  void embed_row(std::int32_t tok, float* dst) const {
    const float* src = embed_.weight.data() + static_cast<index_t>(tok) * cfg_.d_model;
    std::copy(src, src + cfg_.d_model, dst);
  }

  // The tied head is the embedding matrix itself ([vocab, d], nn.Linear's layout).
  void head_rows(tensor_view<const float, 2> h, tensor_view<float, 2> out) const {
    linear_forward(cfg_.tie_embeddings ? embed_ : head_, h, out, cfg_.policy);
  }

  template <class F>
  static void timed(stack_timings* t, const char* what, F&& f) {
    if (t == nullptr) {
      f();
      return;
    }
    const auto t0 = std::chrono::steady_clock::now();
    f();
    t->seconds[what] += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }

  // Runs every block on the residual stream h (rows of d floats), leaving the
  // final-normed hidden states in h. R = 3: [B, L, d] (prefill), R = 2:
  // [B, d] (step, buffers from the state).
  template <int R>
  void run_blocks(float* h, const std::array<index_t, R>& shape, hybrid_stack_state& st, stack_timings* timings) const {
    index_t rows = 1;
    for (int i = 0; i < R - 1; ++i) rows *= shape[i];
    const index_t d = cfg_.d_model;
    const std::size_t n = static_cast<std::size_t>(rows * d);
    std::vector<float> local;
    float *u, *f, *g, *acc;
    if (R == 2) {
      u = st.u_.data();
      f = st.f_.data();
      g = st.g_.data();
      acc = st.acc_.data();
    } else {
      local.resize(4 * n);
      u = local.data();
      f = u + n;
      g = f + n;
      acc = g + n;
    }
    using cview = tensor_view<const float, R>;
    using view = tensor_view<float, R>;
    const exec_policy& pol = cfg_.policy;
    for (std::size_t i = 0; i < blocks_.size(); ++i) {
      const stack_block& blk = blocks_[i];
      const block_norms& nm = norms_[i];
      // u = the mixer input.
      timed(timings, "norms", [&] {
        if (cfg_.placement == norm_placement::post) std::copy(h, h + n, u);
        else nm.in.apply<R>(cview(h, shape), view(u, shape), pol);
      });
      // acc = f(u), combined over branches.
      const std::size_t nb = blk.branches.size();
      for (std::size_t j = 0; j < nb; ++j) {
        float* out = nb == 1 ? acc : f;
        const mixer_layer& layer = *blk.branches[j];
        timed(timings, layer.name(), [&] { call_layer<R>(layer, u, out, shape, st.layer(static_cast<index_t>(i), static_cast<index_t>(j))); });
        if (nb == 1) break;
        timed(timings, "norms", [&] {
          const float* src = f;
          if (cfg_.combine == parallel_combine::normalized_mean) {
            rms_norm(cview(f, shape), nm.branch[j], view(g, shape), pol);
            src = g;
          }
          const float w = cfg_.combine == parallel_combine::sum ? 1.f : 1.f / static_cast<float>(nb);
          if (j == 0)
            for (std::size_t e = 0; e < n; ++e) acc[e] = w * src[e];
          else
            for (std::size_t e = 0; e < n; ++e) acc[e] += w * src[e];
        });
      }
      // Residual update.
      timed(timings, "norms", [&] {
        const float s = blk.residual_scale;
        switch (cfg_.placement) {
          case norm_placement::pre:
            for (std::size_t e = 0; e < n; ++e) h[e] += s * acc[e];
            break;
          case norm_placement::post:
            for (std::size_t e = 0; e < n; ++e) g[e] = h[e] + s * acc[e];
            nm.out.apply<R>(cview(g, shape), view(h, shape), pol);
            break;
          case norm_placement::peri:
            nm.out.apply<R>(cview(acc, shape), view(g, shape), pol);
            for (std::size_t e = 0; e < n; ++e) h[e] += s * g[e];
            break;
        }
      });
    }
    if (has_final_norm())
      timed(timings, "norms", [&] {
        final_.apply<R>(cview(h, shape), view(u, shape), pol);
        std::copy(u, u + n, h);
      });
  }

  template <int R>
  static void call_layer(const mixer_layer& layer, const float* u, float* out, const std::array<index_t, R>& shape,
                         mixer_layer_state& s) {
    if constexpr (R == 3) layer.prefill(tensor_view<const float, 3>(u, shape), tensor_view<float, 3>(out, shape), s);
    else layer.step(tensor_view<const float, 2>(u, shape), tensor_view<float, 2>(out, shape), s);
  }

  hybrid_stack_config cfg_;
  std::vector<stack_block> blocks_;
  std::vector<block_norms> norms_;
  detail::stack_norm final_;
  linear_weights embed_;  // [vocab, d]: embedding rows, and the head when tied
  linear_weights head_;   // [vocab, d] when untied
};

}  // namespace tokmix
