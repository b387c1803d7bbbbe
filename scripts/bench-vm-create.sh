#!/bin/bash
# Whole `vm create` through the CLI, sparse-copy against qcow2 on the same
# image, alternating (the first of each round alternates too), ROUNDS rounds.
# Prints each create's wall time and its disk.create stage (from the
# journal), then the medians. Runs a private daemon (--no-network) with its
# state under STATE_PARENT (default /var/tmp: the filesystem banger's state
# dir would use). Needs root and a built banger image's files.
# Usage: sudo scripts/bench-vm-create.sh IMAGE_DIR [ROUNDS] [STATE_PARENT]
# IMAGE_DIR holds vmlinuz, initrd.img and rootfs.ext4 (e.g. the e2e cache's
# /var/cache/banger-test/default-image/<hash>).
set -euo pipefail
cd "$(dirname "$0")/.."
img=$1
rounds=${2:-5}
parent=${3:-/var/tmp}
export PATH=/usr/local/go/bin:$PATH
work=$(mktemp -d "$parent/bench-vm-create.XXXXXX")
pid=""
cleanup() {
	[ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT
go build -o "$work/" ./cmd/banger ./cmd/bangerd
b=("$work/banger" --state-dir "$work/state" --runtime-dir "$work/run")
"${b[@]}" daemon --no-network --log-file "$work/daemon.log" &
pid=$!
for _ in $(seq 100); do [ -S "$work/run/banger.sock" ] && break; sleep 0.1; done
"${b[@]}" image import default --kernel "$img/vmlinuz" --initrd "$img/initrd.img" --rootfs "$img/rootfs.ext4" >/dev/null
"${b[@]}" image show default -o json | python3 -c 'import json,sys; i=json.load(sys.stdin); print("image: %d MiB root filesystem" % (i["rootfs_bytes"]>>20))'
du -h --apparent-size "$work/state/images"/*/rootfs.ext4 | sed 's/^/image apparent size: /'
du -h "$work/state/images"/*/rootfs.ext4 | sed 's/^/image data: /'

one() { # strategy name
	local t0 t1
	t0=$(date +%s%N)
	"${b[@]}" vm create "$2" --disk-strategy "$1" -q >/dev/null
	t1=$(date +%s%N)
	local stage
	stage=$("${b[@]}" vm ops "$2" -o json | python3 -c '
import json, sys
from datetime import datetime
ops = json.load(sys.stdin)
op = [o for o in ops if o["kind"] == "vm.create"][0]
at = lambda s: datetime.fromisoformat(s["at"].replace("Z", "+00:00")[:26] + "+00:00")
st = op["stages"]
i = [k for k, s in enumerate(st) if s["name"] == "disk.create" and s["status"] == "done"][0]
print("%.1f" % ((at(st[i]) - at(st[i-1])).total_seconds() * 1000))')
	local used
	used=$(du -k "$work/state/vms"/*/rootfs.* | awk '{s+=$1} END {print s}')
	echo "$1 $(( (t1 - t0) / 1000000 )) $stage $used"
	"${b[@]}" vm delete "$2" >/dev/null
}
echo "strategy create_ms disk_create_ms disk_kib"
res=()
for r in $(seq "$rounds"); do
	if (( r % 2 )); then order=(sparse-copy qcow2); else order=(qcow2 sparse-copy); fi
	for s in "${order[@]}"; do
		line=$(one "$s" "v$r-${s%%-*}")
		echo "$line"
		res+=("$line")
	done
done
printf '%s\n' "${res[@]}" | python3 -c '
import sys, statistics
rows = [l.split() for l in sys.stdin if l.strip()]
for s in ("sparse-copy", "qcow2"):
    r = [x for x in rows if x[0] == s]
    print("median %-11s create %6.0f ms  disk.create %8.1f ms  disk %8d KiB" % (s,
        statistics.median(float(x[1]) for x in r), statistics.median(float(x[2]) for x in r), statistics.median(int(x[3]) for x in r)))'
