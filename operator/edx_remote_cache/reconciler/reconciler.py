"""The façade: one `Reconciler` per operator process, each object's pass made of named steps.

    reconcile = parse spec -> CloudPass (observe, diff, act) -> ClaimStep (whose hosts) -> HostPass (push, drift)
                -> Prober -> StatusPublisher
    probe_once = Prober (from the daemon, every probe.intervalSeconds)
    heal = Healer (restart memcached -> start / relaunch -> replace, rate limited)
    teardown = Teardown (revert hosts -> terminate -> delete the security group)

kopf handlers (app/handlers.py) only call into this class. Everything that does I/O arrives through `Adapters`,
so the e2e suite runs this exact code against the sandbox and tests/reconciler runs it on fakes. Blocking
adapters (boto3, SSM, pymemcache) run in worker threads so one slow resource never stalls the event loop.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import Any

from edx_remote_cache.adapters.aws import RetryableAwsError, TerminalAwsError
from edx_remote_cache.adapters.probe import ProbeResult
from edx_remote_cache.domain.cloud.actions import WaitFor
from edx_remote_cache.domain.conditions import Facts
from edx_remote_cache.domain.spec import (
    EdxRemoteCacheSpec,
    SpecError,
    immutable_changes,
    parse_spec,
    where_it_runs,
)
from edx_remote_cache.reconciler.claims import ClaimStep
from edx_remote_cache.reconciler.cloud_pass import CloudPass
from edx_remote_cache.reconciler.healing import Healer
from edx_remote_cache.reconciler.host_pass import HostPass
from edx_remote_cache.reconciler.probing import Prober
from edx_remote_cache.reconciler.retrying import RetryRecord
from edx_remote_cache.reconciler.state import (
    PAUSE_ANNOTATION,
    Adapters,
    ObjectRef,
    RequeueError,
    ResourceState,
    is_paused,
    owner_key,
    pause_switch,
)
from edx_remote_cache.reconciler.status import StatusPublisher, last_heartbeat
from edx_remote_cache.reconciler.teardown import Teardown
from edx_remote_cache.reconciler.vantage import RegionOnsets


class Reconciler:
    """All resources' passes; one instance per operator process."""

    def __init__(self, adapters: Adapters) -> None:
        self.adapters = adapters
        self.states: dict[str, ResourceState] = {}
        self.status = StatusPublisher(adapters)
        self.cloud = CloudPass(adapters, self.status)
        self.claims = ClaimStep(adapters)
        self.hosts = HostPass(adapters)
        self.onsets = RegionOnsets()  # every endpoint's failure onset, per region: the breaker's input
        self.prober = Prober(adapters, self.status, self.onsets)
        self.healer = Healer(
            adapters, self.status, lambda obj: self.reconcile(obj, trigger="heal"), self.onsets
        )
        self.teardown_step = Teardown(adapters)

    # ------------------------------------------------------------------------------------------ memory

    async def refresh_host_checks(self, obj: Mapping[str, Any]) -> None:
        """The region's batched host check, when due, without the object's lock (it holds no object state): the
        daemon awaits it beside its probe rounds, then the drift pass reads its answers without waiting."""
        state = self.state(obj)
        configured = any(h.get("state") == "Configured" for h in state.status.get("hosts") or [])
        if state.spec is None or not configured or self._backing_off(obj, state) > 0.05:
            return  # as in the pass: only for hosts it configured, and never while backing off (an AWS storm)
        await self.hosts.refresh_region(state.spec)

    def _backing_off(self, obj: Mapping[str, Any], state: ResourceState) -> float:
        """Seconds until this generation's retryable-error episode allows the next pass (0: not backing off)."""
        retry = state.retry
        if retry is None or retry.generation != ObjectRef.of(obj).generation:
            return 0.0
        return max(0.0, retry.next_at - self.adapters.clock())

    def knows(self, obj: Mapping[str, Any]) -> bool:
        """Whether this object's state is already held (rebuilt from its status on first sight)."""
        return ObjectRef.of(obj).uid in self.states

    def state(self, obj: Mapping[str, Any]) -> ResourceState:
        uid = ObjectRef.of(obj).uid
        state = self.states.get(uid)
        if state is None:
            status = dict(obj.get("status") or {})
            # the heartbeat is due a HEARTBEAT_SECONDS after the last one written, not at once: a restart whose
            # first pass finds nothing new writes nothing (issue 19: at most one write per object on restart,
            # and that one is for news such as the hosts' first answer about the cache)
            state = self.states[uid] = ResourceState.from_status(status, last_heartbeat(status))
        return state

    def forget(self, obj: Mapping[str, Any]) -> None:
        ref = ObjectRef.of(obj)
        self.states.pop(ref.uid, None)
        self.onsets.forget(ref.uid)
        self.healer.boot.forget(ref.uid)
        self.adapters.metrics.forget(ref.namespace, ref.name)

    # ------------------------------------------------------------------------------------------ passes

    def drift_due(self, obj: Mapping[str, Any], last_pass: float) -> bool:
        """Whether the resource's drift pass (``last_pass``: time.monotonic() of its previous one) is due.

        Passes follow the region's shared snapshot rather than each resource's own timer: due when the snapshot
        is a drift interval old (this pass refreshes it) or newer than the resource's last pass (another pass
        refreshed it). A change is then acted on within one interval of happening; with a private timer, a
        resource whose pass came just before the refresh would wait a second interval.
        """
        spec = self.state(obj).spec
        if spec is None:
            return False
        interval = float(spec.drift_interval_seconds)
        now = time.monotonic()
        fetched = self.adapters.observer(spec.region, interval).fetched_at
        if fetched is None:
            return now - last_pass >= interval
        return now - fetched >= interval or fetched > last_pass

    async def reconcile(self, obj: Mapping[str, Any], *, trigger: str = "spec") -> None:
        """Converge one resource. Raises RequeueError when it should run again soon."""
        state = self.state(obj)
        retry, wait = state.retry, self._backing_off(obj, state)
        if retry is not None and wait > 0.05:
            # backing off: no trigger (kopf's retry, the daemon's drift pass, healing) calls AWS before it is due
            raise RequeueError(f"backing off: {retry.describe(self.adapters.clock())}", delay=wait)
        started = time.monotonic()
        outcome = "ok"
        try:
            async with state.lock:
                await self._pass(obj, state, trigger=trigger)
        except RequeueError:
            outcome = "requeue"
            raise
        except Exception:
            outcome = "error"
            raise
        finally:
            self.adapters.metrics.reconciles.labels(trigger, outcome).inc()
            self.adapters.metrics.reconcile_duration.labels(trigger).observe(time.monotonic() - started)

    async def _pass(self, obj: Mapping[str, Any], state: ResourceState, *, trigger: str) -> None:
        ref = ObjectRef.of(obj)
        try:
            spec = parse_spec(obj.get("spec"))
        except SpecError as exc:
            state.spec = None
            state.stalled_generation = ref.generation
            await self.status.publish(obj, state, Facts(generation=ref.generation, spec_error=str(exc)))
            return
        moved = immutable_changes(spec, state.status)
        if moved:
            await self._refuse_move(obj, state, spec, ref, moved)
            return
        state.refused_change = None
        state.spec = spec
        if state.stalled_generation == ref.generation and trigger != "spec":
            return  # terminal until the spec changes: no retry loop
        state.stalled_generation = None
        paused_by = pause_switch(obj, spec)
        paused = paused_by is not None
        try:
            cloud = await self.cloud.run(obj, state, spec, ref.owner, mutate=not paused)
        except TerminalAwsError as exc:
            state.stalled_generation = ref.generation
            during = f" (during {exc.operation})" if exc.operation else ""
            facts = Facts(generation=ref.generation, terminal_error=f"{exc.code}: {exc.message}{during}")
            await self.status.publish(obj, state, facts)
            return
        except RetryableAwsError as exc:
            record = await self._retrying(obj, state, ref, exc)
            raise RequeueError(record.describe(self.adapters.clock()), delay=record.delay) from exc
        retried, state.retry = state.retry, None
        if retried is not None:
            self.adapters.events(obj, "Normal", "Retried", f"{retried.service} {retried.code} cleared "
                                 f"after {retried.attempt} attempt(s)")  # fmt: skip
        # probed before the host pass: a new endpoint that answers now is pushed in this pass, not the next
        results = await self.prober.probe(obj, state, spec, cloud.endpoints)
        running = [(i.instance_id, i.private_ip, i.state) for i in cloud.observed.owned_instances(ref.owner)]
        cloud.unanswered = self.healer.boot.note_answers(obj, state, results, running, spec.memcached.port)
        claims = await self.claims.settle(obj, state, spec, cloud, mutate=not paused)
        pushed = await self.hosts.run(obj, state, spec, claims.cloud, mutate=not paused, trigger=trigger)
        hosts = claims.merge(pushed)
        facts = self.status.facts(state, spec, ref.generation, cloud, hosts, paused_by=paused_by)
        parts = self.status.cloud_parts(cloud, spec, hosts, state)
        boot = self.healer.boot.boot_status(state)
        # the pass's own probe round goes into status.health: after a restart the first write (the heartbeat
        # is due) then shows this process's observation, not the previous one's, and is the only write
        health = self.status.health(state, results)
        await self.status.publish(
            obj, state, facts, retry=None, boot=boot, **parts, **({"health": health} if health else {})
        )
        if cloud.plan.mutating or cloud.plan.of_type(WaitFor):
            raise RequeueError("cloud resources are still converging", delay=2.0)
        if not paused and state.rollout is None and any(h.state == "Pending" for h in hosts):
            # hosts waiting for a new cache's first answer are pushed at the first probe round that brings it
            soon = float(spec.probe.interval_seconds) if cloud.unanswered else 5.0
            raise RequeueError("hosts are pending", delay=min(5.0, soon))

    async def _refuse_move(
        self,
        obj: Mapping[str, Any],
        state: ResourceState,
        spec: EdxRemoteCacheSpec,
        ref: ObjectRef,
        moved: list[str],
    ) -> None:
        """Stalled on a region/subnet change, with no AWS call; the running cache is still probed and reported.

        Not `stalled_generation`: that would stop the probes too, and the cache that still serves the site
        would go unmonitored (what happened before the operator refused the change).
        """
        state.spec = where_it_runs(
            spec, state.status
        )  # probing, healing checks and teardown stay where it runs
        state.refused_change = (
            f"ImmutableField: {'; '.join(moved)} cannot change in place (AWS cannot move a cache host); "
            "create a new EdxRemoteCache there, then delete this one, or change the spec back. "
            "The running cache is still probed."
        )
        facts = state.facts or Facts(generation=ref.generation)
        facts = dataclasses.replace(facts, generation=ref.generation, terminal_error=state.refused_change)
        await self.status.publish(obj, state, facts)

    async def _retrying(
        self, obj: Mapping[str, Any], state: ResourceState, ref: ObjectRef, exc: RetryableAwsError
    ) -> RetryRecord:
        """A retryable error, in status from its first occurrence: Reconciling=True (AwsRetrying/SsmRetrying)
        with the code, message, attempt and next retry time, and `status.retry`; one Warning per code."""
        now = self.adapters.clock()
        record = RetryRecord.after(state.retry, exc, now=now, generation=ref.generation)
        state.retry = record
        # the parts keep what was last observed (a throttled drift pass does not make a working cache unready)
        base = state.facts or Facts(generation=ref.generation)
        facts = dataclasses.replace(
            base,
            generation=ref.generation,
            converging=True,
            retry_reason=record.reason,
            retry_message=record.describe(now),
        )
        await self.status.publish(obj, state, facts, retry=record.to_status())
        episode = f"{record.service} {record.code} {record.operation}"
        if episode != state.retry_message:
            self.adapters.events(obj, "Warning", record.reason, record.describe(now))
        state.retry_message = episode
        return record

    async def probe_once(self, obj: Mapping[str, Any]) -> list[ProbeResult]:
        """One probe round from the daemon: updates health, conditions and (when due) the heartbeat."""
        return await self.prober.probe_once(obj, self.state(obj))

    async def heal(self, obj: Mapping[str, Any]) -> str | None:
        """The healing ladder, one rung per call (see reconciler/healing.py)."""
        return await self.healer.heal(obj, self.state(obj))

    async def teardown(self, obj: Mapping[str, Any], *, retry: int = 0) -> None:
        """Delete: revert the hosts, terminate, delete the SG. Raises RequeueError until finished."""
        try:
            spec = parse_spec(obj.get("spec"))
        except SpecError:
            return  # never acted on: nothing in AWS is ours
        state = self.state(obj)
        spec = where_it_runs(spec, state.status)  # a refused region/subnet change: delete where things are
        async with state.lock:
            await self.teardown_step.run(obj, state, spec, retry=retry)
        self.forget(obj)


__all__ = [
    "PAUSE_ANNOTATION",
    "Adapters",
    "Reconciler",
    "RequeueError",
    "ResourceState",
    "is_paused",
    "owner_key",
]
