#!/usr/bin/env bash
# `make demo`: mounts a demo tree through layerfs and shows it working, then unmounts.
set -euo pipefail
cd "$(dirname "$0")/.."
CLI="node dist/src/cli/layerfs.js"
work=$(mktemp -d /tmp/layerfs-demo-XXXXXX)
cleanup() {
  for m in $(grep -o " $work/[^ ]*" /proc/mounts | sort -r); do umount -l "$m" 2>/dev/null || true; done
  for l in $(losetup -J 2>/dev/null | grep -o '"name": *"[^"]*", *"[^}]*' | grep "$work" | grep -o '/dev/loop[0-9]*'); do losetup -d "$l" || true; done
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

say "overlay: two lower layers, an upper and a work dir"
mkdir -p "$work/lower1/etc" "$work/lower2/etc" "$work/upper" "$work/ovwork" "$work/merged"
echo "from lower2" > "$work/lower2/etc/motd"; echo "bottom" > "$work/lower2/etc/issue"
echo "from lower1 (top)" > "$work/lower1/etc/motd"
say "layerfs mount hands it to the resident service (the C helper mounts; no Node start once the service runs)"
$CLI mount -o "lowerdir=$work/lower1:$work/lower2,upperdir=$work/upper,workdir=$work/ovwork" "$work/merged"
cat "$work/merged/etc/motd" "$work/merged/etc/issue"
$CLI ps
say "a write copies up; a removal leaves a whiteout; the lowers are untouched"
echo "changed in the union" >> "$work/merged/etc/motd"
rm "$work/merged/etc/issue"
mv "$work/merged/etc" "$work/merged/etc2"
ls -la "$work/merged/etc2"
echo "upper dir (kernel overlayfs format):"; (cd "$work/upper" && find . -printf '%p %y\n' | sort)
getfattr -d -m - -h "$work/upper/etc2" 2>/dev/null | grep -v '^#' | grep . || true
cat "$work/lower2/etc/issue"
$CLI umount "$work/merged"
say "the same upper under kernel overlayfs"
mkdir -p "$work/kwork"
if mount -t overlay overlay -o "lowerdir=$work/lower1:$work/lower2,upperdir=$work/upper,workdir=$work/kwork,redirect_dir=on" "$work/merged" 2>/dev/null; then
  ls "$work/merged" "$work/merged/etc2"; umount "$work/merged"
else
  echo "(kernel overlayfs not available here)"
fi

say "thin: a pool in two files, a volume with ext4 on it, a snapshot"
$CLI thin create "$work/pool" --data-size 1G
$CLI thin message "$work/pool" 'create_thin 0'
mkdir -p "$work/vols" "$work/fs0" "$work/fs1"
$CLI thin mount "$work/pool" "$work/vols"
truncate -s 256M "$work/vols/0"
loop0=$(losetup -f --show "$work/vols/0")
mkfs.ext4 -q "$loop0" && mount "$loop0" "$work/fs0"
echo "before the snapshot" > "$work/fs0/note"; sync
$CLI thin message "$work/pool" 'create_snap 1 0'
echo "after the snapshot" > "$work/fs0/note"; sync
loop1=$(losetup -f --show "$work/vols/1")
mount -o ro,noload "$loop1" "$work/fs1"
echo "origin:   $(cat "$work/fs0/note")"; echo "snapshot: $(cat "$work/fs1/note")"
$CLI thin status "$work/pool" | head -4
umount "$work/fs1" "$work/fs0"; losetup -d "$loop1" "$loop0"
$CLI umount "$work/vols"
$CLI thin check "$work/pool"
