"""The cluster-wide claim index: which EdxRemoteCache names which Open edX host, kept by kopf.

`@kopf.index` (registered in app/handlers.py) re-runs `domain.claims.claims_of` on every event of every watched
object, status writes included, so the index follows what each object names and still holds. kopf fills it from
its initial list before any handler runs, so the first pass after an operator restart already sees every rival.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from edx_remote_cache.domain.claims import Claim, claims_of


def index_claims(body: Mapping[str, Any]) -> dict[str, Claim]:
    """The indexing function's work: host -> this object's claim."""
    return claims_of(body)


class IndexedClaims:
    """The reconciler's `HostClaims` port over kopf's live index (host id -> one claim per object)."""

    def __init__(self, index: Mapping[str, Any]) -> None:
        self._index = index  # kopf.Index[str, Claim]: a read-only, live view

    def claimants(self, host_id: str) -> Sequence[Claim]:
        store = self._index.get(host_id)
        return tuple(store) if store is not None else ()
