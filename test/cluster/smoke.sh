#!/usr/bin/env bash
# Smoke test of a running local cluster (after `cluster.sh up`):
#   1. on every real node, a plain Pod from the locally built busybox image
#      (imagePullPolicy: Never) echoes a line and serves HTTP; checks
#      Running, `kubectl logs`, `kubectl exec`, host -> pod IP, apiserver ->
#      pod IP, pod -> kubernetes Service, host -> Service, and pod -> pod and
#      pod -> Service across nodes; deletes them;
#   2. the plain-Pod create-to-Running time over N runs (default 10): the
#      time between the ADDED event and the first event showing phase Running,
#      both seen by one watch, so kubectl start-up time is not counted;
#   3. if deploy/crds/*.yaml exist, apply them server-side and wait until
#      they are Established.
#
#   smoke.sh [--runs N] [--namespace NS]
set -euo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

runs=10 ns=default
while [[ $# -gt 0 ]]; do
  case "$1" in
    --runs) runs="$2"; shift 2 ;;
    --namespace) ns="$2"; shift 2 ;;
    *) die "usage: smoke.sh [--runs N] [--namespace NS]" ;;
  esac
done
[[ -f "$ADMIN_KUBECONFIG" ]] || die "no kubeconfig at $ADMIN_KUBECONFIG: run cluster.sh up first"
fail() { log "FAIL: $*"; exit 1; }

kc get node "$NODE_NAME" >/dev/null || fail "cannot reach the cluster"
for ((i = 1; i <= NODE_COUNT; i++)); do
  sock="$(node_socket "$i")"
  images="$("$(ctr_bin)" -a "$sock" -n k8s.io images ls -q)"
  grep -qxF "$BUSYBOX_IMAGE" <<<"$images" || "$CLUSTER_DIR/build-busybox-image.sh" --address "$sock"
done
poll "service account $ns/default" 60 kc -n "$ns" get serviceaccount default || fail "no default service account in $ns"

pod_manifest() { # NAME [NODE]
  cat <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: $1
  namespace: $ns
  labels: {app: fsb-smoke, fsb-smoke/pod: $1}
spec:
  restartPolicy: Never
  enableServiceLinks: false
  nodeSelector: {kubernetes.io/hostname: "${2:-$NODE_NAME}"}   # a real node, not a fake one
  terminationGracePeriodSeconds: 5
  containers:
  - name: main
    image: $BUSYBOX_IMAGE
    imagePullPolicy: Never
    command: ["/bin/sh", "-c", "trap 'exit 0' TERM; echo fast-sandbox smoke \$(hostname); mkdir -p /www; echo pod-http-ok > /www/index.html; httpd -p 8080 -h /www; sleep 3600 & wait"]
EOF
}

kc -n "$ns" delete pod -l app=fsb-smoke --ignore-not-found --wait=true >/dev/null
kc -n "$ns" delete service -l app=fsb-smoke --ignore-not-found >/dev/null
for ((i = 1; i <= NODE_COUNT; i++)); do kc -n "$ns" delete service "fsb-smoke-n$i" --ignore-not-found >/dev/null; done

# 1. functional check, one pod per real node
declare -A pod_ip
pods=()
for ((i = 1; i <= NODE_COUNT; i++)); do
  node_set "$i"
  pod="fsb-smoke-n$i"; pods+=("$pod")
  log "creating pod $pod on node $N_NAME"
  pod_manifest "$pod" "$N_NAME" | kc create -f - >/dev/null
done
for ((i = 1; i <= NODE_COUNT; i++)); do
  node_set "$i"
  pod="fsb-smoke-n$i"
  kc -n "$ns" wait --for=jsonpath='{.status.phase}'=Running "pod/$pod" --timeout=60s >/dev/null ||
    { kc -n "$ns" describe pod "$pod" >&2; fail "pod $pod not Running on $N_NAME within 60 s"; }
  ip="$(kc -n "$ns" get pod "$pod" -o jsonpath='{.status.podIP}')"
  [[ -n "$ip" ]] || fail "pod $pod has no IP"
  pod_ip[$pod]="$ip"
  log "pod $pod Running on $N_NAME, IP $ip"
  out=""
  for _ in $(seq 1 25); do
    out="$(kc -n "$ns" logs "$pod" 2>/dev/null || true)"
    [[ "$out" == *"fast-sandbox smoke $pod"* ]] && break
    sleep 0.2
  done
  [[ "$out" == *"fast-sandbox smoke $pod"* ]] || fail "unexpected logs of $pod: '$out'"
  log "kubectl logs OK: $out"
  kc -n "$ns" exec "$pod" -- /bin/echo exec-ok | grep -qx exec-ok || fail "kubectl exec into $pod failed"
  log "kubectl exec OK"
  # httpd in the pod may need a moment after Running
  poll "pod http server of $pod" 10 sh -c "curl -sf --max-time 2 http://$ip:8080/ | grep -q pod-http-ok" ||
    fail "host cannot reach pod IP $ip:8080 on $N_NAME"
  log "host reaches pod IP $ip:8080"
  kc get --raw "/api/v1/namespaces/$ns/pods/$pod:8080/proxy/" | grep -q pod-http-ok ||
    fail "kube-apiserver cannot reach the pod IP of $pod (pod proxy)"
  log "kube-apiserver reaches the pod IP (pod proxy)"
  # A plain HTTP request to the TLS port gets the Go TLS server's "400 Bad
  # Request": proof of a TCP connection to the apiserver through its ClusterIP.
  kc -n "$ns" exec "$pod" -- /bin/sh -c "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 $SERVICE_APISERVER_IP 443" | grep -q '400 Bad Request' ||
    fail "pod $pod cannot reach the kubernetes Service ($SERVICE_APISERVER_IP:443) through kube-proxy"
  log "pod $pod reaches the kubernetes Service ClusterIP $SERVICE_APISERVER_IP:443"
