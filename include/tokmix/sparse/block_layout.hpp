#pragma once
// Block layouts for block-sparse attention: which key blocks each query block
// sees, shared by all heads or one per head, plus builders for the published
// patterns. A layout exists apart from the kernel so that one layout can serve
// every layer of a model, prefill and decode, and so that users can build their
// own (from a dense block mask or CSR lists) and have them validated once.
//
// A layout over blocks of `block_size` tokens has shape [heads, q_blocks,
// k_blocks]; entry (h, i, j) = 1 means the tokens of query block i see the
// tokens of key block j (query rows [i*b, (i+1)*b), key rows [j*b, (j+1)*b),
// the last block of each side possibly shorter). heads == 1 means one layout
// for every query head. Token-level masks (causal, window, ...) of
// attention_params are applied on top by the kernel ("causal composition");
// the builders' `causal` option additionally drops blocks above the block
// diagonal so no work is spent on them and random blocks are drawn from the
// past only.
//
// Builders (square layouts: q_blocks = k_blocks = ceil(seq / block_size)):
//   bigbird_layout         sliding window of blocks + global blocks (rows and
//                          columns) + r random blocks per row
//                          ref: Zaheer et al., "Big Bird: Transformers for
//                          Longer Sequences", NeurIPS 2020 (sec. 2, ITC variant).
//   lsg_layout             local blocks + sparse blocks (a wider neighbourhood at
//                          reduced density: every `sparse_stride`-th block beyond
//                          the local window) + global blocks
//                          ref: Condevaux & Harispe, "LSG Attention:
//                          Extrapolation of pretrained Transformers to long
//                          sequences", 2022 (local / sparse / global parts).
//   sparse_transformer_strided_layout, sparse_transformer_fixed_layout
//                          ref: Child et al., "Generating Long Sequences with
//                          Sparse Transformers", 2019 (sec. 4.2): strided
//                          A1 = previous l tokens, A2 = every l-th token back;
//                          fixed A1 = own stretch of l tokens, A2 = the last c
//                          tokens of every stretch; both at block granularity
//                          (l and c multiples of the block size), merged in
//                          every head or split across heads.
//   local_layout           a band of blocks (the window alone).

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "tokmix/core/error.hpp"
#include "tokmix/core/tensor_view.hpp"

namespace tokmix {

class block_layout {
 public:
  block_layout() = default;

  // All blocks hidden.
  block_layout(index_t heads, index_t q_blocks, index_t k_blocks, index_t block_size)
      : heads_(heads), qb_(q_blocks), kb_(k_blocks), bs_(block_size) {
    require(heads >= 1, "heads", ">= 1", heads);
    require(q_blocks >= 0, "q_blocks", ">= 0", q_blocks);
    require(k_blocks >= 0, "k_blocks", ">= 0", k_blocks);
    require(block_size >= 1, "block_size", ">= 1", block_size);
    bits_.assign(static_cast<std::size_t>(heads * q_blocks * k_blocks), 0);
  }

  // From a dense block mask (true = visible).      // mask: [heads, q_blocks, k_blocks]
  template <class M>
  static block_layout from_mask(const M& mask_, index_t block_size) {
    const tensor_view<const bool, 3> mask = as_view(mask_);
    require_layout("mask", mask);
    block_layout l(mask.dim(0), mask.dim(1), mask.dim(2), block_size);
    for (index_t h = 0; h < l.heads_; ++h)
      for (index_t i = 0; i < l.qb_; ++i)
        for (index_t j = 0; j < l.kb_; ++j) l.bits_[l.at(h, i, j)] = mask(h, i, j) ? 1 : 0;
    return l;
  }

