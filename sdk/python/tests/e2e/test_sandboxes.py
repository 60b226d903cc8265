"""The SDK against a real cluster running Fast Sandbox, as a tenant with the
built-in ``edit`` role: the issue's example, lifecycle calls, commands,
files, logs, errors, timeouts, concurrency and cleanup."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import threading
import time
import tracemalloc
from collections.abc import Iterator

import pytest

from fast_sandbox import (
    CommandExitError,
    CommandTimeoutError,
    ImageNotPresentError,
    NoCapacityError,
    OOMKilledError,
    PathNotFoundError,
    Sandbox,
    SandboxNotFoundError,
    StartError,
)

from .conftest import BUSYBOX, NOSHELL, Stage, ready_pool


def test_the_issue_s_example(stage: Stage) -> None:
    with Sandbox.create(
        pool="p",
        image=BUSYBOX,
        env={"A": "1"},
        resources={"memory": "256Mi"},
        ttl_seconds=600,
    ) as sb:
        assert sb.status.ready
        assert sb.namespace == stage.ns, "the tenant's namespace is the default"
        r = sb.commands.run("echo hi; exit 3", timeout=10)
        assert (r.exit_code, r.stdout) == (3, "hi\n")
        assert sb.commands.run("echo $A").stdout == "1\n", "the sandbox's env"
        assert sb.object["spec"]["resources"]["memory"] == "256Mi"
        assert "expireTime" in sb.object["spec"]

        seen = []
        for ev in sb.commands.stream(["sh", "-c", "for i in 1 2 3; do echo $i; sleep 1; done"]):
            seen.append((time.monotonic(), ev.stream, ev.data))
        assert "".join(d for _, _, d in seen) == "1\n2\n3\n"
        assert {s for _, s, _ in seen} == {"stdout"}
        # As it happens: the first line long before the last.
        assert seen[-1][0] - seen[0][0] > 1.5, seen

        sb.files.write("/tmp/main.py", b"print(6*7)")
        assert sb.files.read("/tmp/main.py") == b"print(6*7)"
        assert "main.py" in [f.name for f in sb.files.list("/tmp")]
        assert isinstance(sb.logs(follow=False), str)
        name = sb.name
    # The sandbox is deleted here.
    sb.wait_deleted(timeout=60)
    with pytest.raises(SandboxNotFoundError):
        Sandbox.get(name)


def test_get_list_wait_ready_and_delete(stage: Stage) -> None:
    sb = Sandbox.create("p", BUSYBOX, wait=False, labels={"suite": "sdk"})
    assert sb.phase in ("Pending", "Bound", "Running")
    sb.wait_ready(timeout=60)
    got = Sandbox.get(sb.name)
    assert (got.uid, got.phase, got.pool) == (sb.uid, "Running", "p")
    assert sb.name in [s.name for s in Sandbox.list(pool="p")]
    assert sb.name in [s.name for s in Sandbox.list(labels={"suite": "sdk"})]
    assert sb.name in [s.name for s in Sandbox.list(phase="Running")]
    assert sb.name not in [s.name for s in Sandbox.list(pool="another")]
    sb.set_ttl(300)
    assert sb.object["spec"]["expireTime"]
    sb.delete(wait=True, timeout=60)
    with pytest.raises(SandboxNotFoundError):
        sb.refresh()
    sb.delete()  # gone already: not an error


@pytest.fixture(scope="module")
def box(stage: Stage) -> Iterator[Sandbox]:
    sb = Sandbox.create("p", BUSYBOX)
    yield sb
    sb.delete()


def test_stdin_from_bytes_and_files(box: Sandbox) -> None:
    data = bytes(range(256)) * 4096  # 1 MiB
    r = box.commands.run(["sha256sum"], stdin=data)
    assert r.stdout.split()[0] == hashlib.sha256(data).hexdigest()
    assert box.commands.run("cat", stdin=io.BytesIO(b"from a file\n")).stdout == "from a file\n"
    assert box.commands.run("wc -c", stdin=iter([b"ab", b"cd"])).stdout.strip() == "4"
    with box.commands.stream("read line; echo got $line", stdin=True) as proc:
        proc.write("typed\n")
        proc.close_stdin()
        assert "".join(e.data for e in proc) == "got typed\n"
    assert proc.exit_code == 0


def test_stdin_fed_while_output_is_read_loses_nothing(box: Sandbox) -> None:
    # The feeder thread and the reader share one TLS connection: taken in
    # turns, no exit status is lost to a racing read (it was, 1 in 4).
    for _ in range(30):
        assert box.commands.run("wc -c", stdin=iter([b"ab", b"cd"])).stdout.strip() == "4"
    # Both directions full at once: the command writes while it reads.
    data = os.urandom(8 * 1024 * 1024)
    r = box.commands.run(["cat"], stdin=data)
    assert len(r.stdout_bytes) == len(data) and r.stdout_bytes == data


def test_large_output_is_streamed_not_held(box: Sandbox) -> None:
    size = 50 * 1024 * 1024
    tracemalloc.start()
    total = 0
    proc = box.commands.stream(["sh", "-c", f"head -c {size} /dev/zero | tr '\\0' 'x'"])
    for ev in proc:
        assert ev.raw.count(b"x") == len(ev.raw)
        total += len(ev.raw)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert (total, proc.exit_code) == (size, 0)
    assert peak < 16 * 1024 * 1024, f"peak {peak} bytes of Python memory for {size} bytes"


def test_exit_codes_stderr_and_missing_commands(box: Sandbox) -> None:
    r = box.commands.run("cat /proc/version >/dev/null; echo oops >&2; exit 42")
    assert (r.exit_code, r.stdout, r.stderr) == (42, "", "oops\n")
    missing = box.commands.run(["no-such-command"])
    assert missing.exit_code == 127
    assert "no-such-command" in missing.stderr + missing.message
    with pytest.raises(CommandExitError, match="exited with code 7") as e:
        box.commands.run("exit 7", check=True)
    assert e.value.exit_code == 7
    env = box.commands.run("echo $X; pwd", env={"X": "a b+c"}, cwd="/tmp")
    assert env.stdout == "a b+c\n/tmp\n"


def test_command_timeouts(box: Sandbox) -> None:
    started = time.monotonic()
    with pytest.raises(CommandTimeoutError, match="timeout") as e:
        box.commands.run("echo before; sleep 30", timeout=1)
    assert time.monotonic() - started < 10
    assert e.value.result is not None
    assert e.value.result.exit_code == 124
    assert e.value.result.stdout == "before\n"
    # The killed command is gone from the sandbox.
    assert "sleep 30" not in box.commands.run("ps").stdout


def test_files(box: Sandbox) -> None:
    data = bytes((i * 2654435761 >> 13) & 0xFF for i in range(3_000_000))
    info = box.files.write("/tmp/blob.bin", io.BytesIO(data), mode=0o751)
    assert (info.size, info.mode, info.type) == (len(data), 0o751, "file")
    assert box.commands.run(["sha256sum", "/tmp/blob.bin"]).stdout.startswith(
        hashlib.sha256(data).hexdigest()
    )
    assert hashlib.sha256(box.files.read("/tmp/blob.bin")).digest() == hashlib.sha256(data).digest()
    box.files.mkdir("/srv/a/b")
    box.files.write("/srv/a/b/c.txt", "text")
    assert box.files.read_text("/srv/a/b/c.txt") == "text"
    assert box.files.stat("/srv/a").is_dir
    box.files.remove("/srv/a", recursive=True)
    assert not box.files.exists("/srv/a")
    with pytest.raises(PathNotFoundError):
        box.files.read("/srv/a/b/c.txt")
    with pytest.raises(FileNotFoundError):
        box.files.stat("/nope")


def test_files_and_commands_in_an_image_without_a_shell(stage: Stage) -> None:
    with Sandbox.create("p", NOSHELL, command=["/tool", "sleep"]) as sb:
        sb.files.write("/note.txt", b"no shell needed\n")
        r = sb.commands.run(["/tool", "read", "/note.txt"])
        assert (r.exit_code, r.stdout) == (0, "no shell needed\n")
        assert "tool" in [f.name for f in sb.files.list("/")]


def test_logs(stage: Stage) -> None:
    with Sandbox.create(
        "p",
        BUSYBOX,
        command=["/bin/sh", "-c", "echo out-line; echo err-line >&2; exec sleep 600"],
    ) as sb:
        # Followed: the line arrives when written, without asking again.
        first = next(sb.iter_logs(follow=True, timeout=30))
        assert first == "out-line\n"
        assert next(sb.iter_logs(stream="stderr", follow=True, timeout=30)) == "err-line\n"
        assert sb.logs() == "out-line\n"


def test_creation_failures_have_their_types(stage: Stage) -> None:
    with pytest.raises(ImageNotPresentError) as e:
        Sandbox.create("p", "docker.io/fast-sandbox/absent:dev", timeout=60)
    assert e.value.status is not None
    assert e.value.status.message, "the status message is carried"
    assert str(e.value.status.message) in str(e.value)
    with pytest.raises(StartError):
        Sandbox.create("p", BUSYBOX, command=["/no/such/binary"], timeout=60)


def test_oom_killed_surfaces_as_its_type(stage: Stage) -> None:
    sb = Sandbox.create(
        "p",
        BUSYBOX,
        resources={"memory": "32Mi"},
        command=[
            "/bin/sh",
            "-c",
            "mkfifo /tmp/go; read x < /tmp/go; dd if=/dev/zero of=/dev/null bs=100M count=1",
        ],
    )
    try:
        sb.commands.run("echo go > /tmp/go")
        final = sb.wait_exit(timeout=60)
        assert (final.phase, final.reason) == ("Failed", "OOMKilled"), final
        with pytest.raises(OOMKilledError):
            sb.wait_ready(timeout=5)
        with pytest.raises(OOMKilledError):
            sb.commands.run("true")
    finally:
        sb.delete()


def test_no_capacity_past_the_deadline(stage: Stage) -> None:
    ready_pool(stage.admin, stage.ns, "tiny", (1, 1), 1)
    with Sandbox.create("tiny", BUSYBOX):
        started = time.monotonic()
        with pytest.raises(NoCapacityError, match="NoCapacity") as e:
            Sandbox.create("tiny", BUSYBOX, timeout=5)
        assert 4.5 < time.monotonic() - started < 30
        assert isinstance(e.value, TimeoutError)
        name = e.value.name
    # The SDK deleted what it could not make Ready.
    with contextlib.suppress(SandboxNotFoundError):
        Sandbox.get(name).wait_deleted(timeout=60)


def test_cleanup_on_exceptions_inside_with(stage: Stage) -> None:
    holder: list[Sandbox] = []

    def work() -> None:
        with Sandbox.create("p", BUSYBOX) as sb:
            holder.append(sb)
            sb.commands.run("true")
            raise ZeroDivisionError("the program failed mid-way")

    with pytest.raises(ZeroDivisionError, match="mid-way"):
        work()
    holder[0].wait_deleted(timeout=60)


def test_twenty_sandboxes_created_concurrently_from_threads(stage: Stage) -> None:
    results: dict[int, str] = {}
    failures: list[BaseException] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        try:
            with Sandbox.create("p", BUSYBOX, timeout=120) as sb:
                out = sb.commands.run(f"echo {i}").stdout.strip()
            with lock:
                results[i] = out
        except BaseException as e:  # noqa: BLE001
            with lock:
                failures.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert failures == []
    assert results == {i: str(i) for i in range(20)}


def test_missing_things_are_not_found(stage: Stage) -> None:
    with pytest.raises(SandboxNotFoundError, match="not found"):
        Sandbox.get("no-such-sandbox")
    ghost = Sandbox(
        {"metadata": {"name": "no-such-sandbox", "namespace": stage.ns}}, client=stage.tenant
    )
    with pytest.raises(SandboxNotFoundError):
        ghost.commands.run("true")
