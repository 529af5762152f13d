#pragma once
// The key/value cache of one attention layer for decode. It exists so decode
// can stream each K/V head as one contiguous block (the memory-bound part of
// generation), in fp32, fp16 or bf16 storage, with a fixed capacity allocated
// once, and so sliding-window layers can keep only their window (ring mode).
//
// Positions. Every appended token gets the absolute position `length()` at the
// time it was appended (0, 1, 2, ... since construction or clear()). Apply RoPE
// to the new keys *before* appending them (offset = cache.length()), so the
// absolute positions are baked into the stored keys and nothing has to be
// re-rotated when a ring slot is reused.
//
// Modes.
// - linear: position p lives in slot p; appending past capacity() is an error.
// - ring (sliding-window layers, StreamingLLM): the first n_sink() positions
//   keep slots [0, n_sink) forever; every later position p lives in slot
//   n_sink + (p - n_sink) % (capacity - n_sink), overwriting the position
//   (capacity - n_sink) earlier. So the cache holds positions [0, n_sink) and
//   the last capacity - n_sink positions. attention_decode maps slots back to
//   positions and applies the mask on absolute positions, so a ring cache gives
//   exactly the result of full attention with the same window, as long as the
//   window never needs an evicted key: with window_left = w and n new queries
//   per call that means capacity >= n_sink + w + n (decode checks it).
//
// Internal layout: K as [batch, kv_heads, capacity, head_dim], V as
// [batch, kv_heads, capacity, v_head_dim], rows by slot, one 64-byte aligned
// allocation made in the constructor (on huge pages when large: alloc_streamed).

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <type_traits>

#include "tokmix/core/element.hpp"
#include "tokmix/core/error.hpp"
#include "tokmix/core/scratch.hpp"
#include "tokmix/core/tensor_view.hpp"
#include "tokmix/simd/convert.hpp"

namespace tokmix {

enum class kv_cache_mode {
  linear,  // slot = position, fixed capacity
  ring,    // sinks + a rolling window of the latest positions
};

struct kv_cache_options {
  index_t batch = 1;
  index_t kv_heads = 1;
  index_t head_dim = 0;
  index_t v_head_dim = -1;  // -1: same as head_dim
  // linear: the most tokens the cache can hold. ring: slots, n_sink included.
  index_t capacity = 0;
  kv_cache_mode mode = kv_cache_mode::linear;
  // ring only: the first n_sink positions are never evicted (StreamingLLM).
  index_t n_sink = 0;
};

namespace detail {
struct aligned_free {
  void operator()(void* p) const noexcept { std::free(p); }
};

// Copies n elements, converting between storage types (fp32 <-> fp16/bf16
// on SIMD; fp16 <-> bf16, which nobody should need, through fp32 per element).
template <class Dst, class Src>
inline void convert_row(const Src* src, Dst* dst, index_t n) {
  if (n <= 0) return;
  if constexpr (std::is_same<Dst, Src>::value) {
    std::memcpy(static_cast<void*>(dst), static_cast<const void*>(src), static_cast<std::size_t>(n) * sizeof(Dst));
  } else if constexpr (std::is_same<Dst, float>::value || std::is_same<Src, float>::value) {
    simd::convert(src, dst, n);
  } else {
    for (index_t i = 0; i < n; ++i) dst[i] = from_float<Dst>(to_float(src[i]));
  }
}
}  // namespace detail

template <class T>
class kv_cache {
  static_assert(is_storage_type<T>::value, "kv_cache stores float, Eigen::half or Eigen::bfloat16");

 public:
  using value_type = T;

