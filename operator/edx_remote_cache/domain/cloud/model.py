"""The cloud side's vocabulary: ownership tags, the owner, security-group rules and what DescribeInstances /
DescribeSecurityGroups report, as small frozen values compared with `==`."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from edx_remote_cache import OWNER_TAG, OWNER_UID_TAG

INDEX_TAG = "edx-remote-cache.openedx.org/index"
GENERATION_TAG = "edx-remote-cache.openedx.org/generation"
CONFIG_HASH_TAG = "edx-remote-cache.openedx.org/config-hash"
ADOPTED_TAG = "edx-remote-cache.openedx.org/adopted"
NAME_TAG = "Name"
SSH_PORT = 22
# RunInstances answers before DescribeInstances can see the instance; within this window a launched token
# whose instance is not visible yet means "wait", never "launch again".
LAUNCH_GRACE_SECONDS = 300.0
GONE_STATES = frozenset({"shutting-down", "terminated"})
UP_STATES = frozenset({"pending", "running"})
CLIENT_TOKEN_LIMIT = 64

DeletionPolicy = Literal["Delete", "Retain"]
Tags = tuple[tuple[str, str], ...]


def _tags(mapping: Mapping[str, str]) -> Tags:
    return tuple(sorted(mapping.items()))


def _fit(text: str, limit: int) -> str:
    """`text` if short enough, else a prefix plus a hash of the whole, so long names stay unique."""
    if len(text) <= limit:
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    return f"{text[: limit - 13]}-{digest}"


@dataclass(frozen=True)
class Owner:
    """The EdxRemoteCache that owns cloud resources; the uid tells a re-created CR from its predecessor."""

    namespace: str
    name: str
    uid: str

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def ownership_tags(self) -> dict[str, str]:
        return {OWNER_TAG: self.key, OWNER_UID_TAG: self.uid}

    def owns(self, tags: Mapping[str, str]) -> bool:
        return tags.get(OWNER_TAG) == self.key and tags.get(OWNER_UID_TAG) == self.uid


@dataclass(frozen=True, order=True)
class IngressRule:
    """One ingress permission from one source, the way DescribeSecurityGroupRules lists it.

    Exactly one of the source fields is set; the others are "". The description is for humans and does not
    take part in comparisons, so editing it in the console never causes churn.
    """

    protocol: str
    from_port: int
    to_port: int
    cidr_ipv4: str = ""
    cidr_ipv6: str = ""
    group_id: str = ""
    prefix_list_id: str = ""
    description: str = field(default="", compare=False)

    @property
    def source(self) -> str:
        return self.cidr_ipv4 or self.cidr_ipv6 or self.group_id or self.prefix_list_id

    def __str__(self) -> str:
        ports = str(self.from_port) if self.from_port == self.to_port else f"{self.from_port}-{self.to_port}"
        return f"{self.protocol}/{ports} from {self.source}"

    def to_ip_permission(self) -> dict[str, Any]:
        """The `IpPermissions` item that authorizes (or revokes) exactly this rule."""
        permission: dict[str, Any] = {"IpProtocol": self.protocol}
        if self.protocol != "-1":
            permission.update(FromPort=self.from_port, ToPort=self.to_port)
        described = {"Description": self.description} if self.description else {}
        if self.cidr_ipv4:
            permission["IpRanges"] = [{"CidrIp": self.cidr_ipv4, **described}]
        elif self.cidr_ipv6:
            permission["Ipv6Ranges"] = [{"CidrIpv6": self.cidr_ipv6, **described}]
        elif self.group_id:
            permission["UserIdGroupPairs"] = [{"GroupId": self.group_id, **described}]
        elif self.prefix_list_id:
            permission["PrefixListIds"] = [{"PrefixListId": self.prefix_list_id, **described}]
        return permission


@dataclass(frozen=True, order=True)
class ObservedRule:
    """An ingress rule as it exists in AWS, with its SecurityGroupRuleId when the read included it."""

    rule: IngressRule
    rule_id: str | None = field(default=None, compare=False)


@dataclass(frozen=True)
class ObservedSecurityGroup:
    group_id: str
    name: str
    vpc_id: str
    tags: Tags
    ingress: tuple[ObservedRule, ...]

    @property
    def tag_map(self) -> dict[str, str]:
        return dict(self.tags)


@dataclass(frozen=True)
class ObservedInstance:
    """An instance as DescribeInstances reports it; security groups are the primary interface's."""

    instance_id: str
    state: str
    instance_type: str
    tags: Tags
    subnet_id: str = ""
    vpc_id: str = ""
    private_ip: str = ""
    image_id: str = ""
    security_group_ids: tuple[str, ...] = ()
    network_interface_id: str = ""
    volume_ids: tuple[str, ...] = ()
    client_token: str = ""
    launch_time: float = 0.0
    metadata_http_tokens: str = ""

    @property
    def tag_map(self) -> dict[str, str]:
        return dict(self.tags)

    def tag(self, key: str) -> str | None:
        return self.tag_map.get(key)

    @property
    def index(self) -> int | None:
        value = self.tag(INDEX_TAG)
        return int(value) if value is not None and value.isdigit() else None

    @property
    def generation(self) -> int:
        value = self.tag(GENERATION_TAG)
        return int(value) if value is not None and value.isdigit() else 0

    @property
    def adopted(self) -> bool:
        return self.tag(ADOPTED_TAG) == "true"


@dataclass(frozen=True)
class ObservedCloud:
    """Everything one EdxRemoteCache owns in its region (plus adoption candidates not yet tagged).

    Shutting-down and terminated instances are not in `instances`: for planning they are gone. Shutting-down
    ones are listed in `departing` (the group cannot be deleted before they finish), and the client tokens of
    both in `gone_tokens`, so a token whose instance was terminated is never mistaken for a fresh launch
    that is not visible yet.
    """

    instances: tuple[ObservedInstance, ...] = ()
    security_groups: tuple[ObservedSecurityGroup, ...] = ()
    departing: tuple[str, ...] = ()
    gone_tokens: tuple[str, ...] = ()

    def owned_instances(self, owner: Owner) -> list[ObservedInstance]:
        """The instances tagged with this owner's name *and* uid (an adoption candidate is not one yet)."""
        return [i for i in self.instances if owner.owns(i.tag_map)]

    def owned_groups(self, owner: Owner) -> list[ObservedSecurityGroup]:
        return [g for g in self.security_groups if owner.owns(g.tag_map)]

    def owned_group(self, owner: Owner) -> ObservedSecurityGroup | None:
        return next(iter(self.owned_groups(owner)), None)


# --- Open edX hosts -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EdxHost:
    """An Open edX application host: where the config push goes, and whose groups may reach memcached."""

    instance_id: str
    private_ip: str
    security_group_ids: tuple[str, ...]
    state: str
