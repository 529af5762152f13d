#pragma once
// Packed variable-length batches for the SSM mixers: one validation of
// cu_seqlens and one mapping from sequence to token range, so the conv1d in
// front of a Mamba block and its scan agree on where each sequence starts.
// ref: the cu_seqlens convention of flash_attn_varlen_func / mamba_ssm varlen.

#include <cstdint>
#include <string>

#include "tokmix/core/error.hpp"
#include "tokmix/core/tensor_view.hpp"

namespace tokmix {
namespace detail {

// Sequences of a call: n_seqs entries, sequence s spans tokens [begin(s),
// end(s)) of batch entry batch_of(s) and owns state s.
struct ssm_sequences {
  tensor_view<const std::int32_t, 1> cu;  // empty: one sequence per batch entry
  index_t batch, seq;

  bool packed() const { return cu.data() != nullptr; }
  index_t count() const { return packed() ? cu.dim(0) - 1 : batch; }
  index_t batch_of(index_t s) const { return packed() ? 0 : s; }
  index_t begin(index_t s) const { return packed() ? cu(s) : 0; }
  index_t end(index_t s) const { return packed() ? cu(s + 1) : seq; }
};

// batch must be 1; offsets start at 0, never decrease and end at seq.
inline void ssm_require_cu_seqlens(const tensor_view<const std::int32_t, 1>& cu, index_t batch, index_t seq) {
  require_layout("cu_seqlens", cu);
  require(batch == 1, "batch (dim 0) with cu_seqlens", 1, batch);
  require(cu.dim(0) >= 1, "cu_seqlens size", ">= 1 (n_seqs + 1)", cu.dim(0));
  require(cu(0) == 0, "cu_seqlens[0]", 0, cu(0));
  for (index_t s = 1; s < cu.dim(0); ++s)
    if (cu(s) < cu(s - 1))
      throw argument_error("cu_seqlens", "non-decreasing offsets",
                           std::to_string(cu(s)) + " after " + std::to_string(cu(s - 1)) + " at " + std::to_string(s));
  require(cu(cu.dim(0) - 1) == seq, "cu_seqlens[n_seqs]", "seq = " + std::to_string(seq), cu(cu.dim(0) - 1));
}

}  // namespace detail
}  // namespace tokmix
