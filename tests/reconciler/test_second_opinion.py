"""Nothing destructive on the operator's view alone: the second opinion, the breaker, and Stalled-not-blind.

A blocked operator path (the cache answers on its own host) must cost 0 restarts, 0 replacements and 0 host
rewrites however long it lasts; a partition of the whole region suspends healing that no host confirmed; a real
failure that its host confirms still heals, breaker or not.
"""

from __future__ import annotations

import contextlib

from fakes import World, cache, world
from test_healing_ladder import PATIENCE, fail_probes, ready

from edx_remote_cache.reconciler.reconciler import Reconciler, RequeueError


def destructive(w: World) -> list[tuple[str, ...]]:
    """Restarts (SSM commands that change something), launches beyond the first, terminations, host pushes."""
    return [
        e
        for e in w.journal
        if e[0] == "ssm" or (e[0] == "aws" and e[1] in ("RunInstance", "TerminateInstance", "StopInstance"))
    ]


async def run_for(
    w: World, reconciler: Reconciler, objs: list[dict], seconds: float, step: float = 1.0
) -> None:
    """The daemon's loop on fake time: a probe round and a heal call per object per step."""
    for _ in range(int(seconds / step)):
        for obj in objs:
            await reconciler.probe_once(obj)
            await reconciler.heal(obj)
        w.clock.advance(step)


def gauge(w: World, metric: str, **labels: str) -> float | None:
    return w.adapters.metrics.registry.get_sample_value(metric, labels)


async def test_a_blocked_operator_path_restarts_replaces_and_rewrites_nothing() -> None:
    w, reconciler, obj, _, endpoint = await ready()
    journal_before, pushes_before = len(destructive(w)), len(w.hosts.pushes)
    w.memcached.blocked.add(endpoint)
    await run_for(w, reconciler, [obj], seconds=150)
    assert len(destructive(w)) == journal_before, destructive(w)[journal_before:]
    assert len(w.hosts.pushes) == pushes_before, "the hosts were never re-pointed"
    cond = w.status.condition("CacheHealthy")
    assert (cond["status"], cond["reason"]) == ("Unknown", "ProbePathBlocked")
    assert "10.0.200.7" in cond["message"] and "probeSource" in cond["message"]
    assert w.status.condition("Ready")["status"] == "True", (
        "the site is served: Ready follows the host's view"
    )
    assert w.reasons().count("ProbePathBlocked") == 1, "one Warning event per episode"
    assert gauge(w, "edx_remote_cache_probe_path_blocked", namespace="default", name="site") == 1
    asks = sum(1 for e in w.journal if e[0] == "ask")
    assert asks <= 150 / 30 + 1, f"the host is asked about twice a minute, not every round ({asks})"

    w.memcached.blocked.clear()
    await run_for(w, reconciler, [obj], seconds=2)
    assert w.status.condition("CacheHealthy")["status"] == "True"
    assert "ProbePathRestored" in w.reasons()
    assert gauge(w, "edx_remote_cache_probe_path_blocked", namespace="default", name="site") == 0


async def test_a_failure_the_host_confirms_is_still_restarted() -> None:
    w, reconciler, obj, instance_id, endpoint = await ready()
    await fail_probes(w, reconciler, obj, endpoint)
    assert await reconciler.heal(obj) == "RestartMemcached"
    assert ("ask", instance_id) in w.journal, "asked before restarting"
    assert "restarting memcached" in w.status.condition("Ready")["message"]


async def test_the_cache_that_really_dies_during_a_blocked_episode_is_healed() -> None:
    w, reconciler, obj, _, endpoint = await ready()
    w.memcached.blocked.add(endpoint)
    await run_for(w, reconciler, [obj], seconds=10)
    assert w.status.condition("CacheHealthy")["reason"] == "ProbePathBlocked"
    w.memcached.down[endpoint] = "refused"
    w.clock.advance(31)  # the host's last answer is stale now
    await run_for(w, reconciler, [obj], seconds=2)
    assert "RestartMemcached" in w.reasons()


async def test_an_answer_from_an_earlier_episode_never_hides_a_cache_killed_since() -> None:
    # a booting cache's first probe is refused, its host says it answers (it does by then); seconds later, well
    # within the answer's 30 s, memcached is killed: that is a new episode and the host is asked again
    w, reconciler, obj, instance_id, endpoint = await ready()
    w.memcached.blocked.add(endpoint)
    await run_for(w, reconciler, [obj], seconds=4)
    assert w.status.condition("CacheHealthy")["reason"] == "ProbePathBlocked"
    w.memcached.blocked.clear()
    await run_for(w, reconciler, [obj], seconds=2)
    assert w.status.condition("CacheHealthy")["status"] == "True"
    w.memcached.down[endpoint] = "refused"
    await run_for(w, reconciler, [obj], seconds=3)
    assert "RestartMemcached" in w.reasons(), w.status.condition("CacheHealthy")
    assert w.journal.count(("ask", instance_id)) == 2


