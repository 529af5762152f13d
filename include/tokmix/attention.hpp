#pragma once
// Umbrella header for exact softmax attention: prefill (flash_attention,
// flash_attention_varlen), masks, lse merging, the KV cache, the decode step
// and RoPE.

#include "tokmix/attention/params.hpp"
#include "tokmix/attention/mask.hpp"
#include "tokmix/attention/merge.hpp"
#include "tokmix/attention/flash_attention.hpp"
#include "tokmix/attention/varlen.hpp"

#include "tokmix/attention/rope.hpp"
#include "tokmix/attention/kv_cache.hpp"
#include "tokmix/attention/decode.hpp"
