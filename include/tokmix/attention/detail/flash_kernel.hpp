#pragma once
// The tile kernel behind flash_attention and flash_attention_varlen.
//
// ref: Dao et al., "FlashAttention" (2022) and "FlashAttention-2" (2023):
//      tiles of queries x keys, online softmax, O(tile) extra memory.
//
// Layout choice (why this file has its own micro-kernel): scores are computed
// transposed, S^T = K Q^T, with the query block packed once as Q^T panels of
// NR = 2 SIMD widths of queries. Then
//   * K and V rows are read in place (scalar broadcasts), so an f32 K/V tile
//     needs no packing or transpose per query block;
//   * the softmax statistics (max, sum) run down columns: plain vertical SIMD,
//     no horizontal reductions;
//   * O^T += V^T P^T reuses the same register-blocked MR x NR kernel, and the
//     rescale of O by exp(m_old - m_new) is folded into its final store.
// Scores live in log2 units (q pre-scaled by scale * log2 e) so the softmax
// uses exp2, one multiply cheaper than exp.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "tokmix/simd/arch.hpp"

#include "tokmix/attention/mask.hpp"
#include "tokmix/attention/params.hpp"
#include "tokmix/core/element.hpp"
#include "tokmix/core/scratch.hpp"
#include "tokmix/core/tensor_view.hpp"
#include "tokmix/core/threading.hpp"
#include "tokmix/simd/convert.hpp"
#include "tokmix/simd/prefetch.hpp"

TOKMIX_SIMD_AVX512_WARNINGS_OFF

