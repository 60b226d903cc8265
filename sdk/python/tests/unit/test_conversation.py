"""The sync API against a scripted apiserver and access server (fakeapi)."""

from __future__ import annotations

import io
import threading
import tracemalloc

import pytest

import fast_sandbox._exec as exec_module
from fast_sandbox import (
    Client,
    CommandTimeoutError,
    ExecError,
    ForbiddenError,
    ImageNotPresentError,
    NoCapacityError,
    OOMKilledError,
    PathNotFoundError,
    Sandbox,
    SandboxNotFoundError,
    SandboxNotRunningError,
    StartError,
)

from .fakeapi import CHUNK, Server


def deleted(server: Server) -> list[str]:
    return [o["metadata"]["name"] for _, k, o in server.state.events if k == "DELETED"]


def test_create_returns_once_the_watch_shows_ready(client: Client, server: Server) -> None:
    sb = Sandbox.create("p", "ok", env={"A": "1"}, client=client)
    assert sb.name.startswith("sbx-")
    assert (sb.phase, sb.status.ready, sb.namespace, sb.pool) == ("Running", True, "ns", "p")
    # One watch serves every create of the namespace.
    Sandbox.create("p", "ok", client=client)
    assert server.state.watches == 1
    assert {s.name for s in Sandbox.list(client=client)} == set(server.state.objects)
    assert Sandbox.get(sb.name, client=client).uid == sb.uid


@pytest.mark.parametrize(
    ("image", "kind", "words"),
    [
        ("missing", ImageNotPresentError, "not present on node n1"),
        ("crash", StartError, "no such file"),
        ("oom", OOMKilledError, "137"),
    ],
)
def test_failures_raise_their_type_and_the_sandbox_is_deleted(
    client: Client, server: Server, image: str, kind: type[Exception], words: str
) -> None:
    with pytest.raises(kind, match=words) as e:
        Sandbox.create("p", image, client=client)
    assert e.value.name in deleted(server)  # type: ignore[attr-defined]


def test_no_capacity_past_the_deadline(client: Client, server: Server) -> None:
    with pytest.raises(NoCapacityError, match="no ready agent") as e:
        Sandbox.create("p", "full", timeout=0.3, client=client)
    assert isinstance(e.value, TimeoutError)
    assert e.value.status is not None
    assert e.value.status.reason == "NoCapacity"
    assert e.value.name in deleted(server)
    kept = Sandbox.create(
        "p", "full", timeout=0.1, delete_on_error=False, wait=False, client=client
    )
    assert kept.name not in deleted(server)


def test_the_context_manager_deletes_on_exceptions(client: Client, server: Server) -> None:
    with pytest.raises(RuntimeError, match="boom"), Sandbox.create("p", "ok", client=client) as sb:
        raise RuntimeError("boom")
    assert sb.name in deleted(server)
    with Sandbox.create("p", "ok", client=client) as sb2:
        pass
    assert sb2.name in deleted(server)


def test_run_returns_the_exit_code_and_output(client: Client, server: Server) -> None:
    sb = Sandbox.create("p", "ok", client=client)
    r = sb.commands.run("echo hi; exit 3", timeout=10)
    assert (r.exit_code, r.stdout, r.stderr) == (3, "hi\n", "")
    assert ("timeoutSeconds", "10") in server.state.queries[-1]
    missing = sb.commands.run(["nope"])
    assert missing.exit_code == 127
    assert "nope: command not found" in missing.stderr
    assert missing.message == "nope: command not found"
    env = sb.commands.run("env", env={"A": "1", "B": "x y"}, cwd="/w")
    assert env.stdout == "A=1,B=x y /w\n"


def test_stdin_is_streamed_and_closed(client: Client, server: Server) -> None:
    sb = Sandbox.create("p", "ok", client=client)
    data = bytes(range(256)) * 1000
    assert sb.commands.run("cat", stdin=data).stdout_bytes == data
    assert all(len(c) <= CHUNK - 1 for c in server.state.stdin_seen)
    assert sb.commands.run("cat", stdin=io.BytesIO(b"from a file")).stdout == "from a file"
    assert sb.commands.run("cat", stdin=iter([b"a", b"b"])).stdout == "ab"
    with sb.commands.stream("cat", stdin=True) as proc:
        proc.write("typed\n")
        proc.close_stdin()
        assert [e.data for e in proc] == ["typed\n"]
    assert proc.exit_code == 0


def test_stream_yields_events_as_they_come(client: Client) -> None:
    sb = Sandbox.create("p", "ok", client=client)
    proc = sb.commands.stream(["sh", "-c", "ticks"])
    events = [(e.stream, e.data) for e in proc]
    assert events == [("stdout", "1\n"), ("stdout", "2\n"), ("stdout", "3\n"), ("stderr", "done\n")]
    assert proc.exit_code == 0
    assert "".join(e.data for e in sb.commands.stream("utf")) == "a☃b"


def test_large_output_streams_in_bounded_memory(client: Client) -> None:
    sb = Sandbox.create("p", "ok", client=client)
    n = 800  # 50 MiB
    tracemalloc.start()
    total = 0
    for ev in sb.commands.stream(f"big {n}"):
        total += len(ev.raw)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert total == n * (CHUNK - 1)
    assert peak < 8 * 1024 * 1024, f"peak {peak} bytes while streaming {total}"


