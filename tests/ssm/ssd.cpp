// Mamba-2 SSD against the float64 recurrence: chunk sizes that do and don't
// divide L, odd head and state sizes, grouped B/C, every optional input; the
// chunked prefill == the token step == chained prefills; packed varlen batches;
// extreme dt / A over a long sequence; bad inputs throw and write nothing.

#include "tokmix/ssm/ssd.hpp"

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

struct ssd_flags {
  bool D = false, D_per_channel = false, z = false, bias = false, softplus = false, limits = false;
};

problem make_problem(std::size_t batch, std::size_t seq, std::size_t heads, std::size_t head_dim, std::size_t groups,
                     std::size_t d_state, ssd_flags f, unsigned seed) {
  problem p;
  p.batch = batch;
  p.seq = seq;
  p.heads = heads;
  p.head_dim = head_dim;
  p.groups = groups;
  p.d_state = d_state;
  const std::size_t nx = batch * seq * heads * head_dim, nbc = batch * seq * groups * d_state;
  p.x = random_floats(nx, seed, -1.f, 1.f);
  p.dt = f.softplus ? random_floats(batch * seq * heads, seed + 1, -4.f, 1.f)
                    : random_floats(batch * seq * heads, seed + 1, 0.001f, 0.5f);
  p.A = random_floats(heads, seed + 2, -1.f, 1.5f);
  for (float& a : p.A) a = -std::exp(a);
  p.B = random_floats(nbc, seed + 3);
  p.C = random_floats(nbc, seed + 4);
  if (f.z) p.z = random_floats(nx, seed + 5, -3.f, 3.f);
  if (f.D) {
    p.d_cols = f.D_per_channel ? head_dim : 1;
    p.D = random_floats(heads * p.d_cols, seed + 6);
  }
  if (f.bias) p.bias = random_floats(heads, seed + 7, f.softplus ? -1.f : 0.f, 0.3f);
  p.softplus = f.softplus;
  if (f.limits) {
    p.dt_min = 0.01f;
    p.dt_max = 0.3f;
  }
  return p;
}

ssd_params params_of(const problem& p, ssd_buffer& D, ssd_buffer& bias, index_t chunk, exec_policy policy = {}) {
  ssd_params prm;
  D.fill(p.D);
  bias.fill(p.bias);
  if (!p.D.empty()) prm.D = tensor_view<const float, 2>(D.mem.data(), {index_t(p.heads), index_t(p.d_cols)});
  if (!p.bias.empty()) prm.dt_bias = bias.cview<1>();
  prm.dt_softplus = p.softplus;
  prm.dt_min = p.dt_min;
  prm.dt_max = p.dt_max;
  prm.chunk_size = chunk;
  prm.policy = policy;
  if (!p.cu.empty()) prm.cu_seqlens = tensor_view<const std::int32_t, 1>(p.cu.data(), {index_t(p.cu.size())});
  return prm;
}

// Runs the prefill on p through NaN-padded, gapped buffers; returns y dense.
std::vector<float> run_prefill(const problem& p, ssd_state& st, index_t chunk, std::size_t gap = 0,
                               exec_policy policy = {}) {
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
  const ssd_params prm = params_of(p, D, bias, chunk, policy);
  if (p.z.empty())
    ssd_prefill(x.cview<4>(), dt.cview<3>(), A.cview<1>(), B.cview<4>(), C.cview<4>(), st, y.view<4>(), prm);
  else
    ssd_prefill(x.cview<4>(), dt.cview<3>(), A.cview<1>(), B.cview<4>(), C.cview<4>(), z.cview<4>(), st, y.view<4>(),
                prm);
  REQUIRE(y.pads_untouched());
  return y.dense();
}

