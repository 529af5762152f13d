#pragma once
// Storage element types. Everything is computed in fp32; fp16 and bf16 exist
// only as storage (inputs, KV caches) and are widened on load.

#include "tokmix/core/third_party.hpp"
#include <type_traits>

namespace tokmix {

template <class T>
struct is_storage_type
    : std::integral_constant<bool, std::is_same<T, float>::value || std::is_same<T, Eigen::half>::value ||
                                       std::is_same<T, Eigen::bfloat16>::value> {};

template <class T>
constexpr bool is_storage_type_v = is_storage_type<std::remove_const_t<T>>::value;

template <class T>
inline float to_float(T x) {
  return static_cast<float>(x);
}

template <class T>
inline T from_float(float x) {
  return static_cast<T>(x);
}

template <class T>
constexpr const char* storage_type_name() {
  using U = std::remove_const_t<T>;
  if (std::is_same<U, float>::value) return "float";
  if (std::is_same<U, Eigen::half>::value) return "half";
  if (std::is_same<U, Eigen::bfloat16>::value) return "bfloat16";
  return "unsupported";
}

}  // namespace tokmix
