"""Restarts are free: an operator restarted with Ready objects changes nothing in AWS, pushes nothing to the
Open edX hosts, writes each object's status at most once, and every object stays Ready throughout."""

from __future__ import annotations

from typing import Any

from fakes import cache, world

from edx_remote_cache.reconciler.reconciler import Reconciler, RequeueError
from edx_remote_cache.reconciler.status import HEARTBEAT_SECONDS


async def converge(reconciler: Reconciler, obj: dict[str, Any], trigger: str = "spec") -> None:
    for _ in range(4):
        try:
            await reconciler.reconcile(obj, trigger=trigger)
            return
        except RequeueError:
            continue


async def test_a_restart_with_ready_objects_mutates_nothing_and_writes_each_status_at_most_once() -> None:
    w = world()
    first = Reconciler(w.adapters)
    objects = [cache(f"site-{n}", uid=f"uid-{n}") for n in range(3)]
    statuses: dict[str, dict[str, Any]] = {}
    for obj in objects:  # one object at a time: FakeStatus keeps one status dict
        w.status.current = {}
        await converge(first, obj)
        await first.probe_once(obj)
        assert w.status.condition("Ready")["status"] == "True"
        statuses[obj["metadata"]["name"]] = dict(w.status.current)
    probed_before = {name: s["health"]["lastProbeTime"] for name, s in statuses.items()}
    w.clock.advance(30)  # the new process starts a little later (no heartbeat due yet)
    effects, patches = len(w.journal), len(w.status.patches)

    restarted = Reconciler(w.adapters)
    for obj in objects:
        name = obj["metadata"]["name"]
        w.status.current = dict(statuses[name])
        view = {**obj, "status": dict(statuses[name])}
        await converge(restarted, view, trigger="resume")  # kopf's on.resume
        await restarted.probe_once(view)  # the daemon's first probe round
        await restarted.reconcile(view, trigger="drift")
        assert w.status.condition("Ready")["status"] == "True", name
    after = w.journal[effects:]
    assert [e for e in after if e[0] in ("aws", "push", "revert", "ssm")] == []
    writes = [e[1] for e in after if e[0] == "status"]
    assert all(writes.count(obj["metadata"]["name"]) <= 1 for obj in objects), writes
    for patch in w.status.patches[patches:]:
        assert {c["type"]: c["status"] for c in patch["conditions"]}["Ready"] == "True"
    # nothing new: no write at once, but the new process's own probe shows at the next heartbeat
    w.clock.advance(HEARTBEAT_SECONDS)
    for obj in objects:
        name = obj["metadata"]["name"]
        w.status.current = dict(statuses[name])
        await restarted.probe_once({**obj, "status": dict(statuses[name])})
        assert w.status.current["health"]["lastProbeTime"] > probed_before[name], name
