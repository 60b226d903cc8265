"""The state a namespace's watch keeps for waiters."""

from __future__ import annotations

from typing import Any

import pytest

from fast_sandbox import _watch


def obj(name: str, uid: str, rv: str, phase: str = "Pending") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "uid": uid, "resourceVersion": rv},
        "status": {"phase": phase},
    }


def test_events_keep_the_latest_version_and_deletions() -> None:
    s = _watch.WatchState()
    created = obj("a", "u1", "10")
    # Nothing seen yet: what the caller has is the latest.
    assert s.latest(created) is created
    s.apply("ADDED", obj("a", "u1", "10"))
    s.apply("MODIFIED", obj("a", "u1", "12", "Running"))
    latest = s.latest(created)
    assert latest is not None and latest["status"]["phase"] == "Running"
    s.apply("DELETED", obj("a", "u1", "13", "Terminating"))
    assert s.latest(created) is None
    assert "a" not in s.objects


def test_an_object_of_the_same_name_but_another_uid_is_another_object() -> None:
    s = _watch.WatchState()
    s.apply("ADDED", obj("a", "old", "3", "Running"))
    mine = obj("a", "new", "9")
    assert s.latest(mine) is mine
    # The old one's deletion does not delete mine.
    s.apply("ADDED", obj("a", "new", "9"))
    s.apply("DELETED", obj("a", "old", "10"))
    assert s.latest(mine) is not None


def test_the_caller_s_copy_wins_when_it_is_newer() -> None:
    s = _watch.WatchState()
    s.apply("MODIFIED", obj("a", "u", "5", "Bound"))
    fresher = obj("a", "u", "7", "Running")
    assert s.latest(fresher) is fresher
    # Opaque versions: the watch's wins.
    assert (
        _watch.newer(obj("a", "u", "x"), obj("a", "u", "y"))["metadata"]["resourceVersion"] == "y"
    )


def test_a_relist_is_the_truth() -> None:
    s = _watch.WatchState()
    s.apply("ADDED", obj("a", "u1", "1"))
    s.apply("ADDED", obj("b", "u2", "2"))
    s.replace([obj("b", "u2", "5", "Running"), obj("c", "u3", "6")])
    assert s.latest(obj("a", "u1", "1")) is None, "gone while the watch was down"
    latest = s.latest(obj("b", "u2", "2"))
    assert latest is not None and latest["status"]["phase"] == "Running"
    assert set(s.objects) == {"b", "c"}


def test_tombstones_are_bounded() -> None:
    s = _watch.WatchState()
    for i in range(_watch.TOMBSTONES + 10):
        s.apply("DELETED", obj(f"s{i}", f"u{i}", str(i)))
    assert s.latest(obj("s0", "u0", "0")) is not None, "the oldest were forgotten"
    assert s.latest(obj("s9999", f"u{_watch.TOMBSTONES + 9}", "1")) is None


def test_event_lines_parse() -> None:
    kind, o = _watch.parse_event(b'{"type":"ADDED","object":{"metadata":{"name":"a"}}}')
    assert (kind, o["metadata"]["name"]) == ("ADDED", "a")
    kind, o = _watch.parse_event('{"type":"ERROR","object":{"code":410,"reason":"Expired"}}')
    assert (kind, o["code"]) == ("ERROR", 410)
    with pytest.raises(ValueError, match="watch event"):
        _watch.parse_event(b'{"kind":"Status"}')
