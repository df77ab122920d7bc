"""Check a rewrite before it is handed back: only the planned endpoint values may differ (belt and braces).

The splicer is simple and tested, but a config file that comes back subtly different (a key re-read as
another type, a comment swallowed, a line moved) would break a production site silently; so the result is
re-parsed and compared node by node, and every line outside an edit must survive in order.
"""

from __future__ import annotations

import bisect
import re
from typing import Any

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from edx_remote_cache.domain.rewrite.endpoints import RewriteError
from edx_remote_cache.domain.rewrite.locate import LocateError, compose, line_of
from edx_remote_cache.domain.rewrite.render import Edit

__all__ = ["verify"]


def verify(
    old_text: str, new_text: str, old_docs: list[Node], edits: list[Edit], expected: dict[int, list[str]]
) -> None:
    """Refuse to hand back anything but a LOCATION-only change (belt and braces over the splicer)."""
    _verify_lines(old_text, new_text, edits)
    try:
        new_docs = compose(new_text)
    except LocateError as exc:
        raise RewriteError(f"internal error: the rewritten text no longer parses ({exc})") from None
    if len(new_docs) != len(old_docs):
        raise RewriteError("internal error: the rewritten text has a different number of documents")
    for old_doc, new_doc in zip(old_docs, new_docs, strict=True):
        _same_tree(old_doc, new_doc, expected)


def _verify_lines(old_text: str, new_text: str, edits: list[Edit]) -> None:
    """Every line not touched by an edit must survive unchanged and in order."""
    old_starts, new_starts = _line_starts(old_text), _line_starts(new_text)
    touched_old: set[int] = set()
    touched_new: set[int] = set()
    shift = 0
    for edit in edits:  # sorted by _splice
        new_start, new_end = edit.start + shift, edit.start + shift + len(edit.text)
        touched_old.update(_line_range(old_starts, edit.start, edit.end))
        whole_lines_removed = not edit.text and _at_line_start(old_text, edit.start, edit.end)
        if not whole_lines_removed:
            touched_new.update(_line_range(new_starts, new_start, new_end))
        shift += len(edit.text) - (edit.end - edit.start)
    old_lines, new_lines = old_text.split("\n"), new_text.split("\n")
    kept_old = [line for i, line in enumerate(old_lines) if i not in touched_old]
    kept_new = [line for i, line in enumerate(new_lines) if i not in touched_new]
    if kept_old != kept_new:
        raise RewriteError("internal error: the rewrite would change lines outside LOCATION values")


def _line_starts(text: str) -> list[int]:
    starts = [0]
    find = text.find
    pos = find("\n")
    while pos != -1:
        starts.append(pos + 1)
        pos = find("\n", pos + 1)
    return starts


def _at_line_start(text: str, *positions: int) -> bool:
    return all(pos == 0 or text[pos - 1] == "\n" for pos in positions)


def _line_range(starts: list[int], start: int, end: int) -> range:
    first = bisect.bisect_right(starts, start) - 1
    last = bisect.bisect_right(starts, max(start, end - 1)) - 1
    return range(first, last + 1)


def _same_tree(old: Node, new: Node, expected: dict[int, list[str]]) -> None:
    stack: list[tuple[Node, Node]] = [(old, new)]
    seen: set[tuple[int, int]] = set()
    while stack:
        a, b = stack.pop()
        if (id(a), id(b)) in seen:
            continue
        seen.add((id(a), id(b)))
        if id(a) in expected:
            got = _entries_loose(b)
            if got != expected[id(a)]:
                raise RewriteError(
                    f"internal error: LOCATION at line {line_of(a)} would read {got!r}, not {expected[id(a)]!r}"
                )
            continue
        if type(a) is not type(b) or a.tag != b.tag:
            raise RewriteError(f"internal error: the rewrite would change the node at line {line_of(a)}")
        if isinstance(a, ScalarNode):
            if a.value != b.value:
                raise RewriteError(f"internal error: the rewrite would change the value at line {line_of(a)}")
        elif len(a.value) != len(b.value):
            raise RewriteError(
                f"internal error: the rewrite would change the collection at line {line_of(a)}"
            )
        elif isinstance(a, MappingNode):
            for (ak, av), (bk, bv) in zip(a.value, b.value, strict=True):
                stack.append((ak, bk))
                stack.append((av, bv))
        else:
            stack.extend(zip(a.value, b.value, strict=True))


def _entries_loose(node: Node) -> list[str] | Any:
    if isinstance(node, ScalarNode):
        return [p.strip() for p in re.split(r"[;,]", node.value) if p.strip()]
    if isinstance(node, SequenceNode):
        return [str(item.value).strip() if isinstance(item, ScalarNode) else item for item in node.value]
    return node
