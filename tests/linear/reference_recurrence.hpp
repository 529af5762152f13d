#pragma once
// float64 references for GLA, retention and the (gated) delta rule, written
// straight from the recurrences of docs/semantics.md token by token (plus
// retention's quadratic masked form), grouped kv heads included, and one
// driver that runs a tokmix mode (chunked, token loop, step by step) on the
// same problem through NaN-padded buffers, so the three test files check every
// mode the same way.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "support/compare.hpp"
#include "tokmix/linear/delta_rule.hpp"
#include "tokmix/linear/gla.hpp"
#include "tokmix/linear/retention.hpp"

namespace tokmix_test {
namespace recurrence_ref {

enum class kind { gla, retention, delta, gated_delta };
enum class mode { chunk, recurrent, step };

struct problem {
  kind k = kind::gla;
  // heads: query heads (q, o); kv_heads: k, v, gates, beta and the state
  // (grouped heads, query head h reads kv head h / (heads / kv_heads)).
  std::size_t batch = 1, seq = 1, heads = 1, kv_heads = 1, dk = 1, dv = 1;
  std::vector<float> q;          // [batch, seq, heads, dk]
  std::vector<float> key, v;     // [batch, seq, kv_heads, dk|dv]
  std::vector<float> g;          // GLA [batch, seq, kv_heads, dk]; gated delta [batch, seq, kv_heads]
  std::vector<float> beta;       // delta rule [batch, seq, kv_heads]
  std::vector<float> gamma;      // retention [kv_heads]; empty = RetNet default
  std::vector<std::int32_t> cu;  // [n_seqs + 1] or empty
  std::size_t gate_heads = 0;    // heads of g, beta and gamma as passed; 0 = kv_heads (error tests change it)
  float scale = std::nanf("");   // NaN = 1/sqrt(dk)
  bool l2norm = false;
  float eps = 1e-6f;

