// tokmix/simd/prefetch.hpp: a hint leaves memory as it was, for reads and
// writes, at every length and misalignment. Ranges end at the end of their
// allocation, so an ASan build catches a loop that dereferences past it.
#include "tokmix/simd/prefetch.hpp"

#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include <catch2/catch.hpp>

namespace {
namespace ts = tokmix::simd;
using tokmix::index_t;
}  // namespace

TEST_CASE("prefetch_bytes leaves memory unchanged at every length and offset", "[simd][prefetch]") {
  for (std::size_t n = 0; n <= 3 * ts::cache_line_bytes + 1; ++n) {
    for (std::size_t off = 0; off < 8; ++off) {
      std::unique_ptr<unsigned char[]> buf(new unsigned char[off + n + 1]);
      for (std::size_t i = 0; i < off + n + 1; ++i) buf[i] = static_cast<unsigned char>(i * 37 + 11);
      std::vector<unsigned char> before(buf.get(), buf.get() + off + n + 1);
      ts::prefetch_bytes(buf.get() + off, n);
      ts::prefetch_bytes(buf.get() + off, n, /*for_write=*/true);
      REQUIRE(std::memcmp(before.data(), buf.get(), before.size()) == 0);
    }
  }
  ts::prefetch_bytes(nullptr, 0);  // an empty range is never dereferenced
}

TEST_CASE("prefetch_rows covers strided rows without changing them", "[simd][prefetch]") {
  const index_t rows = 5, elems = 23, stride = 37;
  std::vector<float> m(static_cast<std::size_t>((rows - 1) * stride + elems));
  for (std::size_t i = 0; i < m.size(); ++i) m[i] = static_cast<float>(i) * 0.5f;
  const std::vector<float> before = m;
  ts::prefetch_rows(m.data(), stride, rows, elems);
  ts::prefetch_rows(m.data(), stride, rows, elems, /*for_write=*/true);
  ts::prefetch_rows(m.data(), stride, 0, elems);
  REQUIRE(m == before);
}

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>

// touch_bytes really reads, so a byte past the range must never be touched:
// each range ends exactly where a PROT_NONE page begins, and an overread
// faults in every build, not only under ASan.
TEST_CASE("touch_bytes reads only inside its range", "[simd][prefetch]") {
  const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  void* map = mmap(nullptr, 2 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  REQUIRE(map != MAP_FAILED);
  unsigned char* base = static_cast<unsigned char*>(map);
  REQUIRE(mprotect(base + page, page, PROT_NONE) == 0);
  for (std::size_t i = 0; i < page; ++i) base[i] = static_cast<unsigned char>(i * 13 + 5);
  const std::vector<unsigned char> before(base, base + page);
  for (std::size_t n : {std::size_t(0), std::size_t(1), ts::cache_line_bytes - 1, ts::cache_line_bytes,
                        ts::cache_line_bytes + 1, 3 * ts::cache_line_bytes + 7, page})
    ts::touch_bytes(base + page - n, n);
  REQUIRE(std::memcmp(before.data(), base, page) == 0);
  ts::touch_bytes(nullptr, 0);
  munmap(map, 2 * page);
}
#endif
