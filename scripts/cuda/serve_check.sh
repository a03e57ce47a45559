#!/usr/bin/env bash
# Runs on the GPU machine: bin/worker-cuda (make cuda) serving the embedded
# model from the GPU, aggregated and disaggregated (context + generation
# worker, KV over UCX, the proxy in front), answering the greedy.json
# prompts; writes answers and logs to $OUT.
#   CTX_GPU, GEN_GPU: the GPUs of the context and generation workers
#   (default 0 and 0: one GPU; CTX_GPU=0 GEN_GPU=1 on a two-GPU machine);
#   the aggregated worker runs on CTX_GPU.
#   WORKER_ARGS: more flags for the three workers (--dtype float32: the
#   fp32 mode, whose answers must equal the reference text).
#   UCX_LIB_DIR: a CUDA-enabled UCX (libucp*.so + ucx/ modules), e.g. the
#   one inside the nixl-cu13 wheel; the system UCX may lack CUDA memory.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd); cd "$ROOT"
OUT=${OUT:-$ROOT/out/serve}; mkdir -p "$OUT"
BIN=$ROOT/bin/worker-cuda
for d in $(python3 -c 'import site; print(" ".join(p + "/nvidia/cu13/lib" for p in site.getsitepackages()))' 2>/dev/null) /usr/local/cuda/lib64; do
  if [ -e "$d/libcublas.so.13" ]; then export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; break; fi
done
if [ -n "${UCX_LIB_DIR:-}" ]; then
  export DISAGG_UCX_LIB=$(ls "$UCX_LIB_DIR"/libucp*.so* | head -1)
  export UCX_MODULE_DIR=$UCX_LIB_DIR/ucx
  export LD_LIBRARY_PATH="$UCX_LIB_DIR:$LD_LIBRARY_PATH"
fi
# NVLink multicast off in every process (as scripts/launch.sh does)
export WORKER_CLUSTER_SECRET=serve-check NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
CTX_GPU=${CTX_GPU:-0} GEN_GPU=${GEN_GPU:-0}
"$BIN" probe > "$OUT/probe.json" 2>&1
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait' EXIT
start() { local name=$1 gpu=$2; shift 2; CUDA_VISIBLE_DEVICES=$gpu "$BIN" "$@" > "$OUT/$name.log" 2>&1 & pids+=($!); }
ready() { for _ in $(seq 1 300); do curl -fsS "$1/health" >/dev/null 2>&1 && return 0; sleep 0.2; done; echo "not ready: $1"; return 1; }
# Three workers share the one GPU here: each gets a bounded pool.
for r in ctx gen; do
  sed 's/^kv_cache_config:/kv_cache_config:\n  max_tokens: 262144/' configs/${r}_config.yaml > "$OUT/${r}_config.yaml"
done
start agg "$CTX_GPU" --compute-backend cuda --config "$OUT/ctx_config.yaml" --role "" --host 127.0.0.1 --port 8100 ${WORKER_ARGS:-}
start ctx "$CTX_GPU" --role context --compute-backend cuda --config "$OUT/ctx_config.yaml" --host 127.0.0.1 --port 8101 ${WORKER_ARGS:-}
start gen "$GEN_GPU" --role generation --compute-backend cuda --config "$OUT/gen_config.yaml" --host 127.0.0.1 --port 8102 ${WORKER_ARGS:-}
for p in 8100 8101 8102; do ready http://127.0.0.1:$p; done
cat > "$OUT/disagg.yaml" <<YAML
hostname: 127.0.0.1
port: 8103
context_servers: {num_instances: 1, urls: ["127.0.0.1:8101"]}
generation_servers: {num_instances: 1, urls: ["127.0.0.1:8102"]}
YAML
start proxy "" disaggregated -c "$OUT/disagg.yaml"
ready http://127.0.0.1:8103
python3 - "$OUT" <<'PY'
import json, sys, urllib.request
out = sys.argv[1]
cases = json.load(open("testdata/reference/tiny-llama2/greedy.json"))
def ask(port, ids, stream=False):
    body = {"model": "tiny-llama2", "prompt": ids, "max_tokens": 32, "temperature": 0,
            "ignore_eos": True, "skip_special_tokens": False, "logprobs": 0}
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(req, timeout=120))
rows = []
for c in cases:
    try:
        agg, dis = ask(8100, c["prompt_ids"]), ask(8103, c["prompt_ids"])
    except Exception as e:
        print("request failed:", e, getattr(e, "read", lambda: b"")()[:500])
        continue
    a, d = agg["choices"][0]["text"], dis["choices"][0]["text"]
    rows.append({"prompt_len": len(c["prompt_ids"]), "agg_eq_ref": a == c["output_text"],
                 "disagg_eq_agg": d == a, "agg": a, "ref": c["output_text"]})
json.dump(rows, open(f"{out}/greedy.json", "w"), indent=1)
print("aggregated == HF reference:", sum(r["agg_eq_ref"] for r in rows), "/", len(rows))
print("disaggregated == aggregated:", sum(r["disagg_eq_agg"] for r in rows), "/", len(rows))
PY
curl -fsS http://127.0.0.1:8103/v1/chat/completions -H 'Content-Type: application/json' \
  -d '{"model":"tiny-llama2","messages":[{"role":"user","content":"hello"}],"max_tokens":16}' | tee "$OUT/chat.json"; echo
curl -fsS http://127.0.0.1:8102/metrics | grep -E '^worker_(kv_transfer|kv_blocks)' | tee "$OUT/gen-metrics.txt"
grep -hE 'backend|transceiver|CUDA|error|ERROR' "$OUT"/{agg,ctx,gen}.log | head -20
