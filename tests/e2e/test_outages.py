"""Outages of the control plane, on the real operator process.

* AWS answering Throttling or 5xx to everything for 60 s: the region's calls back off (at most 5 in any
  second, fewer than one a second overall), the object created meanwhile says it is still reconciling, and it
  is created once the storm ends with exactly one instance and one security group; Ready objects stay Ready.
* The Kubernetes API away for 30 s (the emulator's port closed, its state kept; the spec changed meanwhile by
  someone who can still reach it, and etcd compacted so the operator's watch must list again on 410): the
  operator does not exit, keeps probing, heals what broke meanwhile exactly once, corrects drift exactly once,
  and its status catches up with everything (the heal, the new generation) once the API answers.
"""

from __future__ import annotations

import collections
import re
import time
import urllib.request

import pytest

from edx_remote_cache.sandbox import Sandbox
from edx_remote_cache.sandbox.harness import OperatorProcess

from .conftest import Operators
from .support import (
    Cache,
    ec2,
    mutations,
    operations,
    original,
    owned_instances,
    security_group,
    wait_until,
)

pytestmark = pytest.mark.e2e

NS = "e2e-outages"
API_OUTAGE = 30.0
HEAL_COMMENT = "edx-remote-cache heal"


def probes_made(operator: OperatorProcess) -> float:
    """Probe rounds the operator has made (its /metrics, reached over the bridged port)."""
    with urllib.request.urlopen(operator.metrics_url, timeout=5) as response:
        text = response.read().decode()
    return sum(
        float(v)
        for v in re.findall(r"^edx_remote_cache_probe_duration_seconds_count\{.*\} (\S+)$", text, re.M)
    )


@pytest.mark.timeout(150)
def test_kubernetes_api_away_30s_probing_and_healing_go_on_and_the_status_catches_up(
    sandbox: Sandbox, operators: Operators
) -> None:
    operator = operators.start("api-outage")
    cache = Cache.create(sandbox, "api-away", NS)
    obj = cache.wait_ready(timeout=30)
    [instance_id] = cache.instance_ids()
    group_id = obj["status"]["securityGroupId"]
    edx_group = sandbox.edx_security_group_id

    since = sandbox.calls.now()
    sandbox.kube.stop_listening()
    went = time.monotonic()
    probes_before = probes_made(operator)
    sandbox.faults.kill_memcached(instance_id)  # the operator must heal this with nobody to report to
    sandbox.faults.remove_sg_rule(group_id, 11211, source_group_id=edx_group)  # and correct this drift
    generation = cache.patch_spec({"probe": {"failureThreshold": 3}})  # a change it cannot see yet
    wait_until(
        lambda: [
            c
            for c in sandbox.calls.calls("SendCommand", since=since)
            if c.params.get("Comment") == HEAL_COMMENT
        ],
        timeout=API_OUTAGE - 5,
        what="the heal while the API is away",
    )
    time.sleep(max(0.0, API_OUTAGE - (time.monotonic() - went)))
    assert operator.alive(), "the operator exited while the API was away"
    probed = probes_made(operator) - probes_before
    assert probed >= API_OUTAGE / 2, (
        f"probing stopped while the API was away ({probed} probes in {API_OUTAGE}s)"
    )
    sandbox.kube.start_listening(compact=True)  # the operator's resourceVersion is gone: 410, list again
    back = time.monotonic()

    caught_up = cache.wait(
        lambda o: (
            (o.get("status") or {}).get("observedGeneration") == generation
            and (o.get("status") or {}).get("lastHeal", {}).get("action") == "RestartMemcached"
        ),
        timeout=30,
        what="the status to catch up with the heal and the new generation",
    )
    print(f"status caught up {time.monotonic() - back:.1f}s after the API came back")
    cache.wait_ready(timeout=20, generation=generation)
    assert operator.alive()
    heals = [
        c for c in sandbox.calls.calls("SendCommand", since=since) if c.params.get("Comment") == HEAL_COMMENT
    ]
    assert len(heals) == 1, f"one restart, not one per retry: {len(heals)}"
    done = operations(mutations(sandbox, since))
    assert done.count("AuthorizeSecurityGroupIngress") == 1, done  # the drift corrected once, not re-done
    assert not {"RunInstances", "TerminateInstances", "CreateSecurityGroup"} & set(done), done
    assert caught_up["metadata"]["generation"] == generation
    cache.delete_and_wait()


STORM = 60.0


def calls_per_second(calls: list, start: float) -> dict[int, int]:
    return dict(collections.Counter(int(c.at - start) for c in calls))


@pytest.mark.timeout(180)
def test_aws_throttling_and_5xx_for_60s_calls_back_off_and_recover_without_duplicates(
    sandbox: Sandbox, operators: Operators
) -> None:
    operators.start("aws-storm")
    steady = [own_file_cache(sandbox, f"steady-{n}", n) for n in range(2)]
    for cache in steady:
        cache.wait_ready(timeout=30)

    sandbox.faults.aws_storm(STORM)  # every EC2/SSM call of the operator: throttled or a 5xx, in turns
    start = sandbox.calls.now()
    fresh = own_file_cache(
        sandbox, "born-in-a-storm", 2
    )  # needs a group and an instance: only after the storm
    time.sleep(STORM / 2)
    during = fresh.status
    print(f"status during the storm: {during.get('conditions')}")
    assert condition_status(during, "Ready") != "True"
    assert condition_status(during, "Reconciling") == "True"  # loosely: it says it is still at it
    time.sleep(max(0.0, STORM - (sandbox.calls.now() - start)))
    storm = sandbox.calls.calls(since=start, until=start + STORM)
    per_second = calls_per_second(storm, start)
    print(f"AWS calls during the {STORM:.0f}s storm: {len(storm)}, max {max(per_second.values())}/s")
    assert max(per_second.values()) <= 5, f"no backing off: {sorted(per_second.items())}"
    assert len(storm) <= STORM, f"{len(storm)} calls in {STORM}s: more than one a second on average"

    obj = fresh.wait_ready(timeout=45)
    recovered = sandbox.calls.now() - start - STORM
    print(f"Ready {recovered:.1f}s after the storm ended")
    assert len(owned_instances(sandbox, fresh.uid, live_only=False)) == 1, (
        "one instance, whatever was retried"
    )
    groups = ec2(sandbox).describe_security_groups(
        Filters=[
            {
                "Name": "group-name",
                "Values": [security_group(sandbox, obj["status"]["securityGroupId"])["GroupName"]],
            }
        ]
    )["SecurityGroups"]
    assert len(groups) == 1, "one security group"
    for cache in steady:
        assert condition_status(cache.status, "Ready") == "True", f"{cache.name} lost Ready: {cache.status}"
    for cache in [fresh, *steady]:
        cache.delete()
    for cache in [fresh, *steady]:
        cache.wait_gone(timeout=60)


def own_file_cache(sb: Sandbox, name: str, n: int) -> Cache:
    """An object with a config file of its own on a shared Open edX host (as bench/scale.py does), so several
    objects never push into the same file."""
    host = sb.edx_hosts[n % len(sb.edx_hosts)]
    path = sb.roots[host] / "etc" / "outages" / f"{name}.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(original("insights.yml"))
    files = {"configFiles": [f"/edx/etc/outages/{name}.yml"], "ansibleVarsFiles": []}
    return Cache.create(sb, name, NS, hosts=[host], openedx=files)


def condition_status(status: dict, ctype: str) -> str | None:
    return next((c.get("status") for c in status.get("conditions") or [] if c.get("type") == ctype), None)
