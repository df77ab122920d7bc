"""The planner: (desired, observed) -> an ordered `Plan` for one owner's instances and security group.

Nothing here talks to AWS (the adapter is `edx_remote_cache.adapters.aws`). Both sides arrive normalised to the
form AWS returns (see `normalize`), so an unchanged resource plans nothing, and a plan is a tuple of small frozen
actions a table test can compare with `==`.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from edx_remote_cache import OWNER_TAG, OWNER_UID_TAG
from edx_remote_cache.domain.cloud.actions import (
    Action,
    AttachSecurityGroup,
    AuthorizeIngress,
    CreateSecurityGroup,
    DeleteSecurityGroup,
    HardenMetadata,
    ModifyInstanceType,
    Plan,
    ReconfigureMemcached,
    RevokeIngress,
    RunInstance,
    StartInstance,
    StopInstance,
    TagResources,
    TerminateInstance,
    WaitFor,
)
from edx_remote_cache.domain.cloud.desired import (
    DesiredCacheHost,
)
from edx_remote_cache.domain.cloud.model import (
    CONFIG_HASH_TAG,
    LAUNCH_GRACE_SECONDS,
    UP_STATES,
    ObservedCloud,
    ObservedInstance,
    ObservedSecurityGroup,
    Tags,
    _tags,
)

# --- diff ------------------------------------------------------------------------------------------------------


def _newest(candidates: Sequence[ObservedInstance]) -> ObservedInstance:
    return max(candidates, key=lambda i: (i.generation, i.launch_time, i.instance_id))


@dataclass(frozen=True)
class _Slots:
    primaries: dict[int, ObservedInstance]
    extras: tuple[ObservedInstance, ...]
    retag_index: tuple[tuple[int, ObservedInstance], ...]


def _assign_slots(
    desired: DesiredCacheHost, ours: Sequence[ObservedInstance], candidates: Mapping[str, ObservedInstance]
) -> _Slots:
    """Pick the instance serving each replica index; everything else owned is extra."""
    primaries: dict[int, ObservedInstance] = {}
    retag: list[tuple[int, ObservedInstance]] = []
    if desired.adopt_instance_ids:
        for index, instance_id in enumerate(desired.adopt_instance_ids):
            if instance_id in candidates:
                primaries[index] = candidates[instance_id]
        used = {i.instance_id for i in primaries.values()}
        return _Slots(primaries, tuple(i for i in ours if i.instance_id not in used), ())
    by_index: dict[int, list[ObservedInstance]] = {}
    unindexed: list[ObservedInstance] = []
    for inst in ours:
        if inst.index is None:
            unindexed.append(inst)
        else:
            by_index.setdefault(inst.index, []).append(inst)
    for index in range(desired.replicas):
        if by_index.get(index):
            primaries[index] = _newest(by_index[index])
    # An owned instance whose index tag was removed fills a hole rather than being thrown away.
    for index in range(desired.replicas):
        if index not in primaries and unindexed:
            primaries[index] = unindexed.pop(0)
            retag.append((index, primaries[index]))
    used = {i.instance_id for i in primaries.values()}
    return _Slots(primaries, tuple(i for i in ours if i.instance_id not in used), tuple(retag))


def _extra_order(inst: ObservedInstance) -> tuple[int, str]:
    return (-(inst.index if inst.index is not None else 1_000_000), inst.instance_id)


def _pick_group(
    desired: DesiredCacheHost, groups: Sequence[ObservedSecurityGroup]
) -> tuple[ObservedSecurityGroup | None, tuple[ObservedSecurityGroup, ...]]:
    in_vpc = [g for g in groups if g.vpc_id == desired.vpc_id]
    current = None
    if in_vpc:
        current = min(in_vpc, key=lambda g: (g.name != desired.security_group_name, g.group_id))
    return current, tuple(g for g in groups if g is not current)


def _missing_tags(have: Mapping[str, str], want: Mapping[str, str]) -> Tags:
    return _tags({k: v for k, v in want.items() if have.get(k) != v})


@dataclass(frozen=True)
class _LaunchInputs:
    launches: Mapping[str, float]
    gone_tokens: frozenset[str]
    now: float
    grace: float


def _choose_launch(
    desired: DesiredCacheHost, index: int, *, start: int, inputs: _LaunchInputs
) -> tuple[Literal["run", "wait"], int, str]:
    """For a replica with no visible instance: wait on a fresh launch, else launch with the first unused token.

    A token whose instance is seen terminated, or launched longer than `grace` ago and still not visible, is
    spent (AWS would hand back that terminated instance for it), so the next generation is used.
    """
    generation = start
    while True:
        token = desired.client_token(index, generation)
        if token not in inputs.gone_tokens:
            if token not in inputs.launches:
                return "run", generation, token
            if inputs.now - inputs.launches[token] < inputs.grace:
                return "wait", generation, token
        generation += 1


def _run(
    desired: DesiredCacheHost, index: int, generation: int, group_id: str | None, reason: str
) -> RunInstance:
    return RunInstance(
        index=index,
        generation=generation,
        client_token=desired.client_token(index, generation),
        image_id=desired.image_id,
        instance_type=desired.instance_type,
        subnet_id=desired.subnet_id,
        group_id=group_id,
        root_device_name=desired.root_device_name,
        root_volume_gib=desired.root_volume_gib,
        root_volume_encrypted=desired.root_volume_encrypted,
        user_data=desired.user_data,
        tags=_tags(desired.launch_tags(index, generation)),
        volume_tags=_tags(desired.volume_tags(index)),
        key_name=desired.key_name,
        iam_instance_profile=desired.iam_instance_profile,
        reason=reason,
    )


def _adoption_candidates(
    desired: DesiredCacheHost, observed: ObservedCloud, ours: Sequence[ObservedInstance], notes: list[str]
) -> dict[str, ObservedInstance]:
    """Owned instances plus the hosts named in adoptInstanceIds that may be adopted."""
    owner = desired.owner
    candidates = {i.instance_id: i for i in ours}
    for instance_id in desired.adopt_instance_ids:
        found = next((i for i in observed.instances if i.instance_id == instance_id), None)
        if found is None:
            notes.append(
                f"adopted instance {instance_id} was not found (or is terminated); nothing is launched in its "
                "place: remove it from spec.instance.adoptInstanceIds to let the operator launch one"
            )
        elif found.tag(OWNER_TAG) not in (None, owner.key):
            notes.append(f"{instance_id} is owned by {found.tag(OWNER_TAG)}; it cannot be adopted")
        elif found.tag(OWNER_UID_TAG) not in (None, owner.uid):
            notes.append(f"{instance_id} is tagged for an earlier {owner.key}; it cannot be adopted")
        else:
            candidates[instance_id] = found
    return candidates


def _group_actions(desired: DesiredCacheHost, group: ObservedSecurityGroup | None) -> list[Action]:
    """Create the group if needed; revoke every rule not desired, then authorize the missing ones.

    Rules that match keep their AWS rule ids: nothing is ever revoked and re-added.
    """
    actions: list[Action] = []
    if group is None:
        actions.append(
            CreateSecurityGroup(
                name=desired.security_group_name,
                description=f"edx-remote-cache: memcached for {desired.owner.key}",
                vpc_id=desired.vpc_id,
                tags=_tags(desired.group_tags()),
            )
        )
    wanted = set(desired.ingress)
    have = {r.rule for r in group.ingress} if group else set()
    if group is not None and (extra := tuple(r for r in group.ingress if r.rule not in wanted)):
        actions.append(RevokeIngress(group.group_id, extra))
    if missing := tuple(r for r in desired.ingress if r not in have):
        actions.append(AuthorizeIngress(group.group_id if group else None, missing))
    if group is not None and (tags := _missing_tags(group.tag_map, desired.group_tags())):
        actions.append(TagResources((group.group_id,), tags))
    return actions


@dataclass
class _ReplicaPass:
    """Accumulates one pass over the replicas, in the order the plan runs them."""

    fixes: list[Action] = field(default_factory=list)  # tags, groups, metadata
    starts: list[Action] = field(default_factory=list)
    runs: list[Action] = field(default_factory=list)
    replacements: list[Action] = field(default_factory=list)
    disruptive: list[tuple[int, str, ObservedInstance]] = field(default_factory=list)
    reconfigure: list[ReconfigureMemcached] = field(default_factory=list)
    waits: list[WaitFor] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    not_running: list[str] = field(default_factory=list)
    all_running: bool = True


def _missing_replica(
    p: _ReplicaPass, desired: DesiredCacheHost, index: int, group_id: str | None, inputs: _LaunchInputs
) -> None:
    kind, generation, token = _choose_launch(desired, index, start=desired.generation(index), inputs=inputs)
    if kind == "wait":
        p.waits.append(WaitFor((token,), "visible", f"replica {index} was launched with {token}"))
        return
    reason = "first launch" if generation == desired.generation(index) else "previous instance is gone"
    p.runs.append(_run(desired, index, generation, group_id, f"replica {index}: {reason}"))


def _present_replica(
    p: _ReplicaPass,
    desired: DesiredCacheHost,
    index: int,
    inst: ObservedInstance,
    *,
    group_id: str | None,
    adopted: bool,
    replace: Collection[str],
    inputs: _LaunchInputs,
) -> None:
    if inst.state != "running":
        p.all_running = False
        p.not_running.append(inst.instance_id)
    if tags := _missing_tags(inst.tag_map, desired.managed_instance_tags(index, adopted=adopted)):
        p.fixes.append(TagResources((inst.instance_id,), tags))
    same_vpc = not inst.vpc_id or inst.vpc_id == desired.vpc_id  # another VPC: replaced, not re-grouped
    if same_vpc and (
        group_id is None
        or group_id not in inst.security_group_ids
        or (not adopted and inst.security_group_ids != (group_id,))
    ):
        keep = tuple(g for g in inst.security_group_ids if g != group_id) if adopted else ()
        p.fixes.append(AttachSecurityGroup(inst.instance_id, inst.network_interface_id, group_id, keep))
    elif not same_vpc and adopted:
        p.notes.append(
            f"adopted {inst.instance_id} is in {inst.vpc_id}, but spec.instance.subnetId is in {desired.vpc_id}; "
            "the cache security group cannot be attached: use a subnet of the host's VPC"
        )
    if not adopted and inst.metadata_http_tokens not in ("", "required"):
        p.fixes.append(HardenMetadata(inst.instance_id))

    if inst.instance_id in replace:
        if not adopted:
            p.replacements += _replacement(desired, inst, index, group_id, inputs)
            return
        p.notes.append(
            f"{inst.instance_id} was adopted and is never replaced; repair it or adopt another host"
        )
    if inst.state == "stopping":
        p.waits.append(WaitFor((inst.instance_id,), "stopped", f"replica {index} is stopping"))
    elif inst.state == "stopped":
        if inst.instance_type != desired.instance_type:
            p.starts.append(ModifyInstanceType(inst.instance_id, desired.instance_type))
        p.starts.append(StartInstance(inst.instance_id))
    elif inst.state in UP_STATES:
        if inst.instance_type != desired.instance_type:
            p.disruptive.append((index, "type", inst))
        elif inst.subnet_id and inst.subnet_id != desired.subnet_id:
            if adopted:
                p.notes.append(f"adopted {inst.instance_id} is in {inst.subnet_id}, not {desired.subnet_id}")
            else:
                p.disruptive.append((index, "subnet", inst))
        if inst.state == "running" and inst.tag(CONFIG_HASH_TAG) != desired.config_hash:
            p.reconfigure.append(
                ReconfigureMemcached(inst.instance_id, index, desired.reconfigure_script, desired.config_hash)
            )


def diff(
    *,
    desired: DesiredCacheHost,
    observed: ObservedCloud,
    now: float,
    launches: Mapping[str, float] | None = None,
    replace: Collection[str] = (),
    answered: Collection[str] = (),
    in_use: Collection[str] = (),
    grace_seconds: float = LAUNCH_GRACE_SECONDS,
) -> Plan:
    """The actions that bring `observed` to `desired`; empty when they already match.

    `launches` is the caller's record of client token -> when RunInstances was called with it, and `replace`
    the instance ids the caller wants replaced (unhealthy, or no SSM agent for a reconfigure). Disruptive
    changes (instance type, subnet) touch one instance per pass and only while every other replica runs.

    Make before break: a running instance being replaced is not terminated with the launch of its successor.
    It stays (an extra of its replica) until the successor is in `answered` (instance ids that answered a
    probe since they last started) and it is not in `in_use` (instance ids an Open edX host still points at);
    terminating it first opened an outage window as long as the hosts' re-point took (SSM, minutes at scale).
    """
    owner = desired.owner
    inputs = _LaunchInputs(launches or {}, frozenset(observed.gone_tokens), now, grace_seconds)
    notes: list[str] = []
    ours = observed.owned_instances(owner)
    for other in observed.instances:
        if other.tag(OWNER_TAG) == owner.key and not owner.owns(other.tag_map):
            notes.append(f"{other.instance_id} is tagged for an earlier {owner.key}; not touched")
    candidates = _adoption_candidates(desired, observed, ours, notes)

    group, stale_groups = _pick_group(desired, observed.owned_groups(owner))
    group_id = group.group_id if group else None
    actions = _group_actions(desired, group)
    if not desired.ingress:
        notes.append(
            "no allowed sources: memcached is reachable from nowhere until allowFrom* or hosts are set"
        )

    slots = _assign_slots(desired, ours, candidates)
    notes += [
        f"{i.instance_id} had lost its index tag; it now serves replica {n}" for n, i in slots.retag_index
    ]
    adopting = bool(desired.adopt_instance_ids)
    p = _ReplicaPass()
    for index in range(desired.replicas):
        inst = slots.primaries.get(index)
        if inst is not None:
            adopted = adopting or inst.adopted
            _present_replica(
                p, desired, index, inst, group_id=group_id, adopted=adopted, replace=replace, inputs=inputs
            )
        else:
            p.all_running = False
            if not adopting:
                _missing_replica(p, desired, index, group_id, inputs)

    actions += p.fixes + p.starts + p.runs + p.replacements
    retiring: list[Action] = []
    if slots.extras:
        if p.all_running:
            for extra in sorted(slots.extras, key=_extra_order):
                retiring += _retire(extra, slots.primaries, desired, answered=answered, in_use=in_use)
        else:
            notes.append("extra instances are kept until every replica is running")
            if starting := tuple(i.instance_id for i in slots.primaries.values() if i.state == "pending"):
                p.waits.append(WaitFor(starting, "running", "a successor is starting"))
    p.waits += [a for a in retiring if isinstance(a, WaitFor)]
    settling = len(p.waits) > 0  # a replacement not done yet (make before break): the next disruption waits
    # One disruptive change at a time, and only while every other replica is serving.
    if p.disruptive and not p.replacements and not p.all_running and p.not_running:
        reason = "the next disruptive change waits until every replica runs"
        p.waits.append(WaitFor(tuple(p.not_running), "running", reason))
    elif p.disruptive and p.all_running and not p.replacements and not settling:
        index, kind, inst = p.disruptive[0]
        if kind == "type":
            reason = f"instance type {inst.instance_type} -> {desired.instance_type}"
            actions.append(StopInstance(inst.instance_id, reason))
            p.waits.append(WaitFor((inst.instance_id,), "stopped", f"replica {index}: {reason}"))
        else:
            actions += _replacement(desired, inst, index, group_id, inputs)
    disrupted = {a.instance_id for a in actions if isinstance(a, StopInstance | TerminateInstance)}
    reconfigure = [r for r in p.reconfigure if r.instance_id not in disrupted]
    if reconfigure:
        actions.append(reconfigure[0])  # a restart empties that replica's cache: roll one at a time
    actions += [a for a in retiring if not isinstance(a, WaitFor)]
    groups_in_use = {g for i in ours for g in i.security_group_ids}
    actions += [DeleteSecurityGroup(s.group_id) for s in stale_groups if s.group_id not in groups_in_use]
    actions += list(dict.fromkeys(p.waits))
    return Plan(tuple(actions), tuple(notes + p.notes))


def _retire(
    extra: ObservedInstance,
    primaries: Mapping[int, ObservedInstance],
    desired: DesiredCacheHost,
    *,
    answered: Collection[str],
    in_use: Collection[str],
) -> list[Action]:
    """Terminate an extra instance, unless its successor has not answered yet or a host still points at it.
    An extra that never answered and that no host points at serves nobody (a boot that failed): it goes at
    once, as a terminated one would, instead of running beside its successor."""
    successor = primaries.get(extra.index) if extra.index is not None else None
    serving = extra.instance_id in answered or extra.instance_id in in_use
    if successor is not None and successor.instance_id not in answered and serving:
        reason = f"{extra.instance_id} keeps serving until its successor {successor.instance_id} answers"
        return [WaitFor((successor.instance_id,), "answered", reason)]
    if extra.instance_id in in_use:
        reason = f"{extra.instance_id} is kept until no Open edX host points at it"
        return [WaitFor((extra.instance_id,), "answered", reason)]
    return [TerminateInstance(extra.instance_id, _extra_reason(extra, desired, successor))]


def _extra_reason(
    inst: ObservedInstance, desired: DesiredCacheHost, successor: ObservedInstance | None = None
) -> str:
    if inst.index is not None and inst.index >= desired.replicas:
        return f"replicas scaled down to {desired.replicas}"
    if successor is not None and successor.generation > inst.generation:
        return f"replaced by generation {successor.generation}, which answers and serves the hosts"
    return "extra instance for a replica already served"


def _replacement(
    desired: DesiredCacheHost, inst: ObservedInstance, index: int, group_id: str | None, inputs: _LaunchInputs
) -> list[Action]:
    """Launch the next generation. A running old instance stays until the new one answers (see `_retire`);
    one that is not up (stopped) serves nothing and goes with the launch (a failed launch leaves it alone)."""
    start = max(desired.generation(index), inst.generation + 1)
    kind, generation, token = _choose_launch(desired, index, start=start, inputs=inputs)
    if kind == "wait":
        return [WaitFor((token,), "visible", f"replacement for replica {index} was launched with {token}")]
    run = _run(desired, index, generation, group_id, f"replica {index}: replaces {inst.instance_id}")
    if inst.state in UP_STATES:
        return [run]
    return [run, TerminateInstance(inst.instance_id, f"replaced by generation {generation}")]


def endpoints(*, desired: DesiredCacheHost, observed: ObservedCloud) -> tuple[str, ...]:
    """`ip:port` of each running replica, ordered by replica index (stable across reconciles)."""
    ours = observed.owned_instances(desired.owner)
    candidates = {i.instance_id: i for i in ours}
    slots = _assign_slots(desired, ours, candidates)
    return tuple(
        f"{inst.private_ip}:{desired.port}"
        for _, inst in sorted(slots.primaries.items())
        if inst.state == "running" and inst.private_ip
    )
