// Set Transformer blocks against float64 versions of their definitions:
// MAB(X, Y) written out (projections, per-head softmax, residual on the
// projected queries, optional LayerNorms, relu FF), ISAB as its two stages
// MAB1(X, MAB0(I, X)) and PMA as MAB(S, Z). Odd widths, several heads,
// threads, loading by the authors' parameter names, bad inputs.

#include "tokmix/sparse/inducing.hpp"

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "support/compare.hpp"

namespace {

using tokmix::index_t;
using tokmix::tensor_view;

using dvec = std::vector<double>;

dvec linear(const dvec& x, index_t n, index_t din, const std::vector<float>& w, const std::vector<float>& b,
            index_t dout) {
  dvec y(static_cast<std::size_t>(n * dout));
  for (index_t r = 0; r < n; ++r)
    for (index_t c = 0; c < dout; ++c) {
      double a = b.empty() ? 0.0 : double(b[static_cast<std::size_t>(c)]);
      for (index_t e = 0; e < din; ++e) a += x[r * din + e] * double(w[static_cast<std::size_t>(c * din + e)]);
      y[r * dout + c] = a;
    }
  return y;
}

void layer_norm(double* x, index_t d, const std::vector<float>& g, const std::vector<float>& b, double eps) {
  double mean = 0, var = 0;
  for (index_t c = 0; c < d; ++c) mean += x[c] / double(d);
  for (index_t c = 0; c < d; ++c) var += (x[c] - mean) * (x[c] - mean) / double(d);
  for (index_t c = 0; c < d; ++c) x[c] = (x[c] - mean) / std::sqrt(var + eps) * g[c] + b[c];
}

// MAB of one set: x [n, dq], y [ny, dk] -> [n, dv].
dvec mab_ref(const dvec& x, index_t n, const dvec& y, index_t ny, const tokmix::mab_weights& w, index_t heads,
             bool ln, double scale = NAN) {
  const index_t dv = w.dv, dh = dv / heads;
  if (std::isnan(scale)) scale = 1.0 / std::sqrt(double(dv));
  const dvec q = linear(x, n, w.dq, w.wq, w.bq, dv), k = linear(y, ny, w.dk, w.wk, w.bk, dv),
             v = linear(y, ny, w.dk, w.wv, w.bv, dv);
  dvec o = q;
  std::vector<double> s(static_cast<std::size_t>(ny));
  for (index_t h = 0; h < heads; ++h)
    for (index_t i = 0; i < n; ++i) {
      if (ny == 0) continue;
      double mx = -std::numeric_limits<double>::infinity(), l = 0;
      for (index_t j = 0; j < ny; ++j) {
        double d = 0;
        for (index_t e = 0; e < dh; ++e) d += q[i * dv + h * dh + e] * k[j * dv + h * dh + e];
        s[j] = scale * d;
        mx = std::max(mx, s[j]);
      }
      for (index_t j = 0; j < ny; ++j) l += (s[j] = std::exp(s[j] - mx));
      for (index_t e = 0; e < dh; ++e) {
        double a = 0;
        for (index_t j = 0; j < ny; ++j) a += s[j] * v[j * dv + h * dh + e];
        o[i * dv + h * dh + e] += a / l;
      }
    }
  if (ln)
    for (index_t i = 0; i < n; ++i) layer_norm(o.data() + i * dv, dv, w.ln0_g, w.ln0_b, 1e-5);
  const dvec f = linear(o, n, dv, w.wo, w.bo, dv);
  for (std::size_t t = 0; t < o.size(); ++t) o[t] += std::max(0.0, f[t]);
  if (ln)
    for (index_t i = 0; i < n; ++i) layer_norm(o.data() + i * dv, dv, w.ln1_g, w.ln1_b, 1e-5);
  return o;
}

std::vector<float> rand_vec(std::size_t n, unsigned seed) { return tokmix_test::random_floats(n, seed, -1.f, 1.f); }

dvec slice(const std::vector<float>& x, index_t b, index_t n, index_t d) {
  return dvec(x.begin() + b * n * d, x.begin() + (b + 1) * n * d);
}

// Non-trivial LayerNorm parameters (random() sets 1 and 0).
void perturb_ln(tokmix::mab_weights& w, unsigned seed) {
  const auto r = rand_vec(static_cast<std::size_t>(4 * w.dv), seed);
  for (index_t c = 0; c < w.dv; ++c) {
    w.ln0_g[c] = 1.f + 0.3f * r[c];
    w.ln0_b[c] = 0.2f * r[w.dv + c];
    w.ln1_g[c] = 1.f + 0.3f * r[2 * w.dv + c];
    w.ln1_b[c] = 0.2f * r[3 * w.dv + c];
  }
}

}  // namespace

