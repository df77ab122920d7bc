"""The little of Kubernetes' protobuf encoding that kubectl sends: a Namespace to create, DeleteOptions.

kubectl (1.35 and newer) encodes request bodies of built-in kinds as protobuf, and client-go does not fall back
to JSON when the server answers 415 (it does so only for CBOR). A real apiserver decodes them; the emulator
decodes what ``kubectl create namespace`` and ``kubectl delete`` send and answers 415 for anything else, rather
than guess at fields it cannot read. Responses stay JSON, which kubectl accepts (its Accept header lists both).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

MAGIC = b"k8s\x00"


class UnsupportedProtobuf(ValueError):
    """A body the emulator cannot decode (another kind, or a field it does not know)."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise UnsupportedProtobuf("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(data: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) pairs of one message: varints as int, length-delimited fields as bytes."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            yield number, value
        elif wire == 2:
            size, pos = _varint(data, pos)
            yield number, data[pos : pos + size]
            pos += size
        else:
            raise UnsupportedProtobuf(f"wire type {wire} of field {number}")


def _text(value: int | bytes) -> str:
    if not isinstance(value, bytes):
        raise UnsupportedProtobuf("expected a string")
    return value.decode("utf-8")


def _message(value: int | bytes) -> bytes:
    if not isinstance(value, bytes):
        raise UnsupportedProtobuf("expected a message")
    return value


def _string_map(entries: list[bytes]) -> dict[str, str]:
    out = {}
    for entry in entries:
        fields = dict(_fields(entry))
        out[_text(fields.get(1, b""))] = _text(fields.get(2, b""))
    return out


# ObjectMeta's field numbers (k8s.io/apimachinery/pkg/apis/meta/v1/generated.proto) that clients set.
_META_STRINGS = {1: "name", 2: "generateName", 3: "namespace", 5: "uid", 6: "resourceVersion"}
_META_MAPS = {11: "labels", 12: "annotations"}


def _object_meta(data: bytes) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    maps: dict[str, list[bytes]] = {}
    for number, value in _fields(data):
        if not value:  # gogo-protobuf writes unset strings, structs and numbers as empty/zero
            continue
        if number in _META_STRINGS:
            meta[_META_STRINGS[number]] = _text(value)
        elif number in _META_MAPS:
            maps.setdefault(_META_MAPS[number], []).append(_message(value))
        elif number == 14:
            meta.setdefault("finalizers", []).append(_text(value))
        else:
            raise UnsupportedProtobuf(f"ObjectMeta field {number}")
    meta.update({name: _string_map(entries) for name, entries in maps.items()})
    return meta


def _empty(data: bytes) -> bool:
    return all(not value or (isinstance(value, bytes) and _empty(value)) for _, value in _fields(data))


def _namespace(data: bytes) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for number, value in _fields(data):
        if number == 1:
            obj["metadata"] = _object_meta(_message(value))
        elif number in (2, 3) and _empty(_message(value)):
            continue  # an empty spec/status (the apiserver fills in both)
        else:
            raise UnsupportedProtobuf(f"Namespace field {number}")
    return obj


def _delete_options(data: bytes) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for number, value in _fields(data):
        if number == 1 and isinstance(value, int):
            obj["gracePeriodSeconds"] = value
        elif number == 2:
            pre = dict(_fields(_message(value)))
            obj["preconditions"] = {
                name: _text(pre[n]) for n, name in ((1, "uid"), (2, "resourceVersion")) if n in pre
            }
        elif number == 3 and isinstance(value, int):
            obj["orphanDependents"] = bool(value)
        elif number == 4:
            obj["propagationPolicy"] = _text(value)
        elif number == 5:
            obj.setdefault("dryRun", []).append(_text(value))
        else:
            raise UnsupportedProtobuf(f"DeleteOptions field {number}")
    return obj


_DECODERS = {
    ("v1", "Namespace"): _namespace,
    ("v1", "DeleteOptions"): _delete_options,
    ("meta.k8s.io/v1", "DeleteOptions"): _delete_options,
}


def decode(body: bytes) -> dict[str, Any]:
    """The JSON form of a protobuf request body (``k8s\\0`` + runtime.Unknown), or UnsupportedProtobuf."""
    if not body.startswith(MAGIC):
        raise UnsupportedProtobuf("no k8s protobuf envelope")
    envelope = dict(_fields(body[len(MAGIC) :]))
    type_meta = dict(_fields(_message(envelope.get(1, b""))))
    api_version, kind = _text(type_meta.get(1, b"")), _text(type_meta.get(2, b""))
    decoder = _DECODERS.get((api_version, kind))
    if decoder is None:
        raise UnsupportedProtobuf(f"{api_version} {kind}")
    return {"apiVersion": api_version, "kind": kind, **decoder(_message(envelope.get(2, b"")))}
