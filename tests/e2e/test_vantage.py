"""No false positive can trigger a destructive action: the operator's own path blocked, or the operator
partitioned from every cache, costs 0 restarts, 0 replacements and 0 host rewrites; both recover by themselves.

Two caches, one per Open edX host, so the partition is a mass failure of the region (2 of 2 endpoints) and no
host is shared. Real failures still heal: see test_faults.py (killed, hung, stopped, terminated).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from edx_remote_cache.sandbox import Sandbox
from edx_remote_cache.sandbox.harness import OperatorProcess

from .support import (
    PAUSE_ANNOTATION,
    Cache,
    assert_hosts_untouched,
    mutations,
    operations,
    snapshot_hosts,
    wait_until,
)

pytestmark = pytest.mark.e2e

NS = "e2e-vantage"
# seconds each fault is held: many probe failure thresholds, 9 drift intervals, and longer than a second opinion
# is reused (OPINION_TTL_SECONDS, 30 s), so the ladder asks again within it; the false heals this guards against
# came at +5 s (restart), +14 s and +28 s (replacements) before the second opinion existed
WINDOW = 45


@pytest.fixture(scope="module")
def caches(sandbox: Sandbox, operator: OperatorProcess) -> Iterator[list[Cache]]:
    made = [
        Cache.create(sandbox, f"vantage-{n}", NS, hosts=[host]) for n, host in enumerate(sandbox.edx_hosts)
    ]
    for cache in made:
        cache.wait_ready(timeout=40)
    yield made
    for cache in made:
        cache.delete_and_wait(timeout=45)


def instance_of(cache: Cache) -> str:
    [iid] = [i["id"] for i in cache.wait_ready(timeout=40)["status"]["instances"] if i["state"] == "running"]
    return iid


def cache_condition(cache: Cache) -> tuple[str, str]:
    cond = cache.condition("CacheHealthy")
    return str(cond.get("status")), str(cond.get("reason"))


def hold(sandbox: Sandbox, caches: list[Cache], reason: str, seconds: float) -> None:
    """Wait for CacheHealthy=Unknown ``reason`` on every cache, then hold the fault; Ready stays True."""
    for cache in caches:
        cache.wait(
            lambda o: any(
                c["type"] == "CacheHealthy" and (c["status"], c["reason"]) == ("Unknown", reason)
                for c in (o.get("status") or {}).get("conditions") or []
            ),
            timeout=30,
            what=f"CacheHealthy=Unknown {reason}",
        )
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for cache in caches:
            assert cache_condition(cache) == ("Unknown", reason)
            assert cache.condition("Ready")["status"] == "True", "the hosts are served: Ready follows them"
        time.sleep(2)


DESTRUCTIVE_EVENTS = ("RestartMemcached", "ReplaceInstance", "StartInstance", "HostConfigured")


def destructive_events(caches: list[Cache]) -> list[int]:
    return [sum(cache.event_reasons().count(r) for r in DESTRUCTIVE_EVENTS) for cache in caches]


def assert_nothing_destructive(
    sandbox: Sandbox, caches: list[Cache], iids: list[str], since: float, wall: float, events: list[int]
) -> None:
    done = operations(mutations(sandbox, since))
    assert not {"RunInstances", "TerminateInstances", "StopInstances"} & set(done), done
    for cache, iid in zip(caches, iids, strict=True):
        assert cache.instance_ids() == [iid]
        changed = [
            c for c in sandbox.systemctl_calls(iid) if c["time"] >= wall and c["args"][0] != "is-active"
        ]
        assert not changed, f"memcached was touched: {changed}"
    assert destructive_events(caches) == events


@pytest.mark.timeout(WINDOW + 90)
def test_a_blocked_operator_path_is_reported_and_never_healed(sandbox: Sandbox, caches: list[Cache]) -> None:
    cache = caches[0]
    iid = instance_of(cache)
    hosts = snapshot_hosts(sandbox)
    since, wall, events = sandbox.calls.now(), time.time(), destructive_events([cache])
    sandbox.faults.block_path("operator", iid)
    try:
        hold(sandbox, [cache], "ProbePathBlocked", WINDOW)
        message = cache.condition("CacheHealthy")["message"]
        assert sandbox.network.operator_ip in message and "probeSource" in message, message
        wait_until(
            lambda: "ProbePathBlocked" in cache.event_reasons(), timeout=5, what="ProbePathBlocked event"
        )  # posted beside the status
    finally:
        sandbox.faults.unblock_path("operator", iid)
    cache.wait(
        lambda o: cache_condition(cache) == ("True", "CacheHealthy"), timeout=20, what="CacheHealthy again"
    )
    assert_nothing_destructive(sandbox, [cache], [iid], since, wall, events)
    assert_hosts_untouched(sandbox, hosts)


@pytest.mark.timeout(WINDOW + 90)
def test_a_partitioned_operator_suspends_healing_and_destroys_nothing(
    sandbox: Sandbox, caches: list[Cache]
) -> None:
    iids = [instance_of(c) for c in caches]
    hosts = snapshot_hosts(sandbox)
    since, wall, events = sandbox.calls.now(), time.time(), destructive_events(caches)
    sandbox.faults.partition_operator()
    try:
        hold(sandbox, caches, "HealingSuspended", WINDOW)
        assert "2 of 2 endpoints" in caches[0].condition("CacheHealthy")["message"]
    finally:
        sandbox.faults.partition_operator(False)
    for cache in caches:
        cache.wait(
            lambda o, c=cache: cache_condition(c) == ("True", "CacheHealthy"), timeout=30, what="recovered"
        )
    assert_nothing_destructive(sandbox, caches, iids, since, wall, events)
    assert_hosts_untouched(sandbox, hosts)


@pytest.mark.timeout(90)
def test_a_revoked_app_rule_is_reported_from_the_hosts_vantage_within_a_drift_interval(
    sandbox: Sandbox, caches: list[Cache]
) -> None:
    """The Open edX hosts lose the cache while the operator still reaches it: only their own check can tell.

    The object is paused so the operator does not put the rule back at its next drift pass (it would, within
    the same interval); what is measured is how soon the hosts' vantage reports the cut.
    """
    cache = caches[0]
    obj = cache.wait_ready(timeout=40)
    group, port = obj["status"]["securityGroupId"], 11211
    drift = float(obj["spec"].get("driftIntervalSeconds") or 5)
    iid = instance_of(cache)
    since, events = sandbox.calls.now(), destructive_events([cache])
    cache.annotate({PAUSE_ANNOTATION: "true"})
    try:
        cache.wait(lambda o: (o.get("status") or {}).get("phase") == "Paused", timeout=15, what="paused")
        started = time.monotonic()
        sandbox.faults.revoke_rule(group, port, source_group_id=sandbox.edx_security_group_id)
        cache.wait(
            lambda o: cache_condition_of(o) == ("False", "UnreachableFromHosts"),
            timeout=drift + 15,
            what="CacheHealthy=False UnreachableFromHosts",
        )
        took = time.monotonic() - started
        print(f"detect_app_unreachable_seconds={took:.1f} (drift interval {drift:.0f} s)")
        assert took <= drift + 5, f"reported after {took:.1f}s, more than the drift interval + 5 s"
        [entry] = cache.status["hosts"]
        [seen] = entry["cacheReach"]
        assert seen["reachable"] is False and seen["error"], seen
    finally:
        cache.annotate({PAUSE_ANNOTATION: None})
    cache.wait(lambda o: cache_condition_of(o) == ("True", "CacheHealthy"), timeout=30, what="healthy again")
    wait_until(
        lambda: "DriftCorrected" in cache.event_reasons(), timeout=5, what="DriftCorrected event"
    )  # posted beside the status
    assert not {"RunInstances", "TerminateInstances"} & set(operations(mutations(sandbox, since)))
    assert instance_of(cache) == iid and destructive_events([cache]) == events


def cache_condition_of(obj: dict) -> tuple[str, str]:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c["type"] == "CacheHealthy":
            return str(c["status"]), str(c["reason"])
    return "", ""
