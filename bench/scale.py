"""The operator at scale on the sandbox: AWS calls per drift interval, RSS and CPU at steady state.

N EdxRemoteCache objects, each with its own real memcached cache host (a t3.medium in the sandbox's EC2, memcached
started from the operator's user-data, `memcached.memoryMiB: 64` and `-t 1` so 500 of them fit on a laptop), a
security group (in a /22 subnet of the sandbox VPC: the sandbox's own /24 holds 251 hosts), the real probe daemon
(interval 5 s, timeout 1 s, threshold 3: the CRD defaults) and a drift interval of `drift` seconds. They share
the sandbox's two Open edX hosts without sharing files: resource i owns `/edx/etc/bench/r<i>.yml` (a copy of the
packaged insights.yml, one CACHES LOCATION) on host i % 2, with no server-vars.yml and no restart command, so the
N pushes and the N drift checks are real SSM Run Command work on the hosts, but no two resources ever write the
same file (they would fight over LOCATION otherwise).

Steady state = every object Ready and no mutating EC2 call from the operator for `quiet` seconds, plus a
`warmup` (the last resources' first drift passes may still requeue right after convergence). Then `windows`
consecutive windows of one drift interval each are measured: the operator's AWS calls from the sandbox call
recorder (sandbox-internal calls excluded), its status PATCHes from the kube emulator's request log, and its
CPU (utime+stime from /proc/<pid>/stat) and RSS (/proc/<pid>/status) sampled every second.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from lib import (
    ProcSampler,
    count_by,
    figure,
    index_sandbox_instances,
    proc_cpu_seconds,
    proc_threads,
    scrape_metrics,
)
from restart import measure_restart

from edx_remote_cache.sandbox import Sandbox
from edx_remote_cache.sandbox.harness import OperatorProcess, cache_manifest, condition, is_ready

NAMESPACE = "default"
PROBE = {"intervalSeconds": 5, "timeoutSeconds": 1, "failureThreshold": 3}  # the CRD defaults
MEMCACHED = {"memoryMiB": 64, "extraArgs": ["-t 1"]}
# the per-resource read an ACK / Crossplane style controller makes: one Describe per managed resource per resync
PER_RESOURCE_BASELINE_CALLS = 1.0
SCALE_SUBNET_CIDR = "10.0.4.0/22"  # 1019 usable addresses


def _seed_files(sb: Sandbox, n: int) -> list[tuple[str, str]]:
    """(Open edX host, config file) of each resource, the files written on the hosts."""
    template = resources.files("edx_remote_cache").joinpath("data/edx/insights.yml").read_bytes()
    placement = []
    for i in range(n):
        host = sb.edx_hosts[i % len(sb.edx_hosts)]
        path = sb.roots[host] / "etc" / "bench" / f"r{i:04d}.yml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(template)
        placement.append((host, f"/edx/etc/bench/r{i:04d}.yml"))
    return placement


def _big_subnet(sb: Sandbox) -> str:
    """The sandbox subnet is a /24 (251 usable addresses, as in AWS): give the cache hosts a /22 in its VPC."""
    ec2 = sb.aws.client("ec2", internal=True)  # type: ignore[union-attr]
    subnet = ec2.create_subnet(VpcId=sb.vpc_id, CidrBlock=SCALE_SUBNET_CIDR, AvailabilityZone=f"{sb.region}a")
    return str(subnet["Subnet"]["SubnetId"])


def _manifest(subnet_id: str, i: int, host: str, config_file: str, drift: int) -> dict[str, Any]:
    return cache_manifest(
        f"s-{i:04d}",
        subnet_id=subnet_id,
        hosts=[host],
        openedx={"configFiles": [config_file], "ansibleVarsFiles": []},
        memcached=MEMCACHED,
        probe=PROBE,
        driftIntervalSeconds=drift,
    )


_BENCH_FILE = re.compile(r"/edx/etc/bench/(r\d{4})\.yml")


def _resource_of_command(call: Any) -> str:
    """Which scale resource a SendCommand was for: its script names the resource's own config file."""
    script = " ".join(str(x) for x in ((call.params.get("Parameters") or {}).get("commands") or []))
    found = _BENCH_FILE.search(script)
    return found.group(1) if found else "?"


