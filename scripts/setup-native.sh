#!/usr/bin/env bash
# Installs the native libraries the transceiver tests need on a fresh
# Debian or Ubuntu machine (run as root, or with sudo available):
#   - UCX (libucp) from the distribution: libucx-dev (headers, used only by
#     the ABI test) and ucx-utils (ucx_info, ucx_perftest);
#   - NIXL from PyPI, the nixl-cu13 wheel, into the project virtualenv
#     .venv (created if missing). Only its native libraries are used
#     (libnixl_capi.so and plugins), so it is installed without its Python
#     dependencies (torch, numpy).
# Environment: NIXL_WHEEL (default nixl-cu13==1.5.1), VENV (default .venv).
set -euo pipefail

cd "$(dirname "$0")/.."
NIXL_WHEEL="${NIXL_WHEEL:-nixl-cu13==1.5.1}"
VENV="${VENV:-.venv}"

SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then
    SUDO=sudo
fi

if ! ldconfig -p | grep -q 'libucp\.so\.0' || [ ! -f /usr/include/ucp/api/ucp.h ] || ! command -v ucx_perftest >/dev/null; then
    $SUDO apt-get update
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends libucx-dev ucx-utils
fi

if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
if ! find "$VENV" -name libnixl_capi.so -print -quit | grep -q .; then
    "$VENV/bin/python" -m pip install --no-deps "$NIXL_WHEEL"
fi

echo "UCX:  $(ucx_info -v | head -1)"
echo "NIXL: $(find "$VENV" -name libnixl_capi.so -print -quit)"
