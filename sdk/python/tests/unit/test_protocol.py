"""The wire: query building, channel messages, exit statuses."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from fast_sandbox import _protocol as p
from fast_sandbox.models import ExecEvent


def test_a_string_runs_through_sh_and_a_list_is_argv() -> None:
    assert p.normalize_command("echo hi; exit 3") == ["sh", "-c", "echo hi; exit 3"]
    assert p.normalize_command(["ls", "-l", "/a b"]) == ["ls", "-l", "/a b"]
    assert p.normalize_command(("true",)) == ["true"]
    empty: str | list[str]
    for empty in ("", "   ", []):
        with pytest.raises(ValueError, match="empty"):
            p.normalize_command(empty)


def test_the_exec_query_is_pods_exec_s_plus_ours_as_the_cli_sends_it() -> None:
    q = p.exec_query(
        ["sh", "-c", "echo $A"],
        stdin=True,
        env={"A": "1"},
        working_dir="/tmp",
        timeout=9,
    )
    path = p.access_path("team", "sb", "exec", q)
    # The same path the Rust CLI builds for the same request.
    assert path == (
        "/apis/subresources.sandbox.fast.io/v1alpha1/namespaces/team/sandboxes/sb/exec"
        "?command=sh&command=-c&command=echo%20%24A&stdin=true&stdout=true&stderr=true"
        "&tty=false&env=A%3D1&workingDir=/tmp&timeoutSeconds=9"
    )
    assert ("detach", "true") in p.exec_query(["x"], detach=True)
    assert ("stdin", "false") in p.exec_query(["x"])
    with pytest.raises(ValueError, match="="):
        p.exec_query(["x"], env={"A=B": "1"})


def test_plus_and_unicode_survive_the_server_s_decoding() -> None:
    # The gateway reads a bare '+' as a space: it must be encoded.
    assert p.quote_value("a+b c&d=é") == "a%2Bb%20c%26d%3D%C3%A9"
    assert p.quote_value("/tmp/x") == "/tmp/x"


def test_timeouts_round_up_to_whole_seconds_within_a_week() -> None:
    assert p.timeout_seconds(None) is None
    assert p.timeout_seconds(0.2) == 1
    assert p.timeout_seconds(10) == 10
    assert p.timeout_seconds(10.01) == 11
    assert p.timeout_seconds(604_800) == 604_800
    for bad in (0, -1, float("nan")):
        with pytest.raises(ValueError, match="positive"):
            p.timeout_seconds(bad)
    # Refused as the server would, not cut short without a word.
    with pytest.raises(ValueError, match="at most 604800"):
        p.timeout_seconds(604_800.5)


def test_a_command_past_the_uri_limit_is_refused_before_it_is_sent() -> None:
    fits = p.exec_query(["echo", "x" * 60_000])
    assert len(p.access_path("team", "sb", "exec", fits)) < p.MAX_REQUEST_TARGET
    with pytest.raises(ValueError, match="pass large data as stdin"):
        p.access_path("team", "sb", "exec", p.exec_query(["echo", "x" * p.MAX_REQUEST_TARGET]))


def test_files_and_log_queries() -> None:
    path = p.access_path("ns", "sb", "files", p.files_query("/tmp/a b+c", "write", mode="755"))
    assert path.endswith("/sandboxes/sb/files?path=/tmp/a%20b%2Bc&op=write&mode=755")
    assert p.files_query("/x", None, recursive="true") == [("path", "/x"), ("recursive", "true")]
    with pytest.raises(ValueError, match="absolute"):
        p.files_query("relative", "read")
    assert p.log_query("stderr", True) == [("stream", "stderr"), ("follow", "true")]
    with pytest.raises(ValueError, match="stdout"):
        p.log_query("both", False)


def test_paths_and_websocket_urls() -> None:
    assert p.sandboxes_path("ns") == "/apis/sandbox.fast.io/v1alpha1/namespaces/ns/sandboxes"
    assert p.sandboxes_path(None) == "/apis/sandbox.fast.io/v1alpha1/sandboxes"
    assert p.websocket_url("https://10.0.0.1:6443", "/x") == "wss://10.0.0.1:6443/x"
    assert p.websocket_url("http://localhost:8001/", "/x") == "ws://localhost:8001/x"
    assert p.websocket_url("https://h/k8s/clusters/c-1", "/x") == "wss://h/k8s/clusters/c-1/x"


def test_messages_carry_their_channel_in_the_first_byte() -> None:
    assert p.stdin_message(b"hi") == b"\x00hi"
    assert p.close_stdin_message() == b"\xff\x00"
    assert p.split_message(b"\x02oops") == (2, b"oops")
    assert p.split_message(b"") == (-1, b"")
    resize = p.resize_message(120, 40)
    assert resize[0] == 4
    assert json.loads(resize[1:]) == {"Width": 120, "Height": 40}


def test_exit_codes_come_from_the_status_as_kubectl_reads_them() -> None:
    assert p.parse_exit_status(b'{"metadata": {}, "status": "Success"}').exit_code == 0
    failed = {
        "status": "Failure",
        "message": "command terminated with non-zero exit code: 42",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": "42"}]},
    }
    st = p.parse_exit_status(json.dumps(failed))
    assert (st.exit_code, st.timed_out, st.reason) == (42, False, "NonZeroExitCode")
    assert "42" in st.message


def test_a_timeout_is_124_with_the_agent_s_message() -> None:
    st = p.parse_exit_status(
        json.dumps(
            {
                "status": "Failure",
                "message": "killed after the timeout of 1s",
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": "124"}]},
            }
        )
    )
    assert (st.exit_code, st.timed_out) == (124, True)
    # A command that exits 124 by itself is not a timeout.
    own = p.parse_exit_status(
        b'{"status":"Failure","message":"command terminated with non-zero exit code: 124",'
        b'"details":{"causes":[{"reason":"ExitCode","message":"124"}]}}'
    )
    assert (own.exit_code, own.timed_out) == (124, False)


def test_a_failure_without_an_exit_code_is_not_an_exit() -> None:
    cut = p.parse_exit_status(
        b'{"status":"Failure","reason":"InternalError","message":"the exec was cut off"}'
    )
    assert cut.exit_code is None
    assert cut.message == "the exec was cut off"
    assert p.parse_exit_status(b"not json").exit_code is None
    assert p.parse_exit_status(b"[1]").exit_code is None
    odd = p.parse_exit_status(
        b'{"status":"Failure","details":{"causes":[{"reason":"ExitCode","message":"x"}]}}'
    )
    assert odd.exit_code is None


def test_the_reader_decodes_utf8_across_messages_and_ends_at_the_status() -> None:
    r = p.ExecReader()
    snow = "☃".encode()
    assert r.feed(b"\x01a" + snow[:1]) == [ExecEvent("stdout", "a", b"a" + snow[:1])]
    assert r.feed(b"\x01" + snow[1:]) == [ExecEvent("stdout", "☃", snow[1:])]
    assert r.feed(b"\x02err") == [ExecEvent("stderr", "err", b"err")]
    assert r.feed(b"\x07ignored") == []
    assert r.status is None
    # An incomplete character left at the end comes out replaced.
    r.feed(b"\x02" + snow[:2])
    tail = r.feed(b'\x03{"status":"Success"}')
    assert tail == [ExecEvent("stderr", "\ufffd")]
    assert r.status is not None and r.status.exit_code == 0
    # A second status changes nothing.
    r.feed(b'\x03{"status":"Failure"}')
    assert r.status.exit_code == 0


def test_input_is_read_lazily_in_bounded_chunks() -> None:
    assert list(p.iter_chunks(b"")) == []
    assert list(p.iter_chunks("é")) == ["é".encode()]
    big = bytes(range(256)) * 1000
    chunks = list(p.iter_chunks(big, 1000))
    assert all(len(c) <= 1000 for c in chunks) and b"".join(chunks) == big
    assert b"".join(p.iter_chunks(io.BytesIO(big), 4096)) == big
    assert list(p.iter_chunks([b"ab", b"", b"cd"], 1)) == [b"a", b"b", b"c", b"d"]

    class Endless(io.RawIOBase):
        """A file that would never end: only what is asked for is read."""

        reads = 0

        def readinto(self, b):  # type: ignore[no-untyped-def]
            Endless.reads += 1
            b[: len(b)] = b"x" * len(b)
            return len(b)

    gen = p.iter_chunks(Endless(), 10)
    assert [next(gen) for _ in range(3)] == [b"x" * 10] * 3
    assert Endless.reads == 3


def test_an_upload_from_a_regular_file_declares_its_length(tmp_path: Path) -> None:
    from fast_sandbox.errors import FastSandboxError
    from fast_sandbox.sandbox import _declared_length, _exactly

    f = tmp_path / "blob"
    f.write_bytes(b"x" * 1000)
    assert _declared_length(os.stat(f)) == 1000
    (tmp_path / "empty").write_bytes(b"")
    assert _declared_length(os.stat(tmp_path / "empty")) is None
    assert _declared_length(os.stat(tmp_path)) is None
    with open(f, "rb") as src:
        assert b"".join(_exactly(src, 600, f)) == b"x" * 600
    with open(f, "rb") as src, pytest.raises(FastSandboxError, match="shrank"):
        b"".join(_exactly(src, 1001, f))
