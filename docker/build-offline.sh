#!/usr/bin/env bash
# Builds the image chat-zmq:latest with no image registry: the workspace's release
# binaries and the shared libraries they load, on `scratch` (docs/operations.md).
#
#   docker/build-offline.sh              cargo build --release -p bins, then the image
#   docker/build-offline.sh --no-cargo   reuse target/release as it is (CI: already built)
#
# Environment: IMAGE (default chat-zmq:latest), CARGO_TARGET_DIR (default ./target).
set -euo pipefail
cd "$(dirname "$0")/.."

image=${IMAGE:-chat-zmq:latest}
release=${CARGO_TARGET_DIR:-target}/release

if [ "${1:-}" != "--no-cargo" ]; then
  cargo build --release --locked -p bins
fi
if ! docker info >/dev/null 2>&1; then
  echo "no Docker engine answers (docker info failed): start it, or check DOCKER_HOST" >&2
  exit 1
fi

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
docker/make-rootfs.sh "$release" "$stage"
cp docker/Dockerfile.offline "$stage/Dockerfile"

# Without buildx the classic builder does it (FROM scratch needs no pull either way).
if ! docker buildx version >/dev/null 2>&1; then
  export DOCKER_BUILDKIT=0
fi
previous=$(docker image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
docker build --quiet --tag "$image" \
  --label "org.opencontainers.image.revision=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
  "$stage" >/dev/null
# The image this one replaces is left without a name: remove it (and its layers) unless
# a container still uses it, so repeated builds do not pile up.
current=$(docker image inspect --format '{{.Id}}' "$image")
if [ -n "$previous" ] && [ "$previous" != "$current" ]; then
  docker image rm "$previous" >/dev/null 2>&1 || true
fi
echo "built $image: $(docker image inspect --format '{{.Size}}' "$image" | awk '{ printf "%.0f MB", $1 / 1e6 }')"
