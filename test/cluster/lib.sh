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
CONTAINERD_BIN="$CACHE/containerd/$CONTAINERD_VERSION/bin"
GVISOR_BIN="$CACHE/gvisor/$GVISOR_VERSION/bin"

LOGS="$STATE/logs"
PIDS="$STATE/pids"
PKI="$STATE/pki"
CONF="$STATE/conf"
HOSTREC="$STATE/host"          # what the host looked like before the first up
ADMIN_KUBECONFIG="$STATE/kubeconfig"

ETCD_CLIENT_PORT="${FAST_SANDBOX_ETCD_PORT:-12379}"
ETCD_PEER_PORT="$((ETCD_CLIENT_PORT + 1))"
APISERVER_PORT=6443
SERVICE_CIDR="10.96.0.0/16"
SERVICE_APISERVER_IP="10.96.0.1"
CLUSTER_CIDR="10.88.0.0/13"        # every node's pod CIDR: node N has 10.(87+N).0.0/16
CNI_BRIDGE="fsb0"                  # each node's pod bridge (in that node's netns)
CNI_NETWORK="fast-sandbox"
CNI_BIN_DIR="/usr/lib/cni"
PAUSE_IMAGE="docker.io/fast-sandbox/pause:dev"
BUSYBOX_IMAGE="docker.io/fast-sandbox/busybox:dev"
SYSTEM_NAMESPACE="fast-sandbox-system"
# Where every node's containerd listens, as that node's kubelet, containerd
# and pods see it: the standard path, so deploy/ works with its defaults.
NODE_CONTAINERD_SOCK="/run/containerd/containerd.sock"

# Nodes. Node 1 is the host itself (host network and mount namespaces).
# Node N >= 2 runs its containerd, kubelet and kube-proxy in a network
# namespace of its own (a veth to the host bridge $NODES_BRIDGE) and a mount
# namespace of its own, where the host paths a node owns (/run/containerd,
# /var/lib/kubelet, ...) are private binds of directories under
# $STATE/node<N>/host.
NODE_COUNT="${FAST_SANDBOX_NODES:-2}"
[[ "$NODE_COUNT" =~ ^[1-8]$ ]] || { echo "FAST_SANDBOX_NODES must be 1..8" >&2; exit 1; }
NODE_NAME="${FAST_SANDBOX_NODE_NAME:-$(hostname | tr '[:upper:]' '[:lower:]')}"
NODES_BRIDGE="fsb-nodes"
NODES_PREFIX="10.87.0"             # host ${NODES_PREFIX}.1, node N ${NODES_PREFIX}.N
NODES_HOST_IP="$NODES_PREFIX.1"
# Host paths each node >= 2 gets a private copy of.
NODE_PRIVATE_PATHS=(/run/containerd /var/lib/kubelet /var/lib/cni /var/log/pods
  /var/log/containers /var/lib/fast-sandbox)

# Node 1's settings, used by the scripts that predate node 2.
CGROUP_ROOT="/fast-sandbox"
CONTAINERD_DIR="$STATE/containerd"
CONTAINERD_SOCK="$NODE_CONTAINERD_SOCK"
KUBELET_DIR="$STATE/kubelet"
POD_CIDR="10.88.0.0/16"

