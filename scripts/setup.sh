#!/usr/bin/env bash
# Installs the Debian packages tokmix needs to build, test (and with --bench,
# benchmark) - only those missing, so on a ready machine it changes nothing.
# Debian 12 (bookworm). Runs apt as root directly, otherwise through sudo.
#
#   scripts/setup.sh            # compiler, CMake, Eigen, xsimd, Catch2, Google Benchmark, OpenBLAS
#   scripts/setup.sh --bench    # + LibTorch (peer in tokmix_bench), gnuplot, python3 (report)
set -euo pipefail

want_bench=0
for arg in "$@"; do
  case "$arg" in
    --bench) want_bench=1 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown argument '$arg'" >&2; exit 2 ;;
  esac
done

packages=(build-essential cmake g++ libeigen3-dev libxsimd-dev catch2 libbenchmark-dev libopenblas-dev pkg-config)
if [[ $want_bench == 1 ]]; then
  packages+=(libtorch-dev gnuplot-nox python3)
fi

missing=()
for p in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  if [[ "$status" != "install ok installed" ]]; then
    missing+=("$p")
  fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "setup.sh: all ${#packages[@]} Debian packages already installed"
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "setup.sh: apt-get not found; install these packages (Debian names) by hand: ${missing[*]}" >&2
  exit 1
fi

if [[ $(id -u) -eq 0 ]]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1; then
  as_root=(sudo)
else
  echo "setup.sh: need root (or sudo) to install: ${missing[*]}" >&2
  exit 1
fi

echo "setup.sh: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null
