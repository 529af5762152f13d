// tokmix.hpp pulls in every family: this file proves they compile together in
// one translation unit (no clashing names, no missing includes) and that the
// umbrella exposes each family's entry points.
#include <tokmix/tokmix.hpp>

#include <catch2/catch.hpp>

#include <string>

TEST_CASE("umbrella header exposes every family", "[umbrella]") {
  CHECK(std::string(TOKMIX_VERSION_STRING) == "0.1.0");
  // One entry point per family, referenced (not run) so a missing include fails to compile.
  CHECK(tokmix::simd::lanes<tokmix::simd::default_arch> >= 1);
  tokmix::attention_params ap;
  CHECK(ap.causal == false);
  CHECK(sizeof(tokmix::kv_cache<float>) > 0);
  CHECK(sizeof(tokmix::gla_state) > 0);
  CHECK(sizeof(tokmix::linear_attention_state) > 0);
  CHECK(sizeof(tokmix::selective_scan_state) > 0);
  CHECK(sizeof(tokmix::ssd_state) > 0);
  CHECK(sizeof(tokmix::conv1d_state) > 0);
  CHECK(sizeof(tokmix::lti_state) > 0);
  CHECK(sizeof(tokmix::aft_state) > 0);
  CHECK(sizeof(tokmix::linear_weights) > 0);
  CHECK(sizeof(tokmix::named_tensors) > 0);
  CHECK(sizeof(tokmix::hybrid_stack_config) > 0);
  CHECK(sizeof(tokmix::block_layout) > 0);
  CHECK(sizeof(tokmix::routing_params) > 0);
  CHECK(sizeof(tokmix::mamba2_layer_config) > 0);
  CHECK(sizeof(tokmix::mlp_config) > 0);
}
