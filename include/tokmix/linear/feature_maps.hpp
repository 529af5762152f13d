#pragma once
// Feature maps phi of linear attention: softmax(q.k) is replaced by
// phi(q).phi(k) so attention can be summed into a fixed-size state. One
// description (feature_map) is shared by the causal/non-causal mixers, the
// kernelized relative-position mixer and the tests, and the row kernels here
// are the only place each map's formula is written down.
//
// ref: Katharopoulos et al. 2020, "Transformers are RNNs" (elu+1);
//      Arora et al. 2024, "Simple linear attention language models balance the
//      recall-throughput tradeoff" (Based: 2nd-order Taylor of exp);
//      Aksenov et al. 2024, "Linear Transformers with Learnable Kernel
//      Functions are Better In-Context Models" (ReBased);
//      Choromanski et al. 2021, "Rethinking Attention with Performers" (FAVOR+);
//      Rahimi & Recht 2007 (random Fourier features); Chowdhury et al. 2022,
//      "On Learning the Transformer Kernel" (learned W).
//
// Maps (x is one row of q or k, d = head_dim):
//   identity      phi(x) = x                                           d features
//   elu_plus_one  phi(x) = elu(x) + 1                                  d
//   relu          phi(x) = max(x, 0)                                   d
//   based_taylor  phi(x) = [1, y, vec(y y^T)/sqrt(2)], y = x sqrt(scale),
//                 so phi(q).phi(k) = 1 + s + s^2/2 with s = scale q.k   1 + d + d(d+1)/2
//   rebased       phi(x) = vec(y y^T), y = gamma * LN(x) + beta,
//                 so phi(q).phi(k) = (y_q . y_k)^2                      d(d+1)/2
//   random_features (random_feature_map): x' = x d^-1/4,
//     positive       exp(W x' - |x'|^2/2) / sqrt(m)                    m
//     trigonometric  [sin(W x'), cos(W x')] exp(|x'|^2/2) / sqrt(m)    2m
//     both give E[phi(q).phi(k)] = exp(q.k / sqrt(d)), softmax's kernel.
// The quadratic maps store vec(y y^T) as its upper triangle (off-diagonal
// terms weighted by sqrt(2)), which leaves every dot product phi(q).phi(k)
// unchanged and halves the feature dimension.

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "tokmix/simd/arch.hpp"

#include "tokmix/core/error.hpp"
#include "tokmix/core/tensor_view.hpp"
#include "tokmix/linear/random_features.hpp"
#include "tokmix/simd/activation.hpp"
#include "tokmix/simd/exp.hpp"
#include "tokmix/simd/gemm.hpp"

TOKMIX_SIMD_AVX512_WARNINGS_OFF
namespace tokmix {

enum class feature_map_kind { identity, elu_plus_one, relu, based_taylor, rebased, random_features };

struct feature_map {
  feature_map_kind kind = feature_map_kind::elu_plus_one;
  float scale = -1.f;                       // based_taylor: phi(q).phi(k) ~ exp(scale q.k); -1 = 1/sqrt(head_dim)
  tensor_view<const float, 1> gamma, beta;  // rebased: [head_dim] each; empty = ones / zeros
  float norm_eps = 1e-5f;                   // rebased: layer-norm epsilon
  const random_feature_map* random = nullptr;  // random_features: W and kind (not owned, must outlive calls)
  // random_features, positive kind: subtract maxima of the exponents so exp
  // never overflows or flushes whole rows to 0; see linear_attention.hpp for
  // how the shifts cancel.
  bool stabilize = true;

  static feature_map identity() { return with(feature_map_kind::identity); }
  static feature_map elu_plus_one() { return with(feature_map_kind::elu_plus_one); }
  static feature_map relu() { return with(feature_map_kind::relu); }
  static feature_map based_taylor(float scale = -1.f) {
    feature_map f = with(feature_map_kind::based_taylor);
    f.scale = scale;
    return f;
  }
  static feature_map rebased(tensor_view<const float, 1> gamma = {}, tensor_view<const float, 1> beta = {}) {
    feature_map f = with(feature_map_kind::rebased);
    f.gamma = gamma;
    f.beta = beta;
    return f;
  }
  static feature_map random_features(const random_feature_map& w, bool stabilize = true) {
    feature_map f = with(feature_map_kind::random_features);
    f.random = &w;
    f.stabilize = stabilize;
    return f;
  }

