"""Find the memcached endpoint values of one Open edX YAML file: where each one sits and what it says.

This file is SELF-CONTAINED on purpose: the host push sends it verbatim, inside the script it runs over SSM, to
every Open edX host, which parses its own config files and prints only these nodes. So it imports nothing but
the standard library and PyYAML, runs on Python >= 3.8 (no ``match``, no runtime ``X | Y``, no
``itertools.pairwise``/``zip(strict=)``) and falls back to ``yaml.SafeLoader`` where libyaml is missing.

API (see also docs/rewrite-engine.md)::

    locate(text) -> Located          # text: the whole file as str, without a leading BOM
    Located.targets: tuple[Target]   # one per value node, in file order
        paths      key paths naming the node, in key order: ("CACHES.default",), ("edx.ansible_vars.EDXAPP_MEMCACHE",);
                   several when YAML anchors/aliases/merge keys make several caches share one LOCATION node
        key_lines  1-based line of each path's key (same order as paths)
        kind       "location" (a memcached cache's LOCATION) or "memcache_var" (a ``*_MEMCACHE`` key, any case)
        shape      "scalar" | "flow" | "block"
        start, end character offsets into ``text``; ``text[start:end] == source``
        line, column  1-based line and 0-based column of ``start``
        source     the span's own text -- everything :func:`render.render` needs to rewrite it
        entries    the endpoint strings as ``yaml.safe_load`` reads them (strings are split on ``;`` and ``,``)
    Located.skipped: tuple[Skipped]  # keys left alone because their value is a Jinja expression
        path, line, reason           # e.g. ("CACHES", 12, "templated value (Jinja); left as is")

Span rule: for a scalar or a flow list the span is the value node as the parser reports it (anchors and tags
included). For a block list it is whole lines, from the start of the first item's line to the end of the last
item's line (newline included), because a rewrite may add an item line, drop one, or keep an item's trailing
comment; anchors, tags and comments between the key and the first item stay outside.

Errors: :class:`LocateError` (``line``, ``column``, ``problem``, ``key_path``; ``template`` is True when the file
looks like a Jinja/Salt template rather than YAML, so the user is told to edit the rendered file instead). A
parse error names the line, column and key path and never the faulty line's text: PyYAML's snippet of the line
is left out and any quoted piece of the file in its message is redacted (the host prints these messages into
SSM's invocation history, which must never hold a secret).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Tuple

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

try:  # libyaml: same results as the pure-Python loader, ~15x faster
    from yaml import CSafeLoader as _Loader
except ImportError:  # pragma: no cover - old hosts without libyaml
    from yaml import SafeLoader as _Loader  # type: ignore[assignment]
LOADER = _Loader  # the loader every parse here uses (render.py parses node texts with the same one)

__all__ = [
    "LOADER",
    "LOCATION",
    "MEMCACHE_VAR",
    "LocateError",
    "Located",
    "Skipped",
    "Target",
    "is_templated",
    "key_path_at_error",
    "locate",
    "redact",
]

LOCATION = "location"
MEMCACHE_VAR = "memcache_var"
NULL_TAG = "tag:yaml.org,2002:null"
STR_TAG = "tag:yaml.org,2002:str"
MERGE_TAG = "tag:yaml.org,2002:merge"
TEMPLATED = "templated value (Jinja); left as is"
_MEMCACHED_BACKENDS = frozenset(
    {
        "django_pylibmc.memcached.PyLibMCCache",
        "django_elasticache.memcached.ElastiCache",
        "django_bmemcached.memcached.BMemcached",
    }
)
_MEMCACHED_WORD = re.compile(r"[Mm]emcache|(?i:pylibmc|elasticache)")
# `{%` / `{#` anywhere, or `{{` where a key or a list item starts: YAML cannot mean these, Jinja/Salt does
_TEMPLATE_MARK = re.compile(r"\{[%#]|^[ \t]*(?:-[ \t]+)?\{\{", re.MULTILINE)


class LocateError(ValueError):
    """A file we cannot safely edit; ``line`` (1-based) and ``column`` (1-based) point at the cause."""

    def __init__(
        self,
        problem: str,
        line: int | None = None,
        column: int | None = None,
        template: bool = False,
        key_path: str = "",
    ) -> None:
        self.problem = problem
        self.line = line
        self.column = column
        self.template = template
        self.key_path = key_path  # keys only (see key_path_at_error): never the faulty line's text
        super().__init__(f"line {line}: {problem}" if line is not None else problem)


@dataclass(frozen=True)
class Skipped:
    """A key left untouched because its value is a Jinja expression (a one-line warning for the user)."""

    path: str
    line: int
    reason: str


@dataclass(frozen=True)
class Target:
    """One memcached endpoint value node; see the module docstring for each field and the span rule."""

    paths: tuple[str, ...]
    key_lines: tuple[int, ...]
    kind: str
    shape: str
    start: int
    end: int
    line: int
    column: int
    source: str
    entries: tuple[str, ...]

    @property
    def path(self) -> str:
        return self.paths[0]


@dataclass(frozen=True)
class Located:
    targets: tuple[Target, ...]
    skipped: tuple[Skipped, ...]


def locate(text: str) -> Located:
    """Every memcached LOCATION and ``*_MEMCACHE`` value of ``text`` (see the module docstring)."""
    return locate_nodes(text)[0]


def is_templated(value: str) -> bool:
    """A Jinja expression or statement: ansible/Salt fill it in later, so it is not ours to edit."""
    return "{{" in value or "{%" in value


def is_memcached_backend(backend: str) -> bool:
    """Django's own memcached backends plus the common third-party ones (pylibmc, ElastiCache, bmemcached)."""
    name = backend.strip()
    if name.startswith("django.core.cache.backends.memcached.") or name in _MEMCACHED_BACKENDS:
        return True
    # case-sensitive on purpose: LocMemCache is local memory, not memcached
    return "redis" not in name.lower() and bool(_MEMCACHED_WORD.search(name))


