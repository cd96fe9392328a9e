#!/usr/bin/env bash
# Builds and runs every CPU test: the Release build, then the same suite under ASan + UBSan.
# GPU tests report SKIPPED where no GPU is present.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
(cd build && ctest --output-on-failure -j "$(nproc)")
if [ "${ELEPHANT_SKIP_SANITIZERS:-0}" != 1 ]; then
  BUILD_DIR=build-asan scripts/build.sh -DCMAKE_BUILD_TYPE=Debug -DELEPHANT_SANITIZE=ON -DELEPHANT_CUDA=OFF \
    -DELEPHANT_BUILD_BENCHMARKS=OFF
  # OpenBLAS and OpenMP keep thread pools alive at exit; leak checking is for our code, so it stays on
  # with their allocations suppressed.
  export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1" LSAN_OPTIONS="suppressions=$PWD/scripts/lsan.supp"
  export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
  (cd build-asan && ctest --output-on-failure -j "$(nproc)")
fi
