"""``edx-remote-cache demo`` (``make demo``): the operator's whole loop in the sandbox VPC, narrated, in well under a
minute.

The story, one step at a time, each with a timeout so the demo can never hang:

 1. sandbox     start the sandbox cloud: a Kubernetes API (CRD installed), AWS (EC2 + SSM, moto), two Open edX
                app servers (their ``/edx`` is a directory here); the APIs on 127.0.0.1, every instance in a
                network namespace of the sandbox VPC at its private IP
 2. operator    start the real operator, ``edx-remote-cache run``, as a child process in its own namespace
 3. apply       apply ``examples/sandbox-demo.yaml`` (subnet and host ids templated in) and wait for Ready
 4. config      show what the operator pushed to ``/edx/etc/lms.yml``: a diff of LOCATION lines only
 5. traffic     "the LMS" on an Open edX host (Django's cache framework from its lms.yml, in its namespace):
                read-through get/set on the LOCATION it now has, through the cache's security group, until
                the operator's probe reports a real hit ratio
 6. detect      SIGKILL the cache host's memcached; wait for ``CacheHealthy=False``
 7. heal        wait for the operator to heal it (memcached restarted through SSM) and be Ready again
 8. delete      delete the object: hosts reverted (lms.yml byte for byte), instance terminated, group deleted
 9. cleanup     stop the operator and the sandbox, and check nothing is left running (also after Ctrl-C)

``--headless --report FILE`` runs the same story without the live table and writes::

    {"ok": bool, "ready_seconds": float, "detect_seconds": float, "heal_seconds": float,
     "total_seconds": float, "interrupted": bool,
     "steps": [{"name": str, "ok": bool, "seconds": float, "detail": str}]}

``ready_seconds`` is apply -> Ready, ``detect_seconds`` kill -> CacheHealthy False, ``heal_seconds`` kill ->
Ready again (the whole outage). A figure that was never measured is null. The exit status is 0 only when every
step passed (130 after Ctrl-C).

Nothing here dials anything but 127.0.0.1 from this machine's namespace; the cache traffic runs inside the
sandbox VPC, which has no route out.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import importlib.resources
import json
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TextIO

if TYPE_CHECKING:
    from edx_remote_cache.sandbox.lms import LmsTraffic

__all__ = [
    "COLUMNS",
    "Display",
    "add_parser",
    "compare_reverted",
    "demo_manifest",
    "location_diff",
    "render_table",
    "run",
    "table_row",
    "yaml_key_path",
]

NAME = "campus"
NAMESPACE = "openedx"
EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "sandbox-demo.yaml"
DEMO_MARKER_ENV = "EDX_REMOTE_CACHE_DEMO_RUN"  # set in the operator's environment: lets a test find leftovers

WARM_HIT_RATIO = (
    0.7  # the traffic step waits for the operator to report a warm cache (the app's keys are skewed)
)
COLUMNS = ("NAME", "PHASE", "READY", "HEALTHY", "ENDPOINT", "HIT RATIO", "HOSTS", "AGE")
COLUMN_GAP = "   "


# ------------------------------------------------------------------------------------------------ pure helpers


def _format_age(seconds: float | None) -> str:
    if seconds is None or seconds < 0:
        return "-"
    if seconds < 120:
        return f"{int(seconds)}s"
    return f"{int(seconds // 60)}m{int(seconds % 60)}s"


def _condition_status(obj: Mapping[str, Any], ctype: str) -> str:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == ctype:
            return str(cond.get("status") or "-")
    return "-"


def table_row(
    obj: Mapping[str, Any] | None,
    *,
    age: float | None = None,
    name: str = NAME,
    hit_ratio: float | Literal["status"] | None = "status",
) -> dict[str, str]:
    """One ``kubectl get erc``-like row from an EdxRemoteCache (``None``: the object is gone).

    The hit ratio is ``status.health.hitRatio`` unless ``hit_ratio`` gives a fresher figure (the operator's
    ``/metrics``: the status keeps probe figures for its heartbeat, so they can be a minute old); None = unknown.
    """
    if obj is None:
        return {col: "-" for col in COLUMNS} | {"NAME": name, "PHASE": "(deleted)"}
    status = obj.get("status") or {}
    health = status.get("health") or {}
    ratio = health.get("hitRatio") if hit_ratio == "status" else hit_ratio
    hit = f"{round(ratio * 100)}%" if isinstance(ratio, int | float) and not isinstance(ratio, bool) else "-"
    hosts = status.get("hostsSummary")
    if not hosts:
        wanted = ((obj.get("spec") or {}).get("openedx") or {}).get("hosts") or []
        hosts = f"0/{len(wanted)}" if wanted else "-"
    return {
        "NAME": str((obj.get("metadata") or {}).get("name") or name),
        "PHASE": str(status.get("phase") or "-"),
        "READY": _condition_status(obj, "Ready"),
        "HEALTHY": _condition_status(obj, "CacheHealthy"),
        "ENDPOINT": ", ".join(status.get("endpoints") or []) or "-",
        "HIT RATIO": hit,
        "HOSTS": str(hosts),
        "AGE": _format_age(age),
    }


def render_table(rows: Sequence[Mapping[str, str]], *, width: int | None = None) -> list[str]:
    """Header + one line per row, columns aligned, each line cut to ``width`` characters when given."""
    widths = {col: max([len(col), *(len(str(row.get(col, "-"))) for row in rows)]) for col in COLUMNS}

    def line(values: Mapping[str, str]) -> str:
        text = COLUMN_GAP.join(str(values.get(col, "-")).ljust(widths[col]) for col in COLUMNS).rstrip()
        if width is not None and len(text) > width:
            text = text[: max(0, width - 1)] + "…"
        return text

    return [line({col: col for col in COLUMNS}), *(line(row) for row in rows)]


_KEY = re.compile(r"^(?P<key>[^\s#:'\"-][^:#]*?|'[^']*'|\"[^\"]*\")\s*:(\s|$)")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def yaml_key_path(lines: Sequence[str], index: int) -> str:
    """The dotted key path of ``lines[index]`` in block-style YAML, e.g. ``CACHES.default.LOCATION`` for an item
    of that list. Good enough for config files like Open edX's (no flow mappings spanning lines)."""
    path: list[str] = []
    text = lines[index]
    stripped = text.strip()
    is_item = stripped.startswith("- ") or stripped == "-"
    match = None if is_item else _KEY.match(stripped)
    if match:
        path.append(match.group("key").strip("'\""))
    # a sequence item may sit at its key's indentation ("LOCATION:\n- x"); a key's parent is strictly less indented
    limit = _indent(text) + (1 if is_item else 0)
    for j in range(index - 1, -1, -1):
        above = lines[j]
        content = above.strip()
        if not content or content.startswith("#") or content.startswith("-"):
            continue
        depth = _indent(above)
        if depth >= limit:
            continue
        key = _KEY.match(content)
        if key is None:
            continue
        path.append(key.group("key").strip("'\""))
        limit = depth
        if depth == 0:
            break
    return ".".join(reversed(path))


