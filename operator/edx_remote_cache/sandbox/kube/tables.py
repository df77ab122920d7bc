"""Server-side Tables (``kubectl get`` asks for them): the CRD's printer columns, and the built-in kinds' own."""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp.web

from .kinds import ServedKind

_JSONPATH_STEP = re.compile(r"\.([^.\[\]]+)|\[(\d+)\]")


def jsonpath(obj: Any, path: str) -> Any:
    """The simple printer-column JSONPath subset: ``.a.b``, ``.a[0].b``."""
    node = obj
    for name, index in _JSONPATH_STEP.findall(path):
        if name:
            node = node.get(name) if isinstance(node, dict) else None
        else:
            node = node[int(index)] if isinstance(node, list) and int(index) < len(node) else None
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


def build_table(
    kind: ServedKind, objs: Sequence[Mapping[str, Any]], *, include: str, headers: bool, rv: int
) -> dict[str, Any]:
    """A meta.k8s.io/v1 Table: Name plus the printer columns, one row per object."""
    columns = [
        {
            "name": "Name",
            "type": "string",
            "format": "name",
            "description": "Name of the object",
            "priority": 0,
        }
    ]
    columns += [
        {
            "name": col["name"],
            "type": col.get("type", "string"),
            "format": col.get("format", ""),
            "description": col.get("description", ""),
            "priority": col.get("priority", 0),
        }
        for col in kind.printer_columns
    ]
    rows = []
    for obj in objs:
        cells: list[Any] = [obj["metadata"]["name"]]
        for col in kind.printer_columns:
            value = jsonpath(obj, col["jsonPath"])
            if value is not None and col.get("type") == "date":
                value = _human_age(str(value))
            elif value is not None and col.get("type", "string") == "string" and not isinstance(value, str):
                value = json.dumps(value, separators=(",", ":"))
            cells.append(value)
        row: dict[str, Any] = {"cells": cells}
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
        table["columnDefinitions"] = columns
    table["rows"] = rows
    return table


def wants_table(raw: aiohttp.web.BaseRequest, kind: ServedKind) -> bool:
    return bool(kind.printer_columns) and "as=Table" in raw.headers.get("Accept", "")
