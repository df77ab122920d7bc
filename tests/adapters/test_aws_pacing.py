"""ReadPacer: a region's Describe calls start at most `per_second` in any one-second window (issue 19: every
wait on AWS is paced). The arithmetic on a fake clock; then on a real botocore client against the sandbox's AWS
server: which calls are paced, and that a call the region's back-off holds takes no slot."""

from __future__ import annotations

from collections.abc import Iterator

import boto3
import pytest

from edx_remote_cache.adapters.aws.backoff import RegionBackoff
from edx_remote_cache.adapters.aws.clients import client_config
from edx_remote_cache.adapters.aws.pacing import ReadPacer
from edx_remote_cache.sandbox.aws import AwsServer, Request, Response, ec2_error

REGION = "us-east-1"


class FakeTime:
    """A clock that a sleep moves forward; records every sleep."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 6))
        self.now += seconds


def _max_in_any_window(starts: list[float], window: float = 1.0) -> int:
    return max(sum(1 for t in starts if s <= t < s + window - 1e-9) for s in starts)


def test_a_burst_of_reads_is_spread_five_a_second_in_arrival_order() -> None:
    fake = FakeTime()
    pacer = ReadPacer(REGION, per_second=5, clock=fake.clock, sleep=fake.sleep)
    starts = [pacer.reserve() for _ in range(12)]  # twelve waiters arriving at once (worker threads)
    assert [s - 100.0 for s in starts] == [0.0] * 5 + [1.0] * 5 + [2.0] * 2
    assert _max_in_any_window(starts) == 5


def test_calls_already_spread_out_never_wait() -> None:
    fake = FakeTime()
    pacer = ReadPacer(REGION, per_second=5, clock=fake.clock, sleep=fake.sleep)
    for _ in range(20):
        assert pacer.wait() == 0.0
        fake.now += 0.25  # four a second
    assert fake.sleeps == []


def test_the_sixth_read_in_a_second_waits_for_the_first_to_leave_the_window() -> None:
    fake = FakeTime()
    pacer = ReadPacer(REGION, per_second=5, clock=fake.clock, sleep=fake.sleep)
    starts = []
    for _ in range(8):  # a pass re-reading every 0.125 s (what an unpaced wait loop does)
        pacer.wait()
        starts.append(fake.now)
        fake.now += 0.125
    assert fake.sleeps == [0.375]  # the 6th starts 1 s after the 1st; the reads after it are spread already
    assert starts[5] - starts[0] == 1.0
    assert _max_in_any_window(starts) == 5
    assert pacer.waited_seconds == 0.375


@pytest.fixture(scope="module")
def server() -> Iterator[AwsServer]:
    srv = AwsServer(REGION)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def test_on_a_real_client_only_describe_calls_are_paced_and_held_calls_take_no_slot(
    server: AwsServer,
) -> None:
    fake = FakeTime()
    session = boto3.session.Session(aws_access_key_id="t", aws_secret_access_key="t", region_name=REGION)
    ec2 = session.client("ec2", endpoint_url=server.endpoint_url, config=client_config(1))
    backoff = RegionBackoff(REGION, clock=fake.clock, jitter=lambda: 1.0)
    pacer = ReadPacer(REGION, per_second=2, clock=fake.clock, sleep=fake.sleep)
    backoff.install(ec2)
    pacer.install(ec2)

    vpc_id = ec2.describe_vpcs()["Vpcs"][0]["VpcId"]
    ec2.describe_vpcs()
    ec2.describe_vpcs()
    assert fake.sleeps == [1.0], "the third Describe in the same second waits for a slot"
    for _ in range(3):
        ec2.create_tags(Resources=[vpc_id], Tags=[{"Key": "k", "Value": "v"}])
    assert fake.sleeps == [1.0] and pacer.paced_calls == 3, "writes are never paced"

    # the region is held (AWS throttled): held calls end at once, without a request and without a slot
    failing: list[bool] = [True]

    def throttle(request: Request) -> Response | None:
        return ec2_error("RequestLimitExceeded", "slow down", 503) if failing else None

    server.frontend.on_before("ec2", "DescribeSubnets", throttle)
    fake.now += 10.0
    with pytest.raises(Exception, match="RequestLimitExceeded"):
        ec2.describe_subnets()  # answered with throttling: the region holds its calls
    for _ in range(5):
        with pytest.raises(Exception, match="held until"):
            ec2.describe_vpcs()
    assert pacer.paced_calls == 4, "held calls took read slots"
    assert fake.sleeps == [1.0]
