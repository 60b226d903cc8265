"""Byte streams for asyncio: what feeds stdin or a file, cut in bounded
pieces, and streamed response bodies read as they arrive.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator

import aiohttp

from .. import _protocol
from .._protocol import Source
from .._streams import READ_CHUNK
from ..errors import ServerError

#: What feeds stdin or a file in the async API: what the sync API takes, or
#: an async iterable of chunks.
AsyncSource = Source | AsyncIterable[bytes]


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
