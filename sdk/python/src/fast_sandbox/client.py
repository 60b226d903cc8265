"""The connection to one cluster: configuration through the official
``kubernetes`` client (kubeconfig and its contexts, in-cluster
ServiceAccount, or an ``ApiClient`` you built), a default namespace, and
the few raw calls the SDK needs beyond the generated API: streamed
requests to the access API, WebSocket upgrades for exec, and one shared
watch of Sandboxes per namespace.

Most programs never build one: ``Sandbox.create(...)`` uses
:func:`default_client`, which reads the kubeconfig as kubectl does (or the
pod's ServiceAccount inside a cluster).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import EllipsisType
from typing import Any, TypeVar

import kubernetes
import urllib3
import websocket
from kubernetes.client import ApiClient, Configuration, CustomObjectsApi
from kubernetes.client.exceptions import ApiException

from . import _config, _protocol
from ._version import __version__
from ._watch import WatchState, parse_event
from .errors import (
    ApiError,
    ConfigError,
    FastSandboxError,
    ServerError,
    error_from_status,
)

__all__ = ["Client", "default_client", "set_default_client"]

T = TypeVar("T")

USER_AGENT = f"fast-sandbox-python/{__version__}"


class Client:
    """A cluster to run sandboxes in, and the namespace used when a call names none.

    Build one with :meth:`from_kubeconfig`, :meth:`in_cluster`,
    :meth:`from_token` or :meth:`auto` (what :func:`default_client` uses), or
    wrap an ``kubernetes.client.ApiClient`` you configured yourself. It is
    thread-safe; share one per process. ``close()`` (or ``with``) ends its
    watches and connections.
    """

    def __init__(
        self,
        api_client: ApiClient,
        *,
        namespace: str = "default",
        request_timeout: float = 30.0,
    ) -> None:
        self.api_client = api_client
        self.namespace = namespace
        #: Seconds a plain API call may take (watches and streams have their own bounds).
        self.request_timeout = request_timeout
        self.custom = CustomObjectsApi(api_client)
        api_client.user_agent = USER_AGENT
        self._watchers: dict[str, _NamespaceWatch] = {}
        self._lock = threading.Lock()
        self._closed = False

    # --- construction -----------------------------------------------------

    @classmethod
    def from_kubeconfig(
        cls,
        path: str | None = None,
        *,
        context: str | None = None,
        namespace: str | None = None,
        request_timeout: float = 30.0,
    ) -> Client:
        """From a kubeconfig (``path``, else ``$KUBECONFIG``, else ``~/.kube/config``).

        ``context`` picks a context (the current one by default); the namespace
        is ``namespace``, else the context's, else ``default``.
        """
        file = _config.kubeconfig_path(path)
        if file is None:
            raise ConfigError("no kubeconfig: set KUBECONFIG or create ~/.kube/config")
        try:
            contexts, current = kubernetes.config.list_kube_config_contexts(config_file=file)
            ns = namespace or _config.context_namespace(contexts, current, context)
            cfg = Configuration()
            kubernetes.config.load_kube_config(
                config_file=file, context=context, client_configuration=cfg, persist_config=False
            )
        except kubernetes.config.ConfigException as e:
            raise ConfigError(f"kubeconfig {file}: {e}") from e
        return cls(_api_client(cfg), namespace=ns, request_timeout=request_timeout)

    @classmethod
    def in_cluster(cls, *, namespace: str | None = None, request_timeout: float = 30.0) -> Client:
        """From the pod's ServiceAccount; the namespace defaults to the pod's."""
        cfg = Configuration()
        try:
            kubernetes.config.load_incluster_config(client_configuration=cfg)
        except kubernetes.config.ConfigException as e:
            raise ConfigError(f"not in a cluster: {e}") from e
        ns = namespace or _config.service_account_namespace()
        return cls(_api_client(cfg), namespace=ns, request_timeout=request_timeout)

    @classmethod
    def from_token(
        cls,
        host: str,
        token: str,
        *,
        ca_cert: str | None = None,
        ca_cert_data: str | None = None,
        namespace: str = "default",
        verify: bool = True,
        request_timeout: float = 30.0,
    ) -> Client:
        """From an API server URL and a bearer token (a ServiceAccount token from
        the TokenRequest API, say). ``ca_cert`` is a CA file, ``ca_cert_data``
        the PEM itself."""
        cfg = Configuration()
        cfg.host = host
        cfg.api_key = {"authorization": f"Bearer {token}"}
        cfg.verify_ssl = verify
        if ca_cert:
            cfg.ssl_ca_cert = ca_cert
        if ca_cert_data:
            cfg.ca_cert_data = ca_cert_data
        return cls(_api_client(cfg), namespace=namespace, request_timeout=request_timeout)

    @classmethod
    def auto(
        cls,
        *,
        context: str | None = None,
        namespace: str | None = None,
        request_timeout: float = 30.0,
    ) -> Client:
        """The kubeconfig if there is one (as kubectl reads it), else the pod's
        ServiceAccount when running in a cluster."""
        if _config.kubeconfig_path(None) is not None or context is not None:
            return cls.from_kubeconfig(
                context=context, namespace=namespace, request_timeout=request_timeout
            )
        if _config.in_cluster():
            return cls.in_cluster(namespace=namespace, request_timeout=request_timeout)
        raise ConfigError(
            "no cluster configuration: no kubeconfig (KUBECONFIG, ~/.kube/config) and not "
            "running in a pod"
        )

    @property
    def configuration(self) -> Configuration:
        """The ``kubernetes.client.Configuration`` in use."""
        cfg: Configuration = self.api_client.configuration
        return cfg

    @property
    def host(self) -> str:
        """The API server URL."""
        return str(self.configuration.host)

    def close(self) -> None:
        """Stops this client's watches and closes its connections."""
        with self._lock:
            self._closed = True
            watchers = list(self._watchers.values())
            self._watchers.clear()
        for w in watchers:
            w.close()
        self.api_client.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client(host={self.host!r}, namespace={self.namespace!r})"

    # --- calls ------------------------------------------------------------

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Calls a generated API method, turning its failures into the SDK's errors."""
        kwargs.setdefault("_request_timeout", self.request_timeout)
        try:
            return fn(*args, **kwargs)
        except ApiException as e:
            raise error_from_status(
                int(e.status or 0), e.body, fallback=str(e.reason or "")
            ) from None
        except urllib3.exceptions.HTTPError as e:
            raise _transport_error(self.host, e) from e

    def headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """Headers of a raw request: the client's credentials and user agent."""
        h = {"User-Agent": USER_AGENT}
        token = _config.bearer_token(self.configuration)
        if token:
            h["Authorization"] = token
        if extra:
            h.update(extra)
        return h

    def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | Iterable[bytes] | None = None,
        content_type: str | None = None,
        length: int | None = None,
        timeout: float | EllipsisType | None = ...,
        access_api: bool = True,
    ) -> urllib3.BaseHTTPResponse:
        """A raw request whose response body is left to stream; errors raised typed.

        ``timeout`` bounds each read of the answer (``...``: the client's
        ``request_timeout``; ``None``: no bound, for a followed log). A ``body``
        that is an iterable of chunks is sent as it is produced, so an upload
        is never held whole: with its ``length`` when known (the server may
        then refuse a body too large before it is sent), else chunked.
        """
        headers = self.headers({"Accept": "application/json, */*"})
        if content_type:
            headers["Content-Type"] = content_type
        chunked = body is not None and not isinstance(body, (bytes, bytearray))
        if chunked and length is not None:
            headers["Content-Length"] = str(length)
            chunked = False
        read = self.request_timeout if timeout is ... else timeout
        try:
            resp = self.api_client.rest_client.pool_manager.request(
                method,
                self.host.rstrip("/") + path,
                body=body,
                headers=headers,
                preload_content=False,
                chunked=chunked,
                timeout=urllib3.Timeout(connect=min(10.0, self.request_timeout), read=read),
                # A streamed body cannot be replayed, and a read that failed
                # may have acted: only connecting is retried.
                retries=urllib3.Retry(total=2, connect=2, read=0, redirect=0, status=0, other=0),
            )
        except urllib3.exceptions.HTTPError as e:
            # Over TLS the server's early refusal of a body reaches urllib3
            # only as the connection closing under it.
            hint = (
                f" (while sending a body of {length} bytes: an agent refuses an upload past"
                " its limit, 1 GiB unless its operator set --max-upload-bytes, by closing"
                " the connection)"
                if length is not None
                else ""
            )
            raise _transport_error(self.host, e, hint) from e
        if resp.status >= 400:
            try:
                data = resp.read(64 * 1024)
            finally:
                resp.release_conn()
            raise error_from_status(resp.status, data, access_api=access_api)
        return resp

    def call_object(self, fn: Callable[..., object], *args: Any, **kwargs: Any) -> dict[str, Any]:
        """:meth:`call` of a generated method that answers a JSON object (custom objects)."""
        answer = self.call(fn, *args, **kwargs)
        if not isinstance(answer, dict):
            raise ServerError(f"unexpected answer: {str(answer)[:200]}")
        return answer

    def request_json(self, method: str, path: str, **kwargs: Any) -> Any:
        """A raw request whose answer is JSON."""
        resp = self.request(method, path, **kwargs)
        try:
            data = resp.read()
        finally:
            resp.release_conn()
        try:
            return json.loads(data)
        except ValueError as e:
            raise ServerError(f"unexpected answer to {method} {path}: {data[:200]!r}") from e

    def websocket(self, path: str, *, timeout: float) -> websocket.WebSocket:
        """A WebSocket to ``path`` speaking the Kubernetes channel protocol (v5, else v4).

        An error answer to the upgrade (not found, forbidden, not running) is
        raised as its typed error with the server's message.
        """
        cfg = self.configuration
        ctx = _config.ssl_context(cfg)
        sslopt: dict[str, Any] = {"context": ctx}
        if getattr(cfg, "tls_server_name", None):
            sslopt["server_hostname"] = cfg.tls_server_name
        header = [f"User-Agent: {USER_AGENT}"]
        token = _config.bearer_token(cfg)
        if token:
            header.append(f"Authorization: {token}")
        options: dict[str, Any] = {
            "header": header,
            "subprotocols": list(_protocol.PROTOCOLS),
            "timeout": timeout,
            "suppress_origin": True,
        }
        if cfg.proxy:
            proxy = urllib3.util.parse_url(cfg.proxy)
            options.update(http_proxy_host=proxy.host, http_proxy_port=proxy.port)
        ws = websocket.WebSocket(sslopt=sslopt, enable_multithread=True, skip_utf8_validation=True)
        try:
            ws.connect(_protocol.websocket_url(self.host, path), **options)
        except websocket.WebSocketBadStatusException as e:
            raise error_from_status(e.status_code, e.resp_body, access_api=True) from None
        except websocket.WebSocketTimeoutException as e:
            raise ServerError(f"connecting to {self.host} timed out after {timeout:g} s") from e
        except (OSError, websocket.WebSocketException) as e:
            raise ServerError(f"cannot open an exec stream to {self.host}: {e}") from e
        return ws

    # --- the shared watch -------------------------------------------------

    def watch(self, namespace: str) -> _NamespaceWatch:
        """The running watch of Sandboxes in ``namespace`` (started on first use)."""
        with self._lock:
            if self._closed:
                raise FastSandboxError("the client is closed")
            w = self._watchers.get(namespace)
            if w is None or w.failed:
                w = _NamespaceWatch(self, namespace)
                self._watchers[namespace] = w
        w.start()
        return w


