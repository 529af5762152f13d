#pragma once
// Diagonal linear time-invariant SSMs (S4D, LRU) as token mixers. Being time
// invariant, a prefill is a causal convolution with K_k = Re(sum_n C_n
// Lambda_n^k B_n), applied by FFT; decode is the recurrence. Both work on one
// lti_state, so a prefill can be continued by steps or by another prefill.
//
// ref: Gu, Gupta, Goel & Re, "On the Parameterization and Initialization of
//      Diagonal State Space Models" (S4D, 2022), sec. 3 (Vandermonde kernel,
//      ZOH discretisation); Orvieto et al., "Resurrecting Recurrent Neural
//      Networks for Long Sequences" (LRU, 2023), sec. 3 (exponential
//      parameterisation, gamma normalisation).
//
// Per channel (head) h and state n, complex diagonal:
//   s_t = Lambda s_{t-1} + B u_t,   y_t = Re(sum_n C_n s_t[n]) + D u_t.
// (S4D's conjugate-pair convention y = 2 Re(...) is the caller's factor 2 in C.)
//
// Kernel and final state without an O(L N) chain of float multiplications
// (whose error grows with L): Lambda^k = Lambda^{64 q} Lambda^j with k = 64 q
// + j; the 64 q powers come from a float64 chain, the j powers are a float
// table, so each of K, the free response and the final state is a [L/64, N] x
// [N, 64] matrix product (simd/gemm) plus float64 bookkeeping on L/64 rows.

#include <algorithm>
#include <cmath>
#include <complex>
#include <string>
#include <vector>

#include "tokmix/core/third_party.hpp"
#include "tokmix/simd/arch.hpp"

#include "tokmix/core/error.hpp"
#include "tokmix/core/tensor_view.hpp"
#include "tokmix/core/threading.hpp"
#include "tokmix/simd/fft.hpp"
#include "tokmix/simd/gemm.hpp"

TOKMIX_SIMD_AVX512_WARNINGS_OFF
namespace tokmix {

// Discretised parameters, real and imaginary parts apart (SIMD over n).
struct lti_params {
  tensor_view<const float, 2> lambda_re, lambda_im;  // [heads, state]
  tensor_view<const float, 2> b_re, b_im;            // [heads, state] (B_bar)
  tensor_view<const float, 2> c_re, c_im;            // [heads, state]
  tensor_view<const float, 1> d;                     // [heads], or empty for none
};

// Owning discretised system, as produced by s4d_zoh / lru_params.
struct lti_system {
  index_t heads = 0, state = 0;
  std::vector<float> lambda_re, lambda_im, b_re, b_im, c_re, c_im, d;

