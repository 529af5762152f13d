#pragma once
// A small strict JSON reader (RFC 8259) for file headers such as
// safetensors': tokmix takes no JSON dependency, and a header is untrusted
// input, so the reader is bounded (nesting depth, no recursion past it),
// rejects everything the RFC does not allow (trailing commas, leading zeros,
// control characters and invalid UTF-8 in strings, lone surrogates, text
// after the value) and reports the byte offset of the first error. Numbers
// are kept as their text; json_uint parses the non-negative integers headers
// use for shapes and offsets, with overflow checks. Object members keep their
// order and duplicates, so the caller decides what a repeated key means.
//
// ref: T. Bray (ed.), "The JavaScript Object Notation (JSON) Data Interchange
//      Format", RFC 8259, 2017; Unicode 15, table 3-7 (well-formed UTF-8).

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace tokmix {
namespace detail {

struct json_value {
  enum class kind { null, boolean, number, string, array, object };
  kind type = kind::null;
  bool boolean = false;
  std::string text;  // string contents (UTF-8) or the number's literal
  std::vector<json_value> items;
  std::vector<std::pair<std::string, json_value>> members;
  std::size_t offset = 0;  // where the value starts in the input

  bool is(kind k) const { return type == k; }
};

inline const char* json_kind_name(json_value::kind k) {
  switch (k) {
    case json_value::kind::null: return "null";
    case json_value::kind::boolean: return "a boolean";
    case json_value::kind::number: return "a number";
    case json_value::kind::string: return "a string";
    case json_value::kind::array: return "an array";
    case json_value::kind::object: return "an object";
  }
  return "a value";
}

// What went wrong and where; the caller turns it into its own error.
struct json_error {
  std::size_t offset;
  std::string message;
};

// Length of the well-formed UTF-8 sequence at p (lead byte >= 0x80, `avail`
// bytes readable), or 0 if it is not one: no overlong forms, no UTF-16
// surrogates, nothing above U+10FFFF.
inline std::size_t utf8_sequence_length(const char* p, std::size_t avail) {
  const auto b0 = static_cast<unsigned char>(p[0]);
  std::size_t n = 0;
  unsigned lo = 0x80, hi = 0xbf;  // allowed range of the second byte
  if (b0 >= 0xc2 && b0 <= 0xdf) n = 1;
  else if (b0 == 0xe0) n = 2, lo = 0xa0;
  else if ((b0 >= 0xe1 && b0 <= 0xec) || b0 == 0xee || b0 == 0xef) n = 2;
  else if (b0 == 0xed) n = 2, hi = 0x9f;
  else if (b0 == 0xf0) n = 3, lo = 0x90;
  else if (b0 >= 0xf1 && b0 <= 0xf3) n = 3;
  else if (b0 == 0xf4) n = 3, hi = 0x8f;
  else return 0;
  if (avail <= n) return 0;
  for (std::size_t i = 1; i <= n; ++i) {
    const auto b = static_cast<unsigned char>(p[i]);
    if (b < (i == 1 ? lo : 0x80u) || b > (i == 1 ? hi : 0xbfu)) return 0;
  }
  return n + 1;
}

class json_reader {
 public:
  static constexpr int max_depth = 64;

  json_reader(const char* data, std::size_t size) : p_(data), begin_(data), end_(data + size) {}

  // The one value the input holds (surrounded by whitespace at most).
  json_value parse_document() {
    skip_ws();
    json_value v = parse_value(0);
    skip_ws();
    if (p_ != end_) fail("text after the JSON value");
    return v;
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    throw json_error{static_cast<std::size_t>(p_ - begin_), what};
  }

  void skip_ws() {
    while (p_ != end_ && (*p_ == ' ' || *p_ == '\t' || *p_ == '\n' || *p_ == '\r')) ++p_;
  }

  json_value parse_value(int depth) {
    if (p_ == end_) fail("end of input where a value was expected");
    json_value v;
    v.offset = static_cast<std::size_t>(p_ - begin_);
    switch (*p_) {
      case '{': parse_object(v, depth + 1); break;
      case '[': parse_array(v, depth + 1); break;
      case '"':
        v.type = json_value::kind::string;
        v.text = parse_string();
        break;
      case 't': literal("true"), v.type = json_value::kind::boolean, v.boolean = true; break;
      case 'f': literal("false"), v.type = json_value::kind::boolean; break;
      case 'n': literal("null"); break;
      default:
        if (*p_ == '-' || (*p_ >= '0' && *p_ <= '9')) {
          v.type = json_value::kind::number;
          v.text = parse_number();
        } else {
          fail(std::string("unexpected character ") + describe(*p_));
        }
    }
    return v;
  }

  static std::string describe(char c) {
    const auto u = static_cast<unsigned char>(c);
    if (u >= 0x20 && u < 0x7f) return std::string("'") + c + "'";
    static const char* hex = "0123456789abcdef";
    return std::string("byte 0x") + hex[u >> 4] + hex[u & 15];
  }

  void literal(const char* word) {
    for (const char* w = word; *w; ++w, ++p_)
      if (p_ == end_ || *p_ != *w) fail(std::string("invalid literal (expected '") + word + "')");
  }

  void parse_object(json_value& v, int depth) {
    if (depth > max_depth) fail("nesting deeper than " + std::to_string(max_depth));
    v.type = json_value::kind::object;
    ++p_;  // '{'
    skip_ws();
    if (p_ != end_ && *p_ == '}') {
      ++p_;
      return;
    }
    for (;;) {
      skip_ws();
      if (p_ == end_ || *p_ != '"') fail("a string key expected in an object");
      std::string key = parse_string();
      skip_ws();
      if (p_ == end_ || *p_ != ':') fail("':' expected after an object key");
      ++p_;
      skip_ws();
      json_value member = parse_value(depth);
      v.members.emplace_back(std::move(key), std::move(member));
      skip_ws();
      if (p_ == end_) fail("end of input inside an object");
      if (*p_ == ',') {
        ++p_;
        continue;
      }
      if (*p_ == '}') {
        ++p_;
        return;
      }
      fail("',' or '}' expected in an object");
    }
  }

  void parse_array(json_value& v, int depth) {
    if (depth > max_depth) fail("nesting deeper than " + std::to_string(max_depth));
    v.type = json_value::kind::array;
    ++p_;  // '['
    skip_ws();
    if (p_ != end_ && *p_ == ']') {
      ++p_;
      return;
    }
    for (;;) {
      skip_ws();
      v.items.push_back(parse_value(depth));
      skip_ws();
      if (p_ == end_) fail("end of input inside an array");
      if (*p_ == ',') {
        ++p_;
        continue;
      }
      if (*p_ == ']') {
        ++p_;
        return;
      }
      fail("',' or ']' expected in an array");
    }
  }

  std::string parse_number() {
    const char* start = p_;
    if (*p_ == '-') ++p_;
    if (p_ == end_ || !digit(*p_)) fail("a digit expected in a number");
    if (*p_ == '0') {
      ++p_;
      if (p_ != end_ && digit(*p_)) fail("a leading zero in a number");
    } else {
      while (p_ != end_ && digit(*p_)) ++p_;
    }
    if (p_ != end_ && *p_ == '.') {
      ++p_;
      if (p_ == end_ || !digit(*p_)) fail("a digit expected after '.'");
      while (p_ != end_ && digit(*p_)) ++p_;
    }
    if (p_ != end_ && (*p_ == 'e' || *p_ == 'E')) {
      ++p_;
      if (p_ != end_ && (*p_ == '+' || *p_ == '-')) ++p_;
      if (p_ == end_ || !digit(*p_)) fail("a digit expected in an exponent");
      while (p_ != end_ && digit(*p_)) ++p_;
    }
    return std::string(start, p_);
  }

  static bool digit(char c) { return c >= '0' && c <= '9'; }

  unsigned hex4() {
    unsigned v = 0;
    for (int i = 0; i < 4; ++i, ++p_) {
      if (p_ == end_) fail("end of input in a \\u escape");
      const char c = *p_;
      v <<= 4;
      if (c >= '0' && c <= '9') v |= static_cast<unsigned>(c - '0');
      else if (c >= 'a' && c <= 'f') v |= static_cast<unsigned>(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F') v |= static_cast<unsigned>(c - 'A' + 10);
      else fail("a hex digit expected in a \\u escape");
    }
    return v;
  }

  static void put_utf8(std::string& out, unsigned cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xc0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3f));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xe0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
      out += static_cast<char>(0x80 | (cp & 0x3f));
    } else {
      out += static_cast<char>(0xf0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3f));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
      out += static_cast<char>(0x80 | (cp & 0x3f));
    }
  }

  std::string parse_string() {
    ++p_;  // opening quote
    std::string out;
    for (;;) {
      if (p_ == end_) fail("end of input inside a string");
      const auto c = static_cast<unsigned char>(*p_);
      if (c == '"') {
        ++p_;
        return out;
      }
      if (c < 0x20) fail("an unescaped control character in a string");
      if (c >= 0x80) {
        const std::size_t n = utf8_sequence_length(p_, static_cast<std::size_t>(end_ - p_));
        if (n == 0) fail("invalid UTF-8 in a string");
        out.append(p_, n);
        p_ += n;
        continue;
      }
      if (c != '\\') {
        out += static_cast<char>(c);
        ++p_;
        continue;
      }
      ++p_;
      if (p_ == end_) fail("end of input in an escape");
      const char e = *p_++;
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          unsigned cp = hex4();
          if (cp >= 0xdc00 && cp <= 0xdfff) fail("a lone low surrogate in a \\u escape");
          if (cp >= 0xd800 && cp <= 0xdbff) {
            if (end_ - p_ < 2 || p_[0] != '\\' || p_[1] != 'u') fail("a high surrogate without its low half");
            p_ += 2;
            const unsigned low = hex4();
            if (low < 0xdc00 || low > 0xdfff) fail("a high surrogate without its low half");
            cp = 0x10000 + ((cp - 0xd800) << 10) + (low - 0xdc00);
          }
          put_utf8(out, cp);
          break;
        }
        default: --p_, fail("an invalid escape in a string");
      }
    }
  }

  const char* p_;
  const char* begin_;
  const char* end_;
};

