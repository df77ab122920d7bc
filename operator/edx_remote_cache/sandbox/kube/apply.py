"""Server-side apply and field managers (metadata.managedFields), with structured-merge semantics.

Every write records which manager set which fields: an ``Update`` entry per manager (the ``fieldManager``
parameter, else the User-Agent's product, as kube-apiserver does) and per subresource, taking over the fields it
changed from the others. An apply (``application/apply-patch+yaml``) merges the applied configuration into the
object along the schema's list types (``x-kubernetes-list-type: map`` merges items by their keys, ``set`` by
value, other lists are atomic), answers 409 naming each field another manager owns with a different value (unless
``force=true``, which takes them over), removes what the same manager applied before and no longer applies (when
nobody else owns it), and records the applied set as the manager's ``Apply`` entry.

A field set is a set of paths; a path is a tuple of steps: ``("f", name)`` for a field or map key,
``("k", '{"type":"Ready"}')`` for a list-map item, ``("v", '"x"')`` for a set member. Leaves only: a field that
holds an object is owned through its leaves, so an emptied object is not removed (a simplification).
"""

from __future__ import annotations

import copy
import datetime
import json
from collections.abc import Iterable, Mapping
from typing import Any

Step = tuple[str, str]
Path = tuple[Step, ...]

# Never owned by anyone: identity and what the server sets itself.
_UNOWNED_META = {
    "name", "namespace", "uid", "resourceVersion", "generation", "creationTimestamp", "deletionTimestamp",
    "deletionGracePeriodSeconds", "managedFields", "selfLink",
}  # fmt: skip
_META_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        "finalizers": {"type": "array", "items": {"type": "string"}, "x-kubernetes-list-type": "set"},
    },
}


class ApplyConflict(Exception):
    """Fields another manager owns with another value; ``conflicts`` is [(manager, path text)]."""

    def __init__(self, conflicts: list[tuple[str, str]], api_version: str) -> None:
        self.conflicts, self.api_version = conflicts, api_version
        count = len(conflicts)
        lines = [f'conflict with "{manager}" using {api_version}: {path}' for manager, path in conflicts]
        head = f"Apply failed with {count} conflict{'s' if count != 1 else ''}: "
        super().__init__(head + lines[0] if count == 1 else head + "\n".join(["", *lines]).lstrip("\n"))


def manager_name(field_manager: str | None, user_agent: str) -> str:
    """The manager of a write: ``?fieldManager=``, else the User-Agent's product token (kube-apiserver's rule)."""
    return (field_manager or user_agent.split("/")[0] or "unknown")[:128]


# ---- schema walking ----------------------------------------------------------------------------------------


def _child(schema: Mapping[str, Any] | None, name: str) -> Mapping[str, Any] | None:
    if not schema:
        return None
    props = schema.get("properties") or {}
    if name in props:
        return props[name]  # type: ignore[no-any-return]
    extra = schema.get("additionalProperties")
    return extra if isinstance(extra, Mapping) else None


def _root_child(schema: Mapping[str, Any] | None, name: str) -> Mapping[str, Any] | None:
    return _META_SCHEMA if name == "metadata" else _child(schema, name)


def _list_type(schema: Mapping[str, Any] | None) -> str:
    return str((schema or {}).get("x-kubernetes-list-type") or "atomic")


def _keys(schema: Mapping[str, Any] | None) -> list[str]:
    return list((schema or {}).get("x-kubernetes-list-map-keys") or [])


def _item_key(item: Any, keys: list[str]) -> str:
    return json.dumps({k: item.get(k) for k in keys} if isinstance(item, dict) else item, sort_keys=True)


# ---- field sets --------------------------------------------------------------------------------------------


def field_set(obj: Mapping[str, Any], schema: Mapping[str, Any] | None) -> dict[Path, Any]:
    """The owned leaves of ``obj`` with their values (apiVersion/kind/status of the main resource included)."""
    out: dict[Path, Any] = {}
    for name, value in obj.items():
        if name in ("apiVersion", "kind"):
            continue
        if name == "metadata" and isinstance(value, Mapping):
            owned = {k: v for k, v in value.items() if k not in _UNOWNED_META}
            if owned:
                _walk(owned, _META_SCHEMA, (("f", "metadata"),), out)
        else:
            _walk(value, _root_child(schema, name), (("f", name),), out)
    return out