  std::size_t n_states() const { return cu.empty() ? batch : cu.size() - 1; }
  std::size_t group() const { return heads / kv_heads; }
  std::size_t state_size() const { return n_states() * kv_heads * dk * dv; }
  std::size_t out_size() const { return batch * seq * heads * dv; }
  double scale_value() const { return std::isnan(scale) ? 1.0 / std::sqrt(double(dk)) : double(scale); }
  double gamma_of(std::size_t h) const {
    return gamma.empty() ? 1.0 - std::ldexp(1.0, -5 - int(h)) : double(gamma[h]);
  }
};

// Gate regimes: fla-like mild gates (logsigmoid(x) / 16), strong ones that
// force chunk splits, and the two extremes.
enum class gates { mild, strong, near_zero, near_one };

inline float gate_value(gates r, float u01) {
  switch (r) {
    case gates::mild: return float(std::log(1.0 / (1.0 + std::exp(-(8.0 * u01 - 2.0)))) / 16.0);
    case gates::strong: return -5.f * u01;
    case gates::near_zero: return -60.f - 30.f * u01;  // alpha ~ 1e-26..1e-39
    case gates::near_one: return -1e-6f * u01;
  }
  return 0.f;
}

// kv_heads = 0: as many as heads (ungrouped).
inline problem make_problem(kind k, std::size_t batch, std::size_t seq, std::size_t heads, std::size_t dk,
                            std::size_t dv, unsigned seed, gates regime = gates::mild, std::size_t kv_heads = 0) {
  problem p;
  p.k = k;
  p.batch = batch;
  p.seq = seq;
  p.heads = heads;
  p.kv_heads = kv_heads ? kv_heads : heads;
  p.dk = dk;
  p.dv = dv;
  p.q = random_floats(batch * seq * heads * dk, seed);
  const std::size_t tok = batch * seq * p.kv_heads;
  p.key = random_floats(tok * dk, seed + 1);
  p.v = random_floats(tok * dv, seed + 2);
  if (k == kind::gla || k == kind::gated_delta) {
    const std::size_t n = k == kind::gla ? tok * dk : tok;
    p.g = random_floats(n, seed + 3, 0.f, 1.f);
    for (float& x : p.g) x = gate_value(regime, x);
  }
  if (k == kind::delta || k == kind::gated_delta) {
    p.beta = random_floats(tok, seed + 4, 0.f, 1.f);
    p.l2norm = true;
  }
  if (k == kind::retention && regime != gates::mild) {
    p.gamma.resize(p.kv_heads);
    for (std::size_t h = 0; h < p.kv_heads; ++h)
      p.gamma[h] = regime == gates::near_zero ? 1e-30f : regime == gates::near_one ? 1.f - 1e-7f : 0.5f;
  }
  return p;
}

inline void l2normalise(std::vector<double>& x, bool on, double eps) {
  if (!on) return;
  double s = 0;
  for (double e : x) s += e * e;
  const double r = 1.0 / std::sqrt(s + eps);
  for (double& e : x) e *= r;
}

// The token recurrence in float64, one state per kv head read by the query
// heads of its group. S: [n_states, kv_heads, dk, dv] in/out; o: [batch, seq, heads, dv].
inline void recurrent(const problem& p, std::vector<double>& S, std::vector<double>& o) {
  const std::size_t L = p.seq, H = p.kv_heads, G = p.group(), dk = p.dk, dv = p.dv;
  o.assign(p.out_size(), 0.0);
  const double scale = p.scale_value();
  for (std::size_t s = 0; s < p.n_states(); ++s) {
    const std::size_t bi = p.cu.empty() ? s : 0;
    const std::size_t t0 = p.cu.empty() ? 0 : std::size_t(p.cu[s]);
    const std::size_t t1 = p.cu.empty() ? L : std::size_t(p.cu[s + 1]);
    for (std::size_t h = 0; h < H; ++h) {
      double* st = &S[(s * H + h) * dk * dv];
      for (std::size_t t = t0; t < t1; ++t) {
        const std::size_t tok = (bi * L + t) * H + h;
        std::vector<double> k(dk), v(dv);
        for (std::size_t d = 0; d < dk; ++d) k[d] = p.key[tok * dk + d];
        for (std::size_t j = 0; j < dv; ++j) v[j] = p.v[tok * dv + j];
        if (p.k == kind::gla || p.k == kind::retention) {
          for (std::size_t d = 0; d < dk; ++d) {
            const double a = p.k == kind::gla ? std::exp(double(p.g[tok * dk + d])) : p.gamma_of(h);
            for (std::size_t j = 0; j < dv; ++j) st[d * dv + j] = a * st[d * dv + j] + k[d] * v[j];
          }
        } else {
          l2normalise(k, p.l2norm, p.eps);
          const double alpha = p.k == kind::gated_delta ? std::exp(double(p.g[tok])) : 1.0;
          const double beta = p.beta[tok];
          for (std::size_t e = 0; e < dk * dv; ++e) st[e] *= alpha;
          for (std::size_t j = 0; j < dv; ++j) {
            double ks = 0;
            for (std::size_t d = 0; d < dk; ++d) ks += k[d] * st[d * dv + j];
            const double u = beta * (v[j] - ks);
            for (std::size_t d = 0; d < dk; ++d) st[d * dv + j] += k[d] * u;
          }
        }
        for (std::size_t hq = h * G; hq < (h + 1) * G; ++hq) {
          const std::size_t qtok = (bi * L + t) * p.heads + hq;
          std::vector<double> q(dk);
          for (std::size_t d = 0; d < dk; ++d) q[d] = p.q[qtok * dk + d];
          if (p.k == kind::delta || p.k == kind::gated_delta) l2normalise(q, p.l2norm, p.eps);
          for (std::size_t j = 0; j < dv; ++j) {
            double acc = 0;
            for (std::size_t d = 0; d < dk; ++d) acc += st[d * dv + j] * scale * q[d];
            o[qtok * dv + j] = acc;
          }
        }
      }
    }
  }
}

// Retention's parallel form (RetNet eq. 5) with the initial state's term
// scale gamma^(i+1) q_i^T S0; S is not advanced. Dense batches only.
inline void retention_parallel(const problem& p, const std::vector<double>& S0, std::vector<double>& o) {
  const std::size_t L = p.seq, H = p.heads, Hk = p.kv_heads, dk = p.dk, dv = p.dv;
  o.assign(p.out_size(), 0.0);
  const double scale = p.scale_value();
  for (std::size_t b = 0; b < p.batch; ++b)
    for (std::size_t h = 0; h < H; ++h) {
      const std::size_t hk = h / p.group();
      const double gm = p.gamma_of(hk);
      const double* st = &S0[(b * Hk + hk) * dk * dv];
      for (std::size_t i = 0; i < L; ++i) {
        const std::size_t ti = (b * L + i) * H + h;
        for (std::size_t j = 0; j < dv; ++j) {
          double acc = 0;
          for (std::size_t d = 0; d < dk; ++d) acc += double(p.q[ti * dk + d]) * st[d * dv + j];
          o[ti * dv + j] = scale * std::pow(gm, double(i + 1)) * acc;
        }
        for (std::size_t jt = 0; jt <= i; ++jt) {
          const std::size_t tj = (b * L + jt) * Hk + hk;
          double qk = 0;
          for (std::size_t d = 0; d < dk; ++d) qk += double(p.q[ti * dk + d]) * double(p.key[tj * dk + d]);
          const double w = scale * qk * std::pow(gm, double(i - jt));
          for (std::size_t j = 0; j < dv; ++j) o[ti * dv + j] += w * double(p.v[tj * dv + j]);
        }
      }
    }
}

// A dense row-major copy of `src` inside NaN padding.
struct padded {
  nan_padded<float> buf;
  std::size_t n;
  explicit padded(const std::vector<float>& src) : buf(src.size()), n(src.size()) {
    std::copy(src.begin(), src.end(), buf.data());
  }
  explicit padded(std::size_t size) : buf(size), n(size) {}
  bool pads_untouched() const {
    for (std::size_t i = 0; i < buf.storage.size(); ++i) {
      const bool inside = i >= buf.pad && i < buf.pad + n;
      if (!inside && !std::isnan(buf.storage[i])) return false;
    }
    return true;
  }
};

struct run_options {
  mode m = mode::chunk;
  tokmix::index_t chunk = 64;
  tokmix::exec_policy policy;
  tokmix::index_t state_heads = -1;  // -1: kv_heads (error tests change it)
};

template <class State>
void load_state(State& st, const std::vector<float>& s) {
  std::copy(s.begin(), s.end(), st.S().data());
}

// Runs tokmix on p from state S (float, [n_states, kv_heads, dk, dv], updated
// in place) and returns o. Inputs and o sit inside NaN padding; o's padding
// must survive. A call that throws must leave o (all NaN) and the state as
// they were; the exception then reaches the caller.
inline std::vector<float> run(const problem& p, std::vector<float>& S, const run_options& opt) {
  using namespace tokmix;
  const index_t B = index_t(p.batch), L = index_t(p.seq), H = index_t(p.heads), Hk = index_t(p.kv_heads),
                dk = index_t(p.dk), dv = index_t(p.dv);
  const index_t Hg = p.gate_heads ? index_t(p.gate_heads) : Hk, Hs = opt.state_heads < 0 ? Hk : opt.state_heads;
  padded q(p.q), k(p.key), v(p.v), g(p.g), beta(p.beta), o(p.out_size());
  const tensor_view<const float, 4> qv(q.buf.data(), {B, L, H, dk}), kv(k.buf.data(), {B, L, Hk, dk}),
      vv(v.buf.data(), {B, L, Hk, dv});
  const tensor_view<float, 4> ov(o.buf.data(), {B, L, H, dv});
  const tensor_view<const float, 4> g4(g.buf.data(), {B, L, Hg, dk});
  const tensor_view<const float, 3> g3(g.buf.data(), {B, L, Hg}), b3(beta.buf.data(), {B, L, Hg});
  tensor_view<const std::int32_t, 1> cu;
  if (!p.cu.empty()) cu = tensor_view<const std::int32_t, 1>(p.cu.data(), {index_t(p.cu.size())});
  const index_t ns = index_t(p.n_states());

  // Step mode: token t of every batch entry is one call on [B, heads, d] slices
  // (heads = H for q and o, Hk for k and v, Hg for the gates).
  auto tok3 = [&](const float* base, index_t t, index_t d, index_t n = -1) {
    const index_t nh = n < 0 ? Hk : n;
    return tensor_view<const float, 3>(base + t * nh * d, {B, nh, d}, {L * nh * d, d, 1});
  };
  auto tok2 = [&](const float* base, index_t t) {
    return tensor_view<const float, 2>(base + t * Hg, {B, Hg}, {L * Hg, 1});
  };
  auto guarded = [&](auto& st, auto&& call) {
    try {
      call();
    } catch (...) {
      CHECK(std::equal(S.begin(), S.end(), st.S().data()));
      CHECK(st.S().size() == index_t(S.size()));
      bool all_nan = true;
      for (float x : o.buf.storage) all_nan &= std::isnan(x);
      CHECK(all_nan);
      throw;
    }
  };
  auto out3 = [&](index_t t) { return tensor_view<float, 3>(o.buf.data() + t * H * dv, {B, H, dv}, {L * H * dv, dv, 1}); };

  switch (p.k) {
    case recurrence_ref::kind::gla: {
      gla_state st(ns, Hs, dk, dv);
      load_state(st, S);
      gla_params prm;
      prm.scale = p.scale;
      prm.chunk_size = opt.chunk;
      prm.cu_seqlens = cu;
      prm.policy = opt.policy;
      guarded(st, [&] {
        if (opt.m == mode::chunk) gla_chunk_prefill(qv, kv, vv, g4, ov, st, prm);
        else if (opt.m == mode::recurrent) gla_recurrent_prefill(qv, kv, vv, g4, ov, st, prm);
        else
          for (index_t t = 0; t < L; ++t)
            gla_step(tok3(q.buf.data(), t, dk, H), tok3(k.buf.data(), t, dk), tok3(v.buf.data(), t, dv),
                     tok3(g.buf.data(), t, dk, Hg), out3(t), st, prm);
      });
      std::copy(st.S().data(), st.S().data() + S.size(), S.begin());
      break;
    }
    case recurrence_ref::kind::retention: {
      retention_state st(ns, Hs, dk, dv);
      load_state(st, S);
      retention_params prm;
      if (!p.gamma.empty()) prm.gamma = tensor_view<const float, 1>(p.gamma.data(), {Hg});
      prm.scale = p.scale;
      prm.chunk_size = opt.chunk;
      prm.cu_seqlens = cu;
      prm.policy = opt.policy;
      guarded(st, [&] {
        if (opt.m == mode::chunk) retention_chunk_prefill(qv, kv, vv, ov, st, prm);
        else if (opt.m == mode::recurrent) retention_recurrent_prefill(qv, kv, vv, ov, st, prm);
        else
          for (index_t t = 0; t < L; ++t)
            retention_step(tok3(q.buf.data(), t, dk, H), tok3(k.buf.data(), t, dk), tok3(v.buf.data(), t, dv),
                           out3(t), st, prm);
      });
      std::copy(st.S().data(), st.S().data() + S.size(), S.begin());
      break;
    }
    case recurrence_ref::kind::delta:
    case recurrence_ref::kind::gated_delta: {
      const bool gated = p.k == recurrence_ref::kind::gated_delta;
      delta_rule_state st(ns, Hs, dk, dv);
      load_state(st, S);
      delta_rule_params prm;
      prm.scale = p.scale;
      prm.use_qk_l2norm = p.l2norm;
      prm.l2norm_eps = p.eps;
      prm.chunk_size = opt.chunk;
      prm.cu_seqlens = cu;
      prm.policy = opt.policy;
      guarded(st, [&] {
        if (opt.m == mode::chunk) {
          if (gated) gated_delta_rule_chunk_prefill(qv, kv, vv, g3, b3, ov, st, prm);
          else delta_rule_chunk_prefill(qv, kv, vv, b3, ov, st, prm);
        } else if (opt.m == mode::recurrent) {
          if (gated) gated_delta_rule_recurrent_prefill(qv, kv, vv, g3, b3, ov, st, prm);
          else delta_rule_recurrent_prefill(qv, kv, vv, b3, ov, st, prm);
        } else {
          for (index_t t = 0; t < L; ++t) {
            const auto qt = tok3(q.buf.data(), t, dk, H), kt = tok3(k.buf.data(), t, dk), vt = tok3(v.buf.data(), t, dv);
            if (gated)
              gated_delta_rule_step(qt, kt, vt, tok2(g.buf.data(), t), tok2(beta.buf.data(), t), out3(t), st, prm);
            else
              delta_rule_step(qt, kt, vt, tok2(beta.buf.data(), t), out3(t), st, prm);
          }
        }
      });
      std::copy(st.S().data(), st.S().data() + S.size(), S.begin());
      break;
    }
  }
  REQUIRE(o.pads_untouched());
  return std::vector<float>(o.buf.data(), o.buf.data() + o.n);
}

// Worst |got - ref| relative to the largest |ref| (outputs of these recurrences
// span orders of magnitude; an absolute bound scaled to the data is what fp32 gives).
template <class G, class R>
double scaled_error(const std::vector<G>& got, const std::vector<R>& ref) {
  REQUIRE(got.size() == ref.size());
  double mx = 0, err = 0;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    mx = std::max(mx, std::abs(double(ref[i])));
    const double e = std::abs(double(got[i]) - double(ref[i]));
    if (!(e == e)) return INFINITY;
    err = std::max(err, e);
  }
  return err / std::max(mx, 1e-30);
}

inline bool all_finite(const std::vector<float>& x) {
  for (float e : x)
    if (!std::isfinite(e)) return false;
  return true;
}

// A random initial state (shared by the reference as double).
inline std::vector<float> random_state(const problem& p, unsigned seed, float mag = 0.5f) {
  return random_floats(p.state_size(), seed, -mag, mag);
}

inline std::vector<double> to_double(const std::vector<float>& x) { return std::vector<double>(x.begin(), x.end()); }

// One problem through mode m vs the float64 recurrence: outputs and final state.
inline void check_mode(const problem& p, const run_options& opt, double tol, unsigned seed = 99) {
  std::vector<float> S = random_state(p, seed);
  std::vector<double> Sr = to_double(S), orf;
  recurrent(p, Sr, orf);
  const std::vector<float> o = run(p, S, opt);
  const double eo = scaled_error(o, orf), es = scaled_error(S, Sr);
  INFO("mode " << int(opt.m) << " chunk " << opt.chunk << " B " << p.batch << " L " << p.seq << " H " << p.heads
               << " Hkv " << p.kv_heads
               << " dk " << p.dk << " dv " << p.dv << ": out err " << eo << ", state err " << es);
  CHECK(eo <= tol);
  CHECK(es <= tol);
}

// Slices tokens [t0, t1) of every batch entry out of p.
inline problem slice(const problem& p, std::size_t t0, std::size_t t1) {
  problem r = p;
  r.seq = t1 - t0;
  // per_tok: floats per token of every head.
  auto cut = [&](const std::vector<float>& x, std::size_t per_tok) {
    std::vector<float> out;
    if (x.empty()) return out;
    for (std::size_t b = 0; b < p.batch; ++b)
      out.insert(out.end(), x.begin() + std::ptrdiff_t((b * p.seq + t0) * per_tok),
                 x.begin() + std::ptrdiff_t((b * p.seq + t1) * per_tok));
    return out;
  };
  r.q = cut(p.q, p.heads * p.dk);
  r.key = cut(p.key, p.kv_heads * p.dk);
  r.v = cut(p.v, p.kv_heads * p.dv);
  r.g = cut(p.g, p.kv_heads * (p.k == kind::gla ? p.dk : 1));
  r.beta = cut(p.beta, p.kv_heads);
  return r;
}

}  // namespace recurrence_ref
}  // namespace tokmix_test

