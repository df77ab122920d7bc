"""The one apply script per host: compare-and-swap the splices, back up, rename, restart, verify, roll back.

Why one script: a host is never left half-done because the operator lost its connection between steps. The
file work runs in the host program (:mod:`.hostside`, after the engine's ``locate.py``): every file must still
have the sha256 that was read and every splice range the text that was read (else ``Conflict``, nothing
written); the spliced file is re-parsed and must hold exactly the planned node texts (else nothing written);
then each file is backed up (a hard link: exact bytes, owner, mode), the new one built next to it with the
same owner and mode is renamed into place, and the host reports each new sha256 (the operator never saw the
file, so it cannot compute it). A failed restart or verify restores the backups and restarts again.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from edx_remote_cache.domain.hosts.plan import HostPlan
from edx_remote_cache.domain.hosts.protocol import (
    _SHA256,
    BACKUP_SUFFIX,
    KEEP_BACKUPS,
    LOCAL_MEMCACHED_UNIT,
    MAX_FILE_BYTES,
    MAX_SCRIPT_CHARS,
    STEP_TIMEOUT_SECONDS,
    SYSTEMCTL,
    PlanError,
    ProtocolError,
    _argv,
    _b64text,
    _index,
    _lines,
    _prelude,
)
from edx_remote_cache.domain.hosts.read import _spec, python_finder
from edx_remote_cache.domain.hosts.result import HOST_STATES, HostState

__all__ = [
    "ApplyOutcome",
    "StepLog",
    "backup_timestamp",
    "execution_timeout",
    "parse_apply_output",
    "render_apply_script",
]


def backup_timestamp(now: datetime) -> str:
    """``20261129T101500Z``: sorts chronologically, so pruning keeps the newest."""
    return now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


_APPLY_FUNCTIONS = """\
STEP_TIMEOUT={step_timeout}
swapped=()
erc_fail() {{ printf 'ERC-FAIL %s\\n' "$(erc_msg "$1" 2000)"; }}
erc_run() {{
  local label=$1 out rc
  shift
  out=$(timeout -k 10 "$STEP_TIMEOUT" "$@" < /dev/null 2>&1)
  rc=$?
  printf 'ERC-STEP %s %s %s\\n' "$label" "$rc" "$(erc_msg "$out" {log_bytes})"
  return $rc
}}
erc_restore() {{ "$erc_py" -c "$ERC_SRC" restore ${{swapped[@]+"${{swapped[@]}}"}}; }}
"""

_APPLY_FILES = """\
# 1-3. compare-and-swap, build, re-parse and check, back up and rename: all in the host program
out=$("$erc_py" -c "$ERC_SRC" apply {spec})
rc=$?
printf '%s\\n' "$out" | grep '^ERC-' | grep -v '^ERC-SWAPPED '
mapfile -t swapped < <(printf '%s\\n' "$out" | sed -n 's/^ERC-SWAPPED //p')
case $rc in
  0) ;;
  3) echo "ERC-RESULT Conflict"; echo "ERC-END"; exit 3 ;;
  4) echo "ERC-RESULT RolledBack"; echo "ERC-END"; exit 4 ;;
  *) if [ "${{#swapped[@]}}" -gt 0 ] && ! erc_restore; then echo "ERC-RESULT Failed"; echo "ERC-END"; exit 5; fi
     [ "${{#swapped[@]}}" -gt 0 ] && {{ echo "ERC-RESULT RolledBack"; echo "ERC-END"; exit 4; }}
     echo "ERC-RESULT Failed"; echo "ERC-END"; exit 1 ;;
esac
"""

_APPLY_RESTART = """\
# 4. restart what reads the changed files, verify; on failure restore the exact original bytes and restart
if ! erc_restart || ! erc_verify; then
  if erc_restore; then
    erc_rollback_restart || echo "ERC-WARN $(erc_msg "restart after restoring the backups failed")"
    echo "ERC-RESULT RolledBack"; echo "ERC-END"; exit 4
  fi
  echo "ERC-RESULT Failed"; echo "ERC-END"; exit 5
