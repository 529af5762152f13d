// tokmix::simd::gemm_{nn,nt,tn} at the attention tile shapes the mixers run
// (Q K^T with D = 64/128, P V, K^T V chunk updates, decode GEMVs with 1..8
// query rows), against Eigen's product over row-major Maps and OpenBLAS's
// cblas_sgemm, all on one thread.
//
// OpenBLAS picks its kernel from the CPU at load time; 0.3.21 does not know
// every recent CPU and then falls back to a slow generic kernel (seen at
// 15-20 GFLOP/s on an AVX-512 Xeon). Its label shows the kernel it chose; set
// OPENBLAS_CORETYPE=Haswell (or SkylakeX) in the environment for a fair peer.
#include <string>
#include <type_traits>
#include <vector>

#include "common.hpp"
#include "tokmix/simd/gemm.hpp"

#if defined(TOKMIX_BENCH_HAVE_CBLAS)
#include <cblas.h>
#endif

namespace {

using tokmix::index_t;
namespace ts = tokmix::simd;
using ts::detail::gemm_op;
using row_major = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

enum class impl { tokmix, tokmix_avx2, eigen, openblas };

struct operands {
  index_t m, n, k, lda, ldb;
  std::vector<float> a, b, c;
  operands(gemm_op op, index_t m_, index_t n_, index_t k_) : m(m_), n(n_), k(k_) {
    // [m, k] or, for tn, [k, m]; B is [k, n] or, for nt, [n, k].
    lda = op == gemm_op::tn ? m : k;
    ldb = op == gemm_op::nt ? k : n;
    a.resize(static_cast<std::size_t>(m * k));
    b.resize(static_cast<std::size_t>(n * k));
    c.assign(static_cast<std::size_t>(m * n), 0.f);
    for (std::size_t i = 0; i < a.size(); ++i) a[i] = static_cast<float>(i % 97) * 0.01f - 0.48f;
    for (std::size_t i = 0; i < b.size(); ++i) b[i] = static_cast<float>(i % 89) * 0.01f - 0.44f;
  }
};

template <class Arch>
void run_tokmix(gemm_op op, operands& x) {
  switch (op) {
    case gemm_op::nn:
      ts::detail::gemm_dispatch<gemm_op::nn, Arch>(x.m, x.n, x.k, 1.f, x.a.data(), x.lda, x.b.data(), x.ldb, 0.f,
                                                   x.c.data(), x.n);
      break;
    case gemm_op::nt:
      ts::detail::gemm_dispatch<gemm_op::nt, Arch>(x.m, x.n, x.k, 1.f, x.a.data(), x.lda, x.b.data(), x.ldb, 0.f,
                                                   x.c.data(), x.n);
      break;
    case gemm_op::tn:
      ts::detail::gemm_dispatch<gemm_op::tn, Arch>(x.m, x.n, x.k, 1.f, x.a.data(), x.lda, x.b.data(), x.ldb, 0.f,
                                                   x.c.data(), x.n);
      break;
  }
}

void bm_gemm(benchmark::State& state, gemm_op op, impl which, index_t m, index_t n, index_t k) {
  operands x(op, m, n, k);
  const bool at = op == gemm_op::tn, bt = op == gemm_op::nt;
  Eigen::Map<const row_major> ea(x.a.data(), at ? k : m, at ? m : k);
  Eigen::Map<const row_major> eb(x.b.data(), bt ? n : k, bt ? k : n);
  Eigen::Map<row_major> ec(x.c.data(), m, n);
#if defined(TOKMIX_BENCH_HAVE_CBLAS)
  if (which == impl::openblas) {
    openblas_set_num_threads(1);
    state.SetLabel(std::string("core ") + openblas_get_corename());
  }
#endif
  for (auto _ : state) {
    switch (which) {
      case impl::tokmix: run_tokmix<xsimd::default_arch>(op, x); break;
      case impl::tokmix_avx2:
#if XSIMD_WITH_FMA3_AVX2
        run_tokmix<xsimd::fma3<xsimd::avx2>>(op, x);
#endif
        break;
      case impl::eigen:
        if (op == gemm_op::nn) ec.noalias() = ea * eb;
        else if (op == gemm_op::nt) ec.noalias() = ea * eb.transpose();
        else ec.noalias() = ea.transpose() * eb;
        break;
      case impl::openblas:
#if defined(TOKMIX_BENCH_HAVE_CBLAS)
        cblas_sgemm(CblasRowMajor, at ? CblasTrans : CblasNoTrans, bt ? CblasTrans : CblasNoTrans,
                    static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), 1.f, x.a.data(),
                    static_cast<int>(x.lda), x.b.data(), static_cast<int>(x.ldb), 0.f, x.c.data(), static_cast<int>(n));
#endif
        break;
    }
    benchmark::DoNotOptimize(x.c.data());
    benchmark::ClobberMemory();
  }
  tokmix_bench::set_gflops(state, 2.0 * static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k), 1);
}

