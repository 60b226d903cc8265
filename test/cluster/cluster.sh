#!/usr/bin/env bash
# A real single-node Kubernetes cluster on this machine: etcd, a dedicated
# containerd, kube-apiserver, kube-controller-manager, kube-scheduler,
# kubelet and kube-proxy, all upstream, all started by this script.
#
#   cluster.sh up             bring the cluster up (idempotent)
#   cluster.sh down [--purge] stop everything we started, unmount, clean the
#                             host; --purge also deletes the state dir
#   cluster.sh status         recorded processes, node and pods
#   cluster.sh env            export lines: eval "$(cluster.sh env)"
#   cluster.sh kill NAME...   SIGKILL components (fault tests); `up` restarts
#                             them, the way a supervisor would
#
# Environment: FAST_SANDBOX_STATE (default /var/lib/fast-sandbox-cluster),
# FAST_SANDBOX_CACHE (default /var/cache/fast-sandbox), FAST_SANDBOX_NODE_IP,
# FAST_SANDBOX_NODE_NAME, FAST_SANDBOX_POD_CIDR (default 10.88.0.0/16),
# FAST_SANDBOX_ETCD_PORT (default 12379).
set -euo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

APT_PACKAGES=(containerd runc containernetworking-plugins etcd-server etcd-client
  protobuf-compiler umoci busybox-static iptables conntrack socat ebtables ethtool
  openssl curl gcc libc6-dev iproute2 util-linux procps)

# Host settings the kubelet, kube-proxy or the bridge CNI plugin may change;
# recorded at the first `up`, restored by `down`.
HOST_SYSCTLS=(net.ipv4.ip_forward net.ipv6.conf.all.forwarding
  net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables
  net.ipv4.conf.all.route_localnet vm.overcommit_memory vm.panic_on_oom
  kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys
  kernel.keys.root_maxbytes net.netfilter.nf_conntrack_max)
# Host paths containerd / the kubelet / CNI hard-code; removed by `down` when
# they did not exist before the first `up`.
HOST_PATHS=(/run/containerd /var/lib/cni /var/log/containers /var/log/pods
  /var/lib/kubelet /etc/cni /run/netns /etc/kubernetes
  /usr/libexec/kubernetes /run/mount)

# Stop order of `down` (reverse start order). Fake-node heartbeats first.
COMPONENTS=(kubelet kube-proxy kube-scheduler kube-controller-manager containerd kube-apiserver etcd)

# ---------------------------------------------------------------- helpers --

port_owner() { ss -Hltnp "sport = :$1" 2>/dev/null | head -1; }
require_port_free() {
  local owner; owner="$(port_owner "$1")"
  [[ -z "$owner" ]] || die "port $1 is already in use by another process ($owner); cannot start $2"
}

start_proc() { # NAME BINARY ARGS...
  local name="$1"; shift
  local pid exe
  if pid="$(pid_of "$name")"; then
    if ! config_changed "$name"; then log "$name already running (pid $pid)"; return 0; fi
    log "$name: configuration changed; restarting"
    stop_procs 10 "$name"
  fi
  exe="$(readlink -f "$(command -v "$1")")"
  printf '==== %s starting %s: %s\n' "$(date -Is)" "$name" "$*" >> "$LOGS/$name.log"
  # setsid: own session, so the caller's terminal or job control never
  # signals it; the PID recorded is the PID of the component itself.
  setsid "$@" >> "$LOGS/$name.log" 2>&1 < /dev/null 9>&- &
  pid=$!
  echo "$pid" > "$PIDS/$name.pid"
  echo "$exe" > "$PIDS/$name.exe"
  log "started $name (pid $pid, log $LOGS/$name.log)"
}

# stop_pid NAME PID: TERM, then KILL after a bounded wait.
stop_pid() {
  local name="$1" pid="$2" i
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < 100; i++)); do   # 10 s
    [[ -d /proc/$pid ]] || { log "stopped $name (pid $pid)"; return 0; }
    sleep 0.1
  done
  log "$name (pid $pid) ignored SIGTERM for 10 s; sending SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do [[ -d /proc/$pid ]] || return 0; sleep 0.1; done
  log "WARNING: $name (pid $pid) still exists after SIGKILL"
}

stop_proc() { stop_procs 10 "$1"; }

# stop_procs TIMEOUT NAME...: SIGTERM to every recorded process of NAMES at
# once, SIGKILL to those still there after TIMEOUT seconds.
stop_procs() {
  local timeout="$1"; shift
  local name pid i names=() pids=()
  for name in "$@"; do
    if pid="$(pid_of "$name")"; then
      kill -TERM "$pid" 2>/dev/null || true
      names+=("$name"); pids+=("$pid")
    fi
    rm -f "$PIDS/$name.pid" "$PIDS/$name.exe"
  done
  for ((i = 0; i < timeout * 10; i++)); do
    local alive=0
    for pid in "${pids[@]}"; do [[ -d /proc/$pid ]] && alive=1; done
    [[ $alive == 0 ]] && break
    sleep 0.1
  done
  for i in "${!pids[@]}"; do
    pid="${pids[$i]}"
    if [[ -d /proc/$pid ]]; then
      log "${names[$i]} (pid $pid) still running ${timeout} s after SIGTERM; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    else
      log "stopped ${names[$i]} (pid $pid)"
    fi
  done
  for pid in "${pids[@]}"; do
    for ((i = 0; i < 50; i++)); do [[ -d /proc/$pid ]] || break; sleep 0.1; done
  done
}

