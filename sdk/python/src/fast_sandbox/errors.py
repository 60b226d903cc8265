"""Every error the SDK raises, one type per failure a caller may branch on.

All of them derive from :class:`FastSandboxError` and carry the message the
server gave (a ``metav1.Status`` message, a sandbox's ``status.message``), so
printing an exception tells the user what Kubernetes or Fast Sandbox said,
not what the SDK guessed.

- :class:`ApiError` and its subclasses: the Kubernetes API (or the access
  API behind it) refused or failed a request: not found, forbidden,
  conflict, invalid.
- :class:`SandboxFailedError` and its subclasses: the sandbox stopped
  before it became Ready: :class:`ImageNotPresentError`,
  :class:`StartError`, :class:`OOMKilledError`, and so on.
- :class:`SandboxTimeoutError` and its subclasses (also builtin
  :class:`TimeoutError`): a bounded wait ran out, for example
  :class:`NoCapacityError` when no agent had a free slot by the deadline,
  or :class:`CommandTimeoutError` for a command.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .models import CommandResult, SandboxStatus

__all__ = [
    "FastSandboxError",
    "ConfigError",
    "ApiError",
    "BadRequestError",
    "UnauthorizedError",
    "ForbiddenError",
    "NotFoundError",
    "SandboxNotFoundError",
    "PathNotFoundError",
    "ConflictError",
    "AlreadyExistsError",
    "SandboxNotRunningError",
    "PayloadTooLargeError",
    "ServerError",
    "AccessApiUnavailableError",
    "SandboxFailedError",
    "ImageNotPresentError",
    "StartError",
    "OOMKilledError",
    "EphemeralStorageExceededError",
    "RuntimeUnavailableError",
    "EgressUnavailableError",
    "InvalidSpecError",
    "SandboxExitedError",
    "SandboxLostError",
    "SandboxDeletedError",
    "SandboxTimeoutError",
    "NoCapacityError",
    "PoolNotFoundError",
    "CommandTimeoutError",
    "ExecError",
    "CommandExitError",
    "error_from_status",
    "parse_status_body",
]


class FastSandboxError(Exception):
    """Base of every error raised by the SDK.

    ``message`` is the human-readable text (also ``str(e)``); ``reason`` the
    machine-readable reason when the server gave one (a ``metav1.Status``
    reason such as ``Forbidden``, or a sandbox status reason such as
    ``ImageNotPresent``).
    """

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason


class ConfigError(FastSandboxError):
    """No usable cluster configuration (kubeconfig, context, in-cluster)."""


# --- The API said no ------------------------------------------------------


class ApiError(FastSandboxError):
    """The Kubernetes API refused or failed a request.

    ``code`` is the HTTP status (0 when no answer came), ``status`` the
    ``metav1.Status`` body when there was one.
    """

    def __init__(
        self,
        message: str,
        *,
        code: int = 0,
        reason: str | None = None,
        status: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message, reason=reason)
        self.code = code
        self.status: Mapping[str, Any] = status or {}


class BadRequestError(ApiError):
    """The request was malformed or refused at admission (400, 422).

    Admission refusals name the offending field, e.g.
    ``spec.resources.memory``.
    """


class UnauthorizedError(ApiError):
    """The credentials were not accepted (401)."""


class ForbiddenError(ApiError):
    """RBAC refused the request (403), e.g. exec in another tenant's namespace."""


class NotFoundError(ApiError):
    """Something named in the request does not exist (404)."""


class SandboxNotFoundError(NotFoundError):
    """The sandbox does not exist (or is not visible in this namespace)."""


class PathNotFoundError(NotFoundError, FileNotFoundError):
    """A path inside the sandbox does not exist.

    Also a builtin :class:`FileNotFoundError`, so ``except FileNotFoundError``
    works as it does for local files.
    """


class ConflictError(ApiError):
    """The request conflicts with the object's current state (409)."""


