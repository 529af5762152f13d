#pragma once
// Rotary position embeddings, applied in place to q or k before attention (and
// to new keys before they enter a kv_cache, so their absolute positions are
// baked in). Both conventions in use: rotate-half (GPT-NeoX, LLaMA, HF
// `rotate_half`) and interleaved pairs (GPT-J, Meta's original LLaMA code),
// with partial rotary (rotary_dim < head_dim rotates only the leading dims).
//
// ref: Su et al. 2021, "RoFormer: Enhanced Transformer with Rotary Position
// Embedding": pair i of a head rotates by angle pos * base^(-2i/rotary_dim).
//
// Angles are computed in float64 and rounded once, so positions in the
// hundreds of thousands keep full fp32 accuracy.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "tokmix/simd/arch.hpp"

#include "tokmix/core/element.hpp"
#include "tokmix/core/error.hpp"
#include "tokmix/core/scratch.hpp"
#include "tokmix/core/tensor_view.hpp"

namespace tokmix {

enum class rope_style {
  rotate_half,  // pairs (i, i + rotary_dim/2): GPT-NeoX, LLaMA (HF)
  interleaved,  // pairs (2i, 2i + 1): GPT-J
};

struct rope_params {
  index_t rotary_dim = -1;  // -1: the whole head_dim; must be even and <= head_dim
  double base = 10000.0;
  rope_style style = rope_style::rotate_half;
};

// Precomputed cos/sin for positions [0, max_positions), for callers that
// apply RoPE many times (every layer of every decode step).
class rope_table {
 public:
  rope_table(index_t max_positions, index_t rotary_dim, double base = 10000.0)
      : max_positions_(max_positions), rotary_dim_(rotary_dim), base_(base) {
    require(max_positions >= 0, "max_positions", ">= 0", max_positions);
    require(rotary_dim >= 2 && rotary_dim % 2 == 0, "rotary_dim", "an even number >= 2", rotary_dim);
    require(std::isfinite(base) && base > 0, "base", "a finite value > 0", base);
    const index_t half = rotary_dim / 2;
    cos_.resize(static_cast<std::size_t>(max_positions * half));
    sin_.resize(cos_.size());
    for (index_t p = 0; p < max_positions; ++p) fill_row(p, base, rotary_dim, cos_.data() + p * half, sin_.data() + p * half);
  }

  index_t max_positions() const { return max_positions_; }
  index_t rotary_dim() const { return rotary_dim_; }
  double base() const { return base_; }
  // [rotary_dim / 2]
  const float* cos_row(index_t pos) const { return cos_.data() + pos * (rotary_dim_ / 2); }
  const float* sin_row(index_t pos) const { return sin_.data() + pos * (rotary_dim_ / 2); }

  // cos/sin of pos * base^(-2i/rotary_dim), i in [0, rotary_dim/2).
  static void fill_row(index_t pos, double base, index_t rotary_dim, float* c, float* s) {
    const index_t half = rotary_dim / 2;
    for (index_t i = 0; i < half; ++i) {
      const double inv_freq = std::pow(base, -2.0 * static_cast<double>(i) / static_cast<double>(rotary_dim));
      const double a = static_cast<double>(pos) * inv_freq;
      c[i] = static_cast<float>(std::cos(a));
      s[i] = static_cast<float>(std::sin(a));
    }
  }

