#pragma once
// float64 references for the SSM kernels, written straight from the
// recurrences (mamba_ssm selective_scan_ref, causal_conv1d_ref) with no
// blocking, vectorisation or reordering, so a kernel bug cannot hide in a
// shared helper. Dense row-major arrays, double state carried in and out.

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "support/compare.hpp"
#include "tokmix/core/tensor_view.hpp"

namespace tokmix_test {
namespace ssm_ref {

inline double silu(double x) { return x / (1.0 + std::exp(-x)); }
// torch.nn.functional.softplus with its default threshold 20.
inline double softplus(double x) { return x > 20.0 ? x : std::log1p(std::exp(x)); }

// x, out: [batch, seq, channels]; w: [channels, width]; bias: [channels] or
// empty; hist: [batch, width-1, channels], oldest first, updated in place.
inline void conv1d(const std::vector<float>& x, std::size_t batch, std::size_t seq, std::size_t channels,
                   const std::vector<float>& w, std::size_t width, const std::vector<float>& bias, bool act_silu,
                   std::vector<double>& hist, std::vector<double>& out) {
  out.assign(batch * seq * channels, 0.0);
  const std::size_t h = width - 1;
  for (std::size_t b = 0; b < batch; ++b)
    for (std::size_t c = 0; c < channels; ++c) {
      // The full input stream of this channel: history then x.
      std::vector<double> s(h + seq);
      for (std::size_t k = 0; k < h; ++k) s[k] = hist[(b * h + k) * channels + c];
      for (std::size_t t = 0; t < seq; ++t) s[h + t] = x[(b * seq + t) * channels + c];
      for (std::size_t t = 0; t < seq; ++t) {
        double acc = bias.empty() ? 0.0 : bias[c];
        for (std::size_t k = 0; k < width; ++k) acc += double(w[c * width + k]) * s[t + k];
        out[(b * seq + t) * channels + c] = act_silu ? silu(acc) : acc;
      }
      for (std::size_t k = 0; k < h; ++k) hist[(b * h + k) * channels + c] = s[seq + k];
    }
}

struct scan_problem {
  std::size_t batch = 1, seq = 1, d_inner = 1, d_state = 1, groups = 1;
  std::vector<float> u, delta, z;  // [batch, seq, d_inner]; z may be empty
  std::vector<float> A;            // [d_inner, d_state]
  std::vector<float> B, C;         // [batch, seq, groups, d_state]
  std::vector<float> D, bias;      // [d_inner] or empty
  bool softplus = false;
  std::vector<std::int32_t> cu;  // [n_seqs + 1] or empty
};

// h: [n_states, d_inner, d_state] (n_states = batch, or n_seqs with cu), in/out.
// y: [batch, seq, d_inner].
inline void selective_scan(const scan_problem& p, std::vector<double>& h, std::vector<double>& y) {
  const std::size_t L = p.seq, Dn = p.d_inner, N = p.d_state, G = p.groups, per_group = Dn / G;
  y.assign(p.batch * L * Dn, 0.0);
  std::vector<std::size_t> starts, ends, bidx;
  if (p.cu.empty()) {
    for (std::size_t b = 0; b < p.batch; ++b) {
      starts.push_back(0);
      ends.push_back(L);
      bidx.push_back(b);
    }
  } else {
    for (std::size_t s = 0; s + 1 < p.cu.size(); ++s) {
      starts.push_back(static_cast<std::size_t>(p.cu[s]));
      ends.push_back(static_cast<std::size_t>(p.cu[s + 1]));
      bidx.push_back(0);
    }
  }
  for (std::size_t s = 0; s < starts.size(); ++s) {
    const std::size_t b = bidx[s];
    for (std::size_t t = starts[s]; t < ends[s]; ++t)
      for (std::size_t d = 0; d < Dn; ++d) {
        const std::size_t i = (b * L + t) * Dn + d, g = d / per_group;
        double dt = p.delta[i] + (p.bias.empty() ? 0.0 : double(p.bias[d]));
        if (p.softplus) dt = softplus(dt);
        double acc = 0.0;
        for (std::size_t n = 0; n < N; ++n) {
          const std::size_t bc = ((b * L + t) * G + g) * N + n;
          double& hv = h[(s * Dn + d) * N + n];
          hv = std::exp(dt * double(p.A[d * N + n])) * hv + dt * double(p.B[bc]) * double(p.u[i]);
          acc += double(p.C[bc]) * hv;
        }
        if (!p.D.empty()) acc += double(p.D[d]) * double(p.u[i]);
        if (!p.z.empty()) acc *= silu(p.z[i]);
        y[i] = acc;
      }
  }
}

}  // namespace ssm_ref

// A row-major array stored with `gap` extra NaN elements after each row of its
// last dimension and NaN padding around it: views over it have a non-dense
// token stride, and any over-read or over-write shows up as NaN / a changed pad.
struct ssm_buffer {
  std::vector<std::size_t> dims;
  std::size_t row, gap, rows;
  nan_padded<float> mem;

  ssm_buffer(std::vector<std::size_t> d, std::size_t gap_elems = 0)
      : dims(std::move(d)), row(dims.back()), gap(gap_elems), rows(count_rows(dims)),
        mem(rows * (dims.back() + gap_elems) + 1, 32) {}

  static std::size_t count_rows(const std::vector<std::size_t>& d) {
    std::size_t r = 1;
    for (std::size_t i = 0; i + 1 < d.size(); ++i) r *= d[i];
    return r;
  }
  float* at(std::size_t flat) { return mem.data() + flat / row * (row + gap) + flat % row; }
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
  // Every element outside the array (pads and gaps) is still NaN.
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