TEST_CASE("inducing: MAB against its float64 definition", "[sparse][inducing]") {
  struct cfg {
    index_t B, n, ny, dq, dk, dv, heads;
    bool ln;
  };
  const cfg cases[] = {{1, 1, 1, 1, 1, 1, 1, false}, {2, 17, 33, 5, 7, 12, 3, true}, {3, 40, 9, 16, 16, 32, 4, false},
                       {1, 6, 0, 3, 3, 8, 2, true},  {2, 129, 70, 8, 24, 20, 5, true}};
  unsigned seed = 1;
  for (const cfg& c : cases) {
    INFO("B " << c.B << " n " << c.n << " ny " << c.ny << " dims " << c.dq << "/" << c.dk << "/" << c.dv << " heads "
              << c.heads << " ln " << c.ln);
    tokmix::mab_weights w = tokmix::mab_weights::random(c.dq, c.dk, c.dv, c.ln, seed++);
    if (c.ln) perturb_ln(w, seed++);
    const std::vector<float> x = rand_vec(static_cast<std::size_t>(c.B * c.n * c.dq), seed++),
                             y = rand_vec(static_cast<std::size_t>(c.B * c.ny * c.dk), seed++);
    std::vector<float> out(static_cast<std::size_t>(c.B * c.n * c.dv), NAN);
    tokmix::mab_params p;
    p.heads = c.heads;
    p.layer_norm = c.ln;
    tokmix::mab_forward(tensor_view<const float, 3>(x.data(), {c.B, c.n, c.dq}),
                        tensor_view<const float, 3>(y.data(), {c.B, c.ny, c.dk}),
                        tensor_view<float, 3>(out.data(), {c.B, c.n, c.dv}), w, p);
    dvec ref;
    for (index_t b = 0; b < c.B; ++b) {
      const dvec r = mab_ref(slice(x, b, c.n, c.dq), c.n, slice(y, b, c.ny, c.dk), c.ny, w, c.heads, c.ln);
      ref.insert(ref.end(), r.begin(), r.end());
    }
    TOKMIX_REQUIRE_CLOSE(out.data(), ref.data(), ref.size(), 2e-5, 1e-4);
  }
}

