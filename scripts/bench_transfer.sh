#!/usr/bin/env bash
# make bench-transfer: the transceivers' write bandwidth against block size
# and block count (UCX and NIXL, to a peer process, as ucx_perftest runs,
# BenchmarkBandwidth) beside ucx_perftest's put bandwidth on the same
# transport in the same run, then their fixed costs (BenchmarkLatency).
# UCX_TLS (default tcp: what UCX uses with peer error handling on a host
# without RDMA or CUDA) applies to both; ucx_perftest runs with -e (peer
# error handling), as the transceivers' endpoints do.
set -euo pipefail
cd "$(dirname "$0")/.."
export UCX_TLS=${UCX_TLS:-tcp}
GO=${GO:-go}
command -v ucx_perftest >/dev/null || { echo "ucx_perftest not found: install Debian's ucx-utils (scripts/setup-native.sh)" >&2; exit 1; }
out=$(mktemp -d)
srv=
trap '[ -n "$srv" ] && kill "$srv" 2>/dev/null; rm -rf "$out"' EXIT
sizes="4096 65536 1048576"
port=$((20000 + RANDOM % 20000))
echo "== ucx_perftest -t ucp_put_bw -e, UCX_TLS=$UCX_TLS"
for s in $sizes; do
  n=$((256 * 1048576 / s)); [ $n -gt 20000 ] && n=20000
  for try in 1 2 3; do
    port=$((port + 1))
    ucx_perftest -p $port -e > "$out/srv" 2>&1 & srv=$!
    sleep 0.5
    if ucx_perftest 127.0.0.1 -p $port -t ucp_put_bw -s "$s" -n $n -e > "$out/cli.$s" 2>&1; then break; fi
    kill "$srv" 2>/dev/null || true
  done
  wait "$srv" 2>/dev/null || true
  srv=
  # the overall bandwidth column, in MiB/s: to MB/s (10^6 B/s) as Go reports
  awk -v s="$s" '/^Final:/ {printf "%s %.1f\n", s, $7 * 1.048576}' "$out/cli.$s" | tee -a "$out/perftest"
done
echo "== BenchmarkBandwidth (UCX, NIXL)"
$GO test -run '^$' -bench BenchmarkBandwidth -benchtime 1s ./transceiver/ucx/ ./transceiver/nixl/ | tee "$out/bw" | grep -E '^(Benchmark|ok|FAIL)'
echo
echo "== write bandwidth, MB/s (each block its own descriptor), against ucx_perftest put bandwidth at the block size"
awk '
  FNR == NR { pt[$1] = $2; next }
  /^pkg: / { be = ($2 ~ /nixl/) ? "NIXL" : "UCX" }
  /^BenchmarkBandwidth\// {
    split($1, f, "/"); sub("size=", "", f[2]); sub("KB", "", f[2]); sub("blocks=", "", f[3]); sub("-[0-9]+$", "", f[3])
    key = f[2] * 1024 " " f[3]; bw[be " " key] = $(NF - 1); keys[key] = 1
  }
  END {
    printf "%-8s %-7s %10s %10s %12s %9s %9s\n", "block", "blocks", "UCX", "NIXL", "ucx_perftest", "UCX/pt", "NIXL/pt"
    ns = split(sizes, sz, " "); nc = split("1 16 128", cn, " ")
    for (i = 1; i <= ns; i++) for (j = 1; j <= nc; j++) {
      key = sz[i] " " cn[j]; if (!(key in keys)) continue
      u = bw["UCX " key]; x = bw["NIXL " key]; p = pt[sz[i]]
      printf "%-8s %-7s %10s %10s %12s %8.0f%% %8.0f%%\n", sz[i] / 1024 "KB", cn[j], u, x, p, p ? 100 * u / p : 0, p ? 100 * x / p : 0
    }
  }' sizes="$sizes" "$out/perftest" "$out/bw"
echo
echo "== BenchmarkLatency (fixed costs: one-block write, notification and push round trips)"
$GO test -run '^$' -bench BenchmarkLatency -benchtime 2s -count 3 ./transceiver/ucx/ ./transceiver/nixl/ | grep -E '^(Benchmark|ok|FAIL)'