def locate_nodes(text: str) -> tuple[Located, list[Node], tuple[Node, ...]]:
    """:func:`locate` plus the composed documents and each target's node (the in-process engine verifies
    its result against them; the host script has no use for them)."""
    docs = compose(text)
    finder = _Finder()
    for doc in docs:
        finder.walk(doc)
    targets = []
    nodes = []
    for refs in finder.groups():
        node = refs[0][2]
        targets.append(_target(text, node, refs))
        nodes.append(node)
    order = sorted(range(len(targets)), key=lambda i: targets[i].start)
    located = Located(tuple(targets[i] for i in order), tuple(finder.skipped))
    return located, docs, tuple(nodes[i] for i in order)


def compose(text: str) -> list[Node]:
    """All YAML documents of ``text`` as node trees; a parse error becomes a :class:`LocateError`."""
    try:
        return [doc for doc in yaml.compose_all(text, Loader=_Loader) if doc is not None]
    except yaml.MarkedYAMLError as exc:
        template = _template_error(text)
        if template is not None:
            raise template from None
        mark = exc.problem_mark or exc.context_mark
        # context and problem only: str(exc) adds the mark's snippet, i.e. the faulty line's text
        problem = redact(" ".join(p for p in (exc.context, exc.problem) if p) or "invalid YAML")
        line = mark.line + 1 if mark is not None else None
        column = mark.column + 1 if mark is not None else None
        where = [f"column {column}"] if mark is not None else []
        key_path = key_path_at_error(text, mark.index if mark is not None else None)
        if key_path:
            where.append(f"key path {key_path}")
        if where:
            problem = f"{problem} ({'; '.join(where)})"
        raise LocateError("malformed YAML: " + problem, line, column, key_path=key_path) from None
    except yaml.YAMLError as exc:  # ReaderError: bad characters, has a character offset instead of a mark
        position = getattr(exc, "position", None)
        line = text.count("\n", 0, position) + 1 if isinstance(position, int) else None
        reason = redact(getattr(exc, "reason", None) or type(exc).__name__)
        raise LocateError(f"malformed YAML: {reason}", line) from None


# what a parser message may quote and still say nothing of the file: a token name ('<block end>'), one or two
# indicator characters ('-', '{%') or an escaped control character ('\\t'); an alias, anchor or tag name is
# the file's own text (the pure-Python loader quotes them), so it goes
_HARMLESS_QUOTE = re.compile(r"<[a-z ]+>|[^\w\s'\"]{1,2}|\\[a-z0-9]{1,4}")
_QUOTED = re.compile(r"'([^'\n]*)'|\"([^\"\n]*)\"")


def redact(message: str) -> str:
    """A parser message with every quoted piece of the file replaced by ``'…'`` (see _HARMLESS_QUOTE)."""

    def keep(match: re.Match) -> str:  # type: ignore[type-arg]
        inner = match.group(1) if match.group(1) is not None else match.group(2)
        return match.group(0) if _HARMLESS_QUOTE.fullmatch(inner) else "'…'"

    return _QUOTED.sub(keep, message)


_KEY_CHARS = 60  # a key longer than this is cut: the path names where, it does not copy the file


