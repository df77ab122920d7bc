"""Structural schema: pruning, defaulting and validation of custom resources as kube-apiserver does them."""

from __future__ import annotations

import copy
import datetime
from collections.abc import Iterable, Mapping
from typing import Any

import jsonschema

from edx_remote_cache.domain import crd

from .errors import FieldError, go_value


def json_type(value: Any) -> str:
    """The value's JSON/OpenAPI type name, as the apiserver's messages show it (never the value itself)."""
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
        root = crd.to_jsonschema(self.openapi)
        props = root.setdefault("properties", {})
        props["metadata"] = {"type": "object"}  # ObjectMeta is checked separately
        for typemeta in ("apiVersion", "kind"):  # kopf's peering CRDs do not declare them
            props.setdefault(typemeta, {"type": "string"})
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
        defaulted = crd.apply_defaults(self.openapi, {k: v for k, v in obj.items() if k != "metadata"})
        obj.update(defaulted)  # in place: metadata (not the schema's business) keeps its identity and place

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
            kind = json_type(value)
            return [FieldError(path, "Invalid value", kind, f'{where} must be of type {expected}: "{kind}"')]
        if rule == "enum":
            supported = ", ".join(go_value(v) for v in limit)
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
            value = json_type(value)
        return [FieldError(path, "Invalid value", value, details.get(rule, f"{where}: {err.message}"))]