b64() { base64 -w0 < "$1"; }

# put_file PATH: stdin -> PATH, only when the content differs (kube-proxy, for
# one, exits when its configuration file changes under it).
put_file() {
  local f="$1"
  cat > "$f.new"
  if [[ -f "$f" ]] && cmp -s "$f" "$f.new"; then rm -f "$f.new"; else mv "$f.new" "$f"; CHANGED+=("$f"); fi
}
CHANGED=()

# Files whose change makes `up` restart a running component.
declare -A CONFIG_OF=(
  [containerd]="$CONF/containerd.toml $STATE/cni/net.d/10-$CNI_NETWORK.conflist"
  [kube-scheduler]="$CONF/scheduler.yaml"
  [kubelet]="$CONF/kubelet.yaml $CONF/resolv.conf"
  [kube-proxy]="$CONF/kube-proxy.yaml"
)
config_changed() { # NAME
  local f c
  for f in ${CONFIG_OF[$1]:-}; do
    for c in "${CHANGED[@]}"; do [[ "$c" == "$f" ]] && return 0; done
  done
  return 1
}

write_kubeconfig() { # FILE USER CERT_BASENAME
  local file="$1" user="$2" cert="$3"
  put_file "$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: fast-sandbox
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority-data: $(b64 "$PKI/ca.crt")
users:
- name: $user
  user:
    client-certificate-data: $(b64 "$PKI/$cert.crt")
    client-key-data: $(b64 "$PKI/$cert.key")
contexts:
- name: fast-sandbox
  context: {cluster: fast-sandbox, user: $user}
current-context: fast-sandbox
EOF
  chmod 600 "$file"
}

# ------------------------------------------------------------------- up ----

ensure_packages() {
  local missing=() p
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [[ ${#missing[@]} -eq 0 ]]; then log "apt packages present"; return; fi
  log "installing apt packages: ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" ||
    { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"; }
}

record_host() {
  [[ -f "$HOSTREC/recorded" ]] && return 0
  log "recording host settings to restore on down"
  mkdir -p "$HOSTREC"
  local k v p fam
  : > "$HOSTREC/sysctl"
  for k in "${HOST_SYSCTLS[@]}"; do
    v="$(sysctl -n "$k" 2>/dev/null)" && printf '%s=%s\n' "$k" "$v" >> "$HOSTREC/sysctl"
  done
  : > "$HOSTREC/paths"
  for p in "${HOST_PATHS[@]}"; do
    if [[ -e "$p" || -L "$p" ]]; then echo "$p 1"; else echo "$p 0"; fi >> "$HOSTREC/paths"
  done
  for fam in iptables ip6tables; do
    "$fam-save" 2>/dev/null | awk '/^\*/ {t=substr($1,2)} /^:/ {print t, substr($1,2)}' > "$HOSTREC/$fam.chains" || true
  done
  touch "$HOSTREC/recorded"
}

gen_key() { [[ -s "$1" ]] || { openssl genrsa -out "$1.tmp" 2048 2>/dev/null && mv "$1.tmp" "$1"; }; }

gen_cert() { # NAME CN ORG(or "") server|client|both SANS(or "")
  local name="$1" cn="$2" org="$3" kind="$4" sans="${5:-}"
  [[ -s "$PKI/$name.crt" ]] && return 0
  gen_key "$PKI/$name.key"
  local subj="/CN=$cn" eku ext="$PKI/$name.ext"
  [[ -n "$org" ]] && subj="/O=$org/CN=$cn"
  case "$kind" in
    server) eku=serverAuth ;; client) eku=clientAuth ;; both) eku=serverAuth,clientAuth ;;
  esac
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$eku"
    [[ -n "$sans" ]] && echo "subjectAltName=$sans"
  } > "$ext"
  openssl req -new -key "$PKI/$name.key" -subj "$subj" -out "$PKI/$name.csr" 2>/dev/null
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -days 3650 -extfile "$ext" -out "$PKI/$name.crt.tmp" 2>/dev/null
  mv "$PKI/$name.crt.tmp" "$PKI/$name.crt"
  rm -f "$PKI/$name.csr" "$ext"
}

