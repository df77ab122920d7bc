"""A whole reconcile pass on fakes: create, the pass after it that changes nothing, pause, AWS errors, and the
status-write decision (a status is written when a user would see a difference, or when the heartbeat is due)."""

from __future__ import annotations

import pytest
from fakes import EDX_HOSTS, World, cache, world

from edx_remote_cache.adapters.aws import RetryableAwsError, TerminalAwsError
from edx_remote_cache.reconciler.reconciler import Reconciler, RequeueError
from edx_remote_cache.reconciler.status import HEARTBEAT_SECONDS


async def converge(reconciler: Reconciler, obj: dict, *, rounds: int = 5) -> None:
    for _ in range(rounds):
        try:
            await reconciler.reconcile(obj)
            return
        except RequeueError:
            continue
    raise AssertionError("did not converge")


async def ready_world(**spec: object) -> tuple[World, Reconciler, dict]:
    w = world()
    reconciler = Reconciler(w.adapters)
    obj = cache(**spec)
    await converge(reconciler, obj)
    return w, reconciler, obj


async def test_create_launches_one_cache_points_every_host_at_it_and_is_ready() -> None:
    w, _, _ = await ready_world()
    assert w.aws().count("RunInstance") == 1
    assert w.aws().count("CreateSecurityGroup") == 1
    endpoint = f"{w.cloud.running()[0].private_ip}:11211"
    assert w.hosts.pushes == [(h, (endpoint,)) for h in EDX_HOSTS]
    assert w.status.condition("Ready")["status"] == "True", w.status.current.get("conditions")
    assert w.status.current["endpoints"] == [endpoint]
    assert "CloudUpdated" in w.reasons()


async def test_a_pass_over_a_converged_object_mutates_nothing_pushes_nothing_writes_nothing() -> None:
    w, reconciler, obj = await ready_world()
    before = (len(w.aws()), len(w.hosts.pushes), len(w.status.patches))
    await reconciler.reconcile(obj, trigger="drift")
    assert (len(w.aws()), len(w.hosts.pushes), len(w.status.patches)) == before


async def test_a_paused_object_is_observed_and_reported_but_nothing_is_launched_or_pushed() -> None:
    w = world()
    reconciler = Reconciler(w.adapters)
    with pytest.raises(RequeueError):  # the plan is still there: looked at again soon, never carried out
        await reconciler.reconcile(cache(paused=True))
    assert w.aws() == []
    assert w.hosts.pushes == []
    assert w.status.current["phase"] == "Paused"


async def test_a_terminal_aws_error_stalls_the_object_until_the_spec_changes() -> None:
    w = world()

    def refuse(*_: object, **__: object) -> None:
        raise TerminalAwsError("InvalidParameterValue", "no such instance type", operation="RunInstances")

    w.adapters.act = refuse
    reconciler = Reconciler(w.adapters)
    obj = cache()
    await reconciler.reconcile(obj)
    stalled = w.status.condition("Stalled")
    assert stalled["status"] == "True" and "InvalidParameterValue" in stalled["message"]
    patches = len(w.status.patches)
    await reconciler.reconcile(obj, trigger="drift")  # no retry loop on the same generation
    assert len(w.status.patches) == patches


async def test_a_retryable_aws_error_requeues_and_says_the_object_is_converging() -> None:
    w = world()

    def throttle(*_: object, **__: object) -> None:
        raise RetryableAwsError("RequestLimitExceeded", "slow down", operation="RunInstances")

    w.adapters.act = throttle
    reconciler = Reconciler(w.adapters)
    with pytest.raises(RequeueError, match="RequestLimitExceeded"):
        await reconciler.reconcile(cache())
    assert w.status.condition("Reconciling")["status"] == "True"
    assert w.status.condition("Stalled").get("status") != "True"


async def test_an_idle_probe_round_writes_no_status_and_the_heartbeat_writes_one() -> None:
    w, reconciler, obj = await ready_world()
    await reconciler.probe_once(obj)  # the first round fills in status.health
    writes = len(w.status.patches)
    for _ in range(5):
        w.clock.advance(1)
        await reconciler.probe_once(obj)
    assert len(w.status.patches) == writes, "an unchanged cache must not patch its status every probe"
    w.clock.advance(HEARTBEAT_SECONDS)
    await reconciler.probe_once(obj)
    assert len(w.status.patches) == writes + 1
    assert "lastProbeTime" in w.status.patches[-1]["health"]


async def test_a_failing_probe_round_is_written_at_once() -> None:
    w, reconciler, obj = await ready_world()
    writes = len(w.status.patches)
    w.memcached.down[w.status.current["endpoints"][0]] = "refused"
    await reconciler.probe_once(obj)
    assert len(w.status.patches) == writes + 1
    assert w.status.condition("CacheHealthy")["status"] == "False"
