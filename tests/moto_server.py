"""An EC2/SSM server on 127.0.0.1 for adapter tests.

Prefers the sandbox's strict server (idempotent ClientToken, AMI validation, DependencyViolation on group
delete, IncorrectInstanceState on a type change while running, invisible new instances on demand). Without
it (or with EDX_REMOTE_CACHE_TEST_PLAIN_MOTO=1), plain moto on loopback: `strict` is False and tests of those
behaviours skip.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import boto3

from edx_remote_cache.adapters.aws import AwsClients, make_clients

TEST_AMI_PARAMETER = "/edx-remote-cache/test/ubuntu-ami-id"
PLAIN_MOTO_ENV = "EDX_REMOTE_CACHE_TEST_PLAIN_MOTO"


@dataclass
class AwsTestServer:
    endpoint_url: str
    region: str
    strict: bool
    ami_id: str
    ami_parameter: str
    backend: Any = None  # the sandbox AwsServer when strict

    def session(self) -> boto3.session.Session:
        return _session(self.region)

    def clients(self, *, max_attempts: int = 2) -> AwsClients:
        return make_clients(
            self.region, endpoint_url=self.endpoint_url, session=self.session(), max_attempts=max_attempts
        )

    def hide_new_instances(self, seconds: float) -> bool:
        """Make new instances invisible to DescribeInstances for `seconds` (strict server only)."""
        if self.backend is None:
            return False
        self.backend.strict.hide_new_for = seconds
        return True


@functools.cache
def _session(region: str) -> boto3.session.Session:
    """One session for every test client: a new session parses the EC2 model again (~0.3 s per client)."""
    return boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name=region
    )


def _strict_server_class() -> Any:
    if os.environ.get(PLAIN_MOTO_ENV):  # exercise the fallback on purpose
        return None
    try:
        from edx_remote_cache.sandbox.aws import AwsServer
    except ImportError:
        return None
    return AwsServer


@contextmanager
def aws_test_server(region: str = "us-east-1") -> Iterator[AwsTestServer]:
    server_class = _strict_server_class()
    if server_class is not None:
        from edx_remote_cache.sandbox.aws import UBUNTU_AMI_ID, UBUNTU_AMI_PARAMETER

        server = server_class(region)
        server.start()
        try:
            yield AwsTestServer(
                server.endpoint_url, region, True, UBUNTU_AMI_ID, UBUNTU_AMI_PARAMETER, server
            )
        finally:
            server.stop()
        return
    yield from _plain_moto(region)


def _reset_moto() -> None:
    from moto.ec2.models import ec2_backends
    from moto.ssm.models import ssm_backends

    ec2_backends.clear()
    ssm_backends.clear()


def _plain_moto(region: str) -> Iterator[AwsTestServer]:
    from moto.server import ThreadedMotoServer

    _reset_moto()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    assert host == "127.0.0.1", host
    try:
        probe = AwsTestServer(f"http://{host}:{port}", region, False, "", TEST_AMI_PARAMETER)
        clients = probe.clients()
        probe.ami_id = clients.ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
        clients.ssm.put_parameter(Name=TEST_AMI_PARAMETER, Value=probe.ami_id, Type="String")
        yield probe
    finally:
        server.stop()
        _reset_moto()
