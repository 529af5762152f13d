#!/usr/bin/env bash
# README's first command: installs what is missing, configures a Release build
# (-march=native) in build/, builds and runs the main example (examples/hybrid_lm:
# a Mamba-2 hybrid language model, prefill + decode, checked against stepping).
# Extra arguments go to hybrid_lm, e.g. scripts/quickstart.sh --prompt 2048 --threads 2
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

bash "$TOKMIX_ROOT/scripts/setup.sh"
tokmix_configure
cmake --build "$TOKMIX_BUILD_DIR" -j"$TOKMIX_JOBS" --target tokmix_example_hybrid_lm tokmix_example_quickstart
echo "== running examples/hybrid_lm $*"
"$TOKMIX_BUILD_DIR/examples/hybrid_lm" "$@"
