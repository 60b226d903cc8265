"""Values parsed from the server's JSON."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from fast_sandbox import CommandExitError, CommandResult, FileInfo, SandboxStatus
from fast_sandbox.models import parse_time


def test_a_full_status_parses() -> None:
    st = SandboxStatus.from_dict(
        {
            "phase": "Running",
            "reason": "Started",
            "conditions": [
                {
                    "type": "Scheduled",
                    "status": "True",
                    "reason": "Bound",
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                },
                {"type": "Ready", "status": "True", "reason": "Started"},
            ],
            "containerID": "c1",
            "nodeName": "n1",
            "startedAt": "2026-01-01T00:00:01.123456789Z",
            "endpoints": [{"name": "http", "address": "10.0.0.5:40000", "protocol": "TCP"}],
            "observedGeneration": 1,
        }
    )
    assert st.ready and st.phase == "Running"
    scheduled = st.condition("Scheduled")
    assert scheduled is not None
    assert scheduled.last_transition_time == datetime(2026, 1, 1, tzinfo=timezone.utc)
    assert st.started_at == datetime(2026, 1, 1, 0, 0, 1, 123456, tzinfo=timezone.utc)
    assert st.endpoints[0].address == "10.0.0.5:40000"
    assert (st.container_id, st.node_name, st.observed_generation) == ("c1", "n1", 1)
    assert SandboxStatus.from_dict(None).phase == "Pending"
    assert not SandboxStatus.from_dict({"phase": "Failed", "exitCode": 3}).ready


def test_times() -> None:
    assert parse_time(None) is None
    assert parse_time("garbage") is None
    assert parse_time("2026-01-01T00:00:00.5+02:00") == datetime.fromisoformat(
        "2026-01-01T00:00:00.500000+02:00"
    )


def test_results_decode_and_check() -> None:
    r = CommandResult(3, b"hi\n", b"\xffoops\n", "command terminated with non-zero exit code: 3")
    assert (r.exit_code, r.stdout, r.ok) == (3, "hi\n", False)
    assert r.stderr == "\ufffdoops\n"
    with pytest.raises(CommandExitError, match="exited with code 3") as e:
        r.check()
    assert e.value.exit_code == 3 and e.value.result is r
    ok = CommandResult(0, b"x")
    assert ok.check() is ok


def test_file_info() -> None:
    f = FileInfo.from_dict(
        {
            "name": "l",
            "path": "/tmp/l",
            "type": "symlink",
            "size": 4,
            "mode": 511,
            "modifiedAt": "1970-01-01T00:00:00Z",
            "linkTarget": "/etc",
        }
    )
    assert (f.type, f.mode, f.link_target, f.is_dir, f.is_file) == (
        "symlink",
        0o777,
        "/etc",
        False,
        False,
    )
    assert FileInfo.from_dict({"name": "d", "path": "/d", "type": "directory"}).is_dir
