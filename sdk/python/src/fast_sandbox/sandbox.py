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
import collections
import contextlib
import json
import os
import select
import ssl
import stat
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from types import EllipsisType, TracebackType
from typing import IO, Any, Literal, NoReturn, TypeVar

import urllib3
import websocket
from kubernetes.client import V1DeleteOptions

from . import _protocol, _spec
from ._protocol import GROUP, PLURAL, VERSION, ExecReader, Source
from .client import Client, default_client
from .errors import (
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
from .models import CommandResult, ExecEvent, FileInfo, SandboxStatus

__all__ = ["Sandbox", "Commands", "CommandStream", "Files"]

T = TypeVar("T")

#: Seconds a command's stream may outlast its timeout before the client gives
#: up on hearing the server's verdict and cuts the connection itself.
TIMEOUT_GRACE = 3.0
#: How long one turn at the connection lasts while stdin may be sent from
#: another thread: reads and writes take turns, because a TLS connection
#: must never be read and written by two threads at once.
IO_TURN = 0.02
#: Default seconds ``Sandbox.create`` waits until Ready.
CREATE_TIMEOUT = 60.0
#: Default seconds ``commands.run`` lets a command run.
RUN_TIMEOUT = 60.0
#: Retries of a refusal by an access server whose cache lags (see
#: ``Sandbox._access``), and the first pause between them (doubling).
STALE_RETRIES = 4
STALE_RETRY_PAUSE = 0.05
#: Bytes per read of a streamed file or log.
READ_CHUNK = 256 * 1024


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


class Commands:
    """Commands run in a sandbox (``sandbox.commands``), through the access API's
    ``exec``: a string runs through ``sh -c``, a list is argv."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._sandbox = sandbox

    def run(
        self,
        command: str | Sequence[str],
        *,
        timeout: float | None = RUN_TIMEOUT,
        stdin: Source | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        check: bool = False,
    ) -> CommandResult:
        """Runs ``command`` to its end and returns its exit code and output.

        ``stdin`` (bytes, text, a binary file object or an iterable of chunks)
        is streamed to it and then closed. ``timeout`` seconds (rounded up to
        whole seconds by the server; ``None``: no limit) after which the command
        is killed and :class:`~fast_sandbox.errors.CommandTimeoutError` raised,
        holding the output so far. A non-zero exit is returned, not raised,
        unless ``check``. Output is held in memory: use :meth:`stream` for
        large output.
        """
        out: builtins.list[bytes] = []
        err: builtins.list[bytes] = []
        proc = self.stream(command, timeout=timeout, stdin=stdin, env=env, cwd=cwd)
        try:
            with proc:
                for ev in proc:
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
        stdin: Source | bool | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        detach: bool = False,
    ) -> CommandStream:
        """Starts ``command`` and returns its output events as they happen.

        Iterate the result for :class:`~fast_sandbox.models.ExecEvent` values
        (``stream``, ``data``); nothing is held beyond one message, so output
        of any size passes. After the loop, ``exit_code`` holds the exit code.
        ``stdin=True`` leaves stdin open for :meth:`CommandStream.write`.
        Leaving a ``with`` block (or ``close()``) before the end kills the
        command, unless ``detach``. ``timeout`` as in :meth:`run`.
        """
        argv = _protocol.normalize_command(command)
        return CommandStream(self._sandbox, argv, timeout, stdin, env, cwd, detach)


class CommandStream:
    """A running command: iterate it for output, then read ``exit_code``.

    The connection opens on the first ``next()`` (or ``with``); closing it
    early kills the command unless it was started detached.
    """

    def __init__(
        self,
        sandbox: Sandbox,
        argv: builtins.list[str],
        timeout: float | None,
        stdin: Source | bool | None,
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
        self._ws: websocket.WebSocket | None = None
        self._v5 = True
        self._reader = ExecReader()
        self._pending: collections.deque[ExecEvent] = collections.deque()
        self._deadline: float | None = None
        self._feeder: threading.Thread | None = None
        self._feed_error: BaseException | None = None
        # Held by whoever uses the connection (the reader, the stdin feeder,
        # close): OpenSSL objects are not safe for concurrent use, and a
        # read racing a write loses data or reads a spurious end of stream.
        self._io = threading.Lock()
        self._closed = False
        #: The exit code, once the command ended.
        self.exit_code: int | None = None
        #: The server's word on how it ended (empty on success).
        self.message = ""

    # --- connection -------------------------------------------------------

    def _open(self) -> websocket.WebSocket:
        if self._ws is not None:
            return self._ws
        if self._closed:
            raise ExecError("the command's stream is closed")
        sb = self._sandbox
        path = _protocol.access_path(sb.namespace, sb.name, "exec", self._query)
        ws = sb._access(lambda: sb.client.websocket(path, timeout=sb.client.request_timeout))
        self._ws = ws
        self._v5 = ws.getsubprotocol() != _protocol.PROTOCOLS[1]
        if self._timeout is not None:
            self._deadline = time.monotonic() + self._timeout + TIMEOUT_GRACE
        ws.settimeout(None)
        source = self._stdin
        if source is not None and source is not False and source is not True:
            self._feeder = threading.Thread(
                target=self._feed, args=(ws, source), name="fast-sandbox-stdin", daemon=True
            )
            self._feeder.start()
        return ws

    def _feed(self, ws: websocket.WebSocket, source: Source) -> None:
        try:
            for chunk in _protocol.iter_chunks(source):
                if self._closed:
                    return
                self._send(ws, _protocol.stdin_message(chunk))
            if self._v5:
                self._send(ws, _protocol.close_stdin_message())
        except (OSError, websocket.WebSocketException):
            # The command ended, or stopped reading: as a pipe, input is dropped.
            return
        except BaseException as e:  # noqa: BLE001 - reported by the reading side
            self._feed_error = e
            self._abort()

    def write(self, data: bytes | str) -> None:
        """Sends ``data`` to the command's stdin (started with ``stdin=True``)."""
        if self._stdin is not True:
            raise ValueError("write() needs a command started with stdin=True")
        ws = self._open()
        for chunk in _protocol.iter_chunks(data):
            self._send(ws, _protocol.stdin_message(chunk))

    def close_stdin(self) -> None:
        """Closes the command's stdin: it reads end of file (v5 protocol only)."""
        if self._stdin is not True:
            raise ValueError("close_stdin() needs a command started with stdin=True")
        ws = self._open()
        if not self._v5:
            raise ExecError("the server speaks v4.channel.k8s.io, which cannot close stdin")
        self._send(ws, _protocol.close_stdin_message())

    def _send(self, ws: websocket.WebSocket, payload: bytes) -> None:
        """Sends one binary message without ever blocking while holding the
        connection: the reader must keep draining output, or a command that
        writes while it reads would stall both directions."""
        message = websocket.ABNF.create_frame(payload, websocket.ABNF.OPCODE_BINARY)
        frame = memoryview(message.format())
        while frame:
            if self._closed:
                raise websocket.WebSocketConnectionClosedException("the command's stream is closed")
            with self._io:
                sock = ws.sock
                if sock is None:
                    raise websocket.WebSocketConnectionClosedException("the connection is closed")
                sock.settimeout(0.0)
                try:
                    sent = sock.send(frame)
                except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                    sent = 0
            if sent:
                frame = frame[sent:]
            else:
                select.select([], [sock], [], IO_TURN)

    def _abort(self) -> None:
        ws = self._ws
        if ws is not None:
            with self._io, contextlib.suppress(Exception):  # closing a broken socket
                ws.shutdown()

    def close(self) -> None:
        """Ends the exchange; a command still running is killed unless detached."""
        if self._closed:
            return
        self._closed = True
        ws = self._ws
        if ws is None:
            return
        # A reader blocked without a deadline holds the connection: shut it
        # down under it, which is what wakes that reader.
        held = self._io.acquire(timeout=10 * IO_TURN)
        try:
            if self._reader.status is None or not held:
                ws.shutdown()
            else:
                ws.close(timeout=1)
        except Exception:  # noqa: BLE001 - closing a broken socket
            pass
        finally:
            if held:
                self._io.release()

    def __enter__(self) -> CommandStream:
        self._open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- output -----------------------------------------------------------

    def __iter__(self) -> CommandStream:
        return self

    def __next__(self) -> ExecEvent:
        while True:
            if self._pending:
                return self._pending.popleft()
            status = self._reader.status
            if status is not None:
                self.close()
                self._finish(status)
                raise StopIteration
            self._pending.extend(self._reader.feed(self._receive()))

    def _receive(self) -> bytes:
        ws = self._open()
        # With stdin to send, hold the connection one short turn at a time
        # (an unfinished frame is resumed on the next turn); otherwise block.
        shared = self._stdin is not None and self._stdin is not False
        while True:
            wait: float | None = IO_TURN if shared else None
            if self._deadline is not None:
                remaining = self._deadline - time.monotonic()
                if remaining <= 0:
                    self._timed_out()
                wait = remaining if wait is None else min(wait, remaining)
            try:
                with self._io:
                    ws.settimeout(wait)
                    opcode, data = ws.recv_data()
                break
            except websocket.WebSocketTimeoutException:
                continue
            except (OSError, websocket.WebSocketException) as e:
                self.close()
                if self._feed_error is not None:
                    raise self._feed_error from None
                raise ExecError(f"the command's stream broke: {e}") from e
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            self.close()
            if self._feed_error is not None:
                raise self._feed_error
            raise ExecError(
                "the command's stream ended without an exit status (the connection or the "
                "server went away)"
            )
        return bytes(data) if opcode == websocket.ABNF.OPCODE_BINARY else b""

    def _timed_out(self) -> NoReturn:
        self.close()
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

    def wait(self) -> int:
        """Reads (and drops) the rest of the output; returns the exit code."""
        for _ in self:
            pass
        return self.exit_code if self.exit_code is not None else 0


class Files:
    """Files inside a sandbox (``sandbox.files``), reached by its agent with
    nothing needed in the image (no shell, no tar). Paths are absolute inside
    the sandbox and never reach outside it. Reading needs ``get`` on
    ``sandboxes/files``; writing ``update``, making directories ``create``,
    removing ``delete``."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._sandbox = sandbox

    def _path(self, path: str, op: str | None, **extra: str) -> str:
        sb = self._sandbox
        return _protocol.access_path(
            sb.namespace, sb.name, "files", _protocol.files_query(path, op, **extra)
        )

    def _request(self, method: str, path: str, **kwargs: Any) -> urllib3.BaseHTTPResponse:
        client = self._sandbox.client
        replayable = isinstance(kwargs.get("body"), (bytes, type(None)))
        return self._sandbox._access(
            lambda: client.request(method, path, **kwargs), retry=replayable
        )

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        client = self._sandbox.client
        replayable = isinstance(kwargs.get("body"), (bytes, type(None)))
        return self._sandbox._access(
            lambda: client.request_json(method, path, **kwargs), retry=replayable
        )

    def read(self, path: str) -> bytes:
        """The bytes of file ``path``."""
        return b"".join(self.iter_read(path))

    def read_text(self, path: str, encoding: str = "utf-8") -> str:
        """The text of file ``path``."""
        return self.read(path).decode(encoding)

    def iter_read(self, path: str, chunk_size: int = READ_CHUNK) -> Iterator[bytes]:
        """The bytes of file ``path`` as they arrive, never held whole."""
        resp = self._request("GET", self._path(path, "read"))
        return _chunks(resp, chunk_size)

    def download(self, path: str, dest: str | os.PathLike[str] | IO[bytes]) -> int:
        """Streams file ``path`` into local ``dest`` (a path or a binary file);
        returns the bytes written."""
        n = 0
        if isinstance(dest, (str, os.PathLike)):
            with open(dest, "wb") as f:
                return self.download(path, f)
        for chunk in self.iter_read(path):
            dest.write(chunk)
            n += len(chunk)
        return n

    def write(self, path: str, data: Source, *, mode: int | None = None) -> FileInfo:
        """Creates or replaces file ``path`` with ``data`` (bytes, text, a binary
        file object or an iterable of chunks, streamed); ``mode`` like ``0o755``
        (``0o644`` by default). Missing parent directories are an error: see
        :meth:`mkdir`."""
        body: bytes | Iterator[bytes]
        if isinstance(data, str):
            body = data.encode("utf-8")
        elif isinstance(data, (bytes, bytearray, memoryview)):
            body = bytes(data)
        else:
            body = _protocol.iter_chunks(data, READ_CHUNK)
        return self._put(path, body, None, mode)

    def _put(
        self, path: str, body: bytes | Iterator[bytes], length: int | None, mode: int | None
    ) -> FileInfo:
        extra = {"mode": format(mode, "o")} if mode is not None else {}
        answer = self._json(
            "PUT",
            self._path(path, "write", **extra),
            body=body,
            length=length,
            content_type="application/octet-stream",
        )
        return FileInfo.from_dict(answer)

    def upload(
        self, local: str | os.PathLike[str], path: str, *, mode: int | None = None
    ) -> FileInfo:
        """Copies local file ``local`` to ``path``, streamed, keeping its mode
        unless ``mode`` is given."""
        with open(local, "rb") as f:
            st = os.fstat(f.fileno())
            if mode is None:
                mode = st.st_mode & 0o7777
            length = _declared_length(st)
            if length is None:
                return self.write(path, f, mode=mode)
            # Declared, so an agent refuses a file past its limit before it
            # is sent; exactly that many bytes are sent.
            return self._put(path, _exactly(f, length, local), length, mode)

    def stat(self, path: str) -> FileInfo:
        """What ``path`` is (a symlink is not followed); raises
        :class:`~fast_sandbox.errors.PathNotFoundError` if nothing is there."""
        return FileInfo.from_dict(self._json("GET", self._path(path, "stat")))

    def exists(self, path: str) -> bool:
        """Whether anything is at ``path``."""
        try:
            self.stat(path)
        except FileNotFoundError:
            return False
        return True

    def list(self, path: str = "/") -> builtins.list[FileInfo]:
        """The entries of directory ``path``, sorted by name."""
        answer = self._json("GET", self._path(path, "list"))
        return [FileInfo.from_dict(i) for i in answer.get("items") or ()]

    def mkdir(self, path: str, *, mode: int | None = None) -> FileInfo:
        """Creates directory ``path`` and any missing parents (``mkdir -p``)."""
        extra = {"mode": format(mode, "o")} if mode is not None else {}
        return FileInfo.from_dict(self._json("POST", self._path(path, "mkdir", **extra)))

    def remove(self, path: str, *, recursive: bool = False) -> FileInfo:
        """Removes ``path`` (a directory with its contents only if ``recursive``)."""
        extra = {"recursive": "true"} if recursive else {}
        return FileInfo.from_dict(self._json("DELETE", self._path(path, None, **extra)))

    def tar(self, path: str) -> Iterator[bytes]:
        """An uncompressed tar stream of ``path``'s tree (entries under its base name)."""
        return _chunks(self._request("GET", self._path(path, "tar")))

    def untar(self, path: str, archive: Source) -> FileInfo:
        """Extracts a tar stream into directory ``path`` (created if missing)."""
        body: bytes | Iterator[bytes] = (
            bytes(archive)
            if isinstance(archive, (bytes, bytearray, memoryview))
            else _protocol.iter_chunks(archive, READ_CHUNK)
        )
        return FileInfo.from_dict(
            self._json(
                "PUT", self._path(path, "untar"), body=body, content_type="application/x-tar"
            )
        )


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


def _declared_length(st: os.stat_result) -> int | None:
    """The length an upload of a file declares: a regular file's size; None
    (sent chunked) for anything else, and for an empty regular file, which
    may be a kernel file whose size says nothing (``/proc``, ``/sys``)."""
    return st.st_size if stat.S_ISREG(st.st_mode) and st.st_size > 0 else None


def _exactly(f: IO[bytes], length: int, name: object) -> Iterator[bytes]:
    """The first ``length`` bytes of ``f``, in chunks; a file that ends sooner
    (it shrank during the upload) is an error, one that grew is cut."""
    left = length
    while left > 0:
        chunk = f.read(min(READ_CHUNK, left))
        if not chunk:
            raise FastSandboxError(
                f"{name} shrank during the upload: {left} of {length} bytes missing"
            )
        left -= len(chunk)
        yield chunk


def _chunks(resp: Any, size: int = READ_CHUNK) -> Iterator[bytes]:
    """The body of a streamed response as it arrives; the connection is
    released at the end or when the consumer stops early."""
    complete = False
    try:
        for chunk in resp.stream(size, decode_content=True):
            if chunk:
                yield bytes(chunk)
        complete = True
    except urllib3.exceptions.HTTPError as e:
        raise ServerError(f"the stream broke: {e}") from e
    finally:
        if not complete:
            # Left early (a followed log, a partial read): the rest of the
            # answer is still coming, so the connection cannot be reused.
            resp.close()
        resp.release_conn()


def _text_lines(chunks: Iterator[bytes]) -> Iterator[str]:
    """UTF-8 lines (with their newline) of a byte stream, the last one possibly without."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    buf = ""
    for chunk in chunks:
        buf += decoder.decode(chunk)
        *lines, buf = buf.split("\n")
        for line in lines:
            yield line + "\n"
    buf += decoder.decode(b"", final=True)
    if buf:
        yield buf