ensure_pki() {
  local ip="$1"
  mkdir -p "$PKI"; chmod 700 "$PKI"
  if [[ ! -s "$PKI/ca.crt" ]]; then
    log "generating CA"
    gen_key "$PKI/ca.key"
    openssl req -x509 -new -key "$PKI/ca.key" -subj "/CN=fast-sandbox-ca" -days 3650 \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
      -out "$PKI/ca.crt" 2>/dev/null
  fi
  # Serving certificates name the node IP: regenerate them if it changed.
  if [[ "$(cat "$PKI/node-ip" 2>/dev/null)" != "$ip|$NODE_NAME" ]]; then
    rm -f "$PKI/apiserver.crt" "$PKI/kubelet-serving.crt"
    echo "$ip|$NODE_NAME" > "$PKI/node-ip"
  fi
  gen_cert apiserver kube-apiserver "" server \
    "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost,DNS:$NODE_NAME,IP:127.0.0.1,IP:$SERVICE_APISERVER_IP,IP:$ip"
  gen_cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters client
  gen_cert admin fast-sandbox-admin system:masters client
  gen_cert controller-manager system:kube-controller-manager "" client
  gen_cert scheduler system:kube-scheduler "" client
  gen_cert kube-proxy system:kube-proxy "" client
  gen_cert kubelet-client "system:node:$NODE_NAME" system:nodes client
  gen_cert kubelet-serving "$NODE_NAME" "" server "DNS:$NODE_NAME,DNS:localhost,IP:$ip,IP:127.0.0.1"
  if [[ ! -s "$PKI/sa.key" ]]; then
    gen_key "$PKI/sa.key"
    openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  fi
  chmod 600 "$PKI"/*.key
}

write_configs() {
  local ip="$1"
  mkdir -p "$CONF" "$STATE/cni/net.d" "$STATE/cni/networks" "$CONTAINERD_DIR"/{root,state,opt,runc} \
    "$KUBELET_DIR" "$STATE/pod-logs" "$STATE/etcd"
  chmod 700 "$STATE/etcd"
  write_kubeconfig "$ADMIN_KUBECONFIG" fast-sandbox-admin admin
  write_kubeconfig "$CONF/controller-manager.kubeconfig" system:kube-controller-manager controller-manager
  write_kubeconfig "$CONF/scheduler.kubeconfig" system:kube-scheduler scheduler
  write_kubeconfig "$CONF/kube-proxy.kubeconfig" system:kube-proxy kube-proxy
  write_kubeconfig "$CONF/kubelet.kubeconfig" "system:node:$NODE_NAME" kubelet-client

  # Pods resolve with the host's non-loopback nameservers (there is no cluster
  # DNS); none at all if the host only has a local resolver.
  put_file "$CONF/resolv.conf" < <(
  {
    echo "# written by test/cluster/cluster.sh for pods"
    grep -E '^(search|options)' /etc/resolv.conf 2>/dev/null || true
    grep -E '^nameserver' /etc/resolv.conf 2>/dev/null | grep -vE 'nameserver[[:space:]]+(127\.|::1)' || true
  })

  put_file "$STATE/cni/net.d/10-$CNI_NETWORK.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "$CNI_NETWORK",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$CNI_BRIDGE",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$STATE/cni/networks",
        "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$POD_GATEWAY"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF

  put_file "$CONF/containerd.toml" <<EOF
# Dedicated containerd of the local test cluster; nothing shared with a
# system containerd except the host's shim socket directory.
version = 2
root = "$CONTAINERD_DIR/root"
state = "$CONTAINERD_DIR/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "$CONTAINERD_SOCK"

[ttrpc]
  address = "$CONTAINERD_SOCK.ttrpc"

[debug]
  address = ""
  level = "info"

[metrics]
  address = ""

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "$CONTAINERD_DIR/opt"
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "$PAUSE_IMAGE"
    netns_mounts_under_state_dir = true
    # This machine withholds CAP_SYS_RESOURCE even from root, so no process
    # may lower its oom_score_adj (the pause container asks for -998): clamp
    # every container to containerd's own value instead of failing.
    restrict_oom_score_adj = true
    enable_selinux = false
    disable_apparmor = true
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          SystemdCgroup = false
          Root = "$CONTAINERD_DIR/runc"
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "$CNI_BIN_DIR"
      conf_dir = "$STATE/cni/net.d"
      max_conf_num = 1
EOF

  put_file "$CONF/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This machine runs cgroup v1 (hybrid); kubelet >= 1.31 refuses it unless told.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupsPerQOS: true
cgroupRoot: $CGROUP_ROOT
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
failSwapOn: false
protectKernelDefaults: false
address: 0.0.0.0
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization:
  mode: Webhook
tlsCertFile: $PKI/kubelet-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-serving.key
rotateCertificates: false
serverTLSBootstrap: false
resolvConf: $CONF/resolv.conf
clusterDomain: cluster.local
podLogsDir: $STATE/pod-logs
volumePluginDir: $KUBELET_DIR/volume-plugins
registerNode: true
serializeImagePulls: false
localStorageCapacityIsolation: true
# Locally imported images cannot be pulled again: never garbage-collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: "100Mi"
  nodefs.available: "2%"
  imagefs.available: "2%"
  nodefs.inodesFree: "2%"
maxPods: 110
EOF

  put_file "$CONF/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: $CONF/kube-proxy.kubeconfig
mode: iptables
clusterCIDR: $POD_CIDR
hostnameOverride: $NODE_NAME
bindAddress: 0.0.0.0
nodePortAddresses: ["primary"]
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# 0 = leave the host's conntrack settings alone.
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
iptables:
  # true would set net.ipv4.conf.all.route_localnet=1 on the host.
  localhostNodePorts: false
  minSyncPeriod: 0s
  syncPeriod: 30s
EOF

}

# The scheduler reads the repository's configuration when there is one
# (deploy/), else the default here. Its clientConnection.kubeconfig is
# rewritten to this cluster's scheduler credentials. A CA file its extenders
# name under $STATE is filled from the extender's TLS Secret once that
# exists; until then the scheduler runs with the default configuration (no
# extender), and the next `up` switches over.
render_scheduler_config() {
  local src="$REPO_ROOT/deploy/scheduler/kube-scheduler-config.yaml" ca missing=""
  [[ -f "$src" ]] || src="$CLUSTER_DIR/scheduler-config.yaml"
  for ca in $(awk -v q="'" '/^[[:space:]]*caFile:/ {gsub(/"/, "", $2); gsub(q, "", $2); print $2}' "$src"); do
    CONFIG_OF[kube-scheduler]+=" $ca"
    if [[ "$ca" == "$STATE"/* ]]; then
      local data
      data="$(kc -n "$EXTENDER_TLS_SECRET_NS" get secret "$EXTENDER_TLS_SECRET" -o jsonpath='{.data.ca\.crt}' 2>/dev/null || true)"
      [[ -n "$data" ]] && put_file "$ca" < <(base64 -d <<<"$data")
    fi
    [[ -s "$ca" ]] || missing+=" $ca"
  done
  if [[ -n "$missing" ]]; then
    log "WARNING: $src names missing CA file(s):$missing (Secret $EXTENDER_TLS_SECRET_NS/$EXTENDER_TLS_SECRET not there yet?);"
    log "WARNING: kube-scheduler runs with $CLUSTER_DIR/scheduler-config.yaml (no extender) until the next 'cluster.sh up' finds them"
    src="$CLUSTER_DIR/scheduler-config.yaml"
  fi
  echo "$src" > "$CONF/scheduler.source"
  put_file "$CONF/scheduler.yaml" < <(awk -v kc="$CONF/scheduler.kubeconfig" '
    /^clientConnection:[[:space:]]*$/ { print; incc = 1; next }
    incc && /^[^[:space:]#]/ { if (!done) { print "  kubeconfig: " kc; done = 1 } incc = 0 }
    incc && /^[[:space:]]+kubeconfig:/ { match($0, /^[[:space:]]+/); print substr($0, 1, RLENGTH) "kubeconfig: " kc; done = 1; next }
    { print }
    END {
      if (incc && !done) { print "  kubeconfig: " kc; done = 1 }
      if (!done) { print "clientConnection:"; print "  kubeconfig: " kc }
    }' "$src")
}

ensure_cgroup_root() {
  # The kubelet requires its cgroupRoot to exist in every v1 hierarchy.
  local h
  for h in /sys/fs/cgroup/*/; do
    h="${h%/}"
    [[ -f "$h/cgroup.procs" ]] || continue
    [[ "$(stat -fc %T "$h")" == cgroup2fs ]] && continue
    if [[ ! -d "$h$CGROUP_ROOT" ]]; then
      mkdir "$h$CGROUP_ROOT"
      if [[ -f "$h/cpuset.cpus" ]]; then
        cat "$h/cpuset.cpus" > "$h$CGROUP_ROOT/cpuset.cpus"
        cat "$h/cpuset.mems" > "$h$CGROUP_ROOT/cpuset.mems"
      fi
    fi
  done
}

