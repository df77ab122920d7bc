"""One reconcile pass per EdxRemoteCache: observe → pure diff → act → status, plus probing and healing.

kopf handlers (handlers.py) only call into this module. Everything that does I/O arrives through `Adapters`,
so the e2e suite runs this exact code against the sandbox and unit tests can inject fakes. Blocking adapters
(boto3, SSM, pymemcache) run in worker threads so one slow resource never stalls the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from edx_remote_cache import OWNER_TAG
from edx_remote_cache.adapters.aws import (
    AwsClients,
    CloudLookups,
    EdxHostDirectory,
    RegionObserver,
    RetryableAwsError,
    TerminalAwsError,
    act,
)
from edx_remote_cache.adapters.host_drift import HostDriftChecker
from edx_remote_cache.adapters.host_push import HostPushResult, expected_files, push_hosts, revert_hosts
from edx_remote_cache.adapters.kube_status import StatusWriter
from edx_remote_cache.adapters.metrics import Metrics
from edx_remote_cache.adapters.probe import ProbeResult, probe_all
from edx_remote_cache.adapters.ssm import SsmAdapter, SsmError
from edx_remote_cache.domain.cloud_plan import (
    ActResult,
    AuthorizeIngress,
    CreateSecurityGroup,
    DesiredCacheHost,
    ObservedCloud,
    Owner,
    Plan,
    RevokeIngress,
    RunInstance,
    WaitFor,
    desired_from_spec,
    diff,
    edx_security_groups,
    endpoints,
    prune_launches,
    record_launches,
    record_replacements,
    teardown_plan,
)
from edx_remote_cache.domain.conditions import (
    HEARTBEAT_FIELDS,
    Facts,
    compute_conditions,
    compute_phase,
    health_status,
    status_changed,
)
from edx_remote_cache.domain.spec import EdxRemoteCacheSpec, SpecError, parse_spec

log = logging.getLogger(__name__)

PAUSE_ANNOTATION = "edx-remote-cache.openedx.org/paused"
HEARTBEAT_SECONDS = 60.0  # status.health.lastProbeTime is refreshed at most this often when nothing changes
CONVERGE_BUDGET_SECONDS = 20.0  # how long one pass keeps re-observing while AWS catches up before requeueing
REOBSERVE_DELAY_SECONDS = 0.2
MAX_ACT_ROUNDS = 8
COLD_CACHE_SECONDS = 600.0  # after a replacement, a low hit ratio is reported as "cold", not a failure
# A RolledBack / Failed / Conflict host is pushed again after a back-off that doubles from MIN to MAX, or at
# once when the spec or the endpoints change (each retry of a rollback restarts its services twice).
HOST_RETRY_MIN_SECONDS = 60.0
HOST_RETRY_MAX_SECONDS = 3600.0
HOST_RETRY_STATES = ("RolledBack", "Failed", "Conflict")
# Probe figures that move with every probe of a busy (or merely jittery) cache: written when something else
# changes and with the heartbeat, never on their own (or an idle cache would patch its status every probe).
HEALTH_FIGURES = ("latencyMs", "currConnections", "bytes", "hitRatio", "hitRatioPercent", "evictions")


HostAttempt = tuple[float, int, tuple[str, ...], int]


class EventSink(Protocol):
    def __call__(self, obj: Mapping[str, Any], type_: str, reason: str, message: str) -> None: ...


class RequeueError(Exception):
    """The pass made progress but is not finished (AWS still converging, a retryable error): try again soon."""

    def __init__(self, message: str, delay: float = 5.0) -> None:
        super().__init__(message)
        self.delay = delay


@dataclasses.dataclass
class Adapters:
    """Every outside system, injected. Factories are per region; the operator caches what they return."""

    clients: Callable[[str], AwsClients]
    observer: Callable[[str, float], RegionObserver]
    edx_hosts: Callable[[str, float], EdxHostDirectory]
    lookups: Callable[[str], CloudLookups]
    ssm: Callable[[str], SsmAdapter]
    host_drift: Callable[[str, float], HostDriftChecker]
    status: StatusWriter
    events: EventSink
    metrics: Metrics
    clock: Callable[[], float] = time.time
    probe_sources: tuple[
        str, ...
    ] = ()  # the operator's own source (sg ids / CIDRs), allowed on every cache group


@dataclasses.dataclass
class ResourceState:
    """What the operator remembers about one resource between passes (rebuilt from status after a restart)."""

    lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)
    status: dict[str, Any] = dataclasses.field(default_factory=dict)
    written_at: float = 0.0
    facts: Facts | None = None
    spec: EdxRemoteCacheSpec | None = None
    stalled_generation: int | None = None
    consecutive_failures: int = 0
    last_probe: list[ProbeResult] = dataclasses.field(default_factory=list)
    healing: str | None = None
    restarted_at: dict[str, float] = dataclasses.field(default_factory=dict)
    replace: set[str] = dataclasses.field(default_factory=set)
    was_healthy: bool | None = None
    # instance id -> its last push that ended RolledBack/Failed/Conflict: (time, generation, endpoints, failures)
    host_attempts: dict[str, HostAttempt] = dataclasses.field(default_factory=dict)
    acted: list[ActResult] = dataclasses.field(default_factory=list)  # what the last cloud pass changed
    # instance id -> the endpoints of its last Configured push (after a restart: status.pushedEndpoints)
    host_targets: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    retry_message: str | None = None  # the last AwsRetrying event, not repeated while the error stays


def _now_dt(clock: Callable[[], float]) -> datetime:
    return datetime.fromtimestamp(clock(), tz=UTC)


def _meta(obj: Mapping[str, Any]) -> tuple[str, str, str, int]:
    meta = obj.get("metadata") or {}
    return (
        meta.get("namespace", "default"),
        meta["name"],
        meta.get("uid", ""),
        int(meta.get("generation") or 1),
    )


def is_paused(obj: Mapping[str, Any], spec: EdxRemoteCacheSpec | None) -> bool:
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    return bool(spec and spec.paused) or str(annotations.get(PAUSE_ANNOTATION, "")).lower() == "true"


def _progress(status: Mapping[str, Any]) -> tuple[dict[str, float], dict[int, int], list[float]]:
    progress = status.get("progress") or {}
    launches = {str(k): float(v) for k, v in (progress.get("launches") or {}).items()}
    replacements = {int(k): int(v) for k, v in (progress.get("replacements") or {}).items()}
    times = [float(t) for t in progress.get("replacementTimes") or []]
    return launches, replacements, times


def _progress_status(
    launches: Mapping[str, float], replacements: Mapping[int, int], times: Sequence[float]
) -> dict:
    return {
        "launches": dict(launches),
        "replacements": {str(k): v for k, v in replacements.items()},
        "replacementTimes": list(times),
    }


def _settled(status: Mapping[str, Any]) -> dict[str, Any]:
    """``status`` without the probe figures that are refreshed only with the heartbeat (HEALTH_FIGURES)."""
    health = status.get("health")
    if not isinstance(health, Mapping):
        return dict(status)
    return {**status, "health": {k: v for k, v in health.items() if k not in HEALTH_FIGURES}}


def _replacement_count(generations: Mapping[int, int]) -> int:
    """Launches that replaced an instance (generation > 0); a replica's first launch (generation 0) is not one."""
    return sum(1 for generation in generations.values() if generation > 0)


