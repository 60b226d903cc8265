"""The wire of the APIs the SDK speaks, without I/O, shared by the sync and
async clients (and unit-tested on its own):

- paths of the Sandbox custom resource (``sandbox.fast.io/v1alpha1``) and of
  the access API (``subresources.sandbox.fast.io/v1alpha1``, an aggregated
  API server serving ``exec``, ``files`` and ``log`` of a sandbox);
- the exec query: ``pods/exec``'s (``command`` repeated, ``stdin``,
  ``stdout``, ``stderr``, ``tty``) plus ``env=NAME=VALUE`` repeated,
  ``workingDir``, ``timeoutSeconds`` and ``detach``;
- the Kubernetes streaming protocol over WebSocket (``v5.channel.k8s.io``,
  ``v4.channel.k8s.io``): each binary message starts with one byte naming
  its channel (0 stdin, 1 stdout, 2 stderr, 3 status, 4 resize, 255 close
  in v5), and the status channel carries a ``metav1.Status`` whose
  ``details.causes`` hold the exit code, as the kubelet sends it for
  ``pods/exec``.
"""

from __future__ import annotations

import codecs
import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any, Literal
from urllib.parse import quote

from .models import ExecEvent

GROUP = "sandbox.fast.io"
VERSION = "v1alpha1"
PLURAL = "sandboxes"
POOL_PLURAL = "sandboxpools"
SUBRESOURCE_GROUP = "subresources.sandbox.fast.io"

#: Subprotocols offered, preferred first: v5 can close stdin (end of input).
PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io")
V5 = PROTOCOLS[0]

STDIN = 0
STDOUT = 1
STDERR = 2
STATUS = 3
RESIZE = 4
CLOSE = 255

#: Bytes of stdin sent per message: the agent's frame payload limit (64 KiB)
#: less room for the channel byte, so the gateway never splits a message.
STDIN_CHUNK = 64 * 1024 - 1

#: Longest ``timeoutSeconds`` the access API takes (a week).
MAX_TIMEOUT_SECONDS = 604_800

#: The longest request target (path and query) the access server parses;
#: an exec's command, environment and working directory travel in it.
MAX_REQUEST_TARGET = 65_534

#: What the agent's status message starts with when it killed a command at
#: its timeout (exit code 124).
_TIMEOUT_MESSAGE = "killed after the timeout"


def quote_value(value: str) -> str:
    """Percent-encodes one query value: everything but unreserved characters and ``/``.

    ``+`` is encoded, since the server reads a bare ``+`` as a space.
    """
    return quote(value, safe="-._~/")


def encode_query(pairs: Iterable[tuple[str, str]]) -> str:
    """A query string of ``pairs`` in order (keys may repeat)."""
    return "&".join(f"{quote_value(k)}={quote_value(v)}" for k, v in pairs)


def sandboxes_path(namespace: str | None) -> str:
    """The collection path of Sandboxes, in one namespace or all."""
    if namespace is None:
        return f"/apis/{GROUP}/{VERSION}/{PLURAL}"
    return f"/apis/{GROUP}/{VERSION}/namespaces/{quote(namespace, safe='')}/{PLURAL}"


def access_path(
    namespace: str, name: str, subresource: str, query: Iterable[tuple[str, str]] = ()
) -> str:
    """The access API path of ``subresource`` (``exec``, ``files``, ``log``) of a sandbox."""
    path = (
        f"/apis/{SUBRESOURCE_GROUP}/{VERSION}/namespaces/{quote(namespace, safe='')}"
        f"/sandboxes/{quote(name, safe='')}/{subresource}"
    )
    q = encode_query(query)
    target = f"{path}?{q}" if q else path
    if len(target) > MAX_REQUEST_TARGET:
        what = "the command, env and cwd take" if subresource == "exec" else "the request takes"
        raise ValueError(
            f"{what} {len(target)} bytes encoded in the request's URI, past the "
            f"{MAX_REQUEST_TARGET} the access API takes: pass large data as stdin or upload it"
        )
    return target


def normalize_command(command: str | Sequence[str]) -> list[str]:
    """argv for ``command``: a string runs through ``sh -c``, a sequence is argv as is."""
    if isinstance(command, str):
        if not command.strip():
            raise ValueError("command is empty")
        return ["sh", "-c", command]
    argv = [str(a) for a in command]
    if not argv:
        raise ValueError("command is empty: give the program and its arguments")
    return argv


