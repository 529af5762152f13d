#pragma once
// Umbrella header: everything tokmix offers.
#include "tokmix/version.hpp"
#include "tokmix/core.hpp"
