"""Every named Open edX host is accounted for: an id EC2 does not know, or a terminated host, is reported by
id (HostsConfigured=False HostNotFound, not Ready, one Event), and so is a selector that matches nothing."""

from __future__ import annotations

from typing import Any

from fakes import EDX_HOSTS, World, cache, world

from edx_remote_cache.reconciler.reconciler import Reconciler, RequeueError

MADE_UP = tuple(f"i-0dead{n:012x}" for n in range(98))


async def converge(reconciler: Reconciler, obj: dict[str, Any], trigger: str = "spec") -> None:
    for _ in range(4):
        try:
            await reconciler.reconcile(obj, trigger=trigger)
            return
        except RequeueError:
            continue


def not_found_events(w: World) -> list[str]:
    return [message for _, reason, message in w.events if reason == "HostNotFound"]


async def test_ids_ec2_does_not_know_are_reported_by_id_and_the_object_is_not_ready() -> None:
    w = world()
    for iid in MADE_UP:
        w.edx.state[iid] = ""
    reconciler = Reconciler(w.adapters)
    obj = cache(openedx={"hosts": [*EDX_HOSTS, *MADE_UP]})
    await converge(reconciler, obj)
    await converge(reconciler, obj, trigger="drift")

    assert sorted(h for h, _ in w.hosts.pushes) == sorted(EDX_HOSTS)  # the real ones are still configured
    hosts = w.status.condition("HostsConfigured")
    assert hosts["status"] == "False" and hosts["reason"] == "HostNotFound", hosts
    assert hosts["message"].startswith("2/2 hosts configured; not found: ")
    assert (
        f"{MADE_UP[0]}: no live instance in us-east-1 (unknown id or terminated)" in hosts["message"]
        and "and 93 more" in hosts["message"]
    )
    ready = w.status.condition("Ready")
    assert ready["status"] == "False" and ready["reason"] == "HostNotFound"
    assert w.status.current["phase"] == "Degraded"
    [event] = [e for e in not_found_events(w) if e.startswith("not found in EC2")]  # once, not every pass
    assert MADE_UP[0] in event and "and 88 more" in event


async def test_a_terminated_host_is_reported_and_a_fixed_spec_is_ready_again() -> None:
    w = world()
    gone = EDX_HOSTS[1]
    w.edx.state[gone] = "terminated"
    reconciler = Reconciler(w.adapters)
    await converge(reconciler, cache())
    assert [h for h, _ in w.hosts.pushes] == [EDX_HOSTS[0]]
    hosts = w.status.condition("HostsConfigured")
    assert (
        hosts["reason"] == "HostNotFound" and f"{gone}: terminated" in hosts["message"]
    )  # still listed by EC2
    await converge(reconciler, cache(generation=2, openedx={"hosts": [EDX_HOSTS[0]]}))
    assert w.status.condition("Ready")["status"] == "True"


async def test_a_selector_that_matches_nothing_says_so() -> None:
    w = world()
    reconciler = Reconciler(w.adapters)
    obj = cache(openedx={"hosts": None, "hostSelector": {"role": "edxapp"}})
    obj["spec"]["openedx"].pop("hosts")
    await converge(reconciler, obj)
    hosts = w.status.condition("HostsConfigured")
    assert hosts["status"] == "False" and hosts["reason"] == "HostNotFound", hosts
    assert "openedx.hostSelector role=edxapp matches no live instance in us-east-1" in hosts["message"]
    assert w.status.condition("Ready")["status"] == "False"
    assert not_found_events(w)
    w.edx.selected = list(EDX_HOSTS)  # the Open edX hosts get their tag
    await converge(reconciler, obj, trigger="drift")
    assert w.status.condition("Ready")["status"] == "True"
