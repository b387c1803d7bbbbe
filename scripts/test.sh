#!/usr/bin/env bash
# banger's whole test suite, real-VM tests included: unit tests, the
# Firecracker API contract tests, and end-to-end tests that boot real QEMU
# guests through the real CLI and daemon. Needs root; installs what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  exec sudo -E "$0" "$@"
fi
. scripts/host-deps.sh
install_host_deps
find_go

# Opt in to the tests that need root, host tools and real guests: they fail
# (never skip) if this host cannot run them.
export BANGER_VM_TESTS=1

echo "== go vet" >&2
go vet ./...
echo "== golangci-lint ${GOLANGCI_LINT_VERSION} (.golangci.yml)" >&2
install_golangci_lint
golangci-lint run ./...
echo "== unit, contract and end-to-end tests" >&2
go test -count=1 -timeout 60m "$@" ./...