  // From CSR lists per head: the key blocks of query block i of head h are
  // col_indices(h, row_offsets(h, i) .. row_offsets(h, i + 1) - 1), in any
  // order, repeats allowed.
  //   row_offsets: [heads, q_blocks + 1] int32, non-decreasing from 0
  //   col_indices: [heads, >= row_offsets(h, q_blocks)] int32 in [0, k_blocks)
  template <class RO, class CI>
  static block_layout from_csr(index_t k_blocks, index_t block_size, const RO& row_offsets_, const CI& col_indices_) {
    const tensor_view<const std::int32_t, 2> ro = as_view(row_offsets_);
    const tensor_view<const std::int32_t, 2> ci = as_view(col_indices_);
    require_layout("row_offsets", ro);
    require_layout("col_indices", ci);
    require(ro.dim(1) >= 1, "row_offsets", "shape [heads, q_blocks + 1]", "shape " + ro.shape_string());
    require(ci.dim(0) == ro.dim(0), "col_indices", "shape [" + std::to_string(ro.dim(0)) + ", *]",
            "shape " + ci.shape_string());
    block_layout l(ro.dim(0), ro.dim(1) - 1, k_blocks, block_size);
    for (index_t h = 0; h < l.heads_; ++h) {
      require(ro(h, 0) == 0, "row_offsets", "0 at the start of every head", ro(h, 0));
      for (index_t i = 0; i < l.qb_; ++i)
        require(ro(h, i + 1) >= ro(h, i), "row_offsets", "non-decreasing offsets",
                "offset " + std::to_string(ro(h, i + 1)) + " after " + std::to_string(ro(h, i)) + " (head " +
                    std::to_string(h) + ", row " + std::to_string(i + 1) + ")");
      require(ro(h, l.qb_) <= ci.dim(1), "row_offsets", "offsets <= col_indices.dim(1) = " + std::to_string(ci.dim(1)),
              ro(h, l.qb_));
      for (index_t e = 0; e < ro(h, l.qb_); ++e)
        require(ci(h, e) >= 0 && ci(h, e) < k_blocks, "col_indices", "key block indices in [0, " +
                std::to_string(k_blocks) + ")", std::to_string(ci(h, e)) + " at [" + std::to_string(h) + ", " +
                std::to_string(e) + "]");
    }
    for (index_t h = 0; h < l.heads_; ++h)
      for (index_t i = 0; i < l.qb_; ++i)
        for (index_t e = ro(h, i); e < ro(h, i + 1); ++e) l.bits_[l.at(h, i, ci(h, e))] = 1;
    return l;
  }

  index_t heads() const { return heads_; }
  index_t q_blocks() const { return qb_; }
  index_t k_blocks() const { return kb_; }
  index_t block_size() const { return bs_; }
  bool empty() const { return bits_.empty(); }

  bool visible(index_t h, index_t i, index_t j) const {
    check_index(h, i, j);
    return bits_[at(h, i, j)] != 0;
  }
  void set(index_t h, index_t i, index_t j, bool on = true) {
    check_index(h, i, j);
    bits_[at(h, i, j)] = on ? 1 : 0;
  }
  // Unchecked row of head h, query block i: k_blocks() bytes, 1 = visible.
  const std::uint8_t* row(index_t h, index_t i) const { return bits_.data() + at(h, i, 0); }

  // Visible blocks in all heads, and as a fraction of heads * q_blocks * k_blocks.
  index_t count() const {
    index_t n = 0;
    for (std::uint8_t b : bits_) n += b;
    return n;
  }
  double density() const { return bits_.empty() ? 0.0 : double(count()) / double(bits_.size()); }

  // Drops the blocks strictly above the block diagonal (kb > qb): what no
  // causal query can use.
  block_layout& make_causal() {
    for (index_t h = 0; h < heads_; ++h)
      for (index_t i = 0; i < qb_; ++i)
        for (index_t j = i + 1; j < kb_; ++j) bits_[at(h, i, j)] = 0;
    return *this;
  }

  // Block-wise OR with a layout of the same block counts (heads 1 broadcasts).
  block_layout& merge(const block_layout& o) {
    require(o.qb_ == qb_ && o.kb_ == kb_ && o.bs_ == bs_, "layout",
            "block counts " + std::to_string(qb_) + " x " + std::to_string(kb_) + " of size " + std::to_string(bs_),
            std::to_string(o.qb_) + " x " + std::to_string(o.kb_) + " of size " + std::to_string(o.bs_));
    require(o.heads_ == heads_ || o.heads_ == 1, "layout", std::to_string(heads_) + " or 1 heads", o.heads_);
    for (index_t h = 0; h < heads_; ++h)
      for (index_t i = 0; i < qb_; ++i)
        for (index_t j = 0; j < kb_; ++j) bits_[at(h, i, j)] |= o.bits_[o.at(o.heads_ == 1 ? 0 : h, i, j)];
    return *this;
  }

 private:
  std::size_t at(index_t h, index_t i, index_t j) const { return static_cast<std::size_t>((h * qb_ + i) * kb_ + j); }
  void check_index(index_t h, index_t i, index_t j) const {
    require(h >= 0 && h < heads_, "head", "in [0, " + std::to_string(heads_) + ")", h);
    require(i >= 0 && i < qb_, "query block", "in [0, " + std::to_string(qb_) + ")", i);
    require(j >= 0 && j < kb_, "key block", "in [0, " + std::to_string(kb_) + ")", j);
  }

