"""fast_sandbox.aio against the cluster: the same surface, awaited."""

from __future__ import annotations

import asyncio
import time

import pytest

from fast_sandbox import CommandTimeoutError, ForbiddenError, ImageNotPresentError
from fast_sandbox.aio import Client, Sandbox

from .conftest import BUSYBOX, Stage


def aio_client(stage: Stage, *, stranger: bool = False) -> Client:
    sync = stage.stranger if stranger else stage.tenant
    cfg = sync.configuration
    token = str(cfg.api_key["authorization"]).removeprefix("Bearer ")
    return Client.from_token(
        str(cfg.host),
        token,
        ca_cert=cfg.ssl_ca_cert,
        namespace=sync.namespace,
        verify=bool(cfg.verify_ssl),
    )


def test_the_issue_s_example_awaited(stage: Stage) -> None:
    async def main() -> None:
        async with aio_client(stage) as c:
            async with Sandbox.create(
                pool="p",
                image=BUSYBOX,
                env={"A": "1"},
                resources={"memory": "256Mi"},
                ttl_seconds=600,
                client=c,
            ) as sb:
                r = await sb.commands.run("echo hi; exit 3", timeout=10)
                assert (r.exit_code, r.stdout) == (3, "hi\n")
                times = []
                async for ev in sb.commands.stream(
                    ["sh", "-c", "for i in 1 2 3; do echo $i; sleep 1; done"]
                ):
                    times.append((time.monotonic(), ev.data))
                assert "".join(d for _, d in times) == "1\n2\n3\n"
                assert times[-1][0] - times[0][0] > 1.5
                await sb.files.write("/tmp/main.py", b"print(6*7)")
                assert await sb.files.read("/tmp/main.py") == b"print(6*7)"
                assert "main.py" in [f.name for f in await sb.files.list("/tmp")]
                assert isinstance(await sb.logs(follow=False), str)
                big = await sb.commands.run("cat", stdin=b"z" * 1_000_000)
                assert len(big.stdout_bytes) == 1_000_000
                with pytest.raises(CommandTimeoutError):
                    await sb.commands.run("sleep 30", timeout=1)
            await sb.wait_deleted(timeout=60)

    asyncio.run(main())


def test_errors_and_concurrency(stage: Stage) -> None:
    async def main() -> None:
        async with aio_client(stage) as c, aio_client(stage, stranger=True) as stranger:
            with pytest.raises(ImageNotPresentError):
                await Sandbox.create("p", "docker.io/fast-sandbox/absent:dev", client=c)
            many = await asyncio.gather(*(Sandbox.create("p", BUSYBOX, client=c) for _ in range(8)))
            try:
                outs = await asyncio.gather(
                    *(sb.commands.run(f"echo {i}") for i, sb in enumerate(many))
                )
                assert [o.stdout for o in outs] == [f"{i}\n" for i in range(8)]
                theirs = Sandbox(many[0].object, client=stranger)
                with pytest.raises(ForbiddenError):
                    await theirs.commands.run("true")
                with pytest.raises(ForbiddenError):
                    await theirs.files.read("/etc/hostname")
            finally:
                await asyncio.gather(*(sb.delete() for sb in many))

    asyncio.run(main())
