#pragma once
// safetensors files <-> named_tensors: the weights of Hugging Face models on
// disk, loaded as fp32 tensors by name (layers then read them with the shapes
// they expect, core/named_tensors.hpp), and tokmix weights written back.
//
// Format: 8 bytes little-endian N, then N bytes of JSON
//   {"<name>": {"dtype": "F16", "shape": [4096, 1024], "data_offsets": [begin, end]}, ...,
//    "__metadata__": {"<key>": "<value>", ...}}          (metadata optional, strings only)
// then the data: tensor bytes at [begin, end) relative to the byte after the
// header, row-major, little-endian. F32, F16 and BF16 are read (widened to
// fp32 exactly, simd/convert.hpp); written as F32, F16 or BF16 (rounded to
// nearest even). Tensors of other dtypes (I64 position ids, F64, ...) throw,
// or are skipped and listed when read with skip_other_dtypes.
//
// A file is untrusted input: the whole header is validated before anything
// is allocated for data, and every problem throws argument_error naming the
// file and the tensor: file shorter than 8 bytes, header length beyond the
// file or the 100 MB limit, malformed JSON (strict RFC 8259 reader,
// io/detail/json.hpp), unknown or unsupported dtype, shapes that are not
// arrays of non-negative integers, offsets out of range, overlapping or
// leaving holes / trailing bytes, byte sizes != product(shape) * dtype size,
// duplicate names. Allocation is bounded by the file's size.
//
// ref: Hugging Face safetensors format specification (github.com/huggingface/safetensors,
//      README "Format"); its reference reader's checks (contiguous offsets, header limit).

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "tokmix/core/third_party.hpp"
#include "tokmix/simd/arch.hpp"

#include "tokmix/core/error.hpp"
#include "tokmix/core/named_tensors.hpp"
#include "tokmix/io/detail/json.hpp"
#include "tokmix/simd/convert.hpp"

