#pragma once
// Small single-precision matrix products sized for attention tiles (64..512 per
// side, head_dim 64/128) and decode GEMVs. Eigen's general product reaches about
// 55% of the FMA peak on these shapes and OpenBLAS ~65-80%; the mixers need the
// latter without a BLAS dependency, so this header carries its own packed,
// register-blocked kernel. Single-threaded and re-entrant: callers parallelise
// over heads/blocks. Packing uses fixed-size stack panels (at most
// gemm_stack_bytes), never the scratch arena, so it nests under any caller frame.
//
// ref: K. Goto, R. van de Geijn, "Anatomy of High-Performance Matrix
//      Multiplication", ACM TOMS 34(3), 2008 (packed panels + register micro-tile);
//      F. Van Zee, R. van de Geijn, "BLIS: A Framework for Rapidly Instantiating
//      BLAS Functionality", ACM TOMS 41(3), 2015 (loop order around the micro-kernel).
//
// All matrices are row-major float32, leading dimensions in elements. beta == 0
// means C is not read (NaN in C is overwritten); alpha == 0 means A and B are not
// read. As in BLAS, results for beta != 0 round as beta*C + alpha*(A B).

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>

#include "tokmix/simd/arch.hpp"

#include "tokmix/core/error.hpp"
#include "tokmix/core/tensor_view.hpp"

