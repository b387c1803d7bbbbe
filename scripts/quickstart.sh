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

echo "== build and install banger (the CLI) and bangerd (the daemon) to /usr/local/bin" >&2
commit=$(git rev-parse HEAD 2>/dev/null || true)
# Static: bangerd installs itself in the images it builds as banger-agent.
CGO_ENABLED=0 go build -trimpath -ldflags "-X github.com/banger-vm/banger/internal/version.commit=${commit}" -o /usr/local/bin/ ./cmd/banger ./cmd/bangerd

state_dir=${BANGER_STATE_DIR:-/var/lib/banger}
mkdir -p "$state_dir"
if ! banger vm list >/dev/null 2>&1; then
  echo "== start the daemon" >&2
  if [ -d /run/systemd/system ]; then
    # The unit runs bangerd with its settings from the config file.
    if [ -n "${BANGER_STATE_DIR:-}" ] && [ ! -e /etc/banger/config.toml ]; then
      case $state_dir in *'"'*|*'\'*) echo "BANGER_STATE_DIR must not contain quotes or backslashes" >&2; exit 2 ;; esac
      install -d -m 0755 /etc/banger
      printf 'state-dir = "%s"\n' "$state_dir" >/etc/banger/config.toml
      chmod 0644 /etc/banger/config.toml
    fi
    install -m 0644 packaging/banger.service /etc/systemd/system/banger.service
    systemctl daemon-reload
    systemctl enable --now banger.service
  else
    nohup bangerd --log-file "$state_dir/daemon.log" >/dev/null 2>&1 &
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