namespace tokmix_test {
namespace recurrence_ref {

// The sweep every mixer of the family runs: chunk sizes that do and do not
// divide L, head dims off the SIMD width, all three modes against float64.
inline void sweep(kind k, gates regime, double tol) {
  const std::size_t dims[][2] = {{16, 16}, {64, 64}, {33, 17}};
  const std::size_t lens[] = {1, 7, 65, 200};
  unsigned seed = 1;
  for (const auto& d : dims)
    for (std::size_t L : lens) {
      const problem p = make_problem(k, 2, L, 2, d[0], d[1], seed += 7, regime);
      for (tokmix::index_t c : {1, 16, 64}) check_mode(p, {mode::chunk, c, {}}, tol);
      check_mode(p, {mode::recurrent, 64, {}}, tol);
      check_mode(p, {mode::step, 64, {}}, tol);
    }
}

// prefill(L1) then prefill(L2) from the carried state == prefill(L1 + L2); the
// token loop then steps == the token loop over everything, bit for bit.
inline void chaining(kind k, gates regime, double tol, std::size_t heads = 3, std::size_t kv_heads = 0) {
  const problem p = make_problem(k, 2, 150, heads, 24, 40, 321, regime, kv_heads);
  for (std::size_t split : {std::size_t(1), std::size_t(64), std::size_t(97)}) {
    const problem a = slice(p, 0, split), b = slice(p, split, p.seq);
    std::vector<float> S_whole = random_state(p, 5), S_parts = S_whole;
    const std::vector<float> o_whole = run(p, S_whole, {mode::chunk, 32, {}});
    const std::vector<float> oa = run(a, S_parts, {mode::chunk, 32, {}});
    const std::vector<float> ob = run(b, S_parts, {mode::chunk, 32, {}});
    std::vector<float> o_parts(p.out_size());
    for (std::size_t bi = 0; bi < p.batch; ++bi) {
      const std::size_t row = p.heads * p.dv;
      std::copy(oa.begin() + std::ptrdiff_t(bi * a.seq * row), oa.begin() + std::ptrdiff_t((bi + 1) * a.seq * row),
                o_parts.begin() + std::ptrdiff_t(bi * p.seq * row));
      std::copy(ob.begin() + std::ptrdiff_t(bi * b.seq * row), ob.begin() + std::ptrdiff_t((bi + 1) * b.seq * row),
                o_parts.begin() + std::ptrdiff_t((bi * p.seq + split) * row));
    }
    INFO("split at " << split);
    CHECK(scaled_error(o_parts, o_whole) <= tol);
    CHECK(scaled_error(S_parts, S_whole) <= tol);

    // Token loop over a, then steps over b == token loop over everything.
    std::vector<float> R_whole = random_state(p, 6), R_parts = R_whole;
    const std::vector<float> r_whole = run(p, R_whole, {mode::recurrent, 64, {}});
    run(a, R_parts, {mode::recurrent, 64, {}});
    const std::vector<float> r_b = run(b, R_parts, {mode::step, 64, {}});
    CHECK(R_parts == R_whole);
    bool same = true;
    for (std::size_t bi = 0; bi < p.batch; ++bi)
      for (std::size_t i = 0; i < b.seq * p.heads * p.dv; ++i)
        same &= r_b[bi * b.seq * p.heads * p.dv + i] == r_whole[(bi * p.seq + split) * p.heads * p.dv + i];
    CHECK(same);
  }
}

// Packed sequences (cu_seqlens, with an empty one) == each sequence on its own state.
inline void varlen(kind k, double tol, std::size_t heads = 2, std::size_t kv_heads = 0) {
  problem p = make_problem(k, 1, 140, heads, 20, 12, 77, gates::mild, kv_heads);
  p.cu = {0, 33, 33, 100, 140};
  for (mode m : {mode::chunk, mode::recurrent}) check_mode(p, {m, 16, {}}, tol);
}

// Two threads give the serial result bit for bit (one item per sequence x kv head).
inline void threads_match(kind k, std::size_t heads = 3, std::size_t kv_heads = 0) {
  const problem p = make_problem(k, 2, 90, heads, 32, 32, 55, gates::mild, kv_heads);
  for (mode m : {mode::chunk, mode::recurrent}) {
    std::vector<float> S1 = random_state(p, 8), S2 = S1;
    const std::vector<float> o1 = run(p, S1, {m, 32, tokmix::exec_policy::serial()});
    const std::vector<float> o2 = run(p, S2, {m, 32, tokmix::exec_policy::threads(2)});
    CHECK(o1 == o2);
    CHECK(S1 == S2);
  }
}

// L = 65536, one head, small dims: extreme decays stay finite and match float64.
inline void long_sequence(kind k, gates regime, double tol) {
  const problem p = make_problem(k, 1, 65536, 1, 8, 8, 4242, regime);
  std::vector<float> S(p.state_size(), 0.f);
  std::vector<double> Sr(p.state_size(), 0.0), orf;
  recurrent(p, Sr, orf);
  const std::vector<float> o = run(p, S, {mode::chunk, 64, {}});
  REQUIRE(all_finite(o));
  REQUIRE(all_finite(S));
  INFO("regime " << int(regime) << ": out err " << scaled_error(o, orf) << ", state err " << scaled_error(S, Sr));
  CHECK(scaled_error(o, orf) <= tol);
  CHECK(scaled_error(S, Sr) <= tol);
}

// ---- grouped heads (GQA / MQA) ------------------------------------------------

// The ungrouped problem whose kv side (k, v, gates, beta, retention's decays)
// is p's repeated to every query head of a group: what grouped heads must
// reproduce, each repeated state identical.
inline problem repeat_kv(const problem& p) {
  const std::size_t G = p.group(), Hk = p.kv_heads;
  problem r = p;
  r.kv_heads = p.heads;
  auto widen = [&](const std::vector<float>& x, std::size_t per_head) {
    std::vector<float> out;
    out.reserve(x.size() * G);
    for (std::size_t tok = 0; tok < x.size() / (Hk * per_head); ++tok)
      for (std::size_t h = 0; h < Hk; ++h)
        for (std::size_t j = 0; j < G; ++j)
          out.insert(out.end(), x.begin() + std::ptrdiff_t((tok * Hk + h) * per_head),
                     x.begin() + std::ptrdiff_t((tok * Hk + h + 1) * per_head));
    return out;
  };
  r.key = widen(p.key, p.dk);
  r.v = widen(p.v, p.dv);
  r.g = widen(p.g, p.k == kind::gla ? p.dk : 1);
  r.beta = widen(p.beta, 1);
  if (p.k == kind::retention) {
    // The decays of the kv heads, also when p uses the default (over kv heads).
    std::vector<float> gk(Hk);
    for (std::size_t h = 0; h < Hk; ++h) gk[h] = float(p.gamma_of(h));
    r.gamma = widen(gk, 1);
  }
  return r;
}

// States [n, kv_heads, dk, dv] of p to [n, heads, dk, dv] (each repeated G
// times), or with `back`, the ungrouped states of heads h * G as [n, kv_heads, dk, dv].
inline std::vector<float> regroup_state(const problem& p, const std::vector<float>& S, bool back) {
  const std::size_t G = p.group(), blk = p.dk * p.dv;
  std::vector<float> out;
  for (std::size_t s = 0; s < p.n_states(); ++s)
    for (std::size_t h = 0; h < p.kv_heads; ++h)
      for (std::size_t j = 0; j < (back ? 1 : G); ++j) {
        const std::size_t src = back ? (s * p.heads + h * G) * blk : (s * p.kv_heads + h) * blk;
        out.insert(out.end(), S.begin() + std::ptrdiff_t(src), S.begin() + std::ptrdiff_t(src + blk));
      }
  return out;
}

// Grouped p through mode m against the ungrouped run on repeat_kv(p) (the same
// arithmetic per head, so only rounding-level differences are allowed) and
// against the grouped float64 recurrence.
inline void check_grouped(const problem& p, const run_options& opt, double tol, unsigned seed) {
  const problem u = repeat_kv(p);
  std::vector<float> S = random_state(p, seed), Su = regroup_state(p, S, false);
  const std::vector<float> o = run(p, S, opt), ou = run(u, Su, opt);
  INFO("mode " << int(opt.m) << " chunk " << opt.chunk << " L " << p.seq << " H " << p.heads << " Hkv " << p.kv_heads
               << " dk " << p.dk << " dv " << p.dv);
  TOKMIX_REQUIRE_CLOSE(o.data(), ou.data(), o.size(), 1e-6, 1e-5);
  const std::vector<float> Sk = regroup_state(p, Su, true);
  TOKMIX_REQUIRE_CLOSE(S.data(), Sk.data(), S.size(), 1e-6, 1e-5);
  check_mode(p, opt, tol, seed);
}

// Hq = 4 over Hkv = 2 and Hq = 6 over one kv head (MQA), L = 1, 7, 65 with
// chunk 16 (last chunk partial), d_k != d_v: chunked, token loop and steps;
// then a carried state across two prefills, packed sequences with an empty
// one, and two threads, all grouped.
inline void grouped(kind k, gates regime, double tol) {
  const std::size_t shapes[][2] = {{4, 2}, {6, 1}};
  unsigned seed = 600;
  for (const auto& hs : shapes) {
    for (std::size_t L : {1, 7, 65}) {
      const problem p = make_problem(k, 2, L, hs[0], 24, 40, seed += 13, regime, hs[1]);
      for (mode m : {mode::chunk, mode::recurrent, mode::step}) check_grouped(p, {m, 16, {}}, tol, seed);
    }
    chaining(k, regime, tol, hs[0], hs[1]);
    varlen(k, tol, hs[0], hs[1]);
    threads_match(k, hs[0], hs[1]);
  }
}

inline void expect_argument_error(const problem& p, const run_options& opt, std::size_t state_heads,
                                  const std::string& argument) {
  run_options o = opt;
  o.state_heads = tokmix::index_t(state_heads);
  std::vector<float> S = random_floats(p.n_states() * state_heads * p.dk * p.dv, 3);
  INFO("mode " << int(opt.m) << ", expecting an error on " << argument);
  try {
    run(p, S, o);
    FAIL("no exception");
  } catch (const tokmix::argument_error& e) {
    CHECK(e.argument() == argument);
  }
}

// Heads that don't divide, a state with heads_q heads, kv-side gates with
// heads_q heads: each throws naming the argument and writes nothing (run
// checks o and the state on the way out).
inline void grouped_errors(kind k) {
  for (mode m : {mode::chunk, mode::recurrent, mode::step}) {
    const run_options opt{m, 4, {}};
    expect_argument_error(make_problem(k, 1, 5, 3, 8, 4, 9, gates::strong, 2), opt, 2, "q heads (dim 2)");
    expect_argument_error(make_problem(k, 2, 5, 2, 8, 4, 9, gates::strong, 4), opt, 4, "q heads (dim 2)");
    expect_argument_error(make_problem(k, 1, 5, 0, 8, 4, 9, gates::strong, 2), opt, 2, "q heads (dim 2)");
    const problem p = make_problem(k, 1, 5, 4, 8, 4, 9, gates::strong, 2);
    expect_argument_error(p, opt, 4, "state heads");
    // The same values given per query head, as before grouping.
    problem wide = repeat_kv(p);
    wide.kv_heads = p.kv_heads;
    wide.key = p.key;
    wide.v = p.v;
    wide.gate_heads = p.heads;
    const char* gate = k == kind::gla ? "g" : k == kind::retention ? "gamma" : "beta";
    expect_argument_error(wide, opt, 2, gate);
  }
}

}  // namespace recurrence_ref
}  // namespace tokmix_test
