"""Status publishing: facts from what the passes saw, conditions from facts, and the write decision.

The pure parts (conditions, phase, the health block, `status_changed`) live in domain/conditions.py; this step
gathers the facts a pass observed, builds the status, writes it only when it changed (or the heartbeat is due),
and turns condition transitions into Events.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from edx_remote_cache.adapters.host_push import HostPushResult
from edx_remote_cache.adapters.ports import StatusUnavailable
from edx_remote_cache.adapters.probe import ProbeResult
from edx_remote_cache.domain.cloud.actions import AuthorizeIngress, CreateSecurityGroup, RevokeIngress
from edx_remote_cache.domain.conditions import (
    HEARTBEAT_FIELDS,
    Facts,
    compute_conditions,
    compute_phase,
    health_status,
    status_changed,
)
from edx_remote_cache.domain.spec import EdxRemoteCacheSpec
from edx_remote_cache.reconciler.state import (
    Adapters,
    CloudOutcome,
    ObjectRef,
    Progress,
    ResourceState,
    now_dt,
    progress_status,
)

log = logging.getLogger(__name__)

UNWRITTEN = float("-inf")  # ResourceState.written_at of a status the API did not take: the heartbeat is due
HEARTBEAT_SECONDS = 60.0  # status.health.lastProbeTime is refreshed at most this often when nothing changes
COLD_CACHE_SECONDS = 600.0  # after a replacement, a low hit ratio is reported as "cold", not a failure
# Probe figures that move with every probe of a busy (or merely jittery) cache: written when something else
# changes and with the heartbeat, never on their own (or an idle cache would patch its status every probe).
HEALTH_FIGURES = ("latencyMs", "currConnections", "bytes", "hitRatio", "hitRatioPercent", "evictions")
# the conditions whose transitions become Events
EVENT_CONDITIONS = ("Ready", "Stalled", "CacheHealthy", "HostsConfigured")


class StatusPublisher:
    """Builds an object's status from facts and writes it when a user would see a difference."""

    def __init__(self, adapters: Adapters) -> None:
        self.adapters = adapters

    def heartbeat_due(self, state: ResourceState) -> bool:
        return self.adapters.clock() - state.written_at >= HEARTBEAT_SECONDS

    async def write(
        self, obj: Mapping[str, Any], state: ResourceState, new: dict[str, Any], *, force: bool = False
    ) -> bool:
        """Patch status only when it changed (heartbeat fields excepted), or when the heartbeat is due."""
        ref = ObjectRef.of(obj)
        if (
            not force
            and not self.heartbeat_due(state)
            and not status_changed(settled(state.status), settled(new))
        ):
            return False
        patch = merge_patch(state.status, new)
        try:
            await self.adapters.status.patch_status(ref.namespace, ref.name, patch)
        except StatusUnavailable:
            state.written_at = UNWRITTEN  # not written: the next round writes whatever it finds then
            raise
        self.adapters.metrics.status_writes.labels(ref.namespace, ref.name).inc()
        state.status = {k: v for k, v in new.items() if v is not None}
        state.written_at = self.adapters.clock()
        return True

    def build(self, state: ResourceState, facts: Facts, **parts: Any) -> dict[str, Any]:
        """The status for ``facts``: conditions and phase recomputed, every other key kept or replaced."""
        status = {
            k: v for k, v in state.status.items() if k not in ("conditions", "phase", "observedGeneration")
        }
        status.update(parts)
        status["observedGeneration"] = facts.generation
        status["conditions"] = compute_conditions(
            facts, previous=state.status.get("conditions") or [], now=now_dt(self.adapters.clock)
        )
        status["phase"] = compute_phase(facts)
        status["hostsSummary"] = f"{facts.hosts_configured}/{facts.hosts_total}"
        state.facts = facts
        return status

    async def publish(self, obj: Mapping[str, Any], state: ResourceState, facts: Facts, **parts: Any) -> None:
        """Report; while the API is away the report is skipped, not the work: probing and healing go on, and the
        next round (write() made the heartbeat due) writes the status as it is then. Only writes that must
        precede an action (the launch record, cloud_pass.save_progress) call write() and fail with the API."""
        old = dict(state.status)
        new = self.build(state, facts, **parts)
        failing = state.written_at == UNWRITTEN
        try:
            written = await self.write(obj, state, new)
        except StatusUnavailable as exc:
            (log.debug if failing else log.warning)(
                "status of %s not written (%s): written again once the API answers",
                ObjectRef.of(obj).key,
                exc,
            )
            # what this report meant (a key it dropped as None, for the merge patch): the next round builds on
            # it, so a part given only now (lastHeal) is not lost. Never the launch record: save_progress writes.
            state.status = {**dict.fromkeys(old), **new}
            return
        if written:
            self._emit_transitions(obj, old, new)

    def _emit_transitions(
        self, obj: Mapping[str, Any], old: Mapping[str, Any], new: Mapping[str, Any]
    ) -> None:
        before = {c["type"]: c for c in old.get("conditions") or []}
        for cond in new.get("conditions") or []:
            prev = before.get(cond["type"])
            if cond["type"] not in EVENT_CONDITIONS:
                continue
            if prev is not None and prev.get("status") == cond["status"]:
                continue
            if prev is None and cond["status"] != "True":
                continue
            bad = (cond["type"] == "Stalled") == (cond["status"] == "True")
            self.adapters.events(
                obj, "Warning" if bad else "Normal", cond["reason"], f"{cond['type']}: {cond['message']}"
            )

    # ------------------------------------------------------------------------------------------ facts

    def facts(
        self,
        state: ResourceState,
        spec: EdxRemoteCacheSpec,
        generation: int,
        cloud: CloudOutcome,
        hosts: Sequence[HostPushResult],
        *,
        paused_by: str | None,
    ) -> Facts:
        """What one full pass found: instances, security group, hosts and the last probe."""
        desired = cloud.desired
        ours = cloud.observed.owned_instances(desired.owner)
        running = [i for i in ours if i.state == "running"]
        group = cloud.observed.owned_group(desired.owner)
        sg_actions = [
            a
            for a in cloud.plan.actions
            if isinstance(a, CreateSecurityGroup | AuthorizeIngress | RevokeIngress)
        ]
        problems = tuple(
            f"{h.instance_id}: {h.state} ({h.message})"
            for h in hosts
            if h.state not in ("Configured", "Pending", "Claimed")
        )
        return Facts(
            generation=generation,
            paused=paused_by is not None,
            paused_by=paused_by or "",
            instances_desired=spec.instance.replicas,
            instances_running=min(len(running), spec.instance.replicas),
            instance_message="; ".join(cloud.plan.notes),
            security_group_ready=(group is not None and not sg_actions) if group or sg_actions else None,
            hosts_total=len(hosts),
            hosts_configured=sum(1 for h in hosts if h.state == "Configured"),
            host_problems=problems,
            hosts_not_found=state.missing_hosts,
            rollout_halted=state.rollout.message if state.rollout is not None else "",
            hosts_claimed=tuple(f"{h.instance_id}: {h.message}" for h in hosts if h.state == "Claimed"),
            converging=bool(cloud.plan.actions),
            healing=state.healing,
            terminal_error=state.heal_stall,  # the replacement limit: still probed, lifts when the cache answers
            **self.probe_facts(state, spec),
        )

    def probe_facts(self, state: ResourceState, spec: EdxRemoteCacheSpec) -> dict[str, Any]:
        """CacheHealthy's inputs: unhealthy after failureThreshold failures (at once when refused)."""
        results = state.last_probe
        clear = {"cache_unknown_reason": "", "cache_served": False, "cache_reason": ""}
        if not results:
            return {"cache_healthy": None, "cache_message": "", **clear}
        bad = [r for r in results if not r.healthy]
        if bad and state.boot_failure:  # never answered since it started: its boot logs say why
            return {
                **clear,
                "cache_healthy": False,
                "cache_message": state.boot_failure,
                "cache_reason": "BootFailed",
            }
        if bad and state.doubt is not None:  # failing from here, not confirmed (reconciler/healing.py)
            doubt = state.doubt
            return {"cache_healthy": None, "cache_message": doubt.message,
                    "cache_unknown_reason": doubt.reason, "cache_served": doubt.served}  # fmt: skip
        threshold = spec.probe.failure_threshold
        if bad and (state.consecutive_failures >= threshold or any(r.error_kind == "refused" for r in bad)):
            message = "; ".join(f"{r.endpoint}: {r.error_kind} ({r.error})" for r in bad)
            return {"cache_healthy": False, "cache_message": message, **clear}
        times = Progress.of(state.status).times
        cold = bool(times) and self.adapters.clock() - max(times) < COLD_CACHE_SECONDS
        return {
            "cache_healthy": True,
            "cache_message": f"{len(results)} endpoint(s) answer",
            "cold_cache": cold,
            **clear,
        }

    def cloud_parts(
        self,
        cloud: CloudOutcome,
        spec: EdxRemoteCacheSpec,
        hosts: Sequence[HostPushResult],
        state: ResourceState,
    ) -> dict[str, Any]:
        """The status keys a full pass owns: instances, security group, endpoints, hosts, progress."""
        desired = cloud.desired
        ours = sorted(
            cloud.observed.owned_instances(desired.owner),
            key=lambda i: (i.index if i.index is not None else 99, i.instance_id),
        )
        group = cloud.observed.owned_group(desired.owner)
        return {
            "instances": [
                {"id": i.instance_id, "state": i.state, "privateIp": i.private_ip, "type": i.instance_type}
                for i in ours
            ],
            "securityGroupId": group.group_id if group else None,
            "endpoints": list(cloud.endpoints),
            "hosts": [h.to_status() for h in hosts],
            "rollout": state.rollout.to_status() if state.rollout is not None else None,
            "region": spec.region,
            "subnetId": spec.instance.subnet_id,
            "progress": progress_status(
                cloud.launches, cloud.replacements, Progress.of(state.status).times, cloud.confirmed
            ),
        }

    def health(self, state: ResourceState, results: Sequence[ProbeResult]) -> dict[str, Any] | None:
        """`status.health` from the worst endpoint of the last probe round."""
        if not results:
            return None
        worst = next((r for r in results if not r.healthy), results[0])
        return health_status(
            worst,
            now=now_dt(self.adapters.clock),
            consecutive_failures=state.consecutive_failures,
            previous=state.status.get("health"),
        )


def merge_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """``new`` as a JSON merge patch over ``old``: a merge patch keeps keys it does not mention, at every depth,
    so a key dropped anywhere is sent as null (a launch token dropped from progress.launches, a map emptied)."""
    patch = dict(new)
    for key, before in old.items():
        if key not in patch:
            patch[key] = None
        elif isinstance(before, Mapping) and isinstance(patch[key], Mapping):
            patch[key] = merge_patch(before, patch[key])
    return patch


def settled(status: Mapping[str, Any]) -> dict[str, Any]:
    """``status`` without the probe figures that are refreshed only with the heartbeat (HEALTH_FIGURES)."""
    health = status.get("health")
    if not isinstance(health, Mapping):
        return dict(status)
    return {**status, "health": {k: v for k, v in health.items() if k not in HEALTH_FIGURES}}


def steady(health: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """`status.health` as the write decision sees it: without heartbeat fields, probe figures and nulls."""
    if health is None:
        return None
    skip = {path[1] for path in HEARTBEAT_FIELDS if path[0] == "health"} | set(HEALTH_FIGURES)
    return {k: v for k, v in health.items() if v is not None and k not in skip}
