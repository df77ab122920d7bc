"""The claim step, between the cloud pass and the host pass: push only the hosts this object owns, revert the ones
it let go of, and say which ones another object manages (domain/claims.py decides; this step acts).

A host another (older) object manages is never touched: `status.hosts[]` says Claimed, HostsConfigured=False with
reason HostClaimed names the owner, and a delete of this object leaves it alone. A host this object configured and
no longer owns (removed from the spec, no longer matched by the selector, or named by an older object) is reverted
to its local memcached the way a delete would, before anyone else pushes it.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from edx_remote_cache.adapters.host_push import HostPushResult
from edx_remote_cache.domain.claims import Claim, ClaimPlan, held_hosts, plan_claims
from edx_remote_cache.domain.spec import EdxRemoteCacheSpec
from edx_remote_cache.reconciler.state import Adapters, CloudOutcome, ResourceState


def known_endpoints(state: ResourceState, status: Mapping[str, Any]) -> list[str]:
    """Every endpoint this object may have written on a host: the last complete push, the current endpoints
    and what a partial push may have written (a revert replaces exactly these with the local memcached)."""
    known = [*(status.get("pushedEndpoints") or []), *(status.get("endpoints") or [])]
    known += [e for targets in state.host_targets.values() for e in targets]
    return list(dict.fromkeys(known))


@dataclasses.dataclass(frozen=True)
class ClaimOutcome:
    """This pass's claim plan and what its reverts did; `cloud` is what the host pass pushes."""

    plan: ClaimPlan
    cloud: CloudOutcome
    wanted: tuple[str, ...]
    still_held: Mapping[str, HostPushResult]  # released hosts whose revert failed (or is paused): still ours

    def merge(self, pushed: Sequence[HostPushResult]) -> list[HostPushResult]:
        """status.hosts[] in rollout order: pushed, waiting, claimed, then hosts still held after a release."""
        by_id = {r.instance_id: r for r in pushed}
        out: list[HostPushResult] = []
        for host in self.wanted:
            if host in by_id and by_id[host].state == "Claimed":  # taken over, not pushed yet this pass
                out.append(HostPushResult(host, "Pending", message="taken over; to be configured"))
            elif host in by_id:
                out.append(by_id[host])
            elif host in self.still_held:
                out.append(self.still_held[host])
            elif host in self.plan.waiting:
                holder = self.plan.waiting[host].key
                out.append(HostPushResult(host, "Pending", message=f"waiting for {holder} to revert it"))
            elif host in self.plan.claimed:
                owner = self.plan.claimed[host].key
                out.append(HostPushResult(host, "Claimed", message=f"managed by {owner} (created earlier)"))
        out += [r for h, r in self.still_held.items() if h not in self.wanted]
        return out


class ClaimStep:
    """Resolves this object's hosts against every other object's claims, and reverts what it let go of."""

    def __init__(self, adapters: Adapters) -> None:
        self.adapters = adapters

    async def settle(
        self,
        obj: Mapping[str, Any],
        state: ResourceState,
        spec: EdxRemoteCacheSpec,
        cloud: CloudOutcome,
        *,
        mutate: bool,
    ) -> ClaimOutcome:
        held = held_hosts(state.status)
        wanted = tuple(dict.fromkeys(cloud.edx_hosts))
        others = {h: self.adapters.claims.claimants(h) for h in dict.fromkeys([*wanted, *held])}
        plan = plan_claims(me=Claim.of(obj), wanted=wanted, held=held, others=others)
        previous = {h["instanceId"]: HostPushResult.from_status(h) for h in state.status.get("hosts") or []}
        for host, owner in plan.claimed.items():
            if (
                host not in plan.release
                and previous.get(host, HostPushResult(host, "Pending")).state != "Claimed"
            ):
                self.adapters.events(obj, "Warning", "HostClaimed", f"{host}: managed by {owner.key} "
                                     "(created earlier); this object does not touch it")  # fmt: skip
        still_held: dict[str, HostPushResult] = {}
        if plan.release and not mutate:
            still_held = {h: previous[h] for h in plan.release if h in previous}
        elif plan.release:
            still_held = await self._release(obj, state, spec, plan, wanted, previous)
        return ClaimOutcome(plan, dataclasses.replace(cloud, edx_hosts=list(plan.mine)), wanted, still_held)

    async def _release(
        self,
        obj: Mapping[str, Any],
        state: ResourceState,
        spec: EdxRemoteCacheSpec,
        plan: ClaimPlan,
        wanted: Sequence[str],
        previous: Mapping[str, HostPushResult],
    ) -> dict[str, HostPushResult]:
        """Revert the hosts this object let go of; returns the ones whose revert failed (still held)."""
        results = await asyncio.to_thread(
            self.adapters.revert_hosts,
            ssm=self.adapters.ssm(spec.region),
            hosts=list(plan.release),
            openedx=spec.openedx,
            current_endpoints=known_endpoints(state, state.status),
            port=spec.memcached.port,
            previous={h: previous[h] for h in plan.release if h in previous},
        )
        failed: dict[str, HostPushResult] = {}
        for r in results:
            why = plan.reason(r.instance_id, wanted)
            if r.state == "Configured":
                self.adapters.events(
                    obj, "Normal", "HostReleased", f"{r.instance_id} points at localhost again: {why}"
                )
                state.host_targets.pop(r.instance_id, None)
                state.host_attempts.pop(r.instance_id, None)
                continue
            before = previous.get(r.instance_id)
            message = f"revert failed ({why}): {r.message}"
            if before is None or before.message != message:
                self.adapters.events(obj, "Warning", "RevertFailed", f"{r.instance_id}: {message}")
            failed[r.instance_id] = dataclasses.replace(
                r, message=message, local_endpoints=before.local_endpoints if before else r.local_endpoints
            )
        return failed