// A number literal that is a non-negative integer without fraction or
// exponent, fitting 64 bits; false otherwise (value untouched).
inline bool json_uint(const json_value& v, std::uint64_t& value) {
  if (!v.is(json_value::kind::number) || v.text.empty()) return false;
  std::uint64_t x = 0;
  for (char c : v.text) {
    if (c < '0' || c > '9') return false;
    const auto d = static_cast<std::uint64_t>(c - '0');
    if (x > (UINT64_MAX - d) / 10) return false;
    x = x * 10 + d;
  }
  value = x;
  return true;
}

// Well-formed UTF-8 (what json_reader accepts inside strings).
inline bool json_valid_utf8(const std::string& s) {
  for (std::size_t i = 0; i < s.size();) {
    if (static_cast<unsigned char>(s[i]) < 0x80) {
      ++i;
      continue;
    }
    const std::size_t n = utf8_sequence_length(s.data() + i, s.size() - i);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

// s as a JSON string literal (quotes included); s must be valid UTF-8.
inline std::string json_quote(const std::string& s) {
  static const char* hex = "0123456789abcdef";
  std::string out = "\"";
  for (char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (c == '"') out += "\\\"";
    else if (c == '\\') out += "\\\\";
    else if (c < 0x20) {
      out += "\\u00";
      out += hex[c >> 4];
      out += hex[c & 15];
    } else {
      out += ch;
    }
  }
  return out + "\"";
}

}  // namespace detail
}  // namespace tokmix
