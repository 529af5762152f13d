#pragma once
// Sparse mixture of experts: a router picks top_k of n_experts MLPs per token
// and the token's output is their weighted sum.
//
//   logits = W_r x (+ b_r)                        [n_experts]
//   p      = softmax(logits)                      over all experts
//   S      = top_k(p)                             ties: the lower expert index wins
//   g_e    = p_e / sum_{j in S} p_j  (normalize_topk, Mixtral)   or   p_e (Switch, Qwen norm_topk_prob=False)
//   y      = sum_{e in S} g_e * MLP_e(x)          summed in the order of S (largest weight first)
//
// Experts are gated or plain MLPs (blocks/mlp.hpp). Tokens are grouped by
// expert (a stable counting sort, so each expert sees its tokens in row
// order) and each expert runs one matrix product per block of its tokens
// (all of them up to 512, else near-equal blocks of at most 512: a small
// leftover block would stream the expert's weights once more for few rows);
// threads take (expert, block) items, largest experts first. The router
// logits and the choices (ids, weights) can be returned for auxiliary
// load-balancing losses. Token dropping by expert capacity (Switch training)
// and shared experts (DeepSeek-MoE) are not part of this layer.
//
// Tensor names: `prefix.gate.weight` [n_experts, d_model] and
// `prefix.experts.<e>.{gate_proj,up_proj,down_proj}.weight` (Qwen-MoE, OLMoE);
// moe_names::mixtral() gives Mixtral's `experts.<e>.{w1,w3,w2}`.
//
// ref: Shazeer et al., "Outrageously Large Neural Networks: The Sparsely-Gated
//      Mixture-of-Experts Layer", ICLR 2017; Fedus, Zoph, Shazeer, "Switch
//      Transformers", JMLR 2022 (top-1); Jiang et al., "Mixtral of Experts",
//      2024 (softmax over all experts, top-2, renormalised).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "tokmix/core/third_party.hpp"
#include "tokmix/simd/arch.hpp"

#include "tokmix/blocks/linear.hpp"
#include "tokmix/blocks/mlp.hpp"
#include "tokmix/core/error.hpp"
#include "tokmix/core/named_tensors.hpp"
#include "tokmix/core/random.hpp"
#include "tokmix/core/scratch.hpp"
#include "tokmix/core/tensor_view.hpp"
#include "tokmix/core/threading.hpp"
#include "tokmix/simd/dot.hpp"
#include "tokmix/simd/online_softmax.hpp"

TOKMIX_SIMD_AVX512_WARNINGS_OFF
namespace tokmix {

struct moe_config {
  index_t n_experts = 0;
  index_t top_k = 2;
  mlp_config expert;          // every expert's MLP; expert.d_model is the layer's d_model
  bool normalize_topk = true; // renormalise the top_k weights to sum to 1 (Mixtral); false: raw softmax probabilities
  bool router_bias = false;

  index_t d_model() const { return expert.d_model; }

  // Mixtral: SwiGLU experts, softmax over all, top-2, renormalised.
  static moe_config mixtral(index_t d_model, index_t hidden, index_t n_experts = 8, index_t top_k = 2) {
    moe_config c;
    c.n_experts = n_experts;
    c.top_k = top_k;
    c.expert = mlp_config::swiglu(d_model, hidden);
    return c;
  }
  // Switch Transformer: top-1, the token scaled by its router probability,
  // ReLU experts without biases (T5's FFN).
  static moe_config switch_top1(index_t d_model, index_t hidden, index_t n_experts) {
    moe_config c;
    c.n_experts = n_experts;
    c.top_k = 1;
    c.normalize_topk = false;
    c.expert = mlp_config::plain(d_model, hidden, mlp_activation::relu, false);
    return c;
  }
};

struct moe_names {
  std::string router = "gate";
  std::string experts = "experts";  // expert e under `<prefix>.<experts>.<e>`
  mlp_names expert;

