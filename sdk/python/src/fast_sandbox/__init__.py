"""Fast Sandbox for Python: sandboxes on Kubernetes that start in tens of
milliseconds, with commands, files and logs.

::

    from fast_sandbox import Sandbox

    with Sandbox.create(pool="default-pool", image="docker.io/fast-sandbox/busybox:dev") as sb:
        r = sb.commands.run("echo hi; exit 3")
        assert (r.exit_code, r.stdout) == (3, "hi\\n")

The cluster comes from the kubeconfig (``$KUBECONFIG``, ``~/.kube/config``;
its current context and namespace) or, inside a pod, its ServiceAccount;
pass ``client=Client.from_kubeconfig(context=..., namespace=...)`` to
choose. ``fast_sandbox.aio`` has the same API for asyncio.
"""

from ._version import __version__
from .client import Client, default_client, set_default_client
from .errors import (
    AccessApiUnavailableError,
    AlreadyExistsError,
    ApiError,
    BadRequestError,
    CommandExitError,
    CommandTimeoutError,
    ConfigError,
    ConflictError,
    EgressUnavailableError,
    EphemeralStorageExceededError,
    ExecError,
    FastSandboxError,
    ForbiddenError,
    ImageNotPresentError,
    InvalidSpecError,
    NoCapacityError,
    NotFoundError,
    OOMKilledError,
    PathNotFoundError,
    PayloadTooLargeError,
    PoolNotFoundError,
    RuntimeUnavailableError,
    SandboxDeletedError,
    SandboxExitedError,
    SandboxFailedError,
    SandboxLostError,
    SandboxNotFoundError,
    SandboxNotRunningError,
    SandboxTimeoutError,
    ServerError,
    StartError,
    TooManyRequestsError,
    UnauthorizedError,
)
from .models import CommandResult, Condition, Endpoint, ExecEvent, FileInfo, SandboxStatus
from .sandbox import Commands, CommandStream, Files, Sandbox

__all__ = [
    "__version__",
    "Sandbox",
    "Commands",
    "CommandStream",
    "Files",
    "Client",
    "default_client",
    "set_default_client",
    "CommandResult",
    "Condition",
    "Endpoint",
    "ExecEvent",
    "FileInfo",
    "SandboxStatus",
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
    "TooManyRequestsError",
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
]
