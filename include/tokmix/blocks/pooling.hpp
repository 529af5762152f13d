#pragma once
// Pooling token mixer (PoolFormer): average pooling over the sequence axis
// minus the input, so that the block's residual adds back only the
// neighbourhood mean. No parameters; O(B L D pool) adds.
//
//   centred:  y[b,t,:] = mean_{s in [t-p/2, t+p/2] ∩ [0, L)} x[b,s,:]  - x[b,t,:]
//   causal:   y[b,t,:] = mean_{s in [t-p+1, t] ∩ [0, t]}     x[b,s,:]  - x[b,t,:]
//
// The centred form is AvgPool1d(pool, stride=1, padding=pool/2,
// count_include_pad=False) on an odd pool size: windows cut by the sequence
// ends are averaged over the tokens they hold. The causal form averages the
// last `pool` tokens (fewer at the start) and has the usual prefill / step
// pair over a small rolling state (the last pool-1 inputs), so prefill of L
// tokens then steps equals steps from the start, bit for bit.
// `subtract_input = false` gives the plain average.
//
// ref: Yu et al., "MetaFormer Is Actually What You Need for Vision", CVPR 2022
//      (PoolFormer token mixer: Pooling(T) = AvgPool(T) - T, count_include_pad=False).

#include <algorithm>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "tokmix/core/third_party.hpp"
#include "tokmix/simd/arch.hpp"

#include "tokmix/core/error.hpp"
#include "tokmix/core/tensor_view.hpp"
#include "tokmix/core/threading.hpp"

TOKMIX_SIMD_AVX512_WARNINGS_OFF
namespace tokmix {

struct pooling_params {
  index_t pool_size = 3;       // window length; odd for pooling_mixer
  bool subtract_input = true;  // PoolFormer's pool(x) - x; false: pool(x)
  exec_policy policy;
};

// The last pool_size - 1 inputs of each sequence, oldest first, of which the
// last seen(b) are real tokens (a fresh state has none), so a causal window
// at the start of a continuation reaches back into the previous call.
class pooling_state {
 public:
  pooling_state() : pooling_state(0, 0, 1) {}
  pooling_state(index_t batch, index_t channels, index_t pool_size) : pool_(pool_size) {
    require(batch >= 0, "pooling_state batch", ">= 0", batch);
    require(channels >= 0, "pooling_state channels", ">= 0", channels);
    require(pool_size >= 1, "pooling_state pool_size", ">= 1", pool_size);
    history_.resize(batch, pool_size - 1, channels);
    seen_.assign(static_cast<std::size_t>(batch), 0);
    reset();
  }

  index_t batch() const { return history_.dimension(0); }
  index_t channels() const { return history_.dimension(2); }
  index_t pool_size() const { return pool_; }
  // How many of the history rows (the last ones) are real tokens, <= pool_size - 1.
  index_t seen(index_t b) const { return seen_.at(static_cast<std::size_t>(b)); }

  void reset() {
    history_.setZero();
    std::fill(seen_.begin(), seen_.end(), index_t(0));
  }

  void set_seen(index_t b, index_t n) {
    require(b >= 0 && b < batch(), "pooling_state batch index", "in [0, " + std::to_string(batch()) + ")", b);
    require(n >= 0 && n <= pool_ - 1, "pooling_state seen", "in [0, pool_size - 1 = " + std::to_string(pool_ - 1) + "]", n);
    seen_[static_cast<std::size_t>(b)] = n;
  }

  // Oldest first.                                               // [batch, pool_size-1, channels]
  tensor_view<float, 3> history() { return as_view(history_); }
  tensor_view<const float, 3> history() const { return as_view(history_); }

