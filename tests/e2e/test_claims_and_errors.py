"""Issue 16 items 7 and 8 on the sandbox, with the real operator process.

* One Open edX host, one owner: a copy of an object naming the same hosts never touches them (HostClaimed, no
  flapping), deleting either leaves the other's hosts alone, the copy takes over once the owner is deleted, and a
  host removed from the spec is reverted to its local memcached.
* Status tells the truth about errors: a retryable RunInstances error is in status within one pass with its code
  and attempt, the retries back off, and a code AWS documents as the caller's mistake stalls the object.

Nothing here depends on how the sandbox reaches memcached: hosts are checked through their files, AWS through
the call recorder.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping
from typing import Any

import pytest

from edx_remote_cache.sandbox import Sandbox
from edx_remote_cache.sandbox.harness import OperatorProcess

from .support import (
    Cache,
    assert_hosts_point_at,
    assert_hosts_reverted,
    owned_instances,
    reset_hosts,
    snapshot_hosts,
    wait_until,
)

pytestmark = pytest.mark.e2e

NS = "e2e-own"
DRIFT = 5  # cache_manifest's driftIntervalSeconds
SLACK = 6


def condition_is(ctype: str, status: str, reason: str | None = None) -> Any:
    def check(obj: Mapping[str, Any]) -> bool:
        found = [c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == ctype]
        return (
            bool(found) and found[0]["status"] == status and (reason is None or found[0]["reason"] == reason)
        )

    return check


def claimed(cache: Cache, owner: str) -> dict[str, Any]:
    obj = cache.wait(condition_is("HostsConfigured", "False", "HostClaimed"), timeout=30, what="HostClaimed")
    message = next(c for c in obj["status"]["conditions"] if c["type"] == "HostsConfigured")["message"]
    assert f"managed by {NS}/{owner}" in message, message
    return obj


@pytest.fixture(autouse=True)
def _fresh_hosts(sandbox: Sandbox, operator: OperatorProcess) -> None:
    reset_hosts(sandbox)


@pytest.mark.timeout(150)
def test_a_copy_naming_the_same_hosts_never_touches_them_and_either_delete_leaves_the_others_alone(
    sandbox: Sandbox,
) -> None:
    owner = Cache.create(sandbox, "site", NS)
    owner.wait_ready(timeout=40)
    endpoints = owner.endpoints()
    time.sleep(
        1.1
    )  # creationTimestamp has one-second resolution: the copy is younger by the clock, not the name
    copy = Cache.create(sandbox, "copy", NS)
    obj = claimed(copy, "site")
    assert {h["state"] for h in obj["status"]["hosts"]} == {"Claimed"}
    assert next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")["status"] == "False"
    copy.wait(lambda o: bool((o.get("status") or {}).get("endpoints")), timeout=30, what="its own cache")
    assert copy.endpoints() != endpoints
    assert_hosts_point_at(sandbox, endpoints)

    # no flapping: two drift intervals later not a byte has moved and neither object changed its mind
    copy.wait(lambda o: bool((o.get("status") or {}).get("health")), timeout=20, what="its first probe")
    files = snapshot_hosts(sandbox)
    since = time.time()  # the emulated API's request clock
    time.sleep(2 * DRIFT + 1)
    assert snapshot_hosts(sandbox) == files
    assert owner.ready_history()[-1] == "True"
    assert condition_is("HostsConfigured", "False", "HostClaimed")(copy.obj), (
        copy.status["conditions"],
        copy.status["hosts"],
        owner.status["hosts"],
    )
    writes = copy.status_writes(since=since) + owner.status_writes(since=since)
    assert len(writes) <= 1, f"the objects' status flapped: {len(writes)} writes in two drift intervals"

    copy.delete_and_wait(timeout=45)  # the copy never configured them: nothing is reverted
    assert snapshot_hosts(sandbox) == files
    assert "HostReverted" not in copy.event_reasons()
    owner.wait_ready(timeout=10)
    owner.delete_and_wait(timeout=45)
    assert_hosts_reverted(sandbox)


@pytest.mark.timeout(150)
def test_the_copy_takes_over_after_the_owner_is_deleted(sandbox: Sandbox) -> None:
    owner = Cache.create(sandbox, "first", NS)
    owner.wait_ready(timeout=40)
    time.sleep(1.1)
    copy = Cache.create(sandbox, "second", NS)
    claimed(copy, "first")
    owner.delete_and_wait(timeout=45)
    took = time.monotonic()
    copy.wait_ready(timeout=DRIFT + 30)
    print(f"the copy took over {time.monotonic() - took:.1f}s after the owner was gone")
    assert {h["state"] for h in copy.status["hosts"]} == {"Configured"}
    assert_hosts_point_at(sandbox, copy.endpoints())
    copy.delete_and_wait(timeout=45)
    assert_hosts_reverted(sandbox)


@pytest.mark.timeout(120)
def test_a_host_removed_from_the_spec_is_reverted_and_the_other_keeps_the_cache(sandbox: Sandbox) -> None:
    keep, drop = sandbox.edx_hosts[0], sandbox.edx_hosts[1]
    cache = Cache.create(sandbox, "shrink", NS)
    cache.wait_ready(timeout=40)
    endpoints = cache.endpoints()
    generation = cache.patch_spec({"openedx": {"hosts": [keep]}})
    wait_until(lambda: [h["instanceId"] for h in cache.status.get("hosts") or []] == [keep], timeout=30,
               what="the removed host to leave status.hosts")  # fmt: skip
    cache.wait_ready(timeout=20, generation=generation)
    assert_hosts_reverted(sandbox, [drop])
    assert_hosts_point_at(sandbox, endpoints, [keep])
    wait_until(
        lambda: "HostReleased" in cache.event_reasons(), timeout=5, what="HostReleased event"
    )  # posted beside the status
    cache.delete_and_wait(timeout=45)
    assert_hosts_reverted(sandbox)


@pytest.mark.timeout(120)
def test_a_retryable_run_instances_error_is_in_status_within_one_pass_and_retries_back_off(
    sandbox: Sandbox,
) -> None:
    message = "We currently do not have sufficient t3.micro capacity in the Availability Zone you requested."
    since = sandbox.calls.now()
    # 400, as a client error: botocore retries a 500 itself, which would hide the attempts from this test
    sandbox.faults.fail_calls("RunInstances", "InsufficientInstanceCapacity", message, times=3)
    try:
        cache = Cache.create(sandbox, "capacity", NS)
        obj = cache.wait(condition_is("Reconciling", "True", "AwsRetrying"), timeout=15, what="AwsRetrying")
        text = next(c for c in obj["status"]["conditions"] if c["type"] == "Reconciling")["message"]
        assert "InsufficientInstanceCapacity during RunInstances" in text and "attempt 1" in text, text
        assert obj["status"]["retry"]["code"] == "InsufficientInstanceCapacity"
        assert obj["status"]["retry"]["nextRetryTime"] in text
        assert not condition_is("Stalled", "True")(obj)
        cache.wait_ready(timeout=60)
    finally:
        sandbox.faults.fail_calls("RunInstances", "", "", times=0)
    refused = [c for c in sandbox.calls.calls("RunInstances", since=since) if c.error_code]
    assert [c.error_code for c in refused] == ["InsufficientInstanceCapacity"] * 3
    gaps = [b.at - a.at for a, b in itertools.pairwise(refused)]
    print(f"retries of the refused RunInstances came after {[f'{g:.1f}s' for g in gaps]}")
    assert gaps[0] >= 1.5 and gaps[1] >= 3.5 and gaps[1] > gaps[0], gaps  # 2 s, then 4 s: not a fixed timer
    status = cache.status
    assert "retry" not in status
    assert status["progress"]["replacementTimes"] == [], "a refused launch counted as a replacement"
    assert len(owned_instances(sandbox, cache.uid)) == 1
    wait_until(
        lambda: "AwsRetrying" in cache.event_reasons(), timeout=5, what="AwsRetrying event"
    )  # posted beside the status
    cache.delete_and_wait(timeout=45)


@pytest.mark.timeout(90)
def test_an_unknown_instance_profile_stalls_the_object_with_the_code(sandbox: Sandbox) -> None:
    message = (
        "Value (nope) for parameter iamInstanceProfile.name is invalid. Invalid IAM Instance Profile name"
    )
    sandbox.faults.fail_calls("RunInstances", "InvalidParameterValue", message, times=1)
    try:
        cache = Cache.create(sandbox, "profile", NS)
        obj = cache.wait(condition_is("Stalled", "True", "InvalidParameterValue"), timeout=15, what="Stalled")
    finally:
        sandbox.faults.fail_calls("RunInstances", "", "", times=0)
    stalled = next(c for c in obj["status"]["conditions"] if c["type"] == "Stalled")
    assert "Invalid IAM Instance Profile name" in stalled["message"] and "RunInstances" in stalled["message"]
    assert obj["status"]["phase"] == "Stalled"
    assert obj["status"].get("progress", {}).get("launches", {}) == {}, "a token for a launch that never was"
    calls = sandbox.calls.count("RunInstances")
    time.sleep(DRIFT + 2)
    assert sandbox.calls.count("RunInstances") == calls, "a terminal error was retried"
    assert owned_instances(sandbox, cache.uid) == []
    cache.delete_and_wait(timeout=45)