  static moe_names mixtral() { return {"gate", "experts", {"w1", "w3", "w2"}}; }
};

struct moe_params {
  exec_policy policy;
  // Optional outputs (empty views: not written). Written only on success.
  tensor_view<float, 2> router_logits;         // [rows, n_experts], before the softmax
  tensor_view<std::int32_t, 2> topk_experts;   // [rows, top_k], largest weight first
  tensor_view<float, 2> topk_weights;          // [rows, top_k], the g_e that scale each expert
};

struct moe_weights {
  moe_config config;
  linear_weights router;             // [n_experts, d_model]
  std::vector<mlp_weights> experts;  // n_experts of them

  static moe_weights random(const moe_config& c, std::uint64_t seed) {
    check_config(c);
    moe_weights w;
    w.config = c;
    w.router = linear_weights::random(c.d_model(), c.n_experts, c.router_bias, random_stream::derive(seed, 0));
    for (index_t e = 0; e < c.n_experts; ++e)
      w.experts.push_back(mlp_weights::random(c.expert, random_stream::derive(seed, static_cast<std::uint64_t>(e + 1))));
    return w;
  }

  static moe_weights load(const named_tensors& t, const std::string& prefix, const moe_config& c,
                          const moe_names& names = {}) {
    check_config(c);
    moe_weights w;
    w.config = c;
    w.router = linear_weights::load(t, detail::join_name(prefix, names.router), c.d_model(), c.n_experts, c.router_bias);
    for (index_t e = 0; e < c.n_experts; ++e)
      w.experts.push_back(mlp_weights::load(t, expert_prefix(prefix, names, e), c.expert, names.expert));
    return w;
  }

  std::vector<std::string> tensor_names(const std::string& prefix, const moe_names& names = {}) const {
    std::vector<std::string> out;
    const std::string r = detail::join_name(prefix, names.router);
    out.push_back(r + ".weight");
    if (config.router_bias) out.push_back(r + ".bias");
    for (index_t e = 0; e < static_cast<index_t>(experts.size()); ++e)
      for (auto& n : experts[static_cast<std::size_t>(e)].tensor_names(expert_prefix(prefix, names, e), names.expert))
        out.push_back(std::move(n));
    return out;
  }

  // Adds every tensor, or nothing (inconsistent weights, a name already present).
  void save(named_tensors& t, const std::string& prefix, const moe_names& names = {}) const {
    check();
    for (const auto& n : tensor_names(prefix, names))
      require(!t.contains(n), "tensor name", "a name not yet present", "'" + n + "' twice");
    router.save(t, detail::join_name(prefix, names.router));
    for (index_t e = 0; e < config.n_experts; ++e)
      experts[static_cast<std::size_t>(e)].save(t, expert_prefix(prefix, names, e), names.expert);
  }

  void check() const {
    check_config(config);
    const index_t d = config.d_model(), n = config.n_experts;
    require(router.in_features() == d && router.out_features() == n, "moe router",
            "weight [" + std::to_string(n) + ", " + std::to_string(d) + "]",
            "[" + std::to_string(router.out_features()) + ", " + std::to_string(router.in_features()) + "]");
    require(router.has_bias() == config.router_bias, "moe router", config.router_bias ? "a bias" : "no bias",
            router.has_bias() ? "a bias" : "no bias");
    if (router.has_bias())
      require(router.bias.size() == n, "moe router", "bias [" + std::to_string(n) + "]",
              "[" + std::to_string(router.bias.size()) + "]");
    require(static_cast<index_t>(experts.size()) == n, "moe experts", std::to_string(n) + " experts",
            std::to_string(experts.size()));
    for (const auto& e : experts) {
      require(e.config.d_model == config.expert.d_model && e.config.hidden == config.expert.hidden &&
                  e.config.gated == config.expert.gated && e.config.bias == config.expert.bias &&
                  e.config.activation == config.expert.activation,
              "moe expert config", "config.expert for every expert", "an expert with another config");
      e.check();
    }
  }

