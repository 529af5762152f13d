// Tests for include/tokmix/blocks/hybrid_stack.hpp with two small layers
// defined here (a per-channel exponential moving average with state, and a
// stateless ReLU MLP), against a float64 model written from the stack's
// definition: every norm placement, norm kind and parallel combination,
// Macaron half-steps, a kind shared across depth, tied and untied heads;
// prefill == steps, chained prefills, save -> load, and bad patterns, weights
// and tokens that throw before anything is written.
#include "tokmix/blocks/hybrid_stack.hpp"

#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "support/compare.hpp"

using namespace tokmix;

namespace tokmix_test {
namespace stack_ref {

using dvec = std::vector<double>;

// ---- toy layers ----------------------------------------------------------

// s_t = a . s_{t-1} + (1 - a) . (W_in x_t);  y_t = W_out s_t   (per sequence)
class ema_state final : public mixer_layer_state {
 public:
  ema_state(index_t batch, index_t width) : batch_(batch), s(static_cast<std::size_t>(batch * width), 0.f) {}
  const char* layer_name() const override { return "ema"; }
  index_t batch() const override { return batch_; }
  index_t position() const override { return pos; }
  std::size_t bytes() const override { return s.size() * sizeof(float); }
  void reset() override {
    std::fill(s.begin(), s.end(), 0.f);
    pos = 0;
  }
  index_t batch_;
  index_t pos = 0;
  std::vector<float> s;
};

class ema_layer final : public mixer_layer {
 public:
  ema_layer(index_t d, index_t width, std::uint64_t seed) : d_(d), w_(width) {
    win = linear_weights::random(d, width, false, random_stream::derive(seed, 0));
    wout = linear_weights::random(width, d, false, random_stream::derive(seed, 1));
    random_stream g(random_stream::derive(seed, 2));
    a.resize(width);
    for (index_t i = 0; i < width; ++i) a[i] = static_cast<float>(g.uniform(0.3, 0.95));
  }
  ema_layer(const named_tensors& t, const std::string& p, index_t d, index_t width) : d_(d), w_(width) {
    win = linear_weights::load(t, p + "in", d, width, false);
    wout = linear_weights::load(t, p + "out", width, d, false);
    const auto& e = t.at(p + "decay", {width});
    a = Eigen::Map<const Eigen::VectorXf>(e.data.data(), width);
  }
  const char* name() const override { return "ema"; }
  index_t d_model() const override { return d_; }
  std::unique_ptr<mixer_layer_state> make_state(index_t batch, index_t) const override {
    return std::make_unique<ema_state>(batch, w_);
  }
  std::size_t state_bytes(index_t batch, index_t) const override { return std::size_t(batch * w_) * sizeof(float); }
  void prefill(tensor_view<const float, 3> x, tensor_view<float, 3> y, mixer_layer_state& s) const override {
    auto& st = detail::mixer_state_cast<ema_state>(s, "ema");
    for (index_t t = 0; t < x.dim(1); ++t)
      token(tensor_view<const float, 2>(x.ptr(0, t, 0), {x.dim(0), d_}, {x.stride(0), 1}),
            tensor_view<float, 2>(y.ptr(0, t, 0), {y.dim(0), d_}, {y.stride(0), 1}), st);
  }
  void step(tensor_view<const float, 2> x, tensor_view<float, 2> y, mixer_layer_state& s) const override {
    token(x, y, detail::mixer_state_cast<ema_state>(s, "ema"));
  }
  void save(named_tensors& t, const std::string& p) const override {
    win.save(t, p + "in");
    wout.save(t, p + "out");
    t.insert(p + "decay", {w_}, std::vector<float>(a.data(), a.data() + w_));
  }
  const exec_policy& policy() const override { return pol_; }

  linear_weights win, wout;
  Eigen::VectorXf a;

