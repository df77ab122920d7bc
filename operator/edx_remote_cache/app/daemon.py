"""The per-object daemon: probe every probe.intervalSeconds, heal when needed, drift pass when due.

A due drift pass first needs the region's batched host check (SSM: seconds, and 2 s more per host whose cache
hangs). The rounds go on while it is out; the pass runs in the first round after it is in, and then reads its
answers without waiting. A loop that waited for the check went blind for that long: in the lifecycle bench 2
hangs in 8 landed in a check and were reported after 6-12 s instead of 1.5 s, then healed after 35-65 s instead
of 6 s. The pass itself stays between two rounds, so the healer never acts beside it.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from typing import Any

import kopf

from edx_remote_cache.reconciler.reconciler import Reconciler, RequeueError

log = logging.getLogger(__name__)

_VIEW_METADATA = (
    "name", "namespace", "uid", "generation", "resourceVersion", "deletionTimestamp",
    "creationTimestamp",  # the oldest object owns a host several name (domain/claims.py)
)  # fmt: skip


def daemon_view(body: kopf.Body, reconciler: Reconciler) -> dict[str, Any]:
    """What one probe round needs of the object: identity, annotations (pause) and spec (healing reconciles).

    A full deep copy every round was ~6 % of the operator's CPU at 500 resources. The status is only copied
    the first time: afterwards the reconciler keeps its own (it writes it).
    """
    meta = body.get("metadata") or {}
    view: dict[str, Any] = {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": {k: meta[k] for k in _VIEW_METADATA if k in meta}
        | {"annotations": dict(meta.get("annotations") or {}), "labels": dict(meta.get("labels") or {})},
        "spec": copy.deepcopy(dict(body.get("spec") or {})),
    }
    if not reconciler.knows(view):
        view["status"] = copy.deepcopy(dict(body.get("status") or {}))
    return view


async def run_daemon(body: kopf.Body, reconciler: Reconciler, stopped: kopf.DaemonStopped) -> None:
    """Rounds until the object is deleted or the operator stops; no single failure ends the loop."""
    last_drift = time.monotonic()
    check: asyncio.Task[None] | None = None  # the region's host check a due drift pass waits for
    while not stopped:
        obj = daemon_view(body, reconciler)
        if (obj.get("metadata") or {}).get("deletionTimestamp"):
            break
        spec = reconciler.state(obj).spec
        interval = spec.probe.interval_seconds if spec else 0.5  # no spec yet: the first reconcile is due
        try:
            results = await reconciler.probe_once(obj)
            failing = [r for r in results if not r.healthy]
            if spec is not None and failing:
                # A failing cache is re-checked at once so failureThreshold probes take ~threshold x timeout, not
                # threshold x interval: a timeout has already cost its wait; anything else waits one timeout.
                timed_out = all(r.error_kind == "timeout" for r in failing)
                interval = 0.0 if timed_out else min(interval, spec.probe.timeout_seconds)
            await reconciler.heal(obj)
            if check is None and spec is not None and reconciler.drift_due(obj, last_drift):
                last_drift = time.monotonic()
                check = asyncio.create_task(reconciler.refresh_host_checks(obj))
                await asyncio.sleep(0)  # not due (another object's pass just ran it): done at once
            if check is not None and check.done():
                check, done = None, check
                if not done.cancelled() and done.exception() is not None:
                    log.warning("host check for %s failed: %s", obj["metadata"].get("name"), done.exception())
                try:  # between two rounds, as always: the healer never acts beside this pass
                    await reconciler.reconcile(obj, trigger="drift")
                except RequeueError:
                    if spec is not None:
                        last_drift = time.monotonic() - spec.drift_interval_seconds + 2  # come back soon
        except Exception:  # the daemon must outlive any one failure; the next round retries
            log.exception("probe/heal/drift round failed for %s", obj["metadata"].get("name"))
        await _pause(stopped, interval, check)
    if check is not None:
        check.cancel()  # the region's check itself is shielded: other objects' passes still get it


async def _pause(stopped: kopf.DaemonStopped, interval: float, check: asyncio.Task[None] | None) -> None:
    """Until the next round: `interval`, the daemon stopped, or the host check in (its pass is due then)."""
    if check is None or check.done():
        await stopped.wait(interval)
        return

    async def sleep() -> None:
        await stopped.wait(interval)

    sleeper = asyncio.ensure_future(sleep())
    await asyncio.wait({sleeper, check}, return_when=asyncio.FIRST_COMPLETED)
    sleeper.cancel()
