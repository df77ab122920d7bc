"""A cache host that never answered since it started, on fakes: diagnosed from its boot log (BootFailed), replaced
at most once per spec generation, the Open edX hosts never pointed at it; a new generation tries afresh."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

from fakes import World, cache, world

from edx_remote_cache.adapters.probe import ProbeResult
from edx_remote_cache.reconciler.boot import BOOT_GRACE_SECONDS, LOOK_AGAIN_SECONDS
from edx_remote_cache.reconciler.reconciler import Reconciler, RequeueError

MEMCACHED_SAYS = "failed to listen on one of interface(s) {ip}: Address already in use"


class Boots:
    """Instances launched while `broken` is set never answer; their console output carries memcached's error."""

    def __init__(self, w: World, console: str = MEMCACHED_SAYS) -> None:
        self.w, self.console, self.broken = w, console, True
        self.dead: set[str] = set()  # endpoints of hosts whose memcached never started
        act, probe = w.adapters.act, w.adapters.probe_all

        def launching(plan: Any, **kwargs: Any) -> Any:
            done = act(plan, **kwargs)
            if self.broken:
                for iid in done.launched.values():
                    inst = next(i for i in w.cloud.instances if i.instance_id == iid)
                    self.dead.add(f"{inst.private_ip}:11211")
            return done

        async def probing(targets: Sequence[str], **kwargs: Any) -> list[ProbeResult]:
            out = await probe(targets, **kwargs)
            return [ProbeResult(r.endpoint, reachable=False, error_kind="refused", error="connection refused")
                    if r.endpoint in self.dead else r for r in out]  # fmt: skip

        w.adapters.act, w.adapters.probe_all = launching, probing
        w.adapters.console_output = self.read
        self.reads: list[str] = []

    def read(self, clients: Any, instance_id: str) -> str:
        self.reads.append(instance_id)
        inst = next(i for i in self.w.cloud.instances if i.instance_id == instance_id)
        if f"{inst.private_ip}:11211" not in self.dead:
            return "[   18.3] cloud-init[987]: Setting up memcached (1.6.24-1build3) ...\n"
        said = self.console.format(ip=inst.private_ip)
        return (
            f"[   18.3] cloud-init[987]: Setting up memcached ...\n[   18.9] memcached[1203]: {said}\n"
            if said
            else ""
        )


async def settle(reconciler: Reconciler, obj: dict[str, Any]) -> None:
    for _ in range(5):
        with contextlib.suppress(RequeueError):
            await reconciler.reconcile(obj)
            return


async def failing_round(w: World, reconciler: Reconciler, obj: dict[str, Any]) -> str | None:
    for _ in range(2):  # failureThreshold
        await reconciler.probe_once(obj)
    return await reconciler.heal(obj)


def condition(w: World, ctype: str) -> tuple[str, str, str]:
    c = w.status.condition(ctype)
    return c.get("status", ""), c.get("reason", ""), c.get("message", "")


async def test_unbootable_cache_is_replaced_once_then_stalled_and_the_hosts_never_move() -> None:
    w = world()
    Boots(w)
    reconciler, obj = Reconciler(w.adapters), cache()
    await settle(reconciler, obj)
    first = w.cloud.running()[0].instance_id
    assert w.hosts.pushes == [], "no host is pointed at a cache that has not answered"
    assert "waiting for" in w.status.current["hosts"][0]["message"]

    assert await failing_round(w, reconciler, obj) == "ReplaceInstance"
    status, reason, message = condition(w, "CacheHealthy")
    assert (status, reason) == ("False", "BootFailed")
    assert "Address already in use" in message and first in message
    assert condition(w, "Ready")[0] == "False"
    assert w.reasons().count("BootFailed") == 1
    assert w.status.current["boot"]["replaced"] == [first]
    assert w.adapters.metrics.boot_failures.labels("default", "site")._value.get() == 1

    second = w.cloud.running()[0].instance_id
    assert second != first
    for _ in range(3):
        w.clock.advance(LOOK_AGAIN_SECONDS + 1)
        assert await failing_round(w, reconciler, obj) in ("BootFailed", None)
    assert condition(w, "Stalled")[:2] == ("True", "BootFailed")
    assert condition(w, "CacheHealthy")[1] == "BootFailed"
    assert w.aws().count("RunInstance") == 2, "one replacement per spec generation, not one per round"
    diagnosed = [m for _, reason, m in w.events if reason == "BootFailed" and not m.startswith("Stalled:")]
    assert len(diagnosed) == 2, "one Warning event per instance (and one for the Stalled transition)"
    assert "not replaced again" in diagnosed[1]
    assert w.hosts.pushes == [], "the hosts were never re-pointed"

    # an operator restart does not start the count over
    again = Reconciler(w.adapters)
    restarted = {**obj, "status": dict(w.status.current)}
    await settle(again, restarted)
    w.clock.advance(LOOK_AGAIN_SECONDS + 1)
    assert await failing_round(w, again, restarted) == "BootFailed"
    assert w.aws().count("RunInstance") == 2
    assert w.hosts.pushes == []


