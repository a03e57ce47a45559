#!/usr/bin/env bash
# Start one worker on the embedded tiny model, wait until it is ready, send a
# completion and a chat request with curl, print the answers, then keep
# serving until interrupted. Usage: scripts/run-local.sh BIN HOST PORT [worker flags...]
set -euo pipefail
bin=${1:-bin/worker}; host=${2:-127.0.0.1}; port=${3:-8000}
shift $(( $# < 3 ? $# : 3 ))
url="http://$host:$port"

"$bin" --host "$host" --port "$port" "$@" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null' EXIT
trap 'exit 130' INT TERM

for _ in $(seq 1 300); do
  if curl -fsS "$url/health" >/dev/null 2>&1; then break; fi
  if ! kill -0 $pid 2>/dev/null; then echo "worker exited before it was ready" >&2; exit 1; fi
  sleep 0.1
done
curl -fsS "$url/health" >/dev/null

model=$(curl -fsS "$url/v1/models" | sed -n 's/.*"id" *: *"\([^"]*\)".*/\1/p' | head -1)
echo
echo "== POST $url/v1/completions"
req='{"model":"'"$model"'","prompt":"The capital of France is","max_tokens":24,"temperature":0}'
echo "$req"
curl -fsS "$url/v1/completions" -H 'Content-Type: application/json' -d "$req"
echo; echo
echo "== POST $url/v1/chat/completions"
req='{"model":"'"$model"'","messages":[{"role":"user","content":"Say hello in one word."}],"max_tokens":24,"temperature":0}'
echo "$req"
curl -fsS "$url/v1/chat/completions" -H 'Content-Type: application/json' -d "$req"
echo; echo
echo "(the embedded model is a tiny random-weight test model: its words are noise, the plumbing is real)"
echo "serving on $url until Ctrl-C"
wait $pid
