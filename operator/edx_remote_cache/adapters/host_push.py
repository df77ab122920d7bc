"""Re-point Open edX hosts at the remote memcached over SSM, one host at a time, and undo it on failure.

Per host: preflight (agent Online) → one read command in which the host parses its own files and prints
only sha256, owner, mode and the memcached value nodes (the files' secrets never leave the host) → plan with
the rewrite engine in the operator → one apply script that sends only splices, compares-and-swaps, re-parses,
backs up, writes, restarts only the services whose files changed, verifies, and restores the exact original
bytes (and restarts again) when a restart or the verify fails. Pushes are idempotent: a host already pointing at
the endpoints costs one read command and nothing is written or restarted.

Rollout follows ``spec.openedx.rollout``: at most ``maxConcurrency`` hosts at once; once more than
``maxErrors`` hosts end Conflict / RolledBack / Failed, hosts not yet started stay ``Pending``. An
Unreachable host does not count (nothing was sent to it), like SSM's own "Undeliverable".

The SSM adapter is a parameter (anything with ``ping_statuses`` and ``run_script``), never a global.
"""

from __future__ import annotations

import logging
import shlex
from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from edx_remote_cache.adapters.ports import CommandResult, SsmRunner
from edx_remote_cache.adapters.ssm import COMMENT_APPLY, COMMENT_DRIFT, COMMENT_READ, SsmError
from edx_remote_cache.domain.hosts import (
    ERROR_STATES,
    LOCAL_MEMCACHED_UNIT,
    STEP_TIMEOUT_SECONDS,
    SYSTEMCTL,
    HostPlan,
    HostPushResult,
    HostSnapshot,
    HostState,
    LocalEndpoints,
    PlanError,
    ProtocolError,
    backup_timestamp,
    execution_timeout,
    host_paths,
    parse_apply_output,
    parse_read_output,
    plan_push,
    plan_revert,
    render_apply_script,
    render_read_script,
)
from edx_remote_cache.domain.hosts.drift import parse_hash_output, render_hash_script
from edx_remote_cache.domain.spec import OpenedxSpec

__all__ = [
    "BeforeWrite",
    "DriftReport",
    "HostPushResult",
    "SsmRunner",
    "drift_of_host",
    "expected_files",
    "push_hosts",
    "revert_hosts",
]

log = logging.getLogger(__name__)

READ_TIMEOUT = 60  # seconds a read / hash command may run on the host


BeforeWrite = Callable[[str, HostPlan], None]
Clock = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(UTC)


class _HostProblem(Exception):
    """Ends one host's push early with a state and a message."""

    def __init__(self, state: HostState, message: str, command_id: str | None = None) -> None:
        super().__init__(message)
        self.state = state
        self.message = message
        self.command_id = command_id


def _run(ssm: SsmRunner, host: str, script: str, *, timeout: float, comment: str) -> CommandResult:
    try:
        return ssm.run_script(host, script, timeout=timeout, comment=comment)
    except SsmError as exc:
        state: HostState = "Pending" if exc.transient else "Unreachable" if exc.unreachable else "Failed"
        raise _HostProblem(state, str(exc)) from None


def _require_success(result: CommandResult, what: str) -> None:
    if result.ok:
        return
    if not result.delivered:
        raise _HostProblem(
            "Unreachable", f"{what} was not delivered ({result.status_details})", result.command_id
        )
    detail = (result.stderr.strip() or result.stdout.strip())[-500:]
    raise _HostProblem(
        "Failed", f"{what} {result.status} (exit {result.exit_code}): {detail}", result.command_id
    )


def _read(
    ssm: SsmRunner, host: str, paths: Sequence[str], *, service: str | None, systemctl: Sequence[str]
) -> tuple[HostSnapshot, str]:
    """One command: the host parses its own files and prints only metadata and value nodes (see read.py)."""
    result = _run(
        ssm,
        host,
        render_read_script(paths, service=service, systemctl=systemctl),
        timeout=READ_TIMEOUT,
        comment=COMMENT_READ,
    )
    _require_success(result, "the read command")
    try:
        snapshot = parse_read_output(result.stdout, paths)
    except ProtocolError as exc:
        raise _HostProblem("Failed", f"unexpected read output: {exc}", result.command_id) from None
    if snapshot.no_python:
        raise _HostProblem(
            "Failed",
            "the host cannot run the reader: no Python >= 3.8 with PyYAML "
            f"({snapshot.no_python}); install python3-yaml; nothing was read",
            result.command_id,
        )
    if snapshot.failure:
        raise _HostProblem("Failed", f"{snapshot.failure}; nothing was written", result.command_id)
    if snapshot.errors:
        _path, message = snapshot.errors[0]
        raise _HostProblem("Failed", f"{message}; nothing was written on this host", result.command_id)
    return snapshot, result.command_id


