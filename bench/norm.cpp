// The block norms (blocks/norm.hpp) against a naive Eigen version of the same
// formula: RMSNorm, RMSNorm fused with the residual add, LayerNorm and its
// fused form, over [rows, d] activations that do not fit in cache. Norms are
// bound by memory, so the counter is GBps over the bytes a norm must move
// (rms / layer: read x, write y; fused: read x and residual, write y and
// residual_out) and frac_of_peak is against the machine's read bandwidth.
#include <cmath>
#include <string>
#include <vector>

#include "common.hpp"
#include "tokmix/blocks/norm.hpp"

namespace {

using tokmix::index_t;
using matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

enum class op { rms, add_rms, layer, add_layer };

const char* op_name(op o) {
  switch (o) {
    case op::rms: return "rms_norm";
    case op::add_rms: return "add_rms_norm";
    case op::layer: return "layer_norm";
    default: return "add_layer_norm";
  }
}

bool fused(op o) { return o == op::add_rms || o == op::add_layer; }

void bm_norm(benchmark::State& state, op o, index_t rows, index_t d, int threads, bool naive) {
  matrix x = matrix::Random(rows, d), r = matrix::Random(rows, d), y(rows, d), ro(rows, d);
  const auto rw = tokmix::rms_norm_weights::random(d, 1);
  const auto lw = tokmix::layer_norm_weights::random(d, true, 1);
  const tokmix::exec_policy pol = threads == 1 ? tokmix::exec_policy::serial() : tokmix::exec_policy::threads(threads);
  const tokmix::tensor_view<const float, 2> xv(x.data(), {rows, d}), rv(r.data(), {rows, d});
  const tokmix::tensor_view<float, 2> yv(y.data(), {rows, d}), rov(ro.data(), {rows, d});
  for (auto _ : state) {
    if (!naive) {
      switch (o) {
        case op::rms: tokmix::rms_norm(xv, rw, yv, pol); break;
        case op::add_rms: tokmix::add_rms_norm(xv, rv, rw, yv, rov, pol); break;
        case op::layer: tokmix::layer_norm(xv, lw, yv, pol); break;
        case op::add_layer: tokmix::add_layer_norm(xv, rv, lw, yv, rov, pol); break;
      }
    } else {
      // What one writes with Eigen's array expressions (one thread).
      const float inv_d = 1.f / static_cast<float>(d);
      if (fused(o)) ro = x + r;
      const matrix& h = fused(o) ? ro : x;
      if (o == op::rms || o == op::add_rms) {
        const Eigen::VectorXf s = ((h.array().square().rowwise().sum() * inv_d) + rw.eps).rsqrt();
        y = (h.array().colwise() * s.array()).rowwise() * rw.weight.transpose().array();
      } else {
        const Eigen::VectorXf mean = h.rowwise().sum() * inv_d;
        const matrix c = h.colwise() - mean;
        const Eigen::VectorXf s = ((c.array().square().rowwise().sum() * inv_d) + lw.eps).rsqrt();
        y = ((c.array().colwise() * s.array()).rowwise() * lw.weight.transpose().array()).rowwise() +
            lw.bias.transpose().array();
      }
    }
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  const double elems = static_cast<double>(rows) * static_cast<double>(d);
  tokmix_bench::set_gbps(state, (fused(o) ? 4.0 : 2.0) * elems * sizeof(float), threads);
}

const bool registered = [] {
  for (op o : {op::rms, op::add_rms, op::layer, op::add_layer})
    for (index_t d : {index_t(1024), index_t(4096)}) {
      const index_t rows = (index_t(1) << 24) / d;  // 64 MiB per tensor: from DRAM
      for (int threads : {1, 2})
        for (bool naive : {false, true}) {
          if (naive && threads != 1) continue;
          const std::string n = std::string(op_name(o)) + "/rows:" + std::to_string(rows) + "/d:" + std::to_string(d) +
                                "/threads:" + std::to_string(threads) + (naive ? "/naive" : "/tokmix");
          tokmix_bench::defaults(benchmark::RegisterBenchmark(n.c_str(), bm_norm, o, rows, d, threads, naive));
        }
    }
  return true;
}();

}  // namespace
