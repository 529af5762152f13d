// Hydra against its quasiseparable matrix materialised in float64 (forward
// part below the diagonal, backward part above, D on it): chunk sizes, odd
// shapes, grouped B/C, every optional input; bad inputs throw and write nothing.

#include "tokmix/ssm/hydra.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "ssm/reference_ssd.hpp"
#include "support/compare.hpp"

using namespace tokmix;
using tokmix_test::random_floats;
using tokmix_test::ssd_buffer;
using tokmix_test::ssd_ref::problem;

namespace {

problem make_problem(std::size_t batch, std::size_t seq, std::size_t heads, std::size_t head_dim, std::size_t groups,
                     std::size_t d_state, int flags, unsigned seed) {
  const bool D = flags & 1, D_channel = flags & 2, z = flags & 4, bias = flags & 8, softplus = flags & 16;
  problem p;
  p.batch = batch;
  p.seq = seq;
  p.heads = heads;
  p.head_dim = head_dim;
  p.groups = groups;
  p.d_state = d_state;
  const std::size_t nx = batch * seq * heads * head_dim, nbc = batch * seq * groups * d_state;
  p.x = random_floats(nx, seed, -1.f, 1.f);
  p.dt = softplus ? random_floats(batch * seq * heads, seed + 1, -4.f, 1.f)
                  : random_floats(batch * seq * heads, seed + 1, 0.001f, 0.5f);
  p.A = random_floats(heads, seed + 2, -1.f, 1.5f);
  for (float& a : p.A) a = -std::exp(a);
  p.B = random_floats(nbc, seed + 3);
  p.C = random_floats(nbc, seed + 4);
  if (z) p.z = random_floats(nx, seed + 5, -3.f, 3.f);
  if (D) {
    p.d_cols = D_channel ? head_dim : 1;
    p.D = random_floats(heads * p.d_cols, seed + 6);
  }
  if (bias) p.bias = random_floats(heads, seed + 7, softplus ? -1.f : 0.f, 0.3f);
  p.softplus = softplus;
  if (flags & 32) {
    p.dt_min = 0.01f;
    p.dt_max = 0.3f;
  }
  return p;
}

std::vector<float> run_hydra(const problem& p, index_t chunk, std::size_t gap, exec_policy policy = {}) {
  ssd_buffer x({p.batch, p.seq, p.heads, p.head_dim}, gap), z({p.batch, p.seq, p.heads, p.head_dim}, gap),
      y({p.batch, p.seq, p.heads, p.head_dim}, gap), dt({p.batch, p.seq, p.heads}, gap), A({p.heads}),
      B({p.batch, p.seq, p.groups, p.d_state}, gap), C({p.batch, p.seq, p.groups, p.d_state}, gap),
      D({p.heads * p.d_cols}), bias({p.heads});
  x.fill(p.x);
  z.fill(p.z);
  dt.fill(p.dt);
  A.fill(p.A);
  B.fill(p.B);
  C.fill(p.C);
  D.fill(p.D);
  bias.fill(p.bias);
  hydra_params prm;
  if (!p.D.empty()) prm.D = tensor_view<const float, 2>(D.mem.data(), {index_t(p.heads), index_t(p.d_cols)});
  if (!p.bias.empty()) prm.dt_bias = bias.cview<1>();
  prm.dt_softplus = p.softplus;
  prm.dt_min = p.dt_min;
  prm.dt_max = p.dt_max;
  prm.chunk_size = chunk;
  prm.policy = policy;
  if (p.z.empty())
    hydra_forward(x.cview<4>(), dt.cview<3>(), A.cview<1>(), B.cview<4>(), C.cview<4>(), y.view<4>(), prm);
  else
    hydra_forward(x.cview<4>(), dt.cview<3>(), A.cview<1>(), B.cview<4>(), C.cview<4>(), z.cview<4>(), y.view<4>(), prm);
  REQUIRE(y.pads_untouched());
  return y.dense();
}

void check(const problem& p, index_t chunk, std::size_t gap) {
  INFO("batch " << p.batch << " seq " << p.seq << " heads " << p.heads << " P " << p.head_dim << " G " << p.groups
                << " N " << p.d_state << " chunk " << chunk << " D " << p.D.size() << " z " << !p.z.empty()
                << " softplus " << p.softplus << " gap " << gap);
  const auto y = run_hydra(p, chunk, gap);
  std::vector<double> ref;
  tokmix_test::ssd_ref::hydra(p, ref);
  double scale = 1.0;
  for (double v : ref) scale = std::max(scale, std::abs(v));
  const double tol = 4e-6 * scale * std::sqrt(double(p.d_state) + double(chunk) + 1.0);
  TOKMIX_REQUIRE_CLOSE(y.data(), ref.data(), y.size(), tol, 2e-5);
}

}  // namespace

