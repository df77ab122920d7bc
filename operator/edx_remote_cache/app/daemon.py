"""The per-object daemon: probe every probe.intervalSeconds, heal when needed, drift pass when due.

The drift pass runs beside the probe rounds, not in between them: it waits on the region's batched host check
(SSM: seconds, and 2 s more per host whose cache hangs), and a probe loop that waited with it went blind for
that long. Measured in the lifecycle bench: 2 hangs in 8 landed in a pass and were reported after 6-12 s
instead of 1.5 s, then healed after 35-65 s instead of 6 s. The pass still takes the object's lock for what it
changes (reconciler.py), and a probe round takes it to publish, so the two never write over each other.
"""

from __future__ import annotations

import asyncio
import contextlib
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
    drift: asyncio.Task[None] | None = None  # the drift pass in progress, at most one
    try:
        while not stopped:
            obj = daemon_view(body, reconciler)
            if (obj.get("metadata") or {}).get("deletionTimestamp"):
                return
            spec = reconciler.state(obj).spec
            interval = spec.probe.interval_seconds if spec else 0.5  # no spec yet: the first reconcile is due
            try:
                results = await reconciler.probe_once(obj)
                failing = [r for r in results if not r.healthy]
                if spec is not None and failing:
                    # A failing cache is re-checked at once so failureThreshold probes take ~threshold x timeout,
                    # not threshold x interval: a timeout has already cost its wait; anything else waits one timeout.
                    timed_out = all(r.error_kind == "timeout" for r in failing)
                    interval = 0.0 if timed_out else min(interval, spec.probe.timeout_seconds)
                if drift is None or drift.done() or not reconciler.in_pass(obj):
                    # the healer never acts beside this daemon's own drift pass while that pass changes things
                    # (as before the pass moved beside the rounds); the next round heals, a probe interval on
                    await reconciler.heal(obj)
                if drift is not None and drift.done():
                    if _drift_outcome(drift, obj) == "requeue" and spec is not None:
                        last_drift = time.monotonic() - spec.drift_interval_seconds + 2  # come back soon
                    drift = None
                if drift is None and spec is not None and reconciler.drift_due(obj, last_drift):
                    last_drift = time.monotonic()
                    drift = asyncio.create_task(reconciler.reconcile(obj, trigger="drift"))
            except Exception:  # the daemon must outlive any one failure; the next round retries
                log.exception("probe/heal round failed for %s", obj["metadata"].get("name"))
            await stopped.wait(interval)
    finally:
        if drift is not None:  # let it finish what it started (a pass is short once the host check is in)
            with contextlib.suppress(Exception):
                await asyncio.shield(drift)


def _drift_outcome(drift: asyncio.Task[None], obj: dict[str, Any]) -> str:
    """ "ok", "requeue" (come back soon) or "error" (logged; the next drift interval tries again)."""
    if drift.cancelled():
        return "error"
    exc = drift.exception()
    if exc is None:
        return "ok"
    if isinstance(exc, RequeueError):
        return "requeue"
    log.error("drift pass failed for %s", obj["metadata"].get("name"), exc_info=exc)
    return "error"
