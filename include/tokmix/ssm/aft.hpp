#pragma once
// Attention Free Transformer: an element-wise, softmax-weighted average of
// values over positions, biased by a learned pairwise position term; O(L d)
// for AFT-simple and O(L s d) for AFT-local, so it serves as a long-context
// mixer with no L x L attention matrix.
//
// ref: Zhai et al., "An Attention Free Transformer" (2021), eq. 2 (AFT-full),
//      sec. 3.2 (AFT-local: w_{t,t'} kept for |t - t'| < s, 0 outside, not
//      -inf), sec. 3.3 (AFT-simple, w = 0), causal variants with t' <= t.
//
//   y_t = sigmoid(q_t) * sum_t' exp(k_t' + w_{t,t'}) v_t' / sum_t' exp(k_t' + w_{t,t'})
//
// Layout [batch, seq, dim] (AFT has no heads); w is one scalar per position
// pair, shared by the channels. Stability: exponents are taken relative to
// the per-channel maximum of k (over the whole sequence, or the running
// maximum up to t when causal) and to the row maximum M_t = max(0, max w_t.),
// so k = +-1e3 stays finite. The window is computed as "everything with bias
// 0" plus a band correction (exp(w) - 1) over |t - t'| < s, which keeps
// AFT-local linear in L.

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "tokmix/core/third_party.hpp"
#include "tokmix/simd/arch.hpp"

#include "tokmix/core/error.hpp"
#include "tokmix/core/tensor_view.hpp"
#include "tokmix/core/threading.hpp"
#include "tokmix/simd/activation.hpp"
#include "tokmix/simd/exp.hpp"

TOKMIX_SIMD_AVX512_WARNINGS_OFF
namespace tokmix {

struct aft_options {
  bool causal = false;  // t' <= t
  exec_policy policy;
};

// Causal AFT-simple running sums per sequence and channel, relative to the
// running maximum m of k: num = sum exp(k - m) v, den = sum exp(k - m).
// A fresh state has m = -inf and zero sums.
class aft_state {
 public:
  aft_state() : aft_state(0, 0) {}
  aft_state(index_t batch, index_t dim) {
    require(batch >= 0, "aft_state batch", ">= 0", batch);
    require(dim >= 0, "aft_state dim", ">= 0", dim);
    max_.resize(batch, dim);
    num_.resize(batch, dim);
    den_.resize(batch, dim);
    reset();
  }
  index_t batch() const { return max_.dimension(0); }
  index_t dim() const { return max_.dimension(1); }
  void reset() {
    max_.setConstant(-std::numeric_limits<float>::infinity());
    num_.setZero();
    den_.setZero();
  }
  tensor_view<float, 2> max() { return as_view(max_); }  // [batch, dim]
  tensor_view<float, 2> num() { return as_view(num_); }  // [batch, dim]
  tensor_view<float, 2> den() { return as_view(den_); }  // [batch, dim]

