"""Sandboxes, their commands and their files, synchronously.

One :class:`Sandbox` object per sandbox, with ``commands`` and ``files``
namespaces and a context manager that deletes it::

    with Sandbox.create(pool="default-pool", image="docker.io/fast-sandbox/busybox:dev") as sb:
        print(sb.commands.run("echo hi").stdout)

Sandboxes are ``sandbox.fast.io/v1alpha1`` custom resources; commands,
files and logs go through the access API (``subresources.sandbox.fast.io``),
authorised by Kubernetes RBAC: the built-in ``edit`` role may do all of it
in its namespace.
"""

from __future__ import annotations

import builtins
import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from types import EllipsisType, TracebackType
from typing import Any, Literal, TypeVar

from kubernetes.client import V1DeleteOptions

# Commands and files live in their own modules, one concept per file. What
# this module defined or imported before they moved out is imported back
# (``X as X`` where otherwise unused), so that it stays importable from here;
# a setting such as ``TIMEOUT_GRACE`` is read, and so patched, where defined.
from . import _protocol, _spec
from ._exec import IO_TURN as IO_TURN
from ._exec import RUN_TIMEOUT as RUN_TIMEOUT
from ._exec import TIMEOUT_GRACE as TIMEOUT_GRACE
from ._exec import Commands, CommandStream
from ._files import Files
from ._files import _declared_length as _declared_length
from ._files import _exactly as _exactly
from ._protocol import GROUP, PLURAL, VERSION
from ._protocol import ExecReader as ExecReader
from ._protocol import Source as Source
from ._streams import READ_CHUNK as READ_CHUNK
from ._streams import _chunks, _text_lines
from .client import Client, default_client
from .errors import (
    ApiError,
    FastSandboxError,
    NotFoundError,
    SandboxDeletedError,
    SandboxNotRunningError,
    SandboxTimeoutError,
)
from .errors import CommandTimeoutError as CommandTimeoutError
from .errors import ExecError as ExecError
from .errors import ServerError as ServerError
from .models import CommandResult as CommandResult
from .models import ExecEvent as ExecEvent
from .models import FileInfo as FileInfo
from .models import SandboxStatus

__all__ = ["Sandbox", "Commands", "CommandStream", "Files"]

T = TypeVar("T")

#: Default seconds ``Sandbox.create`` waits until Ready.
CREATE_TIMEOUT = 60.0
#: Retries of a refusal by an access server whose cache lags (see
#: ``Sandbox._access``), and the first pause between them (doubling).
STALE_RETRIES = 4
STALE_RETRY_PAUSE = 0.05


