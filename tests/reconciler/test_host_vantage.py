"""The app hosts' vantage on fakes: what each Open edX host's own check of its cache endpoints says lands in
`status.hosts[].cacheReach`, turns CacheHealthy False when a host cannot reach the cache (whatever the operator
sees), and stops the healing ladder when the operator's probes fail but the hosts still reach the cache."""

from __future__ import annotations

import contextlib

import pytest
from fakes import EDX_HOSTS, World, cache, world
from test_healing_ladder import fail_probes, ready
from test_second_opinion import destructive, run_for

from edx_remote_cache.domain.hosts.drift import HostReach
from edx_remote_cache.reconciler.reconciler import Reconciler, RequeueError


async def drift_pass(reconciler: Reconciler, obj: dict) -> None:
    with contextlib.suppress(RequeueError):
        await reconciler.reconcile(obj, trigger="drift")


def seen_from_hosts(w: World, endpoint: str, *, reachable: bool, error: str = "") -> None:
    w.drift.seen = {h: (HostReach(endpoint, reachable, 3 if reachable else 2001, error),) for h in EDX_HOSTS}


async def test_every_configured_host_checks_the_endpoints_and_reports_them_in_status() -> None:
    w, reconciler, obj, _, endpoint = await ready()
    await drift_pass(reconciler, obj)
    assert w.drift.asked == {h: (endpoint,) for h in EDX_HOSTS}, "each host checks its object's endpoints"
    seen_from_hosts(w, endpoint, reachable=True)
    await drift_pass(reconciler, obj)
    hosts = w.status.current["hosts"]
    assert [h["cacheReach"] for h in hosts] == [
        [{"endpoint": endpoint, "reachable": True, "latencyMs": 3}]
    ] * 2
    assert w.status.condition("CacheHealthy")["status"] == "True"


async def test_a_new_cache_is_not_judged_by_a_hosts_check_sent_before_it_first_answered() -> None:
    # a replacement, or a private IP reused from a deleted cache: the last batched check can be older than it
    w, reconciler, obj, _, endpoint = await ready()
    before = w.clock() - 1  # ready() probed the cache: it answered at the clock's current time
    w.drift.seen = {
        h: (HostReach(endpoint, False, 2001, "Connection refused").at(before),) for h in EDX_HOSTS
    }
    await drift_pass(reconciler, obj)
    assert w.status.condition("CacheHealthy")["status"] == "True"
    assert "cacheReach" not in w.status.current["hosts"][0], "a check about something else is not reported"
    seen_from_hosts(w, endpoint, reachable=False, error="Connection refused")  # the next check, sent now
    await drift_pass(reconciler, obj)
    assert w.status.condition("CacheHealthy")["reason"] == "UnreachableFromHosts", (
        "then the hosts' view counts"
    )


async def test_a_check_that_brings_no_answer_keeps_the_last_one_and_writes_nothing() -> None:
    w, reconciler, obj, _, endpoint = await ready()
    seen_from_hosts(w, endpoint, reachable=True)
    await drift_pass(reconciler, obj)
    writes = len(w.status.patches)
    w.drift.seen = {}  # SSM slow, or the check cut short: nothing from the hosts this interval
    w.clock.advance(5)
    await drift_pass(reconciler, obj)
    seen_from_hosts(w, endpoint, reachable=True)  # then the same answer, at another latency
    w.drift.seen = {h: (HostReach(endpoint, True, 7),) for h in EDX_HOSTS}
    w.clock.advance(5)
    await drift_pass(reconciler, obj)
    assert len(w.status.patches) == writes, "a steady cache's status is not rewritten"
    assert [h["cacheReach"] for h in w.status.current["hosts"]] == [
        [{"endpoint": endpoint, "reachable": True, "latencyMs": 3}]
    ] * 2


async def test_a_restarted_operator_reports_the_hosts_answers_it_had_without_a_write() -> None:
    w, reconciler, obj, _, endpoint = await ready()
    seen_from_hosts(w, endpoint, reachable=True)
    await drift_pass(reconciler, obj)
    await reconciler.probe_once(obj)
    status = dict(w.status.current)
    w.clock.advance(20)  # no heartbeat due yet
    writes = len(w.status.patches)
    w.drift.seen = {}  # the new process's checker has not checked yet
    restarted = Reconciler(w.adapters)
    view = {**obj, "status": status}
    await drift_pass(restarted, view)  # kopf's resume pass
    await restarted.probe_once(view)
    w.drift.seen = {h: (HostReach(endpoint, True, 9),) for h in EDX_HOSTS}  # its first check
    w.clock.advance(5)
    await drift_pass(restarted, view)
    # at most the heartbeat a new process owes (tests/reconciler/test_restart.py), and never without the answer
    assert len(w.status.patches) - writes <= 1, w.status.patches[writes:]
    assert all(p["hosts"] == status["hosts"] for p in w.status.patches[writes:]), "cacheReach kept as it was"
    assert w.status.condition("Ready")["status"] == "True"