_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
LOCATION_KEYS = re.compile(r"(^|\.)(LOCATION|[A-Z_]*MEMCACHE)$")


@dataclass(frozen=True)
class LocationDiff:
    """A zero-context unified diff whose hunk headers name the YAML key each change is under."""

    lines: tuple[str, ...]
    changed: int  # lines added (= lines removed for a pure rewrite)
    paths: tuple[str, ...]  # key path of every changed line, in order
    only_locations: bool  # every changed line is a LOCATION entry (or an ansible *_MEMCACHE list)


def location_diff(original: str, current: str, *, fromfile: str, tofile: str) -> LocationDiff:
    """Diff two versions of an Open edX YAML config; hunks are annotated like ``@@ -61 +61 @@ CACHES.x.LOCATION``."""
    old, new = original.splitlines(), current.splitlines()
    out: list[str] = []
    paths: list[str] = []
    added = 0
    old_no = new_no = 0
    for raw in difflib.unified_diff(old, new, fromfile=fromfile, tofile=tofile, n=0, lineterm=""):
        hunk = _HUNK.match(raw)
        if hunk:
            old_no, new_no = int(hunk.group(1)), int(hunk.group(3))
            old_count = int(hunk.group(2)) if hunk.group(2) is not None else 1
            where = yaml_key_path(old, old_no - 1) if old_count else yaml_key_path(new, new_no - 1)
            out.append(f"{raw} {where}")
            continue
        if raw.startswith(("---", "+++")):
            out.append(raw)
            continue
        if raw.startswith("-"):
            paths.append(yaml_key_path(old, old_no - 1))
            old_no += 1
        elif raw.startswith("+"):
            paths.append(yaml_key_path(new, new_no - 1))
            new_no += 1
            added += 1
        out.append(raw)
    only = bool(paths) and all(LOCATION_KEYS.search(p) for p in paths)
    return LocationDiff(tuple(out), added, tuple(paths), only)


_ENDPOINT = re.compile(r"(\[[0-9A-Fa-f:]+\]|[A-Za-z0-9_.-]+):(\d{2,5})")


def _endpoints(text: str) -> list[str]:
    return [m.group(0) for m in _ENDPOINT.finditer(text)]


