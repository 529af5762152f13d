#!/usr/bin/env bash
# README's first command: installs what is missing, configures a Release build
# (-march=native) in build/, builds and runs the main example.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

bash "$TOKMIX_ROOT/scripts/setup.sh"
tokmix_configure
cmake --build "$TOKMIX_BUILD_DIR" -j"$TOKMIX_JOBS" --target tokmix_example_quickstart
echo "== running examples/quickstart"
"$TOKMIX_BUILD_DIR/examples/quickstart"
