"""Point an Open edX site's memcached settings at another host, changing nothing but the endpoint values.

The files are owned by ansible and by the people who hand-edit them, so a rewrite must produce a diff an
operator can read at a glance: only LOCATION values (and ansible ``*_MEMCACHE`` lists) may differ, byte for
byte. Rather than re-serialising the document (which re-indents, re-quotes and re-wraps), the YAML is composed
once to *find* the value nodes and the new text is spliced into the original string at their positions.

Nodes are located with PyYAML's composer (libyaml when available). That is the parser edx-platform and ansible
read these files with, so "what is a cache" matches what the site sees, and it is ~20x faster than a pure-Python
parse (a 64 KiB lms.yml rewrites in well under 50 ms). The result is re-parsed and compared node by node with the
original before it is returned; any difference outside the edited values raises :class:`RewriteError`.

This module is pure: text in, text out. File handling lives in :mod:`edx_remote_cache.cli.rewrite`.
"""

from __future__ import annotations

import bisect
import difflib
import ipaddress
import itertools
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.resolver import Resolver

try:  # libyaml: same results as the pure-Python loader, ~15x faster
    from yaml import CSafeLoader as _Loader
except ImportError:  # pragma: no cover - PyYAML wheels ship libyaml on every platform we run on
    from yaml import SafeLoader as _Loader  # type: ignore[assignment]

__all__ = [
    "CacheChange",
    "RewriteError",
    "RewriteResult",
    "format_endpoint",
    "is_local_endpoint",
    "is_memcached_backend",
    "local_endpoints",
    "parse_endpoint",
    "revert",
    "rewrite",
]

DEFAULT_PORT = 11211
_LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
_NULL_TAG = "tag:yaml.org,2002:null"
_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_MEMCACHED_BACKENDS = frozenset(
    {
        "django_pylibmc.memcached.PyLibMCCache",
        "django_elasticache.memcached.ElastiCache",
        "django_bmemcached.memcached.BMemcached",
    }
)
_MEMCACHED_WORD = re.compile(r"[Mm]emcache|(?i:pylibmc|elasticache)")
_HOSTNAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62})(?:\.[A-Za-z0-9_-]{1,63})*\.?")
_SEPARATOR = re.compile(r"\s*[;,]\s*")
_ITEM_PREFIX = re.compile(r" *-[ \t]+")
_LINE_TAIL = re.compile(r"[ \t]*(?:#[^\r\n]*)?")
# Characters a plain endpoint list may use; _plain_ok adds the YAML context rules and the type check.
_PLAIN_SAFE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:;, -]*")
_RESOLVER = Resolver()


class RewriteError(ValueError):
    """Input we refuse to rewrite; ``line`` (1-based) points at the offending YAML when there is one."""

    def __init__(self, message: str, line: int | None = None) -> None:
        self.line = line
        self.problem = message
        super().__init__(f"line {line}: {message}" if line is not None else message)


@dataclass(frozen=True)
class CacheChange:
    """One cache (``CACHES.default``) or ansible var (``EDXAPP_MEMCACHE``) whose endpoints changed."""

    alias: str
    old: tuple[str, ...]
    new: tuple[str, ...]

    @property
    def replaced_local(self) -> str | None:
        """The first local memcached entry this change moved away from, spelled as it was (for a revert)."""
        return next((e for e in self.old if e not in self.new and is_local_endpoint(e)), None)


@dataclass(frozen=True)
class RewriteResult:
    original: str
    text: str
    changes: tuple[CacheChange, ...]

    @property
    def changed(self) -> bool:
        return self.text != self.original

    @property
    def replaced_local(self) -> dict[str, str]:
        """alias -> the local spelling each change replaced: pass it to :func:`revert` as ``local``."""
        out: dict[str, str] = {}
        for change in self.changes:
            spelling = change.replaced_local
            if spelling is not None:
                out.setdefault(change.alias, spelling)
        return out

    def unified_diff(self, path: str) -> str:
        """A ``patch``-compatible diff, empty when nothing changed."""
        if not self.changed:
            return ""
        out: list[str] = []
        for line in difflib.unified_diff(
            _lines_keepends(self.original), _lines_keepends(self.text), fromfile=path, tofile=path
        ):
            out.append(line)
            if not line.endswith("\n"):
                out.append("\n\\ No newline at end of file\n")
        return "".join(out)


