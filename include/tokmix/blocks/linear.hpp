#pragma once
// Dense projection y = x W^T + b (PyTorch nn.Linear layout: W is [out, in]),
// the piece every layer's q/k/v/out, in_proj and MLP matrices are made of.
// Built on Eigen's matrix product: at the [tokens x d_model] x [d_model x d]
// shapes of a layer it runs close to OpenBLAS (Eigen 3.4 ran ~51 GFLOP/s at
// 1024^3 on this machine), so a packed kernel of our own would buy little.
//
//   tokmix::linear_weights w = tokmix::linear_weights::random(d_in, d_out, true, seed);
//   tokmix::linear_forward(w, x, y);               // x: [rows, d_in]  y: [rows, d_out]

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "tokmix/core/third_party.hpp"

#include "tokmix/core/error.hpp"
#include "tokmix/core/named_tensors.hpp"
#include "tokmix/core/random.hpp"
#include "tokmix/core/tensor_view.hpp"
#include "tokmix/core/threading.hpp"
#include "tokmix/simd/arch.hpp"

// Eigen's AVX-512 GEMM trips GCC 12's false -Wmaybe-uninitialized (see simd/arch.hpp).
TOKMIX_SIMD_AVX512_WARNINGS_OFF
namespace tokmix {

struct linear_weights {
  using matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  matrix weight;         // [out, in]
  Eigen::VectorXf bias;  // [out], or empty for no bias

  index_t in_features() const { return weight.cols(); }
  index_t out_features() const { return weight.rows(); }
  bool has_bias() const { return bias.size() != 0; }

  // PyTorch's nn.Linear default: U(-1/sqrt(in), 1/sqrt(in)) for W and b.
  static linear_weights random(index_t in, index_t out, bool with_bias, std::uint64_t seed) {
    require(in >= 1, "linear in_features", ">= 1", in);
    require(out >= 1, "linear out_features", ">= 1", out);
    linear_weights w;
    w.weight.resize(out, in);
    random_stream g(seed);
    const double bound = 1.0 / std::sqrt(static_cast<double>(in));
    for (index_t i = 0; i < w.weight.size(); ++i) w.weight.data()[i] = static_cast<float>(g.uniform(-bound, bound));
    if (with_bias) {
      w.bias.resize(out);
      for (index_t i = 0; i < out; ++i) w.bias[i] = static_cast<float>(g.uniform(-bound, bound));
    }
    return w;
  }

  // `prefix.weight` [out, in] and, when with_bias, `prefix.bias` [out].
  static linear_weights load(const named_tensors& t, const std::string& prefix, index_t in, index_t out,
                             bool with_bias) {
    const auto& we = t.at(prefix + ".weight", {out, in});
    linear_weights w;
    w.weight = Eigen::Map<const matrix>(we.data.data(), out, in);
    if (with_bias) {
      const auto& be = t.at(prefix + ".bias", {out});
      w.bias = Eigen::Map<const Eigen::VectorXf>(be.data.data(), out);
    }
    return w;
  }

  void save(named_tensors& t, const std::string& prefix) const {
    t.insert(prefix + ".weight", {out_features(), in_features()},
             std::vector<float>(weight.data(), weight.data() + weight.size()));
    if (has_bias()) t.insert(prefix + ".bias", {out_features()}, std::vector<float>(bias.data(), bias.data() + bias.size()));
  }
};

namespace detail {

inline void check_linear_args(const linear_weights& w, const tensor_view<const float, 2>& x,
                              const tensor_view<float, 2>& y) {
  require_layout("x", x);
  require_layout("y", y);
  require(w.weight.size() > 0, "linear weights", "a non-empty [out, in] matrix", "an empty one");
  require(!w.has_bias() || w.bias.size() == w.out_features(), "linear bias",
          "[" + std::to_string(w.out_features()) + "] or empty", "[" + std::to_string(w.bias.size()) + "]");
  require_shape("x", x, {-1, w.in_features()});
  require_shape("y", y, {x.dim(0), w.out_features()});
}

}  // namespace detail

// y = x W^T + b.                          x: [rows, in]   y: [rows, out]
// Row strides are free (a [B, L, D] buffer is one [B*L, D] view); y must not
// alias x. Threads split rows, or output features when there are few rows
// (decode), so each worker's product is one Eigen call on its slice.
inline void linear_forward(const linear_weights& w, tensor_view<const float, 2> x, tensor_view<float, 2> y,
                           const exec_policy& policy = {}) {
  detail::check_linear_args(w, x, y);
  const index_t rows = x.dim(0), in = w.in_features(), out = w.out_features();
  if (rows == 0) return;
  using matrix = linear_weights::matrix;
  using stride = Eigen::OuterStride<>;
  const Eigen::Map<const matrix, 0, stride> X(x.data(), rows, in, stride(x.stride(0)));
  // Below this many rows per worker a worker's product is a thin GEMM that
  // streams all of W: cut the output features instead, so W is read once.
  // One item per worker either way (each item packs its slice of W once).
  constexpr index_t min_rows_per_worker = 64;
  const int workers = worker_slots(policy);
  const bool by_rows = rows >= min_rows_per_worker * workers;
  const index_t n_items = std::min<index_t>(workers, by_rows ? rows : out);
  parallel_for(policy, n_items, [&](index_t item, int) {
    index_t r0 = 0, r1 = rows, c0 = 0, c1 = out;
    if (n_items > 1 && by_rows) {
      r0 = item * rows / n_items;
      r1 = (item + 1) * rows / n_items;
    } else if (n_items > 1) {
      c0 = item * out / n_items;
      c1 = (item + 1) * out / n_items;
    }
    if (r1 <= r0 || c1 <= c0) return;
    Eigen::Map<matrix, 0, stride> Y(y.ptr(r0, c0), r1 - r0, c1 - c0, stride(y.stride(0)));
    Y.noalias() = X.middleRows(r0, r1 - r0) * w.weight.middleRows(c0, c1 - c0).transpose();
    if (w.has_bias()) Y.rowwise() += w.bias.segment(c0, c1 - c0).transpose();
  });
}

}  // namespace tokmix
TOKMIX_SIMD_AVX512_WARNINGS_ON
