#!/usr/bin/env bash
# Build and smoke-test the CPU image on a Debian bookworm machine that has no Docker Hub access
# (the development machine): run as root from anywhere in the repository.
#
#   1. starts Debian's dockerd by hand (vfs storage, no bridge or iptables) unless an engine answers;
#   2. makes a bookworm base image with debootstrap from this machine's Debian mirror, holding
#      python3, python3-venv and this machine's CA bundle (pip inside the build reaches PyPI
#      through a TLS-intercepting proxy, and Debian's pip trusts the system bundle);
#   3. builds docker/Dockerfile on that base with host networking (there is no bridge);
#   4. runs `xpcnn info`, then a one-epoch train and an eval on a tiny synthetic image folder,
#      all with --network none.
#
# Environment: IMAGE (xpcnn:cpu), BASE_IMAGE (xpcnn-base:bookworm), DOCKERD_LOG.
set -euo pipefail

IMAGE=${IMAGE:-xpcnn:cpu}
BASE_IMAGE=${BASE_IMAGE:-xpcnn-base:bookworm}
DOCKERD_LOG=${DOCKERD_LOG:-/var/log/dockerd-xpcnn.log}

cd "$(dirname "$0")/.."
if [[ $(id -u) -ne 0 ]]; then
    echo "build-local.sh: run as root (it installs packages, starts dockerd, runs debootstrap)" >&2
    exit 2
fi

step() { printf '\n== %s\n' "$*"; }

step "engine"
missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if ((${#missing[@]})); then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi
if ! docker info >/dev/null 2>&1; then
    setsid dockerd --storage-driver=vfs --iptables=false --bridge=none >"$DOCKERD_LOG" 2>&1 &
    for _ in $(seq 60); do
        docker info >/dev/null 2>&1 && break
        sleep 1
    done
    docker info >/dev/null 2>&1 || { echo "dockerd did not come up; see $DOCKERD_LOG" >&2; exit 1; }
fi
docker version --format 'client {{.Client.Version}}, server {{.Server.Version}}'

step "base image $BASE_IMAGE"
if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    echo "exists; to rebuild: docker rmi $BASE_IMAGE"
else
    mirror=$(awk '$1 == "URIs:" { print $2; exit }' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    mirror=${mirror:-http://deb.debian.org/debian}
    rootfs=$(mktemp -d /var/tmp/xpcnn-rootfs.XXXXXX)
    chmod 755 "$rootfs"  # it becomes the image's /, which mktemp would leave readable by root only
    trap 'rm -rf "$rootfs"' EXIT
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$rootfs" "$mirror"
    cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/archives/*.deb
    # An imported tarball has no config; give it the PATH and CMD a Docker Hub image would have.
    tar -C "$rootfs" -c . | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["bash"]' - "$BASE_IMAGE"
    rm -rf "$rootfs"
    trap - EXIT
fi

step "build $IMAGE"
build_args=(--build-arg "BASE=$BASE_IMAGE")
# A package index configured on this machine (not file:// ones, which the build cannot see).
index_url=${PIP_INDEX_URL:-$(python3 -m pip config get global.index-url 2>/dev/null || true)}
if [[ $index_url == http* ]]; then
    build_args+=(--build-arg "PIP_INDEX_URL=$index_url")
fi
start=$SECONDS
docker build --network host "${build_args[@]}" -f docker/Dockerfile -t "$IMAGE" .
echo "built in $((SECONDS - start)) s"
docker image ls "$IMAGE"

step "xpcnn info"
docker run --rm --network none "$IMAGE" info | tee /dev/stderr | grep -q "^kernels *ok$"

step "one-epoch train and eval on a tiny synthetic image folder"
work=$(mktemp -d /var/tmp/xpcnn-smoke.XXXXXX)
mkdir "$work/data" "$work/runs"
user="$(id -u):$(id -g)"
# The image has numpy and Pillow, so it writes its own data: nothing needed on the host.
docker run --rm --network none --user "$user" -v "$work/data:/data" --entrypoint python \
    "$IMAGE" -c '
import numpy as np
from pathlib import Path
from PIL import Image

rng = np.random.default_rng(0)
for label, channel in (("red", 0), ("blue", 2)):
    folder = Path("/data/tiny") / label
    folder.mkdir(parents=True)
    for i in range(32):
        pixels = rng.integers(0, 96, (32, 32, 3), dtype=np.uint8)
        pixels[..., channel] += 128
        Image.fromarray(pixels).save(folder / f"{i:03d}.png")
'
docker run --rm --network none --user "$user" \
    -v "$work/data:/data" -v "$work/runs:/runs" \
    "$IMAGE" train --data /data/tiny --limit 500 --epochs 1 --out /runs/smoke
docker run --rm --network none --user "$user" \
    -v "$work/data:/data" -v "$work/runs:/runs" \
    "$IMAGE" eval --checkpoint smoke/checkpoint.npz
find "$work/runs" -type f | sort
rm -rf "$work"
