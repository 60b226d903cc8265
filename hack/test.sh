#!/usr/bin/env bash
# Runs every test of Fast Sandbox, in order of cost: formatting, lints, the
# CRDs' freshness, unit and integration tests (the agent's against a private
# containerd), then the end-to-end suite on a real local cluster with Fast
# Sandbox deployed. Starts every service it needs and stops only those.
#
#   hack/test.sh              everything
#   hack/test.sh --no-cluster skip the end-to-end suite
#   hack/test.sh --cgroup2    only the cgroup v2 leg: the agent's containerd
#                             tests in a cgroup v2 + systemd VM under
#                             software emulation (test/cgroup2/; slow, so
#                             not part of the default run)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
with_cluster=1
[[ "${1:-}" == "--no-cluster" ]] && with_cluster=0
step() { printf '[%s] == %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
start=$SECONDS
if [[ "${1:-}" == "--cgroup2" ]]; then
  hack/install-deps.sh
  step "agent containerd tests on cgroup v2 with systemd (VM, software emulation)"
  test/cgroup2/agent-tests.sh
  step "cgroup v2 leg passed in $((SECONDS - start)) s"
  exit 0
fi

step "installing what this machine lacks"
hack/install-deps.sh
step "cargo fmt --check"
cargo fmt --all --check
step "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
# One build of every binary, with the workspace's feature set: the tests,
# the checks below and the cluster deployment all reuse it.
step "cargo build --workspace --bins"
cargo build --workspace --bins
bin="${CARGO_TARGET_DIR:-target}/debug"
step "deploy/crds is generated from api/"
"$bin"/crdgen --check
step "every binary answers --help"
for b in agent webhook extender controller gateway certs; do
  "$bin/fast-sandbox-$b" --help >/dev/null
done
for b in crdgen kubectl-sandbox; do "$bin/$b" --help >/dev/null; done
# The agent's containerd tests run on both supported containerd lines: the
# whole workspace with containerd 2 (what the local cluster runs), the agent
# again with Debian's containerd 1.6. Every later cargo test selects the same
# packages as the first, so it resolves the same features and reuses its
# build: `-p` alone would build the dependencies and test binaries again,
# gigabytes of disk.
tests=(cargo test --workspace --exclude fast-sandbox-e2e --no-fail-fast)
agent_tests=()
for f in agent/tests/*.rs; do agent_tests+=(--test "$(basename "$f" .rs)"); done
step "unit and integration tests (agent tests against a private containerd 2)"
agent/tests/containerd.sh --containerd 2 run -- "${tests[@]}"
step "agent integration tests against a private containerd 1.6 (Debian's)"
agent/tests/containerd.sh --containerd 1.6 run -- "${tests[@]}" "${agent_tests[@]}"
if [[ $with_cluster == 0 ]]; then
  step "Python SDK: ruff, mypy --strict, unit tests"
  sdk/python/test.sh
fi

if [[ $with_cluster == 1 ]]; then
  cluster_was_up=0
  test/cluster/cluster.sh status >/dev/null 2>&1 && cluster_was_up=1
  if [[ $cluster_was_up == 0 ]]; then
    # Start from an empty cluster: etcd kept from an earlier run would bring
    # back an earlier deployment before the tests below expect one.
    test/cluster/cluster.sh down --purge >/dev/null
    trap 'step "stopping the local cluster"; test/cluster/cluster.sh down || true' EXIT
  fi
  step "local cluster with the Fast Sandbox images"
  FAST_SANDBOX_PROFILE=debug hack/deploy.sh --images
  eval "$(test/cluster/cluster.sh env)"
  step "cluster smoke test (plain Pods on every node)"
  test/cluster/smoke.sh
  step "apiserver client identities (front proxy, webhook client certificate)"
  test/cluster/auth-check.sh
  # The controller's own cluster tests run their controller in-process, so
  # they go before the deployed controller exists.
  if [[ $cluster_was_up == 0 ]]; then
    step "controller tests on the cluster"
    FAST_SANDBOX_KUBECONFIG="$KUBECONFIG" FAST_SANDBOX_AGENT_IMAGE=docker.io/fast-sandbox/agent:dev \
      "${tests[@]}" --test cluster -- --ignored --test-threads=2
  else
    step "controller tests on the cluster: skipped (they need a cluster without a deployed controller; run test/cluster/cluster.sh down first)"
  fi
  step "deploying Fast Sandbox with kubectl apply -k deploy/"
  FAST_SANDBOX_PROFILE=debug hack/deploy.sh --apply
  step "end-to-end suite"
  cargo test -p fast-sandbox-e2e --no-fail-fast \
    --test lifecycle --test validation --test scheduling --test fleet --test tenant --test interactive --test nodes \
    --test prestarted --test isolation --test egress --test userns --test limits -- --test-threads=2
  step "Python SDK: ruff, mypy --strict, unit and end-to-end tests"
  sdk/python/test.sh --e2e
  # The fault tests kill components, so they run one at a time.
  step "end-to-end fault tests"
  cargo test -p fast-sandbox-e2e --no-fail-fast \
    --test burst --test faults --test robustness --test image_gc -- --test-threads=1
fi
step "all tests passed in $((SECONDS - start)) s"
