#pragma once
// The feed-forward half of a transformer block: gated (GLU) MLPs and the
// plain two-layer MLP, over token rows.
//
//   gated:  y = W2 (act(W1 x + b1) * (W3 x + b3)) + b2     SwiGLU (silu), GeGLU (gelu), ReGLU (relu)
//   plain:  y = W2 act(W1 x + b1) + b2                      GPT-2 / ViT (gelu), original transformer (relu)
//
// W1, W3: [hidden, d_model], W2: [d_model, hidden] in nn.Linear layout; the
// biases are optional (Llama has none). act is silu, gelu (tanh approximation
// or exact erf) or relu. The activation and the gate product run as one
// vectorised pass over the two hidden products (simd/activation.hpp), the
// three matrix products are Eigen's (blocks/linear.hpp).
//
// Tensor names follow Llama / Mistral / Qwen checkpoints: W1 = `gate_proj`,
// W3 = `up_proj`, W2 = `down_proj` under a prefix (`model.layers.0.mlp`),
// each with `.weight` (and `.bias`); a plain MLP uses `up_proj` / `down_proj`
// for W1 / W2. Other checkpoints pass their own names (mlp_names: Mixtral's
// experts w1 / w3 / w2, timm's fc1 / fc2).
//
// ref: Shazeer, "GLU Variants Improve Transformer", 2020 (FFN_SwiGLU, FFN_GEGLU, FFN_ReGLU);
//      Touvron et al., "LLaMA", 2023 (SwiGLU with hidden = 2/3 * 4 d_model);
//      Hendrycks & Gimpel, "Gaussian Error Linear Units (GELUs)", 2016.
//
//   auto w = tokmix::mlp_weights::random(tokmix::mlp_config::swiglu(1024, 2816), seed);
//   tokmix::mlp_forward(w, x, y);     // x, y: [rows, d_model]; y may be x

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "tokmix/core/third_party.hpp"
#include "tokmix/simd/arch.hpp"

#include "tokmix/blocks/linear.hpp"
#include "tokmix/core/error.hpp"
#include "tokmix/core/named_tensors.hpp"
#include "tokmix/core/random.hpp"
#include "tokmix/core/scratch.hpp"
#include "tokmix/core/tensor_view.hpp"
#include "tokmix/core/threading.hpp"
#include "tokmix/simd/activation.hpp"

TOKMIX_SIMD_AVX512_WARNINGS_OFF
namespace tokmix {

enum class mlp_activation {
  silu,       // x sigmoid(x): SwiGLU
  gelu_tanh,  // 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))): GeGLU, GPT-2 ("gelu_new", "gelu_pytorch_tanh")
  gelu_erf,   // x Phi(x): exact GELU (BERT, ViT; torch's default "gelu")
  relu,       // max(x, 0): ReGLU, the original transformer FFN
};

inline const char* mlp_activation_name(mlp_activation a) {
  switch (a) {
    case mlp_activation::silu: return "silu";
    case mlp_activation::gelu_tanh: return "gelu_tanh";
    case mlp_activation::gelu_erf: return "gelu_erf";
    case mlp_activation::relu: return "relu";
  }
  return "unknown";
}

struct mlp_config {
  index_t d_model = 0;
  index_t hidden = 0;
  mlp_activation activation = mlp_activation::silu;
  bool gated = true;  // act(W1 x) * (W3 x); false: act(W1 x)
  bool bias = false;  // a bias on every projection

  static mlp_config swiglu(index_t d_model, index_t hidden) { return {d_model, hidden, mlp_activation::silu, true, false}; }
  // GeGLU with the tanh approximation (Gemma's gelu_pytorch_tanh) or exact erf.
  static mlp_config geglu(index_t d_model, index_t hidden, bool exact_erf = false) {
    return {d_model, hidden, exact_erf ? mlp_activation::gelu_erf : mlp_activation::gelu_tanh, true, false};
  }
  // Plain two-layer MLP with biases (GPT-2 / ViT / BERT FFN).
  static mlp_config plain(index_t d_model, index_t hidden, mlp_activation act, bool bias = true) {
    return {d_model, hidden, act, false, bias};
  }
};

// Names of the three projections under a prefix (see the top of this file).
struct mlp_names {
  std::string gate = "gate_proj";  // W1 of a gated MLP
  std::string up = "up_proj";      // W3 of a gated MLP, W1 of a plain one
  std::string down = "down_proj";  // W2
};

namespace detail {
inline std::string join_name(const std::string& prefix, const std::string& name) {
  return prefix.empty() ? name : prefix + "." + name;
}
}  // namespace detail

struct mlp_weights {
  mlp_config config;
  linear_weights gate;  // W1 [hidden, d_model]; empty unless config.gated
  linear_weights up;    // W3 [hidden, d_model] (gated) or W1 (plain)
  linear_weights down;  // W2 [d_model, hidden]

