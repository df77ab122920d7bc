"""Server-side Tables (``kubectl get`` asks for them): the CRD's printer columns, and the built-in kinds' own."""

from __future__ import annotations

import datetime
import functools
import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import aiohttp.web

from .kinds import ServedKind

_JSONPATH_STEP = re.compile(
    r"""\.([^.\[\]]+)|\[(\d+)\]|\[\?\(@\.([A-Za-z0-9_]+)\s*==\s*["']([^"']*)["']\)\]"""
)


def jsonpath(obj: Any, path: str) -> Any:
    """The printer-column JSONPath subset: ``.a.b``, ``.a[0].b`` and the filter ``.a[?(@.type=="Ready")].b``
    (the first matching item, as kubectl prints a one-element result)."""
    node = obj
    for name, index, key, value in _JSONPATH_STEP.findall(path):
        if name:
            node = node.get(name) if isinstance(node, dict) else None
        elif index:
            node = node[int(index)] if isinstance(node, list) and int(index) < len(node) else None
        else:
            matches = [i for i in node if isinstance(i, dict) and str(i.get(key)) == value] if isinstance(
                node, list) else []  # fmt: skip
            node = matches[0] if matches else None
        if node is None:
            return None
    return node


def _human_age(timestamp: str) -> str | None:
    """k8s.io/apimachinery's duration.HumanDuration of the time since ``timestamp`` (what the AGE column shows)."""
    try:
        then = datetime.datetime.fromisoformat(timestamp)
    except (TypeError, ValueError):
        return None
    seconds = int((datetime.datetime.now(datetime.UTC) - then).total_seconds())
    if seconds < 0:
        return "0s"
    if seconds < 120:
        return f"{seconds}s"
    minutes, hours, days = seconds // 60, seconds // 3600, seconds // 86400
    if minutes < 10:
        return f"{minutes}m{seconds % 60}s" if seconds % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{days}d{hours % 24}h" if hours % 24 else f"{days}d"
    if days < 365 * 2:
        return f"{days}d"
    return f"{days // 365}y{days % 365}d" if days < 365 * 8 and days % 365 else f"{days // 365}y"


def _column(
    name: str, kind: str = "string", priority: int = 0, fmt: str = "", doc: str = ""
) -> dict[str, Any]:
    return {"name": name, "type": kind, "format": fmt, "description": doc, "priority": priority}


def _event_last_seen(event: Mapping[str, Any]) -> str | None:
    stamp = event.get("lastTimestamp") or event.get("eventTime") or event["metadata"].get("creationTimestamp")
    return _human_age(str(stamp)) if stamp else None


def _event_object(event: Mapping[str, Any]) -> str:
    involved = event.get("involvedObject") or {}
    return f"{str(involved.get('kind', '')).lower()}/{involved.get('name', '')}"


# kube-apiserver's printer for core/v1 Events (pkg/printers/internalversion): what `kubectl get events` shows.
_EVENT_COLUMNS: tuple[tuple[dict[str, Any], Callable[[Mapping[str, Any]], Any]], ...] = (
    (_column("Last Seen", doc="Time since the event was last seen"), _event_last_seen),
    (_column("Type"), lambda e: e.get("type", "")),
    (_column("Reason"), lambda e: e.get("reason", "")),
    (_column("Object"), _event_object),
    (_column("Subobject", priority=1), lambda e: (e.get("involvedObject") or {}).get("fieldPath", "")),
    (_column("Source", priority=1), lambda e: (e.get("source") or {}).get("component", "")),
    (_column("Message"), lambda e: e.get("message", "")),
    (_column("First Seen", priority=1), lambda e: _human_age(str(e.get("firstTimestamp") or "")) or ""),
    (_column("Count", "integer", priority=1), lambda e: e.get("count", 1)),
    (_column("Name", priority=1, fmt="name"), lambda e: e["metadata"]["name"]),
)


def _printer_cell(obj: Mapping[str, Any], col: Mapping[str, Any]) -> Any:
    value = jsonpath(obj, col["jsonPath"])
    if value is not None and col.get("type") == "date":
        return _human_age(str(value))
    if value is not None and col.get("type", "string") == "string" and not isinstance(value, str):
        return json.dumps(value, separators=(",", ":"))
    return value


def _columns(kind: ServedKind) -> list[tuple[dict[str, Any], Callable[[Mapping[str, Any]], Any]]]:
    if kind.kind == "Event" and not kind.group:
        return list(_EVENT_COLUMNS)
    name = _column("Name", fmt="name", doc="Name of the object")
    columns: list[tuple[dict[str, Any], Callable[[Mapping[str, Any]], Any]]] = [
        (name, lambda obj: obj["metadata"]["name"])
    ]
    for col in kind.printer_columns:
        definition = _column(
            col["name"], col.get("type", "string"), col.get("priority", 0), col.get("format", ""),
            col.get("description", ""),
        )  # fmt: skip
        columns.append((definition, functools.partial(_printer_cell, col=col)))
    return columns


def build_table(
    kind: ServedKind, objs: Sequence[Mapping[str, Any]], *, include: str, headers: bool, rv: int
) -> dict[str, Any]:
    """A meta.k8s.io/v1 Table: Name plus the printer columns (Events: the apiserver's own columns)."""
    columns = _columns(kind)
    rows = []
    for obj in objs:
        row: dict[str, Any] = {"cells": [cell(obj) for _, cell in columns]}
        if include == "Object":
            row["object"] = obj
        elif include != "None":
            metadata = {
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": obj["metadata"],
            }
            row["object"] = metadata
        rows.append(row)
    table: dict[str, Any] = {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": str(rv)},
    }
    if headers:
        table["columnDefinitions"] = [definition for definition, _ in columns]
    table["rows"] = rows
    return table


def wants_table(raw: aiohttp.web.BaseRequest, kind: ServedKind) -> bool:
    tabled = bool(kind.printer_columns) or (kind.kind == "Event" and not kind.group)
    return tabled and "as=Table" in raw.headers.get("Accept", "")
