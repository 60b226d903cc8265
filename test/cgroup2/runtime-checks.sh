#!/usr/bin/env bash
# What the agent relies on from containerd + runc, checked on a cgroup v2
# machine with systemd (the VM of vm.sh), through `ctr` against the private
# containerd of agent/tests/containerd.sh (FAST_SANDBOX_CONTAINERD_SOCK,
# FAST_SANDBOX_TEST_NAMESPACE, FAST_SANDBOX_TEST_IMAGE). A pod-like slice is
# named as the kubelet's systemd cgroup driver names a BestEffort pod's
# (kubepods-besteffort-pod<uid>.slice); containers go into it:
#   - with runc's systemd cgroup driver (cgroupsPath slice:prefix:name, a
#     transient scope in the slice), as CRI containers on real nodes:
#     limits (memory.max, cpu.max), nesting under the slice, exec into the
#     container's cgroup, OOM kill (exit 137, memory.events), and the slice
#     stopped kills what is in it;
#   - with the cgroupfs driver and a plain path below the slice, as the
#     agent creates sandboxes today (it sends no runc options): limits and
#     nesting.
# Exits non-zero on the first failed check.
set -euo pipefail
sock="${FAST_SANDBOX_CONTAINERD_SOCK:?run through agent/tests/containerd.sh}"
ns="${FAST_SANDBOX_TEST_NAMESPACE:-fast-sandbox-test}"
img="${FAST_SANDBOX_TEST_IMAGE:-docker.io/fast-sandbox/busybox:dev}"
c() { ctr -a "$sock" -n "$ns" "$@"; }
ok() { echo "ok: $*"; }
fail() { echo "FAIL: $*"; exit 1; }
uid="$(cat /proc/sys/kernel/random/uuid | tr - _)"
slice="kubepods-besteffort-pod$uid.slice"
slice_dir="/sys/fs/cgroup/kubepods.slice/kubepods-besteffort.slice/$slice"

cleanup() {
  local t
  for t in lim oom fs; do
    c tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true
    c tasks delete -f "$t" >/dev/null 2>&1 || true
    c containers delete "$t" >/dev/null 2>&1 || true
  done
  systemctl stop "$slice" >/dev/null 2>&1 || true
}
trap cleanup EXIT

task_pid() { c tasks ls | awk -v t="$1" '$1 == t {print $2}'; }
cgroup_of() { sed -n 's/^0:://p' "/proc/$1/cgroup"; }

[[ "$(stat -fc %T /sys/fs/cgroup)" == cgroup2fs ]] || fail "/sys/fs/cgroup is not cgroup2"
echo "containerd $(c version | awk '/Server:/ {s=1} s && /Version:/ {print $2; exit}'), runc $(runc --version | awk 'NR==1 {print $3}')"

# systemd driver: limits, nesting, exec
c run -d --runc-systemd-cgroup --cgroup "$slice:fsb:lim" --memory-limit $((64 << 20)) --cpus 0.5 \
  "$img" lim sleep 300 >/dev/null
pid="$(task_pid lim)"
[[ -n "$pid" ]] || fail "container lim has no task"
cg="$(cgroup_of "$pid")"
[[ "$cg" == "/kubepods.slice/kubepods-besteffort.slice/$slice/fsb-lim.scope" ]] ||
  fail "systemd driver: cgroup $cg is not the scope fsb-lim.scope in $slice"
ok "systemd driver: the container runs in $cg"
[[ "$(cat "/sys/fs/cgroup$cg/memory.max")" == $((64 << 20)) ]] || fail "memory.max is $(cat "/sys/fs/cgroup$cg/memory.max")"
[[ "$(cat "/sys/fs/cgroup$cg/cpu.max")" == "50000 100000" ]] || fail "cpu.max is $(cat "/sys/fs/cgroup$cg/cpu.max")"
ok "systemd driver: memory.max 64 MiB and cpu.max 50000 100000 on the scope"
[[ "$(systemctl show -p MemoryMax --value fsb-lim.scope)" == $((64 << 20)) ]] ||
  fail "systemd does not know the scope's MemoryMax ($(systemctl show -p MemoryMax --value fsb-lim.scope))"
ok "systemd driver: systemd owns the scope (MemoryMax=$((64 << 20)))"
grep -qx memory "$slice_dir/cgroup.controllers" 2>/dev/null || tr ' ' '\n' < "$slice_dir/cgroup.controllers" | grep -qx memory ||
  fail "the pod slice has no memory controller"
(( $(cat "$slice_dir/memory.current") >= $(cat "/sys/fs/cgroup$cg/memory.current") )) ||
  fail "the pod slice's memory.current does not include the container's"
ok "nesting: the pod slice accounts for the container's memory"
c tasks exec -d --exec-id e1 lim sleep 300
procs="$(c tasks ps lim | awk 'NR > 1 {print $1}')"
[[ "$(wc -w <<<"$procs")" == 2 ]] || fail "exec: tasks ps lim lists $(wc -w <<<"$procs") processes, not 2"
for p in $procs; do
  [[ "$(cgroup_of "$p")" == "$cg" ]] || fail "exec: process $p runs in $(cgroup_of "$p"), not $cg"
done
ok "exec: a process exec'd into the container runs in the container's scope"

# systemd driver: OOM
rc=0
c run --runc-systemd-cgroup --cgroup "$slice:fsb:oom" --memory-limit $((16 << 20)) \
  "$img" oom sh -c 'x=0123456789; while true; do x=$x$x; done' >/dev/null 2>&1 || rc=$?
[[ $rc == 137 ]] || fail "OOM: the task exited with $rc, not 137"
ok "OOM: a task over its 16 MiB limit is killed (exit 137)"
oom_kills="$(awk '$1 == "oom_kill" {print $2}' "$slice_dir/memory.events")"
[[ "${oom_kills:-0}" -ge 1 ]] || fail "OOM: the pod slice's memory.events counts no oom_kill"
ok "OOM: the pod slice's memory.events counts oom_kill $oom_kills"
c containers delete oom >/dev/null 2>&1 || true

# cgroupfs driver below the slice (the agent's sandboxes today)
c run -d --cgroup "/kubepods.slice/kubepods-besteffort.slice/$slice/sandbox-fs" --memory-limit $((32 << 20)) \
  "$img" fs sleep 300 >/dev/null
pid="$(task_pid fs)"
cg="$(cgroup_of "$pid")"
[[ "$cg" == "/kubepods.slice/kubepods-besteffort.slice/$slice/sandbox-fs" ]] || fail "cgroupfs driver: cgroup is $cg"
[[ "$(cat "/sys/fs/cgroup$cg/memory.max")" == $((32 << 20)) ]] || fail "cgroupfs driver: memory.max is $(cat "/sys/fs/cgroup$cg/memory.max")"
ok "cgroupfs driver: a plain cgroup below the pod slice with memory.max 32 MiB"

# The pod slice stopped (the kubelet removing the pod): what is in it dies.
systemctl stop "$slice"
for _ in $(seq 1 100); do
  [[ -z "$(c tasks ls | awk '$1 == "lim" && $3 == "RUNNING"')" ]] && break
  sleep 0.1
done
[[ -z "$(c tasks ls | awk '$1 == "lim" && $3 == "RUNNING"')" ]] || fail "lim still runs after its pod slice stopped"
ok "nesting: stopping the pod slice stops the container in it"
echo "runtime checks passed"
