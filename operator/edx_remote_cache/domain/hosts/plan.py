"""Plan a push to (or a revert of) one Open edX host from what its reader reported: pure, no I/O.

The host sent only value nodes (:mod:`.read`); the rewrite engine decides here, node by node, what each
becomes (the same per-node decision and renderer :func:`edx_remote_cache.domain.rewrite.rewrite` uses for a
whole file), and the plan carries only splices (:mod:`.splice`) with each file's sha256 as read. Templated keys
the host skipped are named in the plan (and the host's status), never fatal; a file the host could not parse
fails the host before a plan is made (:mod:`edx_remote_cache.adapters.host_push`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from edx_remote_cache.domain.hosts.protocol import PlanError
from edx_remote_cache.domain.hosts.read import FileRead, HostSnapshot
from edx_remote_cache.domain.hosts.result import LocalEndpoints, _by_path
from edx_remote_cache.domain.hosts.splice import Splice
from edx_remote_cache.domain.rewrite import (
    Decide,
    RewriteError,
    changes_of,
    is_local_endpoint,
    push_decider,
    revert_decider,
)
from edx_remote_cache.domain.rewrite.render import render

__all__ = ["FileChange", "HostPlan", "NodeChange", "RestartFor", "plan_push", "plan_revert"]


@dataclass(frozen=True)
class NodeChange:
    """One value node a plan changes, for people: where, which key, its entries before and after."""

    line: int
    alias: str
    old: tuple[str, ...]
    new: tuple[str, ...]

    def describe(self) -> str:
        return f"line {self.line} {self.alias}: {', '.join(self.old) or '-'} -> {', '.join(self.new) or '-'}"


@dataclass(frozen=True)
class FileChange:
    path: str
    old_sha256: str
    splices: tuple[Splice, ...]
    nodes: tuple[NodeChange, ...]
    link_target: str | None = None  # a symlink's target, edited in its place (the host re-checks the link)

    @property
    def diff(self) -> str:
        """What changes, one line per node: cache addresses only, never other file content."""
        return "".join(f"{self.path}: {n.describe()}\n" for n in self.nodes)


@dataclass(frozen=True)
class HostPlan:
    """What one host needs: changed files, the restarts they imply, verify and the local memcached action."""

    changes: tuple[FileChange, ...]
    files_before: tuple[tuple[str, str], ...]  # (path, sha256) of every present file as read
    restarts: tuple[tuple[str, ...], ...]
    verify: tuple[str, ...] = ()
    memcached: Literal["disable", "enable"] | None = None
    summary: str = ""
    local_endpoints: LocalEndpoints = ()  # what the host result records once applied (see HostPushResult)
    skipped: tuple[tuple[str, str, int], ...] = ()  # (path, key, line) left alone: a Jinja expression

    @property
    def is_noop(self) -> bool:
        return not self.changes and self.memcached is None

    @property
    def diffs(self) -> tuple[tuple[str, str], ...]:
        return tuple((c.path, c.diff) for c in self.changes)

    def files_after(self, new_sha256: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
        """(path, sha256) of every present file once applied; the host reports the new sums it wrote."""
        return tuple((path, new_sha256.get(path, sha)) for path, sha in self.files_before)

    def skipped_message(self) -> str:
        if not self.skipped:
            return ""
        return "left templated keys as they are: " + ", ".join(f"{p}:{n} {k}" for p, k, n in self.skipped)


RestartFor = Callable[[str], Sequence[str]]
DecideFor = Callable[[str], Decide]  # path -> the engine's per-node decision for that file


def _file_change(file: FileRead, decide: Decide) -> tuple[list[Splice], list[NodeChange]]:
    splices: list[Splice] = []
    nodes: list[NodeChange] = []
    for target in file.targets:
        plan = decide(target)
        if plan is None:
            continue
        try:
            new_source = render(target.source, plan, path=target.path, line=target.line)
        except RewriteError as exc:
            raise PlanError(file.path, str(exc)) from None
        splices.append(Splice(target.start, target.end, target.source, new_source))
        nodes.extend(
            NodeChange(line, change.alias, change.old, change.new)
            for change, line in zip(changes_of(target, plan), target.key_lines, strict=True)
        )
    return splices, nodes


def _plan_host(
    snapshot: HostSnapshot,
    decide_for: DecideFor,
    *,
    restart_for: RestartFor,
    verify: Sequence[str],
    memcached: Literal["disable", "enable"] | None,
    remembered: Iterable[tuple[str, str, str]] = (),
    record_unless: str | None = None,
) -> HostPlan:
    """``record_unless`` (a push's ``localhost:PORT``) records the other local spellings the rewrite replaces.

    They go over ``remembered`` per (path, alias); an alias replaced from ``record_unless`` forgets an older
    spelling, so what is kept always is what the last push that moved that alias off local memcached saw.
    """
    spellings = {(path, alias): entry for path, alias, entry in remembered}
    changes: list[FileChange] = []
    restarts: list[tuple[str, ...]] = []
    skipped: list[tuple[str, str, int]] = []
    for file in snapshot.files:
        skipped.extend((file.path, s.path, s.line) for s in file.skipped)
        splices, nodes = _file_change(file, decide_for(file.path))
        if not splices:
            continue
        if record_unless is not None:
            for node in nodes:
                local = next((e for e in node.old if e not in node.new and is_local_endpoint(e)), None)
                if local is not None:
                    spellings[(file.path, node.alias)] = local
        changes.append(FileChange(file.path, file.sha256, tuple(splices), tuple(nodes), file.link_target))
        argv = tuple(restart_for(file.path))
        if argv and argv not in restarts:
            restarts.append(argv)
    return HostPlan(
        changes=tuple(changes),
        files_before=tuple((f.path, f.sha256) for f in snapshot.files),
        restarts=tuple(restarts),
        verify=tuple(verify) if changes else (),
        memcached=memcached,
        summary=", ".join(c.path for c in changes) or "no file changes",
        local_endpoints=tuple(sorted((p, a, e) for (p, a), e in spellings.items() if e != record_unless)),
        skipped=tuple(skipped),
    )


def plan_push(
    snapshot: HostSnapshot,
    *,
    endpoints: Sequence[str],
    replace: Collection[str] = (),
    port: int = 11211,
    restart_for: RestartFor,
    verify: Sequence[str] = (),
    disable_local_memcached: bool = False,
    local_endpoints: Iterable[tuple[str, str, str]] = (),
) -> HostPlan:
    """Re-point every memcached LOCATION that is local (or in ``replace``) at ``endpoints``.

    ``local_endpoints`` (the last result's) are carried into ``HostPlan.local_endpoints`` together with the
    local spellings this push replaces, other than ``localhost:port``.
    """
    service = snapshot.service
    action: Literal["disable"] | None = None
    if disable_local_memcached and service is not None and service.running_or_enabled:
        action = "disable"
    try:
        decide = push_decider(to=endpoints, replace=replace, port=port)
    except RewriteError as exc:
        raise PlanError("-", f"endpoint: {exc}") from None
    return _plan_host(
        snapshot,
        lambda _path: decide,
        restart_for=restart_for,
        verify=verify,
        memcached=action,
        remembered=local_endpoints,
        record_unless=f"localhost:{port}",
    )


def plan_revert(
    snapshot: HostSnapshot,
    *,
    current: Collection[str] = (),
    port: int = 11211,
    restart_for: RestartFor,
    verify: Sequence[str] = (),
    enable_local_memcached: bool = False,
    local_endpoints: Iterable[tuple[str, str, str]] = (),
) -> HostPlan:
    """Point ``current`` endpoints (or every remote one) back at the local memcached.

    Each (path, alias) in ``local_endpoints`` (what the pushes recorded) gets its own spelling back, anything
    else ``localhost:port``; they are carried into ``HostPlan.local_endpoints`` unchanged.
    """
    remembered = tuple(local_endpoints)
    by_path = _by_path(remembered)
    service = snapshot.service
    action: Literal["enable"] | None = None
    if (
        enable_local_memcached
        and service is not None
        and service.exists
        and (service.enabled != "enabled" or service.active != "active")
    ):
        action = "enable"
    try:
        deciders = {
            f.path: revert_decider(current=current, port=port, local=by_path.get(f.path))
            for f in snapshot.files
        }
    except RewriteError as exc:
        raise PlanError("-", str(exc)) from None
    return _plan_host(
        snapshot,
        deciders.__getitem__,
        restart_for=restart_for,
        verify=verify,
        memcached=action,
        remembered=remembered,
    )
