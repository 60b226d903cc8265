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
# shellcheck source=go-build.sh
source "$here/go-build.sh"
cache="${FAST_SANDBOX_CACHE:-/var/cache/fast-sandbox}"
version="${CONTAINERD_VERSION}"
bin="$cache/containerd/$version/bin"
module=github.com/containerd/containerd/v2
binaries=(containerd containerd-shim-runc-v2 ctr)
if go_bins_cached "$bin" "${binaries[@]}"; then echo "$bin"; exit 0; fi

log() { echo "[$(date +%H:%M:%S)] build-containerd: $*" >&2; }
work="$cache/containerd/$version/mod"
go_module_require "$work" fastsandbox.local/containerdbuild \
  "$module/cmd/containerd@$version" "$module/cmd/containerd/command@$version" \
  "$module/cmd/containerd-shim-runc-v2@$version" "$module/cmd/ctr@$version"

# The same version stamps upstream's Makefile sets.
ldflags="-s -w -X $module/version.Version=$version -X $module/version.Revision=$version"
ldflags+=" -X $module/version.Package=github.com/containerd/containerd/v2"
specs=()
for b in "${binaries[@]}"; do specs+=("$b=$module/cmd/$b"); done
go_build_into "$work" "$bin" "$ldflags" "no_btrfs no_devmapper no_zfs" "${specs[@]}"
log "done"
echo "$bin"
