"""The sandbox's Kubernetes API: kmock's KubernetesEmulator, made faithful enough to run a real kopf operator.

Stock kmock 0.8 is an in-memory JSON store: it stamps no resourceVersion/uid/generation/creationTimestamp (so
kopf's finalizer JSON-patch, guarded by ``test /metadata/resourceVersion``, fails with a 500 and ``on.create``
never runs), cannot parse ``GET /api/v1/namespaces``, does not isolate ``/status``, does no schema validation and
replays no watch history. The subclass below serves every resource path itself and keeps kmock for the HTTP
server, the discovery documents (/api, /apis) and the object store with per-object history. Stock kmock's
``kmock.Server`` also patches aiohttp's resolver for the whole process (and raises unless servers exit in LIFO
order), so the emulator is served by a subclass without that interceptor.

What the emulator does (a real apiserver's rules): resourceVersion from one global counter, bumped on every
write and on nothing else (a no-op patch writes nothing); uid/creationTimestamp on create; metadata.generation
on custom resources, bumped when anything but metadata/status changes; generateName; merge-patch and
JSON-patch (a failed ``test`` op answers 422); PUT with optimistic concurrency (409); the status subresource
(``/status`` writes change only status, main writes never change status; status is dropped on create);
finalizers and deletionTimestamp (no new finalizers once deleting); the CRD's structural schema on
create/update/patch/status (pruning of unknown fields with a ``Warning`` header, or 400 with
``?fieldValidation=Strict``; defaults; validation answered with 422 and a ``Status`` naming each field);
namespaces must exist and deleting one deletes its content; list with label/field selectors and limit/continue;
watch from ``?resourceVersion=N`` (only later events; 410 Expired once compacted), ``sendInitialEvents`` with the
initial-events-end bookmark, ``timeoutSeconds``, selector transitions as ADDED/DELETED; server-side Tables
for the CRD's printer columns (``kubectl get erc`` shows Phase/Endpoint/Hit%/Hosts/Age).

What it does NOT do (README material):

- no authentication, authorization or RBAC: every request is anonymous and allowed; plain HTTP, no TLS;
- no admission: no webhooks (kopf's admission handlers are never called), no CEL/x-kubernetes-validations, no
  validation ratcheting, no ResourceQuota/LimitRange; the NamespaceLifecycle check is the only admission rule;
- no server-side apply (``application/apply-patch+yaml`` answers 415) and no managedFields/field managers;
  strategic-merge-patch is accepted for built-in kinds only and applied as a plain JSON merge-patch;
- no controllers: no garbage collection by ownerReferences, propagationPolicy is ignored, no event TTL,
  no Pods/Deployments/Services at all (served: namespaces, events, configmaps, secrets, leases,
  customresourcedefinitions, the project's CRD, kopf's KopfPeering/ClusterKopfPeering);
- CRDs are stored and listed, but creating or changing one at runtime does not change what is served;
  one version per CRD, no conversion, no scale subresource; server-side Tables only for CRDs' printer columns;
- built-in kinds are not validated (only metadata.name and labels), and PUT never creates;
- no periodic watch BOOKMARKs, no watch cache semantics for ``resourceVersionMatch``; list continue tokens
  are offsets into the current state, not snapshots; field selectors accept any dotted path;
- no aggregated discovery, no OpenAPI documents (/openapi/v2, /openapi/v3 answer 404), so ``kubectl create``
  and ``kubectl apply`` need ``--validate=false`` (the server still validates), and there is no
  ``kubectl explain``; no protobuf; no rate limiting (API Priority and Fairness) and no request timeouts;
- state lives in memory only and is lost on stop.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import concurrent.futures
import contextlib
import copy
import dataclasses
import datetime
import http.client
import json
import logging
import pathlib
import random
import re
import threading
import time
import traceback
import urllib.parse
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import aiohttp.test_utils
import aiohttp.web
import jsonpatch
import jsonpointer
import jsonschema
import kmock
import yaml

from edx_remote_cache.sandbox.kube_cel import transition_errors

if TYPE_CHECKING:
    import kopf

logger = logging.getLogger(__name__)

HELPER_USER_AGENT = "edx-remote-cache-sandbox/kube-helpers"
WATCH_HISTORY = 10_000  # watch events kept for ?resourceVersion=N; older ones answer 410 Expired
DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")

_GENERATE_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # the apiserver's, without vowels
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_SERVER_MANAGED_META = (
    "uid",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "generation",
    "resourceVersion",
    "selfLink",
    "managedFields",
)

# kopf's own peering CRDs, as published in kopf's docs (no status subresource: kopf writes the main resource).
_PEERING_SCHEMA = {
    "type": "object",
    "properties": {"status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
}
KOPF_PEERING_CRDS: tuple[dict[str, Any], ...] = tuple(
    {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.kopf.dev"},
        "spec": {
            "scope": scope,
            "group": "kopf.dev",
            "names": {"kind": kind, "plural": plural, "singular": plural[:-1]},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": _PEERING_SCHEMA},
                }
            ],
        },
    }
    for kind, plural, scope in (
        ("ClusterKopfPeering", "clusterkopfpeerings", "Cluster"),
        ("KopfPeering", "kopfpeerings", "Namespaced"),
    )
)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------------------------------------------
# Errors: what the apiserver answers (a v1 Status), and what the sync helpers raise.


class KubeApiError(Exception):
    """A non-2xx answer of the emulated API, as seen by the sync helpers (``code`` and the ``Status`` body)."""

    def __init__(self, code: int, body: Any) -> None:
        self.code = code
        self.body = body
        self.reason = body.get("reason", "") if isinstance(body, dict) else ""
        self.message = body.get("message", "") if isinstance(body, dict) else str(body)
        super().__init__(f"{code} {self.reason}: {self.message}")


class _ApiError(Exception):
    """Raised inside the emulator; rendered as a Kubernetes ``Status`` like kube-apiserver does."""

    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            body["details"] = self.details
        return body

    @classmethod
    def not_found(cls, kind: ServedKind, name: str) -> _ApiError:
        details = {"name": name, "group": kind.group, "kind": kind.plural}
        return cls(404, "NotFound", f'{kind.group_resource} "{name}" not found', details)

    @classmethod
    def bad_request(cls, message: str) -> _ApiError:
        return cls(400, "BadRequest", message)

    @classmethod
    def conflict(cls, kind: ServedKind, name: str, why: str) -> _ApiError:
        details = {"name": name, "group": kind.group, "kind": kind.plural}
        return cls(
            409,
            "Conflict",
            f'Operation cannot be fulfilled on {kind.group_resource} "{name}": {why}',
            details,
        )

    @classmethod
    def invalid(cls, kind: ServedKind, name: str, errors: Sequence[FieldError]) -> _ApiError:
        text = errors[0].text() if len(errors) == 1 else "[" + ", ".join(e.text() for e in errors) + "]"
        details = {
            "name": name,
            "group": kind.group,
            "kind": kind.kind,
            "causes": [{"reason": e.reason, "message": e.body(), "field": e.field} for e in errors],
        }
        return cls(422, "Invalid", f'{kind.group_kind} "{name}" is invalid: {text}', details)


@dataclasses.dataclass(frozen=True)
class FieldError:
    """One field error, worded like k8s.io/apimachinery's field.Error (``spec.x: Invalid value: 1: detail``)."""

    field: str
    type: str  # "Invalid value", "Required value", "Unsupported value", "Too long", "Too many", "Forbidden"
    value: Any = None
    detail: str = ""
    show_value: bool = True

    _REASONS = {
        "Invalid value": "FieldValueInvalid",
        "Required value": "FieldValueRequired",
        "Unsupported value": "FieldValueNotSupported",
        "Too long": "FieldValueTooLong",
        "Too many": "FieldValueTooMany",
        "Duplicate value": "FieldValueDuplicate",
        "Forbidden": "FieldValueForbidden",
    }

    @property
    def reason(self) -> str:
        return self._REASONS.get(self.type, "FieldValueInvalid")

    def body(self) -> str:
        text = f"{self.type}: {_go_value(self.value)}" if self.show_value else self.type
        return f"{text}: {self.detail}" if self.detail else text

    def text(self) -> str:
        return f"{self.field}: {self.body()}"


