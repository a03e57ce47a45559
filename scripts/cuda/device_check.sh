#!/usr/bin/env bash
# Runs on the GPU machine, from the repo root, with
# cuda/build/cuda.test built here by `scripts/cuda/build.sh test` and carried.
#   scripts/cuda/device_check.sh [fixtures] [shape] [bench] [ab] [memcheck] [syslib] [sample] [transfer] [tune] [sweep] [ncu] [ncu-gemv]   (default: fixtures shape bench memcheck syslib)
# Logs and JSON go to $OUT (or ./out/device).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${OUT:-$ROOT/out/device}
mkdir -p "$OUT"
STEPS=${*:-fixtures shape bench memcheck syslib}
export PYTHONUNBUFFERED=1
# cuBLAS 13: the nvidia-cublas wheel beside PyTorch first (checked to work,
# 2026-11-25), else the system CUDA toolkit.
for d in $(python3 -c 'import site; print(" ".join(p + "/nvidia/cu13/lib" for p in site.getsitepackages()))' 2>/dev/null) \
         /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
  if [ -e "$d/libcublas.so.13" ]; then LIBD=$d; break; fi
done
[ -n "${LIBD:-}" ] || LIBD=$(dirname "$(find / -xdev -name 'libcublas.so.13' 2>/dev/null | head -1)")
export LD_LIBRARY_PATH="$LIBD${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "libcublas from $LIBD: $(cd "$LIBD" && ls libcublas.so.13* 2>/dev/null | tr '\n' ' ')"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
T=$ROOT/cuda/build/cuda.test
SHAPE=${SHAPE_DIR:-/tmp/shape}
cd "$ROOT/cuda"
has() { [[ " $STEPS " == *" $1 "* ]]; }
if has fixtures; then
  echo "== fixtures"
  timeout 120 "$T" -test.v -test.count=1 -test.run 'TestFixture|TestBadBatch' 2>&1 | tee "$OUT/fixtures.log" | grep -E '^(LOGITS|GREEDY|---|FAIL|PASS|ok|panic)|cuda_test' 
fi
if has syslib; then
  # the same fixture tests against the system toolkit's cuBLAS, if there is one
  for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
    [ -e "$d/libcublas.so.13" ] || continue
    echo "== fixtures with $d: $(ls "$d"/libcublas.so.13.* | xargs -n1 basename)"
    LD_LIBRARY_PATH=$d timeout 120 "$T" -test.v -test.count=1 -test.run 'TestFixture' 2>&1 | tee "$OUT/fixtures-syslib.log" | grep -E '^(LOGITS.*worst|GREEDY.*:|---)'
    break
  done
fi
if has shape || has bench; then
  echo "== transformers reference (TinyLlama shape, random bf16 weights)"
  bflag=; has bench && bflag=--bench
  timeout 300 python3 "$ROOT/scripts/cuda/make_ref.py" "$SHAPE" $bflag 2>&1 | tee "$OUT/make_ref.log" | grep -vE 'Warning|warn'
  cp -f "$SHAPE/hf_bench.json" "$OUT/" 2>/dev/null
fi
if has shape; then
  echo "== shape model vs transformers"
  DCU_REF=$SHAPE timeout 180 "$T" -test.v -test.count=1 -test.run 'TestShapeModel' 2>&1 | tee "$OUT/shape.log" | grep -E 'SHAPE (alone|mixed|worst)|^(---|FAIL|PASS|ok|panic)|cuda_test'
  echo "== shape model again, decode steps through the 4-warp decode kernel (DCU_DEC_RING=0; by default it serves only grids too large for one wave of the ring kernel)"
  DCU_DEC_RING=0 DCU_REF=$SHAPE timeout 180 "$T" -test.v -test.count=1 -test.run 'TestShapeModel' 2>&1 | tee "$OUT/shape-dec.log" | grep -E 'SHAPE (alone  decode|worst)|^(---|FAIL|PASS|ok|panic)|cuda_test'
  echo "== shape model again, the bulk-copy GEMVs (DCU_BULK=1, an experiment kept off by default)"
  DCU_BULK=1 DCU_REF=$SHAPE timeout 180 "$T" -test.v -test.count=1 -test.run 'TestShapeModel' 2>&1 | tee "$OUT/shape-bulk.log" | grep -E 'SHAPE worst|^(---|FAIL|PASS|ok|panic)|cuda_test'
fi
if has bench; then
  echo "== benchmarks"
  DCU_OUT=$OUT DCU_REF=$SHAPE DCU_BENCH=1 timeout 240 "$T" -test.v -test.count=1 -test.run 'TestBench' 2>&1 | tee "$OUT/bench.log" | grep -E 'BENCH|PROFILE|^(---|FAIL|PASS|ok|panic)|cuda_test'