 private:
  void token(tensor_view<const float, 2> x, tensor_view<float, 2> y, ema_state& st) const {
    std::vector<float> z(static_cast<std::size_t>(x.dim(0) * w_));
    linear_forward(win, x, tensor_view<float, 2>(z.data(), {x.dim(0), w_}));
    for (index_t b = 0; b < x.dim(0); ++b)
      for (index_t i = 0; i < w_; ++i) {
        float& s = st.s[static_cast<std::size_t>(b * w_ + i)];
        s = a[i] * s + (1.f - a[i]) * z[static_cast<std::size_t>(b * w_ + i)];
      }
    linear_forward(wout, tensor_view<const float, 2>(st.s.data(), {x.dim(0), w_}), y);
    st.pos += 1;
  }
  index_t d_, w_;
  exec_policy pol_;
};

class ffn_state final : public mixer_layer_state {
 public:
  explicit ffn_state(index_t b) : batch_(b) {}
  const char* layer_name() const override { return "ffn"; }
  index_t batch() const override { return batch_; }
  index_t position() const override { return pos; }
  std::size_t bytes() const override { return 0; }
  void reset() override { pos = 0; }
  index_t batch_, pos = 0;
};

// y = W2 relu(W1 x + b1) + b2, token by token (no state).
class ffn_layer final : public mixer_layer {
 public:
  ffn_layer(index_t d, index_t hidden, std::uint64_t seed) : d_(d), h_(hidden) {
    w1 = linear_weights::random(d, hidden, true, random_stream::derive(seed, 0));
    w2 = linear_weights::random(hidden, d, true, random_stream::derive(seed, 1));
  }
  ffn_layer(const named_tensors& t, const std::string& p, index_t d, index_t hidden) : d_(d), h_(hidden) {
    w1 = linear_weights::load(t, p + "up", d, hidden, true);
    w2 = linear_weights::load(t, p + "down", hidden, d, true);
  }
  const char* name() const override { return "ffn"; }
  index_t d_model() const override { return d_; }
  std::unique_ptr<mixer_layer_state> make_state(index_t batch, index_t) const override {
    return std::make_unique<ffn_state>(batch);
  }
  std::size_t state_bytes(index_t, index_t) const override { return 0; }
  void prefill(tensor_view<const float, 3> x, tensor_view<float, 3> y, mixer_layer_state& s) const override {
    const index_t rows = x.dim(0) * x.dim(1);
    rows2(tensor_view<const float, 2>(x.data(), {rows, d_}), tensor_view<float, 2>(y.data(), {rows, d_}));
    detail::mixer_state_cast<ffn_state>(s, "ffn").pos += x.dim(1);
  }
  void step(tensor_view<const float, 2> x, tensor_view<float, 2> y, mixer_layer_state& s) const override {
    rows2(x, y);
    detail::mixer_state_cast<ffn_state>(s, "ffn").pos += 1;
  }
  void save(named_tensors& t, const std::string& p) const override {
    w1.save(t, p + "up");
    w2.save(t, p + "down");
  }
  const exec_policy& policy() const override { return pol_; }
  linear_weights w1, w2;

