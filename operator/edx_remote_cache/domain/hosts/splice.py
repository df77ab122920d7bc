"""Splices."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass

# ------------------------------------------------------------------------------------------------ splices


@dataclass(frozen=True)
class Copy:
    """Bytes [start, start+length) of the original file."""

    start: int
    length: int


@dataclass(frozen=True)
class Data:
    """Literal new bytes (travel base64-encoded)."""

    content: bytes


Segment = Copy | Data


def splice_segments(old: bytes, new: bytes) -> tuple[Segment, ...]:
    """``new`` as copies of ``old`` line ranges plus literal lines, so a write script carries only the change."""
    a, b = old.splitlines(keepends=True), new.splitlines(keepends=True)
    head = 0
    while head < min(len(a), len(b)) and a[head] == b[head]:
        head += 1
    tail = 0
    while tail < min(len(a), len(b)) - head and a[-1 - tail] == b[-1 - tail]:
        tail += 1
    offsets = [0]
    for line in a:
        offsets.append(offsets[-1] + len(line))
    ops: list[tuple[str, int, int, int, int]] = [("equal", 0, head, 0, head)]
    matcher = difflib.SequenceMatcher(None, a[head : len(a) - tail], b[head : len(b) - tail], autojunk=False)
    ops.extend(
        (op, i1 + head, i2 + head, j1 + head, j2 + head) for op, i1, i2, j1, j2 in matcher.get_opcodes()
    )
    ops.append(("equal", len(a) - tail, len(a), len(b) - tail, len(b)))
    segments: list[Segment] = []
    for tag, i1, i2, j1, j2 in ops:
        if tag == "equal" and i2 > i1:
            start, length = offsets[i1], offsets[i2] - offsets[i1]
            last = segments[-1] if segments else None
            if isinstance(last, Copy) and last.start + last.length == start:
                segments[-1] = Copy(last.start, last.length + length)
            else:
                segments.append(Copy(start, length))
        elif tag != "equal" and j2 > j1:
            content = b"".join(b[j1:j2])
            if segments and isinstance(segments[-1], Data):
                segments[-1] = Data(segments[-1].content + content)
            else:
                segments.append(Data(content))
    result = tuple(segments)
    if apply_segments(old, result) != new:  # belt and braces: never ship a splice that does not rebuild `new`
        raise AssertionError("internal error: splice does not reproduce the new content")
    return result


def apply_segments(old: bytes, segments: Iterable[Segment]) -> bytes:
    """What the host's build function produces (the pure twin of the bash, for tests and self-checks)."""
    return b"".join(old[s.start : s.start + s.length] if isinstance(s, Copy) else s.content for s in segments)
