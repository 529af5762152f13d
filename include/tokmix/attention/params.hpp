#pragma once
// The options of softmax attention, shared by prefill and decode so a layer
// configures them once. Semantics: docs/semantics.md, "Softmax attention".
// Flags stay runtime here; kernels turn the ones their inner loop needs into
// compile-time constants (as FlashAttention does with its params struct).

#include <cstdint>
#include <limits>

#include "tokmix/core/tensor_view.hpp"
#include "tokmix/core/threading.hpp"

namespace tokmix {

enum class causal_alignment {
  bottom_right,  // query i sees key j iff j <= i + (Lk - Lq): FlashAttention >= 2.1, fla, decode
  top_left,      // query i sees key j iff j <= i: PyTorch SDPA is_causal
};

struct attention_params {
  // Multiplies q.k; NaN (the default) means 1/sqrt(head_dim of the keys).
  float scale = std::numeric_limits<float>::quiet_NaN();

  bool causal = false;
  causal_alignment alignment = causal_alignment::bottom_right;

  // Sliding window (flash_attn_func window_size): key j visible iff
  // i + off - window_left <= j <= i + off + window_right, off = Lk - Lq under
  // bottom-right alignment (0 under top-left); -1 = unbounded on that side.
  index_t window_left = -1;
  index_t window_right = -1;

  // The first n_sink keys stay visible whatever the window (StreamingLLM),
  // still subject to causality.
  index_t n_sink = 0;

  // > 0: block-causal ("skip-causal", ACDiT): a token sees every key of its
  // own block and of all earlier blocks, blocks of this many tokens.
  index_t causal_block = 0;

  // > 0: scores become softcap * tanh(s / softcap) before masking (Gemma-2).
  float softcap = 0.f;

  // ALiBi: adds -slope[h] * |i + off - j|.                        // [heads_q]
  tensor_view<const float, 1> alibi_slopes;

  // Packed sequences / block-diagonal: q i and k j interact only when their
  // ids are equal.                                    // [batch, seq_q], [batch, seq_k]
  tensor_view<const std::int32_t, 2> q_segment_ids;
  tensor_view<const std::int32_t, 2> k_segment_ids;

  // User mask (true = attend, as PyTorch SDPA) and additive bias; extents of 1
  // broadcast over batch and heads.       // [batch|1, heads_q|1, seq_q, seq_k]
  tensor_view<const bool, 4> mask;
  tensor_view<const float, 4> bias;

  exec_policy policy;
};

}  // namespace tokmix