// Token by token through ssd_step; returns y dense.
std::vector<float> run_steps(const problem& p, ssd_state& st) {
  const std::size_t H = p.heads, P = p.head_dim, G = p.groups, N = p.d_state;
  std::vector<float> y(p.batch * p.seq * H * P);
  ssd_buffer D({p.heads * p.d_cols}), bias({p.heads});
  const ssd_params prm = params_of(p, D, bias, 1);
  std::vector<float> xt(p.batch * H * P), zt(p.batch * H * P), dtt(p.batch * H), Bt(p.batch * G * N),
      Ct(p.batch * G * N);
  ssd_buffer yt({p.batch, H, P});
  for (std::size_t t = 0; t < p.seq; ++t) {
    for (std::size_t b = 0; b < p.batch; ++b) {
      std::copy_n(p.x.begin() + p.xi(b, t, 0, 0), H * P, xt.begin() + b * H * P);
      if (!p.z.empty()) std::copy_n(p.z.begin() + p.xi(b, t, 0, 0), H * P, zt.begin() + b * H * P);
      std::copy_n(p.dt.begin() + (b * p.seq + t) * H, H, dtt.begin() + b * H);
      std::copy_n(p.B.begin() + p.bi(b, t, 0, 0), G * N, Bt.begin() + b * G * N);
      std::copy_n(p.C.begin() + p.bi(b, t, 0, 0), G * N, Ct.begin() + b * G * N);
    }
    const index_t bb = index_t(p.batch), hh = index_t(H), pp = index_t(P), gg = index_t(G), nn = index_t(N);
    tensor_view<const float, 3> zv;
    if (!p.z.empty()) zv = tensor_view<const float, 3>(zt.data(), {bb, hh, pp});
    ssd_step(tensor_view<const float, 3>(xt.data(), {bb, hh, pp}), tensor_view<const float, 2>(dtt.data(), {bb, hh}),
             tensor_view<const float, 1>(p.A.data(), {hh}), tensor_view<const float, 3>(Bt.data(), {bb, gg, nn}),
             tensor_view<const float, 3>(Ct.data(), {bb, gg, nn}), zv, st, yt.view<3>(), prm);
    REQUIRE(yt.pads_untouched());
    for (std::size_t b = 0; b < p.batch; ++b)
      for (std::size_t i = 0; i < H * P; ++i) y[p.xi(b, t, 0, 0) + i] = *yt.at(b * H * P + i);
  }
  return y;
}

double magnitude(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 1.0;
  for (double v : a) s = std::max(s, std::abs(v));
  for (double v : b) s = std::max(s, std::abs(v));
  return s;
}

void check_against_reference(const problem& p, index_t chunk, std::size_t gap, unsigned seed) {
  INFO("batch " << p.batch << " seq " << p.seq << " heads " << p.heads << " P " << p.head_dim << " G " << p.groups
                << " N " << p.d_state << " chunk " << chunk << " D " << p.D.size() << " z " << !p.z.empty() << " bias "
                << !p.bias.empty() << " softplus " << p.softplus << " limits " << (p.dt_min > 0) << " gap " << gap);
  const std::size_t hsize = p.n_states() * p.heads * p.head_dim * p.d_state;
  const auto h0 = random_floats(hsize, seed, -1.f, 1.f);
  ssd_state st(index_t(p.n_states()), index_t(p.heads), index_t(p.head_dim), index_t(p.d_state));
  std::copy(h0.begin(), h0.end(), st.h().data());
  const auto y = run_prefill(p, st, chunk, gap);

  std::vector<double> h(h0.begin(), h0.end()), y_ref;
  tokmix_test::ssd_ref::ssd(p, h, y_ref);
  const double scale = magnitude(y_ref, h);
  // fp32 products over N (and chunk) terms: error grows with the terms summed.
  const double tol = 4e-6 * scale * std::sqrt(double(p.d_state) + double(chunk) + 1.0);
  TOKMIX_REQUIRE_CLOSE(y.data(), y_ref.data(), y.size(), tol, 2e-5);
  TOKMIX_REQUIRE_CLOSE(st.h().data(), h.data(), h.size(), tol, 2e-5);
}

}  // namespace

TEST_CASE("ssd: prefill matches the float64 recurrence over chunk sizes and odd shapes", "[ssm][ssd]") {
  unsigned seed = 100;
  int combo = 0;
  for (std::size_t seq : {1, 7, 65, 200})
    for (index_t chunk : {1, 16, 64})
      for (std::size_t groups : {1, 3}) {
        ++combo;
        ssd_flags f;
        f.D = combo % 2 == 0;
        f.D_per_channel = combo % 4 == 0;
        f.z = combo % 3 != 0;
        f.bias = combo % 5 < 3;
        f.softplus = combo % 2 == 1 || combo % 7 == 0;
        f.limits = combo % 6 == 5;
        seed += 10;
        check_against_reference(make_problem(2, seq, 6, 33, groups, 17, f, seed), chunk, combo % 3, seed + 3);
      }
  // Every flag combination on one small case.
  for (int m = 0; m < 64; ++m) {
    ssd_flags f{(m & 1) != 0, (m & 2) != 0, (m & 4) != 0, (m & 8) != 0, (m & 16) != 0, (m & 32) != 0};
    check_against_reference(make_problem(1, 23, 4, 5, 2, 3, f, 300 + m), 8, m % 2, 7 + m);
  }
  // The big ones, once each: long sequence, wide state, the bench shape's state size.
  check_against_reference(make_problem(1, 1000, 2, 16, 1, 16, {true, false, true, true, true, false}, 41), 64, 0, 1);
  check_against_reference(make_problem(1, 130, 2, 64, 2, 128, {true, true, true, true, true, false}, 42), 64, 1, 2);
  // A chunk longer than the sequence, and a chunk of 128.
  check_against_reference(make_problem(1, 50, 2, 8, 1, 8, {true, false, false, false, true, false}, 43), 128, 0, 3);
  check_against_reference(make_problem(1, 300, 2, 8, 1, 8, {true, false, false, false, true, false}, 44), 128, 0, 4);
}

