#pragma once
// Block pieces and layers that compose mixers into models (see docs/architecture.md).
#include "tokmix/blocks/linear.hpp"
