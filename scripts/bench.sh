#!/usr/bin/env bash
# Builds tokmix_bench (Release, -march=native, LibTorch/OpenBLAS peers when
# present) in build-bench/, runs it and writes bench-results/results.{json,md,png}
# and crossover.md (where each linear-time mixer overtakes flash attention).
# Extra arguments go to tokmix_bench, e.g.:
#   scripts/bench.sh --benchmark_filter='attention_prefill'
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
bench_dir=${TOKMIX_BENCH_BUILD_DIR:-$TOKMIX_ROOT/build-bench}
out_dir=${TOKMIX_BENCH_OUT:-$TOKMIX_ROOT/bench-results}

bash "$TOKMIX_ROOT/scripts/setup.sh" --bench
cmake -S "$TOKMIX_ROOT" -B "$bench_dir" -DCMAKE_BUILD_TYPE=Release -DTOKMIX_NATIVE=ON \
  -DTOKMIX_BUILD_BENCH=ON -DTOKMIX_BUILD_TESTS=OFF -DTOKMIX_BUILD_EXAMPLES=OFF -DTOKMIX_BENCH_FILTER=
cmake --build "$bench_dir" -j"$TOKMIX_JOBS" --target tokmix_bench

mkdir -p "$out_dir"
"$bench_dir/bench/tokmix_bench" --benchmark_out="$out_dir/results.json" --benchmark_out_format=json "$@"
python3 "$TOKMIX_ROOT/bench/report.py" "$out_dir/results.json" --md "$out_dir/results.md" --png "$out_dir/results.png"
python3 "$TOKMIX_ROOT/bench/crossover.py" "$out_dir/results.json" --md "$out_dir/crossover.md" > /dev/null || true
echo "bench.sh: results in $out_dir (results.json, results.md, results.png, crossover.md)"
