#pragma once
// File formats: weights in and out of named_tensors (see docs/architecture.md).
#include "tokmix/io/safetensors.hpp"