  // nn.Linear's default init for each projection, from independent sub-streams.
  static mlp_weights random(const mlp_config& c, std::uint64_t seed) {
    check_config(c);
    mlp_weights w;
    w.config = c;
    if (c.gated) w.gate = linear_weights::random(c.d_model, c.hidden, c.bias, random_stream::derive(seed, 1));
    w.up = linear_weights::random(c.d_model, c.hidden, c.bias, random_stream::derive(seed, 2));
    w.down = linear_weights::random(c.hidden, c.d_model, c.bias, random_stream::derive(seed, 3));
    return w;
  }

  // Reads `prefix.<name>.weight` (and `.bias`) with the shapes `c` implies;
  // a missing tensor or another shape throws, naming the tensor.
  static mlp_weights load(const named_tensors& t, const std::string& prefix, const mlp_config& c,
                          const mlp_names& names = {}) {
    check_config(c);
    mlp_weights w;
    w.config = c;
    if (c.gated) w.gate = linear_weights::load(t, detail::join_name(prefix, names.gate), c.d_model, c.hidden, c.bias);
    w.up = linear_weights::load(t, detail::join_name(prefix, names.up), c.d_model, c.hidden, c.bias);
    w.down = linear_weights::load(t, detail::join_name(prefix, names.down), c.hidden, c.d_model, c.bias);
    return w;
  }

  // The names load reads and save writes, for named_tensors::names_not_in.
  std::vector<std::string> tensor_names(const std::string& prefix, const mlp_names& names = {}) const {
    std::vector<std::string> out;
    for (const std::string* n : {&names.gate, &names.up, &names.down}) {
      if (n == &names.gate && !config.gated) continue;
      out.push_back(detail::join_name(prefix, *n) + ".weight");
      if (config.bias) out.push_back(detail::join_name(prefix, *n) + ".bias");
    }
    return out;
  }

  // Adds the tensors to `t`; nothing is added if the weights are inconsistent
  // or a name is already present.
  void save(named_tensors& t, const std::string& prefix, const mlp_names& names = {}) const {
    check();
    for (const auto& n : tensor_names(prefix, names))
      require(!t.contains(n), "tensor name", "a name not yet present", "'" + n + "' twice");
    if (config.gated) gate.save(t, detail::join_name(prefix, names.gate));
    up.save(t, detail::join_name(prefix, names.up));
    down.save(t, detail::join_name(prefix, names.down));
  }

  // Throws unless every matrix has the shape (and bias) the config says.
  void check() const {
    check_config(config);
    const index_t d = config.d_model, h = config.hidden;
    if (config.gated) check_linear("mlp gate (W1)", gate, d, h);
    else require(gate.weight.size() == 0, "mlp gate (W1)", "empty for a plain MLP", "a matrix");
    check_linear(config.gated ? "mlp up (W3)" : "mlp up (W1)", up, d, h);
    check_linear("mlp down (W2)", down, h, d);
  }

