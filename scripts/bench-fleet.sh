#!/bin/sh
# bench-fleet.sh: `vm show` and `vm list` through the real CLI against a real
# daemon at 10, 100 and 1000 VMs, alternating with sqlite3 reading the same
# table (the baseline) and `banger --help` (the CLI's start-up, no API); plus the
# daemon's start-up time with N stopped VMs. Run as root from the repository.
# Each command is timed in wall time and in CPU time (its own, from rusage,
# and the daemon's, from /proc: the mean per call, at 10 ms tick resolution):
# on a loaded host the CPU figures are the stable ones.
#
#   scripts/bench-fleet.sh [rounds]        (default 30 rounds per size)
#   SIZES="1000" KEEP_LOG=/tmp/d.log scripts/bench-fleet.sh 5   (one size; keep the daemon's log)
#
# The fleet: one VM is created through the CLI (--no-network daemon, a tiny
# imported image), then the daemon is stopped and its row is copied N-1 times
# with sqlite3, so every VM is a real stopped VM record sharing one image.
set -eu
ROUNDS=${1:-30}
SIZES=${SIZES:-"10 100 1000"}
export PATH=/usr/local/go/bin:$PATH
command -v sqlite3 >/dev/null || { echo "needs sqlite3 (apt-get install -y sqlite3)" >&2; exit 1; }
command -v curl >/dev/null || { echo "needs curl" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "needs root (the daemon and image import run as root)" >&2; exit 1; }

work=$(mktemp -d /tmp/bench-fleet.XXXXXX)
daemon_pid=
cleanup() {
	[ -n "$daemon_pid" ] && kill "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null
	[ -z "${KEEP_LOG:-}" ] || cp "$work/daemon.log" "$KEEP_LOG"
	rm -rf "$work"
}
trap cleanup EXIT INT TERM

go build -o "$work/" ./cmd/banger ./cmd/bangerd
echo "binaries: banger $(stat -c %s "$work/banger") B, bangerd $(stat -c %s "$work/bangerd") B"
B="$work/banger --state-dir $work/state --runtime-dir $work/run"
sock="$work/run/banger.sock"

start_daemon() {
	$B daemon --no-network --log-file "$work/daemon.log" &
	daemon_pid=$!
	i=0
	until $B vm list -q >/dev/null 2>&1; do
		i=$((i + 1)); [ $i -lt 200 ] || { echo "daemon did not answer" >&2; tail "$work/daemon.log" >&2; exit 1; }
		sleep 0.05
	done
}
stop_daemon() {
	kill "$daemon_pid"; wait "$daemon_pid" || true; daemon_pid=
}

# A tiny image: a file with a bzImage header, a 16 MiB sparse "ext4" with its magic.
python3 - "$work" <<'PY'
import struct, sys
d = sys.argv[1]
k = bytearray(0x400); k[0x202:0x206] = b"HdrS"
open(d + "/vmlinuz", "wb").write(k)
with open(d + "/root.ext4", "wb") as f:
    f.truncate(16 << 20)
    f.seek(1024 + 0x38); f.write(struct.pack("<H", 0xEF53))
PY
start_daemon
$B image import tiny --kernel "$work/vmlinuz" --rootfs "$work/root.ext4" >/dev/null
$B vm create vm-0 --image tiny >/dev/null
stop_daemon
db="$work/state/banger.db"
cp "$db" "$work/seed.db"
# The socket path for the daemon's own check; the benchmark asks the CLI.
[ -n "$sock" ]