def timeout_seconds(timeout: float | None) -> int | None:
    """The ``timeoutSeconds`` for a timeout in seconds: rounded up, as the server counts whole
    seconds (at least 1, at most a week)."""
    if timeout is None:
        return None
    if timeout <= 0 or math.isnan(timeout):
        raise ValueError(f"timeout must be positive, not {timeout!r}")
    if timeout > MAX_TIMEOUT_SECONDS:
        raise ValueError(
            f"timeout must be at most {MAX_TIMEOUT_SECONDS} s (a week), not {timeout!r}"
        )
    return max(1, math.ceil(timeout))


def exec_query(
    command: Sequence[str],
    *,
    stdin: bool = False,
    env: Mapping[str, str] | None = None,
    working_dir: str | None = None,
    timeout: float | None = None,
    detach: bool = False,
) -> list[tuple[str, str]]:
    """The query of an exec, in the order the CLI sends it."""
    if not command:
        raise ValueError("command is empty")
    q: list[tuple[str, str]] = [("command", c) for c in command]
    q += [
        ("stdin", _flag(stdin)),
        ("stdout", "true"),
        ("stderr", "true"),
        ("tty", "false"),
    ]
    for k, v in (env or {}).items():
        if not k or "=" in k:
            raise ValueError(f"environment variable name {k!r} is empty or contains '='")
        q.append(("env", f"{k}={v}"))
    if working_dir:
        q.append(("workingDir", working_dir))
    seconds = timeout_seconds(timeout)
    if seconds is not None:
        q.append(("timeoutSeconds", str(seconds)))
    if detach:
        q.append(("detach", "true"))
    return q


def files_query(path: str, op: str | None, **extra: str) -> list[tuple[str, str]]:
    """The query of a files call: ``path``, ``op`` and any further parameters."""
    if not path.startswith("/"):
        raise ValueError(f"{path!r} is not an absolute path inside the sandbox")
    q = [("path", path)]
    if op:
        q.append(("op", op))
    q += [(k, v) for k, v in extra.items()]
    return q


def log_query(stream: str, follow: bool) -> list[tuple[str, str]]:
    """The query of a log read."""
    if stream not in ("stdout", "stderr"):
        raise ValueError(f"stream must be 'stdout' or 'stderr', not {stream!r}")
    return [("stream", stream), ("follow", _flag(follow))]


def _flag(b: bool) -> str:
    return "true" if b else "false"


def websocket_url(host: str, path: str) -> str:
    """The ``ws(s)://`` URL of ``path`` on an ``http(s)://`` API host."""
    if host.startswith("https://"):
        host = "wss://" + host[len("https://") :]
    elif host.startswith("http://"):
        host = "ws://" + host[len("http://") :]
    return host.rstrip("/") + path


# --- Messages -------------------------------------------------------------


def stdin_message(data: bytes) -> bytes:
    """A message carrying ``data`` to the command's stdin."""
    return bytes([STDIN]) + data


def close_stdin_message() -> bytes:
    """The v5 message that closes stdin (the command reads end of file)."""
    return bytes([CLOSE, STDIN])


def resize_message(width: int, height: int) -> bytes:
    """A terminal resize message, as kubectl sends it."""
    return bytes([RESIZE]) + json.dumps({"Width": width, "Height": height}).encode()


def split_message(message: bytes) -> tuple[int, bytes]:
    """The channel and payload of a received message (channel -1 when empty)."""
    if not message:
        return -1, b""
    return message[0], message[1:]


@dataclass(frozen=True)
class ExitStatus:
    """How an exec ended, read from the status channel.

    ``exit_code`` is ``None`` when the server reported a failure that is not
    the command's exit (the stream was cut off, an internal error).
    """

    exit_code: int | None
    message: str = ""
    reason: str = ""
    timed_out: bool = False