 private:
  static void check_config(const mlp_config& c) {
    require(c.d_model >= 1, "mlp d_model", ">= 1", c.d_model);
    require(c.hidden >= 1, "mlp hidden", ">= 1", c.hidden);
  }
  void check_linear(const char* what, const linear_weights& l, index_t in, index_t out) const {
    require(l.in_features() == in && l.out_features() == out, what,
            "weight [" + std::to_string(out) + ", " + std::to_string(in) + "]",
            "[" + std::to_string(l.out_features()) + ", " + std::to_string(l.in_features()) + "]");
    require(l.has_bias() == config.bias, what, config.bias ? "a bias (config.bias)" : "no bias (config.bias false)",
            l.has_bias() ? "a bias" : "no bias");
    if (l.has_bias())
      require(l.bias.size() == out, what, "bias [" + std::to_string(out) + "]", "[" + std::to_string(l.bias.size()) + "]");
  }
};

namespace detail {

// Rows per pass: bounds the hidden-layer scratch (2 x chunk x hidden floats)
// for long prefills while keeping each product a full-size GEMM.
constexpr index_t mlp_row_chunk = 512;
// Below this many rows per worker, workers split features instead of rows
// (one thin product per worker would stream every weight once per worker).
constexpr index_t mlp_min_rows_per_worker = 64;

// The hidden layer of one block of rows: G = act(W1 x) (* W3 x), and T for
// the W3 product of a gated MLP. [min(rows, mlp_row_chunk), hidden] each.
struct mlp_scratch {
  float* g = nullptr;
  float* t = nullptr;
};

inline std::size_t mlp_scratch_bytes(const mlp_config& c, index_t rows) {
  const index_t n = std::min(rows, mlp_row_chunk);
  return scratch_frame::bytes_for<float>(static_cast<std::size_t>(n * c.hidden)) * (c.gated ? 2 : 1);
}

inline mlp_scratch mlp_scratch_alloc(scratch_frame& frame, const mlp_config& c, index_t rows) {
  const auto n = static_cast<std::size_t>(std::min(rows, mlp_row_chunk) * c.hidden);
  mlp_scratch s;
  s.g = frame.alloc<float>(n);
  if (c.gated) s.t = frame.alloc<float>(n);
  return s;
}

using mlp_matrix = linear_weights::matrix;
using mlp_stride = Eigen::OuterStride<>;
using mlp_cmap = Eigen::Map<const mlp_matrix, 0, mlp_stride>;
using mlp_map = Eigen::Map<mlp_matrix, 0, mlp_stride>;

// out[rows, c0:c1) = X W[c0:c1)^T + b[c0:c1).
inline void mlp_product(const mlp_cmap& X, const linear_weights& w, index_t c0, index_t c1, float* out, index_t ld) {
  mlp_map Y(out, X.rows(), c1 - c0, mlp_stride(ld));
  Y.noalias() = X * w.weight.middleRows(c0, c1 - c0).transpose();
  if (w.has_bias()) Y.rowwise() += w.bias.segment(c0, c1 - c0).transpose();
}

template <simd::activation_kind K>
inline void mlp_hidden_rows(float* g, const float* t, index_t rows, index_t ld, index_t c0, index_t c1, bool gated) {
  for (index_t r = 0; r < rows; ++r) {
    float* gr = g + r * ld + c0;
    if (gated) simd::detail::gated_activation_kernel<K>(simd::default_arch{}, gr, t + r * ld + c0, gr, c1 - c0);
    else simd::detail::activation_kernel<K>(simd::default_arch{}, gr, gr, c1 - c0);
  }
}

// G[rows, c0:c1) <- act(G) (* T) in place.
inline void mlp_activate(mlp_activation a, float* g, const float* t, index_t rows, index_t ld, index_t c0, index_t c1,
                         bool gated) {
  using simd::activation_kind;
  switch (a) {
    case mlp_activation::silu: return mlp_hidden_rows<activation_kind::silu>(g, t, rows, ld, c0, c1, gated);
    case mlp_activation::gelu_tanh: return mlp_hidden_rows<activation_kind::gelu_tanh>(g, t, rows, ld, c0, c1, gated);
    case mlp_activation::gelu_erf: return mlp_hidden_rows<activation_kind::gelu_erf>(g, t, rows, ld, c0, c1, gated);
    case mlp_activation::relu: return mlp_hidden_rows<activation_kind::relu>(g, t, rows, ld, c0, c1, gated);
  }
}

inline void check_mlp_args(const mlp_weights& w, const tensor_view<const float, 2>& x, const tensor_view<float, 2>& y) {
  w.check();
  require_layout("x", x);
  require_layout("y", y);
  require_shape("x", x, {-1, w.config.d_model});
  require_shape("y", y, {x.dim(0), w.config.d_model});
  require(static_cast<const float*>(y.data()) != x.data() || y.strides() == x.strides(), "y",
          "the same strides as x when y is x (in place)", "other strides over the same buffer");
}

// Validated arguments; scratch from mlp_scratch_alloc for at least x.dim(0) rows.
inline void mlp_run(const mlp_weights& w, const tensor_view<const float, 2>& x, const tensor_view<float, 2>& y,
                    const exec_policy& policy, const mlp_scratch& scratch) {
  float* const g_buf = scratch.g;
  float* const t_buf = scratch.t;
  const mlp_config& c = w.config;
  const index_t rows = x.dim(0), d = c.d_model, h = c.hidden;
  const linear_weights& w1 = c.gated ? w.gate : w.up;
  const int workers = worker_slots(policy);
  for (index_t r0 = 0; r0 < rows; r0 += mlp_row_chunk) {
    const index_t n = std::min(mlp_row_chunk, rows - r0);
    const mlp_cmap X(x.ptr(r0, 0), n, d, mlp_stride(x.stride(0)));
    const bool by_rows = n >= mlp_min_rows_per_worker * workers;
    // Hidden layer: every item owns a block of rows or of hidden features, so
    // it applies the activation (and the gate) to what it just produced.
    const index_t items1 = std::min<index_t>(workers, by_rows ? n : h);
    parallel_for(policy, items1, [&](index_t item, int) {
      index_t a0 = 0, a1 = n, c0 = 0, c1 = h;
      if (items1 > 1 && by_rows) a0 = item * n / items1, a1 = (item + 1) * n / items1;
      else if (items1 > 1) c0 = item * h / items1, c1 = (item + 1) * h / items1;
      if (a1 <= a0 || c1 <= c0) return;
      const mlp_cmap Xs(X.data() + a0 * x.stride(0), a1 - a0, d, mlp_stride(x.stride(0)));
      mlp_product(Xs, w1, c0, c1, g_buf + a0 * h + c0, h);
      if (c.gated) mlp_product(Xs, w.up, c0, c1, t_buf + a0 * h + c0, h);
      mlp_activate(c.activation, g_buf + a0 * h, t_buf ? t_buf + a0 * h : nullptr, a1 - a0, h, c0, c1, c.gated);
    });
    // Output projection: rows, or output features for few rows (decode).
    const index_t items2 = std::min<index_t>(workers, by_rows ? n : d);
    parallel_for(policy, items2, [&](index_t item, int) {
      index_t a0 = 0, a1 = n, c0 = 0, c1 = d;
      if (items2 > 1 && by_rows) a0 = item * n / items2, a1 = (item + 1) * n / items2;
      else if (items2 > 1) c0 = item * d / items2, c1 = (item + 1) * d / items2;
      if (a1 <= a0 || c1 <= c0) return;
      const mlp_cmap Gs(g_buf + a0 * h, a1 - a0, h, mlp_stride(h));
      mlp_product(Gs, w.down, c0, c1, y.ptr(r0 + a0, c0), y.stride(0));
    });
  }
}

}  // namespace detail

// y = MLP(x) row by row.                      x: [rows, d_model]   y: [rows, d_model]
// Row strides are free (a [B, L, D] buffer is one [B*L, D] view). y may be x
// itself (in place: each block of rows is read before it is written); no
// other overlap. Hidden-layer scratch (at most 2 x 512 x hidden floats) comes
// from the calling thread's arena, so repeated calls of one size allocate
// nothing. Threads split rows, or features when there are few rows.
inline void mlp_forward(const mlp_weights& w, tensor_view<const float, 2> x, tensor_view<float, 2> y,
                        const exec_policy& policy = {}) {
  detail::check_mlp_args(w, x, y);
  const index_t rows = x.dim(0);
  if (rows == 0) return;
  scratch_frame frame(detail::mlp_scratch_bytes(w.config, rows));
  detail::mlp_run(w, x, y, policy, detail::mlp_scratch_alloc(frame, w.config, rows));
}

}  // namespace tokmix
TOKMIX_SIMD_AVX512_WARNINGS_ON
