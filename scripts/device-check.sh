#!/usr/bin/env bash
# Everything to run on the GPU machine in one call: unpack the carried Debian packages (no apt there), build with
# the CUDA backend for sm_90a, run every test (GPU suites included), run the benchmarks, print a short table.
#
#   here:  scripts/fetch-device-deps.sh
#   there: scripts/device-check.sh            (device call with carry [".deps"]; results also land in $OUT)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-build-device/out}
mkdir -p "$out"
root=$PWD/.deps/root
arch=$(gcc -dumpmachine)
if [ -d .deps/debs ]; then
  mkdir -p "$root"
  for deb in .deps/debs/*.deb; do dpkg -x "$deb" "$root"; done
fi
export PKG_CONFIG_SYSROOT_DIR=$root
export PKG_CONFIG_PATH=$root/usr/lib/$arch/pkgconfig:$root/usr/share/pkgconfig
export LD_LIBRARY_PATH=$root/usr/lib/$arch:$root/usr/lib/$arch/openblas-openmp:${LD_LIBRARY_PATH:-}
export PATH=/usr/local/cuda/bin:$PATH

{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || echo "no GPU"; } | tee "$out/gpu.txt"
cmake -S . -B build-device -DCMAKE_BUILD_TYPE=Release -DELEPHANT_CUDA=ON -DELEPHANT_DEPS_ROOT="$root" \
  -DCMAKE_PREFIX_PATH="$root/usr" -DCMAKE_CUDA_ARCHITECTURES="90a-real;80-virtual" >"$out/configure.log"
cmake --build build-device -j "$(nproc)" >"$out/build.log" 2>&1 || { tail -40 "$out/build.log"; exit 1; }

set +e
(cd build-device && ctest -j 8 --output-on-failure >"$out/ctest.log" 2>&1)
tests_rc=$?
build-device/bin/bench_cpu --benchmark_min_time=0.5 --benchmark_repetitions=3 --benchmark_report_aggregates_only=true \
  --benchmark_format=console >"$out/bench_cpu.txt" 2>&1
set -e

echo "== tests"
grep -E "tests passed|tests failed|Skipped|\*\*\*Failed" "$out/ctest.log" | tail -12
echo "== CPU benchmarks (medians)"
grep median "$out/bench_cpu.txt" | awk '{printf "%-36s %10s %s %s\n", $1, $2, $3, $NF}'
exit $tests_rc
