"""RegionBackoff on a real botocore client against the sandbox's AWS server: a throttled region holds new calls
without sending them, lets one trial through after the hold, and is released by an answer."""

from __future__ import annotations

from collections.abc import Iterator

import botocore.exceptions
import pytest

from edx_remote_cache.adapters.aws import RetryableAwsError
from edx_remote_cache.adapters.aws.backoff import RegionBackoff
from edx_remote_cache.adapters.aws.clients import client_config
from edx_remote_cache.adapters.aws.errors import _call
from edx_remote_cache.sandbox.aws import AwsServer, Request, Response, ec2_error

REGION = "us-east-1"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def server() -> Iterator[AwsServer]:
    srv = AwsServer(REGION)
    srv.start()
    throttled: list[str] = []
    srv.throttled = throttled  # type: ignore[attr-defined]

    def throttle(request: Request) -> Response | None:
        if throttled:
            return ec2_error(throttled[0], "Request limit exceeded.", 503 if throttled[0] != "Nope" else 400)
        return None

    srv.frontend.on_before("ec2", "DescribeVpcs", throttle)
    try:
        yield srv
    finally:
        srv.stop()


def _client(server: AwsServer, clock: Clock) -> tuple[object, RegionBackoff]:
    import boto3

    session = boto3.session.Session(aws_access_key_id="t", aws_secret_access_key="t", region_name=REGION)
    ec2 = session.client("ec2", endpoint_url=server.endpoint_url, config=client_config(2))
    backoff = RegionBackoff(REGION, clock=clock, jitter=lambda: 1.0)
    backoff.install(ec2)
    return ec2, backoff


def _sent(server: AwsServer) -> int:
    return server.recorder.count("DescribeVpcs")


def test_a_throttled_region_holds_new_calls_then_tries_one_and_is_released(server: AwsServer) -> None:
    clock = Clock()
    ec2, backoff = _client(server, clock)
    server.throttled[:] = ["RequestLimitExceeded"]  # type: ignore[attr-defined]
    before = _sent(server)
    with pytest.raises(RetryableAwsError) as first:
        _call(ec2, "describe_vpcs")
    assert first.value.code == "RequestLimitExceeded"
    assert _sent(server) - before == 1, "botocore's own retries are not sent once the region is held"
    assert backoff.failures == 1 and backoff.held_until == clock.now + 1.0

    held = _sent(server)
    for _ in range(5):  # every resource's next call: answered here, not by AWS
        with pytest.raises(RetryableAwsError) as again:
            _call(ec2, "describe_vpcs")
        assert again.value.code == "RequestLimitExceeded", "still retryable by the error table"
        assert "calls held until" in again.value.message
    assert _sent(server) == held and backoff.held_calls == 1 + 5  # the first call's retry, then five calls

    clock.now += 1.0  # the hold is over: one trial; AWS still throttles -> held twice as long
    with pytest.raises(RetryableAwsError):
        _call(ec2, "describe_vpcs")
    assert _sent(server) == held + 1 and backoff.failures == 2
    assert backoff.held_until == clock.now + 2.0

    server.throttled.clear()  # type: ignore[attr-defined]
    clock.now += 2.0
    _call(ec2, "describe_vpcs")  # the trial succeeds: released
    assert backoff.failures == 0
    _call(ec2, "describe_vpcs")
    assert _sent(server) == held + 3


def test_the_hold_is_capped_and_ordinary_errors_do_not_hold(server: AwsServer) -> None:
    clock = Clock()
    ec2, backoff = _client(server, clock)
    server.throttled[:] = ["Nope"]  # type: ignore[attr-defined]  # a 400 that is not throttling
    with pytest.raises(RetryableAwsError):
        _call(ec2, "describe_vpcs")
    assert backoff.failures == 0, "an error that is not throttling or a 5xx says nothing about load"
    server.throttled[:] = ["RequestLimitExceeded"]  # type: ignore[attr-defined]
    for _ in range(5):
        clock.now = max(clock.now, backoff.held_until)
        with pytest.raises(RetryableAwsError):
            _call(ec2, "describe_vpcs")
    assert backoff.failures == 5 and backoff.held_until - clock.now == 10.0, "1, 2, 4, 8, then capped at 10 s"
    server.throttled.clear()  # type: ignore[attr-defined]


def test_a_held_call_is_a_client_error_for_callers_that_use_boto3_directly(server: AwsServer) -> None:
    clock = Clock()
    ec2, backoff = _client(server, clock)
    backoff.failures, backoff.held_until = 1, clock.now + 5
    with pytest.raises(botocore.exceptions.ClientError) as held:
        ec2.describe_vpcs()  # type: ignore[attr-defined]
    assert held.value.response["Error"]["Code"] == "Throttling"
    assert held.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
