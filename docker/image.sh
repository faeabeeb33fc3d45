#!/bin/bash
# Builds the layerfs image (docker/Containerfile) with podman from this checkout's build. The
# base is a Debian bookworm minbase made here by debootstrap from the machine's own Debian mirror
# (no image registry needed) unless BASE names an image podman already has.
#   docker/image.sh [TAG]          (default localhost/layerfs:latest; BASE=... to choose the base)
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
TAG=${1:-localhost/layerfs:latest}
BASE=${BASE:-localhost/debian:bookworm-minbase}
die() { echo "layerfs image: $*" >&2; exit 1; }
command -v podman >/dev/null || die "podman is not installed (make containers, or apt-get install podman)"
[ -x "$REPO/native/build/Release/layerfs-helper" ] && [ -f "$REPO/dist/src/cli/layerfs.js" ] || die "build first: make build"
work=$(mktemp -d /var/tmp/layerfs-image.XXXXXX)
trap 'rm -rf "$work"' EXIT
if ! podman image exists "$BASE"; then
  [ "$BASE" = localhost/debian:bookworm-minbase ] || die "no image $BASE"
  command -v debootstrap >/dev/null || die "debootstrap is not installed (apt-get install debootstrap)"
  mirror=$(awk '/^URIs:/ {print $2; exit} /^deb / {print $2; exit}' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null | head -1)
  echo "making $BASE with debootstrap from ${mirror:-http://deb.debian.org/debian} (about a minute)"
  debootstrap --variant=minbase bookworm "$work/rootfs" "${mirror:-http://deb.debian.org/debian}" >/dev/null
  tar --numeric-owner --xattrs -C "$work/rootfs" -c . | podman import - "$BASE" >/dev/null
  rm -rf "$work/rootfs"
fi
ctx="$work/ctx"
mkdir -p "$ctx/layerfs/native/build/Release" "$ctx/layerfs/node_modules"
cp "$(command -v node)" "$ctx/node"
cp -a "$REPO/dist" "$REPO/package.json" "$ctx/layerfs/"
cp -a "$REPO/native/build/Release/layerfs.node" "$REPO/native/build/Release/layerfs-helper" "$ctx/layerfs/native/build/Release/"
# the runtime dependencies (neither has dependencies of its own)
for m in commander lru-cache; do cp -a "$REPO/node_modules/$m" "$ctx/layerfs/node_modules/"; done
cp "$REPO/docker/Containerfile" "$ctx/"
podman build -q --network host --build-arg BASE="$BASE" -t "$TAG" "$ctx"
echo "layerfs image: $TAG"
