#!/usr/bin/env bash
# One command from a fresh machine to a running sandbox: builds everything,
# brings a local Kubernetes cluster up, deploys Fast Sandbox and runs the
# original README's pool and sandbox.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
hack/deploy.sh
eval "$(test/cluster/cluster.sh env)"
kubectl apply -f deploy/examples/pool.yaml
echo "waiting for a warm agent of default-pool..."
kubectl wait --for=jsonpath='{.status.readyAgents}'=1 --timeout=180s sandboxpool/default-pool
kubectl apply -f deploy/examples/sandbox.yaml
kubectl wait --for=condition=Ready --timeout=60s sandbox/my-sandbox
kubectl get sandboxpool,sandbox
cat <<MSG

Fast Sandbox is running. Use the cluster with:
  $(test/cluster/cluster.sh env | tr '\n' ';' | sed 's/;$//')
  kubectl get fast-sandbox
  PATH=${CARGO_TARGET_DIR:-$root/target}/release:\$PATH kubectl sandbox logs my-sandbox   # the kubectl plugin
Stop everything with: test/cluster/cluster.sh down
MSG
