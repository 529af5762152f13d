#pragma once
// Per-thread scratch memory: one 64-byte aligned arena per thread that grows to
// the largest request and is then reused, so steady-state calls (decode steps)
// allocate nothing. Usage: reserve the total up front, then bump-allocate.
//
//   auto frame = scratch_frame(bytes_needed);   // may grow the arena once
//   float* s = frame.alloc<float>(n);            // never allocates
//
// Also the allocator of large buffers that are streamed whole (KV caches).

#include <algorithm>
#include <cstddef>
#include <cstdlib>
#include <new>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace tokmix {

// Buffers of at least this size are allocated on 2 MiB boundaries and offered
// to the kernel as transparent huge pages (Linux, THP in "madvise" mode): a
// buffer streamed whole (decode reads the whole KV cache per token) otherwise
// costs a TLB miss every 4 KiB, every 8 rows of a 128-dim fp32 head.
constexpr std::size_t huge_page_bytes = std::size_t(2) << 20;

// `bytes` of 64-byte aligned memory, on huge pages where offered; release with
// std::free. Throws std::bad_alloc.
inline void* alloc_streamed(std::size_t bytes) {
  void* p = nullptr;
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (bytes >= huge_page_bytes) {
    const std::size_t rounded = (bytes + huge_page_bytes - 1) / huge_page_bytes * huge_page_bytes;
    p = std::aligned_alloc(huge_page_bytes, rounded);
    if (p) (void)madvise(p, rounded, MADV_HUGEPAGE);
  }
#endif
  if (!p) p = std::aligned_alloc(64, (std::max<std::size_t>(bytes, 64) + 63) / 64 * 64);
  if (!p) throw std::bad_alloc();
  return p;
}

class scratch_arena {
 public:
  static constexpr std::size_t alignment = 64;

  static scratch_arena& local() {
    thread_local scratch_arena arena;
    return arena;
  }

  // A second arena per thread, for callers that keep buffers live while they
  // call kernels taking their own scratch from local() (the layers in blocks/
  // hold their projections here). Frames on different arenas never nest, so a
  // caller need not know how much scratch the kernels below it will ask for.
  static scratch_arena& outer() {
    thread_local scratch_arena arena;
    return arena;
  }

  std::size_t capacity() const { return capacity_; }
  std::size_t in_use() const { return top_; }
  // How many times this thread's arena had to grow (tests use it to prove decode allocates nothing).
  std::size_t growth_count() const { return growths_; }

  scratch_arena(const scratch_arena&) = delete;
  scratch_arena& operator=(const scratch_arena&) = delete;
  ~scratch_arena() { std::free(base_); }

 private:
  friend class scratch_frame;
  scratch_arena() = default;

  static std::size_t round_up(std::size_t n) { return (n + alignment - 1) / alignment * alignment; }

  void ensure(std::size_t bytes) {
    if (bytes <= capacity_) return;
    // Only grow when nothing is live: frames nest, and growth would move live blocks.
    if (top_ != 0) throw std::bad_alloc();
    std::free(base_);
    capacity_ = round_up(bytes + bytes / 4);
    base_ = static_cast<unsigned char*>(std::aligned_alloc(alignment, capacity_));
    if (!base_) {
      capacity_ = 0;
      throw std::bad_alloc();
    }
    ++growths_;
  }

  unsigned char* base_ = nullptr;
  std::size_t capacity_ = 0;
  std::size_t top_ = 0;
  std::size_t growths_ = 0;
};

// RAII frame on one of the calling thread's arenas (local() unless given). The outermost frame reserves the
// total; nested frames must fit in what the outer one reserved.
class scratch_frame {
 public:
  explicit scratch_frame(std::size_t reserve_bytes) : scratch_frame(scratch_arena::local(), reserve_bytes) {}
  // A frame on a given arena of the calling thread (scratch_arena::outer()).
  scratch_frame(scratch_arena& arena, std::size_t reserve_bytes) : arena_(arena), start_(arena_.top_) {
    const std::size_t need = start_ + scratch_arena::round_up(reserve_bytes) + scratch_arena::alignment;
    if (start_ == 0) arena_.ensure(need);
    else if (need > arena_.capacity_) throw std::bad_alloc();
    limit_ = need;
  }
  ~scratch_frame() { arena_.top_ = start_; }
  scratch_frame(const scratch_frame&) = delete;
  scratch_frame& operator=(const scratch_frame&) = delete;

  template <class T>
  T* alloc(std::size_t n) {
    const std::size_t bytes = scratch_arena::round_up(n * sizeof(T));
    if (arena_.top_ + bytes > limit_) throw std::bad_alloc();
    T* p = reinterpret_cast<T*>(arena_.base_ + arena_.top_);
    arena_.top_ += bytes;
    return p;
  }

  // Bytes a sequence of alloc<T>(n) calls needs, for sizing the frame.
  template <class T>
  static constexpr std::size_t bytes_for(std::size_t n) {
    return (n * sizeof(T) + scratch_arena::alignment - 1) / scratch_arena::alignment * scratch_arena::alignment;
  }

 private:
  scratch_arena& arena_;
  std::size_t start_;
  std::size_t limit_ = 0;
};

}  // namespace tokmix
