#pragma once
// Feed-forward blocks as mixer_layers, so a hybrid stack's pattern can place
// them like any mixer ("MFMFAF"): a gated / plain MLP (blocks/mlp.hpp) or a
// top-k mixture of experts (blocks/moe.hpp), token by token, no state.
//
//   auto f = std::make_shared<tokmix::mlp_layer>(tokmix::mlp_weights::random(cfg, seed));
//   kinds['F'] = [f](tokmix::index_t) { return f; };   // or one per block

#include <cstring>
#include <memory>
#include <string>

#include "tokmix/blocks/mixer_layer.hpp"
#include "tokmix/blocks/mlp.hpp"
#include "tokmix/blocks/moe.hpp"

namespace tokmix {

// The state of a layer that keeps none: only the tokens seen.
class stateless_layer_state final : public mixer_layer_state {
 public:
  stateless_layer_state(const char* layer, index_t batch) : layer_(layer), batch_(batch) {}
  const char* layer_name() const override { return layer_; }
  index_t batch() const override { return batch_; }
  index_t position() const override { return position_; }
  std::size_t bytes() const override { return 0; }
  void reset() override { position_ = 0; }
  void advance(index_t n) { position_ += n; }

 private:
  const char* layer_;
  index_t batch_, position_ = 0;
};

namespace detail {

// A mixer_layer prefix ends with '.', mlp/moe names join with one.
inline std::string ffn_prefix(const std::string& prefix) {
  return !prefix.empty() && prefix.back() == '.' ? prefix.substr(0, prefix.size() - 1) : prefix;
}

// Row-wise feed-forward on the mixer_layer calls; Fn(x [rows, d], y [rows, d]).
template <class Derived>
class ffn_layer_base : public mixer_layer {
 public:
  std::unique_ptr<mixer_layer_state> make_state(index_t batch, index_t) const override {
    require(batch >= 1, "batch", ">= 1", batch);
    return std::make_unique<stateless_layer_state>(name(), batch);
  }
  std::size_t state_bytes(index_t, index_t) const override { return 0; }

  // x, y: [batch, seq, d_model]
  void prefill(tensor_view<const float, 3> x, tensor_view<float, 3> y, mixer_layer_state& s) const override {
    auto& st = own_state(s);
    const index_t d = d_model();
    require_layout("x", x);
    require_layout("y", y);
    require_shape("x", x, {st.batch(), -1, d});
    require_shape("y", y, {st.batch(), x.dim(1), d});
    const index_t B = x.dim(0), L = x.dim(1);
    // One call over all rows when the batch is dense in rows, else per sequence.
    if (x.stride(0) == L * x.stride(1) && y.stride(0) == L * y.stride(1)) {
      self().rows(tensor_view<const float, 2>(x.data(), {B * L, d}, {x.stride(1), 1}),
                  tensor_view<float, 2>(y.data(), {B * L, d}, {y.stride(1), 1}));
    } else {
      for (index_t b = 0; b < B; ++b)
        self().rows(tensor_view<const float, 2>(x.ptr(b), {L, d}, {x.stride(1), 1}),
                    tensor_view<float, 2>(y.ptr(b), {L, d}, {y.stride(1), 1}));
    }
    st.advance(L);
  }

  // x, y: [batch, d_model]
  void step(tensor_view<const float, 2> x, tensor_view<float, 2> y, mixer_layer_state& s) const override {
    auto& st = own_state(s);
    require_shape("x", x, {st.batch(), d_model()});
    require_shape("y", y, {st.batch(), d_model()});
    self().rows(x, y);
    st.advance(1);
  }

 private:
  const Derived& self() const { return static_cast<const Derived&>(*this); }
  // Every stateless layer shares the state type: the kind is told by name.
  stateless_layer_state& own_state(mixer_layer_state& s) const {
    auto& st = mixer_state_cast<stateless_layer_state>(s, name());
    if (std::strcmp(st.layer_name(), name()) != 0)
      throw argument_error("state", std::string("a state made by a ") + name() + " layer",
                           std::string("a state of a ") + st.layer_name() + " layer");
    return st;
  }
};

}  // namespace detail

// y = MLP(x) per token (SwiGLU, GeGLU, plain): Llama's `mlp.{gate,up,down}_proj`.
class mlp_layer final : public detail::ffn_layer_base<mlp_layer> {
 public:
  explicit mlp_layer(mlp_weights w, exec_policy policy = {}, mlp_names names = {})
      : w_(std::move(w)), policy_(policy), names_(std::move(names)) {
    w_.check();
  }
  const char* name() const override { return "mlp"; }
  index_t d_model() const override { return w_.config.d_model; }
  void save(named_tensors& t, const std::string& prefix) const override {
    w_.save(t, detail::ffn_prefix(prefix), names_);
  }
  const exec_policy& policy() const override { return policy_; }
  const mlp_weights& weights() const { return w_; }
  void rows(tensor_view<const float, 2> x, tensor_view<float, 2> y) const { mlp_forward(w_, x, y, policy_); }

 private:
  mlp_weights w_;
  exec_policy policy_;
  mlp_names names_;
};

// y = sum of the top-k experts per token (Mixtral's `block_sparse_moe`).
class moe_layer final : public detail::ffn_layer_base<moe_layer> {
 public:
  explicit moe_layer(moe_weights w, exec_policy policy = {}, moe_names names = {})
      : w_(std::move(w)), policy_(policy), names_(std::move(names)) {
    w_.check();
  }
  const char* name() const override { return "moe"; }
  index_t d_model() const override { return w_.config.d_model(); }
  void save(named_tensors& t, const std::string& prefix) const override {
    w_.save(t, detail::ffn_prefix(prefix), names_);
  }
  const exec_policy& policy() const override { return policy_; }
  const moe_weights& weights() const { return w_; }
  void rows(tensor_view<const float, 2> x, tensor_view<float, 2> y) const {
    moe_params p;
    p.policy = policy_;
    moe_forward(w_, x, y, p);
  }

 private:
  moe_weights w_;
  exec_policy policy_;
  moe_names names_;
};

}  // namespace tokmix
