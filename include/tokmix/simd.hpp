#pragma once
// Umbrella for the SIMD primitives the mixers are built from.
#include "tokmix/simd/arch.hpp"
#include "tokmix/simd/exp.hpp"
#include "tokmix/simd/reduce.hpp"
#include "tokmix/simd/dot.hpp"
#include "tokmix/simd/activation.hpp"
#include "tokmix/simd/online_softmax.hpp"
#include "tokmix/simd/convert.hpp"
#include "tokmix/simd/gemm.hpp"
#include "tokmix/simd/fft.hpp"
#include "tokmix/simd/norm.hpp"
#include "tokmix/simd/prefetch.hpp"