  explicit kv_cache(const kv_cache_options& opt) : opt_(opt) {
    if (opt_.v_head_dim < 0) opt_.v_head_dim = opt_.head_dim;
    require(opt_.batch >= 1, "batch", ">= 1", opt_.batch);
    require(opt_.kv_heads >= 1, "kv_heads", ">= 1", opt_.kv_heads);
    require(opt_.head_dim >= 1, "head_dim", ">= 1", opt_.head_dim);
    require(opt_.v_head_dim >= 1, "v_head_dim", ">= 1 (or -1 for head_dim)", opt_.v_head_dim);
    require(opt_.capacity >= 1, "capacity", ">= 1", opt_.capacity);
    require(opt_.n_sink >= 0, "n_sink", ">= 0", opt_.n_sink);
    if (opt_.mode == kv_cache_mode::linear) {
      require(opt_.n_sink == 0, "n_sink", "0 in linear mode (every position is kept)", opt_.n_sink);
    } else {
      require(opt_.capacity > opt_.n_sink, "capacity", "> n_sink (" + std::to_string(opt_.n_sink) + ") in ring mode",
              opt_.capacity);
    }
    const std::size_t rows = static_cast<std::size_t>(opt_.batch * opt_.kv_heads * opt_.capacity);
    k_elems_ = rows * static_cast<std::size_t>(opt_.head_dim);
    const std::size_t v_elems = rows * static_cast<std::size_t>(opt_.v_head_dim);
    // V starts on its own 64-byte boundary.
    const std::size_t k_bytes = (k_elems_ * sizeof(T) + 63) / 64 * 64;
    v_offset_bytes_ = k_bytes;
    const std::size_t total = k_bytes + (v_elems * sizeof(T) + 63) / 64 * 64;
    buf_.reset(alloc_streamed(total));
  }

  // A linear cache with V of the same head dim as K.
  kv_cache(index_t batch, index_t kv_heads, index_t head_dim, index_t capacity)
      : kv_cache(kv_cache_options{batch, kv_heads, head_dim, -1, capacity, kv_cache_mode::linear, 0}) {}

  // A ring cache for a sliding-window layer: `capacity` slots, the first
  // `n_sink` of them pinned to positions [0, n_sink).
  static kv_cache ring(index_t batch, index_t kv_heads, index_t head_dim, index_t capacity, index_t n_sink = 0) {
    return kv_cache(kv_cache_options{batch, kv_heads, head_dim, -1, capacity, kv_cache_mode::ring, n_sink});
  }

  kv_cache(kv_cache&&) noexcept = default;
  kv_cache& operator=(kv_cache&&) noexcept = default;

  index_t batch() const { return opt_.batch; }
  index_t kv_heads() const { return opt_.kv_heads; }
  index_t head_dim() const { return opt_.head_dim; }
  index_t v_head_dim() const { return opt_.v_head_dim; }
  index_t capacity() const { return opt_.capacity; }
  kv_cache_mode mode() const { return opt_.mode; }
  index_t n_sink() const { return opt_.n_sink; }
  const kv_cache_options& options() const { return opt_; }

  // Tokens appended since construction or clear(): the absolute position the
  // next appended token gets (use it as the RoPE offset).
  index_t length() const { return length_; }
  // Entries held: length() in linear mode, at most capacity() in ring mode.
  index_t size() const { return std::min(length_, opt_.capacity); }

  // The smallest non-sink position still held (ring mode evicts older ones).
  index_t first_window_position() const {
    if (opt_.mode == kv_cache_mode::linear) return 0;
    const index_t ring_slots = opt_.capacity - opt_.n_sink;
    return std::max(opt_.n_sink, length_ - ring_slots);
  }
  // Whether absolute position p is currently held.
  bool holds(index_t p) const {
    if (p < 0 || p >= length_) return false;
    return p < opt_.n_sink || p >= first_window_position();
  }
  // The slot of a held position (see holds()).
  index_t slot_of(index_t p) const {
    if (opt_.mode == kv_cache_mode::linear || p < opt_.n_sink) return p;
    return opt_.n_sink + (p - opt_.n_sink) % (opt_.capacity - opt_.n_sink);
  }
  // How many positions starting at held position p sit in consecutive slots.
  index_t contiguous_run(index_t p) const {
    if (opt_.mode == kv_cache_mode::linear) return length_ - p;
    if (p < opt_.n_sink) return std::min(opt_.n_sink, length_) - p;
    return std::min(length_ - p, opt_.capacity - slot_of(p));
  }

  // Rows of one head by slot.                     // [capacity, head_dim]
  const T* k_head(index_t b, index_t h) const { return k_base() + (b * opt_.kv_heads + h) * opt_.capacity * opt_.head_dim; }
  // [capacity, v_head_dim]
  const T* v_head(index_t b, index_t h) const {
    return v_base() + (b * opt_.kv_heads + h) * opt_.capacity * opt_.v_head_dim;
  }

