#!/bin/sh
# Runs a command with the fuse module's enable_uring on (the kernel offers FUSE over io_uring
# only then) and puts the old value back however the command ends. Exit 3 when the kernel has
# no such parameter (no FUSE over io_uring to test).
p=/sys/module/fuse/parameters/enable_uring
[ -w "$p" ] || { echo "with-uring: $p missing: this kernel has no FUSE over io_uring" >&2; exit 3; }
old=$(cat "$p")
trap 'echo "$old" > "$p"' EXIT INT TERM
echo Y > "$p"
"$@"
