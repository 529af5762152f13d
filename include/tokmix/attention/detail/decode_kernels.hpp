#pragma once
// Register-blocked inner loops of attention_decode. Decode multiplies a handful
// of query rows (the heads of one GQA group times the new tokens) with a long
// stream of K and V rows, so the shape is "few rows x many keys": the kernels
// keep a block of query rows in flight while each K/V row passes through the
// registers once, instead of re-reading K/V per query head.

#include <cstddef>

#include "tokmix/simd/arch.hpp"

#include "tokmix/core/element.hpp"
#include "tokmix/core/tensor_view.hpp"
#include "tokmix/simd/convert.hpp"

TOKMIX_SIMD_AVX512_WARNINGS_OFF
namespace tokmix {
namespace detail {

// Which lane of xsimd::haddp's result holds the sum of row i. Not the
// identity everywhere: xsimd 8.1's AVX-512 haddp returns the sums in a
// permuted lane order, so the order is probed once instead of assumed.
template <class Arch>
inline const int* haddp_lane_of() {
  using b = xsimd::batch<float, Arch>;
  struct table {
    int lane[b::size];
    table() {
      b rows[b::size];
      for (std::size_t i = 0; i < b::size; ++i) rows[i] = b(static_cast<float>(i));
      alignas(64) float out[b::size];
      xsimd::haddp(rows).store_unaligned(out);
      for (std::size_t l = 0; l < b::size; ++l) lane[static_cast<std::size_t>(out[l]) / b::size] = static_cast<int>(l);
    }
  };
  static const table t;
  return t.lane;
}

// One batch of K/V elements widened to fp32 in registers: 16-bit caches are
// never expanded into a buffer, so they cost half the memory traffic and no
// extra stores.
template <class Arch>
inline xsimd::batch<float, Arch> decode_load(const float* p) {
  return xsimd::batch<float, Arch>::load_unaligned(p);
}
template <class Arch>
inline xsimd::batch<float, Arch> decode_load(const Eigen::half* p) {
  return simd::detail::load_half_as_float<Arch>(p);
}
template <class Arch>
inline xsimd::batch<float, Arch> decode_load(const Eigen::bfloat16* p) {
  return simd::detail::load_bf16_as_float<Arch>(p);
}

// s[r * lds + j] = sum_d q[r * ldq + d] * k[j * ldk + d] for MR rows x NK
// keys: every loaded K vector feeds MR FMAs, and the MR*NK <= lanes
// accumulators are folded by one haddp (a transpose-and-add tree) instead of
// one horizontal sum each, which would cost as much as the FMAs.
template <class Arch, int MR, int NK, class T>
inline void decode_scores_block(const float* q, index_t ldq, const T* k, index_t ldk, index_t d, float* s,
                                index_t lds) {
  using b = xsimd::batch<float, Arch>;
  constexpr index_t w = static_cast<index_t>(b::size);
  static_assert(MR * NK <= static_cast<int>(b::size), "one haddp folds at most lanes accumulators");
  b acc[b::size];
  for (std::size_t a = 0; a < b::size; ++a) acc[a] = b(0.f);
  index_t e = 0;
  for (; e + w <= d; e += w) {
    b kv[NK];
    for (int j = 0; j < NK; ++j) kv[j] = decode_load<Arch>(k + j * ldk + e);
    for (int r = 0; r < MR; ++r) {
      const b qv = b::load_unaligned(q + r * ldq + e);
      for (int j = 0; j < NK; ++j) acc[r * NK + j] = xsimd::fma(qv, kv[j], acc[r * NK + j]);
    }
  }
  alignas(64) float sums[b::size];
  xsimd::haddp(acc).store_unaligned(sums);
  const int* lane = haddp_lane_of<Arch>();
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < NK; ++j) {
      float t = sums[lane[r * NK + j]];
      for (index_t f = e; f < d; ++f) t += q[r * ldq + f] * to_float(k[j * ldk + f]);
      s[r * lds + j] = t;
    }
}

// All rows x n keys; rows in blocks of up to 4, as many keys per block as
// leave the accumulators within one haddp, single keys for the tail.
template <class Arch, int MR, class T>
inline void decode_scores_rows(const float* q, index_t ldq, const T* k, index_t ldk, index_t n, index_t d,
                               float* s, index_t lds) {
  constexpr int NK = static_cast<int>(xsimd::batch<float, Arch>::size) / MR;
  index_t j = 0;
  for (; j + NK <= n; j += NK) decode_scores_block<Arch, MR, NK, T>(q, ldq, k + j * ldk, ldk, d, s + j, lds);
  for (; j < n; ++j) decode_scores_block<Arch, MR, 1, T>(q, ldq, k + j * ldk, ldk, d, s + j, lds);
}

template <class Arch, class T>
inline void decode_scores(Arch, const float* q, index_t ldq, index_t rows, const T* k, index_t ldk, index_t n,
                          index_t d, float* s, index_t lds) {
  index_t r = 0;
  for (; r + 4 <= rows; r += 4) decode_scores_rows<Arch, 4, T>(q + r * ldq, ldq, k, ldk, n, d, s + r * lds, lds);
  switch (rows - r) {
    case 3: decode_scores_rows<Arch, 3, T>(q + r * ldq, ldq, k, ldk, n, d, s + r * lds, lds); break;
    case 2: decode_scores_rows<Arch, 2, T>(q + r * ldq, ldq, k, ldk, n, d, s + r * lds, lds); break;
    case 1: decode_scores_rows<Arch, 1, T>(q + r * ldq, ldq, k, ldk, n, d, s + r * lds, lds); break;
    default: break;
  }
}

// o[r * ldo + c] += sum_j p[r * ldp + j] * v[j * ldv + c] for c in [c0, c0 + NB*lanes):
// MR x NB accumulators live across the whole key loop.
template <class Arch, int MR, int NB, class T>
inline void decode_pv_block(const float* p, index_t ldp, const T* v, index_t ldv, index_t n, float* o,
                            index_t ldo) {
  using b = xsimd::batch<float, Arch>;
  constexpr index_t w = static_cast<index_t>(b::size);
  b acc[MR][NB];
  for (int r = 0; r < MR; ++r)
    for (int c = 0; c < NB; ++c) acc[r][c] = b::load_unaligned(o + r * ldo + c * w);
  for (index_t j = 0; j < n; ++j) {
    b vv[NB];
    for (int c = 0; c < NB; ++c) vv[c] = decode_load<Arch>(v + j * ldv + c * w);
    for (int r = 0; r < MR; ++r) {
      const b pr(p[r * ldp + j]);
      for (int c = 0; c < NB; ++c) acc[r][c] = xsimd::fma(pr, vv[c], acc[r][c]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int c = 0; c < NB; ++c) acc[r][c].store_unaligned(o + r * ldo + c * w);
}

template <class Arch, int MR, class T>
inline void decode_pv_rows(const float* p, index_t ldp, const T* v, index_t ldv, index_t n, index_t dv, float* o,
                           index_t ldo) {
  constexpr index_t w = static_cast<index_t>(xsimd::batch<float, Arch>::size);
  // 4 x 4 accumulators fit AVX-512's 32 registers; 4 x 2 fit AVX2's 16.
  constexpr int NB = w >= 16 ? 4 : 2;
  index_t c = 0;
  for (; c + NB * w <= dv; c += NB * w) decode_pv_block<Arch, MR, NB, T>(p, ldp, v + c, ldv, n, o + c, ldo);
  for (; c + 2 * w <= dv; c += 2 * w) decode_pv_block<Arch, MR, 2, T>(p, ldp, v + c, ldv, n, o + c, ldo);
  for (; c + w <= dv; c += w) decode_pv_block<Arch, MR, 1, T>(p, ldp, v + c, ldv, n, o + c, ldo);
  for (; c < dv; ++c)
    for (int r = 0; r < MR; ++r) {
      float t = o[r * ldo + c];
      for (index_t j = 0; j < n; ++j) t += p[r * ldp + j] * to_float(v[j * ldv + c]);
      o[r * ldo + c] = t;
    }
}

// o[rows, dv] += p[rows, n] v[n, dv]
template <class Arch, class T>
inline void decode_pv(Arch, const float* p, index_t ldp, index_t rows, const T* v, index_t ldv, index_t n,
                      index_t dv, float* o, index_t ldo) {
  index_t r = 0;
  for (; r + 4 <= rows; r += 4) decode_pv_rows<Arch, 4, T>(p + r * ldp, ldp, v, ldv, n, dv, o + r * ldo, ldo);
  switch (rows - r) {
    case 3: decode_pv_rows<Arch, 3, T>(p + r * ldp, ldp, v, ldv, n, dv, o + r * ldo, ldo); break;
    case 2: decode_pv_rows<Arch, 2, T>(p + r * ldp, ldp, v, ldv, n, dv, o + r * ldo, ldo); break;
    case 1: decode_pv_rows<Arch, 1, T>(p + r * ldp, ldp, v, ldv, n, dv, o + r * ldo, ldo); break;
    default: break;
  }
}

}  // namespace detail
}  // namespace tokmix
TOKMIX_SIMD_AVX512_WARNINGS_ON
