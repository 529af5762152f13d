#pragma once
// The decode core shared by the sparse mixers: a few query rows (the heads of
// one GQA group for one new token) attend a chosen subset of a kv_cache's keys,
// given as strided runs of positions (block-sparse ranges, dilated windows) or
// as explicit positions (top-k, routing clusters). Scores and P V reuse the
// register-blocked decode kernels of attention (detail/decode_kernels.hpp);
// the softmax is the online update of simd/online_softmax.hpp, so partial key
// sets combine exactly whatever order they arrive in.

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>

#include "tokmix/simd/arch.hpp"

#include "tokmix/attention/detail/decode_kernels.hpp"
#include "tokmix/attention/kv_cache.hpp"
#include "tokmix/attention/params.hpp"
#include "tokmix/core/element.hpp"
#include "tokmix/core/error.hpp"
#include "tokmix/core/scratch.hpp"
#include "tokmix/simd/convert.hpp"
#include "tokmix/simd/online_softmax.hpp"

namespace tokmix {
namespace detail {
namespace sparse {

// Keys per tile: a V tile stays in L1 across the P V column passes.
inline index_t decode_rows_tile(index_t d, index_t dv) {
  const index_t m = std::max<index_t>(1, std::max(d, dv));
  index_t t = 16;
  while (t * 2 * m <= 4096 && t < 128) t *= 2;
  return t;
}

// Scratch of one decode_rows with R rows (gather buffers included).
inline std::size_t decode_rows_bytes(index_t R, index_t d, index_t dv) {
  const index_t t = decode_rows_tile(d, dv);
  return scratch_frame::bytes_for<float>(R * d) + scratch_frame::bytes_for<float>(R * t) +
         scratch_frame::bytes_for<float>(R * dv) + 2 * scratch_frame::bytes_for<float>(R) +
         scratch_frame::bytes_for<float>(t * d) + scratch_frame::bytes_for<float>(t * dv) + 8 * scratch_arena::alignment;
}

// R query rows against keys of one cache head; allocates from the caller's frame.
template <class Arch, class T>
class decode_rows {
 public:
  // q rows are filled by the caller through q_row(r) (already multiplied by the scale).
  decode_rows(scratch_frame& f, index_t R, index_t d, index_t dv, const T* k_head, const T* v_head, float softcap)
      : R_(R), d_(d), dv_(dv), tile_(decode_rows_tile(d, dv)), kh_(k_head), vh_(v_head), cap_(softcap) {
    q_ = f.alloc<float>(static_cast<std::size_t>(R * d));
    s_ = f.alloc<float>(static_cast<std::size_t>(R * tile_));
    o_ = f.alloc<float>(static_cast<std::size_t>(R * dv));
    m_ = f.alloc<float>(static_cast<std::size_t>(R));
    l_ = f.alloc<float>(static_cast<std::size_t>(R));
    kb_ = f.alloc<float>(static_cast<std::size_t>(tile_ * d));
    vb_ = f.alloc<float>(static_cast<std::size_t>(tile_ * dv));
    reset();
  }

  void reset() {
    std::fill(o_, o_ + R_ * dv_, 0.f);
    std::fill(m_, m_ + R_, -std::numeric_limits<float>::infinity());
    std::fill(l_, l_ + R_, 0.f);
  }
  float* q_row(index_t r) { return q_ + r * d_; }

  // Keys at slots first, first + stride, ... (count of them).
  void run(index_t first, index_t count, index_t stride) {
    for (index_t t = 0; t < count; t += tile_) {
      const index_t c = std::min(tile_, count - t);
      const index_t s0 = first + t * stride;
      block(kh_ + s0 * d_, stride * d_, vh_ + s0 * dv_, stride * dv_, c);
    }
  }

  // Keys at the given slots (any order), gathered tile by tile.
  template <class I>
  void gather(const I* slots, index_t count) {
    for (index_t t = 0; t < count; t += tile_) {
      const index_t c = std::min(tile_, count - t);
      for (index_t j = 0; j < c; ++j) {
        const index_t sl = static_cast<index_t>(slots[t + j]);
        widen_row(kh_ + sl * d_, kb_ + j * d_, d_);
        widen_row(vh_ + sl * dv_, vb_ + j * dv_, dv_);
      }
      block_f32(kb_, d_, vb_, dv_, c);
    }
  }

