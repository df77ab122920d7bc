"""The life of an EdxRemoteCache as a user sees it: apply, change, pause, delete (and Retain), bad specs.

One sandbox and one operator for the module. The sandbox has two Open edX hosts that every object here points
at, so the tests run one after the other and each ends with its object deleted and the hosts reverted.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from edx_remote_cache import OWNER_TAG, OWNER_UID_TAG
from edx_remote_cache.sandbox import Sandbox
from edx_remote_cache.sandbox.harness import OperatorProcess

from .support import (
    Cache,
    assert_conditions_complete,
    assert_hosts_point_at,
    assert_hosts_reverted,
    assert_hosts_untouched,
    assert_memcached_works,
    ec2,
    instance,
    memcached_stats,
    mutations,
    operations,
    owned_instances,
    record_status_fixture,
    security_group,
    snapshot_hosts,
    tags,
    wait_until,
)

if TYPE_CHECKING:
    from .conftest import Operators

pytestmark = pytest.mark.e2e

NS = "e2e-lifecycle"


@pytest.mark.timeout(60)
def test_bad_specs_stall_with_the_field_path_and_no_aws_call(
    sandbox: Sandbox, operator: OperatorProcess
) -> None:
    """Runs first: with nothing else in the module's operator, every AWS call would be one of these objects'."""
    since = sandbox.calls.now()
    bad = {
        "public-cidr": ({"network": {"allowFromCidrs": ["0.0.0.0/0"]}}, "spec.network.allowFromCidrs[0]"),
        "odd-type": ({"instance": {"instanceType": "x9.mystery"}}, "spec.memcached.memoryMiB"),
        "no-hosts": ({"hosts": []}, "spec.openedx.hosts"),
    }
    caches = {name: Cache.create(sandbox, name, NS, **spec) for name, (spec, _) in bad.items()}
    for name, cache in caches.items():
        obj = cache.wait(
            lambda o: (o.get("status") or {}).get("phase") == "Stalled", timeout=20, what="Stalled"
        )
        stalled = cache.condition("Stalled")
        assert stalled["status"] == "True" and stalled["reason"] == "InvalidSpec", stalled
        assert bad[name][1] in stalled["message"], stalled["message"]
        assert cache.condition("Ready")["status"] == "False"
        assert cache.condition("Reconciling")["status"] == "False"
        assert_conditions_complete(obj)
        wait_until(lambda c=cache: "InvalidSpec" in c.event_reasons(), timeout=5, what="InvalidSpec event")
        if name == "public-cidr":
            record_status_fixture("stalled", obj, "A spec the operator refuses: Stalled, no AWS call.")
    writes = {name: len(cache.status_writes()) for name, cache in caches.items()}
    time.sleep(6)  # longer than a drift interval and a kopf retry: nothing may be retried
    assert sandbox.calls.calls(since=since) == [], "a bad spec must not cost a single AWS call"
    assert {name: len(cache.status_writes()) for name, cache in caches.items()} == writes, "a retry loop"
    for cache in caches.values():
        cache.delete_and_wait(timeout=20)
    assert sandbox.calls.calls(since=since) == [], "deleting a never-acted-on object needs no AWS call"
    assert_hosts_untouched(sandbox)


@pytest.mark.timeout(120)
def test_apply_change_and_delete(sandbox: Sandbox, operator: OperatorProcess) -> None:
    cache = Cache.create(sandbox, "campus", NS)
    obj = cache.wait_ready(timeout=30)
    status = obj["status"]

    # -- Ready: one running instance, its endpoint in every file, memcached answering, conditions, events
    assert status["phase"] == "Ready"
    assert_conditions_complete(obj)
    assert all(c["status"] == ("True" if c["type"] not in ("Reconciling", "Stalled") else "False")
               for c in status["conditions"]), status["conditions"]  # fmt: skip
    [inst] = status["instances"]
    assert inst["state"] == "running"
    [endpoint] = status["endpoints"]
    assert endpoint == f"{inst['privateIp']}:11211"
    assert_hosts_point_at(sandbox, [endpoint])
    assert cache.host_states() == dict.fromkeys(sandbox.edx_hosts, "Configured")
    assert_memcached_works(sandbox, endpoint)
    group_id = status["securityGroupId"]
    assert security_group(sandbox, group_id) is not None
    live = owned_instances(sandbox, cache.uid)
    assert [i["InstanceId"] for i in live] == [inst["id"]]
    assert tags(live[0])[OWNER_TAG] == f"{NS}/campus"
    reasons = cache.event_reasons()
    for reason in ("CloudUpdated", "HostConfigured", "Ready"):
        assert reason in reasons, reasons
    record_status_fixture("ready", obj, "A healthy cache, as the operator reports it in the sandbox.")

    # -- memoryMiB: memcached reconfigured in place over SSM, same instance
    since = sandbox.calls.now()
    generation = cache.patch_spec({"memcached": {"memoryMiB": 1024}})
    obj = cache.wait_ready(timeout=30, generation=generation)
    assert cache.instance_ids() == [inst["id"]]
    sent = [c for c in sandbox.calls.calls("SendCommand", since=since) if inst["id"] in str(c.params)]
    assert sent, "the reconfiguration goes through SSM Run Command on the cache host"
    assert any(c["args"][:2] == ["restart", "memcached"] for c in sandbox.systemctl_calls(inst["id"]))
    stats = wait_until(
        lambda: (s := memcached_stats(sandbox, endpoint)) and int(s[b"limit_maxbytes"]) == 1024 << 20 and s,
        timeout=10,
        what="memcached to run with 1024 MiB",
    )
    assert int(stats[b"limit_maxbytes"]) == 1024 << 20
    assert "RunInstances" not in operations(mutations(sandbox, since))

    # -- instance type: stop, modify, start (no replacement), hosts unchanged
    since = sandbox.calls.now()
    generation = cache.patch_spec({"instance": {"instanceType": "t3.large"}})
    obj = cache.wait_ready(timeout=40, generation=generation)
    done = operations(mutations(sandbox, since))
    for op in ("StopInstances", "ModifyInstanceAttribute", "StartInstances"):
        assert op in done, done
    assert done.index("StopInstances") < done.index("ModifyInstanceAttribute") < done.index("StartInstances")
    assert "RunInstances" not in done and "TerminateInstances" not in done
    assert instance(sandbox, inst["id"])["InstanceType"] == "t3.large"
    assert cache.instance_ids() == [inst["id"]]
    assert_memcached_works(sandbox, cache.endpoints()[0])
    assert_hosts_point_at(sandbox, cache.endpoints())

    # -- replicas 1 -> 2: both endpoints, in order, in every LOCATION
    generation = cache.patch_spec({"instance": {"replicas": 2}})
    obj = cache.wait_ready(timeout=40, generation=generation)
    endpoints = obj["status"]["endpoints"]
    assert len(endpoints) == 2 and endpoints[0] == endpoint
    assert_hosts_point_at(sandbox, endpoints)
    for e in endpoints:
        assert_memcached_works(sandbox, e)
    assert_conditions_complete(obj)
    instance_ids = cache.instance_ids()
    assert len(set(instance_ids)) == 2

    # -- delete: hosts back on localhost (original bytes), instances terminated, group gone, object gone
    cache.delete_and_wait(timeout=45)
    assert_hosts_reverted(sandbox)
    for iid in instance_ids:
        assert instance(sandbox, iid)["State"]["Name"] == "terminated"
    assert security_group(sandbox, group_id) is None
    reasons = [e["reason"] for e in sandbox.kube.list_events(NS, involved_name="campus")]
    assert "HostReverted" in reasons and "Deleted" in reasons, reasons


@pytest.mark.timeout(90)
def test_retain_leaves_aws_alone_and_an_idle_cache_writes_little(
    sandbox: Sandbox, operator: OperatorProcess
) -> None:
    cache = Cache.create(sandbox, "kept", NS, deletionPolicy="Retain")
    obj = cache.wait_ready(timeout=30)
    [iid] = cache.instance_ids()
    group_id = obj["status"]["securityGroupId"]

    # Idle and healthy: probes every second, drift every 5 s, yet the status is patched only when something
    # changes, plus the heartbeat (status.health.lastProbeTime) once a minute.
    time.sleep(3)
    since = time.time()
    time.sleep(30)
    writes = cache.status_writes(since=since)
    every_write = [
        r
        for r in sandbox.kube.requests
        if r.is_write and r.name == "kept" and r.namespace == NS and r.time >= since
    ]
    print(f"idle cache, 30 s: {len(writes)} status write(s), {len(every_write)} write(s) of any kind")
    # the heartbeat, and the hosts' first answer about the cache from their side (status.hosts[].cacheReach)
    assert len(writes) <= 3, f"{len(writes)} status writes in 30 s for an idle, healthy cache"
    assert len(every_write) <= 3, [(r.method, r.path) for r in every_write]
    assert is_still_ready(cache)
    assert cache.ready_history() == ["False", "True"], "Ready flapped on a healthy cache"

    since_calls = sandbox.calls.now()
    cache.delete_and_wait(timeout=45)
    done = operations(mutations(sandbox, since_calls))
    assert set(done) <= {"DeleteTags", "SendCommand"}, done  # SendCommand: the hosts' revert
    kept = instance(sandbox, iid)
    assert kept["State"]["Name"] == "running"
    assert OWNER_TAG not in tags(kept) and OWNER_UID_TAG not in tags(kept)
    group = security_group(sandbox, group_id)
    assert group is not None and OWNER_TAG not in tags(group)
    assert group["IpPermissions"], "the group's rules are left as they were"
    assert_memcached_works(sandbox, obj["status"]["endpoints"][0])
    assert_hosts_reverted(sandbox)
    # what a human does after Retain, so the module leaves no cache host running
    ec2(sandbox).terminate_instances(InstanceIds=[iid])


def is_still_ready(cache: Cache) -> bool:
    return cache.condition("Ready").get("status") == "True"


@pytest.mark.timeout(90)
def test_paused_observes_and_reports_but_changes_nothing(sandbox: Sandbox, operator: OperatorProcess) -> None:
    since = sandbox.calls.now()
    files = snapshot_hosts(sandbox)
    cache = Cache.create(sandbox, "frozen", NS, paused=True)
    obj = cache.wait(lambda o: (o.get("status") or {}).get("phase") == "Paused", timeout=20, what="Paused")
    assert cache.condition("Reconciling")["reason"] == "Paused"
    assert_conditions_complete(obj)
    # observing goes through the region's shared snapshot, refreshed once per drift interval (5 s here)
    wait_until(lambda: sandbox.calls.calls(since=since), timeout=12, what="paused still observes AWS")
    assert mutations(sandbox, since) == [], "paused: not a single AWS mutation"
    assert_hosts_untouched(sandbox, files)

    # unpause: converges
    generation = cache.patch_spec({"paused": False})
    obj = cache.wait_ready(timeout=30, generation=generation)
    group_id = obj["status"]["securityGroupId"]
    [iid] = cache.instance_ids()
    [endpoint] = cache.endpoints()

    # spec.paused on a working cache: still Ready (Argo shows Suspended); an out-of-band rule stays, reported
    generation = cache.patch_spec({"paused": True})
    obj = cache.wait(
        lambda o: (
            o["status"].get("phase") == "Paused" and o["status"].get("observedGeneration") == generation
        ),
        timeout=15,
        what="Paused",
    )
    assert cache.condition("Ready")["status"] == "True"
    record_status_fixture("paused", obj, "spec.paused: true on a working cache.")
    since = sandbox.calls.now()
    sandbox.faults.add_sg_rule(group_id, 11211, cidr="0.0.0.0/0")
    cache.wait(
        lambda o: any(
            c["type"] == "SecurityGroupReady" and c["status"] == "False"
            for c in (o.get("status") or {}).get("conditions") or []
        ),
        timeout=20,
        what="the open rule to be reported",
    )
    assert mutations(sandbox, since) == []
    assert open_to_world(sandbox, group_id)
    generation = cache.patch_spec({"paused": False})
    wait_until(
        lambda: not open_to_world(sandbox, group_id), timeout=10, what="the rule revoked after the pause"
    )
    cache.wait_ready(timeout=20, generation=generation)

    # the annotation pauses too: a dead memcached is reported, not restarted, until the pause ends
    cache.annotate({"edx-remote-cache.openedx.org/paused": "true"})
    obj = cache.wait(
        lambda o: (o.get("status") or {}).get("phase") == "Paused", timeout=15, what="Paused again"
    )
    assert cache.condition("Ready")["status"] == "True"
    assert (
        "paused (annotation edx-remote-cache.openedx.org/paused)" in cache.condition("Reconciling")["message"]
    )
    record_status_fixture("paused-annotation", obj, "Paused with the annotation, on a working cache.")
    since = sandbox.calls.now()
    sandbox.faults.kill_memcached(iid)
    cache.wait(
        lambda o: any(
            c["type"] == "CacheHealthy" and c["status"] == "False"
            for c in (o.get("status") or {}).get("conditions") or []
        ),
        timeout=10,
        what="the dead memcached to be reported",
    )
    time.sleep(3)  # a few probe rounds in which healing would have acted
    assert mutations(sandbox, since) == [], "paused: no restart"
    cache.annotate({"edx-remote-cache.openedx.org/paused": None})
    cache.wait_ready(timeout=20)
    assert cache.instance_ids() == [iid]
    assert_memcached_works(sandbox, endpoint)
    cache.delete_and_wait(timeout=45)
    assert_hosts_reverted(sandbox)


def open_to_world(sb: Sandbox, group_id: str) -> bool:
    group = security_group(sb, group_id) or {}
    return any(
        r.get("CidrIp") == "0.0.0.0/0" for p in group.get("IpPermissions", []) for r in p.get("IpRanges", [])
    )


@pytest.mark.timeout(10)
def test_the_operator_never_left_loopback(operators: Operators, operator: OperatorProcess) -> None:
    """Runs last: everything above ran under the loopback guard (conftest.py checks every module too)."""
    assert operators.violations() == []
    assert operator.proc is not None
    loaded = Path(f"{operators.started[0][1]}.loaded").read_text(encoding="utf-8")
    assert loaded.startswith(f"{operator.proc.pid} loaded"), loaded