TEST_CASE("ssd: chunked == token steps, and two prefills == one", "[ssm][ssd]") {
  for (index_t chunk : {1, 16, 64}) {
    const problem p = make_problem(2, 77, 4, 9, 2, 11, {true, true, true, true, true, false}, 500 + unsigned(chunk));
    const std::size_t hsize = p.batch * p.heads * p.head_dim * p.d_state;
    const auto h0 = random_floats(hsize, 9, -1.f, 1.f);
    ssd_state a(2, 4, 9, 11), b(2, 4, 9, 11);
    std::copy(h0.begin(), h0.end(), a.h().data());
    std::copy(h0.begin(), h0.end(), b.h().data());
    const auto y_chunk = run_prefill(p, a, chunk);
    const auto y_step = run_steps(p, b);
    TOKMIX_REQUIRE_CLOSE(y_chunk.data(), y_step.data(), y_chunk.size(), 2e-5, 2e-5);
    TOKMIX_REQUIRE_CLOSE(a.h().data(), b.h().data(), hsize, 2e-5, 2e-5);

    // Prefill 30 + 47 tokens (the split lands inside a chunk) == prefill 77.
    problem p1 = p, p2 = p;
    p1.seq = 30;
    p2.seq = 47;
    auto cut = [&](const std::vector<float>& v, std::size_t per_token, std::size_t from, std::size_t len) {
      std::vector<float> out;
      if (v.empty()) return out;
      for (std::size_t bb = 0; bb < p.batch; ++bb)
        out.insert(out.end(), v.begin() + (bb * p.seq + from) * per_token, v.begin() + (bb * p.seq + from + len) * per_token);
      return out;
    };
    const std::size_t xt = p.heads * p.head_dim, bt = p.groups * p.d_state;
    for (auto* q : {&p1, &p2}) {
      const std::size_t from = q == &p1 ? 0 : 30, len = q->seq;
      q->x = cut(p.x, xt, from, len);
      q->z = cut(p.z, xt, from, len);
      q->dt = cut(p.dt, p.heads, from, len);
      q->B = cut(p.B, bt, from, len);
      q->C = cut(p.C, bt, from, len);
    }
    ssd_state c(2, 4, 9, 11);
    std::copy(h0.begin(), h0.end(), c.h().data());
    const auto y1 = run_prefill(p1, c, chunk);
    const auto y2 = run_prefill(p2, c, chunk);
    std::vector<float> joined = cut(y_chunk, xt, 0, 30), tail = cut(y_chunk, xt, 30, 47);
    TOKMIX_REQUIRE_CLOSE(y1.data(), joined.data(), y1.size(), 2e-5, 2e-5);
    TOKMIX_REQUIRE_CLOSE(y2.data(), tail.data(), y2.size(), 2e-5, 2e-5);
    TOKMIX_REQUIRE_CLOSE(c.h().data(), a.h().data(), hsize, 2e-5, 2e-5);
  }
}

TEST_CASE("ssd: threads give the serial result bit for bit", "[ssm][ssd]") {
  const problem p = make_problem(2, 90, 6, 16, 3, 16, {true, true, true, true, true, false}, 600);
  ssd_state a(2, 6, 16, 16), b(2, 6, 16, 16);
  const auto y1 = run_prefill(p, a, 32);
  const auto y2 = run_prefill(p, b, 32, 0, exec_policy::threads(2));
  REQUIRE(y1 == y2);
  REQUIRE(std::equal(a.h().data(), a.h().data() + a.h().size(), b.h().data()));
  // One sequence and one group: the heads are sliced across the workers.
  const problem q = make_problem(1, 70, 5, 16, 1, 16, {true, true, true, true, true, false}, 601);
  ssd_state c(1, 5, 16, 16), d(1, 5, 16, 16);
  const auto y3 = run_prefill(q, c, 16);
  const auto y4 = run_prefill(q, d, 16, 1, exec_policy::threads(2));
  REQUIRE(y3 == y4);
  REQUIRE(std::equal(c.h().data(), c.h().data() + c.h().size(), d.h().data()));
}