class AlreadyExistsError(ConflictError):
    """A sandbox of that name exists already, or a file or directory at the
    path (files API)."""


class SandboxNotRunningError(ConflictError):
    """The sandbox exists but cannot run commands or serve files now.

    It is not bound to an agent yet, its container does not exist yet, or it
    finished; the message says which.
    """


class PayloadTooLargeError(ApiError):
    """An upload is larger than the agent accepts (413)."""


class TooManyRequestsError(ApiError):
    """The sandbox already runs as many execs as one may at once (429); one
    more can start once one of them ends."""


class ServerError(ApiError):
    """The server failed (5xx) or the connection broke."""


class AccessApiUnavailableError(ApiError):
    """The cluster does not serve the access API (``subresources.sandbox.fast.io``).

    Fast Sandbox's access server and its APIService are not installed or not
    available, so commands, files and logs cannot be reached.
    """


# --- The sandbox did not come up ------------------------------------------


class SandboxFailedError(FastSandboxError):
    """The sandbox stopped before it became Ready.

    ``status`` is the last status observed; ``reason`` and ``message`` are
    its ``status.reason`` and ``status.message``.
    """

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        name: str = "",
        status: SandboxStatus | None = None,
    ) -> None:
        super().__init__(message, reason=reason)
        self.name = name
        self.status = status


class ImageNotPresentError(SandboxFailedError):
    """The image is not on the agent's node: Fast Sandbox never pulls.

    Add it to the pool's ``warmImages`` or load it onto the nodes.
    """


class StartError(SandboxFailedError):
    """The sandbox's process could not start (command or working dir missing)."""


class OOMKilledError(SandboxFailedError):
    """The kernel killed the sandbox's process for exceeding its memory limit."""


class EphemeralStorageExceededError(SandboxFailedError):
    """The sandbox wrote past its ``resources.ephemeral_storage`` and was killed."""


class RuntimeUnavailableError(SandboxFailedError):
    """The node cannot run the pool's ``runtime`` (gVisor's shim missing or failing)."""


class EgressUnavailableError(SandboxFailedError):
    """The sandbox asked for egress and its agent cannot give it (a gVisor pool,
    or an agent pod without nftables); the message says which."""


class InvalidSpecError(SandboxFailedError):
    """The agent refused the sandbox's spec."""


class SandboxExitedError(SandboxFailedError):
    """The sandbox's own process exited, so the sandbox is not running.

    ``exit_code`` is its exit code. A sandbox needs a long-running process
    (the SDK's default command sleeps) to run commands in.
    """

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        name: str = "",
        status: SandboxStatus | None = None,
        exit_code: int | None = None,
    ) -> None:
        super().__init__(message, reason=reason, name=name, status=status)
        self.exit_code = exit_code


class SandboxLostError(SandboxFailedError):
    """The sandbox's agent is gone or unreachable (failurePolicy Manual)."""


class SandboxDeletedError(SandboxFailedError):
    """The sandbox was deleted while the SDK waited for it."""


# --- Bounded waits --------------------------------------------------------


class SandboxTimeoutError(FastSandboxError, TimeoutError):
    """A bounded wait ran out; also a builtin :class:`TimeoutError`.

    ``status`` is the last sandbox status observed, when there was one.
    """

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        name: str = "",
        status: SandboxStatus | None = None,
    ) -> None:
        super().__init__(message, reason=reason)
        self.name = name
        self.status = status


class NoCapacityError(SandboxTimeoutError):
    """No agent of the pool had a free slot before the deadline.

    The pool grows on demand up to its ``poolMax``; raise that, the pool's
    ``maxSandboxesPerAgent``, or wait longer.
    """


class PoolNotFoundError(SandboxTimeoutError):
    """The sandbox's pool did not exist in its namespace before the deadline."""


class CommandTimeoutError(SandboxTimeoutError):
    """A command ran past its timeout and was killed.

    ``result`` holds what it wrote before (exit code 124).
    """

    def __init__(self, message: str, *, result: CommandResult | None = None) -> None:
        super().__init__(message, reason="Timeout")
        self.result = result


