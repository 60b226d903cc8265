#!/usr/bin/env bash
# Smoke test of a running local cluster (after `cluster.sh up`):
#   1. a plain Pod from the locally built busybox image (imagePullPolicy:
#      Never) echoes a line; wait for Running, check `kubectl logs`, delete;
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
images="$(ctrx -n k8s.io images ls -q)"
if ! grep -qxF "$BUSYBOX_IMAGE" <<<"$images"; then
  "$CLUSTER_DIR/build-busybox-image.sh"
fi
poll "service account $ns/default" 60 kc -n "$ns" get serviceaccount default || fail "no default service account in $ns"

pod_manifest() { # NAME
  cat <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: $1
  namespace: $ns
  labels: {app: fsb-smoke}
spec:
  restartPolicy: Never
  enableServiceLinks: false
  nodeSelector: {kubernetes.io/hostname: "$NODE_NAME"}   # not on fake nodes
  terminationGracePeriodSeconds: 5
  containers:
  - name: main
    image: $BUSYBOX_IMAGE
    imagePullPolicy: Never
    command: ["/bin/sh", "-c", "trap 'exit 0' TERM; echo fast-sandbox smoke \$(hostname); mkdir -p /www; echo pod-http-ok > /www/index.html; httpd -p 8080 -h /www; sleep 3600 & wait"]
EOF
}

kc -n "$ns" delete pod -l app=fsb-smoke --ignore-not-found --wait=true >/dev/null

# 1. functional check
log "creating pod fsb-smoke"
pod_manifest fsb-smoke | kc create -f - >/dev/null
kc -n "$ns" wait --for=jsonpath='{.status.phase}'=Running pod/fsb-smoke --timeout=60s >/dev/null ||
  { kc -n "$ns" describe pod fsb-smoke >&2; fail "pod fsb-smoke not Running within 60 s"; }
ip="$(kc -n "$ns" get pod fsb-smoke -o jsonpath='{.status.podIP}')"
log "pod fsb-smoke Running, IP $ip"
out=""
for _ in $(seq 1 25); do
  out="$(kc -n "$ns" logs fsb-smoke 2>/dev/null || true)"
  [[ "$out" == *"fast-sandbox smoke fsb-smoke"* ]] && break
  sleep 0.2
done
[[ "$out" == *"fast-sandbox smoke fsb-smoke"* ]] || fail "unexpected logs: '$out'"
log "kubectl logs OK: $out"
kc -n "$ns" exec fsb-smoke -- /bin/echo exec-ok | grep -qx exec-ok || fail "kubectl exec failed"
log "kubectl exec OK"
[[ -n "$ip" ]] || fail "pod fsb-smoke has no IP"
# httpd in the pod may need a moment after Running
poll "pod http server" 10 sh -c "curl -sf --max-time 2 http://$ip:8080/ | grep -q pod-http-ok" ||
  fail "host cannot reach pod IP $ip:8080"
log "host reaches pod IP $ip:8080"
kc get --raw "/api/v1/namespaces/$ns/pods/fsb-smoke:8080/proxy/" | grep -q pod-http-ok ||
  fail "kube-apiserver cannot reach the pod IP (pod proxy)"
log "kube-apiserver reaches the pod IP (pod proxy)"
kc -n "$ns" delete service fsb-smoke --ignore-not-found >/dev/null
kc -n "$ns" create service clusterip fsb-smoke --tcp=80:8080 >/dev/null
kc -n "$ns" label service fsb-smoke app=fsb-smoke >/dev/null
kc -n "$ns" set selector service fsb-smoke app=fsb-smoke >/dev/null
cip="$(kc -n "$ns" get service fsb-smoke -o jsonpath='{.spec.clusterIP}')"
poll "Service $cip:80 through kube-proxy" 30 sh -c "curl -sf --max-time 2 http://$cip/ | grep -q pod-http-ok" ||
  fail "host cannot reach Service ClusterIP $cip:80 (kube-proxy)"
log "host reaches Service ClusterIP $cip:80 (kube-proxy)"
kc -n "$ns" delete service fsb-smoke >/dev/null
# A plain HTTP request to the TLS port gets the Go TLS server's "400 Bad
# Request": proof of a TCP connection to the apiserver through its ClusterIP.
kc -n "$ns" exec fsb-smoke -- /bin/sh -c "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 $SERVICE_APISERVER_IP 443" | grep -q '400 Bad Request' ||
  fail "pod cannot reach the kubernetes Service ($SERVICE_APISERVER_IP:443) through kube-proxy"
log "pod reaches the kubernetes Service ClusterIP $SERVICE_APISERVER_IP:443"
kc -n "$ns" delete pod fsb-smoke --wait=true --timeout=60s >/dev/null || fail "delete of fsb-smoke failed"
log "pod fsb-smoke deleted"

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
