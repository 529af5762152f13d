#pragma once
// Which keys a query may see, computed once here so prefill, decode and varlen
// agree on every mask option and can skip work the same way.
//
// Structured masks (causal, sliding window, sinks, block-causal) depend only on
// positions, so each query row sees a key set of at most two intervals:
//   [lo, hi]          the causal / block-causal / window part, and
//   [0, sink_end)     the attention sinks (exempt from the window only).
// Tiles of the score matrix can therefore be classified without looking at
// data: fully hidden tiles are skipped, fully visible ones need no mask work.
// Segment ids and the user bool mask are data; attention_data_visible checks them.
//
// Semantics: docs/semantics.md, "Softmax attention".
// ref: FlashAttention-2 window_size / causal alignment (Dao, 2023);
//      StreamingLLM attention sinks (Xiao et al., 2023); ACDiT block-causal (Hu et al., 2024).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <utility>

#include "tokmix/attention/params.hpp"
#include "tokmix/core/error.hpp"
#include "tokmix/core/tensor_view.hpp"

namespace tokmix {

enum class tile_visibility { hidden, partial, full };

// Keys visible to one query row: j is visible iff lo <= j <= hi or j < sink_end.
// All bounds are clipped to [0, Lk); an empty interval has lo > hi.
struct attention_row_bounds {
  index_t lo = 0;
  index_t hi = -1;
  index_t sink_end = 0;

  bool contains(index_t j) const { return (j >= lo && j <= hi) || j < sink_end; }
  bool empty() const { return lo > hi && sink_end <= 0; }
};

namespace detail {
inline index_t floor_div(index_t a, index_t b) {
  const index_t q = a / b;
  return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}
}  // namespace detail

// The position-only part of the mask for a [seq_q x seq_k] score matrix.
class attention_visibility {
 public:
  attention_visibility(const attention_params& p, index_t seq_q, index_t seq_k)
      : lq_(seq_q),
        lk_(seq_k),
        off_(p.alignment == causal_alignment::bottom_right ? seq_k - seq_q : 0),
        causal_(p.causal),
        wl_(p.window_left),
        wr_(p.window_right),
        sinks_(p.n_sink),
        block_(p.causal_block) {}

  index_t seq_q() const { return lq_; }
  index_t seq_k() const { return lk_; }
  // Query row i sits at key position i + offset() (Lk - Lq bottom-right, 0 top-left).
  index_t offset() const { return off_; }
  // False when every key is visible to every query (no structured mask at all).
  bool structured() const { return causal_ || wl_ >= 0 || wr_ >= 0 || block_ > 0; }

  attention_row_bounds row(index_t i) const {
    const index_t pos = i + off_;
    index_t hi_causal = lk_ - 1;
    if (causal_) hi_causal = std::min(hi_causal, pos);
    if (block_ > 0) hi_causal = std::min(hi_causal, detail::floor_div(pos, block_) * block_ + block_ - 1);
    index_t hi = hi_causal;
    if (wr_ >= 0) hi = std::min(hi, pos + wr_);
    index_t lo = 0;
    if (wl_ >= 0) lo = std::max<index_t>(0, pos - wl_);
    attention_row_bounds r;
    r.lo = std::min(lo, lk_);
    r.hi = std::max<index_t>(hi, -1);
    // Sinks only matter where the window hides them.
    r.sink_end = (wl_ >= 0 || wr_ >= 0) ? std::max<index_t>(0, std::min(sinks_, hi_causal + 1)) : 0;
    return r;
  }

  bool visible(index_t i, index_t j) const { return row(i).contains(j); }

  // Exact classification of the tile [q0, q1) x [k0, k1) (non-empty ranges).
  tile_visibility classify(index_t q0, index_t q1, index_t k0, index_t k1) const {
    if (!structured()) return tile_visibility::full;
    bool all_full = true, all_hidden = true;
    for (index_t i = q0; i < q1; ++i) {
      const attention_row_bounds r = row(i);
      // The two pieces merge into [0, max(hi, sink_end - 1)] when they touch.
      const bool merged = r.sink_end > 0 && r.lo <= r.hi && r.sink_end >= r.lo;
      const bool full = (r.lo <= k0 && r.hi >= k1 - 1) || r.sink_end >= k1 ||
                        (merged && std::max(r.hi, r.sink_end - 1) >= k1 - 1);
      const bool any = std::max(r.lo, k0) <= std::min(r.hi, k1 - 1) || k0 < r.sink_end;
      all_full = all_full && full;
      all_hidden = all_hidden && !any;
      if (!all_full && !all_hidden) return tile_visibility::partial;
    }
    return all_full ? tile_visibility::full : (all_hidden ? tile_visibility::hidden : tile_visibility::partial);
  }