TEST_CASE("ssd: packed varlen batch == separate sequences, empty ones keep their state", "[ssm][ssd]") {
  problem p = make_problem(1, 100, 3, 7, 1, 5, {true, false, true, true, true, false}, 700);
  p.cu = {0, 0, 37, 37, 100};
  const std::size_t hsize = 4 * p.heads * p.head_dim * p.d_state;
  const auto h0 = random_floats(hsize, 3, -1.f, 1.f);
  ssd_state st(4, 3, 7, 5);
  std::copy(h0.begin(), h0.end(), st.h().data());
  const auto y = run_prefill(p, st, 16);
  std::vector<double> h(h0.begin(), h0.end()), y_ref;
  tokmix_test::ssd_ref::ssd(p, h, y_ref);
  const double tol = 4e-6 * magnitude(y_ref, h) * 6;
  TOKMIX_REQUIRE_CLOSE(y.data(), y_ref.data(), y.size(), tol, 2e-5);
  TOKMIX_REQUIRE_CLOSE(st.h().data(), h.data(), h.size(), tol, 2e-5);
  // Empty sequences 0 and 2: state bit-identical to the initial one.
  const std::size_t per = p.heads * p.head_dim * p.d_state;
  for (std::size_t s : {0u, 2u}) REQUIRE(std::equal(h0.begin() + s * per, h0.begin() + (s + 1) * per, st.h().data() + s * per));
}

TEST_CASE("ssd: extreme dt and A stay finite over 65536 tokens", "[ssm][ssd]") {
  for (float dt : {1e-6f, 1e3f})
    for (float A : {-1e-6f, -1e3f}) {
      INFO("dt " << dt << " A " << A);
      problem p = make_problem(1, 65536, 2, 3, 1, 2, {true, false, true, false, false, false}, 800);
      for (float& v : p.dt) v = dt;
      for (float& v : p.A) v = A;
      ssd_state st(1, 2, 3, 2);
      const auto y = run_prefill(p, st, 64);
      for (float v : y) REQUIRE(std::isfinite(v));
      for (index_t i = 0; i < st.h().size(); ++i) REQUIRE(std::isfinite(st.h().data()[i]));
      std::vector<double> h(std::size_t(st.h().size()), 0.0), y_ref;
      tokmix_test::ssd_ref::ssd(p, h, y_ref);
      // Near-unit decay over 65536 tokens: float64 vs fp32 differ by the
      // accumulated rounding of a long sum; relative to the running magnitude.
      const double scale = magnitude(y_ref, h);
      TOKMIX_REQUIRE_CLOSE(y.data(), y_ref.data(), y.size(), 1e-3 * scale, 1e-3);
      TOKMIX_REQUIRE_CLOSE(st.h().data(), h.data(), h.size(), 1e-3 * scale, 1e-3);
    }
}

