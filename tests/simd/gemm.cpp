// Tests for tokmix/simd/gemm.hpp: every layout against a float64 triple loop,
// over odd sizes around the register tile and packing block edges, with NaN in
// every gap of the operands (over-reads) and of C (stray writes).

#include "tokmix/simd/gemm.hpp"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>

#include "support/compare.hpp"

namespace {

using tokmix::index_t;
using tokmix::simd::detail::gemm_op;

const float nan_f = std::numeric_limits<float>::quiet_NaN();

const char* op_name(gemm_op op) { return op == gemm_op::nn ? "nn" : op == gemm_op::nt ? "nt" : "tn"; }

// A row-major matrix inside a NaN-padded buffer: NaN before, after, and in the
// ld - cols gap of every row.
struct padded_matrix {
  index_t rows, cols, ld;
  tokmix_test::nan_padded<float> buf;
  padded_matrix(index_t r, index_t c, index_t pad, std::size_t misalign)
      : rows(r), cols(c), ld(c + pad), buf(static_cast<std::size_t>(std::max<index_t>(1, r * (c + pad))), 64, misalign) {}
  float* data() { return buf.data(); }
  float& at(index_t i, index_t j) { return buf.data()[i * ld + j]; }
  void fill_random(unsigned seed) {
    const auto v = tokmix_test::random_floats(static_cast<std::size_t>(rows * cols), seed);
    for (index_t i = 0; i < rows; ++i)
      for (index_t j = 0; j < cols; ++j) at(i, j) = v[static_cast<std::size_t>(i * cols + j)];
  }
  // True when every element outside the rows x cols window is still NaN.
  bool gaps_untouched() const {
    const float* base = buf.storage.data();
    const std::size_t start = buf.pad;
    for (std::size_t t = 0; t < buf.storage.size(); ++t) {
      const bool inside = t >= start && t < start + static_cast<std::size_t>(rows * ld) &&
                          static_cast<index_t>((t - start) % static_cast<std::size_t>(ld)) < cols;
      if (!inside && !std::isnan(base[t])) return false;
    }
    return true;
  }
};

struct gemm_case {
  gemm_op op;
  index_t m, n, k;
  float alpha, beta;
  index_t pad_a, pad_b, pad_c;
  std::size_t misalign;
  std::string str() const {
    return std::string("gemm_") + op_name(op) + " m=" + std::to_string(m) + " n=" + std::to_string(n) +
           " k=" + std::to_string(k) + " alpha=" + std::to_string(alpha) + " beta=" + std::to_string(beta) +
           " pads=" + std::to_string(pad_a) + "," + std::to_string(pad_b) + "," + std::to_string(pad_c) +
           " misalign=" + std::to_string(misalign);
  }
};

template <class Arch>
void call_gemm(gemm_op op, index_t m, index_t n, index_t k, float alpha, const float* a, index_t lda, const float* b,
               index_t ldb, float beta, float* c, index_t ldc) {
  using namespace tokmix::simd::detail;
  switch (op) {
    case gemm_op::nn: gemm_dispatch<gemm_op::nn, Arch>(m, n, k, alpha, a, lda, b, ldb, beta, c, ldc); break;
    case gemm_op::nt: gemm_dispatch<gemm_op::nt, Arch>(m, n, k, alpha, a, lda, b, ldb, beta, c, ldc); break;
    case gemm_op::tn: gemm_dispatch<gemm_op::tn, Arch>(m, n, k, alpha, a, lda, b, ldb, beta, c, ldc); break;
  }
}

// Runs one case through Arch's kernel (or the public entry point when Arch is
// void) and checks values and untouched gaps.
template <class Arch>
void check_case(const gemm_case& t, unsigned seed) {
  INFO(t.str());
  const bool at = t.op == gemm_op::tn, bt = t.op == gemm_op::nt;
  padded_matrix a(at ? t.k : t.m, at ? t.m : t.k, t.pad_a, t.misalign);
  padded_matrix b(bt ? t.n : t.k, bt ? t.k : t.n, t.pad_b, (t.misalign + 1) % 4);
  padded_matrix c(t.m, t.n, t.pad_c, (t.misalign + 2) % 4);
  a.fill_random(seed);
  b.fill_random(seed + 1);
  if (t.beta != 0.f) c.fill_random(seed + 2);  // beta == 0: C stays NaN and must not be read
  std::vector<double> ref(static_cast<std::size_t>(t.m * t.n));
  for (index_t i = 0; i < t.m; ++i)
    for (index_t j = 0; j < t.n; ++j) {
      double s = 0;
      for (index_t p = 0; p < t.k; ++p) {
        const double av = at ? a.at(p, i) : a.at(i, p);
        const double bv = bt ? b.at(j, p) : b.at(p, j);
        s += av * bv;
      }
      const double c0 = t.beta == 0.f ? 0.0 : static_cast<double>(t.beta) * c.at(i, j);
      ref[static_cast<std::size_t>(i * t.n + j)] = c0 + static_cast<double>(t.alpha) * s;
    }

  if (std::is_void<Arch>::value) {
    using tokmix::simd::gemm_nn;
    using tokmix::simd::gemm_nt;
    using tokmix::simd::gemm_tn;
    auto f = t.op == gemm_op::nn ? gemm_nn : t.op == gemm_op::nt ? gemm_nt : gemm_tn;
    f(t.m, t.n, t.k, t.alpha, a.data(), a.ld, b.data(), b.ld, t.beta, c.data(), c.ld);
  } else {
    call_gemm<std::conditional_t<std::is_void<Arch>::value, xsimd::default_arch, Arch>>(
        t.op, t.m, t.n, t.k, t.alpha, a.data(), a.ld, b.data(), b.ld, t.beta, c.data(), c.ld);
  }

  std::vector<float> got(ref.size());
  for (index_t i = 0; i < t.m; ++i)
    for (index_t j = 0; j < t.n; ++j) got[static_cast<std::size_t>(i * t.n + j)] = c.at(i, j);
  // Inputs in [-1, 1]: a k-term float32 sum errs by about k * eps in the worst case.
  const double scale = std::abs(t.alpha) + std::abs(t.beta);
  const double atol = scale * 1.2e-7 * static_cast<double>(t.k + 4) * 2.0;
  TOKMIX_REQUIRE_CLOSE(got.data(), ref.data(), got.size(), atol, 1e-5);
  REQUIRE(a.gaps_untouched());
  REQUIRE(b.gaps_untouched());
  REQUIRE(c.gaps_untouched());
}

const index_t sweep_sizes[] = {1, 2, 5, 7, 8, 9, 15, 16, 17, 31, 33, 64, 65, 100};
const float alphas[] = {1.f, -0.75f, 2.5f};
const float betas[] = {0.f, 1.f, 0.5f, -1.25f};
const index_t pads[] = {0, 3, 16, 1};

// The product of the sweep sizes for (m, n) with k rotating through them too,
// and alpha/beta/padding/misalignment rotated per case: every combination of
// the row/column tails meets every kind of C update at least once per layout.
template <class Arch>
void run_sweep(gemm_op op, int k_stride) {
  unsigned idx = 0;
  const int ns = static_cast<int>(sizeof(sweep_sizes) / sizeof(sweep_sizes[0]));
  for (int im = 0; im < ns; ++im)
    for (int in = 0; in < ns; ++in)
      for (int ik = (im + in) % k_stride; ik < ns; ik += k_stride) {
        gemm_case t{op,
                    sweep_sizes[im],
                    sweep_sizes[in],
                    sweep_sizes[ik],
                    alphas[idx % 3],
                    betas[(idx / 3) % 4],
                    pads[idx % 4],
                    pads[(idx + 1) % 4],
                    pads[(idx + 2) % 4],
                    idx % 4};
        check_case<Arch>(t, 1000 + idx);
        ++idx;
      }
}

template <class Arch>
void run_block_edges(gemm_op op) {
  // k past the packed depth (256) and n past the packed width, m past several tiles.
  const index_t ms[] = {3, 13, 70};
  const index_t ns[] = {47, 100, 130};
  const index_t ks[] = {255, 256, 257, 513};
  unsigned idx = 0;
  for (index_t m : ms)
    for (index_t n : ns)
      for (index_t k : ks) {
        if ((idx++ % 3) != 0) continue;
        gemm_case t{op, m, n, k, alphas[idx % 3], betas[idx % 4], pads[idx % 4], pads[(idx + 2) % 4], pads[(idx + 1) % 4],
                    idx % 4};
        check_case<Arch>(t, 5000 + idx);
      }
}

}  // namespace

