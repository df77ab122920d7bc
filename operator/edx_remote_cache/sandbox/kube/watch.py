"""Watch plumbing: the event log entries and one open watch's filters and queue."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

from .kinds import ServedKind
from .selectors import selected
from .tables import build_table


@dataclasses.dataclass(frozen=True)
class WatchEvent:
    rv: int
    kind: ServedKind
    type: str  # ADDED, MODIFIED, DELETED
    obj: dict[str, Any]
    prev: dict[str, Any] | None


class Watcher:
    """One open watch: its filters and the queue of serialized events still to be written."""

    def __init__(
        self,
        kind: ServedKind,
        namespace: str | None,
        name: str | None,
        labels: Sequence[tuple[str, str, frozenset[str]]],
        fields: Sequence[tuple[str, str, frozenset[str]]],
    ) -> None:
        self.kind, self.namespace, self.name, self.labels, self.fields = kind, namespace, name, labels, fields
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.table: str | None = None  # includeObject mode when the client asked for Table events
        self._headers_sent = False

    def line(self, kind: str, obj: Mapping[str, Any]) -> bytes:
        if self.table is None or kind == "BOOKMARK":
            return watch_line(kind, obj)
        rv = int(obj["metadata"]["resourceVersion"])
        table = build_table(self.kind, [obj], include=self.table, headers=not self._headers_sent, rv=rv)
        self._headers_sent = True
        return watch_line(kind, table)

    def matches(self, obj: Mapping[str, Any] | None) -> bool:
        if obj is None:
            return False
        meta = obj.get("metadata") or {}
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return False
        if self.name is not None and meta.get("name") != self.name:
            return False
        return selected(obj, self.labels, self.fields)

    def translate(self, event: WatchEvent) -> bytes | None:
        """The event as this watcher sees it: objects entering/leaving its selection become ADDED/DELETED."""
        now_in = self.matches(event.obj)
        if event.type == "MODIFIED":
            was_in = self.matches(event.prev)
            kind = "MODIFIED" if now_in and was_in else "ADDED" if now_in else "DELETED" if was_in else None
        else:
            kind = event.type if now_in else None
        return None if kind is None else self.line(kind, event.obj)


def watch_line(kind: str, obj: Mapping[str, Any]) -> bytes:
    return json.dumps({"type": kind, "object": obj}, separators=(",", ":")).encode() + b"\n"
