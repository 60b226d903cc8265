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
import collections
import contextlib
import json
import os
import time
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Mapping,
    Sequence,
)
from datetime import datetime
from types import EllipsisType, TracebackType
from typing import IO, Any, Literal, NoReturn, TypeVar

import aiohttp
from kubernetes.aio.client import V1DeleteOptions

from .. import _protocol, _spec
from .. import sandbox as _sync
from .._protocol import GROUP, PLURAL, VERSION, ExecReader, Source
from ..errors import (
    ApiError,
    CommandTimeoutError,
    ExecError,
    FastSandboxError,
    NotFoundError,
    SandboxDeletedError,
    SandboxNotRunningError,
    SandboxTimeoutError,
    ServerError,
)
from ..models import CommandResult, ExecEvent, FileInfo, SandboxStatus
from ..sandbox import CREATE_TIMEOUT, READ_CHUNK, RUN_TIMEOUT, _selectors
from .client import Client, default_client

__all__ = ["Sandbox", "Commands", "CommandStream", "Files"]

T = TypeVar("T")

#: What feeds stdin or a file in the async API: what the sync API takes, or
#: an async iterable of chunks.
AsyncSource = Source | AsyncIterable[bytes]


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


class Commands:
    """Commands run in a sandbox (asyncio), as :class:`fast_sandbox.Commands`."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._sandbox = sandbox

    async def run(
        self,
        command: str | Sequence[str],
        *,
        timeout: float | None = RUN_TIMEOUT,
        stdin: AsyncSource | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        check: bool = False,
    ) -> CommandResult:
        """Runs ``command`` to its end: exit code and output, as the sync ``run``."""
        out: builtins.list[bytes] = []
        err: builtins.list[bytes] = []
        proc = self.stream(command, timeout=timeout, stdin=stdin, env=env, cwd=cwd)
        try:
            async with proc:
                async for ev in proc:
                    (out if ev.stream == "stdout" else err).append(ev.raw)
        except CommandTimeoutError as e:
            e.result = CommandResult(124, b"".join(out), b"".join(err), e.message)
            raise
        result = CommandResult(proc.exit_code or 0, b"".join(out), b"".join(err), proc.message)
        return result.check() if check else result

    def stream(
        self,
        command: str | Sequence[str],
        *,
        timeout: float | None = None,
        stdin: AsyncSource | bool | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        detach: bool = False,
    ) -> CommandStream:
        """Starts ``command``; ``async for`` the result for its output as it happens."""
        argv = _protocol.normalize_command(command)
        return CommandStream(self._sandbox, argv, timeout, stdin, env, cwd, detach)


class CommandStream:
    """A running command (asyncio): ``async for`` its output, then read ``exit_code``."""

    def __init__(
        self,
        sandbox: Sandbox,
        argv: builtins.list[str],
        timeout: float | None,
        stdin: AsyncSource | bool | None,
        env: Mapping[str, str] | None,
        cwd: str | None,
        detach: bool,
    ) -> None:
        self._sandbox = sandbox
        self.argv = argv
        self._timeout = timeout
        self._stdin = stdin
        self._query = _protocol.exec_query(
            argv,
            stdin=stdin is not None and stdin is not False,
            env=env,
            working_dir=cwd,
            timeout=timeout,
            detach=detach,
        )
        self._ws: aiohttp.ClientWebSocketResponse[bool] | None = None
        self._v5 = True
        self._reader = ExecReader()
        self._pending: collections.deque[ExecEvent] = collections.deque()
        self._deadline: float | None = None
        self._feeder: asyncio.Task[None] | None = None
        self._feed_error: BaseException | None = None
        self._closed = False
        #: The exit code, once the command ended.
        self.exit_code: int | None = None
        #: The server's word on how it ended (empty on success).
        self.message = ""

    async def _open(self) -> aiohttp.ClientWebSocketResponse[bool]:
        if self._ws is not None:
            return self._ws
        if self._closed:
            raise ExecError("the command's stream is closed")
        sb = self._sandbox
        path = _protocol.access_path(sb.namespace, sb.name, "exec", self._query)
        ws = await sb._access(lambda: sb.client.websocket(path, timeout=sb.client.request_timeout))
        self._ws = ws
        self._v5 = ws.protocol != _protocol.PROTOCOLS[1]
        if self._timeout is not None:
            self._deadline = time.monotonic() + self._timeout + _sync.TIMEOUT_GRACE
        source = self._stdin
        if source is not None and source is not False and source is not True:
            self._feeder = asyncio.create_task(self._feed(ws, source))
        return ws

    async def _feed(self, ws: aiohttp.ClientWebSocketResponse[bool], source: AsyncSource) -> None:
        try:
            async for chunk in _achunks(source):
                if self._closed:
                    return
                await ws.send_bytes(_protocol.stdin_message(chunk))
            if self._v5:
                await ws.send_bytes(_protocol.close_stdin_message())
        except (OSError, aiohttp.ClientError, RuntimeError):
            # The command ended or stopped reading: input is dropped, as a pipe's.
            return
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # noqa: BLE001 - reported by the reading side
            self._feed_error = e
            await ws.close()

    async def write(self, data: bytes | str) -> None:
        """Sends ``data`` to the command's stdin (started with ``stdin=True``)."""
        if self._stdin is not True:
            raise ValueError("write() needs a command started with stdin=True")
        ws = await self._open()
        for chunk in _protocol.iter_chunks(data):
            await ws.send_bytes(_protocol.stdin_message(chunk))

    async def close_stdin(self) -> None:
        """Closes the command's stdin: it reads end of file (v5 only)."""
        if self._stdin is not True:
            raise ValueError("close_stdin() needs a command started with stdin=True")
        ws = await self._open()
        if not self._v5:
            raise ExecError("the server speaks v4.channel.k8s.io, which cannot close stdin")
        await ws.send_bytes(_protocol.close_stdin_message())

    async def close(self) -> None:
        """Ends the exchange; a command still running is killed unless detached."""
        if self._closed:
            return
        self._closed = True
        if self._feeder is not None and not self._feeder.done():
            self._feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._feeder
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()

    async def __aenter__(self) -> CommandStream:
        await self._open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __aiter__(self) -> CommandStream:
        return self

    async def __anext__(self) -> ExecEvent:
        while True:
            if self._pending:
                return self._pending.popleft()
            status = self._reader.status
            if status is not None:
                await self.close()
                self._finish(status)
                raise StopAsyncIteration
            self._pending.extend(self._reader.feed(await self._receive()))

    async def _receive(self) -> bytes:
        ws = await self._open()
        remaining = None
        if self._deadline is not None:
            remaining = self._deadline - time.monotonic()
            if remaining <= 0:
                await self._timed_out()
        try:
            msg = await asyncio.wait_for(ws.receive(), remaining)
        except asyncio.TimeoutError:
            await self._timed_out()
        if msg.type == aiohttp.WSMsgType.BINARY:
            return bytes(msg.data)
        if msg.type == aiohttp.WSMsgType.TEXT:
            return b""
        await self.close()
        if self._feed_error is not None:
            raise self._feed_error
        if msg.type == aiohttp.WSMsgType.ERROR:
            raise ExecError(f"the command's stream broke: {ws.exception()}")
        raise ExecError(
            "the command's stream ended without an exit status (the connection or the server "
            "went away)"
        )

    async def _timed_out(self) -> NoReturn:
        await self.close()
        raise CommandTimeoutError(
            f"{self._describe()} did not end within its timeout of {self._timeout:g} s; "
            "it was killed"
        )

    def _finish(self, status: _protocol.ExitStatus) -> None:
        if self._feed_error is not None:
            raise self._feed_error
        self.message = status.message if status.exit_code != 0 else ""
        if status.exit_code is None:
            raise ExecError(f"{self._describe()} failed: {status.message}", reason=status.reason)
        self.exit_code = status.exit_code
        if status.timed_out:
            raise CommandTimeoutError(f"{self._describe()}: {status.message}")

    def _describe(self) -> str:
        cmd = " ".join(self.argv)
        cmd = cmd if len(cmd) <= 80 else cmd[:77] + "..."
        return f"command {cmd!r} in sandbox {self._sandbox.name}"

    async def wait(self) -> int:
        """Reads (and drops) the rest of the output; returns the exit code."""
        async for _ in self:
            pass
        return self.exit_code if self.exit_code is not None else 0


