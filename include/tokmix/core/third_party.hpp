#pragma once
// Eigen (with its thread-pool device) and the GCC 12 diagnostics guard, in one
// place. GCC 12 reports false -W(maybe-)uninitialized inside its own AVX-512
// intrinsics (_mm512_undefined_* initialise themselves; GCC bug 105593, fixed
// in 13) wherever Eigen's or xsimd's AVX-512 code is instantiated. GCC takes
// the diagnostic state of a template's definition, and also checks pragmas
// along the inlining stack, so tokmix guards the first inclusion of Eigen and
// xsimd (here and in simd/arch.hpp) and brackets its own kernels with
// TOKMIX_SIMD_AVX512_WARNINGS_OFF/ON, without touching the caller's flags.

#if defined(__GNUC__) && !defined(__clang__)
#define TOKMIX_SIMD_AVX512_WARNINGS_OFF \
  _Pragma("GCC diagnostic push") _Pragma("GCC diagnostic ignored \"-Wmaybe-uninitialized\"") \
      _Pragma("GCC diagnostic ignored \"-Wuninitialized\"")
#define TOKMIX_SIMD_AVX512_WARNINGS_ON _Pragma("GCC diagnostic pop")
#else
#define TOKMIX_SIMD_AVX512_WARNINGS_OFF
#define TOKMIX_SIMD_AVX512_WARNINGS_ON
#endif

// The thread-pool device backs exec_policy::device (core/threading.hpp); it
// exists only if the Tensor module is first included with EIGEN_USE_THREADS.
#ifndef EIGEN_USE_THREADS
#define EIGEN_USE_THREADS
#endif

TOKMIX_SIMD_AVX512_WARNINGS_OFF
#include <Eigen/Core>
#include <unsupported/Eigen/CXX11/Tensor>
TOKMIX_SIMD_AVX512_WARNINGS_ON
