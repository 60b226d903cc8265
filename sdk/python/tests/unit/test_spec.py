"""What create sends, and what an observed sandbox means for a waiter."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest

from fast_sandbox import _spec, errors

NOW = datetime(2026, 1, 2, 3, 4, 5, 250_000, tzinfo=timezone.utc)


def test_the_issue_s_example_becomes_this_manifest() -> None:
    m = _spec.sandbox_manifest(
        pool="default-pool",
        image="docker.io/fast-sandbox/busybox:dev",
        env={"A": "1"},
        resources={"memory": "256Mi"},
        ttl_seconds=600,
        now=NOW,
    )
    assert m == {
        "apiVersion": "sandbox.fast.io/v1alpha1",
        "kind": "Sandbox",
        "metadata": {"generateName": "sbx-"},
        "spec": {
            "image": "docker.io/fast-sandbox/busybox:dev",
            "poolRef": "default-pool",
            "command": list(_spec.KEEP_ALIVE),
            "env": [{"name": "A", "value": "1"}],
            "resources": {"memory": "256Mi"},
            # 600 s from now, rounded up to the second.
            "expireTime": "2026-01-02T03:14:06Z",
        },
    }


def test_every_field() -> None:
    m = _spec.sandbox_manifest(
        pool="p",
        image="i",
        name="sb",
        command=["/tool"],
        args=["sleep"],
        working_dir="/w",
        resources={"cpu": "500m", "memory": "64Mi", "pids": "128", "ephemeral_storage": "32Mi"},
        ttl_seconds_after_finished=60,
        exposed_ports=[8080, {"name": "dbg", "port": 9000}],
        failure_policy="AutoRecreate",
        termination_grace_seconds=0,
        labels={"team": "a"},
        annotations={"note": "x"},
    )
    assert m["metadata"] == {"name": "sb", "labels": {"team": "a"}, "annotations": {"note": "x"}}
    assert m["spec"] == {
        "image": "i",
        "poolRef": "p",
        "command": ["/tool"],
        "args": ["sleep"],
        "workingDir": "/w",
        "resources": {"cpu": "500m", "memory": "64Mi", "pids": 128, "ephemeralStorage": "32Mi"},
        "ttlSecondsAfterFinished": 60,
        "exposedPorts": [{"port": 8080}, {"name": "dbg", "port": 9000}],
        "failurePolicy": "AutoRecreate",
        "terminationGracePeriodSeconds": 0,
    }
    # An empty command runs the image's own entrypoint.
    assert "command" not in _spec.sandbox_manifest(pool="p", image="i", command=[])["spec"]
    exp = _spec.sandbox_manifest(pool="p", image="i", expire_time=datetime(2030, 1, 1))
    assert exp["spec"]["expireTime"] == "2030-01-01T00:00:00Z"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"pool": ""}, "pool"),
        ({"image": ""}, "image"),
        ({"resources": {"gpu": 1}}, "gpu"),
        ({"resources": {"pids": "many"}}, "pids"),
        ({"ttl_seconds": 5, "expire_time": NOW}, "at most one"),
        ({"ttl_seconds": 5, "ttl_seconds_after_finished": 5}, "cannot be combined"),
        ({"ttl_seconds": 0}, "positive"),
        ({"failure_policy": "Sometimes"}, "failure_policy"),
        ({"termination_grace_seconds": 301}, "termination_grace_seconds must be 0 to 300"),
        ({"termination_grace_seconds": -1}, "termination_grace_seconds"),
        ({"termination_grace_seconds": 1.5}, "whole number"),
        ({"termination_grace_seconds": True}, "whole number"),
    ],
)
def test_refusals_name_the_argument(kwargs: dict[str, Any], match: str) -> None:
    args: dict[str, Any] = {"pool": "p", "image": "i", **kwargs}
    with pytest.raises(ValueError, match=match):
        _spec.sandbox_manifest(**args)


def sandbox(
    phase: str | None = None,
    *,
    reason: str | None = None,
    message: str | None = None,
    ready: str | None = None,
    exit_code: int | None = None,
    deleting: bool = False,
    policy: str | None = None,
) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "metadata": {"name": "sb", "uid": "u", "resourceVersion": "5"},
        "spec": {"image": "i", "poolRef": "p"},
    }
    if deleting:
        obj["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    if policy:
        obj["spec"]["failurePolicy"] = policy
    if phase:
        st: dict[str, Any] = {"phase": phase}
        if reason:
            st["reason"] = reason
        if message:
            st["message"] = message
        if ready:
            st["conditions"] = [{"type": "Ready", "status": ready, "reason": reason or ""}]
        if exit_code is not None:
            st["exitCode"] = exit_code
        obj["status"] = st
    return obj


def test_running_and_ready_is_ready() -> None:
    assert _spec.progress(sandbox("Running", reason="Started", ready="True")).ready
    # A status without conditions but Running counts too.
    assert _spec.progress(sandbox("Running")).ready
    # Running with Ready False (a future controller separating them) is not.
    p = _spec.progress(sandbox("Running", ready="False"))
    assert not p.ready and p.failure is None


@pytest.mark.parametrize(
    "obj",
    [
        sandbox(),
        sandbox("Pending", reason="NoCapacity"),
        sandbox("Bound", reason="Creating"),
        sandbox("Lost", reason="AgentLost", policy="AutoRecreate"),
    ],
)
def test_still_coming(obj: dict[str, Any]) -> None:
    p = _spec.progress(obj)
    assert not p.ready and p.failure is None


@pytest.mark.parametrize(
    ("obj", "kind"),
    [
        (
            sandbox("Failed", reason="ImageNotPresent", message="image nope:1 is not on node n1"),
            errors.ImageNotPresentError,
        ),
        (
            sandbox("Failed", reason="StartError", message="exec: /nope: not found"),
            errors.StartError,
        ),
        (
            sandbox("Failed", reason="OOMKilled", message="exited with code 137", exit_code=137),
            errors.OOMKilledError,
        ),
        (sandbox("Failed", reason="InvalidSpec"), errors.InvalidSpecError),
        (
            sandbox(
                "Failed",
                reason="RuntimeUnavailable",
                message="the node's containerd cannot run runtime io.containerd.runsc.v1",
            ),
            errors.RuntimeUnavailableError,
        ),
        (
            sandbox("Failed", reason="EgressUnavailable", message="runtime io.containerd.runsc.v1"),
            errors.EgressUnavailableError,
        ),
        (sandbox("Failed", reason="Error", exit_code=3), errors.SandboxExitedError),
        (sandbox("Succeeded", reason="Completed", exit_code=0), errors.SandboxExitedError),
        (sandbox("Lost", reason="AgentLost"), errors.SandboxLostError),
        (sandbox("Terminating"), errors.SandboxDeletedError),
        (sandbox("Running", ready="True", deleting=True), errors.SandboxDeletedError),
    ],
)
def test_failures_have_their_own_types_and_carry_the_message(
    obj: dict[str, Any], kind: type[errors.SandboxFailedError]
) -> None:
    p = _spec.progress(obj)
    assert not p.ready
    assert type(p.failure) is kind
    assert p.failure.name == "sb"
    message = obj.get("status", {}).get("message")
    if message:
        assert message in str(p.failure)


def test_an_exited_sandbox_says_why_it_cannot_run_commands() -> None:
    p = _spec.progress(sandbox("Failed", reason="Error", exit_code=3))
    assert isinstance(p.failure, errors.SandboxExitedError)
    assert p.failure.exit_code == 3
    assert "long-running process" in str(p.failure)


def test_a_timeout_says_what_it_waited_for() -> None:
    st = _spec.progress(sandbox("Pending", reason="NoCapacity", message="no free slot")).status
    err = _spec.timeout_error("sb", st, 2.5)
    assert type(err) is errors.NoCapacityError
    assert str(err) == "sandbox sb is Pending (NoCapacity: no free slot): not Ready after 2.5 s"
    pool = _spec.progress(sandbox("Pending", reason="PoolNotFound")).status
    assert type(_spec.timeout_error("sb", pool, 1)) is errors.PoolNotFoundError
    other = _spec.timeout_error("sb", None, 1)
    assert type(other) is errors.SandboxTimeoutError
    assert isinstance(other, TimeoutError)


def test_a_timeout_says_when_the_watch_was_down() -> None:
    err = _spec.timeout_error("sb", None, 3, "cannot reach the Kubernetes API")
    assert "the watch of sandboxes was failing: cannot reach the Kubernetes API" in str(err)


def test_egress_becomes_the_network_spec() -> None:
    m = _spec.sandbox_manifest(pool="p", image="busybox", egress=True)
    assert m["spec"]["network"] == {"mode": "Egress"}
    m = _spec.sandbox_manifest(
        pool="p", image="busybox", egress={"allow": ["203.0.113.0/24"], "deny": []}
    )
    assert m["spec"]["network"] == {"mode": "Egress", "allow": ["203.0.113.0/24"], "deny": []}
    assert _spec.sandbox_manifest(pool="p", image="busybox", egress=False)["spec"]["network"] == {
        "mode": "None"
    }
    assert "network" not in _spec.sandbox_manifest(pool="p", image="busybox")["spec"]
    with pytest.raises(ValueError, match="unknown keys"):
        _spec.network_spec({"allowed": ["1.2.3.0/24"]})
    with pytest.raises(ValueError, match="a list of CIDRs"):
        _spec.network_spec({"allow": "1.2.3.0/24"})