TEST_CASE("gemm: all layouts match a float64 triple loop over tile-edge sizes", "[simd][gemm]") {
  for (gemm_op op : {gemm_op::nn, gemm_op::nt, gemm_op::tn}) {
    SECTION(op_name(op)) {
      run_sweep<void>(op, 2);
      run_block_edges<void>(op);
    }
  }
}

TEST_CASE("gemm: every instruction set the build enables", "[simd][gemm]") {
  for (gemm_op op : {gemm_op::nn, gemm_op::nt, gemm_op::tn}) {
    SECTION(op_name(op)) {
#if XSIMD_WITH_SSE2
      run_sweep<xsimd::sse2>(op, 5);
      run_block_edges<xsimd::sse2>(op);
#endif
#if XSIMD_WITH_FMA3_AVX2
      run_sweep<xsimd::fma3<xsimd::avx2>>(op, 5);
      run_block_edges<xsimd::fma3<xsimd::avx2>>(op);
#endif
#if XSIMD_WITH_AVX512BW
      run_sweep<xsimd::avx512bw>(op, 5);
      run_block_edges<xsimd::avx512bw>(op);
#endif
    }
  }
}

// A small B with aligned rows and whole panels is read in place (no packing);
// a misaligned one is packed. Both must give the same products and leave B's
// NaN gaps unread, for every row count around the register tile.
template <class Arch>
void run_in_place_b(gemm_op op) {
  unsigned idx = 0;
  for (std::size_t misalign : {std::size_t(3), std::size_t(0)})  // B sits at misalign + 1: 0 (aligned) or 1
    for (index_t n : {64, 128})
      for (index_t pad_b : {0, 16})
        for (index_t k : {1, 7, 32, 64})
          for (index_t m : {1, 5, 7, 13, 32, 33}) {
            gemm_case t{op, m, n, k, alphas[idx % 3], betas[idx % 4], pads[idx % 4], pad_b, pads[(idx + 1) % 4],
                        misalign};
            check_case<Arch>(t, 12000 + idx);
            ++idx;
          }
}

