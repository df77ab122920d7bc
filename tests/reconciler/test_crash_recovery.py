"""Crash recovery without waiting or storming: a launch recorded in status that AWS never answered for (the
operator died right before or during RunInstances) is retried at once with the same ClientToken; only a launch
AWS confirmed and does not list yet waits out the grace period, re-reading EC2 at most once a second."""

from __future__ import annotations

import itertools
import time
from typing import Any

import pytest
from fakes import cache, world

from edx_remote_cache.domain.cloud.desired import client_token
from edx_remote_cache.reconciler import cloud_pass
from edx_remote_cache.reconciler.reconciler import Reconciler, RequeueError

UID = "uid-1"
TOKEN = client_token(owner_uid=UID, index=0, generation=0)


def crashed_object(launched_at: float, *, confirmed: list[str] | None) -> dict[str, Any]:
    """The object as a restarted operator finds it: the launch token written, then the process died."""
    obj = cache()
    progress: dict[str, Any] = {"launches": {TOKEN: launched_at}, "replacements": {}, "replacementTimes": []}
    if confirmed is not None:
        progress["confirmed"] = confirmed
    obj["status"] = {"progress": progress}
    return obj


async def converge(reconciler: Reconciler, obj: dict[str, Any]) -> None:
    for _ in range(4):
        try:
            await reconciler.reconcile(obj, trigger="resume")
            return
        except RequeueError:
            continue


async def test_a_launch_that_never_reached_aws_is_retried_at_once_with_the_same_token() -> None:
    w = world()
    reconciler = Reconciler(w.adapters)
    await converge(reconciler, crashed_object(w.clock(), confirmed=[]))
    assert [i.client_token for i in w.cloud.instances] == [TOKEN], "not launched, or launched twice"
    assert w.status.condition("Ready")["status"] == "True"
    assert w.status.current["progress"]["confirmed"] == [TOKEN]


async def test_a_launch_aws_made_before_the_crash_is_handed_back_not_duplicated() -> None:
    w = world()
    reconciler = Reconciler(w.adapters)
    await converge(reconciler, cache())  # the first operator launched...
    [launched] = w.cloud.instances
    w.cloud.hidden.add(launched.instance_id)  # ...and AWS does not list the instance yet when it restarts
    w2 = Reconciler(w.adapters)
    w.cloud.hidden.clear()
    obj = crashed_object(w.clock(), confirmed=[])
    await converge(w2, obj)
    assert [i.instance_id for i in w.cloud.instances] == [launched.instance_id]
    assert w.aws().count("RunInstance") == 1


async def test_an_old_record_without_confirmations_still_waits_for_its_launch() -> None:
    w = world()
    reconciler = Reconciler(w.adapters)
    with pytest.raises(RequeueError):
        await reconciler.reconcile(crashed_object(w.clock(), confirmed=None), trigger="resume")
    assert w.cloud.instances == [], "a record from an older operator may be a launch AWS made: wait for it"


async def test_waiting_for_a_confirmed_launch_reads_ec2_at_most_once_a_second(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cloud_pass, "CONVERGE_BUDGET_SECONDS", 2.0)
    w = world()
    reconciler = Reconciler(w.adapters)
    obj = crashed_object(w.clock(), confirmed=[TOKEN])  # AWS said it launched; it does not list it yet
    started = time.monotonic()
    for _ in range(2):  # a pass, its requeue, another pass
        with pytest.raises(RequeueError):
            await reconciler.reconcile(obj, trigger="resume")
    reads = w.observer.reads
    assert w.cloud.instances == [], "launched again while AWS still had the first one coming"
    assert len(reads) >= 3
    waits = reads[1:]  # the first read after creating the security group is the act's, not the wait's
    assert all(b - a >= 0.95 for a, b in itertools.pairwise(waits)), reads
    assert len(reads) <= (time.monotonic() - started) + 2
