"""Status conditions, phase and health block for an EdxRemoteCache, computed from observed facts. PURE.

Follows kstatus / Argo CD habits so generic tooling understands the object:

* ``Ready`` is the normal-true summary (``kubectl wait --for=condition=Ready``).
* ``Reconciling`` and ``Stalled`` are abnormal-true: ``True`` means "not done yet" / "stuck until a human
  acts"; when Stalled is True, Reconciling is False.
* ``InstanceReady``, ``SecurityGroupReady``, ``HostsConfigured`` and ``CacheHealthy`` say which part is
  not right. ``Unknown`` means not observed yet, never "probably fine".
* Every condition carries ``observedGeneration``; ``lastTransitionTime`` only moves when the status flips.

Messages are built from facts only (no timestamps, no latencies) so an unchanged world writes an unchanged
status. Nothing here does I/O or imports an adapter: probe results arrive as mappings or plain objects.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

__all__ = [
    "CONDITION_TYPES",
    "HEARTBEAT_FIELDS",
    "LATENCY_BUCKETS_MS",
    "PHASES",
    "ROLLOUT_ERROR_STATES",
    "Facts",
    "bucket_latency_ms",
    "compute_conditions",
    "compute_phase",
    "count_rollout_errors",
    "health_status",
    "rfc3339",
    "status_changed",
]

CONDITION_TYPES = (
    "Ready",
    "Reconciling",
    "Stalled",
    "InstanceReady",
    "SecurityGroupReady",
    "HostsConfigured",
    "CacheHealthy",
)
PHASES = (
    "Pending",
    "Provisioning",
    "Configuring",
    "Ready",
    "Degraded",
    "Healing",
    "Stalled",
    "Paused",
    "Deleting",
)

# Fields that move on every probe of a perfectly idle cache. status_changed() ignores them so the operator
# does not patch the object every probe interval; they are written whenever anything else changes.
# A memcached restart (which empties the cache) still counts as a change through health.startTime.
HEARTBEAT_FIELDS: tuple[tuple[str, ...], ...] = (("health", "lastProbeTime"), ("health", "uptimeSeconds"))

# 1-2-5 buckets: loopback/same-AZ jitter (0.1-0.9 ms) all lands in "1", real slowdowns still show.
LATENCY_BUCKETS_MS: tuple[float, ...] = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)

# Host push states that count against `openedx.rollout.maxErrors`: a restart or verify that failed (RolledBack),
# a push that could not be done (Failed: unreadable, unparseable or templated files), a file a human changed
# (Conflict), and an agent that was offline (Unreachable). Nothing was written to an Unreachable host, but it
# still runs the old LOCATIONs while the rest move: pushing on would split the site across two caches.
ROLLOUT_ERROR_STATES: frozenset[str] = frozenset({"Conflict", "RolledBack", "Failed", "Unreachable"})

_MAX_LISTED_PROBLEMS = 5
_START_TIME_TOLERANCE = timedelta(seconds=5)
_AWS_CODE = re.compile(r"^\s*([A-Za-z][A-Za-z0-9.]*)\s*[:(]")


@dataclass(frozen=True)
class Facts:
    """What the operator observed this pass. Defaults describe "nothing observed yet".

    The ``*_message`` strings and ``host_problems`` go into condition messages verbatim: keep them free of
    timestamps and latencies, or an unchanged world will still rewrite the status.
    """

    generation: int
    paused: bool = False
    paused_by: str = "spec.paused"  # which switch paused it: spec.paused or the pause annotation
    spec_error: str | None = None  # "spec.instanceType: ... ; fix: ..."; terminal until the spec changes
    terminal_error: str | None = None  # e.g. "UnauthorizedOperation: You are not authorized ..."; terminal
    instances_desired: int = 1
    instances_running: int = 0
    instance_message: str = ""
    security_group_ready: bool | None = None  # None = not yet known
    security_group_message: str = ""
    hosts_total: int = 0
    hosts_configured: int = 0
    host_problems: tuple[str, ...] = ()  # "i-0abc: Unreachable (agent ConnectionLost)"
    hosts_not_found: tuple[
        str, ...
    ] = ()  # "i-0abc: no live instance in us-east-1 (unknown id or terminated)", "i-0def: terminated"
    rollout_halted: str = ""  # why the rollout stopped at maxErrors and which hosts it holds; "" = not halted
    cache_healthy: bool | None = None  # None = not probed yet
    cache_message: str = ""
    # CacheHealthy=Unknown with this reason (ProbePathBlocked, HealingSuspended): the operator's probes fail but
    # nothing confirmed the cache is down; cache_served says another vantage sees it answer (Ready follows that)
    cache_unknown_reason: str = ""
    cache_served: bool = False
    cache_reason: str = ""  # why CacheHealthy is False when not the operator's probes (BootFailed)
    cold_cache: bool = False  # fresh cache after a replacement: hit ratio ~0 is expected, not a failure
    converging: bool = False  # the plan still has actions
    healing: str | None = None  # current heal step, e.g. "replacing i-0abc (unreachable for 5m)"
    # a retryable AWS/SSM error being retried: Reconciling's reason (AwsRetrying, SsmRetrying) and message
    # (code, message, attempt, next retry time: it changes with every attempt, and is written with each)
    retry_reason: str = ""
    retry_message: str = ""
    # hosts another object manages ("i-0abc: managed by ns/name"): never touched by this one
    hosts_claimed: tuple[str, ...] = ()
    deleting: bool = False


# ---------------------------------------------------------------------------------------------- helpers


def rfc3339(moment: datetime) -> str:
    """``2024-05-01T12:00:00Z``; naive datetimes are taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_rfc3339(text: Any) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _reason_from_error(text: str, default: str) -> str:
    """``"InvalidAMIID.NotFound: ..."`` → ``InvalidAMIIDNotFound``; anything else → ``default``."""
    match = _AWS_CODE.match(text)
    if not match:
        return default
    reason = re.sub(r"[^A-Za-z0-9]", "", match.group(1))
    return reason if reason and reason[0].isupper() else default


