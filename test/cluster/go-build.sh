# Sourced by build-containerd.sh and build-gvisor.sh: the steps of building
# pinned upstream Go binaries through the Go module proxy into a cache
# directory keyed by version.

# go_bins_cached BIN_DIR NAME...: whether every NAME is built in BIN_DIR.
go_bins_cached() {
  local dir=$1 b; shift
  for b in "$@"; do [[ -x "$dir/$b" ]] || return 1; done
}

# go_module_require WORK MODULE_NAME PKG@VERSION...: a module in WORK that
# requires each package (kept once made: its go.sum pins what was fetched).
go_module_require() {
  local work=$1 name=$2 pkg; shift 2
  mkdir -p "$work"
  [[ -f "$work/go.sum" ]] && return 0
  log "preparing a module that requires $*"
  (
    cd "$work"
    rm -f go.mod
    go mod init "$name" >/dev/null 2>&1
    for pkg in "$@"; do
      GOFLAGS=-mod=mod go get "$pkg" >/dev/null 2>&1 ||
        { log "go get $pkg failed"; GOFLAGS=-mod=mod go get "$pkg"; exit 1; }
    done
  )
}

# go_build_into WORK BIN_DIR LDFLAGS TAGS NAME=PACKAGE...: builds each
# missing NAME from PACKAGE in the module at WORK. A build cache of its own
# is deleted once every binary is built: the binaries are what is kept.
go_build_into() {
  local work=$1 bin=$2 ldflags=$3 tags=$4 spec; shift 4
  mkdir -p "$bin"
  (
    cd "$work"
    export GOCACHE="$work/gocache"
    for spec in "$@"; do
      local b=${spec%%=*} pkg=${spec#*=}
      [[ -x "$bin/$b" ]] && continue
      log "building $b (cold: a few minutes on two cores)"
      CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -tags "$tags" -ldflags "$ldflags" \
        -o "$bin/$b.tmp" "$pkg"
      mv "$bin/$b.tmp" "$bin/$b"
    done
    rm -rf "$GOCACHE"
  )
}
