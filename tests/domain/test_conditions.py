"""Status conditions, phase and health block: what ``kubectl get/describe/wait`` tells a user."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edx_remote_cache.domain.conditions import (
    CONDITION_TYPES,
    PHASES,
    Facts,
    _strip,
    bucket_latency_ms,
    compute_conditions,
    compute_phase,
    health_status,
    status_changed,
)

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
GOOD = Facts(
    generation=3,
    instances_desired=1,
    instances_running=1,
    security_group_ready=True,
    hosts_total=1,
    hosts_configured=1,
    cache_healthy=True,
)
NEW = Facts(generation=1)
SPEC_ERROR = "spec.instanceType: 'm5.huge' is not an EC2 instance type; fix: use e.g. 't3.small'"
AWS_DENIED = "UnauthorizedOperation: You are not authorized to perform this operation."
UNREACHABLE = "i-0abc: Unreachable (agent ConnectionLost)"

# Expected conditions in CONDITION_TYPES order:
#   Ready  Reconciling  Stalled  InstanceReady  SecurityGroupReady  HostsConfigured  CacheHealthy
# as "<T|F|U>:<Reason>".
ALL_GOOD = "T:Ready F:NoPendingChanges F:NoTerminalError T:InstancesRunning T:SecurityGroupReady T:HostsConfigured T:CacheHealthy"
NOTHING_YET = "F:InstancesNotRunning U:SecurityGroupNotObserved U:AwaitingInstances U:CacheNotProbed"

TABLE: list[tuple[str, Facts, str, str]] = [
    ("all good", GOOD, "Ready", ALL_GOOD),
    (
        "brand new, nothing observed",
        NEW,
        "Pending",
        f"F:InstancesNotRunning T:Waiting F:NoTerminalError {NOTHING_YET}",
    ),
    (
        "bad spec on a running cache",
        replace(GOOD, spec_error=SPEC_ERROR),
        "Stalled",
        "F:InvalidSpec F:Stalled T:InvalidSpec T:InstancesRunning T:SecurityGroupReady T:HostsConfigured "
        "T:CacheHealthy",
    ),
    (
        "terminal AWS error at first launch",
        replace(NEW, terminal_error=AWS_DENIED, security_group_ready=True, converging=True),
        "Stalled",
        "F:UnauthorizedOperation F:Stalled T:UnauthorizedOperation F:InstancesNotRunning T:SecurityGroupReady "
        "U:AwaitingInstances U:CacheNotProbed",
    ),
    (
        "terminal AWS error with a dotted code",
        replace(NEW, terminal_error="InvalidAMIID.NotFound: The image id '[ami-123]' does not exist"),
        "Stalled",
        f"F:InvalidAMIIDNotFound F:Stalled T:InvalidAMIIDNotFound {NOTHING_YET}",
    ),
    (
        "instance pending",
        replace(NEW, security_group_ready=True, converging=True, instance_message="i-0abc is pending"),
        "Provisioning",
        "F:InstancesNotRunning T:Progressing F:NoTerminalError F:InstancesNotRunning T:SecurityGroupReady "
        "U:AwaitingInstances U:CacheNotProbed",
    ),
    (
        "one of two instances running",
        replace(GOOD, instances_desired=2, hosts_total=1, converging=True),
        "Provisioning",
        "F:InstancesPending T:Progressing F:NoTerminalError F:InstancesPending T:SecurityGroupReady "
        "T:HostsConfigured T:CacheHealthy",
    ),
    (
        "security group not known yet",
        replace(GOOD, security_group_ready=None),
        "Provisioning",
        "F:SecurityGroupNotObserved T:Waiting F:NoTerminalError T:InstancesRunning U:SecurityGroupNotObserved "
        "T:HostsConfigured T:CacheHealthy",
    ),
    (
        "security group rules drifted, plan fixes them",
        replace(GOOD, security_group_ready=False, converging=True),
        "Provisioning",
        "F:SecurityGroupNotReady T:Progressing F:NoTerminalError T:InstancesRunning F:SecurityGroupNotReady "
        "T:HostsConfigured T:CacheHealthy",
    ),
    (
        "hosts partially configured",
        replace(
            GOOD, instances_desired=2, instances_running=2, hosts_total=2, hosts_configured=1, converging=True
        ),
        "Configuring",
        "F:HostsConfiguring T:Progressing F:NoTerminalError T:InstancesRunning T:SecurityGroupReady "
        "F:HostsConfiguring T:CacheHealthy",
    ),
    (
        "configured, waiting for the first probe",
        replace(GOOD, cache_healthy=None),
        "Configuring",
        "F:CacheNotProbed T:Waiting F:NoTerminalError T:InstancesRunning T:SecurityGroupReady T:HostsConfigured "
        "U:CacheNotProbed",
    ),
    (
        "host unreachable",
        replace(GOOD, hosts_configured=0, host_problems=(UNREACHABLE,), cache_healthy=False),
        "Degraded",
        "F:HostProblems F:NoPendingChanges F:NoTerminalError T:InstancesRunning T:SecurityGroupReady "
        "F:HostProblems F:CacheUnhealthy",
    ),
    (
        "cache unhealthy",
        replace(GOOD, cache_healthy=False, cache_message="10.0.1.5:11211 UNREACHABLE (timeout)"),
        "Degraded",
        "F:CacheUnhealthy F:NoPendingChanges F:NoTerminalError T:InstancesRunning T:SecurityGroupReady "
        "T:HostsConfigured F:CacheUnhealthy",
    ),
    (
        "cold cache after a replacement is not a failure",
        replace(GOOD, cold_cache=True),
        "Ready",
        ALL_GOOD.replace("T:CacheHealthy", "T:CacheCold"),
    ),
    (
        "healing",
        replace(GOOD, cache_healthy=False, healing="replacing i-0abc (unreachable for 5m)", converging=True),
        "Healing",
        "F:Healing T:Healing F:NoTerminalError T:InstancesRunning T:SecurityGroupReady T:HostsConfigured "
        "F:CacheUnhealthy",
    ),
    (
        "paused while all good",
        replace(GOOD, paused=True),
        "Paused",
        ALL_GOOD.replace("F:NoPendingChanges", "F:Paused"),
    ),
    (
        "paused while the cache is down",
        replace(GOOD, paused=True, cache_healthy=False, converging=True),
        "Paused",
        "F:CacheUnhealthy F:Paused F:NoTerminalError T:InstancesRunning T:SecurityGroupReady T:HostsConfigured "
        "F:CacheUnhealthy",
    ),
    (
        "paused with a bad spec is still stalled",
        replace(GOOD, paused=True, spec_error=SPEC_ERROR),
        "Stalled",
        "F:InvalidSpec F:Stalled T:InvalidSpec T:InstancesRunning T:SecurityGroupReady T:HostsConfigured "
        "T:CacheHealthy",
    ),
    (
        "deleting",
        replace(GOOD, deleting=True, converging=True),
        "Deleting",
        "F:Deleting T:Deleting F:NoTerminalError T:InstancesRunning T:SecurityGroupReady T:HostsConfigured "
        "T:CacheHealthy",
    ),
    (
        "deleting but AWS refuses",
        replace(GOOD, deleting=True, terminal_error=AWS_DENIED),
        "Deleting",
        "F:Deleting F:Stalled T:UnauthorizedOperation T:InstancesRunning T:SecurityGroupReady T:HostsConfigured "
        "T:CacheHealthy",
    ),
]


def summary(conditions: list[dict[str, Any]]) -> str:
    return " ".join(f"{c['status'][0]}:{c['reason']}" for c in conditions)


@pytest.mark.parametrize(
    ("facts", "phase", "expected"), [row[1:] for row in TABLE], ids=[row[0] for row in TABLE]
)
def test_conditions_and_phase_table(facts: Facts, phase: str, expected: str) -> None:
    conditions = compute_conditions(facts, previous=[], now=T0)

    assert [c["type"] for c in conditions] == list(CONDITION_TYPES)
    assert summary(conditions) == expected
    assert compute_phase(facts) == phase
    for c in conditions:
        assert c["observedGeneration"] == facts.generation
        assert c["lastTransitionTime"] == "2024-05-01T12:00:00Z"
        assert c["message"]


def by_type(conditions: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in conditions}


def test_messages_tell_the_user_what_to_fix() -> None:
    stalled = by_type(compute_conditions(replace(GOOD, spec_error=SPEC_ERROR), previous=[], now=T0))
    assert "spec.instanceType" in stalled["Stalled"]["message"] and "fix:" in stalled["Stalled"]["message"]
    assert "spec.instanceType" in stalled["Ready"]["message"]

    denied = by_type(compute_conditions(replace(GOOD, terminal_error=AWS_DENIED), previous=[], now=T0))
    assert denied["Stalled"]["message"] == AWS_DENIED

    hosts = by_type(
        compute_conditions(
            replace(GOOD, hosts_configured=0, host_problems=(UNREACHABLE,)), previous=[], now=T0
        )
    )
    assert hosts["HostsConfigured"]["message"] == f"0/1 hosts configured; {UNREACHABLE}"
    assert UNREACHABLE in hosts["Ready"]["message"]

    by_spec = by_type(compute_conditions(replace(GOOD, paused=True), previous=[], now=T0))
    assert "paused (spec.paused)" in by_spec["Reconciling"]["message"]
    annotation = "annotation edx-remote-cache.openedx.org/paused"
    by_annotation = by_type(
        compute_conditions(replace(GOOD, paused=True, paused_by=annotation), previous=[], now=T0)
    )
    assert f"paused ({annotation})" in by_annotation["Reconciling"]["message"], "names the switch to undo"

    cold = by_type(compute_conditions(replace(GOOD, cold_cache=True), previous=[], now=T0))
    assert "hit ratio is expected" in cold["CacheHealthy"]["message"]

    pending = by_type(
        compute_conditions(replace(NEW, instance_message="i-0abc is pending"), previous=[], now=T0)
    )
    assert pending["InstanceReady"]["message"] == "0/1 instances running: i-0abc is pending"


def test_many_host_problems_are_summarised() -> None:
    problems = tuple(f"i-{n:04d}: Unreachable (agent ConnectionLost)" for n in range(12))
    facts = replace(
        GOOD,
        hosts_total=12,
        hosts_configured=0,
        instances_desired=12,
        instances_running=12,
        host_problems=problems,
    )
    message = by_type(compute_conditions(facts, previous=[], now=T0))["HostsConfigured"]["message"]
    assert "i-0004" in message and "i-0005" not in message and message.endswith("and 7 more")


def test_last_transition_time_is_kept_until_the_status_flips() -> None:
    first = compute_conditions(GOOD, previous=[], now=T0)
    later = T0 + timedelta(minutes=5)

    unchanged = compute_conditions(GOOD, previous=first, now=later)
    assert unchanged == first  # same world, same status: nothing to write

    # the cache goes down: only the conditions whose status flipped get a new time
    broken = compute_conditions(replace(GOOD, cache_healthy=False), previous=unchanged, now=later)
    times = {c["type"]: c["lastTransitionTime"] for c in broken}
    assert times["CacheHealthy"] == times["Ready"] == "2024-05-01T12:05:00Z"
    for ctype in ("Reconciling", "Stalled", "InstanceReady", "SecurityGroupReady", "HostsConfigured"):
        assert times[ctype] == "2024-05-01T12:00:00Z"

    # a reason change without a status flip keeps the time (kstatus semantics)
    cold = compute_conditions(replace(GOOD, cold_cache=True), previous=first, now=later)
    assert by_type(cold)["CacheHealthy"]["reason"] == "CacheCold"
    assert by_type(cold)["CacheHealthy"]["lastTransitionTime"] == "2024-05-01T12:00:00Z"


def test_observed_generation_follows_the_spec_generation() -> None:
    first = compute_conditions(GOOD, previous=[], now=T0)
    bumped = compute_conditions(replace(GOOD, generation=4), previous=first, now=T0 + timedelta(seconds=30))
    assert {c["observedGeneration"] for c in bumped} == {4}
    assert {c["lastTransitionTime"] for c in bumped} == {"2024-05-01T12:00:00Z"}


def test_naive_now_is_treated_as_utc() -> None:
    conditions = compute_conditions(GOOD, previous=[], now=datetime(2024, 5, 1, 12, 0, 0))
    assert conditions[0]["lastTransitionTime"] == "2024-05-01T12:00:00Z"


facts_strategy = st.builds(
    Facts,
    generation=st.integers(1, 50),
    paused=st.booleans(),
    spec_error=st.none() | st.just(SPEC_ERROR),
    terminal_error=st.none()
    | st.sampled_from([AWS_DENIED, "something odd happened", "Throttling: slow down"]),
    instances_desired=st.integers(0, 3),
    instances_running=st.integers(0, 3),
    security_group_ready=st.none() | st.booleans(),
    hosts_total=st.integers(0, 3),
    hosts_configured=st.integers(0, 3),
    host_problems=st.lists(st.just(UNREACHABLE), max_size=2).map(tuple),
    cache_healthy=st.none() | st.booleans(),
    cold_cache=st.booleans(),
    converging=st.booleans(),
    healing=st.none() | st.just("replacing i-0abc"),
    deleting=st.booleans(),
)


@settings(max_examples=400, deadline=None)
@given(facts_strategy)
def test_invariants_hold_for_any_facts(facts: Facts) -> None:
    conditions = by_type(compute_conditions(facts, previous=[], now=T0))
    phase = compute_phase(facts)

    assert list(conditions) == list(CONDITION_TYPES) and phase in PHASES
    for c in conditions.values():
        assert c["status"] in ("True", "False", "Unknown")
        assert re.fullmatch(r"[A-Z][A-Za-z0-9]*", c["reason"]), c["reason"]
        assert c["observedGeneration"] == facts.generation
    stalled = conditions["Stalled"]["status"] == "True"
    assert stalled == bool(facts.spec_error or facts.terminal_error)
    if stalled:
        assert conditions["Reconciling"]["status"] == "False"
        assert phase in ("Stalled", "Deleting")
    if conditions["Ready"]["status"] == "True":
        parts = ("InstanceReady", "SecurityGroupReady", "HostsConfigured", "CacheHealthy")
        assert all(conditions[p]["status"] == "True" for p in parts)
        assert not (stalled or facts.deleting or facts.healing)
        assert phase in ("Ready", "Paused")
    if phase == "Ready":
        assert conditions["Ready"]["status"] == "True"
    if facts.deleting:
        assert phase == "Deleting"


# ----------------------------------------------------------------------------------------- health block


def probe(**overrides: Any) -> dict[str, Any]:
    """A ProbeResult.to_dict()-shaped mapping of a healthy, idle cache."""
    base: dict[str, Any] = {
        "endpoint": "10.0.1.5:11211",
        "reachable": True,
        "error_kind": None,
        "error": None,
        "latency_ms": 0.31,
        "version": "1.6.18",
        "uptime_seconds": 3600,
        "curr_connections": 12,
        "max_connections": 1024,
        "get_hits": 9700,
        "get_misses": 300,
        "evictions": 0,
        "bytes": 1_000_000,
        "limit_maxbytes": 64 * 1024 * 1024,
        "canary_ok": True,
    }
    return {**base, **overrides}


def test_health_block_reports_the_figures_a_user_reads() -> None:
    health = health_status(probe(), now=T0)

    assert health == {
        "lastProbeTime": "2024-05-01T12:00:00Z",
        "reachable": True,
        "canaryOk": True,
        "lastError": None,
        "version": "1.6.18",
        "uptimeSeconds": 3600,
        "startTime": "2024-05-01T11:00:00Z",
        "currConnections": 12,
        "maxConnections": 1024,
        "hitRatio": 0.97,
        "hitRatioPercent": "97%",
        "evictions": 0,
        "bytes": 1_000_000,
        "limitMaxbytes": 64 * 1024 * 1024,
        "latencyMs": 1.0,
        "consecutiveFailures": 0,
    }


def test_health_block_accepts_a_real_probe_result() -> None:
    from edx_remote_cache.adapters.probe import (
        ProbeResult,  # tests may import adapters; conditions.py may not
    )

    result = ProbeResult(endpoint="10.0.1.5:11211", reachable=True, get_hits=1, get_misses=3, canary_ok=True)
    health = health_status(result, now=T0)
    assert health["hitRatio"] == 0.25 and health["hitRatioPercent"] == "25%" and health["canaryOk"] is True


def test_unreachable_cache_health_says_why_and_clears_stale_figures() -> None:
    down = probe(
        reachable=False,
        canary_ok=False,
        error_kind="refused",
        error="ConnectionRefusedError: [Errno 111] Connection refused",
        **dict.fromkeys(["latency_ms", "version", "uptime_seconds", "get_hits", "get_misses", "bytes"]),
    )
    health = health_status(down, now=T0, consecutive_failures=3)
    assert health["reachable"] is False and health["consecutiveFailures"] == 3
    assert health["lastError"] == "refused: ConnectionRefusedError: [Errno 111] Connection refused"
    assert health["version"] is None and health["hitRatio"] is None and health["hitRatioPercent"] is None
    assert health["startTime"] is None and health["latencyMs"] is None


def test_idle_healthy_cache_causes_no_status_churn_between_probes() -> None:
    status = {"phase": "Ready", "conditions": compute_conditions(GOOD, previous=[], now=T0)}
    status["health"] = health_status(probe(), now=T0)
    for n in range(1, 30):
        now = T0 + timedelta(seconds=30 * n)
        # uptime ticks along with the clock (±1 s of rounding), latency jitters within its bucket
        jitter = (-1, 0, 1)[n % 3]
        seen = probe(uptime_seconds=3600 + 30 * n + jitter, latency_ms=(0.2, 0.9, 0.5)[n % 3])
        new = {
            "phase": "Ready",
            "conditions": compute_conditions(GOOD, previous=status["conditions"], now=now),
            "health": health_status(seen, now=now, previous=status["health"]),
        }
        assert not status_changed(status, new), n
        assert new["health"]["startTime"] == "2024-05-01T11:00:00Z"


def test_a_memcached_restart_is_a_status_change() -> None:
    before = health_status(probe(), now=T0)
    now = T0 + timedelta(seconds=30)
    after = health_status(probe(uptime_seconds=5, get_hits=0, get_misses=0), now=now, previous=before)
    assert after["startTime"] == "2024-05-01T12:00:25Z"
    assert status_changed({"health": before}, {"health": after})


def test_status_changed_sees_real_changes_and_ignores_heartbeats() -> None:
    old = {"phase": "Ready", "health": {"lastProbeTime": "2024-05-01T12:00:00Z", "hitRatio": 0.97}}
    assert not status_changed(
        old, {**old, "health": {**old["health"], "lastProbeTime": "2024-05-01T12:00:30Z"}}
    )
    assert status_changed(old, {**old, "health": {**old["health"], "hitRatio": 0.96}})
    assert status_changed(old, {**old, "phase": "Degraded"})
    # null and absent are the same thing once a merge patch has been applied
    assert not status_changed(old, {**old, "health": {**old["health"], "version": None}})
    assert not status_changed({}, {})


@pytest.mark.parametrize(
    ("latency", "bucket"),
    [
        (0.0, 1.0),
        (0.05, 1.0),
        (0.999, 1.0),
        (1.0, 1.0),
        (1.01, 2.0),
        (3.2, 5.0),
        (7.0, 10.0),
        (180.0, 200.0),
        (12_345.0, 20_000.0),
    ],
)
def test_latency_buckets(latency: float, bucket: float) -> None:
    assert bucket_latency_ms(latency) == bucket


@given(st.floats(0, 100_000), st.floats(0, 100_000))
def test_latency_buckets_are_monotonic_and_never_understate(a: float, b: float) -> None:
    low, high = sorted((a, b))
    assert bucket_latency_ms(low) <= bucket_latency_ms(high)
    assert bucket_latency_ms(low) >= low


_KEYS = st.sampled_from(["health", "lastProbeTime", "uptimeSeconds", "hitRatio", "phase", "hosts", "x"])
_LEAVES = st.one_of(st.none(), st.integers(-2, 2), st.sampled_from(["a", "b"]))
_STATUS = st.recursive(
    _LEAVES,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_KEYS, inner, max_size=4)),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(old=st.dictionaries(_KEYS, _STATUS, max_size=4), new=st.dictionaries(_KEYS, _STATUS, max_size=4))
def test_the_fast_comparison_agrees_with_stripping_both_statuses(old: dict, new: dict) -> None:
    """status_changed compares without building stripped copies (it runs hundreds of times a minute)."""
    assert status_changed(old, new) == (_strip(old) != _strip(new))
    assert not status_changed(old, old)
