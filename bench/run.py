"""`make bench`: every named benchmark figure on the loopback sandbox, a table of targets met, and results.json.

Usage: ``.venv/bin/python bench/run.py [--smoke] [--scale N] [--only lifecycle,scale,...] [--profile]``

Parts (each also selectable with ``--only``):

* rewrite    bench/bench_rewrite.py: rewrite + diff of a 64 KiB lms.yml
* probe      bench/bench_probe.py: one probe round over 500 real memcached processes
* lifecycle  bench/lifecycle.py: Ready, detect refused/hung, heal, replace, idle status writes (real operator)
* scale      bench/scale.py: N resources at steady state: AWS calls per drift interval, operator RSS/CPU;
             then an operator restart with the N Ready (bench/restart.py): mutating calls, pushes, re-observation
* network    bench/network.py: sandbox start-up and the cost of one launched instance in the sandbox VPC
* ha         bench/ha.py: failover to the standby replica (SIGKILL) and relaunch after a crash before RunInstances
* vantage    bench/vantage.py: destructive actions while the operator's own view is the broken one (false heals)
* hostpush   bench/host_push.py: bytes SSM returns per Open edX host push, and one host's first push time

Results go to bench/out/results.json (``--out``): ``figures`` (name → median/min/max/n, target, met, and what was
measured), ``details`` (per-part context: configuration, per-window breakdowns) and ``meta``. ``--smoke`` runs a
tiny version of everything (3 resources, 1 repetition) in well under a minute, for tests/shipping/test_bench_smoke.py.
Only 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(1, str(ROOT / "operator"))

PARTS = ("rewrite", "probe", "lifecycle", "scale", "network", "ha", "vantage", "hostpush")


# name, target, unit, how the target reads in the table; `met` compares the median with the target
TARGETS: dict[str, tuple[str, str]] = {
    "ready_seconds": ("s", "≤ 3"),
    "detect_refused_seconds": ("s", "≤ 2"),
    "detect_hung_seconds": ("s", "≤ timeout*threshold+1"),
    "heal_seconds": ("s", "≤ 30"),
    "replace_seconds": ("s", "≤ 30"),
    "steady_aws_calls_per_interval": ("calls", "≤ 2/region"),
    "per_resource_calls_ratio": ("", "≤ 0.01"),
    "rss_mib_500": ("MiB", "≤ 300"),
    "cpu_pct_500": ("%", "≤ 15"),
    "probe_round_seconds_500": ("s", "≤ 1"),
    "rewrite_ms_64k": ("ms", "≤ 50"),
    "status_writes_per_minute_idle": ("/min", "≤ 2"),
    "sandbox_start_seconds": ("s", "≤ 5"),
    "instance_launch_ms": ("ms", "≤ 200"),
    "failover_seconds": ("s", "≤ 20"),
    "crash_relaunch_seconds": ("s", "≤ 10"),
    "describe_calls_per_second_max": ("calls/s", "≤ 5/region"),
    "restart_mutating_calls_500": ("calls", "≤ 0"),
    "restart_pushes_500": ("commands", "≤ 0"),
    "restart_reobserve_seconds_500": ("s", "≤ 60"),
    "false_heal_actions": ("actions", "0"),
    "detect_app_unreachable_seconds": ("s", "≤ drift interval + 5"),
    "push_ssm_bytes_1mib": ("B", "≤ 4096"),
}
FIXED_TARGETS = {
    "ready_seconds": 3.0,
    "detect_refused_seconds": 2.0,
    "heal_seconds": 30.0,
    "replace_seconds": 30.0,
    "per_resource_calls_ratio": 0.01,
    "rss_mib_500": 300.0,
    "cpu_pct_500": 15.0,
    "probe_round_seconds_500": 1.0,
    "rewrite_ms_64k": 50.0,
    "status_writes_per_minute_idle": 2.0,
    "sandbox_start_seconds": 5.0,
    "instance_launch_ms": 200.0,
    "failover_seconds": 20.0,
    "crash_relaunch_seconds": 10.0,
    "describe_calls_per_second_max": 5.0,  # per region (bench/ha.py: one region, one resource)
    "restart_mutating_calls_500": 0.0,
    "restart_pushes_500": 0.0,
    "restart_reobserve_seconds_500": 60.0,
    "false_heal_actions": 0.0,
    "push_ssm_bytes_1mib": 4096.0,  # issue 20: what leaves the host no longer grows with the file
}


def log(message: str) -> None:
    print(message, flush=True)


def _run_json(
    cmd: list[str], timeout: float, env_extra: dict[str, str] | None = None
) -> tuple[dict[str, Any], str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "operator"), os.environ.get("PYTHONPATH")])),
        **(env_extra or {}),
    }
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr[-2000:]}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1]
    return json.loads(line), proc.stderr.strip()


def part_rewrite(args: argparse.Namespace) -> dict[str, Any]:
    rounds = 5 if args.smoke else 50
    data, _ = _run_json(
        [sys.executable, str(BENCH / "bench_rewrite.py"), "--json", "--rounds", str(rounds)], 120
    )
    fig = data["rewrite_ms_64k"]
    fig["n"] = rounds
    return {"rewrite_ms_64k": fig}


def part_probe(args: argparse.Namespace) -> dict[str, Any]:
    count = 5 if args.smoke else args.probe_endpoints
    rounds = 1 if args.smoke else 5
    data, stderr = _run_json(
        [
            sys.executable,
            str(BENCH / "bench_probe.py"),
            "--json",
            "--count",
            str(count),
            "--rounds",
            str(rounds),
        ],
        300,
    )
    fig = data["probe_round_seconds_500"]
    fig.update(n=rounds, requested_endpoints=count, note=stderr.splitlines()[-1] if stderr else "")
    return {"probe_round_seconds_500": fig}


def part_lifecycle(args: argparse.Namespace) -> dict[str, Any]:
    from lifecycle import run_lifecycle

    reps = 1 if args.smoke else args.reps
    window = 0.0 if args.smoke else args.idle_window
    result = run_lifecycle(
        reps=reps, out_dir=args.out_dir, min_idle_window=window, env_extra=_env_extra(args), log=log
    )
    return result


def part_scale(args: argparse.Namespace) -> dict[str, Any]:
    from scale import run_scale

    n = 3 if args.smoke else args.scale
    drift = 5 if args.smoke else args.drift
    windows = 1 if args.smoke else args.windows
    on_steady: Callable[[int], Any] | None = None
    if args.profile and not args.smoke:
        on_steady = lambda pid: _start_profile(pid, args.out_dir / f"profile-operator-scale-{n}.txt", drift)  # noqa: E731
    result = run_scale(
        n=n,
        drift=drift,
        windows=windows,
        out_dir=args.out_dir,
        converge_timeout=60 if args.smoke else args.converge_timeout,
        quiet=2.0 if args.smoke else 5.0,
        warmup=0.0 if args.smoke else args.warmup,
        env_extra=_env_extra(args),
        on_steady=on_steady,
        restart_timeout=60 if args.smoke else 180,
        log=log,
    )
    return result


def part_hostpush(args: argparse.Namespace) -> dict[str, Any]:
    reps = 1 if args.smoke else 3
    cmd = [sys.executable, str(BENCH / "host_push.py"), "--json", "--reps", str(reps)]
    return _run_json(cmd, 300, _env_extra(args))[0]


def part_network(args: argparse.Namespace) -> dict[str, Any]:
    from network import run_network

    return run_network(starts=1 if args.smoke else 3, instances=3 if args.smoke else 50)


def _env_extra(args: argparse.Namespace) -> dict[str, str]:
    """--operator-path: run the operator child from another copy of the package (before/after experiments)."""
    if not args.operator_path:
        return {}
    path = str(Path(args.operator_path).resolve())
    return {"PYTHONPATH": os.pathsep.join(filter(None, [path, os.environ.get("PYTHONPATH")]))}


def _start_profile(pid: int, out: Path, seconds: float) -> None:
    """py-spy (if installed) samples the operator during the first steady window, in the background."""
    spy = Path(sys.executable).with_name("py-spy")
    if not spy.exists():
        log("  --profile: py-spy is not installed (.venv/bin/pip install py-spy); skipping")
        return
    # --gil: only the thread holding the GIL is sampled, so the profile attributes the operator's CPU time
    cmd = [str(spy), "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "100",
           "--format", "raw", "--nonblocking", "--gil", "--output", str(out)]  # fmt: skip
    subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log(f"  profiling the operator for {seconds:.0f}s → {out}")


# ----------------------------------------------------------------------------------------------- the table


def part_ha(args: argparse.Namespace) -> dict[str, Any]:
    from ha import run_ha

    return run_ha(
        reps=1 if args.smoke else 3,
        out_dir=args.out_dir,
        env_extra=_env_extra(args),
        peering_cost_window=0.0 if args.smoke else 30.0,
        log=log,
    )


def part_vantage(args: argparse.Namespace) -> dict[str, Any]:
    from vantage import run_vantage

    return run_vantage(
        window=2.0 if args.smoke else 60.0, out_dir=args.out_dir, env_extra=_env_extra(args), log=log
    )


def _target(name: str, fig: dict[str, Any], details: dict[str, Any]) -> float | None:
    if name in FIXED_TARGETS:
        return FIXED_TARGETS[name]
    if name in ("detect_hung_seconds", "detect_app_unreachable_seconds"):
        return fig.get("target_seconds")
    if name == "steady_aws_calls_per_interval":
        return 2.0 * float(fig.get("regions") or 1)
    return None


def assemble(parts: dict[str, dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    figures: dict[str, Any] = {}
    details: dict[str, Any] = {}
    for part, result in parts.items():
        for key, value in result.items():
            if isinstance(value, dict) and "median" in value:
                figures[key] = value
            else:
                details[key if key != part else part] = value
    for name, fig in figures.items():
        unit, text = TARGETS.get(name, ("", ""))
        target = _target(name, fig, details)
        fig["unit"] = unit
        fig["target"] = target
        fig["target_text"] = text
        fig["met"] = None if target is None or fig.get("median") is None else bool(fig["median"] <= target)
    return figures, details


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def _note(name: str, fig: dict[str, Any]) -> str:
    notes = []
    if "resources" in fig:
        notes.append(f"N={fig['resources']}")
    if "endpoints" in fig:
        notes.append(f"{fig['endpoints']} endpoints")
    if name == "detect_hung_seconds" and fig.get("target_formula"):
        notes.append(f"target {fig['target_formula']}")
    if name == "status_writes_per_minute_idle" and "window_seconds" in fig:
        notes.append(f"{fig.get('writes')} writes in {fig['window_seconds']:.0f}s")
    if "n" in fig:
        notes.append(f"n={fig['n']}")
    return ", ".join(notes)


def _target_cell(fig: dict[str, Any]) -> str:
    text, target = fig.get("target_text") or "", fig.get("target")
    if target is None:
        return text or "-"
    return text if text == f"≤ {_fmt(target)}" else f"{text} (≤ {_fmt(target)})"


def table(figures: dict[str, Any]) -> str:
    order = [n for n in TARGETS if n in figures] + sorted(n for n in figures if n not in TARGETS)
    rows = [("name", "median", "min", "max", "target", "met", "notes")]
    for name in order:
        fig = figures[name]
        met = {True: "yes", False: "NO", None: "-"}[fig.get("met")]
        rows.append(
            (
                name,
                _fmt(fig.get("median")),
                _fmt(fig.get("min")),
                _fmt(fig.get("max")),
                _target_cell(fig),
                met,
                _note(name, fig),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for i, r in enumerate(rows):
        lines.append("  ".join(c.ljust(widths[j]) for j, c in enumerate(r)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny run of every part (3 resources, 1 rep)")
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts ({', '.join(PARTS)})")
    parser.add_argument("--out", default=str(BENCH / "out" / "results.json"), help="results file")
    parser.add_argument(
        "--scale", type=int, default=500, help="resources in the scale scenario (default 500)"
    )
    parser.add_argument("--drift", type=int, default=60, help="drift interval of the scale resources, s (60)")
    parser.add_argument("--windows", type=int, default=2, help="drift-interval windows measured at scale (2)")
    parser.add_argument("--warmup", type=float, default=30.0, help="wait after convergence at scale, s (30)")
    parser.add_argument(
        "--converge-timeout", type=float, default=240.0, help="max wait for all Ready at scale"
    )
    parser.add_argument("--reps", type=int, default=5, help="lifecycle repetitions (default 5)")
    parser.add_argument(
        "--idle-window", type=float, default=120.0, help="min idle status-write window, s (120)"
    )
    parser.add_argument(
        "--probe-endpoints", type=int, default=500, help="memcached processes for the probe bench"
    )
    parser.add_argument(
        "--profile", action="store_true", help="py-spy the operator in the first scale window"
    )
    parser.add_argument(
        "--operator-path", default=None, help="run the operator from this package dir (experiments)"
    )
    args = parser.parse_args(argv)
    args.out_file = Path(args.out).resolve()
    args.out_dir = args.out_file.parent
    args.out_dir.mkdir(parents=True, exist_ok=True)
    parts_wanted = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = sorted(set(parts_wanted) - set(PARTS))
    if unknown:
        parser.error(f"unknown part(s) {unknown}; choose from {', '.join(PARTS)}")

    # SIGTERM (make's Ctrl-C arrives as SIGINT, timeouts as SIGTERM) → normal exit so sandboxes clean up
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    parts: dict[str, dict[str, Any]] = {}
    errors: dict[str, str] = {}
    timings: dict[str, float] = {}
    runners = {
        "rewrite": part_rewrite,
        "probe": part_probe,
        "lifecycle": part_lifecycle,
        "scale": part_scale,
        "network": part_network,
        "ha": part_ha,
        "vantage": part_vantage,
        "hostpush": part_hostpush,
    }
    for part in PARTS:
        if part not in parts_wanted:
            continue
        log(f"== {part}")
        t0 = time.monotonic()
        try:
            parts[part] = runners[part](args)
        except Exception as exc:  # one failing part must not hide the others' figures
            errors[part] = f"{type(exc).__name__}: {exc}"
            log(f"  FAILED: {errors[part]}")
        timings[part] = round(time.monotonic() - t0, 1)
        log(f"  ({timings[part]:.0f}s)")

    figures, details = assemble(parts)
    wall = round(time.monotonic() - started, 1)
    results = {
        "meta": {
            "mode": "smoke" if args.smoke else "full",
            "wall_seconds": wall,
            "part_seconds": timings,
            "errors": errors,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(time.time() - wall)),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "machine": platform.machine(),
            "load_average": os.getloadavg(),
            "operator_path": args.operator_path,
            "git": _git_rev(),
        },
        "figures": figures,
        "details": details,
    }
    args.out_file.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    log("")
    log(table(figures))
    met = sum(1 for f in figures.values() if f.get("met") is True)
    judged = sum(1 for f in figures.values() if f.get("met") is not None)
    log("")
    log(f"{met}/{judged} targets met; wall time {wall:.0f}s; results in {args.out_file}")
    if errors:
        log(f"errors: {errors}")
        return 1
    return 0


def _git_rev() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT, timeout=5
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


if __name__ == "__main__":
    raise SystemExit(main())