 private:
  static feature_map with(feature_map_kind k) {
    feature_map f;
    f.kind = k;
    return f;
  }
};

// Width of phi(x) for rows of length head_dim.
inline index_t feature_map_dim(const feature_map& f, index_t head_dim) {
  switch (f.kind) {
    case feature_map_kind::based_taylor: return 1 + head_dim + head_dim * (head_dim + 1) / 2;
    case feature_map_kind::rebased: return head_dim * (head_dim + 1) / 2;
    case feature_map_kind::random_features: return f.random ? f.random->feature_dim() : 0;
    default: return head_dim;
  }
}

inline const char* feature_map_name(feature_map_kind k) {
  switch (k) {
    case feature_map_kind::identity: return "identity";
    case feature_map_kind::elu_plus_one: return "elu_plus_one";
    case feature_map_kind::relu: return "relu";
    case feature_map_kind::based_taylor: return "based_taylor";
    case feature_map_kind::rebased: return "rebased";
    case feature_map_kind::random_features: return "random_features";
  }
  return "unknown";
}

// True when phi(x) >= 0 for every x, so normalised outputs are convex
// combinations of values.
inline bool feature_map_positive(const feature_map& f) {
  switch (f.kind) {
    case feature_map_kind::elu_plus_one:
    case feature_map_kind::relu:
    case feature_map_kind::rebased: return true;
    case feature_map_kind::random_features: return f.random && f.random->kind() == random_feature_kind::positive;
    default: return false;
  }
}

// Throws argument_error unless the map can be applied to rows of head_dim.
inline void feature_map_validate(const feature_map& f, index_t head_dim) {
  switch (f.kind) {
    case feature_map_kind::identity:
    case feature_map_kind::elu_plus_one:
    case feature_map_kind::relu: break;
    case feature_map_kind::based_taylor:
      require(f.scale == -1.f || (std::isfinite(f.scale) && f.scale > 0), "feature_map scale",
              "a finite value > 0, or -1 for 1/sqrt(head_dim)", f.scale);
      break;
    case feature_map_kind::rebased: {
      require(std::isfinite(f.norm_eps) && f.norm_eps >= 0, "feature_map norm_eps", "a finite value >= 0", f.norm_eps);
      const tensor_view<const float, 1>* ps[] = {&f.gamma, &f.beta};
      const char* names[] = {"feature_map gamma", "feature_map beta"};
      for (int i = 0; i < 2; ++i) {
        const auto& p = *ps[i];
        if (p.data() == nullptr) continue;
        require_layout(names[i], p);
        require_shape(names[i], p, {head_dim});
        for (index_t j = 0; j < head_dim; ++j)
          if (!std::isfinite(p(j)))
            throw argument_error(names[i], "finite values", detail::to_text(p(j)) + " at " + std::to_string(j));
      }
      break;
    }
    case feature_map_kind::random_features:
      require(f.random != nullptr && !f.random->empty(), "feature_map random", "a random_feature_map with a projection",
              f.random ? "an empty map" : "nullptr");
      require(f.random->head_dim() == head_dim, "feature_map random head_dim", head_dim, f.random->head_dim());
      break;
    default: throw argument_error("feature_map kind", "a feature_map_kind", std::to_string(static_cast<int>(f.kind)));
  }
}

namespace detail {

inline float based_scale(const feature_map& f, index_t d) {
  return f.scale == -1.f ? 1.f / std::sqrt(static_cast<float>(d)) : f.scale;
}

// out = upper triangle of y y^T, row-major: (i, j>=i) -> y_i y_j, diagonal
// times diag_w, off-diagonal times off_w.
template <class Arch>
inline void quadratic_features(Arch, const float* y, index_t d, float diag_w, float off_w, float* out) noexcept {
  for (index_t i = 0; i < d; ++i) {
    *out++ = diag_w * y[i] * y[i];
    const float a = off_w * y[i];
    simd::detail::map_unary(Arch{}, y + i + 1, out, d - i - 1,
                            [a](const simd::fbatch<Arch>& v) { return simd::fbatch<Arch>(a) * v; });
    out += d - i - 1;
  }
}

// phi of `rows` rows (x row r at x + r*ldx) into out (row r at out + r*ldo)
// for every map except positive random features (see positive_logits).
template <class Arch>
inline void feature_rows_kernel(Arch, const feature_map& f, index_t d, const float* x, index_t ldx, index_t rows,
                                float* out, index_t ldo, float* tmp /* [d] */) {
  using fb = simd::fbatch<Arch>;
  switch (f.kind) {
    case feature_map_kind::identity:
      for (index_t r = 0; r < rows; ++r) std::copy(x + r * ldx, x + r * ldx + d, out + r * ldo);
      return;
    case feature_map_kind::elu_plus_one:
      for (index_t r = 0; r < rows; ++r)
        simd::detail::map_unary(Arch{}, x + r * ldx, out + r * ldo, d,
                                [](const fb& v) { return simd::elu_plus_one_batch<Arch>(v); });
      return;
    case feature_map_kind::relu:
      for (index_t r = 0; r < rows; ++r)
        simd::detail::map_unary(Arch{}, x + r * ldx, out + r * ldo, d, [](const fb& v) { return xsimd::max(v, fb(0.f)); });
      return;
    case feature_map_kind::based_taylor: {
      const float s = std::sqrt(based_scale(f, d));
      const float inv_sqrt2 = 0.70710678118654752f;
      for (index_t r = 0; r < rows; ++r) {
        float* o = out + r * ldo;
        o[0] = 1.f;
        const float* xr = x + r * ldx;
        for (index_t i = 0; i < d; ++i) o[1 + i] = s * xr[i];
        quadratic_features(Arch{}, o + 1, d, inv_sqrt2, 1.f, o + 1 + d);
      }
      return;
    }
    case feature_map_kind::rebased: {
      const float sqrt2 = 1.41421356237309505f;
      for (index_t r = 0; r < rows; ++r) {
        const float* xr = x + r * ldx;
        double mean = 0, var = 0;
        for (index_t i = 0; i < d; ++i) mean += xr[i];
        mean /= static_cast<double>(d);
        for (index_t i = 0; i < d; ++i) var += (xr[i] - mean) * (xr[i] - mean);
        var /= static_cast<double>(d);
        const float rstd = static_cast<float>(1.0 / std::sqrt(var + f.norm_eps));
        for (index_t i = 0; i < d; ++i) {
          const float g = f.gamma.data() ? f.gamma(i) : 1.f, b = f.beta.data() ? f.beta(i) : 0.f;
          tmp[i] = g * (static_cast<float>(xr[i] - mean) * rstd) + b;
        }
        quadratic_features(Arch{}, tmp, d, 1.f, sqrt2, out + r * ldo);
      }
      return;
    }
    case feature_map_kind::random_features: {
      // Trigonometric: W x' into the cosine half, then sin/cos in place.
      const random_feature_map& w = *f.random;
      const index_t m = w.n_features();
      const float xs = 1.f / std::sqrt(std::sqrt(static_cast<float>(d)));
      simd::gemm_nt(rows, m, d, xs, x, ldx, w.data(), d, 0.f, out + m, ldo);
      const float inv_sqrt_m = 1.f / std::sqrt(static_cast<float>(m));
      for (index_t r = 0; r < rows; ++r) {
        const float* xr = x + r * ldx;
        float n2 = 0;
        for (index_t i = 0; i < d; ++i) n2 += xr[i] * xr[i];
        const float amp = std::exp(0.5f * n2 * xs * xs) * inv_sqrt_m;
        float* o = out + r * ldo;
        // Scalar sin/cos: xsimd 8's batch sin/cos trips GCC 12's AVX-512
        // -Wmaybe-uninitialized false positive (bug 105593) inside an
        // out-of-line xsimd function that no pragma here can reach. This map
        // is the accuracy-oriented alternative to FAVOR+, not a hot path.
        for (index_t j = 0; j < m; ++j) {
          const float u = o[m + j];
          o[j] = amp * std::sin(u);
          o[m + j] = amp * std::cos(u);
        }
      }
      return;
    }
  }
}

// Positive random features, first half: out = W x' - |x'|^2/2 (the exponents).
inline void positive_logits(const feature_map& f, index_t d, const float* x, index_t ldx, index_t rows, float* out,
                            index_t ldo) {
  const random_feature_map& w = *f.random;
  const index_t m = w.n_features();
  const float xs = 1.f / std::sqrt(std::sqrt(static_cast<float>(d)));
  simd::gemm_nt(rows, m, d, xs, x, ldx, w.data(), d, 0.f, out, ldo);
  for (index_t r = 0; r < rows; ++r) {
    const float* xr = x + r * ldx;
    float n2 = 0;
    for (index_t i = 0; i < d; ++i) n2 += xr[i] * xr[i];
    const float h = 0.5f * n2 * xs * xs;
    float* o = out + r * ldo;
    for (index_t j = 0; j < m; ++j) o[j] -= h;
  }
}

// Second half: row <- exp(row - shift) * mult.
template <class Arch>
inline void exp_shifted_row(Arch, float* row, index_t m, float shift, float mult) noexcept {
  using fb = simd::fbatch<Arch>;
  const fb s(shift), k(mult);
  simd::detail::map_unary(Arch{}, row, row, m, [s, k](const fb& v) { return k * simd::exp_batch<Arch>(v - s); });
}

inline float row_max(const float* row, index_t m) {
  float mx = -std::numeric_limits<float>::infinity();
  for (index_t j = 0; j < m; ++j) mx = std::max(mx, row[j]);
  return mx;
}

inline bool positive_random(const feature_map& f) {
  return f.kind == feature_map_kind::random_features && f.random->kind() == random_feature_kind::positive;
}

// Scratch floats feature_rows needs (the rebased row buffer).
inline index_t feature_rows_tmp(index_t d) { return d; }

// The exact phi (no stabilising shift) for any map.
inline void feature_rows(const feature_map& f, index_t d, const float* x, index_t ldx, index_t rows, float* out,
                         index_t ldo, float* tmp) {
  if (positive_random(f)) {
    positive_logits(f, d, x, ldx, rows, out, ldo);
    const index_t m = f.random->n_features();
    const float inv_sqrt_m = 1.f / std::sqrt(static_cast<float>(m));
    for (index_t r = 0; r < rows; ++r) exp_shifted_row(simd::default_arch{}, out + r * ldo, m, 0.f, inv_sqrt_m);
    return;
  }
  feature_rows_kernel(simd::default_arch{}, f, d, x, ldx, rows, out, ldo, tmp);
}

}  // namespace detail

// phi of each row of x, exactly as defined above (no stabilising shift).
//   x: [rows, head_dim]; out: [rows, feature_map_dim(f, head_dim)]
inline void apply_feature_map(const feature_map& f, tensor_view<const float, 2> x, tensor_view<float, 2> out) {
  require_layout("x", x);
  require_layout("out", out);
  const index_t d = x.dim(1);
  feature_map_validate(f, d);
  require_shape("out", out, {x.dim(0), feature_map_dim(f, d)});
  if (x.dim(0) == 0 || out.dim(1) == 0) return;
  std::vector<float> tmp(static_cast<std::size_t>(std::max<index_t>(1, d)));
  detail::feature_rows(f, d, x.data(), std::max<index_t>(x.stride(0), d), x.dim(0), out.data(),
                       std::max<index_t>(out.stride(0), out.dim(1)), tmp.data());
}

}  // namespace tokmix
TOKMIX_SIMD_AVX512_WARNINGS_ON
