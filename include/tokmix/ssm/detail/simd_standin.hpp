#pragma once
// TEMPORARY: the few batch helpers the SSM kernels need until tokmix/simd/
// (arch, exp, activation) is committed by its owner; removed then.

#include <cmath>

#include <xsimd/xsimd.hpp>

#include "tokmix/core/tensor_view.hpp"

namespace tokmix {
namespace ssm_detail_standin {

template <class Arch>
using fbatch = xsimd::batch<float, Arch>;

template <class Arch>
constexpr index_t lanes = static_cast<index_t>(fbatch<Arch>::size);

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

template <class Arch>
inline fbatch<Arch> exp_batch(const fbatch<Arch>& x) noexcept {
  return xsimd::exp(x);
}

template <class Arch>
inline fbatch<Arch> silu(const fbatch<Arch>& x) noexcept {
  return x / (fbatch<Arch>(1.f) + xsimd::exp(-x));
}

template <class Arch>
inline fbatch<Arch> softplus(const fbatch<Arch>& x) noexcept {
  return xsimd::select(x > fbatch<Arch>(20.f), x, xsimd::log1p(xsimd::exp(x)));
}

}  // namespace ssm_detail_standin
}  // namespace tokmix