def _problems_text(problems: Sequence[str]) -> str:
    listed = "; ".join(problems[:_MAX_LISTED_PROBLEMS])
    extra = len(problems) - _MAX_LISTED_PROBLEMS
    return f"{listed}; and {extra} more" if extra > 0 else listed


def _stalled(facts: Facts) -> tuple[str, str] | None:
    """(reason, message) when a human must act first."""
    if facts.spec_error:
        return "InvalidSpec", f"invalid spec: {facts.spec_error}"
    if facts.terminal_error:
        return _reason_from_error(facts.terminal_error, "TerminalError"), facts.terminal_error
    return None


def _instances_ok(facts: Facts) -> bool:
    return facts.instances_running >= facts.instances_desired


def _hosts_ok(facts: Facts) -> bool:
    if facts.host_problems or facts.rollout_halted or facts.hosts_not_found or facts.hosts_claimed:
        return False
    if facts.hosts_total == 0:
        return facts.instances_desired == 0
    return facts.hosts_configured >= facts.hosts_total


def _all_parts_ok(facts: Facts) -> bool:
    return (
        _instances_ok(facts) and facts.security_group_ready is True and _hosts_ok(facts) and _cache_ok(facts)
    )


def _cache_ok(facts: Facts) -> bool:
    """The site's cache answers: from the operator, or (its own path blocked) from the hosts that use it."""
    return facts.cache_healthy is True or facts.cache_served


# ------------------------------------------------------------------------------------- part conditions
# Each returns (status, reason, message).


def _instance_condition(facts: Facts) -> tuple[str, str, str]:
    counts = f"{facts.instances_running}/{facts.instances_desired} instances running"
    message = f"{counts}: {facts.instance_message}" if facts.instance_message else counts
    if _instances_ok(facts):
        return "True", "InstancesRunning", message
    if facts.instances_running == 0:
        return "False", "InstancesNotRunning", message
    return "False", "InstancesPending", message


def _security_group_condition(facts: Facts) -> tuple[str, str, str]:
    extra = facts.security_group_message
    if facts.security_group_ready is None:
        return "Unknown", "SecurityGroupNotObserved", extra or "security group not observed yet"
    if facts.security_group_ready:
        return "True", "SecurityGroupReady", extra or "security group exists with the expected rules"
    return "False", "SecurityGroupNotReady", extra or "security group missing or its rules differ from spec"


