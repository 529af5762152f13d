#pragma once
// Named fp32 tensors: the one currency in which layers take and give weights.
// A safetensors file loads into one (io/safetensors.hpp), a layer reads its
// tensors by name with the shape it expects, and a model built from a seed
// exports its weights as one, so the two paths meet in the same checks.

#include <algorithm>
#include <cstddef>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "tokmix/core/error.hpp"
#include "tokmix/core/tensor_view.hpp"

namespace tokmix {

inline std::string shape_text(const std::vector<index_t>& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

class named_tensors {
 public:
  struct entry {
    std::vector<index_t> shape;
    std::vector<float> data;  // row-major, product(shape) elements
  };

  // Adds a tensor; a duplicate name or a data size that is not the shape's
  // product throws (and adds nothing).
  void insert(const std::string& name, std::vector<index_t> shape, std::vector<float> data) {
    std::size_t n = 1;
    for (index_t d : shape) {
      require(d >= 0, ("tensor '" + name + "' shape").c_str(), "non-negative extents", shape_text(shape));
      n *= static_cast<std::size_t>(d);
    }
    require(data.size() == n, ("tensor '" + name + "' data").c_str(),
            std::to_string(n) + " values for shape " + shape_text(shape), std::to_string(data.size()) + " values");
    require(map_.count(name) == 0, "tensor name", "a name not yet present", "'" + name + "' twice");
    map_.emplace(name, entry{std::move(shape), std::move(data)});
  }

  bool contains(const std::string& name) const { return map_.count(name) != 0; }
  std::size_t size() const { return map_.size(); }
  bool empty() const { return map_.empty(); }

  const entry& at(const std::string& name) const {
    const auto it = map_.find(name);
    if (it == map_.end()) throw argument_error("weights", "a tensor named '" + name + "'", missing_text());
    return it->second;
  }

  // The tensor `name`, required to have exactly `expected` as its shape.
  const entry& at(const std::string& name, const std::vector<index_t>& expected) const {
    const entry& e = at(name);
    require(e.shape == expected, ("tensor '" + name + "'").c_str(), "shape " + shape_text(expected),
            "shape " + shape_text(e.shape));
    return e;
  }

  // Sorted, so iteration (and any file written from it) is reproducible.
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    out.reserve(map_.size());
    for (const auto& kv : map_) out.push_back(kv.first);
    return out;
  }

  std::size_t total_elements() const {
    std::size_t n = 0;
    for (const auto& kv : map_) n += kv.second.data.size();
    return n;
  }

  // Names no reader asked for: a model loader reports them so a file with a
  // misspelt or extra tensor is not silently half-used.
  std::vector<std::string> names_not_in(const std::vector<std::string>& used) const {
    std::vector<std::string> out;
    for (const auto& kv : map_)
      if (std::find(used.begin(), used.end(), kv.first) == used.end()) out.push_back(kv.first);
    return out;
  }

 private:
  std::string missing_text() const {
    std::string s = "no such tensor (" + std::to_string(map_.size()) + " present";
    std::size_t shown = 0;
    for (const auto& kv : map_) {
      if (shown++ == 8) {
        s += ", ...";
        break;
      }
      s += (shown == 1 ? ": " : ", ") + kv.first;
    }
    return s + ")";
  }

  std::map<std::string, entry> map_;
};

}  // namespace tokmix
