#pragma once
// Pieces every sparse mixer shares: the flash problem of one batch element,
// a visibility type for rows whose visible keys are an arbitrary interval each
// (rows gathered from a cluster, selected queries, clamped neighbourhoods), and
// validation helpers. The sparse family computes exact softmax attention on
// the tiles of attention/detail/flash_kernel.hpp; these adapt its inputs.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>

#include "tokmix/attention/detail/flash_kernel.hpp"
#include "tokmix/attention/flash_attention.hpp"
#include "tokmix/attention/mask.hpp"
#include "tokmix/attention/params.hpp"
#include "tokmix/core/error.hpp"
#include "tokmix/core/tensor_view.hpp"

namespace tokmix {
namespace detail {
namespace sparse {

// One batch element of a [B, L, H, D] problem, in the flash kernel's terms.
template <class TQ, class TK, class TV>
flash::flash_problem<TQ, TK, TV> batch_problem(const tensor_view<const TQ, 4>& q, const tensor_view<const TK, 4>& k,
                                               const tensor_view<const TV, 4>& v, const tensor_view<float, 4>& o,
                                               const tensor_view<float, 3>& lse, index_t b) {
  flash::flash_problem<TQ, TK, TV> pr;
  pr.q = q.ptr(b);
  pr.q_row = q.stride(1);
  pr.q_head = q.stride(2);
  pr.k = k.ptr(b);
  pr.k_row = k.stride(1);
  pr.k_head = k.stride(2);
  pr.v = v.ptr(b);
  pr.v_row = v.stride(1);
  pr.v_head = v.stride(2);
  pr.o = o.ptr(b);
  pr.o_row = o.stride(1);
  pr.o_head = o.stride(2);
  const bool has_lse = lse.data() != nullptr;
  pr.lse = has_lse ? lse.ptr(b) : nullptr;
  pr.lse_head = has_lse ? lse.stride(1) : 0;
  pr.lse_row = has_lse ? lse.stride(2) : 0;
  pr.lq = q.dim(1);
  pr.lk = k.dim(1);
  pr.batch_index = b;
  return pr;
}

// Query row i sees keys [lo[i], hi[i]] (lo == nullptr: from 0); hi[i] < lo[i]
// is an empty row. A drop-in for attention_visibility in flash_query_block.
class row_interval_visibility {
 public:
  row_interval_visibility(const index_t* lo, const index_t* hi, index_t seq_q, index_t seq_k)
      : lo_(lo), hi_(hi), lq_(seq_q), lk_(seq_k) {}

  index_t seq_q() const { return lq_; }
  index_t seq_k() const { return lk_; }
  index_t offset() const { return 0; }
  bool structured() const { return true; }

  attention_row_bounds row(index_t i) const {
    attention_row_bounds r;
    r.lo = lo_ != nullptr ? std::max<index_t>(0, lo_[i]) : 0;
    r.hi = std::min(hi_[i], lk_ - 1);
    r.sink_end = 0;
    return r;
  }

  tile_visibility classify(index_t q0, index_t q1, index_t k0, index_t k1) const {
    bool all_full = true, all_hidden = true;
    for (index_t i = q0; i < q1; ++i) {
      const attention_row_bounds r = row(i);
      const bool full = r.lo <= k0 && r.hi >= k1 - 1;
      const bool any = std::max(r.lo, k0) <= std::min(r.hi, k1 - 1);
      all_full = all_full && full;
      all_hidden = all_hidden && !any;
      if (!all_full && !all_hidden) return tile_visibility::partial;
    }
    return all_full ? tile_visibility::full : (all_hidden ? tile_visibility::hidden : tile_visibility::partial);
  }

  std::pair<index_t, index_t> key_span(index_t q0, index_t q1) const {
    index_t b = lk_, e = 0;
    for (index_t i = q0; i < q1; ++i) {
      const attention_row_bounds r = row(i);
      if (r.lo <= r.hi) {
        b = std::min(b, r.lo);
        e = std::max(e, r.hi + 1);
      }
    }
    return b < e ? std::make_pair(b, e) : std::make_pair(index_t(0), index_t(0));
  }

