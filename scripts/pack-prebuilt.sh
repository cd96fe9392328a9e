#!/usr/bin/env bash
# Packs the binaries of a CUDA build made here for a device call that runs them without building (a fresh GPU
# machine spends ~200 s of the session's device time on the build): `PREBUILT=1 scripts/device-check.sh` with carry
# [".deps/rundebs", ".deps/prebuilt"]. This machine's toolchain (nvcc 13.0, Debian 12's g++ and glibc) makes
# binaries that the GPU machine runs; the carried Debian packages give them their shared libraries there.
#
#   scripts/pack-prebuilt.sh [BUILD_DIR [NAME]]   (default build-cuda: configured with -DELEPHANT_CUDA=ON, Release)
#
# Writes .deps/NAME/bin.tar.xz (default .deps/prebuilt; BUILD_DIR/bin, xz: the working tree and the carry must stay
# under 64 MiB) and .deps/NAME/stamp (the commit, whether the tree had changes, the build directory and the source
# directory the tests have compiled in), and copies the runtime packages into .deps/rundebs. A second NAME (say
# prebuilt-main, from another build directory) carries a baseline's binaries next to a branch's for an A/B in one
# call: unpack it there with tar -xJf.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build-cuda}
out=.deps/${2:-prebuilt}
cache=$build/CMakeCache.txt
[ -f "$cache" ] || { echo "pack-prebuilt: $build is not a configured build directory" >&2; exit 1; }
grep -Eq '^ELEPHANT_CUDA:[A-Z]+=ON' "$cache" || { echo "pack-prebuilt: $build has no CUDA backend" >&2; exit 1; }
grep -q '^CMAKE_BUILD_TYPE:STRING=Release' "$cache" || { echo "pack-prebuilt: $build is not a Release build" >&2; exit 1; }
cmake --build "$build" -j "${JOBS:-$(nproc)}"
mkdir -p "$out" .deps/rundebs
tar -C "$build" -cf - bin | xz -T0 -6 >"$out/bin.tar.xz"
{
  echo "commit=$(git rev-parse HEAD)"
  echo "changes=$(git status --porcelain --untracked-files=no | wc -l)"
  echo "build_dir=$build"
  echo "source_dir=$PWD"
  echo "cuda_architectures=$(sed -n 's/^CMAKE_CUDA_ARCHITECTURES:[A-Z]*=//p' "$cache")"
} >"$out/stamp"
[ -d .deps/debs ] || scripts/fetch-device-deps.sh >/dev/null
rm -f .deps/rundebs/*.deb
for package in libopenblas0-openmp libsentencepiece0 libgfortran5 libbenchmark1debian; do
  cp .deps/debs/"${package}"_*.deb .deps/rundebs/
done
cat "$out/stamp"
du -ch "$out/bin.tar.xz" .deps/rundebs | tail -1
