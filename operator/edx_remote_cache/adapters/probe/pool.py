"""The connection pool of the default probe: one idle TCP connection per dialed address kept between probes.

A steady probe then does no connect/close. Idle (``POOL_IDLE_SECONDS``) and old (``POOL_MAX_AGE_SECONDS``)
connections are replaced; a connection is used by one probe at a time (checked out), and the pool is bounded
per address and in all.
"""

from __future__ import annotations

import contextlib
import socket
import threading

POOL_IDLE_SECONDS = 60.0  # a connection unused this long is closed, not reused
POOL_MAX_AGE_SECONDS = 300.0  # ... and so is one this old, so that connecting is exercised now and then
POOL_MAX_PER_ADDRESS = 4  # idle connections kept per address (concurrent probes of one address each open one)
POOL_MAX_CONNECTIONS = 4096  # idle connections kept in all; beyond that a probe closes its connection
_POOL_SWEEP_SECONDS = 10.0


class _Connection:
    """One open TCP connection to memcached, with when it was opened and last returned to the pool."""

    __slots__ = ("opened", "sock", "used")

    def __init__(self, sock: socket.socket, now: float) -> None:
        self.sock = sock
        self.opened = now
        self.used = now

    def close(self) -> None:
        with contextlib.suppress(OSError):  # closing a broken socket must not mask the result
            self.sock.close()


class _ConnectionPool:
    """Idle connections by dialed address. A connection is used by one probe at a time (checked out)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._size = 0
        self._next_sweep = 0.0
        self.generation = 0  # bumped by close_all: connections of an older generation are not taken back

    @staticmethod
    def _fresh(conn: _Connection, now: float) -> bool:
        return now - conn.used < POOL_IDLE_SECONDS and now - conn.opened < POOL_MAX_AGE_SECONDS

    def checkout(self, address: tuple[str, int], now: float) -> _Connection | None:
        stale: list[_Connection] = []
        found = None
        with self._lock:
            stack = self._idle.get(address)
            while stack:
                conn = stack.pop()
                self._size -= 1
                if self._fresh(conn, now):
                    found = conn
                    break
                stale.append(conn)
            if stack is not None and not stack:
                del self._idle[address]
        for conn in stale:
            conn.close()
        return found

    def checkin(self, address: tuple[str, int], conn: _Connection, now: float, generation: int) -> None:
        """Keep ``conn`` for the next probe of ``address`` (``generation``: the pool's, read before checkout)."""
        conn.used = now
        stale: list[_Connection] = []
        keep = False
        with self._lock:
            if now >= self._next_sweep:
                stale = self._sweep(now)
            stack = self._idle.get(address)
            if (
                generation == self.generation
                and self._size < POOL_MAX_CONNECTIONS
                and (stack is None or len(stack) < POOL_MAX_PER_ADDRESS)
            ):
                self._idle.setdefault(address, []).append(conn)
                self._size += 1
                keep = True
        if not keep:
            conn.close()
        for old in stale:
            old.close()

    def _sweep(self, now: float) -> list[_Connection]:
        """Take out connections gone stale (their endpoint is no longer probed, say); caller closes them."""
        self._next_sweep = now + _POOL_SWEEP_SECONDS
        stale: list[_Connection] = []
        for address in list(self._idle):
            stack = self._idle[address]
            keep = [c for c in stack if self._fresh(c, now)]
            if len(keep) != len(stack):
                stale.extend(c for c in stack if not self._fresh(c, now))
                self._size -= len(stack) - len(keep)
                if keep:
                    self._idle[address] = keep
                else:
                    del self._idle[address]
        return stale

    def close_all(self) -> int:
        with self._lock:
            conns = [c for stack in self._idle.values() for c in stack]
            self._idle.clear()
            self._size = 0
            self.generation += 1
        for conn in conns:
            conn.close()
        return len(conns)


_POOL = _ConnectionPool()


def close_pooled_connections() -> int:
    """Close every pooled probe connection (at shutdown, or in tests); returns how many idle ones were closed.

    Probes running meanwhile finish on their connection and then close it instead of pooling it."""
    return _POOL.close_all()
