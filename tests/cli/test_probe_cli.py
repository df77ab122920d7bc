"""``edx-remote-cache probe``: what a human sees, and the exit status a script relies on."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest

from edx_remote_cache.adapters.probe import close_pooled_connections
from edx_remote_cache.cli.probe import add_parser, main

MEMCACHED = shutil.which("memcached") or "/usr/bin/memcached"
pytestmark = pytest.mark.skipif(not os.path.exists(MEMCACHED), reason="memcached binary not installed")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def memcached() -> Iterator[Callable[[], tuple[str, subprocess.Popen[bytes]]]]:
    """Factory starting a memcached on a free loopback port; returns (endpoint, process); kills all after."""
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> tuple[str, subprocess.Popen[bytes]]:
        port = free_port()
        cmd = [MEMCACHED, "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-m", "8", "-t", "1"]
        if os.geteuid() == 0:
            cmd += ["-u", "root"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(proc)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and proc.poll() is None:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return f"127.0.0.1:{port}", proc
            time.sleep(0.01)
        raise RuntimeError("memcached did not start")

    yield start
    for proc in procs:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
        proc.wait(timeout=5)


@pytest.fixture(autouse=True)
def no_pooled_connections() -> Iterator[None]:
    """The probe keeps connections between probes; the servers die with each test, so must they."""
    yield
    close_pooled_connections()


def test_healthy_endpoint_exits_zero_with_a_memcstat_like_summary(
    memcached: Callable[[], tuple[str, subprocess.Popen[bytes]]], capsys: pytest.CaptureFixture[str]
) -> None:
    endpoint, _ = memcached()

    assert main([endpoint]) == 0

    out = capsys.readouterr().out
    assert out.startswith(f"{endpoint}: HEALTHY")
    for label in (
        "version",
        "uptime",
        "latency",
        "connections",
        "hit ratio",
        "evictions",
        "memory",
        "canary",
    ):
        assert f"  {label}" in out
    assert "8.0 MiB" in out  # -m 8
    assert "canary           ok" in out


def test_any_unhealthy_endpoint_exits_one_and_says_why(
    memcached: Callable[[], tuple[str, subprocess.Popen[bytes]]], capsys: pytest.CaptureFixture[str]
) -> None:
    healthy, _ = memcached()
    hung, proc = memcached()
    os.kill(proc.pid, signal.SIGSTOP)
    refused = f"127.0.0.1:{free_port()}"

    t0 = time.monotonic()
    code = main([healthy, refused, hung, "--timeout", "0.4"])
    elapsed = time.monotonic() - t0

    out = capsys.readouterr().out
    assert code == 1
    assert f"{healthy}: HEALTHY" in out
    assert f"{refused}: UNREACHABLE (refused)" in out
    assert f"{hung}: UNREACHABLE (timeout)" in out
    assert "1/3 endpoints healthy" in out
    assert elapsed < 1.5  # probed in parallel: one timeout, not one per endpoint


def test_json_output_is_a_list_in_argument_order(
    memcached: Callable[[], tuple[str, subprocess.Popen[bytes]]], capsys: pytest.CaptureFixture[str]
) -> None:
    endpoint, _ = memcached()
    refused = f"127.0.0.1:{free_port()}"

    code = main([refused, endpoint, "--json"])

    data = json.loads(capsys.readouterr().out)
    assert code == 1
    assert [d["endpoint"] for d in data] == [refused, endpoint]
    assert [d["verdict"] for d in data] == ["UNREACHABLE (refused)", "HEALTHY"]
    assert data[0]["error_kind"] == "refused" and data[0]["healthy"] is False
    assert data[1]["healthy"] is True and data[1]["limit_maxbytes"] == 8 * 1024 * 1024
    assert isinstance(data[1]["version"], str) and "hit_ratio" in data[1]


def test_subcommand_wiring_for_the_main_cli(
    memcached: Callable[[], tuple[str, subprocess.Popen[bytes]]],
) -> None:
    endpoint, _ = memcached()
    parser = argparse.ArgumentParser(prog="edx-remote-cache")
    add_parser(parser.add_subparsers(dest="command", required=True))

    args = parser.parse_args(["probe", endpoint, "--timeout", "0.5", "--json"])

    assert args.endpoints == [endpoint] and args.timeout == 0.5 and args.json
    assert args.func(args) == 0
    with pytest.raises(SystemExit):
        parser.parse_args(["probe", endpoint, "--timeout", "0"])
    with pytest.raises(SystemExit):
        parser.parse_args(["probe"])  # at least one endpoint
