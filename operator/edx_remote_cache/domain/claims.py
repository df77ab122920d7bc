"""One Open edX host, one owner: which EdxRemoteCache manages a host that several name. PURE.

Precisely: one owner per managed file of a host. Objects naming the same host with disjoint file lists never meet;
a copy-paste names the same files (the defaults, usually) and does.

Two objects naming the same host (a copy-paste in a GitOps repository) used to both push it, both report Ready,
and either one's deletion reverted the host under the other. Now every object that names a host *claims* it
(`spec.openedx.hosts`, or a selector match it resolved), and the oldest claimant (creationTimestamp, then
namespace/name) owns it; the order never depends on who got there first, so nothing flaps.

An object *holds* a host while its files may still name that object's endpoints (any status.hosts[] state but
Pending and Claimed). The owner pushes only once no other object holds the host: a host changing hands is
reverted by the one letting go first, then pushed by the one taking over. A host an object holds but no longer
owns (removed from its spec, no longer matched by its selector, or now owned by an older claimant) is reverted by
it, exactly like a delete would.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from edx_remote_cache.domain.spec import SpecError, parse_spec

# status.hosts[] states in which nothing of this object's is on the host
NOT_HELD_STATES = frozenset({"Pending", "Claimed"})
# sorts after every RFC 3339 time: an object whose age is unknown never takes a host from one whose age is known
UNKNOWN_CREATION = "~"


@dataclass(frozen=True, order=True)
class Claim:
    """One object's claim on one host; claims sort oldest first (the first one owns the host)."""

    created: str  # metadata.creationTimestamp, RFC 3339 (sorts as text), else UNKNOWN_CREATION
    namespace: str
    name: str
    uid: str = field(compare=False)
    held: bool = field(default=False, compare=False)  # its files may name this object's endpoints
    # the host files the object manages (configFiles + ansibleVarsFiles); None: unknown, overlaps every claim.
    # Objects managing disjoint files of one host (one file per site, as the scale bench does) are no rivals.
    files: frozenset[str] | None = field(default=None, compare=False)

    def overlaps(self, other: Claim) -> bool:
        return self.files is None or other.files is None or bool(self.files & other.files)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @classmethod
    def of(cls, obj: Mapping[str, Any], *, held: bool = False) -> Claim:
        meta = obj.get("metadata") or {}
        return cls(
            str(meta.get("creationTimestamp") or UNKNOWN_CREATION),
            str(meta.get("namespace") or "default"),
            str(meta.get("name") or ""),
            str(meta.get("uid") or ""),
            held,
            managed_files(obj.get("spec")),
        )


def managed_files(spec: Mapping[str, Any] | None) -> frozenset[str] | None:
    """The files an object's spec manages on each host (defaults applied); None when the spec does not parse."""
    try:
        openedx = parse_spec(spec).openedx
    except SpecError:
        return None
    return frozenset([*openedx.config_files, *openedx.ansible_vars_files])


def held_hosts(status: Mapping[str, Any]) -> tuple[str, ...]:
    """The hosts an object's status says it may have written to, in status order."""
    return tuple(
        str(h["instanceId"])
        for h in status.get("hosts") or ()
        if isinstance(h, Mapping) and h.get("instanceId") and h.get("state") not in NOT_HELD_STATES
    )


def claims_of(obj: Mapping[str, Any]) -> dict[str, Claim]:
    """host -> this object's claim, for the cluster-wide index: what it names, and what it still holds.

    A deleted object no longer wants anything, but keeps holding what it has not reverted yet.
    """
    meta = obj.get("metadata") or {}
    status = obj.get("status") or {}
    held = set(held_hosts(status)) if not status.get("hostsReverted") else set()
    wanted: list[str] = []
    if not meta.get("deletionTimestamp"):
        openedx = (obj.get("spec") or {}).get("openedx") or {}
        wanted = [str(h) for h in openedx.get("hosts") or ()]
        wanted += [str(h.get("instanceId")) for h in status.get("hosts") or () if isinstance(h, Mapping)]
    mine = Claim.of(obj)  # parses the spec once, not once per host
    return {host: replace(mine, held=host in held) for host in [*wanted, *sorted(held)] if host}


@dataclass(frozen=True)
class ClaimPlan:
    """What one object does with the hosts it names and holds this pass."""

    mine: tuple[str, ...] = ()  # owned and free: pushed as usual (in the order given)
    waiting: Mapping[str, Claim] = field(default_factory=dict)  # owned, still held by another: wait
    claimed: Mapping[str, Claim] = field(default_factory=dict)  # another object owns it: never touched
    release: tuple[str, ...] = ()  # held by this object, not its own any more: revert

    def reason(self, host: str, wanted: Iterable[str]) -> str:
        """Why ``host`` is released: the HostReleased event's wording."""
        owner = self.claimed.get(host)
        if owner is not None:
            return f"{owner.key} (created earlier) manages it"
        return "no longer in spec.openedx.hosts or matched by its selector" if host not in wanted else ""


def plan_claims(
    *, me: Claim, wanted: Sequence[str], held: Iterable[str], others: Mapping[str, Sequence[Claim]]
) -> ClaimPlan:
    """Resolve ``me``'s ``wanted`` hosts (rollout order) and ``held`` ones against the other objects' claims.

    ``others`` maps a host to the claims of objects other than ``me`` (the index, minus ``me`` itself: this
    object's own view of what it holds is fresher than the index's).
    """
    mine: list[str] = []
    waiting: dict[str, Claim] = {}
    claimed: dict[str, Claim] = {}
    for host in dict.fromkeys(wanted):
        rivals = [c for c in others.get(host, ()) if c.uid != me.uid and c.overlaps(me)]
        owner = min([me, *rivals])
        if owner is not me:
            claimed[host] = owner
            continue
        holder = min((c for c in rivals if c.held), default=None)
        if holder is not None:
            waiting[host] = holder
        else:
            mine.append(host)
    owned = set(mine) | set(waiting)
    release = tuple(h for h in dict.fromkeys(held) if h not in owned)
    return ClaimPlan(tuple(mine), waiting, claimed, release)


class NoRivals:
    """The claims port when nothing else is watched (a single object, `edx-remote-cache` without kopf)."""

    def claimants(self, host_id: str) -> Sequence[Claim]:
        return ()


NO_RIVALS = NoRivals()
