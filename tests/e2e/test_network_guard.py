"""The loopback guard every e2e operator process runs under (tests/e2e/netguard/sitecustomize.py) works.

The suite's ``operators`` fixture fails a module when a guarded operator tried to reach anything but 127.0.0.1
(see conftest.py); this proves the guard would notice. The probe child only ever tries 0.0.0.0, which is not a
loopback address to the guard but never leaves this machine either, and it tries a DNS name only once it has
seen the guard refuse that, so nothing leaves loopback even if the guard were broken.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from .conftest import GUARD_DIR, GUARD_LOG_ENV

pytestmark = pytest.mark.e2e

CHILD = textwrap.dedent(
    """
    import socket, sys
    refused = []
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.settimeout(0.2)
            tcp.connect(("0.0.0.0", 9))
    except OSError as exc:
        refused.append("connect" if "loopback guard" in str(exc) else f"connect failed otherwise: {exc}")
    if refused != ["connect"]:
        sys.exit(f"the guard did not refuse the connect: {refused}")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        try:
            udp.sendto(b"x", ("0.0.0.0", 9))
        except OSError as exc:
            refused.append("sendto" if "loopback guard" in str(exc) else str(exc))
    try:
        socket.getaddrinfo("guard-test.invalid", 443)
    except OSError as exc:
        refused.append("getaddrinfo" if "loopback guard" in str(exc) else str(exc))
    with socket.create_server(("127.0.0.1", 0)) as server:
        socket.create_connection(server.getsockname(), timeout=1).close()  # loopback is fine
    print(",".join(refused))
    """
)


@pytest.mark.timeout(30)
def test_the_guard_refuses_and_reports_anything_but_loopback(tmp_path: Path) -> None:
    log = tmp_path / "guard.jsonl"
    env = {**os.environ, "PYTHONPATH": str(GUARD_DIR), GUARD_LOG_ENV: str(log)}
    done = subprocess.run(
        [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=20, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "connect,sendto,getaddrinfo"
    events = [json.loads(line)["event"] for line in log.read_text().splitlines()]
    assert events == ["socket.connect", "socket.sendto", "socket.getaddrinfo"]
    assert Path(f"{log}.loaded").exists()


@pytest.mark.timeout(30)
def test_without_the_guard_log_the_guard_stays_out_of_the_way(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != GUARD_LOG_ENV}
    env["PYTHONPATH"] = str(GUARD_DIR)
    code = "import sys, sitecustomize; sys.exit(0 if sitecustomize._LOG is None else 1)"
    assert subprocess.run([sys.executable, "-c", code], env=env, timeout=20, check=False).returncode == 0
