#!/usr/bin/env bash
# banger's main job on a fresh Debian machine, in one command: install the
# host packages, build and install banger, start the daemon, build the
# default image, boot a VM and run a command in it.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  exec sudo -E "$0" "$@"
fi
. scripts/host-deps.sh
install_host_deps
find_go

echo "== build and install banger to /usr/local/bin" >&2
commit=$(git rev-parse HEAD 2>/dev/null || true)
CGO_ENABLED=0 go build -trimpath -ldflags "-X github.com/banger-vm/banger/internal/version.commit=${commit}" -o /usr/local/bin/banger ./cmd/banger

state_dir=${BANGER_STATE_DIR:-/var/lib/banger}
mkdir -p "$state_dir"
if ! banger vm list >/dev/null 2>&1; then
  echo "== start the daemon" >&2
  if [ -d /run/systemd/system ]; then
    cat >/etc/systemd/system/banger.service <<UNIT
[Unit]
Description=banger microVM daemon
After=network-online.target

[Service]
ExecStart=/usr/local/bin/banger daemon
# VMs outlive the daemon: stop only the daemon's own process.
KillMode=process
Restart=on-failure

[Install]
WantedBy=multi-user.target
UNIT
    systemctl daemon-reload
    systemctl enable --now banger.service
  else
    nohup banger daemon --log-file "$state_dir/daemon.log" >/dev/null 2>&1 &
  fi
  for _ in $(seq 1 100); do
    banger vm list >/dev/null 2>&1 && break
    sleep 0.1
  done
  banger vm list >/dev/null
fi

banger doctor || true

if ! banger image show default >/dev/null 2>&1; then
  echo "== build the default image (Debian bookworm; a few minutes the first time)" >&2
  banger image build
fi

echo "== boot a VM and run a command in it" >&2
banger vm run --rm -- uname -a
