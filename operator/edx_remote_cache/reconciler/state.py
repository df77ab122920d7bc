"""What the reconciler remembers about each object, and the adapters it is handed.

Everything here is data: the per-object memory (`ResourceState`, rebuilt from `status` after a restart), the
object's identity (`ObjectRef`), the launch/replacement record kept in `status.progress`, and `Adapters`, the
bundle of outside systems the operator (app/wiring.py) or a test (tests/reconciler) builds and passes in.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

from edx_remote_cache.adapters import aws, host_push, probe
from edx_remote_cache.adapters.aws import AwsClients, CloudLookups, EdxHostDirectory, RegionObserver, console
from edx_remote_cache.adapters.host_drift import HostDriftChecker
from edx_remote_cache.adapters.host_push import HostPushResult
from edx_remote_cache.adapters.metrics import Metrics
from edx_remote_cache.adapters.ports import EventSink, HostClaims, StatusWriter
from edx_remote_cache.adapters.probe import ProbeResult
from edx_remote_cache.adapters.ssm import SsmAdapter
from edx_remote_cache.domain.claims import NO_RIVALS
from edx_remote_cache.domain.cloud.actions import ActResult, Plan
from edx_remote_cache.domain.cloud.desired import DesiredCacheHost
from edx_remote_cache.domain.cloud.model import ObservedCloud, Owner
from edx_remote_cache.domain.conditions import Facts
from edx_remote_cache.domain.hosts.drift import HostReach
from edx_remote_cache.domain.spec import EdxRemoteCacheSpec
from edx_remote_cache.domain.vantage import Doubt, HostOpinion
from edx_remote_cache.reconciler.retrying import RetryRecord

PAUSE_ANNOTATION = "edx-remote-cache.openedx.org/paused"
# Set (to any new value) to resume a rollout halted at openedx.rollout.maxErrors; the value present when the
# rollout halted does not count, so an old annotation never resumes a new halt by itself.
RESUME_ANNOTATION = "edx-remote-cache.openedx.org/resume-rollout"


class RequeueError(Exception):
    """The pass made progress but is not finished (AWS still converging, a retryable error): try again soon."""

    def __init__(self, message: str, delay: float = 5.0) -> None:
        super().__init__(message)
        self.delay = delay


@dataclasses.dataclass
class Adapters:
    """Every outside system, injected. Factories are per region; the operator caches what they return."""

    clients: Callable[[str], AwsClients]
    observer: Callable[[str, float], RegionObserver]
    edx_hosts: Callable[[str, float], EdxHostDirectory]
    lookups: Callable[[str], CloudLookups]
    ssm: Callable[[str], SsmAdapter]
    host_drift: Callable[[str, float], HostDriftChecker]
    status: StatusWriter
    events: EventSink
    metrics: Metrics
    clock: Callable[[], float] = time.time
    probe_sources: tuple[
        str, ...
    ] = ()  # the operator's own source (sg ids / CIDRs), allowed on every cache group
    # the steps' calls into the world, replaceable as a whole in tests/reconciler (no sandbox needed there)
    act: Callable[..., ActResult] = aws.act
    push_hosts: Callable[..., list[HostPushResult]] = host_push.push_hosts
    revert_hosts: Callable[..., list[HostPushResult]] = host_push.revert_hosts
    probe_all: Callable[..., Awaitable[list[ProbeResult]]] = probe.probe_all
    probe_source_address: Callable[[str], str | None] = probe.source_address  # named in ProbePathBlocked
    console_output: Callable[[AwsClients, str], str] = (
        console.console_output
    )  # a boot log (reconciler/boot.py)
    claims: HostClaims = NO_RIVALS  # who else names each Open edX host (the operator: a kopf index)


class ObjectRef(NamedTuple):
    """Who an EdxRemoteCache is: what every step needs of its metadata."""

    namespace: str
    name: str
    uid: str
    generation: int

    @classmethod
    def of(cls, obj: Mapping[str, Any]) -> ObjectRef:
        meta = obj.get("metadata") or {}
        return cls(
            meta.get("namespace", "default"),
            meta["name"],
            meta.get("uid", ""),
            int(meta.get("generation") or 1),
        )

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def owner(self) -> Owner:
        return Owner(self.namespace, self.name, self.uid)


class HostAttempt(NamedTuple):
    """A host's last push that ended RolledBack / Failed / Conflict: what the back-off is computed from."""

    time: float
    generation: int
    endpoints: tuple[str, ...]
    failures: int


