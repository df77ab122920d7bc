"""The cloud pass: observe the region, diff against the spec (pure), act, re-observe while AWS catches up.

The launch record (`status.progress`) is written before every RunInstances so that a crash right after the
call reuses the same ClientToken instead of launching twice.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from edx_remote_cache.adapters.aws import EdxHostDirectory, RetryableAwsError, TerminalAwsError
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
from edx_remote_cache.domain.cloud.model import EdxHost, ObservedCloud, Owner
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
# While AWS catches up (an instance it launched but does not list yet), the object's EC2 read is repeated at
# most once a second: at 0.2 s, one waiting object cost ~8.5 Describe calls a second for minutes.
REOBSERVE_DELAY_SECONDS = 1.0
MAX_ACT_ROUNDS = 8
# Open edX host states worth pushing to (a stopped host gets its files; its services start with it)
LIVE_HOST_STATES = ("running", "pending", "stopped")
GONE_HOST_STATES = ("shutting-down", "terminated")


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
        directory = adapters.edx_hosts(region, float(spec.drift_interval_seconds))
        edx = await asyncio.to_thread(  # one batched read per region per drift interval, shared by all resources
            directory.hosts,
            instance_ids=spec.openedx.hosts,
            selector=spec.openedx.host_selector or None,
        )
        await self._account_for_named_hosts(obj, state, spec, directory, edx)
        # rollout order: spec.openedx.hosts as listed (a canary first), then hosts matched by the selector
        listed = {iid: n for n, iid in enumerate(spec.openedx.hosts)}
        edx_ids = sorted(
            (h.instance_id for h in edx if h.state in LIVE_HOST_STATES),
            key=lambda iid: (listed.get(iid, len(listed)), iid),
        )
        progress = Progress.of(state.status)
        launches, replacements, times = progress.launches, progress.replacements, progress.times
        confirmed = set(launches if progress.confirmed is None else progress.confirmed)
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
                probe_sources=adapters.probe_sources,
            )
            observed = await asyncio.to_thread(
                observer.observe, owner, adopt_instance_ids=tuple(spec.instance.adopt_instance_ids)
            )
            plan = diff(
                desired=desired,
                observed=observed,
                now=adapters.clock(),
                # a token AWS never answered for is launched again at once (same token: never twice)
                launches={t: at for t, at in launches.items() if t in confirmed},
                replace=frozenset(state.replace),
                answered=frozenset(remember_answers(state, observed, spec.memcached.port)),
                in_use=in_use(state, observed, edx_ids, spec.memcached.port),
            )
            todo = plan.mutating
            # an answer comes from the probes, not from EC2: re-observing would not bring it sooner
            catching_up = [w for w in plan.of_type(WaitFor) if w.until != "answered"]
            if not mutate or not todo:
                if todo or not catching_up or time.monotonic() + REOBSERVE_DELAY_SECONDS > deadline:
                    break  # the next pass starts from this read: no extra one
                await asyncio.sleep(REOBSERVE_DELAY_SECONDS)  # AWS is catching up: re-observe, do not act
                observer.invalidate(owner)
                continue
            tokens = [a.client_token for a in todo if isinstance(a, RunInstance)]
            if tokens:  # record the launch tokens before the call: a crash right after never launches twice
                launches = {**launches, **{t: launches.get(t, adapters.clock()) for t in tokens}}
                await self.save_progress(obj, state, launches, replacements, times, confirmed)
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
                    confirmed |= {*partial.launched, *partial.spent_tokens}
                    replacements = record_replacements(replacements, partial)
                await self.save_progress(obj, state, launches, replacements, times, confirmed)
                observer.invalidate(owner)
                raise
            result = done
            state.acted.append(done)
            confirmed |= {*done.launched, *done.spent_tokens}
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
            confirmed &= set(launches)
            await self.save_progress(obj, state, launches, replacements, times, confirmed)
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
            confirmed=frozenset(confirmed),
        )

    async def _account_for_named_hosts(
        self,
        obj: Mapping[str, Any],
        state: ResourceState,
        spec: EdxRemoteCacheSpec,
        directory: EdxHostDirectory,
        edx: Sequence[EdxHost],
    ) -> None:
        """`state.missing_hosts`: listed ids EC2 does not have, a selector matching nothing; an Event on change."""
        region = spec.region
        missing = unaccounted_hosts(spec.openedx.hosts, edx, region=region)
        if spec.openedx.host_selector:  # answered from the read above: no second DescribeInstances
            selected = await asyncio.to_thread(directory.hosts, selector=spec.openedx.host_selector)
            if all(h.state in GONE_HOST_STATES for h in selected):
                labels = ",".join(f"{k}={v}" for k, v in sorted(spec.openedx.host_selector.items()))
                missing += (f"openedx.hostSelector {labels} matches no live instance in {region}",)
        if missing != state.missing_hosts and missing:
            shown = "; ".join(missing[:10]) + (f"; and {len(missing) - 10} more" if len(missing) > 10 else "")
            self.adapters.events(obj, "Warning", "HostNotFound", f"not found in EC2: {shown}")
        state.missing_hosts = missing

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
        confirmed: Collection[str],
    ) -> None:
        progress = progress_status(launches, replacements, times, confirmed)
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


def unaccounted_hosts(listed: Sequence[str], found: Sequence[EdxHost], *, region: str) -> tuple[str, ...]:
    """Each id in `openedx.hosts` that EC2 does not know or that is gone, with why: never dropped silently."""
    states = {h.instance_id: h.state for h in found}
    out = []
    for iid in dict.fromkeys(listed):
        state = states.get(iid)
        if state is None:
            out.append(f"{iid}: no live instance in {region} (unknown id or terminated)")
        elif state in GONE_HOST_STATES:
            out.append(f"{iid}: {state}")
    return tuple(out)


def remember_answers(state: ResourceState, observed: ObservedCloud, port: int) -> set[str]:
    """The instances that answered since they last started (`state.answered_at` minus those not running now);
    `state.endpoint_instances` for the probes to credit their answers to."""
    running = {i.instance_id: i for i in observed.instances if i.state == "running"}
    # The cache host's own answer (the second opinion, when the operator's path is blocked) counts too: without
    # it a fresh install whose operator cannot reach the caches would never configure a host.
    for iid, (asked_at, opinion) in state.opinions.items():
        if opinion.answers:
            state.answered_at.setdefault(iid, asked_at)
    state.forget_not_running(running)
    state.endpoint_instances = {f"{i.private_ip}:{port}": iid for iid, i in running.items() if i.private_ip}
    return set(state.answered_at)


def in_use(state: ResourceState, observed: ObservedCloud, hosts: Sequence[str], port: int) -> frozenset[str]:
    """Instance ids a live, Configured Open edX host points at (make before break keeps them until it moves)."""
    pushed = tuple(state.status.get("pushedEndpoints") or ())
    configured = {
        h.get("instanceId") for h in state.status.get("hosts") or [] if h.get("state") == "Configured"
    }
    named = {e for h in hosts if h in configured for e in state.host_targets.get(h, pushed)}
    return frozenset(i.instance_id for i in observed.instances if f"{i.private_ip}:{port}" in named)


def _replacement_count(generations: Mapping[int, int]) -> int:
    """Launches that replaced an instance (generation > 0); a replica's first launch (generation 0) is not one."""
    return sum(1 for generation in generations.values() if generation > 0)
