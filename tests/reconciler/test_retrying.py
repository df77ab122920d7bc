"""Retryable errors in status from their first occurrence, with an exponential back-off nothing bypasses; launch
tokens only for RunInstances calls that were made; AWS's client errors for a call are terminal (issue 16 item 8)."""

from __future__ import annotations

import pytest
from fakes import World, cache, world

from edx_remote_cache.adapters.aws import (
    CONNECTION_ERROR,
    RetryableAwsError,
    TerminalAwsError,
    classify,
)
from edx_remote_cache.reconciler.reconciler import Reconciler, RequeueError
from edx_remote_cache.reconciler.retrying import RETRY_BASE_SECONDS, RETRY_CAP_SECONDS, retry_delay


def capacity() -> RetryableAwsError:
    return RetryableAwsError(
        "InsufficientInstanceCapacity", "We currently do not have sufficient t3.micro capacity",
        operation="RunInstances", service="ec2",
    )  # fmt: skip


async def attempt(reconciler: Reconciler, obj: dict) -> RequeueError | None:
    try:
        await reconciler.reconcile(obj)
    except RequeueError as exc:
        return exc
    return None


async def refused_once(w: World) -> tuple[Reconciler, dict, RequeueError]:
    w.cloud.errors["RunInstance"] = [capacity()]
    reconciler = Reconciler(w.adapters)
    obj = cache()
    exc = await attempt(reconciler, obj)
    assert exc is not None
    return reconciler, obj, exc


async def test_the_first_retryable_error_is_in_status_with_code_message_attempt_and_next_retry() -> None:
    w = world()
    _, _, exc = await refused_once(w)
    reconciling = w.status.condition("Reconciling")
    assert (reconciling["status"], reconciling["reason"]) == ("True", "AwsRetrying")
    message = reconciling["message"]
    assert "InsufficientInstanceCapacity during RunInstances" in message
    assert "sufficient t3.micro capacity" in message and "attempt 1" in message
    retry = w.status.current["retry"]
    assert retry["code"] == "InsufficientInstanceCapacity" and retry["attempt"] == 1
    assert retry["nextRetryTime"] in message
    assert w.status.condition("Stalled")["status"] == "False"
    assert exc.delay == RETRY_BASE_SECONDS
    assert "AwsRetrying" in w.reasons()


async def test_retries_back_off_exponentially_and_no_trigger_calls_aws_before_the_next_retry() -> None:
    w = world()
    w.cloud.errors["RunInstance"] = [capacity() for _ in range(12)]
    reconciler = Reconciler(w.adapters)
    obj = cache()
    delays = []
    for _ in range(10):
        exc = await attempt(reconciler, obj)
        assert exc is not None
        delays.append(exc.delay)
        calls = len([e for e in w.journal if e[0] == "aws-error"])
        w.clock.advance(exc.delay / 2)  # the daemon's drift pass or kopf's retry, too early
        early = await attempt(reconciler, obj)
        assert early is not None and 0 < early.delay <= exc.delay / 2 + 0.01
        assert len([e for e in w.journal if e[0] == "aws-error"]) == calls, (
            "retried before the back-off ended"
        )
        w.clock.advance(exc.delay / 2)
    assert delays[:4] == [2.0, 4.0, 8.0, 16.0]
    assert max(delays) == RETRY_CAP_SECONDS and delays[-1] == RETRY_CAP_SECONDS
    assert "attempt 10" in w.status.condition("Reconciling")["message"]
    assert w.reasons().count("AwsRetrying") == 1, "one Warning per error episode, not one per attempt"


async def test_a_pass_that_gets_through_clears_the_retry_and_a_new_episode_starts_at_attempt_one() -> None:
    w = world()
    reconciler, obj, exc = await refused_once(w)
    w.clock.advance(exc.delay)
    for _ in range(5):
        if await attempt(reconciler, obj) is None:
            break
    assert "retry" not in w.status.current
    assert w.status.condition("Reconciling")["reason"] != "AwsRetrying"
    assert w.status.condition("Ready")["status"] == "True"
    assert "Retried" in w.reasons()
    assert retry_delay(1) == RETRY_BASE_SECONDS


async def test_a_new_generation_is_tried_at_once_even_while_backing_off() -> None:
    w = world()
    reconciler, obj, _ = await refused_once(w)
    obj["metadata"]["generation"] = 2
    await attempt(reconciler, obj)  # no clock advance: a new spec is not held back by the old episode
    assert w.aws().count("RunInstance") == 1


async def test_a_refused_launch_leaves_no_token_behind_so_the_retry_is_not_counted_as_a_replacement() -> None:
    w = world()
    reconciler, obj, exc = await refused_once(w)
    assert w.status.current["progress"]["launches"] == {}, "a token recorded for a launch AWS refused"
    w.clock.advance(exc.delay)
    for _ in range(5):
        if await attempt(reconciler, obj) is None:
            break
    progress = w.status.current["progress"]
    assert progress["replacementTimes"] == [] and progress["replacements"] == {"0": 0}
    assert len(w.cloud.running()) == 1


async def test_a_launch_whose_outcome_is_unknown_keeps_its_token_for_an_idempotent_retry() -> None:
    w = world()
    w.cloud.errors["RunInstance"] = [
        RetryableAwsError(CONNECTION_ERROR, "read timeout", operation="RunInstances", service="ec2")
    ]
    reconciler = Reconciler(w.adapters)
    assert await attempt(reconciler, cache()) is not None
    assert len(w.status.current["progress"]["launches"]) == 1


async def test_a_retryable_ssm_error_says_ssm_retrying() -> None:
    w = world()
    w.cloud.errors["RunInstance"] = [
        RetryableAwsError("ThrottlingException", "Rate exceeded", operation="GetParameter", service="ssm")
    ]
    await attempt(Reconciler(w.adapters), cache())
    assert w.status.condition("Reconciling")["reason"] == "SsmRetrying"


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("InvalidParameterValue", "Value (nope) for parameter iamInstanceProfile.name is invalid."),
        ("NoSuchEntity", "Instance profile nope not found"),
        ("InvalidSubnetID.NotFound", "The subnet ID 'subnet-0dead' does not exist"),
    ],
)
async def test_client_errors_of_run_instances_stall_the_object_with_the_code(code: str, message: str) -> None:
    error = classify(code, message, operation="RunInstances")
    assert isinstance(error, TerminalAwsError)
    w = world()
    w.cloud.errors["RunInstance"] = [error]
    reconciler = Reconciler(w.adapters)
    obj = cache()
    assert await attempt(reconciler, obj) is None
    stalled = w.status.condition("Stalled")
    assert stalled["status"] == "True" and code in stalled["message"]
    assert w.status.current["phase"] == "Stalled"
    assert w.status.current["progress"]["launches"] == {}
    w.clock.advance(600)
    await reconciler.reconcile(obj, trigger="drift")
    assert w.aws().count("RunInstance") == 0, "a terminal error is not retried on the same generation"


def test_the_same_code_from_another_call_keeps_its_general_classification() -> None:
    assert isinstance(classify("NoSuchEntity", "x", operation="DescribeInstances"), RetryableAwsError)
    assert isinstance(
        classify("InsufficientInstanceCapacity", "x", operation="RunInstances"), RetryableAwsError
    )
