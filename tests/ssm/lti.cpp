// Diagonal LTI SSMs (S4D, LRU): FFT path == recurrence == float64 reference,
// state carried across prefills and steps, |Lambda| near 1 over long
// sequences, discretisation formulas, bad inputs write nothing.

#include "tokmix/ssm/lti.hpp"

#include <cmath>
#include <complex>
#include <limits>
#include <vector>

#include "ssm/reference_lti.hpp"
#include "support/compare.hpp"

using namespace tokmix;
using tokmix_test::random_floats;
using cd = std::complex<double>;

namespace {

// A random stable system with |Lambda| in [rmin, rmax].
lti_system random_system(index_t H, index_t N, unsigned seed, double rmin = 0.5, double rmax = 0.995) {
  lti_system s;
  s.heads = H;
  s.state = N;
  const auto mag = random_floats(std::size_t(H * N), seed, float(rmin), float(rmax));
  const auto ang = random_floats(std::size_t(H * N), seed + 1, -3.1f, 3.1f);
  for (std::size_t i = 0; i < mag.size(); ++i) {
    s.lambda_re.push_back(float(mag[i] * std::cos(ang[i])));
    s.lambda_im.push_back(float(mag[i] * std::sin(ang[i])));
  }
  s.b_re = random_floats(std::size_t(H * N), seed + 2);
  s.b_im = random_floats(std::size_t(H * N), seed + 3);
  s.c_re = random_floats(std::size_t(H * N), seed + 4);
  s.c_im = random_floats(std::size_t(H * N), seed + 5);
  s.d = random_floats(std::size_t(H), seed + 6);
  return s;
}

tokmix_test::lti_ref::lti_sys_ref to_ref(const lti_system& s) {
  tokmix_test::lti_ref::lti_sys_ref r{std::size_t(s.heads), std::size_t(s.state), {}, {}, {}, {}};
  for (std::size_t i = 0; i < s.lambda_re.size(); ++i) {
    r.lambda.emplace_back(s.lambda_re[i], s.lambda_im[i]);
    r.b.emplace_back(s.b_re[i], s.b_im[i]);
    r.c.emplace_back(s.c_re[i], s.c_im[i]);
  }
  r.d.assign(s.d.begin(), s.d.end());
  return r;
}

double max_abs(const std::vector<double>& v) {
  double m = 0;
  for (double x : v) m = std::max(m, std::abs(x));
  return m;
}

// Returns the output after checking it and the final state against the reference.
std::vector<float> run_lti(index_t B, index_t L, index_t H, index_t N, lti_path path, bool init_state, unsigned seed,
                           const exec_policy& policy = {}) {
  INFO("B " << B << " L " << L << " H " << H << " N " << N << " path " << int(path) << " init " << init_state
            << " workers " << policy.workers());
  const lti_system sys = random_system(H, N, seed);
  const auto uv = random_floats(std::size_t(B * L * H), seed + 10);
  tokmix_test::nan_padded<float> y(std::size_t(B * L * H));
  lti_state st(B, H, N);
  std::vector<cd> s_ref(std::size_t(B * H * N), 0.0);
  if (init_state) {
    const auto r = random_floats(std::size_t(B * H * N), seed + 11), i = random_floats(std::size_t(B * H * N), seed + 12);
    std::copy(r.begin(), r.end(), st.re().data());
    std::copy(i.begin(), i.end(), st.im().data());
    for (std::size_t k = 0; k < s_ref.size(); ++k) s_ref[k] = cd(r[k], i[k]);
  }
  lti_options o;
  o.path = path;
  o.policy = policy;
  lti_prefill(tensor_view<const float, 3>(uv.data(), {B, L, H}), sys.params(), st,
              tensor_view<float, 3>(y.data(), {B, L, H}), o);
  const auto ref = tokmix_test::lti_ref::lti(uv, std::size_t(B), std::size_t(L), to_ref(sys), s_ref);
  const double scale = std::max(1.0, max_abs(ref));
  TOKMIX_REQUIRE_CLOSE(y.data(), ref.data(), ref.size(), 2e-5 * scale, 1e-4);
  REQUIRE(std::isnan(y.data()[-1]));
  REQUIRE(std::isnan(y.data()[ref.size()]));
  std::vector<double> sr, si;
  for (const cd& v : s_ref) {
    sr.push_back(v.real());
    si.push_back(v.imag());
  }
  const double sscale = std::max(1.0, std::max(max_abs(sr), max_abs(si)));
  TOKMIX_REQUIRE_CLOSE(st.re().data(), sr.data(), sr.size(), 2e-5 * sscale, 1e-4);
  TOKMIX_REQUIRE_CLOSE(st.im().data(), si.data(), si.size(), 2e-5 * sscale, 1e-4);
  return std::vector<float>(y.data(), y.data() + ref.size());
}

}  // namespace