def _describe_success(plan: HostPlan, warnings: str) -> str:
    parts = []
    if plan.changes:
        parts.append("updated " + ", ".join(c.path for c in plan.changes))
        if plan.restarts:
            parts.append("ran " + ", ".join(f"`{shlex.join(argv)}`" for argv in plan.restarts))
        if plan.verify:
            parts.append("verified")
    if plan.memcached == "disable":
        parts.append("stopped and disabled the local memcached")
    elif plan.memcached == "enable":
        parts.append("re-enabled the local memcached")
    if warnings:
        parts.append(warnings)
    if plan.skipped:
        parts.append(plan.skipped_message())
    return "; ".join(parts)


def _apply(
    ssm: SsmRunner,
    host: str,
    snapshot: HostSnapshot,
    plan: HostPlan,
    *,
    started: datetime,
    read_id: str,
    previous: HostPushResult | None,
    before_write: BeforeWrite | None,
    step_timeout: int,
    systemctl: Sequence[str],
) -> HostPushResult:
    files_now = plan.files_after({})
    if plan.is_noop:
        message = "; ".join(filter(None, ["up to date", plan.skipped_message()]))
        if previous is not None and previous.state == "Configured" and previous.files == files_now:
            return replace(previous, message=message, diffs=())  # keep its time: no status churn
        return HostPushResult(host, "Configured", files_now, read_id, started, message, ())
    if before_write is not None:
        before_write(host, plan)
    try:
        script = render_apply_script(
            plan, timestamp=backup_timestamp(started), step_timeout=step_timeout, systemctl=systemctl
        )
    except PlanError as exc:
        raise _HostProblem("Failed", f"{exc}; nothing was written", read_id) from None
    result = _run(
        ssm,
        host,
        script,
        timeout=execution_timeout(plan, step_timeout),
        comment=COMMENT_APPLY,
    )
    if not result.delivered:
        raise _HostProblem("Unreachable", f"the apply command was not delivered ({result.status_details})")
    outcome = parse_apply_output(result.stdout, plan, exit_code=result.exit_code)
    if result.status not in ("Success", "Failed"):  # TimedOut / Cancelled: the script did not finish
        message = (
            f"the apply command {result.status} before it finished; the host may be half-done, backups "
            f"(*.erc-bak-{backup_timestamp(started)}) are next to the files. {outcome.message}"
        )
        return HostPushResult(host, "Failed", (), result.command_id, started, message.strip(), plan.diffs)
    if outcome.state == "Configured":
        message = _describe_success(plan, outcome.message)
        files = plan.files_after(dict(outcome.new_sha256))
        return HostPushResult(host, "Configured", files, result.command_id, started, message, plan.diffs)
    if outcome.state == "Failed" and not outcome.message:
        detail = (result.stderr.strip() or result.stdout.strip())[-500:]
        outcome = replace(outcome, message=f"the apply script failed (exit {result.exit_code}): {detail}")
    files = files_now if outcome.state in ("RolledBack", "Conflict") else ()
    return HostPushResult(host, outcome.state, files, result.command_id, started, outcome.message, plan.diffs)


# (what was read, the host's last result or None) -> the plan
Planner = Callable[[HostSnapshot, HostPushResult | None], HostPlan]


def _carried(previous: HostPushResult | None) -> LocalEndpoints:
    """What the last result recorded: kept by results that write nothing (Unreachable, Pending, refused)."""
    return previous.local_endpoints if previous is not None else ()


