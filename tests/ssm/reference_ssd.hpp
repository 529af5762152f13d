#pragma once
// float64 references for the Mamba-2 SSD and Hydra tests, written from the
// definitions (token recurrence; Hydra's quasiseparable matrix materialised
// L x L), plus a NaN-padded strided buffer so the kernels' reads and writes
// outside their tensors show up.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

#include "support/compare.hpp"
#include "tokmix/core/tensor_view.hpp"

namespace tokmix_test {
namespace ssd_ref {

struct problem {
  std::size_t batch = 1, seq = 1, heads = 1, head_dim = 1, groups = 1, d_state = 1;
  std::vector<float> x, dt, A, B, C;  // [b,l,h,p], [b,l,h], [h], [b,l,g,n] x2
  std::vector<float> z;               // [b,l,h,p] or empty
  std::vector<float> D;               // [h] or [h,p] or empty
  std::size_t d_cols = 1;             // 1 or head_dim
  std::vector<float> bias;            // [h] or empty
  bool softplus = false;
  float dt_min = 0.f, dt_max = std::numeric_limits<float>::infinity();
  std::vector<std::int32_t> cu;       // varlen offsets or empty

  std::size_t n_states() const { return cu.empty() ? batch : cu.size() - 1; }
  std::size_t group_of(std::size_t h) const { return h / (heads / groups); }
  std::size_t xi(std::size_t b, std::size_t t, std::size_t h, std::size_t p) const {
    return ((b * seq + t) * heads + h) * head_dim + p;
  }
  std::size_t bi(std::size_t b, std::size_t t, std::size_t g, std::size_t n) const {
    return ((b * seq + t) * groups + g) * d_state + n;
  }
  // The step size as the contract defines it, in double.
  double step(std::size_t b, std::size_t t, std::size_t h) const {
    double v = double(dt[(b * seq + t) * heads + h]) + (bias.empty() ? 0.0 : double(bias[h]));
    if (softplus) v = v > 20.0 ? v : std::log1p(std::exp(v));
    return std::min(std::max(v, double(dt_min)), double(dt_max));
  }
  double skip(std::size_t h, std::size_t p) const {
    if (D.empty()) return 0.0;
    return d_cols == 1 ? double(D[h]) : double(D[h * head_dim + p]);
  }
  double gate(std::size_t idx) const {
    if (z.empty()) return 1.0;
    const double v = z[idx];
    return v / (1.0 + std::exp(-v));
  }
};

// h_t = exp(dt A) h_{t-1} + dt x_t B_t^T, y_t = (h_t C_t + D x_t) silu(z_t).
// h: [n_states, heads, head_dim, d_state] in/out; y: [batch, seq, heads, head_dim] out.
inline void ssd(const problem& pr, std::vector<double>& h, std::vector<double>& y) {
  const std::size_t H = pr.heads, P = pr.head_dim, N = pr.d_state;
  y.assign(pr.batch * pr.seq * H * P, 0.0);
  for (std::size_t s = 0; s < pr.n_states(); ++s) {
    const std::size_t b = pr.cu.empty() ? s : 0;
    const std::size_t t0 = pr.cu.empty() ? 0 : std::size_t(pr.cu[s]);
    const std::size_t t1 = pr.cu.empty() ? pr.seq : std::size_t(pr.cu[s + 1]);
    for (std::size_t hd = 0; hd < H; ++hd) {
      const std::size_t g = pr.group_of(hd);
      double* hs = h.data() + (s * H + hd) * P * N;
      for (std::size_t t = t0; t < t1; ++t) {
        const double d = pr.step(b, t, hd);
        const double decay = std::exp(d * double(pr.A[hd]));
        for (std::size_t p = 0; p < P; ++p) {
          const double xv = pr.x[pr.xi(b, t, hd, p)];
          double acc = 0;
          for (std::size_t n = 0; n < N; ++n) {
            double& e = hs[p * N + n];
            e = decay * e + d * xv * double(pr.B[pr.bi(b, t, g, n)]);
            acc += e * double(pr.C[pr.bi(b, t, g, n)]);
          }
          y[pr.xi(b, t, hd, p)] = (acc + pr.skip(hd, p) * xv) * pr.gate(pr.xi(b, t, hd, p));
        }
      }
    }
  }
}

// Hydra's quasiseparable matrix per (batch, head), materialised:
//   M_ij = (C_{i-1} . B_j) dt_j exp(sum_{k=j+1}^{i-1} a_k)  for j < i,
//   M_ij = (C_{i+1} . B_j) dt_j exp(sum_{k=i+1}^{j-1} a_k)  for j > i,
//   M_ii = 0 (the diagonal is D); y = (M x + D x) silu(z).
inline void hydra(const problem& pr, std::vector<double>& y) {
  const std::size_t L = pr.seq, H = pr.heads, P = pr.head_dim, N = pr.d_state;
  y.assign(pr.batch * L * H * P, 0.0);
  std::vector<double> M(L * L), a(L), d(L);
  for (std::size_t b = 0; b < pr.batch; ++b)
    for (std::size_t hd = 0; hd < H; ++hd) {
      const std::size_t g = pr.group_of(hd);
      for (std::size_t t = 0; t < L; ++t) {
        d[t] = pr.step(b, t, hd);
        a[t] = d[t] * double(pr.A[hd]);
      }
      auto cb = [&](std::size_t i, std::size_t j) {
        double s = 0;
        for (std::size_t n = 0; n < N; ++n) s += double(pr.C[pr.bi(b, i, g, n)]) * double(pr.B[pr.bi(b, j, g, n)]);
        return s;
      };
      for (std::size_t i = 0; i < L; ++i)
        for (std::size_t j = 0; j < L; ++j) {
          double v = 0;
          if (j < i) {
            double e = 0;
            for (std::size_t k = j + 1; k < i; ++k) e += a[k];
            v = cb(i - 1, j) * d[j] * std::exp(e);
          } else if (j > i) {
            double e = 0;
            for (std::size_t k = i + 1; k < j; ++k) e += a[k];
            v = cb(i + 1, j) * d[j] * std::exp(e);
          }
          M[i * L + j] = v;
        }
      for (std::size_t i = 0; i < L; ++i)
        for (std::size_t p = 0; p < P; ++p) {
          double acc = 0;
          for (std::size_t j = 0; j < L; ++j) acc += M[i * L + j] * double(pr.x[pr.xi(b, j, hd, p)]);
          const double xv = pr.x[pr.xi(b, i, hd, p)];
          y[pr.xi(b, i, hd, p)] = (acc + pr.skip(hd, p) * xv) * pr.gate(pr.xi(b, i, hd, p));
        }
    }
}

}  // namespace ssd_ref

// A [d0, ..., last] tensor whose rows are `gap` floats apart beyond their
// length, inside a NaN-padded buffer: kernels that read or write outside the
// tensor are caught.
struct ssd_buffer {
  std::vector<std::size_t> dims;
  std::size_t row, gap, rows;
  nan_padded<float> mem;