def _is_local(host: str) -> bool:
    """127.0.0.0/8, ::1 and the localhost names: a cache location on the app server itself."""
    import ipaddress

    if host.lower() in ("localhost", "localhost.localdomain", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def compare_reverted(name: str, original: bytes, current: bytes) -> tuple[str, str]:
    """How a config file came back after a revert: ``exact`` (the original bytes), ``equivalent`` (only cache
    locations differ, and every one is local again, e.g. 127.0.0.1:11211 -> localhost:11211) or ``different``;
    with a short explanation."""
    if original == current:
        return "exact", ""
    diff = location_diff(original.decode(), current.decode(), fromfile=name, tofile=name)
    added = [
        e
        for line in diff.lines
        if line.startswith("+") and not line.startswith("+++")
        for e in _endpoints(line)
    ]
    removed = [
        e
        for line in diff.lines
        if line.startswith("-") and not line.startswith("---")
        for e in _endpoints(line)
    ]
    if not diff.only_locations:
        others = sorted({p for p in diff.paths if not LOCATION_KEYS.search(p)})
        return "different", f"changed outside cache locations: {', '.join(others) or '?'}"
    remote = [e for e in added if not _is_local(e.rsplit(":", 1)[0].strip("[]"))]
    if remote:
        return "different", f"still points at {', '.join(sorted(set(remote)))}"
    pairs = sorted({f"{a} came back as {b}" for a, b in zip(removed, added, strict=False) if a != b})
    return "equivalent", "; ".join(pairs) or "cache locations respelled"


def demo_manifest(subnet_id: str, hosts: Sequence[str], *, example: Path | None = EXAMPLE) -> dict[str, Any]:
    """The EdxRemoteCache the demo applies: ``examples/sandbox-demo.yaml`` with the sandbox's subnet and hosts
    templated in (the same object built in code when the package runs without its source tree)."""
    import yaml

    if example is not None and example.is_file():
        doc: dict[str, Any] = yaml.safe_load(example.read_text(encoding="utf-8"))
    else:
        from edx_remote_cache.sandbox.harness import cache_manifest

        doc = cache_manifest(NAME, namespace=NAMESPACE, subnet_id=subnet_id, hosts=hosts)
    spec = doc.setdefault("spec", {})
    spec.setdefault("instance", {})["subnetId"] = subnet_id
    spec.setdefault("openedx", {})["hosts"] = list(hosts)
    return doc


def original_config(name: str) -> bytes:
    """A config file as the package ships it (what every sandbox host starts with)."""
    return importlib.resources.files("edx_remote_cache").joinpath("data", "edx", name).read_bytes()


# ------------------------------------------------------------------------------------------------ terminal output

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def visible_len(text: str) -> int:
    """Length on screen: ANSI escape sequences take no room."""
    return len(_ANSI.sub("", text))


def wrap_visible(text: str, width: int, *, indent: str = "", subsequent: str = "") -> list[str]:
    """Greedy word wrap measuring what is visible (colored words keep their escape codes intact)."""
    lines: list[str] = []
    current, used = indent, len(indent)
    fresh = True  # nothing but the indent on the current line yet
    for word in text.split(" "):
        size = visible_len(word)
        if not fresh and used + 1 + size > width:
            lines.append(current)
            current, used, fresh = subsequent, len(subsequent), True
        if fresh:
            current, used, fresh = current + word, used + size, False
        else:
            current, used = f"{current} {word}", used + 1 + size
    lines.append(current)
    return lines


_SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
_STYLES = {"bold": "1", "dim": "2", "red": "31", "green": "32", "yellow": "33", "blue": "34", "cyan": "36"}


class Display:
    """Narration lines, plus the live table: redrawn in place below the narration on a terminal (``live``), or
    appended as plain lines whenever a row changes. Thread-safe: steps narrate from worker threads."""

    def __init__(
        self,
        stream: TextIO,
        *,
        live: bool = False,
        table: bool = True,
        color: bool = False,
        fancy: bool = True,
        width: int = 100,
    ) -> None:
        self.stream = stream
        self.live = live
        self.table = table
        self.color = color
        self.fancy = fancy
        self.width = width
        self.lock = threading.RLock()
        self._row: dict[str, str] | None = None
        self._activity = ""
        self._drawn = 0
        self._last_plain: tuple[tuple[str, str], ...] | None = None
        self._header_due = True

    # symbols, with an ASCII fallback for terminals that cannot show them
    @property
    def ok_mark(self) -> str:
        return "✓" if self.fancy else "ok"

    @property
    def fail_mark(self) -> str:
        return "✗" if self.fancy else "FAIL"

    @property
    def arrow(self) -> str:
        return "▸" if self.fancy else ">"

    def style(self, text: str, *styles: str) -> str:
        if not self.color or not styles:
            return text
        codes = ";".join(_STYLES[s] for s in styles)
        return f"\x1b[{codes}m{text}\x1b[0m"

    def say(self, text: str = "", *, indent: int = 0, styles: Sequence[str] = (), wrap: bool = False) -> None:
        """One narration line (or several, for text with newlines; ``wrap`` folds long lines)."""
        pad = " " * indent
        out: list[str] = []
        for part in text.split("\n") if text else [""]:
            if wrap:
                out += wrap_visible(part, self.width, indent=pad, subsequent=pad + "    ")
            else:
                out.append(pad + part)
        with self.lock:
            self._clear()
            for line in out:
                self.stream.write(self.style(line, *styles) + "\n")
            self._header_due = True
            self._draw()
            self.stream.flush()

    def set_row(self, row: Mapping[str, str] | None) -> None:
        with self.lock:
            self._row = dict(row) if row is not None else None
            if not self.table or self._row is None:
                return
            if self.live:
                self._clear()
                self._draw()
                self.stream.flush()
                return
            key = tuple((k, v) for k, v in self._row.items() if k != "AGE")
            if key == self._last_plain:
                return
            header, line = render_table([self._row])
            if self._header_due:
                self.stream.write("   " + self.style(header, "dim") + "\n")
            self.stream.write("   " + line + "\n")
            self.stream.flush()
            self._last_plain, self._header_due = key, False

    def set_activity(self, text: str) -> None:
        """A transient status line under the live table (``waiting for Ready ... 1.2 s``); live mode only."""
        with self.lock:
            self._activity = text
            if self.live and self.table:
                self._clear()
                self._draw()
                self.stream.flush()

    def freeze(self) -> None:
        """Live mode: leave a copy of the current table in the scrollback (plain mode appends rows anyway)."""
        with self.lock:
            if not (self.live and self.table and self._row is not None):
                return
            self._clear()
            header, row = render_table([self._row], width=self.width - 3)
            self.stream.write("   " + self.style(header, "dim") + "\n" + "   " + row + "\n")
            self._draw()
            self.stream.flush()

    def close(self) -> None:
        with self.lock:
            self._clear()
            self._row, self._activity = None, ""
            self.stream.flush()

    def _clear(self) -> None:
        if self.live and self._drawn:
            self.stream.write(f"\x1b[{self._drawn}F\x1b[J")
            self._drawn = 0

    def _draw(self) -> None:
        if not (self.live and self.table):
            return
        lines: list[str] = []
        if self._row is not None:
            header, row = render_table([self._row], width=self.width - 3)
            lines = ["   " + self.style(header, "dim"), "   " + self.style(row, "bold")]
        if self._activity:
            lines.append("   " + self.style(self._activity[: self.width - 3], "dim"))
        for line in lines:
            self.stream.write(line + "\n")
        self._drawn = len(lines)


# ------------------------------------------------------------------------------------------------ app traffic


# ------------------------------------------------------------------------------------------------ the story


class StepFailed(Exception):
    """A step's check did not hold; the message says which and what was seen."""


class StepCancelled(Exception):
    """The step ran out of time or the user pressed Ctrl-C."""


@dataclass
class StepResult:
    name: str
    ok: bool
    seconds: float
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "seconds": round(self.seconds, 3), "detail": self.detail}


@dataclass(frozen=True)
class Step:
    name: str
    title: str
    run: Callable[[], str]
    timeout: float
    needs: tuple[str, ...] = ()


@dataclass
class Metrics:
    ready_seconds: float | None = None
    detect_seconds: float | None = None
    heal_seconds: float | None = None


