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


def parse_label_selector(text: str | None) -> list[tuple[str, str, frozenset[str]]]:
    """(key, op, values) requirements; ops: exists, !exists, in, notin. Raises 400 on nonsense."""
    out: list[tuple[str, str, frozenset[str]]] = []
    for raw in _split_selector(text or ""):
        match = _REQUIREMENT.match(raw)
        if not match:
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


# The field labels kube-apiserver supports per kind (any other answers 400, as on a real cluster).
_COMMON_FIELDS = frozenset({"metadata.name", "metadata.namespace"})
_KIND_FIELDS = {
    ("", "Event"): frozenset(
        {
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        }
    ),
    ("", "Namespace"): frozenset({"status.phase"}),
    ("", "Secret"): frozenset({"type"}),
}
_FIELD_ALIASES = {("", "Event", "source"): "source.component"}
_FIELD_TERM = re.compile(r"^(?P<key>[^=!]+?)\s*(?P<op>!=|==|=)(?P<value>.*)$", re.S)


def _split_escaped(text: str) -> list[str]:
    parts, current, escaped = [], "", False
    for char in text:
        if escaped:
            current += "\\" + char
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ",":
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [p for p in parts if p.strip()]


def parse_field_selector(text: str | None, group: str, kind: str) -> list[tuple[str, str, frozenset[str]]]:
    """``key=value``/``key!=value`` terms (values may hold ``/`` and ``:``; ``\\,`` escapes a comma), restricted
    to the field labels the kind supports; keys are returned as the object paths they select on."""
    out: list[tuple[str, str, frozenset[str]]] = []
    supported = _COMMON_FIELDS | _KIND_FIELDS.get((group, kind), frozenset())
    for term in _split_escaped(text or ""):
        match = _FIELD_TERM.match(term.strip())
        if not match:
            raise ApiError.bad_request(f"invalid selector: '{text}'; can't understand '{term}'")
        key = match.group("key").strip()
        if key not in supported:
            raise ApiError.bad_request(f"field label not supported: {key}")
        value = re.sub(r"\\(.)", r"\1", match.group("value").strip())
        op = "notin" if match.group("op") == "!=" else "in"
        out.append((_FIELD_ALIASES.get((group, kind, key), key), op, frozenset([value])))
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
