// Shared by every consumer project: proves a downstream build can include the
// umbrella header, hand Eigen tensors to tokmix and use its threading, with no
// flags beyond what the tokmix target (or tokmix.pc) provides.
#include <tokmix/tokmix.hpp>

#include <atomic>
#include <cstdio>

int main() {
  // [batch, seq, heads, head_dim]
  Eigen::Tensor<float, 4, Eigen::RowMajor> x(2, 5, 3, 4);
  x.setConstant(1.0f);
  auto v = tokmix::as_view(x);
  tokmix::require_shape("x", v, {2, 5, 3, 4});
  tokmix::require_layout("x", v);

  bool threw = false;
  try {
    tokmix::require_shape("x", v, {2, 6, 3, 4});
  } catch (const tokmix::argument_error& e) {
    threw = true;
    std::printf("expected error: %s\n", e.what());
  }

  // [batch, heads, seq, head_dim] storage seen as [batch, seq, heads, head_dim]
  Eigen::Tensor<float, 4, Eigen::RowMajor> bhld(2, 3, 5, 4);
  bhld.setConstant(2.0f);
  auto pv = tokmix::view_from_bhld(bhld);

  std::atomic<long> sum{0};
  tokmix::parallel_for(tokmix::exec_policy::threads(2), pv.dim(1), [&](tokmix::index_t l, int) {
    long s = 0;
    for (tokmix::index_t b = 0; b < pv.dim(0); ++b)
      for (tokmix::index_t h = 0; h < pv.dim(2); ++h)
        for (tokmix::index_t d = 0; d < pv.dim(3); ++d) s += static_cast<long>(pv(b, l, h, d) + v(b, l, h, d));
    sum += s;
  });

  const long expected = 3L * static_cast<long>(x.size());
  std::printf("tokmix %s consumer: sum=%ld (expected %ld), error thrown=%d\n", TOKMIX_VERSION_STRING, sum.load(),
              expected, threw ? 1 : 0);
  return (sum.load() == expected && threw) ? 0 : 1;
}
