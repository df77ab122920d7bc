"""Outages of the control plane, on the real operator process.

* The Kubernetes API away for 30 s (the emulator's port closed, its state kept; the spec changed meanwhile by
  someone who can still reach it, and etcd compacted so the operator's watch must list again on 410): the
  operator does not exit, keeps probing, heals what broke meanwhile exactly once, corrects drift exactly once,
  and its status catches up with everything (the heal, the new generation) once the API answers.
"""

from __future__ import annotations

import re
import time
import urllib.request

import pytest

from edx_remote_cache.sandbox import Sandbox
from edx_remote_cache.sandbox.harness import OperatorProcess

from .conftest import Operators
from .support import Cache, mutations, operations, wait_until

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