class Files:
    """Files inside a sandbox (asyncio), as :class:`fast_sandbox.Files`."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._sandbox = sandbox

    def _path(self, path: str, op: str | None, **extra: str) -> str:
        sb = self._sandbox
        return _protocol.access_path(
            sb.namespace, sb.name, "files", _protocol.files_query(path, op, **extra)
        )

    async def _request(self, method: str, path: str, **kwargs: Any) -> aiohttp.ClientResponse:
        client = self._sandbox.client
        replayable = isinstance(kwargs.get("body"), (bytes, type(None)))
        return await self._sandbox._access(
            lambda: client.request(method, path, **kwargs), retry=replayable
        )

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        client = self._sandbox.client
        replayable = isinstance(kwargs.get("body"), (bytes, type(None)))
        return await self._sandbox._access(
            lambda: client.request_json(method, path, **kwargs), retry=replayable
        )

    async def read(self, path: str) -> bytes:
        """The bytes of file ``path``."""
        return b"".join([c async for c in self.iter_read(path)])

    async def read_text(self, path: str, encoding: str = "utf-8") -> str:
        """The text of file ``path``."""
        return (await self.read(path)).decode(encoding)

    async def iter_read(self, path: str, chunk_size: int = READ_CHUNK) -> AsyncIterator[bytes]:
        """The bytes of file ``path`` as they arrive."""
        resp = await self._request("GET", self._path(path, "read"))
        async for chunk in _chunks(resp, chunk_size):
            yield chunk

    async def download(self, path: str, dest: str | os.PathLike[str] | IO[bytes]) -> int:
        """Streams file ``path`` into local ``dest``; returns the bytes written."""
        if isinstance(dest, (str, os.PathLike)):
            with open(dest, "wb") as f:
                return await self.download(path, f)
        n = 0
        async for chunk in self.iter_read(path):
            await asyncio.to_thread(dest.write, chunk)
            n += len(chunk)
        return n

    async def write(self, path: str, data: AsyncSource, *, mode: int | None = None) -> FileInfo:
        """Creates or replaces file ``path`` with ``data``, streamed."""
        extra = {"mode": format(mode, "o")} if mode is not None else {}
        answer = await self._json(
            "PUT",
            self._path(path, "write", **extra),
            body=_body(data),
            content_type="application/octet-stream",
        )
        return FileInfo.from_dict(answer)

    async def upload(
        self, local: str | os.PathLike[str], path: str, *, mode: int | None = None
    ) -> FileInfo:
        """Copies local file ``local`` to ``path``, keeping its mode unless ``mode``."""
        with open(local, "rb") as f:
            if mode is None:
                mode = os.fstat(f.fileno()).st_mode & 0o7777
            return await self.write(path, f, mode=mode)

    async def stat(self, path: str) -> FileInfo:
        """What ``path`` is; raises :class:`~fast_sandbox.errors.PathNotFoundError`."""
        return FileInfo.from_dict(await self._json("GET", self._path(path, "stat")))

    async def exists(self, path: str) -> bool:
        """Whether anything is at ``path``."""
        try:
            await self.stat(path)
        except FileNotFoundError:
            return False
        return True

    async def list(self, path: str = "/") -> builtins.list[FileInfo]:
        """The entries of directory ``path``, sorted by name."""
        answer = await self._json("GET", self._path(path, "list"))
        return [FileInfo.from_dict(i) for i in answer.get("items") or ()]

    async def mkdir(self, path: str, *, mode: int | None = None) -> FileInfo:
        """Creates directory ``path`` and any missing parents."""
        extra = {"mode": format(mode, "o")} if mode is not None else {}
        return FileInfo.from_dict(await self._json("POST", self._path(path, "mkdir", **extra)))

    async def remove(self, path: str, *, recursive: bool = False) -> FileInfo:
        """Removes ``path`` (a directory with its contents only if ``recursive``)."""
        extra = {"recursive": "true"} if recursive else {}
        return FileInfo.from_dict(await self._json("DELETE", self._path(path, None, **extra)))

    async def tar(self, path: str) -> AsyncIterator[bytes]:
        """An uncompressed tar stream of ``path``'s tree."""
        resp = await self._request("GET", self._path(path, "tar"))
        async for chunk in _chunks(resp):
            yield chunk

    async def untar(self, path: str, archive: AsyncSource) -> FileInfo:
        """Extracts a tar stream into directory ``path``."""
        return FileInfo.from_dict(
            await self._json(
                "PUT",
                self._path(path, "untar"),
                body=_body(archive),
                content_type="application/x-tar",
            )
        )


