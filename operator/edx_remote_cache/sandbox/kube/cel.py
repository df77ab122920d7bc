"""CEL validation rules (`x-kubernetes-validations`) evaluated the way the apiserver does, for the sandbox API.

The CRD declares some fields immutable with transition rules (`self == oldSelf`): AWS cannot move a cache host
to another region or subnet, so the API refuses the change instead of leaving a running cache behind. Without
evaluating them the sandbox would accept what a real cluster rejects, and the e2e suite could not show it.

Like the apiserver: every rule of a schema node is evaluated against the node's value (`self`); a rule that
mentions `oldSelf` is a transition rule, evaluated only on an update where the old object has the node too.
A rule that is false, or fails to evaluate, is one error naming the field path, with the rule's `message`
(default "failed rule: RULE"). Compiled programs are cached per rule text. Only object properties are walked
(no rules under array items or additionalProperties: the CRD has none there).

The one call the API makes (sandbox/kube.py, after schema validation of a create or update):
`transition_errors(openapi, new, old)` -> [(field, value type, message)]. `without_cel()` turns the rules off
for a while, as on an apiserver before Kubernetes 1.25: what the operator must then refuse by itself.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Mapping
from typing import Any

import celpy

from .schema import json_type

__all__ = ["transition_errors", "without_cel"]

_MISSING = object()
_off = 0  # > 0 inside without_cel()


@contextlib.contextmanager
def without_cel() -> Iterator[None]:
    """Every sandbox API in this process accepts what its CEL rules would refuse, until the block ends."""
    global _off
    _off += 1
    try:
        yield
    finally:
        _off -= 1


@functools.cache
def _program(rule: str) -> Any:
    env = celpy.Environment()
    return env.program(env.compile(rule))


def _holds(rule: str, new: Any, old: Any) -> bool:
    activation = {"self": celpy.json_to_cel(new)}
    if old is not _MISSING:
        activation["oldSelf"] = celpy.json_to_cel(old)
    try:
        result = _program(rule).evaluate(activation)
    except celpy.CELEvalError:
        return False
    return not isinstance(result, celpy.CELEvalError) and bool(result)


def _walk(
    schema: Mapping[str, Any], new: Any, old: Any, path: str, errors: list[tuple[str, str, str]]
) -> None:
    for entry in schema.get("x-kubernetes-validations") or ():
        rule = str(entry.get("rule", ""))
        if "oldSelf" in rule and old is _MISSING:
            continue  # a transition rule: only when there is an old value to compare with
        if not _holds(rule, new, old):
            errors.append((path, json_type(new), str(entry.get("message") or f"failed rule: {rule}")))
    if not isinstance(new, Mapping):
        return
    for key, child in (schema.get("properties") or {}).items():
        if key not in new:
            continue
        old_child = old.get(key, _MISSING) if isinstance(old, Mapping) else _MISSING
        _walk(child, new[key], old_child, f"{path}.{key}" if path else key, errors)


def transition_errors(
    openapi: Mapping[str, Any], new: Mapping[str, Any], old: Mapping[str, Any] | None
) -> list[tuple[str, str, str]]:
    """(field path, value type, message) for every rule the write breaks; ``old`` None for a create."""
    errors: list[tuple[str, str, str]] = []
    if _off:
        return errors
    _walk(openapi, new, _MISSING if old is None else old, "", errors)
    return errors