def _one_host(
    ssm: SsmRunner,
    host: str,
    ping: str,
    *,
    paths: Sequence[str],
    planner: Planner,
    service: str | None,
    clock: Clock,
    previous: HostPushResult | None,
    before_write: BeforeWrite | None,
    step_timeout: int,
    systemctl: Sequence[str],
) -> HostPushResult:
    started = clock()
    carried = _carried(previous)
    if ping != "Online":
        return HostPushResult(
            host,
            "Unreachable",
            (),
            None,
            started,
            f"SSM agent PingStatus is {ping}; nothing sent",
            local_endpoints=carried,
        )
    try:
        snapshot, read_id = _read(ssm, host, paths, service=service, systemctl=systemctl)
        try:
            plan = planner(snapshot, previous)
        except PlanError as exc:
            raise _HostProblem("Failed", f"{exc}; nothing was written", read_id) from None
        result = _apply(
            ssm,
            host,
            snapshot,
            plan,
            started=started,
            read_id=read_id,
            previous=previous,
            before_write=before_write,
            step_timeout=step_timeout,
            systemctl=systemctl,
        )
        # whatever the outcome: even a rolled-back or timed-out apply may have written the files
        return replace(result, local_endpoints=plan.local_endpoints)
    except _HostProblem as problem:
        return HostPushResult(
            host,
            problem.state,
            (),
            problem.command_id,
            started,
            problem.message,
            local_endpoints=carried,
        )
    except Exception as exc:  # one host's surprise must not stop the rollout or lose the others' results
        log.exception("%s: push failed unexpectedly", host)
        return HostPushResult(
            host,
            "Failed",
            (),
            None,
            started,
            f"internal error: {type(exc).__name__}: {exc}",
            local_endpoints=carried,
        )


def _rollout(
    hosts: Sequence[str],
    *,
    max_concurrency: int,
    max_errors: int,
    work: Callable[[str], HostPushResult],
    previous: Mapping[str, HostPushResult] | None = None,
) -> list[HostPushResult]:
    """SSM-style rate control: ≤ max_concurrency at once; stop starting hosts once errors > max_errors."""
    order = list(dict.fromkeys(hosts))
    results: dict[str, HostPushResult] = {}
    queue = deque(order)
    errors = 0
    with ThreadPoolExecutor(max_workers=max(1, max_concurrency), thread_name_prefix="host-push") as pool:
        running: set[Future[HostPushResult]] = set()
        while queue or running:
            while queue and len(running) < max_concurrency and errors <= max_errors:
                running.add(pool.submit(work, queue.popleft()))
            if not running:
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                running.discard(future)
                result = future.result()
                results[result.instance_id] = result
                errors += result.state in ERROR_STATES
    for host in queue:
        results[host] = HostPushResult(
            host,
            "Pending",
            (),
            None,
            None,
            f"not attempted: {errors} host(s) failed, more than rollout.maxErrors={max_errors}",
            local_endpoints=_carried((previous or {}).get(host)),
        )
    return [results[host] for host in order]


def _push(
    *,
    ssm: SsmRunner,
    hosts: Sequence[str],
    openedx: OpenedxSpec,
    planner: Planner,
    service: str | None,
    previous: Mapping[str, HostPushResult] | None,
    clock: Clock,
    before_write: BeforeWrite | None,
    step_timeout: int,
    systemctl: Sequence[str],
) -> list[HostPushResult]:
    paths = host_paths(openedx.config_files, openedx.ansible_vars_files)
    order = list(dict.fromkeys(hosts))
    previous = previous or {}
    try:
        pings = dict(ssm.ping_statuses(order)) if order else {}
    except SsmError as exc:
        now = clock()
        if exc.transient:  # AWS is busy, not the hosts: nothing was sent, so each keeps its last result
            return [
                previous.get(h) or HostPushResult(h, "Pending", (), None, now, f"waiting for SSM: {exc}")
                for h in order
            ]
        return [
            HostPushResult(
                h,
                "Unreachable",
                (),
                None,
                now,
                f"cannot ask SSM for agent status: {exc}",
                local_endpoints=_carried(previous.get(h)),
            )
            for h in order
        ]
    return _rollout(
        order,
        max_concurrency=openedx.rollout.max_concurrency,
        max_errors=openedx.rollout.max_errors,
        previous=previous,
        work=lambda host: _one_host(
            ssm,
            host,
            pings.get(host, "NotRegistered"),
            paths=paths,
            planner=planner,
            service=service,
            clock=clock,
            previous=previous.get(host),
            before_write=before_write,
            step_timeout=step_timeout,
            systemctl=systemctl,
        ),
    )


