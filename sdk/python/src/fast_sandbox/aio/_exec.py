"""Commands run in a sandbox, for asyncio: ``sandbox.commands`` and the
stream of one running command, as :mod:`fast_sandbox._exec` with ``await``.

Split from :mod:`fast_sandbox.aio.sandbox`, which exports it, to keep one
concept per file.
"""

from __future__ import annotations

import asyncio
import builtins
import collections
import contextlib
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, NoReturn

import aiohttp

from .. import _exec as _sync
from .. import _protocol
from .._exec import RUN_TIMEOUT
from .._protocol import ExecReader
from ..errors import CommandTimeoutError, ExecError
from ..models import CommandResult, ExecEvent
from ._streams import AsyncSource, _achunks

if TYPE_CHECKING:
    from .sandbox import Sandbox


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
