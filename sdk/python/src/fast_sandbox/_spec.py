"""Sandbox objects as the SDK writes and reads them, without I/O: the
manifest ``Sandbox.create`` sends, and what an observed object means for a
caller waiting until it is Ready (ready, still coming, or failed for a
reason that has its own exception type).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from . import errors
from ._protocol import GROUP, VERSION
from .models import SandboxStatus

#: The sandbox's own process when the caller names none: it keeps the
#: sandbox running for commands and exits at once on SIGTERM, so a deleted
#: sandbox frees its slot without waiting out the agent's grace period (a
#: plain ``sleep`` as PID 1 ignores SIGTERM). Needs ``/bin/sh``; images
#: without a shell must pass their own ``command``.
KEEP_ALIVE: tuple[str, ...] = (
    "/bin/sh",
    "-c",
    "trap 'exit 0' TERM INT; while :; do sleep 86400 & wait $!; done",
)

_RESOURCE_KEYS = ("cpu", "memory", "pids", "ephemeral_storage")


def format_time(t: datetime) -> str:
    """RFC 3339 in UTC with whole seconds, as the CRD's ``date-time`` takes it."""
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def expire_time_in(seconds: float, now: datetime | None = None) -> str:
    """The ``expireTime`` ``seconds`` from ``now`` (rounded up to a whole second)."""
    if seconds <= 0:
        raise ValueError(f"ttl_seconds must be positive, not {seconds!r}")
    now = now or datetime.now(timezone.utc)
    t = now + timedelta(seconds=seconds)
    if t.microsecond:
        t = t.replace(microsecond=0) + timedelta(seconds=1)
    return format_time(t)


def resources_spec(resources: Mapping[str, str | int | float]) -> dict[str, Any]:
    """``spec.resources`` from ``{"cpu": "500m", "memory": "256Mi", "pids": 128}``.

    ``ephemeral_storage`` (``"256Mi"``) caps the writable layer, which then
    lives in memory and counts toward ``memory``.
    """
    unknown = sorted(set(resources) - set(_RESOURCE_KEYS))
    if unknown:
        raise ValueError(
            f"resources: unknown key(s) {', '.join(unknown)}; known: {', '.join(_RESOURCE_KEYS)}"
        )
    out: dict[str, Any] = {}
    for key in ("cpu", "memory"):
        if key in resources:
            out[key] = str(resources[key])
    if "ephemeral_storage" in resources:
        out["ephemeralStorage"] = str(resources["ephemeral_storage"])
    if "pids" in resources:
        pids = resources["pids"]
        if isinstance(pids, str) and not pids.isdigit():
            raise ValueError(f"resources: pids must be a whole number, not {pids!r}")
        out["pids"] = int(pids)
    return out