TEST_CASE("inducing: ISAB is MAB1(X, MAB0(I, X)) and PMA is MAB(S, Z)", "[sparse][inducing]") {
  const index_t B = 2, n = 75, din = 6, dv = 16, m = 5, k = 3;
  for (bool ln : {false, true}) {
    tokmix::mab_weights m0 = tokmix::mab_weights::random(dv, din, dv, ln, 11), m1 = tokmix::mab_weights::random(din, dv, dv, ln, 12),
                        pm = tokmix::mab_weights::random(dv, dv, dv, ln, 13);
    if (ln) {
      perturb_ln(m0, 14);
      perturb_ln(m1, 15);
      perturb_ln(pm, 16);
    }
    const std::vector<float> x = rand_vec(static_cast<std::size_t>(B * n * din), 17), ind = rand_vec(static_cast<std::size_t>(m * dv), 18),
                             seeds = rand_vec(static_cast<std::size_t>(k * dv), 19);
    tokmix::mab_params p;
    p.heads = 4;
    p.layer_norm = ln;
    std::vector<float> isab(static_cast<std::size_t>(B * n * dv), NAN), pma(static_cast<std::size_t>(B * k * dv), NAN);
    tokmix::isab_forward(tensor_view<const float, 3>(x.data(), {B, n, din}), tensor_view<const float, 2>(ind.data(), {m, dv}),
                         tensor_view<float, 3>(isab.data(), {B, n, dv}), m0, m1, p);
    tokmix::pma_forward(tensor_view<const float, 3>(isab.data(), {B, n, dv}), tensor_view<const float, 2>(seeds.data(), {k, dv}),
                        tensor_view<float, 3>(pma.data(), {B, k, dv}), pm, p);
    dvec ref_isab, ref_pma;
    const dvec I(ind.begin(), ind.end()), S(seeds.begin(), seeds.end());
    for (index_t b = 0; b < B; ++b) {
      const dvec xb = slice(x, b, n, din);
      const dvec h = mab_ref(I, m, xb, n, m0, 4, ln);        // stage 1: m summaries
      const dvec o = mab_ref(xb, n, h, m, m1, 4, ln);        // stage 2: every element attends them
      ref_isab.insert(ref_isab.end(), o.begin(), o.end());
      const dvec z = slice(isab, b, n, dv);  // PMA on the kernel's ISAB output (checked above)
      const dvec pr = mab_ref(S, k, z, n, pm, 4, ln);
      ref_pma.insert(ref_pma.end(), pr.begin(), pr.end());
    }
    INFO("layer_norm " << ln);
    TOKMIX_REQUIRE_CLOSE(isab.data(), ref_isab.data(), ref_isab.size(), 2e-5, 1e-4);
    TOKMIX_REQUIRE_CLOSE(pma.data(), ref_pma.data(), ref_pma.size(), 2e-5, 1e-4);
  }
}

TEST_CASE("inducing: threads, explicit scale, loading by parameter names", "[sparse][inducing]") {
  const index_t B = 3, n = 50, d = 8;
  const tokmix::mab_weights w = tokmix::mab_weights::random(d, d, d, true, 21);
  tokmix::named_tensors t;
  auto put = [&](const std::string& name, std::vector<tokmix::index_t> shape, const std::vector<float>& v) {
    t.insert("enc.0.mab0." + name, std::move(shape), v);
  };
  put("fc_q.weight", {d, d}, w.wq);
  put("fc_q.bias", {d}, w.bq);
  put("fc_k.weight", {d, d}, w.wk);
  put("fc_k.bias", {d}, w.bk);
  put("fc_v.weight", {d, d}, w.wv);
  put("fc_v.bias", {d}, w.bv);
  put("fc_o.weight", {d, d}, w.wo);
  put("fc_o.bias", {d}, w.bo);
  put("ln0.weight", {d}, w.ln0_g);
  put("ln0.bias", {d}, w.ln0_b);
  put("ln1.weight", {d}, w.ln1_g);
  put("ln1.bias", {d}, w.ln1_b);
  const tokmix::mab_weights loaded = tokmix::mab_weights::load(t, "enc.0.mab0", d, d, d, true);
  const std::vector<float> x = rand_vec(static_cast<std::size_t>(B * n * d), 22), ind = rand_vec(static_cast<std::size_t>(4 * d), 23);
  tokmix::mab_params p;
  p.heads = 2;
  p.layer_norm = true;
  p.scale = 0.7f;
  std::vector<float> a(static_cast<std::size_t>(B * n * d)), b(a.size()), c(a.size());
  const tensor_view<const float, 3> xv(x.data(), {B, n, d});
  const tensor_view<const float, 2> iv(ind.data(), {4, d});
  tokmix::isab_forward(xv, iv, tensor_view<float, 3>(a.data(), {B, n, d}), w, w, p);
  tokmix::isab_forward(xv, iv, tensor_view<float, 3>(c.data(), {B, n, d}), loaded, loaded, p);
  p.policy = tokmix::exec_policy::threads(2);
  tokmix::isab_forward(xv, iv, tensor_view<float, 3>(b.data(), {B, n, d}), w, w, p);
  CHECK(a == b);
  CHECK(a == c);
  dvec ref;
  const dvec I(ind.begin(), ind.end());
  for (index_t s = 0; s < B; ++s) {
    const dvec xb = slice(x, s, n, d);
    const dvec o = mab_ref(xb, n, mab_ref(I, 4, xb, n, w, 2, true, 0.7), 4, w, 2, true, 0.7);
    ref.insert(ref.end(), o.begin(), o.end());
  }
  TOKMIX_REQUIRE_CLOSE(a.data(), ref.data(), ref.size(), 2e-5, 1e-4);
}

