"""Probing: one round over an object's endpoints, into metrics, CacheHealthy and `status.health`.

Every round also feeds the region's failure onsets (reconciler/vantage.py), which the breaker reads. A stalled
object is probed like any other: its status keeps telling whether the cache answers, and a stall caused by the
replacement limit lifts by itself when it does (the healing ladder clears it).

A round that changes nothing a user sees and finds no heartbeat due writes nothing (the common case at scale:
500 idle caches probed every 5 s make ~0.5 status writes a minute in all).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from edx_remote_cache.adapters.probe import ProbeResult
from edx_remote_cache.domain.spec import EdxRemoteCacheSpec
from edx_remote_cache.reconciler.state import Adapters, ObjectRef, ResourceState
from edx_remote_cache.reconciler.status import StatusPublisher, steady
from edx_remote_cache.reconciler.vantage import RegionOnsets


class Prober:
    def __init__(
        self, adapters: Adapters, status: StatusPublisher, onsets: RegionOnsets | None = None
    ) -> None:
        self.adapters = adapters
        self.status = status
        self.onsets = onsets if onsets is not None else RegionOnsets()

    async def probe(
        self, obj: Mapping[str, Any], state: ResourceState, spec: EdxRemoteCacheSpec, targets: Sequence[str]
    ) -> list[ProbeResult]:
        """Probe ``targets`` and remember the round (consecutive failures count rounds with any failure)."""
        ref = ObjectRef.of(obj)
        if not targets:
            state.last_probe = []
            return []
        results = await self.adapters.probe_all(targets, timeout=spec.probe.timeout_seconds)
        state.last_probe = results
        failed = any(not r.healthy for r in results)
        state.consecutive_failures = state.consecutive_failures + 1 if failed else 0
        if not failed:
            state.failing_since = None
        elif state.failing_since is None:
            state.failing_since = self.adapters.clock()
        for r in results:
            self.adapters.metrics.record_probe(ref.namespace, ref.name, r)
        self.onsets.record(spec.region, ref.uid, results, self.adapters.clock())
        now = self.adapters.clock()
        for r in results:
            if r.healthy and r.endpoint in state.endpoint_instances:
                state.answered_at.setdefault(state.endpoint_instances[r.endpoint], now)
        return results

    async def probe_once(self, obj: Mapping[str, Any], state: ResourceState) -> list[ProbeResult]:
        """One probe round from the daemon: updates health, conditions and (when due) the heartbeat."""
        async with state.lock:  # a pass may be running: read what it leaves behind, not what it started from
            spec, facts = state.spec, state.facts
            if spec is None or facts is None:  # stalled objects too: Stalled is not blind
                return []
            targets = list(state.status.get("endpoints") or [])
            results = await self.probe(obj, state, spec, targets)
            facts = dataclasses.replace(facts, healing=state.healing, **self.status.probe_facts(state, spec))
            health = self.status.health(state, results)
            # the common case at scale: nothing new and no heartbeat due, so skip building and diffing the status
            if (
                facts == state.facts
                and not self.status.heartbeat_due(state)
                and steady(health) == steady(state.status.get("health"))
            ):
                return results
            await self.status.publish(obj, state, facts, health=health)
        return results