def push_hosts(
    *,
    ssm: SsmRunner,
    hosts: Sequence[str],
    openedx: OpenedxSpec,
    endpoints: Sequence[str],
    replace: Collection[str] = (),
    port: int = 11211,
    previous: Mapping[str, HostPushResult] | None = None,
    clock: Clock = _utcnow,
    before_write: BeforeWrite | None = None,
    step_timeout: int = STEP_TIMEOUT_SECONDS,
    systemctl: Sequence[str] = SYSTEMCTL,
) -> list[HostPushResult]:
    """Point every host's local (or ``replace``d) memcached LOCATIONs at ``endpoints``; one result per host.

    ``previous`` (last results, e.g. rebuilt with ``HostPushResult.from_status``) keeps an up-to-date
    host's commandId/lastPushTime stable and carries its ``local_endpoints`` (how each file spelled the local
    memcached before the first push) into the new results. ``before_write(host, plan)`` runs between plan
    and write (tests).
    """
    return _push(
        ssm=ssm,
        hosts=hosts,
        openedx=openedx,
        planner=lambda snapshot, last: plan_push(
            snapshot,
            endpoints=endpoints,
            replace=replace,
            port=port,
            restart_for=openedx.restart_command_for,
            verify=openedx.verify_command,
            disable_local_memcached=openedx.disable_local_memcached,
            local_endpoints=_carried(last),
        ),
        service=LOCAL_MEMCACHED_UNIT if openedx.disable_local_memcached else None,
        previous=previous,
        clock=clock,
        before_write=before_write,
        step_timeout=step_timeout,
        systemctl=systemctl,
    )


def revert_hosts(
    *,
    ssm: SsmRunner,
    hosts: Sequence[str],
    openedx: OpenedxSpec,
    current_endpoints: Collection[str],
    port: int = 11211,
    enable_local_memcached: bool | None = None,
    previous: Mapping[str, HostPushResult] | None = None,
    clock: Clock = _utcnow,
    before_write: BeforeWrite | None = None,
    step_timeout: int = STEP_TIMEOUT_SECONDS,
    systemctl: Sequence[str] = SYSTEMCTL,
) -> list[HostPushResult]:
    """Point the hosts back at local memcached (and re-enable it if the spec disabled it).

    Same safe path as a push: compare-before-write, backups, restart only what changed, rollback on failure.
    ``current_endpoints`` empty reverts every non-local LOCATION. ``enable_local_memcached`` defaults to
    ``openedx.disable_local_memcached`` (pass the value that was in effect when the hosts were pushed).
    ``previous`` (the push results, e.g. ``HostPushResult.from_status`` of ``status.hosts[]``) gives each
    LOCATION back the spelling the push replaced (``127.0.0.1:11211`` stays that); a host or alias with
    nothing recorded gets ``localhost:port``.
    """
    enable = openedx.disable_local_memcached if enable_local_memcached is None else enable_local_memcached
    return _push(
        ssm=ssm,
        hosts=hosts,
        openedx=openedx,
        planner=lambda snapshot, last: plan_revert(
            snapshot,
            current=current_endpoints,
            port=port,
            restart_for=openedx.restart_command_for,
            verify=openedx.verify_command,
            enable_local_memcached=enable,
            local_endpoints=_carried(last),
        ),
        service=LOCAL_MEMCACHED_UNIT if enable else None,
        previous=previous,
        clock=clock,
        before_write=before_write,
        step_timeout=step_timeout,
        systemctl=systemctl,
    )


# ------------------------------------------------------------------------------------------------- drift


@dataclass(frozen=True)
class DriftReport:
    """Whether a host's files still are what was pushed; ``drifted`` is also True when it could not be told."""

    instance_id: str
    drifted: bool
    reason: str = ""
    current: tuple[tuple[str, str | None], ...] = ()


def expected_files(results: Iterable[HostPushResult]) -> dict[str, dict[str, str]]:
    """``expected`` for the drift check (:mod:`edx_remote_cache.adapters.host_drift`) from push results (only Configured hosts have a known state)."""
    return {r.instance_id: dict(r.files) for r in results if r.state == "Configured" and r.files}


def drift_of_host(ssm: SsmRunner, host: str, expected: Mapping[str, str]) -> DriftReport:
    """One hash command to one host (the batched check in :mod:`host_drift` falls back to it)."""
    paths = list(expected)
    try:
        result = ssm.run_script(host, render_hash_script(paths), timeout=READ_TIMEOUT, comment=COMMENT_DRIFT)
    except SsmError as exc:
        return DriftReport(host, True, f"cannot check: {exc}")
    if not result.ok:
        return DriftReport(
            host, True, f"check command {result.status} (exit {result.exit_code}): {result.stderr[-300:]}"
        )
    try:
        current = parse_hash_output(result.stdout, paths)
    except ProtocolError as exc:
        return DriftReport(host, True, str(exc))
    changed = [p for p in paths if current[p] != expected[p]]
    reason = ("changed on the host: " + ", ".join(changed)) if changed else ""
    return DriftReport(host, bool(changed), reason, tuple(current.items()))