 private:
  void rows2(tensor_view<const float, 2> x, tensor_view<float, 2> y) const {
    std::vector<float> z(static_cast<std::size_t>(x.dim(0) * h_));
    linear_forward(w1, x, tensor_view<float, 2>(z.data(), {x.dim(0), h_}));
    for (float& v : z) v = std::max(v, 0.f);
    linear_forward(w2, tensor_view<const float, 2>(z.data(), {x.dim(0), h_}), y);
  }
  index_t d_, h_;
  exec_policy pol_;
};

// ---- float64 model ---------------------------------------------------------

dvec lin(const linear_weights& w, const dvec& x) {
  dvec y(static_cast<std::size_t>(w.out_features()));
  for (index_t o = 0; o < w.out_features(); ++o) {
    double s = w.has_bias() ? double(w.bias[o]) : 0.0;
    for (index_t i = 0; i < w.in_features(); ++i) s += double(w.weight(o, i)) * x[std::size_t(i)];
    y[std::size_t(o)] = s;
  }
  return y;
}

dvec rms(const dvec& x, const Eigen::VectorXf& g, double eps) {
  double ss = 0;
  for (double v : x) ss += v * v;
  const double r = 1.0 / std::sqrt(ss / double(x.size()) + eps);
  dvec y(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) y[i] = x[i] * r * double(g[index_t(i)]);
  return y;
}

dvec lnorm(const dvec& x, const Eigen::VectorXf& g, const Eigen::VectorXf& b, double eps) {
  double m = 0, v = 0;
  for (double e : x) m += e;
  m /= double(x.size());
  for (double e : x) v += (e - m) * (e - m);
  v /= double(x.size());
  dvec y(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) y[i] = (x[i] - m) / std::sqrt(v + eps) * double(g[index_t(i)]) + double(b[index_t(i)]);
  return y;
}

// Norm weights of a stack, read back through save() (the reference shares no
// code path with the kernels beyond the weights themselves).
struct model {
  const hybrid_stack* stack;
  named_tensors w;
  dvec norm(const std::string& prefix, const dvec& x) const {
    const double eps = stack->config().norm_eps;
    const auto& g = w.at(prefix + ".weight").data;
    Eigen::VectorXf gv = Eigen::Map<const Eigen::VectorXf>(g.data(), index_t(g.size()));
    if (stack->config().norm == stack_norm_kind::rms) return rms(x, gv, eps);
    const auto& b = w.at(prefix + ".bias").data;
    return lnorm(x, gv, Eigen::Map<const Eigen::VectorXf>(b.data(), index_t(b.size())), eps);
  }
};

struct ref_state {
  std::vector<std::vector<dvec>> s;  // [block][branch] ema state (empty for ffn), per sequence
};

dvec run_layer(const mixer_layer& l, const dvec& u, dvec& s) {
  if (const auto* e = dynamic_cast<const ema_layer*>(&l)) {
    const dvec z = lin(e->win, u);
    if (s.empty()) s.assign(z.size(), 0.0);
    for (std::size_t i = 0; i < z.size(); ++i) s[i] = double(e->a[index_t(i)]) * s[i] + (1 - double(e->a[index_t(i)])) * z[i];
    return lin(e->wout, s);
  }
  const auto& f = dynamic_cast<const ffn_layer&>(l);
  dvec z = lin(f.w1, u);
  for (double& v : z) v = std::max(v, 0.0);
  return lin(f.w2, z);
}

// Logits of one token of one sequence, advancing that sequence's state.
dvec forward_token(const model& m, std::int32_t tok, ref_state& rs) {
  const auto& cfg = m.stack->config();
  const index_t d = cfg.d_model;
  const auto& E = m.w.at("embed_tokens.weight").data;
  dvec h(E.begin() + tok * d, E.begin() + (tok + 1) * d);
  const auto& blocks = m.stack->blocks();
  if (rs.s.empty()) {
    rs.s.resize(blocks.size());
    for (std::size_t i = 0; i < blocks.size(); ++i) rs.s[i].resize(blocks[i].branches.size());
  }
  for (std::size_t i = 0; i < blocks.size(); ++i) {
    const std::string p = "layers." + std::to_string(i) + ".";
    const dvec u = cfg.placement == norm_placement::post ? h : m.norm(p + "input_norm", h);
    dvec acc(std::size_t(d), 0.0);
    const std::size_t nb = blocks[i].branches.size();
    for (std::size_t j = 0; j < nb; ++j) {
      dvec f = run_layer(*blocks[i].branches[j], u, rs.s[i][j]);
      if (nb > 1 && cfg.combine == parallel_combine::normalized_mean) {
        const auto& g = m.w.at(p + "branch_norm." + std::to_string(j) + ".weight").data;
        f = rms(f, Eigen::Map<const Eigen::VectorXf>(g.data(), d), cfg.norm_eps);
      }
      const double wgt = (nb == 1 || cfg.combine == parallel_combine::sum) ? 1.0 : 1.0 / double(nb);
      for (index_t e = 0; e < d; ++e) acc[std::size_t(e)] += wgt * f[std::size_t(e)];
    }
    const double s = blocks[i].residual_scale;
    if (cfg.placement == norm_placement::pre) {
      for (index_t e = 0; e < d; ++e) h[std::size_t(e)] += s * acc[std::size_t(e)];
    } else if (cfg.placement == norm_placement::post) {
      for (index_t e = 0; e < d; ++e) h[std::size_t(e)] += s * acc[std::size_t(e)];
      h = m.norm(p + "post_norm", h);
    } else {
      const dvec o = m.norm(p + "post_norm", acc);
      for (index_t e = 0; e < d; ++e) h[std::size_t(e)] += s * o[std::size_t(e)];
    }
  }
  if (cfg.final_norm && cfg.placement != norm_placement::post) h = m.norm("norm", h);
  const std::string head = cfg.tie_embeddings ? "embed_tokens.weight" : "lm_head.weight";
  const auto& W = m.w.at(head).data;
  dvec logits(std::size_t(cfg.vocab_size), 0.0);
  for (index_t v = 0; v < cfg.vocab_size; ++v)
    for (index_t e = 0; e < d; ++e) logits[std::size_t(v)] += double(W[std::size_t(v * d + e)]) * h[std::size_t(e)];
  return logits;
}

}  // namespace stack_ref
}  // namespace tokmix_test

