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
#include <type_traits>

#include "tokmix/core/third_party.hpp"

#include "tokmix/simd/arch.hpp"

TOKMIX_SIMD_AVX512_WARNINGS_OFF
namespace tokmix {
namespace simd {
namespace detail {

// lanes 16-bit patterns, zero-extended to 32 bits. The generic path goes
// through memcpy because Eigen::half and bfloat16 are not uint16_t for
// aliasing purposes; AVX2 and AVX-512 widen in one vpmovzxwd (the generic
// path compiles to scalar moves and a store-forwarding stall there).
template <class Arch>
inline ibatch<Arch> load_u16(const void* p) noexcept {
#if defined(__AVX512F__)
  if constexpr (std::is_base_of<xsimd::avx512f, Arch>::value)
    return _mm512_cvtepu16_epi32(_mm256_loadu_si256(static_cast<const __m256i*>(p)));
#endif
#if defined(__AVX2__)
  if constexpr (std::is_base_of<xsimd::avx2, Arch>::value)
    return _mm256_cvtepu16_epi32(_mm_loadu_si128(static_cast<const __m128i*>(p)));
#endif
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
#if defined(__AVX512F__)
  if constexpr (std::is_base_of<xsimd::avx512f, Arch>::value)
    if (count == w) return _mm256_storeu_si256(static_cast<__m256i*>(p), _mm512_cvtepi32_epi16(v));
#endif
#if defined(__AVX2__)
  if constexpr (std::is_base_of<xsimd::avx2, Arch>::value && !std::is_base_of<xsimd::avx512f, Arch>::value)
    if (count == w) {
      const __m256i low = _mm256_and_si256(v, _mm256_set1_epi32(0xffff));  // packus saturates, so no sign bits
      return _mm_storeu_si128(static_cast<__m128i*>(p), _mm_packus_epi32(_mm256_castsi256_si128(low),
                                                                          _mm256_extracti128_si256(low, 1)));
    }
#endif
  alignas(Arch::alignment()) std::int32_t wide[w];
  v.store_aligned(wide);
  std::uint16_t raw[w];
  for (std::size_t i = 0; i < w; ++i) raw[i] = static_cast<std::uint16_t>(wide[i]);
  std::memcpy(p, raw, count * sizeof(std::uint16_t));
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

// lanes halves at p as floats: one vcvtph2ps where F16C / AVX-512F has it
// (exact, as the generic bit path is), else the generic path.
template <class Arch>
inline fbatch<Arch> load_half_as_float(const void* p) noexcept {
#if defined(__AVX512F__)
  if constexpr (std::is_base_of<xsimd::avx512f, Arch>::value)
    return _mm512_cvtph_ps(_mm256_loadu_si256(static_cast<const __m256i*>(p)));
#endif
#if defined(__F16C__) && defined(__AVX__)
  if constexpr (std::is_base_of<xsimd::avx, Arch>::value && !std::is_base_of<xsimd::avx512f, Arch>::value)
    return _mm256_cvtph_ps(_mm_loadu_si128(static_cast<const __m128i*>(p)));
#endif
  return half_bits_to_float<Arch>(load_u16<Arch>(p));
}

template <class Arch>
inline fbatch<Arch> load_bf16_as_float(const void* p) noexcept {
  return bf16_bits_to_float<Arch>(load_u16<Arch>(p));
}

// Load reads lanes 16-bit values at a pointer as floats; the tail goes
// through a zero-filled copy so nothing past n is read.
template <class Arch, class Load>
inline void widen_kernel(Arch, const void* src, float* dst, index_t n, Load&& load) noexcept {
  constexpr index_t w = lanes<Arch>;
  const char* s = static_cast<const char*>(src);
  index_t i = 0;
  for (; i + w <= n; i += w) load(s + 2 * i).store_unaligned(dst + i);
  if (i < n) {
    std::uint16_t raw[w] = {};
    std::memcpy(raw, s + 2 * i, static_cast<std::size_t>(n - i) * sizeof(std::uint16_t));
    store_partial<Arch>(dst + i, load(raw), n - i);
  }
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
                       [](const void* p) { return detail::load_half_as_float<default_arch>(p); });
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
                       [](const void* p) { return detail::load_bf16_as_float<default_arch>(p); });
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
