// Mamba-1 selective scan against the float64 recurrence: odd sizes, grouped
// B/C, every optional input; prefill == steps and chained prefills == one, bit
// for bit; packed variable-length batches; extreme delta / A; bad inputs write
// nothing.

#include "tokmix/ssm/selective_scan.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "ssm/reference.hpp"
#include "support/compare.hpp"

using namespace tokmix;
using tokmix_test::random_floats;
using tokmix_test::ssm_buffer;
using tokmix_test::ssm_ref::scan_problem;

namespace {

struct scan_flags {
  bool D = false, z = false, bias = false, softplus = false;
};

scan_problem make_problem(std::size_t batch, std::size_t seq, std::size_t d_inner, std::size_t d_state,
                          std::size_t groups, scan_flags f, unsigned seed) {
  scan_problem p;
  p.batch = batch;
  p.seq = seq;
  p.d_inner = d_inner;
  p.d_state = d_state;
  p.groups = groups;
  const std::size_t n = batch * seq * d_inner, nbc = batch * seq * groups * d_state;
  p.u = random_floats(n, seed, -1.f, 1.f);
  // Raw delta: the softplus input when the flag is on, else already a step size.
  p.delta = f.softplus ? random_floats(n, seed + 1, -4.f, 1.f) : random_floats(n, seed + 1, 0.001f, 1.f);
  if (f.z) p.z = random_floats(n, seed + 2, -3.f, 3.f);
  // A = -exp(A_log) as Mamba parameterises it: decays from slow to fast.
  p.A = random_floats(d_inner * d_state, seed + 3, -1.f, 2.f);
  for (float& a : p.A) a = -std::exp(a);
  p.B = random_floats(nbc, seed + 4);
  p.C = random_floats(nbc, seed + 5);
  if (f.D) p.D = random_floats(d_inner, seed + 6);
  // Without softplus delta + bias must stay a positive step (else h grows).
  if (f.bias) p.bias = random_floats(d_inner, seed + 7, f.softplus ? -1.f : 0.f, 0.5f);
  p.softplus = f.softplus;
  return p;
}

// Runs tokmix on p through NaN-padded, non-dense buffers; returns y dense.
std::vector<float> run_tokmix(const scan_problem& p, selective_scan_state& st, std::size_t gap = 0,
                              exec_policy policy = {}) {
  ssm_buffer u({p.batch, p.seq, p.d_inner}, gap), delta({p.batch, p.seq, p.d_inner}, gap),
      z({p.batch, p.seq, p.d_inner}, gap), y({p.batch, p.seq, p.d_inner}, gap);
  ssm_buffer A({p.d_inner, p.d_state}, gap), B({p.batch, p.seq, p.groups, p.d_state}, gap),
      C({p.batch, p.seq, p.groups, p.d_state}, gap);
  ssm_buffer D({p.d_inner}), bias({p.d_inner});
  u.fill(p.u);
  delta.fill(p.delta);
  z.fill(p.z);
  A.fill(p.A);
  B.fill(p.B);
  C.fill(p.C);
  D.fill(p.D);
  bias.fill(p.bias);
  selective_scan_params prm;
  if (!p.D.empty()) prm.D = D.cview<1>();
  if (!p.bias.empty()) prm.delta_bias = bias.cview<1>();
  prm.delta_softplus = p.softplus;
  if (!p.cu.empty()) prm.cu_seqlens = tensor_view<const std::int32_t, 1>(p.cu.data(), {index_t(p.cu.size())});
  prm.policy = policy;
  if (p.z.empty())
    selective_scan_prefill(u.cview<3>(), delta.cview<3>(), A.cview<2>(), B.cview<4>(), C.cview<4>(), st, y.view<3>(), prm);
  else
    selective_scan_prefill(u.cview<3>(), delta.cview<3>(), A.cview<2>(), B.cview<4>(), C.cview<4>(), z.cview<3>(), st,
                           y.view<3>(), prm);
  REQUIRE(y.pads_untouched());
  return y.dense();
}

// The state in mamba's [n_states, d_inner, d_state] order, whatever its storage.
void set_h(selective_scan_state& st, const std::vector<float>& v) {
  auto h = st.h();
  std::size_t i = 0;
  for (index_t b = 0; b < h.dim(0); ++b)
    for (index_t d = 0; d < h.dim(1); ++d)
      for (index_t n = 0; n < h.dim(2); ++n) h(b, d, n) = v[i++];
}
std::vector<float> get_h(const selective_scan_state& st) {
  const auto h = st.h();
  std::vector<float> v;
  for (index_t b = 0; b < h.dim(0); ++b)
    for (index_t d = 0; d < h.dim(1); ++d)
      for (index_t n = 0; n < h.dim(2); ++n) v.push_back(h(b, d, n));
  return v;
}

std::vector<float> initial_state(std::size_t n_states, const scan_problem& p, unsigned seed) {
  return random_floats(n_states * p.d_inner * p.d_state, seed, -1.f, 1.f);
}

void check_against_reference(const scan_problem& p, std::size_t gap, unsigned seed) {
  INFO("batch " << p.batch << " seq " << p.seq << " d_inner " << p.d_inner << " d_state " << p.d_state << " groups "
                << p.groups << " D " << !p.D.empty() << " z " << !p.z.empty() << " bias " << !p.bias.empty()
                << " softplus " << p.softplus << " gap " << gap);
  const std::size_t n_states = p.cu.empty() ? p.batch : p.cu.size() - 1;
  const auto h0 = initial_state(n_states, p, seed);
  selective_scan_state st(n_states, p.d_inner, p.d_state);
  set_h(st, h0);
  const auto y = run_tokmix(p, st, gap);

  std::vector<double> h(h0.begin(), h0.end()), y_ref;
  tokmix_test::ssm_ref::selective_scan(p, h, y_ref);
  double scale = 1.0;
  for (double v : y_ref) scale = std::max(scale, std::abs(v));
  for (double v : h) scale = std::max(scale, std::abs(v));
  // fp32 recurrence over L steps: error grows with the number of terms summed.
  const double tol = 2e-6 * scale * std::sqrt(double(p.d_state) + 1.0) * 4.0;
  TOKMIX_REQUIRE_CLOSE(y.data(), y_ref.data(), y.size(), tol, 2e-5);
  const auto h_got = get_h(st);
  TOKMIX_REQUIRE_CLOSE(h_got.data(), h.data(), h.size(), tol, 2e-5);
}

}  // namespace

