#!/usr/bin/env bash
# What benchmarks/gpu-check.sh needs on a GPU machine without internet, into folders the
# repository ignores and the device call carries: the pure-Python wheels its image lacks (it has
# CuPy, PyTorch, NumPy, Pillow, tqdm, matplotlib and pytest) into .whl/, for Python 3.12 on
# x86-64 Linux, and the CIFAR-10 training archive into .gpu-data/ where ../shared holds it.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -f .whl/*.whl  # two versions of one package stop the install
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 -d .whl \
    "array-api-compat>=1.9" "array-api-strict>=2.2"
ls .whl
archive=../shared/data/cifar10-jpeg/train.tar.gz
if [ -f "$archive" ]; then
    mkdir -p .gpu-data
    cp -f "$archive" .gpu-data/train.tar.gz
    ls -l .gpu-data
else
    echo "fetch-wheels.sh: no $archive here; pass gpu-check.sh --data ARCHIVE yourself" >&2
fi
