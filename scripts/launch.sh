#!/usr/bin/env bash
# Starts the disaggregated deployment described by disagg_config.yaml on this
# node: one context worker per context_servers.urls entry and one generation
# worker per generation_servers.urls entry (each on its url's host and port),
# then the proxy (`worker disaggregated -c disagg_config.yaml`) once every
# worker answers /health. One process per GPU: when nvidia-smi lists GPUs,
# worker i (context workers first, then generation) gets
# CUDA_VISIBLE_DEVICES=i (modulo the GPU count, so one GPU is shared); without
# GPUs none is set and the workers run on the CPU.
#
# Every process gets NVLink multicast turned off: NCCL_NVLS_ENABLE=0,
# TORCH_SYMM_MEM_DISABLE_MULTICAST=1, NVSHMEM_DISABLE_NVLS=1 (UCX and NIXL do
# not use NVLink multicast). Every worker gets the same WORKER_CLUSTER_SECRET:
# the caller's, else a random one made for this launch.
#
# SIGINT and SIGTERM are forwarded to every process; if one exits, the others
# are stopped too. Logs go to LOG_DIR (default: a new folder under /tmp).
#
# Usage: scripts/launch.sh [--dry-run] [-c disagg_config.yaml]
#                          [--ctx-config ctx_config.yaml] [--gen-config gen_config.yaml]
#                          [--bin bin/worker]
#   --dry-run   print the commands (with their environment) and exit
# Environment: WORKER_BIN (the binary, as --bin), LOG_DIR, HEALTH_TIMEOUT
# (seconds to wait for each worker's /health, default 180), WORKER_CLUSTER_SECRET.
set -euo pipefail
cd "$(dirname "$0")/.."

disagg_cfg=configs/disagg_config.yaml
ctx_cfg=configs/ctx_config.yaml
gen_cfg=configs/gen_config.yaml
bin=${WORKER_BIN:-bin/worker}
dry_run=0
health_timeout=${HEALTH_TIMEOUT:-180}

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case $1 in
    --dry-run) dry_run=1 ;;
    -c|--config) disagg_cfg=$2; shift ;;
    --ctx-config) ctx_cfg=$2; shift ;;
    --gen-config) gen_cfg=$2; shift ;;
    --bin) bin=$2; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "launch.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
for f in "$disagg_cfg" "$ctx_cfg" "$gen_cfg"; do
  [ -f "$f" ] || { echo "launch.sh: $f not found" >&2; exit 2; }
done

