"""The end-to-end suite's cluster: the current kubeconfig's, with Fast Sandbox
deployed. Without one every test fails, saying so (it never skips).

Each run works in namespaces of its own (``sdk-e2e-…``, deleted at the end):
one with a warm pool ``p`` and a tenant (a ServiceAccount bound to the
built-in ``edit`` role, holding a token from the TokenRequest API), and
another namespace with a tenant of its own, who must not reach the first.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from kubernetes import watch
from kubernetes.client import (
    ApiextensionsV1Api,
    AuthenticationV1TokenRequest,
    CoreV1Api,
    CustomObjectsApi,
    RbacAuthorizationV1Api,
    RbacV1Subject,
    V1Namespace,
    V1ObjectMeta,
    V1RoleBinding,
    V1RoleRef,
    V1ServiceAccount,
    V1TokenRequestSpec,
    VersionApi,
)

from fast_sandbox import Client, ConfigError, set_default_client

BUSYBOX = "docker.io/fast-sandbox/busybox:dev"
NOSHELL = "docker.io/fast-sandbox/noshell:dev"
AGENT_IMAGE = "fast-sandbox/agent:dev"
#: Seconds a pool may take to have its agents ready (pods start cold).
POOL_WAIT = 180.0


def watch_until(
    client: Client,
    plural: str,
    namespace: str,
    name: str,
    pred: Callable[[dict[str, Any]], bool],
    timeout: float,
    what: str,
) -> dict[str, Any]:
    """Watches ``plural``/``name`` until ``pred`` holds, or fails after
    ``timeout`` naming ``what`` and the last state seen."""
    api = CustomObjectsApi(client.api_client)
    deadline = time.monotonic() + timeout
    last: dict[str, Any] | None = None
    while (remaining := deadline - time.monotonic()) > 0:
        w = watch.Watch()
        for ev in w.stream(
            api.list_namespaced_custom_object,
            "sandbox.fast.io",
            "v1alpha1",
            namespace,
            plural,
            field_selector=f"metadata.name={name}",
            timeout_seconds=max(1, math.ceil(remaining)),
        ):
            last = ev["raw_object"]
            if pred(last):
                w.stop()
                return last
    pytest.fail(f"{what} ({plural}/{name}) not reached in {timeout:g} s; last seen: {last}")


def ready_pool(
    client: Client, namespace: str, name: str, bounds: tuple[int, int], slots: int
) -> None:
    """Creates a pool of ``bounds`` agents with ``slots`` each, as the Rust e2e
    suite's ``ready_pool``, and waits until the minimum is ready."""
    body = {
        "apiVersion": "sandbox.fast.io/v1alpha1",
        "kind": "SandboxPool",
        "metadata": {"name": name},
        "spec": {
            "capacity": {"poolMin": bounds[0], "poolMax": bounds[1]},
            "maxSandboxesPerAgent": slots,
            "warmImages": [BUSYBOX],
            "agentTemplate": {"spec": {"containers": [{"name": "agent", "image": AGENT_IMAGE}]}},
        },
    }
    client.call(
        client.custom.create_namespaced_custom_object,
        "sandbox.fast.io",
        "v1alpha1",
        namespace,
        "sandboxpools",
        body,
    )
    watch_until(
        client,
        "sandboxpools",
        namespace,
        name,
        lambda p: (p.get("status") or {}).get("readyAgents", 0) >= bounds[0],
        POOL_WAIT,
        f"{bounds[0]} ready agents",
    )


def new_namespace(admin: Client, prefix: str) -> str:
    core = CoreV1Api(admin.api_client)
    created = core.create_namespace(
        V1Namespace(
            metadata=V1ObjectMeta(generate_name=f"{prefix}-", labels={"fast-sandbox-e2e": "true"})
        )
    )
    assert created.metadata is not None
    return str(created.metadata.name)


def delete_namespace(admin: Client, name: str) -> None:
    """Best effort: the suite's result must not hinge on cleanup."""
    try:
        CoreV1Api(admin.api_client).delete_namespace(name, propagation_policy="Background")
    except Exception as e:  # noqa: BLE001
        print(f"deleting namespace {name}: {e}")


def tenant(admin: Client, namespace: str, account: str) -> Client:
    """A client acting as ServiceAccount ``account``, bound to the built-in
    ``edit`` ClusterRole in ``namespace`` and nothing else, with a token from
    the TokenRequest API."""
    core = CoreV1Api(admin.api_client)
    core.create_namespaced_service_account(
        namespace, V1ServiceAccount(metadata=V1ObjectMeta(name=account))
    )
    RbacAuthorizationV1Api(admin.api_client).create_namespaced_role_binding(
        namespace,
        V1RoleBinding(
            metadata=V1ObjectMeta(name=f"{account}-edit"),
            role_ref=V1RoleRef(
                api_group="rbac.authorization.k8s.io", kind="ClusterRole", name="edit"
            ),
            subjects=[RbacV1Subject(kind="ServiceAccount", name=account, namespace=namespace)],
        ),
    )
    token = core.create_namespaced_service_account_token(
        account,
        namespace,
        AuthenticationV1TokenRequest(
            spec=V1TokenRequestSpec(audiences=[], expiration_seconds=3600)
        ),
    )
    assert token.status is not None, "the TokenRequest answered a token"
    cfg = admin.configuration
    return Client.from_token(
        str(cfg.host),
        str(token.status.token),
        ca_cert=cfg.ssl_ca_cert,
        ca_cert_data=getattr(cfg, "ca_cert_data", None),
        namespace=namespace,
        verify=bool(cfg.verify_ssl),
    )


@pytest.fixture(scope="package")
def admin() -> Iterator[Client]:
    """The kubeconfig's client, after checking the cluster answers and runs Fast Sandbox."""
    try:
        client = Client.auto()
    except ConfigError as e:
        pytest.fail(f"no cluster: {e}. The e2e tests need a cluster with Fast Sandbox deployed.")
    try:
        VersionApi(client.api_client).get_code(_request_timeout=10)
    except Exception as e:  # noqa: BLE001
        pytest.fail(f"no cluster is reachable at {client.host}: {e}")
    try:
        ApiextensionsV1Api(client.api_client).read_custom_resource_definition(
            "sandboxes.sandbox.fast.io", _request_timeout=10
        )
    except Exception as e:  # noqa: BLE001
        pytest.fail(f"Fast Sandbox is not deployed at {client.host} (no Sandbox CRD): {e}")
    yield client
    client.close()


@dataclass
class Stage:
    """Where the suite's tests run."""

    admin: Client
    #: Namespace with pool ``p`` (2..3 agents, 16 slots each).
    ns: str
    #: The ``edit`` tenant of ``ns``.
    tenant: Client
    #: Another namespace, with an ``edit`` tenant of its own.
    other_ns: str
    stranger: Client

    @property
    def stranger_name(self) -> str:
        """The stranger's user name, as refusals name it."""
        return f"system:serviceaccount:{self.other_ns}:stranger"


@pytest.fixture(scope="package")
def stage(admin: Client) -> Iterator[Stage]:
    ns = new_namespace(admin, "sdk-e2e")
    other = new_namespace(admin, "sdk-e2e-other")
    try:
        ready_pool(admin, ns, "p", (2, 3), 16)
        s = Stage(admin, ns, tenant(admin, ns, "tenant"), other, tenant(admin, other, "stranger"))
        set_default_client(s.tenant)
        yield s
    finally:
        set_default_client(None)
        delete_namespace(admin, ns)
        delete_namespace(admin, other)
