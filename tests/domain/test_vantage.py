"""The second opinion's host script, run for real in bash against loopback servers, and the breaker's rule."""

from __future__ import annotations

import socket
import subprocess
import threading
from collections.abc import Iterator

import pytest

from edx_remote_cache.domain.vantage import breaker_trips, parse_opinion, render_opinion_script


def _serve(answer: bytes | None) -> tuple[socket.socket, int]:
    """A loopback listener: answers ``stats`` with ``answer``, or (None) accepts and never answers (wedged)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)

    def loop() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            if answer is not None:
                conn.recv(100)
                conn.sendall(answer)
                conn.close()

    threading.Thread(target=loop, daemon=True).start()
    return server, server.getsockname()[1]


@pytest.fixture
def memcached_like() -> Iterator[int]:
    server, port = _serve(b"STAT pid 7\r\nSTAT uptime 4242\r\nSTAT version 1.6.21\r\nEND\r\n")
    yield port
    server.close()


def run(port: int, timeout: int = 1) -> str:
    script = render_opinion_script("127.0.0.1", port, timeout=timeout)
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=20).stdout


def test_a_memcached_that_answers_stats_answers(memcached_like: int) -> None:
    opinion = parse_opinion(run(memcached_like))
    assert opinion.answers and opinion.uptime_seconds == 4242


def test_a_refused_port_is_down() -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    opinion = parse_opinion(run(port))
    assert opinion.verdict == "down" and opinion.confirms_failure
    assert "refused" in opinion.detail.lower() or "connect" in opinion.detail.lower()


def test_a_server_that_accepts_and_never_answers_is_wedged() -> None:
    server, port = _serve(None)
    try:
        opinion = parse_opinion(run(port, timeout=1))
    finally:
        server.close()
    assert opinion.verdict == "wedged" and opinion.confirms_failure


def test_an_answer_that_is_not_ours_never_counts_as_answering() -> None:
    assert not parse_opinion("STAT uptime 5\nEND\n").asked
    assert not parse_opinion("ERC-UNIT active\nERC-STATS ok 5\n").asked, "cut before ERC-END"


def test_only_an_address_is_pasted_into_the_script() -> None:
    with pytest.raises(ValueError):
        render_opinion_script("10.0.0.1; rm -rf /", 11211)


@pytest.mark.parametrize(
    ("onsets", "tripped"),
    [
        ({"a": 100.0}, False),  # one endpoint is never a mass failure
        ({"a": 100.0, "b": 103.0}, True),  # both of two, together
        ({"a": 100.0, "b": 103.0, "c": None, "d": None}, True),  # half of four
        ({"a": 100.0, "b": 103.0, "c": None, "d": None, "e": None}, False),  # 2 of 5 is less than half
        ({"a": 100.0, "b": 200.0, "c": None, "d": None}, False),  # far apart: two separate failures
        ({"a": None, "b": None}, False),
    ],
)
def test_the_breaker_trips_on_half_the_region_within_one_window(
    onsets: dict[str, float | None], tripped: bool
) -> None:
    assert breaker_trips(onsets, window=18).tripped is tripped