TEST_CASE("gemm: small aligned B read in place equals the packed path", "[simd][gemm]") {
  for (gemm_op op : {gemm_op::nn, gemm_op::tn}) {
    SECTION(op_name(op)) {
      run_in_place_b<void>(op);
#if XSIMD_WITH_SSE2
      run_in_place_b<xsimd::sse2>(op);
#endif
#if XSIMD_WITH_FMA3_AVX2
      run_in_place_b<xsimd::fma3<xsimd::avx2>>(op);
#endif
#if XSIMD_WITH_AVX512BW
      run_in_place_b<xsimd::avx512bw>(op);
#endif
    }
  }
}

TEST_CASE("gemm_nt: every row grouping of the few-rows dot-product path", "[simd][gemm]") {
  // Up to 8 rows of A run as groups of at most 4; the sweep sizes miss 3, 4 and 6.
  unsigned idx = 0;
  for (index_t m : {3, 4, 6, 8, 9})
    for (index_t n : {1, 2, 9, 33})
      for (index_t k : {7, 64, 129}) {
        gemm_case t{gemm_op::nt, m, n, k, alphas[idx % 3], betas[idx % 4], pads[idx % 4], pads[(idx + 1) % 4],
                    pads[(idx + 3) % 4], idx % 4};
        check_case<void>(t, 9000 + idx);
        ++idx;
      }
}

TEST_CASE("gemm: attention tile shapes", "[simd][gemm]") {
  // The shapes the mixers run, once each with beta = 0 over a NaN C.
  const gemm_case cases[] = {
      {gemm_op::nt, 64, 64, 64, 0.125f, 0.f, 0, 0, 0, 0},     {gemm_op::nn, 64, 64, 64, 1.f, 1.f, 0, 0, 0, 0},
      {gemm_op::tn, 64, 64, 128, 1.f, 0.9f, 0, 0, 0, 0},     {gemm_op::nt, 256, 512, 64, 1.f, 0.f, 0, 0, 0, 0},
      {gemm_op::nn, 256, 64, 512, 1.f, 0.f, 0, 0, 0, 0},     {gemm_op::nt, 4, 1000, 128, 1.f, 0.f, 0, 448, 0, 1},
      {gemm_op::nn, 1, 128, 1000, 1.f, 0.f, 0, 896, 0, 3},
  };
  for (const auto& t : cases) check_case<void>(t, 77);
}

