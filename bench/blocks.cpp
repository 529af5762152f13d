// Block pieces against what CPU users run today, in the same process:
//   * SwiGLU MLP (d_model 1024, hidden 2816; 512 rows = prefill, 1 row = decode):
//     tokmix vs a naive Eigen version (three products, temporaries for the
//     gate, up and hidden matrices) vs LibTorch (linear, silu, mul, linear).
//   * MoE, 8 SwiGLU experts of the same size, top-2 (Mixtral routing): tokmix
//     vs a naive Eigen version (per expert: gather its tokens, three products,
//     scatter-add) vs LibTorch in the Hugging Face Mixtral style (index_select,
//     linear, index_add_).
//   * safetensors load (F32 and BF16 files of 256 MiB of fp32 values, from the
//     page cache) vs a plain fread of the same file into one reused buffer
//     (the floor) and into new per-tensor buffers (what owning tensors costs).
// FLOPs: 2 * rows * d * hidden * 3 per MLP (per routed token and expert for
// the MoE, plus 2 * rows * d * experts for the router). Decode cases are
// memory-bound and report GBps over the weight bytes read.
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include <unistd.h>

#include "common.hpp"
#include "tokmix/blocks/mlp.hpp"
#include "tokmix/blocks/moe.hpp"
#include "tokmix/io/safetensors.hpp"

#if TOKMIX_BENCH_HAVE_TORCH
#include <torch/torch.h>
#endif