  explicit ssd_buffer(std::vector<std::size_t> d, std::size_t gap_elems = 0)
      : dims(std::move(d)), row(dims.back()), gap(gap_elems), rows(count_rows(dims)),
        mem(rows * (dims.back() + gap_elems) + 1, 32) {}

  static std::size_t count_rows(const std::vector<std::size_t>& d) {
    std::size_t r = 1;
    for (std::size_t i = 0; i + 1 < d.size(); ++i) r *= d[i];
    return r;
  }
  float* at(std::size_t flat) { return mem.data() + flat / std::max<std::size_t>(row, 1) * (row + gap) + flat % std::max<std::size_t>(row, 1); }
  void fill(const std::vector<float>& v) {
    for (std::size_t i = 0; i < v.size(); ++i) *at(i) = v[i];
  }
  std::vector<float> dense() {
    std::vector<float> v(rows * row);
    for (std::size_t i = 0; i < v.size(); ++i) v[i] = *at(i);
    return v;
  }
  template <int R>
  tokmix::tensor_view<float, R> view() {
    typename tokmix::tensor_view<float, R>::shape_type sh{}, st{};
    std::ptrdiff_t s = 1;
    for (int i = R - 1; i >= 0; --i) {
      sh[i] = static_cast<std::ptrdiff_t>(dims[i]);
      st[i] = s;
      s *= (i == R - 1) ? static_cast<std::ptrdiff_t>(row + gap) : static_cast<std::ptrdiff_t>(dims[i]);
    }
    return tokmix::tensor_view<float, R>(mem.data(), sh, st);
  }
  template <int R>
  tokmix::tensor_view<const float, R> cview() {
    return view<R>();
  }
  bool pads_untouched() const {
    std::vector<char> inside(mem.storage.size(), 0);
    for (std::size_t r = 0; r < rows; ++r)
      for (std::size_t i = 0; i < row; ++i) inside[mem.pad + r * (row + gap) + i] = 1;
    for (std::size_t i = 0; i < inside.size(); ++i)
      if (!inside[i] && !std::isnan(mem.storage[i])) return false;
    return true;
  }
};

}  // namespace tokmix_test