TEST_CASE("gemm: beta = 0 overwrites NaN in C; alpha = 0 or k = 0 only scales C", "[simd][gemm]") {
  const index_t m = 9, n = 17, k = 33;
  std::vector<float> a(static_cast<std::size_t>(m * k)), b(static_cast<std::size_t>(k * n));
  std::vector<float> c(static_cast<std::size_t>(m * n), nan_f);
  for (auto& x : a) x = 1.f;
  for (auto& x : b) x = 2.f;
  tokmix::simd::gemm_nn(m, n, k, 1.f, a.data(), k, b.data(), n, 0.f, c.data(), n);
  for (float v : c) REQUIRE(v == 2.f * static_cast<float>(k));

  // alpha = 0: A and B are not read (NaN there must not leak into C).
  std::fill(a.begin(), a.end(), nan_f);
  tokmix::simd::gemm_nt(m, n, k, 0.f, a.data(), k, b.data(), k, 0.5f, c.data(), n);
  for (float v : c) REQUIRE(v == static_cast<float>(k));
  tokmix::simd::gemm_tn(m, n, k, 0.f, a.data(), m, b.data(), n, 0.f, c.data(), n);
  for (float v : c) REQUIRE(v == 0.f);

  // k = 0 with beta = 0 zeroes C even if it held NaN.
  std::fill(c.begin(), c.end(), nan_f);
  tokmix::simd::gemm_nn(m, n, 0, 1.f, nullptr, 1, nullptr, n, 0.f, c.data(), n);
  for (float v : c) REQUIRE(v == 0.f);

  // m = 0 or n = 0: nothing is touched, even with null pointers.
  tokmix::simd::gemm_nn(0, n, k, 1.f, nullptr, k, nullptr, n, 0.f, nullptr, n);
  tokmix::simd::gemm_nt(m, 0, k, 1.f, nullptr, k, nullptr, k, 0.f, nullptr, 1);
}

TEST_CASE("gemm: bad arguments throw before writing C", "[simd][gemm]") {
  std::vector<float> a(64, 1.f), b(64, 1.f), c(64, 3.f);
  using tokmix::argument_error;
  using tokmix::simd::gemm_nn;
  using tokmix::simd::gemm_nt;
  using tokmix::simd::gemm_tn;
  REQUIRE_THROWS_AS(gemm_nn(-1, 4, 4, 1.f, a.data(), 4, b.data(), 4, 0.f, c.data(), 4), argument_error);
  REQUIRE_THROWS_AS(gemm_nn(4, 4, 4, 1.f, a.data(), 3, b.data(), 4, 0.f, c.data(), 4), argument_error);
  REQUIRE_THROWS_AS(gemm_nt(4, 8, 4, 1.f, a.data(), 4, b.data(), 3, 0.f, c.data(), 8), argument_error);
  REQUIRE_THROWS_AS(gemm_tn(5, 4, 4, 1.f, a.data(), 4, b.data(), 4, 0.f, c.data(), 4), argument_error);
  REQUIRE_THROWS_AS(gemm_nn(4, 4, 4, 1.f, a.data(), 4, b.data(), 4, 0.f, c.data(), 3), argument_error);
  REQUIRE_THROWS_AS(gemm_nn(4, 4, 4, 1.f, nullptr, 4, b.data(), 4, 0.f, c.data(), 4), argument_error);
  REQUIRE_THROWS_AS(gemm_nn(4, 4, 4, 1.f, a.data(), 4, b.data(), 4, 0.f, nullptr, 4), argument_error);
  try {
    gemm_nt(4, 8, 4, 1.f, a.data(), 4, b.data(), 2, 0.f, c.data(), 8);
    FAIL("expected argument_error");
  } catch (const argument_error& e) {
    REQUIRE(e.argument().find("ldb") != std::string::npos);
  }
  for (float v : c) REQUIRE(v == 3.f);
}

TEST_CASE("gemm: concurrent calls on two threads agree with a single-threaded run", "[simd][gemm]") {
  const index_t m = 70, n = 65, k = 300;
  const auto a = tokmix_test::random_floats(static_cast<std::size_t>(m * k), 11);
  const auto b = tokmix_test::random_floats(static_cast<std::size_t>(n * k), 12);
  std::vector<float> expect(static_cast<std::size_t>(m * n));
  tokmix::simd::gemm_nt(m, n, k, 1.f, a.data(), k, b.data(), k, 0.f, expect.data(), n);
  bool same[2] = {true, true};
  auto worker = [&](int id) {
    std::vector<float> c(static_cast<std::size_t>(m * n));
    for (int rep = 0; rep < 20; ++rep) {
      tokmix::simd::gemm_nt(m, n, k, 1.f, a.data(), k, b.data(), k, 0.f, c.data(), n);
      if (std::memcmp(c.data(), expect.data(), c.size() * sizeof(float)) != 0) same[id] = false;
    }
  };
  std::thread t0(worker, 0), t1(worker, 1);
  t0.join();
  t1.join();
  REQUIRE(same[0]);
  REQUIRE(same[1]);
}
