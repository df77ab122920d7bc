"""Restarts are free: an operator SIGKILLed and started again with Ready objects makes no mutating AWS call and
no SSM push (only the region's batched drift check), writes each object's status at most once, and every
object stays Ready throughout."""

from __future__ import annotations

import time

import pytest

from edx_remote_cache.sandbox import Sandbox
from edx_remote_cache.sandbox.harness import condition

from .conftest import Operators
from .support import Cache, mutations, original

pytestmark = pytest.mark.e2e

NS = "e2e-restart"
OBJECTS = 5
DRIFT = 5
DRIFT_COMMENTS = ("edx-remote-cache drift",)


@pytest.mark.timeout(180)
def test_a_restart_with_ready_objects_changes_nothing_and_keeps_them_ready(
    sandbox: Sandbox, operators: Operators
) -> None:
    first = operators.start("first")
    caches = []
    for n in range(OBJECTS):  # each object its own file on a shared Open edX host (as bench/scale.py does)
        host = sandbox.edx_hosts[n % len(sandbox.edx_hosts)]
        path = sandbox.roots[host] / "etc" / "restart" / f"site-{n}.yml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(original("insights.yml"))
        files = {"configFiles": [f"/edx/etc/restart/site-{n}.yml"], "ansibleVarsFiles": []}
        caches.append(Cache.create(sandbox, f"site-{n}", NS, hosts=[host], openedx=files))
    for cache in caches:
        cache.wait_ready(timeout=60)

    # settled: every object probed and Ready at the same moment, and still so two probe rounds later
    def settled() -> bool:
        return all(
            (c.obj.get("status") or {}).get("health", {}).get("reachable") is True
            and condition(c.obj, "Ready").get("status") == "True"
            for c in caches
        )

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if settled():
            time.sleep(2.5)
            if settled():
                break
        time.sleep(0.5)
    assert settled(), [(c.name, condition(c.obj, "Ready").get("reason")) for c in caches]
    at_kill = {c.name: int(c.obj["metadata"]["resourceVersion"]) for c in caches}
    first.kill()
    since = sandbox.calls.now()
    status_since = time.time()
    operators.start("second")
    time.sleep(2 * DRIFT + 3)  # the resume pass, probes, and two drift passes

    assert mutations(sandbox, since=since) == [], "a restart changed AWS or pushed to a host"
    commands = [c.params.get("Comment") for c in sandbox.calls.calls("SendCommand", since=since)]
    assert all(c in DRIFT_COMMENTS for c in commands), commands  # no push (a push starts with a read)
    for cache in caches:
        writes = cache.status_writes(since=status_since)
        assert len(writes) <= 1, f"{cache.name}: {len(writes)} status writes after the restart"
        after = [
            v
            for v in sandbox.kube.iter_history(NS, cache.name)
            if int(v["metadata"]["resourceVersion"]) > at_kill[cache.name]
        ]
        assert all(condition(v, "Ready").get("status") == "True" for v in after), [
            condition(v, "Ready").get("reason") for v in after
        ]
        assert condition(cache.obj, "Ready")["status"] == "True"
    for cache in caches:
        cache.delete()
    for cache in caches:
        cache.wait_gone(timeout=60)
    for n in range(OBJECTS):
        host = sandbox.edx_hosts[n % len(sandbox.edx_hosts)]
        current = (sandbox.roots[host] / "etc" / "restart" / f"site-{n}.yml").read_bytes()
        assert current == original("insights.yml"), f"site-{n}: not reverted"
