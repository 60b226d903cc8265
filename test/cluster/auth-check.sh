#!/usr/bin/env bash
# Checks, on a running local cluster, the identities the apiserver shows
# the servers it calls, with openssl s_server standing in for them:
#   1. kube-system/extension-apiserver-authentication carries the client CA
#      and the front-proxy (requestheader) settings;
#   2. an APIService backed by a Service reaches its server through the
#      Service's ClusterIP, presenting the front-proxy client certificate
#      (CN front-proxy-client, signed by the front-proxy CA), and becomes
#      Available;
#   3. an admission webhook on a Service of fast-sandbox-system (port 443) is
#      called with the webhook client certificate (CN
#      kube-apiserver-webhook-client, signed by the cluster CA).
# Both stand-ins require a client certificate from the CA they trust, so a
# call without the right one fails the handshake. Everything it creates is
# deleted again (the namespace only if this script created it).
#
#   auth-check.sh
set -euo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

[[ -f "$ADMIN_KUBECONFIG" ]] || die "no kubeconfig at $ADMIN_KUBECONFIG: run cluster.sh up first"
fail() { log "FAIL: $*"; exit 1; }

NS="$SYSTEM_NAMESPACE"
API_SVC=fsb-auth-check-api
HOOK_SVC=fsb-auth-check-webhook
GROUP=authcheck.fast-sandbox.test
APISERVICE="v1alpha1.$GROUP"
HOOK=fsb-auth-check.fast-sandbox.test
ip="$(node_ip)"

work="$(mktemp -d /tmp/fsb-auth-check.XXXXXX)"
servers=() created_ns=0
cleanup() {
  local pid
  kc delete apiservice "$APISERVICE" --ignore-not-found >/dev/null 2>&1 || true
  kc delete validatingwebhookconfiguration "$HOOK" --ignore-not-found >/dev/null 2>&1 || true
  kc -n "$NS" delete service "$API_SVC" "$HOOK_SVC" --ignore-not-found >/dev/null 2>&1 || true
  kc -n "$NS" delete endpointslice "$API_SVC" "$HOOK_SVC" --ignore-not-found >/dev/null 2>&1 || true
  kc -n default delete configmap fsb-auth-check --ignore-not-found >/dev/null 2>&1 || true
  if [[ $created_ns == 1 ]]; then kc delete namespace "$NS" --wait=true --timeout=60s >/dev/null 2>&1 || true; fi
  for pid in "${servers[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${servers[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { # a TCP port nothing listens on
  local p
  for p in $(seq 18443 18543); do [[ -z "$(ss -Hltn "sport = :$p")" ]] && { echo "$p"; return; }; done
  die "no free port in 18443..18543"
}

# 1. what aggregated servers and webhooks read to verify the apiserver
cm="$(kc -n kube-system get configmap extension-apiserver-authentication -o json)"
for key in client-ca-file requestheader-client-ca-file requestheader-allowed-names \
    requestheader-username-headers requestheader-group-headers requestheader-extra-headers-prefix; do
  jq -e --arg k "$key" '.data[$k] | length > 0' <<<"$cm" >/dev/null || fail "extension-apiserver-authentication has no $key"
done
[[ "$(jq -r '.data["requestheader-allowed-names"]' <<<"$cm")" == '["front-proxy-client"]' ]] ||
  fail "requestheader-allowed-names is $(jq -r '.data["requestheader-allowed-names"]' <<<"$cm")"
cmp -s <(jq -j '.data["requestheader-client-ca-file"]' <<<"$cm") "$PKI/front-proxy-ca.crt" ||
  fail "requestheader-client-ca-file is not $PKI/front-proxy-ca.crt"
jq -r '.data["client-ca-file"]' <<<"$cm" | grep -qF "$(sed -n 2p "$PKI/ca.crt")" ||
  fail "client-ca-file does not hold $PKI/ca.crt"
log "extension-apiserver-authentication: client-ca-file and requestheader-* (front-proxy CA, allowed names front-proxy-client) present"

# A serving certificate for both stand-ins, from the cluster CA.
openssl req -new -newkey rsa:2048 -nodes -keyout "$work/srv.key" -subj "/CN=fsb-auth-check" \
  -out "$work/srv.csr" 2>/dev/null
printf 'subjectAltName=DNS:%s.%s.svc,DNS:%s.%s.svc\nextendedKeyUsage=serverAuth\n' \
  "$API_SVC" "$NS" "$HOOK_SVC" "$NS" > "$work/srv.ext"
openssl x509 -req -in "$work/srv.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -set_serial "0x$(openssl rand -hex 8)" \
  -days 1 -extfile "$work/srv.ext" -out "$work/srv.crt" 2>/dev/null