def parse_exit_status(payload: bytes | str) -> ExitStatus:
    """Reads the ``metav1.Status`` of the status channel.

    ``Success`` is exit code 0; a ``Failure`` carries the code as the
    ``message`` of the cause whose reason is ``ExitCode``, as kubectl reads
    it. A command the server killed at its timeout is exit code 124 with a
    message saying so.
    """
    try:
        status: Any = json.loads(payload)
    except ValueError:
        text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else payload
        return ExitStatus(None, f"the exec status is not JSON: {text[:200]!r}", "Malformed")
    if not isinstance(status, dict):
        return ExitStatus(None, "the exec status is not an object", "Malformed")
    message = str(status.get("message") or "")
    reason = str(status.get("reason") or "")
    if status.get("status") == "Success":
        return ExitStatus(0, message, reason)
    code: int | None = None
    details = status.get("details")
    causes = details.get("causes") if isinstance(details, dict) else None
    for cause in causes if isinstance(causes, list) else ():
        if isinstance(cause, dict) and cause.get("reason") == "ExitCode":
            try:
                code = int(str(cause.get("message")))
            except ValueError:
                code = None
            break
    timed_out = code == 124 and message.startswith(_TIMEOUT_MESSAGE)
    return ExitStatus(code, message or "the exec failed without a message", reason, timed_out)


class OutputDecoder:
    """Turns output messages into text per stream, UTF-8 decoded incrementally.

    A multi-byte character split across two messages is emitted whole with
    the second; what is left undecodable at the end comes out on
    :meth:`flush` with replacement characters.
    """

    def __init__(self) -> None:
        self._decoders = {
            STDOUT: codecs.getincrementaldecoder("utf-8")("replace"),
            STDERR: codecs.getincrementaldecoder("utf-8")("replace"),
        }

    def decode(self, channel: int, data: bytes) -> str:
        """The text ``data`` completes on ``channel`` (1 stdout, 2 stderr)."""
        return self._decoders[channel].decode(data)

    def flush(self) -> list[tuple[Literal["stdout", "stderr"], str]]:
        """Whatever is left undecoded, per stream, at the end."""
        out: list[tuple[Literal["stdout", "stderr"], str]] = []
        for channel, name in ((STDOUT, "stdout"), (STDERR, "stderr")):
            rest = self._decoders[channel].decode(b"", final=True)
            if rest:
                out.append((name, rest))  # type: ignore[arg-type]
        return out


def stream_name(channel: int) -> Literal["stdout", "stderr"]:
    """``stdout`` or ``stderr`` for an output channel."""
    return "stdout" if channel == STDOUT else "stderr"


# --- Input ----------------------------------------------------------------

#: What can feed a command's stdin or a file's content: bytes, text (UTF-8),
#: a binary file object, or an iterable of byte chunks.
Source = bytes | bytearray | memoryview | str | IO[bytes] | Iterable[bytes]


def iter_chunks(source: Source, chunk: int = STDIN_CHUNK) -> Iterator[bytes]:
    """The bytes of ``source`` in pieces of at most ``chunk`` bytes, read lazily.

    A file object is read ``chunk`` bytes at a time, so a large input is never
    held whole.
    """
    if isinstance(source, str):
        source = source.encode("utf-8")
    if isinstance(source, (bytes, bytearray, memoryview)):
        view = memoryview(source)
        for i in range(0, len(view), chunk):
            yield bytes(view[i : i + chunk])
        return
    read = getattr(source, "read", None)
    if callable(read):
        while True:
            piece = read(chunk)
            if not piece:
                return
            if isinstance(piece, str):
                piece = piece.encode("utf-8")
            yield from iter_chunks(bytes(piece), chunk)
        return
    for piece in source:
        if isinstance(piece, str):
            piece = piece.encode("utf-8")
        if piece:
            yield from iter_chunks(bytes(piece), chunk)


class ExecReader:
    """Reads the messages of an exec: output as :class:`~fast_sandbox.models.ExecEvent`
    values, then the exit status. Transport-free, so the sync and async
    streams share it."""

    def __init__(self) -> None:
        self._decoder = OutputDecoder()
        #: Set once the status message arrived; the exchange is over then.
        self.status: ExitStatus | None = None

    def feed(self, message: bytes) -> list[ExecEvent]:
        """The output events of one received message (none for a status or an
        unknown channel)."""
        channel, payload = split_message(message)
        if channel in (STDOUT, STDERR):
            return [
                ExecEvent(stream_name(channel), self._decoder.decode(channel, payload), payload)
            ]
        if channel == STATUS and self.status is None:
            self.status = parse_exit_status(payload)
            return [ExecEvent(name, text) for name, text in self._decoder.flush()]
        return []