  // The whole storage in slot order, seen in the canonical layout (strided, no copy).
  // [batch, capacity, kv_heads, head_dim]
  tensor_view<const T, 4> keys() const {
    const index_t d = opt_.head_dim, c = opt_.capacity;
    return tensor_view<const T, 4>(k_base(), {opt_.batch, c, opt_.kv_heads, d}, {opt_.kv_heads * c * d, d, c * d, 1});
  }
  // [batch, capacity, kv_heads, v_head_dim]
  tensor_view<const T, 4> values() const {
    const index_t d = opt_.v_head_dim, c = opt_.capacity;
    return tensor_view<const T, 4>(v_base(), {opt_.batch, c, opt_.kv_heads, d}, {opt_.kv_heads * c * d, d, c * d, 1});
  }

  // Appends n tokens. k_new: [batch, n, kv_heads, head_dim], v_new:
  // [batch, n, kv_heads, v_head_dim], elements float or T. Throws
  // argument_error (and writes nothing) on a shape mismatch or, in linear
  // mode, when length() + n would exceed capacity().
  template <class K, class V>
  void append(const K& k_new, const V& v_new) {
    const auto k = as_view(k_new);
    const auto v = as_view(v_new);
    using KE = typename decltype(k)::value_type;
    using VE = typename decltype(v)::value_type;
    static_assert(is_storage_type<KE>::value && is_storage_type<VE>::value,
                  "kv_cache::append takes float, Eigen::half or Eigen::bfloat16 elements");
    require_layout("k_new", k);
    require_layout("v_new", v);
    require_shape("k_new", k, {opt_.batch, -1, opt_.kv_heads, opt_.head_dim});
    const index_t n = k.dim(1);
    require_shape("v_new", v, {opt_.batch, n, opt_.kv_heads, opt_.v_head_dim});
    if (opt_.mode == kv_cache_mode::linear && length_ + n > opt_.capacity)
      throw argument_error("k_new", "at most " + std::to_string(opt_.capacity - length_) +
                                        " new tokens (capacity " + std::to_string(opt_.capacity) + ", length " +
                                        std::to_string(length_) + ")",
                           std::to_string(n) + " tokens");
    const index_t end = length_ + n;
    // In ring mode only the sinks and the last (capacity - n_sink) positions survive.
    const index_t keep_from =
        opt_.mode == kv_cache_mode::linear ? 0 : std::max(opt_.n_sink, end - (opt_.capacity - opt_.n_sink));
    T* kb = k_base_mut();
    T* vb = v_base_mut();
    for (index_t t = 0; t < n; ++t) {
      const index_t p = length_ + t;
      if (p >= opt_.n_sink && p < keep_from) continue;
      const index_t s = slot_of(p);
      for (index_t b = 0; b < opt_.batch; ++b)
        for (index_t h = 0; h < opt_.kv_heads; ++h) {
          const index_t row = (b * opt_.kv_heads + h) * opt_.capacity + s;
          detail::convert_row(k.ptr(b, t, h), kb + row * opt_.head_dim, opt_.head_dim);
          detail::convert_row(v.ptr(b, t, h), vb + row * opt_.v_head_dim, opt_.v_head_dim);
        }
    }
    length_ = end;
  }

  // Forgets every token; keeps the memory.
  void clear() { length_ = 0; }

  // Linear mode: drops the tokens after the first new_length (speculative
  // decoding rollback). The dropped rows are simply overwritten later.
  void truncate(index_t new_length) {
    require(opt_.mode == kv_cache_mode::linear, "mode", "linear (a ring cache cannot roll back)", "ring");
    require(new_length >= 0 && new_length <= length_, "new_length", "in [0, " + std::to_string(length_) + "]",
            new_length);
    length_ = new_length;
  }

 private:
  const T* k_base() const { return static_cast<const T*>(buf_.get()); }
  const T* v_base() const {
    return reinterpret_cast<const T*>(static_cast<const unsigned char*>(buf_.get()) + v_offset_bytes_);
  }
  T* k_base_mut() { return static_cast<T*>(buf_.get()); }
  T* v_base_mut() { return reinterpret_cast<T*>(static_cast<unsigned char*>(buf_.get()) + v_offset_bytes_); }

  kv_cache_options opt_;
  std::unique_ptr<void, detail::aligned_free> buf_;
  std::size_t k_elems_ = 0;
  std::size_t v_offset_bytes_ = 0;
  index_t length_ = 0;
};

}  // namespace tokmix
