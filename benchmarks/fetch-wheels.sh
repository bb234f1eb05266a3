#!/usr/bin/env bash
# The pure-Python wheels a GPU machine without internet lacks (its image has CuPy, PyTorch,
# NumPy, Pillow, tqdm, matplotlib and pytest), into .whl/ for benchmarks/gpu-check.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download -q --no-deps --only-binary=:all: -d .whl \
    "array-api-compat>=1.9" "array-api-strict>=2.2"
ls .whl
