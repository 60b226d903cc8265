"""Where the cluster is and which namespace to use, decided the way kubectl
decides it, shared by the sync and async clients (no network here).
"""

from __future__ import annotations

import os
import ssl
from typing import Any

from .errors import ConfigError

#: Where a pod finds its ServiceAccount's namespace.
SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
SERVICE_ACCOUNT_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"

#: Connections kept per API host: enough for every concurrent caller of a
#: process (20 threads creating sandboxes, each running commands) to keep
#: one warm, instead of urllib3's default of one per core times five.
POOL_SIZE = 64


def kubeconfig_path(path: str | os.PathLike[str] | None) -> str | None:
    """The kubeconfig to read: ``path``, else ``$KUBECONFIG`` (read now, not at
    import), else ``~/.kube/config`` if it exists; ``None`` when there is none."""
    if path is not None:
        return os.fspath(path)
    env = os.environ.get("KUBECONFIG")
    if env:
        return env
    default = os.path.expanduser("~/.kube/config")
    return default if os.path.exists(default) else None


def in_cluster() -> bool:
    """Whether this process runs in a pod with a ServiceAccount token."""
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and os.path.exists(SERVICE_ACCOUNT_TOKEN)


def context_namespace(contexts: list[dict[str, Any]], current: Any, context: str | None) -> str:
    """The namespace of kubeconfig context ``context`` (the current one when
    ``None``), ``default`` when it names none."""
    chosen: Any = current
    if context is not None:
        chosen = next((c for c in contexts if c.get("name") == context), None)
        if chosen is None:
            names = ", ".join(str(c.get("name")) for c in contexts) or "none"
            raise ConfigError(f"kubeconfig has no context {context!r} (it has: {names})")
    if isinstance(chosen, dict):
        ns = (chosen.get("context") or {}).get("namespace")
        if ns:
            return str(ns)
    return "default"


def service_account_namespace() -> str:
    """The namespace of the pod's ServiceAccount, ``default`` when unreadable."""
    try:
        with open(SERVICE_ACCOUNT_NAMESPACE, encoding="utf-8") as f:
            return f.read().strip() or "default"
    except OSError:
        return "default"


def ssl_context(configuration: Any) -> ssl.SSLContext:
    """A TLS context that trusts and presents what the client ``configuration``
    does: its CA (file or inline data), client certificate, and verification
    switches. Used for WebSocket connections, which do not go through the
    client's connection pool."""
    cafile = getattr(configuration, "ssl_ca_cert", None) or None
    cadata = getattr(configuration, "ca_cert_data", None) or None
    if cafile is None and cadata is None:
        try:
            import certifi

            cafile = certifi.where()
        except ImportError:  # pragma: no cover - certifi comes with kubernetes
            cafile = None
    if isinstance(cadata, bytes):
        cadata = cadata.decode("ascii")
    ctx = ssl.create_default_context(cafile=cafile, cadata=cadata)
    cert_file = getattr(configuration, "cert_file", None)
    if cert_file:
        ctx.load_cert_chain(cert_file, getattr(configuration, "key_file", None))
    if not getattr(configuration, "verify_ssl", True):
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif getattr(configuration, "assert_hostname", None) is False:
        ctx.check_hostname = False
    return ctx


def bearer_token(configuration: Any) -> str | None:
    """The ``Authorization`` header value the client sends, refreshed by the
    client's own hooks (exec plugins, expiring ServiceAccount tokens)."""
    auth = configuration.auth_settings().get("BearerToken")
    if auth and auth.get("value"):
        return str(auth["value"])
    return None