  index_t heads_ = 0, qb_ = 0, kb_ = 0, bs_ = 1;
  std::vector<std::uint8_t> bits_;
};

namespace detail {

inline index_t layout_blocks(index_t seq, index_t block_size) {
  require(seq >= 0, "seq", ">= 0", seq);
  require(block_size >= 1, "block_size", ">= 1", block_size);
  return (seq + block_size - 1) / block_size;
}

// splitmix64: the layouts' random blocks are a pure function of (seed, head, row).
inline std::uint64_t splitmix64(std::uint64_t& x) {
  std::uint64_t z = (x += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

inline void band(block_layout& l, index_t h, index_t before, index_t after) {
  for (index_t i = 0; i < l.q_blocks(); ++i)
    for (index_t j = std::max<index_t>(0, i - before); j <= std::min(l.k_blocks() - 1, i + after); ++j) l.set(h, i, j);
}

inline void global_blocks(block_layout& l, index_t h, index_t first, index_t last) {
  const index_t n = l.q_blocks();
  for (index_t g = 0; g < n; ++g) {
    if (g >= first && g < n - last) continue;
    for (index_t j = 0; j < l.k_blocks(); ++j) l.set(h, g, j);  // global rows see everything
    for (index_t i = 0; i < n; ++i) l.set(h, i, g);            // everything sees global columns
  }
}

}  // namespace detail

// ---- BigBird ---------------------------------------------------------------

struct bigbird_layout_options {
  index_t window_blocks = 3;  // sliding blocks centred on the diagonal (odd: w/2 each side)
  index_t global_first = 1;   // the first blocks are global (BigBird-ITC: first and last)
  index_t global_last = 1;
  index_t random_blocks = 3;  // per query block, drawn among blocks not yet visible
  std::uint64_t seed = 0;
  bool causal = false;        // keep kb <= qb only; random blocks from the past
  index_t heads = 1;          // > 1: one layout per head (different random blocks)
};

inline block_layout bigbird_layout(index_t seq, index_t block_size, const bigbird_layout_options& o = {}) {
  const index_t n = detail::layout_blocks(seq, block_size);
  require(o.window_blocks >= 1 && o.window_blocks % 2 == 1, "options.window_blocks", "an odd count >= 1",
          o.window_blocks);
  require(o.global_first >= 0 && o.global_last >= 0, "options.global_first / global_last", ">= 0",
          std::to_string(o.global_first) + " / " + std::to_string(o.global_last));
  require(o.random_blocks >= 0, "options.random_blocks", ">= 0", o.random_blocks);
  require(o.heads >= 1, "options.heads", ">= 1", o.heads);
  block_layout l(o.heads, n, n, block_size);
  std::vector<index_t> cand;
  for (index_t h = 0; h < o.heads; ++h) {
    detail::band(l, h, o.window_blocks / 2, o.window_blocks / 2);
    detail::global_blocks(l, h, o.global_first, o.causal ? 0 : o.global_last);
    if (o.causal) l.make_causal();
    for (index_t i = 0; i < n; ++i) {
      cand.clear();
      const index_t hi = o.causal ? i : n - 1;
      for (index_t j = 0; j <= hi; ++j)
        if (!l.visible(h, i, j)) cand.push_back(j);
      std::uint64_t st = o.seed ^ (0x51ED27u + std::uint64_t(h) * 0x100000001B3ull) ^ (std::uint64_t(i) << 32);
      const index_t r = std::min<index_t>(o.random_blocks, static_cast<index_t>(cand.size()));
      for (index_t t = 0; t < r; ++t) {  // partial Fisher-Yates
        const index_t pick = t + static_cast<index_t>(detail::splitmix64(st) % std::uint64_t(cand.size() - t));
        std::swap(cand[t], cand[pick]);
        l.set(h, i, cand[t]);
      }
    }
  }
  return l;
}

// ---- LSG -------------------------------------------------------------------

struct lsg_layout_options {
  index_t local_blocks = 1;      // neighbours on each side (LSG's local window)
  index_t sparse_blocks = 2;     // sparse blocks on each side beyond the local window
  index_t sparse_stride = 2;     // ... spaced this many blocks apart (LSG's sparsity factor)
  index_t global_blocks = 1;     // the first blocks are global
  bool causal = false;
  index_t heads = 1;
};

inline block_layout lsg_layout(index_t seq, index_t block_size, const lsg_layout_options& o = {}) {
  const index_t n = detail::layout_blocks(seq, block_size);
  require(o.local_blocks >= 0, "options.local_blocks", ">= 0", o.local_blocks);
  require(o.sparse_blocks >= 0, "options.sparse_blocks", ">= 0", o.sparse_blocks);
  require(o.sparse_stride >= 1, "options.sparse_stride", ">= 1", o.sparse_stride);
  require(o.global_blocks >= 0, "options.global_blocks", ">= 0", o.global_blocks);
  require(o.heads >= 1, "options.heads", ">= 1", o.heads);
  block_layout l(o.heads, n, n, block_size);
  for (index_t h = 0; h < o.heads; ++h) {
    detail::band(l, h, o.local_blocks, o.local_blocks);
    for (index_t i = 0; i < n; ++i)
      for (index_t t = 1; t <= o.sparse_blocks; ++t) {
        const index_t d = o.local_blocks + t * o.sparse_stride;
        if (i - d >= 0) l.set(h, i, i - d);
        if (i + d < n) l.set(h, i, i + d);
      }
    detail::global_blocks(l, h, o.global_blocks, 0);
  }
  if (o.causal) l.make_causal();
  return l;
}

// ---- Sparse Transformer ----------------------------------------------------

enum class sparse_transformer_heads {
  merged,  // every head sees A1 | A2 ("merged" attention)
  split,   // even heads A1, odd heads A2 ("multi-head" attention); needs heads >= 2
};

struct sparse_transformer_options {
  index_t stride = 4;          // l, in blocks
  index_t summary_blocks = 1;  // fixed pattern only: c, in blocks (the last c blocks of each stretch)
  bool causal = true;          // the paper's autoregressive setting
  index_t heads = 1;
  sparse_transformer_heads head_mode = sparse_transformer_heads::merged;
};

namespace detail {
inline void sparse_transformer_check(const sparse_transformer_options& o) {
  require(o.stride >= 1, "options.stride", ">= 1 (blocks)", o.stride);
  require(o.heads >= 1, "options.heads", ">= 1", o.heads);
  require(o.head_mode == sparse_transformer_heads::merged || o.heads >= 2, "options.heads",
          ">= 2 when head_mode is split", o.heads);
}
inline bool sparse_transformer_part(const sparse_transformer_options& o, index_t h, int part) {
  return o.head_mode == sparse_transformer_heads::merged || (h % 2) == part;
}
}  // namespace detail

// Strided: A1 = the previous `stride` blocks (and the next ones when not
// causal), A2 = blocks whose distance to the query block is a multiple of stride.
inline block_layout sparse_transformer_strided_layout(index_t seq, index_t block_size,
                                                      const sparse_transformer_options& o = {}) {
  detail::sparse_transformer_check(o);
  const index_t n = detail::layout_blocks(seq, block_size);
  block_layout l(o.heads, n, n, block_size);
  for (index_t h = 0; h < o.heads; ++h) {
    if (detail::sparse_transformer_part(o, h, 0)) detail::band(l, h, o.stride - 1, o.causal ? 0 : o.stride - 1);
    if (detail::sparse_transformer_part(o, h, 1))
      for (index_t i = 0; i < n; ++i)
        for (index_t j = 0; j < n; ++j)
          if ((i - j) % o.stride == 0) l.set(h, i, j);
  }
  if (o.causal) l.make_causal();
  return l;
}

// Fixed: A1 = the blocks of the query's own stretch of `stride` blocks,
// A2 = the last `summary_blocks` blocks of every stretch.
inline block_layout sparse_transformer_fixed_layout(index_t seq, index_t block_size,
                                                    const sparse_transformer_options& o = {}) {
  detail::sparse_transformer_check(o);
  require(o.summary_blocks >= 1 && o.summary_blocks <= o.stride, "options.summary_blocks",
          "in [1, stride = " + std::to_string(o.stride) + "]", o.summary_blocks);
  const index_t n = detail::layout_blocks(seq, block_size);
  block_layout l(o.heads, n, n, block_size);
  for (index_t h = 0; h < o.heads; ++h)
    for (index_t i = 0; i < n; ++i)
      for (index_t j = 0; j < n; ++j) {
        const bool a1 = i / o.stride == j / o.stride;
        const bool a2 = j % o.stride >= o.stride - o.summary_blocks;
        if ((a1 && detail::sparse_transformer_part(o, h, 0)) || (a2 && detail::sparse_transformer_part(o, h, 1)))
          l.set(h, i, j);
      }
  if (o.causal) l.make_causal();
  return l;
}

// A band of `before` blocks back and `after` ahead of the diagonal.
inline block_layout local_layout(index_t seq, index_t block_size, index_t before, index_t after, index_t heads = 1) {
  require(before >= 0 && after >= 0, "before / after", ">= 0", std::to_string(before) + " / " + std::to_string(after));
  const index_t n = detail::layout_blocks(seq, block_size);
  block_layout l(heads, n, n, block_size);
  for (index_t h = 0; h < heads; ++h) detail::band(l, h, before, after);
  return l;
}

}  // namespace tokmix
