"""The sandbox API evaluates the CRD's CEL transition rules like the apiserver: region and subnet are
immutable (422 naming the field, with the CRD's message), everything else still changes."""

from __future__ import annotations

from typing import Any

import pytest

from edx_remote_cache.domain.crd import openapi_schema
from edx_remote_cache.sandbox.kube.cel import transition_errors, without_cel

SPEC = {"region": "us-east-1", "instance": {"subnetId": "subnet-0a1b2c3d4e5f60718"}, "openedx": {"hosts": []}}


def obj(**spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "x"}, "spec": {**SPEC, **spec}}


def test_a_create_is_not_checked_against_an_old_object() -> None:
    assert transition_errors(openapi_schema(), obj(), None) == []


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"region": "eu-west-1"}, "spec.region"),
        ({"instance": {"subnetId": "subnet-0fffffffffffffff0"}}, "spec.instance.subnetId"),
    ],
)
def test_region_and_subnet_cannot_change_in_place(change: dict[str, Any], field: str) -> None:
    [(path, type_, message)] = transition_errors(openapi_schema(), obj(**change), obj())
    assert path == field and type_ == "string"
    assert message.startswith(f"{field} cannot change in place") and "create a new EdxRemoteCache" in message


def test_without_cel_accepts_what_the_rules_refuse_like_an_old_apiserver() -> None:
    with without_cel():
        assert transition_errors(openapi_schema(), obj(region="eu-west-1"), obj()) == []
    assert transition_errors(openapi_schema(), obj(region="eu-west-1"), obj())


def test_other_fields_change_freely() -> None:
    assert transition_errors(openapi_schema(), obj(openedx={"hosts": ["i-0123456789abcdef0"]}), obj()) == []


def test_a_rule_that_does_not_hold_or_cannot_be_evaluated_is_an_error_with_its_default_message() -> None:
    schema = {
        "type": "object",
        "properties": {
            "n": {"type": "integer", "x-kubernetes-validations": [{"rule": "self < 3"}, {"rule": "self.x"}]}
        },
    }
    assert transition_errors(schema, {"n": 2}, None) == [("n", "integer", "failed rule: self.x")]
    assert [m for _, _, m in transition_errors(schema, {"n": 5}, None)] == [
        "failed rule: self < 3",
        "failed rule: self.x",
    ]