namespace {

namespace ref = tokmix_test::stack_ref;
constexpr index_t d_model = 12, vocab = 19, ema_width = 7, ffn_hidden = 17;

// Kinds: E = ema, F = ffn, S = one ema shared by every occurrence.
stack_layer_kinds toy_kinds(std::uint64_t seed) {
  auto shared = std::make_shared<ref::ema_layer>(d_model, ema_width, seed + 999);
  stack_layer_kinds k;
  k['E'] = [seed](index_t i) { return std::make_shared<ref::ema_layer>(d_model, ema_width, seed + 10 * std::uint64_t(i)); };
  k['F'] = [seed](index_t i) { return std::make_shared<ref::ffn_layer>(d_model, ffn_hidden, seed + 10 * std::uint64_t(i) + 1); };
  k['S'] = [shared](index_t) { return shared; };
  return k;
}

// The same kinds, loaded back from saved weights.
stack_layer_kinds loaded_kinds(const named_tensors& t, const std::string& pattern, const stack_layer_kinds& like) {
  auto blocks = parse_stack_pattern(pattern, like);  // only for the prefixes
  hybrid_stack_config c;
  c.d_model = d_model;
  hybrid_stack probe(c, blocks, 1);
  stack_layer_kinds k;
  // Each factory call is one occurrence: its prefix follows the block index
  // and, for parallel blocks, the branch of that kind within the block.
  auto prefix_of = [probe, blocks](index_t i, char kind) {
    const auto& b = blocks[std::size_t(i)];
    const index_t j = index_t(b.kinds.find(kind));
    return probe.mixer_prefix(i, j);
  };
  k['E'] = [&t, prefix_of](index_t i) { return std::make_shared<ref::ema_layer>(t, prefix_of(i, 'E'), d_model, ema_width); };
  k['F'] = [&t, prefix_of](index_t i) { return std::make_shared<ref::ffn_layer>(t, prefix_of(i, 'F'), d_model, ffn_hidden); };
  auto shared = std::make_shared<std::shared_ptr<const mixer_layer>>();
  k['S'] = [&t, shared, prefix_of](index_t i) {
    if (!*shared) *shared = std::make_shared<ref::ema_layer>(t, prefix_of(i, 'S'), d_model, ema_width);
    return *shared;
  };
  return k;
}

std::vector<std::int32_t> tokens_for(index_t B, index_t L, unsigned seed) {
  std::vector<std::int32_t> t(static_cast<std::size_t>(B * L));
  unsigned s = seed;
  for (auto& v : t) {
    s = s * 1103515245u + 12345u;
    v = static_cast<std::int32_t>((s >> 16) % vocab);
  }
  return t;
}

void check_model(const hybrid_stack& stack, index_t B, index_t L, unsigned seed) {
  ref::model m{&stack, {}};
  stack.save(m.w);
  const auto toks = tokens_for(B, L, seed);
  // float64 logits of every token.
  std::vector<double> want(static_cast<std::size_t>(B * L * vocab));
  for (index_t b = 0; b < B; ++b) {
    ref::ref_state rs;
    for (index_t t = 0; t < L; ++t) {
      const auto lg = ref::forward_token(m, toks[std::size_t(b * L + t)], rs);
      std::copy(lg.begin(), lg.end(), want.begin() + (b * L + t) * vocab);
    }
  }
  // Prefill: all logits and the last ones.
  auto st = stack.make_state(B, L + 4);
  REQUIRE(st.bytes() == stack.state_bytes(B, L + 4));
  tokmix_test::nan_padded<float> all(std::size_t(B * L * vocab)), last(std::size_t(B * vocab));
  stack.prefill(tensor_view<const std::int32_t, 2>(toks.data(), {B, L}), st, tensor_view<float, 2>(last.data(), {B, vocab}),
                nullptr, tensor_view<float, 3>(all.data(), {B, L, vocab}));
  TOKMIX_REQUIRE_CLOSE(all.data(), want.data(), want.size(), 2e-4, 2e-4);
  REQUIRE(std::isnan(all.data()[-1]));
  REQUIRE(std::isnan(all.data()[B * L * vocab]));
  for (index_t b = 0; b < B; ++b)
    TOKMIX_REQUIRE_CLOSE(last.data() + b * vocab, want.data() + (b * L + L - 1) * vocab, std::size_t(vocab), 2e-4, 2e-4);
  REQUIRE(st.position() == L);
  // Steps from the start.
  auto st2 = stack.make_state(B, L + 4);
  std::vector<float> lg(std::size_t(B * vocab));
  std::vector<std::int32_t> one(static_cast<std::size_t>(B));
  for (index_t t = 0; t < L; ++t) {
    for (index_t b = 0; b < B; ++b) one[std::size_t(b)] = toks[std::size_t(b * L + t)];
    stack.step(tensor_view<const std::int32_t, 1>(one.data(), {B}), st2, tensor_view<float, 2>(lg.data(), {B, vocab}));
    for (index_t b = 0; b < B; ++b)
      TOKMIX_REQUIRE_CLOSE(lg.data() + b * vocab, want.data() + (b * L + t) * vocab, std::size_t(vocab), 2e-4, 2e-4);
  }
  // Two chained prefills == one.
  if (L >= 2) {
    auto st3 = stack.make_state(B, L + 4);
    const index_t L1 = L / 2;
    std::vector<std::int32_t> a(std::size_t(B * L1)), c(std::size_t(B * (L - L1)));
    for (index_t b = 0; b < B; ++b) {
      std::copy(toks.begin() + b * L, toks.begin() + b * L + L1, a.begin() + b * L1);
      std::copy(toks.begin() + b * L + L1, toks.begin() + (b + 1) * L, c.begin() + b * (L - L1));
    }
    stack.prefill(tensor_view<const std::int32_t, 2>(a.data(), {B, L1}), st3, {});
    stack.prefill(tensor_view<const std::int32_t, 2>(c.data(), {B, L - L1}), st3, tensor_view<float, 2>(lg.data(), {B, vocab}));
    for (index_t b = 0; b < B; ++b)
      TOKMIX_REQUIRE_CLOSE(lg.data() + b * vocab, want.data() + (b * L + L - 1) * vocab, std::size_t(vocab), 2e-4, 2e-4);
  }
}

}  // namespace

