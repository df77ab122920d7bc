"""The sandbox's cache hosts print their boot as EC2 shows it: GetConsoleOutput, journalctl, cloud-init's log,
and the runtime boot faults that BootFailed is for (reconciler/boot.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import boto3
import pytest
from test_sandbox import launch, memcache, run_ssm

from edx_remote_cache.adapters.aws import make_clients
from edx_remote_cache.adapters.aws.console import console_output
from edx_remote_cache.domain.boot import diagnose, render_boot_log_script, split_boot_log
from edx_remote_cache.domain.userdata import MemcachedSettings, render_user_data
from edx_remote_cache.sandbox import Sandbox

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(with_kube=False, ssm_invocation_delay=0.05) as sb:
        yield sb


def console(sb: Sandbox, instance_id: str) -> str:
    clients = make_clients(sb.region, endpoint_url=sb.aws_endpoint_url, session=_session(sb))
    return console_output(clients, instance_id)


def _session(sb: Sandbox) -> boto3.session.Session:
    env = sb.env()
    return boto3.session.Session(
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=sb.region,
    )


def boot_logs(sb: Sandbox, instance_id: str) -> tuple[str | None, str | None]:
    done = run_ssm(sb, instance_id, render_boot_log_script().splitlines())
    assert done["Status"] == "Success", done
    return split_boot_log(str(done["StandardOutputContent"]))


@pytest.mark.timeout(60)
def test_a_healthy_boot_prints_its_steps_and_nothing_to_diagnose(sandbox: Sandbox) -> None:
    instance_id = launch(sandbox, render_user_data(MemcachedSettings()))
    text = console(sandbox, instance_id)
    assert "Started memcached.service" in text and "finished" in text
    journal, cloud_init = boot_logs(sandbox, instance_id)
    assert diagnose(instance_id, console=text, journal=journal, cloud_init=cloud_init).lines == ()
    assert cloud_init is not None and "Setting up memcached" in cloud_init
    assert console(sandbox, sandbox.edx_hosts[0]) == "", "another instance printed nothing of ours"


@pytest.mark.timeout(60)
def test_port_taken_fails_memcached_with_its_own_words_until_the_fault_is_gone(sandbox: Sandbox) -> None:
    sandbox.faults.break_boot("port-taken")
    try:
        broken = launch(sandbox, render_user_data(MemcachedSettings()))
    finally:
        sandbox.faults.break_boot(None)
    with pytest.raises(ConnectionRefusedError):
        memcache(sandbox, broken).version()
    text = console(sandbox, broken)
    journal, cloud_init = boot_logs(sandbox, broken)
    found = diagnose(broken, console=text, journal=journal, cloud_init=cloud_init)
    assert found.cause == "memcached"
    assert "failed to listen on one of interface(s)" in found.lines[0]
    assert "Address already in use" in found.lines[0]
    restarted = run_ssm(
        sandbox, broken, ["systemctl restart memcached; sleep 0.2; systemctl is-active memcached"]
    )
    assert restarted["StandardOutputContent"] == "failed\n", "a restart meets the same taken port"
    healthy = launch(sandbox, render_user_data(MemcachedSettings()))
    assert memcache(sandbox, healthy).version(), "instances booting after the fault is removed are fine"


@pytest.mark.timeout(60)
def test_no_route_to_a_mirror_never_installs_memcached(sandbox: Sandbox) -> None:
    sandbox.faults.break_boot("no-mirror")
    try:
        broken = launch(sandbox, render_user_data(MemcachedSettings()))
    finally:
        sandbox.faults.break_boot(None)
    journal, cloud_init = boot_logs(sandbox, broken)
    found = diagnose(broken, console=console(sandbox, broken), journal=journal, cloud_init=cloud_init)
    assert found.cause == "package-mirror"
    assert "E: Unable to locate package memcached" in found.lines
    restarted = run_ssm(sandbox, broken, ["systemctl restart memcached"])
    assert "Unit memcached.service not found" in str(restarted["StandardErrorContent"])


def test_console_output_of_an_unknown_instance_is_not_found(sandbox: Sandbox) -> None:
    from edx_remote_cache.adapters.aws import AwsError

    start = time.monotonic()
    with pytest.raises(AwsError) as caught:
        console(sandbox, "i-0123456789abcdef0")
    assert caught.value.code == "InvalidInstanceID.NotFound"
    assert time.monotonic() - start < 5


@pytest.mark.timeout(60)
def test_instances_launched_together_all_boot_with_their_network(sandbox: Sandbox) -> None:
    """Several RunInstances answered at once (an operator creating many objects): each instance boots once
    its namespace exists. Booted by another launch's hook before that, memcached had no network, failed its
    first boot and printed a failure BootFailed would quote for a cache that was never broken."""
    from concurrent.futures import ThreadPoolExecutor

    user_data = render_user_data(MemcachedSettings())
    with ThreadPoolExecutor(6) as pool:
        launched = list(pool.map(lambda _: launch(sandbox, user_data), range(6)))
    for instance_id in launched:
        text = console(sandbox, instance_id)
        assert "Started memcached.service" in text and "[FAILED]" not in text, text
        host = sandbox.cache_host(instance_id)
        assert host is not None and host.state == "running", (instance_id, host and host.failure)
