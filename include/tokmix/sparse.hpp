#pragma once
// Umbrella header: the sparse and compressed attention family, exact softmax
// over chosen key subsets on the flash attention tiles plus the compressed-KV
// mixers (docs/semantics.md, "Softmax attention").
#include "tokmix/sparse/block_layout.hpp"
#include "tokmix/sparse/block_sparse.hpp"
#include "tokmix/sparse/dilated.hpp"
#include "tokmix/sparse/topk.hpp"
#include "tokmix/sparse/routing.hpp"
#include "tokmix/sparse/probsparse.hpp"
#include "tokmix/sparse/linformer.hpp"
#include "tokmix/sparse/nystrom.hpp"
#include "tokmix/sparse/inducing.hpp"