class Sandbox:
    """A sandbox: a container started on a warm agent of a SandboxPool.

    Get one from :meth:`create`, :meth:`get` or :meth:`list`. Its ``status``
    is what was last observed (``refresh()`` reads it again). Used as a
    context manager, it is deleted when the block ends, exception or not.
    """

    def __init__(self, obj: Mapping[str, Any], *, client: Client) -> None:
        self._obj: dict[str, Any] = dict(obj)
        self.client = client
        #: Commands run in this sandbox.
        self.commands = Commands(self)
        #: Files inside this sandbox.
        self.files = Files(self)

    # --- what it is -------------------------------------------------------

    @property
    def name(self) -> str:
        """The Sandbox object's name."""
        return str(self._obj["metadata"]["name"])

    @property
    def namespace(self) -> str:
        """Its namespace."""
        return str(self._obj["metadata"].get("namespace") or self.client.namespace)

    @property
    def uid(self) -> str:
        """Its UID (stable across refreshes, new for a sandbox created again under the name)."""
        return str(self._obj["metadata"].get("uid") or "")

    @property
    def pool(self) -> str:
        """The SandboxPool it runs in."""
        return str(self._obj.get("spec", {}).get("poolRef", ""))

    @property
    def image(self) -> str:
        """Its image."""
        return str(self._obj.get("spec", {}).get("image", ""))

    @property
    def status(self) -> SandboxStatus:
        """The status last observed."""
        return SandboxStatus.from_dict(self._obj.get("status"))

    @property
    def phase(self) -> str:
        """The phase last observed (``Pending`` ... ``Running`` ... ``Failed``)."""
        return self.status.phase

    @property
    def object(self) -> dict[str, Any]:
        """The Sandbox object as last observed (a copy)."""
        return json.loads(json.dumps(self._obj))  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        return f"Sandbox(name={self.name!r}, namespace={self.namespace!r}, phase={self.phase!r})"

    # --- lifecycle --------------------------------------------------------

    @classmethod
    def create(
        cls,
        pool: str,
        image: str,
        *,
        name: str | None = None,
        namespace: str | None = None,
        command: Sequence[str] | None = None,
        args: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        resources: Mapping[str, str | int | float] | None = None,
        ttl_seconds: float | None = None,
        expire_time: datetime | None = None,
        ttl_seconds_after_finished: int | None = None,
        exposed_ports: Sequence[int | Mapping[str, Any]] | None = None,
        egress: bool | Mapping[str, Sequence[str]] | None = None,
        failure_policy: Literal["Manual", "AutoRecreate"] | None = None,
        termination_grace_seconds: int | None = None,
        labels: Mapping[str, str] | None = None,
        annotations: Mapping[str, str] | None = None,
        timeout: float = CREATE_TIMEOUT,
        wait: bool = True,
        delete_on_error: bool = True,
        client: Client | None = None,
    ) -> Sandbox:
        """Creates a sandbox and returns once it is Ready, as a watch reports it.

        - ``pool``: the SandboxPool (same namespace) whose agents run it.
        - ``image``: must already be on the pool's nodes (nothing is pulled).
        - ``command``/``args``: its own process. By default a shell loop that
          keeps it running for commands and exits on SIGTERM; ``command=[]``
          runs the image's entrypoint.
        - ``env``, ``cwd`` (``workingDir``), ``resources``
          (``{"cpu": "500m", "memory": "256Mi", "pids": 128}``, enforced).
        - ``ttl_seconds``: deleted that long from now whatever happens to this
          program (``spec.expireTime``); or ``expire_time``, or
          ``ttl_seconds_after_finished``.
        - ``egress``: ``True`` for outbound IPv4 (``spec.network.mode:
          Egress``), or ``{"allow": [...], "deny": [...]}`` of IPv4 CIDRs;
          unset, the pool's ``defaultNetwork`` (loopback only by default).
        - ``termination_grace_seconds``: how long a delete waits between
          SIGTERM and SIGKILL (0 to 300; the agent's default, 10, when unset).
        - ``name``: the object's name; a generated ``sbx-…`` name by default.
        - ``timeout``: seconds to wait until Ready. Past it,
          :class:`~fast_sandbox.errors.NoCapacityError` when no agent had a free
          slot, else :class:`~fast_sandbox.errors.SandboxTimeoutError`.
        - ``wait=False`` returns as soon as the object is stored.

        A sandbox that cannot run raises its own type:
        :class:`~fast_sandbox.errors.ImageNotPresentError`,
        :class:`~fast_sandbox.errors.StartError`,
        :class:`~fast_sandbox.errors.OOMKilledError`, ... with the status
        message. On any failure while waiting the sandbox is deleted, unless
        ``delete_on_error=False``.
        """
        client = client or default_client()
        ns = namespace or client.namespace
        body = _spec.sandbox_manifest(
            pool=pool,
            image=image,
            name=name,
            command=command,
            args=args,
            env=env,
            working_dir=cwd,
            resources=resources,
            ttl_seconds=ttl_seconds,
            expire_time=expire_time,
            ttl_seconds_after_finished=ttl_seconds_after_finished,
            exposed_ports=exposed_ports,
            egress=egress,
            failure_policy=failure_policy,
            termination_grace_seconds=termination_grace_seconds,
            labels=labels,
            annotations=annotations,
        )
        # The namespace's watch starts before the create, so that the
        # sandbox's every change is seen.
        if wait:
            client.watch(ns)
        obj = client.call_object(
            client.custom.create_namespaced_custom_object, GROUP, VERSION, ns, PLURAL, body
        )
        sb = cls(obj, client=client)
        if wait:
            try:
                sb.wait_ready(timeout=timeout)
            except BaseException as e:
                if delete_on_error:
                    sb._delete_after(e)
                raise
        return sb

    @classmethod
    def get(
        cls, name: str, *, namespace: str | None = None, client: Client | None = None
    ) -> Sandbox:
        """The sandbox ``name`` (raises :class:`~fast_sandbox.errors.SandboxNotFoundError`)."""
        client = client or default_client()
        ns = namespace or client.namespace
        obj = client.call_object(
            client.custom.get_namespaced_custom_object, GROUP, VERSION, ns, PLURAL, name
        )
        return cls(obj, client=client)

    @classmethod
    def list(
        cls,
        *,
        pool: str | None = None,
        phase: str | None = None,
        labels: Mapping[str, str] | str | None = None,
        namespace: str | None = None,
        all_namespaces: bool = False,
        client: Client | None = None,
    ) -> builtins.list[Sandbox]:
        """Sandboxes of the namespace (or all), optionally of one ``pool``, in one
        ``phase``, matching ``labels`` (a map or a selector string), by name."""
        client = client or default_client()
        kwargs = _selectors(pool, phase, labels)
        if all_namespaces:
            answer = client.call_object(
                client.custom.list_cluster_custom_object, GROUP, VERSION, PLURAL, **kwargs
            )
        else:
            answer = client.call_object(
                client.custom.list_namespaced_custom_object,
                GROUP,
                VERSION,
                namespace or client.namespace,
                PLURAL,
                **kwargs,
            )
        items = [cls(o, client=client) for o in answer.get("items") or ()]
        return sorted(items, key=lambda s: (s.namespace, s.name))

    def refresh(self) -> Sandbox:
        """Reads the sandbox again; returns itself."""
        self._obj = self.client.call_object(
            self.client.custom.get_namespaced_custom_object,
            GROUP,
            VERSION,
            self.namespace,
            PLURAL,
            self.name,
        )
        return self

    def wait_ready(self, timeout: float = CREATE_TIMEOUT) -> Sandbox:
        """Waits (on a watch) until the sandbox is Ready; returns itself.

        Raises what :meth:`create` raises when it fails or runs out of time.
        """
        deadline = time.monotonic() + timeout
        watch = self.client.watch(self.namespace)

        def decide(obj: Mapping[str, Any] | None) -> _spec.Progress | None:
            if obj is None:
                return _spec.Progress(
                    self.status,
                    failure=SandboxDeletedError(
                        f"sandbox {self.name} was deleted", name=self.name, status=self.status
                    ),
                )
            p = _spec.progress(obj)
            return p if p.ready or p.failure else None

        decision, last = watch.wait(self._obj, decide, deadline)
        if last is not None:
            self._obj = dict(last)
        if decision is None:
            raise _spec.timeout_error(self.name, self.status, timeout, watch.trouble)
        if decision.failure is not None:
            raise decision.failure
        return self

    def delete(self, *, wait: bool = False, timeout: float = CREATE_TIMEOUT) -> None:
        """Deletes the sandbox (its container is stopped and removed by its agent).

        Returns at once unless ``wait``, then once the object is gone. Deleting
        a sandbox that is already gone is not an error.
        """
        if wait:
            self.client.watch(self.namespace)
        try:
            self.client.call(
                self.client.custom.delete_namespaced_custom_object,
                GROUP,
                VERSION,
                self.namespace,
                PLURAL,
                self.name,
                body=V1DeleteOptions(propagation_policy="Background"),
            )
        except NotFoundError:
            return
        if wait:
            self.wait_deleted(timeout=timeout)

    def wait_deleted(self, timeout: float = CREATE_TIMEOUT) -> None:
        """Waits (on a watch) until the sandbox object is gone."""
        deadline = time.monotonic() + timeout
        watch = self.client.watch(self.namespace)
        try:
            self.refresh()
        except NotFoundError:
            return
        decision, _ = watch.wait(self._obj, lambda o: True if o is None else None, deadline)
        if decision is None:
            raise SandboxTimeoutError(
                f"sandbox {self.name} still exists {timeout:g} s after its deletion "
                f"({self.status.phase})",
                name=self.name,
                status=self.status,
            )

    def set_ttl(self, seconds: float) -> None:
        """Moves the sandbox's expiry to ``seconds`` from now (keeps it alive longer,
        or shortens its life)."""
        patch = {"spec": {"expireTime": _spec.expire_time_in(seconds)}}
        self._obj = self.client.call_object(
            self.client.custom.patch_namespaced_custom_object,
            GROUP,
            VERSION,
            self.namespace,
            PLURAL,
            self.name,
            patch,
            _content_type="application/merge-patch+json",
        )

    def wait_exit(self, timeout: float = CREATE_TIMEOUT) -> SandboxStatus:
        """Waits (on a watch) until the sandbox's own process has ended, and
        returns its final status (``Succeeded`` or ``Failed``, with
        ``exit_code`` and ``reason``, e.g. ``OOMKilled``). A sandbox deleted or
        lost meanwhile raises its error."""
        deadline = time.monotonic() + timeout
        watch = self.client.watch(self.namespace)

        def decide(obj: Mapping[str, Any] | None) -> _spec.Progress | None:
            if obj is None:
                return _spec.Progress(
                    self.status,
                    failure=SandboxDeletedError(
                        f"sandbox {self.name} was deleted", name=self.name, status=self.status
                    ),
                )
            p = _spec.progress(obj)
            if p.status.phase in ("Succeeded", "Failed"):
                return _spec.Progress(p.status)
            return p if p.failure else None

        decision, last = watch.wait(self._obj, decide, deadline)
        if last is not None:
            self._obj = dict(last)
        if decision is None:
            raise SandboxTimeoutError(
                f"sandbox {self.name} is still {self.phase} after {timeout:g} s",
                name=self.name,
                status=self.status,
            )
        if decision.failure is not None:
            raise decision.failure
        return decision.status

    def _access(self, call: Callable[[], T], *, retry: bool = True) -> T:
        """Makes an access API call, with the refusals explained.

        The access server finds sandboxes through its own watch, which may
        still hold the version from before the sandbox ran when this client
        already saw it Ready; it then refuses with "... does not exist yet".
        Such a refusal of a sandbox seen Ready is retried a few times, after
        short pauses (there is nothing the client can watch for), unless the
        call sent a stream it cannot send again (``retry=False``).
        """
        pause = STALE_RETRY_PAUSE
        for attempt in range(STALE_RETRIES + 1):
            try:
                return call()
            except SandboxNotRunningError as e:
                stale = retry and self.status.ready and "yet" in e.message
                if not stale or attempt == STALE_RETRIES:
                    raise self._explain(e)  # noqa: B904 - the cause is set when it explains e
            except ApiError as e:
                raise self._explain(e)  # noqa: B904 - the cause is set when it explains e
            time.sleep(pause)
            pause *= 2
        raise AssertionError("unreachable")  # pragma: no cover

    def _explain(self, e: ApiError) -> FastSandboxError:
        """Why the sandbox could not serve a command or a file: its own failure
        (``OOMKilledError``, ``SandboxExitedError``...) when it has one, else ``e``."""
        if not isinstance(e, SandboxNotRunningError) and e.code != 503:
            return e
        try:
            self.refresh()
        except FastSandboxError:
            return e
        failure = _spec.progress(self._obj).failure
        if failure is None:
            return e
        failure.__cause__ = e
        return failure

    def _delete_after(self, cause: BaseException) -> None:
        """Deletes the sandbox because of ``cause``; a failure to do so is noted on it."""
        try:
            self.delete()
        except Exception as e:  # noqa: BLE001 - the original error matters more
            if hasattr(cause, "add_note"):
                cause.add_note(f"deleting sandbox {self.name} failed too: {e}")

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None:
            self._delete_after(exc)
        else:
            self.delete()

    # --- logs -------------------------------------------------------------

    def logs(
        self,
        *,
        stream: Literal["stdout", "stderr"] = "stdout",
        follow: bool = False,
        timeout: float | None = None,
    ) -> str:
        """The sandbox's own output so far (``follow``: until its process exits)."""
        return "".join(self.iter_logs(stream=stream, follow=follow, timeout=timeout))

    def iter_logs(
        self,
        *,
        stream: Literal["stdout", "stderr"] = "stdout",
        follow: bool = True,
        timeout: float | None = None,
    ) -> Iterator[str]:
        """The sandbox's own output line by line as it is written (``follow``:
        until its process exits). ``timeout`` bounds the wait for each piece."""
        path = _protocol.access_path(
            self.namespace, self.name, "log", _protocol.log_query(stream, follow)
        )
        # A followed log may be quiet for as long as the process likes.
        read: float | EllipsisType | None = timeout if timeout is not None or follow else ...
        resp = self._access(lambda: self.client.request("GET", path, timeout=read))
        return _text_lines(_chunks(resp))


# --- helpers --------------------------------------------------------------


def _selectors(
    pool: str | None, phase: str | None, labels: Mapping[str, str] | str | None
) -> dict[str, str]:
    fields = []
    if pool:
        fields.append(f"spec.poolRef={pool}")
    if phase:
        fields.append(f"status.phase={phase}")
    kwargs: dict[str, str] = {}
    if fields:
        kwargs["field_selector"] = ",".join(fields)
    if labels:
        kwargs["label_selector"] = (
            labels if isinstance(labels, str) else ",".join(f"{k}={v}" for k, v in labels.items())
        )
    return kwargs
