// Tests for include/tokmix/io/safetensors.hpp: F32 / F16 / BF16 round trips
// through files in a temp dir, a hand-written file in another writer's
// layout, every validation rule on corrupted files (truncated, flipped
// header bytes, absurd lengths, bad JSON, bad dtypes / shapes / offsets,
// duplicates), a loop of random mutations that may only ever throw
// argument_error, failed writes that leave nothing, and MLP weights through
// a file.
#include "tokmix/io/safetensors.hpp"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <unistd.h>

#include <catch2/catch.hpp>

#include "tokmix/blocks/mlp.hpp"
#include "support/compare.hpp"

using namespace tokmix;
namespace fs = std::filesystem;

namespace {

using bytes = std::vector<unsigned char>;

// A per-process scratch directory, removed when the test binary exits.
const fs::path& temp_dir() {
  static const struct holder {
    fs::path p;
    holder() : p(fs::temp_directory_path() / ("tokmix_safetensors_" + std::to_string(::getpid()))) {
      fs::create_directories(p);
    }
    ~holder() {
      std::error_code ec;
      fs::remove_all(p, ec);
    }
  } h;
  return h.p;
}

std::string temp_file(const std::string& name) { return (temp_dir() / name).string(); }

void write_bytes(const std::string& path, const bytes& b) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}

// A file image from a header text and a data section.
bytes image(const std::string& json, const bytes& data = {}) {
  bytes b(8 + json.size() + data.size());
  const std::uint64_t n = json.size();
  for (int i = 0; i < 8; ++i) b[static_cast<std::size_t>(i)] = static_cast<unsigned char>(n >> (8 * i));
  // memcpy rather than vector::insert: GCC 12 reports a false -Warray-bounds there.
  if (!json.empty()) std::memcpy(b.data() + 8, json.data(), json.size());
  if (!data.empty()) std::memcpy(b.data() + 8 + json.size(), data.data(), data.size());
  return b;
}

named_tensors sample_tensors() {
  named_tensors t;
  t.insert("scalar", {}, {3.5f});
  t.insert("empty", {0, 4}, {});
  const float inf = std::numeric_limits<float>::infinity();
  t.insert("specials", {7}, {0.f, -0.f, inf, -inf, 1e-40f, -65504.f, 3.0e38f});
  t.insert("model.layers.0.mlp.up_proj.weight", {3, 5}, tokmix_test::random_floats(15, 1, -4.f, 4.f));
  t.insert("wide", {2, 130}, tokmix_test::random_floats(260, 2, -100.f, 100.f));
  t.insert("naïve/ünïcode \"quoted\"", {2}, {1.f, 2.f});
  return t;
}

// The argument_error of f, or a failure.
template <class F>
argument_error error_of(F&& f) {
  try {
    f();
  } catch (const argument_error& e) {
    return e;
  }
  FAIL("no argument_error");
  throw;  // unreachable
}

// Both readers (memory and file) reject `b`; the message names the file and,
// when given, the tensor and a fragment of the explanation.
void check_rejected(const bytes& b, const std::string& tensor, const std::string& fragment, const std::string& file) {
  CAPTURE(tensor, fragment);
  const auto e = error_of([&] { safetensors_parse(b.data(), b.size(), file); });
  const std::string msg = e.what();
  INFO(msg);
  CHECK(msg.find("safetensors file '" + file + "'") != std::string::npos);
  if (!tensor.empty()) CHECK(e.argument().find("tensor '" + tensor + "'") != std::string::npos);
  CHECK(msg.find(fragment) != std::string::npos);
  const std::string path = temp_file(file);
  write_bytes(path, b);
  const auto f = error_of([&] { safetensors_read(path); });
  CHECK(std::string(f.what()).find(fragment) != std::string::npos);
}

}  // namespace

