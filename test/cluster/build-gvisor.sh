#!/usr/bin/env bash
# Builds the pinned upstream gVisor (runsc and containerd-shim-runsc-v1)
# through the Go module proxy and caches it outside the repository, keyed by
# version, like build-containerd.sh. A second run with the same version
# returns at once. The local cluster puts the directory on every node's
# containerd PATH, so a pool with `runtime: gvisor` finds the runtime
# `io.containerd.runsc.v1` there.
#
#   test/cluster/build-gvisor.sh     # prints the bin directory
#
# Environment: GVISOR_VERSION (default from versions.env),
# FAST_SANDBOX_CACHE (default /var/cache/fast-sandbox).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"
# shellcheck source=go-build.sh
source "$here/go-build.sh"
cache="${FAST_SANDBOX_CACHE:-/var/cache/fast-sandbox}"
version="${GVISOR_VERSION}"
bin="$cache/gvisor/$version/bin"
module=gvisor.dev/gvisor
if go_bins_cached "$bin" runsc containerd-shim-runsc-v1; then echo "$bin"; exit 0; fi

log() { echo "[$(date +%H:%M:%S)] build-gvisor: $*" >&2; }
work="$cache/gvisor/$version/mod"
go_module_require "$work" fastsandbox.local/gvisorbuild \
  "$module/runsc@$version" "$module/shim@$version"
go_build_into "$work" "$bin" "-s -w" "" \
  "runsc=$module/runsc" "containerd-shim-runsc-v1=$module/shim"
log "done"
echo "$bin"