TEST_CASE("selective_scan: prefill matches the float64 recurrence over odd sizes", "[ssm][selective_scan]") {
  unsigned seed = 1000;
  int combo = 0;
  for (std::size_t seq : {1, 7, 65})
    for (std::size_t d_state : {1, 16, 17})
      for (std::size_t d_inner : {13, 33})
        for (std::size_t groups : {1, 0}) {  // 0: the largest divisor > 1 below d_inner
          const std::size_t g = groups ? groups : (d_inner == 13 ? 13 : 3);
          ++combo;
          scan_flags f;
          f.D = combo % 2 == 0;
          f.z = combo % 3 != 0;
          f.bias = combo % 4 < 2;
          f.softplus = combo % 5 != 1;
          seed += 10;
          check_against_reference(make_problem(2, seq, d_inner, d_state, g, f, seed), combo % 3, seed + 9);
        }
  // Every flag combination on one mid-sized case, with several full batches per group.
  for (int m = 0; m < 16; ++m) {
    scan_flags f{(m & 1) != 0, (m & 2) != 0, (m & 4) != 0, (m & 8) != 0};
    check_against_reference(make_problem(1, 9, 96, 16, 2, f, 77 + m), 0, 5 + m);
  }
  // The large cases, one each: long sequence, wide state.
  check_against_reference(make_problem(1, 1000, 40, 16, 1, {true, true, true, true}, 31), 0, 1);
  check_against_reference(make_problem(1, 20, 67, 128, 1, {true, true, true, true}, 32), 1, 2);
  // Several channel items per group, the last one ragged.
  check_against_reference(make_problem(1, 6, 600, 16, 2, {true, true, true, true}, 33), 0, 3);
}

