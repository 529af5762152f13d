#pragma once
// The projection W of random-feature linear attention (Performer FAVOR+,
// trigonometric random Fourier features, or a caller's learned W), held in
// one object so a model can draw it from a seed, redraw it during training
// (Performer resamples W periodically) and share it across layers and calls.
// How the features are formed from W lives in feature_maps.hpp.
//
// ref: Choromanski et al. 2021, "Rethinking Attention with Performers"
//      (ICLR), sec. 2.3-2.4: orthogonal random features, rows of W drawn in
//      blocks of head_dim orthogonal directions with chi(head_dim) lengths;
//      Rahimi & Recht 2007, "Random Features for Large-Scale Kernel Machines";
//      Yu et al. 2016, "Orthogonal Random Features" (block construction).
//
// The Gaussian draws come from core/random.hpp, so a seed gives the same W
// with every standard library.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "tokmix/core/error.hpp"
#include "tokmix/core/random.hpp"
#include "tokmix/core/tensor_view.hpp"

namespace tokmix {

enum class random_feature_kind {
  positive,       // FAVOR+: exp(W x - |x|^2/2) / sqrt(m), m features
  trigonometric,  // RFF: [sin(W x), cos(W x)] * exp(|x|^2/2) / sqrt(m), 2m features
};

class random_feature_map {
 public:
  random_feature_map() = default;

  // n_features rows of dimension head_dim drawn from `seed`. orthogonal: rows
  // in blocks of head_dim mutually orthogonal directions (lower estimator
  // variance, Performer's default); otherwise i.i.d. Gaussian rows.
  random_feature_map(index_t head_dim, index_t n_features, std::uint64_t seed,
                     random_feature_kind kind = random_feature_kind::positive, bool orthogonal = true)
      : head_dim_(head_dim), n_features_(n_features), kind_(kind), orthogonal_(orthogonal), drawn_(true) {
    require(head_dim >= 1, "random_feature_map head_dim", ">= 1", head_dim);
    require(n_features >= 1, "random_feature_map n_features", ">= 1", n_features);
    redraw(seed);
  }

  // A caller's projection (learned spectral kernel): copied.     // w: [n_features, head_dim]
  static random_feature_map from_projection(tensor_view<const float, 2> w,
                                            random_feature_kind kind = random_feature_kind::positive) {
    require_layout("random_feature_map projection", w);
    require(w.dim(0) >= 1 && w.dim(1) >= 1, "random_feature_map projection", "shape [>= 1, >= 1]",
            "shape " + w.shape_string());
    random_feature_map r;
    r.head_dim_ = w.dim(1);
    r.n_features_ = w.dim(0);
    r.kind_ = kind;
    r.w_.resize(static_cast<std::size_t>(r.n_features_ * r.head_dim_));
    for (index_t i = 0; i < r.n_features_; ++i)
      for (index_t j = 0; j < r.head_dim_; ++j) {
        const float x = w(i, j);
        if (!std::isfinite(x))
          throw argument_error("random_feature_map projection", "finite values",
                               detail::to_text(x) + " at [" + std::to_string(i) + ", " + std::to_string(j) + "]");
        r.w_[static_cast<std::size_t>(i * r.head_dim_ + j)] = x;
      }
    return r;
  }

  // Draws a new W from `seed` (same sizes and kind). A map built from a
  // caller's projection has no distribution to draw from.
  void redraw(std::uint64_t seed) {
    require(drawn_, "random_feature_map::redraw", "a map drawn from a seed", "a caller-supplied projection");
    seed_ = seed;
    const index_t d = head_dim_, m = n_features_;
    w_.assign(static_cast<std::size_t>(m * d), 0.f);
    random_stream g(seed);
    if (!orthogonal_) {
      for (auto& x : w_) x = static_cast<float>(g.normal());
      return;
    }
    // Each block: Gram-Schmidt (twice, for orthogonality to rounding) of d
    // Gaussian vectors, which is the Q of a QR with positive diag(R): Haar
    // distributed. Eigen's QR would do, but its AVX-512 GEMV trips GCC 12's
    // -Wmaybe-uninitialized false positive (GCC bug 105593) in user builds.
    std::vector<double> q(static_cast<std::size_t>(d * d));
    for (index_t r0 = 0; r0 < m; r0 += d) {
      for (auto& x : q) x = g.normal();
      for (index_t i = 0; i < d; ++i) {
        double* qi = &q[static_cast<std::size_t>(i * d)];
        for (int pass = 0; pass < 2; ++pass)
          for (index_t j = 0; j < i; ++j) {
            const double* qj = &q[static_cast<std::size_t>(j * d)];
            double dot = 0;
            for (index_t c = 0; c < d; ++c) dot += qi[c] * qj[c];
            for (index_t c = 0; c < d; ++c) qi[c] -= dot * qj[c];
          }
        double n2 = 0;
        for (index_t c = 0; c < d; ++c) n2 += qi[c] * qi[c];
        const double inv = 1.0 / std::sqrt(n2);
        for (index_t c = 0; c < d; ++c) qi[c] *= inv;
      }
      const index_t rows = std::min(d, m - r0);
      for (index_t i = 0; i < rows; ++i) {
        // Row length of an unstructured Gaussian row: chi(d), from an independent draw.
        double len2 = 0;
        for (index_t j = 0; j < d; ++j) {
          const double x = g.normal();
          len2 += x * x;
        }
        const double len = std::sqrt(len2);
        for (index_t j = 0; j < d; ++j)
          w_[static_cast<std::size_t>((r0 + i) * d + j)] = static_cast<float>(q[static_cast<std::size_t>(i * d + j)] * len);
      }
    }
  }

  index_t head_dim() const { return head_dim_; }
  index_t n_features() const { return n_features_; }
  // Width of phi(x): m for positive features, 2m for trigonometric.
  index_t feature_dim() const { return kind_ == random_feature_kind::trigonometric ? 2 * n_features_ : n_features_; }
  random_feature_kind kind() const { return kind_; }
  bool orthogonal() const { return orthogonal_; }
  bool drawn_from_seed() const { return drawn_; }
  std::uint64_t seed() const { return seed_; }
  bool empty() const { return w_.empty(); }

  //                                                    // [n_features, head_dim]
  tensor_view<const float, 2> projection() const { return tensor_view<const float, 2>(w_.data(), {n_features_, head_dim_}); }
  const float* data() const { return w_.data(); }

 private:
  index_t head_dim_ = 0, n_features_ = 0;
  random_feature_kind kind_ = random_feature_kind::positive;
  bool orthogonal_ = true;
  bool drawn_ = false;
  std::uint64_t seed_ = 0;
  std::vector<float> w_;
};

}  // namespace tokmix
