"""Two objects naming the same Open edX hosts (issue 16 item 7), on fakes: the younger one never touches them and
says who manages them, nothing flaps, deleting either leaves the other's hosts alone, the younger takes over once
the owner is gone, and a host removed from the spec is reverted like a delete would."""

from __future__ import annotations

import contextlib

from fakes import EDX_HOSTS, World, cache, world

from edx_remote_cache.reconciler.reconciler import Reconciler, RequeueError


async def settle(reconciler: Reconciler, obj: dict, *, rounds: int = 6) -> None:
    for _ in range(rounds):
        with contextlib.suppress(RequeueError):
            await reconciler.reconcile(obj, trigger="drift")
            return


def two_objects() -> tuple[World, Reconciler, dict, dict]:
    w = world()
    reconciler = Reconciler(w.adapters)
    owner = w.claims.watch(cache("site", uid="uid-site", created="2025-01-01T00:00:00Z"))
    copy = w.claims.watch(cache("copy", uid="uid-copy", created="2025-02-01T00:00:00Z"))
    return w, reconciler, owner, copy


def endpoints_of(w: World, name: str) -> tuple[str, ...]:
    return tuple(w.status.by_name[name]["endpoints"])


def condition(w: World, name: str, ctype: str) -> dict:
    return next(c for c in w.status.by_name[name]["conditions"] if c["type"] == ctype)


async def test_the_younger_object_never_touches_a_host_the_older_one_manages_and_says_so() -> None:
    w, reconciler, owner, copy = two_objects()
    await settle(reconciler, owner)
    await settle(reconciler, copy)
    assert {h for h, _ in w.hosts.pushes} == set(EDX_HOSTS)
    assert all(w.hosts.pointing[h] == endpoints_of(w, "site") for h in EDX_HOSTS)
    assert [h for h, e in w.hosts.pushes if e == endpoints_of(w, "copy")] == [], "the copy pushed a host"
    hosts = condition(w, "copy", "HostsConfigured")
    assert (hosts["status"], hosts["reason"]) == ("False", "HostClaimed")
    assert "managed by default/site" in hosts["message"]
    assert condition(w, "copy", "Ready")["status"] == "False"
    assert condition(w, "copy", "Reconciling")["status"] == "False", "nothing to wait for: a human must act"
    assert {h["state"] for h in w.status.by_name["copy"]["hosts"]} == {"Claimed"}
    assert condition(w, "site", "Ready")["status"] == "True"
    assert w.reasons().count("HostClaimed") >= len(EDX_HOSTS)


async def test_the_order_the_objects_are_reconciled_in_does_not_matter_and_nothing_flaps() -> None:
    w, reconciler, owner, copy = two_objects()
    await settle(reconciler, copy)  # the copy's pass comes first: the older object still owns the hosts
    await settle(reconciler, owner)
    pushes = len(w.hosts.pushes)
    writes = len(w.status.patches)
    for _ in range(5):
        w.clock.advance(10)
        await settle(reconciler, copy)
        await settle(reconciler, owner)
    assert len(w.hosts.pushes) == pushes, "a host was pushed again"
    assert [h for h, e in w.hosts.pushes if e == endpoints_of(w, "copy")] == [], "the copy pushed a host"
    assert all(w.hosts.pointing[h] == endpoints_of(w, "site") for h in EDX_HOSTS)
    assert len(w.status.patches) == writes, "the status flapped"


async def test_deleting_the_younger_object_leaves_the_owners_hosts_alone() -> None:
    w, reconciler, owner, copy = two_objects()
    await settle(reconciler, owner)
    await settle(reconciler, copy)
    mark = len(w.journal)
    await reconciler.teardown(copy)
    w.claims.forget(copy)
    assert [e for e in w.journal[mark:] if e[0] == "revert"] == [], (
        "the copy reverted hosts it never configured"
    )
    assert all(w.hosts.pointing[h] == endpoints_of(w, "site") for h in EDX_HOSTS)