fi
"$erc_py" -c "$ERC_SRC" prune {prune} ${{swapped[@]+"${{swapped[@]}}"}} || echo "ERC-WARN $(erc_msg "could not prune old backups")"
"""


def _restart_function(name: str, label: str, restarts: Sequence[Sequence[str]], *, keep_going: bool) -> str:
    """Restarts in order; a push stops at the first failure, a rollback tries every one (best effort)."""
    on_error = "rc=1" if keep_going else "return 1"
    calls = [f"  erc_run {label}.{n} {_argv(argv)} || {on_error}" for n, argv in enumerate(restarts)]
    return f"{name}() {{\n" + "\n".join(["  local rc=0", *calls, "  return $rc"]) + "\n}"


def render_apply_script(
    plan: HostPlan,
    *,
    timestamp: str,
    step_timeout: int = STEP_TIMEOUT_SECONDS,
    systemctl: Sequence[str] = SYSTEMCTL,
    unit: str = LOCAL_MEMCACHED_UNIT,
    max_file_bytes: int = MAX_FILE_BYTES,
) -> str:
    """The one script that writes, restarts, verifies and rolls back a host; raises if over the size cap."""
    if not re.fullmatch(r"\d{8}T\d{6}Z", timestamp):
        raise ValueError(f"bad backup timestamp {timestamp!r}")
    n_steps = 2 * len(plan.restarts) + (1 if plan.verify else 0) + 2
    log_bytes = max(200, min(2000, 12_000 // n_steps))
    systemctl_q, unit_q = _argv(systemctl), _argv([unit])
    parts = [
        _prelude("apply"),
        python_finder(on_missing='echo "ERC-RESULT Failed"; echo "ERC-END"; exit 1'),
        _APPLY_FUNCTIONS.format(step_timeout=int(step_timeout), log_bytes=log_bytes),
        _restart_function("erc_restart", "restart", plan.restarts, keep_going=False),
        _restart_function("erc_rollback_restart", "rollback", plan.restarts, keep_going=True),
        f"erc_verify() {{ erc_run verify {_argv(plan.verify)}; }}"
        if plan.verify
        else "erc_verify() { return 0; }",
    ]
    if plan.memcached == "enable":  # revert: bring local memcached back before the hosts point at it
        parts.append(
            f"erc_run memcached.enable {systemctl_q} enable {unit_q} && "
            f"erc_run memcached.start {systemctl_q} start {unit_q} || "
            'echo "ERC-WARN $(erc_msg "could not re-enable the local memcached")"'
        )
    if plan.changes:
        spec = {
            "ts": timestamp,
            "suffix": BACKUP_SUFFIX,
            "max_bytes": int(max_file_bytes),
            "files": [
                {
                    "path": c.path,
                    "target": c.link_target,
                    "sha256": c.old_sha256,
                    "splices": [s.to_wire() for s in c.splices],
                }
                for c in plan.changes
            ],
        }
        parts.append(_APPLY_FILES.format(spec=_spec(spec)))
        parts.append(_APPLY_RESTART.format(prune=_spec({"suffix": BACKUP_SUFFIX, "keep": int(KEEP_BACKUPS)})))
    if plan.memcached == "disable":  # after a verified push: the hosts no longer need their own memcached
        parts.append(
            f"erc_run memcached.stop {systemctl_q} stop {unit_q} && "
            f"erc_run memcached.disable {systemctl_q} disable {unit_q} || "
            'echo "ERC-WARN $(erc_msg "could not stop and disable the local memcached")"'
        )
    parts.append('echo "ERC-RESULT Configured"\necho "ERC-END"\nexit 0\n')
    script = "\n".join(parts)
    if len(script) > MAX_SCRIPT_CHARS:
        raise PlanError(
            plan.changes[0].path if plan.changes else "-",
            f"the change needs a {len(script)}-character script, over the {MAX_SCRIPT_CHARS} a command may carry",
        )
    return script


def execution_timeout(plan: HostPlan, step_timeout: int = STEP_TIMEOUT_SECONDS) -> int:
    """Seconds the apply script may run: every step at its limit, plus slack for the file work."""
    steps = 2 * len(plan.restarts) + (1 if plan.verify else 0) + (2 if plan.memcached else 0)
    return int(steps * (step_timeout + 10) + 60)


@dataclass(frozen=True)
class StepLog:
    label: str
    exit_code: int
    output: str


@dataclass(frozen=True)
class ApplyOutcome:
    state: HostState
    steps: tuple[StepLog, ...] = ()
    conflicts: tuple[tuple[str, str], ...] = ()  # (path, what the host has now)
    backups: tuple[tuple[str, str], ...] = ()  # (path, backup path)
    warnings: tuple[str, ...] = ()
    failures: tuple[str, ...] = ()
    message: str = field(default="")
    new_sha256: tuple[tuple[str, str], ...] = ()  # (path, sha256) of each file the host wrote


def _describe_step(step: StepLog, restarts: Sequence[Sequence[str]], verify: Sequence[str]) -> str:
    kind, _, n = step.label.partition(".")
    argv: Sequence[str] = ()
    if kind in ("restart", "rollback") and n.isdigit() and int(n) < len(restarts):
        argv = restarts[int(n)]
    elif kind == "verify":
        argv = verify
    what = shlex.join(argv) if argv else step.label
    reason = "timed out" if step.exit_code in (124, 137) else f"exit {step.exit_code}"
    output = step.output.strip()
    return f"`{what}` failed ({reason})" + (f": {output[-600:]}" if output else "")


def parse_apply_output(stdout: str, plan: HostPlan, *, exit_code: int | None = None) -> ApplyOutcome:
    """Turn the apply script's lines into a host state and a message a person can act on."""
    paths = [c.path for c in plan.changes]
    try:
        lines = _lines(stdout, "apply")
    except ProtocolError as exc:
        return ApplyOutcome("Failed", message=f"{exc} (exit code {exit_code})")
    steps: list[StepLog] = []
    conflicts: list[tuple[str, str]] = []
    backups: list[tuple[str, str]] = []
    warnings: list[str] = []
    failures: list[str] = []
    written: list[tuple[str, str]] = []
    state: str | None = None
    for words in lines:
        tag = words[0]
        if tag == "ERC-STEP" and len(words) in (3, 4):
            steps.append(StepLog(words[1], int(words[2]), _b64text(words[3]) if len(words) == 4 else ""))
        elif tag == "ERC-CONFLICT" and len(words) == 3:
            conflicts.append((paths[_index(words[1], len(paths))], _b64text(words[2])))
        elif tag == "ERC-BACKUP" and len(words) == 3:
            backups.append((paths[_index(words[1], len(paths))], _b64text(words[2])))
        elif tag == "ERC-NEWSHA" and len(words) == 3 and _SHA256.match(words[2]):
            written.append((paths[_index(words[1], len(paths))], words[2]))
        elif tag == "ERC-NOPYTHON" and len(words) == 2:
            failures.append("no Python >= 3.8 with PyYAML on the host: " + _b64text(words[1]))
        elif tag == "ERC-WARN" and len(words) == 2:
            warnings.append(_b64text(words[1]))
        elif tag == "ERC-FAIL" and len(words) == 2:
            failures.append(_b64text(words[1]))
        elif tag == "ERC-RESULT" and len(words) == 2 and words[1] in HOST_STATES:
            state = words[1]
        elif tag == "ERC-WROTE":
            continue
        else:
            return ApplyOutcome(
                "Failed", message=f"unexpected line in apply output: {' '.join(words)[:120]!r}"
            )
    if state is None:
        return ApplyOutcome("Failed", message=f"apply script reported no result (exit code {exit_code})")
    failed_steps = [s for s in steps if s.exit_code != 0 and not s.label.startswith("memcached.")]
    memcached_failed = [s for s in steps if s.exit_code != 0 and s.label.startswith("memcached.")]
    parts: list[str] = []
    if state == "Conflict":
        parts.append(
            "changed on the host since it was read, nothing written: "
            + ", ".join(f"{p} (now {w[:12]})" if _SHA256.match(w) else f"{p} ({w})" for p, w in conflicts)
        )
    elif state in ("RolledBack", "Failed"):
        parts.extend(_describe_step(s, plan.restarts, plan.verify) for s in failed_steps[:1])
        parts.extend(failures)
        if state == "RolledBack":
            parts.append(f"restored {len(backups)} file(s) from backup and restarted")
    parts.extend(_describe_step(s, plan.restarts, plan.verify) for s in memcached_failed)
    parts.extend(warnings)
    return ApplyOutcome(
        state=state,  # type: ignore[arg-type]
        steps=tuple(steps),
        conflicts=tuple(conflicts),
        backups=tuple(backups),
        warnings=tuple(warnings),
        failures=tuple(failures),
        message="; ".join(parts),
        new_sha256=tuple(written),
    )
