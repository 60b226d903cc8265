#!/usr/bin/env bash
# A real two-node Kubernetes cluster on this machine: etcd, kube-apiserver,
# kube-controller-manager and kube-scheduler on the host, and per node its own
# containerd 2, kubelet and kube-proxy, all upstream, all started by this
# script. Node 1 is the host; node 2 lives in network and mount namespaces of
# its own (see lib.sh).
#
#   cluster.sh up             bring the cluster up (idempotent)
#   cluster.sh down [--purge] stop everything we started, unmount, clean the
#                             host; --purge also deletes the state dir
#   cluster.sh status         recorded processes, nodes and pods
#   cluster.sh env            export lines: eval "$(cluster.sh env)"
#   cluster.sh nodes          one line per node: name, IP, containerd socket
#                             (as seen from the host), kubelet process name
#   cluster.sh socket NODE    the containerd socket of NODE (name or number)
#   cluster.sh kill NAME...   SIGKILL components (fault tests); `up` restarts
#                             them, the way a supervisor would
#   cluster.sh stop NAME...   SIGTERM components and wait (a clean stop,
#                             e.g. `stop kubelet-2`); `up` starts them again
#
# Component names: etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler; per node containerd, kubelet, kube-proxy (node 1) and
# containerd-N, kubelet-N, kube-proxy-N (node N).
#
# Environment: FAST_SANDBOX_STATE (default /var/lib/fast-sandbox-cluster),
# FAST_SANDBOX_CACHE (default /var/cache/fast-sandbox), FAST_SANDBOX_NODES
# (default 2), FAST_SANDBOX_NODE_IP, FAST_SANDBOX_NODE_NAME (node 1; node N
# is <name>-N), FAST_SANDBOX_ETCD_PORT (default 12379).
set -euo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

APT_PACKAGES=(containerd runc containernetworking-plugins etcd-server etcd-client
  protobuf-compiler umoci busybox-static iptables nftables conntrack socat ebtables ethtool
  openssl curl jq gcc libc6-dev iproute2 util-linux procps)

# Host settings the kubelet, kube-proxy or the bridge CNI plugin may change;
# recorded at the first `up`, restored by `down`.
HOST_SYSCTLS=(net.ipv4.ip_forward net.ipv6.conf.all.forwarding
  net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables
  net.ipv4.conf.all.route_localnet vm.overcommit_memory vm.panic_on_oom
  kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys
  kernel.keys.root_maxbytes net.netfilter.nf_conntrack_max)
# Host paths containerd / the kubelet / CNI / agent pods hard-code (and the
# mount points of node 2's private copies); removed by `down` when they did
# not exist before the first `up`.
HOST_PATHS=(/run/containerd /var/lib/cni /var/log/containers /var/log/pods
  /var/lib/kubelet /etc/cni /run/netns /etc/kubernetes
  /usr/libexec/kubernetes /run/mount /var/lib/fast-sandbox)
# Links the cluster creates on the host.
HOST_LINKS=("$CNI_BRIDGE" "$NODES_BRIDGE")

CONTROL_PLANE=(etcd kube-apiserver kube-controller-manager kube-scheduler)
# node_components N: names of node N's processes.
node_components() { node_set "$1"; echo "containerd$N_SUFFIX kubelet$N_SUFFIX kube-proxy$N_SUFFIX"; }
all_components() {
  local i out="${CONTROL_PLANE[*]}"
  for ((i = 1; i <= NODE_COUNT; i++)); do out+=" $(node_components "$i")"; done
  echo "$out"
}
read -ra COMPONENTS <<<"$(all_components)"

# ---------------------------------------------------------------- helpers --

port_owner() { ss -Hltnp "sport = :$1" 2>/dev/null | head -1; }
require_port_free() {
  local owner; owner="$(port_owner "$1")"
  [[ -z "$owner" ]] || die "port $1 is already in use by another process ($owner); cannot start $2"
}