# --- Commands -------------------------------------------------------------


class ExecError(FastSandboxError):
    """A command's stream ended without an exit code.

    The connection broke, the agent restarted, or the server reported a
    failure that is not the command's own (the message says which).
    """


class CommandExitError(FastSandboxError):
    """A command exited non-zero and ``check=True`` was asked.

    ``result`` holds its exit code and output.
    """

    def __init__(self, message: str, *, result: CommandResult) -> None:
        super().__init__(message, reason="NonZeroExitCode")
        self.result = result

    @property
    def exit_code(self) -> int:
        """The command's exit code."""
        return self.result.exit_code


# --- Mapping of API answers to types (pure) -------------------------------

_NO_GROUP = "could not find the requested resource"


def parse_status_body(body: bytes | str | Mapping[str, Any] | None) -> dict[str, Any]:
    """Reads a ``metav1.Status`` from a response body; ``{}`` when it is not one."""
    if body is None:
        return {}
    if isinstance(body, Mapping):
        return dict(body)
    try:
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
        value = json.loads(text)
    except ValueError:
        return {"message": body.decode("utf-8", "replace") if isinstance(body, bytes) else body}
    return dict(value) if isinstance(value, dict) else {}


def _about_a_path(status: Mapping[str, Any]) -> bool:
    """Whether the access API names a file's path as the cause (a file that
    exists, a directory that is not empty), not the sandbox's state."""
    details = status.get("details")
    causes = details.get("causes") if isinstance(details, Mapping) else None
    return isinstance(causes, list) and any(
        isinstance(c, Mapping) and c.get("field") == "path" for c in causes
    )


def error_from_status(
    code: int,
    body: bytes | str | Mapping[str, Any] | None,
    *,
    access_api: bool = False,
    fallback: str = "",
) -> ApiError:
    """The exception for an HTTP error answer of the Kubernetes API.

    ``access_api`` says the request went to the access API
    (``subresources.sandbox.fast.io``), where a 404 may also mean the group
    is not served, or a path inside the sandbox is missing, and 409 means
    the sandbox cannot serve the request now, unless the answer names a path
    as its cause (a file that exists, a directory that is not empty).
    """
    status = parse_status_body(body)
    message = str(status.get("message") or fallback or f"HTTP {code}")
    reason = status.get("reason")
    reason = str(reason) if reason else None
    kw: dict[str, Any] = {"code": code, "reason": reason, "status": status}
    if access_api and (
        (code == 404 and _NO_GROUP in message)
        or (code == 503 and "service unavailable" in message.lower())
    ):
        return AccessApiUnavailableError(
            "the cluster does not serve subresources.sandbox.fast.io/v1alpha1: is Fast "
            f"Sandbox's access server (fast-sandbox-gateway and its APIService) installed "
            f"and available? ({message})",
            **kw,
        )
    if code in (400, 422):
        return BadRequestError(message, **kw)
    if code == 401:
        return UnauthorizedError(message, **kw)
    if code == 403:
        return ForbiddenError(message, **kw)
    if code == 404:
        details = status.get("details")
        kind = details.get("kind") if isinstance(details, Mapping) else None
        if kind == "sandboxes" or message.startswith("sandboxes."):
            return SandboxNotFoundError(message, **kw)
        if access_api:
            return PathNotFoundError(message, **kw)
        return NotFoundError(message, **kw)
    if code == 409:
        if reason == "AlreadyExists":
            return AlreadyExistsError(message, **kw)
        if access_api and not _about_a_path(status):
            return SandboxNotRunningError(message, **kw)
        return ConflictError(message, **kw)
    if code == 413:
        return PayloadTooLargeError(message, **kw)
    if code == 429:
        return TooManyRequestsError(message, **kw)
    return ServerError(message, **kw)