namespace tokmix {
namespace simd {

// Upper bound of the stack a gemm_* call uses for its packed B block.
constexpr std::size_t gemm_stack_bytes = 64 * 1024;
// Largest B (k rows x ldb) a product reads in place instead of packing.
constexpr std::size_t gemm_in_place_b_bytes = 32 * 1024;

namespace detail {

// Which operand layout a kernel reads. nn: A[m,k], B[k,n]; nt: B is [n,k];
// tn: A is [k,m].
enum class gemm_op { nn, nt, tn };

template <class Arch>
struct gemm_config {
  using batch = xsimd::batch<float, Arch>;
  static constexpr index_t lanes = static_cast<index_t>(batch::size);
  // 4- and 8-lane targets (SSE2, AVX2) have 16 vector registers: 6 rows x 2
  // batches = 12 accumulators + 2 B loads + 1 broadcast, which covers FMA
  // latency x throughput (4 x 2 on Zen 3); 4 x 3 wastes a third of a tile at n
  // a multiple of 16, the common attention width. 16-lane (AVX-512) targets
  // have 32: 6 x 4 = 24 accumulators + 4 B loads + 1 broadcast; 8 x 3 and
  // 12 x 2 measured no faster on the attention shapes (8 x 3 only wins at 8 rows).
  static constexpr int mr = 6;
  static constexpr int nb = lanes >= 16 ? 4 : 2;
  static constexpr index_t nr = nb * lanes;
  // Depth of one packed block: keeps a B micro-panel in L1/L2 while A rows
  // stream; k = 512 (P V) runs two passes over C.
  static constexpr index_t kc = 256;
  static constexpr index_t pack_floats = static_cast<index_t>(gemm_stack_bytes / sizeof(float));
  static_assert(kc * nr <= pack_floats, "one packed micro-panel must fit the stack buffer");
};

// C tile update from accumulators: c = beta*c + alpha*acc (beta == 0: c not read).
template <class Arch, int MR, int NB>
inline void gemm_store_tile(xsimd::batch<float, Arch> (&acc)[MR][NB], float* c, index_t ldc, index_t ncols, float alpha,
                            float beta) {
  using batch = xsimd::batch<float, Arch>;
  constexpr index_t lanes = static_cast<index_t>(batch::size);
  const batch va(alpha);
  if (ncols == NB * lanes) {
    if (beta == 0.f) {
      for (int r = 0; r < MR; ++r)
        for (int q = 0; q < NB; ++q) (va * acc[r][q]).store_unaligned(c + r * ldc + q * lanes);
    } else if (beta == 1.f) {
      for (int r = 0; r < MR; ++r)
        for (int q = 0; q < NB; ++q) {
          float* p = c + r * ldc + q * lanes;
          xsimd::fma(va, acc[r][q], batch::load_unaligned(p)).store_unaligned(p);
        }
    } else {
      const batch vb(beta);
      for (int r = 0; r < MR; ++r)
        for (int q = 0; q < NB; ++q) {
          float* p = c + r * ldc + q * lanes;
          xsimd::fma(va, acc[r][q], vb * batch::load_unaligned(p)).store_unaligned(p);
        }
    }
    return;
  }
  // Partial tile: spill and write only the valid columns.
  alignas(64) float tmp[MR][NB * lanes];
  for (int r = 0; r < MR; ++r)
    for (int q = 0; q < NB; ++q) (va * acc[r][q]).store_aligned(&tmp[r][q * lanes]);
  for (int r = 0; r < MR; ++r) {
    float* cr = c + r * ldc;
    if (beta == 0.f) {
      for (index_t j = 0; j < ncols; ++j) cr[j] = tmp[r][j];
    } else {
      for (index_t j = 0; j < ncols; ++j) cr[j] = beta * cr[j] + tmp[r][j];
    }
  }
}

// MR x (NB*lanes) micro-kernel over kc steps. A element (r, p) sits at
// a[r*lda + p] (ATrans false) or a[p*lda + r] (ATrans true); B row p of the
// panel at b + p*ldb (a packed panel has ldb = nr, unpacked B its own ldb).
template <class Arch, int MR, int NB, bool ATrans>
inline void gemm_micro(index_t kc, const float* a, index_t lda, const float* b, index_t ldb, float* c, index_t ldc,
                       index_t ncols, float alpha, float beta) {
  using batch = xsimd::batch<float, Arch>;
  constexpr index_t lanes = static_cast<index_t>(batch::size);
  batch acc[MR][NB];
  for (int r = 0; r < MR; ++r)
    for (int q = 0; q < NB; ++q) acc[r][q] = batch(0.f);
  for (index_t p = 0; p < kc; ++p) {
    batch bv[NB];
    for (int q = 0; q < NB; ++q) bv[q] = batch::load_unaligned(b + q * lanes);
    for (int r = 0; r < MR; ++r) {
      const batch av(ATrans ? a[r] : a[r * lda]);
      for (int q = 0; q < NB; ++q) acc[r][q] = xsimd::fma(av, bv[q], acc[r][q]);
    }
    a += ATrans ? lda : 1;
    b += ldb;
  }
  gemm_store_tile<Arch, MR, NB>(acc, c, ldc, ncols, alpha, beta);
}

// Rows are handled MR at a time and a panel's width in whole batches; the last
// 1..MR-1 rows and narrow panels get their own exact instantiation, so no A row
// past m is touched and no accumulator is wasted on a zero-padded batch.
template <class Arch, int NB, bool ATrans, int MR = gemm_config<Arch>::mr>
inline void gemm_micro_rows(int rows, index_t kc, const float* a, index_t lda, const float* b, index_t ldb, float* c,
                            index_t ldc, index_t ncols, float alpha, float beta) {
  if (MR == 1 || rows >= MR) {
    gemm_micro<Arch, MR, NB, ATrans>(kc, a, lda, b, ldb, c, ldc, ncols, alpha, beta);
  } else {
    gemm_micro_rows<Arch, NB, ATrans, (MR > 1 ? MR - 1 : 1)>(rows, kc, a, lda, b, ldb, c, ldc, ncols, alpha, beta);
  }
}

template <class Arch, bool ATrans, int NB = gemm_config<Arch>::nb>
inline void gemm_micro_any(int rows, index_t kc, const float* a, index_t lda, const float* b, index_t ldb, float* c,
                           index_t ldc, index_t ncols, float alpha, float beta) {
  constexpr index_t lanes = gemm_config<Arch>::lanes;
  if (NB == 1 || ncols > (NB - 1) * lanes) {
    gemm_micro_rows<Arch, NB, ATrans>(rows, kc, a, lda, b, ldb, c, ldc, ncols, alpha, beta);
  } else {
    gemm_micro_any<Arch, ATrans, (NB > 1 ? NB - 1 : 1)>(rows, kc, a, lda, b, ldb, c, ldc, ncols, alpha, beta);
  }
}

// 128-bit batch type for 4x4 transposes in the nt packing. Whole-register
// transposes on wider targets need cross-lane shuffles xsimd 8 does not expose,
// and staging wide registers through memory stalls store forwarding on AVX-512.
#if XSIMD_WITH_SSE2
using gemm_quad_arch = xsimd::sse2;
#elif XSIMD_WITH_NEON64
using gemm_quad_arch = xsimd::neon64;
#else
using gemm_quad_arch = void;
#endif

// Transposes a 4-row strip of B ([n, k] layout: rows s, s+ldb, ...) into
// packed-panel columns 0..3 of dst for kc steps.
inline void gemm_pack_bt_strip4(const float* s, index_t ldb, index_t kc, float* dst, index_t nr) {
  const float* s0 = s;
  const float* s1 = s0 + ldb;
  const float* s2 = s1 + ldb;
  const float* s3 = s2 + ldb;
  index_t p = 0;
#if XSIMD_WITH_SSE2 || XSIMD_WITH_NEON64
  using quad = xsimd::batch<float, gemm_quad_arch>;
  using dquad = xsimd::batch<double, gemm_quad_arch>;
  for (; p + 4 <= kc; p += 4) {
    const quad r0 = quad::load_unaligned(s0 + p), r1 = quad::load_unaligned(s1 + p);
    const quad r2 = quad::load_unaligned(s2 + p), r3 = quad::load_unaligned(s3 + p);
    // Interleave 32-bit then 64-bit: output t holds B[rows 0..3, p + t].
    const auto t01l = xsimd::bitwise_cast<dquad>(xsimd::zip_lo(r0, r1));
    const auto t01h = xsimd::bitwise_cast<dquad>(xsimd::zip_hi(r0, r1));
    const auto t23l = xsimd::bitwise_cast<dquad>(xsimd::zip_lo(r2, r3));
    const auto t23h = xsimd::bitwise_cast<dquad>(xsimd::zip_hi(r2, r3));
    float* d = dst + p * nr;
    xsimd::bitwise_cast<quad>(xsimd::zip_lo(t01l, t23l)).store_unaligned(d);
    xsimd::bitwise_cast<quad>(xsimd::zip_hi(t01l, t23l)).store_unaligned(d + nr);
    xsimd::bitwise_cast<quad>(xsimd::zip_lo(t01h, t23h)).store_unaligned(d + 2 * nr);
    xsimd::bitwise_cast<quad>(xsimd::zip_hi(t01h, t23h)).store_unaligned(d + 3 * nr);
  }
#endif
  for (; p < kc; ++p) {
    float* d = dst + p * nr;
    d[0] = s0[p];
    d[1] = s1[p];
    d[2] = s2[p];
    d[3] = s3[p];
  }
}

// Packs B rows [p0, p0+kc) x cols [j0, j0+nc) of the logical [k, n] operand
// into panels of nr columns, panel-major then row-major within a panel;
// columns past nc are zero so the kernel can always run whole batches. Reads
// only inside the given matrix.
template <class Arch, bool BTrans>
inline void gemm_pack_b(const float* b, index_t ldb, index_t p0, index_t kc, index_t j0, index_t nc, float* out) {
  using cfg = gemm_config<Arch>;
  using batch = typename cfg::batch;
  constexpr index_t nr = cfg::nr, lanes = cfg::lanes;
  for (index_t jp = 0; jp < nc; jp += nr) {
    const index_t w = std::min(nr, nc - jp);
    // Zero-padded up to whole batches: the narrow-panel kernels read no further.
    const index_t wpad = (w + lanes - 1) / lanes * lanes;
    float* dst = out + jp * kc;
    if (!BTrans) {
      // B is [k, n]: each packed row is a contiguous slice of a B row.
      const float* src = b + p0 * ldb + j0 + jp;
      if (w == nr) {
        for (index_t p = 0; p < kc; ++p, src += ldb, dst += nr)
          for (index_t q = 0; q < nr; q += lanes) batch::load_unaligned(src + q).store_aligned(dst + q);
      } else {
        for (index_t p = 0; p < kc; ++p, src += ldb, dst += nr) {
          index_t q = 0;
          for (; q < w; ++q) dst[q] = src[q];
          for (; q < wpad; ++q) dst[q] = 0.f;
        }
      }
    } else {
      // B is [n, k]: packing transposes, 4 B rows at a time.
      const float* src = b + (j0 + jp) * ldb + p0;
      index_t q = 0;
      for (; q + 4 <= w; q += 4) gemm_pack_bt_strip4(src + q * ldb, ldb, kc, dst + q, nr);
      for (; q < w; ++q) {
        const float* s = src + q * ldb;
        float* d = dst + q;
        for (index_t p = 0; p < kc; ++p, d += nr) *d = s[p];
      }
      if (w < wpad) {
        for (index_t p = 0; p < kc; ++p)
          for (index_t z = w; z < wpad; ++z) dst[p * nr + z] = 0.f;
      }
    }
  }
}

// C = beta*C + alpha*A*B^T for few rows of A (decode, GQA groups): every B
// element is used by at most MI rows, so transposing B into panels would cost
// more than the product. Dot products along k instead, NJ rows of B at a time.
template <class Arch, int MI, int NJ>
inline void gemm_nt_dot_tile(index_t k, const float* a, index_t lda, const float* b, index_t ldb, float* c,
                             index_t ldc, float alpha, float beta) {
  using batch = xsimd::batch<float, Arch>;
  constexpr index_t lanes = static_cast<index_t>(batch::size);
  batch acc[MI][NJ];
  for (int i = 0; i < MI; ++i)
    for (int j = 0; j < NJ; ++j) acc[i][j] = batch(0.f);
  index_t p = 0;
  for (; p + lanes <= k; p += lanes) {
    batch bv[NJ];
    for (int j = 0; j < NJ; ++j) bv[j] = batch::load_unaligned(b + j * ldb + p);
    for (int i = 0; i < MI; ++i) {
      const batch av = batch::load_unaligned(a + i * lda + p);
      for (int j = 0; j < NJ; ++j) acc[i][j] = xsimd::fma(av, bv[j], acc[i][j]);
    }
  }
  for (int i = 0; i < MI; ++i)
    for (int j = 0; j < NJ; ++j) {
      float sum = xsimd::hadd(acc[i][j]);
      for (index_t t = p; t < k; ++t) sum += a[i * lda + t] * b[j * ldb + t];
      float& out = c[i * ldc + j];
      out = beta == 0.f ? alpha * sum : beta * out + alpha * sum;
    }
}

// Rows of A up to which gemm_nt takes the dot-product path.
constexpr index_t gemm_nt_dot_rows_max = 8;

// Rows of A in groups of at most 4, about 8 accumulators per tile: enough
// independent FMA chains with registers left for the B rows on 16-register
// targets. With more than 2 rows the groups share each 2-row slice of B while
// it sits in L1, so B streams from memory once. Measured against Eigen's
// product at 1 x 4096 x 128 this is only on par (both bound by reading B);
// from 4 rows on it is 1.2-1.5x faster, and 2-4x OpenBLAS 0.3.21 throughout.
template <class Arch>
inline void gemm_nt_dot(index_t m, index_t n, index_t k, const float* a, index_t lda, const float* b, index_t ldb,
                        float* c, index_t ldc, float alpha, float beta) {
  index_t j = 0;
  if (m == 1) {
    for (; j + 8 <= n; j += 8) gemm_nt_dot_tile<Arch, 1, 8>(k, a, lda, b + j * ldb, ldb, c + j, ldc, alpha, beta);
  } else if (m == 2) {
    for (; j + 4 <= n; j += 4) gemm_nt_dot_tile<Arch, 2, 4>(k, a, lda, b + j * ldb, ldb, c + j, ldc, alpha, beta);
  } else {
    for (; j + 2 <= n; j += 2) {
      for (index_t i = 0; i < m; i += 4) {
        const float* ai = a + i * lda;
        float* cij = c + i * ldc + j;
        const float* bj = b + j * ldb;
        switch (std::min<index_t>(4, m - i)) {
          case 1: gemm_nt_dot_tile<Arch, 1, 2>(k, ai, lda, bj, ldb, cij, ldc, alpha, beta); break;
          case 2: gemm_nt_dot_tile<Arch, 2, 2>(k, ai, lda, bj, ldb, cij, ldc, alpha, beta); break;
          case 3: gemm_nt_dot_tile<Arch, 3, 2>(k, ai, lda, bj, ldb, cij, ldc, alpha, beta); break;
          default: gemm_nt_dot_tile<Arch, 4, 2>(k, ai, lda, bj, ldb, cij, ldc, alpha, beta); break;
        }
      }
    }
  }
  for (; j < n; ++j) {
    for (index_t i = 0; i < m; i += 4) {
      const float* ai = a + i * lda;
      float* cij = c + i * ldc + j;
      const float* bj = b + j * ldb;
      switch (std::min<index_t>(4, m - i)) {
        case 1: gemm_nt_dot_tile<Arch, 1, 1>(k, ai, lda, bj, ldb, cij, ldc, alpha, beta); break;
        case 2: gemm_nt_dot_tile<Arch, 2, 1>(k, ai, lda, bj, ldb, cij, ldc, alpha, beta); break;
        case 3: gemm_nt_dot_tile<Arch, 3, 1>(k, ai, lda, bj, ldb, cij, ldc, alpha, beta); break;
        default: gemm_nt_dot_tile<Arch, 4, 1>(k, ai, lda, bj, ldb, cij, ldc, alpha, beta); break;
      }
    }
  }
}

// k == 0 or alpha == 0: C = beta*C, with beta == 0 writing zeros without reading.
inline void gemm_scale_c(index_t m, index_t n, float beta, float* c, index_t ldc) {
  for (index_t i = 0; i < m; ++i) {
    float* ci = c + i * ldc;
    if (beta == 0.f) std::fill(ci, ci + n, 0.f);
    else if (beta != 1.f)
      for (index_t j = 0; j < n; ++j) ci[j] *= beta;
  }
}

// One row of A times B[k, n] (decode P V): B is read once, so the order of
// that read is what counts. Streaming four whole B rows at a time while the C
// row accumulates in L1 keeps every B access sequential; register tiles would
// walk B in narrow column strips instead. Eigen's GEMV is as fast here (within
// ~5% at 1 x 128 x 4096); it is kept so gemm has no Eigen-product dependency
// and one code path for every arch.
template <class Arch, bool ATrans>
inline void gemm_row_stream(index_t n, index_t k, float alpha, const float* a, index_t lda, const float* b,
                            index_t ldb, float beta, float* c) {
  using batch = xsimd::batch<float, Arch>;
  constexpr index_t lanes = static_cast<index_t>(batch::size);
  const index_t nv = n / lanes * lanes;
  const index_t stride_a = ATrans ? lda : 1;
  gemm_scale_c(1, n, beta, c, n);
  index_t p = 0;
  for (; p + 4 <= k; p += 4) {
    const float* b0 = b + p * ldb;
    const float* b1 = b0 + ldb;
    const float* b2 = b1 + ldb;
    const float* b3 = b2 + ldb;
    const float s0 = alpha * a[p * stride_a], s1 = alpha * a[(p + 1) * stride_a];
    const float s2 = alpha * a[(p + 2) * stride_a], s3 = alpha * a[(p + 3) * stride_a];
    const batch v0(s0), v1(s1), v2(s2), v3(s3);
    index_t j = 0;
    for (; j < nv; j += lanes) {
      batch acc = batch::load_unaligned(c + j);
      acc = xsimd::fma(v0, batch::load_unaligned(b0 + j), acc);
      acc = xsimd::fma(v1, batch::load_unaligned(b1 + j), acc);
      acc = xsimd::fma(v2, batch::load_unaligned(b2 + j), acc);
      acc = xsimd::fma(v3, batch::load_unaligned(b3 + j), acc);
      acc.store_unaligned(c + j);
    }
    for (; j < n; ++j) c[j] += s0 * b0[j] + s1 * b1[j] + s2 * b2[j] + s3 * b3[j];
  }
  for (; p < k; ++p) {
    const float* bp = b + p * ldb;
    const float s = alpha * a[p * stride_a];
    const batch v(s);
    index_t j = 0;
    for (; j < nv; j += lanes) xsimd::fma(v, batch::load_unaligned(bp + j), batch::load_unaligned(c + j)).store_unaligned(c + j);
    for (; j < n; ++j) c[j] += s * bp[j];
  }
}

// C = beta*C + alpha*A*B for the nn and tn layouts and, after packing, nt.
template <class Arch, gemm_op Op>
void gemm_kernel(Arch, index_t m, index_t n, index_t k, float alpha, const float* a, index_t lda, const float* b,
                 index_t ldb, float beta, float* c, index_t ldc) {
  using cfg = gemm_config<Arch>;
  constexpr index_t mr = cfg::mr, nr = cfg::nr;
  constexpr bool a_trans = Op == gemm_op::tn;
  constexpr bool b_trans = Op == gemm_op::nt;

  if (b_trans && m <= gemm_nt_dot_rows_max) {
    gemm_nt_dot<Arch>(m, n, k, a, lda, b, ldb, c, ldc, alpha, beta);
    return;
  }
  if (!b_trans && m == 1) {
    gemm_row_stream<Arch, a_trans>(n, k, alpha, a, lda, b, ldb, beta, c);
    return;
  }

  const index_t kc_max = std::min<index_t>(cfg::kc, k);
  // Widest n block whose packed B fits the stack buffer (multiple of nr).
  const index_t nc_max = std::max<index_t>(nr, (cfg::pack_floats / kc_max) / nr * nr);
  alignas(64) float pack[cfg::pack_floats];

  // One row panel and a unit-stride B: each B element is used by at most mr
  // rows, so packing costs more than it saves; whole panels read B in place.
  const bool direct_b = !b_trans && m <= mr;
  // A small, aligned, unit-stride B in whole panels (a state, a scratch tile)
  // already sits in L1 the way the kernel reads it: packing would only copy
  // it. Measured: SSD's C h^T and state update (32 KiB and 8 KiB B) ~5% faster
  // in place; a 64 KiB B or rows split across cache lines run 7-15% slower in
  // place (L1 set conflicts, split loads), so those keep packing, as does
  // strided B (rows of one head among many), which packing gathers into one stream.
  const bool in_place_b = !b_trans && n % nr == 0 && ldb % cfg::lanes == 0 &&
                          reinterpret_cast<std::uintptr_t>(b) % sizeof(typename cfg::batch) == 0 &&
                          static_cast<std::size_t>(ldb) * static_cast<std::size_t>(kc_max) * sizeof(float) <=
                              gemm_in_place_b_bytes;

  for (index_t p0 = 0; p0 < k; p0 += kc_max) {
    const index_t kc = std::min(kc_max, k - p0);
    const float beta_blk = p0 == 0 ? beta : 1.f;
    const float* a_blk = a_trans ? a + p0 * lda : a + p0;
    for (index_t j0 = 0; j0 < n; j0 += nc_max) {
      const index_t nc = std::min(nc_max, n - j0);
      if (direct_b) {
        index_t jp = 0;
        if (m <= 2) {
          // One or two rows give only nb or 2*nb FMA chains per panel: too few
          // to hide FMA latency, so take two panels at once while they last.
          for (; jp + 2 * nr <= nc; jp += 2 * nr)
            gemm_micro_rows<Arch, 2 * cfg::nb, a_trans>(static_cast<int>(m), kc, a_blk, lda, b + p0 * ldb + j0 + jp,
                                                        ldb, c + j0 + jp, ldc, 2 * nr, alpha, beta_blk);
        }
        for (; jp < nc; jp += nr) {
          const index_t w = std::min(nr, nc - jp);
          float* cj = c + j0 + jp;
          if (w == nr) {
            gemm_micro_any<Arch, a_trans>(static_cast<int>(m), kc, a_blk, lda, b + p0 * ldb + j0 + jp, ldb, cj, ldc,
                                          w, alpha, beta_blk);
          } else {
            gemm_pack_b<Arch, false>(b, ldb, p0, kc, j0 + jp, w, pack);
            gemm_micro_any<Arch, a_trans>(static_cast<int>(m), kc, a_blk, lda, pack, nr, cj, ldc, w, alpha,
                                          beta_blk);
          }
        }
        continue;
      }
      if (!in_place_b) gemm_pack_b<Arch, b_trans>(b, ldb, p0, kc, j0, nc, pack);
      for (index_t i0 = 0; i0 < m; i0 += mr) {
        const int rows = static_cast<int>(std::min(mr, m - i0));
        const float* ai = a_trans ? a_blk + i0 : a_blk + i0 * lda;
        float* ci = c + i0 * ldc + j0;
        for (index_t jp = 0; jp < nc; jp += nr) {
          const index_t w = std::min(nr, nc - jp);
          if (in_place_b)
            gemm_micro_any<Arch, a_trans>(rows, kc, ai, lda, b + p0 * ldb + j0 + jp, ldb, ci + jp, ldc, w, alpha,
                                          beta_blk);
          else
            gemm_micro_any<Arch, a_trans>(rows, kc, ai, lda, pack + jp * kc, nr, ci + jp, ldc, w, alpha, beta_blk);
        }
      }
    }
  }
}

inline void gemm_validate(const char* fn, index_t m, index_t n, index_t k, const float* a, index_t lda,
                          index_t a_cols, const float* b, index_t ldb, index_t b_cols, const float* c, index_t ldc) {
  const bool product = m > 0 && n > 0 && k > 0;
  // The checks first, the messages only on failure: the strings cost more
  // than a small product (a decode step makes many).
  if (m >= 0 && n >= 0 && k >= 0 && lda >= std::max<index_t>(1, a_cols) && ldb >= std::max<index_t>(1, b_cols) &&
      ldc >= std::max<index_t>(1, n) && !(product && (a == nullptr || b == nullptr)) &&
      !(m > 0 && n > 0 && c == nullptr))
    return;
  const std::string f(fn);
  require(m >= 0, (f + ": m").c_str(), "m >= 0", m);
  require(n >= 0, (f + ": n").c_str(), "n >= 0", n);
  require(k >= 0, (f + ": k").c_str(), "k >= 0", k);
  require(lda >= std::max<index_t>(1, a_cols), (f + ": lda").c_str(),
          "lda >= " + std::to_string(std::max<index_t>(1, a_cols)), lda);
  require(ldb >= std::max<index_t>(1, b_cols), (f + ": ldb").c_str(),
          "ldb >= " + std::to_string(std::max<index_t>(1, b_cols)), ldb);
  require(ldc >= std::max<index_t>(1, n), (f + ": ldc").c_str(), "ldc >= " + std::to_string(std::max<index_t>(1, n)),
          ldc);
  require(!(product && a == nullptr), (f + ": a").c_str(), "a non-null pointer", "nullptr");
  require(!(product && b == nullptr), (f + ": b").c_str(), "a non-null pointer", "nullptr");
  require(!(m > 0 && n > 0 && c == nullptr), (f + ": c").c_str(), "a non-null pointer", "nullptr");
}

// Arch is a parameter so tests can run every instruction set the build enables.
template <gemm_op Op, class Arch = xsimd::default_arch>
inline void gemm_dispatch(index_t m, index_t n, index_t k, float alpha, const float* a, index_t lda, const float* b,
                          index_t ldb, float beta, float* c, index_t ldc) {
  if (m == 0 || n == 0) return;
  if (k == 0 || alpha == 0.f) {
    gemm_scale_c(m, n, beta, c, ldc);
    return;
  }
  gemm_kernel<Arch, Op>(Arch{}, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

}  // namespace detail

// C[m,n] = beta*C + alpha * A[m,k] * B[k,n]
inline void gemm_nn(index_t m, index_t n, index_t k, float alpha, const float* a, index_t lda, const float* b,
                    index_t ldb, float beta, float* c, index_t ldc) {
  detail::gemm_validate("gemm_nn", m, n, k, a, lda, k, b, ldb, n, c, ldc);
  detail::gemm_dispatch<detail::gemm_op::nn>(m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

// C[m,n] = beta*C + alpha * A[m,k] * B[n,k]^T   (Q K^T with K stored row by row)
inline void gemm_nt(index_t m, index_t n, index_t k, float alpha, const float* a, index_t lda, const float* b,
                    index_t ldb, float beta, float* c, index_t ldc) {
  detail::gemm_validate("gemm_nt", m, n, k, a, lda, k, b, ldb, k, c, ldc);
  detail::gemm_dispatch<detail::gemm_op::nt>(m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

// C[m,n] = beta*C + alpha * A[k,m]^T * B[k,n]   (K^T V for linear-attention state updates)
inline void gemm_tn(index_t m, index_t n, index_t k, float alpha, const float* a, index_t lda, const float* b,
                    index_t ldb, float beta, float* c, index_t ldc) {
  detail::gemm_validate("gemm_tn", m, n, k, a, lda, m, b, ldb, n, c, ldc);
  detail::gemm_dispatch<detail::gemm_op::tn>(m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

}  // namespace simd
}  // namespace tokmix