TEST_CASE("safetensors: F32 round trip through a file is exact, metadata kept", "[io][safetensors]") {
  const auto t = sample_tensors();
  const std::string path = temp_file("f32.safetensors");
  const std::map<std::string, std::string> meta = {{"format", "pt"}, {"note", "line\nbreak \\ \"q\" \x01"}};
  safetensors_write(path, t, safetensors_dtype::f32, meta);
  CHECK(!fs::exists(path + ".tmp"));
  const auto back = safetensors_read(path);
  CHECK(back.metadata == meta);
  CHECK(back.skipped.empty());
  REQUIRE(back.tensors.names() == t.names());
  for (const auto& name : t.names()) {
    CAPTURE(name);
    CHECK(back.tensors.at(name).shape == t.at(name).shape);
    const auto& a = back.tensors.at(name).data;
    const auto& b = t.at(name).data;
    REQUIRE(a.size() == b.size());
    CHECK((a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0));
    CHECK(back.dtypes.at(name) == safetensors_dtype::f32);
  }
  // The data starts 8-byte aligned, and memory and file readers agree.
  const auto img = safetensors_serialize(t, safetensors_dtype::f32, meta);
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | img[static_cast<std::size_t>(i)];
  CHECK((8 + n) % 8 == 0);
  CHECK(fs::file_size(path) == img.size());
  CHECK(safetensors_parse(img.data(), img.size()).tensors.at("wide").data == back.tensors.at("wide").data);
  CHECK(safetensors_load(path).size() == t.size());
  // NaN survives.
  named_tensors nan_t;
  nan_t.insert("n", {2}, {std::numeric_limits<float>::quiet_NaN(), 1.f});
  safetensors_write(path, nan_t);
  CHECK(std::isnan(safetensors_load(path).at("n").data[0]));
}

TEST_CASE("safetensors: F16 and BF16 round trips round to nearest even", "[io][safetensors]") {
  const auto t = sample_tensors();
  for (auto dt : {safetensors_dtype::f16, safetensors_dtype::bf16}) {
    CAPTURE(safetensors_dtype_name(dt));
    const std::string path = temp_file(std::string("r_") + safetensors_dtype_name(dt) + ".safetensors");
    safetensors_write(path, t, dt);
    const auto back = safetensors_read(path);
    CHECK(fs::file_size(path) % 2 == 0);
    for (const auto& name : t.names()) {
      CAPTURE(name);
      CHECK(back.dtypes.at(name) == dt);
      const auto& src = t.at(name).data;
      const auto& got = back.tensors.at(name).data;
      REQUIRE(got.size() == src.size());
      for (std::size_t i = 0; i < src.size(); ++i) {
        // Eigen's scalar conversions are the reference for the rounding.
        const float want = dt == safetensors_dtype::f16 ? static_cast<float>(Eigen::half(src[i]))
                                                        : static_cast<float>(Eigen::bfloat16(src[i]));
        CHECK(std::memcmp(&got[i], &want, sizeof(float)) == 0);
      }
    }
    // Reading again and writing as F32 keeps the widened values exactly.
    safetensors_write(path, back.tensors, safetensors_dtype::f32);
    CHECK(safetensors_load(path).at("wide").data == back.tensors.at("wide").data);
  }
}

TEST_CASE("safetensors: a file in another writer's layout", "[io][safetensors]") {
  // Unsorted entries, whitespace, an escaped name, offsets not in name order,
  // no padding, a 2-byte tensor at an odd data offset, little-endian values.
  const std::string json =
      "{ \"z\" : {\"dtype\":\"F16\", \"shape\":[2], \"data_offsets\":[0,4]},\n"
      "  \"a\\u00e9\\ud83d\\ude00\" : {\"shape\":[1,1],\"dtype\":\"BF16\",\"data_offsets\":[4,6]},\r\n"
      "  \"__metadata__\": {\"k\": \"v\"},\t"
      "  \"f\" : {\"data_offsets\":[7,11],\"dtype\":\"F32\",\"shape\":[1]},"
      "  \"u8\" : {\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[6,7]}  }   ";
  bytes data = {0x00, 0x3c, 0x00, 0xc0,  // F16 1.0, -2.0
                0x80, 0x3f,              // BF16 1.0
                0x2a,                    // U8 42
                0x00, 0x00, 0x80, 0x40}; // F32 4.0
  const auto img = image(json, data);
  // U8 is a valid dtype tokmix does not read: an error unless skipped.
  const auto e = error_of([&] { safetensors_parse(img.data(), img.size(), "other.safetensors"); });
  CHECK(e.argument() == "safetensors file 'other.safetensors', tensor 'u8'");
  safetensors_read_options opt;
  opt.skip_other_dtypes = true;
  for (int via_file : {0, 1}) {
    CAPTURE(via_file);
    safetensors_contents c;
    if (via_file) {
      write_bytes(temp_file("other.safetensors"), img);
      c = safetensors_read(temp_file("other.safetensors"), opt);
    } else {
      c = safetensors_parse(img.data(), img.size(), "other", opt);
    }
    CHECK(c.tensors.at("z").data == std::vector<float>{1.f, -2.f});
    CHECK(c.tensors.at("a\xc3\xa9\xf0\x9f\x98\x80", {1, 1}).data == std::vector<float>{1.f});
    CHECK(c.tensors.at("f").data == std::vector<float>{4.f});
    CHECK(c.skipped == std::vector<std::string>{"u8"});
    CHECK(!c.tensors.contains("u8"));
    CHECK(c.metadata.at("k") == "v");
    CHECK(c.dtypes.at("z") == safetensors_dtype::f16);
  }
  // An empty file body is valid: no tensors.
  const auto empty = image("{}");
  CHECK(safetensors_parse(empty.data(), empty.size()).tensors.empty());
}

