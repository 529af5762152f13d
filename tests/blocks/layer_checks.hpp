#pragma once
// The checks every mixer layer of blocks/ must pass, run against a float64
// reference of the whole layer that each test file writes out plainly:
//   prefill(L) == reference, strided x / y inside NaN-filled buffers (overreads
//     poison the result, overwrites show in the gaps), non-collapsible batch strides;
//   steps token by token == reference; prefill(L1) + prefill(L2) == reference;
//     prefill(L1) + steps == reference; reset() gives a fresh state back;
//   threads(2) == serial (to fp32 rounding, tighter than the reference
//     tolerance: the projections split rows or features by worker count);
//   save -> load gives a layer with bit-identical outputs; a missing or
//     reshaped tensor makes the load throw argument_error naming it;
//   bad x / y / state (shape, batch, kind, overlap) throws argument_error and
//     leaves y and the state untouched;
//   after the first step, steps take nothing more from the scratch arenas;
//   state bytes() == layer.state_bytes().
#include <cmath>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "support/compare.hpp"
#include "tokmix/blocks/mixer_layer.hpp"
#include "tokmix/core/scratch.hpp"

namespace tokmix_test {
namespace layer_checks {

using tokmix::index_t;

struct layer_case {
  // Builds the layer under a policy (weights fixed by the case).
  std::function<std::unique_ptr<tokmix::mixer_layer>(const tokmix::exec_policy&)> make;
  // Builds the layer from named tensors (the layer's own save()d names).
  std::function<std::unique_ptr<tokmix::mixer_layer>(const tokmix::named_tensors&, const std::string& prefix)> load;
  // The float64 reference of all `seq` tokens from a fresh state: x [batch, seq, d] -> y [batch, seq, d].
  std::function<std::vector<double>(const std::vector<float>& x, index_t batch, index_t seq)> reference;
  index_t batch = 2, seq = 9, split = 4, max_tokens = 32;
  double atol = 2e-5, rtol = 2e-4;
  float x_scale = 1.f;
};

constexpr float nan_f = std::numeric_limits<float>::quiet_NaN();

// [batch, seq, d] inside a NaN-filled buffer: rows d + 3 apart, batches a
// further 5 floats apart (so the batch stride is not seq * row stride).
struct padded3 {
  index_t b, l, d, ld, bs;
  std::vector<float> buf;
  padded3(index_t b_, index_t l_, index_t d_)
      : b(b_), l(l_), d(d_), ld(d_ + 3), bs(l_ * (d_ + 3) + 5), buf(static_cast<std::size_t>(b_ * bs + 16), nan_f) {}
  float* at(index_t i, index_t t) { return buf.data() + 8 + i * bs + t * ld; }
  tokmix::tensor_view<float, 3> view(index_t t0 = 0, index_t n = -1) {
    return tokmix::tensor_view<float, 3>(at(0, t0), {b, n < 0 ? l - t0 : n, d}, {bs, ld, 1});
  }
  tokmix::tensor_view<float, 2> token(index_t t) { return tokmix::tensor_view<float, 2>(at(0, t), {b, d}, {bs, 1}); }
  void fill(const std::vector<float>& dense) {
    for (index_t i = 0; i < b; ++i)
      for (index_t t = 0; t < l; ++t)
        for (index_t j = 0; j < d; ++j) at(i, t)[j] = dense[static_cast<std::size_t>((i * l + t) * d + j)];
  }
  std::vector<float> dense() {
    std::vector<float> out(static_cast<std::size_t>(b * l * d));
    for (index_t i = 0; i < b; ++i)
      for (index_t t = 0; t < l; ++t)
        for (index_t j = 0; j < d; ++j) out[static_cast<std::size_t>((i * l + t) * d + j)] = at(i, t)[j];
    return out;
  }
  bool gaps_nan() const {
    for (std::size_t k = 0; k < buf.size(); ++k) {
      const index_t off = static_cast<index_t>(k) - 8;
      bool inside = false;
      if (off >= 0) {
        const index_t i = off / bs, r = off % bs, t = r / ld, j = r % ld;
        inside = i < b && t < l && j < d;
      }
      if (!inside && !std::isnan(buf[k])) return false;
    }
    return true;
  }
};

inline void require_close(const std::vector<float>& got, const std::vector<double>& want, double atol, double rtol,
                          const char* what) {
  INFO(what);
  REQUIRE(got.size() == want.size());
  TOKMIX_REQUIRE_CLOSE(got.data(), want.data(), got.size(), atol, rtol);
}

// Runs prefill over tokens [t0, t1) and steps over [t1, t2) into y.
inline void run(const tokmix::mixer_layer& layer, tokmix::mixer_layer_state& s, padded3& x, padded3& y, index_t t0,
                index_t t1, index_t t2) {
  if (t1 > t0) layer.prefill(x.view(t0, t1 - t0), y.view(t0, t1 - t0), s);
  for (index_t t = t1; t < t2; ++t) layer.step(x.token(t), y.token(t), s);
}

// A state of no layer at all (for the wrong-kind check).
class foreign_state : public tokmix::mixer_layer_state {
 public:
  explicit foreign_state(index_t b) : b_(b) {}
  const char* layer_name() const override { return "foreign"; }
  index_t batch() const override { return b_; }
  index_t position() const override { return 0; }
  std::size_t bytes() const override { return 0; }
  void reset() override {}

