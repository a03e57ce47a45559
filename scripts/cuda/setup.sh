#!/usr/bin/env bash
# Installs the CUDA 13.0 toolchain (nvcc, cudart, cuBLAS headers and libs)
# from PyPI wheels into the project-local virtualenv .venv-cuda (git-ignored).
# The versions match the GPU machine's driver and toolkit (CUDA 13.0).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PYTHON=${PYTHON:-python3}
VENV=$ROOT/.venv-cuda
[ -x "$VENV/bin/pip" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check \
  nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 \
  nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cublas==13.0.2.14
source "$ROOT/scripts/cuda/env.sh"
"$CUDA_HOME/bin/nvcc" --version | tail -1