class _Readiness:
    """Polls the objects; counts Ready ones and Ready → not Ready flaps (a healthy convergence has none)."""

    def __init__(self, sb: Sandbox) -> None:
        self.sb = sb
        self.ready: set[str] = set()
        self.flaps: dict[str, list[str]] = {}

    def poll(self) -> int:
        items = self.sb.kube.list_objects(NAMESPACE)
        stalled = [o for o in items if condition(o, "Stalled").get("status") == "True"]
        if stalled:
            message = condition(stalled[0], "Stalled").get("message")
            raise RuntimeError(
                f"{len(stalled)} object(s) Stalled, e.g. {stalled[0]['metadata']['name']}: {message}"
            )
        now = set()
        for o in items:
            name = o["metadata"]["name"]
            if is_ready(o):
                now.add(name)
            elif name in self.ready:
                self.flaps.setdefault(name, []).append(str(condition(o, "Ready").get("reason")))
        self.ready = now
        return len(now)

    def flap_summary(self) -> dict[str, Any]:
        reasons = count_by((r for rs in self.flaps.values() for r in rs), str)
        return {
            "objects": len(self.flaps),
            "flaps": sum(len(v) for v in self.flaps.values()),
            "reasons": reasons,
        }


def run_scale(
    *,
    n: int,
    drift: int,
    windows: int,
    out_dir: Path,
    converge_timeout: float,
    quiet: float = 5.0,
    warmup: float = 0.0,
    create_rate: float = 0.0,
    env_extra: Mapping[str, str] | None = None,
    on_steady: Callable[[int], Any] | None = None,
    restart_timeout: float | None = None,
    log: Any = print,
) -> dict[str, Any]:
    """Returns the named scale figures and context under "scale"; with `restart_timeout`, also the figures of
    an operator restart once the windows are measured (bench/restart.py)."""
    context: dict[str, Any] = {
        "resources": n,
        "drift_interval_seconds": drift,
        "probe": PROBE,
        "memcached": MEMCACHED,
        "open_edx_hosts": 2,
        "regions": 1,
        "ssm_invocation_delay_seconds": 0.05,
        "subnet_cidr": SCALE_SUBNET_CIDR,
    }
    started = time.monotonic()
    with Sandbox(ssm_invocation_delay=0.05) as sb:
        index_sandbox_instances(sb)
        placement = _seed_files(sb, n)
        subnet_id = _big_subnet(sb)
        env = {**sb.env(), **(env_extra or {})}
        with OperatorProcess(env, log_path=out_dir / "logs" / f"scale-{n}-operator.log") as op:
            assert op.proc is not None
            pid = op.proc.pid
            sampler = ProcSampler(pid, interval=1.0).start()
            t_create = time.monotonic()
            for i, (host, path) in enumerate(placement):
                sb.kube.create(_manifest(subnet_id, i, host, path, drift))
                if create_rate:
                    time.sleep(1.0 / create_rate)
            created_in = time.monotonic() - t_create
            log(f"  created {n} objects in {created_in:.1f}s")

            # converge: everything Ready
            deadline = time.monotonic() + converge_timeout
            ready = 0
            last_log = 0.0
            readiness = _Readiness(sb)
            while time.monotonic() < deadline:
                ready = readiness.poll()
                if ready == n:
                    break
                if time.monotonic() - last_log > 15:
                    last_log = time.monotonic()
                    cpu = proc_cpu_seconds(pid)
                    log(
                        f"  {ready}/{n} Ready after {time.monotonic() - t_create:.0f}s (operator CPU {cpu:.0f}s)"
                    )
                time.sleep(2.0)
            converged_in = time.monotonic() - t_create
            converge_calls = sb.calls.calls(since=t_create)
            context.update(
                converge_aws_calls_by_operation=count_by(
                    converge_calls, lambda c: f"{c.service}:{c.operation}"
                ),
                converge_describe_calls_per_second_max=max(
                    count_by(
                        (c for c in converge_calls if c.operation.startswith("Describe")),
                        lambda c: str(int(c.at - t_create)),
                    ).values(),
                    default=0,
                ),
                ready_after_converge=ready,
                converge_seconds=round(converged_in, 1),
                ready_flaps_during_converge=readiness.flap_summary(),
            )
            log(f"  {ready}/{n} Ready after {converged_in:.1f}s")
            if ready < n:
                context["warning"] = f"only {ready}/{n} Ready within {converge_timeout:.0f}s; measured anyway"

            # steady: no mutating operator call for `quiet` seconds (bounded wait)
            settle_deadline = time.monotonic() + max(quiet * 6, 30.0)
            while time.monotonic() < settle_deadline:
                recent = sb.calls.calls(service="ec2", mutating=True, since=time.monotonic() - quiet)
                if not recent:  # (SSM SendCommand counts as mutating: the drift checks send one per host)
                    break
                time.sleep(1.0)
            context["settled_after_seconds"] = round(time.monotonic() - t_create, 1)
            if on_steady is not None:
                on_steady(pid)

            if warmup > 0:  # the last resources' first drift passes may still requeue right after convergence
                log(f"  warm-up {warmup:.0f}s")
                time.sleep(warmup)
            per_window: list[dict[str, Any]] = []
            for w in range(windows):
                m_start = scrape_metrics(op.metrics_url)
                w_start, w_start_wall = time.monotonic(), time.time()
                time.sleep(drift)
                w_end = time.monotonic()
                m_end = scrape_metrics(op.metrics_url)
                work = {k: round(v - m_start.get(k, 0.0)) for k, v in m_end.items()}
                calls = sb.calls.calls(since=w_start, until=w_end)
                writes = sb.kube.status_writes(since=w_start_wall)
                writes = [r for r in writes if r.time < w_start_wall + (w_end - w_start)]
                cpu, rss = sampler.between(w_start, w_end)
                ready_now = readiness.poll()
                commands = [c for c in calls if c.operation == "SendCommand"]
                per_resource = count_by(commands, _resource_of_command)
                drift_checks = [
                    c
                    for c in calls
                    if c.operation == "SendCommand" and "drift" in str(c.params.get("Comment"))
                ]
                item = {
                    "seconds": round(w_end - w_start, 2),
                    "aws_calls": len(calls),
                    "ec2_calls": sum(1 for c in calls if c.service == "ec2"),
                    "ssm_calls": sum(1 for c in calls if c.service == "ssm"),
                    "host_drift_checks": len(drift_checks),
                    "aws_calls_by_operation": count_by(calls, lambda c: f"{c.service}:{c.operation}"),
                    "ssm_commands_by_comment": count_by(commands, lambda c: str(c.params.get("Comment"))),
                    # how many resources sent k commands in the window: {k: resources}
                    "ssm_commands_per_resource": count_by(per_resource.values(), str),
                    "mutating_calls": sum(1 for c in calls if c.mutating),
                    "status_writes": len(writes),
                    "cpu_pct": round(cpu, 2),
                    # work done in the window (operator /metrics), to compare CPU per unit of work across runs
                    "operator_metrics_delta": work,
                    # drift passes land 0, 1 or 2 times per resource in one interval-long window (their timing
                    # jitters), so the per-pass cost is the stable figure: calls per interval ≈ N x this + batched
                    "drift_passes": (
                        passes := sum(v for k, v in work.items() if k.startswith("reconciles_drift"))
                    ),
                    "aws_calls_per_drift_pass": round(len(calls) / passes, 2) if passes else None,
                    "operator_cpu_ms_per_probe": round(cpu * 10 * (w_end - w_start) / work["probes"], 3)
                    if work.get("probes")
                    else None,
                    "rss_mib_max": round(max(rss), 1) if rss else None,
                    "rss_mib_last": round(rss[-1], 1) if rss else None,
                    "threads": proc_threads(pid),
                    "ready": ready_now,
                }
                per_window.append(item)
                log(
                    f"  window {w + 1}/{windows}: {item['aws_calls']} AWS calls, {item['status_writes']} status "
                    f"writes, CPU {item['cpu_pct']:.1f}%, RSS {item['rss_mib_max']} MiB, {ready_now}/{n} Ready"
                )
            sampler.stop()
            context["ready_flaps_total"] = readiness.flap_summary()
            if not op.alive():
                raise RuntimeError("the operator died during the scale scenario")
            context["operator_threads"] = proc_threads(pid)
            restarted = (
                measure_restart(
                    sb,
                    op,
                    names=[f"s-{i:04d}" for i in range(n)],
                    env=env,
                    log_path=out_dir / "logs" / f"scale-{n}-operator-restarted.log",
                    timeout=restart_timeout,
                    settle=min(float(drift), 30.0),
                    log=log,
                )
                if restart_timeout
                else {}
            )
    context["windows"] = per_window
    context["wall_seconds"] = round(time.monotonic() - started, 1)

    calls = [w["aws_calls"] * drift / w["seconds"] for w in per_window]  # per drift interval
    ec2 = [w["ec2_calls"] * drift / w["seconds"] for w in per_window]
    ssm = [w["ssm_calls"] * drift / w["seconds"] for w in per_window]
    span = sum(w["seconds"] for w in per_window)
    writes = sum(w["status_writes"] for w in per_window)
    return {
        "steady_aws_calls_per_interval": figure(calls, digits=1, resources=n, regions=1),
        "steady_ec2_calls_per_interval": figure(ec2, digits=1, resources=n, regions=1),
        # the host-file drift check (SSM) on its own: a cost ACK/Crossplane-style controllers do not have
        "steady_ssm_calls_per_interval": figure(ssm, digits=1, resources=n, regions=1, open_edx_hosts=2),
        "per_resource_calls_ratio": figure(
            [c / n / PER_RESOURCE_BASELINE_CALLS for c in calls], digits=4, resources=n
        ),
        "rss_mib_500": figure([w["rss_mib_max"] for w in per_window], digits=1, resources=n),
        "cpu_pct_500": figure([w["cpu_pct"] for w in per_window], digits=2, resources=n),
        "status_writes_per_minute_per_resource_scale": figure(
            [writes * 60.0 / span / n] if span else [], digits=3, resources=n, window_seconds=round(span, 1)
        ),
        "scale": context,
        **restarted,
    }