  // Normalises; rows that saw no key give zeros and lse -inf.
  void finish(float* lse) {
    for (index_t r = 0; r < R_; ++r) {
      float* orow = o_ + r * dv_;
      if (l_[r] > 0.f) {
        const float inv = 1.f / l_[r];
        for (index_t e = 0; e < dv_; ++e) orow[e] *= inv;
        lse[r] = m_[r] + std::log(l_[r]);
      } else {
        std::fill(orow, orow + dv_, 0.f);
        lse[r] = -std::numeric_limits<float>::infinity();
      }
    }
  }
  const float* o_row(index_t r) const { return o_ + r * dv_; }

 private:
  template <class U>
  static void widen_row(const U* src, float* dst, index_t n) {
    if constexpr (std::is_same<U, float>::value) std::memcpy(dst, src, static_cast<std::size_t>(n) * sizeof(float));
    else simd::convert(src, dst, n);
  }

  template <class U>
  void scores_softmax(const U* k, index_t ldk, index_t c) {
    decode_scores(Arch{}, q_, d_, R_, k, ldk, c, d_, s_, tile_);
    for (index_t r = 0; r < R_; ++r) {
      float* sr = s_ + r * tile_;
      if (cap_ > 0.f)
        for (index_t j = 0; j < c; ++j) sr[j] = cap_ * std::tanh(sr[j] / cap_);
      const float alpha = simd::detail::online_softmax_update_kernel(Arch{}, sr, c, m_[r], l_[r]);
      if (alpha != 1.f) {
        float* orow = o_ + r * dv_;
        for (index_t e = 0; e < dv_; ++e) orow[e] *= alpha;
      }
    }
  }
  void block(const T* k, index_t ldk, const T* v, index_t ldv, index_t c) {
    scores_softmax(k, ldk, c);
    decode_pv(Arch{}, s_, tile_, R_, v, ldv, c, dv_, o_, dv_);
  }
  void block_f32(const float* k, index_t ldk, const float* v, index_t ldv, index_t c) {
    scores_softmax(k, ldk, c);
    decode_pv(Arch{}, s_, tile_, R_, v, ldv, c, dv_, o_, dv_);
  }

  index_t R_, d_, dv_, tile_;
  const T* kh_;
  const T* vh_;
  float cap_;
  float *q_, *s_, *o_, *m_, *l_, *kb_, *vb_;
};

// Checks shared by the sparse decodes: the query/output shapes against the
// cache, a linear cache, and the attention_params options the sparse decodes
// honour (scale, softcap, causal structure); writes nothing.
template <class QV, class T, class OV>
void check_sparse_decode(const char* fn, const QV& q, const kv_cache<T>& cache, const OV& o,
                         const tensor_view<float, 3>* lse, const attention_params& p) {
  require_layout("q_new", q);
  require_layout("o", o);
  require_shape("q_new", q, {cache.batch(), -1, -1, cache.head_dim()});
  const index_t n = q.dim(1), hq = q.dim(2);
  require(hq >= 1 && hq % cache.kv_heads() == 0, "q_new",
          "a head count that is a multiple of the cache's kv_heads (" + std::to_string(cache.kv_heads()) + ")", hq);
  require_shape("o", o, {cache.batch(), n, hq, cache.v_head_dim()});
  if (lse != nullptr) {
    require_layout("lse", *lse);
    require_shape("lse", *lse, {cache.batch(), hq, n});
  }
  require(cache.mode() == kv_cache_mode::linear, "cache", std::string("a linear kv_cache for ") + fn, "a ring cache");
  require(n <= cache.length(), "q_new", "at most cache.length() = " + std::to_string(cache.length()) +
          " new queries (append their keys first)", n);
  require(std::isnan(p.scale) || std::isfinite(p.scale), "params.scale", "a finite value or NaN (default)", p.scale);
  require(std::isfinite(p.softcap) && p.softcap >= 0.f, "params.softcap", "a finite value >= 0", p.softcap);
  require(p.alignment == causal_alignment::bottom_right, "params.alignment",
          "bottom_right (decode queries are the last tokens of the cached sequence)", "top_left");
  require(p.alibi_slopes.data() == nullptr && p.bias.data() == nullptr && p.mask.data() == nullptr &&
              p.q_segment_ids.data() == nullptr,
          "params", std::string("no alibi_slopes, bias, mask or segment ids in ") + fn, "one of them set");
}

}  // namespace sparse
}  // namespace detail
}  // namespace tokmix
