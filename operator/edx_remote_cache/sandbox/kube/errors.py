"""What the apiserver answers when it refuses: a v1 ``Status``, field errors worded like apimachinery's."""

from __future__ import annotations

import dataclasses
import datetime
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .kinds import ServedKind


def utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class KubeApiError(Exception):
    """A non-2xx answer of the emulated API, as seen by the sync helpers (``code`` and the ``Status`` body)."""

    def __init__(self, code: int, body: Any) -> None:
        self.code = code
        self.body = body
        self.reason = body.get("reason", "") if isinstance(body, dict) else ""
        self.message = body.get("message", "") if isinstance(body, dict) else str(body)
        super().__init__(f"{code} {self.reason}: {self.message}")


class ApiError(Exception):
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
    def not_found(cls, kind: ServedKind, name: str) -> ApiError:
        details = {"name": name, "group": kind.group, "kind": kind.plural}
        return cls(404, "NotFound", f'{kind.group_resource} "{name}" not found', details)

    @classmethod
    def bad_request(cls, message: str) -> ApiError:
        return cls(400, "BadRequest", message)

    @classmethod
    def conflict(cls, kind: ServedKind, name: str, why: str) -> ApiError:
        details = {"name": name, "group": kind.group, "kind": kind.plural}
        return cls(
            409,
            "Conflict",
            f'Operation cannot be fulfilled on {kind.group_resource} "{name}": {why}',
            details,
        )

    @classmethod
    def invalid(cls, kind: ServedKind, name: str, errors: Sequence[FieldError]) -> ApiError:
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
        text = f"{self.type}: {go_value(self.value)}" if self.show_value else self.type
        return f"{text}: {self.detail}" if self.detail else text

    def text(self) -> str:
        return f"{self.field}: {self.body()}"


class GoLiteral(str):
    """A value printed bare in field errors (e.g. the ``0x0`` of an unset resourceVersion)."""


def go_value(value: Any) -> str:
    """Values as apimachinery prints them in field errors: quoted strings, bare numbers and booleans."""
    if isinstance(value, GoLiteral):
        return str(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return json.dumps(value, ensure_ascii=False)
