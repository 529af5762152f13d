#pragma once
// float64 reference for NHA written from the recurrent definition at the top
// of tokmix/linear/nha.hpp, token by token: the slot memory takes the token
// lag steps back, then one max-subtracted softmax runs over the m slots and the
// window's tokens, kept as a full history (no ring: the reference must not
// share tokmix's bookkeeping). Plus the driver that runs tokmix (chunked, token
// loop, steps) on the same problem through NaN-padded buffers and compares
// outputs and the whole final state.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <map>
#include <vector>

#include "support/compare.hpp"
#include "tokmix/linear/nha.hpp"

namespace tokmix_test {
namespace nha_ref {

using tokmix::index_t;

enum class mode { chunk, recurrent, step };
enum class gates { mild, strong, near_zero, near_one };

inline float gate_value(gates r, float u01) {
  switch (r) {
    case gates::mild:
      return float(std::log(1.0 / (1.0 + std::exp(-(8.0 * u01 - 2.0)))) / 8.0);  // logsigmoid / 8
    case gates::strong:
      return -5.f * u01;
    case gates::near_zero:
      return -60.f - 30.f * u01;
    case gates::near_one:
      return -1e-6f * u01;
  }
  return 0.f;
}

struct problem {
  std::size_t batch = 1, seq = 1, hq = 1, hkv = 1, dk = 1, dv = 1;
  index_t window = 4, slots = 3, slot_lag = -1;
  bool own_slot_qk = false;  // separate slot queries / keys
  std::vector<float> q, k, qs, ks, v, g;
  std::vector<std::int32_t> cu;
  float scale = std::nanf("");

