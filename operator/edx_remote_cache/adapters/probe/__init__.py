"""Probe memcached endpoints and return what we saw as data, never as an exception.

One probe = ``version``, ``stats``, then a canary ``set``/``get``/``delete`` on a key of our own
(``edx-remote-cache:canary:<random hex>``, short TTL) so application keys are never read or written.
Every step shares one deadline of ``timeout`` seconds: a refused port fails at once, a hung
(SIGSTOPped) server costs one timeout, and a slow server can never cost more than one either.
Errors are never swallowed (no ``ignore_exc``): a cache that errors must look like one.

The operator probes ~100 endpoints a second at 500 resources, so the default probe is built to be cheap:

* one TCP connection per dialed address is kept between probes (:class:`_ConnectionPool`), so a steady
  probe does no connect/close. A connection that failed in any way, or whose canary failed, is closed, never
  reused; idle (``POOL_IDLE_SECONDS``) and old (``POOL_MAX_AGE_SECONDS``) ones are replaced. When a *reused*
  connection turns out closed or reset (memcached was killed or restarted since), the probe retries once on
  a fresh connection within the same deadline, so it reports what a fresh probe would ("refused", or
  healthy again); a reused connection that times out is not retried (a hung server costs one timeout).
* the five commands are pipelined: one write, and usually one read for all five answers, parsed here
  (the text protocol, as pymemcache speaks it; the errors raised are pymemcache's own exception types).
  ``version`` costs no round trip of its own this way, so it stays (``stats`` carries it too).
* :func:`probe_all` (the operator's way) runs that probe on the event loop itself, non-blocking, with
  ``asyncio.timeout`` as the deadline: no thread hand-off per probe. :func:`probe_endpoint` is the same
  probe run to completion on a loop of its own, for any thread without a running loop; both share the pool.

A ``client_factory`` (any :class:`MemcacheClientLike`, e.g. a pymemcache Client) switches to the plain
path: a client of its own per probe, one command at a time, closed afterwards.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from edx_remote_cache.adapters.probe.pipelined import _probe_pooled_async
from edx_remote_cache.adapters.probe.pool import POOL_MAX_PER_ADDRESS, close_pooled_connections
from edx_remote_cache.adapters.probe.reference import (
    ClientFactory,
    MemcacheClientLike,
    _probe_with_client,
    default_client_factory,
)
from edx_remote_cache.adapters.probe.result import (
    CANARY_PREFIX,
    CANARY_TTL_SECONDS,
    ERROR_KINDS,
    CanaryFailed,
    DeadlineExceeded,
    InvalidEndpoint,
    ProbeResult,
    parse_endpoint,
)

__all__ = [
    "CANARY_PREFIX",
    "CANARY_TTL_SECONDS",
    "ERROR_KINDS",
    "POOL_MAX_PER_ADDRESS",
    "CanaryFailed",
    "ClientFactory",
    "DeadlineExceeded",
    "InvalidEndpoint",
    "MemcacheClientLike",
    "ProbeResult",
    "close_pooled_connections",
    "default_client_factory",
    "parse_endpoint",
    "probe_all",
    "probe_endpoint",
    "probe_many",
    "source_address",
]


def probe_endpoint(
    endpoint: str,
    *,
    timeout: float,
    client_factory: ClientFactory | None = None,
) -> ProbeResult:
    """Probe one endpoint; never raises (except on programming errors like a bad timeout).

    Without ``client_factory`` (the operator's way): pipelined commands on a pooled connection, see the
    package docstring. With one: a client of that factory's per probe, one command at a time. Blocking: from a
    thread with a running event loop, await :func:`probe_all` instead.
    """
    if timeout <= 0:
        raise ValueError("timeout must be > 0")
    if client_factory is None:
        # the event-loop probe on a loop of its own: one implementation of the pooled probe, not two
        return asyncio.run(_probe_pooled_async(endpoint, timeout))
    return _probe_with_client(endpoint, timeout, client_factory)


async def probe_all(
    endpoints: Iterable[str],
    *,
    timeout: float,
    max_concurrency: int = 64,
    client_factory: ClientFactory | None = None,
) -> list[ProbeResult]:
    """Probe all endpoints, at most ``max_concurrency`` at a time, results in input order.

    The default probe runs on the event loop itself (non-blocking sockets from the shared connection pool,
    ``asyncio.timeout`` as the deadline): no thread hand-off per probe, which at ~100 probes/s cost more CPU
    than the probe. A hung host holds one socket for one timeout and nothing else; the loop never blocks
    (only the address parse runs on it).
    With a ``client_factory`` (blocking clients) probes run on one process-wide thread pool (created once: at
    500 resources a pool per round cost ~8% of the operator's CPU).
    On cancellation queued probes are dropped; running ones stop at once (default) or within their timeout.
    """
    targets: Sequence[str] = list(endpoints)
    if not targets:
        return []
    if max_concurrency < 1:
        raise ValueError("max_concurrency must be >= 1")
    if timeout <= 0:
        raise ValueError("timeout must be > 0")
    if client_factory is None:
        if len(targets) == 1:  # the operator's daemons probe one endpoint at a time: keep that path short
            return [await _probe_pooled_async(targets[0], timeout)]
        if max_concurrency >= len(targets):
            return list(await asyncio.gather(*(_probe_pooled_async(ep, timeout) for ep in targets)))
        gate = asyncio.Semaphore(max_concurrency)

        async def gated(endpoint: str) -> ProbeResult:
            async with gate:
                return await _probe_pooled_async(endpoint, timeout)

        return list(await asyncio.gather(*(gated(ep) for ep in targets)))

    loop = asyncio.get_running_loop()
    pool = _shared_pool()
    threads = asyncio.Semaphore(max_concurrency)
    factory = client_factory

    async def one(endpoint: str) -> ProbeResult:
        async with threads:
            probe = partial(probe_endpoint, endpoint, timeout=timeout, client_factory=factory)
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
    timeout: float,
    max_concurrency: int = 64,
    client_factory: ClientFactory | None = None,
) -> list[ProbeResult]:
    """Synchronous :func:`probe_all` for CLIs and scripts (must not be called from a running loop)."""
    return asyncio.run(
        probe_all(
            endpoints,
            timeout=timeout,
            max_concurrency=max_concurrency,
            client_factory=client_factory,
        )
    )


def source_address(endpoint: str) -> str | None:
    """The address this process's probes to ``endpoint`` leave from (what a security group or network ACL
    must allow), as the kernel's route lookup picks it. A UDP ``connect`` sends no packet: it only routes."""
    try:
        host, port = parse_endpoint(endpoint)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect((host, port))
            return str(sock.getsockname()[0])
    except (OSError, InvalidEndpoint, ValueError):
        return None
