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
            tool = os.path.basename(member)
            if os.path.dirname(member).endswith("/bin") and tool in ("cuobjdump", "nvdisasm"):
                target = os.path.join(sys.argv[1], tool)
                with open(target, "wb") as f:
                    f.write(wheel.read(member))
                os.chmod(target, os.stat(target).st_mode | stat.S_IXUSR)
PY
fi
export PATH=$PWD/$tools/bin:$PATH
# The library's own CUDA compile flags from a configured build, with sm_90a as the only target.
flags=
for dir in build build-cuda; do
  flags=$dir/src/CMakeFiles/elephant.dir/flags.make
  grep -q '^CUDA_FLAGS' "$flags" 2>/dev/null && break
  flags=
done
[ -n "$flags" ] || { echo "sass-loops: no build with the CUDA backend (scripts/build.sh where nvcc is found)"; exit 1; }
flag() { sed -n "s/^$1 = //p" "$flags"; }
read -r -a cuda_flags <<<"$(flag CUDA_DEFINES) $(flag CUDA_INCLUDES) $(flag CUDA_FLAGS | sed 's/--generate-code=[^ ]*//g')"
root=$PWD
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
(cd "$(dirname "$flags")/../.." && nvcc "${cuda_flags[@]}" --generate-code=arch=compute_90a,code=[sm_90a] -Xptxas -v \
  -c "$root/$source" -o "$out/kernels.o" 2>"$out/ptxas.txt")
"$tools/bin/cuobjdump" -sass "$out/kernels.o" >"$out/kernels.sass"
python3 tools/sass/loop_stats.py "$out/kernels.sass" "$out/ptxas.txt" "$pattern"
