"""Apply script."""

from __future__ import annotations

import base64
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from edx_remote_cache.domain.hosts.plan import (
    HostPlan,
)
from edx_remote_cache.domain.hosts.protocol import (
    BACKUP_SUFFIX,
    KEEP_BACKUPS,
    LOCAL_MEMCACHED_UNIT,
    MAX_SCRIPT_CHARS,
    STEP_TIMEOUT_SECONDS,
    SYSTEMCTL,
    PlanError,
    ProtocolError,
    _argv,
    _b64text,
    _bash_array,
    _check_path,
    _index,
    _lines,
    _prelude,
    _q,
)
from edx_remote_cache.domain.hosts.result import (
    HOST_STATES,
    HostState,
)
from edx_remote_cache.domain.hosts.splice import (
    Copy,
    Segment,
)


def backup_timestamp(now: datetime) -> str:
    """``20261129T101500Z``: sorts chronologically, so pruning keeps the newest."""
    return now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


# ------------------------------------------------------------------------------------------- apply script

_APPLY_FUNCTIONS = """\
STEP_TIMEOUT={step_timeout}
TS={ts}
tmps=()
swapped=()
cleanup() {{ local t; for t in ${{tmps[@]+"${{tmps[@]}}"}}; do rm -f -- "$t"; done; }}
trap cleanup EXIT
erc_sha() {{ local s; s=$(sha256sum < "$1") || return 1; printf '%s' "${{s%% *}}"; }}
erc_copy() {{ dd if="$1" iflag=skip_bytes,count_bytes skip="$2" count="$3" bs=65536 status=none; }}
erc_data() {{ printf '%s' "$1" | base64 -d; }}
erc_fail() {{ printf 'ERC-FAIL %s\\n' "$(erc_msg "$1" 2000)"; }}
erc_run() {{
  local label=$1 out rc
  shift
  out=$(timeout -k 10 "$STEP_TIMEOUT" "$@" < /dev/null 2>&1)
  rc=$?
  printf 'ERC-STEP %s %s %s\\n' "$label" "$rc" "$(erc_msg "$out" {log_bytes})"
  return $rc
}}
erc_restore() {{
  local i ok=0 r
  for i in ${{swapped[@]+"${{swapped[@]}}"}}; do
    r=$(mktemp -- "${{paths[$i]}}.erc-tmp.XXXXXX") && tmps+=("$r") \\
      && cp -p -- "${{baks[$i]}}" "$r" && mv -f -- "$r" "${{paths[$i]}}" \\
      && [ "$(erc_sha "${{paths[$i]}}")" = "${{old[$i]}}" ] || {{ erc_fail "could not restore ${{paths[$i]}}"; ok=1; }}
  done
  return $ok
}}
erc_prune() {{
  local p=$1 n
  local -a found
  shopt -s nullglob
  found=("$p"{backup_glob})
  shopt -u nullglob
  n=$(( ${{#found[@]}} - {keep} ))
  if [ "$n" -gt 0 ]; then rm -f -- "${{found[@]:0:$n}}"; fi
}}
"""

_APPLY_CHECK = """\
# 1. compare-before-write: every file must still be what the operator read, before any is touched
conflict=0
for i in ${!paths[@]}; do
  p=${paths[$i]}
  if [ -L "$p" ] || [ ! -f "$p" ]; then cur=missing; else cur=$(erc_sha "$p") || cur=unreadable; fi
  if [ "$cur" != "${old[$i]}" ]; then echo "ERC-CONFLICT $i $cur"; conflict=1; fi
done
if [ "$conflict" != 0 ]; then echo "ERC-RESULT Conflict"; echo "ERC-END"; exit 3; fi

# 2. build each new file next to the old one (same owner and mode) and check its sha256
for i in ${!paths[@]}; do
  p=${paths[$i]}
  t=$(mktemp -- "$p.erc-tmp.XXXXXX") || { erc_fail "cannot create a temporary file next to $p"; echo "ERC-RESULT Failed"; echo "ERC-END"; exit 1; }
  tmps+=("$t")
  tmp[$i]=$t
  if ! out=$( { "erc_build_$i" "$p" > "$t"; } 2>&1 ); then
    erc_fail "cannot write the new $p: $out"; echo "ERC-RESULT Failed"; echo "ERC-END"; exit 1
  fi
  got=$(erc_sha "$t")
  if [ "$got" != "${new[$i]}" ]; then echo "ERC-CONFLICT $i rebuilt:$got"; echo "ERC-RESULT Conflict"; echo "ERC-END"; exit 3; fi
  if ! out=$( { chown --reference="$p" -- "$t" && chmod --reference="$p" -- "$t"; } 2>&1 ); then
    erc_fail "cannot copy owner/mode of $p: $out"; echo "ERC-RESULT Failed"; echo "ERC-END"; exit 1
  fi
done

# 3. last look, then back up (hard link: exact bytes, owner, mode, mtime) and rename into place
for i in ${!paths[@]}; do
  if [ "$(erc_sha "${paths[$i]}")" != "${old[$i]}" ]; then echo "ERC-CONFLICT $i changed"; echo "ERC-RESULT Conflict"; echo "ERC-END"; exit 3; fi
done
for i in ${!paths[@]}; do
  p=${paths[$i]}
  b="$p{suffix}$TS"; n=0
  while [ -e "$b" ]; do n=$((n + 1)); b="$p{suffix}$TS.$n"; done
  if ! ln -- "$p" "$b" 2>/dev/null && ! cp -p -- "$p" "$b"; then
    erc_fail "cannot back up $p"; echo "ERC-RESULT Failed"; echo "ERC-END"; exit 1
  fi
  baks[$i]=$b
  echo "ERC-BACKUP $i ${b#"$p{suffix}"}"
done
for i in ${!paths[@]}; do
  if mv -f -- "${tmp[$i]}" "${paths[$i]}"; then
    swapped+=("$i")
  else
    erc_fail "cannot rename the new ${paths[$i]} into place"
    if erc_restore; then echo "ERC-RESULT RolledBack"; echo "ERC-END"; exit 4; fi
    echo "ERC-RESULT Failed"; echo "ERC-END"; exit 5
  fi
done
echo "ERC-WROTE ${#swapped[@]}"
"""