async def test_a_new_spec_generation_gets_a_fresh_attempt_and_the_site_moves_once_it_answers() -> None:
    w = world()
    boots = Boots(w)
    reconciler, obj = Reconciler(w.adapters), cache()
    await settle(reconciler, obj)
    await failing_round(w, reconciler, obj)
    w.clock.advance(LOOK_AGAIN_SECONDS + 1)
    assert await failing_round(w, reconciler, obj) == "BootFailed"

    boots.broken = False  # the cause is fixed (the mirror is reachable again) ...
    fixed = cache(generation=2, healing={"maxReplacementsPerHour": 3})  # ... and the spec changed
    await settle(reconciler, fixed)
    assert await failing_round(w, reconciler, fixed) == "ReplaceInstance"
    healthy = w.cloud.running()[0]
    await settle(reconciler, fixed)
    await reconciler.probe_once(fixed)
    assert await reconciler.heal(fixed) is None  # all clear: the healing episode ends
    await reconciler.probe_once(fixed)
    assert {endpoints for _, endpoints in w.hosts.pushes} == {(f"{healthy.private_ip}:11211",)}
    assert condition(w, "Stalled")[0] == "False", condition(w, "Stalled")
    assert condition(w, "Ready")[0] == "True", condition(w, "Ready")
    assert w.aws().count("RunInstance") == 3


async def test_a_silent_boot_waits_out_the_grace_before_it_counts_as_failed() -> None:
    w = world()
    boots = Boots(w, console="")
    reconciler, obj = Reconciler(w.adapters), cache()
    await settle(reconciler, obj)
    assert await failing_round(w, reconciler, obj) is None
    w.clock.advance(LOOK_AGAIN_SECONDS / 2)
    assert await failing_round(w, reconciler, obj) is None
    assert len(boots.reads) == 1, "the console is read at most every LOOK_AGAIN_SECONDS"
    assert w.aws().count("RunInstance") == 1
    w.clock.advance(BOOT_GRACE_SECONDS)
    assert await failing_round(w, reconciler, obj) == "ReplaceInstance"
    assert "say nothing about memcached" in condition(w, "CacheHealthy")[2]


async def test_a_cache_that_once_answered_still_climbs_the_ladder() -> None:
    w = world()
    boots = Boots(w)
    boots.broken = False
    reconciler, obj = Reconciler(w.adapters), cache()
    await settle(reconciler, obj)
    endpoint = f"{w.cloud.running()[0].private_ip}:11211"
    w.memcached.down[endpoint] = "refused"  # on its host too (the second opinion confirms it)
    assert await failing_round(w, reconciler, obj) == "RestartMemcached"
    assert boots.reads == [], "no boot diagnosis for a cache that served"


async def test_a_cache_that_answered_before_an_operator_restart_is_not_taken_for_a_fresh_boot() -> None:
    """`status.boot.answered` is what a restarted operator knows: its first probes failing (the cache died
    during the rollout) climb the ladder; a boot diagnosis would wait out a grace period with the site down."""
    w = world()
    boots = Boots(w)
    boots.broken = False
    reconciler, obj = Reconciler(w.adapters), cache()
    await settle(reconciler, obj)
    served = w.cloud.running()[0]
    assert w.status.current["boot"]["answered"] == [served.instance_id]
    pushes = list(w.hosts.pushes)

    endpoint = f"{served.private_ip}:11211"
    w.memcached.down[endpoint] = "refused"
    again = Reconciler(w.adapters)
    restarted = {**obj, "status": dict(w.status.current)}
    await settle(again, restarted)
    assert w.status.current["boot"]["answered"] == [served.instance_id], "kept across the restart"
    assert await failing_round(w, again, restarted) == "RestartMemcached"
    assert boots.reads == [], "no boot diagnosis for a cache that served"
    assert w.hosts.pushes == pushes, "the hosts keep the cache they had"
