"""rollout.maxErrors holds across passes: once more hosts failed than it allows, no host of the object is
pushed again (not on the next pass, not after a back-off, not after an operator restart) until the spec
changes or a human sets the resume annotation to a new value."""

from __future__ import annotations

from typing import Any

from fakes import EDX_HOSTS, World, cache, world

from edx_remote_cache.reconciler.host_pass import HOST_RETRY_MAX_SECONDS
from edx_remote_cache.reconciler.reconciler import Reconciler, RequeueError
from edx_remote_cache.reconciler.state import RESUME_ANNOTATION

FIRST, SECOND = EDX_HOSTS


async def run(reconciler: Reconciler, obj: dict[str, Any], trigger: str = "drift") -> bool:
    """One pass; True when it asked to be run again soon."""
    try:
        await reconciler.reconcile(obj, trigger=trigger)
    except RequeueError:
        return True
    return False


async def converge(reconciler: Reconciler, obj: dict[str, Any], passes: int = 4) -> None:
    for _ in range(passes):
        if not await run(reconciler, obj, trigger="spec"):
            return


def pushed(w: World) -> list[str]:
    return [host for host, _ in w.hosts.pushes]


def with_status(w: World, obj: dict[str, Any], **annotations: str) -> dict[str, Any]:
    """The object as the API would hand it over now: the status written so far, the given annotations."""
    meta = {**obj["metadata"], "annotations": {**obj["metadata"].get("annotations", {}), **annotations}}
    return {**obj, "metadata": meta, "status": dict(w.status.current)}


async def test_a_failed_first_host_holds_the_second_across_passes_back_offs_and_a_restart() -> None:
    w = world()
    w.hosts.fail[FIRST] = "RolledBack"
    obj = cache()  # rollout.maxErrors defaults to 0
    reconciler = Reconciler(w.adapters)
    await converge(reconciler, obj)
    assert pushed(w) == [FIRST]
    halted_events = w.reasons().count("RolloutHalted")
    assert halted_events >= 1
    for _ in range(3):  # later passes: drift, a spec-triggered pass, a back-off long over
        w.clock.advance(HOST_RETRY_MAX_SECONDS + 1)
        assert not await run(reconciler, obj), "a halted rollout is no reason to requeue"
        await run(reconciler, obj, trigger="spec")
    restarted = Reconciler(w.adapters)  # a new operator process: only the status remembers the halt
    await converge(restarted, with_status(w, obj))
    assert pushed(w) == [FIRST], "a host was touched after the rollout halted"

    rollout = w.status.current["rollout"]
    assert rollout["halted"] is True and rollout["failed"] == [FIRST] and rollout["held"] == [SECOND]
    assert rollout["done"] == []
    hosts = {h["instanceId"]: h for h in w.status.current["hosts"]}
    assert hosts[FIRST]["state"] == "RolledBack"
    assert hosts[SECOND]["state"] == "Pending" and "held" in hosts[SECOND]["message"]
    configured = w.status.condition("HostsConfigured")
    assert configured["status"] == "False" and configured["reason"] == "RolloutHalted"
    assert f"{FIRST}: RolledBack (rolledback)" in configured["message"]  # the failing host's own message
    assert SECOND in configured["message"] and RESUME_ANNOTATION in configured["message"]
    ready = w.status.condition("Ready")
    assert ready["status"] == "False" and ready["reason"] == "RolloutHalted"
    assert w.status.current["phase"] == "Degraded"
    assert w.reasons().count("RolloutHalted") == halted_events, "the later passes repeated the news"


async def test_the_resume_annotation_goes_on_only_when_it_gets_a_new_value() -> None:
    w = world()
    w.hosts.fail[FIRST] = "Failed"
    obj = cache()
    obj["metadata"]["annotations"] = {RESUME_ANNOTATION: "old"}  # left over from an earlier halt
    reconciler = Reconciler(w.adapters)
    await converge(reconciler, obj)
    assert pushed(w) == [FIRST] and w.status.current["rollout"]["resumeSeen"] == "old"

    del w.hosts.fail[FIRST]  # the human fixes the host...
    await converge(reconciler, with_status(w, obj))
    assert pushed(w) == [FIRST], "the value present at the halt resumed it"
    await converge(
        reconciler, with_status(w, obj, **{RESUME_ANNOTATION: "2024-05-01T12:00"})
    )  # ...and resumes
    assert pushed(w) == [FIRST, FIRST, SECOND]
    assert "rollout" not in w.status.current
    assert w.status.condition("HostsConfigured")["status"] == "True"
    assert w.status.condition("Ready")["status"] == "True"
    assert "RolloutResumed" in w.reasons()


async def test_a_new_generation_starts_the_rollout_afresh() -> None:
    w = world()
    w.hosts.fail[FIRST] = "RolledBack"
    reconciler = Reconciler(w.adapters)
    await converge(reconciler, cache())
    del w.hosts.fail[FIRST]
    await converge(reconciler, with_status(w, cache(generation=2, probe={"failureThreshold": 3})))
    assert pushed(w) == [FIRST, FIRST, SECOND]
    assert "rollout" not in w.status.current


async def test_an_offline_agent_counts_as_an_error() -> None:
    w = world()
    w.hosts.fail[FIRST] = "Unreachable"
    reconciler = Reconciler(w.adapters)
    await converge(reconciler, cache())
    await run(reconciler, cache())
    assert pushed(w) == [FIRST]
    assert w.status.current["rollout"]["held"] == [SECOND]


async def test_errors_of_earlier_passes_count_and_hosts_go_in_waves_of_max_concurrency() -> None:
    w = world()
    hosts = (*EDX_HOSTS, "i-0aaaaaaaaaaaaaaa3", "i-0aaaaaaaaaaaaaaa4")
    hidden = set(hosts[2:])  # not running yet (a selector would find them later)
    edx = w.adapters.edx_hosts("", 0)
    w.adapters.edx_hosts = lambda region, ttl: type(
        "Later", (), {"hosts": lambda self, **kw: [h for h in edx.hosts(**kw) if h.instance_id not in hidden]}
    )()
    w.hosts.fail[FIRST] = "RolledBack"
    w.hosts.fail[hosts[2]] = "Failed"
    obj = cache(openedx={"hosts": list(hosts), "rollout": {"maxErrors": 1, "maxConcurrency": 2}})
    reconciler = Reconciler(w.adapters)
    await converge(reconciler, obj)
    assert pushed(w) == [FIRST, SECOND], "one error is within maxErrors=1"
    assert "rollout" not in w.status.current
    hidden.clear()
    await run(reconciler, obj)
    # the third host's failure is the second error: its wave (with the fourth) finished, nothing more started
    assert pushed(w) == [FIRST, SECOND, hosts[2], hosts[3]]
    rollout = w.status.current["rollout"]
    assert rollout["failed"] == [FIRST, hosts[2]] and rollout["done"] == [SECOND, hosts[3]]


async def test_a_wave_already_started_finishes_and_the_rest_is_held() -> None:
    w = world()
    hosts = (*EDX_HOSTS, "i-0aaaaaaaaaaaaaaa3", "i-0aaaaaaaaaaaaaaa4")
    w.hosts.fail[FIRST] = "Conflict"
    reconciler = Reconciler(w.adapters)
    await converge(reconciler, cache(openedx={"hosts": list(hosts), "rollout": {"maxConcurrency": 2}}))
    assert pushed(w) == [FIRST, SECOND]
    rollout = w.status.current["rollout"]
    assert rollout["done"] == [SECOND] and rollout["held"] == list(hosts[2:])