# start_proc NAME [--ns DIR] BINARY ARGS...: start a component unless it
# runs with the same command line and configuration; --ns DIR runs it in the
# mount and network namespaces of a node (DIR/mnt, DIR/net).
start_proc() {
  local name="$1"; shift
  local pid exe wrap=() cmdline
  if [[ "$1" == --ns ]]; then wrap=(nsenter "--mount=$2/mnt" "--net=$2/net" --); shift 2; fi
  cmdline="$*"
  if pid="$(pid_of "$name")"; then
    if config_changed "$name"; then
      log "$name: configuration changed; restarting"
    elif [[ "$(cat "$PIDS/$name.cmd" 2>/dev/null)" != "$cmdline" ]]; then
      log "$name: command line changed; restarting"
    else
      log "$name already running (pid $pid)"; return 0
    fi
    stop_procs 10 "$name"
  fi
  # The executable the PID will run: the BINARY, or what `env VAR=...` runs.
  local a target="$1"
  if [[ "$(basename "$1")" == env ]]; then
    for a in "${@:2}"; do [[ "$a" == *=* ]] || { target="$a"; break; }; done
  fi
  exe="$(readlink -f "$(command -v "$target")")"
  printf '==== %s starting %s: %s\n' "$(date -Is)" "$name" "$*" >> "$LOGS/$name.log"
  # setsid: own session, so the caller's terminal or job control never
  # signals it; the PID recorded is the PID of the component itself
  # (nsenter execs it).
  setsid "${wrap[@]}" "$@" >> "$LOGS/$name.log" 2>&1 < /dev/null 9>&- &
  pid=$!
  echo "$pid" > "$PIDS/$name.pid"
  echo "$exe" > "$PIDS/$name.exe"
  echo "$cmdline" > "$PIDS/$name.cmd"
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
    rm -f "$PIDS/$name.pid" "$PIDS/$name.exe" "$PIDS/$name.cmd"
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

# Files whose change makes `up` restart a running component (node files are
# added by write_node_configs).
declare -A CONFIG_OF=(
  [kube-apiserver]="$CONF/admission.yaml $CONF/webhook-client.kubeconfig $PKI/apiserver.crt"
  [kube-scheduler]="$CONF/scheduler.yaml"
)
config_changed() { # NAME
  local f c
  for f in ${CONFIG_OF[$1]:-}; do
    for c in "${CHANGED[@]}"; do [[ "$c" == "$f" ]] && return 0; done
  done
  return 1
}

write_kubeconfig() { # FILE USER CERT_BASENAME [SERVER]
  local file="$1" user="$2" cert="$3" server="${4:-https://127.0.0.1:$APISERVER_PORT}"
  put_file "$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: fast-sandbox
  cluster:
    server: $server
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
  local k v p fam l
  : > "$HOSTREC/sysctl"
  for k in "${HOST_SYSCTLS[@]}"; do
    v="$(sysctl -n "$k" 2>/dev/null)" && printf '%s=%s\n' "$k" "$v" >> "$HOSTREC/sysctl"
  done
  : > "$HOSTREC/paths"
  for p in "${HOST_PATHS[@]}"; do
    if [[ -e "$p" || -L "$p" ]]; then echo "$p 1"; else echo "$p 0"; fi >> "$HOSTREC/paths"
  done
  : > "$HOSTREC/links"
  for l in "${HOST_LINKS[@]}"; do
    if ip link show "$l" >/dev/null 2>&1; then echo "$l 1"; else echo "$l 0"; fi >> "$HOSTREC/links"
  done
  for fam in iptables ip6tables; do
    "$fam-save" 2>/dev/null | awk '/^\*/ {t=substr($1,2)} /^:/ {print t, substr($1,2)}' > "$HOSTREC/$fam.chains" || true
  done
  touch "$HOSTREC/recorded"
}
# link_was_there NAME: the link existed before the first up (not ours).
link_was_there() { grep -qx "$1 1" "$HOSTREC/links" 2>/dev/null; }

gen_key() { [[ -s "$1" ]] || { openssl genrsa -out "$1.tmp" 2048 2>/dev/null && mv "$1.tmp" "$1"; }; }

gen_ca() { # NAME CN
  [[ -s "$PKI/$1.crt" ]] && return 0
  log "generating CA $1 ($2)"
  gen_key "$PKI/$1.key"
  openssl req -x509 -new -key "$PKI/$1.key" -subj "/CN=$2" -days 3650 \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
    -out "$PKI/$1.crt.tmp" 2>/dev/null
  mv "$PKI/$1.crt.tmp" "$PKI/$1.crt"
}

# gen_cert NAME CN ORG(or "") server|client|both [SANS(or "") [CA]]: a leaf
# signed by CA (default ca, the cluster CA).
gen_cert() {
  local name="$1" cn="$2" org="$3" kind="$4" sans="${5:-}" ca="${6:-ca}"
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
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/$ca.crt" -CAkey "$PKI/$ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -days 3650 -extfile "$ext" -out "$PKI/$name.crt.tmp" 2>/dev/null
  mv "$PKI/$name.crt.tmp" "$PKI/$name.crt"
  rm -f "$PKI/$name.csr" "$ext"
  CHANGED+=("$PKI/$name.crt")
}

# kubelet certificate basenames of node N (node 1 keeps the unnumbered ones).
kubelet_cert() { if [[ "$1" == 1 ]]; then echo "kubelet-$2"; else echo "kubelet$1-$2"; fi; }

ensure_pki() {
  local ip="$1" i
  mkdir -p "$PKI"; chmod 700 "$PKI"
  gen_ca ca fast-sandbox-ca
  # Serving certificates name the node IPs: regenerate them if any changed.
  local names="$ip|$NODE_NAME|$NODE_COUNT|$NODES_HOST_IP"
  if [[ "$(cat "$PKI/node-ip" 2>/dev/null)" != "$names" ]]; then
    rm -f "$PKI/apiserver.crt" "$PKI"/kubelet-serving.crt "$PKI"/kubelet[0-9]-serving.crt
    echo "$names" > "$PKI/node-ip"
  fi
  # Nodes >= 2 reach the apiserver at the host's address on the node bridge.
  gen_cert apiserver kube-apiserver "" server \
    "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost,DNS:$NODE_NAME,IP:127.0.0.1,IP:$SERVICE_APISERVER_IP,IP:$ip,IP:$NODES_HOST_IP"
  gen_cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters client
  # Client certificate the apiserver shows to admission webhooks of our
  # namespace (admission.yaml): signed by the cluster CA, whose bundle is
  # client-ca-file in kube-system/extension-apiserver-authentication.
  gen_cert apiserver-webhook-client kube-apiserver-webhook-client "" client
  # Aggregation layer: the front-proxy CA and the client certificate the
  # apiserver proxies to aggregated API servers with (as kubeadm makes them).
  gen_ca front-proxy-ca front-proxy-ca
  gen_cert front-proxy-client front-proxy-client "" client "" front-proxy-ca
  gen_cert admin fast-sandbox-admin system:masters client
  gen_cert controller-manager system:kube-controller-manager "" client
  # Also the scheduler's client certificate to the extender (tlsConfig).
  gen_cert scheduler system:kube-scheduler "" client
  gen_cert kube-proxy system:kube-proxy "" client
  for ((i = 1; i <= NODE_COUNT; i++)); do
    node_set "$i"
    gen_cert "$(kubelet_cert "$i" client)" "system:node:$N_NAME" system:nodes client
    gen_cert "$(kubelet_cert "$i" serving)" "$N_NAME" "" server "DNS:$N_NAME,DNS:localhost,IP:$N_IP,IP:127.0.0.1"
  done
  if [[ ! -s "$PKI/sa.key" ]]; then
    gen_key "$PKI/sa.key"
    openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  fi
  chmod 600 "$PKI"/*.key
}

# Configuration shared by the control plane.
write_configs() {
  mkdir -p "$CONF" "$STATE/etcd"
  chmod 700 "$STATE/etcd"
  write_kubeconfig "$ADMIN_KUBECONFIG" fast-sandbox-admin admin
  write_kubeconfig "$CONF/controller-manager.kubeconfig" system:kube-controller-manager controller-manager
  write_kubeconfig "$CONF/scheduler.kubeconfig" system:kube-scheduler scheduler

  # Pods resolve with the host's non-loopback nameservers (there is no cluster
  # DNS); none at all if the host only has a local resolver.
  put_file "$CONF/resolv.conf" < <(
  {
    echo "# written by test/cluster/cluster.sh for pods"
    grep -E '^(search|options)' /etc/resolv.conf 2>/dev/null || true
    grep -E '^nameserver' /etc/resolv.conf 2>/dev/null | grep -vE 'nameserver[[:space:]]+(127\.|::1)' || true
  })

  # Webhook calls to a Service of our namespace carry the apiserver's webhook
  # client certificate. The apiserver looks a Service webhook up as
  # "<svc>.<ns>.svc:<port>", then "*.<ns>.svc:<port>"; for port 443 also
  # without the port: "*.<ns>.svc" matches every Service of the namespace on
  # port 443. A webhook on another port needs a "*.<ns>.svc:<port>" entry.
  put_file "$CONF/webhook-client.kubeconfig" <<EOF
apiVersion: v1
kind: Config
users:
- name: '*.$SYSTEM_NAMESPACE.svc'
  user:
    client-certificate: $PKI/apiserver-webhook-client.crt
    client-key: $PKI/apiserver-webhook-client.key
EOF
  put_file "$CONF/admission.yaml" <<EOF
apiVersion: apiserver.config.k8s.io/v1
kind: AdmissionConfiguration
plugins:
- name: MutatingAdmissionWebhook
  configuration:
    apiVersion: apiserver.config.k8s.io/v1
    kind: WebhookAdmissionConfiguration
    kubeConfigFile: $CONF/webhook-client.kubeconfig
- name: ValidatingAdmissionWebhook
  configuration:
    apiVersion: apiserver.config.k8s.io/v1
    kind: WebhookAdmissionConfiguration
    kubeConfigFile: $CONF/webhook-client.kubeconfig
EOF
}

# Configuration of node N (node_set N first): kubeconfigs, CNI, containerd,
# kubelet, kube-proxy.
write_node_configs() {
  local i="$N_INDEX"
  mkdir -p "$N_CONF" "$N_CNI_DIR/net.d" "$N_CNI_DIR/networks" "$N_CONTAINERD_DIR"/{root,state,opt,runc} \
    "$N_KUBELET_DIR" "$N_POD_LOGS"
  CONFIG_OF[containerd$N_SUFFIX]="$N_CONF/containerd.toml $N_CNI_DIR/net.d/10-$CNI_NETWORK.conflist"
  CONFIG_OF[kubelet$N_SUFFIX]="$N_CONF/kubelet.yaml $CONF/resolv.conf $N_CONF/kubelet.kubeconfig $PKI/$(kubelet_cert "$i" serving).crt"
  CONFIG_OF[kube-proxy$N_SUFFIX]="$N_CONF/kube-proxy.yaml $N_CONF/kube-proxy.kubeconfig"
  write_kubeconfig "$N_CONF/kube-proxy.kubeconfig" system:kube-proxy kube-proxy "$N_APISERVER"
  write_kubeconfig "$N_CONF/kubelet.kubeconfig" "system:node:$N_NAME" "$(kubelet_cert "$i" client)" "$N_APISERVER"

  put_file "$N_CNI_DIR/net.d/10-$CNI_NETWORK.conflist" <<EOF
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
        "dataDir": "$N_CNI_DIR/networks",
        "ranges": [[{"subnet": "$N_POD_CIDR", "gateway": "$N_POD_GATEWAY"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF

  # containerd 2 in its version 3 format. The socket is the standard path
  # in the node's own mount namespace (for node 1, the host's).
  put_file "$N_CONF/containerd.toml" <<EOF
# containerd of node $N_NAME in the local test cluster; nothing shared with a
# system containerd (none may run: the socket path is the standard one).
version = 3
root = "$N_CONTAINERD_DIR/root"
state = "$N_CONTAINERD_DIR/state"
# NRI would listen at a fixed host path (/var/run/nri/nri.sock).
disabled_plugins = ["io.containerd.nri.v1.nri",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "$NODE_CONTAINERD_SOCK"

[ttrpc]
  address = "$NODE_CONTAINERD_SOCK.ttrpc"

[debug]
  address = ""
  level = "info"

[metrics]
  address = ""

[plugins]
  [plugins.'io.containerd.internal.v1.opt']
    path = "$N_CONTAINERD_DIR/opt"
  [plugins.'io.containerd.grpc.v1.cri']
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = "overlayfs"
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = "$PAUSE_IMAGE"
  [plugins.'io.containerd.cri.v1.runtime']
    netns_mounts_under_state_dir = true
    # This machine withholds CAP_SYS_RESOURCE even from root, so no process
    # may lower its oom_score_adj (the pause container asks for -998): clamp
    # every container to containerd's own value instead of failing.
    restrict_oom_score_adj = true
    enable_selinux = false
    disable_apparmor = true
    # No CDI devices here; the defaults watch /etc/cdi and /var/run/cdi.
    cdi_spec_dirs = []
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = "runc"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          SystemdCgroup = false
          Root = "$N_CONTAINERD_DIR/runc"
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = ["$CNI_BIN_DIR"]
      conf_dir = "$N_CNI_DIR/net.d"
      max_conf_num = 1
EOF

  # Image garbage collection: off (locally imported images cannot be
  # pulled again), unless FAST_SANDBOX_IMAGE_GC_NODES lists this node's
  # number: then the pass the kubelet makes as it starts removes every
  # image no pod has used and the runtime does not report pinned (past the
  # maximum age of 2ns; the image GC test's). A disk-usage pass would not
  # do: it spares images first seen less than imageMinimumGCAge ago, and
  # after a restart every image is.
  local image_gc="imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99"
  if [[ " ${FAST_SANDBOX_IMAGE_GC_NODES:-} " == *" $i "* ]]; then
    image_gc="$image_gc
imageMinimumGCAge: 1ns
imageMaximumGCAge: 2ns"
  fi
  # Upstream defaults except where this machine or the test cluster needs
  # otherwise (each such line says why).
  put_file "$N_CONF/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This machine runs cgroup v1 (hybrid); kubelet >= 1.35 refuses to start on
# it unless told (KEP-5573).
failCgroupV1: false
cgroupDriver: cgroupfs
# Every pod cgroup of this node is below it (one root per node).
cgroupRoot: $N_CGROUP_ROOT
containerRuntimeEndpoint: unix://$NODE_CONTAINERD_SOCK
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization:
  mode: Webhook
tlsCertFile: $PKI/$(kubelet_cert "$i" serving).crt
tlsPrivateKeyFile: $PKI/$(kubelet_cert "$i" serving).key
# The host's non-loopback nameservers; there is no cluster DNS.
resolvConf: $CONF/resolv.conf
clusterDomain: cluster.local
# Under the state dir instead of the host's /var/log/pods and
# /usr/libexec/kubernetes.
podLogsDir: $N_POD_LOGS
volumePluginDir: $N_KUBELET_DIR/volume-plugins
$image_gc
# These machines keep most of the root filesystem's blocks reserved (df
# shows a tenth of it available at best, less while builds fill it), which
# the default thresholds (imagefs 15 %, nodefs 10 %) read as disk pressure
# on an idle node: absolute floors instead.
evictionHard:
  memory.available: "100Mi"
  nodefs.available: "1Gi"
  imagefs.available: "1Gi"
  nodefs.inodesFree: "2%"
EOF

  put_file "$N_CONF/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: $N_CONF/kube-proxy.kubeconfig
mode: iptables
clusterCIDR: $CLUSTER_CIDR
hostnameOverride: $N_NAME
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

# ------------------------------------------------------------ node >= 2 ----

ns_bound() { [[ "$(findmnt -n -o FSTYPE --mountpoint "$1" 2>/dev/null)" == nsfs ]]; }
# ns_inode FILE: inode of the namespace bound at FILE (as /proc/PID/ns/* name it).
ns_inode() { stat -L -c %i "$1" 2>/dev/null; }

# ensure_node_ns: the network and mount namespaces of node N (node_set N
# first), bound at $N_NS/net and $N_NS/mnt so they outlive their processes.
# In the mount namespace, each of NODE_PRIVATE_PATHS is a bind of the node's
# own directory under $N_DIR/host; the copies of the host's mounts below
# $STATE are dropped. The network namespace has lo, and eth0 ($N_IP) whose
# peer is attached to the host bridge $NODES_BRIDGE.
ensure_node_ns() {
  local p
  if ! ip link show "$NODES_BRIDGE" >/dev/null 2>&1; then
    link_was_there "$NODES_BRIDGE" && die "host bridge $NODES_BRIDGE vanished"
    ip link add "$NODES_BRIDGE" type bridge
  fi
  ip addr replace "$NODES_HOST_IP/24" dev "$NODES_BRIDGE"
  ip link set "$NODES_BRIDGE" up
  if ! ns_bound "$N_NS/mnt" || ! ns_bound "$N_NS/net"; then
    log "creating the network and mount namespaces of node $N_NAME"
    umount "$N_NS/mnt" 2>/dev/null || true
    umount "$N_NS/net" 2>/dev/null || true
    mkdir -p "$N_NS"
    # The namespace files must sit on a private mount (no propagation loop).
    if [[ "$(findmnt -n -o TARGET --mountpoint "$N_NS" 2>/dev/null)" != "$N_NS" ]]; then
      mount --bind "$N_NS" "$N_NS"
    fi
    mount --make-private "$N_NS"
    touch "$N_NS/mnt" "$N_NS/net"
    for p in "${NODE_PRIVATE_PATHS[@]}"; do mkdir -p "$N_DIR/host$p" "$p"; done
    unshare --mount="$N_NS/mnt" --net="$N_NS/net" --propagation private -- bash -c '
      set -e
      state="$1"; own="$2"; shift 2
      awk -v d="$state" '\''{gsub(/\\040/, " ", $5); if ($5 == d || index($5, d "/") == 1) print length($5), $5}'\'' /proc/self/mountinfo |
        sort -rn | cut -d" " -f2- | while read -r mp; do umount -l "$mp" 2>/dev/null || true; done
      for p in "$@"; do mount --bind "$own$p" "$p"; done
      ip link set lo up' ns-init "$STATE" "$N_DIR/host" "${NODE_PRIVATE_PATHS[@]}"
  fi
  local veth="fsb-n$N_INDEX"
  if ! ip link show "$veth" >/dev/null 2>&1; then
    ip link add "$veth" type veth peer name eth0 netns "$N_NS/net"
  fi
  ip link set "$veth" master "$NODES_BRIDGE" up
  nsenter --net="$N_NS/net" sh -c "
    ip addr replace $N_IP/24 dev eth0 && ip link set eth0 up &&
    ip route replace default via $NODES_HOST_IP dev eth0 &&
    sysctl -qw net.ipv4.ip_forward=1 &&
    { [ ! -e /proc/sys/net/bridge/bridge-nf-call-iptables ] || sysctl -qw net.bridge.bridge-nf-call-iptables=1; }"
  # The host routes the node's pod CIDR to it; the node routes the rest back.
  ip route replace "$N_POD_CIDR" via "$N_IP" dev "$NODES_BRIDGE"
}

# The scheduler reads the repository's configuration when there is one
# (deploy/), else the default here. Its clientConnection.kubeconfig is
# rewritten to this cluster's scheduler credentials, and an extender's
# tlsConfig certFile / keyFile to the scheduler's own client certificate
# ($PKI/scheduler.crt, CN system:kube-scheduler), which the extender checks.
# Paths under the default state dir are moved to $STATE. A CA file its
# extenders name under $STATE is filled from the extender's TLS Secret once
# that exists; until then the scheduler runs with the default configuration
# (no extender), and the next `up` switches over.
render_scheduler_config() {
  local src="$REPO_ROOT/deploy/scheduler/kube-scheduler-config.yaml" ca missing="" default_state=/var/lib/fast-sandbox-cluster
  [[ -f "$src" ]] || src="$CLUSTER_DIR/scheduler-config.yaml"
  for ca in $(awk -v q="'" '/^[[:space:]]*caFile:/ {gsub(/"/, "", $2); gsub(q, "", $2); print $2}' "$src"); do
    [[ "$ca" == "$default_state"/* ]] && ca="$STATE/${ca#"$default_state"/}"
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
  put_file "$CONF/scheduler.yaml" < <(awk -v kc="$CONF/scheduler.kubeconfig" -v crt="$PKI/scheduler.crt" \
      -v key="$PKI/scheduler.key" -v from="$default_state/" -v to="$STATE/" '
    function indent(l) { match(l, /^[[:space:]]+/); return substr(l, 1, RLENGTH) }
    /^clientConnection:[[:space:]]*$/ { print; incc = 1; next }
    incc && /^[^[:space:]#]/ { if (!done) { print "  kubeconfig: " kc; done = 1 } incc = 0 }
    incc && /^[[:space:]]+kubeconfig:/ { print indent($0) "kubeconfig: " kc; done = 1; next }
    /^[[:space:]]+certFile:/ { print indent($0) "certFile: " crt; next }
    /^[[:space:]]+keyFile:/ { print indent($0) "keyFile: " key; next }
    /^[[:space:]]+caFile:/ { l = $0; i = index(l, from); if (i) l = substr(l, 1, i - 1) to substr(l, i + length(from)); print l; next }
    { print }
    END {
      if (incc && !done) { print "  kubeconfig: " kc; done = 1 }
      if (!done) { print "clientConnection:"; print "  kubeconfig: " kc }
    }' "$src")
}

ensure_cgroup_root() { # ROOT
  # The kubelet requires its cgroupRoot to exist in every v1 hierarchy.
  local h
  for h in /sys/fs/cgroup/*/; do
    h="${h%/}"
    [[ -f "$h/cgroup.procs" ]] || continue
    [[ "$(stat -fc %T "$h")" == cgroup2fs ]] && continue
    if [[ ! -d "$h$1" ]]; then
      mkdir "$h$1"
      if [[ -f "$h/cpuset.cpus" ]]; then
        cat "$h/cpuset.cpus" > "$h$1/cpuset.cpus"
        cat "$h/cpuset.mems" > "$h$1/cpuset.mems"
      fi
    fi
  done
}

# The list is captured before grep reads it: `ctr ... | grep -q` under
# pipefail fails when grep exits before ctr finished writing.
image_present() { # SOCK IMAGE
  local images; images="$("$(ctr_bin)" -a "$1" -n k8s.io images ls -q 2>/dev/null)"; grep -qxF "$2" <<<"$images"
}

# ensure_images: the pause and busybox images on node N (node_set N first).
ensure_images() {
  if ! image_present "$N_SOCK" "$PAUSE_IMAGE"; then
    log "building the pause image for $N_NAME"
    mkdir -p "$STATE/build"
    [[ -x "$STATE/build/pause" ]] || gcc -static -Os -s -o "$STATE/build/pause" "$CLUSTER_DIR/pause/pause.c"
    "$CLUSTER_DIR/load-image.sh" --address "$N_SOCK" --entrypoint /pause \
      fast-sandbox/pause:dev "$STATE/build/pause=/pause"
  fi
  if ! image_present "$N_SOCK" "$BUSYBOX_IMAGE"; then
    log "building the busybox test image for $N_NAME"
    "$CLUSTER_DIR/build-busybox-image.sh" --address "$N_SOCK"
  fi
}

apiserver_ready() {
  curl -sf --max-time 2 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
    "https://127.0.0.1:$APISERVER_PORT/readyz" | grep -qx ok
}

node_ready_since() { # NODE EPOCH: node Ready with a heartbeat at or after EPOCH
  local out status hb
  out="$(kc get node "$1" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status} {.status.conditions[?(@.type=="Ready")].lastHeartbeatTime}')" || return 1
  read -r status hb <<<"$out"
  [[ "$status" == True ]] || return 1
  [[ "$2" == 0 ]] && return 0
  (( $(date -u -d "$hb" +%s) >= $2 ))
}

lock_state() { # one up/down at a time
  exec 9> "$STATE/.cluster.lock"
  flock -n 9 || { log "waiting for another cluster.sh up/down to finish"; flock -w 600 9; } || die "another cluster.sh up/down holds $STATE/.cluster.lock"
}

# start_node_runtime: node N's namespaces (N >= 2), containerd and images.
start_node_runtime() {
  local ns=()
  if [[ -n "$N_NS" ]]; then ensure_node_ns; ns=(--ns "$N_NS"); fi
  if [[ "$N_INDEX" == 1 ]] && ! pid_of containerd >/dev/null && unix_socket_bound "$N_SOCK"; then
    die "another process listens at $N_SOCK (a system containerd?); the local cluster's node $N_NAME needs that path"
  fi
  # A fixed PATH, so containerd finds the shim of its own version first (it
  # looks the shim up on PATH before its own directory) and the command line
  # does not depend on the caller's. gVisor's shim and runsc come next: the
  # runtime `io.containerd.runsc.v1` of pools with `runtime: gvisor`.
  start_proc "containerd$N_SUFFIX" "${ns[@]}" env "PATH=$CONTAINERD_BIN:$GVISOR_BIN:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    "$CONTAINERD_BIN/containerd" --config "$N_CONF/containerd.toml"
  poll "containerd of $N_NAME" 30 "$(ctr_bin)" -a "$N_SOCK" version ||
    die "containerd of $N_NAME did not start; see $LOGS/containerd$N_SUFFIX.log"
  log "containerd of $N_NAME ready ($N_SOCK)"
  ensure_images
}

# start_node_agents: node N's kubelet and kube-proxy. Sets KUBELET_SINCE.
start_node_agents() {
  local ns=()
  [[ -n "$N_NS" ]] && ns=(--ns "$N_NS")
  ensure_cgroup_root "$N_CGROUP_ROOT"
  KUBELET_SINCE=0
  pid_of "kubelet$N_SUFFIX" >/dev/null || KUBELET_SINCE="$(date -u +%s)"
  start_proc "kubelet$N_SUFFIX" "${ns[@]}" "$K8S_BIN/kubelet" --config "$N_CONF/kubelet.yaml" \
    --kubeconfig "$N_CONF/kubelet.kubeconfig" --root-dir "$N_KUBELET_DIR" --cert-dir "$N_KUBELET_DIR/pki" \
    --hostname-override "$N_NAME" --node-ip "$N_IP" --v=1
  start_proc "kube-proxy$N_SUFFIX" "${ns[@]}" "$K8S_BIN/kube-proxy" --config "$N_CONF/kube-proxy.yaml" --v=1
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
  log "building / fetching containerd $CONTAINERD_VERSION binaries"
  bin="$("$CLUSTER_DIR/build-containerd.sh")"
  [[ "$bin" == "$CONTAINERD_BIN" ]] || die "build-containerd.sh printed $bin, expected $CONTAINERD_BIN"
  log "building / fetching gVisor $GVISOR_VERSION binaries"
  bin="$("$CLUSTER_DIR/build-gvisor.sh")"
  [[ "$bin" == "$GVISOR_BIN" ]] || die "build-gvisor.sh printed $bin, expected $GVISOR_BIN"
  local ip; ip="$(node_ip)"
  log "nodes: $NODE_COUNT ($NODE_NAME at $ip, the host), state $STATE"
  record_host
  ensure_pki "$ip"
  write_configs
  local i
  for ((i = 1; i <= NODE_COUNT; i++)); do node_set "$i"; write_node_configs; done

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

  for ((i = 1; i <= NODE_COUNT; i++)); do node_set "$i"; start_node_runtime; done

  # kube-apiserver. The aggregation layer as kubeadm sets it up (front-proxy
  # CA and client certificate, request headers); aggregated APIs and
  # webhooks are reached at their Service's ClusterIP through the host's
  # kube-proxy, so --enable-aggregator-routing is not needed.
  if ! pid_of kube-apiserver >/dev/null; then require_port_free "$APISERVER_PORT" kube-apiserver; fi
  start_proc kube-apiserver "$K8S_BIN/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$ETCD_CLIENT_PORT" \
    --bind-address 0.0.0.0 --secure-port "$APISERVER_PORT" --advertise-address "$ip" \
    --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
    --client-ca-file "$PKI/ca.crt" \
    --kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt" --kubelet-client-key "$PKI/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority "$PKI/ca.crt" --kubelet-preferred-address-types InternalIP,Hostname \
    --requestheader-client-ca-file "$PKI/front-proxy-ca.crt" \
    --requestheader-allowed-names front-proxy-client \
    --requestheader-username-headers X-Remote-User \
    --requestheader-group-headers X-Remote-Group \
    --requestheader-extra-headers-prefix X-Remote-Extra- \
    --proxy-client-cert-file "$PKI/front-proxy-client.crt" --proxy-client-key-file "$PKI/front-proxy-client.key" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
    --api-audiences https://kubernetes.default.svc.cluster.local \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --authorization-mode Node,RBAC \
    --enable-admission-plugins NamespaceLifecycle,LimitRanger,ServiceAccount,DefaultStorageClass,DefaultTolerationSeconds,MutatingAdmissionWebhook,ValidatingAdmissionWebhook,ValidatingAdmissionPolicy,ResourceQuota,NodeRestriction,Priority \
    --admission-control-config-file "$CONF/admission.yaml" \
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
    --service-cluster-ip-range "$SERVICE_CIDR" --cluster-cidr "$CLUSTER_CIDR" --allocate-node-cidrs=false \
    --v=1
  render_scheduler_config
  log "kube-scheduler config: $(cat "$CONF/scheduler.source")"
  start_proc kube-scheduler "$K8S_BIN/kube-scheduler" --config "$CONF/scheduler.yaml" \
    --authentication-kubeconfig "$CONF/scheduler.kubeconfig" \
    --authorization-kubeconfig "$CONF/scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --leader-elect=false --v=1

  local since=()
  for ((i = 1; i <= NODE_COUNT; i++)); do node_set "$i"; start_node_agents; since+=("$KUBELET_SINCE"); done

  poll "kube-controller-manager /healthz" 30 sh -c "curl -sk --max-time 1 https://127.0.0.1:10257/healthz | grep -qx ok" ||
    { tail -5 "$LOGS/kube-controller-manager.log" >&2; die "kube-controller-manager not healthy; see $LOGS/kube-controller-manager.log"; }
  poll "kube-scheduler /healthz" 30 sh -c "curl -sk --max-time 1 https://127.0.0.1:10259/healthz | grep -qx ok" ||
    { tail -5 "$LOGS/kube-scheduler.log" >&2; die "kube-scheduler not healthy; see $LOGS/kube-scheduler.log"; }
  for ((i = 1; i <= NODE_COUNT; i++)); do
    node_set "$i"
    poll "node $N_NAME to register" 60 kc get node "$N_NAME" ||
      die "node $N_NAME did not register; see $LOGS/kubelet$N_SUFFIX.log"
    # Ready, and reported by the kubelet running now (after a restart the Node
    # object still carries the previous kubelet's Ready condition for a while).
    poll "node $N_NAME Ready" 120 node_ready_since "$N_NAME" "${since[$((i - 1))]}" ||
      die "node $N_NAME not Ready after 120 s; see $LOGS/kubelet$N_SUFFIX.log and $LOGS/containerd$N_SUFFIX.log"
    log "node $N_NAME Ready"
  done
  poll "service account default/default" 60 kc -n default get serviceaccount default ||
    die "no default service account; see $LOGS/kube-controller-manager.log"
  poll "kube-proxy rules for the kubernetes Service" 60 sh -c "iptables-save -t nat | grep -q 'default/kubernetes:https'" ||
    log "WARNING: kube-proxy has not programmed the kubernetes Service yet; see $LOGS/kube-proxy.log"

  local name dead=""
  for name in "${COMPONENTS[@]}"; do
    pid_of "$name" >/dev/null || dead+=" $name"
  done
  if [[ -n "$dead" ]]; then
    for name in $dead; do log "$name exited; last lines of $LOGS/$name.log:"; tail -5 "$LOGS/$name.log" >&2; done
    die "not running:$dead"
  fi
  log "cluster up in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}') s"
  echo
  echo "Cluster is up."
  cmd_nodes | sed 's/^/  /'
  cat <<EOF
  kubeconfig: $ADMIN_KUBECONFIG
  logs: $LOGS
  eval "\$($CLUSTER_DIR/cluster.sh env)"    # KUBECONFIG, PATH (kubectl, ctr)
EOF
}

# ----------------------------------------------------------------- down ----

# Processes (shims, containers) that belong to node N's containerd (node_set N
# first): shims name the node's socket on their command line and run in the
# node's mount namespace; containers live under the node's cgroup root.
our_shims() {
  local d pid want
  if [[ -n "$N_NS" ]]; then want="mnt:[$(ns_inode "$N_NS/mnt")]"; else want="$(readlink /proc/self/ns/mnt)"; fi
  [[ "$want" != "mnt:[]" ]] || return 0
  for d in /proc/[0-9]*; do
    pid="${d#/proc/}"
    [[ "$(readlink "$d/exe" 2>/dev/null)" == */containerd-shim* ]] || continue
    [[ "$(readlink "$d/ns/mnt" 2>/dev/null)" == "$want" ]] || continue
    tr '\0' ' ' < "$d/cmdline" 2>/dev/null | grep -qF -- "-address $NODE_CONTAINERD_SOCK " && echo "$pid"
  done
  return 0
}
our_cgroup_pids() { # ROOT
  local h
  for h in /sys/fs/cgroup/*/; do
    [[ -d "$h${1#/}" ]] || continue
    find "$h${1#/}" -name cgroup.procs -exec cat {} + 2>/dev/null
  done | sort -u
}
# ns_pids: every process in node N's network or mount namespace (only our
# scripts put processes there).
ns_pids() {
  [[ -n "$N_NS" ]] || return 0
  local net mnt d
  net="$(ns_inode "$N_NS/net")"; mnt="$(ns_inode "$N_NS/mnt")"
  [[ -n "$net$mnt" ]] || return 0
  for d in /proc/[0-9]*; do
    case "$(readlink "$d/ns/net" 2>/dev/null) $(readlink "$d/ns/mnt" 2>/dev/null)" in
      "net:[$net] "*|*" mnt:[$mnt]") echo "${d#/proc/}" ;;
    esac
  done
}

kill_containers() { # node N (node_set N first)
  local c; c="$(ctr_bin)"
  if [[ -S "$N_SOCK" ]] && "$c" --connect-timeout 1s -a "$N_SOCK" version >/dev/null 2>&1; then
    local ns t
    for ns in $("$c" -a "$N_SOCK" namespaces ls -q 2>/dev/null); do
      for t in $("$c" -a "$N_SOCK" -n "$ns" tasks ls -q 2>/dev/null); do
        "$c" -a "$N_SOCK" -n "$ns" tasks kill -a -s SIGKILL "$t" >/dev/null 2>&1 || true
      done
      for t in $("$c" -a "$N_SOCK" -n "$ns" tasks ls -q 2>/dev/null); do
        timeout 10 "$c" -a "$N_SOCK" -n "$ns" tasks delete -f "$t" >/dev/null 2>&1 || true
      done
    done
  fi
  local pids; pids="$(our_cgroup_pids "$N_CGROUP_ROOT")"
  if [[ -n "$pids" ]]; then
    log "killing $(wc -w <<<"$pids") leftover container processes in $N_CGROUP_ROOT"
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

remove_cgroups() { # ROOT
  local h i
  for h in /sys/fs/cgroup/*/; do
    [[ -d "$h${1#/}" ]] || continue
    for ((i = 0; i < 20; i++)); do
      find "$h${1#/}" -depth -type d -exec rmdir {} + 2>/dev/null || true
      [[ -d "$h${1#/}" ]] || break
      sleep 0.2
    done
    [[ -d "$h${1#/}" ]] && log "WARNING: cannot remove cgroup $h${1#/}"
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
  for f in /run/containerd/s/* "$NODE_CONTAINERD_SOCK" "$NODE_CONTAINERD_SOCK.ttrpc" \
      /var/lib/kubelet/device-plugins/kubelet.sock; do
    [[ -S "$f" ]] && ! unix_socket_bound "$f" && rm -f "$f"   # stale sockets
  done
  # State of node 1's agent pods (hostPath /var/lib/fast-sandbox/agents/<pod uid>):
  # every one when the cluster made that directory, else those of pods the
  # kubelet still knows.
  local ours=0
  grep -qx '/var/lib/fast-sandbox 0' "$HOSTREC/paths" && ours=1
  for f in /var/lib/fast-sandbox/agents/*/; do
    f="${f%/}"
    [[ -d "$f" ]] || continue
    if [[ $ours == 1 || -d "$KUBELET_DIR/pods/${f##*/}" ]]; then rm -rf --one-file-system "$f"; fi
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
  local f name i helpers=() agents=() runtimes=()
  # Fake-node heartbeats and any other helper recorded by our scripts.
  for f in "$PIDS"/*.pid; do
    [[ -e "$f" ]] || continue
    name="$(basename "$f" .pid)"
    [[ " ${COMPONENTS[*]} " == *" $name "* ]] || helpers+=("$name")
  done
  for ((i = 1; i <= NODE_COUNT; i++)); do
    node_set "$i"; agents+=("kubelet$N_SUFFIX" "kube-proxy$N_SUFFIX"); runtimes+=("containerd$N_SUFFIX")
  done
  stop_procs 10 "${helpers[@]}" "${agents[@]}" kube-scheduler kube-controller-manager
  log "killing the containers of every node"
  for ((i = 1; i <= NODE_COUNT; i++)); do node_set "$i"; kill_containers; done
  stop_procs 10 "${runtimes[@]}"
  for ((i = 1; i <= NODE_COUNT; i++)); do
    node_set "$i"
    for f in $(our_shims); do stop_pid "containerd-shim of $N_NAME" "$f"; done
    kill_containers   # anything the shims left behind
    f="$(ns_pids)"
    if [[ -n "$f" ]]; then
      log "killing $(wc -w <<<"$f") processes left in the namespaces of $N_NAME"
      kill -KILL $f 2>/dev/null || true
    fi
  done
  # The apiserver drains watches for a long time on SIGTERM; nothing to save.
  stop_procs 3 kube-apiserver
  stop_procs 10 etcd

  # Node N's namespaces go with their last mount (under $STATE/nodeN/ns) and
  # take its mounts, eth0, pod bridge, iptables rules and sysctls along.
  log "unmounting everything under $STATE"
  unmount_under "$STATE"
  if [[ -x "$K8S_BIN/kube-proxy" ]]; then
    log "kube-proxy --cleanup"
    "$K8S_BIN/kube-proxy" --cleanup --v=0 >> "$LOGS/kube-proxy-cleanup.log" 2>&1 || true
  fi
  log "removing iptables chains, links and cgroups we created"
  cleanup_iptables
  local l bridge
  for bridge in "$CNI_BRIDGE" "$NODES_BRIDGE"; do
    ip link show "$bridge" >/dev/null 2>&1 || continue
    link_was_there "$bridge" && { log "leaving $bridge: it existed before the first up"; continue; }
    # veths still attached (normally gone with their netns)
    for l in $(ip -o link show master "$bridge" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
      ip link del "$l" 2>/dev/null || true
    done
    ip link del "$bridge"
  done
  for ((i = 1; i <= NODE_COUNT; i++)); do
    node_set "$i"
    remove_cgroups "$N_CGROUP_ROOT"
    rm -rf "$N_CNI_DIR/networks"   # IPAM leases of the pods just killed
  done

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
  for name in "${COMPONENTS[@]}"; do
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

component_pids() { # VERB NAME...: PIDs of running components, or die
  local verb="$1" name pid; shift
  [[ $# -gt 0 ]] || die "$verb: name at least one of: ${COMPONENTS[*]}"
  for name in "$@"; do
    [[ " ${COMPONENTS[*]} " == *" $name "* ]] || die "$verb: $name is not one of: ${COMPONENTS[*]}"
    pid="$(pid_of "$name")" || die "$verb: $name is not running"
    echo "$pid"
  done
}

# kill NAME...: SIGKILL to the recorded process of each named component (a
# crash, for the fault tests), then wait until each is gone. Only PIDs this
# script started are touched; `up` starts them again.
cmd_kill() {
  local pids pid i
  pids="$(component_pids kill "$@")" || exit 1
  kill -KILL $pids
  for pid in $pids; do
    for ((i = 0; i < 100; i++)); do [[ -d /proc/$pid ]] || break; sleep 0.05; done
    [[ -d /proc/$pid ]] && die "kill: pid $pid still exists 5 s after SIGKILL"
  done
  log "killed $* (pids $(echo $pids))"
}

# stop NAME...: SIGTERM (SIGKILL after 10 s) and wait; `up` starts them again.
cmd_stop() {
  component_pids stop "$@" >/dev/null || exit 1
  lock_state
  stop_procs 10 "$@"
}

cmd_nodes() {
  local i
  for ((i = 1; i <= NODE_COUNT; i++)); do
    node_set "$i"
    printf '%s %s %s %s\n' "$N_NAME" "$N_IP" "$N_SOCK" "kubelet$N_SUFFIX"
  done
}

cmd_socket() {
  [[ $# == 1 ]] || die "usage: cluster.sh socket NODE (a name from 'cluster.sh nodes', or its number)"
  node_socket "$1"
}

cmd_env() {
  local i pairs=""
  for ((i = 1; i <= NODE_COUNT; i++)); do
    node_set "$i"; pairs+="${pairs:+,}$N_NAME=$N_SOCK"
  done
  echo "export KUBECONFIG=$ADMIN_KUBECONFIG"
  echo "export PATH=$K8S_BIN:$CONTAINERD_BIN:\$PATH"
  # Node 1's containerd; every node's as NAME=SOCKET pairs.
  echo "export FAST_SANDBOX_CONTAINERD_SOCK=$CONTAINERD_SOCK"
  echo "export FAST_SANDBOX_NODE_CONTAINERD=$pairs"
  # containerd 2's ctr warns on every call that cgroup v1 is deprecated.
  echo "export CONTAINERD_SUPPRESS_DEPRECATION_WARNINGS=1"
}

case "${1:-}" in
  up) shift; cmd_up "$@" ;;
  down) shift; cmd_down "$@" ;;
  status) shift; cmd_status "$@" ;;
  env) shift; cmd_env "$@" ;;
  kill) shift; cmd_kill "$@" ;;
  stop) shift; cmd_stop "$@" ;;
  nodes) shift; cmd_nodes "$@" ;;
  socket) shift; cmd_socket "$@" ;;
  *) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 2 ;;
esac
