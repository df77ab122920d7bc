"""The default probe: the five commands pipelined on a pooled connection, run on the event loop.

One write, and usually one read for all five answers, parsed here (the text protocol, as pymemcache speaks it;
the errors raised are pymemcache's own exception types). A reused connection found closed or reset is retried
once on a fresh one within the same deadline; see the package docstring.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

from pymemcache.exceptions import (
    MemcacheClientError,
    MemcacheServerError,
    MemcacheUnexpectedCloseError,
    MemcacheUnknownCommandError,
    MemcacheUnknownError,
)

from edx_remote_cache.adapters.probe.pool import _POOL, _Connection
from edx_remote_cache.adapters.probe.result import (
    _STAT_FIELDS,
    CANARY_TTL_SECONDS,
    CanaryFailed,
    ProbeResult,
    _canary,
    _result,
    parse_endpoint,
)

_RECV_SIZE = 65536
# version, stats, then the canary; key/value are ours, flags 0, and every command is answered (no noreply)
_REQUEST = b"version\r\nstats\r\nset %s 0 %d %d\r\n%s\r\nget %s\r\ndelete %s\r\n"
_STAT_PATTERNS = tuple((b"\nSTAT " + name + b" ", field) for name, field in _STAT_FIELDS)
# how a connection that is no longer there shows itself (the peer closed or reset it)
_CLOSED_ERRORS = (MemcacheUnexpectedCloseError, ConnectionResetError, ConnectionAbortedError, BrokenPipeError)


class _Attempt:
    """One go at the pipelined commands on one connection: what the answers told us so far.

    A retry on a fresh connection is a new attempt: it learns everything again, as a fresh probe would.
    """

    __slots__ = ("buf", "clean", "failure", "fields", "key", "reachable", "t0", "value")

    def __init__(self, key: bytes, value: bytes) -> None:
        self.key = key
        self.value = value
        self.t0 = time.monotonic()  # before the connect, if there is one
        self.fields: dict[str, Any] = {}
        self.reachable = False
        self.failure: CanaryFailed | None = None
        self.clean = False  # every answer read and nothing left over: the connection can be reused
        self.buf = b""

    def feed(self, chunk: bytes) -> bool:
        """Take what one ``recv`` returned; True once every answer is in (or the canary failed).

        ``latency_ms`` is taken at the first byte of the first answer."""
        if not chunk:
            raise MemcacheUnexpectedCloseError()
        if self.buf:
            self.buf += chunk
        else:
            self.fields["latency_ms"] = round((time.monotonic() - self.t0) * 1000.0, 3)
            self.buf = chunk
        parsed = _parse_answers(self.buf, self.key, self.value, self)
        if parsed is None:
            return False
        self.failure, used = parsed
        self.clean = self.failure is None and used == len(self.buf)
        return True


def _raise_errors(line: bytes, name: bytes) -> None:
    """pymemcache's reading of an error answer, with its exception types."""
    if line.startswith(b"ERROR"):
        raise MemcacheUnknownCommandError(name)
    if line.startswith(b"CLIENT_ERROR"):
        raise MemcacheClientError(line[line.find(b" ") + 1 :])
    if line.startswith(b"SERVER_ERROR"):
        raise MemcacheServerError(line[line.find(b" ") + 1 :])


def _stat_ints(buf: bytes, start: int, end: int) -> dict[str, int | None]:
    """The counters we report from the ``STAT`` lines in ``buf[start:end]`` (``start`` is at a newline)."""
    found: dict[str, int | None] = {}
    for pattern, field in _STAT_PATTERNS:
        at = buf.find(pattern, start, end)
        if at < 0:
            continue
        at += len(pattern)
        try:
            found[field] = int(buf[at : buf.find(b"\r\n", at)])
        except ValueError:
            found[field] = None
    return found