TEST_CASE("hydra: matches the materialised quasiseparable matrix", "[ssm][hydra]") {
  unsigned seed = 2000;
  int combo = 0;
  for (std::size_t seq : {1, 2, 7, 65, 130})
    for (index_t chunk : {1, 16, 64})
      for (std::size_t groups : {1, 3}) {
        ++combo;
        const int flags = (combo * 7) % 64;
        seed += 10;
        check(make_problem(2, seq, 6, 33, groups, 17, flags, seed), chunk, combo % 3);
      }
  for (int flags = 0; flags < 64; ++flags) check(make_problem(1, 19, 2, 4, 1, 3, flags, 3000 + flags), 8, 0);
  check(make_problem(1, 100, 2, 64, 2, 128, 1 | 4 | 16, 77), 64, 1);
}

TEST_CASE("hydra: threads give the serial result bit for bit", "[ssm][hydra]") {
  const problem p = make_problem(2, 70, 6, 16, 3, 16, 1 | 4 | 8 | 16, 900);
  REQUIRE(run_hydra(p, 32, 0) == run_hydra(p, 32, 0, exec_policy::threads(2)));
}

TEST_CASE("hydra: bad inputs throw and write nothing", "[ssm][hydra]") {
  const index_t Bt = 1, L = 9, H = 4, P = 5, G = 2, N = 3;
  auto xs = random_floats(std::size_t(Bt * L * H * P), 1), dts = random_floats(std::size_t(Bt * L * H), 2, 0.1f, 0.5f);
  auto Bs = random_floats(std::size_t(Bt * L * G * N), 3);
  std::vector<float> As(std::size_t(H), -1.f), ys(std::size_t(Bt * L * H * P), 7.f), B3(std::size_t(Bt * L * 3 * N));
  tensor_view<const float, 4> x(xs.data(), {Bt, L, H, P}), Bv(Bs.data(), {Bt, L, G, N});
  tensor_view<const float, 3> dt(dts.data(), {Bt, L, H});
  tensor_view<const float, 1> A(As.data(), {H});
  tensor_view<float, 4> y(ys.data(), {Bt, L, H, P});
  auto untouched = [&] { return std::all_of(ys.begin(), ys.end(), [](float v) { return v == 7.f; }); };
  REQUIRE_THROWS_AS(hydra_forward(x, dt, A, {B3.data(), {Bt, L, 3, N}}, {B3.data(), {Bt, L, 3, N}}, y), argument_error);
  REQUIRE(untouched());
  REQUIRE_THROWS_AS(hydra_forward(x, dt, A, Bv, {Bs.data(), {Bt, L - 1, G, N}}, y), argument_error);
  REQUIRE(untouched());
  hydra_params prm;
  std::vector<std::int32_t> cu = {0, 9};
  prm.cu_seqlens = tensor_view<const std::int32_t, 1>(cu.data(), {2});
  REQUIRE_THROWS_AS(hydra_forward(x, dt, A, Bv, Bv, y, prm), argument_error);
  REQUIRE(untouched());
  prm = {};
  prm.chunk_size = 0;
  REQUIRE_THROWS_AS(hydra_forward(x, dt, A, Bv, Bv, y, prm), argument_error);
  REQUIRE(untouched());
  As[3] = std::numeric_limits<float>::quiet_NaN();
  REQUIRE_THROWS_AS(hydra_forward(x, dt, A, Bv, Bv, y), argument_error);
  REQUIRE(untouched());
  As[3] = -1.f;
  hydra_forward(x, dt, A, Bv, Bv, y);
  REQUIRE_FALSE(untouched());
}
