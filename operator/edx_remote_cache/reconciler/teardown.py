"""Teardown on delete, in this order: revert the Open edX hosts to their local memcached (each file's own
spelling, byte for byte), then terminate the cache instances, then delete the security group.

Hosts go first: the site must never point at a cache that is being terminated. A revert that keeps failing is
given up after a few tries with a RevertFailed event naming the command to run by hand; AWS is cleaned up
regardless, so a broken host never leaks instances.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

from edx_remote_cache.adapters.aws import RetryableAwsError
from edx_remote_cache.adapters.host_push import HostPushResult
from edx_remote_cache.domain.claims import held_hosts
from edx_remote_cache.domain.cloud.teardown import teardown_plan
from edx_remote_cache.domain.spec import EdxRemoteCacheSpec
from edx_remote_cache.reconciler.claims import known_endpoints
from edx_remote_cache.reconciler.cloud_pass import CONVERGE_BUDGET_SECONDS, REOBSERVE_DELAY_SECONDS
from edx_remote_cache.reconciler.state import Adapters, ObjectRef, RequeueError, ResourceState

REVERT_TRIES = 3


class Teardown:
    def __init__(self, adapters: Adapters) -> None:
        self.adapters = adapters

    async def run(
        self, obj: Mapping[str, Any], state: ResourceState, spec: EdxRemoteCacheSpec, *, retry: int
    ) -> None:
        """Raises RequeueError until finished; the caller holds the object's lock."""
        await self._revert_hosts(obj, state, spec, retry=retry)
        await self._remove_cloud(obj, spec)
        self.adapters.events(
            obj, "Normal", "Deleted", f"cloud resources removed (deletionPolicy {spec.deletion_policy})"
        )

    async def _revert_hosts(
        self, obj: Mapping[str, Any], state: ResourceState, spec: EdxRemoteCacheSpec, *, retry: int
    ) -> None:
        status = state.status or dict(obj.get("status") or {})
        pushed = known_endpoints(state, status)
        hosts = list(held_hosts(status))  # never a Claimed host: another object manages it
        if not (spec.revert_hosts_on_delete and hosts and pushed) or status.get("hostsReverted"):
            return
        results = await asyncio.to_thread(
            self.adapters.revert_hosts,
            ssm=self.adapters.ssm(spec.region),
            hosts=hosts,
            openedx=spec.openedx,
            current_endpoints=pushed,
            port=spec.memcached.port,
            # each file's own local spelling (127.0.0.1:11211 in insights.yml) goes back byte for byte
            previous={h["instanceId"]: HostPushResult.from_status(h) for h in status.get("hosts") or []},
        )
        failed = [r for r in results if r.state != "Configured"]
        if failed and retry < REVERT_TRIES:
            raise RequeueError("; ".join(f"{r.instance_id}: {r.state} {r.message}" for r in failed), 5.0)
        for r in failed:  # given up after a few tries: AWS is cleaned up regardless
            self.adapters.events(
                obj,
                "Warning",
                "RevertFailed",
                f"{r.instance_id}: {r.state} {r.message}; its files may still name {', '.join(pushed)}: "
                "run `edx-remote-cache rewrite --revert` on its config files",
            )
        for r in results:
            if r.state == "Configured":
                self.adapters.events(
                    obj, "Normal", "HostReverted", f"{r.instance_id} points at localhost again"
                )
        state.status["hostsReverted"] = True

    async def _remove_cloud(self, obj: Mapping[str, Any], spec: EdxRemoteCacheSpec) -> None:
        owner = ObjectRef.of(obj).owner
        observer = self.adapters.observer(spec.region, float(spec.drift_interval_seconds))
        clients = self.adapters.clients(spec.region)
        deadline = time.monotonic() + CONVERGE_BUDGET_SECONDS
        while True:
            observer.invalidate(owner)
            observed = await asyncio.to_thread(observer.observe, owner)
            plan = teardown_plan(observed=observed, owner=owner, policy=spec.deletion_policy)
            if not plan.actions:
                return
            if plan.mutating:
                try:
                    await asyncio.to_thread(self.adapters.act, plan, clients=clients)
                except RetryableAwsError as exc:
                    raise RequeueError(f"AWS {exc.code}: {exc.message}", 5.0) from exc
            elif time.monotonic() > deadline:
                raise RequeueError("waiting for instances to terminate", 5.0)
            else:
                await asyncio.sleep(REOBSERVE_DELAY_SECONDS)
