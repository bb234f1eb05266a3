#!/usr/bin/env bash
# One command for a real GPU (no internet needed): installs the pure-Python wheels carried in
# .whl/ (benchmarks/fetch-wheels.sh makes them), then runs benchmarks/gpu_check.py, which writes
# one markdown report. Arguments pass through, for example:
#   benchmarks/gpu-check.sh --data .gpu-data/train.tar.gz --out gpu-report.md
set -euo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/xpcnn-site .whl/*.whl
    export PYTHONPATH="/tmp/xpcnn-site${PYTHONPATH:+:$PYTHONPATH}"
fi
exec python3 benchmarks/gpu_check.py "$@"
