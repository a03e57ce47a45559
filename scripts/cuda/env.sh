# Sourced by the CUDA scripts: where the CUDA toolkit comes from.
# CUDA_HOME wins; else the project-local wheels in .venv-cuda (scripts/cuda/setup.sh).
ROOT=${ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
if [ -z "${CUDA_HOME:-}" ]; then
  for d in "$ROOT"/.venv-cuda/lib/python3*/site-packages/nvidia/cu13; do
    [ -x "$d/bin/nvcc" ] && CUDA_HOME=$d
  done
fi
if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then CUDA_HOME=/usr/local/cuda; fi
export CUDA_HOME
