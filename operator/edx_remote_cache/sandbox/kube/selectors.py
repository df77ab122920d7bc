"""Label and field selectors, parsed and matched like the apiserver (the field labels each kind supports)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import ApiError

_REQUIREMENT = re.compile(
    r"^\s*(?P<neg>!)?\s*(?P<key>[A-Za-z0-9./_-]+)\s*"
    r"(?:(?P<op>==|=|!=|\s+in\s+|\s+notin\s+)\s*(?P<value>\([^)]*\)|[A-Za-z0-9._-]*))?\s*$"
)


def _split_selector(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in text:
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
            continue
        depth += {"(": 1, ")": -1}.get(char, 0)
        current += char
    parts.append(current)
    return [p for p in parts if p.strip()]


def parse_selector(text: str | None, *, fields: bool) -> list[tuple[str, str, frozenset[str]]]:
    """(key, op, values) requirements; ops: exists, !exists, in, notin. Raises 400 on nonsense."""
    out: list[tuple[str, str, frozenset[str]]] = []
    for raw in _split_selector(text or ""):
        match = _REQUIREMENT.match(raw)
        if not match or (fields and not match.group("op")):
            raise ApiError.bad_request(f"unable to parse requirement: {raw.strip()!r}")
        key, op, value = match.group("key"), (match.group("op") or "").strip(), match.group("value") or ""
        if match.group("neg"):
            if op:
                raise ApiError.bad_request(f"unable to parse requirement: {raw.strip()!r}")
            out.append((key, "!exists", frozenset()))
        elif not op:
            out.append((key, "exists", frozenset()))
        elif op in ("=", "=="):
            out.append((key, "in", frozenset([value])))
        elif op == "!=":
            out.append((key, "notin", frozenset([value])))
        else:
            values = frozenset(v.strip() for v in value.strip("()").split(",") if v.strip())
            out.append((key, op, values))
    return out


def _field_value(obj: Mapping[str, Any], dotted: str) -> str | None:
    node: Any = obj
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    if isinstance(node, bool):
        return "true" if node else "false"
    return None if node is None else str(node)


def selected(
    obj: Mapping[str, Any], labels: Sequence[tuple[str, str, frozenset[str]]], fields: Sequence[Any]
) -> bool:
    obj_labels = (obj.get("metadata") or {}).get("labels") or {}
    for key, op, values in labels:
        present = key in obj_labels
        if (op == "exists" and not present) or (op == "!exists" and present):
            return False
        if op == "in" and (not present or obj_labels[key] not in values):
            return False
        if op == "notin" and present and obj_labels[key] in values:
            return False
    for key, op, values in fields:
        actual = _field_value(obj, key) or ""
        if (op == "in" and actual not in values) or (op == "notin" and actual in values):
            return False
    return True
