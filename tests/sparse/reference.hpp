#pragma once
// Float64 references for the sparse family: softmax attention over an explicit
// visibility predicate (the "equivalent mask" of each exact sparse mixer),
// written from the definition one score at a time, plus the problem buffers
// the tests share. Own namespace (tokmix_test::sparse_ref): test headers of
// other families define similarly named types.

#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "support/compare.hpp"
#include "tokmix/core/tensor_view.hpp"

namespace tokmix_test {
namespace sparse_ref {

using tokmix::index_t;
using tokmix::tensor_view;

struct shape {
  index_t B, Lq, Lk, Hq, Hkv, D, Dv;
};

// q/k/v in NaN-padded buffers, canonical [B, L, H, D] layout.
struct problem {
  shape s;
  nan_padded<float> q, k, v;
  problem(shape s_, unsigned seed, float qamp = 1.f)
      : s(s_), q(s.B * s.Lq * s.Hq * s.D), k(s.B * s.Lk * s.Hkv * s.D), v(s.B * s.Lk * s.Hkv * s.Dv) {
    fill(q.data(), s.B * s.Lq * s.Hq * s.D, seed, qamp);
    fill(k.data(), s.B * s.Lk * s.Hkv * s.D, seed + 1, 1.f);
    fill(v.data(), s.B * s.Lk * s.Hkv * s.Dv, seed + 2, 1.f);
  }
  static void fill(float* p, index_t n, unsigned seed, float amp) {
    const auto r = random_floats(static_cast<std::size_t>(n), seed, -amp, amp);
    for (index_t i = 0; i < n; ++i) p[i] = r[static_cast<std::size_t>(i)];
  }
  tensor_view<const float, 4> qv() const { return {q.data(), {s.B, s.Lq, s.Hq, s.D}}; }
  tensor_view<const float, 4> kv() const { return {k.data(), {s.B, s.Lk, s.Hkv, s.D}}; }
  tensor_view<const float, 4> vv() const { return {v.data(), {s.B, s.Lk, s.Hkv, s.Dv}}; }
  double qa(index_t b, index_t i, index_t h, index_t e) const { return q.data()[((b * s.Lq + i) * s.Hq + h) * s.D + e]; }
  double ka(index_t b, index_t j, index_t h, index_t e) const { return k.data()[((b * s.Lk + j) * s.Hkv + h) * s.D + e]; }
  double va(index_t b, index_t j, index_t h, index_t e) const {
    return v.data()[((b * s.Lk + j) * s.Hkv + h) * s.Dv + e];
  }
  std::size_t o_size() const { return static_cast<std::size_t>(s.B * s.Lq * s.Hq * s.Dv); }
  std::size_t lse_size() const { return static_cast<std::size_t>(s.B * s.Hq * s.Lq); }
};

struct output {
  std::vector<double> o;    // [B, Lq, Hq, Dv]
  std::vector<double> lse;  // [B, Hq, Lq]
};

// visible(b, h, i, j): query head h, query i, key j.
using predicate = std::function<bool(index_t, index_t, index_t, index_t)>;

inline double score(const problem& p, index_t b, index_t h, index_t i, index_t j, double scale, double softcap) {
  const index_t hk = h / (p.s.Hq / p.s.Hkv);
  double dot = 0;
  for (index_t e = 0; e < p.s.D; ++e) dot += p.qa(b, i, h, e) * p.ka(b, j, hk, e);
  double x = scale * dot;
  if (softcap > 0) x = softcap * std::tanh(x / softcap);
  return x;
}

inline output masked_attention(const problem& p, const predicate& visible, double scale = NAN, double softcap = 0) {
  const shape& s = p.s;
  if (std::isnan(scale)) scale = 1.0 / std::sqrt(double(s.D));
  const double ninf = -std::numeric_limits<double>::infinity();
  output r;
  r.o.assign(p.o_size(), 0.0);
  r.lse.assign(p.lse_size(), ninf);
  std::vector<double> w(static_cast<std::size_t>(s.Lk));
  for (index_t b = 0; b < s.B; ++b)
    for (index_t h = 0; h < s.Hq; ++h) {
      const index_t hk = h / (s.Hq / s.Hkv);
      for (index_t i = 0; i < s.Lq; ++i) {
        double mx = ninf;
        for (index_t j = 0; j < s.Lk; ++j) {
          w[j] = visible(b, h, i, j) ? score(p, b, h, i, j, scale, softcap) : ninf;
          mx = std::max(mx, w[j]);
        }
        if (mx == ninf) continue;
        double l = 0;
        for (index_t j = 0; j < s.Lk; ++j) {
          w[j] = w[j] == ninf ? 0.0 : std::exp(w[j] - mx);
          l += w[j];
        }
        for (index_t e = 0; e < s.Dv; ++e) {
          double acc = 0;
          for (index_t j = 0; j < s.Lk; ++j)
            if (w[j] != 0) acc += w[j] * p.va(b, j, hk, e);
          r.o[static_cast<std::size_t>(((b * s.Lq + i) * s.Hq + h) * s.Dv + e)] = acc / l;
        }
        r.lse[static_cast<std::size_t>((b * s.Hq + h) * s.Lq + i)] = mx + std::log(l);
      }
    }
  return r;
}

// Outputs filled with a sentinel (so untouched entries and error paths show).
struct result {
  std::vector<float> o, lse;
  explicit result(const problem& p, float fill = 1e30f) : o(p.o_size(), fill), lse(p.lse_size(), fill) {}
  tensor_view<float, 4> ov(const problem& p) { return {o.data(), {p.s.B, p.s.Lq, p.s.Hq, p.s.Dv}}; }
  tensor_view<float, 3> lv(const problem& p) { return {lse.data(), {p.s.B, p.s.Hq, p.s.Lq}}; }
  bool untouched(float fill = 1e30f) const {
    for (float x : o)
      if (x != fill) return false;
    for (float x : lse)
      if (x != fill) return false;
    return true;
  }
};

#define TOKMIX_SPARSE_CHECK(res, ref, atol, rtol)                                            \
  do {                                                                                       \
    TOKMIX_REQUIRE_CLOSE((res).o.data(), (ref).o.data(), (ref).o.size(), (atol), (rtol));    \
    TOKMIX_REQUIRE_CLOSE((res).lse.data(), (ref).lse.data(), (ref).lse.size(), (atol), (rtol)); \
  } while (0)

}  // namespace sparse_ref
}  // namespace tokmix_test