# The list is captured before grep reads it: `ctrx ... | grep -q` under
# pipefail fails when grep exits before ctr finished writing.
image_present() { local images; images="$(ctrx -n k8s.io images ls -q 2>/dev/null)"; grep -qxF "$1" <<<"$images"; }

ensure_images() {
  if ! image_present "$PAUSE_IMAGE"; then
    log "building the pause image"
    mkdir -p "$STATE/build"
    gcc -static -Os -s -o "$STATE/build/pause" "$CLUSTER_DIR/pause/pause.c"
    "$CLUSTER_DIR/load-image.sh" --address "$CONTAINERD_SOCK" --entrypoint /pause \
      fast-sandbox/pause:dev "$STATE/build/pause=/pause"
  fi
  if ! image_present "$BUSYBOX_IMAGE"; then
    log "building the busybox test image"
    "$CLUSTER_DIR/build-busybox-image.sh" --address "$CONTAINERD_SOCK"
  fi
}

apiserver_ready() {
  curl -sf --max-time 2 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
    "https://127.0.0.1:$APISERVER_PORT/readyz" | grep -qx ok
}

node_ready_since() { # EPOCH: node Ready with a heartbeat at or after EPOCH
  local out status hb
  out="$(kc get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status} {.status.conditions[?(@.type=="Ready")].lastHeartbeatTime}')" || return 1
  read -r status hb <<<"$out"
  [[ "$status" == True ]] || return 1
  [[ "$1" == 0 ]] && return 0
  (( $(date -u -d "$hb" +%s) >= $1 ))
}

