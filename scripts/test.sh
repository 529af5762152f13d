#!/usr/bin/env bash
# README's second command (and CI's): installs what is missing, configures and
# builds everything in build/, then runs the whole suite through CTest (Catch2
# tests, consumer projects). Exits non-zero when anything fails.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

bash "$TOKMIX_ROOT/scripts/setup.sh"
tokmix_configure
cmake --build "$TOKMIX_BUILD_DIR" -j"$TOKMIX_JOBS"
cd "$TOKMIX_BUILD_DIR"
ctest --output-on-failure -j2
