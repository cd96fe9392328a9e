#!/usr/bin/env bash
# Installs the Debian packages elephant builds against. Safe to re-run: it installs only what is missing.
set -euo pipefail
packages=(
  build-essential cmake pkg-config ccache
  libopenblas-openmp-dev      # CPU GEMMs (OpenMP build: one thread pool with ours)
  libsentencepiece-dev        # tokenizer
  nlohmann-json3-dev          # config.json and safetensors headers
  libcli11-dev                # command-line flags
  libgtest-dev libbenchmark-dev
  python3-pip                 # fetches the CUTLASS headers (scripts/fetch-cutlass.sh)
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi
# The CUDA backend (built when nvcc is found) compiles against the CUTLASS headers.
if command -v nvcc >/dev/null || [ -x /usr/local/cuda/bin/nvcc ]; then
  "$(dirname "$0")/fetch-cutlass.sh"
fi
echo "setup: all build dependencies present"