lock_state() { # one up/down at a time
  exec 9> "$STATE/.cluster.lock"
  flock -n 9 || { log "waiting for another cluster.sh up/down to finish"; flock -w 600 9; } || die "another cluster.sh up/down holds $STATE/.cluster.lock"
}

cmd_up() {
  local t0; t0=$(date +%s.%N)
  [[ $EUID -eq 0 ]] || die "must run as root"
  mkdir -p "$STATE" "$LOGS" "$PIDS"
  lock_state
  ensure_packages
  log "building / fetching Kubernetes $K8S_VERSION binaries"
  local bin; bin="$("$CLUSTER_DIR/build-k8s.sh")"
  [[ "$bin" == "$K8S_BIN" ]] || die "build-k8s.sh printed $bin, expected $K8S_BIN"
  [[ -x "$K8S_BIN/kube-proxy" ]] || die "kube-proxy missing in $K8S_BIN"
  local ip; ip="$(node_ip)"
  log "node $NODE_NAME, IP $ip, state $STATE"
  record_host
  ensure_pki "$ip"
  write_configs "$ip"

  # Host networking the pod network needs (restored by down).
  sysctl -qw net.ipv4.ip_forward=1
  [[ -e /proc/sys/net/bridge/bridge-nf-call-iptables ]] && sysctl -qw net.bridge.bridge-nf-call-iptables=1
  [[ -e /proc/sys/net/bridge/bridge-nf-call-iptables ]] ||
    log "WARNING: br_netfilter is not loaded: pod-to-Service traffic across the bridge bypasses kube-proxy"

  # etcd
  if ! pid_of etcd >/dev/null; then
    require_port_free "$ETCD_CLIENT_PORT" etcd; require_port_free "$ETCD_PEER_PORT" etcd
  fi
  start_proc etcd etcd --name fast-sandbox --data-dir "$STATE/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "fast-sandbox=http://127.0.0.1:$ETCD_PEER_PORT" \
    --snapshot-count 10000 --logger zap
  poll "etcd health" 30 sh -c "curl -sf --max-time 1 http://127.0.0.1:$ETCD_CLIENT_PORT/health | grep -q '\"health\":\"true\"'" ||
    die "etcd did not become healthy; see $LOGS/etcd.log"
  log "etcd healthy"

  # containerd
  start_proc containerd containerd --config "$CONF/containerd.toml"
  poll "containerd socket" 30 ctr -a "$CONTAINERD_SOCK" version || die "containerd did not start; see $LOGS/containerd.log"
  log "containerd ready ($CONTAINERD_SOCK)"
  ensure_images

  # kube-apiserver
  if ! pid_of kube-apiserver >/dev/null; then require_port_free "$APISERVER_PORT" kube-apiserver; fi
  start_proc kube-apiserver "$K8S_BIN/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$ETCD_CLIENT_PORT" \
    --bind-address 0.0.0.0 --secure-port "$APISERVER_PORT" --advertise-address "$ip" \
    --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
    --client-ca-file "$PKI/ca.crt" \
    --kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt" --kubelet-client-key "$PKI/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority "$PKI/ca.crt" --kubelet-preferred-address-types InternalIP,Hostname \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
    --api-audiences https://kubernetes.default.svc.cluster.local \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --authorization-mode Node,RBAC \
    --enable-admission-plugins NamespaceLifecycle,LimitRanger,ServiceAccount,DefaultStorageClass,DefaultTolerationSeconds,MutatingAdmissionWebhook,ValidatingAdmissionWebhook,ValidatingAdmissionPolicy,ResourceQuota,NodeRestriction,Priority \
    --allow-privileged=true --profiling=false --v=1
  poll "kube-apiserver /readyz" 90 apiserver_ready || die "kube-apiserver not ready; see $LOGS/kube-apiserver.log"
  log "kube-apiserver ready (https://127.0.0.1:$APISERVER_PORT)"

  start_proc kube-controller-manager "$K8S_BIN/kube-controller-manager" \
    --kubeconfig "$CONF/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$CONF/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$CONF/controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --leader-elect=false \
    --service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt" \
    --cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key" \
    --use-service-account-credentials=true \
    --flex-volume-plugin-dir "$KUBELET_DIR/volume-plugins" \
    --service-cluster-ip-range "$SERVICE_CIDR" --cluster-cidr "$POD_CIDR" --allocate-node-cidrs=false \
    --v=1
  render_scheduler_config
  log "kube-scheduler config: $(cat "$CONF/scheduler.source")"
  start_proc kube-scheduler "$K8S_BIN/kube-scheduler" --config "$CONF/scheduler.yaml" \
    --authentication-kubeconfig "$CONF/scheduler.kubeconfig" \
    --authorization-kubeconfig "$CONF/scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --leader-elect=false --v=1

  ensure_cgroup_root
  local kubelet_since=0
  pid_of kubelet >/dev/null || kubelet_since="$(date -u +%s)"
  start_proc kubelet "$K8S_BIN/kubelet" --config "$CONF/kubelet.yaml" \
    --kubeconfig "$CONF/kubelet.kubeconfig" --root-dir "$KUBELET_DIR" --cert-dir "$KUBELET_DIR/pki" \
    --hostname-override "$NODE_NAME" --node-ip "$ip" --v=1
  start_proc kube-proxy "$K8S_BIN/kube-proxy" --config "$CONF/kube-proxy.yaml" --v=1

  poll "kube-controller-manager /healthz" 30 sh -c "curl -sk --max-time 1 https://127.0.0.1:10257/healthz | grep -qx ok" ||
    { tail -5 "$LOGS/kube-controller-manager.log" >&2; die "kube-controller-manager not healthy; see $LOGS/kube-controller-manager.log"; }
  poll "kube-scheduler /healthz" 30 sh -c "curl -sk --max-time 1 https://127.0.0.1:10259/healthz | grep -qx ok" ||
    { tail -5 "$LOGS/kube-scheduler.log" >&2; die "kube-scheduler not healthy; see $LOGS/kube-scheduler.log"; }
  poll "node $NODE_NAME to register" 60 kc get node "$NODE_NAME" ||
    die "node $NODE_NAME did not register; see $LOGS/kubelet.log"
  # Ready, and reported by the kubelet running now (after a restart the Node
  # object still carries the previous kubelet's Ready condition for a while).
  poll "node $NODE_NAME Ready" 120 node_ready_since "$kubelet_since" ||
    die "node $NODE_NAME not Ready after 120 s; see $LOGS/kubelet.log and $LOGS/containerd.log"
  log "node $NODE_NAME Ready"
  poll "service account default/default" 60 kc -n default get serviceaccount default ||
    die "no default service account; see $LOGS/kube-controller-manager.log"
  poll "kube-proxy rules for the kubernetes Service" 60 sh -c "iptables-save -t nat | grep -q 'default/kubernetes:https'" ||
    log "WARNING: kube-proxy has not programmed the kubernetes Service yet; see $LOGS/kube-proxy.log"

  local name dead=""
  for name in etcd containerd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy; do
    pid_of "$name" >/dev/null || dead+=" $name"
  done
  if [[ -n "$dead" ]]; then
    for name in $dead; do log "$name exited; last lines of $LOGS/$name.log:"; tail -5 "$LOGS/$name.log" >&2; done
    die "not running:$dead"
  fi
  log "cluster up in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}') s"
  cat <<EOF

Cluster is up. Node: $NODE_NAME ($ip)
  kubeconfig: $ADMIN_KUBECONFIG
  export KUBECONFIG=$ADMIN_KUBECONFIG
  export PATH=$K8S_BIN:\$PATH
  containerd: $CONTAINERD_SOCK  (ctr -a $CONTAINERD_SOCK -n k8s.io images ls)
  logs: $LOGS
or: eval "\$($CLUSTER_DIR/cluster.sh env)"
EOF
}

