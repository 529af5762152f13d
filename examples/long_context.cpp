// One layer of every mixer family, swept over the sequence length: prefill
// time, one decode step at that context, and the memory decode must keep
// (KV cache or recurrent state), medians of repeated runs. Writes long_context.csv and, when gnuplot is
// installed, long_context.png (time and memory against L, log-log).
//
//   ./long_context                         # L = 512 .. 16384, d_model 512, 1 thread
//   ./long_context --max-len 65536 --threads 2 --out results/
//
// Attention's prefill grows as L^2 and its cache as L; sliding-window
// attention and every recurrent mixer grow as L and keep a fixed state.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <system_error>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <tokmix/blocks.hpp>

namespace {

using tokmix::index_t;
using clock_type = std::chrono::steady_clock;

struct options {
  index_t d_model = 512, min_len = 512, max_len = 16384, window = 1024;
  int threads = 1;
  std::string out = ".";
};

[[noreturn]] void usage(const char* argv0, const std::string& why) {
  std::fprintf(stderr, "%s\nusage: %s [--d-model D] [--min-len L0] [--max-len L1] [--window W] [--threads T] [--out DIR]\n",
               why.c_str(), argv0);
  std::exit(2);
}

options parse(int argc, char** argv) {
  options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (i + 1 >= argc) usage(argv[0], "missing value after " + a);
    const std::string v = argv[++i];
    char* end = nullptr;
    const long long n = std::strtoll(v.c_str(), &end, 10);
    const bool numeric = end != v.c_str() && *end == '\0' && n > 0;
    if (a == "--out") o.out = v;
    else if (!numeric) usage(argv[0], "not a positive integer: " + a + " " + v);
    else if (a == "--d-model") o.d_model = n;
    else if (a == "--min-len") o.min_len = n;
    else if (a == "--max-len") o.max_len = n;
    else if (a == "--window") o.window = n;
    else if (a == "--threads") o.threads = static_cast<int>(n);
    else usage(argv[0], "unknown argument " + a);
  }
  if (o.d_model % 128 != 0) usage(argv[0], "--d-model must be a multiple of 128");
  if (o.min_len > o.max_len) usage(argv[0], "--min-len must not exceed --max-len");
  return o;
}

struct family {
  std::string name;
  std::shared_ptr<const tokmix::mixer_layer> layer;
};

