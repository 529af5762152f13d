#pragma once
// Non-owning strided views over Eigen tensors. Public functions take any of
// Eigen::Tensor, Eigen::TensorMap (RowMajor) or tensor_view, so the canonical
// [batch, seq, heads, head_dim] layout needs no adaptor and other layouts
// (PyTorch's [B, H, L, D]) are reached by strides, never by a copy.

#include <array>
#include <cstddef>
#include <initializer_list>
#include <string>
#include <type_traits>

#include "tokmix/core/third_party.hpp"

#include "tokmix/core/element.hpp"
#include "tokmix/core/error.hpp"

namespace tokmix {

using index_t = std::ptrdiff_t;

template <class T, int Rank>
class tensor_view {
  static_assert(Rank >= 1, "tensor_view needs rank >= 1");

 public:
  using element_type = T;
  using value_type = std::remove_const_t<T>;
  using shape_type = std::array<index_t, Rank>;
  static constexpr int rank = Rank;

  tensor_view() : data_(nullptr), dims_{}, strides_{} {}

  // Strides are in elements, not bytes.
  tensor_view(T* data, const shape_type& dims, const shape_type& strides)
      : data_(data), dims_(dims), strides_(strides) {}

  // Dense row-major (last index fastest).
  tensor_view(T* data, const shape_type& dims) : data_(data), dims_(dims) {
    index_t s = 1;
    for (int i = Rank - 1; i >= 0; --i) {
      strides_[i] = s;
      s *= dims[i];
    }
  }

  template <class U, int Options, class IndexType,
            class = std::enable_if_t<std::is_convertible<U*, T*>::value>>
  tensor_view(Eigen::Tensor<U, Rank, Options, IndexType>& t)  // NOLINT: implicit by design
      : tensor_view(t.data(), eigen_dims(t.dimensions())) {
    static_assert(Options & Eigen::RowMajor, "tokmix expects RowMajor tensors ([batch, seq, heads, dim])");
  }

  template <class U, int Options, class IndexType,
            class = std::enable_if_t<std::is_convertible<const U*, T*>::value>>
  tensor_view(const Eigen::Tensor<U, Rank, Options, IndexType>& t)  // NOLINT
      : tensor_view(t.data(), eigen_dims(t.dimensions())) {
    static_assert(Options & Eigen::RowMajor, "tokmix expects RowMajor tensors ([batch, seq, heads, dim])");
  }

  template <class U, int Options, class IndexType, int MapOptions, template <class> class MakePointer,
            class = std::enable_if_t<std::is_convertible<U*, T*>::value>>
  tensor_view(const Eigen::TensorMap<Eigen::Tensor<U, Rank, Options, IndexType>, MapOptions, MakePointer>& t)  // NOLINT
      : tensor_view(t.data(), eigen_dims(t.dimensions())) {
    static_assert(Options & Eigen::RowMajor, "tokmix expects RowMajor tensors ([batch, seq, heads, dim])");
  }

  // A view of non-const elements converts to a view of const elements.
  template <class U, class = std::enable_if_t<std::is_same<const U, T>::value && !std::is_same<U, T>::value>>
  tensor_view(const tensor_view<U, Rank>& other)  // NOLINT
      : data_(other.data()), dims_(other.dims()), strides_(other.strides()) {}

  T* data() const { return data_; }
  const shape_type& dims() const { return dims_; }
  const shape_type& strides() const { return strides_; }
  index_t dim(int i) const { return dims_[i]; }
  index_t stride(int i) const { return strides_[i]; }
  index_t size() const {
    index_t n = 1;
    for (index_t d : dims_) n *= d;
    return n;
  }
  bool empty() const { return size() == 0; }
  bool inner_contiguous() const { return dims_[Rank - 1] <= 1 || strides_[Rank - 1] == 1; }

  template <class... I>
  T* ptr(I... idx) const {
    static_assert(sizeof...(I) <= Rank, "too many indices");
    const index_t ii[] = {static_cast<index_t>(idx)..., 0};
    index_t off = 0;
    for (std::size_t k = 0; k < sizeof...(I); ++k) off += ii[k] * strides_[k];
    return data_ + off;
  }

  template <class... I>
  T& operator()(I... idx) const {
    static_assert(sizeof...(I) == Rank, "operator() takes exactly rank indices");
    return *ptr(idx...);
  }

