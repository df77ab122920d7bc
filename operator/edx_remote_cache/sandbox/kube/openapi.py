"""OpenAPI v3 (and v2, as JSON) documents generated from the served kinds, as kube-apiserver publishes them.

kubectl reads them for three things: ``kubectl apply``/``create`` check that the PATCH operation of the object's
kind takes ``fieldValidation`` (then they send ``fieldValidation=Strict`` and the server rejects unknown fields;
without the documents they stop with "failed to download openapi"), ``kubectl explain`` prints the CRD's schema
with its descriptions, and client-side apply of built-in kinds reads patch strategies. The CRD's
openAPIV3Schema is published as is, with ``metadata`` pointing at ObjectMeta, like the apiserver's CRD handler.
Built-in kinds are published without their fields (the emulator does not validate them either).
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from .kinds import ServedKind

OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_OBJECT_META_SCHEMA: dict[str, Any] = {
    "description": "ObjectMeta is metadata that all persisted resources must have, which includes all objects"
    " users must create.",
    "type": "object",
    "properties": {
        "name": {"type": "string", "description": "Name must be unique within a namespace."},
        "generateName": {"type": "string", "description": "An optional prefix to generate a unique name."},
        "namespace": {"type": "string", "description": "The namespace the object lives in."},
        "uid": {"type": "string", "description": "Set by the server; unique in time and space."},
        "resourceVersion": {"type": "string", "description": "Set by the server; changes on every write."},
        "generation": {"type": "integer", "format": "int64", "description": "Bumped when the spec changes."},
        "creationTimestamp": {"type": "string", "format": "date-time"},
        "deletionTimestamp": {"type": "string", "format": "date-time"},
        "deletionGracePeriodSeconds": {"type": "integer", "format": "int64"},
        "labels": {**_STRING_MAP, "description": "Map of string keys and values to organize objects."},
        "annotations": {**_STRING_MAP, "description": "Unstructured key value map set by tools."},
        "finalizers": {
            "type": "array",
            "items": {"type": "string"},
            "x-kubernetes-list-type": "set",
            "description": "Must be empty before the object is deleted from the registry.",
        },
        "ownerReferences": {
            "type": "array",
            "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        },
        "managedFields": {
            "type": "array",
            "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            "description": "Which field manager owns which fields (server-side apply).",
        },
    },
}
_WRITE_PARAMETERS = ("dryRun", "fieldManager", "fieldValidation")


def schema_name(kind: ServedKind) -> str:
    """The definition name kube-apiserver uses: the group reversed (core: io.k8s.api.core), version, kind."""
    if not kind.group:
        return f"io.k8s.api.core.{kind.version}.{kind.kind}"
    if kind.group.endswith(".k8s.io"):
        return f"io.k8s.api.{kind.group.removesuffix('.k8s.io').replace('.', '')}.{kind.version}.{kind.kind}"
    return ".".join([*reversed(kind.group.split(".")), kind.version, kind.kind])


def _gvk(kind: ServedKind) -> list[dict[str, str]]:
    return [{"group": kind.group, "kind": kind.kind, "version": kind.version}]


def _kind_schema(kind: ServedKind, ref_prefix: str) -> dict[str, Any]:
    if kind.schema is not None:
        schema = copy.deepcopy(kind.schema.openapi)
    else:
        schema = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    props = schema.setdefault("properties", {})
    props["apiVersion"] = {"type": "string", "description": "APIVersion of this representation of an object."}
    props["kind"] = {"type": "string", "description": "The REST resource this object represents."}
    ref = {"$ref": f"{ref_prefix}{OBJECT_META}"}
    meta_doc = "Standard object's metadata."
    props["metadata"] = {"allOf": [ref], "description": meta_doc} if ref_prefix.startswith("#/comp") else ref
    schema["x-kubernetes-group-version-kind"] = _gvk(kind)
    return schema


def _operations(kind: ServedKind, *, item: bool, v3: bool) -> dict[str, Any]:
    def param(name: str) -> dict[str, Any]:
        return {"name": name, "in": "query", **({"schema": {"type": "string"}} if v3 else {"type": "string"})}

    def op(action: str, params: Iterable[str] = ()) -> dict[str, Any]:
        return {
            "operationId": f"{action}{kind.kind}",
            "x-kubernetes-action": action,
            "x-kubernetes-group-version-kind": {
                "group": kind.group,
                "kind": kind.kind,
                "version": kind.version,
            },
            "parameters": [param(p) for p in params],
            "responses": {"200": {"description": "OK"}},
        }

    if item:
        return {
            "get": op("get"),
            "put": op("put", _WRITE_PARAMETERS),
            "patch": op("patch", (*_WRITE_PARAMETERS, "force")),
            "delete": op("delete", ("dryRun",)),
        }
    return {"get": op("list"), "post": op("post", _WRITE_PARAMETERS)}


def _paths(kind: ServedKind, *, v3: bool) -> dict[str, Any]:
    base = f"/apis/{kind.group}/{kind.version}" if kind.group else f"/api/{kind.version}"
    scope = f"{base}/namespaces/{{namespace}}" if kind.namespaced else base
    paths = {
        f"{scope}/{kind.plural}": _operations(kind, item=False, v3=v3),
        f"{scope}/{kind.plural}/{{name}}": _operations(kind, item=True, v3=v3),
    }
    if kind.status_subresource:
        paths[f"{scope}/{kind.plural}/{{name}}/status"] = _operations(kind, item=True, v3=v3)
    return paths


def group_version_path(kind: ServedKind) -> str:
    """The key of a group-version in /openapi/v3's index: ``api/v1`` or ``apis/GROUP/VERSION``."""
    return f"apis/{kind.group}/{kind.version}" if kind.group else f"api/{kind.version}"


def v3_documents(kinds: Iterable[ServedKind]) -> dict[str, dict[str, Any]]:
    """One OpenAPI 3.0 document per served group-version, keyed by :func:`group_version_path`."""
    docs: dict[str, dict[str, Any]] = {}
    for kind in kinds:
        doc = docs.setdefault(
            group_version_path(kind),
            {
                "openapi": "3.0.0",
                "info": {"title": "Kubernetes", "version": "v1.31.0"},
                "paths": {},
                "components": {"schemas": {OBJECT_META: copy.deepcopy(_OBJECT_META_SCHEMA)}},
            },
        )
        doc["paths"].update(_paths(kind, v3=True))
        doc["components"]["schemas"][schema_name(kind)] = _kind_schema(kind, "#/components/schemas/")
    return docs


def v3_index(docs: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """/openapi/v3: each group-version with a hash-pinned URL (clients cache by it, as with the real index)."""
    paths = {}
    for path, doc in sorted(docs.items()):
        digest = hashlib.sha512(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:128].upper()
        paths[path] = {"serverRelativeURL": f"/openapi/v3/{path}?hash={digest}"}
    return {"paths": paths}


def v2_document(kinds: Iterable[ServedKind]) -> dict[str, Any]:
    """/openapi/v2 (Swagger 2.0) for every served kind; the emulator serves it as JSON only."""
    doc: dict[str, Any] = {
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": "v1.31.0"},
        "paths": {},
        "definitions": {OBJECT_META: copy.deepcopy(_OBJECT_META_SCHEMA)},
    }
    for kind in kinds:
        doc["paths"].update(_paths(kind, v3=False))
        doc["definitions"][schema_name(kind)] = _kind_schema(kind, "#/definitions/")
    return doc
