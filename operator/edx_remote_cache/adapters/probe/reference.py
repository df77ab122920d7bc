"""The reference path: an injected pymemcache-like client per probe, one command at a time, closed afterwards.

Chosen by passing a ``client_factory`` to :func:`~edx_remote_cache.adapters.probe.probe_endpoint` or
:func:`~edx_remote_cache.adapters.probe.probe_all`; tests use it to inject their own client, and it is the
yardstick the pipelined path is held to (same fields, same error kinds).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from pymemcache.client.base import Client

from edx_remote_cache.adapters.probe.result import (
    _STAT_FIELDS,
    CANARY_TTL_SECONDS,
    CanaryFailed,
    DeadlineExceeded,
    ProbeResult,
    _canary,
    _result,
    parse_endpoint,
)


class MemcacheClientLike(Protocol):
    """The slice of pymemcache's Client the probe uses (tests may inject their own)."""

    def version(self) -> bytes: ...
    def stats(self, *args: Any) -> dict[bytes, Any]: ...
    def set(self, key: str, value: Any, expire: int = 0, noreply: bool | None = None) -> bool: ...
    def get(self, key: str, default: Any = None) -> Any: ...
    def delete(self, key: str, noreply: bool | None = None) -> bool: ...
    def close(self) -> None: ...


ClientFactory = Callable[[tuple[str, int], float], MemcacheClientLike]


def default_client_factory(address: tuple[str, int], timeout: float) -> MemcacheClientLike:
    """A plain pymemcache Client: bounded connect/IO, replies awaited (no noreply), errors raised.

    Not what a probe uses unless passed as ``client_factory`` (the default probe speaks the protocol itself
    on a pooled connection); kept for callers and tests that want the one-command-at-a-time path."""
    return Client(
        address,
        connect_timeout=timeout,
        timeout=timeout,
        no_delay=True,
        ignore_exc=False,
        default_noreply=False,
    )


def _int(stats: Mapping[bytes, Any], key: bytes) -> int | None:
    value = stats.get(key)
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, bytes | str):
        try:
            return int(value)
        except ValueError:
            return None
    return None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)


def _probe_with_client(endpoint: str, timeout: float, client_factory: ClientFactory) -> ProbeResult:
    started = time.monotonic()
    deadline = started + timeout
    fields: dict[str, Any] = {}
    reachable = False
    address: tuple[str, int] | None = None
    client: MemcacheClientLike | None = None

    def budget() -> None:
        """Give the next step only what is left of the single deadline."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceeded(f"probe exceeded {timeout:g}s")
        sock = getattr(client, "sock", None)
        if sock is not None:
            sock.settimeout(remaining)

    def done(error: BaseException | None = None, canary_ok: bool = False) -> ProbeResult:
        return _result(
            endpoint,
            started=started,
            timeout=timeout,
            address=address,
            reachable=reachable,
            fields=fields,
            error=error,
            canary_ok=canary_ok,
        )

    try:
        address = parse_endpoint(endpoint)
        client = client_factory(address, timeout)
        t0 = time.monotonic()
        version = client.version()  # connects on first use
        fields["latency_ms"] = round((time.monotonic() - t0) * 1000.0, 3)
        fields["version"] = _text(version)
        budget()
        stats = client.stats()
        reachable = True
        fields.update((field, _int(stats, name)) for name, field in _STAT_FIELDS)
        key, value = _canary()
        budget()
        if not client.set(key, value, expire=CANARY_TTL_SECONDS, noreply=False):
            return done(CanaryFailed("set was not stored"))
        budget()
        got = client.get(key)
        budget()
        deleted = client.delete(key, noreply=False)
        if got != value:
            return done(CanaryFailed(f"get returned {got!r}, expected the value just set"))
        if not deleted:
            return done(CanaryFailed("delete found no canary key"))
        return done(canary_ok=True)
    except Exception as exc:  # a probe reports, it does not raise
        return done(exc)
    finally:
        if client is not None:
            with contextlib.suppress(Exception):  # closing a broken socket must not mask the result
                client.close()
