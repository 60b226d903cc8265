#!/usr/bin/env bash
# Starts a private containerd (own config, root, state and socket in a
# temporary directory; CRI disabled; runc; overlayfs) with the test images
# imported (busybox, and one without a shell holding only a static program
# built from agent/tests/noshell/tool.c), for the agent's integration tests
# and benchmark. Stops only the process it started.
#
#   agent/tests/containerd.sh [--containerd 2|1.6] run -- cargo test -p fast-sandbox-agent
#       start, export FAST_SANDBOX_CONTAINERD_SOCK (and friends), run the
#       command, stop, exit with the command's status.
#   agent/tests/containerd.sh [--containerd 2|1.6] start DIR
#       start in DIR and print the exports
#   agent/tests/containerd.sh stop DIR    stop what `start DIR` started
#
# --containerd (or FAST_SANDBOX_TEST_CONTAINERD): 2 (default) is the pinned
# containerd 2 the local cluster runs (test/cluster/build-containerd.sh
# builds it into the cache on first use), with a `version = 3` config; 1.6 is
# Debian's containerd package, with a `version = 2` config. Both use the
# host's runc. `ctr` and the shim on the command's PATH are the chosen
# containerd's.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
flavour="${FAST_SANDBOX_TEST_CONTAINERD:-2}"
# containerd 2 warns every ctr call that cgroup v1 is deprecated; these
# machines run cgroup v1 on purpose (its log still says so once).
export CONTAINERD_SUPPRESS_DEPRECATION_WARNINGS=1
if [ "${1:-}" = "--containerd" ]; then flavour="${2:?--containerd needs 2 or 1.6}"; shift 2; fi
case "$flavour" in
  2|1.6) ;;
  *) echo "containerd.sh: --containerd must be 2 or 1.6, not $flavour" >&2; exit 2 ;;
esac

NAMESPACE="${FAST_SANDBOX_TEST_NAMESPACE:-fast-sandbox-test}"
IMAGE="docker.io/fast-sandbox/busybox:dev"
NOSHELL_IMAGE="docker.io/fast-sandbox/noshell:dev"
BUSYBOX="${BUSYBOX:-/bin/busybox}"

log() { echo "containerd.sh: $*" >&2; }

# FAST_SANDBOX_NOSHELL_TOOL: a static build of noshell/tool.c to use
# instead of compiling it (where no compiler is, as in the cgroup v2 VM).
tool_compiler=gcc
[ -n "${FAST_SANDBOX_NOSHELL_TOOL:-}" ] && tool_compiler=

need() {
  for bin in "$@"; do
    command -v "$bin" >/dev/null 2>&1 || { log "missing $bin"; return 1; }
  done
}

# bin_dir: where the chosen containerd, its shim and ctr are.
bin_dir() {
  if [ "$flavour" = 2 ]; then
    "$here/../../test/cluster/build-containerd.sh"
  else
    local c
    c=$(command -v /usr/bin/containerd || true)
    [ -n "$c" ] || { log "Debian's containerd (/usr/bin/containerd) is missing: apt-get install -y containerd"; return 1; }
    "$c" --version | grep -q ' 1\.6\.' || { log "/usr/bin/containerd is not 1.6: $("$c" --version)"; return 1; }
    echo /usr/bin
  fi
}

write_config() {
  local dir=$1
  if [ "$flavour" = 2 ]; then write_config_v3 "$dir"; return; fi
  cat >"$dir/config.toml" <<TOML
version = 2
root = "$dir/root"
state = "$dir/state"
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = "$dir/containerd.sock"

[ttrpc]
  address = "$dir/containerd.sock.ttrpc"

[debug]
  address = ""
  level = "info"

[metrics]
  address = ""
TOML
}

# containerd 2: the same, in its own configuration format.
write_config_v3() {
  local dir=$1
  cat >"$dir/config.toml" <<TOML
version = 3
root = "$dir/root"
state = "$dir/state"
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.cri.v1.images",
  "io.containerd.cri.v1.runtime",
  "io.containerd.podsandbox.controller.v1.podsandbox",
  "io.containerd.nri.v1.nri",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = "$dir/containerd.sock"

[ttrpc]
  address = "$dir/containerd.sock.ttrpc"

[debug]
  address = ""
  level = "info"

[metrics]
  address = ""

[plugins]
  [plugins.'io.containerd.internal.v1.opt']
    path = "$dir/opt"
TOML
}

