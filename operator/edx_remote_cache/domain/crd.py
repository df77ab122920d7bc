"""The CRD in crds/ is the one source of the API schema: the validator and the sandbox read it, nothing retypes it."""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

CRD_ENV = "EDX_REMOTE_CACHE_CRD"
CRD_FILE = "edxremotecache.yaml"


def crd_path() -> Path:
    """Where the CRD lives: $EDX_REMOTE_CACHE_CRD, else the checkout's crds/ (the image copies it there too)."""
    explicit = os.environ.get(CRD_ENV)
    if explicit:
        return Path(explicit)
    for base in (Path(__file__).resolve().parents[3], Path.cwd(), Path("/app")):
        candidate = base / "crds" / CRD_FILE
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"cannot find crds/{CRD_FILE}; set {CRD_ENV} to its path")


@cache
def load_crd(path: Path | None = None) -> dict[str, Any]:
    with open(path or crd_path(), encoding="utf-8") as fh:
        crd: dict[str, Any] = yaml.safe_load(fh)
    return crd


def served_version(crd: Mapping[str, Any]) -> Mapping[str, Any]:
    return next(v for v in crd["spec"]["versions"] if v.get("storage"))


def openapi_schema(crd: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The storage version's openAPIV3Schema (a deep copy: callers may mutate it)."""
    return copy.deepcopy(served_version(crd or load_crd())["schema"]["openAPIV3Schema"])


def to_jsonschema(node: Any, *, closed: bool = True) -> Any:
    """OpenAPI v3 structural schema -> JSON Schema 2020-12, the one conversion the validator and the sandbox share.

    x-kubernetes-* keys, descriptions, defaults and examples are dropped; ``nullable``, OpenAPI 3.0's boolean
    ``exclusiveMinimum``/``exclusiveMaximum`` and ``x-kubernetes-int-or-string`` are translated. ``closed``
    (the validator) forbids unknown fields where the schema does not preserve them, so a typo is an error; an
    apiserver (the sandbox) prunes unknown fields before validating instead and passes ``closed=False``.
    """
    if isinstance(node, list):
        return [to_jsonschema(n, closed=closed) for n in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("properties", "patternProperties"):
            out[key] = {k: to_jsonschema(v, closed=closed) for k, v in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, Mapping):
            out[key] = to_jsonschema(value, closed=closed)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [to_jsonschema(v, closed=closed) for v in value]
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
    open_object = node.get("x-kubernetes-preserve-unknown-fields") or out.get("type") != "object"
    if closed and "properties" in out and not open_object:
        out.setdefault("additionalProperties", False)
    return out


@cache
def _validator() -> jsonschema.protocols.Validator:
    schema = to_jsonschema(openapi_schema())
    schema["properties"]["metadata"] = {"type": "object"}
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)  # type: ignore[call-arg]


def _json_path(path: Iterator[Any]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def schema_problems(obj: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(field path, message) for every way `obj` breaks the CRD's schema, like the apiserver would report."""
    problems = []
    for error in sorted(_validator().iter_errors(dict(obj)), key=lambda e: list(map(str, e.absolute_path))):
        path = _json_path(iter(error.absolute_path))
        if error.validator == "additionalProperties":
            message = f"{error.message}; check the spelling against `kubectl explain edxremotecache.spec`"
        elif error.validator == "pattern":
            message = f"{error.instance!r} does not match the pattern {error.validator_value}"
        else:
            message = error.message
        problems.append((path or "(root)", message))
    return problems


def apply_defaults(schema: Mapping[str, Any], value: Any) -> Any:
    """Fill in schema defaults the way a structural apiserver does: for fields of objects that are present, in
    nested objects, list items and additionalProperties maps. Returns a new value; the input is not changed."""
    if isinstance(value, list):
        items = schema.get("items")
        return [apply_defaults(items, v) for v in value] if isinstance(items, Mapping) else list(value)
    if not isinstance(value, dict):
        return value
    props: Mapping[str, Any] = schema.get("properties") or {}
    extra = schema.get("additionalProperties")
    out = dict(value)
    for name, sub in props.items():
        if name not in out and "default" in sub:
            out[name] = copy.deepcopy(sub["default"])
    for name in list(out):
        sub = props.get(name, extra if isinstance(extra, Mapping) else None)
        if sub is not None:
            out[name] = apply_defaults(sub, out[name])
    return out