 private:
  index_t max_positions_, rotary_dim_;
  double base_;
  std::vector<float> cos_, sin_;
};

namespace detail {

template <class Arch>
void rope_rotate_half_kernel(Arch, float* x, const float* c, const float* s, index_t half) {
  using b = xsimd::batch<float, Arch>;
  constexpr index_t lanes = static_cast<index_t>(b::size);
  float* x2p = x + half;
  index_t i = 0;
  for (; i + lanes <= half; i += lanes) {
    const b x1 = b::load_unaligned(x + i), x2 = b::load_unaligned(x2p + i);
    const b cc = b::load_unaligned(c + i), ss = b::load_unaligned(s + i);
    xsimd::fms(x1, cc, x2 * ss).store_unaligned(x + i);
    xsimd::fma(x1, ss, x2 * cc).store_unaligned(x2p + i);
  }
  for (; i < half; ++i) {
    const float x1 = x[i], x2 = x2p[i];
    x[i] = x1 * c[i] - x2 * s[i];
    x2p[i] = x2 * c[i] + x1 * s[i];
  }
}

inline void rope_interleaved_row(float* x, const float* c, const float* s, index_t half) {
  for (index_t i = 0; i < half; ++i) {
    const float x0 = x[2 * i], x1 = x[2 * i + 1];
    x[2 * i] = x0 * c[i] - x1 * s[i];
    x[2 * i + 1] = x1 * c[i] + x0 * s[i];
  }
}

// Rotates the first 2*half elements of one head row in place.
template <class E>
void rope_row(E* x, const float* c, const float* s, index_t half, rope_style style, float* tmp) {
  float* f = reinterpret_cast<float*>(x);
  if (!std::is_same<E, float>::value) {
    for (index_t i = 0; i < 2 * half; ++i) tmp[i] = to_float(x[i]);
    f = tmp;
  }
  if (style == rope_style::rotate_half) rope_rotate_half_kernel(xsimd::default_arch{}, f, c, s, half);
  else rope_interleaved_row(f, c, s, half);
  if (!std::is_same<E, float>::value)
    for (index_t i = 0; i < 2 * half; ++i) x[i] = from_float<E>(tmp[i]);
}

template <class X>
index_t rope_check(const X& x, index_t rotary_dim_param, double base) {
  require_layout("x", x);
  const index_t d = x.dim(3);
  const index_t r = rotary_dim_param < 0 ? d : rotary_dim_param;
  if (r < 2 || r % 2 != 0 || r > d)
    throw argument_error("rotary_dim", "an even number in [2, head_dim = " + std::to_string(d) + "] (or -1)",
                         std::to_string(rotary_dim_param));
  require(std::isfinite(base) && base > 0, "base", "a finite value > 0", base);
  return r;
}

// Rotates every head row; a token's position comes from an offset or a [B|1, L] table.
template <class X, class Rows>
void rope_apply_rows(const X& x, index_t r, rope_style style, Rows&& row_tables, const std::int32_t* pos_or_null,
                     index_t pos_bstride, index_t pos_lstride, index_t offset) {
  const index_t half = r / 2;
  scratch_frame frame(3 * scratch_frame::bytes_for<float>(static_cast<std::size_t>(r)));
  float* c = frame.alloc<float>(static_cast<std::size_t>(half));
  float* s = frame.alloc<float>(static_cast<std::size_t>(half));
  float* tmp = frame.alloc<float>(static_cast<std::size_t>(r));
  const float* cr = nullptr;
  const float* sr = nullptr;
  // Token-major so that, with an offset, each position's cos/sin is computed once for all batches.
  for (index_t l = 0; l < x.dim(1); ++l) {
    for (index_t b = 0; b < x.dim(0); ++b) {
      if (pos_or_null != nullptr || b == 0) {
        const index_t pos =
            pos_or_null ? static_cast<index_t>(pos_or_null[b * pos_bstride + l * pos_lstride]) : offset + l;
        row_tables(pos, c, s, cr, sr);
      }
      for (index_t h = 0; h < x.dim(2); ++h) rope_row(x.ptr(b, l, h), cr, sr, half, style, tmp);
    }
  }
}

}  // namespace detail

// Rotates x in place; token l of every batch gets position position_offset + l
// (decode: offset = cache.length()).                  // x: [batch, seq, heads, head_dim]
template <class X>
void rope_apply(X&& x_in, index_t position_offset, const rope_params& params = {}) {
  const auto x = as_view(x_in);
  const index_t r = detail::rope_check(x, params.rotary_dim, params.base);
  detail::rope_apply_rows(
      x, r, params.style,
      [&](index_t pos, float* c, float* s, const float*& cr, const float*& sr) {
        rope_table::fill_row(pos, params.base, r, c, s);
        cr = c;
        sr = s;
      },
      nullptr, 0, 0, position_offset);
}

// Explicit per-token positions (packed varlen batches, left padding...).
// x: [batch, seq, heads, head_dim], positions: [batch|1, seq]
template <class X>
void rope_apply(X&& x_in, tensor_view<const std::int32_t, 2> positions, const rope_params& params = {}) {
  const auto x = as_view(x_in);
  const index_t r = detail::rope_check(x, params.rotary_dim, params.base);
  if (!((positions.dim(0) == 1 || positions.dim(0) == x.dim(0)) && positions.dim(1) == x.dim(1)))
    throw argument_error("positions", "shape [" + std::to_string(x.dim(0)) + " or 1, " + std::to_string(x.dim(1)) + "]",
                         "shape " + positions.shape_string());
  if (positions.data() == nullptr && positions.size() > 0) throw argument_error("positions", "a non-null data pointer", "nullptr");
  const index_t bs = positions.dim(0) == 1 ? 0 : positions.stride(0);
  detail::rope_apply_rows(
      x, r, params.style,
      [&](index_t pos, float* c, float* s, const float*& cr, const float*& sr) {
        rope_table::fill_row(pos, params.base, r, c, s);
        cr = c;
        sr = s;
      },
      positions.data(), bs, positions.stride(1), 0);
}

namespace detail {
template <class X>
index_t rope_check_table(const X& x, const rope_table& table, index_t first, index_t last) {
  const index_t r = rope_check(x, table.rotary_dim(), table.base());
  if (x.size() > 0 && (first < 0 || last >= table.max_positions()))
    throw argument_error("x", "positions in [0, " + std::to_string(table.max_positions()) + ") of the rope_table",
                         "positions up to " + std::to_string(last) + " (from " + std::to_string(first) + ")");
  return r;
}
}  // namespace detail

// Same as above with precomputed cos/sin; rotary_dim and base come from the table.
template <class X>
void rope_apply(X&& x_in, index_t position_offset, const rope_table& table, rope_style style = rope_style::rotate_half) {
  const auto x = as_view(x_in);
  const index_t r = detail::rope_check_table(x, table, position_offset, position_offset + x.dim(1) - 1);
  detail::rope_apply_rows(
      x, r, style,
      [&](index_t pos, float*, float*, const float*& cr, const float*& sr) {
        cr = table.cos_row(pos);
        sr = table.sin_row(pos);
      },
      nullptr, 0, 0, position_offset);
}

// x: [batch, seq, heads, head_dim], positions: [batch|1, seq]
template <class X>
void rope_apply(X&& x_in, tensor_view<const std::int32_t, 2> positions, const rope_table& table,
                rope_style style = rope_style::rotate_half) {
  const auto x = as_view(x_in);
  if (!((positions.dim(0) == 1 || positions.dim(0) == x.dim(0)) && positions.dim(1) == x.dim(1)))
    throw argument_error("positions", "shape [" + std::to_string(x.dim(0)) + " or 1, " + std::to_string(x.dim(1)) + "]",
                         "shape " + positions.shape_string());
  if (positions.data() == nullptr && positions.size() > 0) throw argument_error("positions", "a non-null data pointer", "nullptr");
  index_t lo = 0, hi = 0;
  bool any = false;
  for (index_t b = 0; b < positions.dim(0); ++b)
    for (index_t l = 0; l < positions.dim(1); ++l) {
      const index_t p = positions(b, l);
      lo = any ? std::min(lo, p) : p;
      hi = any ? std::max(hi, p) : p;
      any = true;
    }
  const index_t r = detail::rope_check_table(x, table, lo, hi);
  const index_t bs = positions.dim(0) == 1 ? 0 : positions.stride(0);
  detail::rope_apply_rows(
      x, r, style,
      [&](index_t pos, float*, float*, const float*& cr, const float*& sr) {
        cr = table.cos_row(pos);
        sr = table.sin_row(pos);
      },
      positions.data(), bs, positions.stride(1), 0);
}

}  // namespace tokmix
