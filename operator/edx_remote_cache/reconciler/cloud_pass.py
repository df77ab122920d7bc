"""The cloud pass: observe the region, diff against the spec (pure), act, re-observe while AWS catches up.

The launch record (`status.progress`) is written before every RunInstances so that a crash right after the
call reuses the same ClientToken instead of launching twice.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

from edx_remote_cache.adapters.aws import RetryableAwsError, TerminalAwsError
from edx_remote_cache.domain.cloud.actions import (
    ActResult,
    AuthorizeIngress,
    CreateSecurityGroup,
    Plan,
    RevokeIngress,
    RunInstance,
    WaitFor,
    prune_launches,
    record_launches,
    record_replacements,
)
from edx_remote_cache.domain.cloud.desired import desired_from_spec
from edx_remote_cache.domain.cloud.diff import diff, endpoints
from edx_remote_cache.domain.cloud.model import Owner
from edx_remote_cache.domain.cloud.normalize import edx_security_groups
from edx_remote_cache.domain.conditions import Facts
from edx_remote_cache.domain.spec import EdxRemoteCacheSpec, instance_architecture
from edx_remote_cache.reconciler.retrying import unmade_launches
from edx_remote_cache.reconciler.state import (
    Adapters,
    CloudOutcome,
    ObjectRef,
    Progress,
    ResourceState,
    progress_status,
)
from edx_remote_cache.reconciler.status import StatusPublisher

CONVERGE_BUDGET_SECONDS = 20.0  # how long one pass keeps re-observing while AWS catches up before requeueing
REOBSERVE_DELAY_SECONDS = 0.2
MAX_ACT_ROUNDS = 8


class CloudPass:
    """Instances and the security group of one object, converged within CONVERGE_BUDGET_SECONDS."""

    def __init__(self, adapters: Adapters, status: StatusPublisher) -> None:
        self.adapters = adapters
        self.status = status

    async def run(
        self,
        obj: Mapping[str, Any],
        state: ResourceState,
        spec: EdxRemoteCacheSpec,
        owner: Owner,
        *,
        mutate: bool,
    ) -> CloudOutcome:
        adapters = self.adapters
        region = spec.region
        clients = adapters.clients(region)
        lookups = adapters.lookups(region)
        observer = adapters.observer(region, float(spec.drift_interval_seconds))
        image = await asyncio.to_thread(
            lookups.image,
            ami=spec.instance.ami,
            ami_parameter=spec.instance.ami_parameter,
            architecture=instance_architecture(spec.instance.instance_type),
        )
        vpc_id = await asyncio.to_thread(lookups.vpc_id, spec.instance.subnet_id)
        edx = await asyncio.to_thread(  # one batched read per region per drift interval, shared by all resources
            adapters.edx_hosts(region, float(spec.drift_interval_seconds)).hosts,
            instance_ids=spec.openedx.hosts,
            selector=spec.openedx.host_selector or None,
        )
        # rollout order: spec.openedx.hosts as listed (a canary first), then hosts matched by the selector
        listed = {iid: n for n, iid in enumerate(spec.openedx.hosts)}
        edx_ids = sorted(
            (h.instance_id for h in edx if h.state in ("running", "pending", "stopped")),
            key=lambda iid: (listed.get(iid, len(listed)), iid),
        )
        progress = Progress.of(state.status)
        launches, replacements, times = progress.launches, progress.replacements, progress.times
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
            )
            observed = await asyncio.to_thread(
                observer.observe, owner, adopt_instance_ids=tuple(spec.instance.adopt_instance_ids)
            )
            plan = diff(
                desired=desired,
                observed=observed,
                now=adapters.clock(),
                launches=launches,
                replace=frozenset(state.replace),
            )
            todo = plan.mutating
            if not mutate or not todo:
                if todo or not plan.of_type(WaitFor) or time.monotonic() > deadline:
                    break
                await asyncio.sleep(REOBSERVE_DELAY_SECONDS)  # AWS is catching up: re-observe, do not act
                observer.invalidate(owner)
                continue
            tokens = [a.client_token for a in todo if isinstance(a, RunInstance)]
            if tokens:  # record the launch tokens before the call: a crash right after never launches twice
                launches = {**launches, **{t: launches.get(t, adapters.clock()) for t in tokens}}
                await self.save_progress(obj, state, launches, replacements, times)
            try:
                done = await asyncio.to_thread(
                    adapters.act, plan, clients=clients, ssm_runner=adapters.ssm(region)
                )
            except (TerminalAwsError, RetryableAwsError) as exc:
                partial = exc.partial
                unmade = unmade_launches(tokens, exc, partial)  # refused or never called: nothing launched
                launches = {t: at for t, at in launches.items() if t not in unmade}
                if partial is not None:
                    launches = record_launches(launches, partial, now=adapters.clock())
                    replacements = record_replacements(replacements, partial)
                await self.save_progress(obj, state, launches, replacements, times)
                observer.invalidate(owner)
                raise
            result = done
            state.acted.append(done)
            launches = prune_launches(
                record_launches(launches, done, now=adapters.clock()),
                owner_uid=owner.uid,
                replacements=record_replacements(replacements, done),
            )
            replaced = _replacement_count(done.generations)
            if replaced:  # first launches (and scale-ups) are not replacements: no cold cache, no rate limit
                times = [*times, *([adapters.clock()] * replaced)]
            if done.terminated:
                state.replace -= set(done.terminated)
            replacements = record_replacements(replacements, done)
            self._announce(obj, plan)
            observer.invalidate(owner)
            if done.ssm_unavailable:
                state.replace |= set(done.ssm_unavailable)
            await self.save_progress(obj, state, launches, replacements, times)
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
        kinds = [type(a).__name__ for a in plan.mutating]
        if not kinds:
            return
        drift = bool(plan.of_type(RevokeIngress) or plan.of_type(AuthorizeIngress)) and not plan.of_type(
            CreateSecurityGroup
        )
        reason = "DriftCorrected" if drift else "CloudUpdated"
        self.adapters.events(obj, "Normal", reason, ", ".join(dict.fromkeys(kinds)))

    async def save_progress(
        self,
        obj: Mapping[str, Any],
        state: ResourceState,
        launches: Mapping[str, float],
        replacements: Mapping[int, int],
        times: list[float],
    ) -> None:
        progress = progress_status(launches, replacements, times)
        if state.status.get("progress") == progress:
            return
        if state.status.get("conditions"):
            # only the launch record: the conditions (and observedGeneration) are for what was last
            # fully reconciled, and must not claim a generation that is still being applied
            new = {**state.status, "progress": progress}
        else:  # a brand-new object's first launch: say what is going on, not just the launch record
            generation = ObjectRef.of(obj).generation
            new = self.status.build(state, Facts(generation=generation, converging=True), progress=progress)
        await self.status.write(obj, state, new, force=True)


def _replacement_count(generations: Mapping[int, int]) -> int:
    """Launches that replaced an instance (generation > 0); a replica's first launch (generation 0) is not one."""
    return sum(1 for generation in generations.values() if generation > 0)
