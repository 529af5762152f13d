# Sourced by the other scripts: repository root, build dir and job count.
# TOKMIX_BUILD_DIR overrides the build dir (default: build/ in the repository).
TOKMIX_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TOKMIX_BUILD_DIR=${TOKMIX_BUILD_DIR:-$TOKMIX_ROOT/build}
TOKMIX_JOBS=${TOKMIX_JOBS:-$(nproc 2>/dev/null || echo 2)}

# Configure the Release build shared by quickstart.sh and test.sh. The empty
# filter resets a developer's TOKMIX_TEST_FILTER left in the cache.
tokmix_configure() {
  cmake -S "$TOKMIX_ROOT" -B "$TOKMIX_BUILD_DIR" -DCMAKE_BUILD_TYPE=Release -DTOKMIX_NATIVE=ON \
    -DTOKMIX_BUILD_TESTS=ON -DTOKMIX_BUILD_EXAMPLES=ON -DTOKMIX_TEST_FILTER= "$@"
}
