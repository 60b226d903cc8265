"""The asyncio twin of :mod:`fast_sandbox.client`: the same configuration
rules, built on the official client's asyncio sibling (``kubernetes.aio``,
shipped in the ``kubernetes`` package itself since 37) and on aiohttp,
which that client uses, for the streamed requests and WebSockets the
generated API does not cover.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import weakref
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from types import EllipsisType
from typing import Any, TypeVar

import aiohttp
from kubernetes.aio import config as aio_config
from kubernetes.aio.client import ApiClient, Configuration, CustomObjectsApi
from kubernetes.aio.client.exceptions import ApiException

from .. import _config, _protocol
from .._watch import WatchState, parse_event
from ..client import USER_AGENT
from ..errors import (
    ApiError,
    ConfigError,
    FastSandboxError,
    ServerError,
    error_from_status,
)

__all__ = ["Client", "default_client", "set_default_client"]

T = TypeVar("T")


class Client:
    """A cluster to run sandboxes in (asyncio), and the namespace used when a
    call names none. Build it with ``await Client.from_kubeconfig()``,
    ``Client.in_cluster()``, ``Client.from_token(...)`` or ``await
    Client.auto()``. Use it from one event loop; ``await close()`` (or
    ``async with``) ends its watches and connections."""

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
        self._http: aiohttp.ClientSession | None = None
        self._watchers: dict[str, _NamespaceWatch] = {}
        self._closed = False

    # --- construction -----------------------------------------------------

    @classmethod
    async def from_kubeconfig(
        cls,
        path: str | None = None,
        *,
        context: str | None = None,
        namespace: str | None = None,
        request_timeout: float = 30.0,
    ) -> Client:
        """From a kubeconfig, as :meth:`fast_sandbox.Client.from_kubeconfig`."""
        file = _config.kubeconfig_path(path)
        if file is None:
            raise ConfigError("no kubeconfig: set KUBECONFIG or create ~/.kube/config")
        try:
            contexts, current = aio_config.list_kube_config_contexts(config_file=file)
            ns = namespace or _config.context_namespace(contexts, current, context)
            cfg = Configuration()
            await aio_config.load_kube_config(
                config_file=file, context=context, client_configuration=cfg, persist_config=False
            )
        except aio_config.ConfigException as e:
            raise ConfigError(f"kubeconfig {file}: {e}") from e
        return cls(_api_client(cfg), namespace=ns, request_timeout=request_timeout)

    @classmethod
    def in_cluster(cls, *, namespace: str | None = None, request_timeout: float = 30.0) -> Client:
        """From the pod's ServiceAccount; the namespace defaults to the pod's."""
        cfg = Configuration()
        try:
            aio_config.load_incluster_config(client_configuration=cfg)
        except aio_config.ConfigException as e:
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
        """From an API server URL and a bearer token, as the sync client's."""
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
    async def auto(
        cls,
        *,
        context: str | None = None,
        namespace: str | None = None,
        request_timeout: float = 30.0,
    ) -> Client:
        """The kubeconfig if there is one, else the pod's ServiceAccount."""
        if _config.kubeconfig_path(None) is not None or context is not None:
            return await cls.from_kubeconfig(
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
        """The ``kubernetes.aio.client.Configuration`` in use."""
        cfg: Configuration = self.api_client.configuration
        return cfg

    @property
    def host(self) -> str:
        """The API server URL."""
        return str(self.configuration.host)

    async def close(self) -> None:
        """Stops this client's watches and closes its connections."""
        self._closed = True
        watchers = list(self._watchers.values())
        self._watchers.clear()
        for w in watchers:
            await w.close()
        if self._http is not None:
            await self._http.close()
            self._http = None
        await self.api_client.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"aio.Client(host={self.host!r}, namespace={self.namespace!r})"

    # --- calls ------------------------------------------------------------

    async def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Awaits a generated API method, turning its failures into the SDK's errors."""
        kwargs.setdefault("_request_timeout", self.request_timeout)
        try:
            return await fn(*args, **kwargs)
        except ApiException as e:
            raise error_from_status(
                int(e.status or 0), e.body, fallback=str(e.reason or "")
            ) from None
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            raise _transport_error(self.host, e) from e

    async def call_object(
        self, fn: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> dict[str, Any]:
        """:meth:`call` of a generated method that answers a JSON object."""
        answer = await self.call(fn, *args, **kwargs)
        if not isinstance(answer, dict):
            raise ServerError(f"unexpected answer: {str(answer)[:200]}")
        return answer

    async def headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """Headers of a raw request: the client's credentials and user agent."""
        h = {"User-Agent": USER_AGENT}
        auth = (await self.configuration.auth_settings()).get("BearerToken")
        if auth and auth.get("value"):
            h["Authorization"] = str(auth["value"])
        if extra:
            h.update(extra)
        return h

    def http(self) -> aiohttp.ClientSession:
        """The aiohttp client of raw requests, trusting what the client trusts."""
        if self._closed:
            raise FastSandboxError("the client is closed")
        if self._http is None or self._http.closed:
            connector = aiohttp.TCPConnector(
                ssl=_config.ssl_context(self.configuration), limit=_config.POOL_SIZE
            )
            self._http = aiohttp.ClientSession(connector=connector, trust_env=True)
        return self._http

    def _request_options(self) -> dict[str, Any]:
        cfg = self.configuration
        opts: dict[str, Any] = {}
        if getattr(cfg, "tls_server_name", None):
            opts["server_hostname"] = cfg.tls_server_name
        if cfg.proxy:
            opts["proxy"] = cfg.proxy
        return opts

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | AsyncIterable[bytes] | None = None,
        content_type: str | None = None,
        timeout: float | EllipsisType | None = ...,
        access_api: bool = True,
    ) -> aiohttp.ClientResponse:
        """A raw request whose body is left to stream; errors raised typed
        (as :meth:`fast_sandbox.Client.request`)."""
        headers = await self.headers({"Accept": "application/json, */*"})
        if content_type:
            headers["Content-Type"] = content_type
        read = self.request_timeout if timeout is ... else timeout
        try:
            resp = await self.http().request(
                method,
                self.host.rstrip("/") + path,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=min(10.0, self.request_timeout), sock_read=read
                ),
                **self._request_options(),
            )
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            raise _transport_error(self.host, e) from e
        if resp.status >= 400:
            try:
                data = await resp.content.read(64 * 1024)
            finally:
                resp.release()
            raise error_from_status(resp.status, data, access_api=access_api)
        return resp

    async def request_json(self, method: str, path: str, **kwargs: Any) -> Any:
        """A raw request whose answer is JSON."""
        resp = await self.request(method, path, **kwargs)
        try:
            data = await resp.read()
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            raise _transport_error(self.host, e) from e
        finally:
            resp.release()
        try:
            return json.loads(data)
        except ValueError as e:
            raise ServerError(f"unexpected answer to {method} {path}: {data[:200]!r}") from e

    async def websocket(
        self, path: str, *, timeout: float
    ) -> aiohttp.ClientWebSocketResponse[bool]:
        """A WebSocket to ``path`` speaking the Kubernetes channel protocol (v5, else v4);
        an error answer to the upgrade is raised typed, with the server's message."""
        url = _protocol.websocket_url(self.host, path)
        try:
            return await self.http().ws_connect(
                url,
                protocols=_protocol.PROTOCOLS,
                headers=await self.headers(),
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=2.0),
                autoping=True,
                max_msg_size=0,
                **self._request_options(),
            )
        except aiohttp.WSServerHandshakeError as e:
            raise await self._refusal(path, e.status) from None
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            raise ServerError(f"cannot open an exec stream to {self.host}: {e}") from e

    async def _refusal(self, path: str, status: int) -> ApiError:
        """Why an upgrade was refused: aiohttp drops the refusal's body, so the
        same path is asked again without upgrading. The access server
        authorises and finds the sandbox before it looks at the upgrade, so
        this answer carries the refusal's message (and starts nothing)."""
        try:
            resp = await self.request("GET", path, timeout=self.request_timeout)
        except ApiError as e:
            return e
        resp.release()
        return error_from_status(
            status, None, access_api=True, fallback=f"upgrade refused: {status}"
        )

    # --- the shared watch -------------------------------------------------

    async def watch(self, namespace: str) -> _NamespaceWatch:
        """The running watch of Sandboxes in ``namespace`` (started on first use)."""
        if self._closed:
            raise FastSandboxError("the client is closed")
        w = self._watchers.get(namespace)
        if w is None or w.failed:
            w = _NamespaceWatch(self, namespace)
            self._watchers[namespace] = w
        await w.start()
        return w


