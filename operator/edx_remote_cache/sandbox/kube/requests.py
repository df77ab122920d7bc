"""Requests: routing of API paths, the request log the tests read, patches and ObjectMeta validation."""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp.web

from .errors import FieldError
from .kinds import ServedKind

GENERATE_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # the apiserver's, without vowels
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
SERVER_MANAGED_META = (
    "uid",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "generation",
    "resourceVersion",
    "selfLink",
    "managedFields",
)


@dataclasses.dataclass
class RequestRecord:
    """One request the emulator answered; ``status_write`` marks PATCH/PUT to a ``/status`` subresource."""

    time: float  # time.time() at arrival
    method: str
    path: str
    query: str
    verb: str  # get, list, watch, create, update, patch, delete, deletecollection; or the HTTP method lowercased
    kind: str | None
    namespace: str | None
    name: str | None
    subresource: str | None
    status_write: bool
    user_agent: str
    code: int | None = None  # None while a watch is being set up or if the request failed hard

    @property
    def is_write(self) -> bool:
        return self.verb in ("create", "update", "patch", "delete", "deletecollection")


@dataclasses.dataclass(frozen=True)
class Route:
    group: str
    version: str
    plural: str | None
    namespace: str | None
    name: str | None
    subresource: str | None


def parse_route(path: str) -> Route | None:
    """Parse /api/v1/... and /apis/g/v/...; unlike kmock, ``/api/v1/namespaces[/name]`` is the namespaces kind."""
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 2 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    if not rest:
        return Route(group, version, None, None, None, None)
    namespace = None
    if (
        rest[0] == "namespaces"
        and len(rest) >= 3
        and not (len(rest) == 3 and rest[2] in ("status", "finalize"))
    ):
        namespace, rest = rest[1], rest[2:]
    name = rest[1] if len(rest) > 1 else None
    return Route(group, version, rest[0], namespace, name, "/".join(rest[2:]) or None)


def json_response(body: Any, code: int = 200, warnings: Sequence[str] = ()) -> aiohttp.web.Response:
    quoted = [w.replace("\\", "\\\\").replace('"', '\\"') for w in warnings]  # RFC 7234 quoted-string
    headers = {"Warning": ", ".join(f'299 - "{w}"' for w in quoted)} if warnings else None
    text = json.dumps(body, separators=(",", ":"))
    return aiohttp.web.Response(text=text, status=code, content_type="application/json", headers=headers)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge-patch: objects merge, null deletes, everything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def without_meta(obj: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k != "metadata"}


def meta_errors(kind: ServedKind, meta: Mapping[str, Any]) -> list[FieldError]:
    errors: list[FieldError] = []
    name = meta.get("name", "")
    if kind.plural == "namespaces":
        if not (_DNS1123_LABEL.match(name) and len(name) <= 63):
            detail = (
                "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must"
                " start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for"
                " validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
            )
            errors.append(FieldError("metadata.name", "Invalid value", name, detail))
    elif not (_DNS1123_SUBDOMAIN.match(name) and len(name) <= 253):
        detail = (
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and"
            " must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation"
            " is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
        )
        errors.append(FieldError("metadata.name", "Invalid value", name, detail))
    labels = meta.get("labels") or {}
    if not isinstance(labels, dict):
        return [*errors, FieldError("metadata.labels", "Invalid value", "object", "must be a map of strings")]
    for key, value in labels.items():
        prefix, _, label = key.rpartition("/")
        if (
            (prefix and not _DNS1123_SUBDOMAIN.match(prefix))
            or not _LABEL_NAME.match(label)
            or len(label) > 63
        ):
            errors.append(
                FieldError("metadata.labels", "Invalid value", key, "name part must be a valid label key")
            )
        if not isinstance(value, str) or not _LABEL_VALUE.match(value) or len(value) > 63:
            detail = (
                "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.'"
            )
            errors.append(FieldError(f"metadata.labels[{key}]", "Invalid value", value, detail))
    return errors