TEST_CASE("safetensors: corrupted files throw argument_error naming file and tensor", "[io][safetensors]") {
  const std::string good = R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  const bytes d8(8, 0);
  auto one = [&](const std::string& tensor_json, const bytes& data = bytes(8, 0)) {
    return image("{\"w\":" + tensor_json + "}", data);
  };
  // Lengths.
  for (std::size_t n = 0; n < 8; ++n) check_rejected(bytes(n, 0), "", "at least 8 bytes", "short.safetensors");
  {
    auto b = image(good, d8);
    b[0] = static_cast<unsigned char>(b[0] + 9);  // header longer than the file
    check_rejected(b, "", "header length within the file", "long.safetensors");
    for (int i = 0; i < 8; ++i) b[static_cast<std::size_t>(i)] = 0xff;  // 2^64 - 1
    check_rejected(b, "", "header length within the file", "absurd.safetensors");
    b = image(good, d8);
    b.resize(b.size() - 1);  // data truncated
    check_rejected(b, "w", "within the 7 data bytes", "truncated.safetensors");
    b = image(good, d8);
    b.push_back(0);  // a trailing byte
    check_rejected(b, "", "trailing bytes", "trailing.safetensors");
  }
  // Malformed JSON.
  const std::pair<std::string, std::string> bad_json[] = {
      {"", "end of input"},
      {"{", "a string key"},
      {R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},})", "a string key"},
      {R"({"w":{"dtype":"F32","shape":[02],"data_offsets":[0,8]}})", "leading zero"},
      {"{\"w\x01\":{}}", "control character"},
      {"{\"w\xc3\x28\":{}}", "invalid UTF-8"},
      {"{\"w\xed\xa0\x80\":{}}", "invalid UTF-8"},  // an encoded surrogate
      {R"({"w\ud800":{}})", "high surrogate"},
      {R"({"w\udc00":{}})", "lone low surrogate"},
      {R"({"w\q":{}})", "invalid escape"},
      {R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}} x)", "text after"},
      {R"({"w":{"dtype":"F32","shape":[2] "data_offsets":[0,8]}})", "',' or '}'"},
      {R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8],}})", "a string key"},
      {R"({"w":{"dtype":"F32","shape":[2,],"data_offsets":[0,8]}})", "unexpected character"},
      {R"({"w":tru})", "invalid literal"},
      {R"({"w":1.})", "digit expected"},
      {std::string(100, '[') + std::string(100, ']'), "nesting deeper"},
      {"[]", "a JSON object as the header"},
  };
  for (const auto& c : bad_json) check_rejected(image(c.first, {}), "", c.second, "json.safetensors");
  // Tensor entries.
  check_rejected(one(R"({"dtype":"F33","shape":[2],"data_offsets":[0,8]})"), "w", "unknown dtype 'F33'", "dt.safetensors");
  check_rejected(one(R"({"dtype":"I64","shape":[1],"data_offsets":[0,8]})"), "w", "dtype I64", "dt.safetensors");
  check_rejected(one(R"({"dtype":3,"shape":[2],"data_offsets":[0,8]})"), "w", "a dtype string", "dt.safetensors");
  check_rejected(one(R"({"dtype":"F32","shape":[-1],"data_offsets":[0,8]})"), "w", "non-negative integers", "sh.safetensors");
  check_rejected(one(R"({"dtype":"F32","shape":[2.0],"data_offsets":[0,8]})"), "w", "got 2.0", "sh.safetensors");
  check_rejected(one(R"({"dtype":"F32","shape":[2e0],"data_offsets":[0,8]})"), "w", "non-negative integers", "sh.safetensors");
  check_rejected(one(R"({"dtype":"F32","shape":["2"],"data_offsets":[0,8]})"), "w", "non-negative integers", "sh.safetensors");
  check_rejected(one(R"({"dtype":"F32","shape":2,"data_offsets":[0,8]})"), "w", "shape as an array", "sh.safetensors");
  check_rejected(one(R"({"dtype":"F32","shape":[99999999999999999999],"data_offsets":[0,8]})"), "w", "non-negative integers", "sh.safetensors");
  check_rejected(one(R"({"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]})"), "w", "fits 64 bits", "sh.safetensors");
  check_rejected(one(R"({"dtype":"F32","shape":[3],"data_offsets":[0,8]})"), "w", "12 bytes", "size.safetensors");
  check_rejected(one(R"({"dtype":"F32","shape":[2],"data_offsets":[8,0]})"), "w", "begin <= end", "off.safetensors");
  check_rejected(one(R"({"dtype":"F32","shape":[2],"data_offsets":[0,8,8]})"), "w", "[begin, end]", "off.safetensors");
  check_rejected(one(R"({"dtype":"F32","shape":[2],"data_offsets":[0,-8]})"), "w", "non-negative integers", "off.safetensors");
  check_rejected(one(R"({"dtype":"F32","shape":[2],"data_offsets":[8,16]})", bytes(16, 0)), "w", "a hole of 8 bytes", "hole.safetensors");
  check_rejected(one(R"({"dtype":"F32","shape":[2]})"), "w", "no data_offsets", "field.safetensors");
  check_rejected(one(R"({"dtype":"F32","shape":[2],"data_offsets":[0,8],"extra":1})"), "w", "a field 'extra'", "field.safetensors");
  check_rejected(one(R"({"dtype":"F32","dtype":"F32","shape":[2],"data_offsets":[0,8]})"), "w", "'dtype' twice", "field.safetensors");
  check_rejected(one("[1]"), "w", "an object {dtype", "entry.safetensors");
  check_rejected(image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", d8),
                 "b", "overlapping", "overlap.safetensors");
  check_rejected(image(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", d8),
                 "a", "a unique tensor name", "dup.safetensors");
  check_rejected(image(R"({"__metadata__":{"k":1}})"), "", "string values in \"__metadata__\"", "meta.safetensors");
  check_rejected(image(R"({"__metadata__":[]})"), "", "\"__metadata__\" as an object", "meta.safetensors");
  check_rejected(image(R"({"__metadata__":{},"__metadata__":{}})"), "", "one \"__metadata__\"", "meta.safetensors");
  check_rejected(image(R"({"__metadata__":{"k":"a","k":"b"}})"), "", "unique keys", "meta.safetensors");
  // A missing file.
  const auto e = error_of([&] { safetensors_read(temp_file("does_not_exist.safetensors")); });
  CHECK(std::string(e.what()).find("cannot open") != std::string::npos);
  // A directory is not a file.
  CHECK_THROWS_AS(safetensors_read(temp_dir().string()), argument_error);
}

