"""Faults met while pushing to the Open edX hosts, and a delete that comes before the instance is up.

Each test creates its own object (the faults bite during the first push) and deletes it at the end; they share
the module's sandbox and operator, one after the other, because they share the two Open edX hosts.
"""

from __future__ import annotations

import time

import pytest

from edx_remote_cache import OWNER_UID_TAG
from edx_remote_cache.sandbox import Sandbox
from edx_remote_cache.sandbox.harness import OperatorProcess, condition

from .support import (
    MANAGED_FILES,
    Cache,
    assert_conditions_complete,
    assert_hosts_point_at,
    assert_hosts_reverted,
    assert_hosts_untouched,
    backups,
    ec2,
    host_file,
    instance,
    original,
    owned_instances,
    record_status_fixture,
    reset_hosts,
    security_group,
    snapshot_hosts,
    wait_until,
)

pytestmark = pytest.mark.e2e

NS = "e2e-hosts"
DRIFT = 5


def files_are_original(sb: Sandbox, host: str) -> bool:
    return all(
        host_file(sb, host, rel).read_bytes() == original(name) for rel, name in MANAGED_FILES.values()
    )


@pytest.mark.timeout(90)
def test_an_offline_ssm_agent_makes_its_host_unreachable_and_the_rest_still_configured(
    sandbox: Sandbox, operator: OperatorProcess
) -> None:
    good, offline = sandbox.edx_hosts
    sandbox.faults.agent_offline(offline)
    try:
        # maxErrors 1: an offline agent counts as an error, and at the default 0 the rollout would halt
        # (tests/e2e/test_rollout.py); here the host is retried every interval until its agent is back
        cache = Cache.create(sandbox, "offline", NS, openedx={"rollout": {"maxErrors": 1}})
        obj = cache.wait(
            lambda o: (
                {h["instanceId"]: h["state"] for h in (o.get("status") or {}).get("hosts") or []}
                == {good: "Configured", offline: "Unreachable"}
            ),
            timeout=30,
            what="one host Configured, the other Unreachable",
        )
        obj = cache.wait(
            lambda o: (o.get("status") or {}).get("health", {}).get("reachable") is True,
            timeout=10,
            what="the first probe",
        )
        ready = cache.condition("Ready")
        assert ready["status"] == "False" and ready["reason"] == "HostProblems", ready
        assert offline in ready["message"] and "Unreachable" in ready["message"], ready
        assert cache.condition("HostsConfigured")["status"] == "False"
        assert cache.condition("CacheHealthy")["status"] == "True"
        assert obj["status"]["phase"] == "Degraded"
        assert_conditions_complete(obj)
        wait_until(
            lambda: "HostUnreachable" in cache.event_reasons(), timeout=5, what="HostUnreachable event"
        )  # posted beside the status
        assert_hosts_point_at(sandbox, cache.endpoints(), hosts=[good])
        assert files_are_original(sandbox, offline), "nothing reached the offline host"
        record_status_fixture("degraded", cache.obj, "One Open edX host's SSM agent is offline.")

        # an offline host is retried every drift interval, without rewriting the status each time
        since = time.time()
        time.sleep(DRIFT + 2)
        assert len(cache.status_writes(since=since)) <= 1
    finally:
        sandbox.faults.agent_online(offline)
    cache.wait_ready(timeout=DRIFT + 10)
    assert_hosts_point_at(sandbox, cache.endpoints())
    cache.delete_and_wait()
    assert_hosts_reverted(sandbox)


@pytest.mark.timeout(90)
def test_a_failing_restart_rolls_the_host_back_to_its_original_bytes(
    sandbox: Sandbox, operator: OperatorProcess
) -> None:
    good, failing = sandbox.edx_hosts
    before = {rel: host_file(sandbox, failing, rel).read_bytes() for rel, _ in MANAGED_FILES.values()}
    sandbox.faults.fail_restarts(failing)
    try:
        cache = Cache.create(sandbox, "rollback", NS)
        obj = cache.wait(
            lambda o: (
                {h["instanceId"]: h["state"] for h in (o.get("status") or {}).get("hosts") or []}
                == {good: "Configured", failing: "RolledBack"}
            ),
            timeout=30,
            what="the failing host RolledBack",
        )
        for rel, _ in MANAGED_FILES.values():
            assert host_file(sandbox, failing, rel).read_bytes() == before[rel], (
                f"{rel}: not the original bytes"
            )
            assert backups(sandbox, failing, rel), f"{rel}: the backup of the original is kept"
        assert_hosts_point_at(sandbox, cache.endpoints(), hosts=[good])
        ready = cache.condition("Ready")
        assert ready["status"] == "False" and failing in ready["message"] and "RolledBack" in ready["message"]
        wait_until(
            lambda: "HostRolledBack" in cache.event_reasons(), timeout=5, what="HostRolledBack event"
        )  # posted beside the status
        assert_conditions_complete(obj)

        # no retry loop: a rolled-back host is not pushed (and restarted twice) again every drift interval
        calls = len(sandbox.supervisorctl_calls(failing))
        time.sleep(2 * DRIFT + 1)
        assert len(sandbox.supervisorctl_calls(failing)) == calls, "the rolled-back host was retried at once"
    finally:
        sandbox.faults.fail_restarts(failing, False)
    # a spec change is a reason to try again at once
    generation = cache.patch_spec({"probe": {"timeoutSeconds": 0.6}})
    cache.wait_ready(timeout=30, generation=generation)
    assert_hosts_point_at(sandbox, cache.endpoints())
    cache.delete_and_wait()
    assert_hosts_reverted(sandbox)


