#pragma once
// The one interface every mixer layer (attention, Mamba, Mamba-2, GLA,
// DeltaNet, retention) offers, so a hybrid stack can hold its layers in one
// std::vector<std::unique_ptr<mixer_layer>> and their decode states beside
// them, whatever each layer computes:
//
//   std::vector<std::unique_ptr<tokmix::mixer_layer>> layers = ...;
//   std::vector<std::unique_ptr<tokmix::mixer_layer_state>> states;
//   for (auto& l : layers) states.push_back(l->make_state(batch, max_tokens));
//   layers[i]->prefill(x, y, *states[i]);     // x, y: [batch, seq, d_model]
//   layers[i]->step(x_t, y_t, *states[i]);    // x_t, y_t: [batch, d_model]
//
// Contract of every implementation:
// - prefill(x, y, state) mixes L tokens and appends them to the state, so
//   prefill(L1) then prefill(L2) equals prefill(L1 + L2), and prefill(L) then
//   step()s equals step()s from the start (to fp32 rounding).
// - step(x_t, y_t, state) is one token per sequence; after the first call of
//   a shape it takes nothing more from the scratch arenas (a KV cache is
//   allocated once, by make_state).
// - y must not overlap x. Every check (shapes, batch of the state, KV
//   capacity, a state made by another kind of layer) runs before anything is
//   written, and throws tokmix::argument_error naming the argument.
// - Layers are immutable after construction, so one layer may serve several
//   states from several threads at once (scratch is per thread).
// Each concrete layer also offers the same calls on its own state type
// (e.g. attention_layer::prefill(x, y, attention_layer_state&)), which skip
// the downcast.

#include <cstddef>
#include <memory>
#include <string>
#include <typeinfo>

#include "tokmix/core/error.hpp"
#include "tokmix/core/named_tensors.hpp"
#include "tokmix/core/tensor_view.hpp"
#include "tokmix/core/threading.hpp"

namespace tokmix {

// What decode needs to continue a layer's sequences (KV cache, conv and SSM
// states, recurrent S, the token position for rotary embeddings).
class mixer_layer_state {
 public:
  virtual ~mixer_layer_state() = default;
  // name() of the layer kind that made it.
  virtual const char* layer_name() const = 0;
  virtual index_t batch() const = 0;
  // Tokens consumed per sequence since make_state / reset.
  virtual index_t position() const = 0;
  // Bytes held for decode (the caches and states themselves).
  virtual std::size_t bytes() const = 0;
  // Back to empty sequences; keeps the memory.
  virtual void reset() = 0;
};

class mixer_layer {
 public:
  virtual ~mixer_layer() = default;
  // "attention", "mamba", "mamba2", "gla", "delta_net", "gated_delta_net", "retention".
  virtual const char* name() const = 0;
  virtual index_t d_model() const = 0;
  // A fresh state for `batch` sequences of at most `max_tokens` tokens each
  // (the KV capacity of full attention; recurrent layers and sliding-window
  // attention hold a fixed size and ignore it).
  virtual std::unique_ptr<mixer_layer_state> make_state(index_t batch, index_t max_tokens) const = 0;
  // bytes() of the state make_state(batch, max_tokens) would return.
  virtual std::size_t state_bytes(index_t batch, index_t max_tokens) const = 0;
  // x, y: [batch, seq, d_model]
  virtual void prefill(tensor_view<const float, 3> x, tensor_view<float, 3> y, mixer_layer_state& state) const = 0;
  // x, y: [batch, d_model]
  virtual void step(tensor_view<const float, 2> x, tensor_view<float, 2> y, mixer_layer_state& state) const = 0;
  // Writes the weights under the reference implementation's names, each
  // prefixed by `prefix` (e.g. "model.layers.3.self_attn.").
  virtual void save(named_tensors& t, const std::string& prefix) const = 0;
  virtual const exec_policy& policy() const = 0;
};

namespace detail {

// The concrete state behind a mixer_layer_state, or argument_error.
template <class S>
S& mixer_state_cast(mixer_layer_state& s, const char* layer) {
  S* p = dynamic_cast<S*>(&s);
  if (p == nullptr)
    throw argument_error("state", std::string("a state made by a ") + layer + " layer",
                         std::string("a state of a ") + s.layer_name() + " layer");
  return *p;
}

}  // namespace detail
}  // namespace tokmix