  lti_params params() const {
    auto m = [&](const std::vector<float>& v) { return tensor_view<const float, 2>(v.data(), {heads, state}); };
    return {m(lambda_re), m(lambda_im), m(b_re),      m(b_im), m(c_re), m(c_im),
            d.empty() ? tensor_view<const float, 1>() : tensor_view<const float, 1>(d.data(), {heads})};
  }
};

namespace detail {

inline void lti_require_finite_2d(const char* name, const tensor_view<const float, 2>& v) {
  for (index_t i = 0; i < v.dim(0); ++i)
    for (index_t j = 0; j < v.dim(1); ++j) require(std::isfinite(v(i, j)), name, "finite values", v(i, j));
}

inline void lti_require_pair(const char* name, const tensor_view<const float, 2>& v, index_t h, index_t n) {
  require_layout(name, v);
  require_shape(name, v, {h, n});
  lti_require_finite_2d(name, v);
}

// (e^z - 1) / z in float64 without cancellation near z = 0.
inline std::complex<double> lti_expm1_over(std::complex<double> z) {
  if (std::abs(z) < 1e-4) return 1.0 + z / 2.0 + z * z / 6.0;
  const double s = std::sin(z.imag() / 2);
  const std::complex<double> em1(std::expm1(z.real()) * std::cos(z.imag()) - 2 * s * s,
                                 std::exp(z.real()) * std::sin(z.imag()));
  return em1 / z;
}

}  // namespace detail

// S4D with zero-order hold (Gu et al. 2022, eq. for ZOH):
//   Lambda = exp(dt A),  B_bar = (exp(dt A) - 1) / A * B  (= dt B as A -> 0),
// evaluated in float64. A needs Re(A) <= 0 (a stable system), dt > 0.
inline lti_system s4d_zoh(tensor_view<const float, 2> a_re, tensor_view<const float, 2> a_im,  // [heads, state]
                          tensor_view<const float, 2> b_re, tensor_view<const float, 2> b_im,  // [heads, state]
                          tensor_view<const float, 2> c_re, tensor_view<const float, 2> c_im,  // [heads, state]
                          tensor_view<const float, 1> dt,                                      // [heads]
                          tensor_view<const float, 1> d) {                                     // [heads], or empty
  const index_t H = a_re.dim(0), N = a_re.dim(1);
  for (auto* p : {&a_re, &a_im, &b_re, &b_im, &c_re, &c_im}) detail::lti_require_pair("s4d parameter", *p, H, N);
  require_layout("dt", dt);
  require_shape("dt", dt, {H});
  for (index_t h = 0; h < H; ++h) require(std::isfinite(dt(h)) && dt(h) > 0, "dt", "finite and > 0", dt(h));
  for (index_t h = 0; h < H; ++h)
    for (index_t n = 0; n < N; ++n) require(a_re(h, n) <= 0, "a_re", "<= 0 (stable)", a_re(h, n));
  if (d.data() != nullptr) {
    require_layout("d", d);
    require_shape("d", d, {H});
    for (index_t h = 0; h < H; ++h) require(std::isfinite(d(h)), "d", "finite values", d(h));
  }
  lti_system s;
  s.heads = H;
  s.state = N;
  for (auto* v : {&s.lambda_re, &s.lambda_im, &s.b_re, &s.b_im, &s.c_re, &s.c_im})
    v->resize(static_cast<std::size_t>(H * N));
  for (index_t h = 0; h < H; ++h)
    for (index_t n = 0; n < N; ++n) {
      const std::size_t i = static_cast<std::size_t>(h * N + n);
      const std::complex<double> z = double(dt(h)) * std::complex<double>(a_re(h, n), a_im(h, n));
      const std::complex<double> lam = std::exp(z);
      const std::complex<double> bb = double(dt(h)) * detail::lti_expm1_over(z) * std::complex<double>(b_re(h, n), b_im(h, n));
      s.lambda_re[i] = float(lam.real());
      s.lambda_im[i] = float(lam.imag());
      s.b_re[i] = float(bb.real());
      s.b_im[i] = float(bb.imag());
      s.c_re[i] = c_re(h, n);
      s.c_im[i] = c_im(h, n);
    }
  if (d.data() != nullptr)
    for (index_t h = 0; h < H; ++h) s.d.push_back(d(h));
  return s;
}

// LRU (Orvieto et al. 2023): Lambda = exp(-exp(nu) + i exp(theta)),
// B_bar = gamma * B with gamma = sqrt(1 - |Lambda|^2), in float64.
inline lti_system lru_params(tensor_view<const float, 2> nu_log, tensor_view<const float, 2> theta_log,  // [heads, state]
                             tensor_view<const float, 2> b_re, tensor_view<const float, 2> b_im,          // [heads, state]
                             tensor_view<const float, 2> c_re, tensor_view<const float, 2> c_im,          // [heads, state]
                             tensor_view<const float, 1> d) {                                             // [heads], or empty
  const index_t H = nu_log.dim(0), N = nu_log.dim(1);
  for (auto* p : {&nu_log, &theta_log, &b_re, &b_im, &c_re, &c_im}) detail::lti_require_pair("lru parameter", *p, H, N);
  if (d.data() != nullptr) {
    require_layout("d", d);
    require_shape("d", d, {H});
    for (index_t h = 0; h < H; ++h) require(std::isfinite(d(h)), "d", "finite values", d(h));
  }
  lti_system s;
  s.heads = H;
  s.state = N;
  for (auto* v : {&s.lambda_re, &s.lambda_im, &s.b_re, &s.b_im, &s.c_re, &s.c_im})
    v->resize(static_cast<std::size_t>(H * N));
  for (index_t h = 0; h < H; ++h)
    for (index_t n = 0; n < N; ++n) {
      const std::size_t i = static_cast<std::size_t>(h * N + n);
      const double mag_log = -std::exp(double(nu_log(h, n))), ang = std::exp(double(theta_log(h, n)));
      const double mag = std::exp(mag_log);
      // 1 - |Lambda|^2 = -expm1(2 log|Lambda|): exact for |Lambda| near 1.
      const double gamma = std::sqrt(-std::expm1(2 * mag_log));
      s.lambda_re[i] = float(mag * std::cos(ang));
      s.lambda_im[i] = float(mag * std::sin(ang));
      s.b_re[i] = float(gamma * b_re(h, n));
      s.b_im[i] = float(gamma * b_im(h, n));
      s.c_re[i] = c_re(h, n);
      s.c_im[i] = c_im(h, n);
    }
  if (d.data() != nullptr)
    for (index_t h = 0; h < H; ++h) s.d.push_back(d(h));
  return s;
}

// Complex state per sequence, head and state index; zeros = the sequence
// starts at t = 0.
class lti_state {
 public:
  lti_state() : lti_state(0, 0, 0) {}
  lti_state(index_t batch, index_t heads, index_t state) {
    require(batch >= 0 && heads >= 0 && state >= 0, "lti_state sizes", "all >= 0",
            std::to_string(batch) + ", " + std::to_string(heads) + ", " + std::to_string(state));
    re_.resize(batch, heads, state);
    im_.resize(batch, heads, state);
    reset();
  }
  index_t batch() const { return re_.dimension(0); }
  index_t heads() const { return re_.dimension(1); }
  index_t state() const { return re_.dimension(2); }
  void reset() {
    re_.setZero();
    im_.setZero();
  }
  tensor_view<float, 3> re() { return as_view(re_); }  // [batch, heads, state]
  tensor_view<float, 3> im() { return as_view(im_); }  // [batch, heads, state]
  tensor_view<const float, 3> re() const { return as_view(re_); }
  tensor_view<const float, 3> im() const { return as_view(im_); }

