#pragma once
// Register-blocked inner loops of attention_decode. Decode multiplies a handful
// of query rows (the heads of one GQA group times the new tokens) with a long
// stream of K and V rows, so the shape is "few rows x many keys": the kernels
// keep a block of query rows in flight while each K/V row passes through the
// registers once, instead of re-reading K/V per query head.

#include <xsimd/xsimd.hpp>

#include "tokmix/core/tensor_view.hpp"

namespace tokmix {
namespace detail {

// s[r * lds + j] = sum_d q[r * ldq + d] * k[j * ldk + d], MR rows x 2 keys per
// step so every loaded K vector feeds MR FMAs and 2*MR accumulators stay in
// registers; haddp folds the accumulators' lanes in one shot.
template <class Arch, int MR, int NK>
inline void decode_scores_block(const float* q, index_t ldq, const float* k, index_t ldk, index_t d, float* s,
                                index_t lds) {
  using b = xsimd::batch<float, Arch>;
  constexpr index_t w = static_cast<index_t>(b::size);
  b acc[MR][NK];
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < NK; ++j) acc[r][j] = b(0.f);
  index_t e = 0;
  for (; e + w <= d; e += w) {
    b kv[NK];
    for (int j = 0; j < NK; ++j) kv[j] = b::load_unaligned(k + j * ldk + e);
    for (int r = 0; r < MR; ++r) {
      const b qv = b::load_unaligned(q + r * ldq + e);
      for (int j = 0; j < NK; ++j) acc[r][j] = xsimd::fma(qv, kv[j], acc[r][j]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < NK; ++j) {
      float t = xsimd::hadd(acc[r][j]);
      for (index_t f = e; f < d; ++f) t += q[r * ldq + f] * k[j * ldk + f];
      s[r * lds + j] = t;
    }
}

// All rows x n keys; rows in blocks of 4 (tail 1..3), keys in pairs (tail 1).
template <class Arch>
inline void decode_scores(Arch, const float* q, index_t ldq, index_t rows, const float* k, index_t ldk, index_t n,
                          index_t d, float* s, index_t lds) {
  index_t r = 0;
  auto run_rows = [&](auto mr_tag) {
    constexpr int MR = decltype(mr_tag)::value;
    index_t j = 0;
    for (; j + 2 <= n; j += 2)
      decode_scores_block<Arch, MR, 2>(q + r * ldq, ldq, k + j * ldk, ldk, d, s + r * lds + j, lds);
    if (j < n) decode_scores_block<Arch, MR, 1>(q + r * ldq, ldq, k + j * ldk, ldk, d, s + r * lds + j, lds);
  };
  for (; r + 4 <= rows; r += 4) run_rows(std::integral_constant<int, 4>{});
  switch (rows - r) {
    case 3: run_rows(std::integral_constant<int, 3>{}); break;
    case 2: run_rows(std::integral_constant<int, 2>{}); break;
    case 1: run_rows(std::integral_constant<int, 1>{}); break;
    default: break;
  }
}

// o[r * ldo + c] += sum_j p[r * ldp + j] * v[j * ldv + c] for c in [c0, c0 + NB*lanes):
// MR x NB accumulators live across the whole key loop.
template <class Arch, int MR, int NB>
inline void decode_pv_block(const float* p, index_t ldp, const float* v, index_t ldv, index_t n, float* o,
                            index_t ldo) {
  using b = xsimd::batch<float, Arch>;
  constexpr index_t w = static_cast<index_t>(b::size);
  b acc[MR][NB];
  for (int r = 0; r < MR; ++r)
    for (int c = 0; c < NB; ++c) acc[r][c] = b::load_unaligned(o + r * ldo + c * w);
  for (index_t j = 0; j < n; ++j) {
    b vv[NB];
    for (int c = 0; c < NB; ++c) vv[c] = b::load_unaligned(v + j * ldv + c * w);
    for (int r = 0; r < MR; ++r) {
      const b pr(p[r * ldp + j]);
      for (int c = 0; c < NB; ++c) acc[r][c] = xsimd::fma(pr, vv[c], acc[r][c]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int c = 0; c < NB; ++c) acc[r][c].store_unaligned(o + r * ldo + c * w);
}

template <class Arch, int MR>
inline void decode_pv_rows(const float* p, index_t ldp, const float* v, index_t ldv, index_t n, index_t dv, float* o,
                           index_t ldo) {
  constexpr index_t w = static_cast<index_t>(xsimd::batch<float, Arch>::size);
  index_t c = 0;
  for (; c + 2 * w <= dv; c += 2 * w) decode_pv_block<Arch, MR, 2>(p, ldp, v + c, ldv, n, o + c, ldo);
  for (; c + w <= dv; c += w) decode_pv_block<Arch, MR, 1>(p, ldp, v + c, ldv, n, o + c, ldo);
  for (; c < dv; ++c)
    for (int r = 0; r < MR; ++r) {
      float t = o[r * ldo + c];
      for (index_t j = 0; j < n; ++j) t += p[r * ldp + j] * v[j * ldv + c];
      o[r * ldo + c] = t;
    }
}

// o[rows, dv] += p[rows, n] v[n, dv]
template <class Arch>
inline void decode_pv(Arch, const float* p, index_t ldp, index_t rows, const float* v, index_t ldv, index_t n,
                      index_t dv, float* o, index_t ldo) {
  index_t r = 0;
  for (; r + 4 <= rows; r += 4) decode_pv_rows<Arch, 4>(p + r * ldp, ldp, v, ldv, n, dv, o + r * ldo, ldo);
  switch (rows - r) {
    case 3: decode_pv_rows<Arch, 3>(p + r * ldp, ldp, v, ldv, n, dv, o + r * ldo, ldo); break;
    case 2: decode_pv_rows<Arch, 2>(p + r * ldp, ldp, v, ldv, n, dv, o + r * ldo, ldo); break;
    case 1: decode_pv_rows<Arch, 1>(p + r * ldp, ldp, v, ldv, n, dv, o + r * ldo, ldo); break;
    default: break;
  }
}

}  // namespace detail
}  // namespace tokmix
