"""The operator process itself: killed at the worst moment, and run as two replicas with kopf peering."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import pytest

from edx_remote_cache.sandbox import Sandbox

from .support import (
    Cache,
    assert_hosts_point_at,
    assert_hosts_reverted,
    memcached_stats,
    mutations,
    operations,
    owned_instances,
    wait_until,
)

if TYPE_CHECKING:
    from .conftest import Operators

pytestmark = pytest.mark.e2e

NS = "e2e-process"
PEERING = "edx-remote-cache-e2e"


@pytest.mark.timeout(90)
def test_an_operator_killed_right_after_run_instances_launches_nothing_twice(
    sandbox: Sandbox, operators: Operators
) -> None:
    first = operators.start("crashing")
    sandbox.faults.hide_new_instances(4)  # EC2's eventual consistency: the new instance is not listed yet
    try:
        since = sandbox.calls.now()
        cache = Cache.create(sandbox, "crash", NS)
        wait_until(
            lambda: sandbox.calls.count("RunInstances", since=since),
            timeout=20,
            interval=0.005,
            what="launch",
        )
        first.kill()  # SIGKILL: no cleanup, no status write after the call
    finally:
        sandbox.faults.hide_new_instances(0)
    assert not first.alive()
    second = operators.start("restarted")
    obj = cache.wait_ready(timeout=40)
    live = owned_instances(sandbox, cache.uid)
    assert [i["InstanceId"] for i in live] == cache.instance_ids(), "exactly the one instance"
    launches = sandbox.calls.calls("RunInstances", since=since)
    print(f"RunInstances calls: {len(launches)}")
    assert len({c.params["ClientToken"] for c in launches}) == 1, "every launch used the same ClientToken"
    assert len(owned_instances(sandbox, cache.uid, live_only=False)) == 1, "no duplicate, not even terminated"
    assert "TerminateInstances" not in operations(mutations(sandbox, since))
    assert_hosts_point_at(sandbox, obj["status"]["endpoints"])
    cache.delete_and_wait()
    assert_hosts_reverted(sandbox)
    second.stop()


@pytest.mark.timeout(120)
def test_two_replicas_act_once_and_the_standby_takes_over(sandbox: Sandbox, operators: Operators) -> None:
    sandbox.kube.create(
        {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": PEERING}}
    )
    peering = ["--all-namespaces", "--peering", PEERING, "--peering-lifetime", "6"]
    active = operators.start("active", args=[*peering, "--priority", "100"])
    standby = operators.start("standby", args=[*peering, "--priority", "10"])
    wait_until(
        lambda: (
            len((sandbox.kube.get(None, PEERING, kind="ClusterKopfPeering") or {}).get("status") or {}) == 2
            and "Resuming operations" in active.log()
        ),
        timeout=20,
        what="both replicas in the peering object, the active one resumed",
    )
    assert "Resuming operations" not in standby.log(), "the lower priority starts (and stays) paused"

    since = sandbox.calls.now()
    cache = Cache.create(sandbox, "peered", NS)
    obj = cache.wait_ready(timeout=30)
    [endpoint] = obj["status"]["endpoints"]
    time.sleep(2)  # a second actor would be racing by now
    done = operations(mutations(sandbox, since))
    assert done.count("RunInstances") == 1 and done.count("CreateSecurityGroup") == 1, done
    assert len(owned_instances(sandbox, cache.uid)) == 1
    assert "Handler 'reconcile' succeeded" in active.log()
    assert "Handler 'reconcile'" not in standby.log(), "the standby must not act while the active one lives"

    active.kill()
    killed = time.monotonic()
    generation = cache.patch_spec({"memcached": {"memoryMiB": 1024}})
    cache.wait_ready(timeout=40, generation=generation)
    took = time.monotonic() - killed
    assert "Resuming operations" in standby.log()
    wait_until(
        lambda: int(memcached_stats(sandbox, endpoint)[b"limit_maxbytes"]) == 1024 << 20,
        timeout=10,
        what="memcached reconfigured by the standby",
    )
    print(f"standby converged the spec change {took:.1f}s after the active replica was killed")
    cache.delete_and_wait()
    assert_hosts_reverted(sandbox)
    standby.stop()