@dataclasses.dataclass
class ResourceState:
    """What the operator remembers about one resource between passes (rebuilt from status after a restart)."""

    lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)
    status: dict[str, Any] = dataclasses.field(default_factory=dict)
    written_at: float = 0.0
    facts: Facts | None = None
    spec: EdxRemoteCacheSpec | None = None
    stalled_generation: int | None = None
    consecutive_failures: int = 0
    failing_since: float | None = None  # when the current run of failed probe rounds began (clock time)
    last_probe: list[ProbeResult] = dataclasses.field(default_factory=list)
    healing: str | None = None
    restarted_at: dict[str, float] = dataclasses.field(default_factory=dict)
    boot_failure: str | None = (
        None  # CacheHealthy=False BootFailed: why a host never answered (reconciler/boot.py)
    )
    replace: set[str] = dataclasses.field(default_factory=set)
    was_healthy: bool | None = None
    host_attempts: dict[str, HostAttempt] = dataclasses.field(default_factory=dict)  # by instance id
    acted: list[ActResult] = dataclasses.field(default_factory=list)  # what the last cloud pass changed
    # instance id -> the endpoints of its last Configured push (after a restart: status.pushedEndpoints)
    host_targets: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    retry_message: str | None = None  # the last AwsRetrying event, not repeated while the error stays
    missing_hosts: tuple[str, ...] = ()  # named hosts EC2 does not have (or a selector matching none)
    refused_change: str | None = None  # a region/subnet change refused (Stalled, yet still probed)
    rollout: RolloutHalt | None = None  # the halted rollout the host pass found or left (-> status.rollout)
    # the healing ladder's second opinions: instance id -> (asked at, what its cache host said)
    opinions: dict[str, tuple[float, HostOpinion]] = dataclasses.field(default_factory=dict)
    doubt: Doubt | None = (
        None  # probes fail, nothing confirmed it: CacheHealthy=Unknown (reconciler/healing.py)
    )
    heal_stall: str | None = (
        None  # Stalled by the replacement limit; lifts when the cache answers or the spec changes
    )
    heal_stall_generation: int = 0
    retry: RetryRecord | None = None  # the current retryable-error episode; None once a pass gets through
    # The one record of which instances answered since they last started, and when first (a probe of the
    # operator's, or the cache host's own answer): the hosts are pointed only at these (make before break), the
    # hosts' checks count only after it, and an instance not in it is diagnosed as a boot, not healed
    # (reconciler/boot.py). reconciler/probing.py and the cloud pass add, the cloud pass and the healer drop an
    # instance seen not running. Kept in `status.boot.answered` (seeded by :meth:`from_status`, time 0.0), so a
    # restarted operator does not take a long-running cache for a fresh boot.
    answered_at: dict[str, float] = dataclasses.field(default_factory=dict)
    endpoint_instances: dict[str, str] = dataclasses.field(
        default_factory=dict
    )  # running endpoint -> instance
    # the app hosts' vantage: Open edX host -> its cache endpoints as it last saw them (see merge_reach). Seeded
    # from status.hosts[].cacheReach, so a restarted operator reports what it reported before (no write).
    host_vantage: dict[str, tuple[HostReach, ...]] | None = None

    def standing_stall(self, terminal: str | None) -> str | None:
        """The terminal error a republish between passes keeps: a generation's stall as the pass wrote it, else
        a refused region/subnet change or the replacement limit (both still probed; the latter lifts)."""
        if self.stalled_generation is not None:
            return terminal
        return self.refused_change or self.heal_stall

    @classmethod
    def from_status(cls, status: Mapping[str, Any], written_at: float) -> ResourceState:
        """The state a (re)started operator rebuilds from an object's status."""
        boot = status.get("boot")
        if isinstance(boot, Mapping):
            answered = [str(i) for i in boot.get("answered") or ()]
        else:  # an object from before boot diagnosis: what it runs has served (or it would not be here)
            answered = [str(i.get("id")) for i in status.get("instances") or [] if i.get("id")]
        return cls(status=dict(status), written_at=written_at, answered_at=dict.fromkeys(answered, 0.0))

    def forget_not_running(self, running: Collection[str]) -> None:
        """A stopped (or gone) instance boots again when started: it must answer again before it counts."""
        self.answered_at = {iid: at for iid, at in self.answered_at.items() if iid in running}

    def endpoint_answered_at(self) -> dict[str, float]:
        """Running endpoint -> when its current cache first answered; endpoints not answered yet left out."""
        at = self.answered_at
        return {e: at[iid] for e, iid in self.endpoint_instances.items() if iid in at}


