#!/usr/bin/env bash
# The GPU check rehearsed on the GPU machine's software, on the CPU (CONTRIBUTING.md).
#   scripts/gpu_rehearsal.sh venv      build the GPU image's venv (scripts/gpu-image.txt) unless complete
#   scripts/gpu_rehearsal.sh run OUT   make gpu-check, with the CPU switch, in a fresh layer over it
# The venv lives outside the clone, keyed by the list's hash, and no rehearsal writes into it: each
# one makes a throw-away venv whose .pth file puts the image's site-packages on its path, so that
# `make gpu-check GPU_PYTHON=<layer>/bin/python` installs exactly as on the GPU machine (the wheels
# with --no-index, the project editable) while the image stays as built.
set -euo pipefail
cd "$(dirname "$0")/.."
LIST=scripts/gpu-image.txt
ROOT=${GPU_REHEARSAL_ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/attnexp-gpu-rehearsal}
VENV=$ROOT/$(sha256sum "$LIST" | cut -c1-16)
PURELIB="import sysconfig; print(sysconfig.get_path('purelib'))"

build_venv() {
    mkdir -p "$ROOT"
    (
        flock 9  # two clones on one machine: the second waits for the first's venv
        [ -f "$VENV/.complete" ] && exit 0
        pyenv_root=$(pyenv root 2>/dev/null || echo "${PYENV_ROOT:-$HOME/.pyenv}")
        python=$(ls -d "$pyenv_root"/versions/3.12.*/bin/python 2>/dev/null | sort -V | tail -1 || true)
        python=${python:-$(command -v python3.12)} || { echo "no Python 3.12 (pyenv or python3.12)" >&2; exit 1; }
        echo "building $VENV from $LIST with $python"
        rm -rf "$VENV"
        "$python" -m venv "$VENV"
        # --no-deps: the list pins every package; `pip check` then proves it complete
        "$VENV/bin/python" -m pip install -q --no-deps --no-cache-dir -r "$LIST"
        "$VENV/bin/python" -m pip check
        touch "$VENV/.complete"  # last: a venv without it is rebuilt
    ) 9>"$VENV.lock"
}

case "${1:-}" in
venv)
    build_venv
    ;;
run)
    out=${2:?usage: $0 run OUT}
    build_venv
    layer=$(mktemp -d)
    trap 'rm -rf "$layer"' EXIT
    "$VENV/bin/python" -m venv --without-pip "$layer"
    "$VENV/bin/python" -c "$PURELIB" >"$("$layer/bin/python" -c "$PURELIB")/_gpu_image.pth"
    ${MAKE:-make} --no-print-directory gpu-check GPU_PYTHON="$layer/bin/python" OUT="$out" GPU_CHECK_FLAGS="${GPU_CHECK_FLAGS:---cpu}"
    ;;
*)
    echo "usage: $0 venv | run OUT" >&2
    exit 2
    ;;
esac
