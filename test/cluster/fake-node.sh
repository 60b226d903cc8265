#!/usr/bin/env bash
# Extra Nodes without a kubelet, for scheduling tests: creates a Node object,
# writes its status (capacity, allocatable, Ready condition, images) through
# the status subresource, and keeps it Ready with a background heartbeat that
# renews its Lease in kube-node-lease every 10 s (without it, the node
# lifecycle controller marks the node NotReady/unreachable and taints it
# after ~50 s). The heartbeat's PID is recorded in the cluster's pids dir, so
# `cluster.sh down` stops it. Pods bound to a fake node stay Pending.
#
#   fake-node.sh NAME [--cpu 8] [--memory 32Gi] [--pods 110]
#                [--ephemeral-storage 100Gi] [--ip 203.0.113.7]
#                [--images "fast-sandbox/agent:dev:123456789,busybox:1:2Mi"]
#                [--labels "zone=a,disk=ssd"] [--no-heartbeat]
#   fake-node.sh --delete NAME
#   fake-node.sh --list
#
# --images: comma-separated IMAGE:SIZE; SIZE in bytes or with a Ki/Mi/Gi
# suffix, split at the last colon; names are normalised like the kubelet
# reports them (docker.io/fast-sandbox/agent:dev). Running the command again
# for an existing node updates it and restarts its heartbeat.
set -euo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

HEARTBEAT_SECONDS=10

now() { date -u +%Y-%m-%dT%H:%M:%SZ; }
now_micro() { date -u +%Y-%m-%dT%H:%M:%S.%6NZ; }

bytes() { # 123, 12Ki, 3Mi, 2Gi, 1G, 5M
  local v="$1"
  case "$v" in
    *Ki) echo $(( ${v%Ki} * 1024 )) ;;
    *Mi) echo $(( ${v%Mi} * 1024 * 1024 )) ;;
    *Gi) echo $(( ${v%Gi} * 1024 * 1024 * 1024 )) ;;
    *K|*k) echo $(( ${v%[Kk]} * 1000 )) ;;
    *M) echo $(( ${v%M} * 1000 * 1000 )) ;;
    *G) echo $(( ${v%G} * 1000 * 1000 * 1000 )) ;;
    *) [[ "$v" =~ ^[0-9]+$ ]] || die "bad size: $v"; echo "$v" ;;
  esac
}

heartbeat_name() { echo "fake-node-$1"; }

stop_heartbeat() {
  local name pid; name="$(heartbeat_name "$1")"
  if pid="$(pid_of "$name")"; then kill -TERM "$pid" 2>/dev/null || true; fi
  rm -f "$PIDS/$name.pid" "$PIDS/$name.exe"
}

ready_conditions() {
  local t; t="$(now)"
  cat <<EOF
[{"type":"MemoryPressure","status":"False","reason":"KubeletHasSufficientMemory","message":"fake node","lastHeartbeatTime":"$t","lastTransitionTime":"$t"},
 {"type":"DiskPressure","status":"False","reason":"KubeletHasNoDiskPressure","message":"fake node","lastHeartbeatTime":"$t","lastTransitionTime":"$t"},
 {"type":"PIDPressure","status":"False","reason":"KubeletHasSufficientPID","message":"fake node","lastHeartbeatTime":"$t","lastTransitionTime":"$t"},
 {"type":"Ready","status":"True","reason":"KubeletReady","message":"fake node heartbeat by fake-node.sh","lastHeartbeatTime":"$t","lastTransitionTime":"$t"}]
EOF
}

renew_lease() { # NAME UID
  local name="$1" uid="$2"
  kc apply --server-side --force-conflicts --field-manager fake-node -f - >/dev/null <<EOF
apiVersion: coordination.k8s.io/v1
kind: Lease
metadata:
  name: $name
  namespace: kube-node-lease
  ownerReferences: [{apiVersion: v1, kind: Node, name: $name, uid: $uid}]
spec:
  holderIdentity: $name
  leaseDurationSeconds: 40
  renewTime: "$(now_micro)"
EOF
}

heartbeat_loop() { # NAME (runs in the background)
  local name="$1" uid ready
  while true; do
    uid="$(kc get node "$name" -o jsonpath='{.metadata.uid}' 2>/dev/null)" || { sleep "$HEARTBEAT_SECONDS"; continue; }
    [[ -n "$uid" ]] || { log "node $name is gone; heartbeat exits"; exit 0; }
    renew_lease "$name" "$uid" || log "lease renewal of $name failed"
    ready="$(kc get node "$name" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null || true)"
    if [[ "$ready" != True ]]; then
      log "node $name Ready=$ready: rewriting its conditions"
      kc patch node "$name" --subresource=status --type=merge \
        -p "{\"status\":{\"conditions\":$(ready_conditions)}}" >/dev/null || true
    fi
    sleep "$HEARTBEAT_SECONDS"
  done
}