def _hosts_condition(facts: Facts) -> tuple[str, str, str]:
    counts = f"{facts.hosts_configured}/{facts.hosts_total} hosts configured"
    if facts.hosts_not_found:  # a typo or a terminated host must not hide behind "2/2 hosts configured"
        missing = f"not found: {_problems_text(facts.hosts_not_found)}"
        return "False", "HostNotFound", f"{counts}; {missing}"
    if facts.rollout_halted:
        return "False", "RolloutHalted", f"{counts}; {facts.rollout_halted}"
    if facts.hosts_claimed:  # settled until the other object lets go (or this spec changes): not "waiting"
        problems = _problems_text([*facts.hosts_claimed, *facts.host_problems])
        return "False", "HostClaimed", f"{counts}; {problems}"
    if facts.host_problems:
        return "False", "HostProblems", f"{counts}; {_problems_text(facts.host_problems)}"
    if facts.hosts_total == 0:
        if facts.instances_desired == 0:
            return "True", "NoHostsNeeded", "no instances desired"
        return "Unknown", "AwaitingInstances", "no hosts to configure until an instance is running"
    if facts.hosts_configured >= facts.hosts_total:
        return "True", "HostsConfigured", counts
    return "False", "HostsConfiguring", counts


def _cache_condition(facts: Facts) -> tuple[str, str, str]:
    extra = facts.cache_message
    if facts.cache_unknown_reason:
        return "Unknown", facts.cache_unknown_reason, extra
    if facts.cache_healthy is None:
        return "Unknown", "CacheNotProbed", extra or "cache not probed yet"
    if not facts.cache_healthy:
        return "False", facts.cache_reason or "CacheUnhealthy", extra or "cache probe failed"
    if facts.cold_cache:
        note = "cache is cold after a replacement; a low hit ratio is expected while it warms up"
        return "True", "CacheCold", f"{extra}; {note}" if extra else note
    return "True", "CacheHealthy", extra or "cache answers and the canary round trip works"


# ---------------------------------------------------------------------------------- summary conditions


def _ready_condition(facts: Facts, parts: Mapping[str, tuple[str, str, str]]) -> tuple[str, str, str]:
    stalled = _stalled(facts)
    if facts.deleting:
        return "False", "Deleting", "resources are being deleted"
    if stalled:
        return "False", stalled[0], stalled[1]
    if facts.healing:
        return "False", "Healing", f"healing: {facts.healing}"
    failing = [
        (t, reason, msg)
        for t, (status, reason, msg) in parts.items()
        if status != "True" and not (t == "CacheHealthy" and facts.cache_served)
    ]
    if not failing:
        message = "; ".join(msg for _, _, msg in parts.values())
        return "True", "Ready", f"paused; {message}" if facts.paused else message
    # the first part that is not right names the reason (InstancesPending, HostProblems, CacheUnhealthy, ...)
    message = "; ".join(f"{t}: {msg}" for t, _, msg in failing)
    return "False", failing[0][1], f"paused; {message}" if facts.paused else message


def _waiting_on(facts: Facts) -> str | None:
    """What a not-yet-ready object is still waiting for (no problem observed), if anything."""
    if not _instances_ok(facts):
        return "instances to start"
    if facts.security_group_ready is None:
        return "the security group to be observed"
    if (
        not facts.host_problems
        and not facts.hosts_not_found
        and not facts.hosts_claimed
        and (
            facts.hosts_configured < facts.hosts_total or (facts.hosts_total == 0 and facts.instances_desired)
        )
    ):
        return "hosts to be configured"
    if facts.cache_healthy is None and not facts.cache_served and not facts.cache_unknown_reason:
        return "the first cache probe"
    return None


def _reconciling_condition(facts: Facts) -> tuple[str, str, str]:
    stalled = _stalled(facts)
    if stalled:
        return "False", "Stalled", f"stalled ({stalled[0]}); no progress until the cause is fixed"
    if facts.deleting:
        return "True", "Deleting", "deleting cloud resources"
    if facts.paused:
        return "False", "Paused", f"reconciliation is paused ({facts.paused_by}); nothing will be changed"
    if facts.retry_message:
        return "True", facts.retry_reason or "AwsRetrying", facts.retry_message
    if facts.healing:
        return "True", "Healing", f"healing: {facts.healing}"
    if facts.rollout_halted and not facts.converging:
        return "False", "RolloutHalted", "the host rollout is halted at rollout.maxErrors until resumed"
    if facts.converging:
        return "True", "Progressing", "applying changes to reach the desired state"
    waiting = _waiting_on(facts)
    if waiting:
        return "True", "Waiting", f"waiting for {waiting}"
    return "False", "NoPendingChanges", "no pending changes"


