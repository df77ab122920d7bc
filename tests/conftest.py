"""Test-wide: no test may open a socket to anything but loopback from this machine's own network namespace (see
README, "the environment"), and the sandbox fixtures the host push and host drift tests share.

A socket the sandbox made inside one of its VPC namespaces (sandbox/netns.py ``socket_in``) may dial a private
address there: those namespaces have no route out, so the packet cannot leave the machine. The guard tells them
apart by the socket's network-namespace cookie (SO_NETNS_COOKIE), not by trusting the caller."""

from __future__ import annotations

import ipaddress
import shutil
import socket
import struct
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from edx_remote_cache.sandbox import Sandbox

_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


def _is_loopback(host: object) -> bool:
    if not isinstance(host, str):
        return False
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


SO_NETNS_COOKIE = 71


def _netns_cookie(sock: object) -> int | None:
    try:
        return int(struct.unpack("Q", sock.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8))[0])  # type: ignore[attr-defined]
    except (OSError, AttributeError, struct.error):
        return None


with socket.socket() as _probe_socket:
    ROOT_NETNS_COOKIE = _netns_cookie(_probe_socket)


def _private_in_sandbox_namespace(sock: object, host: object) -> bool:
    """A private address dialed by a socket that lives in another (sandbox) namespace than this machine's."""
    cookie = _netns_cookie(sock)
    if (
        cookie is None
        or ROOT_NETNS_COOKIE is None
        or cookie == ROOT_NETNS_COOKIE
        or not isinstance(host, str)
    ):
        return False
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_private
    except ValueError:
        return False


class NonLoopbackConnect(RuntimeError):
    """Raised inside the test process when code dials a non-loopback address."""


def _audit(event: str, args: tuple[object, ...]) -> None:
    if event != "socket.connect":
        return
    sock, address = args[0], args[1]
    family = getattr(sock, "family", None)
    if family not in (socket.AF_INET, socket.AF_INET6):
        return  # unix sockets are local by construction
    host = address[0] if isinstance(address, tuple) else address
    if not _is_loopback(host) and not _private_in_sandbox_namespace(sock, host):
        raise NonLoopbackConnect(f"test tried to connect to non-loopback address {address!r}")


sys.addaudithook(_audit)


@pytest.fixture(scope="module")
def edx_sandbox() -> Iterator[Sandbox]:
    """A sandbox without Kubernetes, one per test module: the Open edX hosts and SSM of the host tests."""
    from edx_remote_cache.sandbox import Sandbox  # imported here: most tests never start a sandbox

    with Sandbox(with_kube=False) as sb:
        yield sb


@pytest.fixture
def sb(edx_sandbox: Sandbox) -> Sandbox:
    """The module's sandbox with both Open edX hosts back to a fresh native install."""
    from edx_remote_cache.sandbox.edx_hosts import build_root

    sandbox = edx_sandbox
    assert sandbox.registry is not None and sandbox.systemctl is not None and sandbox.faults is not None
    for iid in sandbox.edx_hosts:
        host = sandbox.registry.get(iid)
        assert host is not None
        sandbox.faults.agent_online(iid)
        sandbox.faults.fail_restarts(iid, False)
        for sub in ("etc", "app"):
            shutil.rmtree(host.root / sub, ignore_errors=True)
        for leftover in (
            *host.root.glob("PWNED*"),
            host.root / "supervisorctl.log",
            host.dir / "systemctl.log",
        ):
            leftover.unlink(missing_ok=True)
        build_root(host)
        sandbox.systemctl({"host": iid, "args": ["enable", "--now", "memcached"]})
        (host.dir / "systemctl.log").unlink(missing_ok=True)
    return sandbox
