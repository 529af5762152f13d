// Tests for include/tokmix/core/tensor_view.hpp: views over Eigen tensors and
// maps (const-correct), PyTorch's [B, H, L, D] through strides, shape checks.
#include "tokmix/core/tensor_view.hpp"

#include <array>
#include <string>
#include <type_traits>
#include <vector>

#include <catch2/catch.hpp>

namespace {

using tensor4 = Eigen::Tensor<float, 4, Eigen::RowMajor>;

void fill_iota(tensor4& t) {
  for (Eigen::Index i = 0; i < t.size(); ++i) t.data()[i] = static_cast<float>(i);
}

// The message of the argument_error `fn` throws (fails the test if none).
template <class Fn>
std::string error_message(Fn&& fn) {
  try {
    fn();
  } catch (const tokmix::argument_error& e) {
    return e.what();
  }
  FAIL("no tokmix::argument_error thrown");
  return {};
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

}  // namespace

TEST_CASE("view of a RowMajor Tensor is dense row-major and aliases it", "[core][tensor_view]") {
  tensor4 t(2, 3, 4, 5);  // [batch, seq, heads, head_dim]
  fill_iota(t);
  tokmix::tensor_view<float, 4> v = t;
  CHECK(v.data() == t.data());
  CHECK(v.dims() == std::array<tokmix::index_t, 4>{2, 3, 4, 5});
  CHECK(v.strides() == std::array<tokmix::index_t, 4>{60, 20, 5, 1});
  CHECK(v.size() == 120);
  CHECK_FALSE(v.empty());
  CHECK(v.inner_contiguous());
  for (int b = 0; b < 2; ++b)
    for (int l = 0; l < 3; ++l)
      for (int h = 0; h < 4; ++h)
        for (int d = 0; d < 5; ++d) REQUIRE(v(b, l, h, d) == t(b, l, h, d));
  v(1, 2, 3, 4) = -7.0f;
  CHECK(t(1, 2, 3, 4) == -7.0f);
  CHECK(v.ptr(1, 2) == t.data() + 1 * 60 + 2 * 20);
  CHECK(v.shape_string() == "[2, 3, 4, 5]");
}

TEST_CASE("as_view keeps constness of Tensor and TensorMap", "[core][tensor_view]") {
  tensor4 t(1, 2, 3, 4);
  fill_iota(t);
  const tensor4& ct = t;
  Eigen::TensorMap<tensor4> map(t.data(), 1, 2, 3, 4);
  Eigen::TensorMap<Eigen::Tensor<const float, 4, Eigen::RowMajor>> cmap(t.data(), 1, 2, 3, 4);

  auto v = tokmix::as_view(t);
  auto cv = tokmix::as_view(ct);
  auto mv = tokmix::as_view(map);
  auto cmv = tokmix::as_view(cmap);
  STATIC_REQUIRE(std::is_same<decltype(v), tokmix::tensor_view<float, 4>>::value);
  STATIC_REQUIRE(std::is_same<decltype(cv), tokmix::tensor_view<const float, 4>>::value);
  STATIC_REQUIRE(std::is_same<decltype(mv), tokmix::tensor_view<float, 4>>::value);
  STATIC_REQUIRE(std::is_same<decltype(cmv), tokmix::tensor_view<const float, 4>>::value);
  STATIC_REQUIRE(std::is_same<tokmix::view_of_t<const tensor4>, tokmix::tensor_view<const float, 4>>::value);
  // A const view cannot become mutable; a mutable one converts to const.
  STATIC_REQUIRE_FALSE(std::is_convertible<tokmix::tensor_view<const float, 4>, tokmix::tensor_view<float, 4>>::value);
  STATIC_REQUIRE_FALSE(std::is_convertible<const tensor4&, tokmix::tensor_view<float, 4>>::value);
  tokmix::tensor_view<const float, 4> from_mutable = v;

  for (const float* view_data : {cv.data(), static_cast<const float*>(mv.data()), cmv.data(), from_mutable.data()})
    CHECK(view_data == t.data());
  CHECK(cmv.dims() == v.dims());
  CHECK(cmv.strides() == v.strides());
  CHECK(cmv(0, 1, 2, 3) == t(0, 1, 2, 3));
}

TEST_CASE("views of half and bfloat16 tensors", "[core][tensor_view]") {
  Eigen::Tensor<Eigen::half, 3, Eigen::RowMajor> h(2, 3, 4);
  h.setConstant(Eigen::half(1.5f));
  Eigen::Tensor<Eigen::bfloat16, 2, Eigen::RowMajor> bf(3, 8);
  bf.setConstant(Eigen::bfloat16(-2.0f));
  auto hv = tokmix::as_view(h);
  auto bv = tokmix::as_view(bf);
  STATIC_REQUIRE(std::is_same<decltype(hv)::value_type, Eigen::half>::value);
  CHECK(tokmix::to_float(hv(1, 2, 3)) == 1.5f);
  CHECK(tokmix::to_float(bv(2, 7)) == -2.0f);
  CHECK(bv.strides() == std::array<tokmix::index_t, 2>{8, 1});
}

TEST_CASE("view_from_bhld sees [B, H, L, D] storage as [B, L, H, D] with no copy", "[core][tensor_view]") {
  const int B = 2, H = 3, L = 5, D = 7;
  tensor4 bhld(B, H, L, D);
  fill_iota(bhld);

  auto from_ptr = tokmix::view_from_bhld(bhld.data(), B, H, L, D);
  auto from_tensor = tokmix::view_from_bhld(bhld);
  const tensor4& cbhld = bhld;
  auto from_const = tokmix::view_from_bhld(cbhld);
  STATIC_REQUIRE(std::is_same<decltype(from_const), tokmix::tensor_view<const float, 4>>::value);

  for (const auto& v : {tokmix::tensor_view<const float, 4>(from_ptr), tokmix::tensor_view<const float, 4>(from_tensor),
                        from_const}) {
    CHECK(v.data() == bhld.data());
    CHECK(v.dims() == std::array<tokmix::index_t, 4>{B, L, H, D});
    CHECK(v.inner_contiguous());
    for (int b = 0; b < B; ++b)
      for (int l = 0; l < L; ++l)
        for (int h = 0; h < H; ++h)
          for (int d = 0; d < D; ++d) REQUIRE(v(b, l, h, d) == bhld(b, h, l, d));
  }
  CHECK(from_ptr.strides() == from_tensor.strides());
  CHECK_NOTHROW(tokmix::require_layout("k", from_ptr));
}

TEST_CASE("explicit strides and permuted views", "[core][tensor_view]") {
  // A [4, 6] buffer, viewed as its every-other-column [4, 3] slice and transposed.
  std::vector<float> buf(24);
  for (int i = 0; i < 24; ++i) buf[i] = static_cast<float>(i);
  tokmix::tensor_view<float, 2> cols(buf.data(), {4, 3}, {6, 2});
  CHECK(cols(3, 2) == 3 * 6 + 4);
  CHECK_FALSE(cols.inner_contiguous());
  auto tr = cols.permuted({1, 0});
  CHECK(tr.dims() == std::array<tokmix::index_t, 2>{3, 4});
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 3; ++j) REQUIRE(tr(j, i) == cols(i, j));
  // An extent of 1 in the last dim counts as contiguous whatever its stride.
  tokmix::tensor_view<float, 2> one(buf.data(), {4, 1}, {6, 9});
  CHECK(one.inner_contiguous());
  // Empty views.
  tokmix::tensor_view<float, 2> none;
  CHECK(none.empty());
  CHECK(tokmix::tensor_view<float, 3>(buf.data(), {2, 0, 3}).empty());
}

