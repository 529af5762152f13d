#pragma once
// Umbrella header: everything tokmix offers, layer by layer
// (core -> simd -> mixer families; see docs/architecture.md).
#include "tokmix/version.hpp"
#include "tokmix/core.hpp"
#include "tokmix/simd.hpp"
#include "tokmix/attention.hpp"
#include "tokmix/linear.hpp"
#include "tokmix/ssm.hpp"
#include "tokmix/sparse.hpp"
#include "tokmix/blocks.hpp"
#include "tokmix/io.hpp"
