#!/bin/bash
# bench-warm.sh: `vm run --rm -- true` from a warm image against the same
# run booting the image cold (--cold), alternating in one script, ROUNDS
# rounds; then `vm fork` of a running VM until its guest answers through
# the agent and its sshd over the network with the new pin, `vm exec --
# true` through the agent against SSH over the network, a cold `vm start
# --wait` (the agent's ready) against SSH's first answer in the same boot,
# and pause and resume latency. Prints each measure and the medians (for
# docs/benchmarks.md). Needs root.
#
#   sudo scripts/bench-warm.sh [ROUNDS] [MEMORY]      (default 5 rounds, 512M)
#
# It builds banger, builds the default image into a private state dir with
# a --no-network daemon (the package cache /var/cache/banger-test/apt is
# used when it exists), then runs a daemon with networking inside its own
# network namespace, so the host's network is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
memory=${2:-512M}
export PATH=/usr/local/go/bin:$PATH
[ "$(id -u)" = 0 ] || { echo "needs root" >&2; exit 1; }
work=$(mktemp -d /var/tmp/bench-warm.XXXXXX)
ns=$(basename "$work")
pid=""
cleanup() {
	if [ -n "$pid" ]; then
		"${b[@]}" vm list -q 2>/dev/null | while read -r v; do "${b[@]}" vm delete "$v" >/dev/null 2>&1 || true; done
		kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
	fi
	ip netns delete "$ns" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT INT TERM
CGO_ENABLED=0 go build -o "$work/" ./cmd/banger ./cmd/bangerd # static: bangerd is the agent images get
base=("$work/banger" --state-dir "$work/state" --runtime-dir "$work/run")
cache=()
[ -d /var/cache/banger-test/apt ] && cache=(--package-cache /var/cache/banger-test/apt)
wait_socket() { for _ in $(seq 200); do "${b[@]}" vm list >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "no daemon" >&2; exit 1; }

# The image, built by a daemon without networking in the host's namespace.
b=("${base[@]}")
"${base[@]}" daemon --no-network --log-file "$work/build.log" "${cache[@]}" &
pid=$!
wait_socket
echo "building the default image..." >&2
"${b[@]}" image build >/dev/null
kill "$pid"; wait "$pid" || true; pid=""

# The daemon with networking, in its own namespace.
ip netns add "$ns"
ip -n "$ns" link set lo up
b=(ip netns exec "$ns" "${base[@]}")
ip netns exec "$ns" "${base[@]}" daemon --log-file "$work/daemon.log" &
pid=$!
wait_socket
echo "warming the default image ($memory)..." >&2
"${b[@]}" image warm default --memory "$memory" -o json | python3 -c 'import json,sys; s=json.load(sys.stdin); print("warm snapshot: %s, %.1f MiB on disk" % (s["name"], s["size_bytes"]/1048576))'

# Times in ms from date's nanoseconds: no interpreter starts between the
# two readings (python3 alone takes 0.4 s to start here).
now() { date +%s%N; }
ms() { echo $((($(date +%s%N) - $1) / 1000000)); }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
: >"$work/warm" ; : >"$work/cold"
# vm run is timed through the CLI as a user runs it, outside the daemon's
# network namespace (the API is a unix socket; ip netns exec would add its
# own start to every figure).
run() { # run KIND [untimed]: one vm run --rm -- true, its wall ms appended to $work/KIND
	local t0 extra=() out="$work/$1"
	[ "$1" = cold ] && extra=(--cold)
	[ -n "${2:-}" ] && out=/dev/null
	t0=$(now)
	"${base[@]}" vm run --rm --memory "$memory" "${extra[@]}" -- true 2>/dev/null
	ms "$t0" | tee -a "$out" | sed "s/^/$1 vm run --rm -- true: /; s/$/ ms${2:+ ($2)}/"
}
# One untimed pair first: the first runs after the image build read the
# image, QEMU and the snapshot from disk (this host's DAMON reclaim pages
# out what was not touched for a minute); the timed rounds are the steady
# state.
run warm warm-up; run cold warm-up
for i in $(seq "$rounds"); do
	if [ $((i % 2)) = 1 ]; then run warm; run cold; else run cold; run warm; fi
done
w=$(median <"$work/warm"); c=$(median <"$work/cold")
echo "median: warm $w ms, cold $c ms, cold/warm $(awk -v c="$c" -v w="$w" 'BEGIN {printf "%.1fx", c/w}')"

# vm fork of a running VM: until the fork's agent runs a command, and until
# ssh over the network (with the pin the agent's answer gave) runs one.
"${b[@]}" vm create src --memory "$memory" --cold >/dev/null
"${b[@]}" vm start --wait src >/dev/null
"${b[@]}" vm exec src -- sudo systemctl is-system-running --wait >/dev/null || true
for i in $(seq "$rounds"); do
	t0=$(now)
	"${b[@]}" vm fork src "f$i" >/dev/null
	"${b[@]}" vm exec "f$i" -- true
	a=$(ms "$t0")
	"${b[@]}" vm ssh --network "f$i" -- true
	s=$(ms "$t0")
	echo "vm fork: exec through the agent after $a ms, ssh over the network after $s ms"
	"${b[@]}" vm delete "f$i" >/dev/null
done

# vm exec -- true through the agent against vm ssh --network -- true (the
# guest's sshd with the pinned key), alternating, on the running src VM.
: >"$work/agent"; : >"$work/ssh"
for i in $(seq "$rounds"); do
	t0=$(now); "${b[@]}" vm exec src -- true; ms "$t0" >>"$work/agent"
	t0=$(now); "${b[@]}" vm ssh --network src -- true; ms "$t0" >>"$work/ssh"
done
echo "vm exec -- true: agent $(median <"$work/agent") ms, ssh over the network $(median <"$work/ssh") ms (medians)"

# vm start --wait of a cold VM: when the agent answers ready, against when
# SSH over the network first answers (polled), in the same boots.
for i in $(seq "$rounds"); do
	"${b[@]}" vm create "c$i" --memory "$memory" --cold >/dev/null
	t0=$(now)
	"${b[@]}" vm start --wait "c$i" >/dev/null
	a=$(ms "$t0")
	until "${b[@]}" vm ssh --network "c$i" -- true 2>/dev/null; do sleep 0.2; done
	s=$(ms "$t0")
	echo "cold vm start: ready through the agent after $a ms, ssh over the network answers after $s ms"
	"${b[@]}" vm delete "c$i" >/dev/null
done

# Pause and resume.
for i in $(seq "$rounds"); do
	t0=$(now); "${b[@]}" vm pause src >/dev/null; p=$(ms "$t0")
	t0=$(now); "${b[@]}" vm resume src >/dev/null; r=$(ms "$t0")
	echo "vm pause $p ms, vm resume $r ms"
done
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
