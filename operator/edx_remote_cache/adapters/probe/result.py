"""What a probe reports (:class:`ProbeResult`) and how a failure is classified into :data:`ERROR_KINDS`.

Also the pieces both probe paths share: the endpoint parse (what is dialed) and the canary key. Pure data and
classification; the socket work is in :mod:`.pipelined` and :mod:`.reference`.
"""

from __future__ import annotations

import errno
import os
import time
from dataclasses import asdict, dataclass
from typing import Any

from pymemcache.exceptions import MemcacheError

CANARY_PREFIX = "edx-remote-cache:canary:"
CANARY_TTL_SECONDS = 30
ERROR_KINDS = ("refused", "timeout", "protocol", "unreachable", "error")
DEFAULT_PORT = 11211


class InvalidEndpoint(ValueError):
    """The endpoint is not ``host:port`` (or ``[v6]:port``); nothing was dialed."""


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """``host:port``, ``[::1]:port`` or bare ``host`` (memcached's default port) → (host, port): what is dialed,
    exactly (the private IP EC2 reported; the operator never rewrites an address)."""
    text = endpoint.strip()
    if not text:
        raise InvalidEndpoint("empty endpoint")
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise InvalidEndpoint(f"{endpoint!r}: expected [ipv6]:port")
        has_port, port_text = bool(rest), rest[1:]
    elif text.count(":") > 1:  # bare IPv6 without brackets: no port
        host, has_port, port_text = text, False, ""
    else:
        host, colon, port_text = text.partition(":")
        has_port = bool(colon)
    if not host:
        raise InvalidEndpoint(f"{endpoint!r}: missing host")
    if not has_port:
        return host, DEFAULT_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise InvalidEndpoint(f"{endpoint!r}: port must be 1-65535")
    return host, int(port_text)


@dataclass(frozen=True)
class ProbeResult:
    """What one probe saw. ``reachable`` = version+stats answered; ``canary_ok`` = set/get/delete worked.

    Counter names follow memcached's own ``stats`` (as memcached_exporter does). ``latency_ms`` is the
    time to first answer: the TCP connect when the probe had to open a connection (none when it reused a
    pooled one), plus the round trip to the first byte of the server's first answer (``version``; on the
    default path the commands are pipelined, so this is the round trip of the batch). ``duration_ms`` is the
    whole probe. ``curr_connections`` counts the probe's own connection.
    ``error_kind`` is one of :data:`ERROR_KINDS`; a failed canary on a reachable server is "protocol".
    Each probe adds one get hit (the canary) to the server's ``get_hits``.
    """

    endpoint: str
    reachable: bool
    error_kind: str | None = None
    error: str | None = None
    latency_ms: float | None = None
    version: str | None = None
    uptime_seconds: int | None = None
    curr_connections: int | None = None
    max_connections: int | None = None
    get_hits: int | None = None
    get_misses: int | None = None
    evictions: int | None = None
    bytes: int | None = None
    limit_maxbytes: int | None = None
    listen_disabled_num: int | None = None
    rejected_connections: int | None = None
    canary_ok: bool = False
    duration_ms: float | None = None
    address: str | None = None  # what was actually dialed (differs from endpoint in the sandbox)

    @property
    def hit_ratio(self) -> float | None:
        """get_hits / (get_hits + get_misses); None before the first get."""
        if self.get_hits is None or self.get_misses is None:
            return None
        total = self.get_hits + self.get_misses
        return self.get_hits / total if total else None

    @property
    def healthy(self) -> bool:
        """Reachable and the canary round trip worked."""
        return self.reachable and self.canary_ok

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict including the derived ``hit_ratio`` and ``healthy``."""
        data = asdict(self)
        data["hit_ratio"] = self.hit_ratio
        data["healthy"] = self.healthy
        return data


class CanaryFailed(MemcacheError):
    """The server answered but did not store/return/delete the canary as it should."""


class DeadlineExceeded(TimeoutError):
    """The probe's single time budget ran out between steps."""


def _classify(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        return "unreachable"  # no route to it from here: a network path, not the host, is missing
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, TimeoutError):  # socket.timeout is an alias since 3.10
        return "timeout"
    if isinstance(exc, MemcacheError | ConnectionResetError | ConnectionAbortedError | BrokenPipeError):
        return "protocol"  # it accepted us, then answered nonsense, an error, or hung up mid-conversation
    if isinstance(exc, ValueError) and not isinstance(exc, InvalidEndpoint):
        return "protocol"  # pymemcache raises ValueError on unparsable response lines
    return "error"


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# (stats name, ProbeResult field) of the counters a probe reports
_STAT_FIELDS: tuple[tuple[bytes, str], ...] = (
    (b"uptime", "uptime_seconds"),
    (b"curr_connections", "curr_connections"),
    (b"max_connections", "max_connections"),
    (b"get_hits", "get_hits"),
    (b"get_misses", "get_misses"),
    (b"evictions", "evictions"),
    (b"bytes", "bytes"),
    (b"limit_maxbytes", "limit_maxbytes"),
    (b"listen_disabled_num", "listen_disabled_num"),
    (b"rejected_connections", "rejected_connections"),
)


def _canary() -> tuple[str, bytes]:
    """A fresh key of our own and the value to store under it (16 random bytes, as hex)."""
    token = os.urandom(16).hex()
    return CANARY_PREFIX + token, token.encode("ascii")


def _result(
    endpoint: str,
    *,
    started: float,
    timeout: float,
    address: tuple[str, int] | None,
    reachable: bool,
    fields: dict[str, Any],
    error: BaseException | None = None,
    canary_ok: bool = False,
) -> ProbeResult:
    kind = None if error is None else _classify(error)
    message = None if error is None else _describe(error)
    if kind == "timeout":  # one stable, readable text whichever socket call ran out of time
        message = f"no answer within {timeout:g}s"
    return ProbeResult(
        endpoint=endpoint,
        reachable=reachable,
        error_kind=kind,
        error=message,
        canary_ok=canary_ok,
        duration_ms=round((time.monotonic() - started) * 1000.0, 3),
        address=None if address is None else f"{address[0]}:{address[1]}",
        **fields,
    )
