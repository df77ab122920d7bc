"""The app hosts' vantage on fakes: what each Open edX host's own check of its cache endpoints says lands in
`status.hosts[].cacheReach`, turns CacheHealthy False when a host cannot reach the cache (whatever the operator
sees), and stops the healing ladder when the operator's probes fail but the hosts still reach the cache."""

from __future__ import annotations

import contextlib

from fakes import EDX_HOSTS, World
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


# past the window in which a host's check may predate the cache (drift interval 5 s)
SETTLED = 1.5 * 5 + 5 + 1


async def test_a_new_cache_is_not_judged_by_a_hosts_check_that_may_predate_it() -> None:
    # a replacement, or a private IP reused from a deleted cache: the last batched check can be older than it
    w, reconciler, obj, _, endpoint = await ready()
    seen_from_hosts(w, endpoint, reachable=False, error="Connection refused")
    await drift_pass(reconciler, obj)
    assert w.status.condition("CacheHealthy")["status"] == "True"
    w.clock.advance(SETTLED)
    await drift_pass(reconciler, obj)
    assert w.status.condition("CacheHealthy")["reason"] == "UnreachableFromHosts", (
        "then the hosts' view counts"
    )


async def test_a_host_that_cannot_reach_the_cache_makes_it_unhealthy_though_the_operator_reaches_it() -> None:
    w, reconciler, obj, _, endpoint = await ready()
    w.clock.advance(SETTLED)
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
    seen_from_hosts(w, endpoint, reachable=True)
    await drift_pass(reconciler, obj)
    before = len(destructive(w))
    await fail_probes(w, reconciler, obj, endpoint)
    await run_for(w, reconciler, [obj], seconds=60)
    assert destructive(w)[before:] == [], "no restart, no replacement on the operator's view alone"
    cond = w.status.condition("CacheHealthy")
    assert (cond["status"], cond["reason"]) == ("Unknown", "ProbePathBlocked")
    assert "the Open edX hosts reach it" in cond["message"]
    assert w.status.condition("Ready")["status"] == "True", "the site is served: Ready follows the hosts"


async def test_when_both_vantages_fail_the_operators_figures_come_first() -> None:
    w, reconciler, obj, _, endpoint = await ready()
    w.clock.advance(SETTLED)
    seen_from_hosts(w, endpoint, reachable=False, error="Connection refused")
    w.memcached.down[endpoint] = "refused"
    await drift_pass(reconciler, obj)
    cond = w.status.condition("CacheHealthy")
    assert (cond["status"], cond["reason"]) == ("False", "CacheUnhealthy")
    assert cond["message"].startswith(f"{endpoint}: refused") and "from their side" in cond["message"]
