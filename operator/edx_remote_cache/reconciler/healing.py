"""The healing ladder, one rung per call: restart memcached -> start / relaunch the instance -> replace it.

Rung 1 restarts memcached over SSM (once an hour per instance, while its agent answers). Rung 2 looks at the
instance again through a reconcile pass: a stopped one is started and a terminated one relaunched by the cloud
pass itself. Rung 3 replaces a running instance whose memcached still fails after the restart, limited by
`healing.maxReplacementsPerHour` (past it the object stalls and says why).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from edx_remote_cache.adapters.ssm import SsmError
from edx_remote_cache.domain.conditions import Facts
from edx_remote_cache.domain.spec import EdxRemoteCacheSpec
from edx_remote_cache.reconciler.state import (
    Adapters,
    ObjectRef,
    Progress,
    RequeueError,
    ResourceState,
    is_paused,
    now_dt,
)
from edx_remote_cache.reconciler.status import StatusPublisher

log = logging.getLogger(__name__)

RESTART_AGAIN_AFTER_SECONDS = 3600.0  # one memcached restart per instance per hour, then straight to rung 2
REPLACEMENT_WINDOW_SECONDS = 3600.0  # healing.maxReplacementsPerHour counts replacements in this window

Reconcile = Callable[[Mapping[str, Any]], Awaitable[None]]


class Healer:
    """Climbs the ladder for an object whose probes failed `probe.failureThreshold` times in a row."""

    def __init__(self, adapters: Adapters, status: StatusPublisher, reconcile: Reconcile) -> None:
        self.adapters = adapters
        self.status = status
        self._reconcile = reconcile  # a full pass with trigger "heal" (the façade's, so it takes the lock)

    async def heal(self, obj: Mapping[str, Any], state: ResourceState) -> str | None:
        """One rung for the first failing endpoint; returns the action taken (None: nothing to do)."""
        spec = state.spec
        if spec is None or not spec.healing.enabled or is_paused(obj, spec):
            return None
        if state.stalled_generation is not None or state.refused_change:
            return None  # stalled (e.g. by the replacement limit): nothing is probed or healed until the spec changes
        if state.consecutive_failures < spec.probe.failure_threshold:
            if state.healing and state.consecutive_failures == 0:
                self.adapters.events(obj, "Normal", "Healed", f"cache healthy again after: {state.healing}")
                state.healing = None
                # the ladder starts over: the next failure gets a restart first, not straight a replacement
                state.restarted_at.clear()
            return None
        failing = [r.endpoint for r in state.last_probe if not r.healthy]
        by_endpoint = {
            f"{i.get('privateIp')}:{spec.memcached.port}": i for i in state.status.get("instances") or []
        }
        for endpoint in failing:
            inst = by_endpoint.get(endpoint)
            if inst is not None:
                return await self._heal_instance(obj, state, spec, inst["id"], endpoint)
        return None

    async def _heal_instance(
        self,
        obj: Mapping[str, Any],
        state: ResourceState,
        spec: EdxRemoteCacheSpec,
        instance_id: str,
        endpoint: str,
    ) -> str | None:
        now = self.adapters.clock()
        restarted = state.restarted_at.get(instance_id)
        patience = spec.probe.interval_seconds * spec.probe.failure_threshold + 5 * spec.probe.timeout_seconds
        if restarted is None or now - restarted > RESTART_AGAIN_AFTER_SECONDS:
            if await self._restart_memcached(obj, state, spec, instance_id, endpoint):
                return "RestartMemcached"
        elif now - restarted < patience:
            return None  # give the restart time to show in the probes
        action = await self._look_again(obj, state, spec, instance_id)
        if action is not None:
            return action
        return await self._replace(obj, state, spec, instance_id, endpoint)

    async def _restart_memcached(
        self,
        obj: Mapping[str, Any],
        state: ResourceState,
        spec: EdxRemoteCacheSpec,
        instance_id: str,
        endpoint: str,
    ) -> bool:
        """Rung 1, when the instance's agent is Online; True when the restart command succeeded."""
        ssm = self.adapters.ssm(spec.region)
        pings = await asyncio.to_thread(ssm.ping_statuses, [instance_id])
        if pings.get(instance_id) != "Online":
            return False
        state.healing = f"restarting memcached on {instance_id} ({endpoint} failing)"
        state.restarted_at[instance_id] = self.adapters.clock()
        await self.record(obj, state, "RestartMemcached", instance_id, state.healing)
        try:
            result = await asyncio.to_thread(
                ssm.run_script, instance_id, "systemctl restart memcached\n", timeout=60,
                comment="edx-remote-cache heal",
            )  # fmt: skip
            if result.ok:
                return True
            log.warning("restart of memcached on %s ended %s", instance_id, result.status)
        except SsmError as exc:
            log.warning("restart of memcached on %s failed: %s", instance_id, exc)
        return False

    async def _look_again(
        self, obj: Mapping[str, Any], state: ResourceState, spec: EdxRemoteCacheSpec, instance_id: str
    ) -> str | None:
        """Rung 2: a fresh look. Stopped or terminated behind our back? The reconcile starts / relaunches it
        (and re-points the hosts); nothing to replace then."""
        ref = ObjectRef.of(obj)
        self.adapters.observer(spec.region, float(spec.drift_interval_seconds)).invalidate(ref.owner)
        state.acted = []
        with contextlib.suppress(RequeueError):  # the daemon's next round continues where this stopped
            await self._reconcile(obj)
        started = [i for r in state.acted for i in r.started]
        launched = [i for r in state.acted for i in r.launched.values()]
        current = next((i for i in state.status.get("instances") or [] if i.get("id") == instance_id), None)
        if instance_id in started or (current is not None and current.get("state") in ("pending", "stopped")):
            state.healing = f"starting stopped instance {instance_id}"
            await self.record(obj, state, "StartInstance", instance_id, state.healing)
            return "StartInstance"
        if launched or current is None or current.get("state") != "running":
            state.healing = f"replacing {instance_id} (it is {current.get('state') if current else 'gone'})"
            await self.record(obj, state, "ReplaceInstance", instance_id, state.healing)
            return "ReplaceInstance"
        return None

    async def _replace(
        self,
        obj: Mapping[str, Any],
        state: ResourceState,
        spec: EdxRemoteCacheSpec,
        instance_id: str,
        endpoint: str,
    ) -> str:
        """Rung 3: running, restarted (or no agent to restart it), still failing: replace, within the limit."""
        ref = ObjectRef.of(obj)
        now = self.adapters.clock()
        recent = [t for t in Progress.of(state.status).times if now - t < REPLACEMENT_WINDOW_SECONDS]
        if len(recent) >= spec.healing.max_replacements_per_hour:
            message = (
                f"healing: {len(recent)} replacement(s) in the last hour reached healing.maxReplacementsPerHour "
                f"({spec.healing.max_replacements_per_hour}); {instance_id} stays unhealthy until a human looks"
            )
            state.healing = None
            state.stalled_generation = ref.generation
            facts = dataclasses.replace(state.facts or Facts(ref.generation), terminal_error=message)
            await self.status.publish(obj, state, facts)
            self.adapters.events(obj, "Warning", "HealingRateLimited", message)
            return "RateLimited"
        state.healing = f"replacing {instance_id} ({endpoint} still failing)"
        state.replace.add(instance_id)
        await self.record(obj, state, "ReplaceInstance", instance_id, state.healing)
        self.adapters.observer(spec.region, float(spec.drift_interval_seconds)).invalidate(ref.owner)
        with contextlib.suppress(RequeueError):
            await self._reconcile(obj)
        return "ReplaceInstance"

    async def record(
        self, obj: Mapping[str, Any], state: ResourceState, action: str, instance_id: str, reason: str
    ) -> None:
        """A heal action: a metric, a Warning event, and `status.lastHeal`."""
        ref = ObjectRef.of(obj)
        self.adapters.metrics.heals.labels(ref.namespace, ref.name, action).inc()
        self.adapters.events(obj, "Warning", action, reason)
        last = {"action": action, "time": now_dt(self.adapters.clock).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "reason": reason, "instanceId": instance_id}  # fmt: skip
        if state.facts is not None:
            facts = dataclasses.replace(state.facts, healing=state.healing)
            await self.status.publish(obj, state, facts, lastHeal=last)
