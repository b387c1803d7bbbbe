#!/usr/bin/env bash
# Installs the Debian packages banger and its tests need, when missing.
# Sourced by scripts/test.sh and scripts/quickstart.sh; runs as root.
set -euo pipefail

# command:package pairs
BANGER_HOST_DEPS=(
  qemu-system-x86_64:qemu-system-x86
  qemu-img:qemu-utils
  mkfs.ext4:e2fsprogs
  mmdebstrap:mmdebstrap
  nft:nftables
  ip:iproute2
  ssh:openssh-client
  ssh-keygen:openssh-client
  cpio:cpio
  busybox:busybox-static
  dpkg-deb:dpkg
  modprobe:kmod
)

install_host_deps() {
  local missing=() pair cmd pkg
  for pair in "${BANGER_HOST_DEPS[@]}"; do
    cmd=${pair%%:*} pkg=${pair#*:}
    if ! command -v "$cmd" >/dev/null 2>&1; then
      case " ${missing[*]-} " in *" $pkg "*) ;; *) missing+=("$pkg") ;; esac
    fi
  done
  # busybox must be the static build: guests have no libc.
  if command -v busybox >/dev/null 2>&1 && ! dpkg -s busybox-static >/dev/null 2>&1; then
    missing+=(busybox-static)
  fi
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing host packages: ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

find_go() {
  if command -v go >/dev/null 2>&1; then return; fi
  if [ -x /usr/local/go/bin/go ]; then export PATH="/usr/local/go/bin:$PATH"; return; fi
  echo "Go is not installed (hint: install Go 1.26 from https://go.dev/dl/ into /usr/local/go)" >&2
  exit 1
}

# The linter the test command runs, at a pinned version, built from the Go
# module proxy into /usr/local/bin when missing or at another version.
GOLANGCI_LINT_VERSION=v2.15.0
install_golangci_lint() {
  if command -v golangci-lint >/dev/null 2>&1 &&
    golangci-lint version 2>/dev/null | grep -q "version ${GOLANGCI_LINT_VERSION#v} "; then
    return
  fi
  echo "installing golangci-lint ${GOLANGCI_LINT_VERSION}" >&2
  GOBIN=/usr/local/bin go install "github.com/golangci/golangci-lint/v2/cmd/golangci-lint@${GOLANGCI_LINT_VERSION}"
}
