#pragma once
// Software prefetch hints. The hardware prefetchers follow sequential and
// constant-stride streams within a page; rows strided by other heads, gathered
// rows (top-k, routing, sampled keys) and the next tile of a blocked loop are
// not such streams, so the kernels ask for them a little ahead. The hints
// never fault, and compile to nothing where the builtin is missing.
// touch_bytes is the exception: it really reads (see there), so its range
// must be readable.

#include <cstddef>

#include "tokmix/core/tensor_view.hpp"

namespace tokmix {
namespace simd {

constexpr std::size_t cache_line_bytes = 64;

// One read (or write) request per cache line of [p, p + bytes).
inline void prefetch_bytes(const void* p, std::size_t bytes, bool for_write = false) noexcept {
#if defined(__GNUC__) || defined(__clang__)
  const char* c = static_cast<const char*>(p);
  if (for_write) {
    for (std::size_t off = 0; off < bytes; off += cache_line_bytes) __builtin_prefetch(c + off, 1, 3);
  } else {
    for (std::size_t off = 0; off < bytes; off += cache_line_bytes) __builtin_prefetch(c + off, 0, 3);
  }
#else
  (void)p, (void)bytes, (void)for_write;
#endif
}

// Reads one byte of every cache line of [p, p + bytes) in ascending order: a
// demand stream the hardware's L2 stream prefetcher recognises and runs ahead
// of, where a kernel's own interleaved or strided first touches leave it idle
// (and software prefetches of the same lines measured no gain on Zen 3). The reads
// wait for their lines like any load, so this pays when the lines are about to
// be used and the stream continues past them.
inline void touch_bytes(const void* p, std::size_t bytes) noexcept {
  const volatile char* c = static_cast<const volatile char*>(p);
  for (std::size_t off = 0; off < bytes; off += cache_line_bytes) (void)c[off];
}

// `rows` rows of `elems` elements each, `row_stride` elements apart.
template <class T>
inline void prefetch_rows(const T* p, index_t row_stride, index_t rows, index_t elems,
                          bool for_write = false) noexcept {
  const std::size_t bytes = static_cast<std::size_t>(elems) * sizeof(T);
  for (index_t r = 0; r < rows; ++r) prefetch_bytes(p + r * row_stride, bytes, for_write);
}

}  // namespace simd
}  // namespace tokmix