  // Reorders dimensions: result dim i is this view's dim order[i].
  tensor_view permuted(const std::array<int, Rank>& order) const {
    shape_type d{}, s{};
    for (int i = 0; i < Rank; ++i) {
      d[i] = dims_[order[i]];
      s[i] = strides_[order[i]];
    }
    return tensor_view(data_, d, s);
  }

  std::string shape_string() const {
    std::string out = "[";
    for (int i = 0; i < Rank; ++i) out += (i ? ", " : "") + std::to_string(dims_[i]);
    return out + "]";
  }

 private:
  template <class D>
  static shape_type eigen_dims(const D& d) {
    shape_type out{};
    for (int i = 0; i < Rank; ++i) out[i] = static_cast<index_t>(d[i]);
    return out;
  }

  T* data_;
  shape_type dims_;
  shape_type strides_;
};

// ---- as_view: one spelling for every accepted argument type -----------------

template <class T, int Rank>
tensor_view<T, Rank> as_view(const tensor_view<T, Rank>& v) {
  return v;
}
template <class U, int Rank, int Options, class IndexType>
tensor_view<U, Rank> as_view(Eigen::Tensor<U, Rank, Options, IndexType>& t) {
  return tensor_view<U, Rank>(t);
}
template <class U, int Rank, int Options, class IndexType>
tensor_view<const U, Rank> as_view(const Eigen::Tensor<U, Rank, Options, IndexType>& t) {
  return tensor_view<const U, Rank>(t);
}
template <class U, int Rank, int Options, class IndexType, int MapOptions, template <class> class MakePointer>
tensor_view<U, Rank> as_view(const Eigen::TensorMap<Eigen::Tensor<U, Rank, Options, IndexType>, MapOptions, MakePointer>& t) {
  return tensor_view<U, Rank>(t);
}

template <class X>
using view_of_t = decltype(as_view(std::declval<X&>()));

// A [B, H, L, D] buffer (PyTorch's attention layout) seen as [B, L, H, D], no copy.
template <class T>
tensor_view<T, 4> view_from_bhld(T* data, index_t batch, index_t heads, index_t seq, index_t head_dim) {
  return tensor_view<T, 4>(data, {batch, seq, heads, head_dim},
                           {heads * seq * head_dim, head_dim, seq * head_dim, 1});
}
template <class U, int Options, class IndexType>
auto view_from_bhld(Eigen::Tensor<U, 4, Options, IndexType>& t) {
  return as_view(t).permuted({0, 2, 1, 3});
}
template <class U, int Options, class IndexType>
auto view_from_bhld(const Eigen::Tensor<U, 4, Options, IndexType>& t) {
  return as_view(t).permuted({0, 2, 1, 3});
}

// ---- shape checks ------------------------------------------------------------

// `expected` entries < 0 match any extent.
template <class T, int Rank>
void require_shape(const char* argument, const tensor_view<T, Rank>& v,
                   const typename tensor_view<T, Rank>::shape_type& expected) {  // not deduced: accepts other.dims()
  bool ok = true;
  std::string want = "shape [";
  for (int i = 0; i < Rank; ++i) {
    if (expected[i] >= 0 && expected[i] != v.dim(i)) ok = false;
    want += (i ? ", " : "") + (expected[i] < 0 ? std::string("*") : std::to_string(expected[i]));
  }
  want += "]";
  if (!ok) throw argument_error(argument, want, "shape " + v.shape_string());
}

// Kernels read the last dimension with SIMD loads, so it must be unit-stride;
// other strides may be anything non-negative.
template <class T, int Rank>
void require_layout(const char* argument, const tensor_view<T, Rank>& v) {
  for (int i = 0; i < Rank; ++i) {
    if (v.dim(i) < 0) throw argument_error(argument, "non-negative extents", "extent " + std::to_string(v.dim(i)) + " at dim " + std::to_string(i));
    if (v.stride(i) < 0) throw argument_error(argument, "non-negative strides", "stride " + std::to_string(v.stride(i)) + " at dim " + std::to_string(i));
  }
  if (!v.inner_contiguous())
    throw argument_error(argument, "unit stride in the last dimension", "stride " + std::to_string(v.stride(Rank - 1)));
  if (v.data() == nullptr && v.size() > 0) throw argument_error(argument, "a non-null data pointer", "nullptr");
}

}  // namespace tokmix
