"""The host pass: point every Open edX host's config files at the cache endpoints, and keep them there.

Which hosts are due (new, pending, retargeted by a scale-up or a replacement, drifted, or a failed host whose
back-off is over) is decided here; the push itself (read, plan, apply, verify, roll back) is the host_push
adapter's. The host-file drift check is one batched SSM command per region per interval, shared by every object.

The rollout limits are decided here too, across passes: hosts are pushed in waves of `rollout.maxConcurrency`,
and once more than `rollout.maxErrors` hosts are in an error state (domain.conditions.ROLLOUT_ERROR_STATES,
offline agents included) the rollout halts. The halt is kept in `status.rollout` and holds every host of the
object, the failed ones too, until the spec changes or RESUME_ANNOTATION gets a new value: a later pass (or a
restarted operator) that pushed the held hosts would split the site across two caches, which is what
`maxErrors: 0` is there to prevent.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from edx_remote_cache.adapters.host_drift import HostDriftChecker
from edx_remote_cache.adapters.host_push import HostPushResult, expected_files
from edx_remote_cache.domain.conditions import ROLLOUT_ERROR_STATES, count_rollout_errors
from edx_remote_cache.domain.hosts.drift import merge_reach
from edx_remote_cache.domain.spec import EdxRemoteCacheSpec
from edx_remote_cache.reconciler.state import (
    RESUME_ANNOTATION,
    Adapters,
    CloudOutcome,
    HostAttempt,
    ObjectRef,
    ResourceState,
    RolloutHalt,
    annotation,
)
from edx_remote_cache.reconciler.status import reach_from_status

# A RolledBack / Failed / Conflict host is pushed again after a back-off that doubles from MIN to MAX, or at
# once when the spec or the endpoints change (each retry of a rollback restarts its services twice).
HOST_RETRY_MIN_SECONDS = 60.0
HOST_RETRY_MAX_SECONDS = 3600.0
HOST_RETRY_STATES = ("RolledBack", "Failed", "Conflict")


class HostPass:
    """Pushes the endpoints to the hosts that are due; returns every host's current result, in rollout order."""

    def __init__(self, adapters: Adapters) -> None:
        self.adapters = adapters
        self._host_checks: dict[int, asyncio.Future[None]] = {}  # the running region check, per checker

    async def run(
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
        generation = ObjectRef.of(obj).generation
        state.rollout = self._halt_in_force(obj, state, generation, mutate=mutate)
        if state.rollout is not None:  # nothing is pushed, drift is not re-applied: a human looks first
            return held_results(state.rollout, cloud.edx_hosts, previous)
        targets = cloud.endpoints
        complete = len(targets) == spec.instance.replicas and bool(targets)
        if not complete or not cloud.edx_hosts:
            return [previous.get(h) or HostPushResult(h, "Pending") for h in cloud.edx_hosts]
        pushed = list(state.status.get("pushedEndpoints") or [])
        due = [h for h in cloud.edx_hosts if self.host_due(state, previous.get(h), generation, targets)]
        configured = [h for h in cloud.edx_hosts if h in previous and previous[h].state == "Configured"]
        # Configured hosts whose files name other endpoints than the current ones (a scale-up, a replacement)
        retargeted = [h for h in configured if state.host_targets.get(h, tuple(pushed)) != tuple(targets)]
        settled = [h for h in configured if h not in retargeted]
        checker = self.adapters.host_drift(spec.region, float(spec.drift_interval_seconds))
        checker.expect(expected_files(previous[h] for h in settled))
        checker.expect_reach({h: tuple(targets) for h in settled})  # the app hosts' vantage, same command
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
                self.adapters.events(obj, "Warning", "HostDrift", f"{host}: {report.reason}; {then}")
        state.host_vantage = merge_reach(
            state.host_vantage if state.host_vantage is not None else reach_from_status(state.status),
            checker.vantage(settled),
            hosts=settled,
            endpoints=targets,
            answered_at=state.endpoint_answered_at(),
        )
        # A RolledBack/Failed/Conflict host is pushed again only when its back-off is over (see host_due).
        todo = [h for h in cloud.edx_hosts if h in due or h in drifted or h in retargeted]
        if not todo:
            return [previous[h] for h in cloud.edx_hosts]
        # never point the site at a cache that has not answered: hosts keep what they have (settled hosts were
        # still checked above: a cache they already use goes on being watched from their side)
        if cloud.unanswered:
            waiting = (
                f"waiting for {', '.join(cloud.unanswered)} to answer a probe before pointing hosts at it"
            )
            return [previous.get(h) or HostPushResult(h, "Pending", message=waiting) for h in cloud.edx_hosts]
        if not mutate:
            return [previous.get(h) or HostPushResult(h, "Pending") for h in cloud.edx_hosts]
        # Every endpoint this object may have written is replaced as one block by the new ordered list: a host
        # with [a] becomes [a, b] on a scale-up, [a, b] becomes [c, b] when a is replaced.
        old = [*pushed, *(state.status.get("endpoints") or [])]
        old += [e for h in todo for e in state.host_targets.get(h, ())]
        replace = list(dict.fromkeys([*old, *targets]))
        max_errors = spec.openedx.rollout.max_errors
        fresh: dict[str, HostPushResult] = {}
        wave_size = max(1, spec.openedx.rollout.max_concurrency)
        for start in range(0, len(todo), wave_size):
            results = await asyncio.to_thread(
                self.adapters.push_hosts,
                ssm=self.adapters.ssm(spec.region),
                hosts=todo[start : start + wave_size],
                openedx=spec.openedx,
                endpoints=list(targets),
                replace=replace,
                port=spec.memcached.port,
                previous=previous,
            )
            for r in results:
                fresh[r.instance_id] = self._record(
                    obj, state, r, previous.get(r.instance_id), generation, targets
                )
            queued = set(todo[start + wave_size :])  # their old results do not count: they are not done yet
            final = [fresh.get(h) or previous.get(h) for h in cloud.edx_hosts if h not in queued]
            if count_rollout_errors(r.state for r in final if r is not None) > max_errors:
                break
        merged = [fresh.get(h) or previous.get(h) or HostPushResult(h, "Pending") for h in cloud.edx_hosts]
        checker.expect(expected_files(fresh.values()))  # checked from the next batched check on
        checker.expect_reach({h: tuple(targets) for h, r in fresh.items() if r.state == "Configured"})
        if count_rollout_errors(r.state for r in merged) > max_errors:
            state.rollout = self._halt(obj, generation, max_errors, merged, todo=todo, pushed=fresh)
            return held_results(state.rollout, cloud.edx_hosts, previous | fresh)
        if all(r.state == "Configured" for r in merged):
            state.status["pushedEndpoints"] = list(targets)
        return merged

    def _halt_in_force(
        self, obj: Mapping[str, Any], state: ResourceState, generation: int, *, mutate: bool
    ) -> RolloutHalt | None:
        """The halt recorded in status, unless the spec changed since or a human resumed the rollout."""
        halt = RolloutHalt.of(state.status)
        if halt is None or halt.generation != generation:
            return None  # a new generation starts its rollout afresh
        token = annotation(obj, RESUME_ANNOTATION)
        if not mutate or not token or token == halt.resume_seen:
            return halt
        for host in halt.failed:  # retried at once, not after their back-off
            state.host_attempts.pop(host, None)
        self.adapters.events(
            obj,
            "Normal",
            "RolloutResumed",
            f"{RESUME_ANNOTATION}={token}: pushing {', '.join(halt.held)}"
            if halt.held
            else f"{RESUME_ANNOTATION}={token}: retrying {', '.join(halt.failed)}",
        )
        return None

    def _halt(
        self,
        obj: Mapping[str, Any],
        generation: int,
        max_errors: int,
        merged: Sequence[HostPushResult],
        *,
        todo: Sequence[str],
        pushed: Mapping[str, HostPushResult],
    ) -> RolloutHalt:
        """Stop the rollout: which hosts are done, which failed (and why), which are held; one Event."""
        failed = [r for r in merged if r.state in ROLLOUT_ERROR_STATES]
        # held: due this pass but not reached (a retargeted host keeps its old files), or never pushed
        held = [r.instance_id for r in merged if r.instance_id in todo and r.instance_id not in pushed]
        held += [r.instance_id for r in merged if r.state == "Pending" and r.instance_id not in held]
        done = [r.instance_id for r in merged if r.state == "Configured" and r.instance_id not in held]
        reasons = "; ".join(f"{r.instance_id}: {r.state} ({r.message})" for r in failed)
        message = (
            f"rollout halted: {len(failed)} host(s) failed, more than rollout.maxErrors={max_errors}: {reasons}; "
            + (f"held, not touched: {', '.join(held)}; " if held else "")
            + f"fix the cause, then set the annotation {RESUME_ANNOTATION} to a new value (or change the spec)"
        )
        self.adapters.events(obj, "Warning", "RolloutHalted", message)
        return RolloutHalt(
            generation=generation,
            max_errors=max_errors,
            done=tuple(done),
            failed=tuple(r.instance_id for r in failed),
            held=tuple(held),
            message=message,
            resume_seen=annotation(obj, RESUME_ANNOTATION),
        )

    def _record(
        self,
        obj: Mapping[str, Any],
        state: ResourceState,
        r: HostPushResult,
        before: HostPushResult | None,
        generation: int,
        targets: Sequence[str],
    ) -> HostPushResult:
        """Events for what changed on the host, its targets, and its back-off record."""
        if r.state == "Configured" and r.diffs:
            self.adapters.events(obj, "Normal", "HostConfigured", f"{r.instance_id}: {r.message}")
        elif r.state in ("RolledBack", "Conflict", "Failed", "Unreachable") and (
            before is None or before.state != r.state or before.message != r.message
        ):
            self.adapters.events(obj, "Warning", f"Host{r.state}", f"{r.instance_id}: {r.message}")
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
            same = last is not None and last.generation == generation and last.endpoints == tuple(targets)
            failures = last.failures + 1 if same and last is not None else 1
            state.host_attempts[r.instance_id] = HostAttempt(
                self.adapters.clock(), generation, tuple(targets), failures
            )
        else:
            state.host_attempts.pop(r.instance_id, None)
        return r

    async def refresh_region(self, spec: EdxRemoteCacheSpec) -> None:
        """The region's batched host check, when due (see :meth:`_refresh_host_drift`); holds no object state."""
        checker = self.adapters.host_drift(spec.region, float(spec.drift_interval_seconds))
        await self._refresh_host_drift(checker)

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

    def host_due(
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
        if previous is None or previous.state in ("Pending", "Unreachable", "Claimed"):  # Claimed: taken over
            return True
        if previous.state not in HOST_RETRY_STATES:
            return False
        last = state.host_attempts.get(previous.instance_id)
        if last is None or last.generation != generation or last.endpoints != tuple(targets):
            return True  # a new spec, new endpoints, or an operator restart: try once more
        drift = float(state.spec.drift_interval_seconds) if state.spec is not None else 60.0
        wait = min(HOST_RETRY_MAX_SECONDS, max(HOST_RETRY_MIN_SECONDS, 2 * drift) * 2 ** (last.failures - 1))
        return bool(self.adapters.clock() - last.time >= wait)


def held_results(
    halt: RolloutHalt, hosts: Sequence[str], previous: Mapping[str, HostPushResult]
) -> list[HostPushResult]:
    """Every host's result while the rollout is halted: its last one, a held host's as Pending saying why."""
    out = []
    for host in hosts:
        last = previous.get(host)
        if last is not None and last.state != "Pending":
            out.append(last)
            continue
        carried = last.local_endpoints if last is not None else ()
        message = "held: the rollout is halted at rollout.maxErrors (see status.rollout)"
        out.append(HostPushResult(host, "Pending", message=message, local_endpoints=carried))
    return out
