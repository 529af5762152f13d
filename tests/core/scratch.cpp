// Tests for include/tokmix/core/scratch.hpp: aligned bump allocation, nesting,
// per-thread arenas, and no growth on repeated same-size use (decode steps).
#include "tokmix/core/scratch.hpp"

#include <cstdint>
#include <new>
#include <thread>

#include <catch2/catch.hpp>

namespace {

bool aligned64(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 64 == 0; }

}  // namespace

TEST_CASE("scratch allocations are 64-byte aligned and disjoint", "[core][scratch]") {
  const std::size_t need = tokmix::scratch_frame::bytes_for<float>(3) + tokmix::scratch_frame::bytes_for<double>(17) +
                           tokmix::scratch_frame::bytes_for<char>(1);
  tokmix::scratch_frame frame(need);
  float* a = frame.alloc<float>(3);
  double* b = frame.alloc<double>(17);
  char* c = frame.alloc<char>(1);
  CHECK(aligned64(a));
  CHECK(aligned64(b));
  CHECK(aligned64(c));
  CHECK(reinterpret_cast<char*>(b) >= reinterpret_cast<char*>(a + 3));
  CHECK(c >= reinterpret_cast<char*>(b + 17));
  // The memory is usable.
  for (int i = 0; i < 17; ++i) b[i] = i;
  a[2] = 1.0f;
  *c = 'x';
  CHECK(b[16] == 16.0);
  CHECK(tokmix::scratch_arena::local().in_use() >= need);
}

TEST_CASE("bytes_for rounds up to the alignment", "[core][scratch]") {
  CHECK(tokmix::scratch_frame::bytes_for<float>(0) == 0);
  CHECK(tokmix::scratch_frame::bytes_for<float>(1) == 64);
  CHECK(tokmix::scratch_frame::bytes_for<float>(16) == 64);
  CHECK(tokmix::scratch_frame::bytes_for<float>(17) == 128);
  STATIC_REQUIRE(tokmix::scratch_frame::bytes_for<double>(8) == 64);
}

TEST_CASE("frames release on scope exit and repeated same-size use never grows", "[core][scratch]") {
  // A fresh thread has a fresh arena, so the counts below are exact.
  std::size_t growth_first = 99, growth_after = 99, in_use_after = 99;
  std::thread([&] {
    auto& arena = tokmix::scratch_arena::local();
    CHECK(arena.growth_count() == 0);
    CHECK(arena.capacity() == 0);
    {
      tokmix::scratch_frame f(4096);
      f.alloc<float>(1024);
    }
    growth_first = arena.growth_count();
    for (int step = 0; step < 1000; ++step) {  // decode-like steady state
      tokmix::scratch_frame f(4096);
      float* p = f.alloc<float>(1024);
      p[1023] = static_cast<float>(step);
    }
    growth_after = arena.growth_count();
    in_use_after = arena.in_use();
    // Smaller requests fit as well.
    {
      tokmix::scratch_frame f(100);
      f.alloc<char>(100);
    }
    CHECK(arena.growth_count() == growth_after);
    // A larger one grows once, then is steady again.
    {
      tokmix::scratch_frame f(1 << 20);
      f.alloc<char>(1 << 20);
    }
    const std::size_t grown = arena.growth_count();
    CHECK(grown == growth_after + 1);
    CHECK(arena.capacity() >= (1u << 20));
    for (int step = 0; step < 10; ++step) {
      tokmix::scratch_frame f(1 << 20);
      f.alloc<char>(1 << 20);
    }
    CHECK(arena.growth_count() == grown);
  }).join();
  CHECK(growth_first == 1);
  CHECK(growth_after == 1);
  CHECK(in_use_after == 0);
}

TEST_CASE("nested frames fit inside the outer reservation and unwind in order", "[core][scratch]") {
  std::thread([] {
    auto& arena = tokmix::scratch_arena::local();
    tokmix::scratch_frame outer(8192);
    float* a = outer.alloc<float>(256);  // 1 KiB
    const std::size_t after_outer = arena.in_use();
    {
      tokmix::scratch_frame inner(2048);
      float* b = inner.alloc<float>(512);
      CHECK(aligned64(b));
      CHECK(reinterpret_cast<char*>(b) >= reinterpret_cast<char*>(a + 256));
      CHECK(arena.in_use() == after_outer + 2048);
    }
    CHECK(arena.in_use() == after_outer);
    // A nested frame larger than the arena cannot grow it (live blocks would move).
    CHECK_THROWS_AS(tokmix::scratch_frame(std::size_t(64) << 20), std::bad_alloc);
    CHECK(arena.in_use() == after_outer);
  }).join();
}

TEST_CASE("allocating past the frame's reservation throws", "[core][scratch]") {
  std::thread([] {
    tokmix::scratch_frame f(256);
    f.alloc<char>(256);
    CHECK_THROWS_AS(f.alloc<char>(4096), std::bad_alloc);
  }).join();
}

TEST_CASE("each thread has its own arena", "[core][scratch]") {
  const void* main_arena = &tokmix::scratch_arena::local();
  const void* other_arena = nullptr;
  std::thread([&] { other_arena = &tokmix::scratch_arena::local(); }).join();
  CHECK(main_arena != other_arena);
}

TEST_CASE("the outer arena holds a caller's buffers while kernels grow local() freely", "[core][scratch]") {
  std::thread([] {
    auto& outer = tokmix::scratch_arena::outer();
    auto& local = tokmix::scratch_arena::local();
    CHECK(&outer != &local);
    tokmix::scratch_frame held(outer, 4096);
    float* a = held.alloc<float>(1024);
    a[1023] = 1.f;
    {
      // local() is empty, so this frame is outermost there and may grow it.
      tokmix::scratch_frame kernel(std::size_t(1) << 20);
      kernel.alloc<char>(std::size_t(1) << 20);
      CHECK(local.growth_count() == 1);
    }
    CHECK(outer.in_use() >= 4096);
    CHECK(local.in_use() == 0);
    CHECK(a[1023] == 1.f);
  }).join();
}