def test_timeouts(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    sb = Sandbox.create("p", "ok", client=client)
    with pytest.raises(CommandTimeoutError, match="killed after the timeout of 1s") as e:
        sb.commands.run("slow", timeout=0.5)
    assert e.value.result is not None
    assert (e.value.result.exit_code, e.value.result.stdout) == (124, "partial\n")
    # A server that never answers: the client gives up after the timeout and
    # its grace.
    monkeypatch.setattr(exec_module, "TIMEOUT_GRACE", 0.2)
    with pytest.raises(CommandTimeoutError, match="did not end within"):
        sb.commands.run("hang", timeout=0.2)


def test_a_cut_stream_is_an_exec_error(client: Client) -> None:
    sb = Sandbox.create("p", "ok", client=client)
    with pytest.raises(ExecError, match="cut off"):
        sb.commands.run("cut")


def test_refusals_carry_the_server_s_message(client: Client) -> None:
    secret = Sandbox({"metadata": {"name": "secret", "namespace": "ns"}}, client=client)
    with pytest.raises(ForbiddenError, match='cannot create resource "sandboxes/exec"'):
        secret.commands.run("true")
    with pytest.raises(ForbiddenError):
        secret.files.read("/etc/passwd")
    ghost = Sandbox({"metadata": {"name": "ghost", "namespace": "ns"}}, client=client)
    with pytest.raises(SandboxNotFoundError, match='"ghost" not found'):
        ghost.commands.run("true")
    with pytest.raises(SandboxNotFoundError):
        Sandbox.get("ghost", client=client)


def test_files(client: Client) -> None:
    sb = Sandbox.create("p", "ok", client=client)
    info = sb.files.write("/tmp/main.py", b"print(6*7)", mode=0o755)
    assert (info.path, info.size, info.mode) == ("/tmp/main.py", 10, 0o755)
    assert sb.files.read("/tmp/main.py") == b"print(6*7)"
    big = bytes(range(256)) * 4096
    sb.files.write("/tmp/big", io.BytesIO(big))
    assert sb.files.read("/tmp/big") == big
    assert [i.name for i in sb.files.list("/tmp")] == ["big", "main.py"]
    assert sb.files.stat("/tmp/big").size == len(big)
    assert sb.files.exists("/tmp/big")
    sb.files.remove("/tmp/big")
    assert not sb.files.exists("/tmp/big")
    with pytest.raises(PathNotFoundError, match="no such file"):
        sb.files.read("/tmp/big")
    with pytest.raises(FileNotFoundError):
        sb.files.stat("/nope")
    with pytest.raises(ValueError, match="absolute"):
        sb.files.read("relative")


def test_logs(client: Client) -> None:
    sb = Sandbox.create("p", "ok", client=client)
    assert sb.logs() == "line one\nline two\ntail"
    assert list(sb.iter_logs(follow=False)) == ["line one\n", "line two\n", "tail"]


def test_twenty_threads_create_at_once(client: Client, server: Server) -> None:
    made: list[Sandbox] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def one() -> None:
        try:
            sb = Sandbox.create("p", "ok", client=client)
            with lock:
                made.append(sb)
        except BaseException as e:  # noqa: BLE001
            with lock:
                errors.append(e)

    threads = [threading.Thread(target=one) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert len({s.name for s in made}) == 20
    assert all(s.status.ready for s in made)


def test_a_sandbox_killed_later_explains_why_commands_fail(client: Client, server: Server) -> None:
    sb = Sandbox.create("p", "ok", client=client)
    server.state.fail_sandbox(sb.name, "OOMKilled", 137)
    final = sb.wait_exit(timeout=5)
    assert (final.phase, final.reason, final.exit_code) == ("Failed", "OOMKilled", 137)
    with pytest.raises(OOMKilledError, match="exited with code 137") as e:
        sb.commands.run("true")
    assert e.value.__cause__ is not None, "the server's refusal is kept as the cause"
    with pytest.raises(OOMKilledError):
        sb.files.read("/etc/hostname")


def test_a_lagging_access_server_is_retried_for_a_ready_sandbox(
    client: Client, server: Server
) -> None:
    sb = Sandbox.create("p", "ok", client=client)
    server.state.stale[sb.name] = 2
    assert sb.commands.run("echo hi; exit 3").exit_code == 3
    server.state.stale[sb.name] = 2
    sb.files.write("/tmp/a", b"bytes can be sent again")
    # A streamed body cannot be sent again: the refusal is raised.
    server.state.stale[sb.name] = 1
    with pytest.raises(SandboxNotRunningError, match="does not exist yet"):
        sb.files.write("/tmp/a", io.BytesIO(b"streamed"))
    # A sandbox not seen Ready is not retried either.
    pending = Sandbox.create("p", "full", wait=False, client=client)
    server.state.stale[pending.name] = 1
    with pytest.raises(SandboxNotRunningError):
        pending.commands.run("true")


def test_a_log_left_early_does_not_spoil_the_connection(client: Client) -> None:
    sb = Sandbox.create("p", "ok", client=client)
    lines = sb.iter_logs(follow=True)
    assert next(lines) == "line one\n"
    del lines
    # The next calls on the same pool still read their own answers.
    for _ in range(5):
        assert sb.commands.run("echo hi; exit 3").stdout == "hi\n"
        assert sb.logs() == "line one\nline two\ntail"