 private:
  index_t b_;
};

template <class F>
void require_argument_error(F&& f, const std::string& what_contains = "") {
  try {
    f();
    FAIL("no argument_error");
  } catch (const tokmix::argument_error& e) {
    if (!what_contains.empty()) {
      INFO(e.what());
      CHECK(std::string(e.what()).find(what_contains) != std::string::npos);
    }
  }
}

inline void run_layer_checks(const layer_case& c, unsigned seed) {
  using namespace tokmix;
  const auto layer = c.make(exec_policy::serial());
  const index_t B = c.batch, L = c.seq, d = layer->d_model();
  CAPTURE(layer->name(), B, L, d);
  const auto xd = random_floats(static_cast<std::size_t>(B * L * d), seed, -c.x_scale, c.x_scale);
  const auto want = c.reference(xd, B, L);
  padded3 x(B, L, d);
  x.fill(xd);

  // prefill(L) from a fresh state.
  auto state = layer->make_state(B, c.max_tokens);
  CHECK(std::string(state->layer_name()) == layer->name());
  CHECK(state->batch() == B);
  CHECK(state->bytes() == layer->state_bytes(B, c.max_tokens));
  CHECK(state->bytes() > 0);
  padded3 y(B, L, d);
  run(*layer, *state, x, y, 0, L, L);
  CHECK(state->position() == L);
  REQUIRE(y.gaps_nan());
  REQUIRE(x.gaps_nan());
  const auto y_prefill = y.dense();
  require_close(y_prefill, want, c.atol, c.rtol, "prefill(L)");

  // Steps from the start, after reset() (which must give a fresh state back).
  state->reset();
  CHECK(state->position() == 0);
  padded3 ys(B, L, d);
  run(*layer, *state, x, ys, 0, 0, L);
  REQUIRE(ys.gaps_nan());
  const auto y_steps = ys.dense();
  require_close(y_steps, want, c.atol, c.rtol, "steps");

  // prefill(L1) + prefill(L2); prefill(L1) + steps.
  {
    auto s2 = layer->make_state(B, c.max_tokens);
    padded3 y2(B, L, d);
    run(*layer, *s2, x, y2, 0, c.split, c.split);
    run(*layer, *s2, x, y2, c.split, L, L);
    require_close(y2.dense(), want, c.atol, c.rtol, "prefill(L1) + prefill(L2)");
    auto s3 = layer->make_state(B, c.max_tokens);
    padded3 y3(B, L, d);
    run(*layer, *s3, x, y3, 0, c.split, L);
    require_close(y3.dense(), want, c.atol, c.rtol, "prefill(L1) + steps");
    // prefill(L) agrees with stepping closer than either with the reference.
    std::vector<double> ref_steps(y_steps.begin(), y_steps.end());
    require_close(y_prefill, ref_steps, c.atol, c.rtol, "prefill(L) vs steps");
  }

  // threads(2) == serial.
  {
    const auto lt = c.make(exec_policy::threads(2));
    auto st = lt->make_state(B, c.max_tokens);
    padded3 yt(B, L, d);
    run(*lt, *st, x, yt, 0, c.split, L);
    auto sr = layer->make_state(B, c.max_tokens);
    padded3 yr(B, L, d);
    run(*layer, *sr, x, yr, 0, c.split, L);
    const auto a = yr.dense();
    // Not bit for bit: linear_forward cuts a few rows by output features per
    // worker, and Eigen's kernels round the slices differently (~1 ulp), which
    // the gates and norms downstream amplify a little.
    require_close(yt.dense(), std::vector<double>(a.begin(), a.end()), 1e-5, 1e-4, "threads(2) vs serial");
  }

  // save -> load: identical outputs; every tensor required by name and shape.
  {
    named_tensors t;
    layer->save(t, "layers.3.mixer.");
    REQUIRE(!t.empty());
    for (const auto& n : t.names()) CHECK(n.rfind("layers.3.mixer.", 0) == 0);
    const auto back = c.load(t, "layers.3.mixer.");
    auto s1 = layer->make_state(B, c.max_tokens);
    auto s2 = back->make_state(B, c.max_tokens);
    padded3 y1(B, L, d), y2(B, L, d);
    run(*layer, *s1, x, y1, 0, c.split, L);
    run(*back, *s2, x, y2, 0, c.split, L);
    const auto a = y1.dense(), b = y2.dense();
    for (std::size_t i = 0; i < a.size(); ++i) REQUIRE(a[i] == b[i]);
    named_tensors again;
    back->save(again, "layers.3.mixer.");
    CHECK(again.names() == t.names());
    for (const auto& n : t.names()) {
      CAPTURE(n);
      named_tensors missing, reshaped;
      for (const auto& m : t.names()) {
        const auto& e = t.at(m);
        if (m != n) {
          missing.insert(m, e.shape, e.data);
          reshaped.insert(m, e.shape, e.data);
        } else {
          std::vector<index_t> shape = e.shape;
          shape.push_back(1);  // same values, one more (unit) dimension: a shape mismatch
          reshaped.insert(m, shape, e.data);
        }
      }
      require_argument_error([&] { c.load(missing, "layers.3.mixer."); }, "'" + n + "'");
      require_argument_error([&] { c.load(reshaped, "layers.3.mixer."); }, "'" + n + "'");
    }
    require_argument_error([&] { c.load(t, "layers.4.mixer."); });
  }

  // Bad inputs throw, write nothing and leave the state as it was.
  {
    auto s = layer->make_state(B, c.max_tokens);
    padded3 yb(B, L, d);
    run(*layer, *s, x, yb, 0, c.split, c.split);
    const index_t pos = s->position();
    std::vector<float> xw(static_cast<std::size_t>(B * 2 * (d + 1)), 0.5f), yw(static_cast<std::size_t>(B * 2 * (d + 1)), -7.f);
    const tensor_view<const float, 3> x_bad_d(xw.data(), {B, 2, d + 1});
    const tensor_view<float, 3> y_bad_d(yw.data(), {B, 2, d + 1});
    const tensor_view<float, 3> y_ok(yw.data(), {B, 2, d});
    const tensor_view<const float, 3> x_ok(xw.data() + 0, {B, 2, d}, {2 * (d + 1), d + 1, 1});
    using TV2 = tensor_view<const float, 2>;
    using YV2 = tensor_view<float, 2>;
    const tensor_view<const float, 3> x_bad_b(xw.data(), {B + 1, 1, d});
    foreign_state f(B);
    const std::function<void()> bad[] = {
        [&] { layer->prefill(x_bad_d, y_bad_d, *s); },                                          // d_model
        [&] { layer->prefill(x_ok, tensor_view<float, 3>(yw.data(), {B, 1, d}), *s); },         // y shape
        [&] { layer->prefill(x_bad_b, tensor_view<float, 3>(yw.data(), {B + 1, 1, d}), *s); },  // batch
        [&] { layer->prefill(x_ok, y_ok, f); },                                                 // state kind
        [&] { layer->step(TV2(xw.data(), {B, d}), YV2(yw.data(), {B, d}), f); },
        [&] {  // y overlapping x
          layer->prefill(x_ok, tensor_view<float, 3>(xw.data() + 1, {B, 2, d}, {2 * (d + 1), d + 1, 1}), *s);
        },
        [&] { layer->step(TV2(xw.data(), {B, d + 1}), YV2(yw.data(), {B, d + 1}), *s); },
        [&] { layer->step(TV2(xw.data(), {B, d}), YV2(yw.data(), {B, d - 1}), *s); },
        [&] { layer->step(TV2(xw.data(), {B, d}, {d, 2}), YV2(yw.data(), {B, d}), *s); },  // strided last dim
        [&] { layer->step(TV2(xw.data(), {B + 1, d}), YV2(yw.data(), {B + 1, d}), *s); },
    };
    int k = 0;
    for (const auto& call : bad) {
      INFO("bad-input call " << k++);
      require_argument_error(call);
    }
    require_argument_error([&] { layer->prefill(x_ok, y_ok, f); }, "foreign");
    for (float v : yw) REQUIRE(v == -7.f);
    for (float v : xw) REQUIRE(v == 0.5f);
    CHECK(s->position() == pos);
    // The state is intact: the rest of the sequence still matches the reference.
    run(*layer, *s, x, yb, c.split, c.split, L);
    require_close(yb.dense(), want, c.atol, c.rtol, "after rejected calls");
  }

  // Steps allocate nothing once warm (serial: one thread's arenas).
  {
    auto s = layer->make_state(B, c.max_tokens);
    padded3 yg(B, L, d);
    run(*layer, *s, x, yg, 0, 1, 3);
    const std::size_t g_local = scratch_arena::local().growth_count(), g_outer = scratch_arena::outer().growth_count();
    run(*layer, *s, x, yg, 3, 3, L);
    CHECK(scratch_arena::local().growth_count() == g_local);
    CHECK(scratch_arena::outer().growth_count() == g_outer);
  }
}

}  // namespace layer_checks
}  // namespace tokmix_test
