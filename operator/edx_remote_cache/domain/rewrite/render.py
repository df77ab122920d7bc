"""Render one endpoint value node's new text from its OWN text only (pure).

The host push prints, per config file, the spans :func:`~edx_remote_cache.domain.rewrite.locate.locate`
found; the operator renders each span here and sends back only ``(start, end, old source, new source)``
splices. So nothing here may look at the rest of the file: ``source`` is ``Target.source`` (a scalar or flow
list exactly as written, or the whole lines of a block list -- see the span rule in ``locate``), and the
style of the result (quoting, separators, indentation, item prefix, CRLF) is read from that text alone.

``plan`` has one list per old entry, in order: what that entry becomes (``[old]`` to keep it, several values
to expand it in place, ``[]`` to drop a duplicate). Entries that keep their value keep their bytes.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass

import yaml
from yaml.nodes import Node, ScalarNode, SequenceNode
from yaml.resolver import Resolver

from edx_remote_cache.domain.rewrite.endpoints import RewriteError
from edx_remote_cache.domain.rewrite.locate import LOADER as _Loader
from edx_remote_cache.domain.rewrite.locate import STR_TAG

__all__ = ["Edit", "edits", "render", "splice"]

_SEPARATOR = re.compile(r"\s*[;,]\s*")
_ITEM_PREFIX = re.compile(r" *-[ \t]+")
_LINE_TAIL = re.compile(r"[ \t]*(?:#[^\r\n]*)?")
# Characters a plain endpoint list may use; _plain_ok adds the YAML context rules and the type check.
_PLAIN_SAFE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:;, -]*")
_RESOLVER = Resolver()


@dataclass(frozen=True)
class Edit:
    """Replace ``text[start:end]`` with ``text`` (offsets into the string the edit was computed for)."""

    start: int
    end: int
    text: str

    def shifted(self, offset: int) -> Edit:
        return Edit(self.start + offset, self.end + offset, self.text)


def render(source: str, plan: Sequence[Sequence[str]], *, path: str = "LOCATION", line: int = 1) -> str:
    """The new text of one span. ``path`` and ``line`` (the span's first line in its file) only name the
    value in a :class:`RewriteError` when the node has a shape we refuse to edit."""
    return splice(source, edits(source, plan, path=path, line=line))


def edits(source: str, plan: Sequence[Sequence[str]], *, path: str = "LOCATION", line: int = 1) -> list[Edit]:
    """The minimal edits inside ``source`` (what :func:`render` splices; the engine verifies each one)."""
    try:
        node = yaml.compose(source, Loader=_Loader)
    except yaml.YAMLError:
        node = None
    if not isinstance(node, ScalarNode | SequenceNode):
        raise RewriteError(f"{path}: could not locate the LOCATION value in the text", line)
    context = _Context(source, path, line)
    if isinstance(node, ScalarNode):
        start, end = context.scalar_span(node)
        value = str(node.value)
        sep = _SEPARATOR.search(value)
        joined = (sep.group(0) if sep else ";").join(v for values in plan for v in values)
        return [Edit(start, end, _quote(joined, _style(node), allow_comma="," in value))]
    if len(node.value) != len(plan):
        raise RewriteError(f"{path}: the plan has {len(plan)} entries, the list {len(node.value)}", line)
    if node.flow_style:
        return context.flow(node, plan)
    return context.block(node, plan)


def splice(text: str, edits: Sequence[Edit]) -> str:
    """Apply non-overlapping edits; overlapping ones mean a bug upstream, so refuse rather than guess."""
    parts: list[str] = []
    pos = 0
    for edit in sorted(edits, key=lambda e: (e.start, e.end)):
        if edit.start < pos:
            raise RewriteError("internal error: overlapping edits; refusing to rewrite")
        parts.append(text[pos : edit.start])
        parts.append(edit.text)
        pos = edit.end
    parts.append(text[pos:])
    return "".join(parts)


def _quote(value: str, style: str | None, allow_comma: bool = False) -> str:
    """Render like the value being replaced; fall back to single quotes when plain would not round-trip."""
    if style is None:
        if _plain_ok(value, allow_comma):
            return value
        style = "'"
    if style == '"':
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return "'" + value.replace("'", "''") + "'"


def _plain_ok(value: str, allow_comma: bool) -> bool:
    """Plain only if it reads back as the same string in block and flow context (commas: block only)."""
    if not _PLAIN_SAFE.fullmatch(value) or ": " in value or value.endswith((":", " ")):
        return False
    if "," in value and not allow_comma:
        return False
    return bool(_RESOLVER.resolve(ScalarNode, value, (True, False)) == STR_TAG)


def _style(node: ScalarNode) -> str | None:
    """libyaml reports plain scalars as ``''``, the pure-Python parser as ``None``."""
    return node.style or None


@dataclass(frozen=True)
class _Context:
    text: str
    path: str
    line: int

    def line_of(self, node: Node) -> int:
        return self.line + int(node.start_mark.line)

    def scalar_span(self, node: ScalarNode) -> tuple[int, int]:
        start, end = int(node.start_mark.index), int(node.end_mark.index)
        source = self.text[start:end]
        if not source or source[0] in "&!*":
            raise RewriteError(
                f"{self.path}: anchored or tagged LOCATION values are not supported", self.line_of(node)
            )
        style = _style(node)
        if style in ("|", ">"):
            raise RewriteError(
                f"{self.path}: block scalar LOCATION values are not supported", self.line_of(node)
            )
        if style is None:
            consistent = " ".join(source.split()) == " ".join(str(node.value).split())
        else:
            consistent = source[0] == style and source[-1] == style
        if not consistent:
            raise RewriteError(
                f"{self.path}: could not locate the LOCATION value in the text", self.line_of(node)
            )
        return start, end

    def block(self, node: SequenceNode, plan: Sequence[Sequence[str]]) -> list[Edit]:
        text = self.text
        out = []
        for item, values in zip(node.value, plan, strict=True):
            if list(values) == [str(item.value).strip()]:
                continue
            start, end = self.scalar_span(item)
            line_start = text.rfind("\n", 0, start) + 1
            prefix = text[line_start:start]
            if not _ITEM_PREFIX.fullmatch(prefix):
                raise RewriteError(
                    f"{self.path}: put each LOCATION entry on its own '- ' line", self.line_of(item)
                )
            tail = _LINE_TAIL.match(text, end)
            assert tail is not None  # the pattern matches the empty string
            line_end = tail.end()
            if text.startswith("\r", line_end):  # keep CRLF files CRLF
                newline = "\r\n"
            elif line_end == len(text) or text[line_end] == "\n":
                newline = "\n"
            else:
                raise RewriteError(f"{self.path}: unexpected text after a LOCATION entry", self.line_of(item))
            if not values:  # a duplicate of an earlier entry: drop its whole line
                if line_end + len(newline) <= len(text):
                    out.append(Edit(line_start, line_end + len(newline), ""))
                else:  # last line of a file without a final newline (never the first item)
                    out.append(Edit(line_start - 1, line_end, ""))
                continue
            first = _quote(values[0], _style(item))
            extra = "".join(newline + prefix + _quote(v, _style(item)) for v in values[1:])
            out.append(Edit(start, line_end, first + text[end:line_end] + extra))
        return out

    def flow(self, node: SequenceNode, plan: Sequence[Sequence[str]]) -> list[Edit]:
        text = self.text
        items: list[ScalarNode] = node.value
        lo, hi = int(node.start_mark.index), int(node.end_mark.index)
        spans = [(int(i.start_mark.index), int(i.end_mark.index)) for i in items]
        inside = all(lo < s <= e < hi for s, e in spans) and all(
            a[1] <= b[0] for a, b in itertools.pairwise(spans)
        )
        if not inside or len({id(i) for i in items}) != len(items):
            raise RewriteError(
                f"{self.path}: aliases inside a LOCATION list are not supported", self.line_of(node)
            )
        between = text[spans[0][1] : spans[1][0]] if len(spans) > 1 else ", "
        sep = between if "\n" not in between and "#" not in between else ", "
        out = []
        for index, (item, values) in enumerate(zip(items, plan, strict=True)):
            if list(values) == [str(item.value).strip()]:
                continue
            start, end = self.scalar_span(item)
            if not values:  # never the first item: an earlier entry already produced this value
                out.append(Edit(spans[index - 1][1], end, ""))
                continue
            out.append(Edit(start, end, sep.join(_quote(v, _style(item)) for v in values)))
        return out
