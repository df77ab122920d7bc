"""The Kubernetes API away, on fakes: status writes fail with StatusUnavailable, yet probing and healing go on
(the heal is reported, not skipped), nothing is done twice, and the first round after the API is back writes the
status as it is then. A launch still needs its record written first."""

from __future__ import annotations

import contextlib

import pytest
from fakes import cache, world

from edx_remote_cache.adapters.ports import StatusUnavailable
from edx_remote_cache.reconciler.reconciler import Reconciler, RequeueError


async def test_heals_while_the_api_is_away_once_and_the_status_catches_up() -> None:
    w = world()
    reconciler = Reconciler(w.adapters)
    obj = cache()
    for _ in range(5):
        with contextlib.suppress(RequeueError):
            await reconciler.reconcile(obj)
            break
    [instance] = w.cloud.running()
    endpoint = f"{instance.private_ip}:11211"
    written = len(w.status.patches)

    w.status.unavailable = True
    w.memcached.down[endpoint] = "refused"
    for _ in range(2):
        await reconciler.probe_once(obj)  # no exception: the daemon's round goes on to heal
    assert await reconciler.heal(obj) == "RestartMemcached"
    del w.memcached.down[endpoint]
    for _ in range(3):
        await reconciler.probe_once(obj)
        w.clock.advance(1)
        assert await reconciler.heal(obj) is None  # healthy again: nothing more to do
    assert len(w.status.patches) == written, "nothing reached the API while it was away"
    assert [e for e in w.journal if e[0] == "ssm"] == [
        ("ssm", instance.instance_id, "systemctl restart memcached")
    ]

    w.status.unavailable = False
    await reconciler.probe_once(obj)  # the next round writes, though nothing changed since the last one
    assert len(w.status.patches) == written + 1
    assert w.status.current["lastHeal"]["action"] == "RestartMemcached"
    assert w.status.condition("CacheHealthy")["status"] == "True"
    assert w.status.condition("Ready")["status"] == "True"
    await reconciler.probe_once(obj)
    assert len(w.status.patches) == written + 1, "caught up: back to writing only on change"


async def test_no_launch_without_its_record_while_the_api_is_away() -> None:
    w = world()
    w.status.unavailable = True
    with pytest.raises(StatusUnavailable):
        await Reconciler(w.adapters).reconcile(cache())
    assert "RunInstance" not in w.aws(), "RunInstances must wait until its ClientToken is recorded"
