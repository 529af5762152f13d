// Decode attention (one new token against a long KV cache) is bound by reading
// the cache, so it is reported in GB/s of K+V read against the machine's
// measured read bandwidth. Peers in the same process: plain Eigen per query
// head (re-reading its KV head for every query head of the group, as a simple
// implementation does) and LibTorch's matmul + softmax + matmul.
//
// Each iteration decodes one layer of a stack of layers whose caches together
// exceed twice the last-level cache, as a model does (layer l's K/V is not in
// cache when step t+1 reaches it); otherwise a 32 MB cache would be served from
// a large L3 and the numbers would not be memory bandwidth.
#include <cmath>
#include <cstddef>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <unistd.h>

#include "common.hpp"
#include "tokmix/attention/decode.hpp"

#if TOKMIX_BENCH_HAVE_TORCH
#include <torch/torch.h>
#endif

namespace {

using tokmix::index_t;

constexpr index_t Hq = 32, Hkv = 8, D = 128, KV = 4096;

std::vector<float> uniform(std::size_t n, unsigned seed) {
  std::vector<float> v(n);
  unsigned s = seed * 2654435761u + 7;
  for (auto& x : v) {
    s = s * 1664525u + 1013904223u;
    x = static_cast<float>(s >> 8) / 8388608.f - 1.f;
  }
  return v;
}

double kv_bytes(std::size_t elem) { return 2.0 * double(Hkv) * double(KV) * double(D) * double(elem); }

// Full caches for enough layers that they cannot all sit in the last-level cache.
template <class T>
std::vector<tokmix::kv_cache<T>>& layers() {
  static std::vector<tokmix::kv_cache<T>> caches = [] {
    std::size_t llc = std::size_t(32) << 20;
#ifdef _SC_LEVEL3_CACHE_SIZE
    const long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
    if (l3 > 0) llc = static_cast<std::size_t>(l3);
#endif
    const double per_layer = kv_bytes(sizeof(T));
    std::size_t n = static_cast<std::size_t>(std::ceil(2.0 * double(llc) / per_layer)) + 1;
    n = std::max<std::size_t>(2, std::min<std::size_t>(n, static_cast<std::size_t>((1.2e9) / per_layer)));
    std::vector<tokmix::kv_cache<T>> out;
    const auto k = uniform(static_cast<std::size_t>(KV * Hkv * D), 2), v = uniform(static_cast<std::size_t>(KV * Hkv * D), 3);
    for (std::size_t l = 0; l < n; ++l) {
      out.emplace_back(1, Hkv, D, KV);
      out.back().append(tokmix::tensor_view<const float, 4>(k.data(), {1, KV, Hkv, D}),
                        tokmix::tensor_view<const float, 4>(v.data(), {1, KV, Hkv, D}));
    }
    return out;
  }();
  return caches;
}

template <class T>
void bm_tokmix(benchmark::State& state, int threads) {
  auto& caches = layers<T>();
  const auto q = uniform(static_cast<std::size_t>(Hq * D), 1);
  std::vector<float> o(static_cast<std::size_t>(Hq * D));
  tokmix::attention_params p;
  if (threads > 1) p.policy = tokmix::exec_policy::threads(threads);
  std::size_t layer = 0;
  for (auto _ : state) {
    tokmix::attention_decode(tokmix::tensor_view<const float, 4>(q.data(), {1, 1, Hq, D}), caches[layer],
                             tokmix::tensor_view<float, 4>(o.data(), {1, 1, Hq, D}), p);
    benchmark::DoNotOptimize(o.data());
    layer = (layer + 1) % caches.size();
  }
  tokmix_bench::set_gbps(state, kv_bytes(sizeof(T)), threads);
}

// Plain Eigen, one query head at a time: s = K q (GEMV), softmax, o = V^T p.
// 16-bit caches are widened with Eigen's cast (a temporary per head).
template <class T>
void bm_naive(benchmark::State& state) {
  using mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  auto& caches = layers<T>();
  const auto qv = uniform(static_cast<std::size_t>(Hq * D), 1);
  Eigen::VectorXf s(KV), o(D);
  const float scale = 1.f / std::sqrt(float(D));
  std::size_t layer = 0;
  for (auto _ : state) {
    const auto& c = caches[layer];
    for (index_t h = 0; h < Hq; ++h) {
      const index_t g = h / (Hq / Hkv);
      Eigen::Map<const mat> K(c.k_head(0, g), KV, D), V(c.v_head(0, g), KV, D);
      Eigen::Map<const Eigen::VectorXf> q(qv.data() + h * D, D);
      if constexpr (std::is_same<T, float>::value) s.noalias() = scale * (K * q);
      else s.noalias() = scale * (K.template cast<float>() * q);
      s = (s.array() - s.maxCoeff()).exp();
      s /= s.sum();
      if constexpr (std::is_same<T, float>::value) o.noalias() = V.transpose() * s;
      else o.noalias() = V.template cast<float>().transpose() * s;
      benchmark::DoNotOptimize(o.data());
    }
    layer = (layer + 1) % caches.size();
  }
  tokmix_bench::set_gbps(state, kv_bytes(sizeof(T)), 1);
}

#if TOKMIX_BENCH_HAVE_TORCH
template <class T>
torch::ScalarType torch_type() {
  if (std::is_same<T, Eigen::half>::value) return torch::kHalf;
  if (std::is_same<T, Eigen::bfloat16>::value) return torch::kBFloat16;
  return torch::kFloat;
}

// PyTorch 1.13 on CPU: no fused attention and no GQA, so K/V heads are
// repeated to the query heads; 16-bit caches are widened first (1.13 has no
// fp16 CPU matmul). The cache memory is wrapped, not copied.
template <class T>
void bm_torch(benchmark::State& state, int threads) {
  torch::NoGradGuard no_grad;
  torch::set_num_threads(threads);
  tokmix_bench::set_blas_threads(threads);
  auto& caches = layers<T>();
  std::vector<torch::Tensor> ks, vs;
  for (auto& c : caches) {
    ks.push_back(torch::from_blob(const_cast<T*>(c.k_head(0, 0)), {1, Hkv, KV, D}, torch_type<T>()));
    vs.push_back(torch::from_blob(const_cast<T*>(c.v_head(0, 0)), {1, Hkv, KV, D}, torch_type<T>()));
  }
  const auto q = torch::rand({1, Hq, 1, D}) * 2 - 1;
  const double scale = 1.0 / std::sqrt(double(D));
  std::size_t layer = 0;
  for (auto _ : state) {
    auto k = ks[layer], v = vs[layer];
    if (!std::is_same<T, float>::value) {
      k = k.to(torch::kFloat);
      v = v.to(torch::kFloat);
    }
    k = k.repeat_interleave(Hq / Hkv, 1);
    v = v.repeat_interleave(Hq / Hkv, 1);
    auto s = torch::matmul(q, k.transpose(-2, -1)) * scale;
    auto o = torch::matmul(torch::softmax(s, -1), v);
    benchmark::DoNotOptimize(o.data_ptr<float>());
    layer = (layer + 1) % caches.size();
  }
  tokmix_bench::set_gbps(state, kv_bytes(sizeof(T)), threads);
}
#endif

template <class T>
void register_dtype(const char* dtype) {
  const std::string base = "attention_decode/Hq:" + std::to_string(Hq) + "/Hkv:" + std::to_string(Hkv) +
                           "/D:" + std::to_string(D) + "/kv:" + std::to_string(KV) + "/dtype:" + dtype + "/threads:";
  for (int threads : {1, 2}) {
    tokmix_bench::defaults(
        benchmark::RegisterBenchmark((base + std::to_string(threads) + "/tokmix").c_str(), bm_tokmix<T>, threads));
    if (threads == 1)
      tokmix_bench::defaults(benchmark::RegisterBenchmark((base + "1/naive").c_str(), bm_naive<T>));
#if TOKMIX_BENCH_HAVE_TORCH
    tokmix_bench::defaults(
        benchmark::RegisterBenchmark((base + std::to_string(threads) + "/libtorch").c_str(), bm_torch<T>, threads));
#endif
  }
}

const bool registered = [] {
  register_dtype<float>("f32");
  register_dtype<Eigen::half>("f16");
  register_dtype<Eigen::bfloat16>("bf16");
  return true;
}();

}  // namespace
