"""Shared helpers for the sandbox benchmarks (bench/run.py): figures, timing, and /proc sampling.

Nothing here talks to anything but 127.0.0.1: every scenario runs on a loopback `Sandbox`.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def figure(values: Iterable[float], *, digits: int = 3, **extra: Any) -> dict[str, Any]:
    """{"median", "min", "max", "n", ...extra} of the repeated measurements (empty → None values)."""
    vals = [float(v) for v in values]
    if not vals:
        return {"median": None, "min": None, "max": None, "n": 0, **extra}
    return {
        "median": round(statistics.median(vals), digits),
        "min": round(min(vals), digits),
        "max": round(max(vals), digits),
        "n": len(vals),
        **extra,
    }


def timed_wait(
    get: Callable[[], Mapping[str, Any] | None],
    predicate: Callable[[Mapping[str, Any]], bool],
    *,
    since: float,
    timeout: float,
    interval: float = 0.05,
    what: str = "condition",
) -> tuple[float, Mapping[str, Any]]:
    """Poll until `predicate(get())`; return (seconds since `since` (a monotonic time), the object)."""
    deadline = time.monotonic() + timeout
    last: Mapping[str, Any] | None = None
    while True:
        last = get()
        seen = time.monotonic()
        if last is not None and predicate(last):
            return seen - since, last
        if seen > deadline:
            status = (last or {}).get("status") or {}
            conditions = {
                c.get("type"): (c.get("status"), c.get("reason")) for c in status.get("conditions") or []
            }
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}; conditions: {conditions}")
        time.sleep(interval)


# ----------------------------------------------------------------------------------------------- /proc


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of one process (threads included, children not), in seconds."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        raw = f.read()
    fields = raw[raw.rindex(")") + 2 :].split()  # after "pid (comm) ": state is fields[0]
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_rss_mib(pid: int) -> float:
    """VmRSS of one process in MiB."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def proc_threads(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return 0


@dataclass
class ProcSampler:
    """Samples one process's RSS and CPU every `interval` seconds in a background thread."""

    pid: int
    interval: float = 1.0
    samples: list[tuple[float, float, float]] = field(default_factory=list)  # (monotonic, cpu s, rss MiB)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sample(self) -> tuple[float, float, float]:
        point = (time.monotonic(), proc_cpu_seconds(self.pid), proc_rss_mib(self.pid))
        self.samples.append(point)
        return point

    def start(self) -> ProcSampler:
        self.sample()

        def loop() -> None:
            while not self._stop.wait(self.interval):
                try:
                    self.sample()
                except OSError:
                    return  # the process is gone

        self._thread = threading.Thread(target=loop, name="bench-proc-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with contextlib.suppress(OSError):
            self.sample()

    def between(self, start: float, end: float) -> tuple[float, list[float]]:
        """(CPU % of one core over [start, end], RSS samples in it) from the nearest samples."""
        inside = [s for s in self.samples if start - 0.6 * self.interval <= s[0] <= end + 0.6 * self.interval]
        if len(inside) < 2:
            return 0.0, [s[2] for s in inside]
        first, last = inside[0], inside[-1]
        elapsed = last[0] - first[0]
        cpu = 100.0 * (last[1] - first[1]) / elapsed if elapsed > 0 else 0.0
        return cpu, [s[2] for s in inside]


def count_by(items: Iterable[Any], key: Callable[[Any], str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        k = key(item)
        out[k] = out.get(k, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))


def index_sandbox_instances(sb: Any) -> None:
    """Bench-only speed-up of the sandbox (not of the operator): look instances up by id in O(1).

    `Sandbox._instance` asks moto's `get_instance_by_id`, which shallow-copies every reservation and scans them,
    and the sandbox's SSM service calls it for every registered host on every SendCommand and
    DescribeInstanceInformation: O(N²) per call. With 500 cache hosts that saturated the bench process (84 % of
    its samples in py-spy) and starved the operator of answers. moto never replaces an Instance object (state
    changes mutate it), so caching the object by id changes no answer. Unknown ids fall through to the scan.
    """
    original = sb._instance
    index: dict[str, Any] = {}
    lock = threading.Lock()

    def _instance(instance_id: str) -> Any:
        found = index.get(instance_id)
        if found is not None:
            return found
        found = original(instance_id)
        if found is not None:
            with lock:
                index[instance_id] = found
        return found

    sb._instance = _instance


def scrape_metrics(url: str, timeout: float = 20.0) -> dict[str, float]:
    """The operator's /metrics (on 127.0.0.1), summed per family of interest.

    probes: probe results recorded (the probe-duration histogram's _count, all resources);
    reconciles_<trigger>_<outcome>: reconcile passes; status_writes: status PATCHes sent.
    Empty if the endpoint does not answer.
    """
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            text = response.read().decode("utf-8", "replace")
    except OSError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        name_labels, _, value = line.rpartition(" ")
        name, _, labels = name_labels.partition("{")
        try:
            number = float(value)
        except ValueError:
            continue
        if name == "edx_remote_cache_probe_duration_seconds_count":
            key = "probes"
        elif name == "edx_remote_cache_reconcile_total":
            trigger = labels.split('trigger="', 1)[-1].split('"', 1)[0] if 'trigger="' in labels else "?"
            outcome = labels.split('outcome="', 1)[-1].split('"', 1)[0] if 'outcome="' in labels else "?"
            key = f"reconciles_{trigger}_{outcome}"
        elif name == "edx_remote_cache_status_writes_total":
            key = "status_writes"
        else:
            continue
        out[key] = out.get(key, 0.0) + number
    return out