class GoLiteral(str):
    """A value printed bare in field errors (e.g. the ``0x0`` of an unset resourceVersion)."""


def _go_value(value: Any) -> str:
    """Values as apimachinery prints them in field errors: quoted strings, bare numbers and booleans."""
    if isinstance(value, GoLiteral):
        return str(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return json.dumps(value, ensure_ascii=False)


# --------------------------------------------------------------------------------------------------------------
# Structural schema: pruning, defaulting and validation as a structural apiserver does them.


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _to_jsonschema(node: Mapping[str, Any]) -> dict[str, Any]:
    """OpenAPI v3 (structural) → JSON Schema 2020-12; defaults and x-kubernetes-* are handled elsewhere."""
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("properties", "patternProperties"):
            out[key] = {k: _to_jsonschema(v) for k, v in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, Mapping):
            out[key] = _to_jsonschema(value)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [_to_jsonschema(v) for v in value]
        elif key.startswith("x-kubernetes-") or key in ("description", "default", "example", "nullable"):
            continue
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and isinstance(value, bool):
            continue  # OpenAPI 3.0's boolean form, translated below
        else:
            out[key] = value
    for bound, flag in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        if node.get(flag) is True and bound in out:
            out[flag] = out.pop(bound)
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    return out


_FORMATS = jsonschema.FormatChecker(formats=())


@_FORMATS.checks("date-time", raises=ValueError)
def _is_date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True
    if "T" not in value.upper() and " " not in value:
        raise ValueError("no time part")
    datetime.datetime.fromisoformat(value.replace("z", "Z"))
    return True


class StructuralSchema:
    """A CRD version's openAPIV3Schema, applied like kube-apiserver: prune, default, then validate."""

    def __init__(self, openapi: Mapping[str, Any]) -> None:
        self.openapi: dict[str, Any] = copy.deepcopy(dict(openapi))
        root = _to_jsonschema(self.openapi)
        root.setdefault("properties", {})["metadata"] = {"type": "object"}  # ObjectMeta is checked separately
        self._validator = jsonschema.Draft202012Validator(root, format_checker=_FORMATS)

    def prune(self, obj: dict[str, Any]) -> list[str]:
        """Drop fields the schema does not know (returns their paths, for the Warning header / Strict mode)."""
        dropped: list[str] = []
        self._prune(obj, self.openapi, "", dropped, root=True)
        return dropped

    def _prune(
        self, value: Any, schema: Mapping[str, Any], path: str, dropped: list[str], root: bool
    ) -> None:
        if isinstance(value, dict):
            props: Mapping[str, Any] = schema.get("properties") or {}
            extra = schema.get("additionalProperties")
            keep_unknown = bool(schema.get("x-kubernetes-preserve-unknown-fields")) or extra is True
            for key in list(value):
                if root and key in ("apiVersion", "kind", "metadata"):
                    continue
                sub = props.get(key, extra if isinstance(extra, Mapping) else None)
                child = (
                    f"{path}.{key}" if key in props or not isinstance(extra, Mapping) else f"{path}[{key}]"
                )
                child = child.lstrip(".")
                if sub is None:
                    if not keep_unknown:
                        dropped.append(child)
                        del value[key]
                elif value[key] is None and not sub.get("nullable"):
                    del value[key]  # non-nullable nulls are pruned before defaulting
                else:
                    self._prune(value[key], sub, child, dropped, root=False)
        elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
            for index, item in enumerate(value):
                self._prune(item, schema["items"], f"{path}[{index}]", dropped, root=False)

    def apply_defaults(self, obj: dict[str, Any]) -> None:
        """Fill ``default`` values into objects that are present (as a structural apiserver does on decode)."""
        for key, sub in (self.openapi.get("properties") or {}).items():
            if key == "metadata":
                continue
            if key not in obj and "default" in sub:
                obj[key] = copy.deepcopy(sub["default"])
            if key in obj:
                self._default(obj[key], sub)

    def _default(self, value: Any, schema: Mapping[str, Any]) -> None:
        if isinstance(value, dict):
            props: Mapping[str, Any] = schema.get("properties") or {}
            for key, sub in props.items():
                if key not in value and "default" in sub:
                    value[key] = copy.deepcopy(sub["default"])
            extra = schema.get("additionalProperties")
            for key, item in value.items():
                sub = props.get(key, extra if isinstance(extra, Mapping) else None)
                if sub is not None:
                    self._default(item, sub)
        elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
            for item in value:
                self._default(item, schema["items"])

    def errors(self, obj: Mapping[str, Any]) -> list[FieldError]:
        found: list[FieldError] = []
        for err in self._validator.iter_errors(obj):
            found.extend(self._translate(err))
        return sorted(found, key=lambda e: (e.field, e.type))

    def _field_path(self, parts: Iterable[Any]) -> str:
        node: Mapping[str, Any] = self.openapi
        out = ""
        for part in parts:
            if isinstance(part, int):
                out += f"[{part}]"
                node = node.get("items") or {}
                continue
            props = node.get("properties") or {}
            extra = node.get("additionalProperties")
            if part not in props and isinstance(extra, Mapping):
                out += f"[{part}]"
                node = extra
            else:
                out += f".{part}" if out else str(part)
                node = props.get(part) or {}
        return out

    def _translate(self, err: jsonschema.ValidationError) -> list[FieldError]:
        path = self._field_path(err.absolute_path)
        value, rule, limit = err.instance, err.validator, err.validator_value
        where = f"{path or '<root>'} in body"
        if rule == "required":
            missing = [name for name in limit if isinstance(value, dict) and name not in value]
            return [
                FieldError(f"{path}.{name}" if path else name, "Required value", show_value=False)
                for name in missing
            ]
        if rule == "type":
            expected = ",".join(limit) if isinstance(limit, list) else limit
            kind = _json_type(value)
            return [FieldError(path, "Invalid value", kind, f'{where} must be of type {expected}: "{kind}"')]
        if rule == "enum":
            supported = ", ".join(_go_value(v) for v in limit)
            return [FieldError(path, "Unsupported value", value, f"supported values: {supported}")]
        if rule == "maxLength":
            return [
                FieldError(path, "Too long", detail=f"may not be more than {limit} bytes", show_value=False)
            ]
        if rule == "maxItems":
            return [FieldError(path, "Too many", len(value), f"must have at most {limit} items")]
        details = {
            "pattern": f"{where} should match '{limit}'",
            "minimum": f"{where} should be greater than or equal to {limit}",
            "maximum": f"{where} should be less than or equal to {limit}",
            "exclusiveMinimum": f"{where} should be greater than {limit}",
            "exclusiveMaximum": f"{where} should be less than {limit}",
            "minLength": f"{where} should be at least {limit} chars long",
            "minItems": f"{where} should have at least {limit} items",
            "uniqueItems": f"{where} shall not contain duplicates",
            "multipleOf": f"{where} should be a multiple of {limit}",
            "format": f'{where} must be of type {limit}: "{value}"',
            "anyOf": f"{where} must validate one and only one schema (anyOf)",
        }
        if isinstance(value, (dict, list)) and rule not in ("minItems", "uniqueItems"):
            value = _json_type(value)
        return [FieldError(path, "Invalid value", value, details.get(rule, f"{where}: {err.message}"))]


# --------------------------------------------------------------------------------------------------------------
# Served kinds.


@dataclasses.dataclass(frozen=True, eq=False)
class ServedKind:
    """One resource the emulator serves: its names, scope, subresources, schema and strategy flags."""

    group: str
    version: str
    plural: str
    kind: str
    singular: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    status_subresource: bool = False
    custom: bool = False  # a custom resource: CR strategies (generation, unconditional PUT refused, no SMP)
    has_generation: bool = False
    schema: StructuralSchema | None = None
    printer_columns: tuple[dict[str, Any], ...] = ()  # a CRD version's additionalPrinterColumns

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_resource(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def group_kind(self) -> str:
        return f"{self.kind}.{self.group}" if self.group else self.kind

    @property
    def ref(self) -> kmock.resource:
        return kmock.resource(self.group, self.version, self.plural)

    def path(
        self, namespace: str | None = None, name: str | None = None, subresource: str | None = None
    ) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        parts = [base]
        if self.namespaced and namespace is not None:
            parts.append(f"namespaces/{urllib.parse.quote(namespace)}")
        parts.append(self.plural)
        if name is not None:
            parts.append(urllib.parse.quote(name))
        if subresource is not None:
            parts.append(subresource)
        return "/".join(parts)

    @classmethod
    def from_crd(cls, crd: Mapping[str, Any]) -> ServedKind:
        spec = crd["spec"]
        names = spec["names"]
        version = next(v for v in spec["versions"] if v.get("storage"))
        openapi = (version.get("schema") or {}).get("openAPIV3Schema")
        return cls(
            group=spec["group"],
            version=version["name"],
            plural=names["plural"],
            kind=names["kind"],
            singular=names.get("singular") or names["kind"].lower(),
            namespaced=spec["scope"] == "Namespaced",
            short_names=tuple(names.get("shortNames") or ()),
            categories=tuple(names.get("categories") or ()),
            status_subresource="status" in (version.get("subresources") or {}),
            custom=True,
            has_generation=True,
            schema=StructuralSchema(openapi) if openapi else None,
            printer_columns=tuple(version.get("additionalPrinterColumns") or ()),
        )


def _builtin_kinds() -> list[ServedKind]:
    return [
        ServedKind(
            "", "v1", "namespaces", "Namespace", "namespace", False, ("ns",), (), status_subresource=True
        ),
        ServedKind("", "v1", "events", "Event", "event", True, ("ev",)),
        ServedKind("", "v1", "configmaps", "ConfigMap", "configmap", True, ("cm",)),
        ServedKind("", "v1", "secrets", "Secret", "secret", True),
        ServedKind("coordination.k8s.io", "v1", "leases", "Lease", "lease", True),
        ServedKind(
            "apiextensions.k8s.io",
            "v1",
            "customresourcedefinitions",
            "CustomResourceDefinition",
            "customresourcedefinition",
            False,
            ("crd", "crds"),
            status_subresource=True,
            has_generation=True,
        ),
    ]


_NAMESPACES_KEY = ("", "v1", "namespaces")


# --------------------------------------------------------------------------------------------------------------
# Label and field selectors.

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


def _parse_selector(text: str | None, *, fields: bool) -> list[tuple[str, str, frozenset[str]]]:
    """(key, op, values) requirements; ops: exists, !exists, in, notin. Raises 400 on nonsense."""
    out: list[tuple[str, str, frozenset[str]]] = []
    for raw in _split_selector(text or ""):
        match = _REQUIREMENT.match(raw)
        if not match or (fields and not match.group("op")):
            raise _ApiError.bad_request(f"unable to parse requirement: {raw.strip()!r}")
        key, op, value = match.group("key"), (match.group("op") or "").strip(), match.group("value") or ""
        if match.group("neg"):
            if op:
                raise _ApiError.bad_request(f"unable to parse requirement: {raw.strip()!r}")
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


def _selected(
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


# --------------------------------------------------------------------------------------------------------------
# Server-side tables (``kubectl get`` asks for them; the CRD's additionalPrinterColumns fill them).

_JSONPATH_STEP = re.compile(r"\.([^.\[\]]+)|\[(\d+)\]")


def _jsonpath(obj: Any, path: str) -> Any:
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


def _table(
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
            value = _jsonpath(obj, col["jsonPath"])
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


def _wants_table(raw: aiohttp.web.BaseRequest, kind: ServedKind) -> bool:
    return bool(kind.printer_columns) and "as=Table" in raw.headers.get("Accept", "")


# --------------------------------------------------------------------------------------------------------------
# Watch plumbing.


@dataclasses.dataclass(frozen=True)
class _Event:
    rv: int
    kind: ServedKind
    type: str  # ADDED, MODIFIED, DELETED
    obj: dict[str, Any]
    prev: dict[str, Any] | None


class _Watcher:
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
            return _watch_line(kind, obj)
        rv = int(obj["metadata"]["resourceVersion"])
        table = _table(self.kind, [obj], include=self.table, headers=not self._headers_sent, rv=rv)
        self._headers_sent = True
        return _watch_line(kind, table)

    def matches(self, obj: Mapping[str, Any] | None) -> bool:
        if obj is None:
            return False
        meta = obj.get("metadata") or {}
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return False
        if self.name is not None and meta.get("name") != self.name:
            return False
        return _selected(obj, self.labels, self.fields)

    def translate(self, event: _Event) -> bytes | None:
        """The event as this watcher sees it: objects entering/leaving its selection become ADDED/DELETED."""
        now_in = self.matches(event.obj)
        if event.type == "MODIFIED":
            was_in = self.matches(event.prev)
            kind = "MODIFIED" if now_in and was_in else "ADDED" if now_in else "DELETED" if was_in else None
        else:
            kind = event.type if now_in else None
        return None if kind is None else self.line(kind, event.obj)


def _watch_line(kind: str, obj: Mapping[str, Any]) -> bytes:
    return json.dumps({"type": kind, "object": obj}, separators=(",", ":")).encode() + b"\n"


# --------------------------------------------------------------------------------------------------------------
# Requests: routing and the log the tests read.


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
class _Route:
    group: str
    version: str
    plural: str | None
    namespace: str | None
    name: str | None
    subresource: str | None


def _parse_route(path: str) -> _Route | None:
    """Parse /api/v1/... and /apis/g/v/...; unlike kmock, ``/api/v1/namespaces[/name]`` is the namespaces kind."""
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 2 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    if not rest:
        return _Route(group, version, None, None, None, None)
    namespace = None
    if (
        rest[0] == "namespaces"
        and len(rest) >= 3
        and not (len(rest) == 3 and rest[2] in ("status", "finalize"))
    ):
        namespace, rest = rest[1], rest[2:]
    name = rest[1] if len(rest) > 1 else None
    return _Route(group, version, rest[0], namespace, name, "/".join(rest[2:]) or None)


def _json_response(body: Any, code: int = 200, warnings: Sequence[str] = ()) -> aiohttp.web.Response:
    quoted = [w.replace("\\", "\\\\").replace('"', '\\"') for w in warnings]  # RFC 7234 quoted-string
    headers = {"Warning": ", ".join(f'299 - "{w}"' for w in quoted)} if warnings else None
    text = json.dumps(body, separators=(",", ":"))
    return aiohttp.web.Response(text=text, status=code, content_type="application/json", headers=headers)


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge-patch: objects merge, null deletes, everything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge_patch(result.get(key), value)
    return result


def _without_meta(obj: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k != "metadata"}


def _meta_errors(kind: ServedKind, meta: Mapping[str, Any]) -> list[FieldError]:
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


# --------------------------------------------------------------------------------------------------------------
# The emulator.


class KubeEmulator(kmock.KubernetesEmulator):
    """kmock's KubernetesEmulator with apiserver semantics for every resource path (discovery stays kmock's).

    All state changes happen in synchronous methods on the server's event loop, so each request is atomic.
    The objects live in kmock's ``objects`` store (every version is kept in its history).
    """

    def __init__(
        self,
        kinds: Sequence[ServedKind],
        *,
        crds: Sequence[Mapping[str, Any]] = (),
        namespaces: Sequence[str] = DEFAULT_NAMESPACES,
        watch_history: int = WATCH_HISTORY,
    ) -> None:
        super().__init__()
        self.kinds: dict[tuple[str, str, str], ServedKind] = {}
        self.records: collections.deque[RequestRecord] = collections.deque(maxlen=200_000)
        self.internal_errors: list[str] = []
        self._rv = 0
        self._log: collections.deque[_Event] = collections.deque(maxlen=watch_history)
        self._compacted_rv = 0
        self._watchers: set[_Watcher] = set()
        self._closing = False
        for kind in kinds:
            self.kinds[kind.group, kind.version, kind.plural] = kind
            info = self.resources[kind.ref]
            info.kind, info.singular, info.namespaced = kind.kind, kind.singular, kind.namespaced
            info.shortnames, info.categories = set(kind.short_names), set(kind.categories)
            info.verbs = {"create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"}
            info.subresources = {"status"} if kind.status_subresource else set()
        for name in namespaces:
            self.create_object(self._kind("Namespace"), None, {"metadata": {"name": name}})
        for crd in crds:
            stored = self.create_object(
                self._kind("CustomResourceDefinition"), None, copy.deepcopy(dict(crd))
            )
            status = {
                "acceptedNames": stored["spec"]["names"],
                "storedVersions": [v["name"] for v in stored["spec"]["versions"] if v.get("storage")],
                "conditions": [
                    {"type": t, "status": "True", "reason": r, "lastTransitionTime": _now()}
                    for t, r in (("NamesAccepted", "NoConflicts"), ("Established", "InitialNamesAccepted"))
                ],
            }
            name = stored["metadata"]["name"]
            self.update_object(
                self._kind("CustomResourceDefinition"), None, name, {**stored, "status": status}, "status"
            )

    def _kind(self, kind_name: str) -> ServedKind:
        return next(k for k in self.kinds.values() if k.kind == kind_name)

    @property
    def resource_version(self) -> int:
        return self._rv

    # ---- storage -----------------------------------------------------------------------------------------

    def current(self, kind: ServedKind, namespace: str | None, name: str) -> dict[str, Any] | None:
        key = (kind.ref, namespace if kind.namespaced else None, name)
        if key not in self.objects:
            return None
        stored = self.objects[key]
        return None if stored.deleted else stored.raw

    def live(self, kind: ServedKind, namespace: str | None = None) -> list[dict[str, Any]]:
        found = [
            (ns or "", name, stored.raw)
            for (ref, ns, name), stored in self.objects.items()
            if ref == kind.ref and not stored.deleted and (namespace is None or ns == namespace)
        ]
        return [obj for _, _, obj in sorted(found, key=lambda item: (item[0], item[1]))]

    def _commit(self, kind: ServedKind, event: str, obj: dict[str, Any], prev: dict[str, Any] | None) -> dict:
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        meta = obj["metadata"]
        key = (kind.ref, meta.get("namespace") if kind.namespaced else None, meta["name"])
        if key not in self.objects:
            self.objects[key] = obj
        elif event == "DELETED":
            self.objects[key].history.append(obj)  # the final state is kept in the history, then soft-deleted
            self.objects[key].delete()
        else:
            self.objects[key].history.append(obj)
        if len(self._log) == self._log.maxlen:
            self._compacted_rv = self._log[0].rv
        record = _Event(self._rv, kind, event, obj, prev)
        self._log.append(record)
        for watcher in list(self._watchers):
            if watcher.kind is kind and (line := watcher.translate(record)) is not None:
                watcher.queue.put_nowait(line)
        if event == "DELETED" and kind.namespaced:
            self._finalize_namespace(meta.get("namespace"))
        return obj

    # ---- verbs -------------------------------------------------------------------------------------------

    def create_object(
        self,
        kind: ServedKind,
        namespace: str | None,
        body: Any,
        *,
        dry_run: bool = False,
        strict: bool = False,
    ) -> dict[str, Any]:
        obj, _ = self._prepare_create(kind, namespace, body, strict=strict)
        return obj if dry_run else self._commit(kind, "ADDED", obj, None)

    def _prepare_create(
        self, kind: ServedKind, namespace: str | None, body: Any, *, strict: bool
    ) -> tuple[dict[str, Any], list[str]]:
        if not isinstance(body, dict):
            raise _ApiError.bad_request("the request body must be a JSON object")
        obj = self._typed(kind, copy.deepcopy(body))
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise _ApiError.bad_request("metadata must be an object")
        if kind.namespaced:
            if namespace is None:
                raise _ApiError(404, "NotFound", "the server could not find the requested resource")
            if meta.get("namespace") not in (None, "", namespace):
                raise _ApiError.bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request"
                )
            meta["namespace"] = namespace
            self._check_namespace(kind, namespace)
        else:
            meta.pop("namespace", None)
        if meta.get("resourceVersion"):
            raise _ApiError(
                500, "InternalError", "resourceVersion should not be set on objects to be created"
            )
        if not meta.get("name"):
            if not meta.get("generateName"):
                detail = "name or generateName is required"
                error = FieldError("metadata.name", "Required value", detail=detail, show_value=False)
                raise _ApiError.invalid(kind, "", [error])
            meta["name"] = self._generate_name(kind, namespace, meta["generateName"])
        name = meta["name"]
        if self.current(kind, namespace, name) is not None:
            details = {"name": name, "group": kind.group, "kind": kind.plural}
            raise _ApiError(409, "AlreadyExists", f'{kind.group_resource} "{name}" already exists', details)
        for field in _SERVER_MANAGED_META:
            meta.pop(field, None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = _now()
        if kind.has_generation:
            meta["generation"] = 1
        if kind.status_subresource and kind.custom:
            obj.pop("status", None)  # the CR strategy resets status on create
        if kind.plural == "namespaces":
            meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = name
            obj["spec"] = {"finalizers": ["kubernetes"]}
            obj["status"] = {"phase": "Active"}
        warnings = self._decode(kind, obj, strict=strict)
        self._validate(kind, obj, name)
        return obj, warnings

    def update_object(
        self,
        kind: ServedKind,
        namespace: str | None,
        name: str,
        change: Callable[[dict[str, Any]], Any] | dict[str, Any],
        subresource: str | None = None,
        *,
        replace: bool = False,
        dry_run: bool = False,
        strict: bool = False,
    ) -> tuple[dict[str, Any], list[str]]:
        """PUT (``change`` is the new object) or PATCH (``change`` maps the current object to the new one)."""
        old = self.current(kind, namespace, name)
        if old is None:
            raise _ApiError.not_found(kind, name)
        candidate = change(copy.deepcopy(old)) if callable(change) else copy.deepcopy(change)
        if not isinstance(candidate, dict):
            raise _ApiError.bad_request("the resulting object must be a JSON object")
        candidate = self._typed(kind, candidate)
        meta = candidate.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise _ApiError.bad_request("metadata must be an object")
        old_meta = old["metadata"]
        if meta.get("name", name) != name:
            raise _ApiError.bad_request(
                f"the name of the object ({meta.get('name')}) does not match the name on the URL ({name})"
            )
        if kind.namespaced and meta.get("namespace", namespace) not in (namespace, ""):
            raise _ApiError.bad_request(
                "the namespace of the provided object does not match the namespace sent on the request"
            )
        wanted_rv = meta.get("resourceVersion")
        if wanted_rv and wanted_rv != old_meta["resourceVersion"]:
            raise _ApiError.conflict(
                kind,
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            )
        if replace and not wanted_rv and kind.custom:
            unset = GoLiteral("0x0")
            error = FieldError(
                "metadata.resourceVersion", "Invalid value", unset, "must be specified for an update"
            )
            raise _ApiError.invalid(kind, name, [error])
        for field in _SERVER_MANAGED_META:
            if field in old_meta:
                meta[field] = old_meta[field]
            else:
                meta.pop(field, None)
        meta["name"] = name
        if kind.namespaced:
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        if old_meta.get("deletionTimestamp"):
            added = set(meta.get("finalizers") or ()) - set(old_meta.get("finalizers") or ())
            if added:
                detail = "no new finalizers can be added if the object is being deleted"
                error = FieldError("metadata.finalizers", "Forbidden", detail=detail, show_value=False)
                raise _ApiError.invalid(kind, name, [error])
        warnings = self._decode(kind, candidate, strict=strict)
        if subresource == "status":
            new = copy.deepcopy(old)
            if "status" in candidate:
                new["status"] = candidate["status"]
            else:
                new.pop("status", None)
            candidate = new
        elif kind.status_subresource:
            if "status" in old:
                candidate["status"] = copy.deepcopy(old["status"])
            else:
                candidate.pop("status", None)
            if kind.plural == "namespaces":
                candidate["spec"] = copy.deepcopy(old.get("spec", {}))
        if kind.has_generation and subresource != "status" and _without_meta(candidate) != _without_meta(old):
            candidate["metadata"]["generation"] = old_meta.get("generation", 1) + 1
        self._validate(kind, candidate, name, old)
        if candidate == old:
            return old, warnings  # a no-op: nothing written, no new resourceVersion, no watch event
        if dry_run:
            return candidate, warnings
        if candidate["metadata"].get("deletionTimestamp") and not candidate["metadata"].get("finalizers"):
            return self._commit(kind, "DELETED", candidate, old), warnings
        return self._commit(kind, "MODIFIED", candidate, old), warnings

    def delete_object(
        self,
        kind: ServedKind,
        namespace: str | None,
        name: str,
        options: Mapping[str, Any] | None = None,
        *,
        dry_run: bool = False,
    ) -> tuple[dict[str, Any], bool]:
        """Delete now, or mark for deletion when finalizers remain. Returns (object, deleted-immediately)."""
        old = self.current(kind, namespace, name)
        if old is None:
            raise _ApiError.not_found(kind, name)
        preconditions = (options or {}).get("preconditions") or {}
        meta = old["metadata"]
        for field in ("uid", "resourceVersion"):
            wanted = preconditions.get(field)
            if wanted and wanted != meta.get(field):
                raise _ApiError.conflict(
                    kind,
                    name,
                    f"Precondition failed: {field} in precondition: {wanted}, {field} in object meta: {meta.get(field)}",
                )
        if dry_run:
            return old, not meta.get("finalizers")
        if meta.get("deletionTimestamp"):
            return old, False
        new = copy.deepcopy(old)
        if kind.plural == "namespaces":
            new["metadata"]["deletionTimestamp"] = _now()
            new["status"] = {"phase": "Terminating"}
            self._commit(kind, "MODIFIED", new, old)
            for other in self.kinds.values():
                if other.namespaced:
                    for obj in self.live(other, name):
                        self.delete_object(other, name, obj["metadata"]["name"])
            self._finalize_namespace(name)
            return self.current(kind, None, name) or new, False
        if meta.get("finalizers"):
            new["metadata"]["deletionTimestamp"] = _now()
            new["metadata"]["deletionGracePeriodSeconds"] = 0
            return self._commit(kind, "MODIFIED", new, old), False
        return self._commit(kind, "DELETED", new, old), True

    def _finalize_namespace(self, namespace: str | None) -> None:
        ns_kind = self.kinds[_NAMESPACES_KEY]
        ns = self.current(ns_kind, None, namespace) if namespace else None
        if ns is None or not ns["metadata"].get("deletionTimestamp"):
            return
        if any(self.live(kind, namespace) for kind in self.kinds.values() if kind.namespaced):
            return
        self._commit(ns_kind, "DELETED", copy.deepcopy(ns), ns)

    # ---- helpers of the verbs ----------------------------------------------------------------------------

    @staticmethod
    def _typed(kind: ServedKind, obj: dict[str, Any]) -> dict[str, Any]:
        """The object with apiVersion/kind filled in from the URL (first, as the apiserver prints them)."""
        api_version, kind_name = obj.get("apiVersion"), obj.get("kind")
        if api_version and api_version != kind.api_version:
            raise _ApiError.bad_request(
                f"the API version in the data ({api_version}) does not match the expected API version"
                f" ({kind.api_version})"
            )
        if kind_name and kind_name != kind.kind:
            raise _ApiError.bad_request(
                f"the kind in the data ({kind_name}) does not match the expected kind ({kind.kind})"
            )
        rest = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind")}
        return {"apiVersion": kind.api_version, "kind": kind.kind, **rest}

    def _check_namespace(self, kind: ServedKind, namespace: str) -> None:
        ns = self.current(self.kinds[_NAMESPACES_KEY], None, namespace)
        if ns is None:
            details = {"name": namespace, "kind": "namespaces"}
            raise _ApiError(404, "NotFound", f'namespaces "{namespace}" not found', details)
        if ns["metadata"].get("deletionTimestamp"):
            raise _ApiError(
                403,
                "Forbidden",
                f"{kind.group_resource} is forbidden: unable to create new content in namespace {namespace}"
                " because it is being terminated",
            )

    def _generate_name(self, kind: ServedKind, namespace: str | None, prefix: str) -> str:
        for _ in range(100):
            name = prefix + "".join(random.choices(_GENERATE_NAME_ALPHABET, k=5))
            if self.current(kind, namespace, name) is None:
                return name
        raise _ApiError(500, "InternalError", "could not generate a unique name")

    def _decode(self, kind: ServedKind, obj: dict[str, Any], *, strict: bool) -> list[str]:
        """Prune unknown fields and apply defaults (the decode step); Strict field validation rejects instead."""
        if kind.schema is None:
            return []
        dropped = kind.schema.prune(obj)
        if dropped and strict:
            unknown = ", ".join(f'unknown field "{path}"' for path in dropped)
            raise _ApiError.bad_request(
                f'{kind.kind} in version "{kind.version}" cannot be handled as a {kind.kind}: strict decoding error: {unknown}'
            )
        kind.schema.apply_defaults(obj)
        return [f'unknown field "{path}"' for path in dropped]

    def _validate(
        self, kind: ServedKind, obj: dict[str, Any], name: str, old: Mapping[str, Any] | None = None
    ) -> None:
        errors = _meta_errors(kind, obj["metadata"])
        if kind.schema is not None:
            errors += kind.schema.errors(obj)
            if not errors:  # CEL rules (x-kubernetes-validations) run on a structurally valid object only
                errors += [
                    FieldError(field, "Invalid value", GoLiteral(f'"{type_}"'), message)
                    for field, type_, message in transition_errors(kind.schema.openapi, obj, old)
                ]
        if errors:
            raise _ApiError.invalid(kind, name, errors)

    # ---- discovery fixes over kmock's scaffold -------------------------------------------------------------

    async def _serve_version(self, request: kmock.Request) -> Any:
        body = await super()._serve_version(request)
        if isinstance(body, dict):
            # kmock says "/v1" for the core group; kubectl needs "v1".
            body["groupVersion"] = body.get("groupVersion", "").lstrip("/")
            for entry in body.get("resources", []):
                if "/" in entry["name"]:  # subresources: no short names/categories (kubectl warns otherwise)
                    entry.update(shortNames=[], categories=[], verbs=["get", "patch", "update"])
                else:
                    entry["verbs"] = sorted(entry["verbs"])
        return body

    async def _render_error(self, exc: Exception) -> aiohttp.web.StreamResponse:
        if isinstance(exc, kmock.KubernetesNotFoundError):  # unknown paths: a plain 404, no kmock hints
            error = _ApiError(404, "NotFound", "the server could not find the requested resource")
            return _json_response(error.status(), 404)
        return await super()._render_error(exc)

    async def _serve_server_version(self, request: kmock.Request) -> Any:
        return {
            "major": "1",
            "minor": "31",
            "gitVersion": "v1.31.0+edx-remote-cache-sandbox",
            "gitTreeState": "clean",
            "platform": "linux/amd64",
        }

    # ---- HTTP --------------------------------------------------------------------------------------------

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        body = await raw_request.read()
        route = _parse_route(raw_request.path)
        kind = self.kinds.get((route.group, route.version, route.plural)) if route and route.plural else None
        record = RequestRecord(
            time=time.time(),
            method=raw_request.method,
            path=raw_request.path,
            query=raw_request.query_string,
            verb=self._verb(raw_request, route),
            kind=kind.kind if kind else None,
            namespace=route.namespace if route else None,
            name=route.name if route else None,
            subresource=route.subresource if route else None,
            status_write=bool(
                route and route.subresource == "status" and raw_request.method in ("PATCH", "PUT")
            ),
            user_agent=raw_request.headers.get("User-Agent", ""),
        )
        self.records.append(record)
        if route is None or route.plural is None:
            response = await super().__call__(raw_request)  # discovery & the rest: kmock's scaffold
            record.code = response.status
            return response
        try:
            self._remember(raw_request, route, body)
            if kind is None:
                raise _ApiError(404, "NotFound", "the server could not find the requested resource")
            return await self._serve(raw_request, route, kind, body, record)
        except _ApiError as exc:
            record.code = exc.code
            return _json_response(exc.status(), exc.code)
        except (asyncio.CancelledError, ConnectionError):
            raise
        except Exception as exc:  # a bug in the emulator: answer 500 and keep it for the tests to assert on
            self.internal_errors.append("".join(traceback.format_exception(exc)))
            logger.exception("kube emulator failed on %s %s", raw_request.method, raw_request.path)
            record.code = 500
            error = _ApiError(500, "InternalError", f"emulator error: {exc!r}")
            return _json_response(error.status(), 500)

    @staticmethod
    def _verb(raw_request: aiohttp.web.BaseRequest, route: _Route | None) -> str:
        method = raw_request.method
        if route is None or route.plural is None:
            return method.lower()
        if method == "GET":
            if raw_request.query.get("watch", "").lower() in ("true", "1"):
                return "watch"
            return "get" if route.name else "list"
        if method == "DELETE":
            return "delete" if route.name else "deletecollection"
        return {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method, method.lower())

    def _remember(self, raw_request: aiohttp.web.BaseRequest, route: _Route, body: bytes) -> None:
        """Keep kmock's request list complete, so kmock-style assertions on ``emulator.requests`` still work."""
        try:
            data = json.loads(body) if body else None
        except ValueError:
            data = None
        actions = {
            "GET": kmock.action.FETCH if route.name else kmock.action.LIST,
            "POST": kmock.action.CREATE,
        }
        actions |= {"PATCH": kmock.action.UPDATE, "PUT": kmock.action.UPDATE, "DELETE": kmock.action.DELETE}
        if raw_request.query.get("watch", "").lower() in ("true", "1"):
            actions["GET"] = kmock.action.WATCH
        self._requests.append(
            kmock.Request(
                id=len(self._requests),
                method=raw_request.method,
                url=raw_request.url,
                params=dict(raw_request.query),
                headers=dict(raw_request.headers),
                body=body,
                text=body.decode("utf-8", "replace"),
                data=data,
                action=actions.get(raw_request.method),
                resource=kmock.resource(route.group, route.version, route.plural),
                namespace=route.namespace,
                name=route.name,
                subresource=route.subresource,
            )
        )

    async def _serve(
        self,
        raw: aiohttp.web.BaseRequest,
        route: _Route,
        kind: ServedKind,
        body: bytes,
        record: RequestRecord,
    ) -> aiohttp.web.StreamResponse:
        if route.namespace is not None and not kind.namespaced:
            raise _ApiError(404, "NotFound", "the server could not find the requested resource")
        if route.subresource is not None and not (route.subresource == "status" and kind.status_subresource):
            raise _ApiError(404, "NotFound", "the server could not find the requested resource")
        query = raw.query
        dry_run = query.get("dryRun") == "All"
        strict = query.get("fieldValidation") == "Strict"
        quiet = query.get("fieldValidation") == "Ignore"
        verb = record.verb
        if verb == "watch":
            return await self._watch(raw, route, kind, record)
        if verb == "list":
            record.code = 200
            listing = self._list(kind, route.namespace, query)
            if _wants_table(raw, kind):
                include = query.get("includeObject", "Metadata")
                table = _table(kind, listing["items"], include=include, headers=True, rv=self._rv)
                table["metadata"] = listing["metadata"]
                return _json_response(table)
            return _json_response(listing)
        if verb == "deletecollection":
            labels = _parse_selector(query.get("labelSelector"), fields=False)
            fields = _parse_selector(query.get("fieldSelector"), fields=True)
            gone = [
                self.delete_object(kind, route.namespace, obj["metadata"]["name"], dry_run=dry_run)[0]
                for obj in self.live(kind, route.namespace)
                if _selected(obj, labels, fields)
            ]
            record.code = 200
            return _json_response(self._list_body(kind, gone))
        if kind.namespaced and route.namespace is None and verb != "create":
            raise _ApiError(404, "NotFound", "the server could not find the requested resource")
        if verb == "create":
            if route.name is not None:
                raise _ApiError(
                    405, "MethodNotAllowed", "the server does not allow this method on the requested resource"
                )
            obj, warnings = self._prepare_create(kind, route.namespace, self._body(body), strict=strict)
            if not dry_run:
                obj = self._commit(kind, "ADDED", obj, None)
            record.code = 201
            return _json_response(obj, 201, () if quiet else warnings)
        assert route.name is not None
        if verb == "get":
            found = self.current(kind, route.namespace, route.name)
            if found is None:
                raise _ApiError.not_found(kind, route.name)
            obj = found
            record.code = 200
            if _wants_table(raw, kind):
                include = query.get("includeObject", "Metadata")
                return _json_response(_table(kind, [obj], include=include, headers=True, rv=self._rv))
            return _json_response(obj)
        if verb == "update":
            new = self._body(body)
            obj, warnings = self.update_object(
                kind,
                route.namespace,
                route.name,
                new,
                route.subresource,
                replace=True,
                dry_run=dry_run,
                strict=strict,
            )
            record.code = 200
            return _json_response(obj, 200, () if quiet else warnings)
        if verb == "patch":
            change = self._patcher(kind, raw.headers.get("Content-Type", ""), body)
            obj, warnings = self.update_object(
                kind, route.namespace, route.name, change, route.subresource, dry_run=dry_run, strict=strict
            )
            record.code = 200
            return _json_response(obj, 200, () if quiet else warnings)
        if verb == "delete":
            options = self._body(body) if body.strip() else {}
            dry_run = dry_run or "All" in ((options or {}).get("dryRun") or [])
            obj, deleted_now = self.delete_object(kind, route.namespace, route.name, options, dry_run=dry_run)
            record.code = 200 if deleted_now else 202
            return _json_response(obj, record.code)
        raise _ApiError(
            405, "MethodNotAllowed", "the server does not allow this method on the requested resource"
        )

    @staticmethod
    def _body(body: bytes) -> Any:
        try:
            return json.loads(body)
        except ValueError as exc:
            raise _ApiError.bad_request(f"the request body is not valid JSON: {exc}") from None

    def _patcher(self, kind: ServedKind, content_type: str, body: bytes) -> Callable[[dict[str, Any]], Any]:
        media = content_type.split(";")[0].strip().lower()
        accepted = "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml"
        if media == "application/json-patch+json":
            ops = self._body(body)
            if not isinstance(ops, list):
                raise _ApiError.bad_request("a JSON patch must be a list of operations")

            def apply_json_patch(obj: dict[str, Any]) -> Any:
                try:
                    return jsonpatch.JsonPatch(ops).apply(obj)
                except (
                    jsonpatch.JsonPatchException,
                    jsonpointer.JsonPointerException,
                    TypeError,
                    KeyError,
                ) as exc:
                    message = "the server rejected our request due to an error in our request"
                    causes = [{"reason": "UnexpectedServerResponse", "message": str(exc)}]
                    raise _ApiError(422, "Invalid", message, {"causes": causes}) from None

            return apply_json_patch
        if media == "application/merge-patch+json" or (
            media == "application/strategic-merge-patch+json" and not kind.custom
        ):
            patch = self._body(body)
            if not isinstance(patch, dict):
                raise _ApiError.bad_request("a merge patch must be a JSON object")
            return lambda obj: _merge_patch(obj, patch)
        if media == "application/apply-patch+yaml":
            raise _ApiError(
                415, "UnsupportedMediaType", "server-side apply is not supported by the sandbox emulator"
            )
        raise _ApiError(
            415,
            "UnsupportedMediaType",
            f"the body of the request was in an unknown format - accepted media types include: {accepted}",
        )

    def _list_body(
        self, kind: ServedKind, items: list[dict[str, Any]], meta: dict[str, Any] | None = None
    ) -> dict:
        if not kind.custom:  # built-in lists carry no per-item apiVersion/kind (as kube-apiserver's JSON)
            items = [{k: v for k, v in item.items() if k not in ("apiVersion", "kind")} for item in items]
        return {
            "apiVersion": kind.api_version,
            "kind": f"{kind.kind}List",
            "metadata": {"resourceVersion": str(self._rv), **(meta or {})},
            "items": items,
        }

    def _list(self, kind: ServedKind, namespace: str | None, query: Mapping[str, str]) -> dict[str, Any]:
        labels = _parse_selector(query.get("labelSelector"), fields=False)
        fields = _parse_selector(query.get("fieldSelector"), fields=True)
        items = [obj for obj in self.live(kind, namespace) if _selected(obj, labels, fields)]
        start = 0
        if query.get("continue"):
            try:
                start = int(json.loads(base64.urlsafe_b64decode(query["continue"]))["start"])
            except (ValueError, KeyError, TypeError):
                raise _ApiError.bad_request("continue key is not valid") from None
        try:
            limit = int(query.get("limit") or 0)
        except ValueError:
            raise _ApiError.bad_request(f"invalid limit: {query['limit']!r}") from None
        meta: dict[str, Any] = {}
        page = items[start:]
        if limit > 0 and len(page) > limit:
            page = page[:limit]
            token = json.dumps({"rv": self._rv, "start": start + limit}).encode()
            meta = {
                "continue": base64.urlsafe_b64encode(token).decode(),
                "remainingItemCount": len(items) - start - limit,
            }
        return self._list_body(kind, page, meta)

    async def _watch(
        self, raw: aiohttp.web.BaseRequest, route: _Route, kind: ServedKind, record: RequestRecord
    ) -> aiohttp.web.StreamResponse:
        query = raw.query
        labels = _parse_selector(query.get("labelSelector"), fields=False)
        fields = _parse_selector(query.get("fieldSelector"), fields=True)
        since_text = query.get("resourceVersion", "")
        try:
            since = int(since_text) if since_text else 0
        except ValueError:
            raise _ApiError.bad_request(f"invalid resource version: {since_text!r}") from None
        timeout = float(query["timeoutSeconds"]) if query.get("timeoutSeconds") else None
        initial_events = query.get("sendInitialEvents") == "true"
        bookmarks = query.get("allowWatchBookmarks") == "true"

        # No await between the snapshot and the registration: no event can fall in between.
        watcher = _Watcher(kind, route.namespace, route.name, labels, fields)
        if _wants_table(raw, kind):
            watcher.table = query.get("includeObject", "Metadata")
        lines: list[bytes] = []
        if since and not initial_events:
            if since < self._compacted_rv:
                expired = _ApiError(
                    410, "Expired", f"too old resource version: {since} ({self._compacted_rv})"
                )
                lines.append(json.dumps({"type": "ERROR", "object": expired.status()}).encode() + b"\n")
                watcher.queue.put_nowait(None)
            else:
                for event in self._log:
                    if (
                        event.rv > since
                        and event.kind is kind
                        and (line := watcher.translate(event)) is not None
                    ):
                        lines.append(line)
        else:
            lines.extend(
                watcher.line("ADDED", obj) for obj in self.live(kind, route.namespace) if watcher.matches(obj)
            )
            if initial_events and bookmarks:
                bookmark = {
                    "apiVersion": kind.api_version,
                    "kind": kind.kind,
                    "metadata": {
                        "resourceVersion": str(self._rv),
                        "annotations": {"k8s.io/initial-events-end": "true"},
                    },
                }
                lines.append(watcher.line("BOOKMARK", bookmark))
        if self._closing:
            watcher.queue.put_nowait(None)
        self._watchers.add(watcher)

        response = aiohttp.web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        record.code = 200
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        try:
            await response.prepare(raw)
            for line in lines:
                await response.write(line)
            while True:
                remaining = None if deadline is None else deadline - asyncio.get_running_loop().time()
                if remaining is not None and remaining <= 0:
                    break
                try:
                    line = await asyncio.wait_for(watcher.queue.get(), remaining)
                except TimeoutError:
                    break
                if line is None:
                    break
                await response.write(line)
            await response.write_eof()
        except (ConnectionError, RuntimeError):
            pass  # the client went away (aiohttp raises ConnectionResetError / RuntimeError on a closed transport)
        finally:
            self._watchers.discard(watcher)
        return response

    def drop_watches(self) -> int:
        """End the open watch streams now, as an apiserver's watch timeout does; clients reconnect."""
        for watcher in list(self._watchers):
            watcher.queue.put_nowait(None)
        return len(self._watchers)

    def close_watches(self) -> None:
        """End every open watch stream and any watch started from now on (the server is going away)."""
        self._closing = True
        self.drop_watches()


class _LoopbackServer(kmock.Server):
    """kmock.Server without its process-wide aiohttp DNS interceptor.

    kmock.Server monkey-patches ``aiohttp.TCPConnector._resolve_host`` for the whole process and raises
    unless servers exit in LIFO order; the sandbox runs servers in their own threads and is dialled by IP,
    so it needs neither.
    """

    async def __aenter__(self) -> Self:
        server = aiohttp.test_utils.RawTestServer(self.handler, host=self._host, port=self._port)
        await server.start_server()
        assert server.runner is not None
        server.runner._shutdown_timeout = 2.0  # open watches are ended before; never wait aiohttp's 60 s
        self._managed_server = server
        self.handler.servers.append(self)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.handler.servers.remove(self)
        assert self._managed_server is not None
        await self._managed_server.close()
        self._managed_server = None


# --------------------------------------------------------------------------------------------------------------
# The public, thread-hosted API.


def _default_crd_path() -> pathlib.Path:
    from edx_remote_cache.domain.crd import crd_path  # $EDX_REMOTE_CACHE_CRD, then the checkout's crds/

    return crd_path()


class KubeApi:
    """Emulated kube-apiserver on 127.0.0.1, running in its own thread + event loop so sync code can use it.

    Serves the project's CRD (read from ``crd_path``, default ``$EDX_REMOTE_CACHE_CRD`` or the checkout's
    ``crds/edxremotecache.yaml``), kopf's peering CRDs and a few built-in kinds; see the module docstring for
    what it does not do. The sync helpers go through the same HTTP API as kopf does.
    """

    def __init__(
        self,
        *,
        crd_path: pathlib.Path | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        namespaces: Sequence[str] = DEFAULT_NAMESPACES,
        watch_history: int = WATCH_HISTORY,
    ) -> None:
        self.crd_path = pathlib.Path(crd_path) if crd_path is not None else _default_crd_path()
        with open(self.crd_path, encoding="utf-8") as fh:  # libyaml when present: 10x faster start-up
            self.crd: dict[str, Any] = yaml.load(fh, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        self.kind = ServedKind.from_crd(self.crd)
        crds = [self.crd, *KOPF_PEERING_CRDS]
        kinds = [*_builtin_kinds(), *(ServedKind.from_crd(crd) for crd in crds)]
        self.emulator = KubeEmulator(kinds, crds=crds, namespaces=namespaces, watch_history=watch_history)
        self._host, self._requested_port = host, port
        self._port: int | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._kinds_by_name = {kind.kind: kind for kind in kinds}

    # ---- lifecycle ---------------------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> None:
        if self._thread is not None:
            raise RuntimeError("KubeApi can be started only once")
        self._thread = threading.Thread(
            target=self._thread_main, name="edx-remote-cache-kube-api", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"the Kubernetes API emulator did not start in {timeout} s")
        if self._failure is not None:
            self._thread.join(timeout)
            raise RuntimeError("the Kubernetes API emulator failed to start") from self._failure

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving, end all watches, free the port and join the thread (idempotent)."""
        thread, loop, stopping = self._thread, self._loop, self._stopping
        if thread is None or not thread.is_alive():
            return
        if loop is not None and stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop may be closing already
                loop.call_soon_threadsafe(stopping.set)
        thread.join(timeout)
        if thread.is_alive():
            raise RuntimeError(f"the Kubernetes API emulator did not stop in {timeout} s")

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._port is not None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the Kubernetes API emulator is not started")
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}"

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    def _thread_main(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            if not self._ready.is_set():
                self._failure = exc
                self._ready.set()
            else:
                logger.exception("the Kubernetes API emulator crashed")
        finally:
            self._port = None

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        async with (
            self.emulator,
            _LoopbackServer(self.emulator, host=self._host, port=self._requested_port or None) as srv,
        ):
            self._port = srv.port
            self._ready.set()
            await self._stopping.wait()
            self.emulator.close_watches()
            await asyncio.sleep(0)  # let the watch handlers see their end-of-stream before the server closes

    def call_in_loop(self, fn: Callable[[], Any], timeout: float = 10.0) -> Any:
        """Run ``fn`` on the emulator's event loop (where all its state lives) and return its result."""
        loop = self._loop
        if loop is None or not self.running:
            raise RuntimeError("the Kubernetes API emulator is not running")
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)

        loop.call_soon_threadsafe(run)
        return future.result(timeout)

    def drop_watches(self) -> int:
        """End all open watch streams, like an apiserver's watch timeout; returns how many were open."""
        result: int = self.call_in_loop(self.emulator.drop_watches)
        return result

    # ---- client configuration ----------------------------------------------------------------------------

    def write_kubeconfig(self, path: pathlib.Path, *, namespace: str = "default") -> pathlib.Path:
        """A kubeconfig for kubectl, the kubernetes client and kopf (plain HTTP, no credentials)."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "edx-remote-cache-sandbox", "cluster": {"server": self.url}}],
            "users": [{"name": "edx-remote-cache-sandbox", "user": {}}],
            "contexts": [
                {
                    "name": "edx-remote-cache-sandbox",
                    "context": {
                        "cluster": "edx-remote-cache-sandbox",
                        "user": "edx-remote-cache-sandbox",
                        "namespace": namespace,
                    },
                }
            ],
            "current-context": "edx-remote-cache-sandbox",
            "preferences": {},
        }
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        return path

    def connection_info(self, *, namespace: str = "default") -> kopf.ConnectionInfo:
        """For an in-process kopf operator: return this from an ``@kopf.on.login`` handler."""
        import kopf

        return kopf.ConnectionInfo(server=self.url, default_namespace=namespace, priority=1000)

    # ---- raw HTTP ----------------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        query: Mapping[str, str] | None = None,
        timeout: float = 10.0,
    ) -> tuple[int, Any]:
        """One HTTP request to the emulator (no proxies, loopback only); returns (status code, parsed JSON)."""
        if query:
            path = f"{path}?{urllib.parse.urlencode(query)}"
        payload = None if body is None else json.dumps(body).encode()
        headers = {"User-Agent": HELPER_USER_AGENT, "Accept": "application/json"}
        if payload is not None:
            headers["Content-Type"] = content_type
        conn = http.client.HTTPConnection(self._host, self.port, timeout=timeout)
        try:
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            data = response.read()
        finally:
            conn.close()
        try:
            parsed = json.loads(data) if data else None
        except ValueError:
            parsed = data.decode("utf-8", "replace")
        return response.status, parsed

    def _call(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Any:
        code, parsed = self.request(method, path, body, **kwargs)
        if not 200 <= code < 300:
            raise KubeApiError(code, parsed)
        return parsed

    def served_kind(self, kind: str = "EdxRemoteCache") -> ServedKind:
        try:
            return self._kinds_by_name[kind]
        except KeyError:
            raise ValueError(f"the emulator does not serve kind {kind!r}") from None

    # ---- sync helpers ------------------------------------------------------------------------------------

    def create(self, obj: Mapping[str, Any], *, namespace: str | None = None) -> dict[str, Any]:
        """Create any served object (by its ``kind``); namespaced ones default to ``metadata.namespace``/default."""
        kind = self.served_kind(obj.get("kind") or self.kind.kind)
        ns = namespace or (obj.get("metadata") or {}).get("namespace") or "default"
        result: dict[str, Any] = self._call("POST", kind.path(ns if kind.namespaced else None), dict(obj))
        return result

    def get(self, namespace: str | None, name: str, *, kind: str = "EdxRemoteCache") -> dict[str, Any] | None:
        served = self.served_kind(kind)
        code, parsed = self.request("GET", served.path(namespace, name))
        if code == 404:
            return None
        if code != 200:
            raise KubeApiError(code, parsed)
        return dict(parsed)

    def list_objects(
        self,
        namespace: str | None = None,
        *,
        kind: str = "EdxRemoteCache",
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> list[dict[str, Any]]:
        query = {k: v for k, v in (("labelSelector", label_selector), ("fieldSelector", field_selector)) if v}
        items: list[dict[str, Any]] = self._call("GET", self.served_kind(kind).path(namespace), query=query)[
            "items"
        ]
        return items

    def patch(
        self,
        namespace: str | None,
        name: str,
        patch: Any,
        *,
        kind: str = "EdxRemoteCache",
        subresource: str | None = None,
        patch_type: str = "merge",
    ) -> dict[str, Any]:
        """Patch like a client would: ``patch_type`` is ``merge`` (RFC 7386) or ``json`` (RFC 6902)."""
        content_type = {"merge": "application/merge-patch+json", "json": "application/json-patch+json"}[
            patch_type
        ]
        path = self.served_kind(kind).path(namespace, name, subresource)
        result: dict[str, Any] = self._call("PATCH", path, patch, content_type=content_type)
        return result

    def patch_spec(self, namespace: str, name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
        """Merge-patch an EdxRemoteCache's spec (``None`` values delete keys), as ``kubectl patch --type=merge``."""
        return self.patch(namespace, name, {"spec": dict(spec)})

    def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> dict[str, Any]:
        """Merge-patch an EdxRemoteCache's status through the ``/status`` subresource."""
        return self.patch(namespace, name, {"status": dict(status)}, subresource="status")

    def replace(self, obj: Mapping[str, Any], *, subresource: str | None = None) -> dict[str, Any]:
        """PUT the whole object (needs its current ``metadata.resourceVersion``; 409 if stale)."""
        kind = self.served_kind(obj.get("kind") or self.kind.kind)
        meta = obj.get("metadata") or {}
        path = kind.path(meta.get("namespace"), meta["name"], subresource)
        result: dict[str, Any] = self._call("PUT", path, dict(obj))
        return result

    def delete(
        self, namespace: str | None, name: str, *, kind: str = "EdxRemoteCache", missing_ok: bool = False
    ) -> dict[str, Any] | None:
        """Delete (or, with finalizers, mark for deletion); returns the object as the API answered it."""
        code, parsed = self.request("DELETE", self.served_kind(kind).path(namespace, name))
        if code == 404 and missing_ok:
            return None
        if code not in (200, 202):
            raise KubeApiError(code, parsed)
        return dict(parsed)

    def create_namespace(self, name: str) -> dict[str, Any]:
        return self.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})

    def list_events(
        self, namespace: str | None = None, *, involved_name: str | None = None
    ) -> list[dict[str, Any]]:
        """Core v1 Events (what kopf posts), oldest first; optionally only those about one object name."""
        selector = f"involvedObject.name={involved_name}" if involved_name else None
        events = self.list_objects(namespace, kind="Event", field_selector=selector)
        return sorted(
            events,
            key=lambda e: (e["metadata"].get("creationTimestamp", ""), int(e["metadata"]["resourceVersion"])),
        )

    def wait_for(
        self,
        namespace: str | None,
        name: str,
        predicate: Callable[[dict[str, Any] | None], bool],
        *,
        kind: str = "EdxRemoteCache",
        timeout: float = 10.0,
        interval: float = 0.02,
    ) -> dict[str, Any] | None:
        """Poll until ``predicate(object or None)`` holds; return that state, or raise TimeoutError with the last."""
        deadline = time.monotonic() + timeout
        while True:
            obj = self.get(namespace, name, kind=kind)
            if predicate(obj):
                return obj
            if time.monotonic() > deadline:
                raise TimeoutError(f"{kind} {namespace}/{name} did not reach the wanted state; last: {obj!r}")
            time.sleep(interval)

    # ---- request log -------------------------------------------------------------------------------------

    @property
    def requests(self) -> list[RequestRecord]:
        """A snapshot of the request log (every request, including the helpers' own and kopf's watches)."""
        return list(self.emulator.records)

    def status_writes(
        self, *, kind: str = "EdxRemoteCache", since: float | None = None
    ) -> list[RequestRecord]:
        """PATCH/PUT requests to ``.../status`` of ``kind`` (arrival time ≥ ``since``, a time.time() value)."""
        return [
            r
            for r in self.requests
            if r.status_write and r.kind == kind and (since is None or r.time >= since)
        ]

    def clear_requests(self) -> None:
        self.emulator.records.clear()

    @property
    def errors(self) -> list[str]:
        """Tracebacks of emulator bugs (answered as 500); tests should assert this stays empty."""
        return list(self.emulator.internal_errors)

    def iter_history(
        self, namespace: str | None, name: str, *, kind: str = "EdxRemoteCache"
    ) -> Iterator[dict]:
        """Every stored version of one object, oldest first (kmock keeps them); read-only snapshots."""
        served = self.served_kind(kind)
        key = (served.ref, namespace if served.namespaced else None, name)
        if key in self.emulator.objects:
            for version in list(self.emulator.objects[key].history):
                if version is not None:
                    yield copy.deepcopy(version.raw)
