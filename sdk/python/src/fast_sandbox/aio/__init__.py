"""Fast Sandbox for asyncio: the surface of :mod:`fast_sandbox`, awaited.

::

    from fast_sandbox.aio import Sandbox

    async with Sandbox.create(pool="default-pool", image=IMAGE) as sb:
        r = await sb.commands.run("echo hi; exit 3")
        async for ev in sb.commands.stream(["sh", "-c", "echo 1; sleep 1; echo 2"]):
            print(ev.stream, ev.data)
        await sb.files.write("/tmp/main.py", b"print(6*7)")

It is built on ``kubernetes.aio``, the asyncio client that the official
``kubernetes`` package ships next to its sync one (same configuration
loading, same models), and on aiohttp, which that client uses. Errors and
values are the sync API's: ``fast_sandbox.errors`` and
``fast_sandbox.models``.
"""

from .client import Client, default_client, set_default_client
from .sandbox import Commands, CommandStream, Files, Sandbox

__all__ = [
    "Client",
    "default_client",
    "set_default_client",
    "Sandbox",
    "Commands",
    "CommandStream",
    "Files",
]
