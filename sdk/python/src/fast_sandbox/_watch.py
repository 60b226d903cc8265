"""What a namespace's watch of Sandboxes has seen, without I/O.

Waiting until a sandbox is Ready (or gone) is done on one long-lived watch
per namespace and client rather than one watch per sandbox: a per-sandbox
watch must be opened after the create and is then cut off early, which
costs a new TLS connection and a watch start on every create. The shared
watch starts from a resourceVersion read *before* the first create, so
every change after it arrives; waiters look up the latest object by name
here. The sync and async clients feed this same state.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

#: Deleted objects remembered (by UID), so a waiter that registers after
#: the deletion event still learns of it.
TOMBSTONES = 4096


def resource_version(obj: Mapping[str, Any]) -> str:
    """``metadata.resourceVersion`` of an object, ``""`` when absent."""
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


def uid(obj: Mapping[str, Any]) -> str:
    """``metadata.uid`` of an object, ``""`` when absent."""
    return str((obj.get("metadata") or {}).get("uid") or "")


def newer(a: Mapping[str, Any], b: Mapping[str, Any]) -> Mapping[str, Any]:
    """The later of two observations of one object.

    resourceVersions are opaque by contract but etcd's are integers, which
    every apiserver in practice serves; when they do not parse, the second
    (the watch's, the fresher source) wins.
    """
    try:
        return a if int(resource_version(a)) > int(resource_version(b)) else b
    except ValueError:
        return b


def parse_event(line: bytes | str) -> tuple[str, dict[str, Any]]:
    """The type and object of one watch event line (``ERROR`` carries a Status)."""
    event = json.loads(line)
    if not isinstance(event, dict) or "type" not in event:
        raise ValueError(f"not a watch event: {str(line)[:200]!r}")
    obj = event.get("object")
    return str(event["type"]), dict(obj) if isinstance(obj, dict) else {}


class WatchState:
    """Latest observed Sandbox per name in one namespace, and recent deletions."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self._deleted: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def apply(self, event_type: str, obj: dict[str, Any]) -> None:
        """Records one watch event (``ADDED``, ``MODIFIED``, ``DELETED``)."""
        name = str((obj.get("metadata") or {}).get("name") or "")
        if not name:
            return
        if event_type == "DELETED":
            current = self.objects.get(name)
            if current is not None and uid(current) == uid(obj):
                del self.objects[name]
            self._tombstone(obj)
        elif event_type in ("ADDED", "MODIFIED"):
            self.objects[name] = obj

    def replace(self, items: Iterable[dict[str, Any]]) -> None:
        """Takes a fresh list as the truth: objects missing from it were deleted."""
        fresh = {str((o.get("metadata") or {}).get("name") or ""): o for o in items}
        for name, obj in self.objects.items():
            if name not in fresh or uid(fresh[name]) != uid(obj):
                self._tombstone(obj)
        self.objects = {n: o for n, o in fresh.items() if n}

    def _tombstone(self, obj: dict[str, Any]) -> None:
        key = uid(obj)
        if not key:
            return
        self._deleted[key] = obj
        self._deleted.move_to_end(key)
        while len(self._deleted) > TOMBSTONES:
            self._deleted.popitem(last=False)

    def latest(self, known: Mapping[str, Any]) -> Mapping[str, Any] | None:
        """The latest observation of the object ``known`` is a version of, or
        ``None`` once it was deleted. An object of the same name but another
        UID is another object and does not count."""
        key = uid(known)
        if key and key in self._deleted:
            return None
        name = str((known.get("metadata") or {}).get("name") or "")
        seen = self.objects.get(name)
        if seen is None or (key and uid(seen) != key):
            return known
        return newer(known, seen)
