#pragma once
// Set Transformer attention blocks over learned summaries: MAB, and ISAB / PMA,
// which attend to m << n inducing points or seeds instead of to every element.
//
//   MAB(X, Y):  Q = X Wq^T + bq  [n, dV]   K = Y Wk^T + bk,  V = Y Wv^T + bv  [ny, dV]
//               heads split dV into h slices: O = Q + concat_h softmax(scale Q_h K_h^T) V_h
//               O = LN0(O);  MAB = LN1(O + relu(O Wo^T + bo))          (LN0/LN1 only with layer_norm)
//   ISAB_m(X) = MAB1(X, H),  H = MAB0(I, X)   inducing points I: [m, dV]   cost O(n m dV)
//   PMA_k(Z)  = MAB(S, Z)                     seeds S: [k, dV]            output [B, k, dV]
//
// The definitions follow the authors' code: the residual adds the projected
// queries, and scale defaults to 1 / sqrt(dV) (the whole width, not a head's).
// The paper writes PMA_k(Z) = MAB(S, rFF(Z)); their code (and this) applies
// MAB(S, Z), so a caller's own row-wise FF goes before pma_forward.
// Sets are unordered: no mask, no causal form.
//
//   x: [B, n, dQ]  y: [B, ny, dK]  out: [B, n, dV]   (float; last dim unit-stride)
//   mab_weights: wq [dV, dQ], wk/wv [dV, dK], wo [dV, dV] (nn.Linear layout), biases [dV]
//     (empty: none), LayerNorm gains/offsets [dV] when layer_norm
//
// Both attentions are exact softmax attention on tokmix's flash tiles
// (dV / heads per head); projections are simd::gemm products.
//
// ref: Lee, Lee, Kim, Kosiorek, Choi & Teh, "Set Transformer: A Framework for
//      Attention-based Permutation-Invariant Neural Networks", ICML 2019
//      (eq. 6-11: MAB, SAB, ISAB, PMA).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "tokmix/simd/arch.hpp"

#include "tokmix/attention/flash_attention.hpp"
#include "tokmix/attention/params.hpp"
#include "tokmix/core/error.hpp"
#include "tokmix/core/named_tensors.hpp"
#include "tokmix/core/random.hpp"
#include "tokmix/core/tensor_view.hpp"
#include "tokmix/core/threading.hpp"
#include "tokmix/simd/gemm.hpp"

namespace tokmix {

struct mab_params {
  index_t heads = 1;  // must divide dV
  // Multiplies q.k per head; NaN (the default) means 1/sqrt(dV), as in the authors' code.
  float scale = std::numeric_limits<float>::quiet_NaN();
  bool layer_norm = false;  // LN0 / LN1 (the authors' `ln` flag, off by default)
  float ln_eps = 1e-5f;
  exec_policy policy;
};

// One MAB's parameters (owned, row-major).
struct mab_weights {
  index_t dq = 0, dk = 0, dv = 0;
  std::vector<float> wq, wk, wv, wo;      // [dv, dq], [dv, dk], [dv, dk], [dv, dv]
  std::vector<float> bq, bk, bv, bo;      // [dv] or empty
  std::vector<float> ln0_g, ln0_b, ln1_g, ln1_b;  // [dv] or empty

  // nn.Linear's default init, U(-1/sqrt(in), 1/sqrt(in)) for weights and
  // biases; LayerNorm gains 1 and offsets 0 (with_layer_norm).
  static mab_weights random(index_t dq, index_t dk, index_t dv, bool with_layer_norm, std::uint64_t seed) {
    require(dq >= 1 && dk >= 1 && dv >= 1, "mab dims", "dq, dk, dv >= 1",
            std::to_string(dq) + ", " + std::to_string(dk) + ", " + std::to_string(dv));
    mab_weights w;
    w.dq = dq;
    w.dk = dk;
    w.dv = dv;
    random_stream g(seed);
    auto fill = [&](std::vector<float>& x, index_t n, index_t fan_in) {
      const double b = 1.0 / std::sqrt(static_cast<double>(fan_in));
      x.resize(static_cast<std::size_t>(n));
      for (float& e : x) e = static_cast<float>(g.uniform(-b, b));
    };
    fill(w.wq, dv * dq, dq);
    fill(w.bq, dv, dq);
    fill(w.wk, dv * dk, dk);
    fill(w.bk, dv, dk);
    fill(w.wv, dv * dk, dk);
    fill(w.bv, dv, dk);
    fill(w.wo, dv * dv, dv);
    fill(w.bo, dv, dv);
    if (with_layer_norm) {
      w.ln0_g.assign(static_cast<std::size_t>(dv), 1.f);
      w.ln1_g.assign(static_cast<std::size_t>(dv), 1.f);
      w.ln0_b.assign(static_cast<std::size_t>(dv), 0.f);
      w.ln1_b.assign(static_cast<std::size_t>(dv), 0.f);
    }
    return w;
  }

