"""The healing ladder rung by rung, on fakes: restart memcached, then start / relaunch, then replace (rate
limited), and the ladder starting over once the cache answers again."""

from __future__ import annotations

import contextlib

from fakes import EDX_HOSTS, World, cache, world

from edx_remote_cache.reconciler.reconciler import Reconciler, RequeueError

PATIENCE = 1 * 2 + 5 * 0.5  # probe interval x failure threshold + 5 x probe timeout (see cache())


async def ready(**spec: object) -> tuple[World, Reconciler, dict, str, str]:
    w = world()
    reconciler = Reconciler(w.adapters)
    obj = cache(**spec)
    for _ in range(5):
        with contextlib.suppress(RequeueError):
            await reconciler.reconcile(obj)
            break
    instance = w.cloud.running()[0]
    return w, reconciler, obj, instance.instance_id, f"{instance.private_ip}:11211"


async def fail_probes(w: World, reconciler: Reconciler, obj: dict, endpoint: str, rounds: int = 2) -> None:
    w.memcached.down[endpoint] = "timeout"
    for _ in range(rounds):
        await reconciler.probe_once(obj)


async def test_below_the_failure_threshold_nothing_is_done() -> None:
    w, reconciler, obj, _, endpoint = await ready()
    await fail_probes(w, reconciler, obj, endpoint, rounds=1)
    assert await reconciler.heal(obj) is None
    assert [e for e in w.journal if e[0] == "ssm"] == []


async def test_rung_one_restarts_memcached_once_then_waits_for_the_probes() -> None:
    w, reconciler, obj, instance_id, endpoint = await ready()
    await fail_probes(w, reconciler, obj, endpoint)
    assert await reconciler.heal(obj) == "RestartMemcached"
    assert ("ssm", instance_id, "systemctl restart memcached") in w.journal
    assert "RestartMemcached" in w.reasons()
    w.clock.advance(1)
    assert await reconciler.heal(obj) is None, "the restart gets time to show in the probes"
    assert sum(1 for e in w.journal if e[0] == "ssm") == 1


async def test_rung_two_starts_an_instance_that_was_stopped_behind_our_back() -> None:
    w, reconciler, obj, instance_id, endpoint = await ready()
    await fail_probes(w, reconciler, obj, endpoint)
    await reconciler.heal(obj)  # rung 1
    w.cloud.set_state(instance_id, "stopped")
    w.clock.advance(PATIENCE + 1)
    assert await reconciler.heal(obj) == "StartInstance"
    assert "StartInstance" in w.aws()
    assert w.aws().count("RunInstance") == 1, "a stopped instance is started, not replaced"


async def test_rung_two_relaunches_a_terminated_instance_and_repoints_the_hosts() -> None:
    w, reconciler, obj, instance_id, endpoint = await ready()
    await fail_probes(w, reconciler, obj, endpoint)
    await reconciler.heal(obj)
    w.cloud.set_state(instance_id, "terminated")
    w.clock.advance(PATIENCE + 1)
    assert await reconciler.heal(obj) == "ReplaceInstance"
    new = w.cloud.running()[0]
    assert new.instance_id != instance_id
    assert w.hosts.pushes[-len(EDX_HOSTS) :] == [(h, (f"{new.private_ip}:11211",)) for h in EDX_HOSTS]


async def settle(reconciler: Reconciler, obj: dict, passes: int = 6) -> None:
    for _ in range(passes):
        with contextlib.suppress(RequeueError):
            await reconciler.reconcile(obj)


async def test_rung_three_replaces_a_running_instance_make_before_break() -> None:
    w, reconciler, obj, instance_id, endpoint = await ready()
    await fail_probes(w, reconciler, obj, endpoint)
    await reconciler.heal(obj)
    w.clock.advance(PATIENCE + 1)
    assert await reconciler.heal(obj) == "ReplaceInstance"
    assert w.aws().count("RunInstance") == 2
    new = next(i for i in w.cloud.running() if i.instance_id != instance_id)
    new_endpoint = f"{new.private_ip}:11211"
    await settle(reconciler, obj)
    assert instance_id not in [i.instance_id for i in w.cloud.running()]
    order = [
        e for e in w.journal if (e[0] == "push" and e[2] == new_endpoint) or e == ("aws", "TerminateInstance")
    ]
    assert order == [*(("push", h, new_endpoint) for h in EDX_HOSTS), ("aws", "TerminateInstance")], (
        "the hosts move to the new cache first, then the old instance goes"
    )


async def test_a_replacement_that_never_answers_gets_no_host_and_the_old_instance_stays() -> None:
    w, reconciler, obj, instance_id, endpoint = await ready()
    await fail_probes(w, reconciler, obj, endpoint)
    await reconciler.heal(obj)
    w.clock.advance(PATIENCE + 1)
    w.memcached.down["10.0.0.4:11211"] = "refused"  # the next instance the fake cloud launches
    assert await reconciler.heal(obj) == "ReplaceInstance"
    new = next(i for i in w.cloud.running() if i.instance_id != instance_id)
    assert f"{new.private_ip}:11211" == "10.0.0.4:11211"
    await settle(reconciler, obj)
    assert not any(e[0] == "push" and "10.0.0.4" in e[2] for e in w.journal), (
        "never pointed at a silent cache"
    )
    assert "TerminateInstance" not in w.aws()
    assert instance_id in [i.instance_id for i in w.cloud.running()]
    hosts = w.status.current["hosts"]
    assert all(h["state"] == "Configured" for h in hosts), "the hosts keep the cache they had"


async def test_an_instance_whose_agent_is_offline_skips_the_restart() -> None:
    w, reconciler, obj, instance_id, endpoint = await ready()
    w.ssm.ping[instance_id] = "ConnectionLost"
    await fail_probes(w, reconciler, obj, endpoint)
    assert await reconciler.heal(obj) == "ReplaceInstance"
    assert [e for e in w.journal if e[0] == "ssm"] == []


async def test_the_replacement_limit_stalls_the_object_and_stops_the_ladder() -> None:
    w, reconciler, obj, _, endpoint = await ready(healing={"maxReplacementsPerHour": 0})
    await fail_probes(w, reconciler, obj, endpoint)
    await reconciler.heal(obj)
    w.clock.advance(PATIENCE + 1)
    assert await reconciler.heal(obj) == "RateLimited"
    assert w.aws().count("RunInstance") == 1
    assert w.status.condition("Stalled")["status"] == "True"
    assert "maxReplacementsPerHour" in w.status.condition("Stalled")["message"]
    assert "HealingRateLimited" in w.reasons()
    assert await reconciler.heal(obj) is None


async def test_healing_disabled_never_acts() -> None:
    w, reconciler, obj, _, endpoint = await ready(healing={"enabled": False})
    await fail_probes(w, reconciler, obj, endpoint, rounds=5)
    assert await reconciler.heal(obj) is None
    assert w.aws().count("RunInstance") == 1


async def test_a_cache_that_answers_again_is_reported_healed_and_the_ladder_starts_over() -> None:
    w, reconciler, obj, _, endpoint = await ready()
    await fail_probes(w, reconciler, obj, endpoint)
    await reconciler.heal(obj)
    w.memcached.down.clear()
    await reconciler.probe_once(obj)
    assert await reconciler.heal(obj) is None
    assert "Healed" in w.reasons()
    w.clock.advance(PATIENCE + 1)
    await fail_probes(w, reconciler, obj, endpoint)
    assert await reconciler.heal(obj) == "RestartMemcached", "a new episode starts at the first rung"
    assert sum(1 for e in w.journal if e[0] == "ssm") == 2