build_image() {
  local dir=$1 out=$2
  local layout="$dir/image/layout" bundle="$dir/image/bundle"
  rm -rf "$dir/image" && mkdir -p "$dir/image"
  umoci init --layout "$layout" >/dev/null
  umoci new --image "$layout:dev" >/dev/null
  umoci unpack --rootless --image "$layout:dev" "$bundle" >/dev/null
  # proc, sys and dev as real images have them: runc mounts there, and in
  # a user namespace over a capped layer it cannot make them (see README,
  # "User namespaces").
  mkdir -p "$bundle/rootfs/"{bin,tmp,etc,proc,sys,dev}
  cp "$BUSYBOX" "$bundle/rootfs/bin/busybox"
  for applet in $("$BUSYBOX" --list); do
    [ -e "$bundle/rootfs/bin/$applet" ] || ln -s busybox "$bundle/rootfs/bin/$applet"
  done
  echo "root:x:0:0:root:/:/bin/sh" >"$bundle/rootfs/etc/passwd"
  echo "root:x:0:" >"$bundle/rootfs/etc/group"
  umoci repack --image "$layout:dev" "$bundle" >/dev/null
  umoci config --image "$layout:dev" --config.cmd sh --config.env PATH=/bin >/dev/null
  # The same files run as an unprivileged user: what runc does as root
  # before that user takes over must happen on every path.
  umoci config --image "$layout:dev" --tag nonroot --config.user 1000:1000 >/dev/null
  umoci gc --layout "$layout" >/dev/null
  tar -C "$layout" -cf "$out" .
}

build_noshell_image() {
  local dir=$1 out=$2
  local layout="$dir/noshell/layout" bundle="$dir/noshell/bundle"
  rm -rf "$dir/noshell" && mkdir -p "$dir/noshell"
  umoci init --layout "$layout" >/dev/null
  umoci new --image "$layout:dev" >/dev/null
  umoci unpack --rootless --image "$layout:dev" "$bundle" >/dev/null
  mkdir -p "$bundle/rootfs/data"
  if [ -n "${FAST_SANDBOX_NOSHELL_TOOL:-}" ]; then
    install -m 0755 "$FAST_SANDBOX_NOSHELL_TOOL" "$bundle/rootfs/tool"
  else
    gcc -static -Os -o "$bundle/rootfs/tool" "$here/noshell/tool.c"
  fi
  umoci repack --image "$layout:dev" "$bundle" >/dev/null
  umoci config --image "$layout:dev" --config.cmd /tool --config.cmd sleep --config.env PATH=/ >/dev/null
  umoci gc --layout "$layout" >/dev/null
  tar -C "$layout" -cf "$out" .
}

start() {
  local dir=$1 bin
  mkdir -p "$dir/bin"
  bin=$(bin_dir)
  # The chosen containerd, its ctr and shim come first on every PATH here
  # (a test that restarts containerd finds the same one).
  ln -sf "$bin/containerd" "$dir/bin/containerd"
  ln -sf "$bin/ctr" "$dir/bin/ctr"
  ln -sf "$bin/containerd-shim-runc-v2" "$dir/bin/containerd-shim-runc-v2"
  # gVisor (runsc and its shim), for the tests of the runtime
  # io.containerd.runsc.v1.
  local gvisor
  gvisor=$("$here/../../test/cluster/build-gvisor.sh")
  ln -sf "$gvisor/runsc" "$dir/bin/runsc"
  ln -sf "$gvisor/containerd-shim-runsc-v1" "$dir/bin/containerd-shim-runsc-v1"
  PATH="$dir/bin:$PATH"
  write_config "$dir"
  "$bin/containerd" --config "$dir/config.toml" >"$dir/containerd.log" 2>&1 &
  echo $! >"$dir/containerd.pid"
  local i
  for i in $(seq 1 100); do
    if ctr -a "$dir/containerd.sock" version >/dev/null 2>&1; then break; fi
    if ! kill -0 "$(cat "$dir/containerd.pid")" 2>/dev/null; then
      log "containerd exited; log follows"; cat "$dir/containerd.log" >&2; return 1
    fi
    sleep 0.1
  done
  ctr -a "$dir/containerd.sock" version >/dev/null || { log "containerd did not answer in 10s"; return 1; }
  build_image "$dir" "$dir/busybox.tar"
  # --base-name + the layout's tag (dev) names the image; containerd 2's
  # ctr would otherwise add an import-<date> name as well.
  ctr -a "$dir/containerd.sock" -n "$NAMESPACE" images import \
    --base-name "${IMAGE%:*}" "$dir/busybox.tar" >/dev/null
  build_noshell_image "$dir" "$dir/noshell.tar"
  ctr -a "$dir/containerd.sock" -n "$NAMESPACE" images import \
    --base-name "${NOSHELL_IMAGE%:*}" "$dir/noshell.tar" >/dev/null
  log "containerd $("$bin/containerd" --version | awk '{print $3}') (pid $(cat "$dir/containerd.pid")) on $dir/containerd.sock, images $IMAGE and $NOSHELL_IMAGE in namespace $NAMESPACE"
}

