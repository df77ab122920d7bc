"""The boto3 clients of one region, configured once: botocore's standard retry mode is the only retry layer.

Standard mode retries throttling (Throttling, ThrottlingException, RequestLimitExceeded, ...), transient
connection errors and 5xx with exponential backoff and a client-side retry quota; nothing in this package
retries a call again on top of it (a nested retry multiplied the attempts of one call). Across calls, the
region's clients share one `RegionBackoff` (backoff.py): while AWS throttles or fails, new calls are held
instead of each starting its own retries, and the EC2 client's Describe calls are paced (pacing.py): at most 5
a second in the region, whatever waits for them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config

from edx_remote_cache.adapters.aws.backoff import RegionBackoff
from edx_remote_cache.adapters.aws.pacing import DEFAULT_READS_PER_SECOND, ReadPacer

DEFAULT_MAX_ATTEMPTS = 5
FILTER_VALUES_LIMIT = 200  # EC2 rejects more values in one filter


@dataclass(frozen=True)
class AwsClients:
    """The boto3 clients for one region."""

    ec2: Any
    ssm: Any
    backoff: RegionBackoff | None = None
    pacer: ReadPacer | None = None


def client_config(max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> Config:
    return Config(
        retries={"mode": "standard", "max_attempts": max_attempts}, connect_timeout=5, read_timeout=30
    )


def make_clients(
    region: str,
    *,
    endpoint_url: str | None = None,
    session: boto3.session.Session | None = None,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    reads_per_second: int = DEFAULT_READS_PER_SECOND,
) -> AwsClients:
    session = session or boto3.session.Session()
    config = client_config(max_attempts)
    backoff = RegionBackoff(region)
    pacer = ReadPacer(region, per_second=reads_per_second)
    clients = AwsClients(
        ec2=session.client("ec2", region_name=region, endpoint_url=endpoint_url, config=config),
        ssm=session.client("ssm", region_name=region, endpoint_url=endpoint_url, config=config),
        backoff=backoff,
        pacer=pacer,
    )
    for client in (clients.ec2, clients.ssm):
        backoff.install(client)
    pacer.install(clients.ec2)  # after the back-off: a held call is refused before it takes a read slot
    return clients


def _chunks(values: Sequence[str], size: int = FILTER_VALUES_LIMIT) -> Iterator[list[str]]:
    for start in range(0, len(values), size):
        yield list(values[start : start + size])
