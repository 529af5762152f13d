#pragma once
// Umbrella header: linear attention, its feature maps and the gated / decaying
// linear recurrences (docs/semantics.md, "Linear attention" and "Gated and
// decaying linear recurrences").
#include "tokmix/linear/gla.hpp"
#include "tokmix/linear/retention.hpp"
#include "tokmix/linear/delta_rule.hpp"
#include "tokmix/linear/feature_maps.hpp"
#include "tokmix/linear/linear_attention.hpp"
#include "tokmix/linear/random_features.hpp"
#include "tokmix/linear/kernelized_relpos.hpp"
#include "tokmix/linear/galerkin.hpp"
#include "tokmix/linear/nha.hpp"
