"""The CRD and the spec model agree, field by field, default by default; examples validate against both."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from edx_remote_cache.domain.crd import (
    apply_defaults,
    load_crd,
    openapi_schema,
    schema_problems,
    to_jsonschema,
)
from edx_remote_cache.domain.spec import EdxRemoteCacheSpec, parse_spec

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_of(arg)
        if found:
            return found
    return None


def _pairs(model: type[BaseModel], schema: dict[str, Any], path: str = "spec"):
    props = schema.get("properties", {})
    fields = {f.alias or name: f for name, f in model.model_fields.items()}
    assert set(fields) == set(props), f"{path}: model {sorted(fields)} != CRD {sorted(props)}"
    for alias, field in fields.items():
        yield f"{path}.{alias}", field, props[alias]
        sub = _model_of(field.annotation)
        if sub is not None:
            yield from _pairs(sub, props[alias], f"{path}.{alias}")


def test_crd_is_structural_v1_with_status_and_columns() -> None:
    crd = load_crd()
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["spec"]["group"] == "cache.openedx.org"
    assert crd["spec"]["names"]["shortNames"] == ["erc"]
    version = crd["spec"]["versions"][0]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    columns = version["additionalPrinterColumns"]
    assert [c["name"] for c in columns] == ["Ready", "Phase", "Endpoint", "Hit%", "Hosts", "Age", "Message"]
    assert columns[0]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].status'
    assert columns[-1]["priority"] == 1, "the message only with -o wide"
    assert [c["name"] for c in columns if c.get("priority", 0) == 0][-1] == "Age"


def test_conditions_are_a_list_map_keyed_by_type() -> None:
    """Server-side apply merges conditions per type instead of replacing the whole list."""
    conditions = openapi_schema()["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert "type" in conditions["items"]["required"]


def test_every_field_has_a_description() -> None:
    def walk(node: dict[str, Any], path: str) -> list[str]:
        # array items are described by their array; everything else names itself
        described = "description" in node or path.count(".") < 1 or path.endswith("[]")
        missing = [] if described else [path]
        for name, sub in node.get("properties", {}).items():
            if name in ("apiVersion", "kind", "metadata"):
                continue
            missing += walk(sub, f"{path}.{name}")
        if "items" in node and node["items"].get("type") == "object":
            missing += walk(node["items"], f"{path}[]")
        return missing

    assert walk(openapi_schema(), "root") == []


def test_crd_and_model_have_the_same_fields_and_defaults() -> None:
    spec_schema = openapi_schema()["properties"]["spec"]
    checked = 0
    for path, field, prop in _pairs(EdxRemoteCacheSpec, spec_schema):
        checked += 1
        required = path.rsplit(".", 1)[1] in spec_schema.get("required", []) if path.count(".") == 1 else None
        if "default" in prop:
            model_default = field.get_default(call_default_factory=True)
            if isinstance(model_default, BaseModel):
                continue
            assert model_default == prop["default"], (
                f"{path}: model default {model_default!r} != CRD {prop['default']!r}"
            )
        elif field.is_required():
            assert required is not False, path
        if field.is_required() and path.count(".") == 1:
            assert path.split(".")[1] in spec_schema["required"], (
                f"{path} required in the model, not in the CRD"
            )
    assert checked > 40


def test_nested_required_fields_match() -> None:
    instance = openapi_schema()["properties"]["spec"]["properties"]["instance"]
    assert instance["required"] == ["subnetId"]


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_validate_against_schema_and_model(example: Path) -> None:
    docs = list(yaml.safe_load_all(example.read_text()))
    assert docs
    for doc in docs:
        assert schema_problems(doc) == []
        parse_spec(doc["spec"])


def test_schema_defaults_equal_model_defaults_on_minimal_example() -> None:
    doc = yaml.safe_load((ROOT / "examples" / "minimal.yaml").read_text())
    schema = openapi_schema()["properties"]["spec"]
    defaulted = apply_defaults(schema, doc["spec"])
    assert parse_spec(defaulted) == parse_spec(doc["spec"])


def test_schema_rejects_with_field_path() -> None:
    doc = yaml.safe_load((ROOT / "examples" / "minimal.yaml").read_text())
    doc["spec"]["network"] = {"allowFromCidrs": ["not-a-cidr"]}
    doc["spec"]["deletionPolicy"] = "Orphan"
    paths = [p for p, _ in schema_problems(doc)]
    assert "spec.network.allowFromCidrs[0]" in paths and "spec.deletionPolicy" in paths


def test_one_conversion_serves_the_validator_closed_and_the_apiserver_open() -> None:
    import jsonschema

    node = {
        "type": "object",
        "properties": {
            "port": {"x-kubernetes-int-or-string": True, "description": "d"},
            "note": {"type": "string", "nullable": True},
            "size": {"type": "integer", "minimum": 1, "exclusiveMinimum": True},
        },
    }
    closed, open_ = to_jsonschema(node), to_jsonschema(node, closed=False)
    assert closed["additionalProperties"] is False and "additionalProperties" not in open_
    for schema in (closed, open_):
        ok = jsonschema.Draft202012Validator(schema)
        assert ok.is_valid({"port": "http", "note": None, "size": 2}) and ok.is_valid({"port": 80})
        assert not ok.is_valid({"size": 1}), "OpenAPI 3.0's boolean exclusiveMinimum"
    assert not jsonschema.Draft202012Validator(closed).is_valid({"prot": 80}), "a typo is an error"


def test_defaults_reach_list_items_and_map_values_without_changing_the_input() -> None:
    schema = {
        "type": "object",
        "properties": {
            "items": {"type": "array", "items": {"type": "object", "properties": {"a": {"default": 1}}}},
            "byName": {
                "type": "object",
                "additionalProperties": {"type": "object", "properties": {"b": {"default": "x"}}},
            },
        },
    }
    value = {"items": [{}], "byName": {"k": {}}}
    assert apply_defaults(schema, value) == {"items": [{"a": 1}], "byName": {"k": {"b": "x"}}}
    assert value == {"items": [{}], "byName": {"k": {}}}