def key_path_at_error(text: str, index: int | None = None) -> str:
    """The key path the parser was inside when it failed (at character ``index``, or where parsing stops),
    e.g. ``CACHES.default.LOCATION`` or ``DB (after PASSWORD)``: block-mapping keys and list indices only,
    never a value, so an error message may name it. A flow mapping's keys (``{a: b}``) show as ``{…}``: a
    stray ``{`` turns the rest of a line, secret included, into such a key.

    Parses ``text`` again event by event with the same loader and keeps one frame per open collection:
    a mapping's frame holds its current key (and whether that key's value is still open), a list's its index.
    """
    frames: list[list] = []  # type: ignore[type-arg]  # [is_mapping, key or index, value open, flow]

    def value_done() -> None:
        if frames:
            if frames[-1][0]:
                frames[-1][2] = False
            else:
                frames[-1][1] += 1

    try:
        for event in yaml.parse(text, Loader=_Loader):
            if index is not None and event.start_mark.index >= index:
                break
            if isinstance(event, yaml.DocumentStartEvent):
                frames = []
            elif isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                if frames and frames[-1][0] and not frames[-1][2]:  # a collection as a key
                    frames[-1][1:3] = ["?", True]
                mapping_start = isinstance(event, yaml.MappingStartEvent)
                frames.append([mapping_start, None if mapping_start else 0, False, bool(event.flow_style)])
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                if frames:
                    frames.pop()
                value_done()
            elif isinstance(event, (yaml.ScalarEvent, yaml.AliasEvent)):
                if frames and frames[-1][0] and not frames[-1][2]:  # a key
                    key = str(event.value) if isinstance(event, yaml.ScalarEvent) else "*alias"
                    key = (
                        "{…}" if frames[-1][3] else key if len(key) <= _KEY_CHARS else key[:_KEY_CHARS] + "…"
                    )
                    frames[-1][1:3] = [key, True]
                else:
                    value_done()
    except yaml.YAMLError:
        pass
    parts = []
    for i, (is_mapping, key, value_open, _flow) in enumerate(frames):
        if not is_mapping:
            parts.append(f"[{key}]")
        elif key is not None and value_open:
            parts.append(("." if parts else "") + str(key))
        elif key is not None and i == len(frames) - 1:
            return "".join(parts) + f"{' ' if parts else ''}(after {key})"
        else:
            break
    return "".join(parts)


def _template_error(text: str) -> LocateError | None:
    match = _TEMPLATE_MARK.search(text)
    if match is None:
        return None
    position = match.end() - 2  # the brace pair itself, not the indentation or list dash before it
    line = text.count("\n", 0, position) + 1
    column = position - (text.rfind("\n", 0, position) + 1) + 1
    mark = text[position : position + 2]
    return LocateError(
        f"this looks like a Jinja/Salt template, not YAML ('{mark}' at column {column}): render it first; "
        "edx-remote-cache edits the rendered file (e.g. /edx/etc/lms.yml), not its template",
        line,
        column,
        template=True,
    )


# ------------------------------------------------------------------------------------------------- search

_Ref = Tuple[str, int, Node, str]  # (key path, key line, value node, kind); typing.Tuple: runs on Python 3.8


class _Finder:
    """Walks documents in order, collecting target nodes (grouped by node identity) and skipped keys."""

    def __init__(self) -> None:
        self.refs: list[_Ref] = []
        self.skipped: list[Skipped] = []
        self._seen: set[int] = set()
        self._reported: set[int] = set()  # lists whose templated items were already reported

    def groups(self) -> list[list[_Ref]]:
        by_node: dict[int, list[_Ref]] = {}
        for ref in self.refs:
            by_node.setdefault(id(ref[2]), []).append(ref)
        groups = list(by_node.values())
        for refs in groups:
            refs.sort(key=lambda r: r[1])  # the first alias (by line) names the node
        return groups

    def walk(self, doc: Node) -> None:
        stack: list[tuple[Node, str]] = [(doc, "")]
        while stack:
            node, path = stack.pop()
            if id(node) in self._seen:
                continue
            self._seen.add(id(node))
            if isinstance(node, MappingNode):
                children = []
                for name, (key, value) in mapping(node).items():
                    child = f"{path}.{name}" if path else name
                    if name == "CACHES":
                        self._caches(key, value, child)
                        self._seen.add(id(value))
                    elif name.upper().endswith("_MEMCACHE") and _is_endpoint_list(value):
                        self._memcache_var(key, value, child)
                    else:
                        children.append((value, child))
                stack.extend(reversed(children))
            elif isinstance(node, SequenceNode):
                stack.extend((item, f"{path}[{i}]") for i, item in reversed(list(enumerate(node.value))))

    def _skip_if_templated(self, node: Node, path: str) -> bool:
        if isinstance(node, ScalarNode) and node.tag == STR_TAG and is_templated(str(node.value)):
            self.skipped.append(Skipped(path, line_of(node), TEMPLATED))
            return True
        return False

    def _skip_templated_items(self, node: Node, path: str) -> None:
        if isinstance(node, SequenceNode) and id(node) not in self._reported:
            self._reported.add(id(node))  # an aliased list is reported once
            for i, item in enumerate(node.value):
                self._skip_if_templated(item, f"{path}[{i}]")

    def _memcache_var(self, key: Node, value: Node, path: str) -> None:
        if self._skip_if_templated(value, path):
            return
        self._skip_templated_items(value, path)
        self.refs.append((path, line_of(key), value, MEMCACHE_VAR))

    def _caches(self, key: Node, caches: Node, path: str) -> None:
        if self._skip_if_templated(caches, path):
            return
        if not isinstance(caches, MappingNode):
            raise LocateError(
                f"{path} must be a mapping of cache aliases, found {kind_of(caches)}", line_of(key)
            )
        for alias, (alias_key, cache) in mapping(caches).items():
            cache_path = f"{path}.{alias}"
            if self._skip_if_templated(cache, cache_path):
                continue
            if not isinstance(cache, MappingNode):
                raise LocateError(
                    f"{cache_path} must be a mapping, found {kind_of(cache)}", line_of(alias_key)
                )
            settings = mapping(cache)
            backend = settings.get("BACKEND")
            if backend is None or not isinstance(backend[1], ScalarNode):
                continue
            if self._skip_if_templated(backend[1], cache_path + ".BACKEND"):
                continue
            if not is_memcached_backend(str(backend[1].value)) or "LOCATION" not in settings:
                continue
            location_key, location = settings["LOCATION"]
            if self._skip_if_templated(location, cache_path + ".LOCATION"):
                continue
            self._skip_templated_items(location, cache_path + ".LOCATION")
            self.refs.append((cache_path, line_of(location_key), location, LOCATION))


