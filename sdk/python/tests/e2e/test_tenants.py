"""The tenant boundary through the SDK: an ``edit`` tenant of one namespace
cannot reach another namespace's sandboxes, in any way the SDK offers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from fast_sandbox import ForbiddenError, NotFoundError, Sandbox

from .conftest import BUSYBOX, Stage


@pytest.fixture(scope="module")
def owned(stage: Stage) -> Iterator[Sandbox]:
    sb = Sandbox.create(
        "p",
        BUSYBOX,
        command=["/bin/sh", "-c", "echo secret-output; exec sleep 600"],
        client=stage.tenant,
    )
    yield sb
    sb.delete()


def test_the_owner_may_do_everything(owned: Sandbox) -> None:
    assert owned.commands.run("echo mine").stdout == "mine\n"
    owned.files.write("/tmp/x", b"x")
    assert owned.files.read("/tmp/x") == b"x"
    assert next(owned.iter_logs(follow=True, timeout=30)) == "secret-output\n"


def test_another_namespace_s_tenant_reaches_nothing(stage: Stage, owned: Sandbox) -> None:
    # The stranger's view of the same sandbox, as if it knew the name.
    theirs = Sandbox(owned.object, client=stage.stranger)
    attempts: dict[str, Callable[[], Any]] = {
        "get": lambda: Sandbox.get(owned.name, namespace=stage.ns, client=stage.stranger),
        "list": lambda: Sandbox.list(namespace=stage.ns, client=stage.stranger),
        "create": lambda: Sandbox.create(
            "p", BUSYBOX, namespace=stage.ns, wait=False, client=stage.stranger
        ),
        "delete": lambda: theirs.delete(),
        "exec": lambda: theirs.commands.run("cat /etc/hostname"),
        "stream": lambda: list(theirs.commands.stream(["true"])),
        "read": lambda: theirs.files.read("/etc/hostname"),
        "write": lambda: theirs.files.write("/tmp/evil", b"x"),
        "list files": lambda: theirs.files.list("/"),
        "logs": lambda: theirs.logs(),
    }
    for what, attempt in attempts.items():
        with pytest.raises((ForbiddenError, NotFoundError)) as e:
            attempt()
        assert "forbidden" in str(e.value).lower() or "not found" in str(e.value), (what, e.value)
        assert stage.stranger_name in str(e.value) or isinstance(e.value, NotFoundError), (
            what,
            e.value,
        )
    # Nothing changed: the sandbox still runs and holds no stranger's file.
    assert owned.refresh().phase == "Running"
    assert not owned.files.exists("/tmp/evil")


def test_a_tenant_cannot_work_in_another_namespace(stage: Stage) -> None:
    with pytest.raises(ForbiddenError, match="forbidden"):
        Sandbox.create("p", BUSYBOX, namespace=stage.other_ns, wait=False, client=stage.tenant)
    with pytest.raises(ForbiddenError):
        Sandbox.list(namespace=stage.other_ns, client=stage.tenant)
