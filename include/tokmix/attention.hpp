#pragma once
// Umbrella header for exact softmax attention: prefill (flash_attention,
// flash_attention_varlen), masks, lse merging, and (from the decode side) the
// KV cache, decode step and RoPE. The decode headers are included when present
// so this umbrella never breaks while they are being written.

#include "tokmix/attention/params.hpp"
#include "tokmix/attention/mask.hpp"
#include "tokmix/attention/merge.hpp"
#include "tokmix/attention/flash_attention.hpp"
#include "tokmix/attention/varlen.hpp"

#if __has_include("tokmix/attention/rope.hpp")
#include "tokmix/attention/rope.hpp"
#endif
#if __has_include("tokmix/attention/kv_cache.hpp")
#include "tokmix/attention/kv_cache.hpp"
#endif
#if __has_include("tokmix/attention/decode.hpp")
#include "tokmix/attention/decode.hpp"
#endif
