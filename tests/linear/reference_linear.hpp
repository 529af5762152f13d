#pragma once
// Float64 references for linear attention with feature maps, kernelized
// attention with relative positions and Galerkin/Fourier attention, written
// from docs/semantics.md in the quadratic (masked weight matrix) form. They
// share nothing with the kernels: feature maps use the full vec(y y^T) layout
// (not the kernels' packed triangle), no chunking, no stabilising shifts.

#include <cmath>
#include <limits>
#include <vector>

#include "tokmix/core/tensor_view.hpp"
#include "support/compare.hpp"
#include "tokmix/linear/feature_maps.hpp"

namespace tokmix_test {
namespace linear_ref {

using tokmix::index_t;

// phi(x) from the definitions, double precision.
inline std::vector<double> phi(const tokmix::feature_map& f, const float* x, index_t d) {
  using K = tokmix::feature_map_kind;
  std::vector<double> out;
  switch (f.kind) {
    case K::identity:
      for (index_t i = 0; i < d; ++i) out.push_back(x[i]);
      break;
    case K::elu_plus_one:
      for (index_t i = 0; i < d; ++i) out.push_back(x[i] > 0 ? x[i] + 1.0 : std::exp(double(x[i])));
      break;
    case K::relu:
      for (index_t i = 0; i < d; ++i) out.push_back(std::max(0.0, double(x[i])));
      break;
    case K::based_taylor: {
      const double s = f.scale == -1.f ? 1.0 / std::sqrt(double(d)) : f.scale;
      std::vector<double> y(static_cast<std::size_t>(d));
      for (index_t i = 0; i < d; ++i) y[static_cast<std::size_t>(i)] = x[i] * std::sqrt(s);
      out.push_back(1.0);
      for (double v : y) out.push_back(v);
      for (double a : y)
        for (double b : y) out.push_back(a * b / std::sqrt(2.0));
      break;
    }
    case K::rebased: {
      double mean = 0, var = 0;
      for (index_t i = 0; i < d; ++i) mean += x[i];
      mean /= double(d);
      for (index_t i = 0; i < d; ++i) var += (x[i] - mean) * (x[i] - mean);
      var /= double(d);
      std::vector<double> y(static_cast<std::size_t>(d));
      for (index_t i = 0; i < d; ++i) {
        const double g = f.gamma.data() ? f.gamma(i) : 1.0, b = f.beta.data() ? f.beta(i) : 0.0;
        y[static_cast<std::size_t>(i)] = g * (x[i] - mean) / std::sqrt(var + f.norm_eps) + b;
      }
      for (double a : y)
        for (double b : y) out.push_back(a * b);
      break;
    }
    case K::random_features: {
      const auto w = f.random->projection();
      const index_t m = w.dim(0);
      const double xs = std::pow(double(d), -0.25);
      double n2 = 0;
      for (index_t i = 0; i < d; ++i) n2 += double(x[i]) * x[i] * xs * xs;
      std::vector<double> u(static_cast<std::size_t>(m));
      for (index_t r = 0; r < m; ++r) {
        double s = 0;
        for (index_t i = 0; i < d; ++i) s += double(w(r, i)) * x[i] * xs;
        u[static_cast<std::size_t>(r)] = s;
      }
      if (f.random->kind() == tokmix::random_feature_kind::positive) {
        for (double s : u) out.push_back(std::exp(s - n2 / 2) / std::sqrt(double(m)));
      } else {
        for (double s : u) out.push_back(std::sin(s) * std::exp(n2 / 2) / std::sqrt(double(m)));
        for (double s : u) out.push_back(std::cos(s) * std::exp(n2 / 2) / std::sqrt(double(m)));
      }
      break;
    }
  }
  return out;
}

inline double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// Dense [B, L, H, D] inputs of one problem.
struct problem {
  index_t B = 1, Lq = 1, Lk = 1, Hq = 1, Hkv = 1, dk = 1, dv = 1;
  std::vector<float> q, k, v;
  const float* q_at(index_t b, index_t t, index_t h) const { return &q[static_cast<std::size_t>(((b * Lq + t) * Hq + h) * dk)]; }
  const float* k_at(index_t b, index_t t, index_t h) const { return &k[static_cast<std::size_t>(((b * Lk + t) * Hkv + h) * dk)]; }
  const float* v_at(index_t b, index_t t, index_t h) const { return &v[static_cast<std::size_t>(((b * Lk + t) * Hkv + h) * dv)]; }
  std::size_t o_size() const { return static_cast<std::size_t>(B * Lq * Hq * dv); }
  std::size_t o_index(index_t b, index_t t, index_t h) const { return static_cast<std::size_t>(((b * Lq + t) * Hq + h) * dv); }
};

// Uniform random q, k in [-amp, amp] and v in [-1, 1], reproducible from seed.
inline problem random_problem(index_t B, index_t Lq, index_t Lk, index_t Hq, index_t Hkv, index_t dk, index_t dv,
                              unsigned seed, float amp = 1.f) {
  problem p;
  p.B = B;
  p.Lq = Lq;
  p.Lk = Lk;
  p.Hq = Hq;
  p.Hkv = Hkv;
  p.dk = dk;
  p.dv = dv;
  p.q = random_floats(static_cast<std::size_t>(B * Lq * Hq * dk), seed, -amp, amp);
  p.k = random_floats(static_cast<std::size_t>(B * Lk * Hkv * dk), seed + 1, -amp, amp);
  p.v = random_floats(static_cast<std::size_t>(B * Lk * Hkv * dv), seed + 2, -1.f, 1.f);
  return p;
}

// Optional initial state (true values, unshifted): S0 [B, Hkv, F, dv], z0 [B, Hkv, F].
struct linear_result {
  std::vector<double> o;
  std::vector<double> S, z;  // final state (causal), same layout
};

// o_i = (phi_q S0 + sum_{j visible} w_ij v_j) / (phi_q z0 + sum w_ij + eps),
// w_ij = phi(q_i).phi(k_j); causal: j <= i (Lq == Lk).
inline linear_result linear_attention(const problem& p, const tokmix::feature_map& f, bool normalize, double eps,
                                      bool causal, const std::vector<double>& S0 = {},
                                      const std::vector<double>& z0 = {}) {
  linear_result r;
  r.o.assign(p.o_size(), 0.0);
  const index_t group = p.Hq / p.Hkv;
  index_t F = 0;
  for (index_t b = 0; b < p.B; ++b)
    for (index_t h = 0; h < p.Hq; ++h) {
      const index_t g = h / group;
      std::vector<std::vector<double>> pk(static_cast<std::size_t>(p.Lk));
      for (index_t j = 0; j < p.Lk; ++j) pk[static_cast<std::size_t>(j)] = phi(f, p.k_at(b, j, g), p.dk);
      for (index_t i = 0; i < p.Lq; ++i) {
        const auto pq = phi(f, p.q_at(b, i, h), p.dk);
        F = static_cast<index_t>(pq.size());
        std::vector<double> num(static_cast<std::size_t>(p.dv), 0.0);
        double den = 0;
        if (!S0.empty()) {
          for (index_t a = 0; a < F; ++a) {
            const double w = pq[static_cast<std::size_t>(a)];
            for (index_t e = 0; e < p.dv; ++e) num[static_cast<std::size_t>(e)] += w * S0[static_cast<std::size_t>(((b * p.Hkv + g) * F + a) * p.dv + e)];
            den += w * z0[static_cast<std::size_t>((b * p.Hkv + g) * F + a)];
          }
        }
        const index_t jmax = causal ? i : p.Lk - 1;
        for (index_t j = 0; j <= jmax; ++j) {
          const double w = dot(pq, pk[static_cast<std::size_t>(j)]);
          const float* vj = p.v_at(b, j, g);
          for (index_t e = 0; e < p.dv; ++e) num[static_cast<std::size_t>(e)] += w * vj[e];
          den += w;
        }
        for (index_t e = 0; e < p.dv; ++e) {
          double val = num[static_cast<std::size_t>(e)];
          if (normalize) val = (den + eps) == 0 ? 0.0 : val / (den + eps);
          r.o[p.o_index(b, i, h) + static_cast<std::size_t>(e)] = val;
        }
      }
    }
  // Final state per kv head.
  if (causal && p.Lk > 0) {
    F = static_cast<index_t>(phi(f, p.k_at(0, 0, 0), p.dk).size());
    r.S = S0.empty() ? std::vector<double>(static_cast<std::size_t>(p.B * p.Hkv * F * p.dv), 0.0) : S0;
    r.z = z0.empty() ? std::vector<double>(static_cast<std::size_t>(p.B * p.Hkv * F), 0.0) : z0;
    for (index_t b = 0; b < p.B; ++b)
      for (index_t g = 0; g < p.Hkv; ++g)
        for (index_t j = 0; j < p.Lk; ++j) {
          const auto pk = phi(f, p.k_at(b, j, g), p.dk);
          const float* vj = p.v_at(b, j, g);
          for (index_t a = 0; a < F; ++a) {
            for (index_t e = 0; e < p.dv; ++e)
              r.S[static_cast<std::size_t>(((b * p.Hkv + g) * F + a) * p.dv + e)] += pk[static_cast<std::size_t>(a)] * vj[e];
            r.z[static_cast<std::size_t>((b * p.Hkv + g) * F + a)] += pk[static_cast<std::size_t>(a)];
          }
        }
  }
  return r;
}

// Softmax attention (no mask or causal), scale * q.k scores.
inline std::vector<double> softmax_attention(const problem& p, double scale, bool causal) {
  std::vector<double> o(p.o_size(), 0.0);
  const index_t group = p.Hq / p.Hkv;
  for (index_t b = 0; b < p.B; ++b)
    for (index_t h = 0; h < p.Hq; ++h)
      for (index_t i = 0; i < p.Lq; ++i) {
        const index_t g = h / group, jmax = causal ? i : p.Lk - 1;
        std::vector<double> s(static_cast<std::size_t>(jmax + 1));
        double mx = -std::numeric_limits<double>::infinity();
        for (index_t j = 0; j <= jmax; ++j) {
          double d = 0;
          for (index_t c = 0; c < p.dk; ++c) d += double(p.q_at(b, i, h)[c]) * p.k_at(b, j, g)[c];
          s[static_cast<std::size_t>(j)] = scale * d;
          mx = std::max(mx, scale * d);
        }
        double den = 0;
        for (auto& x : s) den += (x = std::exp(x - mx));
        for (index_t j = 0; j <= jmax; ++j)
          for (index_t e = 0; e < p.dv; ++e) o[p.o_index(b, i, h) + static_cast<std::size_t>(e)] += s[static_cast<std::size_t>(j)] / den * p.v_at(b, j, g)[e];
      }
  return o;
}

// Kernelized attention with relative positions: w_ij = phi(q_i).phi(k_j) *
// exp(bias[h][j - i + L - 1]), causal: j <= i. bias is [Hq, 2L-1], dense.
inline std::vector<double> kernelized_relpos(const problem& p, const tokmix::feature_map& f,
                                             const std::vector<float>& bias, bool causal, bool normalize, double eps) {
  std::vector<double> o(p.o_size(), 0.0);
  const index_t L = p.Lq, group = p.Hq / p.Hkv;
  for (index_t b = 0; b < p.B; ++b)
    for (index_t h = 0; h < p.Hq; ++h) {
      const index_t g = h / group;
      for (index_t i = 0; i < L; ++i) {
        const auto pq = phi(f, p.q_at(b, i, h), p.dk);
        std::vector<double> num(static_cast<std::size_t>(p.dv), 0.0);
        double den = 0;
        for (index_t j = 0; j < L; ++j) {
          if (causal && j > i) continue;
          const double w = dot(pq, phi(f, p.k_at(b, j, g), p.dk)) *
                           std::exp(double(bias[static_cast<std::size_t>(h * (2 * L - 1) + (j - i + L - 1))]));
          for (index_t e = 0; e < p.dv; ++e) num[static_cast<std::size_t>(e)] += w * p.v_at(b, j, g)[e];
          den += w;
        }
        for (index_t e = 0; e < p.dv; ++e)
          o[p.o_index(b, i, h) + static_cast<std::size_t>(e)] =
              normalize ? ((den + eps) == 0 ? 0.0 : num[static_cast<std::size_t>(e)] / (den + eps)) : num[static_cast<std::size_t>(e)];
      }
    }
  return o;
}

// Row layer norm over the head dim with optional affine (w, bias: [heads, dim] dense, empty = none).
inline std::vector<double> layer_norm_row(const float* x, index_t dim, double eps, const std::vector<float>& w,
                                          const std::vector<float>& bias, index_t head) {
  double mean = 0, var = 0;
  for (index_t i = 0; i < dim; ++i) mean += x[i];
  mean /= double(dim);
  for (index_t i = 0; i < dim; ++i) var += (x[i] - mean) * (x[i] - mean);
  var /= double(dim);
  std::vector<double> y(static_cast<std::size_t>(dim));
  for (index_t i = 0; i < dim; ++i) {
    double v = (x[i] - mean) / std::sqrt(var + eps);
    if (!w.empty()) v *= w[static_cast<std::size_t>(head * dim + i)];
    if (!bias.empty()) v += bias[static_cast<std::size_t>(head * dim + i)];
    y[static_cast<std::size_t>(i)] = v;
  }
  return y;
}

// Galerkin: o = Q (LN(K)^T LN(V)) / Lk; Fourier: o = (LN(Q) LN(K)^T) V / Lk,
// evaluated left to right (the L x L form) to differ from the kernel's order.
struct galerkin_affine {
  std::vector<float> qw, qb, kw, kb, vw, vb;
};
inline std::vector<double> galerkin(const problem& p, bool fourier, double eps, const galerkin_affine& a) {
  std::vector<double> o(p.o_size(), 0.0);
  const index_t group = p.Hq / p.Hkv;
  for (index_t b = 0; b < p.B; ++b)
    for (index_t h = 0; h < p.Hq; ++h) {
      const index_t g = h / group;
      for (index_t i = 0; i < p.Lq; ++i) {
        std::vector<double> qi(p.q_at(b, i, h), p.q_at(b, i, h) + p.dk);
        if (fourier) qi = layer_norm_row(p.q_at(b, i, h), p.dk, eps, a.qw, a.qb, h);
        for (index_t j = 0; j < p.Lk; ++j) {
          const auto kj = layer_norm_row(p.k_at(b, j, g), p.dk, eps, a.kw, a.kb, g);
          std::vector<double> vj(p.v_at(b, j, g), p.v_at(b, j, g) + p.dv);
          if (!fourier) vj = layer_norm_row(p.v_at(b, j, g), p.dv, eps, a.vw, a.vb, g);
          const double s = dot(qi, kj) / double(p.Lk);
          for (index_t e = 0; e < p.dv; ++e) o[p.o_index(b, i, h) + static_cast<std::size_t>(e)] += s * vj[static_cast<std::size_t>(e)];
        }
      }
    }
  return o;
}

}  // namespace linear_ref
}  // namespace tokmix_test
