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
#   3. a serving benchmark on the TinyLlama-shaped model (random bf16
#      weights written by make_ref.py, with a byte-level tokenizer):
#      disaggregated (context GPU 0 + generation GPU $GEN_GPU, proxy) against
#      two aggregated workers (one per GPU) behind the proxy, with
#      scripts/bench_serve.py: long prompts and long generations
#      (BENCH_IN, BENCH_OUT, BENCH_N, BENCH_RATE; SLO_TTFT_MS, SLO_TPOT_MS).
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

echo "== serving benchmark: disaggregated (1 context + 1 generation GPU) vs two aggregated workers"
SHAPE=${SHAPE_DIR:-/tmp/shape}
[ -f "$SHAPE/model/tokenizer.json" ] || timeout 300 python3 scripts/cuda/make_ref.py "$SHAPE" > "$OUT/make_ref.log" 2>&1
MODEL=$SHAPE/model
BIN=$ROOT/bin/worker-cuda
for d in $(python3 -c 'import site; print(" ".join(p + "/nvidia/cu13/lib" for p in site.getsitepackages()))' 2>/dev/null) /usr/local/cuda/lib64; do
  if [ -e "$d/libcublas.so.13" ]; then export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; break; fi
done
if [ -n "${UCX_LIB_DIR:-}" ]; then
  export DISAGG_UCX_LIB=$(ls "$UCX_LIB_DIR"/libucp*.so* | head -1) UCX_MODULE_DIR=$UCX_LIB_DIR/ucx
  export LD_LIBRARY_PATH="$UCX_LIB_DIR:$LD_LIBRARY_PATH"
fi
export WORKER_CLUSTER_SECRET=two-gpu-check
pids=()
stop() { kill "${pids[@]}" 2>/dev/null; wait "${pids[@]}" 2>/dev/null; pids=(); }
trap stop EXIT
start() { local name=$1 gpu=$2; shift 2; CUDA_VISIBLE_DEVICES=$gpu "$BIN" "$@" > "$OUT/$name.log" 2>&1 & pids+=($!); }
ready() { for _ in $(seq 1 600); do curl -fsS "$1/health" >/dev/null 2>&1 && return 0; sleep 0.2; done; echo "not ready: $1"; return 1; }
# two workers share one GPU when GEN_GPU=0: each takes part of the memory
frac=0.85; [ "$GEN_GPU" = 0 ] && frac=0.4
bench() {
  python3 scripts/bench_serve.py --url "$1" --model shape --label "$2" --vocab 32000 --min-token-id 3 \
    --num-prompts "${BENCH_N:-64}" --input-len "${BENCH_IN:-2048}" --output-len "${BENCH_OUT:-256}" \
    --request-rate "${BENCH_RATE:-4}" --ttft-slo-ms "${SLO_TTFT_MS:-1000}" --tpot-slo-ms "${SLO_TPOT_MS:-25}" \
    -o "$OUT/bench-$2.json" 2>&1 | tee "$OUT/bench-$2.txt"
}
printf 'max_batch_size: 64\nmax_num_tokens: 8192\nkv_cache_config:\n  free_gpu_memory_fraction: %s\n' "$frac" > "$OUT/bench-worker.yaml"
common=(--model "$MODEL" --served-model-name shape --compute-backend cuda --config "$OUT/bench-worker.yaml" --host 127.0.0.1)
start b-ctx 0 --role context "${common[@]}" --port 8301
start b-gen "$GEN_GPU" --role generation "${common[@]}" --port 8302
ready http://127.0.0.1:8301 && ready http://127.0.0.1:8302
printf 'hostname: 127.0.0.1\nport: 8300\ncontext_servers: {num_instances: 1, urls: ["127.0.0.1:8301"]}\ngeneration_servers: {num_instances: 1, urls: ["127.0.0.1:8302"]}\n' > "$OUT/bench-disagg.yaml"
start b-proxy "" disaggregated -c "$OUT/bench-disagg.yaml"
ready http://127.0.0.1:8300 && bench http://127.0.0.1:8300 disagg
stop
start b-agg0 0 "${common[@]}" --port 8311
start b-agg1 "$GEN_GPU" "${common[@]}" --port 8312
ready http://127.0.0.1:8311 && ready http://127.0.0.1:8312
printf 'hostname: 127.0.0.1\nport: 8310\ngeneration_servers: {num_instances: 2, urls: ["127.0.0.1:8311", "127.0.0.1:8312"]}\n' > "$OUT/bench-agg.yaml"
start b-proxy-agg "" disaggregated -c "$OUT/bench-agg.yaml"
ready http://127.0.0.1:8310 && bench http://127.0.0.1:8310 agg
stop