# ----------------------------------------------------------------- down ----

# Processes (shims, containers) that belong to our containerd: shims name our
# socket on their command line; containers live under our cgroup root.
our_shims() {
  local d pid
  for d in /proc/[0-9]*; do
    pid="${d#/proc/}"
    [[ "$(readlink "$d/exe" 2>/dev/null)" == */containerd-shim* ]] || continue
    tr '\0' ' ' < "$d/cmdline" 2>/dev/null | grep -qF -- "-address $CONTAINERD_SOCK " && echo "$pid"
  done
  return 0
}
our_cgroup_pids() {
  local h
  for h in /sys/fs/cgroup/*/; do
    [[ -d "$h${CGROUP_ROOT#/}" ]] || continue
    find "$h${CGROUP_ROOT#/}" -name cgroup.procs -exec cat {} + 2>/dev/null
  done | sort -u
}

kill_containers() {
  if [[ -S "$CONTAINERD_SOCK" ]] && ctr --connect-timeout 1s -a "$CONTAINERD_SOCK" version >/dev/null 2>&1; then
    local ns t
    for ns in $(ctrx namespaces ls -q 2>/dev/null); do
      for t in $(ctrx -n "$ns" tasks ls -q 2>/dev/null); do
        ctrx -n "$ns" tasks kill -a -s SIGKILL "$t" >/dev/null 2>&1 || true
      done
      for t in $(ctrx -n "$ns" tasks ls -q 2>/dev/null); do
        timeout 10 ctr -a "$CONTAINERD_SOCK" -n "$ns" tasks delete -f "$t" >/dev/null 2>&1 || true
      done
    done
  fi
  local pids; pids="$(our_cgroup_pids)"
  if [[ -n "$pids" ]]; then
    log "killing $(wc -w <<<"$pids") leftover container processes in $CGROUP_ROOT"
    kill -KILL $pids 2>/dev/null || true
  fi
}

unmount_under() { # DIR: unmount every mount point at or below DIR, deepest first
  local dir="$1" i mp left
  for ((i = 0; i < 5; i++)); do
    left=0
    while read -r mp; do
      [[ -n "$mp" ]] || continue
      left=1
      umount "$mp" 2>/dev/null || umount -l "$mp" 2>/dev/null || log "WARNING: cannot unmount $mp"
    done < <(awk -v d="$dir" '{gsub(/\\040/, " ", $5); if ($5 == d || index($5, d "/") == 1) print length($5), $5}' /proc/self/mountinfo |
      sort -rn | cut -d' ' -f2-)
    [[ $left == 0 ]] && return 0
  done
}

cleanup_iptables() {
  local fam before tmp t c
  for fam in iptables ip6tables; do
    command -v "$fam-save" >/dev/null || continue
    before="$HOSTREC/$fam.chains"; [[ -f "$before" ]] || before=/dev/null
    tmp="$(mktemp)"
    "$fam-save" > "$tmp" 2>/dev/null || { rm -f "$tmp"; continue; }
    # Ours: KUBE-* and CNI-* chains that did not exist before the first up.
    awk -v before="$before" '
      BEGIN { while ((getline l < before) > 0) pre[l] = 1 }
      /^\*/ { t = substr($1, 2); next }
      /^:/ { c = substr($1, 2); if (c ~ /^(KUBE-|CNI-)/ && !((t " " c) in pre)) ours[t, c] = 1; chains[t] = chains[t] " " c; next }
      /^-A / { rules[t] = rules[t] "\n" $0; next }
      END {
        for (tc in ours) { split(tc, p, SUBSEP); touched[p[1]] = 1 }
        for (t in touched) {
          print "*" t
          n = split(rules[t], r, "\n")
          for (i = 1; i <= n; i++) {
            if (r[i] == "") continue
            split(r[i], w, " ")
            if ((t, w[2]) in ours) continue
            for (j = 3; j <= length(w); j++) if ((w[j] == "-j" || w[j] == "-g") && ((t, w[j+1]) in ours)) { sub(/^-A /, "-D ", r[i]); print r[i]; break }
          }
          for (tc in ours) { split(tc, p, SUBSEP); if (p[1] == t) print "-F " p[2] }
          for (tc in ours) { split(tc, p, SUBSEP); if (p[1] == t) print "-X " p[2] }
          print "COMMIT"
        }
      }' "$tmp" > "$tmp.restore"
    if [[ -s "$tmp.restore" ]]; then
      "$fam-restore" --noflush < "$tmp.restore" 2>>"$LOGS/down.log" ||
        log "WARNING: $fam cleanup incomplete (see $LOGS/down.log)"
    fi
    rm -f "$tmp" "$tmp.restore"
  done
}