case "${1:-}" in
  --heartbeat-loop) # internal: fake-node.sh --heartbeat-loop NAME --state STATE
    heartbeat_loop "$2" ;;
  --delete)
    [[ $# -ge 2 ]] || die "usage: fake-node.sh --delete NAME"
    stop_heartbeat "$2"
    kc delete node "$2" --ignore-not-found
    kc -n kube-node-lease delete lease "$2" --ignore-not-found >/dev/null
    exit 0 ;;
  --list)
    kc get nodes -l fast-sandbox.io/fake-node=true -o wide
    exit 0 ;;
  ""|-h|--help)
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
esac

name="$1"; shift
cpu=8 memory=32Gi pods=110 storage=100Gi ip="" images="" labels="" heartbeat=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --cpu) cpu="$2"; shift 2 ;;
    --memory) memory="$2"; shift 2 ;;
    --pods) pods="$2"; shift 2 ;;
    --ephemeral-storage) storage="$2"; shift 2 ;;
    --ip) ip="$2"; shift 2 ;;
    --images) images="$2"; shift 2 ;;
    --labels) labels="$2"; shift 2 ;;
    --no-heartbeat) heartbeat=0; shift ;;
    *) die "unknown option $1" ;;
  esac
done
[[ "$name" =~ ^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$ ]] || die "invalid node name: $name"
[[ -f "$ADMIN_KUBECONFIG" ]] || die "no kubeconfig at $ADMIN_KUBECONFIG: run cluster.sh up first"

label_yaml="    kubernetes.io/hostname: \"$name\"
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    fast-sandbox.io/fake-node: \"true\""
if [[ -n "$labels" ]]; then
  IFS=',' read -ra kvs <<<"$labels"
  for kv in "${kvs[@]}"; do
    [[ "$kv" == *=* ]] || die "bad label $kv (want key=value)"
    label_yaml+=$'\n'"    ${kv%%=*}: \"${kv#*=}\""
  done
fi
kc apply --server-side --force-conflicts --field-manager fake-node -f - >/dev/null <<EOF
apiVersion: v1
kind: Node
metadata:
  name: $name
  labels:
$label_yaml
spec: {}
EOF

images_json="[]"
if [[ -n "$images" ]]; then
  IFS=',' read -ra specs <<<"$images"
  images_json="["
  sep=""
  for spec in "${specs[@]}"; do
    spec="$(echo "$spec" | xargs)"
    [[ "$spec" == *:* ]] || die "bad image spec $spec (want IMAGE:SIZE)"
    img="$(normalize_image "${spec%:*}")"
    size="$(bytes "${spec##*:}")"
    images_json+="$sep{\"names\":[\"$img\"],\"sizeBytes\":$size}"
    sep=","
  done
  images_json+="]"
fi
addresses="[{\"type\":\"Hostname\",\"address\":\"$name\"}"
[[ -n "$ip" ]] && addresses+=",{\"type\":\"InternalIP\",\"address\":\"$ip\"}"
addresses+="]"
resources="{\"cpu\":\"$cpu\",\"memory\":\"$memory\",\"pods\":\"$pods\",\"ephemeral-storage\":\"$storage\"}"
status="{\"status\":{
  \"capacity\":$resources,\"allocatable\":$resources,
  \"conditions\":$(ready_conditions),
  \"addresses\":$addresses,
  \"images\":$images_json,
  \"daemonEndpoints\":{\"kubeletEndpoint\":{\"Port\":0}},
  \"nodeInfo\":{\"machineID\":\"\",\"systemUUID\":\"\",\"bootID\":\"\",\"kernelVersion\":\"\",\"osImage\":\"fast-sandbox fake node\",
    \"containerRuntimeVersion\":\"fake://0\",\"kubeletVersion\":\"$K8S_VERSION\",\"kubeProxyVersion\":\"\",
    \"operatingSystem\":\"linux\",\"architecture\":\"amd64\"}}}"
kc patch node "$name" --subresource=status --type=merge -p "$status" >/dev/null
uid="$(kc get node "$name" -o jsonpath='{.metadata.uid}')"
renew_lease "$name" "$uid"
# Taints the lifecycle controller may have set while the node had no status.
for taint in node.kubernetes.io/not-ready node.kubernetes.io/unreachable; do
  kc taint node "$name" "$taint-" >/dev/null 2>&1 || true
done

stop_heartbeat "$name"
if [[ $heartbeat == 1 ]]; then
  mkdir -p "$PIDS" "$LOGS"
  hb="$(heartbeat_name "$name")"
  setsid bash "$CLUSTER_DIR/fake-node.sh" --heartbeat-loop "$name" --state "$STATE" \
    >> "$LOGS/$hb.log" 2>&1 < /dev/null &
  echo $! > "$PIDS/$hb.pid"
  readlink -f "$(command -v bash)" > "$PIDS/$hb.exe"
  log "fake node $name ready (cpu=$cpu memory=$memory pods=$pods images=$(jq length <<<"$images_json")); heartbeat pid $!"
else
  log "fake node $name ready (no heartbeat: NotReady after the node monitor grace period, ~50 s)"
fi