TEST_CASE("ssd: bad shapes and parameters throw and write nothing", "[ssm][ssd]") {
  const index_t Bt = 1, L = 9, H = 4, P = 5, G = 2, N = 3;
  auto xs = random_floats(std::size_t(Bt * L * H * P), 1), dts = random_floats(std::size_t(Bt * L * H), 2, 0.1f, 0.5f);
  auto Bs = random_floats(std::size_t(Bt * L * G * N), 3), Cs = random_floats(std::size_t(Bt * L * G * N), 4);
  std::vector<float> As(std::size_t(H), -1.f), Ds(std::size_t(H * P), 0.5f), bias(std::size_t(H), 0.1f);
  std::vector<float> ys(std::size_t(Bt * L * H * P), 7.f);
  tensor_view<const float, 4> x(xs.data(), {Bt, L, H, P}), Bv(Bs.data(), {Bt, L, G, N}), Cv(Cs.data(), {Bt, L, G, N});
  tensor_view<const float, 3> dt(dts.data(), {Bt, L, H});
  tensor_view<const float, 1> A(As.data(), {H});
  tensor_view<float, 4> y(ys.data(), {Bt, L, H, P});
  ssd_state st(Bt, H, P, N);
  for (index_t i = 0; i < st.h().size(); ++i) st.h().data()[i] = 3.f;

  auto untouched = [&] {
    for (float v : ys)
      if (v != 7.f) return false;
    for (index_t i = 0; i < st.h().size(); ++i)
      if (st.h().data()[i] != 3.f) return false;
    return true;
  };
  auto expect_throw = [&](auto&& call, const char* what) {
    INFO(what);
    REQUIRE_THROWS_AS(call(), argument_error);
    REQUIRE(untouched());
  };
  // H % G != 0.
  std::vector<float> B3(std::size_t(Bt * L * 3 * N));
  expect_throw([&] { ssd_prefill(x, dt, A, {B3.data(), {Bt, L, 3, N}}, {B3.data(), {Bt, L, 3, N}}, st, y); }, "groups");
  expect_throw([&] { ssd_prefill(x, {dts.data(), {Bt, L - 1, H}}, A, Bv, Cv, st, y); }, "dt shape");
  expect_throw([&] { ssd_prefill(x, dt, A, Bv, {Cs.data(), {Bt, L, G, N - 1}}, st, y); }, "C shape");
  expect_throw([&] { ssd_prefill(x, dt, {As.data(), {H - 1}}, Bv, Cv, st, y); }, "A shape");
  expect_throw([&] { ssd_prefill(x, dt, A, Bv, Cv, st, tensor_view<float, 4>(ys.data(), {Bt, L, H, P - 1})); }, "y shape");
  ssd_state wrong(Bt, H, P, N + 1);
  expect_throw([&] { ssd_prefill(x, dt, A, Bv, Cv, wrong, y); }, "state shape");
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(), 0.5f}) {
    As[1] = bad;
    expect_throw([&] { ssd_prefill(x, dt, A, Bv, Cv, st, y); }, "A value");
  }
  As[1] = -1.f;
  ssd_params prm;
  prm.chunk_size = 0;
  expect_throw([&] { ssd_prefill(x, dt, A, Bv, Cv, st, y, prm); }, "chunk 0");
  prm = {};
  prm.dt_min = 0.5f;
  prm.dt_max = 0.1f;
  expect_throw([&] { ssd_prefill(x, dt, A, Bv, Cv, st, y, prm); }, "dt limits");
  prm = {};
  prm.D = tensor_view<const float, 2>(Ds.data(), {H, 2});
  expect_throw([&] { ssd_prefill(x, dt, A, Bv, Cv, st, y, prm); }, "D shape");
  prm = {};
  bias[2] = std::numeric_limits<float>::quiet_NaN();
  prm.dt_bias = tensor_view<const float, 1>(bias.data(), {H});
  expect_throw([&] { ssd_prefill(x, dt, A, Bv, Cv, st, y, prm); }, "dt_bias NaN");
  prm = {};
  std::vector<std::int32_t> cu = {0, 4, 3, 9};
  prm.cu_seqlens = tensor_view<const std::int32_t, 1>(cu.data(), {4});
  expect_throw([&] { ssd_prefill(x, dt, A, Bv, Cv, st, y, prm); }, "cu_seqlens order");
  // Overlapping rows: a sequence stride smaller than the row.
  expect_throw([&] { ssd_prefill(tensor_view<const float, 4>(xs.data(), {Bt, L, H, P}, {L * H * P, 2, P, 1}), dt, A, Bv, Cv, st, y); },
               "x stride");
  // The step checks the same.
  tensor_view<const float, 3> x1(xs.data(), {Bt, H, P}), B1(Bs.data(), {Bt, G, N});
  tensor_view<const float, 2> dt1(dts.data(), {Bt, H});
  tensor_view<float, 3> y1(ys.data(), {Bt, H, P});
  expect_throw([&] { ssd_step(x1, dt1, A, {B3.data(), {Bt, 3, N}}, {B3.data(), {Bt, 3, N}}, st, y1); }, "step groups");
  expect_throw([&] { ssd_step(x1, dt1, A, B1, B1, wrong, y1); }, "step state");
  As[0] = std::numeric_limits<float>::infinity();
  expect_throw([&] { ssd_step(x1, dt1, A, B1, B1, st, y1); }, "step A");
  As[0] = -1.f;
  prm = {};
  prm.cu_seqlens = tensor_view<const std::int32_t, 1>(cu.data(), {4});
  expect_throw([&] { ssd_step(x1, dt1, A, B1, B1, st, y1, prm); }, "step cu_seqlens");
  // And a good call does write.
  ssd_prefill(x, dt, A, Bv, Cv, st, y);
  REQUIRE_FALSE(untouched());
}