  std::size_t n_seqs() const { return cu.empty() ? batch : cu.size() - 1; }
  std::size_t grp() const { return hq / hkv; }
  index_t lag() const { return slot_lag < 0 ? window : slot_lag; }
  index_t ring() const { return std::max(window - 1, lag()); }
  double scale_value() const { return std::isnan(scale) ? 1.0 / std::sqrt(double(dk)) : double(scale); }
  std::size_t out_size() const { return batch * seq * hq * dv; }
  std::size_t seq_begin(std::size_t s) const { return cu.empty() ? 0 : std::size_t(cu[s]); }
  std::size_t seq_end(std::size_t s) const { return cu.empty() ? seq : std::size_t(cu[s + 1]); }
  std::size_t bidx(std::size_t s) const { return cu.empty() ? s : 0; }
  tokmix::nha_params params() const {
    tokmix::nha_params p;
    p.window = window;
    p.slots = slots;
    p.slot_lag = slot_lag;
    p.scale = scale;
    return p;
  }
};

inline problem make_problem(std::size_t batch, std::size_t seq, std::size_t hq, std::size_t hkv, std::size_t dk,
                            std::size_t dv, index_t window, index_t slots, index_t lag, unsigned seed,
                            gates regime = gates::mild, bool own_slot_qk = false) {
  problem p;
  p.batch = batch;
  p.seq = seq;
  p.hq = hq;
  p.hkv = hkv;
  p.dk = dk;
  p.dv = dv;
  p.window = window;
  p.slots = slots;
  p.slot_lag = lag;
  p.own_slot_qk = own_slot_qk;
  const std::size_t tq = batch * seq * hq, tk = batch * seq * hkv;
  p.q = random_floats(tq * dk, seed, -1.5f, 1.5f);
  p.k = random_floats(tk * dk, seed + 1, -1.5f, 1.5f);
  p.v = random_floats(tk * dv, seed + 2);
  p.g = random_floats(tk * std::size_t(slots), seed + 3, 0.f, 1.f);
  for (float& x : p.g) x = gate_value(regime, x);
  if (own_slot_qk) {
    p.qs = random_floats(tq * dk, seed + 4, -1.5f, 1.5f);
    p.ks = random_floats(tk * dk, seed + 5, -1.5f, 1.5f);
  }
  return p;
}

// One token of one kv head, kept whole by the reference.
struct token {
  std::vector<double> k, ks, v, g;
};

// The reference's state: slots per (sequence, kv head), every past token by
// absolute position, tokens seen per sequence.
struct ref_state {
  std::size_t hkv = 0, dk = 0, dv = 0, m = 0;
  std::vector<double> Ks, Vs;                       // [n_seqs, hkv, m, dk | dv]
  std::vector<std::map<std::int64_t, token>> hist;  // [n_seqs * hkv]
  std::vector<std::int64_t> pos;                    // [n_seqs]
};

// Reads tokmix's state: slots as they are, the rings as the history they hold.
inline ref_state from_tokmix(const problem& p, tokmix::nha_state& st) {
  ref_state r;
  const std::size_t n = p.n_seqs();
  r.hkv = p.hkv;
  r.dk = p.dk;
  r.dv = p.dv;
  r.m = std::size_t(p.slots);
  r.Ks.assign(st.slot_keys().data(), st.slot_keys().data() + st.slot_keys().size());
  r.Vs.assign(st.slot_values().data(), st.slot_values().data() + st.slot_values().size());
  r.hist.resize(n * p.hkv);
  r.pos.resize(n);
  const std::int64_t R = p.ring();
  for (std::size_t s = 0; s < n; ++s) {
    r.pos[s] = st.positions()(index_t(s));
    for (std::size_t c = 0; c < p.hkv; ++c)
      for (std::int64_t j = std::max<std::int64_t>(0, r.pos[s] - R); j < r.pos[s]; ++j) {
        const index_t row = index_t(j % R);
        token t;
        const float* k = st.ring_keys().ptr(index_t(s), index_t(c), row, 0);
        const float* v = st.ring_values().ptr(index_t(s), index_t(c), row, 0);
        t.k.assign(k, k + p.dk);
        t.v.assign(v, v + p.dv);
        if (p.lag() > 0) {
          const float* ks = st.ring_slot_keys().ptr(index_t(s), index_t(c), row, 0);
          const float* g = st.ring_gates().ptr(index_t(s), index_t(c), row, 0);
          t.ks.assign(ks, ks + p.dk);
          t.g.assign(g, g + p.slots);
        }
        r.hist[s * p.hkv + c][j] = t;
      }
  }
  return r;
}

// Fills tokmix's state with random slots, rings and positions (an "initial
// state in" that did not come from tokmix itself).
inline void randomise(const problem&, tokmix::nha_state& st, unsigned seed) {
  auto fill = [&](tokmix::tensor_view<float, 4> x, unsigned sd, float lo, float hi) {
    const auto r = random_floats(std::size_t(x.size()), sd, lo, hi);
    std::copy(r.begin(), r.end(), x.data());
  };
  fill(st.slot_keys(), seed, -1.f, 1.f);
  fill(st.slot_values(), seed + 1, -1.f, 1.f);
  fill(st.ring_keys(), seed + 2, -1.5f, 1.5f);
  fill(st.ring_values(), seed + 3, -1.f, 1.f);
  fill(st.ring_slot_keys(), seed + 4, -1.5f, 1.5f);
  fill(st.ring_gates(), seed + 5, -0.5f, 0.f);
  const std::int64_t choices[] = {0, 1, 3, 150, 7, 2};
  for (index_t s = 0; s < st.batch(); ++s) st.positions()(s) = choices[(seed + unsigned(s)) % 6];
}

// The definition, token by token. o: [batch, seq, hq, dv].
inline void recurrent(const problem& p, ref_state& r, std::vector<double>& o) {
  o.assign(p.out_size(), 0.0);
  const std::size_t G = p.grp(), m = std::size_t(p.slots), dk = p.dk, dv = p.dv;
  const double scale = p.scale_value();
  const std::int64_t w = p.window, lag = p.lag();
  for (std::size_t s = 0; s < p.n_seqs(); ++s) {
    const std::size_t b = p.bidx(s), t0 = p.seq_begin(s), t1 = p.seq_end(s);
    for (std::size_t c = 0; c < p.hkv; ++c) {
      auto& hist = r.hist[s * p.hkv + c];
      double* Ks = &r.Ks[(s * p.hkv + c) * m * dk];
      double* Vs = &r.Vs[(s * p.hkv + c) * m * dv];
      for (std::size_t t = t0; t < t1; ++t) {
        const std::int64_t a = r.pos[s] + std::int64_t(t - t0);
        const std::size_t kt = (b * p.seq + t) * p.hkv + c;
        token tk;
        tk.k.assign(p.k.begin() + std::ptrdiff_t(kt * dk), p.k.begin() + std::ptrdiff_t((kt + 1) * dk));
        const std::vector<float>& ksrc = p.own_slot_qk ? p.ks : p.k;
        tk.ks.assign(ksrc.begin() + std::ptrdiff_t(kt * dk), ksrc.begin() + std::ptrdiff_t((kt + 1) * dk));
        tk.v.assign(p.v.begin() + std::ptrdiff_t(kt * dv), p.v.begin() + std::ptrdiff_t((kt + 1) * dv));
        tk.g.assign(p.g.begin() + std::ptrdiff_t(kt * m), p.g.begin() + std::ptrdiff_t((kt + 1) * m));
        hist[a] = tk;
        if (a - lag >= 0) {
          const token& u = hist.at(a - lag);
          for (std::size_t i = 0; i < m; ++i) {
            const double al = std::exp(u.g[i]), sw = -std::expm1(u.g[i]);
            for (std::size_t d = 0; d < dk; ++d) Ks[i * dk + d] = al * Ks[i * dk + d] + sw * u.ks[d];
            for (std::size_t d = 0; d < dv; ++d) Vs[i * dv + d] = al * Vs[i * dv + d] + sw * u.v[d];
          }
        }
        const std::int64_t j0 = std::max<std::int64_t>(0, a - w + 1);
        for (std::size_t gi = 0; gi < G; ++gi) {
          const std::size_t h = c * G + gi, qt = (b * p.seq + t) * p.hq + h;
          const float* q = &p.q[qt * dk];
          const float* qs = p.own_slot_qk ? &p.qs[qt * dk] : q;
          std::vector<double> sc;
          for (std::size_t i = 0; i < m; ++i) {
            double x = 0;
            for (std::size_t d = 0; d < dk; ++d) x += double(qs[d]) * Ks[i * dk + d];
            sc.push_back(scale * x);
          }
          for (std::int64_t j = j0; j <= a; ++j) {
            const token& kj = hist.at(j);
            double x = 0;
            for (std::size_t d = 0; d < dk; ++d) x += double(q[d]) * kj.k[d];
            sc.push_back(scale * x);
          }
          const double mx = *std::max_element(sc.begin(), sc.end());
          double l = 0;
          for (double& x : sc) l += (x = std::exp(x - mx));
          double* out = &o[qt * dv];
          for (std::size_t i = 0; i < m; ++i)
            for (std::size_t d = 0; d < dv; ++d) out[d] += sc[i] / l * Vs[i * dv + d];
          for (std::int64_t j = j0; j <= a; ++j) {
            const token& vj = hist.at(j);
            const double wgt = sc[m + std::size_t(j - j0)] / l;
            for (std::size_t d = 0; d < dv; ++d) out[d] += wgt * vj.v[d];
          }
        }
      }
    }
    r.pos[s] += std::int64_t(t1 - t0);
  }
}

// A dense copy of `src` inside NaN padding.
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
  mode md = mode::chunk;
  index_t chunk = 64;
  tokmix::exec_policy policy;
};

// Runs tokmix on p from `st` (updated in place) and returns o. Inputs and o
// sit inside NaN padding; o's padding and the inputs must survive.
inline std::vector<float> run(const problem& p, tokmix::nha_state& st, const run_options& opt) {
  using namespace tokmix;
  const index_t B = index_t(p.batch), L = index_t(p.seq), Hq = index_t(p.hq), Hk = index_t(p.hkv), dk = index_t(p.dk),
                dv = index_t(p.dv), m = p.slots;
  padded q(p.q), k(p.k), v(p.v), g(p.g), o(p.out_size());
  padded qs(p.own_slot_qk ? p.qs : std::vector<float>()), ks(p.own_slot_qk ? p.ks : std::vector<float>());
  const tensor_view<const float, 4> qv(q.buf.data(), {B, L, Hq, dk}), kv(k.buf.data(), {B, L, Hk, dk}),
      vv(v.buf.data(), {B, L, Hk, dv}), gv(g.buf.data(), {B, L, Hk, m});
  const tensor_view<const float, 4> qsv =
      p.own_slot_qk ? tensor_view<const float, 4>(qs.buf.data(), {B, L, Hq, dk}) : qv;
  const tensor_view<const float, 4> ksv =
      p.own_slot_qk ? tensor_view<const float, 4>(ks.buf.data(), {B, L, Hk, dk}) : kv;
  const tensor_view<float, 4> ov(o.buf.data(), {B, L, Hq, dv});
  nha_params prm = p.params();
  prm.chunk_size = opt.chunk;
  prm.policy = opt.policy;
  if (!p.cu.empty()) prm.cu_seqlens = tensor_view<const std::int32_t, 1>(p.cu.data(), {index_t(p.cu.size())});
  auto tok3 = [&](const float* base, index_t t, index_t heads, index_t d) {
    return tensor_view<const float, 3>(base + t * heads * d, {B, heads, d}, {L * heads * d, d, 1});
  };
  if (opt.md == mode::chunk) {
    if (p.own_slot_qk)
      nha_prefill(qv, kv, qsv, ksv, vv, gv, ov, st, prm);
    else
      nha_prefill(qv, kv, vv, gv, ov, st, prm);
  } else if (opt.md == mode::recurrent) {
    if (p.own_slot_qk)
      nha_recurrent_prefill(qv, kv, qsv, ksv, vv, gv, ov, st, prm);
    else
      nha_recurrent_prefill(qv, kv, vv, gv, ov, st, prm);
  } else {
    REQUIRE(p.cu.empty());
    for (index_t t = 0; t < L; ++t) {
      const tensor_view<float, 3> ot(o.buf.data() + t * Hq * dv, {B, Hq, dv}, {L * Hq * dv, dv, 1});
      const auto qt = tok3(q.buf.data(), t, Hq, dk), kt = tok3(k.buf.data(), t, Hk, dk);
      const auto vt = tok3(v.buf.data(), t, Hk, dv), gt = tok3(g.buf.data(), t, Hk, m);
      if (p.own_slot_qk)
        nha_step(qt, kt, tok3(qs.buf.data(), t, Hq, dk), tok3(ks.buf.data(), t, Hk, dk), vt, gt, ot, st, prm);
      else
        nha_step(qt, kt, vt, gt, ot, st, prm);
    }
  }
  REQUIRE(o.pads_untouched());
  REQUIRE(q.pads_untouched());
  REQUIRE(k.pads_untouched());
  REQUIRE(v.pads_untouched());
  REQUIRE(g.pads_untouched());
  return std::vector<float>(o.buf.data(), o.buf.data() + o.n);
}

// Worst |got - ref| relative to the largest |ref|.
template <class G, class R>
double scaled_error(const G* got, const R* ref, std::size_t n) {
  double mx = 0, err = 0;
  for (std::size_t i = 0; i < n; ++i) {
    mx = std::max(mx, std::abs(double(ref[i])));
    const double e = std::abs(double(got[i]) - double(ref[i]));
    if (!(e == e)) return INFINITY;
    err = std::max(err, e);
  }
  return err / std::max(mx, 1e-30);
}
template <class G, class R>
double scaled_error(const std::vector<G>& got, const std::vector<R>& ref) {
  REQUIRE(got.size() == ref.size());
  return scaled_error(got.data(), ref.data(), got.size());
}

inline bool all_finite(const float* x, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i)
    if (!std::isfinite(x[i])) return false;
  return true;
}