def _stalled_condition(facts: Facts) -> tuple[str, str, str]:
    stalled = _stalled(facts)
    if stalled:
        return "True", stalled[0], stalled[1]
    return "False", "NoTerminalError", "no terminal error"


# -------------------------------------------------------------------------------------------- public


def compute_conditions(
    facts: Facts, *, previous: Sequence[Mapping[str, Any]], now: datetime
) -> list[dict[str, Any]]:
    """The 7 conditions in :data:`CONDITION_TYPES` order; lastTransitionTime kept unless status flipped."""
    parts = {
        "InstanceReady": _instance_condition(facts),
        "SecurityGroupReady": _security_group_condition(facts),
        "HostsConfigured": _hosts_condition(facts),
        "CacheHealthy": _cache_condition(facts),
    }
    computed = {
        "Ready": _ready_condition(facts, parts),
        "Reconciling": _reconciling_condition(facts),
        "Stalled": _stalled_condition(facts),
        **parts,
    }
    before = {c.get("type"): c for c in previous if isinstance(c, Mapping)}
    stamp = rfc3339(now)
    conditions: list[dict[str, Any]] = []
    for ctype in CONDITION_TYPES:
        status, reason, message = computed[ctype]
        old = before.get(ctype)
        kept = old.get("lastTransitionTime") if old is not None and old.get("status") == status else None
        conditions.append(
            {
                "type": ctype,
                "status": status,
                "observedGeneration": facts.generation,
                "lastTransitionTime": kept if isinstance(kept, str) and kept else stamp,
                "reason": reason,
                "message": message,
            }
        )
    return conditions


def compute_phase(facts: Facts) -> str:
    """One word for ``kubectl get`` (see :data:`PHASES`); the conditions carry the detail."""
    if facts.deleting:
        return "Deleting"
    if _stalled(facts):
        return "Stalled"
    if facts.paused:
        return "Paused"
    if facts.healing:
        return "Healing"
    if _all_parts_ok(facts):
        return "Ready"
    cache_doubtful = facts.cache_healthy is False or bool(facts.cache_unknown_reason)
    if (
        facts.host_problems
        or facts.rollout_halted
        or facts.hosts_not_found
        or facts.hosts_claimed
        or cache_doubtful
    ):
        return "Degraded"
    if not _instances_ok(facts) or facts.security_group_ready is not True:
        nothing_yet = facts.instances_running == 0 and facts.security_group_ready is None
        return "Pending" if nothing_yet and not facts.converging else "Provisioning"
    return "Configuring"


def count_rollout_errors(states: Iterable[str]) -> int:
    """How many of these host states count against rollout.maxErrors (see ROLLOUT_ERROR_STATES)."""
    return sum(1 for state in states if state in ROLLOUT_ERROR_STATES)


def _heartbeat_trie(fields: Iterable[tuple[str, ...]]) -> dict[str, Any]:
    """HEARTBEAT_FIELDS as nested dicts; a leaf (None) marks a field to drop."""
    trie: dict[str, Any] = {}
    for path in fields:
        node = trie
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = None
    return trie


_HEARTBEAT_TRIE = _heartbeat_trie(HEARTBEAT_FIELDS)
_LEAF: dict[str, Any] = {}  # sentinel: "no heartbeat field below this key" (compared by identity)


def _strip(value: Any, trie: dict[str, Any] | None = _HEARTBEAT_TRIE) -> Any:
    """Drop heartbeat fields and None values (a merge patch with null deletes the key: same thing)."""
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if v is None:
                continue
            below = trie.get(k, _LEAF) if trie else _LEAF
            if below is None:  # a heartbeat field
                continue
            out[k] = _strip(v, None if below is _LEAF else below)
        return out
    if isinstance(value, list | tuple):
        return [_strip(v, trie) for v in value]
    return value