def _mutating(plan: Plan) -> list[Any]:
    return [a for a in plan.actions if not isinstance(a, WaitFor)]


@dataclasses.dataclass
class CloudOutcome:
    desired: DesiredCacheHost
    observed: ObservedCloud
    plan: Plan
    endpoints: tuple[str, ...]
    edx_hosts: list[str]
    launches: dict[str, float]
    replacements: dict[int, int]
    result: ActResult | None


class Reconciler:
    """All resources' passes; one instance per operator process."""

    def __init__(self, adapters: Adapters) -> None:
        self.a = adapters
        self.states: dict[str, ResourceState] = {}
        self._host_checks: dict[int, asyncio.Future[None]] = {}  # the running region check, per checker

    def knows(self, obj: Mapping[str, Any]) -> bool:
        """Whether this object's state is already held (rebuilt from its status on first sight)."""
        return _meta(obj)[2] in self.states

    def state(self, obj: Mapping[str, Any]) -> ResourceState:
        _, _, uid, _ = _meta(obj)
        state = self.states.get(uid)
        if state is None:
            state = self.states[uid] = ResourceState(status=dict(obj.get("status") or {}))
        return state

    def forget(self, obj: Mapping[str, Any]) -> None:
        namespace, name, uid, _ = _meta(obj)
        self.states.pop(uid, None)
        self.a.metrics.forget(namespace, name)

    # ------------------------------------------------------------------------------------------ status

    async def write_status(
        self, obj: Mapping[str, Any], state: ResourceState, new: dict[str, Any], *, force: bool = False
    ) -> bool:
        """Patch status only when it changed (heartbeat fields excepted), or when the heartbeat is due."""
        namespace, name, _, _ = _meta(obj)
        due = self.a.clock() - state.written_at >= HEARTBEAT_SECONDS
        if not force and not due and not status_changed(_settled(state.status), _settled(new)):
            return False
        patch = dict(new)
        for key in state.status:  # a merge patch keeps keys it does not mention: clear the ones we dropped
            if key not in patch:
                patch[key] = None
        await self.a.status.patch_status(namespace, name, patch)
        self.a.metrics.status_writes.labels(namespace, name).inc()
        state.status = {k: v for k, v in new.items() if v is not None}
        state.written_at = self.a.clock()
        return True

    def _status_from(
        self, obj: Mapping[str, Any], state: ResourceState, facts: Facts, **parts: Any
    ) -> dict[str, Any]:
        now = _now_dt(self.a.clock)
        status = {
            k: v for k, v in state.status.items() if k not in ("conditions", "phase", "observedGeneration")
        }
        status.update({k: v for k, v in parts.items()})
        status["observedGeneration"] = facts.generation
        status["conditions"] = compute_conditions(
            facts, previous=state.status.get("conditions") or [], now=now
        )
        status["phase"] = compute_phase(facts)
        status["hostsSummary"] = f"{facts.hosts_configured}/{facts.hosts_total}"
        state.facts = facts
        return status

    def _emit_transitions(
        self, obj: Mapping[str, Any], old: Mapping[str, Any], new: Mapping[str, Any]
    ) -> None:
        before = {c["type"]: c for c in old.get("conditions") or []}
        for cond in new.get("conditions") or []:
            prev = before.get(cond["type"])
            if cond["type"] not in ("Ready", "Stalled", "CacheHealthy", "HostsConfigured"):
                continue
            if prev is not None and prev.get("status") == cond["status"]:
                continue
            if prev is None and cond["status"] != "True":
                continue
            bad = (cond["type"] == "Stalled") == (cond["status"] == "True")
            self.a.events(
                obj, "Warning" if bad else "Normal", cond["reason"], f"{cond['type']}: {cond['message']}"
            )

    async def _publish(
        self, obj: Mapping[str, Any], state: ResourceState, facts: Facts, **parts: Any
    ) -> None:
        old = dict(state.status)
        new = self._status_from(obj, state, facts, **parts)
        if await self.write_status(obj, state, new):
            self._emit_transitions(obj, old, new)

    # ------------------------------------------------------------------------------------------ reconcile

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
        fetched = self.a.observer(spec.region, interval).fetched_at
        if fetched is None:
            return now - last_pass >= interval
        return now - fetched >= interval or fetched > last_pass

    async def reconcile(self, obj: Mapping[str, Any], *, trigger: str = "spec") -> None:
        """Converge one resource. Raises RequeueError when it should run again soon."""
        state = self.state(obj)
        started = time.monotonic()
        outcome = "ok"
        try:
            async with state.lock:
                await self._reconcile_locked(obj, state, trigger=trigger)
        except RequeueError:
            outcome = "requeue"
            raise
        except Exception:
            outcome = "error"
            raise
        finally:
            self.a.metrics.reconciles.labels(trigger, outcome).inc()
            self.a.metrics.reconcile_duration.labels(trigger).observe(time.monotonic() - started)

    async def _reconcile_locked(self, obj: Mapping[str, Any], state: ResourceState, *, trigger: str) -> None:
        namespace, name, uid, generation = _meta(obj)
        try:
            spec = parse_spec(obj.get("spec"))
        except SpecError as exc:
            state.spec = None
            state.stalled_generation = generation
            await self._publish(obj, state, Facts(generation=generation, spec_error=str(exc)))
            return
        state.spec = spec
        if state.stalled_generation == generation and trigger != "spec":
            return  # terminal until the spec changes: no retry loop
        state.stalled_generation = None
        owner = Owner(namespace, name, uid)
        paused = is_paused(obj, spec)
        try:
            cloud = await self._converge_cloud(obj, state, spec, owner, mutate=not paused)
        except TerminalAwsError as exc:
            state.stalled_generation = generation
            await self._publish(
                obj, state, Facts(generation=generation, terminal_error=f"{exc.code}: {exc.message}")
            )
            return
        except RetryableAwsError as exc:
            if state.facts is not None and state.facts.generation == generation:
                await self._publish(obj, state, dataclasses.replace(state.facts, converging=True))
            elif not state.status.get("conditions"):
                await self._publish(obj, state, Facts(generation=generation, converging=True))
            else:  # a new generation not applied yet: the status keeps describing the last one it was
                message = f"generation {generation} not applied yet: AWS {exc.code}: {exc.message}"
                if message != state.retry_message:
                    self.a.events(obj, "Warning", "AwsRetrying", message)
                state.retry_message = message
            raise RequeueError(f"AWS {exc.code}: {exc.message}", delay=5.0) from exc

        hosts = await self._converge_hosts(obj, state, spec, cloud, mutate=not paused, trigger=trigger)
        await self._probe(obj, state, spec, cloud.endpoints)
        facts = self._facts(state, spec, generation, cloud, hosts, paused=paused)
        await self._publish(obj, state, facts, **self._cloud_status(cloud, spec, hosts, state))
        if _mutating(cloud.plan) or any(isinstance(a, WaitFor) for a in cloud.plan.actions):
            raise RequeueError("cloud resources are still converging", delay=2.0)
        if not paused and any(h.state == "Pending" for h in hosts):
            raise RequeueError("hosts are pending", delay=5.0)

    async def _converge_cloud(
        self,
        obj: Mapping[str, Any],
        state: ResourceState,
        spec: EdxRemoteCacheSpec,
        owner: Owner,
        *,
        mutate: bool,
    ) -> CloudOutcome:
        region = spec.region
        clients = self.a.clients(region)
        lookups = self.a.lookups(region)
        observer = self.a.observer(region, float(spec.drift_interval_seconds))
        image = await asyncio.to_thread(
            lookups.image, ami=spec.instance.ami, ami_parameter=spec.instance.ami_parameter
        )
        vpc_id = await asyncio.to_thread(lookups.vpc_id, spec.instance.subnet_id)
        edx = await asyncio.to_thread(  # one batched read per region per drift interval, shared by all resources
            self.a.edx_hosts(region, float(spec.drift_interval_seconds)).hosts,
            instance_ids=spec.openedx.hosts,
            selector=spec.openedx.host_selector or None,
        )
        # rollout order: spec.openedx.hosts as listed (a canary first), then hosts matched by the selector
        listed = {iid: n for n, iid in enumerate(spec.openedx.hosts)}
        edx_ids = sorted(
            (h.instance_id for h in edx if h.state in ("running", "pending", "stopped")),
            key=lambda iid: (listed.get(iid, len(listed)), iid),
        )
        launches, replacements, times = _progress(state.status)
        deadline = time.monotonic() + CONVERGE_BUDGET_SECONDS
        state.acted = []
        result: ActResult | None = None
        for _round in range(MAX_ACT_ROUNDS):
            desired = desired_from_spec(
                spec,
                owner=owner,
                ami_id=image.image_id,
                root_device_name=image.root_device_name,
                vpc_id=vpc_id,
                edx_security_groups=edx_security_groups(edx),
                replacements=replacements,
                probe_sources=self.a.probe_sources,
            )
            observed = await asyncio.to_thread(
                observer.observe, owner, adopt_instance_ids=tuple(spec.instance.adopt_instance_ids)
            )
            plan = diff(
                desired=desired,
                observed=observed,
                now=self.a.clock(),
                launches=launches,
                replace=frozenset(state.replace),
            )
            todo = _mutating(plan)
            if not mutate or not todo:
                if (
                    todo
                    or not any(isinstance(a, WaitFor) for a in plan.actions)
                    or time.monotonic() > deadline
                ):
                    break
                await asyncio.sleep(REOBSERVE_DELAY_SECONDS)  # AWS is catching up: re-observe, do not act
                observer.invalidate(owner)
                continue
            tokens = [a.client_token for a in todo if isinstance(a, RunInstance)]
            if tokens:  # record the launch tokens before the call: a crash right after never launches twice
                launches = {**launches, **{t: launches.get(t, self.a.clock()) for t in tokens}}
                await self._save_progress(obj, state, launches, replacements, times)
            try:
                done = await asyncio.to_thread(act, plan, clients=clients, ssm_runner=self.a.ssm(region))
            except (TerminalAwsError, RetryableAwsError) as exc:
                partial = exc.partial
                if partial is not None:
                    launches = record_launches(launches, partial, now=self.a.clock())
                    replacements = record_replacements(replacements, partial)
                    await self._save_progress(obj, state, launches, replacements, times)
                observer.invalidate(owner)
                raise
            result = done
            state.acted.append(done)
            launches = prune_launches(
                record_launches(launches, done, now=self.a.clock()),
                owner_uid=owner.uid,
                replacements=record_replacements(replacements, done),
            )
            replaced = _replacement_count(done.generations)
            if replaced:  # first launches (and scale-ups) are not replacements: no cold cache, no rate limit
                times = [*times, *([self.a.clock()] * replaced)]
            if done.terminated:
                state.replace -= set(done.terminated)
            replacements = record_replacements(replacements, done)
            self._announce(obj, plan)
            observer.invalidate(owner)
            if done.ssm_unavailable:
                state.replace |= set(done.ssm_unavailable)
            await self._save_progress(obj, state, launches, replacements, times)
            if time.monotonic() > deadline:
                break
        return CloudOutcome(
            desired=desired,
            observed=observed,
            plan=plan,
            endpoints=endpoints(desired=desired, observed=observed),
            edx_hosts=edx_ids,
            launches=launches,
            replacements=replacements,
            result=result,
        )

    def _announce(self, obj: Mapping[str, Any], plan: Plan) -> None:
        kinds = [type(a).__name__ for a in _mutating(plan)]
        if not kinds:
            return
        drift = any(isinstance(a, RevokeIngress | AuthorizeIngress) for a in plan.actions) and not any(
            isinstance(a, CreateSecurityGroup) for a in plan.actions
        )
        reason = "DriftCorrected" if drift else "CloudUpdated"
        self.a.events(obj, "Normal", reason, ", ".join(dict.fromkeys(kinds)))

    async def _save_progress(
        self,
        obj: Mapping[str, Any],
        state: ResourceState,
        launches: Mapping[str, float],
        replacements: Mapping[int, int],
        times: Sequence[float],
    ) -> None:
        progress = _progress_status(launches, replacements, times)
        if state.status.get("progress") != progress:
            generation = _meta(obj)[3]
            if state.status.get("conditions"):
                # only the launch record: the conditions (and observedGeneration) are for what was last
                # fully reconciled, and must not claim a generation that is still being applied
                new = {**state.status, "progress": progress}
            else:  # a brand-new object's first launch: say what is going on, not just the launch record
                new = self._status_from(
                    obj, state, Facts(generation=generation, converging=True), progress=progress
                )
            await self.write_status(obj, state, new, force=True)

    async def _converge_hosts(
        self,
        obj: Mapping[str, Any],
        state: ResourceState,
        spec: EdxRemoteCacheSpec,
        cloud: CloudOutcome,
        *,
        mutate: bool,
        trigger: str,
    ) -> list[HostPushResult]:
        previous = {h["instanceId"]: HostPushResult.from_status(h) for h in state.status.get("hosts") or []}
        targets = cloud.endpoints
        complete = len(targets) == spec.instance.replicas and bool(targets)
        if not complete or not cloud.edx_hosts:
            return [previous.get(h) or HostPushResult(h, "Pending") for h in cloud.edx_hosts]
        generation = _meta(obj)[3]
        pushed = list(state.status.get("pushedEndpoints") or [])
        due = [h for h in cloud.edx_hosts if self._host_due(state, previous.get(h), generation, targets)]
        configured = [h for h in cloud.edx_hosts if h in previous and previous[h].state == "Configured"]
        # Configured hosts whose files name other endpoints than the current ones (a scale-up, a replacement)
        retargeted = [h for h in configured if state.host_targets.get(h, tuple(pushed)) != tuple(targets)]
        settled = [h for h in configured if h not in retargeted]
        checker = self.a.host_drift(spec.region, float(spec.drift_interval_seconds))
        checker.expect(expected_files(previous[h] for h in settled))
        drifted: list[str] = []
        if trigger == "drift" and settled:
            # one batched check of every pushed file in the region per drift interval, shared by all resources
            await self._refresh_host_drift(checker)
            reports = checker.reports(expected_files(previous[h] for h in settled))
            drifted = [h for h, r in reports.items() if r.drifted]
            for host in drifted:
                report = reports[host]
                if not report.current:  # could not look (agent offline...): the push below says why
                    continue
                then = "paused, not re-applying" if not mutate else "re-applying"
                self.a.events(obj, "Warning", "HostDrift", f"{host}: {report.reason}; {then}")
        # A RolledBack/Failed/Conflict host is pushed again only when its back-off is over (see _host_due).
        todo = [h for h in cloud.edx_hosts if h in due or h in drifted or h in retargeted]
        if not todo:
            return [previous[h] for h in cloud.edx_hosts]
        if not mutate:
            return [previous.get(h) or HostPushResult(h, "Pending") for h in cloud.edx_hosts]
        # Every endpoint this object may have written is replaced as one block by the new ordered list: a host
        # with [a] becomes [a, b] on a scale-up, [a, b] becomes [c, b] when a is replaced.
        old = [*pushed, *(state.status.get("endpoints") or [])]
        old += [e for h in todo for e in state.host_targets.get(h, ())]
        replace = list(dict.fromkeys([*old, *targets]))
        results = await asyncio.to_thread(
            push_hosts,
            ssm=self.a.ssm(spec.region),
            hosts=todo,
            openedx=spec.openedx,
            endpoints=list(targets),
            replace=replace,
            port=spec.memcached.port,
            previous=previous,
        )
        now = self.a.clock()
        fresh: dict[str, HostPushResult] = {}
        for r in results:
            before = previous.get(r.instance_id)
            if r.state == "Configured" and r.diffs:
                self.a.events(obj, "Normal", "HostConfigured", f"{r.instance_id}: {r.message}")
            elif r.state in ("RolledBack", "Conflict", "Failed", "Unreachable") and (
                before is None or before.state != r.state or before.message != r.message
            ):
                self.a.events(obj, "Warning", f"Host{r.state}", f"{r.instance_id}: {r.message}")
            if (
                r.state in ("Unreachable", "Pending")
                and before is not None
                and (before.state, before.message) == (r.state, r.message)
            ):  # the same news again: keep its time, so a host that stays offline causes no status churn
                r = dataclasses.replace(r, time=before.time, command_id=before.command_id)
            if r.state == "Configured":
                state.host_targets[r.instance_id] = tuple(targets)
            if r.state in HOST_RETRY_STATES:
                last = state.host_attempts.get(r.instance_id)
                same = last is not None and last[1] == generation and last[2] == tuple(targets)
                failures = last[3] + 1 if same and last is not None else 1
                state.host_attempts[r.instance_id] = (now, generation, tuple(targets), failures)
            else:
                state.host_attempts.pop(r.instance_id, None)
            fresh[r.instance_id] = r
        merged = [fresh.get(h) or previous.get(h) or HostPushResult(h, "Pending") for h in cloud.edx_hosts]
        checker.expect(expected_files(fresh.values()))  # checked from the next batched check on
        if all(r.state == "Configured" for r in merged):
            state.status["pushedEndpoints"] = list(targets)
        return merged

    async def _refresh_host_drift(self, checker: HostDriftChecker) -> None:
        """Run a due region check once, in one worker thread; every other drift pass awaits that same run.

        Blocking each pass's own worker thread on the check instead held up to the whole executor (32 threads)
        for as long as the hosts took to answer, and with it every push and observe of the region.
        """
        if not checker.due():
            return
        running = self._host_checks.get(id(checker))
        if running is None or running.done():
            running = self._host_checks[id(checker)] = asyncio.ensure_future(
                asyncio.to_thread(checker.refresh)
            )
        await asyncio.shield(running)

    def _host_due(
        self,
        state: ResourceState,
        previous: HostPushResult | None,
        generation: int,
        targets: Sequence[str],
    ) -> bool:
        """Whether a host that is not Configured should be pushed now.

        Pending / Unreachable hosts: every pass (nothing was changed on them; an offline agent costs one
        DescribeInstanceInformation). RolledBack / Failed / Conflict hosts had their services restarted (twice
        for a rollback) or need a human: again only when the spec or the endpoints changed, or after a back-off
        that doubles from HOST_RETRY_MIN_SECONDS (at least 2 drift intervals) to HOST_RETRY_MAX_SECONDS.
        """
        if previous is None or previous.state in ("Pending", "Unreachable"):
            return True
        if previous.state not in HOST_RETRY_STATES:
            return False
        last = state.host_attempts.get(previous.instance_id)
        if last is None or last[1] != generation or last[2] != tuple(targets):
            return True  # a new spec, new endpoints, or an operator restart: try once more
        drift = float(state.spec.drift_interval_seconds) if state.spec is not None else 60.0
        wait = min(HOST_RETRY_MAX_SECONDS, max(HOST_RETRY_MIN_SECONDS, 2 * drift) * 2 ** (last[3] - 1))
        return self.a.clock() - last[0] >= wait

    # ------------------------------------------------------------------------------------------ facts

    def _facts(
        self,
        state: ResourceState,
        spec: EdxRemoteCacheSpec,
        generation: int,
        cloud: CloudOutcome,
        hosts: Sequence[HostPushResult],
        *,
        paused: bool,
    ) -> Facts:
        desired = cloud.desired
        ours = [i for i in cloud.observed.instances if desired.owner.owns(i.tag_map)]
        running = [i for i in ours if i.state == "running"]
        group = next((g for g in cloud.observed.security_groups if desired.owner.owns(g.tag_map)), None)
        sg_actions = [
            a
            for a in cloud.plan.actions
            if isinstance(a, CreateSecurityGroup | AuthorizeIngress | RevokeIngress)
        ]
        problems = tuple(
            f"{h.instance_id}: {h.state} ({h.message})"
            for h in hosts
            if h.state not in ("Configured", "Pending")
        )
        probe = self._probe_facts(state, spec)
        return Facts(
            generation=generation,
            paused=paused,
            instances_desired=spec.instance.replicas,
            instances_running=min(len(running), spec.instance.replicas),
            instance_message="; ".join(cloud.plan.notes),
            security_group_ready=(group is not None and not sg_actions) if group or sg_actions else None,
            hosts_total=len(hosts),
            hosts_configured=sum(1 for h in hosts if h.state == "Configured"),
            host_problems=problems,
            converging=bool(cloud.plan.actions),
            healing=state.healing,
            **probe,
        )

    def _probe_facts(self, state: ResourceState, spec: EdxRemoteCacheSpec) -> dict[str, Any]:
        results = state.last_probe
        if not results:
            return {"cache_healthy": None, "cache_message": ""}
        bad = [r for r in results if not r.healthy]
        threshold = spec.probe.failure_threshold
        if bad and (state.consecutive_failures >= threshold or any(r.error_kind == "refused" for r in bad)):
            message = "; ".join(f"{r.endpoint}: {r.error_kind} ({r.error})" for r in bad)
            return {"cache_healthy": False, "cache_message": message}
        _, _, times = _progress(state.status)
        cold = bool(times) and self.a.clock() - max(times) < COLD_CACHE_SECONDS
        return {
            "cache_healthy": True,
            "cache_message": f"{len(results)} endpoint(s) answer",
            "cold_cache": cold,
        }

    def _cloud_status(
        self,
        cloud: CloudOutcome,
        spec: EdxRemoteCacheSpec,
        hosts: Sequence[HostPushResult],
        state: ResourceState,
    ) -> dict[str, Any]:
        desired = cloud.desired
        ours = sorted(
            (i for i in cloud.observed.instances if desired.owner.owns(i.tag_map)),
            key=lambda i: (i.index if i.index is not None else 99, i.instance_id),
        )
        group = next((g for g in cloud.observed.security_groups if desired.owner.owns(g.tag_map)), None)
        return {
            "instances": [
                {"id": i.instance_id, "state": i.state, "privateIp": i.private_ip, "type": i.instance_type}
                for i in ours
            ],
            "securityGroupId": group.group_id if group else None,
            "endpoints": list(cloud.endpoints),
            "hosts": [h.to_status() for h in hosts],
            "region": spec.region,
            "progress": _progress_status(cloud.launches, cloud.replacements, _progress(state.status)[2]),
        }

    # ------------------------------------------------------------------------------------------ probing

    async def _probe(
        self, obj: Mapping[str, Any], state: ResourceState, spec: EdxRemoteCacheSpec, targets: Sequence[str]
    ) -> list[ProbeResult]:
        namespace, name, _, _ = _meta(obj)
        if not targets:
            state.last_probe = []
            return []
        results = await probe_all(targets, timeout=spec.probe.timeout_seconds)
        state.last_probe = results
        state.consecutive_failures = (
            state.consecutive_failures + 1 if any(not r.healthy for r in results) else 0
        )
        for r in results:
            self.a.metrics.record_probe(namespace, name, r)
        return results

    async def probe_once(self, obj: Mapping[str, Any]) -> list[ProbeResult]:
        """One probe round from the daemon: updates health, conditions and (when due) the heartbeat."""
        state = self.state(obj)
        async with state.lock:  # a pass may be running: read what it leaves behind, not what it started from
            spec, facts = state.spec, state.facts
            if spec is None or facts is None or state.stalled_generation is not None:
                return []
            targets = list(state.status.get("endpoints") or [])
            results = await self._probe(obj, state, spec, targets)
            facts = dataclasses.replace(facts, healing=state.healing, **self._probe_facts(state, spec))
            health = self._health(state, results)
            # the common case at scale: nothing new and no heartbeat due, so skip building and diffing the status
            heartbeat_due = self.a.clock() - state.written_at >= HEARTBEAT_SECONDS
            if (
                facts == state.facts
                and not heartbeat_due
                and _steady(health) == _steady(state.status.get("health"))
            ):
                return results
            await self._publish(obj, state, facts, health=health)
        return results

    def _health(self, state: ResourceState, results: Sequence[ProbeResult]) -> dict[str, Any] | None:
        if not results:
            return None
        worst = next((r for r in results if not r.healthy), results[0])
        return health_status(
            worst,
            now=_now_dt(self.a.clock),
            consecutive_failures=state.consecutive_failures,
            previous=state.status.get("health"),
        )

    # ------------------------------------------------------------------------------------------ healing

    async def heal(self, obj: Mapping[str, Any]) -> str | None:
        """The healing ladder, one rung per call: restart memcached → start/replace the instance."""
        state = self.state(obj)
        spec = state.spec
        if spec is None or not spec.healing.enabled or is_paused(obj, spec):
            return None
        if state.stalled_generation is not None:
            return None  # stalled (e.g. by the replacement limit): nothing is probed or healed until the spec changes
        if state.consecutive_failures < spec.probe.failure_threshold:
            if state.healing and state.consecutive_failures == 0:
                self.a.events(obj, "Normal", "Healed", f"cache healthy again after: {state.healing}")
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
            if inst is None:
                continue
            return await self._heal_instance(obj, state, spec, inst, endpoint)
        return None

    async def _heal_instance(
        self,
        obj: Mapping[str, Any],
        state: ResourceState,
        spec: EdxRemoteCacheSpec,
        inst: Mapping[str, Any],
        endpoint: str,
    ) -> str | None:
        """Rung 1: restart memcached over SSM (once, while the agent answers). Rung 2: look at the instance
        again; a stopped one is started, a terminated one relaunched, by the cloud reconcile itself. Rung 3:
        a running instance whose memcached still fails after the restart is replaced (rate limited)."""
        instance_id = inst["id"]
        now = self.a.clock()
        restarted = state.restarted_at.get(instance_id)
        patience = spec.probe.interval_seconds * spec.probe.failure_threshold + 5 * spec.probe.timeout_seconds
        ssm = self.a.ssm(spec.region)
        if restarted is None or now - restarted > 3600:
            pings = await asyncio.to_thread(ssm.ping_statuses, [instance_id])
            if pings.get(instance_id) == "Online":
                state.healing = f"restarting memcached on {instance_id} ({endpoint} failing)"
                state.restarted_at[instance_id] = now
                await self._record_heal(obj, state, "RestartMemcached", instance_id, state.healing)
                try:
                    result = await asyncio.to_thread(
                        ssm.run_script, instance_id, "systemctl restart memcached\n", timeout=60,
                        comment="edx-remote-cache heal",
                    )  # fmt: skip
                    if result.ok:
                        return "RestartMemcached"
                    log.warning("restart of memcached on %s ended %s", instance_id, result.status)
                except SsmError as exc:
                    log.warning("restart of memcached on %s failed: %s", instance_id, exc)
        elif now - restarted < patience:
            return None  # give the restart time to show in the probes
        namespace, name, uid, generation = _meta(obj)
        observer = self.a.observer(spec.region, float(spec.drift_interval_seconds))
        # Rung 2: a fresh look. Stopped or terminated behind our back? The reconcile starts / relaunches it (and
        # re-points the hosts); nothing to replace then.
        observer.invalidate(Owner(namespace, name, uid))
        state.acted = []
        with contextlib.suppress(RequeueError):  # the daemon's next round continues where this stopped
            await self.reconcile(obj, trigger="heal")
        started = [i for r in state.acted for i in r.started]
        launched = [i for r in state.acted for i in r.launched.values()]
        current = next((i for i in state.status.get("instances") or [] if i.get("id") == instance_id), None)
        if instance_id in started or (current is not None and current.get("state") in ("pending", "stopped")):
            state.healing = f"starting stopped instance {instance_id}"
            await self._record_heal(obj, state, "StartInstance", instance_id, state.healing)
            return "StartInstance"
        if launched or current is None or current.get("state") != "running":
            state.healing = f"replacing {instance_id} (it is {current.get('state') if current else 'gone'})"
            await self._record_heal(obj, state, "ReplaceInstance", instance_id, state.healing)
            return "ReplaceInstance"
        # Rung 3: running, restarted (or no agent to restart it), still failing.
        _, _, times = _progress(state.status)
        recent = [t for t in times if now - t < 3600]
        if len(recent) >= spec.healing.max_replacements_per_hour:
            message = (
                f"healing: {len(recent)} replacement(s) in the last hour reached healing.maxReplacementsPerHour "
                f"({spec.healing.max_replacements_per_hour}); {instance_id} stays unhealthy until a human looks"
            )
            state.healing = None
            state.stalled_generation = generation
            await self._publish(
                obj, state, dataclasses.replace(state.facts or Facts(generation), terminal_error=message)
            )
            self.a.events(obj, "Warning", "HealingRateLimited", message)
            return "RateLimited"
        state.healing = f"replacing {instance_id} ({endpoint} still failing)"
        state.replace.add(instance_id)
        await self._record_heal(obj, state, "ReplaceInstance", instance_id, state.healing)
        observer.invalidate(Owner(namespace, name, uid))
        with contextlib.suppress(RequeueError):
            await self.reconcile(obj, trigger="heal")
        return "ReplaceInstance"

    async def _record_heal(
        self, obj: Mapping[str, Any], state: ResourceState, action: str, instance_id: str, reason: str
    ) -> None:
        namespace, name, _, _ = _meta(obj)
        self.a.metrics.heals.labels(namespace, name, action).inc()
        self.a.events(obj, "Warning", action, reason)
        last = {"action": action, "time": _now_dt(self.a.clock).strftime("%Y-%m-%dT%H:%M:%SZ"), "reason": reason,
                "instanceId": instance_id}  # fmt: skip
        if state.facts is not None:
            facts = dataclasses.replace(state.facts, healing=state.healing)
            await self._publish(obj, state, facts, lastHeal=last)

    # ------------------------------------------------------------------------------------------ teardown

    async def teardown(self, obj: Mapping[str, Any], *, retry: int = 0) -> None:
        """Delete: revert the hosts, terminate, delete the SG. Raises RequeueError until finished."""
        state = self.state(obj)
        namespace, name, uid, _ = _meta(obj)
        try:
            spec = parse_spec(obj.get("spec"))
        except SpecError:
            return  # never acted on: nothing in AWS is ours
        owner = Owner(namespace, name, uid)
        async with state.lock:
            status = state.status or dict(obj.get("status") or {})
            # every endpoint a host may name: the last complete push, and what a partial push may have written
            known = [*(status.get("pushedEndpoints") or []), *(status.get("endpoints") or [])]
            known += [e for targets in state.host_targets.values() for e in targets]
            pushed = list(dict.fromkeys(known))
            hosts = [h["instanceId"] for h in status.get("hosts") or [] if h.get("state") != "Pending"]
            if spec.revert_hosts_on_delete and hosts and pushed and not status.get("hostsReverted"):
                results = await asyncio.to_thread(
                    revert_hosts,
                    ssm=self.a.ssm(spec.region),
                    hosts=hosts,
                    openedx=spec.openedx,
                    current_endpoints=pushed,
                    port=spec.memcached.port,
                    # each file's own local spelling (127.0.0.1:11211 in insights.yml) goes back byte for byte
                    previous={
                        h["instanceId"]: HostPushResult.from_status(h) for h in status.get("hosts") or []
                    },
                )
                failed = [r for r in results if r.state != "Configured"]
                if failed and retry < 3:
                    raise RequeueError(
                        "; ".join(f"{r.instance_id}: {r.state} {r.message}" for r in failed), 5.0
                    )
                for r in failed:  # given up after a few tries: AWS is cleaned up regardless
                    self.a.events(
                        obj,
                        "Warning",
                        "RevertFailed",
                        f"{r.instance_id}: {r.state} {r.message}; its files may still name {', '.join(pushed)}: "
                        "run `edx-remote-cache rewrite --revert` on its config files",
                    )
                for r in results:
                    if r.state == "Configured":
                        self.a.events(
                            obj, "Normal", "HostReverted", f"{r.instance_id} points at localhost again"
                        )
                state.status["hostsReverted"] = True
            observer = self.a.observer(spec.region, float(spec.drift_interval_seconds))
            clients = self.a.clients(spec.region)
            deadline = time.monotonic() + CONVERGE_BUDGET_SECONDS
            while True:
                observer.invalidate(owner)
                observed = await asyncio.to_thread(observer.observe, owner)
                plan = teardown_plan(observed=observed, owner=owner, policy=spec.deletion_policy)
                if not plan.actions:
                    break
                if _mutating(plan):
                    try:
                        await asyncio.to_thread(act, plan, clients=clients)
                    except RetryableAwsError as exc:
                        raise RequeueError(f"AWS {exc.code}: {exc.message}", 5.0) from exc
                elif time.monotonic() > deadline:
                    raise RequeueError("waiting for instances to terminate", 5.0)
                else:
                    await asyncio.sleep(REOBSERVE_DELAY_SECONDS)
            self.a.events(
                obj, "Normal", "Deleted", f"cloud resources removed (deletionPolicy {spec.deletion_policy})"
            )
        self.forget(obj)


def _steady(health: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """`status.health` as the write decision sees it: without heartbeat fields, probe figures and nulls."""
    if health is None:
        return None
    skip = {path[1] for path in HEARTBEAT_FIELDS if path[0] == "health"} | set(HEALTH_FIGURES)
    return {k: v for k, v in health.items() if v is not None and k not in skip}


def owner_key(obj: Mapping[str, Any]) -> str:
    namespace, name, _, _ = _meta(obj)
    return f"{namespace}/{name}"


__all__ = ["OWNER_TAG", "Adapters", "Reconciler", "RequeueError", "ResourceState", "is_paused", "owner_key"]