remove_cgroups() {
  local h i
  for h in /sys/fs/cgroup/*/; do
    [[ -d "$h${CGROUP_ROOT#/}" ]] || continue
    for ((i = 0; i < 20; i++)); do
      find "$h${CGROUP_ROOT#/}" -depth -type d -exec rmdir {} + 2>/dev/null || true
      [[ -d "$h${CGROUP_ROOT#/}" ]] || break
      sleep 0.2
    done
    [[ -d "$h${CGROUP_ROOT#/}" ]] && log "WARNING: cannot remove cgroup $h${CGROUP_ROOT#/}"
  done
  return 0
}

# unix_socket_bound PATH: some process listens on that socket path.
unix_socket_bound() { awk -v p="$1" '$NF == p {found = 1} END {exit !found}' /proc/net/unix; }

# Host paths containerd, the kubelet and CNI hard-code: remove our own
# entries in them; remove a directory the cluster created only once it is
# empty, so that nothing another program put there since is ever deleted.
clean_host_paths() {
  [[ -f "$HOSTREC/paths" ]] || return 0
  local p existed f
  for f in /run/containerd/s/* /var/lib/kubelet/device-plugins/kubelet.sock; do
    [[ -S "$f" ]] && ! unix_socket_bound "$f" && rm -f "$f"   # stale sockets
  done
  rm -f /var/lib/cni/results/"$CNI_NETWORK"-* 2>/dev/null || true
  for f in /var/lib/cni/results/cni-loopback-*-lo; do   # loopback results of our sandboxes
    [[ -e "$f" ]] || continue
    f="${f##*/cni-loopback-}"; f="${f%-lo}"
    [[ -d "$CONTAINERD_DIR/root/io.containerd.grpc.v1.cri/sandboxes/$f" ]] && rm -f "/var/lib/cni/results/cni-loopback-$f-lo"
  done
  for f in /var/log/containers/*; do
    [[ -L "$f" && "$(readlink "$f")" == "$STATE"/* ]] && rm -f "$f"
  done
  [[ -f /run/mount/utab && ! -s /run/mount/utab ]] && grep -qx '/run/mount 0' "$HOSTREC/paths" && rm -f /run/mount/utab
  while read -r p existed; do
    [[ "$existed" == 0 && -d "$p" ]] || continue
    find "$p" -depth -type d -empty -delete 2>/dev/null || true
    if [[ -e "$p" ]]; then log "leaving $p: not empty (used by another program?)"
    else log "removed $p (created by the cluster)"; fi
  done < "$HOSTREC/paths"
}

cmd_down() {
  local purge=0
  [[ "${1:-}" == "--purge" ]] && purge=1
  [[ $EUID -eq 0 ]] || die "must run as root"
  if [[ ! -d "$STATE" ]]; then log "no state dir $STATE: nothing to do"; return 0; fi
  lock_state
  mkdir -p "$LOGS" "$PIDS"
  local f name helpers=()
  # Fake-node heartbeats and any other helper recorded by our scripts.
  for f in "$PIDS"/*.pid; do
    [[ -e "$f" ]] || continue
    name="$(basename "$f" .pid)"
    [[ " ${COMPONENTS[*]} " == *" $name "* ]] || helpers+=("$name")
  done
  stop_procs 10 "${helpers[@]}" kubelet kube-proxy kube-scheduler kube-controller-manager
  log "killing containers of our containerd"
  kill_containers
  stop_procs 10 containerd
  local shims; shims="$(our_shims)"
  for f in $shims; do stop_pid containerd-shim "$f"; done
  kill_containers   # anything the shims left behind
  # The apiserver drains watches for a long time on SIGTERM; nothing to save.
  stop_procs 3 kube-apiserver
  stop_procs 10 etcd

  log "unmounting everything under $STATE"
  unmount_under "$STATE"
  if [[ -x "$K8S_BIN/kube-proxy" ]]; then
    log "kube-proxy --cleanup"
    "$K8S_BIN/kube-proxy" --cleanup --v=0 >> "$LOGS/kube-proxy-cleanup.log" 2>&1 || true
  fi
  log "removing iptables chains, the $CNI_BRIDGE bridge and cgroups we created"
  cleanup_iptables
  if ip link show "$CNI_BRIDGE" >/dev/null 2>&1; then
    local l   # veths still attached to our bridge (normally gone with their netns)
    for l in $(ip -o link show master "$CNI_BRIDGE" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
      ip link del "$l" 2>/dev/null || true
    done
    ip link del "$CNI_BRIDGE"
  fi
  remove_cgroups
  rm -rf "$STATE/cni/networks"   # IPAM leases of the pods just killed

  if [[ -f "$HOSTREC/sysctl" ]]; then
    log "restoring host sysctls"
    local kv
    while read -r kv; do sysctl -qw "$kv" 2>/dev/null || true; done < "$HOSTREC/sysctl"
  fi
  clean_host_paths
  rm -rf "$HOSTREC"

  local left; left="$(awk -v d="$STATE" 'index($5, d) == 1' /proc/self/mountinfo | wc -l)"
  if [[ $purge == 1 ]]; then
    if [[ "$left" != 0 ]]; then die "mounts remain under $STATE; not purging"; fi
    log "purging $STATE"
    rm -rf --one-file-system "$STATE"
  fi
  log "down complete"
}

# --------------------------------------------------------------- status ----

cmd_status() {
  local name pid rc=0
  echo "state: $STATE"
  for name in etcd containerd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy; do
    if pid="$(pid_of "$name")"; then printf '  %-24s running (pid %s)\n' "$name" "$pid"
    else printf '  %-24s not running\n' "$name"; rc=1; fi
  done
  local f
  for f in "$PIDS"/*.pid; do
    [[ -e "$f" ]] || continue
    name="$(basename "$f" .pid)"
    [[ " ${COMPONENTS[*]} " == *" $name "* ]] && continue
    if pid="$(pid_of "$name")"; then printf '  %-24s running (pid %s)\n' "$name" "$pid"
    else printf '  %-24s not running\n' "$name"; fi
  done
  if [[ -f "$ADMIN_KUBECONFIG" ]] && pid_of kube-apiserver >/dev/null; then
    echo
    kc get nodes -o wide || rc=1
    echo
    kc get pods -A -o wide 2>/dev/null || true
  fi
  return $rc
}

# kill NAME...: SIGKILL to the recorded process of each named component (a
# crash, for the fault tests), then wait until each is gone. Only PIDs this
# script started are touched; `up` starts them again.
cmd_kill() {
  local name pid pids=() i
  [[ $# -gt 0 ]] || die "kill: name at least one of: ${COMPONENTS[*]}"
  for name in "$@"; do
    [[ " ${COMPONENTS[*]} " == *" $name "* ]] || die "kill: $name is not one of: ${COMPONENTS[*]}"
    pid="$(pid_of "$name")" || die "kill: $name is not running"
    pids+=("$pid")
  done
  kill -KILL "${pids[@]}"
  for pid in "${pids[@]}"; do
    for ((i = 0; i < 100; i++)); do [[ -d /proc/$pid ]] || break; sleep 0.05; done
    [[ -d /proc/$pid ]] && die "kill: pid $pid still exists 5 s after SIGKILL"
  done
  log "killed $* (pids ${pids[*]})"
}

cmd_env() {
  echo "export KUBECONFIG=$ADMIN_KUBECONFIG"
  echo "export PATH=$K8S_BIN:\$PATH"
  echo "export FAST_SANDBOX_CONTAINERD_SOCK=$CONTAINERD_SOCK"
}

case "${1:-}" in
  up) shift; cmd_up "$@" ;;
  down) shift; cmd_down "$@" ;;
  status) shift; cmd_status "$@" ;;
  env) shift; cmd_env "$@" ;;
  kill) shift; cmd_kill "$@" ;;
  *) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 2 ;;
esac
