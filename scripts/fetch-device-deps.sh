#!/usr/bin/env bash
# Downloads (without installing) the Debian packages the build needs into .deps/debs, for the GPU machine, which
# has no apt: run it here, then name .deps in the device call's carry; scripts/device-check.sh unpacks them.
set -euo pipefail
cd "$(dirname "$0")/.."
packages=(libopenblas-openmp-dev libopenblas0-openmp libopenblas-dev libsentencepiece-dev libsentencepiece0
          libgfortran5 nlohmann-json3-dev libcli11-dev libgtest-dev googletest libbenchmark-dev libbenchmark1debian)
mkdir -p .deps/debs
cd .deps/debs
rm -f ./*.deb
apt-get download "${packages[@]}"
ls -la
