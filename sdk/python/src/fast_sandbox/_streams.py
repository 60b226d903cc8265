"""Streamed response bodies of the access API (files, logs), read as they
arrive and never held whole.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import urllib3

from .errors import ServerError

#: Bytes per read of a streamed file or log.
READ_CHUNK = 256 * 1024


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