# node_set N: sets the N_* variables describing node N.
#   N_NAME N_IP N_POD_CIDR N_POD_GATEWAY N_DIR N_CONF N_CONTAINERD_DIR
#   N_SOCK (its containerd socket as seen from the host) N_KUBELET_DIR
#   N_CNI_DIR N_POD_LOGS N_CGROUP_ROOT N_SUFFIX (of its process names:
#   kubelet$N_SUFFIX) N_NS (dir of its namespace files; "" for node 1)
#   N_APISERVER (the apiserver address it uses)
node_set() {
  N_INDEX="$1"
  N_POD_CIDR="10.$((87 + $1)).0.0/16"
  N_POD_GATEWAY="10.$((87 + $1)).0.1"
  if [[ "$1" == 1 ]]; then
    N_NAME="$NODE_NAME"
    N_IP="$(node_ip)"
    N_DIR="$STATE"
    N_CONF="$CONF"
    N_SOCK="$NODE_CONTAINERD_SOCK"
    N_CNI_DIR="$STATE/cni"
    N_POD_LOGS="$STATE/pod-logs"
    N_CGROUP_ROOT="$CGROUP_ROOT"
    N_SUFFIX=""
    N_NS=""
    N_APISERVER="https://127.0.0.1:$APISERVER_PORT"
  else
    N_NAME="$NODE_NAME-$1"
    N_IP="$NODES_PREFIX.$1"
    N_DIR="$STATE/node$1"
    N_CONF="$N_DIR/conf"
    N_SOCK="$N_DIR/host/run/containerd/containerd.sock"
    N_CNI_DIR="$N_DIR/cni"
    N_POD_LOGS="$N_DIR/pod-logs"
    N_CGROUP_ROOT="/fast-sandbox-$1"
    N_SUFFIX="-$1"
    N_NS="$N_DIR/ns"
    N_APISERVER="https://$NODES_HOST_IP:$APISERVER_PORT"
  fi
  N_CONTAINERD_DIR="$N_DIR/containerd"
  N_KUBELET_DIR="$N_DIR/kubelet"
}

# node_of NAME_OR_INDEX: prints the index of the node named (or numbered) so.
node_of() {
  local i
  for ((i = 1; i <= NODE_COUNT; i++)); do
    if [[ "$1" == "$i" ]]; then echo "$i"; return 0; fi
    if [[ "$i" == 1 && "$1" == "$NODE_NAME" ]] || [[ "$1" == "$NODE_NAME-$i" ]]; then echo "$i"; return 0; fi
  done
  return 1
}

# node_socket NAME_OR_INDEX: node's containerd socket as seen from the host.
node_socket() {
  local i; i="$(node_of "$1")" || { echo "no node $1" >&2; return 1; }
  if [[ "$i" == 1 ]]; then echo "$NODE_CONTAINERD_SOCK"; else echo "$STATE/node$i/host/run/containerd/containerd.sock"; fi
}

log() { printf '[%s] %s\n' "$(date +%H:%M:%S.%3N)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

node_ip() {
  if [[ -n "${FAST_SANDBOX_NODE_IP:-}" ]]; then echo "$FAST_SANDBOX_NODE_IP"; return; fi
  local ip
  ip="$(ip -4 route get 1.1.1.1 2>/dev/null | sed -n 's/.* src \([0-9.]*\).*/\1/p' | head -1)"
  if [[ -z "$ip" ]]; then
    ip="$(ip -4 -o addr show scope global | awk -v a="$CNI_BRIDGE" -v b="$NODES_BRIDGE" '$2 != a && $2 != b {print $4}' | cut -d/ -f1 | head -1)"
  fi
  [[ -n "$ip" ]] || die "cannot find a non-loopback IPv4 address for the node (set FAST_SANDBOX_NODE_IP)"
  echo "$ip"
}

kc() { "$K8S_BIN/kubectl" --kubeconfig "$ADMIN_KUBECONFIG" "$@"; }
# containerd 2 warns on every ctr call that cgroup v1 is deprecated; these
# machines run cgroup v1 on purpose (each containerd's log says so once).
export CONTAINERD_SUPPRESS_DEPRECATION_WARNINGS=1
# ctr of the pinned containerd (Debian's on PATH when not built yet).
ctr_bin() { if [[ -x "$CONTAINERD_BIN/ctr" ]]; then echo "$CONTAINERD_BIN/ctr"; else command -v ctr; fi; }
ctrx() { "$(ctr_bin)" -a "$CONTAINERD_SOCK" "$@"; }

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