TEST_CASE("safetensors: random mutations only ever throw argument_error", "[io][safetensors]") {
  named_tensors t;
  t.insert("a", {3, 4}, tokmix_test::random_floats(12, 3));
  t.insert("b.weight", {5}, tokmix_test::random_floats(5, 4));
  t.insert("c", {0}, {});
  const auto base16 = safetensors_serialize(t, safetensors_dtype::bf16, {{"format", "pt"}});
  const auto base32 = safetensors_serialize(t, safetensors_dtype::f32);
  std::mt19937 gen(12345);
  int accepted = 0, rejected = 0;
  // Bytes JSON cares about, so mutations hit structure as well as noise.
  const unsigned char specials[] = {'{', '}', '[', ']', ',', ':', '"', '\\', '0', '9', '-', '.', 'e', ' ', 0, 0xff, 0x80};
  for (int iter = 0; iter < 3000; ++iter) {
    bytes b = iter % 2 ? base16 : base32;
    std::uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | b[static_cast<std::size_t>(i)];
    const int edits = 1 + static_cast<int>(gen() % 4);
    for (int k = 0; k < edits && !b.empty(); ++k) {
      const auto at = [&] { return static_cast<std::size_t>(gen() % b.size()); };
      const auto in_header = [&] { return static_cast<std::size_t>(8 + gen() % std::max<std::uint64_t>(1, n)); };
      switch (gen() % 8) {
        case 0: b[at()] ^= static_cast<unsigned char>(1u << (gen() % 8)); break;  // a flipped bit anywhere
        case 1: if (in_header() < b.size()) b[in_header()] = specials[gen() % sizeof(specials)]; break;
        case 2: b.resize(gen() % (b.size() + 1)); break;  // truncation
        case 3: b.insert(b.begin() + static_cast<std::ptrdiff_t>(at()), static_cast<unsigned char>(gen())); break;
        case 4: b.erase(b.begin() + static_cast<std::ptrdiff_t>(at())); break;
        case 5: {  // an absurd or slightly wrong header length
          const std::uint64_t len = gen() % 3 == 0 ? (std::uint64_t(gen()) << 32 | gen()) : n + (gen() % 17) - 8;
          for (int i = 0; i < 8 && i < static_cast<int>(b.size()); ++i) b[static_cast<std::size_t>(i)] = static_cast<unsigned char>(len >> (8 * i));
          break;
        }
        case 6: if (in_header() < b.size()) b[in_header()] = static_cast<unsigned char>('0' + gen() % 10); break;  // shapes / offsets
        default: {  // duplicate a slice of the header
          const std::size_t s0 = in_header(), len = gen() % 24;
          if (s0 + len <= b.size()) b.insert(b.begin() + static_cast<std::ptrdiff_t>(s0), b.begin() + static_cast<std::ptrdiff_t>(s0), b.begin() + static_cast<std::ptrdiff_t>(s0 + len));
        }
      }
    }
    try {
      const auto c = safetensors_parse(b.data(), b.size(), "fuzz");
      ++accepted;
      for (const auto& name : c.tensors.names()) {
        const auto& e = c.tensors.at(name);
        std::size_t count = 1;
        for (auto d : e.shape) count *= static_cast<std::size_t>(d);
        REQUIRE(count == e.data.size());
      }
    } catch (const argument_error&) {
      ++rejected;
    } catch (const std::exception& ex) {
      FAIL("iteration " << iter << ": not an argument_error: " << ex.what());
    }
    // Some through the file reader as well.
    if (iter % 30 == 0) {
      const std::string path = temp_file("fuzz.safetensors");
      write_bytes(path, b);
      try {
        safetensors_read(path);
      } catch (const argument_error&) {
      } catch (const std::exception& ex) {
        FAIL("file iteration " << iter << ": not an argument_error: " << ex.what());
      }
    }
  }
  CHECK(rejected > 2000);  // most mutations break something
  CHECK(accepted > 0);     // and a few (data bytes) do not
}

