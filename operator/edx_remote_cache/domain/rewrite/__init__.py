"""Point an Open edX site's memcached settings at another host, changing nothing but the endpoint values.

The files are owned by ansible and by the people who hand-edit them, so a rewrite must produce a diff an
operator can read at a glance: only LOCATION values (and ansible ``*_MEMCACHE`` lists) may differ, byte for
byte. Rather than re-serialising the document (which re-indents, re-quotes and re-wraps), the YAML is composed
once to *find* the value nodes and the new text is spliced into the original string at their positions.

Nodes are located with PyYAML's composer (libyaml when available). That is the parser edx-platform and ansible
read these files with, so "what is a cache" matches what the site sees, and it is ~20x faster than a pure-Python
parse (a 64 KiB lms.yml rewrites in well under 50 ms). The result is re-parsed and compared node by node with the
original before it is returned; any difference outside the edited values raises :class:`RewriteError`.

The engine is four pure steps, one module each, so the host push can run the first one on the host itself:
:mod:`.locate` (find the value nodes; stdlib + PyYAML only) -> plan (here: which entries become what) ->
:mod:`.render` (a node's new text from its own text) -> splice + :mod:`.verify`. See docs/rewrite-engine.md.
This package is pure: text in, text out. File handling lives in :mod:`edx_remote_cache.cli.rewrite`.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

from edx_remote_cache.domain.rewrite.endpoints import (
    DEFAULT_PORT,
    RewriteError,
    check_port,
    endpoint_key,
    format_endpoint,
    is_local,
    is_local_endpoint,
    local_endpoints,
    normalize_targets,
    parse_endpoint,
)
from edx_remote_cache.domain.rewrite.locate import (
    Located,
    LocateError,
    Skipped,
    Target,
    is_memcached_backend,
    is_templated,
    locate_nodes,
)
from edx_remote_cache.domain.rewrite.render import Edit, edits, splice
from edx_remote_cache.domain.rewrite.verify import verify

__all__ = [
    "DEFAULT_PORT",
    "CacheChange",
    "Decide",
    "Located",
    "NodeSplice",
    "Plan",
    "RewriteError",
    "RewriteResult",
    "Skipped",
    "Target",
    "changes_of",
    "format_endpoint",
    "is_local_endpoint",
    "is_memcached_backend",
    "local_endpoints",
    "parse_endpoint",
    "push_decider",
    "restore",
    "revert",
    "revert_decider",
    "rewrite",
]


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
class NodeSplice:
    """One value node as it was and as it was written: what an exact revert (:func:`restore`) swaps back.

    ``original`` and ``written`` are the node's span (see :mod:`.locate`) before and after, both starting
    at the same offset, so undoing is a compare-and-swap at the node's start in whatever the file is then.
    """

    path: str
    original: str
    written: str
    entries: tuple[str, ...]  # the entries written, for --from and messages


@dataclass(frozen=True)
class RewriteResult:
    original: str
    text: str
    changes: tuple[CacheChange, ...]
    skipped: tuple[Skipped, ...] = ()  # templated keys left as they are: warn the user, one line each
    splices: tuple[NodeSplice, ...] = ()  # per changed node, in file order (see NodeSplice)

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


# ----------------------------------------------------------------------------------------------- public API


Plan = list[list[str]]  # per old entry, what it becomes: [old] keeps it, [a, b] expands it, [] drops it
Decide = Callable[[Target], "Plan | None"]


def rewrite(
    text: str, *, to: Sequence[str], replace: Collection[str] = (), port: int = DEFAULT_PORT
) -> RewriteResult:
    """Point memcached caches and ``*_MEMCACHE`` vars that use local memcached (or ``replace``) at ``to``.

    Matching entries are replaced where they stand and other servers are kept, because Django shards keys
    over the LOCATION list in order. Raises :class:`RewriteError` rather than return a partial rewrite.
    """
    return _apply(text, push_decider(to=to, replace=replace, port=port))


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
    return _apply(text, revert_decider(current=current, port=port, local=local))


def push_decider(*, to: Sequence[str], replace: Collection[str] = (), port: int = DEFAULT_PORT) -> Decide:
    """The per-node decision of :func:`rewrite`, for callers that hold :class:`Target` s (the host push
    rebuilds them from what the host printed): ``decide(target)`` is the plan for
    :func:`.render.render`, or None to leave the node alone. Arguments are checked once, here."""
    check_port(port)
    targets = normalize_targets(to, "--to")
    if not targets:
        raise RewriteError("at least one target endpoint (--to HOST:PORT) is required")
    keys = {endpoint_key(e) for e in local_endpoints(port)}
    keys.update(endpoint_key(e) for e in normalize_targets(replace, "--from"))
    return lambda target: _plan(list(target.entries), lambda entry: endpoint_key(entry) in keys, targets)


def revert_decider(
    *, current: Collection[str] = (), port: int = DEFAULT_PORT, local: str | Mapping[str, str] | None = None
) -> Decide:
    """The per-node decision of :func:`revert` (see :func:`push_decider`); ``local`` is keyed by path."""
    check_port(port)
    remote = {endpoint_key(e) for e in normalize_targets(current, "current endpoint")}
    default = (f"localhost:{port}",)
    spellings = _local_spellings(local)

    def match(entry: str) -> bool:
        return endpoint_key(entry) in remote if remote else not is_local(entry)

    def decide(target: Target) -> Plan | None:
        if isinstance(spellings, str):
            to: tuple[str, ...] = (spellings,)
        else:
            to = (spellings[target.path],) if target.path in spellings else default
        return _plan(list(target.entries), match, to)

    return decide


def changes_of(target: Target, plan: Plan) -> tuple[CacheChange, ...]:
    """What a plan does to a node, once per path naming it (what :attr:`RewriteResult.changes` lists)."""
    new = tuple(v for values in plan for v in values)
    return tuple(CacheChange(path, target.entries, new) for path in target.paths)


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


def restore(text: str, splices: Sequence[NodeSplice]) -> RewriteResult:
    """Undo ``splices`` (newest first): each node that still reads what was written gets its original back.

    Exact and conservative: the bytes written are swapped for the bytes they replaced, so spelling, quoting,
    list shape and entries never touched come back as they were; anything else in the file is left alone.
    A node that reads its original already (or whose key is gone) is skipped; a node that changed since it
    was written raises :class:`RewriteError` -- we cannot know what the user wants there, so we refuse.
    """
    bom = "\ufeff" if text.startswith("\ufeff") else ""
    body = text[len(bom) :]
    changes: list[CacheChange] = []
    for done in splices:
        target = _find(body, done.path)
        if target is None or body.startswith(done.original, target.start):
            continue  # nothing of ours there any more (ansible re-rendered it, or it was reverted by hand)
        if not body.startswith(done.written, target.start):
            raise RewriteError(
                f"{done.path} has changed since edx-remote-cache wrote it ({', '.join(target.entries)} instead of "
                f"{', '.join(done.entries)}); refusing to guess: edit it by hand",
                target.line,
            )
        body = body[: target.start] + done.original + body[target.start + len(done.written) :]
        back = _find(body, done.path)
        old_entries = back.entries if back is not None else ()
        changes.extend(CacheChange(path, target.entries, old_entries) for path in target.paths)
    return RewriteResult(text, bom + body, tuple(changes))


def _find(body: str, path: str) -> Target | None:
    try:
        located = locate_nodes(body)[0]
    except LocateError as exc:
        raise RewriteError(exc.problem, exc.line) from None
    return next((t for t in located.targets if path in t.paths), None)


# ------------------------------------------------------------------------------------------------- engine


def _apply(text: str, decide: Decide) -> RewriteResult:
    """Splice each node's planned entries in; a LOCATION shared by aliases is planned for its first alias."""
    bom = "\ufeff" if text.startswith("\ufeff") else ""  # libyaml marks do not count the BOM
    body = text[len(bom) :]
    try:
        located, docs, nodes = locate_nodes(body)
    except LocateError as exc:
        raise RewriteError(exc.problem, exc.line) from None

    all_edits: list[Edit] = []
    expected: dict[int, list[str]] = {}  # id(value node) -> entries after the rewrite
    changes: list[tuple[int, CacheChange]] = []
    splices: list[NodeSplice] = []
    for target, node in zip(located.targets, nodes, strict=True):
        plan = decide(target)
        if plan is None:
            continue
        spliced = edits(target.source, plan, path=target.path, line=target.line)
        all_edits.extend(edit.shifted(target.start) for edit in spliced)
        expected[id(node)] = [v for vals in plan for v in vals]
        splices.append(
            NodeSplice(target.path, target.source, splice(target.source, spliced), tuple(expected[id(node)]))
        )
        changes.extend(zip(target.key_lines, changes_of(target, plan), strict=True))

    if not all_edits:
        return RewriteResult(text, text, (), located.skipped)
    all_edits.sort(key=lambda e: (e.start, e.end))
    new_body = splice(body, all_edits)
    verify(body, new_body, docs, all_edits, expected)
    changes.sort(key=lambda item: item[0])  # report in file order, as the keys appear
    changes_in_order = tuple(c for _, c in changes)
    return RewriteResult(text, bom + new_body, changes_in_order, located.skipped, tuple(splices))


def _plan(entries: list[str], match: Callable[[str], bool], to: tuple[str, ...]) -> Plan | None:
    """Per old entry, what it becomes; ``None`` when the list would not change (keeps reruns no-ops).

    Templated entries (``{{ ... }}``) never match: ansible fills them in, so they are not ours to move.
    """
    if not any(match(entry) and not is_templated(entry) for entry in entries):
        return None
    seen: set[tuple[str, int] | str] = set()
    plan: list[list[str]] = []
    for entry in entries:
        values = []
        for value in to if match(entry) and not is_templated(entry) else (entry,):
            key = endpoint_key(value)
            if key not in seen:
                seen.add(key)
                values.append(value)
        plan.append(values)
    if [v for values in plan for v in values] == entries:
        return None
    return plan


def _lines_keepends(text: str) -> list[str]:
    lines = [line + "\n" for line in text.split("\n")]
    lines[-1] = lines[-1][:-1]
    if not lines[-1]:
        lines.pop()
    return lines
