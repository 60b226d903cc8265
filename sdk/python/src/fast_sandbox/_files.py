"""Files inside a sandbox, synchronously: ``sandbox.files``, reached through
the access API's ``files`` subresource.

Split from :mod:`fast_sandbox.sandbox`, which exports it, to keep one
concept per file.
"""

from __future__ import annotations

import builtins
import os
import stat
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING, Any

import urllib3

from . import _protocol
from ._protocol import Source
from ._streams import READ_CHUNK, _chunks
from .errors import FastSandboxError
from .models import FileInfo

if TYPE_CHECKING:
    from .sandbox import Sandbox


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
