"""Test-wide guard: no test may open a socket to anything but loopback (see README, "the environment")."""

from __future__ import annotations

import ipaddress
import socket
import sys

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
    if not _is_loopback(host):
        raise NonLoopbackConnect(f"test tried to connect to non-loopback address {address!r}")


sys.addaudithook(_audit)
