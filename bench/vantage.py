"""False positives on the sandbox (issue 16): what the operator destroys when its own view is the broken one.

* ``false_heal_actions``: two Ready caches (one per Open edX host, one region); first the operator's path to one
  cache is blocked (a network ACL the security groups do not show), then the operator is partitioned from the
  whole VPC, each for ``window`` seconds. Counted over both windows: every mutating AWS call (a SendCommand that
  only reads or hashes files is not one), every systemctl call on a cache host other than ``is-active``, and
  every Open edX host file that changed. Target 0: the caches answer from their hosts' vantage all along.
* ``detect_app_unreachable_seconds``: the object paused (so its drift pass does not put the rule back), the
  security group's rule for the Open edX hosts revoked: seconds until ``CacheHealthy=False`` with reason
  ``UnreachableFromHosts`` (the hosts' own check, batched in the drift command). Target <= drift interval + 5.

Only the sandbox's own namespaces carry private addresses; the bench process itself dials 127.0.0.1 only.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lib import figure, timed_wait

from edx_remote_cache.adapters.ssm import READ_ONLY_COMMENTS
from edx_remote_cache.reconciler.reconciler import PAUSE_ANNOTATION
from edx_remote_cache.sandbox import Sandbox
from edx_remote_cache.sandbox.harness import OperatorProcess, cache_manifest, condition, is_ready

NAMESPACE = "default"
DRIFT_SECONDS = 5  # the bench objects' spec.driftIntervalSeconds (sandbox.harness.cache_manifest)


def _host_files(sb: Sandbox) -> dict[str, str]:
    """sha256 of every file under each Open edX host's root (what a push or a revert would change)."""
    digests: dict[str, str] = {}
    for host in sb.edx_hosts:
        root = Path(sb.roots[host])
        for path in sorted(root.rglob("*")):
            if path.is_file() and not path.is_symlink():
                digests[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


def _wait(sb: Sandbox, name: str, predicate: Any, what: str, timeout: float = 60) -> Mapping[str, Any]:
    return timed_wait(
        lambda: sb.kube.get(NAMESPACE, name), predicate, since=time.monotonic(), timeout=timeout, what=what
    )[1]


def _gone(obj: Mapping[str, Any]) -> bool:
    return bool(obj.get("gone"))


def _unknown(obj: Mapping[str, Any]) -> bool:
    """The operator says it cannot tell (ProbePathBlocked or HealingSuspended: both hold destructive healing)."""
    cond = condition(obj, "CacheHealthy")
    return cond.get("status") == "Unknown" and cond.get("reason") in ("ProbePathBlocked", "HealingSuspended")


def _healthy(obj: Mapping[str, Any]) -> bool:
    return is_ready(obj) and condition(obj, "CacheHealthy").get("status") == "True"


def _destructive(sb: Sandbox, since: float, wall: float, instance_ids: list[str]) -> dict[str, int]:
    calls = [
        c
        for c in sb.calls.calls(mutating=True, since=since)
        if not (c.operation == "SendCommand" and c.params.get("Comment") in READ_ONLY_COMMENTS)
    ]
    systemctl = [
        c
        for iid in instance_ids
        for c in sb.systemctl_calls(iid)
        if c["time"] >= wall and c["args"][:1] != ["is-active"]
    ]
    return {"aws_mutations": len(calls), "systemctl": len(systemctl)}


def run_vantage(
    *, window: float, out_dir: Path, env_extra: Mapping[str, str] | None = None, log: Any = print
) -> dict:
    counts: dict[str, dict[str, int]] = {}
    with Sandbox() as sb:
        env = {**sb.env(), **(env_extra or {})}
        with OperatorProcess(env, log_path=out_dir / "logs" / "vantage-operator.log"):
            names = [f"vantage-{n}" for n in range(len(sb.edx_hosts[:2]))]
            for name, host in zip(names, sb.edx_hosts, strict=False):
                sb.kube.create(cache_manifest(name, subnet_id=sb.subnet_id, hosts=[host]))
            objs = [_wait(sb, name, is_ready, f"{name} Ready", timeout=90) for name in names]
            iids = [o["status"]["instances"][0]["id"] for o in objs]

            def episode(label: str, start: Any, stop: Any, watched: list[str]) -> None:
                files = _host_files(sb)
                since, wall = sb.calls.now(), time.time()
                start()
                try:
                    for name in watched:
                        _wait(sb, name, _unknown, f"{name} CacheHealthy=Unknown")
                    time.sleep(window)
                finally:
                    stop()
                for name in watched:
                    _wait(sb, name, _healthy, f"{name} CacheHealthy again")
                changed = _host_files(sb)
                counts[label] = {
                    **_destructive(sb, since, wall, iids),
                    "host_files_changed": sum(1 for k, v in changed.items() if files.get(k) != v),
                }
                log(f"vantage: {label}: {counts[label]}")

            episode(
                "blocked_path",
                lambda: sb.faults.block_path("operator", iids[0]),
                lambda: sb.faults.unblock_path("operator", iids[0]),
                names[:1],
            )
            episode(
                "partition",
                lambda: sb.faults.partition_operator(True),
                lambda: sb.faults.partition_operator(False),
                names,
            )
            detect = _app_unreachable(sb, names[0])
            log(f"vantage: app rule revoked -> UnreachableFromHosts in {detect:.2f}s")
            for name in names:
                sb.kube.delete(NAMESPACE, name)
            for name in names:
                timed_wait(
                    lambda n=name: {"gone": 1} if sb.kube.get(NAMESPACE, n) is None else None,
                    _gone,
                    since=time.monotonic(),
                    timeout=90,
                    what=f"{name} gone",
                )
    total = sum(sum(c.values()) for c in counts.values())
    return {
        "false_heal_actions": figure([total], window_seconds=window, windows=counts),
        "detect_app_unreachable_seconds": figure(
            [detect], drift_interval_seconds=DRIFT_SECONDS, target_seconds=DRIFT_SECONDS + 5
        ),
    }


def _unreachable_from_hosts(obj: Mapping[str, Any]) -> bool:
    cond = condition(obj, "CacheHealthy")
    return (cond.get("status"), cond.get("reason")) == ("False", "UnreachableFromHosts")


def _app_unreachable(sb: Sandbox, name: str) -> float:
    """Pause, revoke the Open edX hosts' rule, time the hosts' report; then unpause (the rule comes back)."""
    obj = _wait(sb, name, _healthy, f"{name} healthy")
    group = obj["status"]["securityGroupId"]
    sb.kube.patch(NAMESPACE, name, {"metadata": {"annotations": {PAUSE_ANNOTATION: "true"}}})
    try:
        _wait(sb, name, lambda o: (o.get("status") or {}).get("phase") == "Paused", f"{name} paused")
        started = time.monotonic()
        sb.faults.revoke_rule(group, 11211, source_group_id=sb.edx_security_group_id)
        took, _ = timed_wait(
            lambda: sb.kube.get(NAMESPACE, name), _unreachable_from_hosts, since=started,
            timeout=DRIFT_SECONDS + 30, what=f"{name} UnreachableFromHosts",
        )  # fmt: skip
    finally:
        sb.kube.patch(NAMESPACE, name, {"metadata": {"annotations": {PAUSE_ANNOTATION: None}}})
    _wait(sb, name, _healthy, f"{name} healthy again (the rule put back)")
    return took