serve() { # NAME PORT CLIENT_CA: s_server that demands a client certificate from CLIENT_CA
  setsid openssl s_server -accept "$2" -cert "$work/srv.crt" -key "$work/srv.key" \
    -CAfile "$3" -Verify 1 -verify_return_error -www > "$work/$1.log" 2>&1 < /dev/null &
  servers+=("$!")
  poll "s_server $1 on port $2" 10 sh -c "ss -Hltn 'sport = :$2' | grep -q ." || fail "s_server $1 did not start"
}
service() { # NAME PORT: a Service on port 443 whose endpoint is this host's PORT
  kc apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Service
metadata: {name: $1, namespace: $NS}
spec:
  ports: [{name: https, port: 443, targetPort: $2, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: $1
  namespace: $NS
  labels: {kubernetes.io/service-name: $1}
addressType: IPv4
ports: [{name: https, port: $2, protocol: TCP}]
endpoints: [{addresses: ["$ip"]}]
EOF
}
client_cn() { # LOG: CN of the verified client certificate (depth 0)
  sed -n 's/^depth=0 \(.*\)$/\1/p' "$1" | sed -n 's/.*CN *= *\([^,/]*\).*/\1/p' | sort -u
}

if ! kc get namespace "$NS" >/dev/null 2>&1; then
  kc create namespace "$NS" >/dev/null
  created_ns=1
fi

# 2. aggregation: an APIService backed by a Service
api_port="$(free_port)"
serve api "$api_port" "$PKI/front-proxy-ca.crt"
service "$API_SVC" "$api_port"
kc apply -f - >/dev/null <<EOF
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata: {name: $APISERVICE}
spec:
  group: $GROUP
  version: v1alpha1
  groupPriorityMinimum: 1000
  versionPriority: 15
  service: {name: $API_SVC, namespace: $NS, port: 443}
  caBundle: $(base64 -w0 < "$PKI/ca.crt")
EOF
kc wait --for=condition=Available "apiservice/$APISERVICE" --timeout=60s >/dev/null ||
  { kc get apiservice "$APISERVICE" -o yaml >&2; tail -5 "$work/api.log" >&2; fail "APIService $APISERVICE not Available"; }
kc get --raw "/apis/$GROUP/v1alpha1" >/dev/null 2>&1 || true   # one proxied request
cn="$(client_cn "$work/api.log")"
[[ "$cn" == front-proxy-client ]] || { cat "$work/api.log" >&2; fail "aggregated server saw client CN '$cn', want front-proxy-client"; }
log "APIService $APISERVICE Available through ClusterIP $(kc -n "$NS" get service "$API_SVC" -o jsonpath='{.spec.clusterIP}'); the apiserver presented CN $cn (front-proxy CA)"

# 3. admission webhook on a Service of $NS, port 443
hook_port="$(free_port)"
serve webhook "$hook_port" "$PKI/ca.crt"
service "$HOOK_SVC" "$hook_port"
kc apply -f - >/dev/null <<EOF
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingWebhookConfiguration
metadata: {name: $HOOK}
webhooks:
- name: $HOOK
  admissionReviewVersions: [v1]
  sideEffects: None
  failurePolicy: Ignore
  timeoutSeconds: 2
  clientConfig:
    service: {name: $HOOK_SVC, namespace: $NS, port: 443, path: /validate}
    caBundle: $(base64 -w0 < "$PKI/ca.crt")
  objectSelector: {matchLabels: {fast-sandbox.test/auth-check: "true"}}
  rules: [{operations: [CREATE], apiGroups: [""], apiVersions: [v1], resources: [configmaps], scope: Namespaced}]
EOF
# The webhook configuration reaches the apiserver's admission chain through
# an informer: create until the stand-in has seen a call.
called() {
  kc -n default delete configmap fsb-auth-check --ignore-not-found >/dev/null 2>&1
  kc create -f - >/dev/null 2>&1 <<EOF
apiVersion: v1
kind: ConfigMap
metadata: {name: fsb-auth-check, namespace: default, labels: {fast-sandbox.test/auth-check: "true"}}
EOF
  [[ -n "$(client_cn "$work/webhook.log")" ]]
}
poll "a webhook call to $HOOK_SVC.$NS.svc:443" 30 called ||
  { cat "$work/webhook.log" >&2; fail "the apiserver never completed a TLS handshake with the webhook stand-in"; }
cn="$(client_cn "$work/webhook.log")"
[[ "$cn" == kube-apiserver-webhook-client ]] ||
  { cat "$work/webhook.log" >&2; fail "webhook saw client CN '$cn', want kube-apiserver-webhook-client"; }
log "webhook $HOOK_SVC.$NS.svc:443 called with client CN $cn (cluster CA)"
log "auth check passed"
