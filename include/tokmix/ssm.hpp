#pragma once
// Umbrella header: the state-space and convolutional mixers (docs/semantics.md, "State-space mixers").
#include "tokmix/ssm/conv1d.hpp"
#include "tokmix/ssm/selective_scan.hpp"
#include "tokmix/ssm/ssd.hpp"
#include "tokmix/ssm/hydra.hpp"
#include "tokmix/ssm/lti.hpp"
#include "tokmix/ssm/long_conv.hpp"
#include "tokmix/ssm/aft.hpp"