 private:
  index_t pool_;
  Eigen::Tensor<float, 3, Eigen::RowMajor> history_;
  std::vector<index_t> seen_;
};

namespace detail {

constexpr index_t pooling_rows_per_item = 64;

// One output row: the mean of `n` source rows (in order) minus (optionally)
// the centre row, over the contiguous channel axis.
template <class Arch>
inline void pooling_row(Arch, const float* const* src, index_t n, const float* centre, float* out, index_t channels,
                        bool subtract) {
  using batch = simd::fbatch<Arch>;
  constexpr index_t S = simd::lanes<Arch>;
  const float count = static_cast<float>(n);
  auto one = [&](index_t j, auto partial) {
    constexpr bool Partial = decltype(partial)::value;
    const index_t nv = channels - j;
    auto load = [&](const float* p) {
      return Partial ? simd::detail::load_partial<Arch>(p + j, nv, 0.f) : batch::load_unaligned(p + j);
    };
    batch acc = load(src[0]);
    for (index_t s = 1; s < n; ++s) acc += load(src[s]);
    acc = acc / batch(count);
    if (subtract) acc -= load(centre);
    if (Partial) simd::detail::store_partial<Arch>(out + j, acc, nv);
    else acc.store_unaligned(out + j);
  };
  const index_t full = channels / S * S;
  for (index_t j = 0; j < full; j += S) one(j, std::false_type{});
  if (full < channels) one(full, std::true_type{});
}

// Address ranges of two views intersect (strides are non-negative here).
template <class A, class B>
inline bool pooling_overlap(const tensor_view<A, 3>& a, const tensor_view<B, 3>& b) {
  if (a.size() == 0 || b.size() == 0) return false;
  auto last = [](const auto& v) {
    index_t off = 0;
    for (int i = 0; i < 3; ++i) off += (v.dim(i) - 1) * v.stride(i);
    return v.data() + off;
  };
  const float* a0 = a.data();
  const float* b0 = b.data();
  return !(last(a) < b0 || last(b) < a0);
}

inline void pooling_validate(const tensor_view<const float, 3>& x, const tensor_view<float, 3>& out,
                             const pooling_params& p, const pooling_state* state, bool centred) {
  require_layout("x", x);
  require_layout("out", out);
  require_shape<float, 3>("out", out, x.dims());
  require(!pooling_overlap(x, out), "out", "memory not overlapping x (windows read neighbouring tokens)",
          "overlapping views");
  if (centred)
    require(p.pool_size >= 1 && p.pool_size % 2 == 1, "pool_size", "an odd size >= 1 (padding pool_size / 2)",
            p.pool_size);
  else
    require(p.pool_size >= 1, "pool_size", ">= 1", p.pool_size);
  if (state) {
    require(state->batch() == x.dim(0), "state batch", x.dim(0), state->batch());
    require(state->channels() == x.dim(2), "state channels", x.dim(2), state->channels());
    require(state->pool_size() == p.pool_size, "state pool_size", p.pool_size, state->pool_size());
  }
}

template <class Arch>
inline void pooling_centred_kernel(Arch arch, const tensor_view<const float, 3>& x, const tensor_view<float, 3>& out,
                                   const pooling_params& p) {
  const index_t B = x.dim(0), L = x.dim(1), D = x.dim(2), half = p.pool_size / 2;
  if (B == 0 || L == 0 || D == 0) return;
  const index_t blocks = (L + pooling_rows_per_item - 1) / pooling_rows_per_item;
  parallel_for(p.policy, B * blocks, [&](index_t item, int) {
    const index_t b = item / blocks, t0 = (item % blocks) * pooling_rows_per_item;
    const index_t t1 = std::min(L, t0 + pooling_rows_per_item);
    const float* src[64];
    std::vector<const float*> big;  // only for pool sizes above 64
    const float** rows = p.pool_size <= 64 ? src : (big.resize(static_cast<std::size_t>(p.pool_size)), big.data());
    for (index_t t = t0; t < t1; ++t) {
      const index_t lo = std::max<index_t>(0, t - half), hi = std::min(L - 1, t + half);
      for (index_t s = lo; s <= hi; ++s) rows[s - lo] = x.ptr(b, s, 0);
      pooling_row(arch, rows, hi - lo + 1, x.ptr(b, t, 0), out.ptr(b, t, 0), D, p.subtract_input);
    }
  });
}

// Validated inputs; state may be null (a fresh start, nothing kept). Each
// token's window reads the history rows it reaches, then x; the new history
// is written only after every output.
template <class Arch>
void pooling_causal_kernel(Arch arch, const tensor_view<const float, 3>& x, pooling_state* state,
                           const tensor_view<float, 3>& out, const pooling_params& p) {
  const index_t B = x.dim(0), L = x.dim(1), D = x.dim(2), P = p.pool_size, H = P - 1;
  if (B == 0 || L == 0 || D == 0) return;
  const index_t blocks = (L + pooling_rows_per_item - 1) / pooling_rows_per_item;
  parallel_for(p.policy, B * blocks, [&](index_t item, int) {
    const index_t b = item / blocks, t0 = (item % blocks) * pooling_rows_per_item;
    const index_t t1 = std::min(L, t0 + pooling_rows_per_item);
    const index_t seen = state ? state->seen(b) : 0;
    const float* hist = state ? state->history().ptr(b, 0, 0) : nullptr;
    const float* src[64];
    std::vector<const float*> big;
    const float** rows = P <= 64 ? src : (big.resize(static_cast<std::size_t>(P)), big.data());
    for (index_t t = t0; t < t1; ++t) {
      // Positions s < 0 are history row H + s, real for -s <= seen.
      const index_t lo = std::max(t - P + 1, -seen);
      for (index_t s = lo; s <= t; ++s) rows[s - lo] = s >= 0 ? x.ptr(b, s, 0) : hist + (H + s) * D;
      pooling_row(arch, rows, t - lo + 1, x.ptr(b, t, 0), out.ptr(b, t, 0), D, p.subtract_input);
    }
  });
  if (!state || H == 0) return;
  for (index_t b = 0; b < B; ++b) {
    float* hist = state->history().ptr(b, 0, 0);
    // Ascending rows: row k reads old row k + L (> k) before that is overwritten.
    for (index_t k = 0; k < H; ++k) {
      const index_t ts = L - H + k;
      const float* from = ts >= 0 ? x.ptr(b, ts, 0) : hist + (k + L) * D;
      std::copy(from, from + D, hist + k * D);
    }
    state->set_seen(b, std::min(H, state->seen(b) + L));
  }
}

}  // namespace detail

// PoolFormer mixer, centred windows (odd pool_size).   x, out: [batch, seq, channels]
// `out` must not overlap `x`.
inline void pooling_mixer(tensor_view<const float, 3> x, tensor_view<float, 3> out, const pooling_params& p = {}) {
  detail::pooling_validate(x, out, p, nullptr, true);
  detail::pooling_centred_kernel(simd::default_arch{}, x, out, p);
}

// Causal windows from a fresh start (no state kept).    x, out: [batch, seq, channels]
inline void pooling_causal(tensor_view<const float, 3> x, tensor_view<float, 3> out, const pooling_params& p = {}) {
  detail::pooling_validate(x, out, p, nullptr, false);
  detail::pooling_causal_kernel(simd::default_arch{}, x, nullptr, out, p);
}

// Causal windows continuing from `state`, which then holds the last
// pool_size - 1 inputs.                                 x, out: [batch, seq, channels]
inline void pooling_prefill(tensor_view<const float, 3> x, pooling_state& state, tensor_view<float, 3> out,
                            const pooling_params& p = {}) {
  detail::pooling_validate(x, out, p, &state, false);
  detail::pooling_causal_kernel(simd::default_arch{}, x, &state, out, p);
}

// One token per sequence.                               x, out: [batch, channels]
inline void pooling_step(tensor_view<const float, 2> x, pooling_state& state, tensor_view<float, 2> out,
                         const pooling_params& p = {}) {
  require_layout("x", x);
  require_layout("out", out);
  require_shape<float, 2>("out", out, x.dims());
  const tensor_view<const float, 3> x3(x.data(), {x.dim(0), 1, x.dim(1)}, {x.stride(0), x.stride(0), x.stride(1)});
  const tensor_view<float, 3> o3(out.data(), {out.dim(0), 1, out.dim(1)}, {out.stride(0), out.stride(0), out.stride(1)});
  detail::pooling_validate(x3, o3, p, &state, false);
  detail::pooling_causal_kernel(simd::default_arch{}, x3, &state, o3, p);
}

}  // namespace tokmix
TOKMIX_SIMD_AVX512_WARNINGS_ON
