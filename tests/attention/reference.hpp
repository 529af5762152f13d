#pragma once
// Float64 softmax attention written straight from docs/semantics.md, one
// score at a time, for every option of attention_params. It shares no code
// with the kernels (not even mask.hpp), so a test comparing the two checks the
// semantics, not just the tiling. Slow on purpose: O(Lq * Lk * D) per head.

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "tokmix/attention/params.hpp"
#include "tokmix/core/tensor_view.hpp"

namespace tokmix_test {

using tokmix::index_t;

struct attention_reference_output {
  std::vector<double> o;    // [batch, seq_q, heads_q, dv], dense
  std::vector<double> lse;  // [batch, heads_q, seq_q], dense; -inf for rows that see no key
  index_t batch = 0, seq_q = 0, heads_q = 0, dv = 0;
  double o_at(index_t b, index_t i, index_t h, index_t e) const { return o[((b * seq_q + i) * heads_q + h) * dv + e]; }
  double lse_at(index_t b, index_t h, index_t i) const { return lse[(b * heads_q + h) * seq_q + i]; }
};

// Structured part of the mask, from the definitions: query i sits at position
// i + off; causal: j <= pos; block-causal: block(j) <= block(pos); window:
// pos - left <= j <= pos + right (-1 unbounded); sinks j < n_sink ignore the
// window but not causality.
inline bool reference_structured_visible(const tokmix::attention_params& p, index_t lq, index_t lk, index_t i,
                                         index_t j) {
  const index_t off = p.alignment == tokmix::causal_alignment::bottom_right ? lk - lq : 0;
  const index_t pos = i + off;
  bool causal_ok = true;
  if (p.causal && j > pos) causal_ok = false;
  if (p.causal_block > 0) {
    const double bj = std::floor(double(j) / double(p.causal_block));
    const double bq = std::floor(double(pos) / double(p.causal_block));
    if (bj > bq) causal_ok = false;
  }
  bool window_ok = true;
  if (p.window_left >= 0 && j < pos - p.window_left) window_ok = false;
  if (p.window_right >= 0 && j > pos + p.window_right) window_ok = false;
  const bool sink = j < p.n_sink;
  return causal_ok && (window_ok || sink);
}

template <class TQ, class TK, class TV>
attention_reference_output attention_reference(tokmix::tensor_view<const TQ, 4> q,  // [B, Lq, Hq, D]
                                                tokmix::tensor_view<const TK, 4> k,  // [B, Lk, Hkv, D]
                                                tokmix::tensor_view<const TV, 4> v,  // [B, Lk, Hkv, Dv]
                                                const tokmix::attention_params& p) {
  const index_t B = q.dim(0), Lq = q.dim(1), Hq = q.dim(2), D = q.dim(3);
  const index_t Lk = k.dim(1), Hkv = k.dim(2), Dv = v.dim(3);
  const index_t group = Hq / Hkv;
  const index_t off = p.alignment == tokmix::causal_alignment::bottom_right ? Lk - Lq : 0;
  const double scale = std::isnan(p.scale) ? 1.0 / std::sqrt(double(D)) : double(p.scale);
  const double ninf = -std::numeric_limits<double>::infinity();

  attention_reference_output r;
  r.batch = B;
  r.seq_q = Lq;
  r.heads_q = Hq;
  r.dv = Dv;
  r.o.assign(static_cast<std::size_t>(B * Lq * Hq * Dv), 0.0);
  r.lse.assign(static_cast<std::size_t>(B * Hq * Lq), ninf);

  std::vector<double> s(static_cast<std::size_t>(Lk));
  for (index_t b = 0; b < B; ++b)
    for (index_t h = 0; h < Hq; ++h) {
      const index_t hk = h / group;
      for (index_t i = 0; i < Lq; ++i) {
        double mx = ninf;
        for (index_t j = 0; j < Lk; ++j) {
          double dot = 0;
          for (index_t d = 0; d < D; ++d) dot += double(q(b, i, h, d)) * double(k(b, j, hk, d));
          double x = scale * dot;
          if (p.softcap > 0) x = double(p.softcap) * std::tanh(x / double(p.softcap));
          if (p.alibi_slopes.data()) x -= double(p.alibi_slopes(h)) * std::abs(double(i + off - j));
          if (p.bias.data()) x += double(p.bias(p.bias.dim(0) == 1 ? 0 : b, p.bias.dim(1) == 1 ? 0 : h, i, j));
          bool vis = reference_structured_visible(p, Lq, Lk, i, j);
          if (p.q_segment_ids.data() && p.q_segment_ids(b, i) != p.k_segment_ids(b, j)) vis = false;
          if (p.mask.data() && !p.mask(p.mask.dim(0) == 1 ? 0 : b, p.mask.dim(1) == 1 ? 0 : h, i, j)) vis = false;
          s[j] = vis ? x : ninf;
          if (s[j] > mx) mx = s[j];
        }
        if (mx == ninf) continue;  // no visible key: o = 0, lse = -inf
        double l = 0;
        for (index_t j = 0; j < Lk; ++j) {
          s[j] = s[j] == ninf ? 0.0 : std::exp(s[j] - mx);
          l += s[j];
        }
        for (index_t e = 0; e < Dv; ++e) {
          double acc = 0;
          for (index_t j = 0; j < Lk; ++j) acc += s[j] * double(v(b, j, hk, e));
          r.o[((b * Lq + i) * Hq + h) * Dv + e] = acc / l;
        }
        r.lse[(b * Hq + h) * Lq + i] = mx + std::log(l);
      }
    }
  return r;
}

}  // namespace tokmix_test