TEST_CASE("require_shape: wildcards, and messages with argument, expected and actual", "[core][tensor_view]") {
  tensor4 t(2, 3, 4, 5);
  auto v = tokmix::as_view(t);
  CHECK_NOTHROW(tokmix::require_shape("q", v, {2, 3, 4, 5}));
  CHECK_NOTHROW(tokmix::require_shape("q", v, {-1, 3, -1, 5}));
  CHECK_THROWS_AS(tokmix::require_shape("q", v, {2, 3, 4, 6}), tokmix::argument_error);
  CHECK_THROWS_AS(tokmix::require_shape("q", v, {2, 3, 4, 6}), std::invalid_argument);

  const std::string msg = error_message([&] { tokmix::require_shape("value", v, {2, -1, 8, 5}); });
  INFO(msg);
  CHECK(contains(msg, "value"));
  CHECK(contains(msg, "[2, *, 8, 5]"));
  CHECK(contains(msg, "[2, 3, 4, 5]"));
  try {
    tokmix::require_shape("value", v, {1, 3, 4, 5});
  } catch (const tokmix::argument_error& e) {
    CHECK(e.argument() == "value");
    CHECK(contains(e.expected(), "[1, 3, 4, 5]"));
    CHECK(contains(e.actual(), "[2, 3, 4, 5]"));
  }
}

TEST_CASE("require_layout rejects what kernels cannot read", "[core][tensor_view]") {
  std::vector<float> buf(64, 0.0f);
  tokmix::tensor_view<float, 2> dense(buf.data(), {4, 8});
  CHECK_NOTHROW(tokmix::require_layout("x", dense));

  const std::string strided = error_message(
      [&] { tokmix::require_layout("key", tokmix::tensor_view<float, 2>(buf.data(), {4, 8}, {8, 2})); });
  INFO(strided);
  CHECK(contains(strided, "key"));
  CHECK(contains(strided, "unit stride"));
  CHECK(contains(strided, "stride 2"));

  const std::string negative = error_message(
      [&] { tokmix::require_layout("cache", tokmix::tensor_view<float, 2>(buf.data() + 56, {4, 8}, {-8, 1})); });
  INFO(negative);
  CHECK(contains(negative, "cache"));
  CHECK(contains(negative, "non-negative strides"));
  CHECK(contains(negative, "-8"));

  const std::string null = error_message(
      [&] { tokmix::require_layout("out", tokmix::tensor_view<float, 2>(nullptr, {4, 8})); });
  CHECK(contains(null, "out"));
  CHECK(contains(null, "nullptr"));
  // An empty view may have no storage.
  CHECK_NOTHROW(tokmix::require_layout("out", tokmix::tensor_view<float, 2>(nullptr, {0, 8})));
}
