# Shared settings and helpers of the local test cluster scripts. Sourced, not
# run. Every path the cluster writes lives under $STATE, except the few host
# paths containerd and the kubelet hard-code (recorded at first `up` and put
# back by `down`).
# shellcheck shell=bash

CLUSTER_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$CLUSTER_DIR/../.." && pwd)"
# shellcheck source=versions.env
source "$CLUSTER_DIR/versions.env"

STATE="${FAST_SANDBOX_STATE:-/var/lib/fast-sandbox-cluster}"
CACHE="${FAST_SANDBOX_CACHE:-/var/cache/fast-sandbox}"
K8S_BIN="$CACHE/k8s/$K8S_VERSION/bin"

LOGS="$STATE/logs"
PIDS="$STATE/pids"
PKI="$STATE/pki"
CONF="$STATE/conf"
HOSTREC="$STATE/host"          # what the host looked like before the first up
CONTAINERD_DIR="$STATE/containerd"
CONTAINERD_SOCK="$CONTAINERD_DIR/containerd.sock"
KUBELET_DIR="$STATE/kubelet"
ADMIN_KUBECONFIG="$STATE/kubeconfig"

ETCD_CLIENT_PORT="${FAST_SANDBOX_ETCD_PORT:-12379}"
ETCD_PEER_PORT="$((ETCD_CLIENT_PORT + 1))"
APISERVER_PORT=6443
SERVICE_CIDR="10.96.0.0/16"
SERVICE_APISERVER_IP="10.96.0.1"
POD_CIDR="${FAST_SANDBOX_POD_CIDR:-10.88.0.0/16}"
POD_GATEWAY="${POD_CIDR%.*/*}.1"   # 10.88.0.0/16 -> 10.88.0.1
CNI_BRIDGE="fsb0"
CNI_NETWORK="fast-sandbox"
CNI_BIN_DIR="/usr/lib/cni"
CGROUP_ROOT="/fast-sandbox"        # kubelet cgroupRoot; every pod cgroup is below it
PAUSE_IMAGE="docker.io/fast-sandbox/pause:dev"
BUSYBOX_IMAGE="docker.io/fast-sandbox/busybox:dev"

NODE_NAME="${FAST_SANDBOX_NODE_NAME:-$(hostname | tr '[:upper:]' '[:lower:]')}"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S.%3N)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

node_ip() {
  if [[ -n "${FAST_SANDBOX_NODE_IP:-}" ]]; then echo "$FAST_SANDBOX_NODE_IP"; return; fi
  local ip
  ip="$(ip -4 route get 1.1.1.1 2>/dev/null | sed -n 's/.* src \([0-9.]*\).*/\1/p' | head -1)"
  if [[ -z "$ip" ]]; then
    ip="$(ip -4 -o addr show scope global | awk '{print $4}' | cut -d/ -f1 | head -1)"
  fi
  [[ -n "$ip" ]] || die "cannot find a non-loopback IPv4 address for the node (set FAST_SANDBOX_NODE_IP)"
  echo "$ip"
}

kc() { "$K8S_BIN/kubectl" --kubeconfig "$ADMIN_KUBECONFIG" "$@"; }
ctrx() { ctr -a "$CONTAINERD_SOCK" "$@"; }

# pid_of NAME: prints the recorded PID of NAME if that process is still the one
# we started (same executable, command line mentions our state dir).
pid_of() {
  local name="$1" f="$PIDS/$1.pid" pid
  [[ -f "$f" ]] || return 1
  pid="$(cat "$f")"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  [[ -d /proc/$pid ]] || return 1
  local want; want="$(cat "$PIDS/$name.exe" 2>/dev/null || true)"
  if [[ -n "$want" ]]; then
    [[ "$(readlink "/proc/$pid/exe" 2>/dev/null)" == "$want" ]] || return 1
  fi
  tr '\0' ' ' < "/proc/$pid/cmdline" | grep -qF -- "$STATE" || return 1
  echo "$pid"
}

# poll DESCRIPTION TIMEOUT_SECONDS COMMAND...: run COMMAND every 0.2 s until it
# succeeds; fail with a clear message after the deadline.
poll() {
  local what="$1" timeout="$2"; shift 2
  local deadline=$(( $(date +%s) + timeout ))
  until "$@" >/dev/null 2>&1; do
    if (( $(date +%s) >= deadline )); then
      log "TIMEOUT after ${timeout}s waiting for $what"
      return 1
    fi
    sleep 0.2
  done
}

# normalize_image NAME: docker-style reference -> fully qualified one
# (fast-sandbox/agent:dev -> docker.io/fast-sandbox/agent:dev).
normalize_image() {
  local ref="$1" first rest
  if [[ "$ref" != *@* ]]; then
    local last="${ref##*/}"
    [[ "$last" == *:* ]] || ref="$ref:latest"
  fi
  first="${ref%%/*}"
  if [[ "$ref" != */* ]]; then
    ref="docker.io/library/$ref"
  elif [[ "$first" != *.* && "$first" != *:* && "$first" != localhost ]]; then
    ref="docker.io/$ref"
  fi
  echo "$ref"
}

# The extender's serving certificate Secret (made by deploy/); its ca.crt is
# what the scheduler's extender stanza trusts.
EXTENDER_TLS_SECRET_NS="${FAST_SANDBOX_EXTENDER_TLS_NS:-fast-sandbox-system}"
EXTENDER_TLS_SECRET="${FAST_SANDBOX_EXTENDER_TLS_SECRET:-fast-sandbox-extender-tls}"