def _api_client(cfg: Configuration) -> ApiClient:
    if (cfg.connection_pool_maxsize or 0) < _config.POOL_SIZE:
        cfg.connection_pool_maxsize = _config.POOL_SIZE
    return ApiClient(cfg)


def _transport_error(host: str, e: Exception, hint: str = "") -> ApiError:
    if isinstance(e, urllib3.exceptions.TimeoutError | urllib3.exceptions.ReadTimeoutError):
        return ServerError(f"the Kubernetes API at {host} did not answer in time: {e}{hint}")
    return ServerError(f"cannot reach the Kubernetes API at {host}: {e}{hint}")


_default: Client | None = None
_default_lock = threading.Lock()


def default_client() -> Client:
    """The process-wide client: :meth:`Client.auto`, built on first use."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Client.auto()
        return _default


def set_default_client(client: Client | None) -> None:
    """Makes ``client`` the one calls use when they name none (``None``: build anew)."""
    global _default
    with _default_lock:
        _default = client


class _NamespaceWatch:
    """One watch of the Sandboxes of a namespace, in a thread of its own, that
    waiters wait on (see :mod:`fast_sandbox._watch` for why it is shared)."""

    #: Seconds each watch request lasts before it is renewed.
    RENEW = 300
    #: Longest pause between attempts while the API cannot be reached.
    MAX_BACKOFF = 5.0

    def __init__(self, client: Client, namespace: str) -> None:
        self._client = client
        self._namespace = namespace
        self._cond = threading.Condition()
        self._state = WatchState()
        self._rv: str | None = None
        self._error: FastSandboxError | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._resp: urllib3.BaseHTTPResponse | None = None
        self._start_lock = threading.Lock()
        self.failed = False
        #: Why the watch is down right now (it retries), for timeout messages.
        self.trouble: str | None = None

    def start(self) -> None:
        """Reads the resourceVersion to watch from (so every change after this
        call is seen), then leaves the watch to its thread."""
        with self._start_lock:
            if self._thread is not None:
                return
            self._rv = self._list(limit=1)
            self._thread = threading.Thread(
                target=self._run, name=f"fast-sandbox-watch-{self._namespace}", daemon=True
            )
            self._thread.start()

    def close(self) -> None:
        """Stops the thread (it may take until the current read returns)."""
        self._stop.set()
        resp = self._resp
        if resp is not None:
            # Best effort on the way out: the socket may be broken already.
            with contextlib.suppress(Exception):
                resp.shutdown() if hasattr(resp, "shutdown") else resp.close()
        with self._cond:
            self._cond.notify_all()

    def _list(self, *, limit: int | None = None) -> str:
        query: list[tuple[str, str]] = []
        if limit:
            query.append(("limit", str(limit)))
        path = _protocol.sandboxes_path(self._namespace)
        if query:
            path += "?" + _protocol.encode_query(query)
        answer = self._client.request_json("GET", path, access_api=False)
        if not limit:
            with self._cond:
                self._state.replace(
                    [dict(o) for o in answer.get("items") or () if isinstance(o, dict)]
                )
                self._cond.notify_all()
        return str((answer.get("metadata") or {}).get("resourceVersion") or "")

    def _run(self) -> None:
        backoff = 0.2
        while not self._stop.is_set():
            try:
                self._follow()
                backoff = 0.2
            except _ExpiredError:
                try:
                    self._rv = self._list()
                except FastSandboxError as e:
                    self._fail_or_wait(e, backoff)
                    backoff = min(self.MAX_BACKOFF, backoff * 2)
            except FastSandboxError as e:
                self._fail_or_wait(e, backoff)
                backoff = min(self.MAX_BACKOFF, backoff * 2)
            except Exception as e:  # noqa: BLE001 - a broken stream is retried
                self._fail_or_wait(ServerError(f"watching sandboxes: {e}"), backoff)
                backoff = min(self.MAX_BACKOFF, backoff * 2)

    def _fail_or_wait(self, e: FastSandboxError, backoff: float) -> None:
        if self._stop.is_set():
            return
        self.trouble = str(e)
        if isinstance(e, ApiError) and e.code in (401, 403, 404):
            # Not allowed to watch, or no such resource: waiting cannot fix it.
            with self._cond:
                self._error = e
                self.failed = True
                self._cond.notify_all()
            self._stop.set()
            return
        # The API is unreachable or restarting: try again shortly (a retry
        # backoff, not a poll: events are not missed, the watch resumes from
        # the last resourceVersion).
        self._stop.wait(backoff)

    def _follow(self) -> None:
        query = [
            ("watch", "true"),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", str(self.RENEW)),
        ]
        if self._rv:
            query.append(("resourceVersion", self._rv))
        path = _protocol.sandboxes_path(self._namespace) + "?" + _protocol.encode_query(query)
        resp = self._client.request("GET", path, timeout=self.RENEW + 30, access_api=False)
        self.trouble = None
        self._resp = resp
        try:
            for line in _lines(resp):
                if self._stop.is_set():
                    return
                kind, obj = parse_event(line)
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise _ExpiredError()
                    raise error_from_status(int(obj.get("code") or 500), obj)
                rv = (obj.get("metadata") or {}).get("resourceVersion")
                if rv:
                    self._rv = str(rv)
                if kind == "BOOKMARK":
                    continue
                with self._cond:
                    self._state.apply(kind, obj)
                    self._cond.notify_all()
        finally:
            self._resp = None
            resp.close()
            resp.release_conn()

    def wait(
        self,
        known: Mapping[str, Any],
        decide: Callable[[Mapping[str, Any] | None], T | None],
        deadline: float,
    ) -> tuple[T | None, Mapping[str, Any] | None]:
        """Waits until ``decide`` returns a value for the latest version of
        ``known`` (``None`` passed once it is deleted), or ``deadline``
        (``time.monotonic()``) passes. Returns the decision (``None`` on
        timeout) and the last version seen."""
        with self._cond:
            while True:
                latest = self._state.latest(known)
                decision = decide(latest)
                if decision is not None:
                    return decision, latest
                if self._error is not None:
                    raise self._error
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None, latest
                if latest is not None:
                    known = latest
                self._cond.wait(remaining)


class _ExpiredError(Exception):
    """The watch's resourceVersion is too old (410): list again."""


def _lines(resp: urllib3.BaseHTTPResponse) -> Iterator[bytes]:
    """Lines of a streamed response as they arrive."""
    buf = b""
    for chunk in resp.stream(64 * 1024, decode_content=True):
        buf += chunk
        while True:
            i = buf.find(b"\n")
            if i < 0:
                break
            line, buf = buf[:i], buf[i + 1 :]
            if line.strip():
                yield line
    if buf.strip():
        yield buf