const char* op_name(gemm_op op) { return op == gemm_op::nn ? "nn" : op == gemm_op::nt ? "nt" : "tn"; }

void reg(gemm_op op, index_t m, index_t n, index_t k, impl which, const char* impl_name) {
  const std::string name = std::string("simd_gemm_") + op_name(op) + "/m:" + std::to_string(m) +
                           "/n:" + std::to_string(n) + "/k:" + std::to_string(k) + "/threads:1/" + impl_name;
  tokmix_bench::defaults(benchmark::RegisterBenchmark(name.c_str(), bm_gemm, op, which, m, n, k))
      ->Unit(benchmark::kMicrosecond);
}

struct shape {
  gemm_op op;
  index_t m, n, k;
};

const bool registered = [] {
  const shape shapes[] = {
      // Q K^T score tiles, D = 64 and 128.
      {gemm_op::nt, 64, 64, 64},
      {gemm_op::nt, 128, 64, 64},
      {gemm_op::nt, 256, 512, 64},
      {gemm_op::nt, 128, 128, 128},
      {gemm_op::nt, 256, 512, 128},
      // P V: probabilities [m, kv] times V [kv, D].
      {gemm_op::nn, 64, 64, 64},
      {gemm_op::nn, 64, 64, 128},
      {gemm_op::nn, 256, 64, 512},
      {gemm_op::nn, 256, 128, 512},
      // K^T V chunk state updates (linear attention / SSD chunks).
      {gemm_op::tn, 64, 64, 64},
      {gemm_op::tn, 64, 64, 256},
      {gemm_op::tn, 128, 128, 128},
      // Decode: 1..8 query rows (GQA groups) against a KV block.
      {gemm_op::nt, 1, 4096, 128},
      {gemm_op::nt, 4, 4096, 128},
      {gemm_op::nt, 8, 4096, 128},
      {gemm_op::nn, 1, 128, 4096},
      {gemm_op::nn, 4, 128, 4096},
  };
  for (const auto& s : shapes) {
    reg(s.op, s.m, s.n, s.k, impl::tokmix, "tokmix");
#if XSIMD_WITH_FMA3_AVX2
    // The same kernel pinned to AVX2 + FMA on builds whose default is wider:
    // the number comparable with the AVX2 anchors.
    if (!std::is_same<xsimd::default_arch, xsimd::fma3<xsimd::avx2>>::value)
      reg(s.op, s.m, s.n, s.k, impl::tokmix_avx2, "tokmix_avx2");
#endif
    reg(s.op, s.m, s.n, s.k, impl::eigen, "eigen");
#if defined(TOKMIX_BENCH_HAVE_CBLAS)
    reg(s.op, s.m, s.n, s.k, impl::openblas, "openblas");
#endif
  }
  return true;
}();

}  // namespace
