"""An operator restart with N Ready objects (issue 19, "restarts are free"), run at the end of the scale scenario.

A rolling update or a rescheduled pod restarts the operator while every object is Ready. What a user must not
see: a cache host touched, an Open edX file rewritten or a service restarted, an object leaving Ready. What it
may cost: the region's batched reads and at most one status write per object (a first pass with nothing new
writes nothing; the hosts' first answer or the 60 s heartbeat is the one write).

The running operator gets SIGTERM (a graceful stop, as a Deployment rollout does), a new one starts, and from
its start until every object was observed again plus `settle` seconds (its first drift passes):

* ``restart_mutating_calls_500``: AWS calls that change something, from the sandbox's call recorder. SendCommand
  counts as mutating there; the read-only ones (the region's batched drift check, a host's file read) are not
  counted here but listed in the details. Target 0.
* ``restart_pushes_500``: SSM commands that write: Open edX host files or memcached's configuration. Target 0.
* ``restart_reobserve_seconds_500``: new operator started → every object probed by the new process (its own
  /metrics: ``edx_remote_cache_probe_duration_seconds_count`` per object). Target <= 60.

The details also hold the status writes per object (the issue allows at most one), Ready → not-Ready flaps
during the restart, the AWS calls by operation and the SSM commands by comment.
"""

from __future__ import annotations

import re
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lib import count_by, figure

from edx_remote_cache.adapters.ssm import READ_ONLY_COMMENTS
from edx_remote_cache.sandbox import Sandbox
from edx_remote_cache.sandbox.harness import OperatorProcess, is_ready

NAMESPACE = "default"


_PROBED = re.compile(
    r'^edx_remote_cache_probe_duration_seconds_count\{[^}]*name="([^"]+)"[^}]*\} (\S+)$', re.M
)


def _probed_by(operator: OperatorProcess) -> set[str]:
    """The objects the (new) operator process has probed at least once, from its own /metrics: it observed
    them again. The status shows it with the next news or the 60 s heartbeat: a restart with nothing new writes
    nothing (issue 19)."""
    try:
        with urllib.request.urlopen(operator.metrics_url, timeout=5) as response:
            text = response.read().decode()
    except OSError:  # not listening yet
        return set()
    return {name for name, count in _PROBED.findall(text) if float(count) >= 1}


def _read_only(call: Any) -> bool:
    return call.operation == "SendCommand" and str(call.params.get("Comment")) in READ_ONLY_COMMENTS


def measure_restart(
    sb: Sandbox,
    old: OperatorProcess,
    *,
    names: Sequence[str],
    env: Mapping[str, str],
    log_path: Path,
    timeout: float,
    settle: float,
    log: Callable[[str], Any] = print,
) -> dict[str, Any]:
    """Restart `old` (SIGTERM, then a new operator) and measure; the new operator is stopped before returning.

    Only once all N are Ready (bounded by `timeout`): a restart in the middle of the convergence would count the
    convergence's own pushes."""
    n = len(names)
    waited = time.monotonic()
    while time.monotonic() - waited < timeout:
        if sum(1 for o in sb.kube.list_objects(NAMESPACE) if is_ready(o)) >= n:
            break
        time.sleep(2.0)
    ready_before = sum(1 for o in sb.kube.list_objects(NAMESPACE) if is_ready(o))
    waited_for_ready = time.monotonic() - waited
    old.stop()
    since_calls, since_wall = sb.calls.now(), time.time()
    flaps: dict[str, int] = {}
    reobserved: dict[str, float] = {}
    with OperatorProcess(env, log_path=log_path) as new:
        started = time.monotonic()
        deadline = started + timeout
        while len(reobserved) < n and time.monotonic() < deadline:
            probed = _probed_by(new)
            for obj in sb.kube.list_objects(NAMESPACE):
                name = obj["metadata"]["name"]
                if not is_ready(obj):
                    flaps[name] = flaps.get(name, 0) + 1
                if name not in reobserved and name in probed:
                    reobserved[name] = time.monotonic() - started
            time.sleep(0.5)
        took = max(reobserved.values()) if len(reobserved) == n else None
        time.sleep(settle)
        for obj in sb.kube.list_objects(NAMESPACE):
            if not is_ready(obj):
                flaps[obj["metadata"]["name"]] = flaps.get(obj["metadata"]["name"], 0) + 1
        alive = new.alive()
    calls = sb.calls.calls(since=since_calls)
    mutating = [c for c in calls if c.mutating and not _read_only(c)]
    pushes = [c for c in mutating if c.operation == "SendCommand"]
    writes = count_by(sb.kube.status_writes(since=since_wall), lambda r: str(r.name))
    log(
        f"  restart: {len(reobserved)}/{n} observed again in "
        f"{'-' if took is None else f'{took:.1f}s'}, {len(mutating)} mutating calls, {len(pushes)} pushes, "
        f"max {max(writes.values(), default=0)} status write(s) per object, {len(flaps)} object(s) left Ready"
    )
    if not alive:
        raise RuntimeError(f"the restarted operator died; see {log_path}")
    detail = {
        "resources": n,
        "stop": "SIGTERM",
        "ready_before_restart": ready_before,
        "waited_for_ready_seconds": round(waited_for_ready, 1),
        "settle_seconds": settle,
        "reobserved": len(reobserved),
        "reobserve_seconds_p50": _percentile(sorted(reobserved.values()), 0.5),
        "aws_calls_by_operation": count_by(calls, lambda c: f"{c.service}:{c.operation}"),
        "ssm_commands_by_comment": count_by(
            (c for c in calls if c.operation == "SendCommand"), lambda c: str(c.params.get("Comment"))
        ),
        "mutating_calls_by_operation": count_by(mutating, lambda c: f"{c.service}:{c.operation}"),
        "status_writes": sum(writes.values()),
        "status_writes_per_object_max": max(writes.values(), default=0),
        "objects_with_more_than_one_status_write": sum(1 for v in writes.values() if v > 1),
        "objects_not_ready_during_restart": len(flaps),
    }
    if ready_before < n:
        detail["warning_ready"] = (
            f"only {ready_before}/{n} Ready when restarted: pushes may be the convergence's"
        )
    if took is None:
        detail["warning"] = f"only {len(reobserved)}/{n} observed again within {timeout:.0f}s"
    return {
        "restart_mutating_calls_500": figure([len(mutating)], digits=0, resources=n),
        "restart_pushes_500": figure([len(pushes)], digits=0, resources=n),
        "restart_reobserve_seconds_500": figure([] if took is None else [took], digits=2, resources=n),
        "restart": detail,
    }


def _percentile(values: Sequence[float], q: float) -> float | None:
    return round(values[int(q * (len(values) - 1))], 2) if values else None