TEST_CASE("selective_scan: prefill == steps and two prefills == one, bit for bit", "[ssm][selective_scan]") {
  for (std::size_t d_inner : {13, 48})
    for (std::size_t groups : {1, 1 + (d_inner % 2 == 0)}) {
      const std::size_t batch = 2, L1 = 5, L2 = 8, L = L1 + L2, N = 16;
      const auto p = make_problem(batch, L, d_inner, N, groups, {true, true, true, true}, 500 + d_inner);
      const auto h0 = initial_state(batch, p, 9);
      tensor_view<const float, 3> u(p.u.data(), {index_t(batch), index_t(L), index_t(d_inner)});
      tensor_view<const float, 3> dl(p.delta.data(), u.dims()), z(p.z.data(), u.dims());
      tensor_view<const float, 2> A(p.A.data(), {index_t(d_inner), index_t(N)});
      tensor_view<const float, 4> B(p.B.data(), {index_t(batch), index_t(L), index_t(groups), index_t(N)});
      tensor_view<const float, 4> C(p.C.data(), B.dims());
      selective_scan_params prm;
      prm.D = tensor_view<const float, 1>(p.D.data(), {index_t(d_inner)});
      prm.delta_bias = tensor_view<const float, 1>(p.bias.data(), {index_t(d_inner)});
      prm.delta_softplus = true;
      auto fresh = [&] {
        selective_scan_state s(batch, d_inner, N);
        set_h(s, h0);
        return s;
      };
      auto slice3 = [](auto v, index_t t0, index_t len) {
        auto d = v.dims();
        d[1] = len;
        return decltype(v)(v.ptr(0, t0), d, v.strides());
      };
      auto slice4 = slice3;

      selective_scan_state one = fresh();
      std::vector<float> y_one(p.u.size());
      tensor_view<float, 3> y1v(y_one.data(), u.dims());
      selective_scan_prefill(u, dl, A, B, C, z, one, y1v, prm);

      selective_scan_state two = fresh();
      std::vector<float> y_two(p.u.size());
      tensor_view<float, 3> y2v(y_two.data(), u.dims());
      selective_scan_prefill(slice3(u, 0, L1), slice3(dl, 0, L1), A, slice4(B, 0, L1), slice4(C, 0, L1),
                             slice3(z, 0, L1), two, slice3(y2v, 0, L1), prm);
      selective_scan_prefill(slice3(u, L1, L2), slice3(dl, L1, L2), A, slice4(B, L1, L2), slice4(C, L1, L2),
                             slice3(z, L1, L2), two, slice3(y2v, L1, L2), prm);

      selective_scan_state steps = fresh();
      std::vector<float> y_steps(p.u.size());
      tensor_view<float, 3> ysv(y_steps.data(), u.dims());
      for (index_t t = 0; t < index_t(L); ++t) {
        auto tok2 = [&](auto v) {
          using V = decltype(v);
          return tensor_view<typename V::element_type, 2>(v.ptr(0, t), {v.dim(0), v.dim(2)}, {v.stride(0), 1});
        };
        auto tok3 = [&](auto v) {
          using V = decltype(v);
          return tensor_view<typename V::element_type, 3>(v.ptr(0, t), {v.dim(0), v.dim(2), v.dim(3)},
                                                          {v.stride(0), v.stride(2), 1});
        };
        selective_scan_step(tok2(u), tok2(dl), A, tok3(B), tok3(C), tok2(z), steps, tok2(ysv), prm);
      }
      const std::size_t nh = batch * d_inner * N;
      REQUIRE(y_one == y_two);
      REQUIRE(y_one == y_steps);
      REQUIRE(std::memcmp(one.h().data(), two.h().data(), nh * sizeof(float)) == 0);
      REQUIRE(std::memcmp(one.h().data(), steps.h().data(), nh * sizeof(float)) == 0);

      // Threads split the channels differently per worker but never change a result.
      selective_scan_state par = fresh();
      std::vector<float> y_par(p.u.size());
      prm.policy = exec_policy::threads(2);
      selective_scan_prefill(u, dl, A, B, C, z, par, tensor_view<float, 3>(y_par.data(), u.dims()), prm);
      REQUIRE(y_one == y_par);
      REQUIRE(std::memcmp(one.h().data(), par.h().data(), nh * sizeof(float)) == 0);
    }
}

