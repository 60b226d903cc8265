"""The asyncio API against the scripted servers (fakeapi), same surface as sync."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

import fast_sandbox._exec as exec_module
from fast_sandbox import (
    CommandTimeoutError,
    ForbiddenError,
    ImageNotPresentError,
    NoCapacityError,
    OOMKilledError,
    PathNotFoundError,
)
from fast_sandbox.aio import Client, Sandbox

from .fakeapi import Server


def run(server: Server, body: Callable[[Client], Awaitable[None]]) -> None:
    async def main() -> None:
        async with Client.from_token(server.url, "token", namespace="ns") as c:
            await body(c)

    asyncio.run(main())


def deleted(server: Server) -> list[str]:
    return [o["metadata"]["name"] for _, k, o in server.state.events if k == "DELETED"]


def test_the_issue_s_example(server: Server) -> None:
    async def body(c: Client) -> None:
        async with Sandbox.create(
            pool="p",
            image="ok",
            env={"A": "1"},
            resources={"memory": "256Mi"},
            ttl_seconds=600,
            client=c,
        ) as sb:
            r = await sb.commands.run("echo hi; exit 3", timeout=10)
            assert (r.exit_code, r.stdout) == (3, "hi\n")
            seen = [(ev.stream, ev.data) async for ev in sb.commands.stream(["sh", "-c", "ticks"])]
            assert seen[0] == ("stdout", "1\n")
            await sb.files.write("/tmp/main.py", b"print(6*7)")
            assert await sb.files.read("/tmp/main.py") == b"print(6*7)"
            assert [f.name for f in await sb.files.list("/tmp")] == ["main.py"]
            assert await sb.logs(follow=False) == "line one\nline two\ntail"
            name = sb.name
        assert name in deleted(server)

    run(server, body)


def test_await_create_and_errors(server: Server) -> None:
    async def body(c: Client) -> None:
        sb = await Sandbox.create("p", "ok", client=c)
        assert sb.status.ready
        assert (await Sandbox.get(sb.name, client=c)).uid == sb.uid
        assert len(await Sandbox.list(client=c, pool="p")) == 1
        with pytest.raises(ImageNotPresentError, match="not present"):
            await Sandbox.create("p", "missing", client=c)
        with pytest.raises(NoCapacityError):
            await Sandbox.create("p", "full", timeout=0.2, client=c)
        secret = Sandbox({"metadata": {"name": "secret", "namespace": "ns"}}, client=c)
        with pytest.raises(ForbiddenError, match="sandboxes/exec"):
            await secret.commands.run("true")
        with pytest.raises(PathNotFoundError):
            await sb.files.stat("/nope")
        server.state.fail_sandbox(sb.name, "OOMKilled", 137)
        assert (await sb.wait_exit(timeout=5)).reason == "OOMKilled"
        with pytest.raises(OOMKilledError):
            await sb.commands.run("true")
        await sb.delete()
        assert sb.name in deleted(server)

    run(server, body)


def test_stdin_in_every_shape(server: Server) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for c in (b"as", b"ync"):
            yield c

    async def body(c: Client) -> None:
        sb = await Sandbox.create("p", "ok", client=c)
        data = bytes(range(256)) * 1000
        assert (await sb.commands.run("cat", stdin=data)).stdout_bytes == data
        assert (await sb.commands.run("cat", stdin=io.BytesIO(b"file"))).stdout == "file"
        assert (await sb.commands.run("cat", stdin=chunks())).stdout == "async"
        async with sb.commands.stream("cat", stdin=True) as proc:
            await proc.write(b"typed")
            await proc.close_stdin()
            assert [e.data async for e in proc] == ["typed"]
        assert proc.exit_code == 0
        await sb.files.write("/tmp/a", chunks())
        assert await sb.files.read("/tmp/a") == b"async"

    run(server, body)


def test_timeouts(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(exec_module, "TIMEOUT_GRACE", 0.2)

    async def body(c: Client) -> None:
        sb = await Sandbox.create("p", "ok", client=c)
        with pytest.raises(CommandTimeoutError) as e:
            await sb.commands.run("slow", timeout=1)
        assert e.value.result is not None
        assert e.value.result.stdout == "partial\n"
        with pytest.raises(CommandTimeoutError, match="did not end"):
            await sb.commands.run("hang", timeout=0.2)

    run(server, body)


def test_twenty_tasks_create_at_once(server: Server) -> None:
    async def body(c: Client) -> None:
        made = await asyncio.gather(*(Sandbox.create("p", "ok", client=c) for _ in range(20)))
        assert len({s.name for s in made}) == 20

    run(server, body)