for n in $SIZES; do
	cp "$work/seed.db" "$db"
	# Every column is copied from vm-0 but those that differ per VM; the
	# column list is read from the schema, so columns added later are copied.
	cols=$(sqlite3 "$db" "SELECT group_concat(CASE name
		WHEN 'id' THEN printf('printf(''%%s-%%05d'', v.id, k.i)')
		WHEN 'name' THEN '''vm-'' || k.i'
		WHEN 'guest_ip' THEN 'NULL'
		WHEN 'vm_dir' THEN 'v.vm_dir || ''-'' || k.i'
		WHEN 'log_path' THEN 'v.log_path || ''-'' || k.i'
		WHEN 'created_at' THEN 'v.created_at + k.i'
		ELSE 'v.' || name END, ', ') FROM pragma_table_info('vms')")
	sqlite3 "$db" "WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < $n - 1)
		INSERT INTO vms SELECT $cols FROM vms v, k WHERE v.name = 'vm-0';"
	[ "$(sqlite3 "$db" 'select count(*) from vms')" = "$n" ]
	python3 - "$n" "$ROUNDS" "$work" "$db" <<'PY'
import os, resource, socket, statistics, subprocess, sys, time
n, rounds, work, db = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
B = [work + "/banger", "--state-dir", work + "/state", "--runtime-dir", work + "/run"]
sock = work + "/run/banger.sock"
HZ = os.sysconf("SC_CLK_TCK")

def answers():
    try:
        s = socket.socket(socket.AF_UNIX); s.connect(sock)
        s.sendall(b"GET /v1/version HTTP/1.0\r\nHost: d\r\n\r\n")
        ok = s.recv(64).startswith(b"HTTP/1.")
        s.close(); return ok
    except OSError:
        return False

def cpu_of(pid):  # user+system seconds of a live process
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / HZ

def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime

# Daemon start-up: from exec to the socket answering an API request (wall),
# and the CPU the daemon used until then. bangerd itself, as the service
# runs it (`banger daemon` would add the CLI's start before its exec).
starts, start_cpu = [], []
for i in range(5):
    t0 = time.perf_counter()
    d = subprocess.Popen([work + "/bangerd"] + B[1:] + ["--no-network", "--log-file", work + "/daemon.log"])
    while not answers():
        time.sleep(0.0005)
    starts.append(time.perf_counter() - t0)
    start_cpu.append(cpu_of(d.pid))
    if i < 4:
        d.terminate(); d.wait()

def run(cmd):
    c0, d0, t0 = children_cpu(), cpu_of(d.pid), time.perf_counter()
    out = subprocess.run(cmd, stdout=subprocess.PIPE, check=True).stdout
    t1 = time.perf_counter()
    return t1 - t0, children_cpu() - c0, cpu_of(d.pid) - d0, len(out)

cmds = {
    "banger --help (CLI floor)": [work + "/banger", "--help"],
    "vm show": B + ["vm", "show", "vm-0"],
    "vm list": B + ["vm", "list"],
    "vm list -o json": B + ["vm", "list", "-o", "json"],
    "vm list -q (no rendering)": B + ["vm", "list", "-q"],
    "curl GET /v1/vms (raw API)": ["curl", "-sf", "--unix-socket", sock, "http://d/v1/vms"],
    "sqlite3 select * from vms": ["sqlite3", db, "select * from vms"],
}
wall = {k: [] for k in cmds}
cpu = {k: [] for k in cmds}
dcpu = {k: 0.0 for k in cmds}
size = {}
try:
    for _ in range(rounds):
        for k, c in cmds.items():  # alternating: every round runs each once
            t, c_, dc, b = run(c)
            wall[k].append(t); cpu[k].append(c_); dcpu[k] += dc; size[k] = b
finally:
    d.terminate(); d.wait()
ms = lambda xs: statistics.median(xs) * 1000
bw, bc = ms(wall["sqlite3 select * from vms"]), ms(cpu["sqlite3 select * from vms"])
print(f"N={n}: daemon start: wall median {ms(starts):.0f} ms (min {min(starts)*1000:.0f}), daemon CPU until answering median {ms(start_cpu):.0f} ms (5 starts)")
print(f"N={n}: {'command':28s} {'wall ms':>8s} {'x sqlite3':>9s} {'CLI cpu ms':>10s} {'x sqlite3':>9s} {'daemon cpu ms':>13s} {'stdout B':>9s}")
for k in cmds:
    print(f"N={n}: {k:28s} {ms(wall[k]):8.1f} {ms(wall[k])/bw:9.2f} {ms(cpu[k]):10.1f} {ms(cpu[k])/max(bc, 1e-9):9.2f} {dcpu[k]/rounds*1000:13.1f} {size[k]:9d}")
PY
done