namespace tokmix_test {
namespace sparse_ref {

// The problem's q/k/v stored as T (fp16/bf16), and the problem holding the rounded values.
template <class T>
struct rounded_copy {
  std::vector<T> q, k, v;
  problem exact;  // same shape, values rounded through T
  explicit rounded_copy(const problem& pr) : exact(pr) {
    auto conv = [](const float* src, std::size_t n, std::vector<T>& dst, float* back) {
      dst.resize(n);
      for (std::size_t i = 0; i < n; ++i) {
        dst[i] = T(src[i]);
        back[i] = float(dst[i]);
      }
    };
    const shape& s = pr.s;
    conv(pr.q.data(), static_cast<std::size_t>(s.B * s.Lq * s.Hq * s.D), q, exact.q.data());
    conv(pr.k.data(), static_cast<std::size_t>(s.B * s.Lk * s.Hkv * s.D), k, exact.k.data());
    conv(pr.v.data(), static_cast<std::size_t>(s.B * s.Lk * s.Hkv * s.Dv), v, exact.v.data());
  }
  tensor_view<const T, 4> qv() const { return {q.data(), {exact.s.B, exact.s.Lq, exact.s.Hq, exact.s.D}}; }
  tensor_view<const T, 4> kv() const { return {k.data(), {exact.s.B, exact.s.Lk, exact.s.Hkv, exact.s.D}}; }
  tensor_view<const T, 4> vv() const { return {v.data(), {exact.s.B, exact.s.Lk, exact.s.Hkv, exact.s.Dv}}; }
};

}  // namespace sparse_ref
}  // namespace tokmix_test
