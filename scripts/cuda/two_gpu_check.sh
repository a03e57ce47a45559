#!/usr/bin/env bash
# Runs on a GPU machine with two GPUs, from the repo root: the context
# worker on GPU 0 and the generation worker on GPU $GEN_GPU (default 1).
#   1. serve_check.sh: aggregated vs disaggregated answers (the proxy in
#      front, KV moved GPU to GPU over UCX), against the HF references;
#   2. the KV transfer benchmark between a process on GPU 0 and one on
#      GPU $GEN_GPU (UCX; the 46 MB TinyLlama request), beside a
#      peer-to-peer copy in the same run, with UCX's protocol choice
#      (UCX_PROTO_INFO, logged to $OUT/ucx-proto.*.log: the test's peer
#      process talks to it over stdout, which UCX's log must not share).
# Needs bin/worker-cuda and bin/ucx.test built here (make cuda;
# go test -c -o bin/ucx.test ./transceiver/ucx) and UCX_LIB_DIR naming a
# CUDA-enabled UCX (the nixl-cu13 wheel's libucp* and ucx/). GEN_GPU=0 runs
# the same on one GPU. NVLink multicast stays off in every process.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd); cd "$ROOT"
OUT=${OUT:-$ROOT/out/two-gpu}; mkdir -p "$OUT"
GEN_GPU=${GEN_GPU:-1}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
nvidia-smi topo -m > "$OUT/topo.txt" 2>&1; head -5 "$OUT/topo.txt"
echo "== serving: context worker on GPU 0, generation worker on GPU $GEN_GPU"
CTX_GPU=0 GEN_GPU=$GEN_GPU OUT=$OUT/serve timeout 200 scripts/cuda/serve_check.sh 2>&1 | grep -E '==|failed|not ready|transfer' | head -20
echo "== KV transfer, GPU 0 -> GPU $GEN_GPU"
rm -f "$OUT"/ucx-proto.*.log
DISAGG_TEST_PEER_GPU=$GEN_GPU UCX_PROTO_INFO=y UCX_LOG_FILE="$OUT/ucx-proto.%p.log" OUT=$OUT \
  scripts/cuda/device_check.sh transfer > "$OUT/transfer-all.log" 2>&1
grep -E 'copy|direct|staged|FAIL|panic|ok |suite.go' "$OUT/transfer-all.log" | sed -E 's/.*suite.go:[0-9]+: //'
echo "-- UCX transports in the protocol choices for GPU memory (UCX_PROTO_INFO):"
cat "$OUT"/ucx-proto.*.log 2>/dev/null | grep -iE 'cuda|put|get' | grep -oE 'cuda_ipc/[a-z0-9_]+|cuda_copy/[a-z0-9_]+|rc_mlx5/[a-z0-9_:]+|dc_mlx5/[a-z0-9_:]+|tcp/[a-z0-9_]+|sysv/[a-z0-9_]+|posix/[a-z0-9_]+|cma/[a-z0-9_]+|gdr_copy/[a-z0-9_]+' | sort | uniq -c | sort -rn | head
