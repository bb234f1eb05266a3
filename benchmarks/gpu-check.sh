#!/usr/bin/env bash
# One command for a real GPU without internet: installs the pure-Python wheels carried in .whl/
# (benchmarks/fetch-wheels.sh makes them, and copies the training images to .gpu-data/), then
# runs benchmarks/gpu_check.py, which rewrites its report in --out after every step. On the
# device machine (BENCHMARKS.md, "GPU"):
#   run(command="benchmarks/gpu-check.sh --out $OUT", carry=[".whl", ".gpu-data"], timeout_s=540)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
    if python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/xpcnn-site .whl/*.whl; then
        export PYTHONPATH="/tmp/xpcnn-site${PYTHONPATH:+:$PYTHONPATH}"
    else  # the check still runs: `xpcnn info`, its first step, then says what is missing
        echo "gpu-check.sh: could not install .whl/*.whl; going on without them" >&2
    fi
fi
exec python3 benchmarks/gpu_check.py "$@"