def _is_endpoint_list(node: Node) -> bool:
    if isinstance(node, ScalarNode):
        return bool(node.tag == STR_TAG)
    return isinstance(node, SequenceNode) and all(isinstance(item, ScalarNode) for item in node.value)


def _target(text: str, node: Node, refs: list[_Ref]) -> Target:
    path, key_line, _node, kind = refs[0]
    entries = _entries(node, path, key_line)
    start, end = int(node.start_mark.index), int(node.end_mark.index)
    if isinstance(node, ScalarNode):
        shape = "scalar"
    elif node.flow_style:
        shape = "flow"
    else:
        shape = "block"
        start = text.rfind("\n", 0, int(node.value[0].start_mark.index)) + 1
        newline = text.find("\n", int(node.value[-1].end_mark.index))
        end = len(text) if newline == -1 else newline + 1
    line = text.count("\n", 0, start) + 1
    column = start - (text.rfind("\n", 0, start) + 1)
    return Target(
        paths=tuple(r[0] for r in refs),
        key_lines=tuple(r[1] for r in refs),
        kind=kind,
        shape=shape,
        start=start,
        end=end,
        line=line,
        column=column,
        source=text[start:end],
        entries=tuple(entries),
    )


def _entries(node: Node, path: str, key_line: int) -> list[str]:
    if isinstance(node, ScalarNode):
        if node.tag == NULL_TAG:
            return []
        return [part for part in (p.strip() for p in re.split(r"[;,]", node.value)) if part]
    if isinstance(node, SequenceNode):
        entries = []
        for item in node.value:
            if not isinstance(item, ScalarNode):
                raise LocateError(
                    f"{path}: LOCATION entries must be strings, found {kind_of(item)}",
                    line_of(item),
                )
            entries.append(str(item.value).strip())
        return entries
    raise LocateError(
        f"{path}: LOCATION must be a string or a list of HOST:PORT strings, found {kind_of(node)}",
        key_line,
    )


# ------------------------------------------------------------------------------------------------ helpers


def mapping(node: MappingNode, _seen: frozenset[int] = frozenset()) -> dict[str, tuple[Node, Node]]:
    """Keys as PyYAML's safe_load sees them: ``<<`` merges applied, own keys win, last duplicate wins."""
    merged: dict[str, tuple[Node, Node]] = {}
    own: dict[str, tuple[Node, Node]] = {}
    seen = _seen | {id(node)}
    for key, value in node.value:
        if key.tag == MERGE_TAG:
            sources = value.value if isinstance(value, SequenceNode) else [value]
            for source in reversed(sources):  # the first mapping listed wins
                if isinstance(source, MappingNode) and id(source) not in seen:
                    merged.update(mapping(source, seen))
        elif isinstance(key, ScalarNode):
            own[key.value] = (key, value)
    merged.update(own)
    return merged


def kind_of(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    if node.tag == NULL_TAG:
        return "null"
    return "a scalar"  # never the value: it may be a secret pasted at the wrong indentation


def line_of(node: Node) -> int:
    return int(node.start_mark.line) + 1
