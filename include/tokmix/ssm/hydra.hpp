#pragma once
// Hydra: the bidirectional (non-causal) quasiseparable mixer built from two SSD
// scans. A causal SSD mixer is a lower-triangular semiseparable matrix; Hydra
// adds its mirror image for the future tokens and a free diagonal, which is
// what a bidirectional encoder needs, at the cost of two chunked scans (no
// L x L matrix is ever formed). Prefill only: it has no causal state.
//
// ref: S. Hwang, A. Lahoti, T. Dao, A. Gu, "Hydra: Bidirectional State Space
//      Models Through Generalized Matrix Mixers", 2024, sec. 3 (Eq. for
//      QS(X) = shift(SS(X)) + flip(shift(SS(flip(X)))) + D X) and the
//      authors' reference module (roll of each scan by one token, zero first row).
//
// With a_k = dt_k A_h (dt as in ssd.hpp: bias, softplus, clamp) and s_j = dt_j x_j,
// head h, group g(h), one shared set of parameters for both directions:
//
//   y_i = sum_{j<i} (C_{i-1} . B_j) exp(a_{j+1} + ... + a_{i-1}) s_j     (forward scan, shifted)
//       + sum_{j>i} (C_{i+1} . B_j) exp(a_{i+1} + ... + a_{j-1}) s_j     (backward scan, shifted)
//       + D_h x_i
//   y_i *= silu(z_i)                                                     (z optional)
//
// The shift keeps the diagonal out of both scans, so it is counted once (as D).

#include <algorithm>
#include <cstring>
#include <vector>

#include "tokmix/core/third_party.hpp"

#include "tokmix/core/error.hpp"
#include "tokmix/core/tensor_view.hpp"
#include "tokmix/core/threading.hpp"
#include "tokmix/ssm/ssd.hpp"

TOKMIX_SIMD_AVX512_WARNINGS_OFF
namespace tokmix {

// Same fields as the SSD's (D, dt_bias, dt_softplus, dt limits, chunk_size,
// policy); cu_seqlens must stay empty.
using hydra_params = ssd_params;

namespace detail {

// dst[b, L-1-t, ...] = src[b, t, ...], dense destination.
template <int R>
inline void hydra_flip_copy(const tensor_view<const float, R>& src, Eigen::Tensor<float, R, Eigen::RowMajor>& dst) {
  std::array<Eigen::Index, R> dims{};
  for (int i = 0; i < R; ++i) dims[i] = src.dim(i);
  dst.resize(dims);
  const index_t batch = src.dim(0), seq = src.dim(1);
  index_t inner_rows = 1;
  for (int i = 2; i < R - 1; ++i) inner_rows *= src.dim(i);
  const index_t row = src.dim(R - 1);
  float* out = dst.data();
  for (index_t b = 0; b < batch; ++b)
    for (index_t t = 0; t < seq; ++t)
      for (index_t r = 0; r < inner_rows; ++r) {
        // Middle dimensions (at most one for R = 4, none for R = 3) by flat index.
        const float* s = src.ptr(b, seq - 1 - t);
        if (R == 4) s += r * src.stride(R - 2);
        std::memcpy(out, s, static_cast<std::size_t>(row) * sizeof(float));
        out += row;
      }
}

}  // namespace detail

// y = QS(x) as above for every batch entry (each sequence on its own; the
// mixer is non-causal, so every token sees the whole sequence). `y` must not
// overlap any input.
inline void hydra_forward(tensor_view<const float, 4> x,   // [batch, seq, heads, head_dim]
                          tensor_view<const float, 3> dt,  // [batch, seq, heads]
                          tensor_view<const float, 1> A,   // [heads]
                          tensor_view<const float, 4> B,   // [batch, seq, groups, d_state]
                          tensor_view<const float, 4> C,   // [batch, seq, groups, d_state]
                          tensor_view<const float, 4> z,   // [batch, seq, heads, head_dim]; empty = no gate
                          tensor_view<float, 4> y,         // [batch, seq, heads, head_dim]
                          const hydra_params& params = {}) {
  using detail::ssd_given;
  detail::ssd_args fwd{x, dt, A, B, C, z, y, {}, &params, false};
  const index_t batch = detail::ssd_validate_io(fwd, false);
  const index_t seq = x.dim(1), heads = x.dim(2), P = x.dim(3), N = B.dim(3);
  if (x.size() == 0) return;

  Eigen::Tensor<float, 4, Eigen::RowMajor> h(batch, heads, P, N), xr, Br, Cr, yb(batch, seq, heads, P);
  Eigen::Tensor<float, 3, Eigen::RowMajor> dtr;
  detail::hydra_flip_copy<4>(x, xr);
  detail::hydra_flip_copy<3>(dt, dtr);
  detail::hydra_flip_copy<4>(B, Br);
  detail::hydra_flip_copy<4>(C, Cr);

  h.setZero();
  fwd.h = as_view(h);
  detail::ssd_kernel(simd::default_arch{}, fwd, batch);

  h.setZero();
  detail::ssd_args bwd{as_view(xr), as_view(dtr), A, as_view(Br), as_view(Cr), {}, as_view(yb), as_view(h), &params,
                       false};
  detail::ssd_kernel(simd::default_arch{}, bwd, batch);

  // Shift the forward scan down one token, add the flipped backward scan shifted
  // the other way, then the skip and gate.
  const tensor_view<float, 4> ybv = as_view(yb);
  const float* dbase = ssd_given(params.D) ? params.D.data() : nullptr;
  const index_t dstride = ssd_given(params.D) && params.D.dim(1) != 1 ? 1 : 0;
  parallel_for(params.policy, batch * heads, [&](index_t item, int) {
    const index_t b = item / heads, hd = item % heads;
    for (index_t t = seq - 1; t >= 1; --t) std::memcpy(y.ptr(b, t, hd, 0), y.ptr(b, t - 1, hd, 0), P * sizeof(float));
    std::fill(y.ptr(b, 0, hd, 0), y.ptr(b, 0, hd, 0) + P, 0.f);
    for (index_t t = 0; t + 1 < seq; ++t)
      simd::detail::axpy_kernel(simd::default_arch{}, 1.f, ybv.ptr(b, seq - 2 - t, hd, 0), y.ptr(b, t, hd, 0), P);
    const float* d = dbase ? params.D.ptr(hd, 0) : nullptr;
    if (d || ssd_given(z))
      for (index_t t = 0; t < seq; ++t)
        detail::ssd_epilogue_row(simd::default_arch{}, y.ptr(b, t, hd, 0), y.ptr(b, t, hd, 0), x.ptr(b, t, hd, 0), d, dstride,
                                 ssd_given(z) ? z.ptr(b, t, hd, 0) : nullptr, P);
  });
}

// Without the z gate.
inline void hydra_forward(tensor_view<const float, 4> x,   // [batch, seq, heads, head_dim]
                          tensor_view<const float, 3> dt,  // [batch, seq, heads]
                          tensor_view<const float, 1> A,   // [heads]
                          tensor_view<const float, 4> B,   // [batch, seq, groups, d_state]
                          tensor_view<const float, 4> C,   // [batch, seq, groups, d_state]
                          tensor_view<float, 4> y,         // [batch, seq, heads, head_dim]
                          const hydra_params& params = {}) {
  hydra_forward(x, dt, A, B, C, tensor_view<const float, 4>(), y, params);
}

}  // namespace tokmix
TOKMIX_SIMD_AVX512_WARNINGS_ON
