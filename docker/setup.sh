#!/bin/bash
# Sets up container engines to use layerfs: installs what is missing (Debian packages, the layerfs
# build and its programs), then configures
#   podman (root, or with --user NAME that user's rootless store): storage.conf with layerfs-overlay
#     as the overlay driver's mount_program, containers.conf for this machine kind;
#   Docker Engine (--docker): daemon.json with the fuse-overlayfs storage driver, and layerfs as
#     the `fuse-overlayfs` that dockerd runs (a systemd drop-in, and dockerd-layerfs for
#     machines without systemd).
# --prefix DIR writes every file below DIR instead of / (to look first, or for tests);
# --no-install skips apt and make. A config file that exists and is not ours is kept beside as
# FILE.before-layerfs. Run as root.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
PREFIX=""
USER_NAME=""
PODMAN=1
DOCKER=0
INSTALL=1

die() { echo "layerfs setup: $*" >&2; exit 1; }
usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; echo "usage: $0 [--user NAME] [--docker] [--no-podman] [--prefix DIR] [--no-install]"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --user) [ $# -ge 2 ] || die "--user needs a name"; USER_NAME=$2; shift 2 ;;
    --docker) DOCKER=1; shift ;;
    --no-podman) PODMAN=0; shift ;;
    --prefix) [ $# -ge 2 ] || die "--prefix needs a dir"; PREFIX=$(mkdir -p "$2" && cd "$2" && pwd); shift 2 ;;
    --no-install) INSTALL=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done
[ "$(id -u)" = 0 ] || die "run as root (it installs packages and writes /etc)"
if [ -n "$USER_NAME" ]; then
  id -u "$USER_NAME" >/dev/null 2>&1 || die "no such user: $USER_NAME"
  [ "$DOCKER" = 0 ] || die "--docker configures the system's dockerd; run it without --user"
fi

# ---- packages and the layerfs programs
pkgs="uidmap"
[ "$PODMAN" = 1 ] && pkgs="$pkgs podman runc slirp4netns"
[ "$DOCKER" = 1 ] && pkgs="$pkgs docker.io"
if [ "$INSTALL" = 1 ]; then
  make -C "$REPO" --no-print-directory debs DEB_PKGS="$pkgs"
  make -C "$REPO" --no-print-directory build
fi
HELPER="$REPO/native/build/Release/layerfs-helper"
[ -x "$HELPER" ] || die "$HELPER is not built (run make build, or drop --no-install)"
mkdir -p "$PREFIX/usr/local/bin" "$PREFIX/usr/local/lib/layerfs/bin"
for b in layerfs layerfs-overlay; do ln -sfn "$HELPER" "$PREFIX/usr/local/bin/$b"; done
# dockerd's driver finds the program by this name; kept apart from PATH so that the Debian
# fuse-overlayfs stays what `fuse-overlayfs` means everywhere else
ln -sfn "$HELPER" "$PREFIX/usr/local/lib/layerfs/bin/fuse-overlayfs"
echo "layerfs: $PREFIX/usr/local/bin/layerfs-overlay -> $HELPER"

# put FILE from docker/ in place (with @PREFIX@ filled in), keeping a foreign one beside
place() {
  local src="$REPO/docker/$1" dst="$2" mode="${3:-644}"
  mkdir -p "$(dirname "$dst")"
  local tmp; tmp=$(mktemp "$dst.XXXXXX")
  sed "s|@PREFIX@|$PREFIX|g" "$src" > "$tmp"
  if [ -e "$dst" ] && ! cmp -s "$tmp" "$dst" && [ ! -e "$dst.before-layerfs" ]; then cp -p "$dst" "$dst.before-layerfs"; echo "kept $dst as $dst.before-layerfs"; fi
  chmod "$mode" "$tmp"
  mv "$tmp" "$dst"
  echo "wrote $dst"
}

# ---- podman
if [ "$PODMAN" = 1 ] && [ -z "$USER_NAME" ]; then
  place storage.conf "$PREFIX/etc/containers/storage.conf"
  place containers.conf "$PREFIX/etc/containers/containers.conf"
  if [ -z "$PREFIX" ] && [ -d /var/lib/containers/storage/overlay ] && [ ! -e /var/lib/containers/storage/overlay/.has-mount-program ]; then
    echo "note: /var/lib/containers/storage was made without a mount program: empty it with 'podman system reset' before use"
  fi
fi
if [ "$PODMAN" = 1 ] && [ -n "$USER_NAME" ]; then
  home=$(getent passwd "$USER_NAME" | cut -d: -f6)
  uid=$(id -u "$USER_NAME"); gid=$(id -g "$USER_NAME")
  cfg="$PREFIX$home/.config/containers"
  place storage.rootless.conf "$cfg/storage.conf"
  place containers.conf "$cfg/containers.conf"
  chown -R "$uid:$gid" "$PREFIX$home/.config"
  if ! grep -q "^$USER_NAME:" /etc/subuid || ! grep -q "^$USER_NAME:" /etc/subgid; then
    # the first 65536 ids above every range given out so far
    start=$(awk -F: 'BEGIN{m=100000} {e=$2+$3; if (e>m) m=e} END{print m}' /etc/subuid /etc/subgid)
    range="$start-$((start + 65535))"
    grep -q "^$USER_NAME:" /etc/subuid || usermod --add-subuids "$range" "$USER_NAME"
    grep -q "^$USER_NAME:" /etc/subgid || usermod --add-subgids "$range" "$USER_NAME"
    echo "gave $USER_NAME subordinate ids $range"
  fi
  # rootless mounts open /dev/fuse as the user; this kind of machine makes it 0600 root
  if ! su -s /bin/sh "$USER_NAME" -c 'test -r /dev/fuse -a -w /dev/fuse' 2>/dev/null; then
    setfacl -m "u:$USER_NAME:rw" /dev/fuse
    echo "gave $USER_NAME read-write access to /dev/fuse (an ACL: set it again after a reboot, or make a udev rule)"
  fi
fi

# ---- Docker Engine
if [ "$DOCKER" = 1 ]; then
  dj="$PREFIX/etc/docker/daemon.json"
  if [ -s "$dj" ]; then
    # keep the daemon's other settings: set only the storage driver
    [ -e "$dj.before-layerfs" ] || cp -p "$dj" "$dj.before-layerfs"
    python3 - "$dj" <<'PY'
import json, sys
p = sys.argv[1]
d = json.load(open(p))
d['storage-driver'] = 'fuse-overlayfs'
open(p, 'w').write(json.dumps(d, indent=2) + '\n')
PY
    echo "set storage-driver in $dj (kept the rest; the old one is $dj.before-layerfs)"
  else
    place daemon.json "$dj"
  fi
  place docker-layerfs.conf "$PREFIX/etc/systemd/system/docker.service.d/layerfs.conf"
  place dockerd-layerfs "$PREFIX/usr/local/sbin/dockerd-layerfs" 755
  if [ -z "$PREFIX" ] && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    echo "restart Docker to use it: systemctl restart docker (images of another driver are not shown)"
  else
    echo "no systemd here: start Docker with $PREFIX/usr/local/sbin/dockerd-layerfs [dockerd options]"
  fi
fi
echo "layerfs setup: done"
