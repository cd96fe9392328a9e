#!/usr/bin/env bash
# Puts the CUTLASS C++ headers (the CUDA backend's Hopper grouped GEMM) into .deps/cutlass/include, from the PyPI
# wheel nvidia-cutlass, which carries them under cutlass_library/source/include. The wheel stays in .deps/wheels: the
# GPU machine has no network, so device calls carry that folder and scripts/device-check.sh unpacks it there.
set -euo pipefail
cd "$(dirname "$0")/.."
version=4.2.0.0
wheel=.deps/wheels/nvidia_cutlass-$version-py3-none-any.whl
if [ ! -f "$wheel" ]; then
  mkdir -p .deps/wheels
  python3 -m pip download --quiet --no-deps --only-binary=:all: "nvidia-cutlass==$version" -d .deps/wheels
fi
if [ ! -f .deps/cutlass/include/cutlass/cutlass.h ] || [ "$(cat .deps/cutlass/version 2>/dev/null)" != "$version" ]; then
  rm -rf .deps/cutlass
  python3 - "$wheel" <<'PY'
import os, sys, zipfile
prefix = "cutlass_library/source/include/"
with zipfile.ZipFile(sys.argv[1]) as wheel:
    for member in wheel.namelist():
        if member.startswith(prefix) and not member.endswith("/"):
            target = ".deps/cutlass/include/" + member[len(prefix):]
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "wb") as f:
                f.write(wheel.read(member))
PY
  echo "$version" >.deps/cutlass/version
fi
echo "fetch-cutlass: CUTLASS $version headers in .deps/cutlass/include"
