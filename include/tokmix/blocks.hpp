#pragma once
// Block pieces and layers that compose mixers into models (see docs/architecture.md).
#include "tokmix/blocks/linear.hpp"
#include "tokmix/blocks/norm.hpp"
#include "tokmix/blocks/mixer_layer.hpp"
#include "tokmix/blocks/attention_layer.hpp"
#include "tokmix/blocks/mamba_layer.hpp"
#include "tokmix/blocks/mamba2_layer.hpp"
#include "tokmix/blocks/gla_layer.hpp"
#include "tokmix/blocks/deltanet_layer.hpp"
#include "tokmix/blocks/retention_layer.hpp"