 private:
  Eigen::Tensor<float, 3, Eigen::RowMajor> re_, im_;
};

enum class lti_path { automatic, fft, recurrent };

// `automatic` takes the FFT path when N > lti_fft_min_state_per_log2 *
// log2(2L). Measured here (bench/lti.cpp, H = 256, one thread): the
// recurrence costs ~0.7 ns per token and state, the FFT path ~7 ns per token
// and log2(2L) (three real transforms per head dominate; the kernel and the
// final state are small matrix products), so at N = 64 the recurrence is
// faster at every L and the FFT pays off only for N above ~10 log2(2L).
constexpr double lti_fft_min_state_per_log2 = 10.0;

struct lti_options {
  lti_path path = lti_path::automatic;
  exec_policy policy;
};

namespace detail {

constexpr index_t lti_block = 64;
constexpr index_t lti_head_block = 16;

inline void lti_validate(const tensor_view<const float, 3>& u, const lti_params& p, const lti_state* st,
                         const tensor_view<float, 3>& y) {
  require_layout("u", u);
  require_layout("y", y);
  const index_t H = u.dim(2), N = p.lambda_re.dim(1);
  lti_require_pair("lambda_re", p.lambda_re, H, N);
  lti_require_pair("lambda_im", p.lambda_im, H, N);
  lti_require_pair("b_re", p.b_re, H, N);
  lti_require_pair("b_im", p.b_im, H, N);
  lti_require_pair("c_re", p.c_re, H, N);
  lti_require_pair("c_im", p.c_im, H, N);
  for (index_t h = 0; h < H; ++h)
    for (index_t n = 0; n < N; ++n) {
      const double m = std::hypot(double(p.lambda_re(h, n)), double(p.lambda_im(h, n)));
      require(m <= 1.0 + 1e-6, "|lambda|", "<= 1 (a stable system)", m);
    }
  if (p.d.data() != nullptr) {
    require_layout("d", p.d);
    require_shape("d", p.d, {H});
    for (index_t h = 0; h < H; ++h) require(std::isfinite(p.d(h)), "d", "finite values", p.d(h));
  }
  require_shape<float, 3>("y", y, u.dims());
  if (st) {
    require(st->batch() == u.dim(0), "state batch", u.dim(0), st->batch());
    require(st->heads() == H, "state heads", H, st->heads());
    require(st->state() == N, "state size", N, st->state());
  }
}

// Recurrence over tokens of one (batch, head), u and y strided by token; the
// state vector (re/im, n-contiguous) is updated in place.
template <class Arch>
inline void lti_recurrent_row(Arch, const float* u, index_t u_step, float* y, index_t y_step, index_t L, const float* lr, const float* li,
                              const float* br, const float* bi, const float* cr, const float* ci, float d, index_t N,
                              float* sr, float* si) {
  using batch = simd::fbatch<Arch>;
  constexpr index_t S = simd::lanes<Arch>;
  const index_t full = N / S * S;
  for (index_t t = 0; t < L; ++t) {
    const float ut = u[t * u_step];
    const batch uv(ut);
    batch acc(0.f);
    for (index_t n = 0; n < full; n += S) {
      const batch a = batch::load_unaligned(sr + n), b = batch::load_unaligned(si + n);
      const batch Lr = batch::load_unaligned(lr + n), Li = batch::load_unaligned(li + n);
      const batch nr = xsimd::fma(batch::load_unaligned(br + n), uv, xsimd::fms(Lr, a, Li * b));
      const batch ni = xsimd::fma(batch::load_unaligned(bi + n), uv, xsimd::fma(Lr, b, Li * a));
      nr.store_unaligned(sr + n);
      ni.store_unaligned(si + n);
      acc = xsimd::fma(batch::load_unaligned(cr + n), nr, acc);
      acc = xsimd::fnma(batch::load_unaligned(ci + n), ni, acc);
    }
    float tail = 0.f;
    for (index_t n = full; n < N; ++n) {
      const float nr = br[n] * ut + (lr[n] * sr[n] - li[n] * si[n]);
      const float ni = bi[n] * ut + (lr[n] * si[n] + li[n] * sr[n]);
      sr[n] = nr;
      si[n] = ni;
      tail += cr[n] * nr - ci[n] * ni;
    }
    y[t * y_step] = (full ? xsimd::hadd(acc) : 0.f) + tail + d * ut;
  }
}

// Per-head tables for the blocked powers: Lambda^j (j <= 64) and Lambda^{64 q}
// (q <= ceil(L/64)), float64; plus Lambda^j for j < 64 in float as a [2N, 64]
// matrix (real parts in rows [0, N), imaginary in [N, 2N)) for the products.
struct lti_powers {
  index_t N = 0, nq = 0;
  std::vector<std::complex<double>> small;  // [65][N]
  std::vector<std::complex<double>> big;    // [nq + 1][N]
  std::vector<float> table;                 // [2N, 64]
  std::vector<float> table_t;               // [64, 2N], the transpose

