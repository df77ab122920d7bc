"""Splices: the only thing a write sends to a host — byte range, the text expected there, the new text.

The operator never holds a config file, so it cannot send the new file or its sha256. It sends, per value node
it changes, ``(start, end, old, new)`` and the file's sha256 as read; the host refuses the whole write unless
the file still has that sha256 and each range still holds ``old`` (compare-and-swap), then re-parses the
result and checks that exactly these nodes changed to ``new`` (:func:`hostside.erc_check`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Splice", "apply_splices"]


@dataclass(frozen=True)
class Splice:
    """Replace bytes [start, end) — which must hold ``old`` — with ``new`` (UTF-8 text)."""

    start: int
    end: int
    old: str
    new: str

    def to_wire(self) -> list[object]:
        return [self.start, self.end, self.old, self.new]


def apply_splices(data: bytes, splices: Iterable[Splice]) -> bytes:
    """The pure twin of the host's ``erc_spliced`` (tests and the engine-agreement property)."""
    out: list[bytes] = []
    pos = 0
    for s in sorted(splices, key=lambda s: s.start):
        if s.start < pos or s.end < s.start or data[s.start : s.end] != s.old.encode("utf-8"):
            raise ValueError(f"bytes {s.start}-{s.end} do not hold the expected text")
        out += [data[pos : s.start], s.new.encode("utf-8")]
        pos = s.end
    out.append(data[pos:])
    return b"".join(out)