stop() {
  local dir=$1
  [ -f "$dir/containerd.pid" ] || return 0
  local pid
  pid=$(cat "$dir/containerd.pid")
  # Tasks left behind by a failed test: kill them so their shims exit.
  if kill -0 "$pid" 2>/dev/null; then
    local ns c
    [ -x "$dir/bin/ctr" ] && PATH="$dir/bin:$PATH"
    for ns in $(ctr -a "$dir/containerd.sock" namespaces ls -q 2>/dev/null); do
      for c in $(ctr -a "$dir/containerd.sock" -n "$ns" tasks ls -q 2>/dev/null); do
        ctr -a "$dir/containerd.sock" -n "$ns" tasks kill -a -s SIGKILL "$c" >/dev/null 2>&1 || true
        ctr -a "$dir/containerd.sock" -n "$ns" tasks delete -f "$c" >/dev/null 2>&1 || true
      done
    done
    kill "$pid" 2>/dev/null || true
    local i
    for i in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$dir/containerd.pid"
  # Unmount anything still mounted under the directory before removing it.
  { grep -o " $dir/[^ ]*" /proc/self/mounts || true; } | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  rm -rf "$dir"
}

exports() {
  local dir=$1
  echo "export FAST_SANDBOX_CONTAINERD_SOCK=$dir/containerd.sock"
  echo "export FAST_SANDBOX_TEST_NAMESPACE=$NAMESPACE"
  echo "export FAST_SANDBOX_TEST_IMAGE=$IMAGE"
  echo "export FAST_SANDBOX_TEST_NOSHELL_IMAGE=$NOSHELL_IMAGE"
  echo "export FAST_SANDBOX_TEST_NONROOT_IMAGE=${IMAGE%:*}:nonroot"
  echo "export FAST_SANDBOX_TEST_DIR=$dir"
  echo "export FAST_SANDBOX_TEST_CONTAINERD=$flavour"
  echo "export PATH=$dir/bin:\$PATH"
  echo "export CONTAINERD_SUPPRESS_DEPRECATION_WARNINGS=1"
  echo "export CONTAINERD_ADDRESS=$dir/containerd.sock"
}

cmd=${1:-}
shift || true
case "$cmd" in
  start)
    dir=${1:?usage: containerd.sh start DIR}
    need runc umoci tar $tool_compiler
    start "$dir"
    exports "$dir"
    ;;
  stop)
    stop "${1:?usage: containerd.sh stop DIR}"
    ;;
  run)
    [ "${1:-}" = "--" ] && shift
    [ $# -gt 0 ] || { echo "usage: containerd.sh run -- COMMAND..." >&2; exit 2; }
    [ "$(id -u)" = 0 ] || { log "the agent's tests need root (containerd and runc)"; exit 1; }
    need runc umoci tar $tool_compiler || { log "hack/install-deps.sh installs what is missing"; exit 1; }
    dir=$(mktemp -d /tmp/fast-sandbox-containerd.XXXXXX)
    # Searchable by all, as containerd's own directories are: a sandbox in a
    # user namespace is an unprivileged host user when runc mounts its root.
    chmod 0711 "$dir"
    trap 'stop "$dir"' EXIT
    start "$dir"
    eval "$(exports "$dir")"
    set +e
    "$@"
    rc=$?
    set -e
    exit $rc
    ;;
  *)
    echo "usage: containerd.sh [--containerd 2|1.6] {run -- COMMAND...|start DIR|stop DIR}" >&2
    exit 2
    ;;
esac