  void build(const float* lr, const float* li, index_t n_state, index_t L) {
    N = n_state;
    nq = (L + lti_block - 1) / lti_block;
    small.assign(static_cast<std::size_t>((lti_block + 1) * N), 1.0);
    for (index_t j = 1; j <= lti_block; ++j)
      for (index_t n = 0; n < N; ++n)
        small[static_cast<std::size_t>(j * N + n)] =
            small[static_cast<std::size_t>((j - 1) * N + n)] * std::complex<double>(lr[n], li[n]);
    big.assign(static_cast<std::size_t>((nq + 1) * N), 1.0);
    for (index_t q = 1; q <= nq; ++q)
      for (index_t n = 0; n < N; ++n)
        big[static_cast<std::size_t>(q * N + n)] =
            big[static_cast<std::size_t>((q - 1) * N + n)] * small[static_cast<std::size_t>(lti_block * N + n)];
    table.resize(static_cast<std::size_t>(2 * N * lti_block));
    for (index_t n = 0; n < N; ++n)
      for (index_t j = 0; j < lti_block; ++j) {
        const std::complex<double> v = small[static_cast<std::size_t>(j * N + n)];
        table[static_cast<std::size_t>(n * lti_block + j)] = float(v.real());
        table[static_cast<std::size_t>((N + n) * lti_block + j)] = float(v.imag());
      }
    table_t.resize(table.size());
    for (index_t r = 0; r < 2 * N; ++r)
      for (index_t j = 0; j < lti_block; ++j)
        table_t[static_cast<std::size_t>(j * 2 * N + r)] = table[static_cast<std::size_t>(r * lti_block + j)];
  }
  std::complex<double> pow(index_t k, index_t n) const {  // Lambda_n^k, k <= 64 nq
    return big[static_cast<std::size_t>((k / lti_block) * N + n)] * small[static_cast<std::size_t>((k % lti_block) * N + n)];
  }
};

// out[k] = Re(sum_n w_n Lambda_n^k) for k < 64 nq (out has that many floats):
// rows q of [Re(w Lambda^{64q}), -Im(w Lambda^{64q})] times the power table.
inline void lti_power_sums(const lti_powers& pw, const std::complex<double>* w, float* out, std::vector<float>& g) {
  const index_t N = pw.N, nq = pw.nq;
  g.resize(static_cast<std::size_t>(nq * 2 * N));
  for (index_t q = 0; q < nq; ++q)
    for (index_t n = 0; n < N; ++n) {
      const std::complex<double> v = w[n] * pw.big[static_cast<std::size_t>(q * N + n)];
      g[static_cast<std::size_t>(q * 2 * N + n)] = float(v.real());
      g[static_cast<std::size_t>(q * 2 * N + N + n)] = float(-v.imag());
    }
  simd::gemm_nn(nq, lti_block, 2 * N, 1.f, g.data(), 2 * N, pw.table.data(), lti_block, 0.f, out, lti_block);
}

// out[n] = sum_k Lambda_n^{L-1-k} u[k] (u contiguous, length L), float64:
// u reversed in rows of 64 times the power table transposed, then the rows
// weighted by Lambda^{64 q}.
inline void lti_input_sums(const lti_powers& pw, const float* u, index_t L, std::complex<double>* out,
                           std::vector<float>& ur, std::vector<float>& q_mat) {
  const index_t N = pw.N, nq = pw.nq;
  ur.resize(static_cast<std::size_t>(nq * lti_block));
  for (index_t q = 0; q < nq; ++q)
    for (index_t j = 0; j < lti_block; ++j) {
      const index_t k = L - 1 - (q * lti_block + j);
      ur[static_cast<std::size_t>(q * lti_block + j)] = k >= 0 ? u[k] : 0.f;
    }
  q_mat.resize(static_cast<std::size_t>(nq * 2 * N));
  simd::gemm_nn(nq, 2 * N, lti_block, 1.f, ur.data(), lti_block, pw.table_t.data(), 2 * N, 0.f, q_mat.data(), 2 * N);
  for (index_t n = 0; n < N; ++n) out[n] = 0.0;
  for (index_t q = 0; q < nq; ++q)
    for (index_t n = 0; n < N; ++n)
      out[n] += pw.big[static_cast<std::size_t>(q * N + n)] *
                std::complex<double>(q_mat[static_cast<std::size_t>(q * 2 * N + n)],
                                     q_mat[static_cast<std::size_t>(q * 2 * N + N + n)]);
}

struct lti_worker {
  simd::fft_convolver conv{false};
  lti_powers pw;
  std::vector<float> g, ur, q_mat;
  std::vector<float> sig, res, kern, free_resp;
  std::vector<std::complex<double>> w;
};

template <class Arch>
inline void lti_kernel(Arch arch, const tensor_view<const float, 3>& u, const lti_params& p, lti_state* st,
                       const tensor_view<float, 3>& y, const lti_options& opts) {
  const index_t nb = u.dim(0), L = u.dim(1), H = u.dim(2), N = p.lambda_re.dim(1);
  if (nb == 0 || L == 0 || H == 0) return;
  auto prow = [&](const tensor_view<const float, 2>& v, index_t h) { return v.ptr(h, 0); };
  const bool recurrent =
      opts.path == lti_path::recurrent ||
      (opts.path == lti_path::automatic && double(N) <= lti_fft_min_state_per_log2 * std::log2(2.0 * double(L)));
  if (recurrent) {
    // A work item is a block of heads of one sequence, walked token-major: a
    // token reads one short stretch of u and y and the block's states stay in
    // L1 (one head per item walked the [L, H] rows one float at a time and
    // missed the cache on every token once L * H left it). Without a state the
    // recurrence still needs one: per-worker zeros.
    const int slots = worker_slots(opts.policy);
    std::vector<std::vector<float>> tmp(static_cast<std::size_t>(slots));
    // Few blocks (each re-walks every row of u), but at most 64 heads so the
    // block's states (64 KB at N = 64) stay near L1: 64 measured faster than
    // both 16 and all 256 heads at H = 256, L = 4096 and 65536.
    const index_t want = std::max<index_t>(1, std::min<index_t>(slots, (H + lti_head_block - 1) / lti_head_block));
    const index_t span = std::min<index_t>(
        4 * lti_head_block, ((H + want - 1) / want + lti_head_block - 1) / lti_head_block * lti_head_block);
    const index_t n_blocks = (H + span - 1) / span;
    parallel_for(opts.policy, nb * n_blocks, [&](index_t item, int w) {
      const index_t b = item / n_blocks, h0 = (item % n_blocks) * span;
      const index_t nh = std::min(span, H - h0);
      auto& t = tmp[static_cast<std::size_t>(w)];
      if (!st) t.assign(static_cast<std::size_t>(2 * N * nh), 0.f);
      auto sre = [&](index_t c) { return st ? st->re().ptr(b, h0 + c, 0) : t.data() + 2 * N * c; };
      auto sim = [&](index_t c) { return st ? st->im().ptr(b, h0 + c, 0) : t.data() + 2 * N * c + N; };
      for (index_t tok = 0; tok < L; ++tok)
        for (index_t c = 0; c < nh; ++c) {
          const index_t h = h0 + c;
          lti_recurrent_row(arch, u.ptr(b, tok, h), 0, y.ptr(b, tok, h), 0, 1, prow(p.lambda_re, h),
                            prow(p.lambda_im, h), prow(p.b_re, h), prow(p.b_im, h), prow(p.c_re, h), prow(p.c_im, h),
                            p.d.data() ? p.d(h) : 0.f, N, sre(c), sim(c));
        }
    });
    return;
  }

  // FFT path, a work item = a block of heads over the whole batch.
  const int slots = worker_slots(opts.policy);
  std::vector<lti_worker> workers(static_cast<std::size_t>(slots));
  const index_t n_blocks = (H + lti_head_block - 1) / lti_head_block;
  parallel_for(opts.policy, n_blocks, [&](index_t blk, int wid) {
    lti_worker& wk = workers[static_cast<std::size_t>(wid)];
    const index_t h0 = blk * lti_head_block, nh = std::min(lti_head_block, H - h0), per_h = nb * L;
    wk.sig.resize(static_cast<std::size_t>(nh * per_h));
    wk.res.resize(static_cast<std::size_t>(nh * per_h));
    wk.w.resize(static_cast<std::size_t>(N));
    for (index_t b = 0; b < nb; ++b)
      for (index_t t = 0; t < L; ++t) {
        const float* row = u.ptr(b, t, h0);
        for (index_t c = 0; c < nh; ++c) wk.sig[static_cast<std::size_t>(c * per_h + b * L + t)] = row[c];
      }
    for (index_t c = 0; c < nh; ++c) {
      const index_t h = h0 + c;
      const float *lr = prow(p.lambda_re, h), *li = prow(p.lambda_im, h);
      wk.pw.build(lr, li, N, L);
      wk.kern.resize(static_cast<std::size_t>(wk.pw.nq * lti_block));
      for (index_t n = 0; n < N; ++n)
        wk.w[static_cast<std::size_t>(n)] = std::complex<double>(p.c_re(h, n), p.c_im(h, n)) *
                                            std::complex<double>(p.b_re(h, n), p.b_im(h, n));
      if (N > 0) lti_power_sums(wk.pw, wk.w.data(), wk.kern.data(), wk.g);
      else std::fill(wk.kern.begin(), wk.kern.end(), 0.f);
      float* sg = wk.sig.data() + c * per_h;
      float* rs = wk.res.data() + c * per_h;
      wk.conv.convolve_batch(nb, sg, L, L, wk.kern.data(), 0, L, rs, L, L, 0);
      const float dd = p.d.data() ? p.d(h) : 0.f;
      for (index_t i = 0; i < per_h; ++i) rs[i] += dd * sg[i];
      if (!st || N == 0) continue;
      for (index_t b = 0; b < nb; ++b) {
        float* sr = st->re().ptr(b, h, 0);
        float* si = st->im().ptr(b, h, 0);
        // Free response of s_0: Re(sum_n C_n Lambda_n^{t+1} s_0[n]).
        bool nonzero = false;
        for (index_t n = 0; n < N; ++n) nonzero |= sr[n] != 0.f || si[n] != 0.f;
        if (nonzero) {
          for (index_t n = 0; n < N; ++n)
            wk.w[static_cast<std::size_t>(n)] = std::complex<double>(p.c_re(h, n), p.c_im(h, n)) *
                                                std::complex<double>(sr[n], si[n]) * std::complex<double>(lr[n], li[n]);
          wk.free_resp.resize(static_cast<std::size_t>(wk.pw.nq * lti_block));
          lti_power_sums(wk.pw, wk.w.data(), wk.free_resp.data(), wk.g);
          for (index_t t = 0; t < L; ++t) rs[b * L + t] += wk.free_resp[static_cast<std::size_t>(t)];
        }
        // s_L = Lambda^L s_0 + B sum_k Lambda^{L-1-k} u_k.
        lti_input_sums(wk.pw, sg + b * L, L, wk.w.data(), wk.ur, wk.q_mat);
        for (index_t n = 0; n < N; ++n) {
          const std::complex<double> s = wk.pw.pow(L, n) * std::complex<double>(sr[n], si[n]) +
                                         std::complex<double>(p.b_re(h, n), p.b_im(h, n)) * wk.w[static_cast<std::size_t>(n)];
          sr[n] = float(s.real());
          si[n] = float(s.imag());
        }
      }
    }
    for (index_t b = 0; b < nb; ++b)
      for (index_t t = 0; t < L; ++t) {
        float* row = y.ptr(b, t, h0);
        for (index_t c = 0; c < nh; ++c) row[c] = wk.res[static_cast<std::size_t>(c * per_h + b * L + t)];
      }
  });
}

}  // namespace detail

// Prefill from a zero state (nothing kept). `y` must not overlap `u`.
inline void lti_forward(tensor_view<const float, 3> u,  // [batch, seq, heads]
                        const lti_params& params, tensor_view<float, 3> y,  // [batch, seq, heads]
                        const lti_options& opts = {}) {
  detail::lti_validate(u, params, nullptr, y);
  detail::lti_kernel(simd::default_arch{}, u, params, nullptr, y, opts);
}

// Continues from `state` and leaves s_L in it: prefill(L1) then prefill(L2)
// equals prefill(L1 + L2) equals L1 + L2 steps (to rounding).
inline void lti_prefill(tensor_view<const float, 3> u,  // [batch, seq, heads]
                        const lti_params& params, lti_state& state,
                        tensor_view<float, 3> y,  // [batch, seq, heads]
                        const lti_options& opts = {}) {
  detail::lti_validate(u, params, &state, y);
  detail::lti_kernel(simd::default_arch{}, u, params, &state, y, opts);
}

// One token per sequence: the recurrence.
inline void lti_step(tensor_view<const float, 2> u,  // [batch, heads]
                     const lti_params& params, lti_state& state,
                     tensor_view<float, 2> y,  // [batch, heads]
                     const lti_options& opts = {}) {
  require_layout("u", u);
  require_layout("y", y);
  const tensor_view<const float, 3> u3(u.data(), {u.dim(0), 1, u.dim(1)}, {u.stride(0), u.stride(0), u.stride(1)});
  const tensor_view<float, 3> y3(y.data(), {y.dim(0), 1, y.dim(1)}, {y.stride(0), y.stride(0), y.stride(1)});
  detail::lti_validate(u3, params, &state, y3);
  lti_options o = opts;
  o.path = lti_path::recurrent;
  detail::lti_kernel(simd::default_arch{}, u3, params, &state, y3, o);
}

}  // namespace tokmix
TOKMIX_SIMD_AVX512_WARNINGS_ON