TEST_CASE("lti: FFT path and recurrence match the float64 reference", "[ssm][lti]") {
  unsigned seed = 500;
  for (auto path : {lti_path::fft, lti_path::recurrent})
    for (index_t H : {1, 13, 33})
      for (index_t N : {1, 17, 64})
        for (index_t L : {1, 7, 65}) run_lti(2, L, H, N, path, (H + N + L) % 2 == 0, ++seed);
  run_lti(1, 1000, 5, 17, lti_path::fft, true, 1);
  run_lti(1, 1000, 5, 17, lti_path::recurrent, true, 1);
}

TEST_CASE("lti: forward from zeros, FFT == recurrent, threads", "[ssm][lti]") {
  const index_t B = 2, L = 300, H = 19, N = 16;
  const lti_system sys = random_system(H, N, 42);
  const auto uv = random_floats(std::size_t(B * L * H), 43);
  std::vector<float> y1(uv.size()), y2(uv.size());
  lti_options o;
  o.path = lti_path::recurrent;
  lti_forward(tensor_view<const float, 3>(uv.data(), {B, L, H}), sys.params(), tensor_view<float, 3>(y1.data(), {B, L, H}), o);
  o.path = lti_path::fft;
  o.policy = exec_policy::threads(2);
  lti_forward(tensor_view<const float, 3>(uv.data(), {B, L, H}), sys.params(), tensor_view<float, 3>(y2.data(), {B, L, H}), o);
  double m = 0;
  for (float v : y1) m = std::max(m, double(std::abs(v)));
  TOKMIX_REQUIRE_CLOSE(y2.data(), y1.data(), y1.size(), 2e-5 * m, 1e-4);
}

TEST_CASE("lti: threads(2) on the recurrent and automatic paths == float64 reference", "[ssm][lti]") {
  unsigned seed = 980;
  // Recurrent: blocks of 16 heads per sequence (H = 19: 16 + 3, H = 40: 32 + 8
  // when two workers share one sequence); heads are independent, so the
  // threaded result is the serial one bit for bit.
  for (index_t B : {1, 2})
    for (index_t H : {19, 40}) {
      seed += 2;
      const auto serial = run_lti(B, 65, H, 17, lti_path::recurrent, true, seed);
      const auto threaded = run_lti(B, 65, H, 17, lti_path::recurrent, true, seed, exec_policy::threads(2));
      INFO("B " << B << " H " << H);
      REQUIRE(threaded == serial);
    }
  // Automatic: N = 16 at L = 65 takes the recurrence (16 <= 10 log2(130)),
  // N = 64 at L = 7 and N = 80 at L = 65 the FFT path.
  run_lti(2, 65, 19, 16, lti_path::automatic, true, ++seed, exec_policy::threads(2));
  run_lti(2, 7, 19, 64, lti_path::automatic, true, ++seed, exec_policy::threads(2));
  run_lti(2, 65, 35, 80, lti_path::automatic, false, ++seed, exec_policy::threads(2));
  // Stateless forward: the threaded recurrence keeps per-worker zero states;
  // the FFT path alongside.
  const index_t B = 2, L = 50, H = 37, N = 9;
  const lti_system sys = random_system(H, N, ++seed);
  const auto uv = random_floats(std::size_t(B * L * H), ++seed);
  std::vector<cd> s_ref(std::size_t(B * H * N), 0.0);
  const auto ref = tokmix_test::lti_ref::lti(uv, std::size_t(B), std::size_t(L), to_ref(sys), s_ref);
  for (auto path : {lti_path::recurrent, lti_path::fft}) {
    INFO("forward path " << int(path));
    tokmix_test::nan_padded<float> y(uv.size());
    lti_options o;
    o.path = path;
    o.policy = exec_policy::threads(2);
    lti_forward(tensor_view<const float, 3>(uv.data(), {B, L, H}), sys.params(), tensor_view<float, 3>(y.data(), {B, L, H}), o);
    TOKMIX_REQUIRE_CLOSE(y.data(), ref.data(), ref.size(), 2e-5 * std::max(1.0, max_abs(ref)), 1e-4);
    REQUIRE(std::isnan(y.data()[-1]));
    REQUIRE(std::isnan(y.data()[uv.size()]));
  }
}

