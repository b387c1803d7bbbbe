#!/bin/bash
# Benchmarks the create step of each root-disk strategy (internal/storage)
# for images of 1, 4 and 16 GiB, alternating with `qemu-img create -b` and
# `cp --reflink=always` baselines in the same run. Needs root, qemu-utils,
# qemu-system-common (qemu-storage-daemon), xfsprogs, e2fsprogs.
# Usage: sudo scripts/bench-storage.sh [STATE_DIR] [extra benchstorage flags]
# STATE_DIR (default /var/tmp) is on the filesystem banger's state dir uses.
set -euo pipefail
cd "$(dirname "$0")/.."
state=${1:-/var/tmp}
shift || true
work=$(mktemp -d "$state/bench-storage.XXXXXX")
loop=""
cleanup() {
	mountpoint -q "$work/xfs" && umount "$work/xfs"
	[ -n "$loop" ] && losetup --detach "$loop"
	rm -rf "$work"
}
trap cleanup EXIT
mkdir "$work/ext4" "$work/xfs"
truncate -s 48G "$work/xfs.img"
mkfs.xfs -q -m reflink=1 "$work/xfs.img"
loop=$(losetup --find --show "$work/xfs.img")
mount "$loop" "$work/xfs"
export PATH=/usr/local/go/bin:$PATH
go run ./scripts/benchstorage -ext4 "$work/ext4" -xfs "$work/xfs" "$@"