async def test_a_host_that_cannot_reach_the_cache_makes_it_unhealthy_though_the_operator_reaches_it() -> None:
    w, reconciler, obj, _, endpoint = await ready()
    seen_from_hosts(w, endpoint, reachable=False, error="no answer within 2s")
    await drift_pass(reconciler, obj)
    cond = w.status.condition("CacheHealthy")
    assert (cond["status"], cond["reason"]) == ("False", "UnreachableFromHosts")
    assert EDX_HOSTS[0] in cond["message"] and "no answer within 2s" in cond["message"]
    assert w.status.condition("Ready")["status"] == "False"
    assert w.status.current["hosts"][0]["cacheReach"][0]["error"] == "no answer within 2s"
    seen_from_hosts(w, endpoint, reachable=True)
    await drift_pass(reconciler, obj)
    assert w.status.condition("CacheHealthy")["status"] == "True", "it recovers with the hosts' next answer"


async def test_operator_probes_failing_while_the_hosts_reach_the_cache_is_not_healed() -> None:
    w, reconciler, obj, instance_id, endpoint = await ready()
    w.ssm.ping[instance_id] = "ConnectionLost"  # the cache host cannot be asked: only the app hosts can tell
    before = len(destructive(w))
    await fail_probes(w, reconciler, obj, endpoint)
    w.clock.advance(1)
    seen_from_hosts(w, endpoint, reachable=True)  # a check sent after the operator's probes began failing
    await drift_pass(reconciler, obj)
    await run_for(w, reconciler, [obj], seconds=60)
    assert destructive(w)[before:] == [], "no restart, no replacement on the operator's view alone"
    cond = w.status.condition("CacheHealthy")
    assert (cond["status"], cond["reason"]) == ("Unknown", "ProbePathBlocked")
    assert "the Open edX hosts reach it" in cond["message"]
    assert w.status.condition("Ready")["status"] == "True", "the site is served: Ready follows the hosts"


async def test_a_hosts_answer_from_before_the_failure_does_not_hold_healing_back() -> None:
    w, reconciler, obj, instance_id, endpoint = await ready()
    seen_from_hosts(w, endpoint, reachable=True)
    await drift_pass(reconciler, obj)  # the hosts reached it; then memcached dies
    w.clock.advance(1)
    await fail_probes(w, reconciler, obj, endpoint)
    assert await reconciler.heal(obj) == "RestartMemcached", "an answer older than the failure says nothing"
    assert ("ssm", instance_id, "systemctl restart memcached") in w.journal


async def test_when_both_vantages_fail_the_operators_figures_come_first() -> None:
    w, reconciler, obj, _, endpoint = await ready()
    seen_from_hosts(w, endpoint, reachable=False, error="Connection refused")
    w.memcached.down[endpoint] = "refused"
    await drift_pass(reconciler, obj)
    cond = w.status.condition("CacheHealthy")
    assert (cond["status"], cond["reason"]) == ("False", "CacheUnhealthy")
    assert cond["message"].startswith(f"{endpoint}: refused") and "from their side" in cond["message"]


async def test_a_new_cache_gets_its_hosts_at_the_first_probe_round_that_it_answers() -> None:
    w = world()
    reconciler = Reconciler(w.adapters)
    obj = cache()
    w.memcached.down["10.0.0.3:11211"] = "refused"  # the fake cloud's first instance: memcached still booting
    with pytest.raises(RequeueError) as waiting:
        await reconciler.reconcile(obj)
    assert waiting.value.delay == 1.0, "asked again at the probe interval, not after the 5 s host back-off"
    assert w.hosts.pushes == [], "never pointed at a cache that has not answered"
    hosts = w.status.current["hosts"]
    assert all(h["state"] == "Pending" and "to answer a probe" in h["message"] for h in hosts), hosts
    del w.memcached.down["10.0.0.3:11211"]
    w.clock.advance(1)
    with contextlib.suppress(RequeueError):
        await reconciler.reconcile(obj)
    assert w.hosts.pushes == [(h, ("10.0.0.3:11211",)) for h in EDX_HOSTS]
    assert w.status.condition("Ready")["status"] == "True"


async def test_hosts_on_a_cache_that_has_not_answered_since_it_restarted_keep_being_checked() -> None:
    """Pushes wait for a cache that has not answered since its instance last started; the hosts already pointing
    at it go on checking it from their side (a check that stopped would hide that the site lost its cache)."""
    w, reconciler, obj, _, endpoint = await ready()
    pushes = list(w.hosts.pushes)
    reconciler.state(obj).answered_at.clear()  # its instance started again (stop/start) ...
    w.memcached.down[endpoint] = "refused"  # ... and memcached has not answered since
    w.drift.asked = {}
    await drift_pass(reconciler, obj)
    assert w.drift.asked == {h: (endpoint,) for h in EDX_HOSTS}, "the hosts' check went on"
    assert w.hosts.pushes == pushes, "no push to a cache that has not answered"
    assert [h["state"] for h in w.status.current["hosts"]] == ["Configured"] * 2, "they keep what they have"