  // Smallest key range [begin, end) holding every key visible to rows [q0, q1)
  // (sinks included): kernels iterate only over it.
  std::pair<index_t, index_t> key_span(index_t q0, index_t q1) const {
    index_t b = lk_, e = 0;
    for (index_t i = q0; i < q1; ++i) {
      const attention_row_bounds r = row(i);
      if (r.lo <= r.hi) {
        b = std::min(b, r.lo);
        e = std::max(e, r.hi + 1);
      }
      if (r.sink_end > 0) {
        b = 0;
        e = std::max(e, r.sink_end);
      }
    }
    return b < e ? std::make_pair(b, e) : std::make_pair(index_t(0), index_t(0));
  }

 private:
  index_t lq_, lk_, off_;
  bool causal_;
  index_t wl_, wr_, sinks_, block_;
};

// True when neither the segment ids nor the user bool mask hide (i, j) for
// batch b, query head h. Positions are within the [seq_q x seq_k] matrix.
inline bool attention_data_visible(const attention_params& p, index_t b, index_t h, index_t i, index_t j) {
  if (p.q_segment_ids.data() != nullptr && p.q_segment_ids(b, i) != p.k_segment_ids(b, j)) return false;
  if (p.mask.data() != nullptr) {
    const index_t mb = p.mask.dim(0) == 1 ? 0 : b, mh = p.mask.dim(1) == 1 ? 0 : h;
    if (!p.mask(mb, mh, i, j)) return false;
  }
  return true;
}

// The additive bias term (ALiBi + user bias) of score (i, j); 0 when neither is set.
inline float attention_additive_bias(const attention_params& p, index_t offset, index_t b, index_t h, index_t i,
                                     index_t j) {
  float s = 0.f;
  if (p.alibi_slopes.data() != nullptr) s -= p.alibi_slopes(h) * static_cast<float>(std::abs(i + offset - j));
  if (p.bias.data() != nullptr) {
    const index_t bb = p.bias.dim(0) == 1 ? 0 : b, bh = p.bias.dim(1) == 1 ? 0 : h;
    s += p.bias(bb, bh, i, j);
  }
  return s;
}

// Validates every option of `p` against the problem shape. Shared by prefill,
// decode and varlen so they reject the same inputs with the same messages.
// seq_q / seq_k are the full extents the mask, bias and segment ids must have.
inline void check_attention_params(const attention_params& p, index_t batch, index_t heads_q, index_t seq_q,
                                   index_t seq_k) {
  require(p.window_left >= -1, "params.window_left", ">= -1", p.window_left);
  require(p.window_right >= -1, "params.window_right", ">= -1", p.window_right);
  require(p.n_sink >= 0, "params.n_sink", ">= 0", p.n_sink);
  require(p.causal_block >= 0, "params.causal_block", ">= 0", p.causal_block);
  require(std::isnan(p.scale) || std::isfinite(p.scale), "params.scale", "a finite value or NaN (default)", p.scale);
  require(std::isfinite(p.softcap) && p.softcap >= 0.f, "params.softcap", "a finite value >= 0", p.softcap);
  if (p.alibi_slopes.data() != nullptr) {
    require_layout("params.alibi_slopes", p.alibi_slopes);
    require_shape("params.alibi_slopes", p.alibi_slopes, {heads_q});
  }
  const bool has_qs = p.q_segment_ids.data() != nullptr, has_ks = p.k_segment_ids.data() != nullptr;
  require(has_qs == has_ks, "params.q_segment_ids / params.k_segment_ids", "both set or both empty",
          has_qs ? "only q_segment_ids" : "only k_segment_ids");
  if (has_qs) {
    require_layout("params.q_segment_ids", p.q_segment_ids);
    require_layout("params.k_segment_ids", p.k_segment_ids);
    require_shape("params.q_segment_ids", p.q_segment_ids, {batch, seq_q});
    require_shape("params.k_segment_ids", p.k_segment_ids, {batch, seq_k});
  }
  auto check_broadcast4 = [&](const char* name, index_t d0, index_t d1, const std::string& shape, index_t q,
                              index_t k) {
    const bool ok = (d0 == 1 || d0 == batch) && (d1 == 1 || d1 == heads_q) && q == seq_q && k == seq_k;
    require(ok, name,
            "shape [" + std::to_string(batch) + "|1, " + std::to_string(heads_q) + "|1, " + std::to_string(seq_q) +
                ", " + std::to_string(seq_k) + "]",
            "shape " + shape);
  };
  if (p.mask.data() != nullptr) {
    require_layout("params.mask", p.mask);
    check_broadcast4("params.mask", p.mask.dim(0), p.mask.dim(1), p.mask.shape_string(), p.mask.dim(2), p.mask.dim(3));
  }
  if (p.bias.data() != nullptr) {
    require_layout("params.bias", p.bias);
    check_broadcast4("params.bias", p.bias.dim(0), p.bias.dim(1), p.bias.shape_string(), p.bias.dim(2), p.bias.dim(3));
  }
}

}  // namespace tokmix
