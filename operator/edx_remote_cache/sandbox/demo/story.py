"""The story runner: the steps in order, each in a worker thread with a timeout, the live row refreshed
meanwhile, a failed step diagnosed (conditions and the operator's log), cleanup always, then the report."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edx_remote_cache.sandbox.lms import LmsTraffic

from edx_remote_cache.sandbox.demo.config import NAME, NAMESPACE
from edx_remote_cache.sandbox.demo.display import _SPINNER, Display, table_row
from edx_remote_cache.sandbox.demo.processes import _sigint_deferred
from edx_remote_cache.sandbox.demo.steps import (
    DemoTimings,
    StepCancelled,
    StepFailed,
    StorySteps,
)


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


class Demo(StorySteps):
    """Runs the story (see the package docstring) and returns the report."""

    def __init__(self, display: Display, *, workdir: Path, pause: float = 0.0) -> None:
        self.d = display
        self.workdir = workdir
        self.pause = pause
        self.t0 = time.monotonic()
        self.sb: Any = None
        self.op: Any = None
        self.traffic: LmsTraffic | None = None
        self.results: list[StepResult] = []
        self.timings = DemoTimings()
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
            "ready_seconds": rounded(self.timings.ready_seconds),
            "detect_seconds": rounded(self.timings.detect_seconds),
            "heal_seconds": rounded(self.timings.heal_seconds),
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
