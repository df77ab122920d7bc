"""`edx-remote-cache demo`: the narrated story end to end (headless, with its JSON report), and its pure parts
(the live table, the LOCATION diff, the revert check, the demo manifest) fast."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from edx_remote_cache.sandbox import demo
from edx_remote_cache.sandbox.demo import (
    COLUMNS,
    Display,
    compare_reverted,
    demo_manifest,
    location_diff,
    original_config,
    render_table,
    table_row,
    visible_len,
    wrap_visible,
    yaml_key_path,
)

ROOT = Path(__file__).resolve().parents[2]
STEP_NAMES = ["sandbox", "operator", "apply", "config", "traffic", "detect", "heal", "delete", "cleanup"]


def _cr(**status: Any) -> dict[str, Any]:
    return {
        "apiVersion": "cache.openedx.org/v1alpha1",
        "kind": "EdxRemoteCache",
        "metadata": {"name": "campus", "namespace": "openedx", "generation": 1},
        "spec": {"openedx": {"hosts": ["i-1", "i-2"]}},
        "status": status,
    }


READY = _cr(
    phase="Ready",
    endpoints=["10.0.1.6:11211"],
    hostsSummary="2/2",
    health={"hitRatio": 0.874, "reachable": True},
    conditions=[
        {"type": "Ready", "status": "True"},
        {"type": "CacheHealthy", "status": "True"},
    ],
)


# ------------------------------------------------------------------------------------------------ the table


def test_table_row_reads_phase_endpoint_hit_ratio_and_hosts() -> None:
    row = table_row(READY, age=12.7)
    assert row == {
        "NAME": "campus",
        "PHASE": "Ready",
        "READY": "True",
        "HEALTHY": "True",
        "ENDPOINT": "10.0.1.6:11211",
        "HIT RATIO": "87%",
        "HOSTS": "2/2",
        "AGE": "12s",
    }


def test_table_row_before_any_status_and_after_delete() -> None:
    fresh = table_row(_cr(), age=None)
    assert fresh["PHASE"] == fresh["ENDPOINT"] == fresh["HIT RATIO"] == fresh["AGE"] == "-"
    assert fresh["HOSTS"] == "0/2"  # from the spec until the operator reports
    gone = table_row(None)
    assert gone["NAME"] == "campus" and gone["PHASE"] == "(deleted)"
    assert table_row(_cr(health={"hitRatio": None}))["HIT RATIO"] == "-"
    assert table_row(READY, age=185)["AGE"] == "3m5s"


def test_render_table_aligns_columns_under_the_header() -> None:
    rows = [table_row(READY, age=3), table_row(_cr(phase="Provisioning"), age=1)]
    header, *lines = render_table(rows)
    assert header.split() == ["NAME", "PHASE", "READY", "HEALTHY", "ENDPOINT", "HIT", "RATIO", "HOSTS", "AGE"]
    assert len(lines) == 2
    for col in COLUMNS[1:]:
        start = header.index(col)
        for line, row in zip(lines, rows, strict=True):
            assert line[start:].startswith(row[col]), (col, line)
            assert line[start - 1] == " "
    assert "87%" in lines[0] and "Provisioning" in lines[1]


def test_render_table_cuts_lines_to_the_width() -> None:
    lines = render_table([table_row(READY, age=3)], width=40)
    assert all(len(line) <= 40 for line in lines)
    assert lines[0].endswith("…")


def test_plain_display_appends_a_row_only_when_it_changes() -> None:
    out = io.StringIO()
    display = Display(out, live=False, table=True)
    display.say("step 3")
    display.set_row(table_row(READY, age=1))
    display.set_row(table_row(READY, age=2))  # only AGE moved: nothing new to say
    display.set_row(table_row(_cr(phase="Degraded"), age=3))
    display.close()
    text = out.getvalue()
    assert "\x1b" not in text
    lines = text.splitlines()
    assert lines[0] == "step 3"
    assert lines[1].split()[:2] == ["NAME", "PHASE"]  # the header once under the narration...
    assert lines[2].split()[:2] == ["campus", "Ready"]
    assert lines[3].split()[:2] == ["campus", "Degraded"]  # ...then rows as they change
    assert len(lines) == 4


def test_live_display_redraws_the_table_in_place_below_the_narration() -> None:
    out = io.StringIO()
    display = Display(out, live=True, table=True, color=False, width=120)
    display.set_row(table_row(READY, age=1))
    display.set_activity("waiting for Ready (1.0 s)")
    display.say("an event")
    display.close()
    text = out.getvalue()
    # the drawn table (header, row, activity) is erased by cursor-up + clear-to-end before anything new
    assert "\x1b[2F\x1b[J" in text and "\x1b[3F\x1b[J" in text
    assert text.count("campus") == 3  # drawn, redrawn with the activity line, redrawn under the event
    assert text.index("an event") > text.index("campus")
    assert text.endswith("\x1b[3F\x1b[J")  # close() leaves nothing of the live region behind


def test_headless_display_has_no_table() -> None:
    out = io.StringIO()
    display = Display(out, live=False, table=False)
    display.set_row(table_row(READY, age=1))
    display.say("narration")
    assert out.getvalue() == "narration\n"


def test_wrapping_measures_visible_text_only() -> None:
    display = Display(io.StringIO(), color=True)
    colored = display.style("ok", "green", "bold")
    assert visible_len(colored) == 2
    words = " ".join([colored] * 30)
    lines = wrap_visible(words, 20, indent="   ", subsequent="       ")
    assert all(visible_len(line) <= 20 for line in lines)
    assert lines[0].startswith("   " + colored) and lines[1].startswith("       " + colored)


# ------------------------------------------------------------------------------------------------ the diff


LMS = original_config("lms.yml").decode()


def test_the_lms_diff_shows_location_lines_only_with_their_key_paths() -> None:
    pushed = LMS.replace("localhost:11211", "10.0.1.6:11211")
    diff = location_diff(LMS, pushed, fromfile="lms.yml", tofile="host:/edx/etc/lms.yml")
    assert diff.only_locations and diff.changed == 7
    changes = [line for line in diff.lines if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    assert [c.strip() for c in changes if c.startswith("+")] == ["+        - 10.0.1.6:11211".strip()] * 7
    hunks = [line for line in diff.lines if line.startswith("@@")]
    assert len(hunks) == 7 and all(h.endswith(".LOCATION") for h in hunks)
    assert any(h.endswith(" CACHES.default.LOCATION") for h in hunks)


def test_the_diff_flags_a_change_outside_locations() -> None:
    changed = LMS.replace("KEY_PREFIX: default", "KEY_PREFIX: other", 1)
    diff = location_diff(LMS, changed, fromfile="a", tofile="b")
    assert not diff.only_locations
    assert diff.paths == ("CACHES.default.KEY_PREFIX", "CACHES.default.KEY_PREFIX")


def test_yaml_key_path_of_a_sequence_item_and_a_top_level_key() -> None:
    lines = LMS.splitlines()
    item = next(i for i, line in enumerate(lines) if line.strip() == "- localhost:11211")
    assert yaml_key_path(lines, item).startswith("CACHES.") and yaml_key_path(lines, item).endswith(
        ".LOCATION"
    )
    top = next(i for i, line in enumerate(lines) if line.startswith("CAS_SERVER_URL:"))
    assert yaml_key_path(lines, top) == "CAS_SERVER_URL"


def test_compare_reverted_tells_exact_equivalent_and_different_apart() -> None:
    original = original_config("insights.yml")
    assert compare_reverted("insights.yml", original, original) == ("exact", "")
    respelled = original.replace(b"127.0.0.1:11211", b"localhost:11211")
    verdict, why = compare_reverted("insights.yml", original, respelled)
    assert verdict == "equivalent" and "127.0.0.1:11211 came back as localhost:11211" in why
    remote = original.replace(b"127.0.0.1:11211", b"10.0.1.6:11211")
    verdict, why = compare_reverted("insights.yml", original, remote)
    assert verdict == "different" and "10.0.1.6:11211" in why


# ------------------------------------------------------------------------------------------------ the manifest


def test_the_demo_manifest_is_the_example_with_the_sandbox_ids_templated_in() -> None:
    from edx_remote_cache.cli.validate import object_problems

    example = ROOT / "examples" / "sandbox-demo.yaml"
    assert example == demo.EXAMPLE and example.is_file()
    assert object_problems(yaml.safe_load(example.read_text(encoding="utf-8")), str(example)) == []
    doc = demo_manifest("subnet-0123456789abcdef0", ["i-0aaaaaaaaaaaaaaaa", "i-0bbbbbbbbbbbbbbbb"])
    assert doc["metadata"] == {"name": "campus", "namespace": "openedx"}
    assert doc["spec"]["instance"]["subnetId"] == "subnet-0123456789abcdef0"
    assert doc["spec"]["openedx"]["hosts"] == ["i-0aaaaaaaaaaaaaaaa", "i-0bbbbbbbbbbbbbbbb"]
    assert object_problems(doc, "templated") == []
    # without the source tree (an installed wheel) the same object is built in code
    built = demo_manifest(
        "subnet-0123456789abcdef0", ["i-0aaaaaaaaaaaaaaaa", "i-0bbbbbbbbbbbbbbbb"], example=None
    )
    assert built == doc


def test_the_demo_subcommand_parses() -> None:
    from edx_remote_cache.cli.main import build_parser

    args = build_parser(only="demo").parse_args(["demo", "--headless", "--report", "out.json"])
    assert args.func is demo.run and args.headless and args.report == Path("out.json")
    assert args.pause is None and args.workdir is None


# ------------------------------------------------------------------------------------------------ end to end


def _memcached_pids() -> set[int]:
    found = subprocess.run(["pgrep", "-x", "memcached"], capture_output=True, text=True, check=False)
    return {int(pid) for pid in found.stdout.split()}


def _environ(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return []


@pytest.mark.e2e
@pytest.mark.timeout(150)
def test_headless_demo_passes_every_step_and_leaves_nothing_running(tmp_path: Path) -> None:
    from edx_remote_cache.sandbox.cache_hosts import OWNER_ENV

    report_path = tmp_path / "report.json"
    marker = f"EDX_REMOTE_CACHE_DEMO_TEST={uuid.uuid4().hex}".encode()  # inherited by the operator child
    before = _memcached_pids()
    env = {**os.environ, "EDX_REMOTE_CACHE_DEMO_TEST": marker.split(b"=", 1)[1].decode()}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edx_remote_cache.cli.main",
            "demo",
            "--headless",
            "--report",
            str(report_path),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output, _ = proc.communicate(timeout=140)
    finally:
        if proc.poll() is None:
            proc.terminate()  # the demo cleans up on SIGTERM as on Ctrl-C
            output, _ = proc.communicate(timeout=60)

    assert proc.returncode == 0, output
    report = json.loads(report_path.read_text(encoding="utf-8"))
    assert set(report) >= {"ok", "ready_seconds", "detect_seconds", "heal_seconds", "steps"}, report
    assert report["ok"] is True, output
    assert [s["name"] for s in report["steps"]] == STEP_NAMES
    for step in report["steps"]:
        assert isinstance(step["name"], str) and isinstance(step["ok"], bool)
        assert isinstance(step["seconds"], float) and step["seconds"] >= 0
        assert step["ok"], f"{step['name']}: {step.get('detail')}\n{output}"
    for key in ("ready_seconds", "detect_seconds", "heal_seconds"):
        assert isinstance(report[key], float) and report[key] >= 0, key
    assert report["ready_seconds"] <= 10
    assert report["detect_seconds"] <= report["heal_seconds"]

    # headless: the story is narrated, without the live table or escape codes
    assert "Summary" in output and "NAME     PHASE" not in output and "\x1b[" not in output

    # nothing left running: no memcached of the demo's sandbox, no operator child (it carries our marker)
    after = _memcached_pids()
    ours = f"{OWNER_ENV}={proc.pid}".encode()
    assert [pid for pid in after if ours in _environ(pid)] == []
    others = sorted(after - before)  # other sandboxes (concurrent test runs) may come and go meanwhile
    assert all(any(e.startswith(OWNER_ENV.encode()) and e != ours for e in _environ(p)) for p in others), (
        others
    )
    assert len(after) - len(others) <= len(before)
    leftovers = [p for p in map(int, filter(str.isdigit, os.listdir("/proc"))) if marker in _environ(p)]
    assert leftovers == [], f"processes of the demo still running: {leftovers}"