std::vector<family> families(const options& o) {
  using namespace tokmix;
  const index_t d = o.d_model;
  const exec_policy pol = o.threads > 1 ? exec_policy::threads(o.threads) : exec_policy::serial();
  std::vector<family> f;
  attention_layer_config a;
  a.d_model = d;
  a.num_heads = d / 64;
  a.num_kv_heads = std::max<index_t>(1, d / 256);
  a.policy = pol;
  f.push_back({"attention", std::make_shared<attention_layer>(a, attention_layer_weights::random(a, 1))});
  attention_layer_config w = a;
  w.sliding_window = o.window;
  f.push_back({"sliding_window_" + std::to_string(o.window), std::make_shared<attention_layer>(w, attention_layer_weights::random(w, 2))});
  mamba2_layer_config m2;
  m2.d_model = d;
  m2.d_state = 64;
  m2.policy = pol;
  f.push_back({"mamba2", std::make_shared<mamba2_layer>(m2, mamba2_layer_weights::random(m2, 3))});
  mamba_layer_config m1;
  m1.d_model = d;
  m1.policy = pol;
  f.push_back({"mamba", std::make_shared<mamba_layer>(m1, mamba_layer_weights::random(m1, 4))});
  gla_layer_config g;
  g.d_model = d;
  g.num_heads = d / 128;
  g.policy = pol;
  f.push_back({"gla", std::make_shared<gla_layer>(g, gla_layer_weights::random(g, 5))});
  auto dn = deltanet_layer_config::gated_delta_net(d, 64, d / 128, 128);
  dn.policy = pol;
  f.push_back({"gated_deltanet", std::make_shared<deltanet_layer>(dn, deltanet_layer_weights::random(dn, 6))});
  retention_layer_config r;
  r.d_model = d;
  r.num_heads = d / 128;
  r.policy = pol;
  f.push_back({"retention", std::make_shared<retention_layer>(r, retention_layer_weights::random(r, 7))});
  return f;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

double seconds(const std::function<void()>& f) {
  const auto t0 = clock_type::now();
  f();
  return std::chrono::duration<double>(clock_type::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
  const options o = parse(argc, argv);
  const auto fams = families(o);
  std::error_code ec;
  std::filesystem::create_directories(o.out, ec);  // a failure shows up when the CSV is opened
  const std::string csv_path = o.out + "/long_context.csv";
  std::FILE* csv = std::fopen(csv_path.c_str(), "w");
  if (!csv) {
    std::fprintf(stderr, "long_context: cannot write %s\n", csv_path.c_str());
    return 1;
  }
  std::fprintf(csv, "mixer,seq_len,prefill_ms,prefill_tokens_per_s,step_ms,state_bytes\n");
  std::printf("%-22s %8s %12s %14s %10s %12s\n", "mixer", "L", "prefill ms", "tokens/s", "step ms", "state MB");
  const index_t d = o.d_model;
  struct row {
    std::size_t family;
    index_t L;
    double prefill_ms;
    std::size_t bytes;
  };
  std::vector<row> rows;
  std::vector<float> x, y, xt(static_cast<std::size_t>(d)), yt(static_cast<std::size_t>(d));
  for (index_t L = o.min_len; L <= o.max_len; L *= 2) {
    x.resize(static_cast<std::size_t>(L * d));
    y.resize(x.size());
    tokmix::random_stream g(static_cast<std::uint64_t>(L));
    for (auto& v : x) v = static_cast<float>(g.uniform(-1, 1));
    for (std::size_t fi = 0; fi < fams.size(); ++fi) {
      const family& f = fams[fi];
      // Medians (the machine may be shared): three prefills from a fresh
      // state, then nine steps at context L.
      const int reps = 3, steps = 9;
      std::unique_ptr<tokmix::mixer_layer_state> st;
      std::vector<double> tps, tss;
      for (int r = 0; r < reps; ++r) {
        st = f.layer->make_state(1, L + steps);
        tps.push_back(seconds([&] {
          f.layer->prefill(tokmix::tensor_view<const float, 3>(x.data(), {1, L, d}),
                           tokmix::tensor_view<float, 3>(y.data(), {1, L, d}), *st);
        }));
      }
      for (int r = 0; r < steps; ++r)
        tss.push_back(seconds([&] {
          f.layer->step(tokmix::tensor_view<const float, 2>(x.data() + r * d, {1, d}),
                        tokmix::tensor_view<float, 2>(yt.data(), {1, d}), *st);
        }));
      const double tp = median(tps), ts = median(tss);
      rows.push_back({fi, L, 1e3 * tp, st->bytes()});
      std::fprintf(csv, "%s,%td,%.4f,%.1f,%.4f,%zu\n", f.name.c_str(), L, 1e3 * tp, double(L) / tp, 1e3 * ts, st->bytes());
      std::printf("%-22s %8td %12.2f %14.0f %10.3f %12.3f\n", f.name.c_str(), L, 1e3 * tp, double(L) / tp, 1e3 * ts,
                  1e-6 * double(st->bytes()));
    }
    std::fflush(stdout);
  }
  std::fclose(csv);
  std::printf("long_context: wrote %s\n", csv_path.c_str());

  // The plot, when gnuplot is there (Debian: gnuplot-nox).
  if (std::system("command -v gnuplot > /dev/null 2>&1") != 0) {
    std::printf("long_context: gnuplot not found, no PNG (apt-get install gnuplot-nox)\n");
    return 0;
  }
  const std::string png = o.out + "/long_context.png";
  std::FILE* gp = popen("gnuplot", "w");
  if (!gp) return 0;
  std::fprintf(gp, "set terminal pngcairo size 1400,560 noenhanced\nset output '%s'\n", png.c_str());
  // One inline data block per mixer, so each draws as a line.
  for (std::size_t fi = 0; fi < fams.size(); ++fi) {
    std::fprintf(gp, "$d%zu << EOD\n", fi);
    for (const auto& r : rows)
      if (r.family == fi) std::fprintf(gp, "%td %.6g %zu\n", r.L, r.prefill_ms, r.bytes);
    std::fprintf(gp, "EOD\n");
  }
  std::fprintf(gp, "set multiplot layout 1,2\nset logscale xy\nset grid\nset key left top\nset xlabel 'sequence length L'\n");
  std::string plot_time = "set ylabel 'prefill time (ms)'\nplot ", plot_mem = "set ylabel 'decode state (bytes)'\nplot ";
  for (std::size_t i = 0; i < fams.size(); ++i) {
    const std::string src = (i ? ", " : "") + std::string("$d") + std::to_string(i);
    plot_time += src + " using 1:2 with linespoints title '" + fams[i].name + "'";
    plot_mem += src + " using 1:3 with linespoints title '" + fams[i].name + "'";
  }
  std::fprintf(gp, "%s\n%s\nunset multiplot\n", plot_time.c_str(), plot_mem.c_str());
  const int rc = pclose(gp);
  std::printf(rc == 0 ? "long_context: wrote %s\n" : "long_context: gnuplot failed, no %s\n", png.c_str());
  return 0;
}
