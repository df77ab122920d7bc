"""Probe memcached endpoints with pymemcache and return what we saw as data, never as an exception.

One probe = connect, ``version``, ``stats``, then a canary ``set``/``get``/``delete`` on a key of our own
(``edx-remote-cache:canary:<uuid>``, short TTL) so application keys are never read or written.
Every step shares one deadline of ``timeout`` seconds: a refused port fails at once, a hung
(SIGSTOPped) server costs one timeout, and a slow server can never cost more than one either.
pymemcache's ``ignore_exc`` is never used: a cache that errors must look like one.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any, Protocol

from pymemcache.client.base import Client
from pymemcache.exceptions import MemcacheError

from edx_remote_cache.resolver import AddressResolver, InvalidEndpoint, UnmappedAddress

__all__ = [
    "CANARY_PREFIX",
    "CANARY_TTL_SECONDS",
    "ERROR_KINDS",
    "CanaryFailed",
    "DeadlineExceeded",
    "MemcacheClientLike",
    "ProbeResult",
    "default_client_factory",
    "probe_all",
    "probe_endpoint",
    "probe_many",
]

CANARY_PREFIX = "edx-remote-cache:canary:"
CANARY_TTL_SECONDS = 30
ERROR_KINDS = ("refused", "timeout", "protocol", "unmapped", "error")


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
    """A plain pymemcache Client: bounded connect/IO, replies awaited (no noreply), errors raised."""
    return Client(
        address,
        connect_timeout=timeout,
        timeout=timeout,
        no_delay=True,
        ignore_exc=False,
        default_noreply=False,
    )


@dataclass(frozen=True)
class ProbeResult:
    """What one probe saw. ``reachable`` = version+stats answered; ``canary_ok`` = set/get/delete worked.

    Counter names follow memcached's own ``stats`` (as memcached_exporter does). ``latency_ms`` is the
    time to first answer (TCP connect + ``version`` round trip); ``duration_ms`` is the whole probe.
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
    if isinstance(exc, UnmappedAddress):
        return "unmapped"
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


def probe_endpoint(
    endpoint: str,
    *,
    resolver: AddressResolver,
    timeout: float,
    client_factory: ClientFactory = default_client_factory,
) -> ProbeResult:
    """Probe one endpoint; never raises (except on programming errors like a bad timeout)."""
    if timeout <= 0:
        raise ValueError("timeout must be > 0")
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

    try:
        address = resolver.resolve(endpoint)
        client = client_factory(address, timeout)
        t0 = time.monotonic()
        version = client.version()  # connects on first use
        fields["latency_ms"] = round((time.monotonic() - t0) * 1000.0, 3)
        fields["version"] = _text(version)
        budget()
        stats = client.stats()
        reachable = True
        fields.update(
            uptime_seconds=_int(stats, b"uptime"),
            curr_connections=_int(stats, b"curr_connections"),
            max_connections=_int(stats, b"max_connections"),
            get_hits=_int(stats, b"get_hits"),
            get_misses=_int(stats, b"get_misses"),
            evictions=_int(stats, b"evictions"),
            bytes=_int(stats, b"bytes"),
            limit_maxbytes=_int(stats, b"limit_maxbytes"),
            listen_disabled_num=_int(stats, b"listen_disabled_num"),
            rejected_connections=_int(stats, b"rejected_connections"),
        )
        token = uuid.uuid4().hex
        key = CANARY_PREFIX + token
        value = token.encode("ascii")
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


async def probe_all(
    endpoints: Iterable[str],
    *,
    resolver: AddressResolver,
    timeout: float,
    max_concurrency: int = 64,
    client_factory: ClientFactory = default_client_factory,
) -> list[ProbeResult]:
    """Probe all endpoints, at most ``max_concurrency`` at a time, results in input order.

    Probes run on one process-wide thread pool (created once: at 500 resources a pool per round cost ~8% of
    the operator's CPU), so a hung host ties up one worker for one timeout and nothing else; the event loop
    never blocks. On cancellation queued probes are dropped and running ones end within their timeout.
    """
    targets: Sequence[str] = list(endpoints)
    if not targets:
        return []
    if max_concurrency < 1:
        raise ValueError("max_concurrency must be >= 1")
    loop = asyncio.get_running_loop()
    pool = _shared_pool()
    gate = asyncio.Semaphore(max_concurrency)

    async def one(endpoint: str) -> ProbeResult:
        async with gate:
            probe = partial(
                probe_endpoint, endpoint, resolver=resolver, timeout=timeout, client_factory=client_factory
            )
            return await loop.run_in_executor(pool, probe)

    return list(await asyncio.gather(*(one(ep) for ep in targets)))


SHARED_POOL_WORKERS = 64
_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


def _shared_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(
                max_workers=SHARED_POOL_WORKERS, thread_name_prefix="edx-remote-cache-probe"
            )
        return _pool


def probe_many(
    endpoints: Iterable[str],
    *,
    resolver: AddressResolver,
    timeout: float,
    max_concurrency: int = 64,
    client_factory: ClientFactory = default_client_factory,
) -> list[ProbeResult]:
    """Synchronous :func:`probe_all` for CLIs and scripts (must not be called from a running loop)."""
    return asyncio.run(
        probe_all(
            endpoints,
            resolver=resolver,
            timeout=timeout,
            max_concurrency=max_concurrency,
            client_factory=client_factory,
        )
    )