def _api_client(cfg: Configuration) -> ApiClient:
    if (cfg.connection_pool_maxsize or 0) < _config.POOL_SIZE:
        cfg.connection_pool_maxsize = _config.POOL_SIZE
    return ApiClient(cfg)


def _transport_error(host: str, e: BaseException) -> ApiError:
    if isinstance(e, asyncio.TimeoutError):
        return ServerError(f"the Kubernetes API at {host} did not answer in time")
    return ServerError(f"cannot reach the Kubernetes API at {host}: {e}")


_defaults: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Client] = (
    weakref.WeakKeyDictionary()
)
_explicit: Client | None = None


async def default_client() -> Client:
    """The client calls use when they name none: the one set with
    :func:`set_default_client`, else :meth:`Client.auto`, built once per
    event loop (aiohttp connections belong to one loop)."""
    if _explicit is not None:
        return _explicit
    loop = asyncio.get_running_loop()
    client = _defaults.get(loop)
    if client is None:
        client = await Client.auto()
        _defaults[loop] = client
    return client


def set_default_client(client: Client | None) -> None:
    """Makes ``client`` the one calls use when they name none (``None``: build anew)."""
    global _explicit
    _explicit = client


class _NamespaceWatch:
    """One watch of a namespace's Sandboxes in a task, that waiters await
    (as the sync client's; see :mod:`fast_sandbox._watch`)."""

    RENEW = 300
    MAX_BACKOFF = 5.0

    def __init__(self, client: Client, namespace: str) -> None:
        self._client = client
        self._namespace = namespace
        self._cond = asyncio.Condition()
        self._state = WatchState()
        self._rv: str | None = None
        self._error: FastSandboxError | None = None
        self._task: asyncio.Task[None] | None = None
        self._start_lock = asyncio.Lock()
        self._stopped = asyncio.Event()
        self.failed = False
        #: Why the watch is down right now (it retries), for timeout messages.
        self.trouble: str | None = None

    async def start(self) -> None:
        """Reads the resourceVersion to watch from, then leaves the watch to its task."""
        async with self._start_lock:
            if self._task is not None:
                return
            self._rv = await self._list(limit=1)
            self._task = asyncio.create_task(
                self._run(), name=f"fast-sandbox-watch-{self._namespace}"
            )

    async def close(self) -> None:
        """Stops the task."""
        self._stopped.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _list(self, *, limit: int | None = None) -> str:
        path = _protocol.sandboxes_path(self._namespace)
        if limit:
            path += f"?limit={limit}"
        answer = await self._client.request_json("GET", path, access_api=False)
        if not limit:
            async with self._cond:
                self._state.replace(
                    [dict(o) for o in answer.get("items") or () if isinstance(o, dict)]
                )
                self._cond.notify_all()
        return str((answer.get("metadata") or {}).get("resourceVersion") or "")

    async def _run(self) -> None:
        backoff = 0.2
        while not self._stopped.is_set():
            try:
                await self._follow()
                backoff = 0.2
                continue
            except _ExpiredError:
                try:
                    self._rv = await self._list()
                    continue
                except FastSandboxError as e:
                    err: FastSandboxError = e
            except FastSandboxError as e:
                err = e
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as e:
                err = ServerError(f"watching sandboxes: {e}")
            self.trouble = str(err)
            if isinstance(err, ApiError) and err.code in (401, 403, 404):
                async with self._cond:
                    self._error = err
                    self.failed = True
                    self._cond.notify_all()
                return
            # A retry backoff while the API is unreachable (events are not
            # missed: the watch resumes from the last resourceVersion).
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), backoff)
            backoff = min(self.MAX_BACKOFF, backoff * 2)

    async def _follow(self) -> None:
        query = [
            ("watch", "true"),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", str(self.RENEW)),
        ]
        if self._rv:
            query.append(("resourceVersion", self._rv))
        path = _protocol.sandboxes_path(self._namespace) + "?" + _protocol.encode_query(query)
        resp = await self._client.request("GET", path, timeout=self.RENEW + 30, access_api=False)
        self.trouble = None
        try:
            async for line in _lines(resp):
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
                async with self._cond:
                    self._state.apply(kind, obj)
                    self._cond.notify_all()
        finally:
            resp.close()

    async def wait(
        self,
        known: Mapping[str, Any],
        decide: Callable[[Mapping[str, Any] | None], T | None],
        deadline: float,
    ) -> tuple[T | None, Mapping[str, Any] | None]:
        """As the sync watch's ``wait``: the decision (``None`` on timeout) and the
        last version seen, ``deadline`` on ``time.monotonic()``."""
        async with self._cond:
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
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._cond.wait(), remaining)


class _ExpiredError(Exception):
    """The watch's resourceVersion is too old (410): list again."""


async def _lines(resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """Lines of a streamed response as they arrive (of any length)."""
    buf = b""
    async for chunk in resp.content.iter_any():
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