 private:
  Eigen::Tensor<float, 2, Eigen::RowMajor> max_, num_, den_;
};

namespace detail {

// Where the pairwise bias lives: row t at data + t * row_stride, column t'
// (full [L, L] storage) or t' - t + window - 1 (band storage); only pairs with
// |t - t'| < window are read.
struct aft_bias {
  const float* data = nullptr;  // null: w = 0 (AFT-simple)
  index_t row_stride = 0;       // between rows t
  index_t col_stride = 1;
  bool band = false;            // column index is t' - t + window - 1, else t'
  index_t window = 0;           // |t - t'| < window carries a bias
  float at(index_t t, index_t tp) const {
    return data[t * row_stride + (band ? tp - t + window - 1 : tp) * col_stride];
  }
};

// One batch entry, channels [c0, c0 + nc). Rows are walked in order; for the
// causal case (m, num, den) are the running sums (from and back to `state_*`
// when given), else the global sums over the sequence.
template <class Arch>
inline void aft_rows(Arch, const tensor_view<const float, 3>& q, const tensor_view<const float, 3>& k,
                     const tensor_view<const float, 3>& v, const tensor_view<float, 3>& y, index_t b, index_t c0,
                     index_t nc, const aft_bias& w, bool causal, float* st_m, float* st_num, float* st_den,
                     std::vector<float>& tmp) {
  using batch = simd::fbatch<Arch>;
  constexpr index_t S = simd::lanes<Arch>;
  const index_t L = q.dim(1);
  const float ninf = -std::numeric_limits<float>::infinity();
  // m, num, den for this channel block, padded to whole batches.
  const index_t ncp = (nc + S - 1) / S * S;
  const index_t win = w.data ? w.window : 0;
  // Rings over the last R tokens (slot t' % R), [R, ncp]: ek = exp(k_t' - m)
  // with m the running max at t' (causal) or the global max; sc = exp(m_{t'-1}
  // - m_t'), so exp(k_t' - m_t) = ek_t' * prod_{t' < j <= t} sc_j: the band
  // needs multiplies only, no exp per (t, t') pair.
  const index_t R = 2 * win;
  tmp.assign(static_cast<std::size_t>(3 * ncp + 2 * win + 1 + 2 * R * ncp), 0.f);
  float* m = tmp.data();
  float* num = m + ncp;
  float* den = num + ncp;
  float* a = den + ncp;  // band factors exp(w - M) - exp(-M), indexed t' - t + win - 1
  float* ring_e = a + 2 * win + 1;
  float* ring_sc = ring_e + R * ncp;
  std::fill(m, m + ncp, ninf);
  if (st_m) {
    std::copy(st_m, st_m + nc, m);
    std::copy(st_num, st_num + nc, num);
    std::copy(st_den, st_den + nc, den);
  }
  auto load = [&](const float* p, index_t j, float fill) {
    return j + S <= nc ? batch::load_unaligned(p + j) : simd::detail::load_partial<Arch>(p + j, nc - j, fill);
  };
  // Folds token t' into (m, num, den).
  auto absorb = [&](index_t tp) {
    const float* kr = k.ptr(b, tp, c0);
    const float* vr = v.ptr(b, tp, c0);
    for (index_t j = 0; j < ncp; j += S) {
      const batch kt = load(kr, j, ninf), mo = batch::load_unaligned(m + j);
      const batch mn = xsimd::max(mo, kt);
      // One of exp(mo - mn), exp(kt - mn) is exp(0): one exp of -|kt - mo| serves both.
      const auto up = kt > mo;
      const batch z = simd::exp_batch<Arch>(xsimd::select(up, mo - kt, kt - mo));
      const batch sc = xsimd::select(up, z, batch(1.f)), e = xsimd::select(up, batch(1.f), z);
      xsimd::fma(batch::load_unaligned(num + j), sc, e * load(vr, j, 0.f)).store_unaligned(num + j);
      xsimd::fma(batch::load_unaligned(den + j), sc, e).store_unaligned(den + j);
      mn.store_unaligned(m + j);
      if (R && causal) {
        e.store_unaligned(ring_e + (tp % R) * ncp + j);
        sc.store_unaligned(ring_sc + (tp % R) * ncp + j);
      }
    }
  };
  index_t filled = 0;  // non-causal: ring_e holds tokens below this
  if (!causal)
    for (index_t tp = 0; tp < L; ++tp) absorb(tp);
  for (index_t t = 0; t < L; ++t) {
    if (causal) absorb(t);
    const index_t lo = win ? std::max<index_t>(0, t - win + 1) : 0;
    const index_t hi = win ? (causal ? t : std::min(L - 1, t + win - 1)) : -1;
    float e0 = 1.f;
    if (win) {
      float mrow = 0.f;
      for (index_t tp = lo; tp <= hi; ++tp) mrow = std::max(mrow, w.at(t, tp));
      e0 = std::exp(-mrow);
      for (index_t tp = lo; tp <= hi; ++tp) a[tp - t + win - 1] = std::exp(w.at(t, tp) - mrow) - e0;
    }
    if (!causal)
      for (; filled <= hi; ++filled)
        for (index_t j = 0; j < ncp; j += S)
          simd::exp_batch<Arch>(load(k.ptr(b, filled, c0), j, ninf) - batch::load_unaligned(m + j))
              .store_unaligned(ring_e + (filled % R) * ncp + j);
    const float* qr = q.ptr(b, t, c0);
    float* yr = y.ptr(b, t, c0);
    for (index_t j = 0; j < ncp; j += S) {
      batch nu = batch::load_unaligned(num + j) * batch(e0), de = batch::load_unaligned(den + j) * batch(e0);
      if (causal) {
        batch f(1.f);
        for (index_t tp = hi; tp >= lo; --tp) {
          const batch e = batch::load_unaligned(ring_e + (tp % R) * ncp + j) * f * batch(a[tp - t + win - 1]);
          nu = xsimd::fma(e, load(v.ptr(b, tp, c0), j, 0.f), nu);
          de = de + e;
          f = f * batch::load_unaligned(ring_sc + (tp % R) * ncp + j);
        }
      } else {
        for (index_t tp = lo; tp <= hi; ++tp) {
          const batch e = batch::load_unaligned(ring_e + (tp % R) * ncp + j) * batch(a[tp - t + win - 1]);
          nu = xsimd::fma(e, load(v.ptr(b, tp, c0), j, 0.f), nu);
          de = de + e;
        }
      }
      const batch out = simd::sigmoid_batch<Arch>(load(qr, j, 0.f)) * nu / de;
      if (j + S <= nc) out.store_unaligned(yr + j);
      else simd::detail::store_partial<Arch>(yr + j, out, nc - j);
    }
  }
  if (st_m) {
    std::copy(m, m + nc, st_m);
    std::copy(num, num + nc, st_num);
    std::copy(den, den + nc, st_den);
  }
}

inline void aft_validate_qkv(const tensor_view<const float, 3>& q, const tensor_view<const float, 3>& k,
                             const tensor_view<const float, 3>& v, const tensor_view<float, 3>& y) {
  require_layout("q", q);
  require_layout("k", k);
  require_layout("v", v);
  require_layout("y", y);
  require_shape<const float, 3>("k", k, q.dims());
  require_shape<const float, 3>("v", v, q.dims());
  require_shape<float, 3>("y", y, q.dims());
}

template <class Arch>
inline void aft_kernel(Arch arch, const tensor_view<const float, 3>& q, const tensor_view<const float, 3>& k,
                       const tensor_view<const float, 3>& v, const tensor_view<float, 3>& y, const aft_bias& w,
                       aft_state* st, const aft_options& opts) {
  const index_t nb = q.dim(0), L = q.dim(1), d = q.dim(2);
  if (nb == 0 || L == 0 || d == 0) return;
  // Channel ranges per batch entry: as few as the workers allow, so an item
  // walks whole rows in address order (64-channel items striding through
  // 1 KB rows ran 3x slower once L * d left the cache).
  constexpr index_t S = simd::lanes<Arch>;
  const index_t want = std::max<index_t>(1, std::min<index_t>(worker_slots(opts.policy), (d + S - 1) / S));
  const index_t span = ((d + want - 1) / want + S - 1) / S * S;
  const index_t per_b = (d + span - 1) / span;
  std::vector<std::vector<float>> tmp(static_cast<std::size_t>(worker_slots(opts.policy)));
  parallel_for(opts.policy, nb * per_b, [&](index_t item, int wid) {
    const index_t b = item / per_b, c0 = (item % per_b) * span;
    const index_t nc = std::min(span, d - c0);
    aft_rows(arch, q, k, v, y, b, c0, nc, w, opts.causal, st ? st->max().ptr(b, c0) : nullptr,
             st ? st->num().ptr(b, c0) : nullptr, st ? st->den().ptr(b, c0) : nullptr, tmp[static_cast<std::size_t>(wid)]);
  });
}

inline void aft_require_finite_bias(const aft_bias& w, index_t L, bool causal) {
  for (index_t t = 0; t < L; ++t) {
    const index_t lo = std::max<index_t>(0, t - w.window + 1), hi = causal ? t : std::min(L - 1, t + w.window - 1);
    for (index_t tp = lo; tp <= hi; ++tp) {
      const float x = w.at(t, tp);
      if (!std::isfinite(x))
        throw argument_error("w", "finite values", std::to_string(x) + " at (" + std::to_string(t) + ", " + std::to_string(tp) + ")");
    }
  }
}

}  // namespace detail

// AFT-simple (w = 0): without `causal` every y_t averages the whole sequence.
inline void aft_simple(tensor_view<const float, 3> q, tensor_view<const float, 3> k,  // [batch, seq, dim]
                       tensor_view<const float, 3> v, tensor_view<float, 3> y,        // [batch, seq, dim]
                       const aft_options& opts = {}) {
  detail::aft_validate_qkv(q, k, v, y);
  detail::aft_kernel(simd::default_arch{}, q, k, v, y, detail::aft_bias{}, nullptr, opts);
}

// Causal AFT-simple continuing from `state`: prefill(L1) then prefill(L2)
// equals prefill(L1 + L2) equals L1 + L2 steps, bit for bit.
inline void aft_simple_prefill(tensor_view<const float, 3> q, tensor_view<const float, 3> k,  // [batch, seq, dim]
                               tensor_view<const float, 3> v, aft_state& state,
                               tensor_view<float, 3> y,  // [batch, seq, dim]
                               const aft_options& opts = {}) {
  detail::aft_validate_qkv(q, k, v, y);
  require(state.batch() == q.dim(0), "state batch", q.dim(0), state.batch());
  require(state.dim() == q.dim(2), "state dim", q.dim(2), state.dim());
  aft_options o = opts;
  o.causal = true;
  detail::aft_kernel(simd::default_arch{}, q, k, v, y, detail::aft_bias{}, &state, o);
}

inline void aft_simple_step(tensor_view<const float, 2> q, tensor_view<const float, 2> k,  // [batch, dim]
                            tensor_view<const float, 2> v, aft_state& state,
                            tensor_view<float, 2> y,  // [batch, dim]
                            const aft_options& opts = {}) {
  auto as3 = [](auto x) {
    using T = typename decltype(x)::element_type;
    return tensor_view<T, 3>(x.data(), {x.dim(0), 1, x.dim(1)}, {x.stride(0), x.stride(0), x.stride(1)});
  };
  require_layout("q", q);
  require_layout("k", k);
  require_layout("v", v);
  require_layout("y", y);
  aft_simple_prefill(as3(q), as3(k), as3(v), state, as3(y), opts);
}

// AFT-full: w [seq, seq] (row t, column t'); a larger learned table is passed
// as its top-left view. O(L^2 d).
inline void aft_full(tensor_view<const float, 3> q, tensor_view<const float, 3> k,  // [batch, seq, dim]
                     tensor_view<const float, 3> v, tensor_view<const float, 2> w,  // [seq, seq]
                     tensor_view<float, 3> y,                                      // [batch, seq, dim]
                     const aft_options& opts = {}) {
  detail::aft_validate_qkv(q, k, v, y);
  const index_t L = q.dim(1);
  require_shape("w", w, {L, L});
  for (int i = 0; i < 2; ++i) require(w.stride(i) >= 0, "w strides", ">= 0", w.stride(i));
  require(L == 0 || w.data() != nullptr, "w", "a non-null data pointer", "nullptr");
  detail::aft_bias b;
  b.data = w.data();
  b.row_stride = w.stride(0);
  b.col_stride = w.stride(1);
  b.band = false;
  b.window = std::max<index_t>(L, 1);
  detail::aft_require_finite_bias(b, L, opts.causal);
  detail::aft_kernel(simd::default_arch{}, q, k, v, y, b, nullptr, opts);
}

// AFT-local with window s >= 1: w_{t,t'} = w_band[t, t' - t + s - 1] for
// |t - t'| < s, 0 outside. Causal reads only the columns t' <= t. O(L s d).
inline void aft_local(tensor_view<const float, 3> q, tensor_view<const float, 3> k,       // [batch, seq, dim]
                      tensor_view<const float, 3> v, tensor_view<const float, 2> w_band,  // [seq, 2 s - 1]
                      index_t window, tensor_view<float, 3> y,                            // [batch, seq, dim]
                      const aft_options& opts = {}) {
  detail::aft_validate_qkv(q, k, v, y);
  require(window >= 1, "window", ">= 1", window);
  const index_t L = q.dim(1);
  require_shape("w_band", w_band, {L, 2 * window - 1});
  for (int i = 0; i < 2; ++i) require(w_band.stride(i) >= 0, "w_band strides", ">= 0", w_band.stride(i));
  require(L == 0 || w_band.data() != nullptr, "w_band", "a non-null data pointer", "nullptr");
  detail::aft_bias b;
  b.data = w_band.data();
  b.row_stride = w_band.stride(0);
  b.col_stride = w_band.stride(1);
  b.band = true;
  b.window = window;
  detail::aft_require_finite_bias(b, L, opts.causal);
  detail::aft_kernel(simd::default_arch{}, q, k, v, y, b, nullptr, opts);
}

}  // namespace tokmix
TOKMIX_SIMD_AVX512_WARNINGS_ON
