"""Delete, in order: the hosts go back to their local memcached before any instance is terminated, and the
security group goes last. A revert that keeps failing is given up after a few tries, loudly."""

from __future__ import annotations

import contextlib

import pytest
from fakes import EDX_HOSTS, cache, world

from edx_remote_cache.adapters.host_push import HostPushResult
from edx_remote_cache.reconciler.reconciler import Reconciler, RequeueError
from edx_remote_cache.reconciler.teardown import REVERT_TRIES


async def ready() -> tuple:
    w = world()
    reconciler = Reconciler(w.adapters)
    obj = cache()
    for _ in range(5):
        with contextlib.suppress(RequeueError):
            await reconciler.reconcile(obj)
            break
    return w, reconciler, obj


async def test_hosts_are_reverted_before_the_instance_is_terminated_and_the_group_deleted_last() -> None:
    w, reconciler, obj = await ready()
    mark = len(w.journal)
    await reconciler.teardown(obj)
    effects = [e[:2] if e[0] == "aws" else e for e in w.journal[mark:] if e[0] in ("revert", "aws")]
    assert effects == [
        *[("revert", h) for h in EDX_HOSTS],
        ("aws", "TerminateInstance"),
        ("aws", "DeleteSecurityGroup"),
    ]
    assert "Deleted" in w.reasons()
    assert not reconciler.knows(obj)


async def test_a_failing_revert_is_retried_then_given_up_with_a_revert_failed_event_and_aws_cleaned_up() -> (
    None
):
    w, reconciler, obj = await ready()

    def stuck(*, hosts: list[str], **_: object) -> list[HostPushResult]:
        return [HostPushResult(h, "Unreachable", message="agent offline") for h in hosts]

    w.adapters.revert_hosts = stuck
    for retry in range(REVERT_TRIES):
        with pytest.raises(RequeueError, match="agent offline"):
            await reconciler.teardown(obj, retry=retry)
        assert "TerminateInstance" not in w.aws()
    await reconciler.teardown(obj, retry=REVERT_TRIES)
    assert w.reasons().count("RevertFailed") == len(EDX_HOSTS)
    assert "TerminateInstance" in w.aws()