TEST_CASE("hybrid stack: patterns parse into blocks, bad ones name the position", "[blocks][hybrid_stack]") {
  const auto kinds = toy_kinds(5);
  const auto blocks = parse_stack_pattern("EF (EF) fEf S E S", kinds);
  REQUIRE(blocks.size() == 9);  // E F (EF) f E f S E S
  CHECK(blocks[0].kinds == "E");
  CHECK(blocks[2].kinds == "EF");
  CHECK(blocks[2].branches.size() == 2);
  CHECK(blocks[3].residual_scale == 0.5f);
  CHECK(blocks[3].kinds == "F");
  CHECK(blocks[4].residual_scale == 1.f);
  CHECK(blocks[6].shared[0]);
  CHECK(blocks[8].branches[0] == blocks[6].branches[0]);
  CHECK_FALSE(blocks[7].shared[0]);
  CHECK(blocks[0].branches[0] != blocks[7].branches[0]);
  auto fails = [&](const std::string& p, const std::string& needle) {
    try {
      parse_stack_pattern(p, kinds);
      FAIL("accepted " << p);
    } catch (const argument_error& e) {
      CHECK(e.argument() == "pattern");
      CHECK(std::string(e.what()).find(needle) != std::string::npos);
    }
  };
  fails("EFX", "'X' at position 2");
  fails("E(EF", "end of pattern");
  fails("(E)", "at least two");
  fails("E-F", "'-' at position 1");
  fails("", "at least one block");
  fails("(Ef)", "'f' at position 2");
}

