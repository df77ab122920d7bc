"""The benchmarks must not rot: `bench/run.py --smoke` (every part, 3 resources, 1 repetition) in the default suite.

The full `make bench` takes minutes and is never part of `make test`; this runs the same code paths in well under a
minute and checks that results.json carries every named figure with numbers (not that targets are met: a loaded
CI machine decides timings, and the smoke sizes are far from the targets' conditions).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIGURES = (
    "ready_seconds",
    "detect_refused_seconds",
    "detect_hung_seconds",
    "heal_seconds",
    "replace_seconds",
    "steady_aws_calls_per_interval",
    "per_resource_calls_ratio",
    "rss_mib_500",
    "cpu_pct_500",
    "probe_round_seconds_500",
    "rewrite_ms_64k",
    "status_writes_per_minute_idle",
    "failover_seconds",
    "crash_relaunch_seconds",
    "describe_calls_per_second_max",
    "restart_mutating_calls_500",
    "restart_pushes_500",
    "restart_reobserve_seconds_500",
    "false_heal_actions",
    "detect_app_unreachable_seconds",
    "push_ssm_bytes_1mib",
)


@pytest.mark.bench
@pytest.mark.timeout(330)
def test_bench_smoke_writes_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,  # every part, vantage and hostpush included: ~150 s beside another test worker
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text(encoding="utf-8"))
    assert results["meta"]["mode"] == "smoke"
    assert not results["meta"]["errors"]
    figures = results["figures"]
    for name in FIGURES:
        assert name in figures, f"{name} missing from results.json"
        fig = figures[name]
        for key in ("median", "min", "max"):
            value = fig[key]
            assert isinstance(value, int | float) and not isinstance(value, bool), (name, key, value)
            assert math.isfinite(value) and value >= 0, (name, key, value)
        assert fig["min"] <= fig["median"] <= fig["max"], (name, fig)
        assert isinstance(fig["target"], int | float), (name, fig)
        assert fig["met"] in (True, False), (name, fig)
    # the table was printed with a verdict line
    assert "targets met" in proc.stdout
    # the scale scenario really ran the operator against AWS and the lifecycle really healed
    assert figures["steady_aws_calls_per_interval"]["resources"] == 3
    assert results["details"]["scale"]["ready_after_converge"] == 3
    assert figures["replace_seconds"]["hosts_repointed"] is True
