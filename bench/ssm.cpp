// State-space mixers against the loops CPU users run today: the Mamba-1 scan
// vs a scalar-expf loop of the same recurrence (what mamba_ssm's reference and
// ggml's ssm_scan do per element), the causal conv1d vs the read bandwidth and
// a plain loop, and per-token step latency of both.
#include <cmath>
#include <cstddef>
#include <string>
#include <vector>

#include "common.hpp"
#include "tokmix/ssm.hpp"

namespace {

using tokmix::index_t;

std::vector<float> uniform(std::size_t n, unsigned seed, float lo, float hi) {
  std::vector<float> v(n);
  unsigned s = seed * 2654435761u + 1;
  for (auto& x : v) {
    s = s * 1664525u + 1013904223u;
    x = lo + (hi - lo) * static_cast<float>(s >> 8) / 16777216.f;
  }
  return v;
}

// A Mamba-1 layer's scan inputs (all options on, as the model runs it).
struct scan_data {
  index_t batch, seq, d_inner, d_state;
  std::vector<float> u, delta, z, A, B, C, D, bias, y;
  scan_data(index_t b, index_t l, index_t d, index_t n) : batch(b), seq(l), d_inner(d), d_state(n) {
    const std::size_t nx = static_cast<std::size_t>(b * l * d), nbc = static_cast<std::size_t>(b * l * n);
    u = uniform(nx, 1, -1.f, 1.f);
    delta = uniform(nx, 2, -4.f, 1.f);
    z = uniform(nx, 3, -3.f, 3.f);
    A = uniform(static_cast<std::size_t>(d * n), 4, -1.f, 2.f);
    for (float& a : A) a = -std::exp(a);
    B = uniform(nbc, 5, -1.f, 1.f);
    C = uniform(nbc, 6, -1.f, 1.f);
    D = uniform(static_cast<std::size_t>(d), 7, -1.f, 1.f);
    bias = uniform(static_cast<std::size_t>(d), 8, -1.f, 0.5f);
    y.assign(nx, 0.f);
  }
  // 2 FMA + 2 mul per (token, channel, state) element; the exp is not counted.
  double flops() const { return 6.0 * static_cast<double>(batch * seq * d_inner * d_state); }
};

// The per-element loop with one scalar std::exp per state element, in the same
// channel-last layout (the cost model of ggml's ssm_scan and mamba's reference).
void scalar_expf_scan(scan_data& s, std::vector<float>& h) {
  const index_t L = s.seq, Dn = s.d_inner, N = s.d_state;
  for (index_t b = 0; b < s.batch; ++b)
    for (index_t t = 0; t < L; ++t)
      for (index_t d = 0; d < Dn; ++d) {
        const std::size_t i = static_cast<std::size_t>((b * L + t) * Dn + d);
        float dt = s.delta[i] + s.bias[static_cast<std::size_t>(d)];
        dt = dt > 20.f ? dt : std::log1p(std::exp(dt));
        const float dtu = dt * s.u[i];
        const float* Bt = &s.B[static_cast<std::size_t>((b * L + t) * N)];
        const float* Ct = &s.C[static_cast<std::size_t>((b * L + t) * N)];
        float* hd = &h[static_cast<std::size_t>((b * Dn + d) * N)];
        const float* Ad = &s.A[static_cast<std::size_t>(d * N)];
        float acc = 0.f;
        for (index_t n = 0; n < N; ++n) {
          hd[n] = std::exp(dt * Ad[n]) * hd[n] + dtu * Bt[n];
          acc += Ct[n] * hd[n];
        }
        acc += s.D[static_cast<std::size_t>(d)] * s.u[i];
        const float zi = s.z[i];
        s.y[i] = acc * zi / (1.f + std::exp(-zi));
      }
}

void bm_scan(benchmark::State& state, index_t d_inner, index_t d_state, index_t seq, int threads, bool scalar) {
  scan_data s(1, seq, d_inner, d_state);
  tokmix::selective_scan_state st(1, d_inner, d_state);
  std::vector<float> h(static_cast<std::size_t>(d_inner * d_state), 0.f);
  tokmix::selective_scan_params prm;
  prm.D = tokmix::tensor_view<const float, 1>(s.D.data(), {d_inner});
  prm.delta_bias = tokmix::tensor_view<const float, 1>(s.bias.data(), {d_inner});
  prm.delta_softplus = true;
  prm.policy = tokmix::exec_policy::threads(threads);
  const tokmix::tensor_view<const float, 3> u(s.u.data(), {1, seq, d_inner}), dl(s.delta.data(), {1, seq, d_inner}),
      z(s.z.data(), {1, seq, d_inner});
  const tokmix::tensor_view<const float, 2> A(s.A.data(), {d_inner, d_state});
  const tokmix::tensor_view<const float, 4> B(s.B.data(), {1, seq, 1, d_state}), C(s.C.data(), {1, seq, 1, d_state});
  const tokmix::tensor_view<float, 3> y(s.y.data(), {1, seq, d_inner});
  for (auto _ : state) {
    if (scalar) {
      scalar_expf_scan(s, h);
      benchmark::DoNotOptimize(h.data());
    } else {
      // The state keeps evolving across iterations: same work, no reset needed.
      tokmix::selective_scan_prefill(u, dl, A, B, C, z, st, y, prm);
    }
    benchmark::DoNotOptimize(s.y.data());
    benchmark::ClobberMemory();
  }
  tokmix_bench::set_gflops(state, s.flops(), threads);
}

// One iteration = one token, so the time column is the per-token latency.
// a_by_channel: A handed over as a view of a [d_state, d_inner] buffer, which
// the kernel reads in place (the decode-friendly layout; mamba's [d_inner,
// d_state] is transposed on every call).
void bm_scan_step(benchmark::State& state, index_t d_inner, index_t d_state, int threads, bool scalar,
                  bool a_by_channel) {
  scan_data s(1, 1, d_inner, d_state);
  tokmix::selective_scan_state st(1, d_inner, d_state);
  std::vector<float> h(static_cast<std::size_t>(d_inner * d_state), 0.f);
  tokmix::selective_scan_params prm;
  prm.D = tokmix::tensor_view<const float, 1>(s.D.data(), {d_inner});
  prm.delta_bias = tokmix::tensor_view<const float, 1>(s.bias.data(), {d_inner});
  prm.delta_softplus = true;
  prm.policy = tokmix::exec_policy::threads(threads);
  const tokmix::tensor_view<const float, 2> u(s.u.data(), {1, d_inner}), dl(s.delta.data(), {1, d_inner}),
      z(s.z.data(), {1, d_inner});
  std::vector<float> a_t(s.A.size());
  for (index_t d = 0; d < d_inner; ++d)
    for (index_t n = 0; n < d_state; ++n)
      a_t[static_cast<std::size_t>(n * d_inner + d)] = s.A[static_cast<std::size_t>(d * d_state + n)];
  const tokmix::tensor_view<const float, 2> A =
      a_by_channel ? tokmix::tensor_view<const float, 2>(a_t.data(), {d_inner, d_state}, {1, d_inner})
                   : tokmix::tensor_view<const float, 2>(s.A.data(), {d_inner, d_state});
  const tokmix::tensor_view<const float, 3> B(s.B.data(), {1, 1, d_state}), C(s.C.data(), {1, 1, d_state});
  const tokmix::tensor_view<float, 2> y(s.y.data(), {1, d_inner});
  for (auto _ : state) {
    if (scalar) scalar_expf_scan(s, h);
    else tokmix::selective_scan_step(u, dl, A, B, C, z, st, y, prm);
    benchmark::DoNotOptimize(s.y.data());
    benchmark::ClobberMemory();
  }
  tokmix_bench::set_gflops(state, s.flops(), threads);
}

// Plain triple loop, channel-last, the same arithmetic as the kernel.
void naive_conv1d(const std::vector<float>& x, const std::vector<float>& w, const std::vector<float>& bias,
                  std::vector<float>& out, index_t seq, index_t channels, index_t width) {
  for (index_t t = 0; t < seq; ++t)
    for (index_t c = 0; c < channels; ++c) {
      float acc = bias[static_cast<std::size_t>(c)];
      for (index_t k = 0; k < width; ++k) {
        const index_t ts = t - (width - 1) + k;
        if (ts >= 0) acc += w[static_cast<std::size_t>(c * width + k)] * x[static_cast<std::size_t>(ts * channels + c)];
      }
      out[static_cast<std::size_t>(t * channels + c)] = acc / (1.f + std::exp(-acc));
    }
}

void bm_conv1d(benchmark::State& state, index_t channels, index_t width, index_t seq, int threads, bool naive) {
  const auto x = uniform(static_cast<std::size_t>(seq * channels), 11, -2.f, 2.f);
  const auto w = uniform(static_cast<std::size_t>(channels * width), 12, -1.f, 1.f);
  const auto bias = uniform(static_cast<std::size_t>(channels), 13, -1.f, 1.f);
  std::vector<float> out(x.size());
  tokmix::conv1d_state st(1, channels, width);
  tokmix::conv1d_options opts;
  opts.silu = true;
  opts.policy = tokmix::exec_policy::threads(threads);
  const tokmix::tensor_view<const float, 3> xv(x.data(), {1, seq, channels});
  const tokmix::tensor_view<const float, 2> wv(w.data(), {channels, width});
  const tokmix::tensor_view<const float, 1> bv(bias.data(), {channels});
  const tokmix::tensor_view<float, 3> ov(out.data(), {1, seq, channels});
  for (auto _ : state) {
    if (naive) naive_conv1d(x, w, bias, out, seq, channels, width);
    else tokmix::conv1d_prefill(xv, wv, bv, st, ov, opts);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  // x read once and out written once: the traffic floor.
  tokmix_bench::set_gbps(state, 2.0 * static_cast<double>(x.size() * sizeof(float)), threads);
}

// One iteration = one token. w_by_channel: taps as a view of a [width,
// channels] buffer, read in place (otherwise transposed on every call).
void bm_conv1d_step(benchmark::State& state, index_t channels, index_t width, bool w_by_channel) {
  const auto x = uniform(static_cast<std::size_t>(channels), 21, -2.f, 2.f);
  const auto w = uniform(static_cast<std::size_t>(channels * width), 22, -1.f, 1.f);
  const auto bias = uniform(static_cast<std::size_t>(channels), 23, -1.f, 1.f);
  std::vector<float> out(x.size()), w_t(w.size());
  for (index_t c = 0; c < channels; ++c)
    for (index_t k = 0; k < width; ++k)
      w_t[static_cast<std::size_t>(k * channels + c)] = w[static_cast<std::size_t>(c * width + k)];
  const tokmix::tensor_view<const float, 2> wv =
      w_by_channel ? tokmix::tensor_view<const float, 2>(w_t.data(), {channels, width}, {1, channels})
                   : tokmix::tensor_view<const float, 2>(w.data(), {channels, width});
  tokmix::conv1d_state st(1, channels, width);
  tokmix::conv1d_options opts;
  opts.silu = true;
  for (auto _ : state) {
    tokmix::conv1d_step(tokmix::tensor_view<const float, 2>(x.data(), {1, channels}), wv,
                        tokmix::tensor_view<const float, 1>(bias.data(), {channels}), st,
                        tokmix::tensor_view<float, 2>(out.data(), {1, channels}), opts);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  // Per token: x, out, weights, bias and the state read + written.
  const double bytes = sizeof(float) * static_cast<double>(channels * (2 + width + 1 + 2 * (width - 1)));
  tokmix_bench::set_gbps(state, bytes, 1);
}

const bool registered = [] {
  auto reg = [](const std::string& name, auto fn, auto... args) {
    tokmix_bench::defaults(benchmark::RegisterBenchmark(name.c_str(), fn, args...));
  };
  const index_t d_inner = 1536, n = 16, seq = 512;
  const std::string scan = "mamba1_scan/d_inner:1536/N:16/L:512/B:1/threads:";
  for (int threads : {1, 2}) reg(scan + std::to_string(threads) + "/tokmix", bm_scan, d_inner, n, seq, threads, false);
  reg(scan + "1/scalar_expf", bm_scan, d_inner, n, seq, 1, true);
  for (bool by_channel : {false, true}) {
    const std::string step = std::string("mamba1_step/d_inner:1536/N:16/B:1/A:") +
                             (by_channel ? "by_channel" : "mamba") + "/threads:";
    for (int threads : {1, 2})
      reg(step + std::to_string(threads) + "/tokmix", bm_scan_step, d_inner, n, threads, false, by_channel);
    reg(step + "1/scalar_expf", bm_scan_step, d_inner, n, 1, true, by_channel);
  }

  for (index_t L : {index_t(512), index_t(8192)}) {
    const std::string conv = "conv1d/d_inner:1536/width:4/L:" + std::to_string(L) + "/B:1/threads:";
    for (int threads : {1, 2}) reg(conv + std::to_string(threads) + "/tokmix", bm_conv1d, d_inner, 4, L, threads, false);
    reg(conv + "1/naive", bm_conv1d, d_inner, 4, L, 1, true);
  }
  reg("conv1d_step/d_inner:1536/width:4/B:1/w:mamba/threads:1/tokmix", bm_conv1d_step, d_inner, 4, false);
  reg("conv1d_step/d_inner:1536/width:4/B:1/w:by_channel/threads:1/tokmix", bm_conv1d_step, d_inner, 4, true);
  return true;
}();

}  // namespace