TEST_CASE("hybrid stack: == float64 model for every placement, norm and combination", "[blocks][hybrid_stack]") {
  const std::string pattern = "E F (EF) fEf S (ES) F";
  for (auto placement : {norm_placement::pre, norm_placement::post, norm_placement::peri})
    for (auto norm : {stack_norm_kind::rms, stack_norm_kind::layer})
      for (auto combine : {parallel_combine::sum, parallel_combine::mean, parallel_combine::normalized_mean})
        for (bool tie : {true, false}) {
          CAPTURE(int(placement), int(norm), int(combine), tie);
          hybrid_stack_config c;
          c.d_model = d_model;
          c.vocab_size = vocab;
          c.placement = placement;
          c.norm = norm;
          c.combine = combine;
          c.tie_embeddings = tie;
          c.policy = tie ? exec_policy::serial() : exec_policy::threads(2);
          const hybrid_stack stack(c, parse_stack_pattern(pattern, toy_kinds(7)), 11);
          check_model(stack, 2, 9, 3);
        }
}

TEST_CASE("hybrid stack: save -> load gives the same logits; shared weights stored once", "[blocks][hybrid_stack]") {
  const std::string pattern = "S E (SF) fSf";
  hybrid_stack_config c;
  c.d_model = d_model;
  c.vocab_size = vocab;
  c.tie_embeddings = false;
  const auto kinds = toy_kinds(21);
  const hybrid_stack a(c, parse_stack_pattern(pattern, kinds), 5);
  named_tensors t;
  a.save(t);
  CHECK(t.contains("shared.S.decay"));
  CHECK_FALSE(t.contains("layers.0.mixer.decay"));
  CHECK(t.contains("layers.2.mixer.1.up.weight"));
  CHECK(t.contains("layers.1.mixer.decay"));
  CHECK(t.contains("lm_head.weight"));
  const hybrid_stack b(c, parse_stack_pattern(pattern, loaded_kinds(t, pattern, kinds)), t);
  named_tensors t2;
  b.save(t2);
  REQUIRE(t2.names() == t.names());
  for (const auto& n : t.names()) CHECK(t2.at(n).data == t.at(n).data);
  const auto toks = tokens_for(1, 6, 9);
  std::vector<float> la(vocab), lb(vocab);
  auto sa = a.make_state(1, 8), sb = b.make_state(1, 8);
  a.prefill(tensor_view<const std::int32_t, 2>(toks.data(), {1, 6}), sa, tensor_view<float, 2>(la.data(), {1, vocab}));
  b.prefill(tensor_view<const std::int32_t, 2>(toks.data(), {1, 6}), sb, tensor_view<float, 2>(lb.data(), {1, vocab}));
  CHECK(la == lb);
  // S E (SF) f S f: the shared layer's three occurrences keep three states, E its own.
  CHECK(sa.bytes() == 4 * std::size_t(ema_width) * sizeof(float));
  CHECK(sa.bytes_by_kind().at("ema") == sa.bytes());
  // Missing or misshapen weights name the tensor.
  named_tensors bad;
  for (const auto& n : t.names())
    if (n != "layers.1.input_norm.weight") bad.insert(n, t.at(n).shape, t.at(n).data);
  try {
    hybrid_stack x(c, parse_stack_pattern(pattern, kinds), bad);
    FAIL("missing norm accepted");
  } catch (const argument_error& e) {
    CHECK(std::string(e.what()).find("layers.1.input_norm.weight") != std::string::npos);
  }
  hybrid_stack_config wide = c;
  wide.d_model = d_model + 1;
  try {
    hybrid_stack x(wide, parse_stack_pattern(pattern, kinds), 1);
    FAIL("layer width mismatch accepted");
  } catch (const argument_error& e) {
    CHECK(e.argument() == "layer d_model");
  }
}

