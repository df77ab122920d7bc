"""Lifecycle timings on the sandbox with the real operator process: Ready, fault detection, healing, replacement,
and the status-write rate of one healthy idle resource.

One sandbox, one operator. An idle resource (spec defaults: probe 5 s / 1 s / 3, drift 60 s) lives on the second
sandbox Open edX host for the whole scenario and its status PATCHes are counted. Each repetition creates a fresh
resource on the first Open edX host (1 cache, 1 host, the default four config files + server-vars.yml) and runs:

1. create → Ready                                           ready_seconds
2. SIGKILL memcached → CacheHealthy False                    detect_refused_seconds
   … → Ready again (restart memcached through SSM)           heal_seconds
3. terminate the instance → a new instance, hosts re-pointed to its endpoint, Ready      replace_seconds
4. SIGSTOP the new memcached → CacheHealthy False            detect_hung_seconds
   … → Ready again (restart through SSM)                     heal_hung_seconds (extra)
5. delete → gone (hosts reverted, instance terminated, group deleted)                    delete_seconds (extra)

The order matters: the healing ladder restarts memcached at most once per instance per hour, then replaces, so
the hang is injected on the replacement instance (never restarted yet) to measure a restart heal, not a second
replacement. Timings are from the fault (or the create call) to the first poll (every 50 ms) that sees the state.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lib import figure, timed_wait

from edx_remote_cache.sandbox import Sandbox
from edx_remote_cache.sandbox.harness import OperatorProcess, cache_manifest, condition, is_ready

NAMESPACE = "default"
# The sandbox's fast probe settings (the e2e suite's): detect_hung's target is timeout * threshold + 1.
FAST_PROBE = {"intervalSeconds": 1, "timeoutSeconds": 0.5, "failureThreshold": 2}
DEFAULT_PROBE = {"intervalSeconds": 5, "timeoutSeconds": 1, "failureThreshold": 3}  # the CRD defaults
LIFECYCLE_DRIFT_SECONDS = 30
IDLE_DRIFT_SECONDS = 60  # the CRD default


def _cache_false(obj: Mapping[str, Any]) -> bool:
    return condition(obj, "CacheHealthy").get("status") == "False"


def _status(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("status") or {}


def _instance(obj: Mapping[str, Any]) -> tuple[str, str]:
    inst = (_status(obj).get("instances") or [{}])[0]
    endpoints = list(_status(obj).get("endpoints") or [])
    return str(inst.get("id") or ""), endpoints[0] if endpoints else ""


def _placeholder(ec2: Any, subnet_id: str) -> str:
    """A plain instance (no memcached user-data: not a cache host), launched by the sandbox itself."""
    from edx_remote_cache.sandbox.aws import UBUNTU_AMI_ID

    reservation = ec2.run_instances(
        ImageId=UBUNTU_AMI_ID, InstanceType="t3.micro", MinCount=1, MaxCount=1, SubnetId=subnet_id
    )
    return str(reservation["Instances"][0]["InstanceId"])


def run_lifecycle(
    *,
    reps: int,
    out_dir: Path,
    min_idle_window: float,
    env_extra: Mapping[str, str] | None = None,
    log: Any = print,
) -> dict[str, Any]:
    """Run the scenario `reps` times; returns the named figures (and some context under "lifecycle")."""
    runs: dict[str, list[float]] = {
        k: []
        for k in (
            "ready_seconds",
            "detect_refused_seconds",
            "heal_seconds",
            "replace_seconds",
            "detect_hung_seconds",
            "heal_hung_seconds",
            "delete_seconds",
        )
    }
    repointed: list[bool] = []
    placeholders: list[str] = []
    with Sandbox() as sb:
        ec2_internal = sb.aws.client("ec2", internal=True)  # type: ignore[union-attr]
        edx_fault, edx_idle = sb.edx_hosts[0], sb.edx_hosts[1]
        get = lambda name: lambda: sb.kube.get(NAMESPACE, name)  # noqa: E731
        env = {**sb.env(), **(env_extra or {})}
        with OperatorProcess(env, log_path=out_dir / "logs" / "lifecycle-operator.log") as op:
            # the idle resource: spec defaults, its own Open edX host
            idle = cache_manifest(
                "idle",
                subnet_id=sb.subnet_id,
                hosts=[edx_idle],
                probe=DEFAULT_PROBE,
                driftIntervalSeconds=IDLE_DRIFT_SECONDS,
            )
            t0 = time.monotonic()
            sb.kube.create(idle)
            idle_ready, _ = timed_wait(get("idle"), is_ready, since=t0, timeout=60, what="idle Ready")
            log(f"  idle resource Ready in {idle_ready:.2f}s (not a figure: the first pass builds clients)")
            time.sleep(2.0)  # let the first probe rounds settle (the Ready write is not an idle write)
            idle_from_wall, idle_from = time.time(), time.monotonic()

            for rep in range(reps):
                name = f"life-{rep}"
                g = get(name)
                manifest = cache_manifest(
                    name,
                    subnet_id=sb.subnet_id,
                    hosts=[edx_fault],
                    probe=FAST_PROBE,
                    driftIntervalSeconds=LIFECYCLE_DRIFT_SECONDS,
                )
                t0 = time.monotonic()
                sb.kube.create(manifest)
                ready, obj = timed_wait(g, is_ready, since=t0, timeout=60, what=f"{name} Ready")
                runs["ready_seconds"].append(ready)
                iid, endpoint = _instance(obj)
                sb.cache_host(iid, timeout=10)
                time.sleep(1.5)  # a few probe rounds on the healthy cache

                t0 = time.monotonic()
                sb.faults.kill_memcached(iid)
                detect, _ = timed_wait(
                    g, _cache_false, since=t0, timeout=30, what=f"{name} refused → unhealthy"
                )
                heal, _ = timed_wait(g, is_ready, since=t0, timeout=60, what=f"{name} healed")
                runs["detect_refused_seconds"].append(detect)
                runs["heal_seconds"].append(heal)
                time.sleep(1.5)

                t0 = time.monotonic()
                sb.faults.terminate_instance(iid)
                # moto hands a freed private IP to the next launch; a placeholder takes it first, so the
                # replacement gets a new address and the hosts really have to be re-pointed
                placeholders.append(_placeholder(ec2_internal, sb.subnet_id))

                def replaced(o: Mapping[str, Any], old: str = iid, old_ep: str = endpoint) -> bool:
                    new_id, new_ep = _instance(o)
                    return is_ready(o) and new_id not in ("", old) and new_ep not in ("", old_ep)

                replace, obj = timed_wait(g, replaced, since=t0, timeout=90, what=f"{name} replaced")
                runs["replace_seconds"].append(replace)
                iid, endpoint = _instance(obj)
                lms = (sb.roots[edx_fault] / "etc" / "lms.yml").read_text(encoding="utf-8")
                repointed.append(endpoint in lms)
                sb.cache_host(iid, timeout=10)
                time.sleep(1.5)

                t0 = time.monotonic()
                sb.faults.hang_memcached(iid)
                detect, _ = timed_wait(g, _cache_false, since=t0, timeout=30, what=f"{name} hung → unhealthy")
                heal, _ = timed_wait(g, is_ready, since=t0, timeout=60, what=f"{name} healed after hang")
                runs["detect_hung_seconds"].append(detect)
                runs["heal_hung_seconds"].append(heal)

                t0 = time.monotonic()
                sb.kube.delete(NAMESPACE, name)
                gone, _ = timed_wait(
                    lambda g=g: {"gone": g() is None}, lambda o: bool(o["gone"]), since=t0, timeout=90,
                    what=f"{name} deleted",
                )  # fmt: skip
                runs["delete_seconds"].append(gone)
                log(
                    f"  rep {rep + 1}/{reps}: ready {ready:.2f}s, refused→unhealthy {runs['detect_refused_seconds'][-1]:.2f}s, "
                    f"healed {runs['heal_seconds'][-1]:.2f}s, replaced {replace:.2f}s, hung→unhealthy {detect:.2f}s, "
                    f"healed {heal:.2f}s, deleted {gone:.2f}s"
                )

            # the idle resource's window: at least `min_idle_window` seconds
            remaining = min_idle_window - (time.monotonic() - idle_from)
            if remaining > 0:
                log(f"  waiting {remaining:.0f}s more for the idle window ({min_idle_window:.0f}s)")
                time.sleep(remaining)
            idle_to = time.monotonic()
            window = idle_to - idle_from
            writes = [
                r.time - idle_from_wall
                for r in sb.kube.status_writes(since=idle_from_wall)
                if r.name == "idle"
            ]
            idle_obj = sb.kube.get(NAMESPACE, "idle") or {}
            idle_healthy = is_ready(idle_obj)
            if not op.alive():
                raise RuntimeError("the operator died during the lifecycle scenario")

    # per-minute samples: every full minute of the window; a shorter window (smoke) is scaled to a minute
    minutes = int(window // 60)
    if minutes >= 1:
        per_minute = [sum(1 for t in writes if m * 60 <= t < (m + 1) * 60) for m in range(minutes)]
    else:
        per_minute = [len(writes) * 60.0 / window]
    thresholds = f"{FAST_PROBE['timeoutSeconds']} s x {FAST_PROBE['failureThreshold']} + 1"
    hung_target = FAST_PROBE["timeoutSeconds"] * FAST_PROBE["failureThreshold"] + 1
    return {
        "ready_seconds": figure(runs["ready_seconds"]),
        "detect_refused_seconds": figure(runs["detect_refused_seconds"]),
        "detect_hung_seconds": figure(
            runs["detect_hung_seconds"], target_seconds=hung_target, target_formula=thresholds
        ),
        "heal_seconds": figure(runs["heal_seconds"]),
        "replace_seconds": figure(
            runs["replace_seconds"], hosts_repointed=all(repointed) and bool(repointed)
        ),
        "status_writes_per_minute_idle": figure(
            per_minute,
            window_seconds=round(window, 1),
            writes=len(writes),
            overall_rate=round(len(writes) * 60.0 / window, 3),
            idle_ready_at_end=idle_healthy,
        ),
        "heal_hung_seconds": figure(runs["heal_hung_seconds"]),
        "delete_seconds": figure(runs["delete_seconds"]),
        "lifecycle": {
            "repetitions": reps,
            "probe": FAST_PROBE,
            "drift_interval_seconds": LIFECYCLE_DRIFT_SECONDS,
            "idle_probe": DEFAULT_PROBE,
            "idle_drift_interval_seconds": IDLE_DRIFT_SECONDS,
            "ssm_invocation_delay_seconds": 0.2,
            "poll_interval_seconds": 0.05,
            "idle_write_offsets_seconds": [round(t, 2) for t in writes],
        },
    }
