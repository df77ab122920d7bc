"""The healing ladder, one rung per call: restart memcached -> start / relaunch the instance -> replace it.

Nothing destructive happens on the operator's view alone. Before a rung, the cache host is asked about its own
memcached over SSM (the second opinion, reconciler/vantage.py):

* it answers there: the operator's path is what is broken. Nothing is restarted, replaced or re-pointed;
  CacheHealthy=Unknown `ProbePathBlocked` names the operator's source address and the fix (its probe source),
  one Warning event per episode, `edx_remote_cache_probe_path_blocked` = 1, and Ready follows the host's view;
* it says memcached is down or wedged: rung 1 restarts it (once an hour per instance); still failing after the
  restart had time to show, rung 3 replaces the instance, limited by `healing.maxReplacementsPerHour` (past it the
  object is Stalled, still probed, and leaves Stalled by itself when the cache answers again);
* it cannot be asked (agent offline, instance stopped or gone): rung 2 looks at the instance again through a
  reconcile pass (a stopped one is started, a terminated one relaunched); a running one whose agent is silent
  too is replaced, unless the breaker is tripped.

The breaker: when at least half (and at least 2) of a region's endpoints turn unhealthy within one probe window,
failures no host confirmed are not healed (`HealingSuspended`, an event, `edx_remote_cache_healing_suspended`);
it lifts by itself when they answer again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from edx_remote_cache.adapters.probe import ProbeResult
from edx_remote_cache.adapters.ssm import COMMENT_HEAL, SsmError
from edx_remote_cache.domain.conditions import Facts
from edx_remote_cache.domain.spec import EdxRemoteCacheSpec
from edx_remote_cache.domain.vantage import BreakerVerdict, Doubt, HostOpinion
from edx_remote_cache.reconciler.boot import BootWatch
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
from edx_remote_cache.reconciler.vantage import (
    OPINION_TTL_SECONDS,
    RegionOnsets,
    SecondOpinion,
    probe_window,
)

log = logging.getLogger(__name__)

RESTART_AGAIN_AFTER_SECONDS = 3600.0  # one memcached restart per instance per hour, then straight to rung 2
REPLACEMENT_WINDOW_SECONDS = 3600.0  # healing.maxReplacementsPerHour counts replacements in this window

Reconcile = Callable[[Mapping[str, Any]], Awaitable[None]]


class Healer:
    """Climbs the ladder for an object whose probes failed `probe.failureThreshold` times in a row."""

    def __init__(
        self,
        adapters: Adapters,
        status: StatusPublisher,
        reconcile: Reconcile,
        onsets: RegionOnsets | None = None,
    ) -> None:
        self.adapters = adapters
        self.status = status
        self._reconcile = reconcile  # a full pass with trigger "heal" (the façade's, so it takes the lock)
        self.onsets = onsets if onsets is not None else RegionOnsets()
        self.opinion = SecondOpinion(adapters)
        self.boot = BootWatch(adapters, status, self._replace)  # never answered since it started: not a heal
        self._looked: dict[
            str, float
        ] = {}  # instance id -> last unconfirmed look (rung 2 at most twice a minute)

    async def heal(self, obj: Mapping[str, Any], state: ResourceState) -> str | None:
        """One rung for the failing endpoints; returns the action taken (None: nothing to do)."""
        spec = state.spec
        if spec is None or not spec.healing.enabled or is_paused(obj, spec):
            return None
        instances = [(str(i.get("id")), str(i.get("privateIp") or ""), str(i.get("state")))
                     for i in state.status.get("instances") or []]  # fmt: skip
        self.boot.note_answers(obj, state, state.last_probe, instances, spec.memcached.port)
        if state.stalled_generation is not None or state.refused_change:
            return None  # a terminal error or a refused move: a human acts first (the cache is still probed)
        if state.consecutive_failures < spec.probe.failure_threshold:
            if state.consecutive_failures == 0:
                await self._all_clear(obj, state, spec)
            return None
        if state.heal_stall and state.heal_stall_generation == ObjectRef.of(obj).generation:
            return None  # the replacement limit: probed and reported, lifted when the cache answers again
        if state.heal_stall:  # a new spec (e.g. a higher maxReplacementsPerHour): the ladder may go on
            state.heal_stall = None
            await self._republish(obj, state, spec)
        by_endpoint = {
            f"{i.get('privateIp')}:{spec.memcached.port}": i for i in state.status.get("instances") or []
        }
        doubts: list[Doubt] = []
        action: str | None = None
        for result in state.last_probe:
            inst = by_endpoint.get(result.endpoint)
            if result.healthy or inst is None:
                continue
            booting = await self.boot.check(obj, state, spec, inst, result)  # reconciler/boot.py
            if booting is not None:
                action = booting or None
                if action:
                    break
                continue
            outcome = await self._heal_instance(obj, state, spec, inst, result)
            if isinstance(outcome, Doubt):
                doubts.append(outcome)
            elif outcome is not None:
                action = outcome
                break
        if action is None or doubts:
            await self._settle_doubt(obj, state, spec, doubts[0] if doubts else None)
        return action or (doubts[0].reason if doubts else None)

    async def _heal_instance(
        self,
        obj: Mapping[str, Any],
        state: ResourceState,
        spec: EdxRemoteCacheSpec,
        inst: Mapping[str, Any],
        result: ProbeResult,
    ) -> str | Doubt | None:
        instance_id, endpoint = str(inst["id"]), result.endpoint
        now = self.adapters.clock()
        restarted = state.restarted_at.get(instance_id)
        patience = spec.probe.interval_seconds * spec.probe.failure_threshold + 5 * spec.probe.timeout_seconds
        if restarted is not None and now - restarted < patience:
            return None  # give the restart time to show in the probes
        opinion = await self.opinion.ask(state, spec, instance_id, str(inst.get("privateIp") or ""))
        breaker = self.onsets.breaker(spec.region, probe_window(spec))
        self.adapters.metrics.healing_suspended.labels(spec.region).set(1 if breaker.tripped else 0)
        if opinion.answers:  # the operator's path is what is broken: nothing to heal on the cache
            return self._doubt(spec, result, opinion, breaker)
        if not opinion.confirms_failure and (
            reached := hosts_reaching(state, endpoint)
        ):  # the Open edX hosts reach it: the site is served
            said = f"the Open edX hosts reach it from their side ({', '.join(reached[:3])})"
            return self._doubt(spec, result, opinion, breaker, said=said)
        if not opinion.confirms_failure:  # nobody on the host could be asked: EC2's view, then the breaker
            looked = self._looked.get(instance_id)
            if looked is not None and now - looked < OPINION_TTL_SECONDS and breaker.tripped:
                return self._doubt(spec, result, opinion, breaker)
            self._looked[instance_id] = now
            action = await self._look_again(obj, state, spec, instance_id)
            if action is not None:
                return action  # stopped or gone: EC2 itself confirms
            if breaker.tripped:
                return self._doubt(spec, result, opinion, breaker)
            return await self._replace(obj, state, spec, instance_id, endpoint)
        # the host confirms memcached is down or wedged
        may_restart = restarted is None or now - restarted > RESTART_AGAIN_AFTER_SECONDS
        if may_restart and await self._restart_memcached(obj, state, spec, instance_id, endpoint, opinion):
            return "RestartMemcached"
        action = await self._look_again(obj, state, spec, instance_id)
        if action is not None:
            return action
        return await self._replace(obj, state, spec, instance_id, endpoint)

    # ------------------------------------------------------------------------------------------ doubts

    def _doubt(
        self,
        spec: EdxRemoteCacheSpec,
        result: ProbeResult,
        opinion: HostOpinion,
        breaker: BreakerVerdict,
        *,
        said: str = "",
    ) -> Doubt:
        """CacheHealthy=Unknown: ProbePathBlocked (the cache host or the Open edX hosts reach it; `said` says
        which when not the cache host) or HealingSuspended (the breaker)."""
        endpoint = result.endpoint
        served = opinion.answers or bool(said)
        seen = (
            f"{endpoint} does not answer the operator ({result.error_kind}) but {said or opinion.describe()}"
        )
        if breaker.tripped:
            message = f"{breaker.describe(spec.region, probe_window(spec))}; {seen}"
            return Doubt("HealingSuspended", message, served=served)
        source = self.adapters.probe_source_address(endpoint) or "unknown"
        message = (
            f"{seen}: the operator's path is blocked (its probes leave from {source}; a security group, network "
            "ACL or route lets the Open edX hosts in but not the operator). Nothing is restarted, replaced or "
            f"re-pointed. Fix: let {source} reach port {spec.memcached.port}, or set the operator's probe source "
            "(--probe-source / the chart's probeSource) to its security group or CIDR so every cache group "
            "admits it"
        )
        return Doubt("ProbePathBlocked", message, served=True)

    async def _settle_doubt(
        self, obj: Mapping[str, Any], state: ResourceState, spec: EdxRemoteCacheSpec, doubt: Doubt | None
    ) -> None:
        """Keep the doubt in state and status. Its Warning event is CacheHealthy's transition to Unknown (one per
        episode, emitted by the status step), not one per probe round."""
        if doubt == state.doubt:
            return
        ref = ObjectRef.of(obj)
        blocked = doubt is not None and doubt.reason == "ProbePathBlocked"
        self.adapters.metrics.probe_path_blocked.labels(ref.namespace, ref.name).set(1 if blocked else 0)
        state.doubt = doubt
        await self._republish(obj, state, spec)

    async def _all_clear(
        self, obj: Mapping[str, Any], state: ResourceState, spec: EdxRemoteCacheSpec
    ) -> None:
        """Every probe answers again: end the episode (healing, a doubt, a replacement-limit stall)."""
        ref = ObjectRef.of(obj)
        changed = False
        if state.healing:
            self.adapters.events(obj, "Normal", "Healed", f"cache healthy again after: {state.healing}")
            state.healing = None
            # the ladder starts over: the next failure gets a restart first, not straight a replacement
            state.restarted_at.clear()
        if state.doubt is not None:
            self.adapters.events(
                obj,
                "Normal",
                "ProbePathRestored",
                f"the operator reaches the cache again (was {state.doubt.reason})",
            )
            self.adapters.metrics.probe_path_blocked.labels(ref.namespace, ref.name).set(0)
            self.adapters.metrics.healing_suspended.labels(spec.region).set(
                1 if self.onsets.breaker(spec.region, probe_window(spec)).tripped else 0
            )
            state.doubt, changed = None, True
        if state.heal_stall:
            self.adapters.events(obj, "Normal", "Recovered", "the cache answers again: no longer Stalled")
            state.heal_stall, changed = None, True
        state.opinions.clear()
        if changed:
            await self._republish(obj, state, spec)

    async def _republish(
        self, obj: Mapping[str, Any], state: ResourceState, spec: EdxRemoteCacheSpec
    ) -> None:
        if state.facts is None:
            return
        facts = dataclasses.replace(
            state.facts,
            healing=state.healing,
            terminal_error=state.standing_stall(state.facts.terminal_error),
            **self.status.probe_facts(state, spec),
        )
        await self.status.publish(obj, state, facts)

    # ------------------------------------------------------------------------------------------ rungs

    async def _restart_memcached(
        self,
        obj: Mapping[str, Any],
        state: ResourceState,
        spec: EdxRemoteCacheSpec,
        instance_id: str,
        endpoint: str,
        opinion: HostOpinion,
    ) -> bool:
        """Rung 1, after the host confirmed the failure; True when the restart command succeeded."""
        ssm = self.adapters.ssm(spec.region)
        state.healing = (
            f"restarting memcached on {instance_id} ({endpoint} failing; the host says {opinion.verdict})"
        )
        state.restarted_at[instance_id] = self.adapters.clock()
        await self.record(obj, state, "RestartMemcached", instance_id, state.healing)
        try:
            result = await asyncio.to_thread(
                ssm.run_script, instance_id, "systemctl restart memcached\n", timeout=60,
                comment=COMMENT_HEAL,
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
            state.heal_stall = message  # not stalled_generation: the cache is still probed, and this lifts
            state.heal_stall_generation = ref.generation
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


def hosts_reaching(state: ResourceState, endpoint: str) -> list[str]:
    """The Open edX hosts that reached `endpoint` in a check sent since the operator's probes began failing,
    when none of those failed to (an older answer says nothing about this failure: it must not stop healing)."""
    since = state.failing_since if state.failing_since is not None else float("inf")
    seen = [
        (host, r.reachable)
        for host, reach in (state.host_vantage or {}).items()
        for r in reach
        if r.endpoint == endpoint and r.checked_at >= since
    ]
    if not seen or not all(ok for _, ok in seen):
        return []
    return sorted(host for host, _ in seen)