class Demo:
    """Runs the story (see the module docstring) and returns the report."""

    def __init__(self, display: Display, *, workdir: Path, pause: float = 0.0) -> None:
        self.d = display
        self.workdir = workdir
        self.pause = pause
        self.t0 = time.monotonic()
        self.sb: Any = None
        self.op: Any = None
        self.traffic: LmsTraffic | None = None
        self.results: list[StepResult] = []
        self.metrics = Metrics()
        self.interrupted = False
        self.crashed = ""
        self.waiting_for = ""
        self.cr_created = False
        self.created_at: float | None = None
        self.kill_at: float | None = None
        self.cache_instance = ""
        self.security_group = ""
        self.endpoint = ""
        self.loopback_ports: set[int] = set()
        self.seen_events: set[str] = set()
        self.run_id = f"{os.getpid()}-{int(time.time())}"
        self._local = threading.local()  # each step's worker thread: its own cancel event
        self._live_kube = False
        self._metrics_at = 0.0
        self._hit_ratio: float | None = None
        self._workers: list[threading.Thread] = []
        self.steps = [
            Step("sandbox", "Start the sandbox cloud on 127.0.0.1", self.step_sandbox, 60),
            Step(
                "operator", "Start the operator: edx-remote-cache run", self.step_operator, 45, ("sandbox",)
            ),
            Step(
                "apply", f"Apply an EdxRemoteCache ({NAMESPACE}/{NAME})", self.step_apply, 40, ("operator",)
            ),
            Step("config", "What the operator pushed to /edx/etc/lms.yml", self.step_config, 15, ("apply",)),
            Step("traffic", "Put Open edX traffic on the new cache", self.step_traffic, 25, ("apply",)),
            Step("detect", "Break it: kill the cache host's memcached", self.step_detect, 25, ("apply",)),
            Step("heal", "The operator heals it", self.step_heal, 45, ("detect",)),
            Step("delete", f"Delete the EdxRemoteCache ({NAMESPACE}/{NAME})", self.step_delete, 45),
        ]
        self.cleanup = Step("cleanup", "Clean up: stop the operator and the sandbox", self.step_cleanup, 60)

    # -- running steps ------------------------------------------------------------------------------------------------

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def run(self) -> dict[str, Any]:
        total = len(self.steps) + 1
        try:
            for index, step in enumerate(self.steps, 1):
                if step.name == "delete" and not self.cr_created:
                    self._skip(index, total, step, "nothing was applied")
                    continue
                if step.name == "delete" and not (self.op is not None and self.op.alive()):
                    self._skip(
                        index, total, step, "the operator is not running (the sandbox teardown removes all)"
                    )
                    continue
                self._run_step(index, total, step)
                if self.interrupted:
                    break
                if self.pause:
                    self._idle(self.pause)
        except KeyboardInterrupt:
            self.interrupted = True
        except Exception as exc:  # a bug in the demo itself: say so, and still clean up
            import traceback

            self.crashed = f"{type(exc).__name__}: {exc}"
            self.d.say(traceback.format_exc(), styles=("red",))
        if self.interrupted:
            self.d.say()
            self.d.say("Interrupted: cleaning up (this takes a few seconds) ...", styles=("yellow", "bold"))
        self._live_kube = False
        with _sigint_deferred(self.d):
            self._run_step(total, total, self.cleanup)
        self.d.close()
        report = self.report()
        self._summary(report)
        return report

    def _skip(self, index: int, total: int, step: Step, why: str) -> None:
        self._heading(index, total, step.title)
        self.d.say(f"{self.d.fail_mark} skipped: {why}", indent=3, styles=("yellow",))
        self.results.append(StepResult(step.name, False, 0.0, f"skipped: {why}"))

    def _run_step(self, index: int, total: int, step: Step) -> None:
        missing = [n for n in step.needs if not self._passed(n)]
        if missing:
            self._skip(index, total, step, f"needs {', '.join(missing)}")
            return
        self._heading(index, total, step.title)
        cancel = threading.Event()
        box: dict[str, Any] = {}
        started = time.monotonic()

        def target() -> None:
            self._local.cancel = cancel
            try:
                box["detail"] = step.run()
            except BaseException as exc:
                box["error"] = exc

        worker = threading.Thread(target=target, name=f"demo-{step.name}", daemon=True)
        self._workers.append(worker)
        worker.start()
        deadline = started + step.timeout
        try:
            while worker.is_alive():
                worker.join(0.2)
                self._refresh(step, started)
                if time.monotonic() > deadline and worker.is_alive():
                    cancel.set()
                    worker.join(3)
                    box["error"] = StepFailed(f"timed out after {step.timeout:.0f} s")
                    break
        except KeyboardInterrupt:
            self.interrupted = True
            cancel.set()
            with _sigint_deferred(self.d):
                worker.join(10)
            box["error"] = StepCancelled("interrupted")
        seconds = time.monotonic() - started
        self.waiting_for = ""
        self.d.set_activity("")
        self._metrics_at = 0.0  # the row left in the scrollback shows the latest figures
        self._refresh(step)
        if self.cr_created and step is not self.cleanup:
            self.d.freeze()
        error = box.get("error")
        if error is None:
            detail = str(box.get("detail") or "")
            self.results.append(StepResult(step.name, True, seconds, detail))
            mark = self.d.style(self.d.ok_mark, "green", "bold")
            self.d.say(f"{mark} {detail} " + self.d.style(f"({seconds:.1f} s)", "dim"), indent=3, wrap=True)
            return
        detail = (
            str(error)
            if isinstance(error, StepFailed | StepCancelled)
            else f"{type(error).__name__}: {error}"
        )
        self.results.append(StepResult(step.name, False, seconds, detail))
        mark = self.d.style(f"{self.d.fail_mark} failed:", "red", "bold")
        self.d.say(f"{mark} {detail} " + self.d.style(f"({seconds:.1f} s)", "dim"), indent=3, wrap=True)
        if not isinstance(error, StepCancelled):
            self._diagnose()

    def _passed(self, name: str) -> bool:
        return any(r.name == name and r.ok for r in self.results)

    def _heading(self, index: int, total: int, title: str) -> None:
        self.d.say()
        stamp = self.d.style(f"[{self.elapsed():5.1f} s]", "dim")
        self.d.say(f"{stamp} " + self.d.style(f"{index}/{total}  {title}", "bold", "cyan"))

    def _idle(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            time.sleep(min(0.2, max(0.0, end - time.monotonic())))
            self._refresh(None)

    def _refresh(self, step: Step | None, started: float | None = None) -> None:
        """From the main thread: the activity line, the live row, new Events."""
        if step is not None and started is not None:
            spent = time.monotonic() - started
            spin = _SPINNER[int(spent * 8) % len(_SPINNER)] if self.d.fancy else "-"
            doing = f"waiting for {self.waiting_for}" if self.waiting_for else step.title
            self.d.set_activity(f"{spin} {doing} ({spent:.1f} s)")
        if not self._live_kube or self.sb is None or self.sb.kube is None:
            return
        try:
            obj = self.sb.kube.get(NAMESPACE, NAME) if self.cr_created else None
            events = self.sb.kube.list_events(NAMESPACE, involved_name=NAME) if self.cr_created else []
        except Exception:  # the API is going away (cleanup) or busy: next time
            return
        age = None if self.created_at is None else time.monotonic() - self.created_at
        if self.cr_created:
            now = time.monotonic()
            if now - self._metrics_at >= 1.0:
                self._metrics_at, self._hit_ratio = now, self.operator_hit_ratio()
            self.d.set_row(table_row(obj, age=age, hit_ratio=self._hit_ratio if obj is not None else None))
        for event in events:
            uid = str((event.get("metadata") or {}).get("uid") or id(event))
            if uid in self.seen_events:
                continue
            self.seen_events.add(uid)
            self._show_event(event)

    def _show_event(self, event: Mapping[str, Any]) -> None:
        warning = event.get("type") == "Warning"
        reason = self.d.style(str(event.get("reason") or "?"), "yellow" if warning else "blue", "bold")
        message = str(event.get("message") or "")
        if message.startswith(f"{event.get('reason')}: "):  # "Ready: Ready: ..." reads better once
            message = message[len(str(event.get("reason"))) + 2 :]
        self.d.say(f"{self.d.arrow} event {reason}: {message}", indent=3, wrap=True)

    def _diagnose(self) -> None:
        """Why a step failed: the object's conditions and the tail of the operator log."""
        if self.cr_created and self.sb is not None and self.sb.kube is not None:
            with contextlib.suppress(Exception):
                obj = self.sb.kube.get(NAMESPACE, NAME)
                if obj is None:
                    self.d.say("the EdxRemoteCache is gone", indent=5, styles=("dim",))
                else:
                    status = obj.get("status") or {}
                    self.d.say(f"phase {status.get('phase', '-')}; conditions:", indent=5)
                    for cond in status.get("conditions") or []:
                        line = f"{cond.get('type')}={cond.get('status')} {cond.get('reason', '')}: {cond.get('message', '')}"
                        self.d.say(line, indent=7, wrap=True)
        if self.op is not None:
            tail = self.op.log().splitlines()[-15:]
            if tail:
                self.d.say(f"operator log ({self.op.log_path}), last {len(tail)} lines:", indent=5)
                for line in tail:
                    self.d.say(line[: self.d.width - 7], indent=7, styles=("dim",))

    # -- waiting (worker threads) ---------------------------------------------------------------------------------------

    def _get(self) -> dict[str, Any] | None:
        obj: dict[str, Any] | None = self.sb.kube.get(NAMESPACE, NAME)
        return obj

    def _wait(self, what: str, check: Callable[[], Any], *, timeout: float, interval: float = 0.05) -> Any:
        """Poll ``check()`` until it returns something truthy; StepFailed after ``timeout``."""
        deadline = time.monotonic() + timeout
        self.waiting_for = what
        try:
            while True:
                cancel = getattr(self._local, "cancel", None)
                if cancel is not None and cancel.is_set():
                    raise StepCancelled(f"stopped while waiting for {what}")
                result = check()
                if result:
                    return result
                proc = self.op.proc if self.op is not None else None
                if proc is not None and proc.poll() is not None:
                    raise StepFailed(
                        f"the operator exited (status {proc.returncode}) while waiting for {what}"
                    )
                if time.monotonic() > deadline:
                    raise StepFailed(f"{what}: not seen within {timeout:.0f} s")
                time.sleep(interval)
        finally:
            self.waiting_for = ""

    def _wait_obj(self, what: str, predicate: Callable[[Mapping[str, Any]], bool], *, timeout: float) -> Any:
        def check() -> Mapping[str, Any] | None:
            obj = self._get()
            return obj if obj is not None and predicate(obj) else None

        return self._wait(what, check, timeout=timeout)

    # -- the steps (each runs in a worker thread and returns a one-line summary) ----------------------------------

    def step_sandbox(self) -> str:
        from edx_remote_cache.sandbox import Sandbox

        self.sb = Sandbox(self.workdir / "sandbox")
        self.sb.start()
        self._live_kube = True
        sb, say = self.sb, self.d.say
        say(f"Kubernetes API   {sb.kube.url}  (the EdxRemoteCache CRD is installed)", indent=3, wrap=True)
        say(
            f"AWS (EC2, SSM)   {sb.aws_endpoint_url}  region {sb.region}, subnet {sb.subnet_id}",
            indent=3,
            wrap=True,
        )
        for index, instance_id in enumerate(sb.edx_hosts, 1):
            say(
                f"Open edX host {index}  {instance_id}  its /edx is {sb.roots[instance_id]}",
                indent=3,
                wrap=True,
            )
        say(
            "Open edX hosts run Koa-era config: every Django CACHES LOCATION is localhost:11211.",
            indent=3,
            wrap=True,
        )
        return f"a Kubernetes API, AWS and {len(sb.edx_hosts)} Open edX hosts are up"

    def step_operator(self) -> str:
        from edx_remote_cache.sandbox.harness import OperatorProcess

        env = {**self.sb.env(), DEMO_MARKER_ENV: self.run_id}
        self.op = OperatorProcess(env, log_path=self.workdir / "operator.log")
        self.op.start(wait=30)
        self.d.say(
            f"pid {self.op.proc.pid}, watching all namespaces; log {self.op.log_path}", indent=3, wrap=True
        )
        return "the operator is live (its /healthz answers)"

    def step_apply(self) -> str:
        import yaml

        from edx_remote_cache.sandbox.harness import is_ready

        sb = self.sb
        manifest = demo_manifest(sb.subnet_id, sb.edx_hosts)
        source = "examples/sandbox-demo.yaml" if EXAMPLE.is_file() else "the built-in demo manifest"
        self.d.say(f"{source}, with the sandbox's subnet and host ids filled in:", indent=3)
        for line in yaml.safe_dump(manifest, sort_keys=False).rstrip().splitlines():
            self.d.say(line, indent=5, styles=("dim",))
        with contextlib.suppress(Exception):  # already there is fine
            sb.kube.create_namespace(NAMESPACE)
        started = time.monotonic()
        sb.kube.create(manifest)
        self.created_at, self.cr_created = started, True
        obj = self._wait_obj("Ready", is_ready, timeout=30)
        ready = time.monotonic() - started
        self.metrics.ready_seconds = ready
        status = obj.get("status") or {}
        self.endpoint = (status.get("endpoints") or [""])[0]
        self.security_group = str(status.get("securityGroupId") or "")
        instance = (status.get("instances") or [{}])[0]
        self.cache_instance = str(instance.get("id") or "")
        self._describe_cloud(instance)
        return f"Ready {ready:.1f} s after the apply"

    def _describe_cloud(self, instance: Mapping[str, Any]) -> None:
        say = self.d.say
        say(
            f"cache host      {instance.get('id')} ({instance.get('type')}, private IP {instance.get('privateIp')},"
            f" no public IP); memcached listens on {self.endpoint} in the host's own network namespace",
            indent=3,
            wrap=True,
        )
        try:
            ec2 = self.sb.client("ec2")
            names = {g["GroupId"]: g["GroupName"] for g in ec2.describe_security_groups()["SecurityGroups"]}
            group = ec2.describe_security_groups(GroupIds=[self.security_group])["SecurityGroups"][0]
            rules = []
            for perm in group.get("IpPermissions") or []:
                sources = [
                    f"{names.get(p['GroupId'], p['GroupId'])} ({p['GroupId']})"
                    for p in perm.get("UserIdGroupPairs") or []
                ]
                sources += [r["CidrIp"] for r in perm.get("IpRanges") or []]
                rules.append(
                    f"{perm.get('FromPort')}/{perm.get('IpProtocol')} from {', '.join(sources) or 'nobody'}"
                )
            say(
                f"security group  {self.security_group}: {'; '.join(rules) or 'no ingress'} - nothing else",
                indent=3,
                wrap=True,
            )
        except Exception as exc:  # narration only
            say(f"security group  {self.security_group} ({exc})", indent=3)
        say(
            f"Open edX hosts  {len(self.sb.edx_hosts)}/{len(self.sb.edx_hosts)} re-pointed through SSM Run Command",
            indent=3,
        )

    def step_config(self) -> str:
        from edx_remote_cache.sandbox.edx_hosts import CONFIG_FILES

        sb = self.sb
        first = sb.edx_hosts[0]
        original = original_config("lms.yml").decode()
        current = (sb.roots[first] / "etc" / "lms.yml").read_text(encoding="utf-8")
        diff = location_diff(
            original, current, fromfile="lms.yml (as shipped)", tofile=f"{first}:/edx/etc/lms.yml"
        )
        for line in diff.lines:
            styles: tuple[str, ...] = ()
            if line.startswith("@@"):
                styles = ("cyan",)
            elif line.startswith(("---", "+++")):
                styles = ("bold",)
            elif line.startswith("-"):
                styles = ("red",)
            elif line.startswith("+"):
                styles = ("green",)
            self.d.say(line, indent=3, styles=styles)
        if not diff.changed:
            raise StepFailed("lms.yml was not changed")
        if not diff.only_locations:
            others = sorted({p for p in diff.paths if not LOCATION_KEYS.search(p)})
            raise StepFailed(f"lms.yml changed outside LOCATION entries: {', '.join(others)}")
        if self.endpoint and not all(
            self.endpoint in line
            for line in diff.lines
            if line.startswith("+") and not line.startswith("+++")
        ):
            raise StepFailed(f"lms.yml LOCATION lines do not all point at {self.endpoint}")
        # the other files and the other host, in one line each
        for instance_id in sb.edx_hosts:
            counts = []
            for target, name in CONFIG_FILES.items():
                path = sb.roots[instance_id] / target
                if not path.is_file():
                    continue
                changed = location_diff(
                    original_config(name).decode(),
                    path.read_text(encoding="utf-8"),
                    fromfile=name,
                    tofile=name,
                )
                if changed.changed:
                    if not changed.only_locations:
                        raise StepFailed(f"{instance_id}:/edx/{target} changed outside cache locations")
                    counts.append(f"{Path(target).name} {changed.changed}")
            restarts = [
                " ".join(c.args[1:])
                for c in sb.supervisorctl_calls(instance_id)
                if c.args[:1] == ("restart",)
            ]
            self.d.say(
                f"{instance_id}: lines changed: {', '.join(counts)}; restarted: {', '.join(restarts) or 'nothing'}",
                indent=3,
                wrap=True,
            )
        same = {(sb.roots[i] / "etc" / "lms.yml").read_bytes() for i in sb.edx_hosts}
        if len(same) != 1:
            raise StepFailed("the Open edX hosts' lms.yml differ")
        return (
            f"{diff.changed} LOCATION entries now point at {self.endpoint}; nothing else in lms.yml changed"
        )

    def step_traffic(self) -> str:
        from edx_remote_cache.sandbox.cache_hosts import OWNER_ENV
        from edx_remote_cache.sandbox.lms import LmsTraffic

        sb = self.sb
        first = sb.edx_hosts[0]
        env = {**os.environ, OWNER_ENV: str(os.getpid())}
        config = sb.roots[first] / "etc" / "lms.yml"
        traffic = self.traffic = LmsTraffic(sb.in_namespace(first), config, env=env).start()
        self._wait("the LMS's first cache calls", lambda: traffic.gets > 0 or traffic.errors > 3, timeout=10)
        source = sb.registry.get(first) if sb.registry is not None else None
        self.d.say(
            f"the LMS on {first} ({source.private_ip if source else '?'}): Django's PyMemcacheCache from its"
            f" lms.yml CACHES.default, LOCATION {traffic.address}, through the cache's security group",
            indent=3,
            wrap=True,
        )
        self.d.say("read-through traffic (get; on a miss, set), ~250 gets/s on skewed keys", indent=3)

        def reported() -> float | None:
            """The operator's figure once it has caught up with the app's (probes run every second)."""
            ratio = self.operator_hit_ratio()
            app = traffic.hit_ratio
            if not isinstance(ratio, int | float) or app is None or traffic.snapshot()[0] < 500:
                return None
            return ratio if ratio >= WARM_HIT_RATIO and abs(ratio - app) <= 0.1 else None

        ratio = float(
            self._wait(f"a {WARM_HIT_RATIO:.0%} hit ratio on the operator's probe", reported, timeout=20)
        )
        gets, hits, _misses, errors = traffic.snapshot()
        if errors and not hits:
            raise StepFailed(f"the app could not use the cache: {traffic.last_error}")
        client_ratio = traffic.hit_ratio or 0.0
        self.d.say(
            f"the app saw {hits}/{gets} hits ({client_ratio:.0%}); the operator's probe reads memcached's own"
            f" stats: {ratio:.0%} (its /metrics counters get_hits_total / get_misses_total; status.health gets the"
            " figure with its next heartbeat)",
            indent=3,
            wrap=True,
        )
        return f"hit ratio {ratio:.0%} after {gets} gets"

    def step_detect(self) -> str:
        from edx_remote_cache.sandbox.harness import condition

        if not self.cache_instance:
            raise StepFailed("no cache instance in status.instances")
        self._wait_obj(
            "a healthy probe before breaking things",
            lambda o: condition(o, "CacheHealthy").get("status") == "True",
            timeout=10,
        )
        self.d.say(
            f"SIGKILL memcached on {self.cache_instance} (sandbox fault, as if it crashed or was OOM-killed)",
            indent=3,
            wrap=True,
        )
        started = time.monotonic()
        self.sb.faults.kill_memcached(self.cache_instance)
        self.kill_at = started
        obj = self._wait_obj(
            "CacheHealthy=False", lambda o: condition(o, "CacheHealthy").get("status") == "False", timeout=20
        )
        detect = time.monotonic() - started
        self.metrics.detect_seconds = detect
        cond = condition(obj, "CacheHealthy")
        self.d.say(f"CacheHealthy=False ({cond.get('reason')}): {cond.get('message')}", indent=3, wrap=True)
        if self.traffic is not None:
            _, _, _, errors = self.traffic.snapshot()
            self.d.say(
                f"meanwhile the app's cache calls fail ({errors} failed call{'' if errors == 1 else 's'} so far; Django treats them as misses)",
                indent=3,
                wrap=True,
            )
        return f"detected {detect:.1f} s after the kill"

    def step_heal(self) -> str:
        from edx_remote_cache.sandbox.harness import condition, is_ready

        if self.kill_at is None:
            raise StepFailed("nothing was broken")

        def healed(obj: Mapping[str, Any]) -> bool:
            status = obj.get("status") or {}
            return (
                is_ready(obj)
                and status.get("phase") == "Ready"
                and condition(obj, "CacheHealthy").get("status") == "True"
            )

        obj = self._wait_obj("Ready again with CacheHealthy=True", healed, timeout=40)
        heal = time.monotonic() - self.kill_at
        self.metrics.heal_seconds = heal
        last = (obj.get("status") or {}).get("lastHeal") or {}
        if last:
            self.d.say(f"status.lastHeal: {last.get('action')} - {last.get('reason')}", indent=3, wrap=True)
        traffic = self.traffic
        if traffic is not None:
            healed_at = time.monotonic()
            with contextlib.suppress(StepFailed):
                self._wait("the app's traffic flowing again", lambda: traffic.last_ok >= healed_at, timeout=5)
                self.d.say(
                    "the app's cache calls work again; the restarted memcached is empty, so it warms up anew",
                    indent=3,
                    wrap=True,
                )
        return f"healed {heal:.1f} s after the kill, without anyone touching it"

    def step_delete(self) -> str:
        from edx_remote_cache.sandbox.edx_hosts import CONFIG_FILES

        sb = self.sb
        if self.traffic is not None:
            self.traffic.stop()
        obj = self._get() or {}
        status = obj.get("status") or {}
        group = self.security_group or str(status.get("securityGroupId") or "")
        instances = [str(i.get("id")) for i in status.get("instances") or [] if i.get("id")]
        self.d.say(
            "the finalizer reverts the hosts first, then terminates the instance and deletes the group",
            indent=3,
            wrap=True,
        )
        started = time.monotonic()
        sb.kube.delete(NAMESPACE, NAME, missing_ok=True)
        self._wait("the object gone (finalizer done)", lambda: self._get() is None, timeout=40)
        gone = time.monotonic() - started
        problems: list[str] = []
        notes: list[str] = []
        for instance_id in sb.edx_hosts:
            for target, name in CONFIG_FILES.items():
                path = sb.roots[instance_id] / target
                if not path.is_file():
                    continue
                verdict, why = compare_reverted(name, original_config(name), path.read_bytes())
                if verdict == "different" or (verdict != "exact" and name == "lms.yml"):
                    problems.append(f"{instance_id}:/edx/{target} is not back to its original bytes ({why})")
                elif verdict == "equivalent":
                    notes.append(f"{Path(target).name}: {why}")
        ec2 = sb.client("ec2")
        states = {}
        if instances:
            found = ec2.describe_instances(InstanceIds=instances)["Reservations"]
            states = {i["InstanceId"]: i["State"]["Name"] for r in found for i in r["Instances"]}
            problems += [f"{i} is {s}, not terminated" for i, s in states.items() if s != "terminated"]
        if group:
            try:
                ec2.describe_security_groups(GroupIds=[group])
                problems.append(f"security group {group} still exists")
            except Exception as exc:
                if "NotFound" not in str(exc):
                    problems.append(f"security group {group}: {exc}")
        if problems:
            raise StepFailed("; ".join(problems))
        files = sum(1 for t in CONFIG_FILES if (sb.roots[sb.edx_hosts[0]] / t).is_file())
        exact = len(sb.edx_hosts) * files - len(notes)
        self.d.say(
            f"{exact} of {len(sb.edx_hosts) * files} config files on the {len(sb.edx_hosts)} hosts are byte for byte"
            " as shipped - lms.yml among them, with every LOCATION localhost:11211 again",
            indent=3,
            wrap=True,
        )
        for note in sorted(set(notes)):
            self.d.say(
                f"{self.d.style('note', 'yellow')} {note} (the operator reverts to localhost; same cache)",
                indent=3,
                wrap=True,
            )
        what = ", ".join(f"{i} {s}" for i, s in states.items()) or "no instance"
        return f"gone after {gone:.1f} s: hosts reverted, {what}, {group or 'group'} deleted"

    def step_cleanup(self) -> str:
        self._live_kube = False
        if self.traffic is not None:
            self.traffic.stop()
        # a step that timed out may still be finishing: let it, so it does not race the teardown
        deadline = time.monotonic() + 10
        for worker in self._workers:
            if worker is not threading.current_thread():
                worker.join(max(0.0, deadline - time.monotonic()))
        pids: list[int] = []
        if self.op is not None and self.op.proc is not None:
            pids.append(self.op.proc.pid)
            self.loopback_ports.add(self.op.liveness_port)
            if self.op.metrics_port:
                self.loopback_ports.add(self.op.metrics_port)
            self.op.stop(timeout=10)
        if self.sb is not None:
            if self.sb.kube is not None:
                self.loopback_ports.add(int(self.sb.kube.port))
            with contextlib.suppress(Exception):
                self.loopback_ports.add(int(self.sb.aws_endpoint_url.rsplit(":", 1)[1].split("/")[0]))
            self.sb.stop()
        left = []
        if self.op is not None and self.op.alive():
            left.append(f"operator pid {self.op.proc.pid}")
        left += [f"memcached pid {pid}" for pid in sandbox_processes(os.getpid())]
        left += [
            f"pid {pid} (operator environment)" for pid in marked_processes(DEMO_MARKER_ENV, self.run_id)
        ]
        left += [
            f"127.0.0.1:{port} still accepts connections"
            for port in sorted(self.loopback_ports)
            if _listening(port)
        ]
        if left:
            raise StepFailed("left running: " + ", ".join(left))
        return f"nothing left running: no memcached, no operator, {len(self.loopback_ports)} loopback ports closed"

    def operator_metrics(self) -> dict[str, float]:
        """This object's memcached series from the operator's /metrics (127.0.0.1, no proxy): name -> value
        (one endpoint: the demo runs one replica). Empty when the operator is not serving them (yet)."""
        import http.client

        from prometheus_client.parser import text_string_to_metric_families

        port = getattr(self.op, "metrics_port", None)
        if not port:
            return {}
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=0.5)
        try:
            conn.request("GET", "/metrics")
            text = conn.getresponse().read().decode("utf-8", "replace")
        except OSError:
            return {}
        finally:
            conn.close()
        found: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            if not family.name.startswith("edx_remote_cache_memcached_"):
                continue
            for sample in family.samples:
                if sample.labels.get("namespace") == NAMESPACE and sample.labels.get("name") == NAME:
                    found[sample.name] = float(sample.value)
        return found

    def operator_hit_ratio(self) -> float | None:
        """The operator's latest probe figure; None while memcached does not answer or before the first probe."""
        series = self.operator_metrics()
        if series.get("edx_remote_cache_memcached_up") != 1.0:
            return None
        hits = series.get("edx_remote_cache_memcached_get_hits_total")
        misses = series.get("edx_remote_cache_memcached_get_misses_total")
        if hits is None or misses is None or hits + misses == 0:
            return None
        return hits / (hits + misses)  # what PromQL would compute from the two counters

    # -- the end ------------------------------------------------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        names = [s.name for s in [*self.steps, self.cleanup]]
        ran = {r.name for r in self.results}
        results = list(self.results) + [
            StepResult(n, False, 0.0, "not run (interrupted)") for n in names if n not in ran
        ]
        results.sort(key=lambda r: names.index(r.name))

        def rounded(x: float | None) -> float | None:
            return None if x is None else round(x, 3)

        return {
            "ok": bool(results) and all(r.ok for r in results) and not (self.interrupted or self.crashed),
            "ready_seconds": rounded(self.metrics.ready_seconds),
            "detect_seconds": rounded(self.metrics.detect_seconds),
            "heal_seconds": rounded(self.metrics.heal_seconds),
            "total_seconds": rounded(self.elapsed()),
            "interrupted": self.interrupted,
            "steps": [r.to_json() for r in results],
        }

    def _summary(self, report: Mapping[str, Any]) -> None:
        d = self.d
        d.say()
        verdict = (
            d.style("all steps passed", "green", "bold")
            if report["ok"]
            else d.style("some steps failed", "red", "bold")
        )
        d.say(d.style(f"Summary ({report['total_seconds']:.1f} s): ", "bold") + verdict)
        for step in report["steps"]:
            mark = d.style(d.ok_mark, "green") if step["ok"] else d.style(d.fail_mark, "red")
            d.say(f"{mark} {step['name']:<9} {step['seconds']:5.1f} s  {step['detail']}", indent=3, wrap=True)

        figures = []
        if report["ready_seconds"] is not None:
            figures.append(f"Ready {report['ready_seconds']:.1f} s after the apply")
        if report["detect_seconds"] is not None:
            figures.append(f"a dead memcached detected in {report['detect_seconds']:.1f} s")
        if report["heal_seconds"] is not None:
            figures.append(f"healed {report['heal_seconds']:.1f} s after it died")
        if figures:
            d.say()
            d.say("; ".join(figures) + ".", indent=3, wrap=True)
        if report["ok"]:
            d.say(
                "Next: `make sandbox` keeps this cloud running for kubectl and boto3; see README.md.",
                wrap=True,
                indent=3,
                styles=("dim",),
            )


