"""A region or subnet change is refused in place: Stalled, no AWS call, and the cache that still serves the
site keeps being probed and reported; a delete tears down where the resources are."""

from __future__ import annotations

from typing import Any

from fakes import REGION, cache, world

from edx_remote_cache.reconciler.reconciler import Reconciler, RequeueError


async def converge(reconciler: Reconciler, obj: dict[str, Any]) -> None:
    for _ in range(4):
        try:
            await reconciler.reconcile(obj, trigger="spec")
            return
        except RequeueError:
            continue


async def test_a_region_change_stalls_without_aws_calls_and_the_running_cache_is_still_probed() -> None:
    w = world()
    regions: list[str] = []
    observer = w.adapters.observer
    w.adapters.observer = lambda region, ttl: regions.append(region) or observer(region, ttl)
    reconciler = Reconciler(w.adapters)
    await converge(reconciler, cache())
    assert w.status.current["region"] == REGION and w.status.current["subnetId"]
    [endpoint] = w.status.current["endpoints"]
    effects, regions_before = len(w.journal), len(regions)

    moved = cache(generation=2, region="eu-west-1", instance={"subnetId": "subnet-0fffffffffffffff0"})
    await converge(reconciler, moved)
    await reconciler.reconcile(moved, trigger="drift")
    stalled = w.status.condition("Stalled")
    assert stalled["status"] == "True" and stalled["reason"] == "ImmutableField", stalled
    assert "spec.region us-east-1 -> eu-west-1" in stalled["message"]
    assert (
        "spec.instance.subnetId" in stalled["message"] and "create a new EdxRemoteCache" in stalled["message"]
    )
    assert w.status.current["observedGeneration"] == 2 and w.status.current["phase"] == "Stalled"
    assert w.status.current["region"] == REGION, "the status still says where the cache runs"
    assert [e for e in w.journal[effects:] if e[0] != "status"] == [] and len(regions) == regions_before

    rounds = w.memcached.rounds
    w.memcached.down[endpoint] = "refused"
    await reconciler.probe_once(moved)
    assert w.memcached.rounds == rounds + 1, "the running cache is no longer probed"
    assert w.status.condition("CacheHealthy")["status"] == "False"
    assert await reconciler.heal(moved) is None, "healing is a change too: not while stalled"
    del w.memcached.down[endpoint]
    for _ in range(3):  # the cache answers again: the republish between passes keeps the refusal standing
        await reconciler.probe_once(moved)
        await reconciler.heal(moved)
    assert w.status.condition("CacheHealthy")["status"] == "True"
    assert w.status.condition("Stalled")["reason"] == "ImmutableField", w.status.condition("Stalled")

    await reconciler.teardown(moved)
    assert regions[-1] == REGION, "the delete went to the new region, where nothing of ours is"
    assert ("aws", "TerminateInstance") in w.journal


async def test_changing_the_region_back_is_ready_again() -> None:
    w = world()
    reconciler = Reconciler(w.adapters)
    await converge(reconciler, cache())
    await converge(reconciler, cache(generation=2, region="eu-west-1"))
    assert w.status.condition("Stalled")["status"] == "True"
    await converge(reconciler, cache(generation=3))
    assert w.status.condition("Stalled")["status"] == "False"
    assert w.status.condition("Ready")["status"] == "True"
    assert w.aws().count("RunInstance") == 1
