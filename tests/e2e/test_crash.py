"""Crash recovery without waiting or storming: an operator SIGKILLed right before RunInstances leaves the
launch token recorded in status; the next one launches at once with that token (exactly one instance, Ready in
seconds, not after the five-minute launch grace period) and reads EC2 at a bounded rate meanwhile."""

from __future__ import annotations

import collections
import time
from typing import Any

import pytest

from edx_remote_cache.sandbox import Sandbox
from edx_remote_cache.sandbox.aws import Request, Response, ec2_error

from .conftest import Operators
from .support import Cache, assert_hosts_reverted, owned_instances

pytestmark = pytest.mark.e2e

NS = "e2e-crash"
# Far below the five-minute launch grace period this guards against; the <= 10 s target (crash_relaunch_seconds)
# is measured by `make bench` on a quiet machine, not here beside another test worker.
READY_WITHIN = 20.0


@pytest.mark.timeout(120)
def test_sigkill_right_before_run_instances_relaunches_at_once_with_the_same_token(
    sandbox: Sandbox, operators: Operators
) -> None:
    first = operators.start("first")
    killed: list[dict[str, Any]] = []

    def crash_before_launch(request: Request) -> Response | None:
        if request.internal or killed:
            return None
        killed.append(dict(request.params))
        first.kill()  # dies while its RunInstances is in flight: AWS never gets to launch
        return ec2_error("InternalError", "the caller is gone", 500)

    sandbox.aws.frontend.on_before("ec2", "RunInstances", crash_before_launch)
    cache = Cache.create(sandbox, "crashy", NS)
    deadline = time.monotonic() + 30
    while not killed and time.monotonic() < deadline:
        time.sleep(0.05)
    assert killed, "the operator never reached RunInstances"
    while first.alive() and time.monotonic() < deadline + 10:  # the hook kills it on the sandbox's thread
        time.sleep(0.05)
    assert not first.alive(), "the operator survived its kill"
    token = killed[0]["ClientToken"]
    assert token in (cache.status.get("progress") or {}).get("launches", {}), (
        "the token was not recorded first"
    )

    since = sandbox.calls.now()
    restarted = time.monotonic()
    operators.start("second")
    cache.wait_ready(timeout=READY_WITHIN + 20)
    relaunch = time.monotonic() - restarted
    print(f"crash_relaunch_seconds={relaunch:.2f}")
    assert relaunch <= READY_WITHIN, f"Ready {relaunch:.1f}s after the restart (grace period waited out?)"

    launched = owned_instances(sandbox, cache.uid, live_only=False)
    assert [i["ClientToken"] for i in launched] == [token], (
        "not exactly one instance, with the recorded token"
    )
    runs = sandbox.calls.calls("RunInstances", since=since)
    assert [c.params["ClientToken"] for c in runs] == [token]
    per_second = collections.Counter(
        int(c.at) for c in sandbox.calls.calls(since=since) if c.operation.startswith("Describe")
    )
    print(f"describe_calls_per_second_max={max(per_second.values())}")
    assert max(per_second.values()) <= 10, per_second  # a restart reads a few kinds once; no storm
    ec2_per_second = collections.Counter(
        int(c.at)
        for c in sandbox.calls.calls(service="ec2", since=since)
        if c.operation.startswith("Describe")
    )  # the region's EC2 reads are paced: 7 in the first second before (every kind once, then the re-observe)
    assert max(ec2_per_second.values()) <= 5, ec2_per_second

    cache.delete_and_wait()
    assert_hosts_reverted(sandbox)


@pytest.mark.timeout(90)
def test_waiting_for_an_instance_aws_does_not_list_yet_reads_ec2_at_most_once_a_second(
    sandbox: Sandbox, operators: Operators
) -> None:
    operators.start("waiting")
    hidden = 6.0
    sandbox.faults.hide_new_instances(hidden)  # launched, but out of DescribeInstances for 6 s
    try:
        since = sandbox.calls.now()
        cache = Cache.create(sandbox, "slow", NS)
        cache.wait_ready(timeout=30)
    finally:
        sandbox.faults.hide_new_instances(0)
    [run] = sandbox.calls.calls("RunInstances", since=since)
    waiting = [
        c
        for c in sandbox.calls.calls(since=run.at, until=run.at + hidden - 0.5)
        if c.operation.startswith("Describe")
    ]
    per_second = collections.Counter((c.operation, int(c.at - run.at)) for c in waiting)
    print(
        f"describe_calls_per_second_max={max(per_second.values())} while waiting: {sorted(per_second.items())}"
    )
    assert max(per_second.values()) <= 2, per_second  # was ~5 a second per kind (re-read every 0.2 s)
    assert sandbox.calls.count("RunInstances", since=since) == 1
    cache.delete_and_wait()
