#!/usr/bin/env bash
# Brings the local cluster up (test/cluster) and deploys Fast Sandbox into it
# the way a user would: images loaded into every node's containerd, then
# `kubectl apply -k deploy/` as it is (each node's containerd listens at the
# standard socket path), certificates made by the certs Job.
#
#   hack/deploy.sh           build, cluster up, load images, apply, wait
#   hack/deploy.sh --images  stop after loading the images
#   hack/deploy.sh --apply   only apply and wait: the images of an earlier
#                            --images are already on every node
#
# Environment: FAST_SANDBOX_PROFILE=release|debug (default release): which
# cargo build the images are made from.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
profile="${FAST_SANDBOX_PROFILE:-release}"
step() { printf '[%s] == %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

mode="${1:-all}"
case "$mode" in
  all|--images|--apply) ;;
  *) echo "unknown argument: $mode (hack/deploy.sh [--images|--apply])" >&2; exit 2 ;;
esac

if [[ $mode != --apply ]]; then
  hack/install-deps.sh
  step "building the Fast Sandbox binaries ($profile)"
  if [[ $profile == release ]]; then cargo build --release --workspace --bins; else cargo build --workspace --bins; fi
  bin="${CARGO_TARGET_DIR:-$root/target}/$profile"

  step "bringing the local cluster up"
  test/cluster/cluster.sh up
  eval "$(test/cluster/cluster.sh env)"

  step "loading images into every node's containerd"
  # The agent image carries busybox too: the original README's sandbox runs
  # /bin/sleep from it. nft sets up sandbox egress in the agent pod.
  test/cluster/load-image.sh --busybox fast-sandbox/agent:dev "$bin/fast-sandbox-agent" /usr/sbin/nft
  for c in webhook controller extender gateway certs; do
    test/cluster/load-image.sh "fast-sandbox/$c:dev" "$bin/fast-sandbox-$c"
  done
  test/cluster/build-busybox-image.sh
  # An application image with no shell or coreutils: exec and file copies must
  # work without them (test/e2e interactive).
  tool_dir="$(mktemp -d)"
  gcc -static -Os -o "$tool_dir/tool" agent/tests/noshell/tool.c
  test/cluster/load-image.sh --entrypoint /tool --cmd sleep fast-sandbox/noshell:dev "$tool_dir/tool=/tool"
  rm -rf "$tool_dir"
  [[ $mode == --images ]] && exit 0
else
  eval "$(test/cluster/cluster.sh env)"
fi

step "kubectl apply -k deploy/"
kubectl apply --server-side --force-conflicts -k deploy/ >/dev/null
kubectl wait --for=condition=Established --timeout=60s \
  crd/sandboxes.sandbox.fast.io crd/sandboxpools.sandbox.fast.io >/dev/null
# This machine is node 1, and its address need not be in the private ranges
# the shipped policy keeps egress sandboxes from: the local cluster denies
# every node's address too (egressDeny is the document's last key).
policy="$(kubectl -n fast-sandbox-system get configmap fast-sandbox-policy -o jsonpath='{.data.policy\.yaml}')"
nodes="$(test/cluster/cluster.sh nodes | awk '$2 ~ /^[0-9.]+$/ {print "  - " $2 "/32"}')"
kubectl -n fast-sandbox-system create configmap fast-sandbox-policy --dry-run=client -o yaml \
  --from-literal=policy.yaml="$policy"$'\n'"$nodes" |
  kubectl apply --server-side --force-conflicts --field-manager=local-cluster -f - >/dev/null
# Pods of an earlier deployment still run the previous images.
kubectl -n fast-sandbox-system rollout restart deployment >/dev/null
step "waiting for certificates"
kubectl -n fast-sandbox-system wait --for=condition=complete --timeout=180s job/fast-sandbox-certs
# A second `up` hands the scheduler the extender's CA and switches it to
# deploy/scheduler/kube-scheduler-config.yaml.
test/cluster/cluster.sh up
step "waiting for the components to roll out"
for d in fast-sandbox-webhook fast-sandbox-controller fast-sandbox-extender fast-sandbox-gateway; do
  kubectl -n fast-sandbox-system rollout status "deployment/$d" --timeout=240s
done
# The access API answers once the aggregator reaches a ready gateway.
kubectl wait --for=condition=Available --timeout=120s apiservice/v1alpha1.subresources.sandbox.fast.io >/dev/null
step "Fast Sandbox is deployed"
