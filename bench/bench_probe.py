"""Benchmark: one probe round over ~500 real memcached processes on loopback (target ≤ 1 s).

Usage: ``PYTHONPATH=operator .venv/bin/python bench/bench_probe.py [--count 500] [--rounds 5] [--json] [--cpu]``.
Starts as many ``memcached -m 8 -c 64 -t 1`` processes as the machine allows (up to --count), probes
them with :func:`edx_remote_cache.adapters.probe.probe_all`, prints ``probe_round_seconds_500``, and kills every
process it started, also on Ctrl-C.

It also prints ``probe_cpu_ms_per_probe``: this process's CPU time (``time.process_time``: user + system of
every thread, the probe pool's included; the memcached children are not) over the timed rounds, divided by
the number of probes they made. ``--cpu`` sizes the run for a stable figure (50 endpoints, 200 rounds =
10,000 probes) and adds ``probe_cpu_ms_per_probe_paced``: the operator's pattern, one task per endpoint
calling ``probe_all([endpoint])`` every ``--interval`` seconds (0.5 s: 100 probes/s for 50 endpoints, the
rate at 500 resources) for ``--paced-seconds``, CPU over that window divided by the probes made. That is
what the operator pays per probe; rounds of many endpoints amortise the per-call overhead better. The paced
figure includes the pacing loop's own sleep/wake-up; ``paced_loop_ms`` (the same loop for half as long,
without probing) is that part, so the probe's own share is the difference.
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
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))

from edx_remote_cache.adapters.probe import probe_all

METRIC = "probe_round_seconds_500"
CPU_METRIC = "probe_cpu_ms_per_probe"
PACED_METRIC = "probe_cpu_ms_per_probe_paced"


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
    times: list[float] = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        results = await probe_all(endpoints, timeout=timeout, max_concurrency=concurrency)
        times.append(time.perf_counter() - t0)
        bad = [r for r in results if not r.healthy]
        if bad:
            print(f"warning: {len(bad)} unhealthy, e.g. {bad[0].endpoint}: {bad[0].error}", file=sys.stderr)
    return times


async def _paced(
    endpoints: list[str], interval: float, seconds: float, timeout: float, *, probe: bool = True
) -> tuple[float, int]:
    """One task per endpoint, each probing its endpoint alone every ``interval`` (as the operator's daemons
    do), starts spread over one interval; returns (CPU seconds, probes) over ``seconds``. ``probe=False``:
    the same loop without the probe (its own cost)."""
    probes = 0
    unhealthy = 0
    stop_at = time.monotonic() + seconds

    async def daemon(endpoint: str, offset: float) -> None:
        nonlocal probes, unhealthy
        await asyncio.sleep(offset)
        while time.monotonic() < stop_at:
            began = time.monotonic()
            if probe:
                (result,) = await probe_all([endpoint], timeout=timeout)
                unhealthy += not result.healthy
            probes += 1
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - began)))

    cpu0 = time.process_time()
    step = interval / max(1, len(endpoints))
    await asyncio.gather(*(daemon(ep, i * step) for i, ep in enumerate(endpoints)))
    cpu = time.process_time() - cpu0
    if unhealthy:
        print(f"warning: {unhealthy} unhealthy probes in the paced run", file=sys.stderr)
    return cpu, probes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, help="memcached processes to start (default 500; 50 with --cpu)")
    parser.add_argument("--rounds", type=int, help="probe rounds to time (default 5; 200 with --cpu)")
    parser.add_argument(
        "--cpu", action="store_true", help="measure CPU per probe (50 endpoints, 200 rounds, paced)"
    )
    parser.add_argument("--interval", type=float, default=0.5, help="--cpu paced run: seconds between probes")
    parser.add_argument(
        "--paced-seconds", type=float, default=20.0, help="--cpu paced run: length in seconds"
    )
    parser.add_argument("--timeout", type=float, default=1.0, help="per-probe timeout in seconds")
    parser.add_argument("--concurrency", type=int, default=64, help="probe_all max_concurrency")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--memcached", default=shutil.which("memcached") or "/usr/bin/memcached")
    args = parser.parse_args(argv)
    if args.count is None:
        args.count = 50 if args.cpu else 500
    if args.rounds is None:
        args.rounds = 200 if args.cpu else 5

    # SIGTERM → normal exit, so the fleet's finally block runs
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with memcached_fleet(args.count, args.memcached) as ports:
        if len(ports) < args.count:
            print(f"started {len(ports)} of {args.count} memcached processes", file=sys.stderr)
        else:
            print(f"started {len(ports)} memcached processes", file=sys.stderr)
        endpoints = [f"127.0.0.1:{p}" for p in ports]
        asyncio.run(_rounds(endpoints, 1, args.timeout, args.concurrency))  # warm-up (imports, first conns)
        cpu0 = time.process_time()
        times = asyncio.run(_rounds(endpoints, args.rounds, args.timeout, args.concurrency))
        cpu_ms_per_probe = (time.process_time() - cpu0) * 1000.0 / max(1, len(endpoints) * args.rounds)
        paced_ms_per_probe = paced_loop_ms = None
        if args.cpu:
            paced_cpu, paced_probes = asyncio.run(
                _paced(endpoints, args.interval, args.paced_seconds, args.timeout)
            )
            paced_ms_per_probe = paced_cpu * 1000.0 / max(1, paced_probes)
            loop_cpu, loops = asyncio.run(
                _paced(endpoints, args.interval, args.paced_seconds / 2, args.timeout, probe=False)
            )
            paced_loop_ms = loop_cpu * 1000.0 / max(1, loops)
    if args.json:
        summary = {
            "median": round(statistics.median(times), 4),
            "min": round(min(times), 4),
            "max": round(max(times), 4),
            "endpoints": len(ports),
            "cpu_ms_per_probe": round(cpu_ms_per_probe, 4),
        }
        figures: dict[str, Any] = {METRIC: summary, CPU_METRIC: round(cpu_ms_per_probe, 4)}
        if paced_ms_per_probe is not None and paced_loop_ms is not None:
            figures[PACED_METRIC] = round(paced_ms_per_probe, 4)
            figures["paced_loop_ms"] = round(paced_loop_ms, 4)
        print(json.dumps(figures))
    else:
        print(f"{METRIC}: {statistics.median(times):.3f} ({len(ports)} endpoints)")
        print(f"{CPU_METRIC}: {cpu_ms_per_probe:.4f} ({len(ports)} endpoints x {args.rounds} rounds)")
        if paced_ms_per_probe is not None and paced_loop_ms is not None:
            print(
                f"{PACED_METRIC}: {paced_ms_per_probe:.4f} ({len(ports)} endpoints, one probe_all([endpoint])"
                f" each every {args.interval:g} s for {args.paced_seconds:g} s; {paced_loop_ms:.4f} of it is"
                " the pacing loop itself)"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
