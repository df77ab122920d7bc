"""Which hosts a pass pushes: a host whose push rolled back is retried after a back-off that doubles, or at
once for a new spec generation; a configured host is left alone."""

from __future__ import annotations

import contextlib

from fakes import EDX_HOSTS, World, cache, world

from edx_remote_cache.reconciler.host_pass import HOST_RETRY_MIN_SECONDS
from edx_remote_cache.reconciler.reconciler import Reconciler, RequeueError

BAD = EDX_HOSTS[1]


async def run(reconciler: Reconciler, obj: dict, trigger: str = "drift") -> None:
    with contextlib.suppress(RequeueError):
        await reconciler.reconcile(obj, trigger=trigger)


def pushes_to(w: World, host: str) -> int:
    return sum(1 for h, _ in w.hosts.pushes if h == host)


async def test_a_rolled_back_host_waits_out_a_doubling_back_off_and_the_good_host_is_left_alone() -> None:
    w = world()
    w.hosts.fail[BAD] = "RolledBack"
    reconciler = Reconciler(w.adapters)
    obj = cache(openedx={"rollout": {"maxErrors": 1}})  # within the limit (at maxErrors 0 the rollout halts)
    for _ in range(3):
        await run(reconciler, obj, trigger="spec")
    assert pushes_to(w, BAD) == 1 and pushes_to(w, EDX_HOSTS[0]) == 1
    assert "HostRolledBack" in w.reasons()
    w.clock.advance(HOST_RETRY_MIN_SECONDS - 1)
    await run(reconciler, obj)
    assert pushes_to(w, BAD) == 1, "pushed again before its back-off ended"
    w.clock.advance(2)
    await run(reconciler, obj)
    assert pushes_to(w, BAD) == 2
    w.clock.advance(HOST_RETRY_MIN_SECONDS + 1)
    await run(reconciler, obj)
    assert pushes_to(w, BAD) == 2, "the second back-off is twice the first"
    w.clock.advance(HOST_RETRY_MIN_SECONDS)
    await run(reconciler, obj)
    assert pushes_to(w, BAD) == 3
    assert pushes_to(w, EDX_HOSTS[0]) == 1


async def test_a_new_generation_retries_a_failed_host_at_once() -> None:
    w = world()
    w.hosts.fail[BAD] = "Failed"
    reconciler = Reconciler(w.adapters)
    await run(reconciler, cache(), trigger="spec")
    assert pushes_to(w, BAD) == 1
    w.hosts.fail.clear()
    await run(reconciler, cache(generation=2, probe={"failureThreshold": 3}), trigger="spec")
    assert pushes_to(w, BAD) == 2
    assert w.status.condition("HostsConfigured")["status"] == "True"