TEST_CASE("selective_scan: A as a transposed view of [d_state, d_inner] gives the same bits", "[ssm][selective_scan]") {
  for (std::size_t d_inner : {13, 33, 300})
    for (std::size_t N : {1, 16, 17}) {
      const std::size_t batch = 2, L = 9, G = d_inner == 300 ? 2 : (d_inner == 33 ? 3 : 1);
      const auto p = make_problem(batch, L, d_inner, N, G, {true, true, true, true}, 700 + d_inner + N);
      const auto h0 = initial_state(batch, p, 5);
      std::vector<float> a_t(N * d_inner);  // [N, d_inner]
      for (std::size_t d = 0; d < d_inner; ++d)
        for (std::size_t n = 0; n < N; ++n) a_t[n * d_inner + d] = p.A[d * N + n];
      tensor_view<const float, 3> u(p.u.data(), {index_t(batch), index_t(L), index_t(d_inner)});
      tensor_view<const float, 3> dl(p.delta.data(), u.dims()), z(p.z.data(), u.dims());
      tensor_view<const float, 4> B(p.B.data(), {index_t(batch), index_t(L), index_t(G), index_t(N)});
      tensor_view<const float, 4> C(p.C.data(), B.dims());
      tensor_view<const float, 2> A(p.A.data(), {index_t(d_inner), index_t(N)});
      tensor_view<const float, 2> A_t(a_t.data(), {index_t(d_inner), index_t(N)}, {1, index_t(d_inner)});
      selective_scan_params prm;
      prm.D = tensor_view<const float, 1>(p.D.data(), {index_t(d_inner)});
      prm.delta_bias = tensor_view<const float, 1>(p.bias.data(), {index_t(d_inner)});
      prm.delta_softplus = true;
      selective_scan_state s1(batch, d_inner, N), s2(batch, d_inner, N);
      set_h(s1, h0);
      set_h(s2, h0);
      std::vector<float> y1(p.u.size()), y2(p.u.size());
      selective_scan_prefill(u, dl, A, B, C, z, s1, tensor_view<float, 3>(y1.data(), u.dims()), prm);
      selective_scan_prefill(u, dl, A_t, B, C, z, s2, tensor_view<float, 3>(y2.data(), u.dims()), prm);
      INFO("d_inner " << d_inner << " N " << N);
      REQUIRE(y1 == y2);
      REQUIRE(get_h(s1) == get_h(s2));
    }
}

TEST_CASE("selective_scan: packed variable-length batches, empty sequences included", "[ssm][selective_scan]") {
  const std::vector<std::int32_t> cu = {0, 0, 5, 6, 6, 19, 19};
  const std::size_t total = 19, d_inner = 21, N = 17, G = 3;
  auto p = make_problem(1, total, d_inner, N, G, {true, true, true, true}, 900);
  p.cu = cu;
  check_against_reference(p, 2, 3);

  // Each sequence run alone from its own state gives the same bits.
  const std::size_t n_seqs = cu.size() - 1;
  const auto h0 = initial_state(n_seqs, p, 3);
  selective_scan_state packed(n_seqs, d_inner, N);
  set_h(packed, h0);
  const auto y_packed = run_tokmix(p, packed);
  for (std::size_t s = 0; s < n_seqs; ++s) {
    const std::size_t t0 = cu[s], len = cu[s + 1] - cu[s];
    scan_problem q = p;
    q.cu.clear();
    q.seq = len;
    auto cut = [&](const std::vector<float>& v, std::size_t row) {
      return std::vector<float>(v.begin() + t0 * row, v.begin() + (t0 + len) * row);
    };
    q.u = cut(p.u, d_inner);
    q.delta = cut(p.delta, d_inner);
    q.z = cut(p.z, d_inner);
    q.B = cut(p.B, G * N);
    q.C = cut(p.C, G * N);
    selective_scan_state alone(1, d_inner, N);
    set_h(alone, std::vector<float>(h0.begin() + s * d_inner * N, h0.begin() + (s + 1) * d_inner * N));
    const auto y_alone = run_tokmix(q, alone);
    INFO("sequence " << s);
    REQUIRE(std::equal(y_alone.begin(), y_alone.end(), y_packed.begin() + t0 * d_inner));
    const auto h_alone = get_h(alone), h_packed = get_h(packed);
    REQUIRE(std::equal(h_alone.begin(), h_alone.end(), h_packed.begin() + s * d_inner * N));
  }
}