# --------------------------------------------------------------------------------------------- endpoints


def parse_endpoint(s: str) -> tuple[str, int]:
    """Parse ``host:port`` or ``[v6]:port`` as typed by a user; the message says how to fix bad input."""
    if not isinstance(s, str):
        raise RewriteError(f"endpoint must be a string like 10.0.0.5:11211, got {s!r}")
    text = s.strip()
    if not text:
        raise RewriteError("empty endpoint: expected HOST:PORT such as 10.0.0.5:11211")
    if text.startswith("["):
        m = re.fullmatch(r"\[([^\]]*)\]:([0-9]+)", text)
        if not m:
            raise RewriteError(f"bad endpoint {s!r}: expected [IPv6]:PORT such as [::1]:11211")
        host, port_text = m.group(1), m.group(2)
        try:
            if ipaddress.ip_address(host).version != 6:
                raise ValueError(host)
        except ValueError:
            raise RewriteError(f"bad endpoint {s!r}: {host!r} is not an IPv6 address") from None
    else:
        if "://" in text:
            raise RewriteError(f"bad endpoint {s!r}: expected HOST:PORT, not a URL")
        colons = text.count(":")
        if colons == 0:
            raise RewriteError(f"bad endpoint {s!r}: missing port, expected HOST:PORT such as {text}:11211")
        if colons > 1:
            raise RewriteError(f"bad endpoint {s!r}: write IPv6 addresses in brackets, e.g. [::1]:11211")
        host, port_text = text.split(":")
        if not _HOSTNAME.fullmatch(host):
            raise RewriteError(f"bad endpoint {s!r}: {host!r} is not a hostname or IPv4 address")
        if host.replace(".", "").isdigit():
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                raise RewriteError(f"bad endpoint {s!r}: {host!r} is not a valid IPv4 address") from None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise RewriteError(f"bad endpoint {s!r}: port must be a number from 1 to 65535")
    return host, int(port_text)


