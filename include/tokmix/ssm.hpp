#pragma once
// Umbrella header: the state-space mixers (../shared/MIXERS.md, "State-space mixers").
#include "tokmix/ssm/conv1d.hpp"
#include "tokmix/ssm/selective_scan.hpp"