TEST_CASE("lti: two prefills == one prefill == steps", "[ssm][lti]") {
  const index_t B = 2, L1 = 37, L2 = 70, L = L1 + L2, H = 13, N = 17;
  const lti_system sys = random_system(H, N, 7);
  const auto uv = random_floats(std::size_t(B * L * H), 8);
  const tensor_view<const float, 3> u(uv.data(), {B, L, H});
  std::vector<float> y_one(uv.size()), y_two(uv.size()), y_step(uv.size());
  lti_state one(B, H, N), two(B, H, N), step(B, H, N);
  lti_options fft;
  fft.path = lti_path::fft;
  lti_prefill(u, sys.params(), one, tensor_view<float, 3>(y_one.data(), {B, L, H}), fft);
  const tensor_view<float, 3> y2(y_two.data(), {B, L, H});
  lti_prefill(tensor_view<const float, 3>(uv.data(), {B, L1, H}, u.strides()), sys.params(), two,
              tensor_view<float, 3>(y2.data(), {B, L1, H}, y2.strides()), fft);
  lti_prefill(tensor_view<const float, 3>(u.ptr(0, L1, 0), {B, L2, H}, u.strides()), sys.params(), two,
              tensor_view<float, 3>(y2.ptr(0, L1, 0), {B, L2, H}, y2.strides()), fft);
  const tensor_view<float, 3> ys(y_step.data(), {B, L, H});
  for (index_t t = 0; t < L; ++t)
    lti_step(tensor_view<const float, 2>(u.ptr(0, t, 0), {B, H}, {u.stride(0), 1}), sys.params(), step,
             tensor_view<float, 2>(ys.ptr(0, t, 0), {B, H}, {ys.stride(0), 1}));
  double m = 0;
  for (float v : y_one) m = std::max(m, double(std::abs(v)));
  TOKMIX_REQUIRE_CLOSE(y_two.data(), y_one.data(), y_one.size(), 2e-5 * m, 1e-4);
  TOKMIX_REQUIRE_CLOSE(y_step.data(), y_one.data(), y_one.size(), 2e-5 * m, 1e-4);
  TOKMIX_REQUIRE_CLOSE(two.re().data(), one.re().data(), std::size_t(B * H * N), 2e-5 * m, 1e-4);
  TOKMIX_REQUIRE_CLOSE(step.im().data(), one.im().data(), std::size_t(B * H * N), 2e-5 * m, 1e-4);
}