async def test_after_the_owner_is_deleted_the_younger_object_takes_over_and_pushes() -> None:
    w, reconciler, owner, copy = two_objects()
    await settle(reconciler, owner)
    await settle(reconciler, copy)
    await reconciler.teardown(owner)
    assert not w.hosts.pointing, "the owner's delete reverts its hosts"
    w.claims.forget(owner)
    await settle(reconciler, copy)
    assert all(w.hosts.pointing[h] == endpoints_of(w, "copy") for h in EDX_HOSTS)
    assert condition(w, "copy", "HostsConfigured")["status"] == "True"
    assert condition(w, "copy", "Ready")["status"] == "True"


async def test_an_older_object_that_names_a_held_host_later_waits_for_the_holder_to_revert_it() -> None:
    w, reconciler, owner, copy = two_objects()
    owner["spec"]["openedx"]["hosts"] = [EDX_HOSTS[0]]
    await settle(reconciler, copy)  # the copy is alone on EDX_HOSTS[1]: it manages it
    await settle(reconciler, owner)
    assert w.hosts.pointing[EDX_HOSTS[1]] == endpoints_of(w, "copy")
    owner["spec"]["openedx"]["hosts"] = list(EDX_HOSTS)  # the older object now names it too
    owner["metadata"]["generation"] = 2
    with contextlib.suppress(RequeueError):
        await reconciler.reconcile(owner)
    assert w.hosts.pointing[EDX_HOSTS[1]] == endpoints_of(w, "copy"), "pushed before the holder let go"
    waiting = next(h for h in w.status.by_name["site"]["hosts"] if h["instanceId"] == EDX_HOSTS[1])
    assert waiting["state"] == "Pending" and "waiting for default/copy" in waiting["message"]
    await settle(reconciler, copy)  # the copy lets go: it reverts the host it no longer owns
    assert EDX_HOSTS[1] not in w.hosts.pointing
    assert "HostReleased" in w.reasons()
    await settle(reconciler, owner)
    assert w.hosts.pointing[EDX_HOSTS[1]] == endpoints_of(w, "site")


async def test_a_host_removed_from_the_spec_is_reverted_and_the_others_stay() -> None:
    w = world()
    reconciler = Reconciler(w.adapters)
    obj = w.claims.watch(cache())
    await settle(reconciler, obj)
    obj["spec"]["openedx"]["hosts"] = [EDX_HOSTS[0]]
    obj["metadata"]["generation"] = 2
    await settle(reconciler, obj)
    assert EDX_HOSTS[1] not in w.hosts.pointing
    assert w.hosts.pointing[EDX_HOSTS[0]] == endpoints_of(w, "site")
    assert [h["instanceId"] for h in w.status.by_name["site"]["hosts"]] == [EDX_HOSTS[0]]
    assert any(r == "HostReleased" and EDX_HOSTS[1] in m for _, r, m in w.events)
    mark = len(w.journal)
    await reconciler.teardown(obj)
    assert [e for e in w.journal[mark:] if e[0] == "revert"] == [("revert", EDX_HOSTS[0])]


async def test_a_removed_host_whose_revert_fails_stays_held_and_is_retried() -> None:
    w = world()
    reconciler = Reconciler(w.adapters)
    obj = w.claims.watch(cache())
    await settle(reconciler, obj)
    w.hosts.fail_reverts[EDX_HOSTS[1]] = "Unreachable"
    obj["spec"]["openedx"]["hosts"] = [EDX_HOSTS[0]]
    obj["metadata"]["generation"] = 2
    await settle(reconciler, obj)
    held = next(h for h in w.status.by_name["site"]["hosts"] if h["instanceId"] == EDX_HOSTS[1])
    assert held["state"] == "Unreachable" and "revert failed" in held["message"]
    assert condition(w, "site", "HostsConfigured")["status"] == "False"
    del w.hosts.fail_reverts[EDX_HOSTS[1]]
    await settle(reconciler, obj)
    assert EDX_HOSTS[1] not in w.hosts.pointing
    assert condition(w, "site", "Ready")["status"] == "True"
