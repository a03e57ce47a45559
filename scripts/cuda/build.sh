#!/usr/bin/env bash
# Builds the CUDA backend: cuda/kernels/*.cu -> cuda/build/libdcu.a (sm_90),
# then bin/worker-cuda and cuda/build/cuda.test with -tags cuda.
#   scripts/cuda/build.sh            everything
#   scripts/cuda/build.sh lib        the kernels library only
#   scripts/cuda/build.sh test       the library and the device test binary
# The binaries need libcublas.so.13 and libcublasLt.so.13 at run time
# (cudart is linked statically): on the GPU machine the system CUDA 13 has
# them; elsewhere put the wheel's lib folder on LD_LIBRARY_PATH.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
source "$ROOT/scripts/cuda/env.sh"
[ -n "${CUDA_HOME:-}" ] || { echo "no CUDA toolkit: run scripts/cuda/setup.sh or set CUDA_HOME" >&2; exit 1; }
ARCH=${CUDA_ARCH:-sm_90}
OUTD=$ROOT/cuda/build
mkdir -p "$OUTD"
NVCC_FLAGS=(-O3 -std=c++17 -arch="$ARCH" -Xcompiler -fPIC -lineinfo --resource-usage)
for cu in "$ROOT"/cuda/kernels/*.cu; do
  o=$OUTD/$(basename "${cu%.cu}").o
  newer=
  [ -f "$o" ] && newer=$(find "$ROOT/cuda/kernels" -name '*.h' -newer "$o" | head -1)
  if [ ! -f "$o" ] || [ "$cu" -nt "$o" ] || [ -n "$newer" ]; then
    echo "nvcc $ARCH $(basename "$cu")"
    nice -n 10 "$CUDA_HOME/bin/nvcc" "${NVCC_FLAGS[@]}" -I"$ROOT/cuda/kernels" -c "$cu" -o "$o" 2> "$o.log" || { cat "$o.log"; exit 1; }
  fi
done
# registers and spills of every kernel, from each object's log
cat "$OUTD"/*.o.log 2>/dev/null | grep -E 'Function properties|registers|spill' > "$OUTD/resource-usage.txt" || true
rm -f "$OUTD/libdcu.a"
ar rcs "$OUTD/libdcu.a" "$OUTD"/*.o
# Libraries the cgo link line names (-lcublas -lcudart_static), gathered in one folder.
ln -sf "$CUDA_HOME/lib/libcublas.so.13" "$OUTD/libcublas.so" 2>/dev/null || ln -sf "$CUDA_HOME/lib64/libcublas.so" "$OUTD/libcublas.so"
ln -sf "$CUDA_HOME/lib/libcublasLt.so.13" "$OUTD/libcublasLt.so" 2>/dev/null || true
cp -f "$CUDA_HOME"/lib*/libcudart_static.a "$OUTD/"
[ "${1:-all}" = lib ] && exit 0
cd "$ROOT"
export CGO_ENABLED=1
# the wheel's libs for the linker's check of libcublas' own dependencies
export LIBRARY_PATH="$CUDA_HOME/lib${LIBRARY_PATH:+:$LIBRARY_PATH}"
export CGO_LDFLAGS="-Wl,-rpath-link,$CUDA_HOME/lib ${CGO_LDFLAGS:-}"
mkdir -p bin
# the library's hash in the link, so that Go relinks when only the kernels changed
LDX="-X disagg/cuda.LibHash=$(sha256sum "$OUTD/libdcu.a" | cut -c1-16)"
nice -n 10 go test -c -tags cuda -ldflags "$LDX" -o "$OUTD/cuda.test" ./cuda
echo "built $OUTD/libdcu.a $OUTD/cuda.test"
[ "${1:-all}" = test ] && exit 0
nice -n 10 go build -tags cuda -ldflags "$LDX" -o bin/worker-cuda ./cmd/worker
echo "built bin/worker-cuda"