TEST_CASE("selective_scan: extreme delta and A stay finite", "[ssm][selective_scan]") {
  for (float dv : {1e-6f, 1e3f})
    for (float av : {-1e4f, -1e-6f, 0.f})
      for (bool softplus : {false, true}) {
        auto p = make_problem(1, 40, 19, 16, 1, {true, true, false, softplus}, 1234);
        std::fill(p.delta.begin(), p.delta.end(), dv);
        for (std::size_t i = 0; i < p.A.size(); ++i) p.A[i] = (i % 3 == 0) ? av : p.A[i];
        INFO("delta " << dv << " A " << av << " softplus " << softplus);
        selective_scan_state st(1, p.d_inner, p.d_state);
        const auto y = run_tokmix(p, st);
        for (float v : y) REQUIRE(std::isfinite(v));
        for (index_t i = 0; i < st.h().size(); ++i) REQUIRE(std::isfinite(st.h().data()[i]));
        std::vector<double> h(st.h().size(), 0.0), y_ref;
        tokmix_test::ssm_ref::selective_scan(p, h, y_ref);
        double scale = 1.0;
        for (double v : y_ref) scale = std::max(scale, std::abs(v));
        TOKMIX_REQUIRE_CLOSE(y.data(), y_ref.data(), y.size(), 1e-5 * scale, 1e-4);
      }
  // Softplus of a very negative input: delta underflows to 0, state only decays by 1.
  auto p = make_problem(1, 5, 9, 4, 1, {false, false, false, true}, 4321);
  std::fill(p.delta.begin(), p.delta.end(), -200.f);
  selective_scan_state st(1, 9, 4);
  std::fill(st.h().data(), st.h().data() + st.h().size(), 0.5f);
  const auto y = run_tokmix(p, st);
  for (float v : y) REQUIRE(std::isfinite(v));
  for (index_t i = 0; i < st.h().size(); ++i) REQUIRE(st.h().data()[i] == 0.5f);
}