@pytest.mark.timeout(90)
def test_delete_while_the_instance_is_still_pending_tears_down_cleanly(
    sandbox: Sandbox, operator: OperatorProcess
) -> None:
    sandbox.faults.hide_new_instances(6)  # launched, but not visible to DescribeInstances yet
    try:
        since = sandbox.calls.now()
        cache = Cache.create(sandbox, "early", NS)
        uid = cache.uid
        wait_until(
            lambda: sandbox.calls.count("RunInstances", since=since), timeout=20, interval=0.02, what="launch"
        )
        progressing = cache.get()
        cache.delete()
    finally:
        sandbox.faults.hide_new_instances(0)
    if progressing is not None and progressing.get("status"):
        record_status_fixture("progressing", progressing, "Just launched; the instance is not visible yet.")
    cache.wait_gone(timeout=60)
    launched = owned_instances(sandbox, uid, live_only=False)
    assert launched, "the instance was launched"
    assert len(launched) == 1, [i["InstanceId"] for i in launched]
    assert all(instance(sandbox, i["InstanceId"])["State"]["Name"] == "terminated" for i in launched)
    deleted = [c for c in sandbox.calls.calls("DeleteSecurityGroup", since=since) if c.status == 200]
    assert len(deleted) == 1 and security_group(sandbox, deleted[0].params["GroupId"]) is None
    assert sandbox.calls.count("CreateSecurityGroup", since=since) == 1
    left = ec2(sandbox).describe_security_groups(Filters=[{"Name": f"tag:{OWNER_UID_TAG}", "Values": [uid]}])
    assert left["SecurityGroups"] == []
    assert_hosts_reverted(sandbox)


@pytest.mark.timeout(90)
def test_delete_with_an_unreachable_host_still_cleans_up_aws_and_says_which_host_to_fix(
    sandbox: Sandbox, operator: OperatorProcess
) -> None:
    reachable, offline = sandbox.edx_hosts
    cache = Cache.create(sandbox, "orphan", NS)
    obj = cache.wait_ready(timeout=30)
    endpoints = obj["status"]["endpoints"]
    [iid] = cache.instance_ids()
    sandbox.faults.agent_offline(offline)
    try:
        started = time.monotonic()
        cache.delete_and_wait(timeout=60)  # a few tries to revert, then AWS is cleaned up regardless
        print(f"deleted {time.monotonic() - started:.1f}s after the delete with one host unreachable")
        failed = [e for e in cache.events() if e["reason"] == "RevertFailed"]
        assert failed and offline in failed[-1]["message"] and "rewrite --revert" in failed[-1]["message"]
        assert_hosts_reverted(sandbox, hosts=[reachable])
        assert_hosts_point_at(sandbox, endpoints, hosts=[offline])  # untouched: nothing lost either
        assert instance(sandbox, iid)["State"]["Name"] == "terminated"
        assert security_group(sandbox, obj["status"]["securityGroupId"]) is None
    finally:
        sandbox.faults.agent_online(offline)
        reset_hosts(sandbox)


@pytest.mark.timeout(60)
def test_an_unbootable_memcached_is_diagnosed_replaced_once_and_the_hosts_never_point_at_it(
    sandbox: Sandbox, operator: OperatorProcess
) -> None:
    """Another program holds memcached's port on every new cache host (a runtime fault, not the spec's): the
    condition quotes memcached's own error, one replacement, then Stalled; no host file changes. Once the fault
    is gone and the spec changes, the next instance answers and the hosts move to it."""
    before = snapshot_hosts(sandbox)
    sandbox.faults.break_boot("port-taken")
    started = time.monotonic()
    try:
        since = sandbox.calls.now()
        cache = Cache.create(sandbox, "unbootable", NS)
        stalled = cache.wait(
            lambda o: condition(o, "Stalled").get("reason") == "BootFailed",
            timeout=30,
            what="Stalled BootFailed",
        )
        healthy = condition(stalled, "CacheHealthy")
        assert (healthy["status"], healthy["reason"]) == ("False", "BootFailed")
        assert "failed to listen on one of interface(s)" in healthy["message"], healthy["message"]
        assert "Address already in use" in healthy["message"]
        assert condition(stalled, "Ready")["status"] == "False"
        time.sleep(3)  # a few probe rounds: nothing more is launched
        assert sandbox.calls.count("RunInstances", since=since) == 2, "the first launch and one replacement"
        assert sandbox.calls.count("GetConsoleOutput", since=since) >= 2
        assert cache.event_reasons().count("BootFailed") >= 2
        assert_hosts_untouched(sandbox, before)
    finally:
        sandbox.faults.break_boot(None)
    generation = cache.patch_spec(
        {"healing": {"maxReplacementsPerHour": 3}}
    )  # the spec fixed: a fresh attempt
    cache.wait_ready(timeout=30, generation=generation)
    assert sandbox.calls.count("RunInstances", since=since) == 3
    assert_hosts_point_at(sandbox, cache.endpoints())
    cache.delete_and_wait()
    assert_hosts_reverted(sandbox)
    assert time.monotonic() - started < 45