def _build_function(index: int, segments: Sequence[Segment]) -> str:
    body = []
    for seg in segments:
        if isinstance(seg, Copy):
            body.append(f'  erc_copy "$1" {int(seg.start)} {int(seg.length)} || return 1')
        else:
            body.append(f"  erc_data {_q(base64.b64encode(seg.content).decode('ascii'))} || return 1")
    body.append("  return 0")
    return f"erc_build_{index}() {{\n" + "\n".join(body) + "\n}"


def _restart_function(name: str, label: str, restarts: Sequence[Sequence[str]], *, keep_going: bool) -> str:
    """Restarts in order; a push stops at the first failure, a rollback tries every one (best effort)."""
    on_error = "rc=1" if keep_going else "return 1"
    calls = [f"  erc_run {label}.{n} {_argv(argv)} || {on_error}" for n, argv in enumerate(restarts)]
    return f"{name}() {{\n" + "\n".join(["  local rc=0", *calls, "  return $rc"]) + "\n}"


_APPLY_RESTART = """\
# 4. restart what reads the changed files, verify; on failure restore the exact original bytes and restart
if ! erc_restart || ! erc_verify; then
  if erc_restore; then
    erc_rollback_restart || echo "ERC-WARN $(erc_msg "restart after restoring the backups failed")"
    echo "ERC-RESULT RolledBack"; echo "ERC-END"; exit 4
  fi
  echo "ERC-RESULT Failed"; echo "ERC-END"; exit 5
fi
for p in "${paths[@]}"; do erc_prune "$p"; done
"""


def render_apply_script(
    plan: HostPlan,
    *,
    timestamp: str,
    step_timeout: int = STEP_TIMEOUT_SECONDS,
    systemctl: Sequence[str] = SYSTEMCTL,
    unit: str = LOCAL_MEMCACHED_UNIT,
) -> str:
    """The one script that writes, restarts, verifies and rolls back a host; raises if over the size cap."""
    if not re.fullmatch(r"\d{8}T\d{6}Z", timestamp):
        raise ValueError(f"bad backup timestamp {timestamp!r}")
    n_steps = 2 * len(plan.restarts) + (1 if plan.verify else 0) + 2
    log_bytes = max(200, min(2000, 12_000 // n_steps))
    systemctl_q, unit_q = _argv(systemctl), _q(unit)
    parts = [
        _prelude("apply"),
        _bash_array("paths", (_check_path(c.path) for c in plan.changes)),
        _bash_array("old", (c.old_sha256 for c in plan.changes)),
        _bash_array("new", (c.new_sha256 for c in plan.changes)),
        "declare -a tmp=() baks=()",
        _APPLY_FUNCTIONS.format(
            step_timeout=int(step_timeout),
            ts=_q(timestamp),
            log_bytes=log_bytes,
            backup_glob=BACKUP_SUFFIX + "*",
            keep=int(KEEP_BACKUPS),
        ),
        *(_build_function(i, c.segments) for i, c in enumerate(plan.changes)),
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
        parts.append(_APPLY_CHECK.replace("{suffix}", BACKUP_SUFFIX))
        parts.append(_APPLY_RESTART)
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
    state: str | None = None
    for words in lines:
        tag = words[0]
        if tag == "ERC-STEP" and len(words) in (3, 4):
            steps.append(StepLog(words[1], int(words[2]), _b64text(words[3]) if len(words) == 4 else ""))
        elif tag == "ERC-CONFLICT" and len(words) == 3:
            conflicts.append((paths[_index(words[1], len(paths))], words[2]))
        elif tag == "ERC-BACKUP" and len(words) == 3:
            path = paths[_index(words[1], len(paths))]
            backups.append((path, path + BACKUP_SUFFIX + words[2]))
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
            + ", ".join(f"{p} (now {w[:12]})" for p, w in conflicts)
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
    )