namespace {

using tokmix::index_t;
using matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

constexpr index_t d_model = 1024, hidden = 2816, n_experts = 8, top_k = 2;

std::vector<float> uniform(std::size_t n, unsigned seed) {
  std::vector<float> v(n);
  unsigned s = seed * 2654435761u + 7;
  for (auto& x : v) {
    s = s * 1664525u + 1013904223u;
    x = static_cast<float>(s >> 8) / 8388608.f - 1.f;
  }
  return v;
}

double mlp_flops(index_t rows) { return 2.0 * double(rows) * double(d_model) * double(hidden) * 3; }
double mlp_weight_bytes() { return 3.0 * double(d_model) * double(hidden) * sizeof(float); }

void report_mlp(benchmark::State& state, index_t rows, int threads) {
  if (rows == 1) tokmix_bench::set_gbps(state, mlp_weight_bytes(), threads);
  else tokmix_bench::set_gflops(state, mlp_flops(rows), threads);
}

const tokmix::mlp_weights& mlp_w() {
  static const auto w = tokmix::mlp_weights::random(tokmix::mlp_config::swiglu(d_model, hidden), 1);
  return w;
}

void bm_mlp_tokmix(benchmark::State& state, index_t rows, int threads) {
  const auto& w = mlp_w();
  const auto x = uniform(static_cast<std::size_t>(rows * d_model), 2);
  std::vector<float> y(x.size());
  const auto pol = threads == 1 ? tokmix::exec_policy::serial() : tokmix::exec_policy::threads(threads);
  for (auto _ : state) {
    tokmix::mlp_forward(w, tokmix::tensor_view<const float, 2>(x.data(), {rows, d_model}),
                        tokmix::tensor_view<float, 2>(y.data(), {rows, d_model}), pol);
    benchmark::DoNotOptimize(y.data());
  }
  report_mlp(state, rows, threads);
}

// The three products with whole-matrix temporaries, the gate as an Eigen array expression.
void bm_mlp_naive(benchmark::State& state, index_t rows) {
  const auto& w = mlp_w();
  const matrix x = Eigen::Map<const matrix>(uniform(static_cast<std::size_t>(rows * d_model), 2).data(), rows, d_model);
  matrix a, b, g, y;
  for (auto _ : state) {
    a = x * w.gate.weight.transpose();
    b = x * w.up.weight.transpose();
    g = (a.array() / (1.f + (-a.array()).exp()) * b.array()).matrix();
    y = g * w.down.weight.transpose();
    benchmark::DoNotOptimize(y.data());
  }
  report_mlp(state, rows, 1);
}

#if TOKMIX_BENCH_HAVE_TORCH
torch::Tensor as_torch(const tokmix::linear_weights& l) {
  return torch::from_blob(const_cast<float*>(l.weight.data()), {l.out_features(), l.in_features()}, torch::kFloat);
}

void bm_mlp_torch(benchmark::State& state, index_t rows, int threads) {
  torch::NoGradGuard no_grad;
  torch::set_num_threads(threads);
  tokmix_bench::set_blas_threads(threads);
  const auto& w = mlp_w();
  const auto w1 = as_torch(w.gate), w3 = as_torch(w.up), w2 = as_torch(w.down);
  const auto x = torch::rand({rows, d_model}) * 2 - 1;
  for (auto _ : state) {
    auto y = torch::nn::functional::linear(torch::silu(torch::nn::functional::linear(x, w1)) *
                                               torch::nn::functional::linear(x, w3),
                                           w2);
    benchmark::DoNotOptimize(y.data_ptr<float>());
  }
  report_mlp(state, rows, threads);
}
#endif

// ---- MoE ---------------------------------------------------------------------

const tokmix::moe_weights& moe_w() {
  static const auto w = tokmix::moe_weights::random(tokmix::moe_config::mixtral(d_model, hidden, n_experts, top_k), 3);
  return w;
}

double moe_flops(index_t rows) {
  return double(top_k) * mlp_flops(rows) + 2.0 * double(rows) * double(d_model) * double(n_experts);
}

void report_moe(benchmark::State& state, index_t rows, int threads) {
  if (rows == 1) tokmix_bench::set_gbps(state, double(top_k) * mlp_weight_bytes(), threads);  // 2 experts read
  else tokmix_bench::set_gflops(state, moe_flops(rows), threads);
}

void bm_moe_tokmix(benchmark::State& state, index_t rows, int threads) {
  const auto& w = moe_w();
  const auto x = uniform(static_cast<std::size_t>(rows * d_model), 4);
  std::vector<float> y(x.size());
  tokmix::moe_params p;
  p.policy = threads == 1 ? tokmix::exec_policy::serial() : tokmix::exec_policy::threads(threads);
  for (auto _ : state) {
    tokmix::moe_forward(w, tokmix::tensor_view<const float, 2>(x.data(), {rows, d_model}),
                        tokmix::tensor_view<float, 2>(y.data(), {rows, d_model}), p);
    benchmark::DoNotOptimize(y.data());
  }
  report_moe(state, rows, threads);
}

// Router product, softmax, top-2 and renormalisation with Eigen, then per
// expert: gather its rows, the three products, scaled scatter-add.
void bm_moe_naive(benchmark::State& state, index_t rows) {
  const auto& w = moe_w();
  const matrix x = Eigen::Map<const matrix>(uniform(static_cast<std::size_t>(rows * d_model), 4).data(), rows, d_model);
  matrix logits, y(rows, d_model), xe, a, b, g, ye;
  std::vector<std::vector<std::pair<index_t, float>>> tokens(n_experts);
  for (auto _ : state) {
    logits = x * w.router.weight.transpose();
    for (auto& t : tokens) t.clear();
    for (index_t r = 0; r < rows; ++r) {
      Eigen::VectorXf p = (logits.row(r).array() - logits.row(r).maxCoeff()).exp();
      p /= p.sum();
      index_t e0 = 0, e1 = -1;
      p.maxCoeff(&e0);
      for (index_t e = 0; e < n_experts; ++e)
        if (e != e0 && (e1 < 0 || p[e] > p[e1])) e1 = e;
      const float s = p[e0] + p[e1];
      tokens[e0].push_back({r, p[e0] / s});
      tokens[e1].push_back({r, p[e1] / s});
    }
    y.setZero();
    for (index_t e = 0; e < n_experts; ++e) {
      const auto& t = tokens[e];
      if (t.empty()) continue;
      xe.resize(static_cast<index_t>(t.size()), d_model);
      for (std::size_t i = 0; i < t.size(); ++i) xe.row(static_cast<index_t>(i)) = x.row(t[i].first);
      const auto& m = w.experts[e];
      a = xe * m.gate.weight.transpose();
      b = xe * m.up.weight.transpose();
      g = (a.array() / (1.f + (-a.array()).exp()) * b.array()).matrix();
      ye = g * m.down.weight.transpose();
      for (std::size_t i = 0; i < t.size(); ++i) y.row(t[i].first) += t[i].second * ye.row(static_cast<index_t>(i));
    }
    benchmark::DoNotOptimize(y.data());
  }
  report_moe(state, rows, 1);
}

#if TOKMIX_BENCH_HAVE_TORCH
// transformers' MixtralSparseMoeBlock.forward (eval): softmax, topk, renormalise,
// then per expert index_select, SwiGLU, scale, index_add_.
void bm_moe_torch(benchmark::State& state, index_t rows, int threads) {
  torch::NoGradGuard no_grad;
  torch::set_num_threads(threads);
  tokmix_bench::set_blas_threads(threads);
  namespace F = torch::nn::functional;
  const auto& w = moe_w();
  const auto router = as_torch(w.router);
  std::vector<torch::Tensor> w1, w2, w3;
  for (const auto& m : w.experts) {
    w1.push_back(as_torch(m.gate));
    w3.push_back(as_torch(m.up));
    w2.push_back(as_torch(m.down));
  }
  const auto x = torch::rand({rows, d_model}) * 2 - 1;
  for (auto _ : state) {
    const auto logits = F::linear(x, router);
    auto probs = torch::softmax(logits, 1);
    auto top = torch::topk(probs, top_k, 1);
    auto weights = std::get<0>(top);
    weights = weights / weights.sum(-1, true);
    const auto selected = std::get<1>(top);
    auto y = torch::zeros({rows, d_model});
    const auto mask = torch::one_hot(selected, n_experts).permute({2, 1, 0});  // [experts, k, rows]
    for (index_t e = 0; e < n_experts; ++e) {
      const auto idx = torch::where(mask[e]);
      const auto slot = idx[0], tok = idx[1];
      if (tok.numel() == 0) continue;
      const auto xe = x.index_select(0, tok);
      auto ye = F::linear(torch::silu(F::linear(xe, w1[e])) * F::linear(xe, w3[e]), w2[e]);
      ye = ye * weights.index({tok, slot}).unsqueeze(1);
      y.index_add_(0, tok, ye);
    }
    benchmark::DoNotOptimize(y.data_ptr<float>());
  }
  report_moe(state, rows, threads);
}
#endif

// ---- safetensors ---------------------------------------------------------------

// 16 tensors of 2048 x 2048: 256 MiB of fp32 values per file (the F32 file is
// 256 MiB, the BF16 one 128 MiB), written once per process to the temp dir.
std::string bench_file(tokmix::safetensors_dtype dt) {
  static std::map<int, std::string> paths;
  auto& p = paths[static_cast<int>(dt)];
  if (!p.empty()) return p;
  p = (std::filesystem::temp_directory_path() /
       ("tokmix_bench_" + std::to_string(::getpid()) + "_" + tokmix::safetensors_dtype_name(dt) + ".safetensors"))
          .string();
  tokmix::named_tensors t;
  for (int i = 0; i < 16; ++i)
    t.insert("model.layers." + std::to_string(i) + ".weight", {2048, 2048}, uniform(std::size_t(2048) * 2048, unsigned(i)));
  tokmix::safetensors_write(p, t, dt);
  return p;
}

struct remove_files {
  ~remove_files() {
    for (auto dt : {tokmix::safetensors_dtype::f32, tokmix::safetensors_dtype::bf16}) {
      const auto p = std::filesystem::temp_directory_path() /
                     ("tokmix_bench_" + std::to_string(::getpid()) + "_" + tokmix::safetensors_dtype_name(dt) + ".safetensors");
      std::error_code ec;
      std::filesystem::remove(p, ec);
    }
  }
} cleanup;

void bm_load_tokmix(benchmark::State& state, tokmix::safetensors_dtype dt) {
  const auto path = bench_file(dt);
  const double bytes = double(std::filesystem::file_size(path));
  for (auto _ : state) {
    auto c = tokmix::safetensors_read(path);
    benchmark::DoNotOptimize(c.tensors.size());
  }
  tokmix_bench::set_gbps(state, bytes, 1);
}

// The floor: one fread of the whole file into a buffer (no parsing, no conversion).
void bm_load_fread(benchmark::State& state, tokmix::safetensors_dtype dt) {
  const auto path = bench_file(dt);
  const auto size = std::filesystem::file_size(path);
  std::vector<unsigned char> buf(size);
  for (auto _ : state) {
    std::FILE* f = std::fopen(path.c_str(), "rb");
    const std::size_t got = std::fread(buf.data(), 1, size, f);
    std::fclose(f);
    benchmark::DoNotOptimize(got);
    benchmark::DoNotOptimize(buf.data());
  }
  tokmix_bench::set_gbps(state, double(size), 1);
}

// What any loader that owns its tensors pays: fread each tensor's bytes into a
// newly allocated std::vector (first touch of fresh pages; on this VM that,
// not the copy, dominates). Same bytes as the file, no parsing or conversion.
void bm_load_fread_new(benchmark::State& state, tokmix::safetensors_dtype dt) {
  const auto path = bench_file(dt);
  const auto size = std::filesystem::file_size(path);
  const std::size_t per = (size - 8) / 16;  // header bytes are counted with the first tensor
  for (auto _ : state) {
    std::vector<std::vector<unsigned char>> bufs(16);
    std::FILE* f = std::fopen(path.c_str(), "rb");
    for (int i = 0; i < 16; ++i) {
      bufs[static_cast<std::size_t>(i)].resize(i == 0 ? size - 15 * per : per);
      benchmark::DoNotOptimize(std::fread(bufs[static_cast<std::size_t>(i)].data(), 1, bufs[static_cast<std::size_t>(i)].size(), f));
    }
    std::fclose(f);
    benchmark::DoNotOptimize(bufs.data());
  }
  tokmix_bench::set_gbps(state, double(size), 1);
}

const bool registered = [] {
  auto reg = [](const std::string& name, auto fn, auto... args) {
    return tokmix_bench::defaults(benchmark::RegisterBenchmark(name.c_str(), fn, args...));
  };
  for (index_t rows : {index_t(512), index_t(1)}) {
    const std::string mlp = "swiglu_mlp/d:1024/hidden:2816/rows:" + std::to_string(rows) + "/threads:";
    const std::string moe = "moe/experts:8/top:2/d:1024/hidden:2816/rows:" + std::to_string(rows) + "/threads:";
    for (int threads : {1, 2}) reg(mlp + std::to_string(threads) + "/tokmix", bm_mlp_tokmix, rows, threads);
    reg(mlp + "1/naive", bm_mlp_naive, rows);
#if TOKMIX_BENCH_HAVE_TORCH
    for (int threads : {1, 2}) reg(mlp + std::to_string(threads) + "/libtorch", bm_mlp_torch, rows, threads);
#endif
    for (int threads : {1, 2}) reg(moe + std::to_string(threads) + "/tokmix", bm_moe_tokmix, rows, threads);
    reg(moe + "1/naive", bm_moe_naive, rows);
#if TOKMIX_BENCH_HAVE_TORCH
    for (int threads : {1, 2}) reg(moe + std::to_string(threads) + "/libtorch", bm_moe_torch, rows, threads);
#endif
  }
  for (auto dt : {tokmix::safetensors_dtype::f32, tokmix::safetensors_dtype::bf16}) {
    const std::string base = std::string("safetensors_load/dtype:") + tokmix::safetensors_dtype_name(dt) + "/MiB:256/threads:1/";
    reg(base + "tokmix", bm_load_tokmix, dt);
    reg(base + "fread", bm_load_fread, dt);
    reg(base + "fread_new_buffers", bm_load_fread_new, dt);
  }
  return true;
}();

}  // namespace
