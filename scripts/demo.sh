#!/usr/bin/env bash
# `make demo`: mounts a demo tree through layerfs and shows it working, then unmounts.
set -euo pipefail
cd "$(dirname "$0")/.."
CLI="node dist/src/cli/layerfs.js"
work=$(mktemp -d /tmp/layerfs-demo-XXXXXX)
cleanup() {
  for m in $(grep -o " $work/[^ ]*" /proc/mounts | sort -r); do umount -l "$m" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

mkdir -p "$work/tree/etc" "$work/mnt"
echo "hello from the tree" > "$work/tree/hello.txt"
ln -s /etc "$work/tree/host-etc"
setfattr -n user.demo -v 42 "$work/tree/hello.txt" 2>/dev/null || true

say "passthrough: layerfs mount --passthrough $work/tree $work/mnt"
$CLI mount --passthrough "$work/tree" "$work/mnt"
grep " $work/mnt " /proc/mounts
say "the same inodes, times and xattrs as the tree"
ls -li --time-style=full-iso "$work/tree/hello.txt" "$work/mnt/hello.txt"
getfattr -d "$work/mnt/hello.txt" 2>/dev/null || true
say "a write through the mount lands in the tree"
echo "written through layerfs" > "$work/mnt/new.txt"
cat "$work/tree/new.txt"
say "a symlink in the tree is shown as a link, never followed by the daemon"
ls -l "$work/mnt/host-etc"
say "unmount: layerfs umount $work/mnt"
$CLI umount "$work/mnt"
grep -c " $work/mnt " /proc/mounts || echo "(no longer mounted)"