TEST_CASE("inducing: bad inputs throw and write nothing", "[sparse][inducing]") {
  const index_t B = 1, n = 10, d = 8;
  const std::vector<float> x = rand_vec(static_cast<std::size_t>(B * n * d), 31), ind = rand_vec(static_cast<std::size_t>(3 * d), 32);
  const tensor_view<const float, 3> xv(x.data(), {B, n, d});
  std::vector<float> out(static_cast<std::size_t>(B * n * d), 5.f);
  const tensor_view<float, 3> ov(out.data(), {B, n, d});
  const tokmix::mab_weights ok = tokmix::mab_weights::random(d, d, d, false, 33);
  auto untouched = [&] {
    for (float v : out)
      if (v != 5.f) return false;
    return true;
  };
  tokmix::mab_params p;
  p.heads = 3;
  CHECK_THROWS_WITH(tokmix::isab_forward(xv, tensor_view<const float, 2>(ind.data(), {3, d}), ov, ok, ok, p),
                    Catch::Contains("argument 'params.heads'") && Catch::Contains("a divisor of dV = 8"));
  CHECK(untouched());
  p.heads = 2;
  tokmix::mab_weights bad = ok;
  bad.wk.pop_back();
  CHECK_THROWS_WITH(tokmix::isab_forward(xv, tensor_view<const float, 2>(ind.data(), {3, d}), ov, ok, bad, p),
                    Catch::Contains("argument 'mab1.wk'") && Catch::Contains("64 values"));
  CHECK(untouched());
  const tokmix::mab_weights wide = tokmix::mab_weights::random(d, 5, d, false, 34);
  CHECK_THROWS_WITH(tokmix::isab_forward(xv, tensor_view<const float, 2>(ind.data(), {3, d}), ov, wide, ok, p),
                    Catch::Contains("argument 'mab0.dk'") && Catch::Contains("key input width 8"));
  CHECK(untouched());
  p.layer_norm = true;  // ok has no LayerNorm parameters
  CHECK_THROWS_WITH(tokmix::pma_forward(xv, tensor_view<const float, 2>(ind.data(), {3, d}),
                                        tensor_view<float, 3>(out.data(), {B, 3, d}), ok, p),
                    Catch::Contains("argument 'mab.ln0_g'"));
  CHECK(untouched());
  p.layer_norm = false;
  CHECK_THROWS_WITH(tokmix::pma_forward(xv, tensor_view<const float, 2>(ind.data(), {3, d}), ov, ok, p),
                    Catch::Contains("argument 'out'") && Catch::Contains("shape [1, 3, 8]"));
  CHECK(untouched());
  CHECK_THROWS_WITH(tokmix::mab_forward(xv, tensor_view<const float, 3>(x.data(), {2, 5, d}), ov, ok, p),
                    Catch::Contains("argument 'y'"));
  CHECK(untouched());
}