  // The authors' parameter names under `prefix`: fc_q, fc_k, fc_v, fc_o
  // (.weight, .bias) and, when with_layer_norm, ln0 / ln1 (.weight, .bias).
  static mab_weights load(const named_tensors& t, const std::string& prefix, index_t dq, index_t dk, index_t dv,
                          bool with_layer_norm) {
    mab_weights w;
    w.dq = dq;
    w.dk = dk;
    w.dv = dv;
    w.wq = t.at(prefix + ".fc_q.weight", {dv, dq}).data;
    w.bq = t.at(prefix + ".fc_q.bias", {dv}).data;
    w.wk = t.at(prefix + ".fc_k.weight", {dv, dk}).data;
    w.bk = t.at(prefix + ".fc_k.bias", {dv}).data;
    w.wv = t.at(prefix + ".fc_v.weight", {dv, dk}).data;
    w.bv = t.at(prefix + ".fc_v.bias", {dv}).data;
    w.wo = t.at(prefix + ".fc_o.weight", {dv, dv}).data;
    w.bo = t.at(prefix + ".fc_o.bias", {dv}).data;
    if (with_layer_norm) {
      w.ln0_g = t.at(prefix + ".ln0.weight", {dv}).data;
      w.ln0_b = t.at(prefix + ".ln0.bias", {dv}).data;
      w.ln1_g = t.at(prefix + ".ln1.weight", {dv}).data;
      w.ln1_b = t.at(prefix + ".ln1.bias", {dv}).data;
    }
    return w;
  }
};

namespace detail {
namespace sparse {

inline void check_mab(const char* name, const mab_weights& w, index_t dq, index_t dk, const mab_params& p) {
  const std::string n(name);
  auto size_is = [&](const std::vector<float>& x, index_t want, const char* what, bool optional) {
    const std::string arg = n + "." + what;
    if (optional && x.empty()) return;
    require(static_cast<index_t>(x.size()) == want, arg.c_str(), std::to_string(want) + " values",
            std::to_string(x.size()) + " values");
  };
  require(w.dq == dq, (n + ".dq").c_str(), "the query input width " + std::to_string(dq), w.dq);
  require(w.dk == dk, (n + ".dk").c_str(), "the key input width " + std::to_string(dk), w.dk);
  require(w.dv >= 1, (n + ".dv").c_str(), ">= 1", w.dv);
  size_is(w.wq, w.dv * w.dq, "wq", false);
  size_is(w.wk, w.dv * w.dk, "wk", false);
  size_is(w.wv, w.dv * w.dk, "wv", false);
  size_is(w.wo, w.dv * w.dv, "wo", false);
  size_is(w.bq, w.dv, "bq", true);
  size_is(w.bk, w.dv, "bk", true);
  size_is(w.bv, w.dv, "bv", true);
  size_is(w.bo, w.dv, "bo", true);
  if (p.layer_norm) {
    size_is(w.ln0_g, w.dv, "ln0_g", false);
    size_is(w.ln0_b, w.dv, "ln0_b", false);
    size_is(w.ln1_g, w.dv, "ln1_g", false);
    size_is(w.ln1_b, w.dv, "ln1_b", false);
  }
  require(p.heads >= 1 && w.dv % p.heads == 0, "params.heads", "a divisor of dV = " + std::to_string(w.dv), p.heads);
  require(std::isnan(p.scale) || std::isfinite(p.scale), "params.scale", "a finite value or NaN (default)", p.scale);
  require(std::isfinite(p.ln_eps) && p.ln_eps > 0.f, "params.ln_eps", "a finite value > 0", p.ln_eps);
}

// y[r, :] = x[r, :] W^T + b for n rows (W [dout, din]); y rows contiguous.
inline void mab_linear(const float* x, index_t ldx, index_t n, index_t din, const std::vector<float>& w,
                       const std::vector<float>& b, index_t dout, float* y) {
  if (n == 0) return;
  simd::gemm_nt(n, dout, din, 1.f, x, ldx, w.data(), din, 0.f, y, dout);
  if (!b.empty())
    for (index_t r = 0; r < n; ++r)
      for (index_t c = 0; c < dout; ++c) y[r * dout + c] += b[static_cast<std::size_t>(c)];
}

inline void mab_layer_norm(float* x, index_t d, const std::vector<float>& g, const std::vector<float>& b, float eps) {
  double mean = 0, var = 0;
  for (index_t c = 0; c < d; ++c) mean += x[c];
  mean /= static_cast<double>(d);
  for (index_t c = 0; c < d; ++c) var += (x[c] - mean) * (x[c] - mean);
  const double inv = 1.0 / std::sqrt(var / static_cast<double>(d) + eps);
  for (index_t c = 0; c < d; ++c)
    x[c] = static_cast<float>((x[c] - mean) * inv) * g[static_cast<std::size_t>(c)] + b[static_cast<std::size_t>(c)];
}

// MAB over B batches: queries either per batch (x != nullptr: x [B, n, dq]
// strided) or shared (shared_q: [n, dq] rows contiguous); keys y [B, ny, dk].
inline void mab_run(const tensor_view<const float, 3>* x, const float* shared_q, index_t n,
                    const tensor_view<const float, 3>& y, const mab_weights& w, const mab_params& p,
                    const tensor_view<float, 3>& out) {
  const index_t B = y.dim(0), ny = y.dim(1), dv = w.dv, h = p.heads, dh = dv / h;
  if (B == 0 || n == 0) return;
  std::vector<float> qb(static_cast<std::size_t>(B * n * dv)), kb(static_cast<std::size_t>(B * ny * dv)),
      vb(kb.size()), ab(qb.size());
  std::vector<float> shared;
  if (shared_q != nullptr) {
    shared.resize(static_cast<std::size_t>(n * dv));
    mab_linear(shared_q, w.dq, n, w.dq, w.wq, w.bq, dv, shared.data());
  }
  parallel_for(p.policy, B, [&](index_t b, int) {
    float* q = qb.data() + b * n * dv;
    if (shared_q != nullptr) std::copy(shared.begin(), shared.end(), q);
    else mab_linear(x->ptr(b), x->stride(1), n, w.dq, w.wq, w.bq, dv, q);
    mab_linear(y.ptr(b), y.stride(1), ny, w.dk, w.wk, w.bk, dv, kb.data() + b * ny * dv);
    mab_linear(y.ptr(b), y.stride(1), ny, w.dk, w.wv, w.bv, dv, vb.data() + b * ny * dv);
  });
  attention_params ap;
  ap.scale = std::isnan(p.scale) ? 1.f / std::sqrt(static_cast<float>(dv)) : p.scale;
  ap.policy = p.policy;
  if (ny > 0)
    flash_attention_kernel(xsimd::default_arch{}, tensor_view<const float, 4>(qb.data(), {B, n, h, dh}),
                           tensor_view<const float, 4>(kb.data(), {B, ny, h, dh}),
                           tensor_view<const float, 4>(vb.data(), {B, ny, h, dh}),
                           tensor_view<float, 4>(ab.data(), {B, n, h, dh}), tensor_view<float, 3>(), ap);
  else
    std::fill(ab.begin(), ab.end(), 0.f);  // an empty set: every row sees no key
  parallel_for(p.policy, B, [&](index_t b, int) {
    float* o = ab.data() + b * n * dv;  // O = Q + A, in place
    const float* q = qb.data() + b * n * dv;
    for (index_t t = 0; t < n * dv; ++t) o[t] += q[t];
    if (p.layer_norm)
      for (index_t r = 0; r < n; ++r) mab_layer_norm(o + r * dv, dv, w.ln0_g, w.ln0_b, p.ln_eps);
    float* f = qb.data() + b * n * dv;  // the projected queries are no longer needed
    mab_linear(o, dv, n, dv, w.wo, w.bo, dv, f);
    for (index_t r = 0; r < n; ++r) {
      float* dst = out.ptr(b, r);
      for (index_t c = 0; c < dv; ++c) dst[c] = o[r * dv + c] + std::max(0.f, f[r * dv + c]);
      if (p.layer_norm) mab_layer_norm(dst, dv, w.ln1_g, w.ln1_b, p.ln_eps);
    }
  });
}

inline void check_set(const char* name, const tensor_view<const float, 3>& x) {
  require_layout(name, x);
}

}  // namespace sparse
}  // namespace detail

// MAB(X, Y).  x: [B, n, dQ]  y: [B, ny, dK]  out: [B, n, dV]
template <class X, class Y, class O>
void mab_forward(const X& x_, const Y& y_, O&& out_, const mab_weights& w, const mab_params& p = {}) {
  const tensor_view<const float, 3> x = as_view(x_), y = as_view(y_);
  const tensor_view<float, 3> out = as_view(out_);
  detail::sparse::check_set("x", x);
  detail::sparse::check_set("y", y);
  require_layout("out", out);
  require_shape("y", y, {x.dim(0), -1, -1});
  detail::sparse::check_mab("mab", w, x.dim(2), y.dim(2), p);
  require_shape("out", out, {x.dim(0), x.dim(1), w.dv});
  detail::sparse::mab_run(&x, nullptr, x.dim(1), y, w, p, out);
}

// ISAB_m(X) = MAB1(X, MAB0(I, X)).  x: [B, n, dIn]  inducing: [m, dV]  out: [B, n, dV]
//   mab0: dq = dV, dk = dIn;   mab1: dq = dIn, dk = dV (both dv = dV)
template <class X, class I, class O>
void isab_forward(const X& x_, const I& inducing_, O&& out_, const mab_weights& mab0, const mab_weights& mab1,
                  const mab_params& p = {}) {
  const tensor_view<const float, 3> x = as_view(x_);
  const tensor_view<const float, 2> ind = as_view(inducing_);
  const tensor_view<float, 3> out = as_view(out_);
  detail::sparse::check_set("x", x);
  require_layout("inducing", ind);
  require(ind.dim(0) >= 1 && ind.stride(0) == ind.dim(1), "inducing", "[m >= 1, dV] with contiguous rows",
          "shape " + ind.shape_string());
  detail::sparse::check_mab("mab0", mab0, ind.dim(1), x.dim(2), p);
  detail::sparse::check_mab("mab1", mab1, x.dim(2), mab0.dv, p);
  require_layout("out", out);
  require_shape("out", out, {x.dim(0), x.dim(1), mab1.dv});
  const index_t B = x.dim(0), m = ind.dim(0);
  std::vector<float> hbuf(static_cast<std::size_t>(B * m * mab0.dv));
  const tensor_view<float, 3> hv(hbuf.data(), {B, m, mab0.dv});
  detail::sparse::mab_run(nullptr, ind.data(), m, x, mab0, p, hv);                 // H = MAB0(I, X)
  detail::sparse::mab_run(&x, nullptr, x.dim(1), tensor_view<const float, 3>(hv), mab1, p, out);  // MAB1(X, H)
}

// PMA_k(Z) = MAB(S, Z).  z: [B, n, dV]  seeds: [k, dV]  out: [B, k, dV]   (mab: dq = dk = dV)
template <class Z, class S, class O>
void pma_forward(const Z& z_, const S& seeds_, O&& out_, const mab_weights& mab, const mab_params& p = {}) {
  const tensor_view<const float, 3> z = as_view(z_);
  const tensor_view<const float, 2> s = as_view(seeds_);
  const tensor_view<float, 3> out = as_view(out_);
  detail::sparse::check_set("z", z);
  require_layout("seeds", s);
  require(s.dim(0) >= 1 && s.stride(0) == s.dim(1), "seeds", "[k >= 1, dV] with contiguous rows",
          "shape " + s.shape_string());
  detail::sparse::check_mab("mab", mab, s.dim(1), z.dim(2), p);
  require_layout("out", out);
  require_shape("out", out, {z.dim(0), s.dim(0), mab.dv});
  detail::sparse::mab_run(nullptr, s.data(), s.dim(0), z, mab, p, out);
}

}  // namespace tokmix
