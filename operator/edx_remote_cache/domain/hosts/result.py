"""What a push did to one host, as the CRD's ``status.hosts[]`` item (pure data, no scripts)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from edx_remote_cache.domain.rewrite import is_local_endpoint

# Claimed is the reconciler's, never a push's: another EdxRemoteCache manages the host (domain/claims.py).
HostState = Literal["Configured", "Pending", "Unreachable", "Conflict", "RolledBack", "Failed", "Claimed"]
HOST_STATES: tuple[HostState, ...] = (
    "Configured",
    "Pending",
    "Unreachable",
    "Conflict",
    "RolledBack",
    "Failed",
    "Claimed",
)
# What counts against rollout.maxErrors. Unreachable does not: like SSM's "Undeliverable", nothing was sent,
# so it says nothing about whether the change is bad (the host is retried on the next reconcile).
ERROR_STATES: frozenset[str] = frozenset({"Conflict", "RolledBack", "Failed"})


# ------------------------------------------------------------------------------------------------ results

# (path, cache alias, entry): how a file spelled the local memcached where a push replaced it, for the revert.
# ``localhost:PORT`` (what a revert writes anyway) is left out, so a stock host records one or two of them.
LocalEndpoints = tuple[tuple[str, str, str], ...]


@dataclass(frozen=True)
class HostPushResult:
    """What the last push did to one Open edX host; :meth:`to_status` is its CRD ``status.hosts[]`` item."""

    instance_id: str
    state: HostState
    files: tuple[tuple[str, str], ...] = ()  # (path, sha256) of every managed file present after the push
    command_id: str | None = None
    time: datetime | None = None
    message: str = ""
    diffs: tuple[tuple[str, str], ...] = ()  # (path, unified diff) of the files this push changed
    local_endpoints: LocalEndpoints = ()  # carried from push to push, whatever the state, until a revert

    @property
    def ok(self) -> bool:
        return self.state == "Configured"

    @property
    def file_hashes(self) -> dict[str, str]:
        return dict(self.files)

    @property
    def local_spellings(self) -> dict[str, dict[str, str]]:
        """path -> {alias: local entry} as recorded by the pushes (``revert(local=...)`` per file)."""
        return _by_path(self.local_endpoints)

    def to_status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "instanceId": self.instance_id,
            "state": self.state,
            "files": [{"path": path, "sha256": sha} for path, sha in self.files],
            "message": self.message,
        }
        if self.command_id:
            out["commandId"] = self.command_id
        if self.time is not None:
            out["lastPushTime"] = self.time.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        if self.local_endpoints:
            out["localEndpoints"] = [
                {"path": path, "alias": alias, "endpoint": entry}
                for path, alias, entry in self.local_endpoints
            ]
        return out

    @classmethod
    def from_status(cls, item: Mapping[str, Any]) -> HostPushResult:
        """Rebuild from a CRD status item (diffs are not stored there), e.g. to pass as ``previous``."""
        time = None
        if item.get("lastPushTime"):
            time = datetime.strptime(str(item["lastPushTime"]), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        state = str(item.get("state", "Pending"))
        return cls(
            instance_id=str(item["instanceId"]),
            state=state if state in HOST_STATES else "Pending",  # type: ignore[arg-type]
            files=tuple((str(f["path"]), str(f["sha256"])) for f in item.get("files") or ()),
            command_id=item.get("commandId") or None,
            time=time,
            message=str(item.get("message", "")),
            local_endpoints=_local_endpoints_from_status(item.get("localEndpoints")),
        )


def _by_path(entries: Iterable[tuple[str, str, str]]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for path, alias, entry in entries:
        out.setdefault(path, {})[alias] = entry
    return out


def _local_endpoints_from_status(items: Any) -> LocalEndpoints:
    """Entries a revert could not write back (edited status: not local, not strings) are dropped."""
    out: list[tuple[str, str, str]] = []
    for item in items if isinstance(items, list) else ():
        if not isinstance(item, Mapping):
            continue
        path, alias, entry = item.get("path"), item.get("alias"), item.get("endpoint")
        if (
            isinstance(path, str)
            and isinstance(alias, str)
            and isinstance(entry, str)
            and is_local_endpoint(entry)
        ):
            out.append((path, alias, entry))
    return tuple(out)