@contextlib.contextmanager
def _sigint_deferred(display: Display) -> Iterator[None]:
    """While cleaning up, Ctrl-C (and SIGTERM) only say so: the cleanup itself is bounded and must finish."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def say(_signum: int, _frame: Any) -> None:
        with contextlib.suppress(Exception):
            display.stream.write("\n   (cleaning up, one moment - everything will be stopped)\n")
            display.stream.flush()

    previous = {sig: signal.signal(sig, say) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _proc_environ(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""


def _pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def marked_processes(key: str, value: str) -> list[int]:
    """Live processes (not zombies) whose environment has ``key=value``."""
    marker = f"{key}={value}".encode()
    found = []
    for pid in _pids():
        if pid == os.getpid():
            continue
        if marker in _proc_environ(pid).split(b"\0") and not _zombie(pid):
            found.append(pid)
    return found


def sandbox_processes(owner_pid: int) -> list[int]:
    """Processes (memcached) a sandbox in process ``owner_pid`` started and that still run."""
    from edx_remote_cache.sandbox.cache_hosts import OWNER_ENV

    return marked_processes(OWNER_ENV, str(owner_pid))


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X")


def _listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.3)
        return sock.connect_ex(("127.0.0.1", port)) == 0


# ------------------------------------------------------------------------------------------------ the command


def add_parser(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "demo",
        help="the whole loop in a sandbox VPC, narrated: apply, configure, probe, break, heal, delete (under a minute)",
        description="Start the sandbox (Kubernetes API, AWS, real memcached, two Open edX hosts, all on "
        "127.0.0.1), run the operator, apply an EdxRemoteCache and narrate what happens: Ready, the config "
        "pushed to lms.yml, real cache traffic, a killed memcached detected and healed, the delete reverting "
        "the hosts. Leaves nothing running, also on Ctrl-C.",
    )
    parser.add_argument(
        "--headless", action="store_true", help="no live table (for CI); same story and checks"
    )
    parser.add_argument("--report", type=Path, metavar="FILE", help="write a JSON report of the run here")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep the sandbox's files (hosts' /edx, logs) and the operator log here "
        "(default: a temporary directory, removed at the end unless a step failed)",
    )
    parser.add_argument(
        "--pause",
        type=float,
        default=None,
        metavar="SECONDS",
        help="pause between steps, to read along (default: 1 on a terminal, 0 otherwise)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edx_remote_cache.sandbox.network import NetworkSetupError, check_capability

    try:
        check_capability()
    except NetworkSetupError as exc:
        print(f"edx-remote-cache demo: {exc}", file=sys.stderr)
        return 2
    stream = sys.stdout
    tty = stream.isatty() and os.environ.get("TERM") != "dumb"
    live = tty and not args.headless
    encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
    display = Display(
        stream,
        live=live,
        table=not args.headless,
        color=tty and "NO_COLOR" not in os.environ,
        fancy=encoding.startswith("utf"),
        width=max(60, min(shutil.get_terminal_size((110, 24)).columns, 140)),
    )
    pause = args.pause if args.pause is not None else (1.0 if live else 0.0)
    workdir = (
        args.workdir.resolve() if args.workdir is not None else Path(tempfile.mkdtemp(prefix="erc-demo-"))
    )
    workdir.mkdir(parents=True, exist_ok=True)
    demo = Demo(display, workdir=workdir, pause=pause)

    display.say(
        display.style("edx-remote-cache demo", "bold")
        + " - memcached off the Open edX app server, onto its own EC2 host",
        wrap=True,
    )
    display.say(
        "Everything runs on 127.0.0.1: an emulated Kubernetes API and AWS, real memcached, two sandbox Open edX"
        " hosts, and the real operator process.",
        styles=("dim",),
        wrap=True,
    )

    previous_term = None
    if threading.current_thread() is threading.main_thread():  # SIGTERM cleans up like Ctrl-C
        previous_term = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        report = demo.run()
    finally:
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)
    if args.report is not None:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        display.say(f"report written to {args.report}", indent=3, styles=("dim",))
    if args.workdir is None:
        if report["ok"]:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            display.say(f"kept for a look: {workdir} (operator.log, the hosts' /edx)", indent=3)
    if demo.interrupted:
        return 130
    return 0 if report["ok"] else 1
