#pragma once
// Block pieces and layers that compose mixers into models (see docs/architecture.md).
#include "tokmix/blocks/linear.hpp"
#include "tokmix/blocks/mlp.hpp"
#include "tokmix/blocks/moe.hpp"
#include "tokmix/blocks/pooling.hpp"
#include "tokmix/blocks/hopfield.hpp"