TEST_CASE("lti: LRU with |Lambda| near 1 stays finite and accurate at L = 65536", "[ssm][lti]") {
  const index_t B = 1, L = 65536, H = 2, N = 4;
  std::vector<float> nu(std::size_t(H * N)), th(std::size_t(H * N));
  for (std::size_t i = 0; i < nu.size(); ++i) {
    nu[i] = float(std::log(1e-6 * double(i + 1)));  // |Lambda| = exp(-1e-6 (i+1))
    th[i] = float(std::log(1e-3 + 0.5 * double(i)));
  }
  const auto br = random_floats(nu.size(), 1), bi = random_floats(nu.size(), 2), cr = random_floats(nu.size(), 3),
             ci = random_floats(nu.size(), 4);
  const tensor_view<const float, 2> v(nu.data(), {H, N});
  auto m2 = [&](const std::vector<float>& x) { return tensor_view<const float, 2>(x.data(), {H, N}); };
  const lti_system sys = lru_params(v, m2(th), m2(br), m2(bi), m2(cr), m2(ci), {});
  const auto uv = random_floats(std::size_t(B * L * H), 5);
  std::vector<float> y(uv.size());
  lti_state st(B, H, N);
  lti_options fft;
  fft.path = lti_path::fft;
  lti_prefill(tensor_view<const float, 3>(uv.data(), {B, L, H}), sys.params(), st, tensor_view<float, 3>(y.data(), {B, L, H}),
              fft);
  std::vector<cd> s_ref(std::size_t(B * H * N), 0.0);
  const auto ref = tokmix_test::lti_ref::lti(uv, std::size_t(B), std::size_t(L), to_ref(sys), s_ref);
  const double m = max_abs(ref);
  TOKMIX_REQUIRE_CLOSE(y.data(), ref.data(), y.size(), 1e-4 * m, 1e-3);
  for (std::size_t k = 0; k < s_ref.size(); ++k) {
    REQUIRE(std::abs(st.re().data()[k] - s_ref[k].real()) <= 1e-4 * (1 + std::abs(s_ref[k])));
    REQUIRE(std::abs(st.im().data()[k] - s_ref[k].imag()) <= 1e-4 * (1 + std::abs(s_ref[k])));
  }
}

TEST_CASE("lti: S4D ZOH and LRU parameterisations follow their formulas", "[ssm][lti]") {
  const index_t H = 3, N = 5;
  auto ar = random_floats(std::size_t(H * N), 1, -2.f, -0.f), ai = random_floats(std::size_t(H * N), 2, -5.f, 5.f);
  ar[0] = 0.f;
  ai[0] = 0.f;  // A = 0: B_bar = dt B
  ar[1] = -1e-7f;
  ai[1] = 0.f;
  const auto br = random_floats(std::size_t(H * N), 3), bi = random_floats(std::size_t(H * N), 4),
             cr = random_floats(std::size_t(H * N), 5), ci = random_floats(std::size_t(H * N), 6);
  const std::vector<float> dt{0.01f, 0.5f, 2.f}, d{1.f, 2.f, 3.f};
  auto m2 = [&](const std::vector<float>& x) { return tensor_view<const float, 2>(x.data(), {H, N}); };
  const lti_system s = s4d_zoh(m2(ar), m2(ai), m2(br), m2(bi), m2(cr), m2(ci), tensor_view<const float, 1>(dt.data(), {H}),
                               tensor_view<const float, 1>(d.data(), {H}));
  for (index_t h = 0; h < H; ++h)
    for (index_t n = 0; n < N; ++n) {
      const std::size_t i = std::size_t(h * N + n);
      const cd a(ar[i], ai[i]), b(br[i], bi[i]);
      const cd lam = std::exp(double(dt[std::size_t(h)]) * a);
      const cd bb = std::abs(a) == 0 ? double(dt[std::size_t(h)]) * b : (lam - 1.0) / a * b;
      CHECK(std::abs(s.lambda_re[i] - lam.real()) < 1e-6);
      CHECK(std::abs(s.lambda_im[i] - lam.imag()) < 1e-6);
      CHECK(std::abs(s.b_re[i] - bb.real()) < 1e-5 * (1 + std::abs(bb)));
      CHECK(std::abs(s.b_im[i] - bb.imag()) < 1e-5 * (1 + std::abs(bb)));
    }
  const auto nu = random_floats(std::size_t(H * N), 7, -5.f, 1.f), th = random_floats(std::size_t(H * N), 8, -3.f, 1.f);
  const lti_system l = lru_params(m2(nu), m2(th), m2(br), m2(bi), m2(cr), m2(ci), {});
  for (std::size_t i = 0; i < nu.size(); ++i) {
    const cd lam = std::exp(cd(-std::exp(double(nu[i])), std::exp(double(th[i]))));
    const double gamma = std::sqrt(1 - std::norm(lam));
    CHECK(std::abs(l.lambda_re[i] - lam.real()) < 1e-6);
    CHECK(std::abs(l.lambda_im[i] - lam.imag()) < 1e-6);
    CHECK(std::abs(l.b_re[i] - gamma * br[i]) < 1e-5);
    CHECK(std::abs(l.b_im[i] - gamma * bi[i]) < 1e-5);
  }
}

