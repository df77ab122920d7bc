"""What a rollout meets: a halt at `openedx.rollout.maxErrors`, and host ids that do not exist.

A rollout halted at maxErrors stays halted across passes until a human resumes it. The first host's restarts fail, so its push rolls back; at the default maxErrors 0 the second host must never
be touched (not on the next pass, not on the drift passes after it) while the first is back on its old files:
the site stays on one cache. Setting the resume annotation to a new value goes on with the rollout.
"""

from __future__ import annotations

import time

import pytest

from edx_remote_cache.sandbox import Sandbox
from edx_remote_cache.sandbox.harness import OperatorProcess, condition

from .support import (
    Cache,
    assert_hosts_point_at,
    assert_hosts_reverted,
    assert_hosts_untouched,
    snapshot_hosts,
    wait_until,
)

pytestmark = pytest.mark.e2e

NS = "e2e-rollout"
DRIFT = 5
RESUME = "edx-remote-cache.openedx.org/resume-rollout"


@pytest.mark.timeout(120)
def test_a_halted_rollout_holds_the_other_host_across_passes_until_resumed(
    sandbox: Sandbox, operator: OperatorProcess
) -> None:
    failing, held = sandbox.edx_hosts
    before = snapshot_hosts(sandbox)
    sandbox.faults.fail_restarts(failing)
    try:
        cache = Cache.create(sandbox, "halt", NS, hosts=[failing, held])
        obj = cache.wait(
            lambda o: bool((o.get("status") or {}).get("rollout", {}).get("halted")),
            timeout=30,
            what="the rollout halted",
        )
        rollout = obj["status"]["rollout"]
        assert rollout["failed"] == [failing] and rollout["held"] == [held] and rollout["done"] == []
        hosts = cache.condition("HostsConfigured")
        assert hosts["status"] == "False" and hosts["reason"] == "RolloutHalted", hosts
        assert failing in hosts["message"] and "RolledBack" in hosts["message"], hosts
        assert cache.condition("Ready")["status"] == "False"
        wait_until(
            lambda: "RolloutHalted" in cache.event_reasons(), timeout=5, what="RolloutHalted event"
        )  # posted beside the status

        restarts = len(sandbox.supervisorctl_calls(failing))
        time.sleep(2 * DRIFT + 2)  # two drift passes, and the 0.7 s re-pass that used to push the held host
        assert_hosts_untouched(sandbox, before)  # the failing host rolled back, the held one never written
        assert sandbox.supervisorctl_calls(held) == [], "the held host was restarted"
        assert len(sandbox.supervisorctl_calls(failing)) == restarts, "the failed host was retried"
        assert cache.status["rollout"]["held"] == [held]
    finally:
        sandbox.faults.fail_restarts(failing, False)

    cache.annotate({RESUME: "fixed-the-restart"})
    obj = cache.wait_ready(timeout=30)
    assert "rollout" not in obj["status"]
    assert_hosts_point_at(sandbox, cache.endpoints())
    wait_until(
        lambda: "RolloutResumed" in cache.event_reasons(), timeout=5, what="RolloutResumed event"
    )  # posted beside the status
    cache.delete_and_wait()
    assert_hosts_reverted(sandbox)


@pytest.mark.timeout(90)
def test_host_ids_ec2_does_not_know_are_reported_by_id(sandbox: Sandbox, operator: OperatorProcess) -> None:
    made_up = [f"i-0dead{n:012x}" for n in range(98)]
    cache = Cache.create(sandbox, "typos", NS, hosts=[*sandbox.edx_hosts, *made_up])
    obj = cache.wait(
        lambda o: (
            condition(o, "HostsConfigured").get("reason") == "HostNotFound"
            and condition(o, "CacheHealthy").get("status") == "True"
        ),
        timeout=30,
        what="HostsConfigured=False HostNotFound",
    )
    hosts = condition(obj, "HostsConfigured")
    assert hosts["status"] == "False" and hosts["message"].startswith("2/2 hosts configured; not found: ")
    assert f"{made_up[0]}: no live instance in us-east-1" in hosts["message"], hosts
    assert condition(obj, "Ready")["status"] == "False" and obj["status"]["phase"] == "Degraded"
    assert cache.host_states() == dict.fromkeys(sandbox.edx_hosts, "Configured")
    [event] = [
        e for e in cache.events() if e["reason"] == "HostNotFound" and "not found in EC2" in e["message"]
    ]
    assert made_up[0] in event["message"] and "and 88 more" in event["message"]

    generation = cache.patch_spec({"openedx": {"hosts": list(sandbox.edx_hosts)}})
    cache.wait_ready(timeout=30, generation=generation)
    cache.delete_and_wait()
    assert_hosts_reverted(sandbox)