def _walk(value: Any, schema: Mapping[str, Any] | None, path: Path, out: dict[Path, Any]) -> None:
    if isinstance(value, dict) and value and (schema or {}).get("x-kubernetes-map-type") != "atomic":
        for name, sub in value.items():
            _walk(sub, _child(schema, name), (*path, ("f", name)), out)
        return
    list_type = _list_type(schema)
    if isinstance(value, list) and list_type in ("map", "set"):
        items = (schema or {}).get("items")
        for item in value:
            if list_type == "set":
                out[(*path, ("v", json.dumps(item, sort_keys=True)))] = item
                continue
            keys = _keys(schema)
            item_path = (*path, ("k", _item_key(item, keys)))
            out[(*item_path, ("f", "."))] = None  # the item itself (so an item with only keys is owned)
            for name, sub in (item or {}).items():
                _walk(sub, _child(items, name), (*item_path, ("f", name)), out)
        return
    out[path] = value


def path_text(path: Path) -> str:
    """A path as kube-apiserver prints it in conflicts: ``.spec.a``, ``.status.conditions[type="Ready"]``."""
    text = ""
    for kind, value in path:
        if kind == "f" and value != ".":
            text += f".{value}"
        elif kind == "k":
            text += "[" + ",".join(f"{k}={json.dumps(v)}" for k, v in json.loads(value).items()) + "]"
        elif kind == "v":
            text += f"[={value}]"
    return text


def to_fields_v1(paths: Iterable[Path]) -> dict[str, Any]:
    """The ``fieldsV1`` JSON of a field set (``f:name``, ``k:{...}``, ``v:...``, ``.`` for an item itself)."""
    root: dict[str, Any] = {}
    for path in sorted(paths):
        node = root
        for kind, value in path:
            node = node.setdefault("." if (kind, value) == ("f", ".") else f"{kind}:{value}", {})
    return root


def from_fields_v1(tree: Mapping[str, Any], prefix: Path = ()) -> set[Path]:
    """The leaves of a ``fieldsV1`` tree (as written by :func:`to_fields_v1`, or by a real apiserver)."""
    out: set[Path] = set()
    for key, sub in tree.items():
        if key == ".":
            out.add((*prefix, ("f", ".")))
            continue
        kind, _, value = key.partition(":")
        path = (*prefix, (kind, value))
        children = {k: v for k, v in (sub or {}).items() if k != "."}
        if children and kind != "k":
            out |= from_fields_v1(children, path)
        elif kind == "k":
            out |= from_fields_v1(sub or {}, path) or {(*path, ("f", "."))}
        else:
            out.add(path)
    return out


