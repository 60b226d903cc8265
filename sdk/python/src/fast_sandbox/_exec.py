"""Commands run in a sandbox, synchronously: ``sandbox.commands`` and the
stream of one running command over the access API's exec websocket.

Split from :mod:`fast_sandbox.sandbox`, which exports it, to keep one
concept per file.
"""

from __future__ import annotations

import builtins
import collections
import contextlib
import select
import ssl
import threading
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, NoReturn

import websocket

from . import _protocol
from ._protocol import ExecReader, Source
from .errors import CommandTimeoutError, ExecError
from .models import CommandResult, ExecEvent

if TYPE_CHECKING:
    from .sandbox import Sandbox

#: Seconds a command's stream may outlast its timeout before the client gives
#: up on hearing the server's verdict and cuts the connection itself.
TIMEOUT_GRACE = 3.0
#: How long one turn at the connection lasts while stdin may be sent from
#: another thread: reads and writes take turns, because a TLS connection
#: must never be read and written by two threads at once.
IO_TURN = 0.02
#: Default seconds ``commands.run`` lets a command run.
RUN_TIMEOUT = 60.0


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