async def two_caches() -> tuple[World, Reconciler, list[dict], list[str], list[str]]:
    w = world()
    reconciler = Reconciler(w.adapters)
    objs = [cache("site-a", uid="uid-a"), cache("site-b", uid="uid-b")]
    for obj in objs:
        for _ in range(5):
            with contextlib.suppress(RequeueError):
                await reconciler.reconcile(obj)
                break
    running = w.cloud.running()
    return w, reconciler, objs, [i.instance_id for i in running], [f"{i.private_ip}:11211" for i in running]


async def test_a_partition_with_silent_agents_suspends_healing_in_the_region() -> None:
    w, reconciler, objs, ids, endpoints = await two_caches()
    before = len(destructive(w))
    for iid, endpoint in zip(ids, endpoints, strict=True):
        w.memcached.blocked.add(endpoint)
        w.ssm.ping[iid] = "ConnectionLost"  # the second opinion cannot be had either
    await run_for(w, reconciler, objs, seconds=120)
    assert destructive(w)[before:] == [], "no restart, replacement or termination"
    cond = w.status.condition("CacheHealthy")
    assert (cond["status"], cond["reason"]) == ("Unknown", "HealingSuspended")
    assert "2 of 2 endpoints" in cond["message"]
    assert "HealingSuspended" in w.reasons()
    assert gauge(w, "edx_remote_cache_healing_suspended", region="us-east-1") == 1

    w.memcached.blocked.clear()
    w.ssm.ping.clear()
    await run_for(w, reconciler, objs, seconds=2)
    assert w.status.condition("CacheHealthy")["status"] == "True"
    assert gauge(w, "edx_remote_cache_healing_suspended", region="us-east-1") == 0, "it lifts by itself"


async def test_a_partition_whose_hosts_answer_stays_ready_and_suspended() -> None:
    w, reconciler, objs, _, endpoints = await two_caches()
    before = len(destructive(w))
    w.memcached.blocked.update(endpoints)
    await run_for(w, reconciler, objs, seconds=60)
    assert destructive(w)[before:] == []
    assert w.status.condition("CacheHealthy")["reason"] == "HealingSuspended"
    assert w.status.condition("Ready")["status"] == "True"


async def test_a_confirmed_failure_is_healed_while_the_breaker_is_tripped() -> None:
    w, reconciler, objs, ids, endpoints = await two_caches()
    w.memcached.blocked.add(endpoints[0])
    w.memcached.down[endpoints[1]] = "refused"  # its host confirms: individually confirmed
    await run_for(w, reconciler, objs, seconds=5)
    restarts = [e for e in w.journal if e[0] == "ssm"]
    assert [e[1] for e in restarts] == [ids[1]], "only the confirmed one is restarted"


async def test_stalled_by_the_replacement_limit_keeps_probing_and_leaves_stalled_by_itself() -> None:
    w, reconciler, obj, _, endpoint = await ready(healing={"maxReplacementsPerHour": 0})
    await fail_probes(w, reconciler, obj, endpoint)
    await reconciler.heal(obj)
    w.clock.advance(PATIENCE + 1)
    assert await reconciler.heal(obj) == "RateLimited"
    assert w.status.condition("Stalled")["status"] == "True"
    rounds = w.memcached.rounds
    await run_for(w, reconciler, [obj], seconds=5)
    assert w.memcached.rounds >= rounds + 5, "a stalled object is still probed"
    assert w.status.current["health"]["reachable"] is False, "and its status still reports what it sees"
    w.memcached.down.clear()
    await run_for(w, reconciler, [obj], seconds=2)
    assert w.status.condition("Stalled")["status"] == "False"
    assert w.status.condition("Ready")["status"] == "True"
    assert "Recovered" in w.reasons()


async def test_a_new_spec_lifts_the_replacement_limit_stall() -> None:
    w, reconciler, obj, _, endpoint = await ready(healing={"maxReplacementsPerHour": 0})
    await fail_probes(w, reconciler, obj, endpoint)
    await reconciler.heal(obj)
    w.clock.advance(PATIENCE + 1)
    assert await reconciler.heal(obj) == "RateLimited"
    raised = {**obj, "metadata": {**obj["metadata"], "generation": 2}}
    raised["spec"] = {**obj["spec"], "healing": {"maxReplacementsPerHour": 5}}
    with contextlib.suppress(RequeueError):
        await reconciler.reconcile(raised)
    await reconciler.probe_once(raised)
    assert await reconciler.heal(raised) == "ReplaceInstance"
    assert w.status.condition("Stalled")["status"] == "False"
