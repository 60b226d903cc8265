"""Sandboxes, their commands and their files, for asyncio: the surface of
:mod:`fast_sandbox.sandbox` with ``await``::

    async with Sandbox.create(pool="default-pool", image=IMAGE) as sb:
        r = await sb.commands.run("echo hi")
        async for ev in sb.commands.stream(["sh", "-c", "echo 1; echo 2"]):
            print(ev.stream, ev.data)
"""

from __future__ import annotations

import asyncio
import builtins
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Mapping, Sequence
from datetime import datetime
from types import EllipsisType, TracebackType
from typing import Any, Literal, TypeVar

from kubernetes.aio.client import V1DeleteOptions

# Commands and files live in their own modules, one concept per file. What
# this module defined or imported before they moved out is imported back
# (``X as X`` where otherwise unused), so that it stays importable from here;
# a setting such as ``TIMEOUT_GRACE`` is read, and so patched, where defined.
from .. import _protocol, _spec
from .. import sandbox as _sync
from .._protocol import GROUP, PLURAL, VERSION
from .._protocol import ExecReader as ExecReader
from .._protocol import Source as Source
from ..errors import (
    ApiError,
    FastSandboxError,
    NotFoundError,
    SandboxDeletedError,
    SandboxNotRunningError,
    SandboxTimeoutError,
)
from ..errors import CommandTimeoutError as CommandTimeoutError
from ..errors import ExecError as ExecError
from ..errors import ServerError as ServerError
from ..models import CommandResult as CommandResult
from ..models import ExecEvent as ExecEvent
from ..models import FileInfo as FileInfo
from ..models import SandboxStatus
from ..sandbox import CREATE_TIMEOUT, _selectors
from ..sandbox import READ_CHUNK as READ_CHUNK
from ..sandbox import RUN_TIMEOUT as RUN_TIMEOUT
from ._exec import Commands, CommandStream
from ._files import Files
from ._files import _body as _body
from ._streams import AsyncSource as AsyncSource
from ._streams import _achunks as _achunks
from ._streams import _chunks
from .client import Client, default_client

__all__ = ["Sandbox", "Commands", "CommandStream", "Files"]

T = TypeVar("T")


