"""Files inside a sandbox, for asyncio: ``sandbox.files``, as
:mod:`fast_sandbox._files` with ``await``.

Split from :mod:`fast_sandbox.aio.sandbox`, which exports it, to keep one
concept per file.
"""

from __future__ import annotations

import asyncio
import builtins
import os
from collections.abc import AsyncIterable, AsyncIterator
from typing import IO, TYPE_CHECKING, Any

import aiohttp

from .. import _protocol
from .._streams import READ_CHUNK
from ..models import FileInfo
from ._streams import AsyncSource, _achunks, _chunks

if TYPE_CHECKING:
    from .sandbox import Sandbox


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