TEST_CASE("lti: bad shapes and params throw argument_error and write nothing", "[ssm][lti]") {
  const index_t B = 1, L = 5, H = 3, N = 4;
  lti_system sys = random_system(H, N, 9);
  const auto uv = random_floats(std::size_t(B * L * H), 10);
  std::vector<float> y(uv.size(), -7.f);
  const tensor_view<const float, 3> u(uv.data(), {B, L, H});
  const tensor_view<float, 3> yv(y.data(), {B, L, H});
  lti_state st(B, H, N);
  st.re()(0, 0, 0) = 0.25f;
  CHECK_THROWS_AS(lti_prefill(u, sys.params(), st, tensor_view<float, 3>(y.data(), {B, L - 1, H})), argument_error);
  lti_state bad(B, H, N + 1);
  CHECK_THROWS_AS(lti_prefill(u, sys.params(), bad, yv), argument_error);
  const tensor_view<const float, 3> u_wrong(uv.data(), {B, 1, H + 2});
  CHECK_THROWS_AS(lti_forward(u_wrong, sys.params(), tensor_view<float, 3>(y.data(), {B, 1, H + 2})), argument_error);
  lti_system s2 = sys;
  s2.lambda_re[3] = 1.5f;  // unstable
  CHECK_THROWS_AS(lti_prefill(u, s2.params(), st, yv), argument_error);
  s2 = sys;
  s2.c_im[2] = std::numeric_limits<float>::quiet_NaN();
  CHECK_THROWS_AS(lti_prefill(u, s2.params(), st, yv), argument_error);
  s2 = sys;
  s2.d[1] = std::numeric_limits<float>::infinity();
  CHECK_THROWS_AS(lti_step(tensor_view<const float, 2>(uv.data(), {B, H}), s2.params(), st,
                           tensor_view<float, 2>(y.data(), {B, H})),
                  argument_error);
  for (float v : y) REQUIRE(v == -7.f);
  REQUIRE(st.re()(0, 0, 0) == 0.25f);
  const std::vector<float> z(std::size_t(H * N), 0.f), dt{0.1f, -0.1f, 0.1f};
  auto m2 = [&](const std::vector<float>& x) { return tensor_view<const float, 2>(x.data(), {H, N}); };
  CHECK_THROWS_AS(s4d_zoh(m2(z), m2(z), m2(z), m2(z), m2(z), m2(z), tensor_view<const float, 1>(dt.data(), {H}), {}),
                  argument_error);
  const std::vector<float> pos(std::size_t(H * N), 0.5f), dt_ok{0.1f, 0.1f, 0.1f};
  CHECK_THROWS_AS(s4d_zoh(m2(pos), m2(z), m2(z), m2(z), m2(z), m2(z), tensor_view<const float, 1>(dt_ok.data(), {H}), {}),
                  argument_error);
}