 private:
  static std::string expert_prefix(const std::string& prefix, const moe_names& names, index_t e) {
    return detail::join_name(detail::join_name(prefix, names.experts), std::to_string(e));
  }
  static void check_config(const moe_config& c) {
    require(c.n_experts >= 1, "moe n_experts", ">= 1", c.n_experts);
    require(c.top_k >= 1 && c.top_k <= c.n_experts, "moe top_k", "in [1, n_experts = " + std::to_string(c.n_experts) + "]",
            c.top_k);
    require(c.expert.d_model >= 1, "moe expert d_model", ">= 1", c.expert.d_model);
    require(c.expert.hidden >= 1, "moe expert hidden", ">= 1", c.expert.hidden);
  }
};

namespace detail {

// Rows per router / combine item, and the largest block of one expert's
// tokens per expert item. Blocks depend on the token counts alone, so
// neither the routing nor any expert's product depends on the thread count.
constexpr index_t moe_rows_per_item = 128;
constexpr index_t moe_expert_rows = mlp_row_chunk;

inline void check_moe_args(const moe_weights& w, const tensor_view<const float, 2>& x, const tensor_view<float, 2>& y,
                           const moe_params& p) {
  w.check();
  const index_t d = w.config.d_model(), rows = x.dim(0);
  require_layout("x", x);
  require_layout("y", y);
  require_shape("x", x, {-1, d});
  require_shape("y", y, {rows, d});
  require(static_cast<const float*>(y.data()) != x.data() || y.strides() == x.strides(), "y",
          "the same strides as x when y is x (in place)", "other strides over the same buffer");
  if (p.router_logits.data() != nullptr) {
    require_layout("router_logits", p.router_logits);
    require_shape("router_logits", p.router_logits, {rows, w.config.n_experts});
  }
  if (p.topk_experts.data() != nullptr) {
    require_layout("topk_experts", p.topk_experts);
    require_shape("topk_experts", p.topk_experts, {rows, w.config.top_k});
  }
  if (p.topk_weights.data() != nullptr) {
    require_layout("topk_weights", p.topk_weights);
    require_shape("topk_weights", p.topk_weights, {rows, w.config.top_k});
  }
}

// Softmax over the row's logits (into prob), then the top k by repeated
// selection: the first maximum in index order, so ties go to the lower index.
// A NaN probability is never chosen over a number (NaN logits make every
// probability NaN; then the lowest unchosen indices are taken).
inline void moe_route_row(const float* logits, float* prob, index_t n, index_t k, bool normalize, std::int32_t* ids,
                          float* weights) {
  std::copy(logits, logits + n, prob);
  float m = -std::numeric_limits<float>::infinity(), l = 0.f;
  simd::detail::online_softmax_update_kernel(simd::default_arch{}, prob, n, m, l);
  const float inv = 1.f / l;
  for (index_t j = 0; j < n; ++j) prob[j] *= inv;
  float sum = 0.f;
  for (index_t s = 0; s < k; ++s) {
    index_t best = -1;
    for (index_t j = 0; j < n; ++j) {
      bool taken = false;
      for (index_t t = 0; t < s; ++t) taken = taken || ids[t] == j;
      if (taken) continue;
      if (best < 0 || prob[j] > prob[best] || (std::isnan(prob[best]) && !std::isnan(prob[j]))) best = j;
    }
    ids[s] = static_cast<std::int32_t>(best);
    weights[s] = prob[best];
    sum += prob[best];
  }
  if (normalize)
    for (index_t s = 0; s < k; ++s) weights[s] /= sum;
}

}  // namespace detail

// y = MoE(x) row by row.                        x: [rows, d_model]   y: [rows, d_model]
// y may be x (in place). Scratch (router, grouped rows, per-worker expert
// hidden layers) comes from the calling thread's arena, sized by rows alone,
// so repeated calls of one size allocate nothing whatever the routing.
// The routing is bit-identical for every thread count, and so is y whenever
// the (expert, token block) items are at least as many as the workers
// (otherwise each item's MLP is itself split across the workers).
inline void moe_forward(const moe_weights& w, tensor_view<const float, 2> x, tensor_view<float, 2> y,
                        const moe_params& p = {}) {
  detail::check_moe_args(w, x, y, p);
  const moe_config& c = w.config;
  const index_t rows = x.dim(0), d = c.d_model(), E = c.n_experts, k = c.top_k;
  if (rows == 0) return;
  const index_t blk = detail::moe_rows_per_item, eblk = detail::moe_expert_rows;
  const int workers = worker_slots(p.policy);
  const auto n_sel = static_cast<std::size_t>(rows * k);
  // Expert blocks: ceil(n_e / eblk) per expert with tokens, so at most E + rows * k / eblk of them.
  const auto max_items = static_cast<std::size_t>(E + (rows * k) / eblk);

  scratch_frame frame(scratch_frame::bytes_for<float>(static_cast<std::size_t>(rows * E)) * 2 +
                      scratch_frame::bytes_for<std::int32_t>(n_sel) + scratch_frame::bytes_for<float>(n_sel) +
                      scratch_frame::bytes_for<index_t>(n_sel) * 2 +
                      scratch_frame::bytes_for<index_t>(static_cast<std::size_t>(E + 1)) * 2 +
                      scratch_frame::bytes_for<index_t>(max_items) * 3 +
                      scratch_frame::bytes_for<float>(n_sel * static_cast<std::size_t>(d)) +
                      scratch_frame::bytes_for<detail::mlp_scratch>(static_cast<std::size_t>(workers)) +
                      detail::mlp_scratch_bytes(c.expert, std::min(rows, eblk)) * static_cast<std::size_t>(workers));
  float* logits = frame.alloc<float>(static_cast<std::size_t>(rows * E));
  float* prob = frame.alloc<float>(static_cast<std::size_t>(rows * E));
  std::int32_t* sel = frame.alloc<std::int32_t>(n_sel);
  float* gate = frame.alloc<float>(n_sel);
  index_t* pos = frame.alloc<index_t>(n_sel);    // (row, slot) -> its row in the grouped buffer
  index_t* order = frame.alloc<index_t>(n_sel);  // grouped row -> token row
  index_t* start = frame.alloc<index_t>(static_cast<std::size_t>(E + 1));
  index_t* cursor = frame.alloc<index_t>(static_cast<std::size_t>(E + 1));
  index_t* item_expert = frame.alloc<index_t>(max_items);
  index_t* item_begin = frame.alloc<index_t>(max_items);
  index_t* item_end = frame.alloc<index_t>(max_items);
  float* grouped = frame.alloc<float>(n_sel * static_cast<std::size_t>(d));  // [rows * k, d]
  detail::mlp_scratch* hidden = frame.alloc<detail::mlp_scratch>(static_cast<std::size_t>(workers));
  for (int i = 0; i < workers; ++i) hidden[i] = detail::mlp_scratch_alloc(frame, c.expert, std::min(rows, eblk));

  // Router and top-k, by fixed blocks of rows.
  const index_t n_row_blocks = (rows + blk - 1) / blk;
  parallel_for(p.policy, n_row_blocks, [&](index_t b, int) {
    const index_t r0 = b * blk, n = std::min(blk, rows - r0);
    const detail::mlp_cmap X(x.ptr(r0, 0), n, d, detail::mlp_stride(x.stride(0)));
    detail::mlp_product(X, w.router, 0, E, logits + r0 * E, E);
    for (index_t r = r0; r < r0 + n; ++r)
      detail::moe_route_row(logits + r * E, prob + r * E, E, k, c.normalize_topk, sel + r * k, gate + r * k);
  });

  // Group the (token, slot) pairs by expert, tokens in row order.
  std::fill(start, start + E + 1, index_t(0));
  for (std::size_t i = 0; i < n_sel; ++i) ++start[sel[i] + 1];
  for (index_t e = 0; e < E; ++e) start[e + 1] += start[e];
  std::copy(start, start + E + 1, cursor);
  for (index_t r = 0; r < rows; ++r)
    for (index_t s = 0; s < k; ++s) {
      const index_t at = cursor[sel[r * k + s]]++;
      pos[r * k + s] = at;
      order[at] = r;
    }
  parallel_for(p.policy, static_cast<index_t>(n_sel + static_cast<std::size_t>(blk) - 1) / blk, [&](index_t b, int) {
    const index_t g0 = b * blk, g1 = std::min<index_t>(static_cast<index_t>(n_sel), g0 + blk);
    for (index_t g = g0; g < g1; ++g) std::copy(x.ptr(order[g], 0), x.ptr(order[g], 0) + d, grouped + g * d);
  });

  // Items: blocks of each expert's tokens, largest experts first (they bound the makespan).
  index_t* by_size = cursor;  // reused: expert ids sorted by token count, descending
  std::iota(by_size, by_size + E, index_t(0));
  std::stable_sort(by_size, by_size + E,
                   [&](index_t a, index_t b) { return start[a + 1] - start[a] > start[b + 1] - start[b]; });
  index_t n_items = 0;
  for (index_t i = 0; i < E; ++i) {
    const index_t e = by_size[i], n_e = start[e + 1] - start[e];
    const index_t parts = (n_e + eblk - 1) / eblk;
    for (index_t j = 0; j < parts; ++j) {
      item_expert[n_items] = e;
      item_begin[n_items] = start[e] + j * n_e / parts;
      item_end[n_items++] = start[e] + (j + 1) * n_e / parts;
    }
  }
  auto run_item = [&](index_t item, int worker, const exec_policy& inner) {
    const index_t e = item_expert[item], g0 = item_begin[item];
    const index_t n = item_end[item] - g0;
    const tensor_view<float, 2> rows_e(grouped + g0 * d, {n, d});
    detail::mlp_run(w.experts[static_cast<std::size_t>(e)], rows_e, rows_e, inner,
                    hidden[worker]);
  };
  if (n_items >= workers || workers == 1)
    parallel_for(p.policy, n_items, [&](index_t item, int worker) { run_item(item, worker, exec_policy::serial()); });
  else
    for (index_t item = 0; item < n_items; ++item) run_item(item, 0, p.policy);

  // Weighted combine in slot order (x was copied out above, so y may be x).
  parallel_for(p.policy, n_row_blocks, [&](index_t b, int) {
    const index_t r0 = b * blk, r1 = std::min(rows, r0 + blk);
    for (index_t r = r0; r < r1; ++r) {
      float* out = y.ptr(r, 0);
      simd::detail::scale_add_kernel(simd::default_arch{}, 0.f, out, gate[r * k], grouped + pos[r * k] * d, d);
      for (index_t s = 1; s < k; ++s)
        simd::detail::axpy_kernel(simd::default_arch{}, gate[r * k + s], grouped + pos[r * k + s] * d, out, d);
    }
  });

  if (p.router_logits.data() != nullptr)
    for (index_t r = 0; r < rows; ++r) std::copy(logits + r * E, logits + (r + 1) * E, p.router_logits.ptr(r, 0));
  if (p.topk_experts.data() != nullptr)
    for (index_t r = 0; r < rows; ++r) std::copy(sel + r * k, sel + (r + 1) * k, p.topk_experts.ptr(r, 0));
  if (p.topk_weights.data() != nullptr)
    for (index_t r = 0; r < rows; ++r) std::copy(gate + r * k, gate + (r + 1) * k, p.topk_weights.ptr(r, 0));
}

}  // namespace tokmix
TOKMIX_SIMD_AVX512_WARNINGS_ON