namespace tokmix {

enum class safetensors_dtype { f32, f16, bf16 };

inline const char* safetensors_dtype_name(safetensors_dtype t) {
  switch (t) {
    case safetensors_dtype::f32: return "F32";
    case safetensors_dtype::f16: return "F16";
    case safetensors_dtype::bf16: return "BF16";
  }
  return "?";
}

// The reference reader's limit on the JSON header (100 MB).
constexpr std::uint64_t safetensors_max_header_bytes = 100000000;

struct safetensors_read_options {
  // Skip (and list) tensors whose dtype is valid but not F32/F16/BF16,
  // instead of throwing. Their offsets and sizes are still validated.
  bool skip_other_dtypes = false;
};

struct safetensors_contents {
  named_tensors tensors;                        // fp32, by name
  std::map<std::string, std::string> metadata;  // "__metadata__"
  std::vector<std::string> skipped;             // names of tensors not read (skip_other_dtypes)
  std::map<std::string, safetensors_dtype> dtypes;  // the stored dtype of every tensor read
};

namespace detail {

struct safetensors_entry {
  std::string name;
  std::string dtype;
  std::vector<index_t> shape;
  std::uint64_t begin = 0, end = 0;
  std::size_t elements = 0;
  int width = 0;      // bytes per element
  bool read = false;  // F32 / F16 / BF16 (else skipped)
};

struct safetensors_header {
  std::vector<safetensors_entry> entries;  // sorted by data_offsets
  std::map<std::string, std::string> metadata;
};

// Element width of every dtype the format defines (0: unknown).
inline int safetensors_dtype_width(const std::string& t) {
  static const std::pair<const char*, int> table[] = {
      {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E5M2", 1}, {"F8_E4M3", 1}, {"I16", 2}, {"U16", 2}, {"F16", 2},
      {"BF16", 2}, {"I32", 4}, {"U32", 4}, {"F32", 4},     {"F64", 8},     {"I64", 8}, {"U64", 8}};
  for (const auto& e : table)
    if (t == e.first) return e.second;
  return 0;
}

class safetensors_errors {
 public:
  explicit safetensors_errors(std::string source) : file_("safetensors file '" + std::move(source) + "'") {}
  [[noreturn]] void file(const std::string& expected, const std::string& actual) const {
    throw argument_error(file_, expected, actual);
  }
  [[noreturn]] void tensor(const std::string& name, const std::string& expected, const std::string& actual) const {
    throw argument_error(file_ + ", tensor '" + printable(name) + "'", expected, actual);
  }
  // Names go into messages; control bytes are shown escaped.
  static std::string printable(const std::string& s) {
    std::string out;
    for (char c : s) {
      if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
        static const char* hex = "0123456789abcdef";
        out += "\\x";
        out += hex[(static_cast<unsigned char>(c) >> 4) & 15];
        out += hex[static_cast<unsigned char>(c) & 15];
      } else {
        out += c;
      }
    }
    return out.size() > 200 ? out.substr(0, 200) + "..." : out;
  }

 private:
  std::string file_;
};

inline std::uint64_t safetensors_read_u64le(const unsigned char* b) {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | b[i];
  return v;
}

// Validates the header JSON against a data section of data_size bytes.
inline safetensors_header safetensors_parse_header(const char* json, std::size_t n, std::uint64_t data_size,
                                                   const safetensors_errors& err, const safetensors_read_options& opt) {
  json_value root;
  try {
    root = json_reader(json, n).parse_document();
  } catch (const json_error& e) {
    err.file("a valid JSON header", e.message + " at header byte " + std::to_string(e.offset));
  }
  if (!root.is(json_value::kind::object)) err.file("a JSON object as the header", json_kind_name(root.type));
  safetensors_header h;
  std::vector<std::string> names;
  bool have_metadata = false;
  for (auto& m : root.members) {
    const std::string& name = m.first;
    json_value& v = m.second;
    if (name == "__metadata__") {
      if (have_metadata) err.file("one \"__metadata__\" entry", "two");
      have_metadata = true;
      if (!v.is(json_value::kind::object)) err.file("\"__metadata__\" as an object of strings", json_kind_name(v.type));
      for (auto& kv : v.members) {
        if (!kv.second.is(json_value::kind::string))
          err.file("string values in \"__metadata__\"", std::string(json_kind_name(kv.second.type)) + " for key '" +
                                                            safetensors_errors::printable(kv.first) + "'");
        if (h.metadata.count(kv.first))
          err.file("unique keys in \"__metadata__\"", "'" + safetensors_errors::printable(kv.first) + "' twice");
        h.metadata.emplace(kv.first, std::move(kv.second.text));
      }
      continue;
    }
    names.push_back(name);
    if (!v.is(json_value::kind::object))
      err.tensor(name, "an object {dtype, shape, data_offsets}", json_kind_name(v.type));
    const json_value *dtype = nullptr, *shape = nullptr, *offsets = nullptr;
    for (const auto& f : v.members) {
      const json_value** slot = f.first == "dtype" ? &dtype
                                : f.first == "shape" ? &shape
                                : f.first == "data_offsets" ? &offsets
                                                            : nullptr;
      if (!slot) err.tensor(name, "only the fields dtype, shape, data_offsets", "a field '" + safetensors_errors::printable(f.first) + "'");
      if (*slot) err.tensor(name, "each field once", "'" + f.first + "' twice");
      *slot = &f.second;
    }
    if (!dtype || !shape || !offsets)
      err.tensor(name, "the fields dtype, shape and data_offsets", std::string("no ") + (!dtype ? "dtype" : !shape ? "shape" : "data_offsets"));
    safetensors_entry e;
    e.name = name;
    if (!dtype->is(json_value::kind::string)) err.tensor(name, "a dtype string", json_kind_name(dtype->type));
    e.dtype = dtype->text;
    e.width = safetensors_dtype_width(e.dtype);
    if (e.width == 0) err.tensor(name, "a safetensors dtype (F32, F16, BF16, ...)", "unknown dtype '" + safetensors_errors::printable(e.dtype) + "'");
    e.read = e.dtype == "F32" || e.dtype == "F16" || e.dtype == "BF16";
    if (!e.read && !opt.skip_other_dtypes)
      err.tensor(name, "dtype F32, F16 or BF16 (or skip_other_dtypes)", "dtype " + e.dtype);
    if (!shape->is(json_value::kind::array)) err.tensor(name, "shape as an array of non-negative integers", json_kind_name(shape->type));
    // Element count with overflow checks; the byte size must also fit.
    std::uint64_t count = 1;
    bool overflow = false;
    for (const auto& d : shape->items) {
      std::uint64_t x = 0;
      if (!json_uint(d, x) || x > static_cast<std::uint64_t>(INT64_MAX))
        err.tensor(name, "shape entries that are non-negative integers",
                   d.is(json_value::kind::number) ? d.text : std::string(json_kind_name(d.type)));
      e.shape.push_back(static_cast<index_t>(x));
      if (x != 0 && count > UINT64_MAX / x) overflow = true;
      else count *= x;
    }
    if (std::find(e.shape.begin(), e.shape.end(), index_t(0)) != e.shape.end()) overflow = false, count = 0;
    if (overflow || count > UINT64_MAX / static_cast<std::uint64_t>(e.width))
      err.tensor(name, "a shape whose byte size fits 64 bits", "shape " + shape_text(e.shape));
    if (!offsets->is(json_value::kind::array) || offsets->items.size() != 2)
      err.tensor(name, "data_offsets as [begin, end]",
                 offsets->is(json_value::kind::array) ? std::to_string(offsets->items.size()) + " entries"
                                                      : std::string(json_kind_name(offsets->type)));
    if (!json_uint(offsets->items[0], e.begin) || !json_uint(offsets->items[1], e.end))
      err.tensor(name, "data_offsets that are non-negative integers",
                 "[" + offsets->items[0].text + ", " + offsets->items[1].text + "]");
    const std::string range = "[" + std::to_string(e.begin) + ", " + std::to_string(e.end) + ")";
    if (e.begin > e.end) err.tensor(name, "data_offsets with begin <= end", range);
    if (e.end > data_size)
      err.tensor(name, "data_offsets within the " + std::to_string(data_size) + " data bytes", range);
    const std::uint64_t bytes = count * static_cast<std::uint64_t>(e.width);
    if (e.end - e.begin != bytes)
      err.tensor(name, std::to_string(bytes) + " bytes (shape " + shape_text(e.shape) + " x " + std::to_string(e.width) +
                           "-byte " + e.dtype + ")",
                 std::to_string(e.end - e.begin) + " bytes " + range);
    e.elements = static_cast<std::size_t>(count);
    h.entries.push_back(std::move(e));
  }
  std::sort(names.begin(), names.end());
  const auto dup = std::adjacent_find(names.begin(), names.end());
  if (dup != names.end()) err.tensor(*dup, "a unique tensor name", "two entries with this name");
  // The data section is exactly the tensors, back to back (in offset order).
  std::stable_sort(h.entries.begin(), h.entries.end(), [](const safetensors_entry& a, const safetensors_entry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  std::uint64_t at = 0;
  for (const auto& e : h.entries) {
    const std::string range = "[" + std::to_string(e.begin) + ", " + std::to_string(e.end) + ")";
    if (e.begin < at)
      err.tensor(e.name, "data not overlapping another tensor's", "data " + range + " overlapping bytes before " + std::to_string(at));
    if (e.begin > at)
      err.tensor(e.name, "data starting where the previous tensor's ends (byte " + std::to_string(at) + ")",
                 "data " + range + " (a hole of " + std::to_string(e.begin - at) + " bytes)");
    at = e.end;
  }
  if (at != data_size)
    err.file("a data section of exactly the tensors' " + std::to_string(at) + " bytes",
             std::to_string(data_size) + " bytes (trailing bytes after the last tensor)");
  return h;
}

inline bool safetensors_host_little_endian() {
  const std::uint16_t probe = 1;
  unsigned char b;
  std::memcpy(&b, &probe, 1);
  return b == 1;
}

// n little-endian elements of `dtype` at src -> fp32. src may be unaligned.
inline void safetensors_decode(const std::string& dtype, const unsigned char* src, std::size_t n, float* dst) {
  if (n == 0) return;  // dst may be null (an empty vector's data())
  const bool le = safetensors_host_little_endian();
  if (dtype == "F32") {
    std::memcpy(dst, src, n * 4);
    if (!le)
      for (std::size_t i = 0; i < n; ++i) {
        std::uint32_t u;
        std::memcpy(&u, dst + i, 4);
        u = (u >> 24) | ((u >> 8) & 0xff00u) | ((u << 8) & 0xff0000u) | (u << 24);
        std::memcpy(dst + i, &u, 4);
      }
    return;
  }
  // 16-bit: in place when aligned on a little-endian host, else through an
  // aligned, host-order staging block.
  if (le && reinterpret_cast<std::uintptr_t>(src) % alignof(std::uint16_t) == 0) {
    if (dtype == "F16") simd::convert(reinterpret_cast<const Eigen::half*>(src), dst, static_cast<index_t>(n));
    else simd::convert(reinterpret_cast<const Eigen::bfloat16*>(src), dst, static_cast<index_t>(n));
    return;
  }
  constexpr std::size_t block = 4096;
  std::uint16_t stage[block];
  for (std::size_t i = 0; i < n; i += block) {
    const std::size_t m = std::min(block, n - i);
    std::memcpy(stage, src + 2 * i, 2 * m);
    if (!le)
      for (std::size_t j = 0; j < m; ++j) stage[j] = static_cast<std::uint16_t>((stage[j] >> 8) | (stage[j] << 8));
    if (dtype == "F16") simd::convert(reinterpret_cast<const Eigen::half*>(stage), dst + i, static_cast<index_t>(m));
    else simd::convert(reinterpret_cast<const Eigen::bfloat16*>(stage), dst + i, static_cast<index_t>(m));
  }
}

inline void safetensors_store(safetensors_header& h, safetensors_contents& out,
                              const std::vector<std::vector<float>*>& data) {
  for (std::size_t i = 0; i < h.entries.size(); ++i) {
    auto& e = h.entries[i];
    if (!e.read) continue;
    out.dtypes[e.name] = e.dtype == "F32" ? safetensors_dtype::f32
                         : e.dtype == "F16" ? safetensors_dtype::f16
                                            : safetensors_dtype::bf16;
    out.tensors.insert(e.name, std::move(e.shape), std::move(*data[i]));
  }
  for (const auto& e : h.entries)
    if (!e.read) out.skipped.push_back(e.name);
  std::sort(out.skipped.begin(), out.skipped.end());
  out.metadata = std::move(h.metadata);
}

struct safetensors_file_closer {
  void operator()(std::FILE* f) const {
    if (f) std::fclose(f);
  }
};

}  // namespace detail

// A safetensors image in memory. `source` names it in error messages.
inline safetensors_contents safetensors_parse(const void* bytes, std::size_t size, const std::string& source = "<memory>",
                                              const safetensors_read_options& opt = {}) {
  const detail::safetensors_errors err(source);
  if (size < 8) err.file("at least 8 bytes (the header length)", std::to_string(size) + " bytes");
  const auto* b = static_cast<const unsigned char*>(bytes);
  const std::uint64_t n = detail::safetensors_read_u64le(b);
  if (n > size - 8)
    err.file("a header length within the file (" + std::to_string(size - 8) + " bytes after the length)",
             std::to_string(n));
  if (n > safetensors_max_header_bytes)
    err.file("a header of at most " + std::to_string(safetensors_max_header_bytes) + " bytes", std::to_string(n));
  auto h = detail::safetensors_parse_header(reinterpret_cast<const char*>(b + 8), static_cast<std::size_t>(n),
                                            size - 8 - n, err, opt);
  const unsigned char* data = b + 8 + n;
  std::vector<std::vector<float>> values(h.entries.size());
  std::vector<std::vector<float>*> ptrs(h.entries.size());
  for (std::size_t i = 0; i < h.entries.size(); ++i) {
    const auto& e = h.entries[i];
    ptrs[i] = &values[i];
    if (!e.read) continue;
    values[i].resize(e.elements);
    detail::safetensors_decode(e.dtype, data + e.begin, e.elements, values[i].data());
  }
  safetensors_contents out;
  detail::safetensors_store(h, out, ptrs);
  return out;
}

// Reads a safetensors file: the header first (validated as a whole), then
// each tensor's bytes in file order straight into its fp32 buffer.
inline safetensors_contents safetensors_read(const std::string& path, const safetensors_read_options& opt = {}) {
  const detail::safetensors_errors err(path);
  std::unique_ptr<std::FILE, detail::safetensors_file_closer> f(std::fopen(path.c_str(), "rb"));
  if (!f) err.file("a readable file", std::string("cannot open it: ") + std::strerror(errno));
  if (std::fseek(f.get(), 0, SEEK_END) != 0) err.file("a seekable regular file", "fseek failed");
  const long end = std::ftell(f.get());
  if (end < 0) err.file("a seekable regular file", "ftell failed");
  std::rewind(f.get());
  const auto size = static_cast<std::uint64_t>(end);
  auto read_exact = [&](void* dst, std::size_t n, const char* what) {
    if (n != 0 && std::fread(dst, 1, n, f.get()) != n)
      err.file(std::string("readable ") + what, "a short read (the file changed or an I/O error)");
  };
  if (size < 8) err.file("at least 8 bytes (the header length)", std::to_string(size) + " bytes");
  unsigned char len[8];
  read_exact(len, 8, "header length");
  const std::uint64_t n = detail::safetensors_read_u64le(len);
  if (n > size - 8)
    err.file("a header length within the file (" + std::to_string(size - 8) + " bytes after the length)",
             std::to_string(n));
  if (n > safetensors_max_header_bytes)
    err.file("a header of at most " + std::to_string(safetensors_max_header_bytes) + " bytes", std::to_string(n));
  std::string json(static_cast<std::size_t>(n), '\0');
  read_exact(&json[0], json.size(), "header");
  auto h = detail::safetensors_parse_header(json.data(), json.size(), size - 8 - n, err, opt);
  std::vector<std::vector<float>> values(h.entries.size());
  std::vector<std::vector<float>*> ptrs(h.entries.size());
  std::vector<unsigned char> stage;
  // Entries are contiguous in offset order, so the file is read front to back;
  // skipped tensors are stepped over.
  for (std::size_t i = 0; i < h.entries.size(); ++i) {
    const auto& e = h.entries[i];
    ptrs[i] = &values[i];
    const std::uint64_t bytes = e.end - e.begin;
    if (!e.read) {
      if (bytes && std::fseek(f.get(), static_cast<long>(8 + n + e.end), SEEK_SET) != 0)
        err.tensor(e.name, "a seekable file", "fseek failed");
      continue;
    }
    values[i].resize(e.elements);
    if (e.dtype == "F32" && detail::safetensors_host_little_endian()) {
      read_exact(values[i].data(), static_cast<std::size_t>(bytes), "tensor data");
      continue;
    }
    // 16-bit (or big-endian hosts): 1 MiB at a time through a staging buffer.
    constexpr std::size_t chunk_elems = std::size_t(1) << 19;
    stage.resize(std::min<std::size_t>(e.elements, chunk_elems) * static_cast<std::size_t>(e.width));
    for (std::size_t j = 0; j < e.elements; j += chunk_elems) {
      const std::size_t m = std::min(chunk_elems, e.elements - j);
      read_exact(stage.data(), m * static_cast<std::size_t>(e.width), "tensor data");
      detail::safetensors_decode(e.dtype, stage.data(), m, values[i].data() + j);
    }
  }
  safetensors_contents out;
  detail::safetensors_store(h, out, ptrs);
  return out;
}

// The tensors of a file, fp32 by name.
inline named_tensors safetensors_load(const std::string& path) { return safetensors_read(path).tensors; }

// The bytes of a safetensors file holding every tensor of `t` (sorted by
// name) as `dtype`, with `metadata`. Throws (and produces nothing) for a
// tensor named "__metadata__" or names / metadata that are not valid UTF-8.
inline std::vector<unsigned char> safetensors_serialize(const named_tensors& t,
                                                        safetensors_dtype dtype = safetensors_dtype::f32,
                                                        const std::map<std::string, std::string>& metadata = {}) {
  const int width = dtype == safetensors_dtype::f32 ? 4 : 2;
  const auto names = t.names();
  for (const auto& name : names) {
    require(name != "__metadata__", "tensor name", "any name but \"__metadata__\" (reserved by the format)", name);
    require(detail::json_valid_utf8(name), "tensor name", "valid UTF-8", detail::safetensors_errors::printable(name));
  }
  for (const auto& kv : metadata) {
    require(detail::json_valid_utf8(kv.first), "metadata key", "valid UTF-8", detail::safetensors_errors::printable(kv.first));
    require(detail::json_valid_utf8(kv.second), "metadata value", "valid UTF-8",
            "the value of '" + detail::safetensors_errors::printable(kv.first) + "'");
  }
  std::string json = "{";
  if (!metadata.empty()) {
    json += "\"__metadata__\":{";
    bool first = true;
    for (const auto& kv : metadata) {
      json += (first ? "" : ",") + detail::json_quote(kv.first) + ":" + detail::json_quote(kv.second);
      first = false;
    }
    json += "}";
  }
  std::uint64_t at = 0;
  for (const auto& name : names) {
    const auto& e = t.at(name);
    const std::uint64_t bytes = static_cast<std::uint64_t>(e.data.size()) * static_cast<std::uint64_t>(width);
    json += (json.size() > 1 ? "," : "") + detail::json_quote(name) + ":{\"dtype\":\"" + safetensors_dtype_name(dtype) +
            "\",\"shape\":[";
    for (std::size_t i = 0; i < e.shape.size(); ++i) json += (i ? "," : "") + std::to_string(e.shape[i]);
    json += "],\"data_offsets\":[" + std::to_string(at) + "," + std::to_string(at + bytes) + "]}";
    at += bytes;
  }
  json += "}";
  // Pad with spaces so the data starts 8-byte aligned (as the reference writer does).
  while ((json.size() + 8) % 8 != 0) json += ' ';
  std::vector<unsigned char> out(8 + json.size() + static_cast<std::size_t>(at));
  const std::uint64_t n = json.size();
  for (int i = 0; i < 8; ++i) out[static_cast<std::size_t>(i)] = static_cast<unsigned char>(n >> (8 * i));
  std::memcpy(out.data() + 8, json.data(), json.size());
  unsigned char* data = out.data() + 8 + json.size();
  const bool le = detail::safetensors_host_little_endian();
  std::vector<std::uint16_t> half;
  for (const auto& name : names) {
    const auto& v = t.at(name).data;
    if (v.empty()) continue;  // data() may be null
    if (dtype == safetensors_dtype::f32) {
      std::memcpy(data, v.data(), v.size() * 4);
      if (!le)
        for (std::size_t i = 0; i < v.size(); ++i) std::reverse(data + 4 * i, data + 4 * i + 4);
    } else {
      half.resize(v.size());
      if (dtype == safetensors_dtype::f16)
        simd::convert(v.data(), reinterpret_cast<Eigen::half*>(half.data()), static_cast<index_t>(v.size()));
      else
        simd::convert(v.data(), reinterpret_cast<Eigen::bfloat16*>(half.data()), static_cast<index_t>(v.size()));
      for (std::size_t i = 0; i < v.size(); ++i) {
        data[2 * i] = static_cast<unsigned char>(half[i] & 0xff);
        data[2 * i + 1] = static_cast<unsigned char>(half[i] >> 8);
      }
    }
    data += v.size() * static_cast<std::size_t>(width);
  }
  return out;
}

// Writes safetensors_serialize(t, dtype, metadata) to `path`, through a
// temporary file renamed into place, so a failed write leaves no partial file
// (and an existing file at `path` is replaced only on success).
inline void safetensors_write(const std::string& path, const named_tensors& t,
                              safetensors_dtype dtype = safetensors_dtype::f32,
                              const std::map<std::string, std::string>& metadata = {}) {
  const auto bytes = safetensors_serialize(t, dtype, metadata);
  const std::string tmp = path + ".tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) throw argument_error("path", "a writable location", "'" + tmp + "': " + std::strerror(errno));
  const bool ok = std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size();
  const bool closed = std::fclose(f) == 0;
  if (!ok || !closed || std::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string why = std::strerror(errno);
    std::remove(tmp.c_str());
    throw argument_error("path", "a location where " + std::to_string(bytes.size()) + " bytes can be written",
                         "'" + path + "': " + why);
  }
}

}  // namespace tokmix