class Sandbox:
    """A sandbox (asyncio). As :class:`fast_sandbox.Sandbox`, with ``await``;
    ``async with`` deletes it when the block ends, exception or not."""

    def __init__(self, obj: Mapping[str, Any], *, client: Client) -> None:
        self._obj: dict[str, Any] = dict(obj)
        self.client = client
        #: Commands run in this sandbox.
        self.commands = Commands(self)
        #: Files inside this sandbox.
        self.files = Files(self)

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
        """Its UID."""
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
        """The phase last observed."""
        return self.status.phase

    @property
    def object(self) -> dict[str, Any]:
        """The Sandbox object as last observed (a copy)."""
        return json.loads(json.dumps(self._obj))  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        return (
            f"aio.Sandbox(name={self.name!r}, namespace={self.namespace!r}, phase={self.phase!r})"
        )

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
    ) -> _Creating:
        """Creates a sandbox; await it for the Ready :class:`Sandbox`, or use it
        in ``async with`` to have it deleted at the end. Arguments, waiting and
        errors as :meth:`fast_sandbox.Sandbox.create`."""
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
        return _Creating(cls._create(body, namespace, timeout, wait, delete_on_error, client))

    @classmethod
    async def _create(
        cls,
        body: dict[str, Any],
        namespace: str | None,
        timeout: float,
        wait: bool,
        delete_on_error: bool,
        client: Client | None,
    ) -> Sandbox:
        client = client or await default_client()
        ns = namespace or client.namespace
        if wait:
            await client.watch(ns)
        obj = await client.call_object(
            client.custom.create_namespaced_custom_object, GROUP, VERSION, ns, PLURAL, body
        )
        sb = cls(obj, client=client)
        if wait:
            try:
                await sb.wait_ready(timeout=timeout)
            except BaseException as e:
                if delete_on_error:
                    await asyncio.shield(sb._delete_after(e))
                raise
        return sb

    @classmethod
    async def get(
        cls, name: str, *, namespace: str | None = None, client: Client | None = None
    ) -> Sandbox:
        """The sandbox ``name``."""
        client = client or await default_client()
        ns = namespace or client.namespace
        obj = await client.call_object(
            client.custom.get_namespaced_custom_object, GROUP, VERSION, ns, PLURAL, name
        )
        return cls(obj, client=client)

    @classmethod
    async def list(
        cls,
        *,
        pool: str | None = None,
        phase: str | None = None,
        labels: Mapping[str, str] | str | None = None,
        namespace: str | None = None,
        all_namespaces: bool = False,
        client: Client | None = None,
    ) -> builtins.list[Sandbox]:
        """Sandboxes of the namespace (or all), as :meth:`fast_sandbox.Sandbox.list`."""
        client = client or await default_client()
        kwargs = _selectors(pool, phase, labels)
        if all_namespaces:
            answer = await client.call_object(
                client.custom.list_cluster_custom_object, GROUP, VERSION, PLURAL, **kwargs
            )
        else:
            answer = await client.call_object(
                client.custom.list_namespaced_custom_object,
                GROUP,
                VERSION,
                namespace or client.namespace,
                PLURAL,
                **kwargs,
            )
        items = [cls(o, client=client) for o in answer.get("items") or ()]
        return sorted(items, key=lambda s: (s.namespace, s.name))

    async def refresh(self) -> Sandbox:
        """Reads the sandbox again; returns itself."""
        self._obj = await self.client.call_object(
            self.client.custom.get_namespaced_custom_object,
            GROUP,
            VERSION,
            self.namespace,
            PLURAL,
            self.name,
        )
        return self

    async def wait_ready(self, timeout: float = CREATE_TIMEOUT) -> Sandbox:
        """Waits (on a watch) until the sandbox is Ready; returns itself."""
        deadline = time.monotonic() + timeout
        watch = await self.client.watch(self.namespace)

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

        decision, last = await watch.wait(self._obj, decide, deadline)
        if last is not None:
            self._obj = dict(last)
        if decision is None:
            raise _spec.timeout_error(self.name, self.status, timeout, watch.trouble)
        if decision.failure is not None:
            raise decision.failure
        return self

    async def delete(self, *, wait: bool = False, timeout: float = CREATE_TIMEOUT) -> None:
        """Deletes the sandbox; with ``wait``, returns once the object is gone."""
        if wait:
            await self.client.watch(self.namespace)
        try:
            await self.client.call(
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
            await self.wait_deleted(timeout=timeout)

    async def wait_deleted(self, timeout: float = CREATE_TIMEOUT) -> None:
        """Waits (on a watch) until the sandbox object is gone."""
        deadline = time.monotonic() + timeout
        watch = await self.client.watch(self.namespace)
        try:
            await self.refresh()
        except NotFoundError:
            return
        decision, _ = await watch.wait(self._obj, lambda o: True if o is None else None, deadline)
        if decision is None:
            raise SandboxTimeoutError(
                f"sandbox {self.name} still exists {timeout:g} s after its deletion "
                f"({self.status.phase})",
                name=self.name,
                status=self.status,
            )

    async def set_ttl(self, seconds: float) -> None:
        """Moves the sandbox's expiry to ``seconds`` from now."""
        patch = {"spec": {"expireTime": _spec.expire_time_in(seconds)}}
        self._obj = await self.client.call_object(
            self.client.custom.patch_namespaced_custom_object,
            GROUP,
            VERSION,
            self.namespace,
            PLURAL,
            self.name,
            patch,
            _content_type="application/merge-patch+json",
        )

    async def wait_exit(self, timeout: float = CREATE_TIMEOUT) -> SandboxStatus:
        """Waits until the sandbox's own process has ended; its final status
        (as :meth:`fast_sandbox.Sandbox.wait_exit`)."""
        deadline = time.monotonic() + timeout
        watch = await self.client.watch(self.namespace)

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

        decision, last = await watch.wait(self._obj, decide, deadline)
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

    async def _access(self, call: Callable[[], Awaitable[T]], *, retry: bool = True) -> T:
        """An access API call with refusals explained, and a refusal by a lagging
        access server retried (as :meth:`fast_sandbox.Sandbox._access`)."""
        pause = _sync.STALE_RETRY_PAUSE
        for attempt in range(_sync.STALE_RETRIES + 1):
            try:
                return await call()
            except SandboxNotRunningError as e:
                stale = retry and self.status.ready and "yet" in e.message
                if not stale or attempt == _sync.STALE_RETRIES:
                    raise await self._explain(e)  # noqa: B904 - the cause is set when it explains e
            except ApiError as e:
                raise await self._explain(e)  # noqa: B904 - the cause is set when it explains e
            await asyncio.sleep(pause)
            pause *= 2
        raise AssertionError("unreachable")  # pragma: no cover

    async def _explain(self, e: ApiError) -> FastSandboxError:
        """Why the sandbox could not serve: its own failure when it has one."""
        if not isinstance(e, SandboxNotRunningError) and e.code != 503:
            return e
        try:
            await self.refresh()
        except FastSandboxError:
            return e
        failure = _spec.progress(self._obj).failure
        if failure is None:
            return e
        failure.__cause__ = e
        return failure

    async def _delete_after(self, cause: BaseException) -> None:
        try:
            await self.delete()
        except Exception as e:  # noqa: BLE001 - the original error matters more
            if hasattr(cause, "add_note"):
                cause.add_note(f"deleting sandbox {self.name} failed too: {e}")

    async def __aenter__(self) -> Sandbox:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None:
            await asyncio.shield(self._delete_after(exc))
        else:
            await self.delete()

    # --- logs -------------------------------------------------------------

    async def logs(
        self,
        *,
        stream: Literal["stdout", "stderr"] = "stdout",
        follow: bool = False,
        timeout: float | None = None,
    ) -> str:
        """The sandbox's own output so far (``follow``: until its process exits)."""
        return "".join(
            [line async for line in self.iter_logs(stream=stream, follow=follow, timeout=timeout)]
        )

    async def iter_logs(
        self,
        *,
        stream: Literal["stdout", "stderr"] = "stdout",
        follow: bool = True,
        timeout: float | None = None,
    ) -> AsyncIterator[str]:
        """The sandbox's own output line by line as it is written."""
        import codecs

        path = _protocol.access_path(
            self.namespace, self.name, "log", _protocol.log_query(stream, follow)
        )
        read: float | EllipsisType | None = timeout if timeout is not None or follow else ...
        resp = await self._access(lambda: self.client.request("GET", path, timeout=read))
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        buf = ""
        async for chunk in _chunks(resp):
            buf += decoder.decode(chunk)
            *lines, buf = buf.split("\n")
            for line in lines:
                yield line + "\n"
        buf += decoder.decode(b"", final=True)
        if buf:
            yield buf


class _Creating(Awaitable[Sandbox]):
    """What ``Sandbox.create`` returns: await it, or ``async with`` it."""

    def __init__(self, coro: Awaitable[Sandbox]) -> None:
        self._coro = coro
        self._sandbox: Sandbox | None = None

    def __await__(self) -> Generator[Any, None, Sandbox]:
        return self._coro.__await__()

    async def __aenter__(self) -> Sandbox:
        self._sandbox = await self._coro
        return self._sandbox

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._sandbox is not None:
            await self._sandbox.__aexit__(exc_type, exc, tb)
