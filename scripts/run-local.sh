#!/usr/bin/env bash
# The local disaggregated cluster of configs/, on the embedded tiny model:
# two context workers (ports 8001, 8002), one generation worker (8003) and
# the OpenAI proxy in front (PORT, default 8000). Waits until all are ready,
# sends a completion and a chat request through the proxy with curl, prints
# the answers, then keeps serving until interrupted.
# Usage: scripts/run-local.sh [BIN [HOST [PORT]]]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-bin/worker}; host=${2:-127.0.0.1}; port=${3:-8000}
url="http://$host:$port"
logs=$(mktemp -d /tmp/disagg-run.XXXXXX)
# The workers sign KV transfer states with a shared secret; one per run here.
export WORKER_CLUSTER_SECRET=${WORKER_CLUSTER_SECRET:-$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')}
pids=()

cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start() { # name, args...
  local name=$1; shift
  "$bin" "$@" >"$logs/$name.log" 2>&1 &
  pids+=($!)
}

wait_ready() { # name, url
  for _ in $(seq 1 600); do
    if curl -fsS "$2/health" >/dev/null 2>&1; then return 0; fi
    for p in "${pids[@]}"; do
      if ! kill -0 "$p" 2>/dev/null; then
        echo "a process exited before $1 was ready; logs in $logs:" >&2
        tail -n 20 "$logs"/*.log >&2
        exit 1
      fi
    done
    sleep 0.1
  done
  echo "$1 not ready after 60 s; logs in $logs" >&2
  exit 1
}

start ctx0 --role context --config configs/ctx_config.yaml --host 127.0.0.1 --port 8001
start ctx1 --role context --config configs/ctx_config.yaml --host 127.0.0.1 --port 8002
start gen0 --role generation --config configs/gen_config.yaml --host 127.0.0.1 --port 8003
for w in 8001 8002 8003; do wait_ready "worker :$w" "http://127.0.0.1:$w"; done
start proxy disaggregated -c configs/disagg_config.yaml --host "$host" --port "$port"
wait_ready proxy "$url"
echo "context workers :8001 :8002, generation worker :8003, proxy $url (logs in $logs)"

model=$(curl -fsS "$url/v1/models" | sed -n 's/.*"id" *: *"\([^"]*\)".*/\1/p' | head -1)
show() { # path, body
  echo
  echo "== POST $url$1"
  echo "$2"
  curl -fsS -D "$logs/headers" "$url$1" -H 'Content-Type: application/json' -d "$2"
  echo
  grep -i '^x-disagg' "$logs/headers" || true
}
show /v1/completions '{"model":"'"$model"'","prompt":"The capital of France is","max_tokens":24,"temperature":0}'
show /v1/chat/completions '{"model":"'"$model"'","messages":[{"role":"user","content":"Say hello in one word."}],"max_tokens":24,"temperature":0}'
echo
echo "(the embedded model is a tiny random-weight test model: its words are noise; the prefill ran"
echo " on a context worker, the KV moved to the generation worker over UCX, and it decoded there)"
echo "serving on $url until Ctrl-C"
wait -n "${pids[@]}"