def ports_spec(ports: Sequence[int | Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``spec.exposedPorts`` from port numbers or ``{"name": ..., "port": ...}`` maps."""
    out: list[dict[str, Any]] = []
    for p in ports:
        if isinstance(p, int):
            out.append({"port": p})
        else:
            out.append(dict(p))
    return out


def network_spec(
    egress: bool | Mapping[str, Sequence[str]],
) -> dict[str, Any]:
    """``spec.network`` from ``egress=True`` (every address the operator
    allows) or ``{"allow": [...], "deny": [...]}`` (IPv4 CIDRs); ``False``
    keeps the sandbox on its loopback."""
    if egress is False:
        return {"mode": "None"}
    if egress is True:
        return {"mode": "Egress"}
    unknown = set(egress) - {"allow", "deny"}
    if unknown:
        raise ValueError(f"egress: unknown keys {sorted(unknown)}; use allow and deny")
    out: dict[str, Any] = {"mode": "Egress"}
    for key in ("allow", "deny"):
        cidrs = egress.get(key)
        if cidrs is None:
            continue
        if isinstance(cidrs, str):
            raise ValueError(f"egress: {key} is a list of CIDRs, not the string {cidrs!r}")
        out[key] = [str(c) for c in cidrs]
    return out


#: Longest ``spec.terminationGracePeriodSeconds`` the server accepts.
MAX_TERMINATION_GRACE_SECONDS = 300


def sandbox_manifest(
    *,
    pool: str,
    image: str,
    name: str | None = None,
    generate_name: str = "sbx-",
    command: Sequence[str] | None = None,
    args: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    working_dir: str | None = None,
    resources: Mapping[str, str | int | float] | None = None,
    ttl_seconds: float | None = None,
    expire_time: datetime | None = None,
    ttl_seconds_after_finished: int | None = None,
    exposed_ports: Sequence[int | Mapping[str, Any]] | None = None,
    egress: bool | Mapping[str, Sequence[str]] | None = None,
    failure_policy: str | None = None,
    termination_grace_seconds: int | None = None,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The Sandbox object ``Sandbox.create`` sends.

    ``command=None`` runs :data:`KEEP_ALIVE`; an empty ``command`` runs the
    image's own entrypoint and cmd. ``ttl_seconds`` sets ``expireTime`` that
    far from now (by the local clock): the sandbox is deleted then, whatever
    happens to this program. ``termination_grace_seconds`` (0 to
    :data:`MAX_TERMINATION_GRACE_SECONDS`) is how long a delete waits
    between SIGTERM and SIGKILL.
    """
    if not pool:
        raise ValueError("pool is required: the SandboxPool whose agents run the sandbox")
    if not image:
        raise ValueError("image is required (and must be present on the pool's nodes)")
    if ttl_seconds is not None and expire_time is not None:
        raise ValueError("give at most one of ttl_seconds and expire_time")
    if ttl_seconds_after_finished is not None and (
        ttl_seconds is not None or expire_time is not None
    ):
        raise ValueError(
            "ttl_seconds_after_finished cannot be combined with ttl_seconds or expire_time"
        )
    meta: dict[str, Any] = {"name": name} if name else {"generateName": generate_name}
    if labels:
        meta["labels"] = dict(labels)
    if annotations:
        meta["annotations"] = dict(annotations)
    spec: dict[str, Any] = {"image": image, "poolRef": pool}
    argv = list(KEEP_ALIVE) if command is None else [str(c) for c in command]
    if argv:
        spec["command"] = argv
    if args:
        spec["args"] = [str(a) for a in args]
    if env:
        spec["env"] = [{"name": str(k), "value": str(v)} for k, v in env.items()]
    if working_dir:
        spec["workingDir"] = working_dir
    if resources:
        spec["resources"] = resources_spec(resources)
    if ttl_seconds is not None:
        spec["expireTime"] = expire_time_in(ttl_seconds, now)
    if expire_time is not None:
        spec["expireTime"] = format_time(expire_time)
    if ttl_seconds_after_finished is not None:
        spec["ttlSecondsAfterFinished"] = int(ttl_seconds_after_finished)
    if exposed_ports:
        spec["exposedPorts"] = ports_spec(exposed_ports)
    if egress is not None:
        spec["network"] = network_spec(egress)
    if failure_policy:
        if failure_policy not in ("Manual", "AutoRecreate"):
            raise ValueError(
                f"failure_policy must be 'Manual' or 'AutoRecreate', not {failure_policy!r}"
            )
        spec["failurePolicy"] = failure_policy
    if termination_grace_seconds is not None:
        grace = termination_grace_seconds
        if isinstance(grace, bool) or not isinstance(grace, int):
            raise ValueError(
                f"termination_grace_seconds must be a whole number of seconds, not {grace!r}"
            )
        if not 0 <= grace <= MAX_TERMINATION_GRACE_SECONDS:
            raise ValueError(
                "termination_grace_seconds must be 0 to "
                f"{MAX_TERMINATION_GRACE_SECONDS}, not {grace}"
            )
        spec["terminationGracePeriodSeconds"] = grace
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Sandbox",
        "metadata": meta,
        "spec": spec,
    }


# --- What an observed sandbox means for a waiting caller -----------------


@dataclass(frozen=True)
class Progress:
    """Where a sandbox stands for someone waiting until it is Ready.

    Exactly one holds: ``ready``, or ``failure`` set (it will not become
    Ready), or neither (still coming).
    """

    status: SandboxStatus
    ready: bool = False
    failure: errors.SandboxFailedError | None = None


def _describe(name: str, status: SandboxStatus) -> str:
    why = ": ".join(x for x in (status.reason, status.message) if x)
    return f"sandbox {name} is {status.phase}" + (f" ({why})" if why else "")


_FAILED_BY_REASON: dict[str, type[errors.SandboxFailedError]] = {
    "ImageNotPresent": errors.ImageNotPresentError,
    "StartError": errors.StartError,
    "OOMKilled": errors.OOMKilledError,
    "EphemeralStorageExceeded": errors.EphemeralStorageExceededError,
    "RuntimeUnavailable": errors.RuntimeUnavailableError,
    "EgressUnavailable": errors.EgressUnavailableError,
    "InvalidSpec": errors.InvalidSpecError,
}


def progress(obj: Mapping[str, Any]) -> Progress:
    """What a Sandbox object, as observed, means for a caller waiting until it is Ready."""
    meta = obj.get("metadata") or {}
    name = str(meta.get("name", ""))
    status = SandboxStatus.from_dict(obj.get("status"))
    policy = (obj.get("spec") or {}).get("failurePolicy", "Manual")
    if meta.get("deletionTimestamp") or status.phase == "Terminating":
        return Progress(
            status,
            failure=errors.SandboxDeletedError(
                f"sandbox {name} is being deleted", reason="Terminating", name=name, status=status
            ),
        )
    if status.ready:
        return Progress(status, ready=True)
    phase, reason = status.phase, status.reason or ""
    message = _describe(name, status)
    if phase == "Failed":
        kind = _FAILED_BY_REASON.get(reason)
        if kind is not None:
            return Progress(status, failure=kind(message, reason=reason, name=name, status=status))
    if phase in ("Failed", "Succeeded"):
        return Progress(
            status,
            failure=errors.SandboxExitedError(
                f"{message}: its process exited with code {status.exit_code}; a sandbox needs a "
                "long-running process to run commands in",
                reason=reason or phase,
                name=name,
                status=status,
                exit_code=status.exit_code,
            ),
        )
    if phase == "Lost" and policy != "AutoRecreate":
        return Progress(
            status,
            failure=errors.SandboxLostError(message, reason=reason, name=name, status=status),
        )
    return Progress(status)


def timeout_error(
    name: str, status: SandboxStatus | None, timeout: float, trouble: str | None = None
) -> errors.SandboxTimeoutError:
    """The error for a sandbox not Ready after ``timeout`` seconds, by what it waited
    for; ``trouble`` says why the watch was down, if it was (then the status
    may be older than the sandbox's)."""
    status = status or SandboxStatus()
    reason = status.reason or ""
    message = f"{_describe(name, status)}: not Ready after {timeout:g} s"
    if trouble:
        message += f" (the watch of sandboxes was failing: {trouble})"
    if reason == "NoCapacity":
        return errors.NoCapacityError(message, reason=reason, name=name, status=status)
    if reason == "PoolNotFound":
        return errors.PoolNotFoundError(message, reason=reason, name=name, status=status)
    return errors.SandboxTimeoutError(message, reason=reason or None, name=name, status=status)
