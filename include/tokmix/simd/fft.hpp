#pragma once
// Real linear convolution by FFT, shared by the mixers that need a long
// Toeplitz product (kernelized attention with relative positions, long-conv
// SSM filters): O(N log N) instead of O(n_signal * n_filter).
//
// Backend: Eigen's unsupported FFT module with its default kissfft backend.
// It is header-only and installed with Eigen (no new dependency), keeps one
// twiddle plan per size inside the FFT object (so a reused fft_convolver never
// re-plans), and has a real-input path that runs a half-size complex FFT when
// the size is a multiple of 4. Plan sizes are therefore 4 * 2^a 3^b 5^c, the
// radices kissfft has butterflies for. Measured on this Zen 3 (shared, noisy):
// a causal convolution of two 1000-long sequences (three real transforms of
// size 2000) takes ~0.14 ms against ~1.7 ms for the direct sum, 4096-long
// ones ~1 ms against ~37 ms; break-even is near 100 x 100, so smaller
// problems take the direct sum. FFTW would be faster per transform but is
// GPL and not header-only; the O(N log N) scaling is what the mixers need.
//
// ref: Cooley & Tukey 1965; the convolution theorem with zero padding to
//      avoid circular wrap-around (e.g. Oppenheim & Schafer, "Discrete-Time
//      Signal Processing", sec. 8.7).
//
// Not thread-safe: an fft_convolver holds scratch and plans; use one per
// thread (fft_convolve() keeps a thread_local one).

#include <algorithm>
#include <complex>
#include <cstddef>
#include <string>
#include <vector>

#include "tokmix/core/third_party.hpp"

TOKMIX_SIMD_AVX512_WARNINGS_OFF
#include <unsupported/Eigen/FFT>
TOKMIX_SIMD_AVX512_WARNINGS_ON

#include "tokmix/core/error.hpp"
#include "tokmix/core/tensor_view.hpp"

namespace tokmix {
namespace simd {

// Smallest size >= n of the form 4 * 2^a 3^b 5^c (kissfft's fast real path).
inline index_t fft_good_size(index_t n) {
  require(n >= 0, "fft_good_size n", ">= 0", n);
  const index_t want = std::max<index_t>(1, (n + 3) / 4);
  index_t best = 1;
  while (best < want) best *= 2;
  for (index_t p5 = 1; p5 < best; p5 *= 5)
    for (index_t p35 = p5; p35 < best; p35 *= 3) {
      index_t s = p35;
      while (s < want) s *= 2;
      best = std::min(best, s);
    }
  return 4 * best;
}

class fft_convolver {
 public:
  // allow_direct: let tiny problems use the direct sum (tests turn it off to
  // exercise the FFT path at every size).
  explicit fft_convolver(bool allow_direct = true) : allow_direct_(allow_direct) {
    fft_.SetFlag(Eigen::FFT<float>::HalfSpectrum);
    fft_.SetFlag(Eigen::FFT<float>::Unscaled);  // 1/N is folded into the filter spectrum
  }

  // Window of the full linear convolution:
  //   out[t] = sum_j signal[j] * filter[t + out_offset - j],  t in [0, n_out)
  // (filter index outside [0, n_filter) contributes 0). out_offset = 0 and
  // n_out = n_signal is the causal convolution; out_offset = n_filter - 1
  // reads a "valid"/Toeplitz window. out must not overlap the inputs.
  void convolve(const float* signal, index_t n_signal, const float* filter, index_t n_filter, float* out,
                index_t n_out, index_t out_offset = 0) {
    convolve_batch(1, signal, 0, n_signal, filter, 0, n_filter, out, 0, n_out, out_offset);
  }

