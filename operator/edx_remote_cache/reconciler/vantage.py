"""The second opinion and the breaker's memory: what the healing ladder checks before anything destructive.

`RegionOnsets` remembers, for every endpoint the operator probes, when its current failure began (fed by every
probe round of every object); `breaker()` turns a region's onsets into the breaker verdict
(domain/vantage.py). `SecondOpinion` asks a cache host about its own memcached over SSM, at most once per
OPINION_TTL_SECONDS per instance (a blocked path is re-checked twice a minute, not every probe round), and
never with an answer older than the instance's last restart.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence

from edx_remote_cache.adapters.probe import ProbeResult
from edx_remote_cache.adapters.ssm import COMMENT_SECOND_OPINION, SsmError
from edx_remote_cache.domain.spec import EdxRemoteCacheSpec
from edx_remote_cache.domain.vantage import (
    BreakerVerdict,
    HostOpinion,
    breaker_trips,
    parse_opinion,
    render_opinion_script,
    unknown,
)
from edx_remote_cache.reconciler.state import Adapters, ResourceState

OPINION_TTL_SECONDS = 30.0
OPINION_COMMAND_TIMEOUT = 20  # executionTimeout of the read-only script (it needs ~OPINION_TIMEOUT_SECONDS)


def probe_window(spec: EdxRemoteCacheSpec) -> float:
    """How far apart failures may begin and still count as "at once": one failureThreshold of probe rounds."""
    return float((spec.probe.interval_seconds + spec.probe.timeout_seconds) * spec.probe.failure_threshold)


class RegionOnsets:
    """region -> object uid -> endpoint -> when its current failure began (None: it answers)."""

    def __init__(self) -> None:
        self._regions: dict[str, dict[str, dict[str, float | None]]] = {}

    def record(self, region: str, uid: str, results: Sequence[ProbeResult], now: float) -> None:
        objects = self._regions.setdefault(region, {})
        before = objects.get(uid, {})
        onsets: dict[str, float | None] = {}
        for r in results:
            began = before.get(r.endpoint)
            onsets[r.endpoint] = None if r.healthy else (began if began is not None else now)
        objects[uid] = onsets

    def forget(self, uid: str) -> None:
        for objects in self._regions.values():
            objects.pop(uid, None)

    def breaker(self, region: str, window: float) -> BreakerVerdict:
        merged: dict[str, float | None] = {}
        for onsets in self._regions.get(region, {}).values():
            merged.update(onsets)
        return breaker_trips(merged, window=window)


class SecondOpinion:
    """Asks a cache host whether its memcached answers (read-only SSM command)."""

    def __init__(self, adapters: Adapters) -> None:
        self.adapters = adapters

    async def ask(
        self, state: ResourceState, spec: EdxRemoteCacheSpec, instance_id: str, address: str
    ) -> HostOpinion:
        now = self.adapters.clock()
        cached = state.opinions.get(instance_id)
        restarted = state.restarted_at.get(instance_id, -math.inf)
        # an answer is reused only within one failure episode: one from before this run of failed probes began
        # (memcached answered then, and was killed since) would hide a real failure behind ProbePathBlocked
        since = state.failing_since if state.failing_since is not None else now
        fresh = cached is not None and now - cached[0] < OPINION_TTL_SECONDS
        if cached is not None and fresh and cached[0] > restarted and cached[0] >= since:
            return cached[1]
        opinion = await self._ask(spec, instance_id, address)
        state.opinions[instance_id] = (now, opinion)
        return opinion

    async def _ask(self, spec: EdxRemoteCacheSpec, instance_id: str, address: str) -> HostOpinion:
        ssm = self.adapters.ssm(spec.region)
        try:
            pings = await asyncio.to_thread(ssm.ping_statuses, [instance_id])
            ping = pings.get(instance_id, "NotRegistered")
            if ping != "Online":
                return unknown(f"its SSM agent is {ping}")
            result = await asyncio.to_thread(
                ssm.run_script,
                instance_id,
                render_opinion_script(address, spec.memcached.port),
                timeout=OPINION_COMMAND_TIMEOUT,
                comment=COMMENT_SECOND_OPINION,
            )
        except SsmError as exc:
            return unknown(f"SSM: {exc}")
        if result.status != "Success":
            return unknown(f"the check ended {result.status} {result.stderr.strip()[-120:]}".strip())
        return parse_opinion(result.stdout)