# ---- managedFields entries ---------------------------------------------------------------------------------


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _entries(meta: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [dict(e) for e in meta.get("managedFields") or [] if isinstance(e, Mapping)]


def _entry_paths(entry: Mapping[str, Any]) -> set[Path]:
    return from_fields_v1(entry.get("fieldsV1") or {})


def _subresource_of(path: Path) -> str:
    return "status" if path[:1] == (("f", "status"),) else ""


def _store(
    ownership: dict[tuple[str, str, str], set[Path]],
    api_version: str,
    previous: Mapping[tuple[str, str, str], Mapping[str, Any]],
) -> list[dict[str, Any]]:
    out = []
    for (manager, operation, subresource), paths in ownership.items():
        if not paths:
            continue
        key = (manager, operation, subresource)
        old = previous.get(key)
        fields = to_fields_v1(paths)
        if old is not None and old.get("fieldsV1") == fields:
            out.append(dict(old))  # unchanged ownership keeps its timestamp (no churn on a no-op apply)
            continue
        entry: dict[str, Any] = {"manager": manager, "operation": operation, "apiVersion": api_version}
        entry["time"] = _now()
        entry |= {"fieldsType": "FieldsV1", "fieldsV1": fields}
        if subresource:
            entry["subresource"] = subresource
        out.append(entry)
    return out


def _ownership(
    meta: Mapping[str, Any],
) -> tuple[dict[tuple[str, str, str], set[Path]], dict[tuple[str, str, str], Mapping[str, Any]]]:
    ownership: dict[tuple[str, str, str], set[Path]] = {}
    previous: dict[tuple[str, str, str], Mapping[str, Any]] = {}
    for entry in _entries(meta):
        key = (
            str(entry.get("manager", "")),
            str(entry.get("operation", "Update")),
            str(entry.get("subresource", "")),
        )
        ownership.setdefault(key, set()).update(_entry_paths(entry))
        previous[key] = entry
    return ownership, previous


def track_update(
    old: Mapping[str, Any] | None,
    new: Mapping[str, Any],
    *,
    manager: str,
    subresource: str | None,
    schema: Mapping[str, Any] | None,
    api_version: str,
) -> list[dict[str, Any]]:
    """managedFields after a non-apply write by ``manager``: it takes over every leaf it set or changed."""
    before = field_set(old, schema) if old is not None else {}
    after = field_set(new, schema)
    changed = {p for p, v in after.items() if p not in before or before[p] != v}
    gone = set(before) - set(after)
    ownership, previous = _ownership((old or {}).get("metadata") or {})
    for key in ownership:
        ownership[key] -= changed | gone
    mine = ownership.setdefault((manager, "Update", subresource or ""), set())
    mine |= changed
    return _store(ownership, api_version, previous)


# ---- apply -------------------------------------------------------------------------------------------------


def _merge(current: Any, applied: Any, schema: Mapping[str, Any] | None) -> Any:
    if isinstance(applied, dict) and isinstance(current, dict):
        if (schema or {}).get("x-kubernetes-map-type") == "atomic":
            return copy.deepcopy(applied)
        out = dict(current)
        for name, value in applied.items():
            out[name] = _merge(current.get(name), value, _child(schema, name))
        return out
    list_type = _list_type(schema)
    if isinstance(applied, list) and isinstance(current, list) and list_type in ("map", "set"):
        if list_type == "set":
            return list(current) + [v for v in applied if v not in current]
        keys, items = _keys(schema), (schema or {}).get("items")
        merged = list(current)
        index = {_item_key(item, keys): i for i, item in enumerate(merged)}
        for item in applied:
            at = index.get(_item_key(item, keys))
            if at is None:
                merged.append(copy.deepcopy(item))
            else:
                merged[at] = _merge(merged[at], item, items)
        return merged
    return copy.deepcopy(applied)


def _remove(obj: Any, path: Path, schema: Mapping[str, Any] | None) -> None:
    """Remove one leaf (a field, a set member, or a list-map item) from ``obj`` in place."""
    node, node_schema = obj, schema
    for depth, (kind, value) in enumerate(path):
        last = depth == len(path) - 1
        if kind == "f":
            if value == ".":
                return
            if not isinstance(node, dict) or value not in node:
                return
            if last:
                del node[value]
                return
            node_schema = (_root_child if depth == 0 else _child)(node_schema, value)
            node = node[value]
        elif isinstance(node, list):
            keys = _keys(node_schema)
            match = [
                i
                for i, item in enumerate(node)
                if (json.dumps(item, sort_keys=True) if kind == "v" else _item_key(item, keys)) == value
            ]
            if not match:
                return
            if last or kind == "v" or path[depth + 1] == ("f", "."):
                del node[match[0]]
                return
            node_schema = (node_schema or {}).get("items")
            node = node[match[0]]


def apply(
    current: Mapping[str, Any] | None,
    applied: Mapping[str, Any],
    *,
    manager: str,
    force: bool,
    subresource: str | None,
    schema: Mapping[str, Any] | None,
    api_version: str,
) -> dict[str, Any]:
    """The object after ``manager`` applies ``applied`` (raises ApplyConflict), with its new managedFields."""
    base = copy.deepcopy(dict(current)) if current is not None else {}
    meta = base.get("metadata") or {}
    ownership, previous = _ownership(meta)
    wanted = field_set(applied, schema)
    if subresource != "status":
        wanted = {p: v for p, v in wanted.items() if _subresource_of(p) != "status"}
    present = field_set(base, schema)
    mine_key = (manager, "Apply", subresource or "")
    conflicts = []
    for key, paths in ownership.items():
        if key[0] == manager:
            continue
        for path in sorted(paths & set(wanted)):
            if path in present and present[path] != wanted[path]:
                conflicts.append((key, path))
    if conflicts and not force:
        raise ApplyConflict([(key[0], path_text(path)) for key, path in conflicts], api_version)
    for key, path in conflicts:
        ownership[key].discard(path)
    merged = _merge(
        base, {k: v for k, v in applied.items() if k != "status" or subresource == "status"}, schema
    )
    merged_meta = merged.setdefault("metadata", {})
    for name in ("name", "namespace"):
        if name in meta:
            merged_meta[name] = meta[name]
    others = set().union(*(p for k, p in ownership.items() if k != mine_key))
    for path in sorted(ownership.get(mine_key, set()) - set(wanted) - others, reverse=True):
        _remove(merged, path, schema)
    for key in ownership:
        if key[0] == manager and key != mine_key:
            ownership[key] -= set(wanted)  # the manager's own earlier Update entry hands over to its Apply
    ownership[mine_key] = set(wanted)
    merged_meta["managedFields"] = _store(ownership, api_version, previous)
    return merged
