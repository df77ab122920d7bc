"""The plan: ordered, frozen actions an adapter carries out one by one, and what it reports back (`ActResult`)
with the pure bookkeeping of launch tokens and replacement generations the caller keeps in status."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from edx_remote_cache.domain.cloud.desired import client_token
from edx_remote_cache.domain.cloud.model import IngressRule, ObservedRule, Tags

# --- actions -------------------------------------------------------------------------------------------------
# A `group_id` of None means "the security group created by CreateSecurityGroup earlier in this plan".


@dataclass(frozen=True)
class CreateSecurityGroup:
    name: str
    description: str
    vpc_id: str
    tags: Tags


@dataclass(frozen=True)
class AuthorizeIngress:
    group_id: str | None
    rules: tuple[IngressRule, ...]


@dataclass(frozen=True)
class RevokeIngress:
    """Revoke by rule id; rules observed without ids are looked up by the executor first."""

    group_id: str
    rules: tuple[ObservedRule, ...]

    @property
    def rule_ids(self) -> tuple[str, ...]:
        return tuple(r.rule_id for r in self.rules if r.rule_id)


@dataclass(frozen=True)
class RunInstance:
    """Launch replica `index`; `client_token` makes a retry (or a crash before status is written) harmless."""

    index: int
    generation: int
    client_token: str
    image_id: str
    instance_type: str
    subnet_id: str
    group_id: str | None
    root_device_name: str
    root_volume_gib: int
    root_volume_encrypted: bool
    user_data: str
    tags: Tags
    volume_tags: Tags
    key_name: str | None = None
    iam_instance_profile: str | None = None
    reason: str = ""


@dataclass(frozen=True)
class StartInstance:
    instance_id: str


@dataclass(frozen=True)
class StopInstance:
    instance_id: str
    reason: str = ""


@dataclass(frozen=True)
class ModifyInstanceType:
    """Only valid on a stopped instance; the plan always stops first and starts after."""

    instance_id: str
    instance_type: str


@dataclass(frozen=True)
class TerminateInstance:
    instance_id: str
    reason: str = ""


@dataclass(frozen=True)
class TagResources:
    resource_ids: tuple[str, ...]
    tags: Tags


@dataclass(frozen=True)
class UntagResources:
    resource_ids: tuple[str, ...]
    keys: tuple[str, ...]


@dataclass(frozen=True)
class AttachSecurityGroup:
    """Set the primary interface's groups to `keep_group_ids` plus ours (adoption keeps the host's groups)."""

    instance_id: str
    network_interface_id: str
    group_id: str | None
    keep_group_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class DetachSecurityGroup:
    """Set the primary interface's groups to `keep_group_ids` (ours removed) when releasing an adopted host."""

    instance_id: str
    network_interface_id: str
    keep_group_ids: tuple[str, ...]


@dataclass(frozen=True)
class HardenMetadata:
    """Re-require IMDSv2 (tokens required, hop limit 1) on an instance someone loosened."""

    instance_id: str


@dataclass(frozen=True)
class ReconfigureMemcached:
    """Rewrite memcached.conf in place through SSM, then tag the new config hash.

    User-data only runs at first boot, so a `memcached.*` change needs this. A host without a reachable SSM
    agent cannot be reconfigured in place: the executor reports it (`ActResult.ssm_unavailable`) and the
    caller passes it back as `diff(replace=...)`, so the host is replaced by one booted with the new config.
    That costs the cache contents, which a memcached restart loses anyway.
    """

    instance_id: str
    index: int
    script: str
    config_hash: str


@dataclass(frozen=True)
class DeleteSecurityGroup:
    group_id: str


@dataclass(frozen=True)
class WaitFor:
    """Nothing more can be done until these instances reach `until`; the caller requeues soon. Never blocks."""

    instance_ids: tuple[str, ...]
    # "answered": a replacement that has not answered a probe yet; the old instance keeps serving meanwhile
    until: Literal["stopped", "running", "visible", "gone", "answered"]
    reason: str = ""


Action = (
    CreateSecurityGroup
    | AuthorizeIngress
    | RevokeIngress
    | RunInstance
    | StartInstance
    | StopInstance
    | ModifyInstanceType
    | TerminateInstance
    | TagResources
    | UntagResources
    | AttachSecurityGroup
    | DetachSecurityGroup
    | HardenMetadata
    | ReconfigureMemcached
    | DeleteSecurityGroup
    | WaitFor
)


@dataclass(frozen=True)
class Plan:
    """Actions to run in order, plus notes for status about things the plan will not fix by itself."""

    actions: tuple[Action, ...] = ()
    notes: tuple[str, ...] = ()

    def __iter__(self) -> Iterator[Action]:
        return iter(self.actions)

    def __len__(self) -> int:
        return len(self.actions)

    def __bool__(self) -> bool:
        return bool(self.actions)

    @property
    def mutating(self) -> tuple[Action, ...]:
        return tuple(a for a in self.actions if not isinstance(a, WaitFor))

    def of_type(self, kind: type) -> tuple[Any, ...]:
        return tuple(a for a in self.actions if isinstance(a, kind))


# --- progress the caller records -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ActResult:
    """What executing a plan changed, for the caller to record in status.

    `launched` maps client token -> instance id; `spent_tokens` are tokens AWS will not launch with again
    (their instance is already terminated, or the token was used with other parameters).
    """

    launched: Mapping[str, str] = field(default_factory=dict)
    spent_tokens: tuple[str, ...] = ()
    generations: Mapping[int, int] = field(default_factory=dict)
    created_group_id: str | None = None
    started: tuple[str, ...] = ()
    stopped: tuple[str, ...] = ()
    terminated: tuple[str, ...] = ()
    reconfigured: tuple[str, ...] = ()
    ssm_unavailable: tuple[str, ...] = ()
    deleted_groups: tuple[str, ...] = ()
    waiting: tuple[WaitFor, ...] = ()
    mutations: int = 0

    @property
    def changed(self) -> bool:
        """True when AWS was mutated: invalidate the region observer for this owner."""
        return self.mutations > 0


def record_launches(launches: Mapping[str, float], result: ActResult, *, now: float) -> dict[str, float]:
    """The caller's token -> launched-at record after an act(); spent tokens age out at once."""
    updated = dict(launches)
    for token in result.launched:
        updated.setdefault(token, now)
    for token in result.spent_tokens:
        updated[token] = 0.0  # JSON-safe "long ago": past any grace period
    return updated


def record_replacements(replacements: Mapping[int, int], result: ActResult) -> dict[int, int]:
    """The caller's index -> generation record after an act()."""
    updated = dict(replacements)
    for index, generation in result.generations.items():
        updated[index] = max(updated.get(index, 0), generation)
    return updated


def prune_launches(
    launches: Mapping[str, float], *, owner_uid: str, replacements: Mapping[int, int]
) -> dict[str, float]:
    """Drop tokens of generations below each replica's recorded one: diff never chooses them again."""
    old = {
        client_token(owner_uid=owner_uid, index=index, generation=g)
        for index, generation in replacements.items()
        for g in range(generation)
    }
    return {t: at for t, at in launches.items() if t not in old}
