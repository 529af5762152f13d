#pragma once
// fp16 / bf16 storage <-> fp32 compute, for inputs and KV caches kept in 16
// bits. Widening sits on the decode path (every K/V byte is widened once per
// step), so both directions run on xsimd integer batches rather than element
// by element through Eigen's scalar types; the results are bit-identical to
// Eigen's conversions except that NaN payloads are not preserved (NaN stays NaN).
//
// ref: IEEE 754-2008 binary16; F. Giesen, "Half to float done quick" (2012)
//      for the exponent-rebias and round-to-nearest-even bit tricks.

#include <cstdint>
#include <cstring>

#include "tokmix/core/third_party.hpp"

#include "tokmix/simd/arch.hpp"

TOKMIX_SIMD_AVX512_WARNINGS_OFF
namespace tokmix {
namespace simd {
namespace detail {

// lanes 16-bit patterns, zero-extended to 32 bits. memcpy because Eigen::half
// and bfloat16 are not uint16_t for aliasing purposes; the compiler emits one
// load and a widening move.
template <class Arch>
inline ibatch<Arch> load_u16(const void* p) noexcept {
  constexpr std::size_t w = ibatch<Arch>::size;
  std::uint16_t raw[w];
  std::memcpy(raw, p, sizeof(raw));
  alignas(Arch::alignment()) std::int32_t wide[w];
  for (std::size_t i = 0; i < w; ++i) wide[i] = raw[i];
  return ibatch<Arch>::load_aligned(wide);
}

// Low 16 bits of each lane, count <= lanes of them.
template <class Arch>
inline void store_u16(void* p, const ibatch<Arch>& v, std::size_t count) noexcept {
  constexpr std::size_t w = ibatch<Arch>::size;
  alignas(Arch::alignment()) std::int32_t wide[w];
  v.store_aligned(wide);
  std::uint16_t raw[w];
  for (std::size_t i = 0; i < w; ++i) raw[i] = static_cast<std::uint16_t>(wide[i]);
  std::memcpy(p, raw, count * sizeof(std::uint16_t));
}

template <class Arch>
inline ibatch<Arch> load_u16_partial(const void* p, std::size_t count) noexcept {
  constexpr std::size_t w = ibatch<Arch>::size;
  std::uint16_t raw[w] = {};
  std::memcpy(raw, p, count * sizeof(std::uint16_t));
  return load_u16<Arch>(raw);
}

template <class Arch>
inline fbatch<Arch> half_bits_to_float(const ibatch<Arch>& h) noexcept {
  using ib = ibatch<Arch>;
  using fb = fbatch<Arch>;
  const ib em = h & ib(0x7fff);
  const ib sign = (h & ib(0x8000)) << 16;
  // Rebias the exponent (15 -> 127) for normals; inf/NaN need it pushed to 255.
  ib bits = (em << 13) + ib(112 << 23);
  bits = blend_bits<Arch>(less_mask<Arch>(ib(0x7bff), em), bits + ib(112 << 23), bits);  // em >= 0x7c00
  // Subnormal halves are m * 2^-24: exact through an int -> float conversion.
  const fb sub = xsimd::to_float(em) * fb(5.9604644775390625e-8f);
  bits = blend_bits<Arch>(less_mask<Arch>(em, ib(0x0400)), xsimd::bitwise_cast<ib>(sub), bits);
  return xsimd::bitwise_cast<fb>(bits | sign);
}

template <class Arch>
inline ibatch<Arch> float_to_half_bits(const fbatch<Arch>& f) noexcept {
  using ib = ibatch<Arch>;
  using fb = fbatch<Arch>;
  const ib u = xsimd::bitwise_cast<ib>(f);
  const ib sign = (u >> 16) & ib(0x8000);
  const ib a = u & ib(0x7fffffff);
  // Normal halves: rebias and round to nearest even on the 13 dropped bits
  // (a carry into the exponent, up to inf, is the correct rounding).
  const ib odd = (a >> 13) & ib(1);
  const ib normal = (a + ib(-(112 << 23) + 0xfff) + odd) >> 13;
  // Subnormal halves: adding 0.5 puts the value on the half-subnormal grid
  // (ulp(0.5) = 2^-24) and the FPU rounds to nearest even for us.
  const ib sub = xsimd::bitwise_cast<ib>(xsimd::bitwise_cast<fb>(a) + fb(0.5f)) - ib(0x3f000000);
  const ib big = blend_bits<Arch>(less_mask<Arch>(ib(0x7f800000), a), ib(0x7e00), ib(0x7c00));  // NaN : inf
  ib h = blend_bits<Arch>(less_mask<Arch>(a, ib(113 << 23)), sub, normal);
  h = blend_bits<Arch>(less_mask<Arch>(ib((143 << 23) - 1), a), big, h);  // |f| >= 65536, inf, NaN
  return h | sign;
}

template <class Arch>
inline fbatch<Arch> bf16_bits_to_float(const ibatch<Arch>& h) noexcept {
  return xsimd::bitwise_cast<fbatch<Arch>>(h << 16);
}

template <class Arch>
inline ibatch<Arch> float_to_bf16_bits(const fbatch<Arch>& f) noexcept {
  using ib = ibatch<Arch>;
  const ib u = xsimd::bitwise_cast<ib>(f);
  // Round to nearest even on the low 16 bits; only the low 16 bits of the
  // result are stored, so the arithmetic shift is as good as a logical one.
  const ib rounded = (u + ib(0x7fff) + ((u >> 16) & ib(1))) >> 16;
  const ib quiet_nan = ((u >> 16) & ib(0x8000)) | ib(0x7fc0);
  return blend_bits<Arch>(less_mask<Arch>(ib(0x7f800000), u & ib(0x7fffffff)), quiet_nan, rounded);
}

template <class Arch, class ToFloat>
inline void widen_kernel(Arch, const void* src, float* dst, index_t n, ToFloat&& to_float) noexcept {
  constexpr index_t w = lanes<Arch>;
  const char* s = static_cast<const char*>(src);
  index_t i = 0;
  for (; i + w <= n; i += w) to_float(load_u16<Arch>(s + 2 * i)).store_unaligned(dst + i);
  if (i < n) store_partial<Arch>(dst + i, to_float(load_u16_partial<Arch>(s + 2 * i, static_cast<std::size_t>(n - i))), n - i);
}

template <class Arch, class FromFloat>
inline void narrow_kernel(Arch, const float* src, void* dst, index_t n, FromFloat&& from_float) noexcept {
  constexpr index_t w = lanes<Arch>;
  char* d = static_cast<char*>(dst);
  index_t i = 0;
  for (; i + w <= n; i += w) store_u16<Arch>(d + 2 * i, from_float(fbatch<Arch>::load_unaligned(src + i)), w);
  if (i < n) store_u16<Arch>(d + 2 * i, from_float(load_partial<Arch>(src + i, n - i, 0.f)), static_cast<std::size_t>(n - i));
}

inline void require_convert(const void* src, const void* dst, index_t n) {
  require_length("n", n);
  require_data("src", src, n);
  require_data("dst", dst, n);
}

}  // namespace detail

static_assert(sizeof(Eigen::half) == 2 && sizeof(Eigen::bfloat16) == 2, "16-bit storage types must be 2 bytes");

// fp16 -> fp32, exact (every half is a float).
inline void convert(const Eigen::half* src, float* dst, index_t n) {
  detail::require_convert(src, dst, n);
  detail::widen_kernel(default_arch{}, src, dst, n,
                       [](const ibatch<default_arch>& h) { return detail::half_bits_to_float<default_arch>(h); });
}

// fp32 -> fp16, round to nearest even; beyond the half range -> +-inf; NaN -> NaN.
inline void convert(const float* src, Eigen::half* dst, index_t n) {
  detail::require_convert(src, dst, n);
  detail::narrow_kernel(default_arch{}, src, dst, n,
                        [](const fbatch<default_arch>& f) { return detail::float_to_half_bits<default_arch>(f); });
}

// bf16 -> fp32, exact.
inline void convert(const Eigen::bfloat16* src, float* dst, index_t n) {
  detail::require_convert(src, dst, n);
  detail::widen_kernel(default_arch{}, src, dst, n,
                       [](const ibatch<default_arch>& h) { return detail::bf16_bits_to_float<default_arch>(h); });
}

// fp32 -> bf16, round to nearest even (overflow rounds to +-inf); NaN -> quiet NaN.
inline void convert(const float* src, Eigen::bfloat16* dst, index_t n) {
  detail::require_convert(src, dst, n);
  detail::narrow_kernel(default_arch{}, src, dst, n,
                        [](const fbatch<default_arch>& f) { return detail::float_to_bf16_bits<default_arch>(f); });
}

// fp32 -> fp32 copy, so code templated on the storage type can always call convert.
inline void convert(const float* src, float* dst, index_t n) {
  detail::require_convert(src, dst, n);
  if (n > 0 && src != dst) std::memmove(dst, src, static_cast<std::size_t>(n) * sizeof(float));
}

}  // namespace simd
}  // namespace tokmix
TOKMIX_SIMD_AVX512_WARNINGS_ON
