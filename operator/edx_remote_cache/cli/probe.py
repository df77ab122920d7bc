"""edx-remote-cache probe HOST:PORT ...: a memcstat-like look at cache endpoints with a plain verdict.

Exit status 0 only when every endpoint is HEALTHY, so it works in scripts and readiness checks.
Addresses are dialed as given; in the sandbox, run it where the cache is reachable:
`edx-remote-cache sandbox exec --env-file FILE operator -- edx-remote-cache probe IP:PORT`.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from edx_remote_cache.adapters.probe import ProbeResult, probe_many
from edx_remote_cache.cli.help import add_subcommand

__all__ = ["DEFAULT_TIMEOUT", "add_parser", "format_result", "main", "run", "verdict"]

DEFAULT_TIMEOUT = 1.0


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("endpoints", nargs="+", metavar="HOST:PORT", help="memcached endpoint(s) to probe")
    parser.add_argument("--json", action="store_true", help="print a JSON list of probe results")
    parser.add_argument(
        "--timeout",
        type=_positive_float,
        default=DEFAULT_TIMEOUT,
        metavar="S",
        help="seconds allowed per endpoint",
    )
    parser.set_defaults(func=run)


def add_parser(subparsers: Any) -> None:
    """Add the ``probe`` subcommand to an ``argparse`` subparsers object (sets ``func=run``)."""
    parser = add_subcommand(
        subparsers,
        "probe",
        summary="check memcached endpoints (version, stats, canary set/get/delete)",
        description=__doc__ or "",
        env={},
        exit_codes={0: "every endpoint is HEALTHY", 1: "at least one is not", 2: "usage error"},
    )
    _configure(parser)


def verdict(result: ProbeResult) -> str:
    """HEALTHY, UNREACHABLE (refused|timeout|unreachable|protocol|error) or DEGRADED (canary ...)."""
    if result.healthy:
        return "HEALTHY"
    if not result.reachable:
        return f"UNREACHABLE ({result.error_kind or 'error'})"
    return f"DEGRADED (canary {result.error_kind or 'failed'})"


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover - loop always returns


def _duration(seconds: int | None) -> str:
    if seconds is None:
        return "?"
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    text = (
        f"{days}d{hours}h{minutes}m"
        if days
        else f"{hours}h{minutes}m{secs}s"
        if hours
        else f"{minutes}m{secs}s"
    )
    return f"{text} ({seconds} s)"


def _notes(result: ProbeResult) -> list[str]:
    """Worth knowing even when HEALTHY."""
    notes = []
    if result.evictions:
        notes.append(f"{result.evictions} evictions: the cache is too small for its working set")
    if result.listen_disabled_num or result.rejected_connections:
        notes.append(
            f"connection limit hit (listen_disabled_num={result.listen_disabled_num}, "
            f"rejected_connections={result.rejected_connections}): raise -c / max connections"
        )
    return notes


def format_result(result: ProbeResult) -> str:
    """A memcstat-like block: header line with the verdict, then one figure per line."""
    via = f" (via {result.address})" if result.address and result.address != result.endpoint else ""
    lines = [f"{result.endpoint}{via}: {verdict(result)}"]
    if result.error:
        lines.append(f"  error            {result.error}")
    if result.reachable:
        ratio = result.hit_ratio
        percent = "n/a (no gets yet)" if ratio is None else f"{ratio:.0%}"
        used = (
            f" ({result.bytes / result.limit_maxbytes:.0%})"
            if result.bytes is not None and result.limit_maxbytes
            else ""
        )
        lines += [
            f"  version          {result.version}",
            f"  uptime           {_duration(result.uptime_seconds)}",
            f"  latency          {result.latency_ms} ms",
            f"  connections      {result.curr_connections} / {result.max_connections}",
            f"  hit ratio        {percent} ({result.get_hits} hits, {result.get_misses} misses)",
            f"  evictions        {result.evictions}",
            f"  memory           {_size(result.bytes)} / {_size(result.limit_maxbytes)}{used}",
            f"  listen disabled  {result.listen_disabled_num}",
            f"  rejected conns   {result.rejected_connections}",
            f"  canary           {'ok' if result.canary_ok else 'FAILED'}",
        ]
    lines += [f"  note             {note}" for note in _notes(result)]
    return "\n".join(lines)


def run(args: argparse.Namespace, *, out: TextIO | None = None) -> int:
    """Probe ``args.endpoints``; print text or JSON; 0 if all HEALTHY else 1."""
    stream = out if out is not None else sys.stdout
    results = probe_many(args.endpoints, timeout=args.timeout)
    if args.json:
        payload = [{**r.to_dict(), "verdict": verdict(r)} for r in results]
        stream.write(json.dumps(payload, indent=2) + "\n")
    else:
        stream.write("\n\n".join(format_result(r) for r in results) + "\n")
        healthy = sum(r.healthy for r in results)
        if len(results) > 1:
            stream.write(f"\n{healthy}/{len(results)} endpoints healthy\n")
    return 0 if all(r.healthy for r in results) else 1


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point: ``python -m edx_remote_cache.cli.probe HOST:PORT ...``."""
    parser = argparse.ArgumentParser(prog="edx-remote-cache probe", description=__doc__)
    _configure(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
