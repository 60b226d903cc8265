#!/usr/bin/env bash
# Builds the pinned upstream containerd 2 (containerd, containerd-shim-runc-v2,
# ctr) through the Go module proxy and caches it outside the repository,
# keyed by version, like build-k8s.sh. A second run with the same version
# returns at once.
#
#   test/cluster/build-containerd.sh     # prints the bin directory
#
# Environment: CONTAINERD_VERSION (default from versions.env),
# FAST_SANDBOX_CACHE (default /var/cache/fast-sandbox).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"
cache="${FAST_SANDBOX_CACHE:-/var/cache/fast-sandbox}"
version="${CONTAINERD_VERSION}"
bin="$cache/containerd/$version/bin"
binaries=(containerd containerd-shim-runc-v2 ctr)
module=github.com/containerd/containerd/v2

complete=1
for b in "${binaries[@]}"; do [[ -x "$bin/$b" ]] || complete=0; done
if [[ $complete == 1 ]]; then echo "$bin"; exit 0; fi

log() { echo "[$(date +%H:%M:%S)] build-containerd: $*" >&2; }
work="$cache/containerd/$version/mod"
mkdir -p "$work" "$bin"
cd "$work"
if [[ ! -f go.sum ]]; then
  log "preparing a module that requires $module $version"
  rm -f go.mod
  go mod init fastsandbox.local/containerdbuild >/dev/null 2>&1
  for pkg in cmd/containerd cmd/containerd/command cmd/containerd-shim-runc-v2 cmd/ctr; do
    GOFLAGS=-mod=mod go get "$module/$pkg@$version" >/dev/null 2>&1 ||
      { log "go get $module/$pkg@$version failed"; GOFLAGS=-mod=mod go get "$module/$pkg@$version"; exit 1; }
  done
fi

# The same version stamps upstream's Makefile sets.
ldflags="-s -w -X $module/version.Version=$version -X $module/version.Revision=$version"
ldflags+=" -X $module/version.Package=github.com/containerd/containerd/v2"
# A build cache of its own, deleted once every binary is built: the binaries
# are what is kept (several GiB of compiled packages are not).
export GOCACHE="$work/gocache"
for b in "${binaries[@]}"; do
  [[ -x "$bin/$b" ]] && continue
  log "building $b $version (cold: a few minutes on two cores)"
  CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -tags "no_btrfs no_devmapper no_zfs" \
    -ldflags "$ldflags" -o "$bin/$b.tmp" "$module/cmd/$b"
  mv "$bin/$b.tmp" "$bin/$b"
done
rm -rf "$GOCACHE"
log "done"
echo "$bin"