 private:
  const index_t* lo_;
  const index_t* hi_;
  index_t lq_, lk_;
};

// Disjoint, sorted union of the row's structured intervals ([lo, hi] and the sinks).
inline index_t row_intervals(const attention_row_bounds& r, flash::flash_key_range* out) {
  const bool main = r.lo <= r.hi;
  if (r.sink_end <= 0) {
    if (!main) return 0;
    out[0] = {r.lo, r.hi + 1};
    return 1;
  }
  if (!main) {
    out[0] = {0, r.sink_end};
    return 1;
  }
  if (r.sink_end >= r.lo) {
    out[0] = {0, std::max(r.sink_end, r.hi + 1)};
    return 1;
  }
  out[0] = {0, r.sink_end};
  out[1] = {r.lo, r.hi + 1};
  return 2;
}

// The attention_params a gathered (position-remapped) problem may run with:
// only the scale and softcap carry over; masks are expressed by the visibility.
inline attention_params gathered_params(float scale, float softcap) {
  attention_params g;
  g.scale = scale;
  g.softcap = softcap;
  return g;
}

// Rejects the attention_params options a mixer does not honour (those that
// index the dense [Lq, Lk] grid or positions a gather would scramble).
inline void reject_dense_options(const attention_params& p, const char* fn, bool allow_window) {
  require(std::isnan(p.scale) || std::isfinite(p.scale), "params.scale", "a finite value or NaN (default)", p.scale);
  require(std::isfinite(p.softcap) && p.softcap >= 0.f, "params.softcap", "a finite value >= 0", p.softcap);
  const std::string what = std::string("unset in ") + fn;
  require(p.alibi_slopes.data() == nullptr, "params.alibi_slopes", what, "set");
  require(p.bias.data() == nullptr, "params.bias", what, "set");
  require(p.mask.data() == nullptr, "params.mask", what, "set");
  require(p.q_segment_ids.data() == nullptr && p.k_segment_ids.data() == nullptr, "params.q_segment_ids", what, "set");
  require(p.causal_block == 0, "params.causal_block", std::string("0 in ") + fn, p.causal_block);
  if (!allow_window) {
    require(p.window_left == -1 && p.window_right == -1, "params.window_left / window_right",
            std::string("-1 (no window) in ") + fn,
            std::to_string(p.window_left) + " / " + std::to_string(p.window_right));
    require(p.n_sink == 0, "params.n_sink", std::string("0 in ") + fn, p.n_sink);
  }
}

// The shape checks of softmax attention (q/k/v/o/lse, GQA).
template <class TQ, class TK, class TV>
void check_qkv(const tensor_view<const TQ, 4>& q, const tensor_view<const TK, 4>& k, const tensor_view<const TV, 4>& v,
               const tensor_view<float, 4>& o, const tensor_view<float, 3>& lse) {
  require_layout("q", q);
  require_layout("k", k);
  require_layout("v", v);
  require_layout("o", o);
  const index_t B = q.dim(0), Lq = q.dim(1), Hq = q.dim(2), D = q.dim(3);
  const index_t Lk = k.dim(1), Hkv = k.dim(2), Dv = v.dim(3);
  require(D >= 1, "q", "head_dim >= 1", "shape " + q.shape_string());
  require_shape("k", k, {B, -1, -1, D});
  require(Hkv >= 1 && Hq % Hkv == 0, "k", "kv heads dividing the " + std::to_string(Hq) + " query heads",
          std::to_string(Hkv) + " kv heads (shape " + k.shape_string() + ")");
  require_shape("v", v, {B, Lk, Hkv, -1});
  require(Dv >= 1, "v", "v_head_dim >= 1", "shape " + v.shape_string());
  require_shape("o", o, {B, Lq, Hq, Dv});
  if (lse.data() != nullptr) {
    require_layout("lse", lse);
    require_shape("lse", lse, {B, Hq, Lq});
  }
  require(Lk <= flash::max_keys, "k", "at most 2^24 keys (mask positions are compared in fp32)",
          "shape " + k.shape_string());
}

}  // namespace sparse
}  // namespace detail
}  // namespace tokmix