def _parse_answers(
    buf: bytes, key: bytes, value: bytes, seen: _Attempt
) -> tuple[CanaryFailed | None, int] | None:
    """Read the five answers to :data:`_REQUEST` in order; None = not all there yet.

    Fills ``seen`` as answers are understood and raises at the first one that is an error or not what
    memcached would say (so what was learnt before it is kept). Returns (why the canary failed or None,
    bytes read); reading stops at a canary failure.
    """
    # version: VERSION <x>
    eol = buf.find(b"\r\n")
    if eol < 0:
        return None
    line = buf[:eol]
    head, _, version = line.partition(b" ")
    if head != b"VERSION":
        _raise_errors(line, b"version")
        raise MemcacheUnknownError(f"Received unexpected response: {line!r}")
    seen.fields["version"] = version.decode("ascii", "replace")
    # stats: STAT lines up to END, or one error line
    pos = eol + 2
    eol = buf.find(b"\r\n", pos)
    if eol < 0:
        return None
    if buf.startswith(b"STAT ", pos):
        end = buf.find(b"\r\nEND\r\n", eol)
        if end < 0:
            return None
        seen.fields.update(_stat_ints(buf, pos - 1, end + 2))
        pos = end + 7
    elif eol == pos + 3 and buf.startswith(b"END", pos):
        pos = eol + 2
    else:
        line = buf[pos:eol]
        _raise_errors(line, b"stats")
        raise MemcacheUnknownError(line[:32])
    seen.reachable = True
    # set: STORED
    eol = buf.find(b"\r\n", pos)
    if eol < 0:
        return None
    line = buf[pos:eol]
    pos = eol + 2
    if line != b"STORED":
        if line == b"NOT_STORED":
            return CanaryFailed("set was not stored"), pos
        _raise_errors(line, b"set")
        raise MemcacheUnknownError(line[:32])
    # get: VALUE <key> <flags> <bytes>, the data, END
    got = None
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        line = buf[pos:eol]
        pos = eol + 2
        if line == b"END":
            break
        if not line.startswith(b"VALUE "):
            _raise_errors(line, b"get")
            raise MemcacheUnknownError(line[:32])
        parts = line.split()
        try:
            size = int(parts[3])
        except (IndexError, ValueError):
            raise MemcacheUnknownError(line[:32]) from None
        if len(buf) < pos + size + 2:
            return None
        if parts[1] == key:
            got = buf[pos : pos + size]
        pos += size + 2
    # delete: DELETED
    eol = buf.find(b"\r\n", pos)
    if eol < 0:
        return None
    line = buf[pos:eol]
    pos = eol + 2
    _raise_errors(line, b"delete")
    if got != value:
        return CanaryFailed(f"get returned {got!r}, expected the value just set"), pos
    if line != b"DELETED":
        return CanaryFailed("delete found no canary key"), pos
    return None, pos


def _canary_request() -> tuple[bytes, bytes, bytes]:
    """(key, value, the pipelined request) of one probe."""
    key_text, value = _canary()
    key = key_text.encode("ascii")
    return key, value, _REQUEST % (key, CANARY_TTL_SECONDS, len(value), value, key, key)


def _pooled_result(
    endpoint: str,
    started: float,
    timeout: float,
    address: tuple[str, int] | None,
    attempt: _Attempt | None,
    error: BaseException | None,
) -> ProbeResult:
    return _result(
        endpoint,
        started=started,
        timeout=timeout,
        address=address,
        reachable=attempt is not None and attempt.reachable,
        fields={} if attempt is None else attempt.fields,
        error=error,
        canary_ok=error is None,
    )


# non-blocking (probe_all): the event loop waits for the answers, asyncio.timeout is the deadline


async def _open_async(loop: asyncio.AbstractEventLoop, address: tuple[str, int]) -> _Connection:
    host, port = address
    try:  # an IP address (always, for the operator) needs no lookup; a name is looked up off the loop
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    except socket.gaierror:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    error: OSError | None = None
    for family, kind, proto, _, sockaddr in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await loop.sock_connect(sock, sockaddr)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        except BaseException:  # cancelled or out of time
            sock.close()
            raise
        return _Connection(sock, time.monotonic())
    raise error if error is not None else OSError(f"no address for {host}:{port}")


async def _exchange_async(
    loop: asyncio.AbstractEventLoop, conn: _Connection, attempt: _Attempt, request: bytes
) -> None:
    sock = conn.sock
    await loop.sock_sendall(sock, request)
    while not attempt.feed(await loop.sock_recv(sock, _RECV_SIZE)):
        pass


async def _probe_pooled_async(endpoint: str, timeout: float) -> ProbeResult:
    """The pooled, pipelined probe on the running event loop (see the package docstring)."""
    started = time.monotonic()
    address: tuple[str, int] | None = None
    conn: _Connection | None = None
    attempt: _Attempt | None = None
    try:
        address = parse_endpoint(endpoint)
        key, value, request = _canary_request()
        generation = _POOL.generation
        conn = _POOL.checkout(address, started)
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(started + timeout - time.monotonic()):
            while True:
                reused = conn is not None
                attempt = _Attempt(key, value)
                try:
                    if conn is None:
                        conn = await _open_async(loop, address)
                    await _exchange_async(loop, conn, attempt, request)
                    break
                except _CLOSED_ERRORS:
                    if not reused or conn is None:
                        raise
                    conn.close()  # gone since last used: probe again as a fresh probe would (see above)
                    conn = None
        if attempt.failure is None and attempt.clean:
            _POOL.checkin(address, conn, time.monotonic(), generation)
            conn = None
        return _pooled_result(endpoint, started, timeout, address, attempt, attempt.failure)
    except Exception as exc:  # a probe reports, it does not raise (asyncio.timeout raises TimeoutError)
        return _pooled_result(endpoint, started, timeout, address, attempt, exc)
    finally:
        if conn is not None:
            conn.close()
