"""Loopback guard for processes the e2e suite starts (the operator): on PYTHONPATH, Python imports it at start.

Every socket connect / sendto and every name lookup to anything but loopback is refused (the call raises, so no
packet leaves) and logged as one JSON line to $EDX_REMOTE_CACHE_NET_GUARD_LOG; the suite fails when a log has a
line. One exception: a socket that lives in a sandbox namespace (its SO_NETNS_COOKIE differs from the machine's
own, passed in $EDX_REMOTE_CACHE_NET_GUARD_ROOT_COOKIE) may dial a private address of the sandbox VPC
($SANDBOX_VPC_CIDR): that is the operator probing a cache host across the VPC, which has no route out. Unix sockets are local by construction. At import the guard writes "<pid> loaded" to the log's sibling
``.loaded`` file, so the suite can tell that the guard really ran in the child.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import struct
import sys
import traceback

_LOG = os.environ.get("EDX_REMOTE_CACHE_NET_GUARD_LOG")
_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}


_ROOT_COOKIE = os.environ.get("EDX_REMOTE_CACHE_NET_GUARD_ROOT_COOKIE", "")
_VPC = os.environ.get("SANDBOX_VPC_CIDR", "")


def _cookie(sock: object) -> str:
    try:
        return str(struct.unpack("Q", sock.getsockopt(socket.SOL_SOCKET, 71, 8))[0])  # type: ignore[attr-defined]
    except (OSError, AttributeError, struct.error):
        return ""


def _in_vpc(host: object) -> bool:
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    if not _VPC or not isinstance(host, str):
        return False
    try:
        return ipaddress.ip_address(host.split("%")[0]) in ipaddress.ip_network(_VPC)
    except ValueError:
        return False


def _sandboxed(sock: object | None) -> bool:
    """The socket (or, for a lookup, this process) is in a sandbox namespace, not the machine's own."""
    if not _ROOT_COOKIE:
        return False
    if sock is None:
        with socket.socket() as probe:
            return _cookie(probe) not in ("", _ROOT_COOKIE)
    return _cookie(sock) not in ("", _ROOT_COOKIE)


class NonLoopbackTraffic(OSError):
    """Raised in the guarded process instead of letting a socket reach a non-loopback address."""


def _loopback(host: object) -> bool:
    if host is None:  # getaddrinfo(None, port): the wildcard / loopback address, no lookup
        return True
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    if not isinstance(host, str):
        return False
    if host.lower() in _LOOPBACK_NAMES or host == "":
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def _record(event: str, detail: object) -> None:
    line = json.dumps(
        {
            "pid": os.getpid(),
            "event": event,
            "detail": repr(detail),
            "stack": traceback.format_stack(limit=12)[:-2],
        }
    )
    if _LOG:
        with open(_LOG, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")


def _audit(event: str, args: tuple[object, ...]) -> None:
    if event in ("socket.connect", "socket.sendto", "socket.sendmsg"):
        sock, address = args[0], args[-1]
        if getattr(sock, "family", None) not in (socket.AF_INET, socket.AF_INET6):
            return
        if event == "socket.sendmsg" and address is None:
            return  # a connected socket: its connect was checked
        host = address[0] if isinstance(address, tuple) else address
        if not _loopback(host) and not (_in_vpc(host) and _sandboxed(sock)):
            _record(event, address)
            raise NonLoopbackTraffic(f"e2e loopback guard: {event} to {address!r} refused")
    elif event in ("socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr"):
        host = args[0] if args else None
        if not _loopback(host) and not (_in_vpc(host) and _sandboxed(None)):  # a numeric VPC address: no DNS
            _record(event, host)
            raise NonLoopbackTraffic(f"e2e loopback guard: {event}({host!r}) refused (a DNS lookup)")


if _LOG:
    with open(_LOG + ".loaded", "a", encoding="utf-8") as _fh:
        _fh.write(f"{os.getpid()} loaded {getattr(sys, 'argv', None)!r}\n")
    sys.addaudithook(_audit)