TEST_CASE("hybrid stack: bad tokens and shapes throw and write nothing", "[blocks][hybrid_stack]") {
  hybrid_stack_config c;
  c.d_model = d_model;
  c.vocab_size = vocab;
  const hybrid_stack stack(c, parse_stack_pattern("EF", toy_kinds(3)), 2);
  auto st = stack.make_state(2, 8);
  std::vector<std::int32_t> toks{1, 2, 3, vocab, 4, 5};
  std::vector<float> lg(2 * vocab, -5.f);
  CHECK_THROWS_AS(stack.prefill(tensor_view<const std::int32_t, 2>(toks.data(), {2, 3}), st,
                                tensor_view<float, 2>(lg.data(), {2, vocab})),
                  argument_error);
  toks[3] = 0;
  CHECK_THROWS_AS(stack.prefill(tensor_view<const std::int32_t, 2>(toks.data(), {3, 2}), st,
                                tensor_view<float, 2>(lg.data(), {2, vocab})),
                  argument_error);
  CHECK_THROWS_AS(stack.prefill(tensor_view<const std::int32_t, 2>(toks.data(), {2, 3}), st,
                                tensor_view<float, 2>(lg.data(), {2, vocab - 1})),
                  argument_error);
  for (float v : lg) CHECK(v == -5.f);
  CHECK(st.position() == 0);
  // More tokens than the state was made for: refused before any layer moves.
  std::vector<std::int32_t> nine(18, 1);
  CHECK_THROWS_AS(stack.prefill(tensor_view<const std::int32_t, 2>(nine.data(), {2, 9}), st,
                                tensor_view<float, 2>(lg.data(), {2, vocab})),
                  argument_error);
  CHECK(st.position() == 0);
  CHECK(st.layer(0).position() == 0);
  CHECK_THROWS_AS(stack.make_state(0, 4), argument_error);
}

#include "tokmix/blocks/attention_layer.hpp"
#include "tokmix/blocks/ffn_layer.hpp"

namespace {

// A small model of tokmix's own layers: full and sliding-window attention
// (GQA, RoPE, QK-norm), SwiGLU MLPs, a MoE, a Macaron pair and a parallel block.
struct real_model {
  static constexpr index_t d = 32, V = 23;
  attention_layer_config full, window;
  mlp_config mlp = mlp_config::swiglu(d, 40);
  moe_config moe = moe_config::mixtral(d, 24, 4, 2);
  real_model() {
    full.d_model = d;
    full.num_heads = 4;
    full.num_kv_heads = 2;
    full.qk_norm = true;
    window = full;
    window.sliding_window = 5;
    window.cache = kv_storage::fp32;
  }
  stack_layer_kinds kinds(std::uint64_t seed) const {
    stack_layer_kinds k;
    k['A'] = [this, seed](index_t i) {
      return std::make_shared<attention_layer>(full, attention_layer_weights::random(full, seed + std::uint64_t(i)));
    };
    k['W'] = [this, seed](index_t i) {
      return std::make_shared<attention_layer>(window, attention_layer_weights::random(window, seed + 50 + std::uint64_t(i)));
    };
    k['F'] = [this, seed](index_t i) { return std::make_shared<mlp_layer>(mlp_weights::random(mlp, seed + 100 + std::uint64_t(i))); };
    k['E'] = [this, seed](index_t i) { return std::make_shared<moe_layer>(moe_weights::random(moe, seed + 200 + std::uint64_t(i))); };
    return k;
  }
  stack_layer_kinds loaded(const named_tensors& t, const hybrid_stack& like) const {
    auto prefix = [&like](index_t i, char kind) {
      const auto& b = like.blocks()[std::size_t(i)];
      return like.mixer_prefix(i, index_t(b.kinds.find(kind)));
    };
    stack_layer_kinds k;
    k['A'] = [this, &t, prefix](index_t i) {
      return std::make_shared<attention_layer>(full, attention_layer_weights::load(full, t, prefix(i, 'A')));
    };
    k['W'] = [this, &t, prefix](index_t i) {
      return std::make_shared<attention_layer>(window, attention_layer_weights::load(window, t, prefix(i, 'W')));
    };
    k['F'] = [this, &t, prefix](index_t i) {
      return std::make_shared<mlp_layer>(mlp_weights::load(t, detail::ffn_prefix(prefix(i, 'F')), mlp));
    };
    k['E'] = [this, &t, prefix](index_t i) {
      return std::make_shared<moe_layer>(moe_weights::load(t, detail::ffn_prefix(prefix(i, 'E')), moe));
    };
    return k;
  }
};

}  // namespace

