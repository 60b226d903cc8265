#!/usr/bin/env bash
# Builds the pinned upstream Kubernetes binaries through the Go module proxy
# and caches them outside the repository, keyed by version. A second run with
# the same version returns at once.
#
#   test/cluster/build-k8s.sh            # prints the bin directory
#
# Environment: K8S_VERSION (default from versions.env), FAST_SANDBOX_CACHE
# (default /var/cache/fast-sandbox).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"
cache="${FAST_SANDBOX_CACHE:-/var/cache/fast-sandbox}"
version="${K8S_VERSION}"
bin="$cache/k8s/$version/bin"
binaries=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)

complete=1
for b in "${binaries[@]}"; do [[ -x "$bin/$b" ]] || complete=0; done
if [[ $complete == 1 ]]; then echo "$bin"; exit 0; fi

log() { echo "[$(date +%H:%M:%S)] build-k8s: $*" >&2; }
work="$cache/k8s/$version/mod"
mkdir -p "$work" "$bin"
minor="${version#v1.}"; minor="${minor%%.*}"
staging_version="v0.${version#v1.}"

log "preparing a module that requires k8s.io/kubernetes $version"
cd "$work"
if [[ ! -f go.mod ]]; then
  cat > go.mod <<MOD
module fastsandbox.local/k8sbuild

go 1.25.0

require k8s.io/kubernetes $version
MOD
  go mod download -json "k8s.io/kubernetes@$version" >/dev/null
  upstream_mod="$(go env GOMODCACHE)/cache/download/k8s.io/kubernetes/@v/$version.mod"
  # Every staging module the upstream go.mod points at a local directory is
  # replaced by its published release of the same minor version.
  grep -oE 'k8s\.io/[a-z0-9-]+ => \./staging' "$upstream_mod" | awk '{print $1}' | sort -u |
    while read -r m; do echo "replace $m => $m $staging_version"; done >> go.mod
  cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
  log "resolving dependencies (go mod tidy)"
  GOFLAGS=-mod=mod go mod tidy -e >/dev/null 2>&1 || true
fi

ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
# A build cache of its own, deleted once every binary is built: the binaries
# are what is kept (several GiB of compiled packages are not).
export GOCACHE="$work/gocache"
for b in "${binaries[@]}"; do
  [[ -x "$bin/$b" ]] && continue
  log "building $b $version (cold: several minutes on two cores)"
  CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -ldflags "$ldflags" -o "$bin/$b.tmp" "k8s.io/kubernetes/cmd/$b"
  mv "$bin/$b.tmp" "$bin/$b"
done
rm -rf "$GOCACHE"
log "done"
echo "$bin"
