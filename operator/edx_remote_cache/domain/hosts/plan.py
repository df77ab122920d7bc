"""Plan a push to an Open edX host and render the bash scripts that carry it out over SSM Run Command.

Pure: no boto3, no sockets, no subprocesses. :mod:`edx_remote_cache.adapters.host_push` sends what this module
renders and hands the output back to the parsers here.

Why the scripts look the way they do:

* **Nothing from the spec or the host is ever interpolated unquoted.** Paths and argv words go through
  :func:`shlex.quote` (the spec validates them too); file content only ever travels base64-encoded; numbers
  are formatted from ints. Output is a line protocol (``ERC-…``) whose free-text fields are base64, so a
  hostile file name or command output cannot forge a line.
* **Reads fit SSM's 24,000-character stdout cap.** Every existing file is concatenated, gzipped and
  base64-encoded; the first command returns the metadata (sha256, uid:gid, mode, size) and the first slice of
  that stream, and further commands return further slices (re-gzipping is deterministic with ``gzip -n``).
  The operator checks every file's sha256 after the transfer, so a file edited mid-read is caught.
* **Writes carry only the change.** The rewrite engine only touches LOCATION lines, so a file's new content is
  sent as a splice of the original (byte ranges copied on the host) and base64 literals for the new lines.
  The host rebuilds the file and checks its sha256 before anything is renamed into place. A write script is
  a few KiB whatever the file size (1 MiB files included) and is capped at :data:`MAX_SCRIPT_CHARS`.
* **One apply script per host does compare-before-write, backup, write, restart, verify and rollback**, so
  a host is never left half-done because the operator lost its connection between steps.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from edx_remote_cache.domain.hosts.protocol import (
    PlanError,
)
from edx_remote_cache.domain.hosts.read import (
    HostSnapshot,
)
from edx_remote_cache.domain.hosts.result import (
    LocalEndpoints,
    _by_path,
)
from edx_remote_cache.domain.hosts.splice import (
    Segment,
    splice_segments,
)
from edx_remote_cache.domain.rewrite import RewriteError, RewriteResult, revert, rewrite

# -------------------------------------------------------------------------------------------------- plans


@dataclass(frozen=True)
class FileChange:
    path: str
    old_sha256: str
    new_sha256: str
    segments: tuple[Segment, ...]
    diff: str


@dataclass(frozen=True)
class HostPlan:
    """What one host needs: changed files, the restarts they imply, verify and the local memcached action."""

    changes: tuple[FileChange, ...]
    files_after: tuple[tuple[str, str], ...]  # (path, sha256) of every present file once applied
    restarts: tuple[tuple[str, ...], ...]
    verify: tuple[str, ...] = ()
    memcached: Literal["disable", "enable"] | None = None
    summary: str = ""
    local_endpoints: LocalEndpoints = ()  # what the host result records once applied (see HostPushResult)

    @property
    def is_noop(self) -> bool:
        return not self.changes and self.memcached is None

    @property
    def diffs(self) -> tuple[tuple[str, str], ...]:
        return tuple((c.path, c.diff) for c in self.changes)


RestartFor = Callable[[str], Sequence[str]]


def _plan(
    snapshot: HostSnapshot,
    transform: Callable[[str, str], RewriteResult],
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
    after: list[tuple[str, str]] = []
    restarts: list[tuple[str, ...]] = []
    for file in snapshot.files:
        try:
            text = file.content.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PlanError(file.path, f"is not UTF-8 (byte {exc.start}); refusing to rewrite it") from None
        try:
            result = transform(file.path, text)
        except RewriteError as exc:
            raise PlanError(file.path, str(exc)) from None
        if not result.changed:
            after.append((file.path, file.sha256))
            continue
        if record_unless is not None:
            for alias, entry in result.replaced_local.items():
                spellings[(file.path, alias)] = entry
        new = result.text.encode("utf-8")
        new_sha = hashlib.sha256(new).hexdigest()
        changes.append(
            FileChange(
                file.path,
                file.sha256,
                new_sha,
                splice_segments(file.content, new),
                result.unified_diff(file.path),
            )
        )
        after.append((file.path, new_sha))
        argv = tuple(restart_for(file.path))
        if argv and argv not in restarts:
            restarts.append(argv)
    summary = ", ".join(c.path for c in changes) or "no file changes"
    return HostPlan(
        changes=tuple(changes),
        files_after=tuple(after),
        restarts=tuple(restarts),
        verify=tuple(verify) if changes else (),
        memcached=memcached,
        summary=summary,
        local_endpoints=tuple(sorted((p, a, e) for (p, a), e in spellings.items() if e != record_unless)),
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
    return _plan(
        snapshot,
        lambda _path, text: rewrite(text, to=endpoints, replace=replace, port=port),
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
    return _plan(
        snapshot,
        lambda path, text: revert(text, current=current, port=port, local=by_path.get(path)),
        restart_for=restart_for,
        verify=verify,
        memcached=action,
        remembered=remembered,
    )