TEST_CASE("hybrid stack of tokmix layers: prefill == steps, chained prefills, save -> load", "[blocks][hybrid_stack]") {
  const real_model rm;
  const std::string pattern = "AF W E fAf (AW) F";
  hybrid_stack_config c;
  c.d_model = real_model::d;
  c.vocab_size = real_model::V;
  c.policy = exec_policy::threads(2);
  const hybrid_stack stack(c, parse_stack_pattern(pattern, rm.kinds(3)), 8);
  const index_t B = 2, L = 13;
  std::vector<std::int32_t> toks(static_cast<std::size_t>(B * L));
  for (std::size_t i = 0; i < toks.size(); ++i) toks[i] = std::int32_t((i * 7 + 3) % real_model::V);
  auto st = stack.make_state(B, 20);
  CHECK(st.bytes() == stack.state_bytes(B, 20));
  CHECK(st.bytes_by_kind().count("attention") == 1);
  std::vector<float> all(static_cast<std::size_t>(B * L * real_model::V)), last(static_cast<std::size_t>(B * real_model::V));
  stack.prefill(tensor_view<const std::int32_t, 2>(toks.data(), {B, L}), st,
                tensor_view<float, 2>(last.data(), {B, real_model::V}), nullptr,
                tensor_view<float, 3>(all.data(), {B, L, real_model::V}));
  auto st2 = stack.make_state(B, 20);
  std::vector<float> lg(last.size());
  std::vector<std::int32_t> one(static_cast<std::size_t>(B));
  stack_timings tm;
  for (index_t t = 0; t < L; ++t) {
    for (index_t b = 0; b < B; ++b) one[std::size_t(b)] = toks[std::size_t(b * L + t)];
    stack.step(tensor_view<const std::int32_t, 1>(one.data(), {B}), st2, tensor_view<float, 2>(lg.data(), {B, real_model::V}), &tm);
    for (index_t b = 0; b < B; ++b)
      TOKMIX_REQUIRE_CLOSE(lg.data() + b * real_model::V, all.data() + (b * L + t) * real_model::V,
                           std::size_t(real_model::V), 1e-4, 1e-4);
  }
  CHECK(tm.seconds.count("attention") == 1);
  CHECK(tm.seconds.count("mlp") == 1);
  CHECK(tm.seconds.count("moe") == 1);
  // Chained prefills.
  auto st3 = stack.make_state(B, 20);
  std::vector<std::int32_t> a(static_cast<std::size_t>(B * 6)), z(static_cast<std::size_t>(B * (L - 6)));
  for (index_t b = 0; b < B; ++b) {
    std::copy(toks.begin() + b * L, toks.begin() + b * L + 6, a.begin() + b * 6);
    std::copy(toks.begin() + b * L + 6, toks.begin() + (b + 1) * L, z.begin() + b * (L - 6));
  }
  stack.prefill(tensor_view<const std::int32_t, 2>(a.data(), {B, 6}), st3, {});
  stack.prefill(tensor_view<const std::int32_t, 2>(z.data(), {B, L - 6}), st3, tensor_view<float, 2>(lg.data(), {B, real_model::V}));
  TOKMIX_REQUIRE_CLOSE(lg.data(), last.data(), last.size(), 1e-4, 1e-4);
  // Save -> load: the same logits.
  named_tensors t;
  stack.save(t);
  const hybrid_stack back(c, parse_stack_pattern(pattern, rm.loaded(t, stack)), t);
  auto st4 = back.make_state(B, 20);
  back.prefill(tensor_view<const std::int32_t, 2>(toks.data(), {B, L}), st4, tensor_view<float, 2>(lg.data(), {B, real_model::V}));
  CHECK(lg == last);
  // A stack whose weights lack one mixer tensor names it.
  named_tensors partial;
  for (const auto& n : t.names())
    if (n != "layers.4.mixer.up_proj.weight") partial.insert(n, t.at(n).shape, t.at(n).data);
  try {
    hybrid_stack x(c, parse_stack_pattern(pattern, rm.loaded(partial, stack)), partial);
    FAIL("missing tensor accepted");
  } catch (const argument_error& e) {
    CHECK(std::string(e.what()).find("layers.4.mixer.up_proj.weight") != std::string::npos);
  }
}
