"""Reads: one batched, paginated read per region for everything the operator owns, and the Open edX hosts."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from edx_remote_cache import OWNER_TAG
from edx_remote_cache.adapters.aws.clients import FILTER_VALUES_LIMIT, _chunks
from edx_remote_cache.adapters.aws.errors import _paginate
from edx_remote_cache.domain.cloud.model import GONE_STATES, EdxHost, ObservedCloud, ObservedRule, Owner
from edx_remote_cache.domain.cloud.normalize import (
    edx_host_from_instance,
    group_by_owner,
    normalize_instance,
    rule_from_security_group_rule,
)

PAGE_SIZE = 1000  # the EC2 maximum: 500 cache hosts fit in one page
LIVE_STATES = ("pending", "running", "stopping", "stopped", "shutting-down")


def _describe_instances(
    ec2: Any, filters: list[dict[str, Any]], *, terminated: bool = False
) -> list[dict[str, Any]]:
    """Paginated; terminated instances only when asked (their client tokens tell a gone launch from a slow one)."""
    states = [*LIVE_STATES, "terminated"] if terminated else list(LIVE_STATES)
    filters = [*filters, {"Name": "instance-state-name", "Values": states}]
    reservations = _paginate(
        ec2, "describe_instances", "Reservations", Filters=filters, PaginationConfig={"PageSize": PAGE_SIZE}
    )
    return [inst for r in reservations for inst in r.get("Instances", ())]


def _security_group_rules(ec2: Any, group_ids: Sequence[str]) -> dict[str, list[ObservedRule]]:
    rules: dict[str, list[ObservedRule]] = {g: [] for g in group_ids}
    for chunk in _chunks(sorted(group_ids)):
        for raw in _paginate(
            ec2,
            "describe_security_group_rules",
            "SecurityGroupRules",
            Filters=[{"Name": "group-id", "Values": chunk}],
            PaginationConfig={"PageSize": PAGE_SIZE},
        ):
            if not raw.get("IsEgress"):
                rules.setdefault(raw["GroupId"], []).append(rule_from_security_group_rule(raw))
    return rules


def observe_region(
    ec2: Any,
    *,
    owner: Owner | None = None,
    owner_keys: Sequence[str] = (),
    with_rule_ids: bool = False,
) -> dict[str, ObservedCloud]:
    """Everything every EdxRemoteCache owns in the region, grouped by owner key: two paginated calls.

    Filtered by the ownership tag key or, with `owner` / `owner_keys` (at most FILTER_VALUES_LIMIT), its values.
    `with_rule_ids` adds one batched DescribeSecurityGroupRules; planning does not need it (the executor looks
    ids up when it revokes).
    """
    keys = [owner.key] if owner else list(owner_keys)
    tag_filter = (
        {"Name": f"tag:{OWNER_TAG}", "Values": keys} if keys else {"Name": "tag-key", "Values": [OWNER_TAG]}
    )
    instances = _describe_instances(ec2, [tag_filter], terminated=True)
    groups = list(
        _paginate(
            ec2,
            "describe_security_groups",
            "SecurityGroups",
            Filters=[tag_filter],
            PaginationConfig={"PageSize": PAGE_SIZE},
        )
    )
    rules = _security_group_rules(ec2, [g["GroupId"] for g in groups]) if with_rule_ids and groups else None
    return group_by_owner(instances=instances, security_groups=groups, rules=rules)


class RegionObserver:
    """Coalesces reads: every resource asking within `ttl_seconds` (the drift interval) shares one read.

    `invalidate(owner)` after a mutation makes that owner's next observe a fresh read, so a resource never plans
    from a snapshot older than its own last change. That read is for every owner stale at the time (one filter
    with their keys): while the region's reads are paced (pacing.py), objects converging together share one
    read instead of queueing one each. `invalidate` never waits for a read in flight (it is called from the
    event loop); an owner invalidated during a read stays stale for the next one. Thread-safe.
    """

    def __init__(
        self,
        ec2: Any,
        *,
        ttl_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        with_rule_ids: bool = False,
    ) -> None:
        self._ec2 = ec2
        self._ttl = ttl_seconds
        self._clock = clock
        self._with_rule_ids = with_rule_ids
        self._lock = threading.Lock()  # one read at a time
        self._stale_lock = threading.Lock()  # guards _stale and _expiries; never held during a read
        self._snapshot: dict[str, ObservedCloud] | None = None
        self._fetched_at = 0.0
        self._stale: set[str] = set()
        self._expiries = 0  # invalidate() of everything so far; the snapshot covers `_read_expiries` of them
        self._read_expiries = 0

    @property
    def fetched_at(self) -> float | None:
        """When the shared snapshot was read (the observer's clock); None before the first read."""
        return self._fetched_at if self._snapshot is not None else None

    def observe(self, owner: Owner, *, adopt_instance_ids: Sequence[str] = ()) -> ObservedCloud:
        """What `owner` has, plus any `adopt_instance_ids` not yet tagged (one extra call while adopting)."""
        with self._lock:
            with self._stale_lock:
                stale, expiries = set(self._stale), self._expiries
            now = self._clock()
            expired = expiries != self._read_expiries
            if self._snapshot is None or expired or now - self._fetched_at >= self._ttl:
                self._snapshot = observe_region(self._ec2, with_rule_ids=self._with_rule_ids)
                self._fetched_at, self._read_expiries = now, expiries
                read = stale
            elif owner.key in stale:
                keys = [owner.key, *sorted(stale - {owner.key})[: FILTER_VALUES_LIMIT - 1]]
                fresh = observe_region(self._ec2, owner_keys=keys, with_rule_ids=self._with_rule_ids)
                for key in keys:
                    self._snapshot[key] = fresh.get(key, ObservedCloud())
                read = set(keys)
            else:
                read = set()
            with self._stale_lock:
                self._stale -= read
            cloud = self._snapshot.get(owner.key, ObservedCloud())
        known = {i.instance_id for i in cloud.instances}
        missing = [i for i in adopt_instance_ids if i not in known]
        if not missing:
            return cloud
        raw = _describe_instances(self._ec2, [{"Name": "instance-id", "Values": missing}])
        candidates = tuple(normalize_instance(i) for i in raw if i["State"]["Name"] not in GONE_STATES)
        return dataclasses.replace(cloud, instances=cloud.instances + candidates)

    def invalidate(self, owner: Owner | None = None) -> None:
        """Forget `owner`'s part of the snapshot (or all of it)."""
        with self._stale_lock:
            if owner is None:
                self._expiries += 1
            else:
                self._stale.add(owner.key)


def describe_edx_hosts(
    ec2: Any, *, instance_ids: Sequence[str] = (), selector: Mapping[str, str] | None = None
) -> list[EdxHost]:
    """The Open edX hosts named by id and/or selected by tags (union): one DescribeInstances per criterion."""
    raw: dict[str, dict[str, Any]] = {}
    if instance_ids:
        for chunk in _chunks(list(instance_ids)):
            for inst in _describe_instances(ec2, [{"Name": "instance-id", "Values": chunk}]):
                raw[inst["InstanceId"]] = inst
    if selector:
        filters = [{"Name": f"tag:{k}", "Values": [v]} for k, v in sorted(selector.items())]
        for inst in _describe_instances(ec2, filters):
            raw[inst["InstanceId"]] = inst
    return [edx_host_from_instance(inst) for _, inst in sorted(raw.items())]


class EdxHostDirectory:
    """The Open edX hosts of every resource in a region, read together: one batched DescribeInstances per TTL.

    Each resource names its hosts by id and/or a tag selector. The directory remembers every id and selector it
    was asked for, re-reads them all at once when the TTL (the drift interval) has passed, and reads an id or a
    selector it has never seen straight away, so a spec change is never answered from an old snapshot.
    Thread-safe.
    """

    def __init__(self, ec2: Any, *, ttl_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._ec2 = ec2
        self._ttl = ttl_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._raw: dict[str, dict[str, Any]] = {}
        self._ids: set[str] = set()
        self._selected: dict[tuple[tuple[str, str], ...], tuple[str, ...]] = {}
        self._fetched_at: float | None = None

    def _read_ids(self, ids: Sequence[str]) -> None:
        for chunk in _chunks(sorted(ids)):
            for inst in _describe_instances(self._ec2, [{"Name": "instance-id", "Values": chunk}]):
                self._raw[inst["InstanceId"]] = inst

    def _read_selector(self, key: tuple[tuple[str, str], ...]) -> None:
        found = _describe_instances(self._ec2, [{"Name": f"tag:{k}", "Values": [v]} for k, v in key])
        for inst in found:
            self._raw[inst["InstanceId"]] = inst
        self._selected[key] = tuple(inst["InstanceId"] for inst in found)

    def hosts(
        self, *, instance_ids: Sequence[str] = (), selector: Mapping[str, str] | None = None
    ) -> list[EdxHost]:
        key = tuple(sorted((selector or {}).items()))
        with self._lock:
            now = self._clock()
            if self._fetched_at is None or now - self._fetched_at >= self._ttl:
                self._raw = {}
                self._read_ids(sorted(self._ids))
                for known in list(self._selected):
                    self._read_selector(known)
                self._fetched_at = now
            missing = sorted(set(instance_ids) - self._ids)
            if missing:
                self._ids.update(missing)
                self._read_ids(missing)
            if key and key not in self._selected:
                self._read_selector(key)
            wanted = set(instance_ids) | set(self._selected.get(key, ()) if key else ())
            raw = {i: self._raw[i] for i in wanted if i in self._raw}
        return [edx_host_from_instance(inst) for _, inst in sorted(raw.items())]