def _same(a: Any, b: Any, trie: dict[str, Any] | None) -> bool:
    """``_strip(a) == _strip(b)`` without building either: equal subtrees are compared at C speed."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for k in a.keys() | b.keys():
            below = trie.get(k, _LEAF) if trie else _LEAF
            if below is None:  # a heartbeat field
                continue
            va, vb = a.get(k), b.get(k)
            if va is None or vb is None:
                if va is not vb:  # absent / null on one side only
                    return False
                continue
            if (below is _LEAF and va == vb) or _same(va, vb, None if below is _LEAF else below):
                continue
            return False
        return True
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(x == y or _same(x, y, trie) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def status_changed(old_status: Mapping[str, Any], new_status: Mapping[str, Any]) -> bool:
    """True when writing ``new_status`` would tell a reader something new (heartbeats ignored).

    Runs on every status write decision (hundreds a minute at scale): equal to ``_strip(old) != _strip(new)``.
    """
    return not _same(old_status, new_status, _HEARTBEAT_TRIE)


def bucket_latency_ms(x: float) -> float:
    """Round a latency up to a 1-2-5 bucket (1, 2, 5, 10 … 10000 ms) so jitter causes no status churn."""
    if math.isnan(x) or x <= 0:
        return float(LATENCY_BUCKETS_MS[0])
    for bound in LATENCY_BUCKETS_MS:
        if x <= bound:
            return float(bound)
    return float(math.ceil(x / LATENCY_BUCKETS_MS[-1]) * LATENCY_BUCKETS_MS[-1])


def _field(result: Mapping[str, Any] | object, name: str) -> Any:
    if isinstance(result, Mapping):
        return result.get(name)
    return getattr(result, name, None)


def _start_time(now: datetime, uptime: Any, previous: Mapping[str, Any] | None) -> str | None:
    """When the memcached process started, stable across probes (kept from ``previous`` within 5 s)."""
    if not isinstance(uptime, int | float) or isinstance(uptime, bool):
        return None
    when = now - timedelta(seconds=float(uptime))
    old = _parse_rfc3339(previous.get("startTime")) if previous else None
    if old is not None and abs(old - when) <= _START_TIME_TOLERANCE:
        return rfc3339(old)
    return rfc3339(when)


def health_status(
    result: Mapping[str, Any] | object,
    *,
    now: datetime,
    consecutive_failures: int = 0,
    previous: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Build ``status.health`` from one probe result (a ProbeResult, its ``to_dict()``, or any mapping).

    Churn policy: ``lastProbeTime`` and ``uptimeSeconds`` (exact, as of lastProbeTime) are heartbeats,
    ignored by :func:`status_changed`; ``startTime`` (now - uptime, held steady via ``previous``) changes
    only when memcached restarts; ``latencyMs`` is bucketed; ``hitRatio`` has 2 decimals. Unknown
    figures are None (write them as null so a merge patch clears stale values).
    """
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    hits, misses = _field(result, "get_hits"), _field(result, "get_misses")
    ratio: float | None = None
    if isinstance(hits, int) and isinstance(misses, int) and hits + misses > 0:
        ratio = round(hits / (hits + misses), 2)
    latency = _field(result, "latency_ms")
    reachable = bool(_field(result, "reachable"))
    canary_ok = bool(_field(result, "canary_ok"))
    error_kind, error = _field(result, "error_kind"), _field(result, "error")
    uptime = _field(result, "uptime_seconds")
    return {
        "lastProbeTime": rfc3339(now),
        "reachable": reachable,
        "canaryOk": canary_ok,
        "lastError": (f"{error_kind}: {error}" if error else str(error_kind)) if error_kind else None,
        "version": _field(result, "version"),
        "uptimeSeconds": uptime,
        "startTime": _start_time(now, uptime, previous),
        "currConnections": _field(result, "curr_connections"),
        "maxConnections": _field(result, "max_connections"),
        "hitRatio": ratio,
        "hitRatioPercent": None if ratio is None else f"{round(ratio * 100)}%",
        "evictions": _field(result, "evictions"),
        "bytes": _field(result, "bytes"),
        "limitMaxbytes": _field(result, "limit_maxbytes"),
        "latencyMs": None if not isinstance(latency, int | float) else bucket_latency_ms(float(latency)),
        "consecutiveFailures": consecutive_failures,
    }