TEST_CASE("selective_scan: bad shapes and parameters throw argument_error and write nothing",
          "[ssm][selective_scan]") {
  const index_t batch = 2, L = 4, Dn = 6, N = 5, G = 2;
  auto p = make_problem(batch, L, Dn, N, G, {true, true, true, true}, 77);
  std::vector<float> yv(p.u.size(), 42.f);
  tensor_view<const float, 3> u(p.u.data(), {batch, L, Dn}), dl(p.delta.data(), {batch, L, Dn});
  tensor_view<const float, 2> A(p.A.data(), {Dn, N});
  tensor_view<const float, 4> B(p.B.data(), {batch, L, G, N}), C(p.C.data(), {batch, L, G, N});
  tensor_view<float, 3> y(yv.data(), {batch, L, Dn});
  selective_scan_state st(batch, Dn, N);
  std::fill(st.h().data(), st.h().data() + st.h().size(), 7.f);
  auto untouched = [&] {
    for (float v : yv)
      if (v != 42.f) return false;
    for (index_t i = 0; i < st.h().size(); ++i)
      if (st.h().data()[i] != 7.f) return false;
    return true;
  };
  selective_scan_params prm;

  // Sanity: the valid call goes through (on a copy of the state).
  {
    selective_scan_state ok(batch, Dn, N);
    std::vector<float> yo(p.u.size());
    REQUIRE_NOTHROW(selective_scan_prefill(u, dl, A, B, C, ok, tensor_view<float, 3>(yo.data(), u.dims()), prm));
  }
  // d_inner % groups != 0: 4 groups for 6 channels.
  std::vector<float> b4(batch * L * 4 * N, 0.f);
  tensor_view<const float, 4> B4(b4.data(), {batch, L, 4, N});
  CHECK_THROWS_AS(selective_scan_prefill(u, dl, A, B4, B4, st, y, prm), argument_error);
  // Shape mismatches.
  CHECK_THROWS_AS(selective_scan_prefill(u, tensor_view<const float, 3>(p.delta.data(), {batch, L - 1, Dn}), A, B, C,
                                         st, y, prm),
                  argument_error);
  CHECK_THROWS_AS(selective_scan_prefill(u, dl, tensor_view<const float, 2>(p.A.data(), {Dn - 1, N}), B, C, st, y, prm),
                  argument_error);
  CHECK_THROWS_AS(selective_scan_prefill(u, dl, A, B, tensor_view<const float, 4>(p.C.data(), {batch, L, G, N - 1}),
                                         st, y, prm),
                  argument_error);
  CHECK_THROWS_AS(selective_scan_prefill(u, dl, A, B, C, st, tensor_view<float, 3>(yv.data(), {batch, L, Dn - 1}), prm),
                  argument_error);
  CHECK_THROWS_AS(selective_scan_prefill(u, dl, A, B, C, tensor_view<const float, 3>(p.z.data(), {batch, L + 1, Dn}),
                                         st, y, prm),
                  argument_error);
  selective_scan_state wrong_n(batch, Dn, N + 1), wrong_b(batch + 1, Dn, N);
  CHECK_THROWS_AS(selective_scan_prefill(u, dl, A, B, C, wrong_n, y, prm), argument_error);
  CHECK_THROWS_AS(selective_scan_prefill(u, dl, A, B, C, wrong_b, y, prm), argument_error);
  {
    selective_scan_params bad = prm;
    bad.D = tensor_view<const float, 1>(p.D.data(), {Dn - 1});
    CHECK_THROWS_AS(selective_scan_prefill(u, dl, A, B, C, st, y, bad), argument_error);
  }
  // Non-finite parameters.
  for (float badv : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
    std::vector<float> a2 = p.A;
    a2[7] = badv;
    CHECK_THROWS_AS(selective_scan_prefill(u, dl, tensor_view<const float, 2>(a2.data(), {Dn, N}), B, C, st, y, prm),
                    argument_error);
    std::vector<float> d2 = p.D;
    d2[2] = badv;
    selective_scan_params bad = prm;
    bad.D = tensor_view<const float, 1>(d2.data(), {Dn});
    CHECK_THROWS_AS(selective_scan_prefill(u, dl, A, B, C, st, y, bad), argument_error);
  }
  // Non-finite A seen through a transposed view, and an A with no unit stride.
  {
    std::vector<float> a_t(N * Dn, -1.f);
    a_t[3] = std::numeric_limits<float>::infinity();
    CHECK_THROWS_AS(selective_scan_prefill(u, dl, tensor_view<const float, 2>(a_t.data(), {Dn, N}, {1, Dn}), B, C, st, y, prm),
                    argument_error);
    std::vector<float> a_wide(Dn * N * 2, -1.f);
    CHECK_THROWS_AS(selective_scan_prefill(u, dl, tensor_view<const float, 2>(a_wide.data(), {Dn, N}, {2 * N, 2}), B, C,
                                           st, y, prm),
                    argument_error);
  }
  // Bad cu_seqlens: batch != 1, not ending at seq, decreasing.
  {
    std::vector<std::int32_t> cu = {0, 2, L};
    selective_scan_params bad = prm;
    bad.cu_seqlens = tensor_view<const std::int32_t, 1>(cu.data(), {3});
    CHECK_THROWS_AS(selective_scan_prefill(u, dl, A, B, C, st, y, bad), argument_error);  // batch 2
    auto one3 = [&](auto v) {
      auto d = v.dims();
      d[0] = 1;
      return decltype(v)(v.data(), d, v.strides());
    };
    selective_scan_state st2(2, Dn, N);
    std::fill(st2.h().data(), st2.h().data() + st2.h().size(), 7.f);
    std::vector<std::int32_t> short_cu = {0, 2, L - 1}, down = {0, 3, 2, L};
    bad.cu_seqlens = tensor_view<const std::int32_t, 1>(short_cu.data(), {3});
    CHECK_THROWS_AS(selective_scan_prefill(one3(u), one3(dl), A, one3(B), one3(C), st2, one3(y), bad), argument_error);
    selective_scan_state st3(3, Dn, N);
    bad.cu_seqlens = tensor_view<const std::int32_t, 1>(down.data(), {4});
    CHECK_THROWS_AS(selective_scan_prefill(one3(u), one3(dl), A, one3(B), one3(C), st3, one3(y), bad), argument_error);
    for (index_t i = 0; i < st2.h().size(); ++i) REQUIRE(st2.h().data()[i] == 7.f);
  }
  // Step: mismatched token shapes.
  CHECK_THROWS_AS(selective_scan_step(tensor_view<const float, 2>(p.u.data(), {batch, Dn}),
                                      tensor_view<const float, 2>(p.delta.data(), {batch, Dn}), A,
                                      tensor_view<const float, 3>(p.B.data(), {batch, G, N}),
                                      tensor_view<const float, 3>(p.C.data(), {batch, G, N + 1}), st,
                                      tensor_view<float, 2>(yv.data(), {batch, Dn}), prm),
                  argument_error);
  REQUIRE(untouched());

  try {
    selective_scan_prefill(u, dl, A, B4, B4, st, y, prm);
  } catch (const argument_error& e) {
    CHECK(e.argument().find("groups") != std::string::npos);
    CHECK(e.actual() == "4");
  }
}