namespace tokmix {
namespace detail {
namespace flash {

constexpr float log2e = 1.44269504088896341f;
constexpr float ln2 = 0.693147180559945309f;
// Tile sizes, measured: on a 2 vCPU Xeon (AVX-512) block_q 128/256 x block_k
// 128 were best and within noise of each other, block_k 64 lost ~5-10% to
// per-tile softmax overhead. On Zen 3 (AVX2, 32 KiB L1d, 512 KiB L2) block_q
// 256 beat 128 by 3-11% (min of 6 runs, D 64/128, L 2048, causal or not, 1 and
// 2 threads): each K/V tile then serves twice the query panels before the
// next one is loaded. block_q 64 and block_k 64 lost, block_q 512 and
// block_k 256 were no better.
constexpr index_t block_q = 256;  // query rows per work item
constexpr index_t block_k = 128;  // keys per tile
// Partial tiles compare key positions in fp32, exact up to 2^24.
constexpr index_t max_keys = index_t(1) << 24;

template <class Arch>
using fb = xsimd::batch<float, Arch>;
template <class Arch>
using ib = xsimd::batch<std::int32_t, Arch>;

// MR: rows of the register block, MR x (2 SIMD widths) accumulators plus two B
// vectors and a broadcast must fit the register file: 12 x 2 + 3 = 27 of
// AVX-512's 32 zmm, 6 x 2 + 3 = 15 of AVX2's 16 ymm.
template <class Arch>
constexpr int micro_rows = std::is_base_of<xsimd::avx512f, Arch>::value ? 12 : 6;

// 2^x for x <= 0 (scores minus a running max): round-to-nearest split x = n + f,
// |f| <= 1/2, 2^f by a degree-5 polynomial (max relative error 2.4e-7 in fp32,
// tests/attention/flash_attention.cpp; one FMA less than a degree-6 Taylor series),
// n added to the exponent field. x < -126 (and -inf) gives exactly 0, which
// masked scores rely on.
template <class Arch>
inline fb<Arch> exp2_nonpositive(fb<Arch> x) noexcept {
  using F = fb<Arch>;
  using I = ib<Arch>;
  const F magic(12582912.f);  // 1.5 * 2^23: adding it rounds to an integer in the low mantissa bits
  const F xc = xsimd::max(x, F(-126.5f));
  const F t = xc + magic;
  const F n = t - magic;
  const F f = xc - n;
  // Interpolates 2^f at the 6 Chebyshev nodes of [-1/2, 1/2] (near-minimax).
  F p = F(1.3390863364533504e-3f);
  p = xsimd::fma(p, f, F(9.676031918326564e-3f));
  p = xsimd::fma(p, f, F(5.5503571142194612e-2f));
  p = xsimd::fma(p, f, F(2.4022107485308208e-1f));
  p = xsimd::fma(p, f, F(6.9314718802622866e-1f));
  p = xsimd::fma(p, f, F(1.f));  // exactly 1 (not 1 + 7.5e-8): 2^0 == 1, the row max weighs 1
  const I e = xsimd::bitwise_cast<I>(t) << 23;
  const F y = xsimd::bitwise_cast<F>(xsimd::bitwise_cast<I>(p) + e);
  return xsimd::select(x < F(-126.f), F(0.f), y);
}

// C[r][0:NR] = (C[r] * col_scale if Accumulate) + sum_k A(r, k) * B[k][0:NR]
// for r < MR. B and C are packed panels (row stride NR, aligned). A is read in
// place: A(r, k) = a[r * stride + k] (rows of K), or a[k * stride + r] when
// ATrans (columns of V).
template <int MR, bool ATrans, bool Accumulate, class Arch>
inline void micro_kernel(index_t K, const float* a, index_t stride, const float* b, float* c,
                         const float* col_scale) noexcept {
  using F = fb<Arch>;
  constexpr index_t W = F::size;
  // K >= 1 always (head_dim >= 1, tiles hold >= 1 key): the first step
  // initialises the accumulators, which lets GCC keep them in registers
  // (a zero-initialised array is otherwise materialised on the stack).
  typename F::register_type acc0[MR], acc1[MR];
  {
    const F b0 = F::load_aligned(b), b1 = F::load_aligned(b + W);
    for (int r = 0; r < MR; ++r) {
      const F ar(ATrans ? a[r] : a[r * stride]);
      acc0[r] = ar * b0;
      acc1[r] = ar * b1;
    }
  }
  for (index_t k = 1; k < K; ++k) {
    const F b0 = F::load_aligned(b + k * 2 * W);
    const F b1 = F::load_aligned(b + k * 2 * W + W);
    for (int r = 0; r < MR; ++r) {
      const F ar(ATrans ? a[k * stride + r] : a[r * stride + k]);
      acc0[r] = xsimd::fma(ar, b0, F(acc0[r]));
      acc1[r] = xsimd::fma(ar, b1, F(acc1[r]));
    }
  }
  if (Accumulate) {
    const F s0 = F::load_aligned(col_scale), s1 = F::load_aligned(col_scale + W);
    for (int r = 0; r < MR; ++r) {
      xsimd::fma(F::load_aligned(c + r * 2 * W), s0, F(acc0[r])).store_aligned(c + r * 2 * W);
      xsimd::fma(F::load_aligned(c + r * 2 * W + W), s1, F(acc1[r])).store_aligned(c + r * 2 * W + W);
    }
  } else {
    for (int r = 0; r < MR; ++r) {
      F(acc0[r]).store_aligned(c + r * 2 * W);
      F(acc1[r]).store_aligned(c + r * 2 * W + W);
    }
  }
}

// Remainder rows (< MR) of a panel product: the micro-kernel instantiated for exactly R rows.
template <int R, bool ATrans, bool Accumulate, class Arch>
inline void tail_product(index_t rows, index_t K, const float* a, index_t stride, const float* b, float* c,
                         const float* col_scale) noexcept {
  if constexpr (R >= 1) {
    if (rows == R)
      micro_kernel<R, ATrans, Accumulate, Arch>(K, a, stride, b, c, col_scale);
    else
      tail_product<R - 1, ATrans, Accumulate, Arch>(rows, K, a, stride, b, c, col_scale);
  }
}

// Runs the micro-kernel over M rows of A (any M), MR rows at a time.
template <bool ATrans, bool Accumulate, class Arch>
inline void panel_product(index_t M, index_t K, const float* a, index_t stride, const float* b, float* c,
                          const float* col_scale) noexcept {
  constexpr index_t NR = 2 * fb<Arch>::size;
  // Step between consecutive MR-row groups of A.
  const index_t row_step = ATrans ? 1 : stride;
  index_t r = 0;
  for (; r + micro_rows<Arch> <= M; r += micro_rows<Arch>)
    micro_kernel<micro_rows<Arch>, ATrans, Accumulate, Arch>(K, a + r * row_step, stride, b, c + r * NR, col_scale);
  if (r < M)
    tail_product<micro_rows<Arch> - 1, ATrans, Accumulate, Arch>(M - r, K, a + r * row_step, stride, b, c + r * NR,
                                                           col_scale);
}

// ---- 16-bit storage --------------------------------------------------------

// K/V tiles in fp16/bf16 are widened once per tile and query block (amortised
// over block_q queries) by simd::convert. Its 16-bit loads currently gather
// element by element, which leaves 16-bit K/V ~10-30% slower than f32 here.
template <class T>
inline void widen(const T* src, float* dst, index_t n) {
  simd::convert(src, dst, n);
}

// True when rows `row` elements apart map to at most two 4 KiB-periodic
// groups of L1 sets (byte stride a multiple of 2 KiB).
template <class T>
inline bool l1_aliasing_stride(index_t row) {
  return row > 0 && (static_cast<std::size_t>(row) * sizeof(T)) % 2048 == 0;
}

// ---- problem description ---------------------------------------------------

// One batch element (or one varlen sequence): all its heads. Strides are in
// elements; rows are query/key positions.
template <class TQ, class TK, class TV>
struct flash_problem {
  const TQ* q;
  index_t q_row, q_head;
  const TK* k;
  index_t k_row, k_head;
  const TV* v;
  index_t v_row, v_head;
  float* o;
  index_t o_row, o_head;
  float* lse;  // nullable
  index_t lse_head, lse_row;
  index_t lq, lk;
  index_t batch_index;  // for segment ids, mask and bias lookups
};

struct flash_shape {
  index_t heads_q, heads_kv, d, dv;
  float scale;
};

// Everything one query block of one head needs; sized for scratch_frame.
template <class Arch>
inline std::size_t flash_scratch_bytes(index_t d, index_t dv, bool pack_k, bool pack_v) {
  constexpr index_t NR = 2 * fb<Arch>::size;
  const index_t brp = (block_q + NR - 1) / NR * NR;
  std::size_t n = scratch_frame::bytes_for<float>(d * brp) + scratch_frame::bytes_for<float>(dv * brp) +
                  scratch_frame::bytes_for<float>(block_k * NR) + 5 * scratch_frame::bytes_for<float>(brp) +
                  scratch_frame::bytes_for<float>(NR);
  if (pack_k) n += scratch_frame::bytes_for<float>(block_k * d);
  if (pack_v) n += scratch_frame::bytes_for<float>(block_k * dv);
  return n;
}

// Scalar score transforms and data masks of one S^T panel (slow options only):
// softcap, ALiBi, bias (all in natural units), conversion to log2 units, then
// segment ids and the bool mask.
inline void transform_panel(float* s, index_t nr, index_t kt, index_t k0, index_t i0, index_t ncols,
                            const attention_params& p, index_t offset, index_t b, index_t h, bool transforms,
                            bool data_masks) {
  const float ninf = -std::numeric_limits<float>::infinity();
  for (index_t r = 0; r < kt; ++r) {
    const index_t j = k0 + r;
    float* row = s + r * nr;
    for (index_t c = 0; c < ncols; ++c) {
      const index_t i = i0 + c;
      if (transforms) {
        float x = row[c];
        if (p.softcap > 0.f) x = p.softcap * std::tanh(x / p.softcap);
        x += attention_additive_bias(p, offset, b, h, i, j);
        row[c] = x * log2e;
      }
      if (data_masks && !attention_data_visible(p, b, h, i, j)) row[c] = ninf;
    }
  }
}

// Keys [begin, end) of one problem (a hook for sparse attention, see flash_query_block).
struct flash_key_range {
  index_t begin, end;
};

// One query block [q0, q1) of query head h of problem `pr`.
//
// Hooks for the sparse family (tokmix/sparse/), both free for dense callers:
// - `vis` is attention_visibility or any type with the same members
//   (structured, row, classify, key_span, offset) describing per-row key
//   intervals, e.g. rows gathered from a cluster whose causal bound varies;
// - `ranges` (nullable, sorted, disjoint): visit only these key ranges (the
//   visible key blocks of a block-sparse layout), each still clipped to the
//   block's key span and classified by `vis`; nullptr means the whole span.
template <class Arch, class TQ, class TK, class TV, class Vis>
void flash_query_block(const flash_problem<TQ, TK, TV>& pr, const flash_shape& sh, const attention_params& p,
                       const Vis& vis, index_t h, index_t q0, index_t q1, const flash_key_range* ranges = nullptr,
                       index_t n_ranges = 0) {
  using F = fb<Arch>;
  constexpr index_t W = F::size;
  constexpr index_t NR = 2 * W;
  constexpr bool widen_k = !std::is_same<TK, float>::value;
  constexpr bool widen_v = !std::is_same<TV, float>::value;
  const float ninf = -std::numeric_limits<float>::infinity();
  const index_t d = sh.d, dv = sh.dv;
  const index_t nq = q1 - q0;
  const index_t brp = (nq + NR - 1) / NR * NR;
  const index_t panels = brp / NR;
  const index_t hk = h / (sh.heads_q / sh.heads_kv);
  const bool transforms = p.softcap > 0.f || p.alibi_slopes.data() != nullptr || p.bias.data() != nullptr;
  const bool data_masks = p.q_segment_ids.data() != nullptr || p.mask.data() != nullptr;
  const bool structured = vis.structured();

  // fp32 tiles are read in place unless their rows alias in L1: rows whose
  // byte stride is a multiple of 2 KiB (several heads per row, e.g. 8 x 128)
  // fall into one or two groups of sets, and the micro-kernel reads
  // micro_rows of them at once. Packing those costs a tile copy per query
  // block (~5% at D = 64) and gains ~20% at 8 heads x 128 on AVX-512.
  const bool pack_k = widen_k || l1_aliasing_stride<TK>(pr.k_row);
  const bool pack_v = widen_v || l1_aliasing_stride<TV>(pr.v_row);
  scratch_frame frame(flash_scratch_bytes<Arch>(d, dv, pack_k, pack_v));
  float* qp = frame.alloc<float>(d * brp);     // [panel][d][NR]: Q^T, pre-scaled
  float* op = frame.alloc<float>(dv * brp);    // [panel][dv][NR]: O^T accumulator
  float* sp = frame.alloc<float>(block_k * NR);  // [key][NR]: one S^T / P^T panel
  float* m = frame.alloc<float>(brp);          // running max (log2 units)
  float* l = frame.alloc<float>(brp);          // running sum
  float* lo = frame.alloc<float>(brp);         // structured row bounds, as floats for SIMD compares
  float* hi = frame.alloc<float>(brp);
  float* se = frame.alloc<float>(brp);
  float* alpha = frame.alloc<float>(NR);
  float* kbuf = pack_k ? frame.alloc<float>(block_k * d) : nullptr;
  float* vbuf = pack_v ? frame.alloc<float>(block_k * dv) : nullptr;

  // Pack Q^T panels; padded query columns are zero and see every key.
  const float qscale = transforms ? sh.scale : sh.scale * log2e;
  std::fill(qp, qp + d * brp, 0.f);
  for (index_t c = 0; c < nq; ++c) {
    const TQ* qrow = pr.q + (q0 + c) * pr.q_row + h * pr.q_head;
    float* dst = qp + (c / NR) * d * NR + (c % NR);
    for (index_t e = 0; e < d; ++e) dst[e * NR] = to_float(qrow[e]) * qscale;
  }
  std::fill(op, op + dv * brp, 0.f);
  std::fill(m, m + brp, ninf);
  std::fill(l, l + brp, 0.f);
  for (index_t c = 0; c < brp; ++c) {
    if (c < nq) {
      const attention_row_bounds rb = vis.row(q0 + c);
      lo[c] = static_cast<float>(rb.lo);
      hi[c] = static_cast<float>(rb.hi);
      se[c] = static_cast<float>(rb.sink_end);
    } else {
      lo[c] = 0.f;
      hi[c] = static_cast<float>(pr.lk);
      se[c] = 0.f;
    }
  }

  const auto span = vis.key_span(q0, q1);
  const TK* kbase = pr.k + hk * pr.k_head;
  const TV* vbase = pr.v + hk * pr.v_head;
  const flash_key_range whole{span.first, span.second};
  const flash_key_range* rs = ranges != nullptr ? ranges : &whole;
  const index_t n_rs = ranges != nullptr ? n_ranges : 1;
  for (index_t ri = 0; ri < n_rs; ++ri) {
    const index_t r_end = std::min(rs[ri].end, span.second);
    for (index_t k0 = std::max(rs[ri].begin, span.first); k0 < r_end; k0 += block_k) {
      const index_t k1 = std::min(k0 + block_k, r_end);
      const index_t kt = k1 - k0;
      const tile_visibility tv = structured ? vis.classify(q0, q1, k0, k1) : tile_visibility::full;
      if (tv == tile_visibility::hidden) continue;
      const float* kt_ptr = nullptr;
      index_t ldk = d;
      if (pack_k) {
        for (index_t r = 0; r < kt; ++r) widen(kbase + (k0 + r) * pr.k_row, kbuf + r * d, d);
        kt_ptr = kbuf;
        ldk = d;
      } else if constexpr (!widen_k) {
        kt_ptr = kbase + k0 * pr.k_row;
        ldk = pr.k_row;
      }
      const float* vt_ptr = nullptr;
      index_t ldv = dv;
      if (pack_v) {
        for (index_t r = 0; r < kt; ++r) widen(vbase + (k0 + r) * pr.v_row, vbuf + r * dv, dv);
        vt_ptr = vbuf;
        ldv = dv;
      } else if constexpr (!widen_v) {
        vt_ptr = vbase + k0 * pr.v_row;
        ldv = pr.v_row;
      }

      // Rows strided by other heads defeat the hardware prefetchers (each row
      // sits in another page once several heads share a row): ask for the next
      // tile's K and V rows while this one computes.
      if (k1 < r_end) {
        const index_t next = std::min(block_k, r_end - k1);
        if (pr.k_row != d) simd::prefetch_rows(kbase + k1 * pr.k_row, pr.k_row, next, d);
        if (pr.v_row != dv) simd::prefetch_rows(vbase + k1 * pr.v_row, pr.v_row, next, dv);
      }

      for (index_t pn = 0; pn < panels; ++pn) {
        const index_t c0 = pn * NR;
        // Within a partial tile each panel only visits the keys its own rows can
        // see (on a causal diagonal that skips ~3/8 of the tile) and is
        // reclassified, so most panels of a diagonal tile need no mask work.
        index_t pk0 = k0, pk1 = k1;
        tile_visibility ptv = tv;
        if (tv == tile_visibility::partial) {
          const index_t i0 = q0 + c0, i1 = std::min(q1, i0 + NR);
          const auto ps = vis.key_span(i0, i1);
          pk0 = std::max(k0, ps.first);
          pk1 = std::min(k1, ps.second);
          if (pk0 >= pk1) continue;
          ptv = vis.classify(i0, i1, pk0, pk1);
          if (ptv == tile_visibility::hidden) continue;
        }
        const index_t pkt = pk1 - pk0;
        const float* pk_ptr = kt_ptr + (pk0 - k0) * ldk;
        const float* pv_ptr = vt_ptr + (pk0 - k0) * ldv;
        // S^T = K_tile Q^T_panel.
        panel_product<false, false, Arch>(pkt, d, pk_ptr, ldk, qp + pn * d * NR, sp, nullptr);
        if (transforms || data_masks)
          transform_panel(sp, NR, pkt, pk0, q0 + c0, std::min(NR, nq - c0), p, vis.offset(), pr.batch_index, h,
                          transforms, data_masks);
        if (ptv == tile_visibility::partial) {
          const F lo0 = F::load_aligned(lo + c0), lo1 = F::load_aligned(lo + c0 + W);
          const F hi0 = F::load_aligned(hi + c0), hi1 = F::load_aligned(hi + c0 + W);
          const F se0 = F::load_aligned(se + c0), se1 = F::load_aligned(se + c0 + W);
          for (index_t r = 0; r < pkt; ++r) {
            const F j(static_cast<float>(pk0 + r));
            float* row = sp + r * NR;
            const auto v0 = ((j >= lo0) && (j <= hi0)) || (j < se0);
            const auto v1 = ((j >= lo1) && (j <= hi1)) || (j < se1);
            xsimd::select(v0, F::load_aligned(row), F(ninf)).store_aligned(row);
            xsimd::select(v1, F::load_aligned(row + W), F(ninf)).store_aligned(row + W);
          }
        }
        // Online softmax down the columns.
        F mx0 = F::load_aligned(m + c0), mx1 = F::load_aligned(m + c0 + W);
        const F mold0 = mx0, mold1 = mx1;
        {
          F a0 = F(ninf), a1 = F(ninf), b0 = F(ninf), b1 = F(ninf);
          index_t r = 0;
          for (; r + 2 <= pkt; r += 2) {
            a0 = xsimd::max(a0, F::load_aligned(sp + r * NR));
            a1 = xsimd::max(a1, F::load_aligned(sp + r * NR + W));
            b0 = xsimd::max(b0, F::load_aligned(sp + (r + 1) * NR));
            b1 = xsimd::max(b1, F::load_aligned(sp + (r + 1) * NR + W));
          }
          if (r < pkt) {
            a0 = xsimd::max(a0, F::load_aligned(sp + r * NR));
            a1 = xsimd::max(a1, F::load_aligned(sp + r * NR + W));
          }
          mx0 = xsimd::max(mx0, xsimd::max(a0, b0));
          mx1 = xsimd::max(mx1, xsimd::max(a1, b1));
        }
        // A column that has seen only -inf keeps m = -inf; subtract 0 there so exp2 gives 0, not NaN.
        const F mu0 = xsimd::select(mx0 == F(ninf), F(0.f), mx0);
        const F mu1 = xsimd::select(mx1 == F(ninf), F(0.f), mx1);
        const F al0 = exp2_nonpositive<Arch>(mold0 - mu0), al1 = exp2_nonpositive<Arch>(mold1 - mu1);
        F s0 = F(0.f), s1 = F(0.f), t0 = F(0.f), t1 = F(0.f);
        {
          index_t r = 0;
          for (; r + 2 <= pkt; r += 2) {
            float* row = sp + r * NR;
            const F p0 = exp2_nonpositive<Arch>(F::load_aligned(row) - mu0);
            const F p1 = exp2_nonpositive<Arch>(F::load_aligned(row + W) - mu1);
            const F p2 = exp2_nonpositive<Arch>(F::load_aligned(row + NR) - mu0);
            const F p3 = exp2_nonpositive<Arch>(F::load_aligned(row + NR + W) - mu1);
            p0.store_aligned(row);
            p1.store_aligned(row + W);
            p2.store_aligned(row + NR);
            p3.store_aligned(row + NR + W);
            s0 += p0;
            s1 += p1;
            t0 += p2;
            t1 += p3;
          }
          if (r < pkt) {
            float* row = sp + r * NR;
            const F p0 = exp2_nonpositive<Arch>(F::load_aligned(row) - mu0);
            const F p1 = exp2_nonpositive<Arch>(F::load_aligned(row + W) - mu1);
            p0.store_aligned(row);
            p1.store_aligned(row + W);
            s0 += p0;
            s1 += p1;
          }
        }
        xsimd::fma(F::load_aligned(l + c0), al0, s0 + t0).store_aligned(l + c0);
        xsimd::fma(F::load_aligned(l + c0 + W), al1, s1 + t1).store_aligned(l + c0 + W);
        mx0.store_aligned(m + c0);
        mx1.store_aligned(m + c0 + W);
        al0.store_aligned(alpha);
        al1.store_aligned(alpha + W);
        // O^T = alpha * O^T + V_tile^T P^T.
        panel_product<true, true, Arch>(dv, pkt, pv_ptr, ldv, sp, op + pn * dv * NR, alpha);
      }
    }
  }

  // Normalise and scatter O^T back to [seq, dv] rows; rows that saw no key give 0 and lse = -inf.
  for (index_t c = 0; c < nq; ++c) {
    const float lc = l[c];
    const float inv = lc > 0.f ? 1.f / lc : 0.f;
    float* orow = pr.o + (q0 + c) * pr.o_row + h * pr.o_head;
    const float* src = op + (c / NR) * dv * NR + (c % NR);
    for (index_t e = 0; e < dv; ++e) orow[e] = src[e * NR] * inv;
    if (pr.lse != nullptr)
      pr.lse[h * pr.lse_head + (q0 + c) * pr.lse_row] = lc > 0.f ? (m[c] + std::log2(lc)) * ln2 : ninf;
  }
}

// Runs every (problem, query block, head) item of `problems` under p.policy.
template <class Arch, class TQ, class TK, class TV>
void flash_run(const flash_problem<TQ, TK, TV>* problems, index_t n_problems, const flash_shape& sh,
               const attention_params& p) {
  // Item order: problem, query block (last first: under causal masks they cost most,
  // so dynamic scheduling balances better), head (heads of a GQA group share K/V in cache).
  std::vector<index_t> first_item(static_cast<std::size_t>(n_problems) + 1, 0);
  for (index_t i = 0; i < n_problems; ++i) {
    const index_t nb = (problems[i].lq + block_q - 1) / block_q;
    first_item[i + 1] = first_item[i] + nb * sh.heads_q;
  }
  const index_t n_items = first_item[n_problems];
  parallel_for(p.policy, n_items, [&](index_t item, int) {
    const index_t pi = static_cast<index_t>(std::upper_bound(first_item.begin(), first_item.end(), item) -
                                            first_item.begin()) - 1;
    const flash_problem<TQ, TK, TV>& pr = problems[pi];
    const index_t local = item - first_item[pi];
    const index_t nb = (pr.lq + block_q - 1) / block_q;
    const index_t blk = nb - 1 - local / sh.heads_q;
    const index_t h = local % sh.heads_q;
    const attention_visibility vis(p, pr.lq, pr.lk);
    const index_t q0 = blk * block_q, q1 = std::min(pr.lq, q0 + block_q);
    flash_query_block<Arch>(pr, sh, p, vis, h, q0, q1);
  });
}

}  // namespace flash
}  // namespace detail
}  // namespace tokmix
TOKMIX_SIMD_AVX512_WARNINGS_ON
