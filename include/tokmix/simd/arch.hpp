#pragma once
// One place that names the SIMD target and the batch types, so every kernel
// spells them the same way and a tail can reuse the full-batch code through a
// padded load instead of a second, scalar implementation of the same formula.

#include <cstddef>
#include <cstdint>

#include "tokmix/core/third_party.hpp"

TOKMIX_SIMD_AVX512_WARNINGS_OFF
#include <xsimd/xsimd.hpp>
TOKMIX_SIMD_AVX512_WARNINGS_ON

#include "tokmix/core/tensor_view.hpp"

// TOKMIX_SIMD_AVX512_WARNINGS_OFF/ON: see core/third_party.hpp.

TOKMIX_SIMD_AVX512_WARNINGS_OFF
namespace tokmix {
namespace simd {

// The best instruction set enabled at compile time: fma3<avx2> with -march=native
// on Zen 3, avx512bw on AVX-512 hosts, sse2 without -march flags.
using default_arch = xsimd::default_arch;

template <class Arch>
using fbatch = xsimd::batch<float, Arch>;
template <class Arch>
using ibatch = xsimd::batch<std::int32_t, Arch>;

template <class Arch>
inline constexpr index_t lanes = static_cast<index_t>(fbatch<Arch>::size);

namespace detail {

// Array primitives take a pointer and a length; a negative length is a caller
// bug that would otherwise silently do nothing.
inline void require_length(const char* argument, index_t n) {
  require(n >= 0, argument, "a length >= 0", n);
}

inline void require_data(const char* argument, const void* p, index_t n) {
  require(p != nullptr || n == 0, argument, "a non-null pointer when the length is > 0", "nullptr");
}

// Integer lane selection without xsimd::select: xsimd 8.1's AVX-512BW select on
// integer batches does not compile at -O0 (GCC's blend intrinsics are macros
// there whose casts reject xsimd's batch class), and users build Debug too.
// `mask` lanes are 0 or all ones.
template <class Arch>
inline ibatch<Arch> blend_bits(const ibatch<Arch>& mask, const ibatch<Arch>& if_set, const ibatch<Arch>& if_clear) noexcept {
  return (if_set & mask) | (if_clear & ~mask);
}

// All ones where x < y; the caller guarantees x - y does not overflow.
template <class Arch>
inline ibatch<Arch> less_mask(const ibatch<Arch>& x, const ibatch<Arch>& y) noexcept {
  return (x - y) >> 31;  // arithmetic shift of the sign bit
}

// n < lanes floats, the rest of the batch set to `fill` (the identity of the
// reduction that follows, or a harmless value for an elementwise map).
template <class Arch>
inline fbatch<Arch> load_partial(const float* p, index_t n, float fill) noexcept {
  alignas(Arch::alignment()) float buf[fbatch<Arch>::size];
  for (index_t i = 0; i < lanes<Arch>; ++i) buf[i] = i < n ? p[i] : fill;
  return fbatch<Arch>::load_aligned(buf);
}

template <class Arch>
inline void store_partial(float* p, const fbatch<Arch>& v, index_t n) noexcept {
  alignas(Arch::alignment()) float buf[fbatch<Arch>::size];
  v.store_aligned(buf);
  for (index_t i = 0; i < n; ++i) p[i] = buf[i];
}

// Applies a batch function elementwise over [0, n): two batches per iteration
// so the out-of-order core sees two independent dependency chains, then one
// batch, then a padded tail (so every element goes through the same batch code
// and the result does not depend on its position in the array).
template <class Arch, class F>
inline void map_unary(Arch, const float* x, float* y, index_t n, F&& f) noexcept {
  constexpr index_t w = lanes<Arch>;
  index_t i = 0;
  for (; i + 2 * w <= n; i += 2 * w) {
    const fbatch<Arch> a = f(fbatch<Arch>::load_unaligned(x + i));
    const fbatch<Arch> b = f(fbatch<Arch>::load_unaligned(x + i + w));
    a.store_unaligned(y + i);
    b.store_unaligned(y + i + w);
  }
  for (; i + w <= n; i += w) f(fbatch<Arch>::load_unaligned(x + i)).store_unaligned(y + i);
  if (i < n) store_partial<Arch>(y + i, f(load_partial<Arch>(x + i, n - i, 0.f)), n - i);
}

}  // namespace detail
}  // namespace simd
}  // namespace tokmix
TOKMIX_SIMD_AVX512_WARNINGS_ON
