"""The operator's /metrics in the sandbox, and the healing rate limit that stops a flapping cache host."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from edx_remote_cache.sandbox import Sandbox
from edx_remote_cache.sandbox.harness import OperatorProcess, cache_manifest, condition, is_ready, wait_for

pytestmark = [pytest.mark.e2e]


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Sandbox, OperatorProcess]]:
    workdir = tmp_path_factory.mktemp("observability")
    with Sandbox(workdir / "sandbox", ssm_timeout_scale=0.05) as sb:
        operator = OperatorProcess(sb.env(), log_path=workdir / "operator.log")
        with operator:
            yield sb, operator


def _get(sb: Sandbox, name: str):
    return lambda: sb.kube.get("default", name)


@pytest.mark.timeout(90)
def test_metrics_show_probe_figures_and_aws_calls(running: tuple[Sandbox, OperatorProcess]) -> None:
    sb, operator = running
    sb.kube.create(cache_manifest("metrics", subnet_id=sb.subnet_id, hosts=sb.edx_hosts[:1]))
    wait_for(_get(sb, "metrics"), is_ready, timeout=30, what="Ready")
    time.sleep(1.5)  # at least one probe round from the daemon
    with urllib.request.urlopen(operator.metrics_url, timeout=5) as response:
        text = response.read().decode()
    endpoint = sb.kube.get("default", "metrics")["status"]["endpoints"][0]
    labels = f'endpoint="{endpoint}",name="metrics",namespace="default"'  # prometheus sorts label names
    assert f"edx_remote_cache_memcached_up{{{labels}}} 1.0" in text
    assert f"edx_remote_cache_memcached_limit_bytes{{{labels}}}" in text
    assert 'edx_remote_cache_aws_api_calls_total{operation="RunInstances",service="ec2"} 1.0' in text
    assert "edx_remote_cache_probe_duration_seconds_bucket" in text
    assert 'edx_remote_cache_reconcile_total{outcome="ok",trigger="spec"}' in text


@pytest.mark.timeout(120)
def test_flapping_cache_host_is_stopped_by_the_replacement_limit(
    running: tuple[Sandbox, OperatorProcess],
) -> None:
    sb, _ = running
    manifest = cache_manifest(
        "flappy", subnet_id=sb.subnet_id, hosts=sb.edx_hosts[1:], healing={"maxReplacementsPerHour": 0}
    )
    sb.kube.create(manifest)
    ready = wait_for(_get(sb, "flappy"), is_ready, timeout=30, what="Ready")
    instance_id = ready["status"]["instances"][0]["id"]
    sb.faults.fail_restarts(instance_id)  # the restart rung of the ladder cannot help
    sb.faults.kill_memcached(instance_id)
    stalled = wait_for(
        _get(sb, "flappy"),
        lambda o: condition(o, "Stalled").get("status") == "True",
        timeout=60,
        what="Stalled by the replacement limit",
    )
    assert "maxReplacementsPerHour" in condition(stalled, "Stalled")["message"]
    runs_before = sb.calls.count("RunInstances")
    time.sleep(4)
    assert sb.calls.count("RunInstances") == runs_before, "a rate-limited resource must not replace instances"
    reasons = {e.get("reason") for e in sb.kube.list_events("default", involved_name="flappy")}
    assert "HealingRateLimited" in reasons and "RestartMemcached" in reasons
    assert Path(sb.roots[sb.edx_hosts[1]]).exists()
