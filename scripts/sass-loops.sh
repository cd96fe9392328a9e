#!/usr/bin/env bash
# The SASS of the grouped GEMM's kernels, compiled here for sm_90a as the device build compiles them, and the
# instruction mix of each kernel's innermost MMA loop (tools/sass/loop_stats.py): a kernel change can be read before
# it costs device time. cuobjdump and nvdisasm come from the PyPI wheels nvidia-cuda-cuobjdump and
# nvidia-cuda-nvdisasm (the toolkit here lacks them), kept in .deps/cuda-tools (not carried to the GPU machine).
#
#   scripts/sass-loops.sh [KERNEL_REGEX] [SOURCE]
#   (defaults: the fp16 int4 decode kernels of src/ops/grouped_gemm_cuda.cu)
set -euo pipefail
cd "$(dirname "$0")/.."
pattern=${1:-'grouped_gemm_mma_kernelI6__halfNS2_10TileConfigILi64ELi16E.*ELi4ELb'}
source=${2:-src/ops/grouped_gemm_cuda.cu}
tools=.deps/cuda-tools
if [ ! -x "$tools/bin/cuobjdump" ] || [ ! -x "$tools/bin/nvdisasm" ]; then
  mkdir -p "$tools/wheels" "$tools/bin"
  for package in nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm; do
    python3 -m pip download --quiet --no-deps --only-binary=:all: "$package" -d "$tools/wheels"
  done
  python3 - "$tools/bin" "$tools"/wheels/nvidia_cuda_cuobjdump-*.whl "$tools"/wheels/nvidia_cuda_nvdisasm-*.whl <<'PY'
import os, stat, sys, zipfile
for path in sys.argv[2:]:
    with zipfile.ZipFile(path) as wheel:
        for member in wheel.namelist():
            if tool := next((n for n in ("cuobjdump", "nvdisasm") if member.endswith("/bin/" + n)), None):
                target = os.path.join(sys.argv[1], tool)
                with open(target, "wb") as f:
                    f.write(wheel.read(member))
                os.chmod(target, os.stat(target).st_mode | stat.S_IXUSR)
PY
fi
export PATH=$PWD/$tools/bin:$PATH
build=
for dir in build build-cuda; do
  [ -f "$dir/src/CMakeFiles/elephant.dir/includes_CUDA.rsp" ] && { build=$dir; break; }
done
[ -n "$build" ] || { echo "sass-loops: no build with the CUDA backend (scripts/build.sh where nvcc is found)"; exit 1; }
out=$(mktemp -d)
(cd "$build/src" && nvcc -DELEPHANT_WITH_CUDA=1 --options-file CMakeFiles/elephant.dir/includes_CUDA.rsp -O3 \
  -DNDEBUG --generate-code=arch=compute_90a,code=[sm_90a] -std=c++17 -Xptxas -v -c "$OLDPWD/$source" \
  -o "$out/kernels.o" 2>"$out/ptxas.txt")
"$tools/bin/cuobjdump" -sass "$out/kernels.o" >"$out/kernels.sass"
python3 tools/sass/loop_stats.py "$out/kernels.sass" "$out/ptxas.txt" "$pattern"
rm -rf "$out"