def _body(data: AsyncSource) -> bytes | AsyncIterable[bytes]:
    if isinstance(data, str):
        return data.encode("utf-8")
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    return _achunks(data, READ_CHUNK)


async def _achunks(source: AsyncSource, chunk: int = _protocol.STDIN_CHUNK) -> AsyncIterator[bytes]:
    """The bytes of ``source`` in bounded pieces; a file is read off the event loop."""
    if isinstance(source, AsyncIterable):
        async for piece in source:
            for part in _protocol.iter_chunks(piece, chunk):
                yield part
        return
    read = getattr(source, "read", None)
    if callable(read):
        while True:
            piece = await asyncio.to_thread(read, chunk)
            if not piece:
                return
            for part in _protocol.iter_chunks(piece, chunk):
                yield part
        return
    for part in _protocol.iter_chunks(source, chunk):
        yield part


async def _chunks(resp: aiohttp.ClientResponse, size: int = READ_CHUNK) -> AsyncIterator[bytes]:
    """The body of a streamed response as it arrives; released at the end."""
    try:
        async for chunk in resp.content.iter_chunked(size):
            yield chunk
    except (aiohttp.ClientError, asyncio.TimeoutError) as e:
        raise ServerError(f"the stream broke: {e}") from e
    finally:
        resp.release()
