"""Benchmark: one probe round over ~500 real memcached processes on loopback (target ≤ 1 s).

Usage: ``PYTHONPATH=operator .venv/bin/python bench/bench_probe.py [--count 500] [--rounds 5] [--json]``.
Starts as many ``memcached -m 8 -c 64 -t 1`` processes as the machine allows (up to --count), probes
them with :func:`edx_remote_cache.probe.probe_all`, prints ``probe_round_seconds_500``, and kills every
process it started, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))

from edx_remote_cache.probe import probe_all
from edx_remote_cache.resolver import IdentityResolver

METRIC = "probe_round_seconds_500"


def _free_ports(count: int) -> list[int]:
    """Hold all sockets open while choosing so the kernel never hands out the same port twice."""
    held: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            held.append(s)
        return [s.getsockname()[1] for s in held]
    finally:
        for s in held:
            s.close()


def _memcached_cmd(binary: str, port: int) -> list[str]:
    cmd = [binary, "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-m", "8", "-c", "64", "-t", "1"]
    if os.geteuid() == 0:
        cmd += ["-u", "root"]
    return cmd


def _accepting(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def memcached_fleet(count: int, binary: str) -> Iterator[list[int]]:
    """Start up to ``count`` memcached processes; yield the ports that answer; always kill them all."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for port in _free_ports(count):
            try:
                procs.append(
                    subprocess.Popen(
                        _memcached_cmd(binary, port),
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                        start_new_session=True,  # Ctrl-C in the terminal must not race our cleanup
                    )
                )
            except OSError as exc:  # EAGAIN / EMFILE / ENOMEM: the machine's limit, use what we have
                print(f"stopped starting memcached after {len(procs)}: {exc}", file=sys.stderr)
                break
        ports = [int(p.args[4]) for p in procs]  # type: ignore[index]
        deadline = time.monotonic() + 20
        pending = set(range(len(procs)))
        while pending and time.monotonic() < deadline:
            for i in list(pending):
                if procs[i].poll() is not None:
                    pending.discard(i)  # died (port race or limit): leave it out
                elif _accepting(ports[i]):
                    pending.discard(i)
            if pending:
                time.sleep(0.05)
        yield [ports[i] for i, p in enumerate(procs) if p.poll() is None]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=5)


async def _rounds(endpoints: list[str], rounds: int, timeout: float, concurrency: int) -> list[float]:
    resolver = IdentityResolver()
    times: list[float] = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        results = await probe_all(endpoints, resolver=resolver, timeout=timeout, max_concurrency=concurrency)
        times.append(time.perf_counter() - t0)
        bad = [r for r in results if not r.healthy]
        if bad:
            print(f"warning: {len(bad)} unhealthy, e.g. {bad[0].endpoint}: {bad[0].error}", file=sys.stderr)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=500, help="memcached processes to start (default 500)")
    parser.add_argument("--rounds", type=int, default=5, help="probe rounds to time (default 5)")
    parser.add_argument("--timeout", type=float, default=1.0, help="per-probe timeout in seconds")
    parser.add_argument("--concurrency", type=int, default=64, help="probe_all max_concurrency")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--memcached", default=shutil.which("memcached") or "/usr/bin/memcached")
    args = parser.parse_args(argv)

    # SIGTERM → normal exit, so the fleet's finally block runs
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with memcached_fleet(args.count, args.memcached) as ports:
        if len(ports) < args.count:
            print(f"started {len(ports)} of {args.count} memcached processes", file=sys.stderr)
        else:
            print(f"started {len(ports)} memcached processes", file=sys.stderr)
        endpoints = [f"127.0.0.1:{p}" for p in ports]
        asyncio.run(_rounds(endpoints, 1, args.timeout, args.concurrency))  # warm-up (imports, first conns)
        times = asyncio.run(_rounds(endpoints, args.rounds, args.timeout, args.concurrency))
    if args.json:
        summary = {
            "median": round(statistics.median(times), 4),
            "min": round(min(times), 4),
            "max": round(max(times), 4),
            "endpoints": len(ports),
        }
        print(json.dumps({METRIC: summary}))
    else:
        print(f"{METRIC}: {statistics.median(times):.3f} ({len(ports)} endpoints)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