@dataclasses.dataclass
class CloudOutcome:
    """What the cloud pass saw, decided and did: the input of the host pass, the facts and the status."""

    desired: DesiredCacheHost
    observed: ObservedCloud
    plan: Plan
    endpoints: tuple[str, ...]
    edx_hosts: list[str]
    launches: dict[str, float]
    replacements: dict[int, int]
    result: ActResult | None
    confirmed: frozenset[str] = frozenset()  # launch tokens AWS answered for (see Progress.confirmed)
    # endpoints not answered since their instance started: no Open edX host is pointed at them
    unanswered: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Progress:
    """`status.progress`: launch tokens in flight, the generation of each replica slot, replacement times.

    Written before a RunInstances call so that a crash right after it never launches twice (the token is
    reused), and read back after an operator restart.
    """

    launches: dict[str, float]
    replacements: dict[int, int]
    times: list[float]
    # the launch tokens AWS answered for (it launched, or refused the token): only these wait out the launch
    # grace period; a token recorded but never answered (a crash before or during RunInstances) is retried at
    # once with the same token, and AWS hands back the instance it may have launched or launches exactly one.
    # None: a record from before this field (every token counts as answered).
    confirmed: frozenset[str] | None = None

    @classmethod
    def of(cls, status: Mapping[str, Any]) -> Progress:
        progress = status.get("progress") or {}
        confirmed = progress.get("confirmed")
        return cls(
            launches={str(k): float(v) for k, v in (progress.get("launches") or {}).items()},
            replacements={int(k): int(v) for k, v in (progress.get("replacements") or {}).items()},
            times=[float(t) for t in progress.get("replacementTimes") or []],
            confirmed=None if confirmed is None else frozenset(str(t) for t in confirmed),
        )

    def to_status(self) -> dict[str, Any]:
        return progress_status(self.launches, self.replacements, self.times, self.confirmed)


def progress_status(
    launches: Mapping[str, float],
    replacements: Mapping[int, int],
    times: Sequence[float],
    confirmed: Collection[str] | None = None,
) -> dict[str, Any]:
    status: dict[str, Any] = {
        "launches": dict(launches),
        "replacements": {str(k): v for k, v in replacements.items()},
        "replacementTimes": list(times),
    }
    if confirmed is not None:
        status["confirmed"] = sorted(t for t in confirmed if t in launches)
    return status


@dataclasses.dataclass(frozen=True)
class RolloutHalt:
    """`status.rollout`: a host rollout stopped at `openedx.rollout.maxErrors`, held across passes.

    Kept in status (not only in memory) so that neither the next pass nor an operator restart pushes the held
    hosts: only a new generation or a new value of RESUME_ANNOTATION lets the rollout go on.
    """

    generation: int
    max_errors: int
    done: tuple[str, ...]
    failed: tuple[str, ...]
    held: tuple[str, ...]
    message: str
    resume_seen: str = ""  # RESUME_ANNOTATION's value when the rollout halted

    @classmethod
    def of(cls, status: Mapping[str, Any]) -> RolloutHalt | None:
        rollout = status.get("rollout")
        if not isinstance(rollout, Mapping) or not rollout.get("halted"):
            return None
        return cls(
            generation=int(rollout.get("generation") or 0),
            max_errors=int(rollout.get("maxErrors") or 0),
            done=tuple(str(h) for h in rollout.get("done") or ()),
            failed=tuple(str(h) for h in rollout.get("failed") or ()),
            held=tuple(str(h) for h in rollout.get("held") or ()),
            message=str(rollout.get("message") or ""),
            resume_seen=str(rollout.get("resumeSeen") or ""),
        )

    def to_status(self) -> dict[str, Any]:
        return {
            "halted": True,
            "generation": self.generation,
            "maxErrors": self.max_errors,
            "done": list(self.done),
            "failed": list(self.failed),
            "held": list(self.held),
            "message": self.message,
            "resumeSeen": self.resume_seen,
        }


def annotation(obj: Mapping[str, Any], key: str) -> str:
    return str(((obj.get("metadata") or {}).get("annotations") or {}).get(key) or "")


def pause_switch(obj: Mapping[str, Any], spec: EdxRemoteCacheSpec | None) -> str | None:
    """Which switch pauses the object ("spec.paused" or the annotation), so the status names the one to undo."""
    if spec and spec.paused:
        return "spec.paused"
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    if str(annotations.get(PAUSE_ANNOTATION, "")).lower() == "true":
        return f"annotation {PAUSE_ANNOTATION}"
    return None


def is_paused(obj: Mapping[str, Any], spec: EdxRemoteCacheSpec | None) -> bool:
    return pause_switch(obj, spec) is not None


def now_dt(clock: Callable[[], float]) -> datetime:
    return datetime.fromtimestamp(clock(), tz=UTC)


def owner_key(obj: Mapping[str, Any]) -> str:
    return ObjectRef.of(obj).key