  // `count` convolutions: signal i at signals + i*signal_stride, filter i at
  // filters + i*filter_stride, output i at out + i*out_stride. filter_stride 0
  // shares one filter, whose spectrum is then computed once.
  void convolve_batch(index_t count, const float* signals, index_t signal_stride, index_t n_signal,
                      const float* filters, index_t filter_stride, index_t n_filter, float* out, index_t out_stride,
                      index_t n_out, index_t out_offset = 0) {
    require(count >= 0, "fft_convolver count", ">= 0", count);
    require(n_signal >= 0, "fft_convolver n_signal", ">= 0", n_signal);
    require(n_filter >= 0, "fft_convolver n_filter", ">= 0", n_filter);
    require(n_out >= 0, "fft_convolver n_out", ">= 0", n_out);
    require(out_offset >= 0, "fft_convolver out_offset", ">= 0", out_offset);
    require(signal_stride >= 0 && filter_stride >= 0 && out_stride >= 0, "fft_convolver strides", "all >= 0",
            std::to_string(signal_stride) + ", " + std::to_string(filter_stride) + ", " + std::to_string(out_stride));
    if (count == 0 || n_out == 0) return;
    require(out != nullptr, "fft_convolver out", "a non-null pointer", "nullptr");
    require(count == 1 || out_stride >= n_out, "fft_convolver out_stride", ">= n_out = " + std::to_string(n_out),
            out_stride);
    const bool empty = n_signal == 0 || n_filter == 0;
    require(empty || signals != nullptr, "fft_convolver signal", "a non-null pointer", "nullptr");
    require(empty || filters != nullptr, "fft_convolver filter", "a non-null pointer", "nullptr");

    // Only outputs below the full length n_signal + n_filter - 1 can be nonzero.
    const index_t full = empty ? 0 : n_signal + n_filter - 1;
    const index_t n_live = std::max<index_t>(0, std::min(n_out, full - out_offset));
    for (index_t i = 0; i < count; ++i) std::fill(out + i * out_stride + n_live, out + i * out_stride + n_out, 0.f);
    if (n_live == 0) return;

    // Direct cost ~ n_live * taps MACs; FFT ~ (2 or 3 transforms) * 2.5 N log2 N flops.
    const index_t taps = std::min(n_signal, n_filter);
    if (allow_direct_ && (taps <= 32 || n_live * taps <= 16384)) {
      for (index_t i = 0; i < count; ++i)
        direct(signals + i * signal_stride, n_signal, filters + i * filter_stride, n_filter, out + i * out_stride,
               n_live, out_offset);
      return;
    }

    // Circular size: indices [out_offset, out_offset + n_live) must not be hit
    // by the wrap-around of index + N, i.e. N >= full - out_offset, and must lie
    // below N.
    const index_t n_fft = fft_good_size(std::max(full - out_offset, out_offset + n_live));
    const index_t n_half = n_fft / 2 + 1;
    buf_.resize(static_cast<std::size_t>(n_fft));
    sspec_.resize(static_cast<std::size_t>(n_half));
    fspec_.resize(static_cast<std::size_t>(n_half));
    const float inv_n = 1.f / static_cast<float>(n_fft);
    for (index_t i = 0; i < count; ++i) {
      if (i == 0 || filter_stride != 0) spectrum(filters + i * filter_stride, n_filter, n_fft, fspec_.data(), inv_n);
      spectrum(signals + i * signal_stride, n_signal, n_fft, sspec_.data(), 1.f);
      for (index_t f = 0; f < n_half; ++f) {
        const std::complex<float> a = sspec_[static_cast<std::size_t>(f)], b = fspec_[static_cast<std::size_t>(f)];
        // Spelled out: std::complex operator* goes through __mulsc3's NaN checks.
        sspec_[static_cast<std::size_t>(f)] =
            std::complex<float>(a.real() * b.real() - a.imag() * b.imag(), a.real() * b.imag() + a.imag() * b.real());
      }
      fft_.inv(buf_.data(), sspec_.data(), n_fft);
      std::copy(buf_.data() + out_offset, buf_.data() + out_offset + n_live, out + i * out_stride);
    }
  }

 private:
  void spectrum(const float* x, index_t n, index_t n_fft, std::complex<float>* dst, float scale) {
    const index_t m = std::min(n, n_fft);
    if (scale == 1.f) std::copy(x, x + m, buf_.data());
    else
      for (index_t t = 0; t < m; ++t) buf_[static_cast<std::size_t>(t)] = scale * x[t];
    std::fill(buf_.data() + m, buf_.data() + n_fft, 0.f);
    fft_.fwd(dst, buf_.data(), n_fft);
  }

  static void direct(const float* s, index_t ns, const float* f, index_t nf, float* out, index_t n_live,
                     index_t offset) {
    for (index_t t = 0; t < n_live; ++t) {
      const index_t n = t + offset;
      const index_t j0 = std::max<index_t>(0, n - (nf - 1)), j1 = std::min(ns - 1, n);
      float acc = 0.f;
      for (index_t j = j0; j <= j1; ++j) acc += s[j] * f[n - j];
      out[t] = acc;
    }
  }

  bool allow_direct_;
  Eigen::FFT<float> fft_;
  std::vector<float> buf_;
  std::vector<std::complex<float>> sspec_, fspec_;
};

// Causal convolution of two length-n sequences: out[t] = sum_{j<=t} signal[j] * filter[t-j].
// Uses a per-thread fft_convolver, so repeated sizes reuse their plans.
inline void fft_convolve(const float* signal, const float* filter, float* out, index_t n) {
  thread_local fft_convolver conv;
  conv.convolve(signal, n, filter, n, out, n, 0);
}

}  // namespace simd
}  // namespace tokmix