fi
if has ab; then
  echo "== the same benchmarks with one fusion turned off at a time (DCU_NO_FUSE, DCU_NO_PDL, DCU_GU_F32)"
  for v in "DCU_NO_FUSE=1" "DCU_NO_PDL=1" "DCU_GU_F32=1"; do
    echo "-- $v"
    env $v DCU_REF=$SHAPE DCU_BENCH=1 timeout 90 "$T" -test.count=1 -test.run 'TestBench' 2>&1 | grep -E 'BENCH (decode|prefill)' | sed -E 's/\| no graph.*//'
  done
fi
if has tune; then
  echo "== decode/prefill timings under the tuning knobs (DCU_FILL, DCU_PMAX, DCU_DEC_MIN)"
  for v in ${TUNE:-"DCU_PMAX=512" "DCU_PMAX=256" "DCU_PMAX=128" "DCU_FILL=8 DCU_PMAX=256" "DCU_DEC_MIN=100000"}; do
    echo "-- $v"
    env $v DCU_REF=$SHAPE DCU_BENCH=1 timeout 60 "$T" -test.count=1 -test.run 'TestBench' 2>&1 | grep -E 'BENCH (decode|prefill)|PROFILE decode b256' | sed -E 's/\| no graph.*//'
  done
fi
if has sweep; then
  # decode only (DCU_BENCH_BATCHES, default batch 1), one line per setting
  # in SWEEP (commas inside a setting separate variables); ROUNDS rounds,
  # the settings in turn in each, so that a drifting machine weighs on all
  # alike. The setting "base" runs BASE_TEST, a second test binary (the
  # build to compare against), with no variables.
  echo "== decode under each setting of SWEEP, ${ROUNDS:-1} round(s)"
  for r in $(seq 1 "${ROUNDS:-1}"); do
    for v in ${SWEEP:-"DCU_L2PF=0" "DCU_L2PF=4096"}; do
      bin=$T vars=${v//,/ }
      if [ "$v" = base ]; then bin=${BASE_TEST:?"SWEEP names base: set BASE_TEST"}; vars=; fi
      printf 'r%s %-28s ' "$r" "$v"
      env $vars DCU_BENCH_BATCHES=${SWEEP_BATCHES:-1} DCU_REF=$SHAPE DCU_BENCH=1 timeout 60 "$bin" -test.count=1 -test.run 'TestBench' 2>&1 | grep -E 'BENCH decode|FAIL|panic' | sed -E 's/\| no graph.*//; s/^BENCH //' | tr '\n' ' '
      echo
    done
  done | tee "$OUT/sweep.txt"
fi
if has ncu; then
  echo "== ncu: one tiled attention launch of the 2048-token prefill (TestShapeModel)"
  DCU_REF=$SHAPE timeout 200 ncu --kernel-name regex:attn_tile --launch-skip 160 --launch-count 1 \
    --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
    "$T" -test.count=1 -test.run 'TestShapeModel' > "$OUT/ncu.txt" 2>&1
  grep -E 'attn_tile|Duration|Throughput|Achieved Occupancy|Theoretical Occupancy|Registers Per|Block Limit|Stall|Warp Cycles Per Issued' "$OUT/ncu.txt" | head -40
fi
if has sample; then
  echo "== device sampling and the overlap scheduler on the fixtures"
  timeout 200 "$T" -test.v -test.count=1 -test.run 'TestSample|TestLaunchGreedy|TestEngineOverlap|TestEngineGraphReplay' 2>&1 | tee "$OUT/sample.log" | grep -E '^(---|FAIL|PASS|ok|panic)|cuda_test|sample_test'
fi
if has transfer; then
  # bin/ucx.test (go test -c -o bin/ucx.test ./transceiver/ucx) and, in
  # UCX_LIB_DIR, a CUDA-enabled UCX (the nixl-cu13 wheel's libucp* + ucx/);
  # bin/nixl.test (optional; likewise ./transceiver/nixl) with NIXL_LIB_DIR
  # (the wheel's folder of libnixl_capi.so); UCX_PERFTEST (optional): a
  # CUDA-enabled ucx_perftest as the reference
  echo "== KV transfer between two processes on this GPU (46 MB TinyLlama request)"
  if [ -n "${UCX_LIB_DIR:-}" ]; then
    export DISAGG_UCX_LIB=$(ls "$UCX_LIB_DIR"/libucp*.so* | head -1) UCX_MODULE_DIR=$UCX_LIB_DIR/ucx
    export LD_LIBRARY_PATH="$UCX_LIB_DIR:$LD_LIBRARY_PATH"
  fi
  (cd "$ROOT/transceiver/ucx" && timeout 200 "$ROOT/bin/ucx.test" -test.v -test.count=1 -test.run 'TestTwoProcess/DeviceTransfers' 2>&1) | tee "$OUT/transfer.log" | grep -vE '^=== (RUN|PAUSE|CONT)'
  if [ -x "$ROOT/bin/nixl.test" ]; then
    echo "== the same through NIXL (UCX plugin)"
    (cd "$ROOT/transceiver/nixl" && timeout 200 "$ROOT/bin/nixl.test" -test.v -test.count=1 -test.run 'TestTwoProcess/DeviceTransfers' 2>&1) | tee "$OUT/transfer-nixl.log" | grep -vE '^=== (RUN|PAUSE|CONT)'
  fi
  if [ -n "${UCX_PERFTEST:-}" ]; then
    # the reference: a CUDA-enabled ucx_perftest (the libucx-cu13 wheel's
    # libucx/bin/ucx_perftest; its ../lib is put on the library path), two
    # processes on this GPU: puts of the request with many and with one in
    # flight, and of one block with one in flight (UCX's own fixed cost);
    # then gets of the request, with cuda_ipc's zero-copy GET on as the
    # transceiver turns it on (UCX's own default leaves it off without
    # NVLink); perftest loads its own UCX's modules, not UCX_LIB_DIR's
    echo "== ucx_perftest -m cuda -e: puts of 46 MB (default window, then -O 1) and 352 KB (-O 1), gets of 46 MB (-O 1, then default window); columns as perftest prints them"
    ptlib=$(cd "$(dirname "$UCX_PERFTEST")/../lib" 2>/dev/null && pwd)
    port=$((30000 + RANDOM % 20000))
    for a in "-t ucp_put_bw -s 46137344 -n 200" "-t ucp_put_bw -s 46137344 -n 200 -O 1" "-t ucp_put_bw -s 360448 -n 2000 -O 1" \
             "-t ucp_get -s 46137344 -n 200 -O 1" "-t ucp_get -s 46137344 -n 200"; do
      port=$((port + 1))
      env -u UCX_MODULE_DIR UCX_CUDA_IPC_ENABLE_GET_ZCOPY=y LD_LIBRARY_PATH=$ptlib "$UCX_PERFTEST" -p $port -e > "$OUT/perftest-srv.log" 2>&1 & srv=$!
      sleep 0.7
      printf '%-40s ' "$a"
      env -u UCX_MODULE_DIR UCX_CUDA_IPC_ENABLE_GET_ZCOPY=y LD_LIBRARY_PATH=$ptlib timeout 60 "$UCX_PERFTEST" 127.0.0.1 -p $port -m cuda -e $a 2>&1 | grep -E '^Final|rror' | tail -1
      wait $srv
    done | tee "$OUT/perftest.log"
  fi
  echo "== transceiver fixed costs: one-block write, notification and push round trips (host memory, make bench-transfer)"
  (cd "$ROOT/transceiver/ucx" && timeout 100 "$ROOT/bin/ucx.test" -test.run '^$' -test.bench BenchmarkLatency -test.benchtime 1s -test.count 3 2>&1) | tee "$OUT/latency.log" | grep '^Benchmark'
fi
if has ncu-gemv; then
  echo "== ncu: the fused GEMVs of layer 0 of a one-token step (TestShapeModel)"
  DCU_REF=$SHAPE timeout 200 ncu --kernel-name regex:"${NCU_KERNELS:-fgemv}" --launch-count ${NCU_COUNT:-4} \
    --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats --section MemoryWorkloadAnalysis \
    "$T" -test.count=1 -test.run 'TestShapeModel' > "$OUT/ncu-gemv.txt" 2>&1
  grep -E "fgemv|attn|Duration|DRAM Throughput|Memory Throughput|Achieved Occupancy|Theoretical Occupancy|Registers Per|Grid Size|Stall|Warp Cycles Per Issued|Mem Busy|Max Bandwidth" "$OUT/ncu-gemv.txt" | head -80
fi
if has memcheck; then
  echo "== compute-sanitizer memcheck"
  timeout 240 compute-sanitizer --tool memcheck --error-exitcode 9 "$T" -test.count=1 -test.run 'TestFixtureLogits/tiny-llama3|TestBadBatch' > "$OUT/memcheck.log" 2>&1
  echo "memcheck exit $?"; tail -4 "$OUT/memcheck.log"
  if [ -f "$SHAPE/ref.json" ]; then
    echo "== compute-sanitizer memcheck, TinyLlama-shaped model (tensor-core prefill and decode kernels, GEMV)"
    DCU_DEC_MIN=1 DCU_REF=$SHAPE timeout 400 compute-sanitizer --tool memcheck --error-exitcode 9 "$T" -test.count=1 -test.run 'TestShapeModel' > "$OUT/memcheck-shape.log" 2>&1
    echo "memcheck exit $?"; tail -3 "$OUT/memcheck-shape.log"
  fi
fi