def format_endpoint(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def local_endpoints(port: int = DEFAULT_PORT) -> frozenset[str]:
    """The spellings of "memcached on this machine" that a rewrite moves away from."""
    _check_port(port)
    return frozenset({f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", f"::1:{port}"})


def is_local_endpoint(entry: str) -> bool:
    """True for one LOCATION entry naming memcached on this machine, as :func:`revert` may write it back.

    Any spelling a rewrite treats as local qualifies (``localhost``, ``127.0.0.1``, ``::1``, any port,
    python-memcached's ``inet:`` prefixes); surrounding blanks and lists (``;`` / ``,``) do not.
    """
    return isinstance(entry, str) and bool(entry) and entry == entry.strip() and _is_local(entry)


def is_memcached_backend(backend: str) -> bool:
    """Django's own memcached backends plus the common third-party ones (pylibmc, ElastiCache, bmemcached)."""
    name = backend.strip()
    if name.startswith("django.core.cache.backends.memcached.") or name in _MEMCACHED_BACKENDS:
        return True
    # case-sensitive on purpose: LocMemCache is local memory, not memcached
    return "redis" not in name.lower() and bool(_MEMCACHED_WORD.search(name))


def _check_port(port: int) -> None:
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise RewriteError(f"port must be a number from 1 to 65535, got {port!r}")


def _endpoint_key(entry: str) -> tuple[str, int] | str:
    """Compare entries as memcached clients would read them: case-blind host, default port 11211."""
    text = entry.strip()
    for prefix in ("inet6:", "inet:"):  # python-memcached spellings
        if text.startswith(prefix):
            text = text[len(prefix) :]
    try:
        host, port = parse_endpoint(text)
        return host.lower(), port
    except RewriteError:
        pass
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    candidates = [(text, DEFAULT_PORT)]
    if text.count(":") > 1:  # unbracketed v6 such as ::1:11211
        host, _, port_text = text.rpartition(":")
        if port_text.isdigit():
            candidates.insert(0, (host, int(port_text)))
    for host, port in candidates:
        try:
            return str(ipaddress.ip_address(host)), port
        except ValueError:
            continue
    if _HOSTNAME.fullmatch(text):
        return text.lower(), DEFAULT_PORT
    return text


def _is_local(entry: str) -> bool:
    key = _endpoint_key(entry)
    return isinstance(key, tuple) and key[0] in _LOCAL_HOSTS


def _normalize_targets(values: Iterable[str] | str, what: str) -> tuple[str, ...]:
    items = (values,) if isinstance(values, str) else tuple(values)
    out: list[str] = []
    for item in items:
        try:
            endpoint = format_endpoint(*parse_endpoint(item))
        except RewriteError as exc:
            raise RewriteError(f"{what}: {exc}") from None
        if endpoint not in out:
            out.append(endpoint)
    return tuple(out)


# ----------------------------------------------------------------------------------------------- public API


def rewrite(
    text: str, *, to: Sequence[str], replace: Collection[str] = (), port: int = DEFAULT_PORT
) -> RewriteResult:
    """Point memcached caches and ``*_MEMCACHE`` vars that use local memcached (or ``replace``) at ``to``.

    Matching entries are replaced where they stand and other servers are kept, because Django shards keys
    over the LOCATION list in order. Raises :class:`RewriteError` rather than return a partial rewrite.
    """
    _check_port(port)
    targets = _normalize_targets(to, "--to")
    if not targets:
        raise RewriteError("at least one target endpoint (--to HOST:PORT) is required")
    keys = {_endpoint_key(e) for e in local_endpoints(port)}
    keys.update(_endpoint_key(e) for e in _normalize_targets(replace, "--from"))
    return _apply(text, lambda entry: _endpoint_key(entry) in keys, lambda _alias: targets)


def revert(
    text: str,
    *,
    current: Collection[str] = (),
    port: int = DEFAULT_PORT,
    local: str | Mapping[str, str] | None = None,
) -> RewriteResult:
    """Point memcached back at the local one: the ``current`` endpoints, or every non-local one.

    ``local`` is how to spell the local memcached: one entry for the whole file, or one per cache alias
    (``CACHES.default``, ``INSIGHTS_MEMCACHE``; what :attr:`RewriteResult.replaced_local` of the push
    reported), so a revert gives back the bytes the push replaced. Anything not given is ``localhost:port``.
    """
    _check_port(port)
    remote = {_endpoint_key(e) for e in _normalize_targets(current, "current endpoint")}
    default = (f"localhost:{port}",)
    spellings = _local_spellings(local)

    def match(entry: str) -> bool:
        if remote:
            return _endpoint_key(entry) in remote
        # a Jinja expression ("{{ EDXAPP_MEMCACHE }}" in server-vars.yml) names other vars: not an endpoint
        return not _is_local(entry) and "{{" not in entry and "{%" not in entry

    if isinstance(spellings, str):
        whole = (spellings,)
        return _apply(text, match, lambda _alias: whole)
    return _apply(text, match, lambda alias: (spellings[alias],) if alias in spellings else default)


def _local_spellings(local: str | Mapping[str, str] | None) -> str | dict[str, str]:
    """Check ``revert(local=...)``: writing back anything but a local entry would not be a revert."""

    def check(value: object, what: str) -> str:
        if not isinstance(value, str) or not is_local_endpoint(value):
            raise RewriteError(
                f"{what}: {value!r} is not a local memcached entry such as localhost:11211 or 127.0.0.1:11211"
            )
        return value

    if local is None:
        return {}
    if isinstance(local, str):
        return check(local, "local endpoint")
    if not isinstance(local, Mapping):
        raise RewriteError(f"local endpoints must be a string or a mapping of cache aliases, got {local!r}")
    return {str(alias): check(value, f"local endpoint for {alias}") for alias, value in local.items()}


# ------------------------------------------------------------------------------------------------- engine


@dataclass
class _Target:
    alias: str
    node: Node
    line: int  # 1-based line of the key, for messages


@dataclass
class _Edit:
    start: int
    end: int
    text: str


def _apply(text: str, match: Callable[[str], bool], to: Callable[[str], tuple[str, ...]]) -> RewriteResult:
    """Splice ``to(alias)`` in for the matching entries; a LOCATION shared by aliases uses its first alias."""
    bom = "\ufeff" if text.startswith("\ufeff") else ""  # libyaml marks do not count the BOM
    body = text[len(bom) :]
    docs = _compose(body)
    targets = _find_targets(docs)

    edits: list[_Edit] = []
    expected: dict[int, list[str]] = {}  # id(value node) -> entries after the rewrite
    planned: dict[int, list[list[str]] | None] = {}
    changes: list[CacheChange] = []
    for target in targets:
        node = target.node
        old = _entries(node, target)
        if id(node) not in planned:
            plan = _plan(old, match, to(target.alias))
            planned[id(node)] = plan
            if plan is not None:
                edits.extend(_render(body, node, plan, target))
                expected[id(node)] = [v for vals in plan for v in vals]
        plan = planned[id(node)]
        if plan is not None:
            changes.append(CacheChange(target.alias, tuple(old), tuple(v for vals in plan for v in vals)))

    if not edits:
        return RewriteResult(text, text, ())
    new_body = _splice(body, edits)
    _verify(body, new_body, docs, edits, expected)
    return RewriteResult(text, bom + new_body, tuple(changes))


def _compose(text: str) -> list[Node]:
    try:
        return [doc for doc in yaml.compose_all(text, Loader=_Loader) if doc is not None]
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = " ".join(p for p in (exc.context, exc.problem) if p) or "invalid YAML"
        line = mark.line + 1 if mark is not None else None
        if mark is not None:
            problem = f"{problem} (column {mark.column + 1})"
        raise RewriteError(f"malformed YAML: {problem}", line) from None
    except yaml.YAMLError as exc:  # ReaderError: bad characters, has a character offset instead of a mark
        position = getattr(exc, "position", None)
        line = text.count("\n", 0, position) + 1 if isinstance(position, int) else None
        reason = getattr(exc, "reason", None) or str(exc)
        raise RewriteError(f"malformed YAML: {reason}", line) from None


def _kind(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    if node.tag == _NULL_TAG:
        return "null"
    return f"the scalar {node.value!r}"


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1


def _mapping(node: MappingNode, _seen: frozenset[int] = frozenset()) -> dict[str, tuple[Node, Node]]:
    """Keys as PyYAML's safe_load sees them: ``<<`` merges applied, own keys win, last duplicate wins."""
    merged: dict[str, tuple[Node, Node]] = {}
    own: dict[str, tuple[Node, Node]] = {}
    seen = _seen | {id(node)}
    for key, value in node.value:
        if key.tag == _MERGE_TAG:
            sources = value.value if isinstance(value, SequenceNode) else [value]
            for source in reversed(sources):  # the first mapping listed wins
                if isinstance(source, MappingNode) and id(source) not in seen:
                    merged.update(_mapping(source, seen))
        elif isinstance(key, ScalarNode):
            own[key.value] = (key, value)
    merged.update(own)
    return merged


def _find_targets(docs: list[Node]) -> list[_Target]:
    targets: list[_Target] = []
    seen: set[int] = set()
    for doc in docs:
        if isinstance(doc, MappingNode):
            for name, (key, value) in _mapping(doc).items():
                if name.upper().endswith("_MEMCACHE") and _is_endpoint_list(value):
                    targets.append(_Target(name, value, _line(key)))
        stack: list[tuple[Node, str]] = [(doc, "")]
        while stack:
            node, path = stack.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            if isinstance(node, MappingNode):
                children = []
                for key, value in node.value:
                    name = str(key.value) if isinstance(key, ScalarNode) else "?"
                    child_path = f"{path}.{name}" if path else name
                    if name == "CACHES" and isinstance(key, ScalarNode):
                        targets.extend(_cache_targets(key, value, child_path))
                        seen.add(id(value))
                    else:
                        children.append((value, child_path))
                stack.extend(reversed(children))
            elif isinstance(node, SequenceNode):
                stack.extend((item, f"{path}[{i}]") for i, item in reversed(list(enumerate(node.value))))
    targets.sort(key=lambda t: t.line)  # report in file order
    return targets


def _is_endpoint_list(node: Node) -> bool:
    if isinstance(node, ScalarNode):
        return node.tag == _STR_TAG
    return isinstance(node, SequenceNode) and all(isinstance(item, ScalarNode) for item in node.value)


def _cache_targets(key: ScalarNode, caches: Node, path: str) -> list[_Target]:
    if not isinstance(caches, MappingNode):
        raise RewriteError(f"{path} must be a mapping of cache aliases, found {_kind(caches)}", _line(key))
    out: list[_Target] = []
    for alias, (alias_key, cache) in _mapping(caches).items():
        if not isinstance(cache, MappingNode):
            raise RewriteError(f"{path}.{alias} must be a mapping, found {_kind(cache)}", _line(alias_key))
        settings = _mapping(cache)
        backend = settings.get("BACKEND")
        if backend is None or not isinstance(backend[1], ScalarNode):
            continue
        if not is_memcached_backend(str(backend[1].value)) or "LOCATION" not in settings:
            continue
        location_key, location = settings["LOCATION"]
        out.append(_Target(f"{path}.{alias}", location, _line(location_key)))
    return out


def _entries(node: Node, target: _Target) -> list[str]:
    if isinstance(node, ScalarNode):
        if node.tag == _NULL_TAG:
            return []
        return [part for part in (p.strip() for p in re.split(r"[;,]", node.value)) if part]
    if isinstance(node, SequenceNode):
        entries = []
        for item in node.value:
            if not isinstance(item, ScalarNode):
                raise RewriteError(
                    f"{target.alias}: LOCATION entries must be strings, found {_kind(item)}", _line(item)
                )
            entries.append(str(item.value).strip())
        return entries
    raise RewriteError(
        f"{target.alias}: LOCATION must be a string or a list of HOST:PORT strings, found {_kind(node)}",
        target.line,
    )


def _plan(entries: list[str], match: Callable[[str], bool], to: tuple[str, ...]) -> list[list[str]] | None:
    """Per old entry, what it becomes; ``None`` when the list would not change (keeps reruns no-ops)."""
    if not any(match(entry) for entry in entries):
        return None
    seen: set[tuple[str, int] | str] = set()
    plan: list[list[str]] = []
    for entry in entries:
        values = []
        for value in to if match(entry) else (entry,):
            key = _endpoint_key(value)
            if key not in seen:
                seen.add(key)
                values.append(value)
        plan.append(values)
    if [v for values in plan for v in values] == entries:
        return None
    return plan


# ---------------------------------------------------------------------------------------------- rendering


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
    return bool(_RESOLVER.resolve(ScalarNode, value, (True, False)) == _STR_TAG)


def _style(node: ScalarNode) -> str | None:
    """libyaml reports plain scalars as ``''``, the pure-Python parser as ``None``."""
    return node.style or None


def _scalar_span(text: str, node: ScalarNode, target: _Target) -> tuple[int, int]:
    start, end = int(node.start_mark.index), int(node.end_mark.index)
    source = text[start:end]
    if not source or source[0] in "&!*":
        raise RewriteError(
            f"{target.alias}: anchored or tagged LOCATION values are not supported", _line(node)
        )
    style = _style(node)
    if style in ("|", ">"):
        raise RewriteError(f"{target.alias}: block scalar LOCATION values are not supported", _line(node))
    if style is None:
        consistent = " ".join(source.split()) == " ".join(str(node.value).split())
    else:
        consistent = source[0] == style and source[-1] == style
    if not consistent:
        raise RewriteError(f"{target.alias}: could not locate the LOCATION value in the text", _line(node))
    return start, end


def _render(text: str, node: Node, plan: list[list[str]], target: _Target) -> list[_Edit]:
    if isinstance(node, ScalarNode):
        start, end = _scalar_span(text, node, target)
        sep = _SEPARATOR.search(str(node.value))
        joined = (sep.group(0) if sep else ";").join(v for values in plan for v in values)
        return [_Edit(start, end, _quote(joined, _style(node), allow_comma="," in str(node.value)))]
    assert isinstance(node, SequenceNode)
    if node.flow_style:
        return _render_flow(text, node, plan, target)
    return _render_block(text, node, plan, target)


def _render_block(text: str, node: SequenceNode, plan: list[list[str]], target: _Target) -> list[_Edit]:
    edits = []
    for item, values in zip(node.value, plan, strict=True):
        if values == [str(item.value).strip()]:
            continue
        start, end = _scalar_span(text, item, target)
        line_start = text.rfind("\n", 0, start) + 1
        prefix = text[line_start:start]
        if not _ITEM_PREFIX.fullmatch(prefix):
            raise RewriteError(f"{target.alias}: put each LOCATION entry on its own '- ' line", _line(item))
        tail = _LINE_TAIL.match(text, end)
        assert tail is not None  # the pattern matches the empty string
        line_end = tail.end()
        if text.startswith("\r", line_end):  # keep CRLF files CRLF
            newline = "\r\n"
        elif line_end == len(text) or text[line_end] == "\n":
            newline = "\n"
        else:
            raise RewriteError(f"{target.alias}: unexpected text after a LOCATION entry", _line(item))
        if not values:  # a duplicate of an earlier entry: drop its whole line
            if line_end + len(newline) <= len(text):
                edits.append(_Edit(line_start, line_end + len(newline), ""))
            else:  # last line of a file without a final newline
                edits.append(_Edit(line_start - 1, line_end, ""))
            continue
        first = _quote(values[0], _style(item))
        extra = "".join(newline + prefix + _quote(v, _style(item)) for v in values[1:])
        edits.append(_Edit(start, line_end, first + text[end:line_end] + extra))
    return edits


def _render_flow(text: str, node: SequenceNode, plan: list[list[str]], target: _Target) -> list[_Edit]:
    items: list[ScalarNode] = node.value
    lo, hi = int(node.start_mark.index), int(node.end_mark.index)
    spans = [(int(i.start_mark.index), int(i.end_mark.index)) for i in items]
    inside = all(lo < s <= e < hi for s, e in spans) and all(
        a[1] <= b[0] for a, b in itertools.pairwise(spans)
    )
    if not inside or len({id(i) for i in items}) != len(items):
        raise RewriteError(f"{target.alias}: aliases inside a LOCATION list are not supported", _line(node))
    between = text[spans[0][1] : spans[1][0]] if len(spans) > 1 else ", "
    sep = between if "\n" not in between and "#" not in between else ", "
    edits = []
    for index, (item, values) in enumerate(zip(items, plan, strict=True)):
        if values == [str(item.value).strip()]:
            continue
        start, end = _scalar_span(text, item, target)
        if not values:  # never the first item: an earlier entry already produced this value
            edits.append(_Edit(spans[index - 1][1], end, ""))
            continue
        edits.append(_Edit(start, end, sep.join(_quote(v, _style(item)) for v in values)))
    return edits


def _splice(text: str, edits: list[_Edit]) -> str:
    edits.sort(key=lambda e: (e.start, e.end))
    parts: list[str] = []
    pos = 0
    for edit in edits:
        if edit.start < pos:
            raise RewriteError("internal error: overlapping edits; refusing to rewrite")
        parts.append(text[pos : edit.start])
        parts.append(edit.text)
        pos = edit.end
    parts.append(text[pos:])
    return "".join(parts)


# ------------------------------------------------------------------------------------------- verification


def _verify(
    old_text: str, new_text: str, old_docs: list[Node], edits: list[_Edit], expected: dict[int, list[str]]
) -> None:
    """Refuse to hand back anything but a LOCATION-only change (belt and braces over the splicer)."""
    _verify_lines(old_text, new_text, edits)
    try:
        new_docs = _compose(new_text)
    except RewriteError as exc:
        raise RewriteError(f"internal error: the rewritten text no longer parses ({exc})") from None
    if len(new_docs) != len(old_docs):
        raise RewriteError("internal error: the rewritten text has a different number of documents")
    for old_doc, new_doc in zip(old_docs, new_docs, strict=True):
        _same_tree(old_doc, new_doc, expected)


def _verify_lines(old_text: str, new_text: str, edits: list[_Edit]) -> None:
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
                    f"internal error: LOCATION at line {_line(a)} would read {got!r}, not {expected[id(a)]!r}"
                )
            continue
        if type(a) is not type(b) or a.tag != b.tag:
            raise RewriteError(f"internal error: the rewrite would change the node at line {_line(a)}")
        if isinstance(a, ScalarNode):
            if a.value != b.value:
                raise RewriteError(f"internal error: the rewrite would change the value at line {_line(a)}")
        elif len(a.value) != len(b.value):
            raise RewriteError(f"internal error: the rewrite would change the collection at line {_line(a)}")
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


def _lines_keepends(text: str) -> list[str]:
    lines = [line + "\n" for line in text.split("\n")]
    lines[-1] = lines[-1][:-1]
    if not lines[-1]:
        lines.pop()
    return lines
