"""Plain values the SDK hands back: a sandbox's status, a command's result
and output events, files' metadata. Immutable, parsed from the server's JSON
in one place so the sync and async APIs agree.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

__all__ = [
    "Condition",
    "Endpoint",
    "SandboxStatus",
    "CommandResult",
    "ExecEvent",
    "FileInfo",
    "parse_time",
]

#: The phases of a sandbox (``status.phase``).
Phase = Literal["Pending", "Bound", "Running", "Succeeded", "Failed", "Terminating", "Lost"]


def parse_time(value: Any) -> datetime | None:
    """Parses an RFC 3339 time as the apiserver writes it; ``None`` if absent."""
    if not isinstance(value, str) or not value:
        return None
    text = value.replace("Z", "+00:00")
    # Python < 3.11 takes at most six fractional digits.
    if "." in text:
        head, _, rest = text.partition(".")
        n = len(rest) - len(rest.lstrip("0123456789"))
        digits, zone = rest[:n], rest[n:]
        text = f"{head}.{digits[:6].ljust(6, '0')}{zone}"
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


@dataclass(frozen=True)
class Condition:
    """One status condition (``Scheduled``, ``Ready``), per Kubernetes conventions."""

    type: str
    status: str
    reason: str = ""
    message: str = ""
    last_transition_time: datetime | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Condition:
        """Builds it from the API's JSON."""
        return cls(
            type=str(d.get("type", "")),
            status=str(d.get("status", "")),
            reason=str(d.get("reason") or ""),
            message=str(d.get("message") or ""),
            last_transition_time=parse_time(d.get("lastTransitionTime")),
        )


@dataclass(frozen=True)
class Endpoint:
    """Where an exposed port of the sandbox can be reached (``address:port``)."""

    address: str
    name: str | None = None
    protocol: str = "TCP"


@dataclass(frozen=True)
class SandboxStatus:
    """What the controller last reported about a sandbox.

    ``phase`` is ``Pending`` before any status was written. ``reason`` and
    ``message`` say why it is in that phase (``NoCapacity``,
    ``ImageNotPresent``, ``OOMKilled``...).
    """

    phase: str = "Pending"
    reason: str | None = None
    message: str | None = None
    conditions: tuple[Condition, ...] = ()
    container_id: str | None = None
    node_name: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    exit_code: int | None = None
    endpoints: tuple[Endpoint, ...] = ()
    observed_generation: int | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> SandboxStatus:
        """Builds it from a Sandbox's ``status`` JSON (``None``: no status yet)."""
        if not d:
            return cls()
        exit_code = d.get("exitCode")
        generation = d.get("observedGeneration")
        return cls(
            phase=str(d.get("phase") or "Pending"),
            reason=d.get("reason") or None,
            message=d.get("message") or None,
            conditions=tuple(
                Condition.from_dict(c) for c in d.get("conditions") or () if isinstance(c, Mapping)
            ),
            container_id=d.get("containerID") or None,
            node_name=d.get("nodeName") or None,
            started_at=parse_time(d.get("startedAt")),
            finished_at=parse_time(d.get("finishedAt")),
            exit_code=int(exit_code) if isinstance(exit_code, int) else None,
            endpoints=tuple(
                Endpoint(
                    address=str(e.get("address", "")),
                    name=e.get("name"),
                    protocol=str(e.get("protocol") or "TCP"),
                )
                for e in d.get("endpoints") or ()
                if isinstance(e, Mapping)
            ),
            observed_generation=int(generation) if isinstance(generation, int) else None,
        )

    def condition(self, type_: str) -> Condition | None:
        """The condition of that type, if reported."""
        return next((c for c in self.conditions if c.type == type_), None)

    @property
    def ready(self) -> bool:
        """Whether the sandbox's process runs: phase ``Running`` and Ready not False.

        The controller writes both in one status update; the condition is
        checked too so that a status written by a future controller that
        separates them is read right.
        """
        ready = self.condition("Ready")
        return self.phase == "Running" and (ready is None or ready.status == "True")


@dataclass(frozen=True)
class CommandResult:
    """How a command ended and what it wrote.

    ``stdout`` and ``stderr`` are the output decoded as UTF-8 (undecodable
    bytes replaced); ``stdout_bytes`` and ``stderr_bytes`` are exact.
    ``message`` is the server's word on how it ended (``"killed after the
    timeout of 5s"``, ``"nope: command not found"``), empty on success.
    """

    exit_code: int
    stdout_bytes: bytes = b""
    stderr_bytes: bytes = b""
    message: str = ""

    @property
    def stdout(self) -> str:
        """Standard output as text."""
        return self.stdout_bytes.decode("utf-8", "replace")

    @property
    def stderr(self) -> str:
        """Standard error as text."""
        return self.stderr_bytes.decode("utf-8", "replace")

    @property
    def ok(self) -> bool:
        """Whether the command exited with 0."""
        return self.exit_code == 0

    def check(self) -> CommandResult:
        """Returns itself if the command exited 0, else raises :class:`CommandExitError`."""
        if self.exit_code != 0:
            from .errors import CommandExitError

            detail = f": {self.message}" if self.message else ""
            tail = self.stderr.strip()[-500:]
            more = f"\n{tail}" if tail else ""
            raise CommandExitError(
                f"command exited with code {self.exit_code}{detail}{more}", result=self
            )
        return self


@dataclass(frozen=True)
class ExecEvent:
    """A piece of a command's output, as it arrived.

    ``data`` is the text (UTF-8, decoded incrementally, so a character cut
    between two messages comes whole in the later one); ``raw`` the exact
    bytes of this message.
    """

    stream: Literal["stdout", "stderr"]
    data: str
    raw: bytes = field(default=b"", repr=False)


FileType = Literal["file", "directory", "symlink", "other"]


@dataclass(frozen=True)
class FileInfo:
    """A file inside a sandbox, as ``lstat`` sees it (a symlink is not followed)."""

    name: str
    path: str
    type: str
    size: int
    mode: int
    modified_at: datetime | None = None
    link_target: str | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FileInfo:
        """Builds it from the files API's JSON."""
        return cls(
            name=str(d.get("name", "")),
            path=str(d.get("path", "")),
            type=str(d.get("type", "other")),
            size=int(d.get("size") or 0),
            mode=int(d.get("mode") or 0),
            modified_at=parse_time(d.get("modifiedAt")),
            link_target=d.get("linkTarget"),
        )

    @property
    def is_dir(self) -> bool:
        """Whether it is a directory."""
        return self.type == "directory"

    @property
    def is_file(self) -> bool:
        """Whether it is a regular file."""
        return self.type == "file"