# urls SECTION: the host:port entries of SECTION.urls in disagg_config.yaml
# (block lists of plain or quoted strings; an http:// prefix is dropped).
urls() {
  awk -v want="$1" '
    /^[^ \t#-]/ { section = $1; sub(":.*", "", section); inurls = 0; next }
    section == want && /^[ \t]+urls:/ { inurls = 1; next }
    section == want && inurls && /^[ \t]+-/ {
      v = $0; sub(/^[ \t]+-[ \t]*/, "", v); sub(/[ \t]+#.*$/, "", v)
      gsub(/["\047]/, "", v); sub(/^https?:\/\//, "", v); sub(/\/$/, "", v)
      print v; next
    }
    section == want && inurls && /^[ \t]+[a-z_]+:/ { inurls = 0 }
  ' "$disagg_cfg"
}
mapfile -t ctx_urls < <(urls context_servers)
mapfile -t gen_urls < <(urls generation_servers)
if [ ${#ctx_urls[@]} -eq 0 ] || [ ${#gen_urls[@]} -eq 0 ]; then
  echo "launch.sh: $disagg_cfg lists no context_servers.urls or no generation_servers.urls" >&2
  exit 2
fi

# The proxy's own address: the top-level hostname and port.
top() { awk -v k="$1" '$0 ~ "^"k":" { v = $0; sub("^"k":[ \t]*", "", v); sub(/[ \t]+#.*$/, "", v); gsub(/["\047]/, "", v); print v; exit }' "$disagg_cfg"; }
proxy_host=$(top hostname); proxy_port=$(top port)
case ${proxy_host:-localhost} in 0.0.0.0|::|"") proxy_host=localhost ;; esac
proxy_url="http://$proxy_host:${proxy_port:-8000}"

ngpu=0
if command -v nvidia-smi >/dev/null 2>&1; then
  ngpu=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
fi

secret=${WORKER_CLUSTER_SECRET:-}
if [ -z "$secret" ] && [ $dry_run = 0 ]; then
  secret=$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')
fi
base_env=(NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1)

# The commands, one per process: names, environments and arguments.
names=() envs=() args=() health=()
i=0
add_worker() { # role, config, host:port
  local hp=$3 host=${3%:*} port=${3##*:} e=("${base_env[@]}")
  if [ "$ngpu" -gt 0 ]; then e+=("CUDA_VISIBLE_DEVICES=$((i % ngpu))"); fi
  names+=("$1$i")
  envs+=("${e[*]}")
  args+=("--role $1 --config $2 --host $host --port $port")
  health+=("http://$hp/health")
  i=$((i + 1))
}
for u in "${ctx_urls[@]}"; do add_worker context "$ctx_cfg" "$u"; done
for u in "${gen_urls[@]}"; do add_worker generation "$gen_cfg" "$u"; done

if [ $dry_run = 1 ]; then
  echo "# $disagg_cfg: ${#ctx_urls[@]} context and ${#gen_urls[@]} generation workers; $ngpu GPU(s) seen"
  echo "# every worker also gets WORKER_CLUSTER_SECRET (the caller's, else a random one)"
  for k in "${!names[@]}"; do
    echo "env ${envs[$k]} $bin ${args[$k]}"
  done
  echo "# once every worker answers /health:"
  echo "env ${base_env[*]} $bin disaggregated -c $disagg_cfg"
  exit 0
fi

[ -x "$bin" ] || { echo "launch.sh: $bin is not an executable (make build, or --bin)" >&2; exit 2; }
command -v curl >/dev/null || { echo "launch.sh: curl is needed to wait for /health" >&2; exit 2; }
logs=${LOG_DIR:-$(mktemp -d /tmp/disagg-launch.XXXXXX)}
mkdir -p "$logs"
pids=()

stop_all() { # signal
  for p in "${pids[@]}"; do kill -s "$1" "$p" 2>/dev/null || true; done
  for _ in $(seq 1 100); do # 10 s, then SIGKILL
    local alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.1
  done
  for p in "${pids[@]}"; do kill -s KILL "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap 'echo "launch.sh: SIGINT: stopping" >&2; stop_all INT; exit 130' INT
trap 'echo "launch.sh: SIGTERM: stopping" >&2; stop_all TERM; exit 143' TERM

start() { # name, env words, args words
  # shellcheck disable=SC2086 # the words are ours, split on purpose
  env $2 WORKER_CLUSTER_SECRET="$secret" "$bin" $3 >"$logs/$1.log" 2>&1 &
  pids+=($!)
  echo "started $1 (pid $!): env $2 $bin $3" >&2
}

wait_health() { # name, url
  local deadline=$((SECONDS + health_timeout))
  until curl -fsS -o /dev/null "$2" 2>/dev/null; do
    for p in "${pids[@]}"; do
      if ! kill -0 "$p" 2>/dev/null; then
        echo "launch.sh: a process exited before $1 was ready; logs in $logs:" >&2
        tail -n 20 "$logs"/*.log >&2
        stop_all TERM
        exit 1
      fi
    done
    if [ $SECONDS -ge $deadline ]; then
      echo "launch.sh: $1 did not answer $2 within ${health_timeout}s; logs in $logs" >&2
      stop_all TERM
      exit 1
    fi
    sleep 0.2
  done
}

for k in "${!names[@]}"; do start "${names[$k]}" "${envs[$k]}" "${args[$k]}"; done
for k in "${!names[@]}"; do wait_health "${names[$k]}" "${health[$k]}"; done
start proxy "${base_env[*]}" "disaggregated -c $disagg_cfg"
wait_health proxy "$proxy_url/health"
echo "serving on $proxy_url (logs in $logs); Ctrl-C stops everything" >&2

# Run until a process exits (then stop the rest) or a signal arrives.
set +e
wait -n "${pids[@]}"
rc=$?
echo "launch.sh: a process exited (status $rc); stopping the others; logs in $logs" >&2
stop_all TERM
exit $((rc == 0 ? 1 : rc))
