#!/usr/bin/env bash
# make bench-transfer: the transceivers' write bandwidth against block size
# and block count (to a peer process, as ucx_perftest runs,
# BenchmarkBandwidth) beside ucx_perftest's put and active-message
# bandwidth on the same transport, then their fixed costs
# (BenchmarkLatency). Columns: UCX as configured (writes from host memory
# as active messages where the endpoint has no RMA lane, as over TCP),
# UCX with DISAGG_UCX_AM_WRITE=0 (RMA puts, which UCX 1.13 emulates over
# TCP), UCX reads (BenchmarkReadBandwidth: pull instead of push), NIXL.
# UCX_TLS (default tcp: what UCX uses with peer error handling on a host
# without RDMA or CUDA) applies to all; ucx_perftest runs with -e (peer
# error handling), as the transceivers' endpoints do.
# put_bw-1.22: ucx_perftest -t ucp_put_bw from the libucx-cu13 wheel
# (UCX 1.22, installed into the project virtualenv on first use): a UCX
# as new as the one inside the nixl-cu13 wheel (1.23), whose puts over TCP
# are zero-copy RMA where Debian's 1.13 emulates them with active
# messages, so NIXL's reference on its own kind of UCX.
# NIXL-push: BenchmarkPushBandwidth, the blocks pushed on request (a
# request notification, the peer's write, its answer with checksums), as
# a generation worker gets a request's KV; NIXL-staged: the same with
# DISAGG_KV_STAGING=force on both sides, which gathers the blocks into the
# staging buffers and moves each chunk as one descriptor.
# ROUNDS=N (default 1) repeats every measurement N times, in alternating
# order (so that a busy machine weighs on all columns alike), and prints
# medians with their ranges. BENCH_COLUMNS picks columns (default all).
set -euo pipefail
cd "$(dirname "$0")/.."
export UCX_TLS=${UCX_TLS:-tcp}
GO=${GO:-go}
ROUNDS=${ROUNDS:-1}
VENV=${VENV:-.venv}
command -v ucx_perftest >/dev/null || { echo "ucx_perftest not found: install Debian's ucx-utils (scripts/setup-native.sh)" >&2; exit 1; }
all_columns="put_bw UCX UCX-RMA UCX-read NIXL NIXL-push NIXL-staged am_bw put_bw-1.22"
columns=${BENCH_COLUMNS:-$all_columns}
for c in $columns; do
  [[ " $all_columns " == *" $c "* ]] || { echo "BENCH_COLUMNS: unknown column \"$c\" (allowed: $all_columns)" >&2; exit 2; }
done
UCX_NEW_WHEEL=${UCX_NEW_WHEEL:-libucx-cu13==1.22.0}
newpt=
if [[ " $columns " == *" put_bw-1.22 "* ]]; then
  newpt=$(find "$VENV" -path '*/libucx/bin/ucx_perftest' -print -quit 2>/dev/null || true)
  if [ -z "$newpt" ]; then
    "$VENV/bin/python" -m pip install -q --no-deps "$UCX_NEW_WHEEL" >&2 || echo "could not install $UCX_NEW_WHEEL: no put_bw-1.22 column" >&2
    newpt=$(find "$VENV" -path '*/libucx/bin/ucx_perftest' -print -quit 2>/dev/null || true)
  fi
fi
out=$(mktemp -d)
srv=
trap '[ -n "$srv" ] && kill "$srv" 2>/dev/null; rm -rf "$out"' EXIT
sizes="4096 65536 1048576"
port=$((20000 + RANDOM % 20000))

echo "== building test binaries"
$GO test -c -o "$out/ucx.test" ./transceiver/ucx/
$GO test -c -o "$out/nixl.test" ./transceiver/nixl/

# perftest COLUMN TEST: one ucx_perftest run per block size, appended to
# $out/results as "column size count MB/s round" (count: the transceivers'
# block counts, which perftest's streaming bandwidth stands beside).
# PT (default ucx_perftest) and PT_LIB (its UCX's library folder, put
# first on the library path) pick the perftest binary.
perftest() {
  local col=$1 t=$2 s n pt=${PT:-ucx_perftest} ldp=${LD_LIBRARY_PATH:-}
  if [ -n "${PT_LIB:-}" ]; then ldp=$PT_LIB${ldp:+:$ldp}; fi
  for s in $sizes; do
    n=$((256 * 1048576 / s)); [ $n -gt 20000 ] && n=20000
    for try in 1 2 3; do
      port=$((port + 1))
      LD_LIBRARY_PATH=$ldp "$pt" -p $port -e > "$out/srv" 2>&1 & srv=$!
      sleep 0.5
      if LD_LIBRARY_PATH=$ldp "$pt" 127.0.0.1 -p $port -t "$t" -s "$s" -n $n -e > "$out/cli" 2>&1; then break; fi
      kill "$srv" 2>/dev/null || true
    done
    wait "$srv" 2>/dev/null || true
    srv=
    # the overall bandwidth column, in MiB/s: to MB/s (10^6 B/s) as Go reports
    awk -v c="$col" -v s="$s" -v r="$round" '/^Final:/ {n = split("1 16 128", k, " "); for (i = 1; i <= n; i++) printf "%s %s %s %.1f %s\n", c, s, k[i], $7 * 1.048576, r}' "$out/cli" >> "$out/results"
  done
}