done
# http_get IP PORT: a shell command for the busybox image that prints an
# HTTP response (busybox nc; the static busybox's wget crashes resolving).
http_get() { printf "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 %s %s" "$1" "$2"; }
pod_gets() { # POD IP PORT: the pod fetches the smoke page from IP:PORT
  local out; out="$(kc -n "$ns" exec "$1" -- /bin/sh -c "$(http_get "$2" "$3")")" && grep -q pod-http-ok <<<"$out"
}
# Services backed by a pod on each node, from the host and from the pod of
# every other node (through that node's kube-proxy), and pod to pod across
# nodes.
for ((i = 1; i <= NODE_COUNT; i++)); do
  pod="fsb-smoke-n$i"
  kc -n "$ns" create service clusterip "$pod" --tcp=80:8080 >/dev/null
  kc -n "$ns" label --overwrite service "$pod" app=fsb-smoke >/dev/null
  kc -n "$ns" set selector service "$pod" "fsb-smoke/pod=$pod" >/dev/null
  cip="$(kc -n "$ns" get service "$pod" -o jsonpath='{.spec.clusterIP}')"
  poll "Service $cip:80 through kube-proxy" 30 sh -c "curl -sf --max-time 2 http://$cip/ | grep -q pod-http-ok" ||
    fail "host cannot reach Service ClusterIP $cip:80 (kube-proxy) of $pod"
  log "host reaches Service ClusterIP $cip:80 (backed by $pod)"
  for ((j = 1; j <= NODE_COUNT; j++)); do
    [[ $j == "$i" ]] && continue
    from="fsb-smoke-n$j"
    pod_gets "$from" "${pod_ip[$pod]}" 8080 ||
      fail "pod $from cannot reach pod $pod at ${pod_ip[$pod]}:8080 (across nodes)"
    poll "Service $cip:80 from $from" 30 pod_gets "$from" "$cip" 80 ||
      fail "pod $from cannot reach Service $cip:80 backed by $pod (across nodes)"
    log "pod $from reaches pod $pod and its Service across nodes"
  done
done
kc -n "$ns" delete service -l app=fsb-smoke >/dev/null
kc -n "$ns" delete pod "${pods[@]}" --wait=true --timeout=60s >/dev/null || fail "delete of the smoke pods failed"
log "smoke pods deleted"

# 2. create-to-Running over $runs runs
watch_out="$(mktemp)"
# One process group for the watch pipeline, so that it can be stopped as a whole.
setsid bash -c '"$1" --kubeconfig "$2" -n "$3" get pods -l app=fsb-smoke -w --output-watch-events \
  -o jsonpath="{.type} {.object.metadata.name} {.object.status.phase}{\"\\n\"}" 2>/dev/null |
  while IFS= read -r line; do echo "$(date +%s.%N) $line"; done' _ "$K8S_BIN/kubectl" "$ADMIN_KUBECONFIG" "$ns" > "$watch_out" &
watcher=$!
trap 'kill -- -$watcher 2>/dev/null; rm -f "$watch_out"' EXIT
sleep 1   # let the watch establish before the first create
times=()
for i in $(seq 1 "$runs"); do
  name="fsb-smoke-$i"
  pod_manifest "$name" | kc create -f - >/dev/null
  kc -n "$ns" wait --for=jsonpath='{.status.phase}'=Running "pod/$name" --timeout=60s >/dev/null ||
    fail "pod $name not Running within 60 s"
  for _ in $(seq 1 50); do grep -q " $name Running" "$watch_out" && break; sleep 0.1; done
  t="$(awk -v n="$name" '$3 == n && $2 == "ADDED" && !a {a = $1} $3 == n && $4 == "Running" && !r {r = $1}
        END { if (a && r) printf "%.0f", (r - a) * 1000 }' "$watch_out")"
  [[ -n "$t" ]] || fail "no ADDED/Running watch events for $name"
  times+=("$t")
  kc -n "$ns" delete pod "$name" --wait=true --timeout=60s >/dev/null
done
sorted="$(printf '%s\n' "${times[@]}" | sort -n)"
median="$(awk '{v[NR] = $1} END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.0f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }' <<<"$sorted")"
log "plain Pod create-to-Running over $runs runs (ms): $(tr '\n' ' ' <<<"$sorted")"
echo "plain-pod-create-to-running-ms median=$median min=$(head -1 <<<"$sorted") max=$(tail -1 <<<"$sorted") runs=$runs"

# 3. CRDs, when the repository has them
crds="$REPO_ROOT/deploy/crds"
if compgen -G "$crds/*.yaml" >/dev/null; then
  log "applying $crds/*.yaml (server-side)"
  names="$(kc apply --server-side --force-conflicts -f "$crds" -o name)" || fail "CRD apply failed"
  kc wait --for=condition=Established $names --timeout=60s >/dev/null || fail "CRDs not Established"
  log "CRDs Established: $(tr '\n' ' ' <<<"$names")"
else
  log "no $crds/*.yaml: skipping CRDs"
fi
log "smoke test passed"