// tokmix's final state against the reference's: slots within tol, positions
// equal, rings holding exactly the last tokens' rows.
inline void check_state(const problem& p, tokmix::nha_state& st, const ref_state& r, double tol) {
  const double ek = scaled_error(st.slot_keys().data(), r.Ks.data(), r.Ks.size());
  const double ev = scaled_error(st.slot_values().data(), r.Vs.data(), r.Vs.size());
  INFO("slot keys err " << ek << ", slot values err " << ev);
  CHECK(ek <= tol);
  CHECK(ev <= tol);
  const std::int64_t R = p.ring();
  bool rings = true;
  for (std::size_t s = 0; s < p.n_seqs(); ++s) {
    CHECK(st.positions()(index_t(s)) == r.pos[s]);
    for (std::size_t c = 0; c < p.hkv; ++c)
      for (std::int64_t j = std::max<std::int64_t>(0, r.pos[s] - R); j < r.pos[s]; ++j) {
        const token& t = r.hist[s * p.hkv + c].at(j);
        const index_t row = index_t(j % R);
        for (std::size_t d = 0; d < p.dk; ++d)
          rings &= double(st.ring_keys()(index_t(s), index_t(c), row, index_t(d))) == t.k[d];
        for (std::size_t d = 0; d < p.dv; ++d)
          rings &= double(st.ring_values()(index_t(s), index_t(c), row, index_t(d))) == t.v[d];
        if (p.lag() > 0) {
          for (std::size_t d = 0; d < p.dk; ++d)
            rings &= double(st.ring_slot_keys()(index_t(s), index_t(c), row, index_t(d))) == t.ks[d];
          for (index_t d = 0; d < p.slots; ++d)
            rings &= double(st.ring_gates()(index_t(s), index_t(c), row, d)) == t.g[std::size_t(d)];
        }
      }
  }
  CHECK(rings);
}