TEST_CASE("safetensors: failed writes leave nothing; names are checked", "[io][safetensors]") {
  named_tensors t;
  t.insert("x", {1}, {1.f});
  const std::string bad = (temp_dir() / "no_such_dir" / "w.safetensors").string();
  CHECK(error_of([&] { safetensors_write(bad, t); }).argument() == "path");
  CHECK(!fs::exists(bad));
  named_tensors reserved;
  reserved.insert("__metadata__", {1}, {1.f});
  const std::string path = temp_file("reserved.safetensors");
  CHECK(error_of([&] { safetensors_write(path, reserved); }).argument() == "tensor name");
  named_tensors not_utf8;
  not_utf8.insert("\xff", {1}, {1.f});
  CHECK(error_of([&] { safetensors_write(path, not_utf8); }).argument() == "tensor name");
  CHECK(error_of([&] { safetensors_write(path, t, safetensors_dtype::f32, {{"k", "\xc3"}}); }).argument() == "metadata value");
  CHECK(!fs::exists(path));
  // A failed write does not replace an existing file.
  safetensors_write(path, t);
  CHECK_THROWS_AS(safetensors_write(path, reserved), argument_error);
  CHECK(safetensors_load(path).at("x").data == std::vector<float>{1.f});
}

TEST_CASE("safetensors: MLP weights through a file", "[io][safetensors]") {
  const auto w = mlp_weights::random(mlp_config::swiglu(16, 24), 9);
  named_tensors t;
  w.save(t, "model.layers.0.mlp");
  const std::string path = temp_file("mlp.safetensors");
  safetensors_write(path, t, safetensors_dtype::f32, {{"format", "pt"}});
  const auto back = mlp_weights::load(safetensors_load(path), "model.layers.0.mlp", w.config);
  const auto x = tokmix_test::random_floats(3 * 16, 5);
  std::vector<float> y1(3 * 16), y2(3 * 16);
  mlp_forward(w, tensor_view<const float, 2>(x.data(), {3, 16}), tensor_view<float, 2>(y1.data(), {3, 16}));
  mlp_forward(back, tensor_view<const float, 2>(x.data(), {3, 16}), tensor_view<float, 2>(y2.data(), {3, 16}));
  CHECK(y1 == y2);
}
