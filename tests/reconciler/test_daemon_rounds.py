"""The per-object daemon on fakes: its probe rounds go on while a drift pass waits for the region's host check.

The batched host check waits on SSM for seconds (2 s more per host whose cache hangs). A daemon that ran the
drift pass between two probe rounds went blind for that long: in the lifecycle bench 2 hangs in 8 landed in a
pass and were reported after 6-12 s instead of 1.5 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import threading
import time
from typing import Any

import kopf
from fakes import World, cache, world
from kopf._cogs.aiokits.aioenums import FlagSetter

from edx_remote_cache.app.daemon import run_daemon
from edx_remote_cache.reconciler.reconciler import Reconciler, RequeueError
from edx_remote_cache.reconciler.retrying import RetryRecord


class SlowRegionCheck:
    """The region's host check takes until `release` (a worker thread blocked on SSM, as the real one is)."""

    def __init__(self, w: World) -> None:
        self.release = threading.Event()
        self.started = threading.Event()
        self.checks = 0
        w.drift.due = lambda: not self.release.is_set()  # type: ignore[method-assign]
        w.drift.refresh = self.refresh  # type: ignore[method-assign]

    def refresh(self) -> None:
        self.checks += 1
        self.started.set()
        self.release.wait(20)


def drift_passes(w: World) -> float:
    return sum(
        w.adapters.metrics.reconciles.labels("drift", outcome)._value.get()
        for outcome in ("ok", "requeue", "error")
    )


def healthy_states(w: World) -> list[str]:
    """CacheHealthy's status in every status patch that carried conditions, in order."""
    out = []
    for patch in w.status.patches:
        for c in patch.get("conditions") or []:
            if c["type"] == "CacheHealthy":
                out.append(c["status"])
    return out


async def test_a_cache_that_dies_during_a_drift_pass_is_reported_before_the_region_check_returns() -> None:
    w = world()
    reconciler, obj = Reconciler(w.adapters), cache()
    for _ in range(5):
        with contextlib.suppress(RequeueError):
            await reconciler.reconcile(obj)
            break
    endpoint = w.status.current["endpoints"][0]
    body = kopf.Body({**copy.deepcopy(obj), "status": copy.deepcopy(w.status.current)})

    slow = SlowRegionCheck(w)
    due = iter([True])
    reconciler.drift_due = lambda o, last: next(due, False)  # type: ignore[method-assign]
    setter: FlagSetter[Any] = FlagSetter()
    daemon = asyncio.create_task(run_daemon(body, reconciler, setter.async_waiter))
    try:
        deadline = time.monotonic() + 5
        while not slow.started.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert slow.started.is_set(), "the drift pass started the region's host check"

        w.memcached.down[endpoint] = "refused"
        deadline = time.monotonic() + 5
        while "False" not in healthy_states(w) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert "False" in healthy_states(w), "probe rounds went on while the region check was out"
        assert not slow.release.is_set() and slow.checks == 1, "... and it was still out"
        assert drift_passes(w) == 0, "the pass waits for the check"

        slow.release.set()
        deadline = time.monotonic() + 5
        while drift_passes(w) == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert drift_passes(w) == 1, "the pass runs once the check is in"
    finally:
        slow.release.set()
        setter.set()
        await asyncio.wait_for(daemon, 10)
    assert slow.checks == 1, "one region check for the pass (the pass itself did not wait for a second one)"


async def test_the_host_check_is_asked_for_only_by_an_object_whose_pass_would_run() -> None:
    """Not while it backs off from an AWS error (an SSM call each interval would feed the storm it waits out),
    and not before it configured a host (nothing of its own to check)."""
    w = world()
    reconciler, obj = Reconciler(w.adapters), cache()
    slow = SlowRegionCheck(w)
    slow.release.set()
    slow.started.clear()
    w.drift.due = lambda: True  # type: ignore[method-assign]
    state = reconciler.state(obj)
    for _ in range(5):
        with contextlib.suppress(RequeueError):
            await reconciler.reconcile(obj)
            break
    slow.checks = 0

    state.retry = RetryRecord("AWS", "RequestLimitExceeded", "slow down", "DescribeInstances", 3,
                              w.clock() + 30, generation=1)  # fmt: skip
    await reconciler.refresh_host_checks(obj)
    assert slow.checks == 0, "backing off: no host check"

    state.retry = None
    await reconciler.refresh_host_checks(obj)
    assert slow.checks == 1

    fresh = cache("fresh", uid="uid-2")
    reconciler.state(fresh).spec = state.spec
    await reconciler.refresh_host_checks(fresh)
    assert slow.checks == 1, "no configured host yet: nothing to check"