inline tokmix::nha_state make_state(const problem& p) {
  return tokmix::nha_state(index_t(p.n_seqs()), index_t(p.hkv), index_t(p.dk), index_t(p.dv), p.params());
}

// One problem through one mode from a random initial state vs the definition.
inline void check_mode(const problem& p, const run_options& opt, double tol, unsigned seed = 99) {
  tokmix::nha_state st = make_state(p);
  randomise(p, st, seed);
  ref_state r = from_tokmix(p, st);
  std::vector<double> oref;
  recurrent(p, r, oref);
  const std::vector<float> o = run(p, st, opt);
  const double eo = scaled_error(o, oref);
  INFO("mode " << int(opt.md) << " chunk " << opt.chunk << " B " << p.batch << " L " << p.seq << " Hq " << p.hq
               << " Hkv " << p.hkv << " dk " << p.dk << " dv " << p.dv << " w " << p.window << " m " << p.slots
               << " lag " << p.slot_lag << " own qk " << p.own_slot_qk << ": out err " << eo);
  CHECK(eo <= tol);
  check_state(p, st, r, tol);
}

// Tokens [t0, t1) of every batch entry (dense batches).
inline problem slice(const problem& p, std::size_t t0, std::size_t t1) {
  problem r = p;
  r.seq = t1 - t0;
  auto cut = [&](const std::vector<float>& x, std::size_t per_tok) {
    std::vector<float> out;
    if (x.empty()) return out;
    for (std::size_t b = 0; b < p.batch; ++b)
      out.insert(out.end(), x.begin() + std::ptrdiff_t((b * p.seq + t0) * per_tok),
                 x.begin() + std::ptrdiff_t((b * p.seq + t1) * per_tok));
    return out;
  };
  r.q = cut(p.q, p.hq * p.dk);
  r.qs = cut(p.qs, p.hq * p.dk);
  r.k = cut(p.k, p.hkv * p.dk);
  r.ks = cut(p.ks, p.hkv * p.dk);
  r.v = cut(p.v, p.hkv * p.dv);
  r.g = cut(p.g, p.hkv * std::size_t(p.slots));
  return r;
}

}  // namespace nha_ref
}  // namespace tokmix_test