# bench COLUMN PACKAGE [ENV...]: BenchmarkBandwidth (writes; BENCH=
# BenchmarkReadBandwidth: reads) of one package's test binary, run in the
# package's folder as go test runs it.
bench() {
  local col=$1 pkg=$2 name=${BENCH:-BenchmarkBandwidth}
  shift 2
  (cd "transceiver/$pkg" && env "$@" "$out/$pkg.test" -test.run '^$' -test.bench "^$name\$" -test.benchtime 1s) > "$out/bw" 2>&1 || { cat "$out/bw" >&2; exit 1; }
  awk -v c="$col" -v r="$round" -v n="$name" 'index($1, n "/") == 1 {
    split($1, f, "/"); sub("size=", "", f[2]); sub("KB", "", f[2]); sub("blocks=", "", f[3]); sub("-[0-9]+$", "", f[3])
    printf "%s %d %s %s %s\n", c, f[2] * 1024, f[3], $(NF - 1), r
  }' "$out/bw" >> "$out/results"
}

run_column() {
  case $1 in
    UCX) bench UCX ucx ;;
    UCX-RMA) bench UCX-RMA ucx DISAGG_UCX_AM_WRITE=0 ;;
    UCX-read) BENCH=BenchmarkReadBandwidth bench UCX-read ucx ;;
    NIXL) bench NIXL nixl ;;
    NIXL-push) BENCH=BenchmarkPushBandwidth bench NIXL-push nixl ;;
    NIXL-staged) BENCH=BenchmarkPushBandwidth bench NIXL-staged nixl DISAGG_KV_STAGING=force ;;
    put_bw) perftest put_bw ucp_put_bw ;;
    put_bw-1.22) if [ -n "$newpt" ]; then PT=$newpt PT_LIB=$(cd "$(dirname "$newpt")/../lib" && pwd) perftest put_bw-1.22 ucp_put_bw; fi ;;
    am_bw) perftest am_bw ucp_am_bw ;;
  esac
}

: > "$out/results"
for round in $(seq 1 "$ROUNDS"); do
  order=$columns
  [ $((round % 2)) -eq 0 ] && order=$(echo "$columns" | tr ' ' '\n' | tac | tr '\n' ' ')
  echo "== round $round of $ROUNDS: $order"
  for c in $order; do run_column "$c"; done
done

echo
echo "== write bandwidth (UCX-read: read bandwidth), MB/s (each block its own descriptor), beside ucx_perftest (put_bw, am_bw: -t ucp_put_bw, ucp_am_bw) at the block size; UCX_TLS=$UCX_TLS, $ROUNDS round(s): median (range); ratios: median (range) of each round's ratio"
awk -v sizes="$sizes" -v cols="$columns" '
  { key = $2 " " $3; v[$1 " " key] = v[$1 " " key] " " $4; x[$1 " " key " " $5] = $4; rounds[$5] = 1 }
  function med(s,   a, n, i, j, t) {
    n = split(s, a, " ")
    if (n == 0) return 0
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
    m = (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    lo = a[1]; hi = a[n]
    return n
  }
  function cell(s, unit) { if (!med(s)) return "-"; return (lo == hi) ? sprintf("%.0f%s", m, unit) : sprintf("%.0f%s (%.0f-%.0f)", m, unit, lo, hi) }
  # ratio(A, B, key): each round'"'"'s A / B in %
  function ratio(a, b, key,   r, s) {
    s = ""
    for (r in rounds) if ((a " " key " " r) in x && (b " " key " " r) in x && x[b " " key " " r] > 0) s = s " " 100 * x[a " " key " " r] / x[b " " key " " r]
    return cell(s, "%")
  }
  END {
    nc = split(cols, c, " ")
    ns = split(sizes, sz, " "); nn = split("1 16 128", cn, " ")
    printf "%-6s %-6s", "block", "blocks"
    for (k = 1; k <= nc; k++) printf " %18s", c[k]
    printf "\n"
    for (i = 1; i <= ns; i++) for (j = 1; j <= nn; j++) {
      key = sz[i] " " cn[j]
      printf "%-6s %-6s", sz[i] / 1024 "KB", cn[j]
      for (k = 1; k <= nc; k++) printf " %18s", cell(v[c[k] " " key], "")
      printf "\n"
    }
    printf "\n%-6s %-6s %18s %18s %18s %18s %18s %18s %18s %18s %18s\n", "block", "blocks", "UCX/put_bw", "UCX-RMA/put_bw", "NIXL/put_bw", "NIXL/put_bw-1.22", "NIXL-push/put_bw", "NIXL-staged/put_bw", "UCX/am_bw", "UCX/UCX-RMA", "UCX/UCX-read"
    for (i = 1; i <= ns; i++) for (j = 1; j <= nn; j++) {
      key = sz[i] " " cn[j]
      printf "%-6s %-6s %18s %18s %18s %18s %18s %18s %18s %18s %18s\n", sz[i] / 1024 "KB", cn[j], ratio("UCX", "put_bw", key), ratio("UCX-RMA", "put_bw", key), ratio("NIXL", "put_bw", key), ratio("NIXL", "put_bw-1.22", key), ratio("NIXL-push", "put_bw", key), ratio("NIXL-staged", "put_bw", key), ratio("UCX", "am_bw", key), ratio("UCX", "UCX-RMA", key), ratio("UCX", "UCX-read", key)
    }
  }' "$out/results"
echo
echo "== BenchmarkLatency (fixed costs: one-block write and read (pull), notification and push round trips)"
for c in UCX UCX-RMA NIXL; do
  case $c in
    UCX) pkg=ucx; mode= ;;
    UCX-RMA) pkg=ucx; mode=0 ;;
    NIXL) pkg=nixl; mode= ;;
  esac
  echo "-- $c"
  (cd "transceiver/$pkg" && DISAGG_UCX_AM_WRITE=$mode "$out/$pkg.test" -test.run '^$' -test.bench BenchmarkLatency -test.benchtime 2s -test.count 3) 2>&1 | grep -E '^(Benchmark|ok|FAIL|PASS)'
done
