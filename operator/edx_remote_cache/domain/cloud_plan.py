"""Pure planning for the cache host: desired state, observed state as AWS reports it, and the ordered actions
that take one to the other.

Nothing here talks to AWS (the adapter is `edx_remote_cache.adapters.aws`). Both sides are normalised to the form AWS
returns (canonical CIDRs, protocol names, one rule per source, sorted) so an unchanged resource plans nothing,
and a plan is a tuple of small frozen actions a table test can compare with `==`.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from edx_remote_cache import OWNER_TAG, OWNER_UID_TAG
from edx_remote_cache.domain.spec import EdxRemoteCacheSpec
from edx_remote_cache.domain.userdata import (
    render_memcached_conf,
    render_reconfigure_script,
    render_user_data,
)

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


# --- security group rules -------------------------------------------------------------------------------

_PROTOCOL_NAMES = {"-1": "-1", "all": "-1", "6": "tcp", "17": "udp", "1": "icmp", "58": "icmpv6"}


def normalize_protocol(protocol: str | int) -> str:
    """AWS's spelling of an IP protocol: names for tcp/udp/icmp/icmpv6, `-1` for all, numbers otherwise."""
    text = str(protocol).strip().lower()
    return _PROTOCOL_NAMES.get(text, text)


def canonical_cidr(cidr: str) -> str:
    """`10.0.0.1/16` -> `10.0.0.0/16`, IPv6 compressed: both sides of a diff must spell a CIDR one way."""
    return str(ipaddress.ip_network(cidr.strip(), strict=False))


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


def _ports(raw: Mapping[str, Any], protocol: str) -> tuple[int, int]:
    if protocol == "-1":
        return -1, -1
    return int(raw.get("FromPort", -1)), int(raw.get("ToPort", -1))


def rules_from_ip_permissions(permissions: Iterable[Mapping[str, Any]]) -> tuple[IngressRule, ...]:
    """Split DescribeSecurityGroups' grouped `IpPermissions` into one sorted rule per source."""
    rules: set[IngressRule] = set()
    for perm in permissions:
        protocol = normalize_protocol(perm.get("IpProtocol", "-1"))
        lo, hi = _ports(perm, protocol)
        for r4 in perm.get("IpRanges", ()):
            rules.add(IngressRule(protocol, lo, hi, cidr_ipv4=canonical_cidr(r4["CidrIp"])))
        for r6 in perm.get("Ipv6Ranges", ()):
            rules.add(IngressRule(protocol, lo, hi, cidr_ipv6=canonical_cidr(r6["CidrIpv6"])))
        for pair in perm.get("UserIdGroupPairs", ()):
            if pair.get("GroupId"):
                rules.add(IngressRule(protocol, lo, hi, group_id=pair["GroupId"]))
        for pl in perm.get("PrefixListIds", ()):
            rules.add(IngressRule(protocol, lo, hi, prefix_list_id=pl["PrefixListId"]))
    return tuple(sorted(rules))


def rule_from_security_group_rule(raw: Mapping[str, Any]) -> ObservedRule:
    """One DescribeSecurityGroupRules item (ingress or egress) as an ObservedRule keeping its rule id."""
    protocol = normalize_protocol(raw.get("IpProtocol", "-1"))
    lo, hi = _ports(raw, protocol)
    referenced = raw.get("ReferencedGroupInfo") or {}
    rule = IngressRule(
        protocol,
        lo,
        hi,
        cidr_ipv4=canonical_cidr(raw["CidrIpv4"]) if raw.get("CidrIpv4") else "",
        cidr_ipv6=canonical_cidr(raw["CidrIpv6"]) if raw.get("CidrIpv6") else "",
        group_id=referenced.get("GroupId", ""),
        prefix_list_id=raw.get("PrefixListId", ""),
    )
    return ObservedRule(rule, raw.get("SecurityGroupRuleId"))


# --- observed state ---------------------------------------------------------------------------------------


def _tag_map(raw_tags: Iterable[Mapping[str, str]] | None) -> dict[str, str]:
    return {t["Key"]: t.get("Value", "") for t in raw_tags or ()}


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


def _timestamp(value: Any) -> float:
    if hasattr(value, "timestamp"):
        return float(value.timestamp())
    return float(value) if isinstance(value, int | float) else 0.0


def normalize_instance(raw: Mapping[str, Any]) -> ObservedInstance:
    """One DescribeInstances item as an ObservedInstance."""
    interfaces = sorted(
        raw.get("NetworkInterfaces") or (), key=lambda n: (n.get("Attachment") or {}).get("DeviceIndex", 0)
    )
    primary = interfaces[0] if interfaces else {}
    groups = primary.get("Groups") if primary else None
    if groups is None:
        groups = raw.get("SecurityGroups") or ()
    volumes = tuple(
        m["Ebs"]["VolumeId"]
        for m in raw.get("BlockDeviceMappings") or ()
        if (m.get("Ebs") or {}).get("VolumeId")
    )
    return ObservedInstance(
        instance_id=raw["InstanceId"],
        state=(raw.get("State") or {}).get("Name", "pending"),
        instance_type=raw.get("InstanceType", ""),
        tags=_tags(_tag_map(raw.get("Tags"))),
        subnet_id=raw.get("SubnetId") or "",
        vpc_id=raw.get("VpcId") or "",
        private_ip=raw.get("PrivateIpAddress") or "",
        image_id=raw.get("ImageId") or "",
        security_group_ids=tuple(sorted({g["GroupId"] for g in groups})),
        network_interface_id=primary.get("NetworkInterfaceId", "") if primary else "",
        volume_ids=volumes,
        client_token=raw.get("ClientToken") or "",
        launch_time=_timestamp(raw.get("LaunchTime")),
        metadata_http_tokens=(raw.get("MetadataOptions") or {}).get("HttpTokens", ""),
    )


def normalize_security_group(
    raw: Mapping[str, Any], rules: Iterable[ObservedRule] | None = None
) -> ObservedSecurityGroup:
    """One DescribeSecurityGroups item; `rules` (from DescribeSecurityGroupRules) adds rule ids when given."""
    if rules is None:
        ingress = tuple(ObservedRule(r) for r in rules_from_ip_permissions(raw.get("IpPermissions") or ()))
    else:
        ingress = tuple(sorted(rules))
    return ObservedSecurityGroup(
        group_id=raw["GroupId"],
        name=raw.get("GroupName", ""),
        vpc_id=raw.get("VpcId") or "",
        tags=_tags(_tag_map(raw.get("Tags"))),
        ingress=ingress,
    )


def group_by_owner(
    *,
    instances: Iterable[Mapping[str, Any]],
    security_groups: Iterable[Mapping[str, Any]],
    rules: Mapping[str, Sequence[ObservedRule]] | None = None,
) -> dict[str, ObservedCloud]:
    """Raw describe results for a whole region -> owner key (`namespace/name`) -> what that owner has."""
    found: dict[str, _Found] = {}
    for raw in instances:
        key = _tag_map(raw.get("Tags")).get(OWNER_TAG)
        if key is None:
            continue
        bucket = found.setdefault(key, _Found())
        state = (raw.get("State") or {}).get("Name")
        if state in GONE_STATES:
            if raw.get("ClientToken"):
                bucket.gone_tokens.append(raw["ClientToken"])
            if state == "shutting-down":
                bucket.departing.append(raw["InstanceId"])
        else:
            bucket.instances.append(normalize_instance(raw))
    for raw in security_groups:
        key = _tag_map(raw.get("Tags")).get(OWNER_TAG)
        if key is None:
            continue
        group_rules = None if rules is None else rules.get(raw["GroupId"], ())
        found.setdefault(key, _Found()).groups.append(normalize_security_group(raw, group_rules))
    return {key: bucket.freeze() for key, bucket in found.items()}


@dataclass
class _Found:
    instances: list[ObservedInstance] = field(default_factory=list)
    groups: list[ObservedSecurityGroup] = field(default_factory=list)
    departing: list[str] = field(default_factory=list)
    gone_tokens: list[str] = field(default_factory=list)

    def freeze(self) -> ObservedCloud:
        return ObservedCloud(
            instances=tuple(sorted(self.instances, key=lambda x: x.instance_id)),
            security_groups=tuple(sorted(self.groups, key=lambda x: x.group_id)),
            departing=tuple(sorted(self.departing)),
            gone_tokens=tuple(sorted(set(self.gone_tokens))),
        )


# --- Open edX hosts -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EdxHost:
    """An Open edX application host: where the config push goes, and whose groups may reach memcached."""

    instance_id: str
    private_ip: str
    security_group_ids: tuple[str, ...]
    state: str


def edx_host_from_instance(raw: Mapping[str, Any]) -> EdxHost:
    inst = normalize_instance(raw)
    return EdxHost(inst.instance_id, inst.private_ip, inst.security_group_ids, inst.state)


def edx_security_groups(hosts: Iterable[EdxHost]) -> tuple[str, ...]:
    """The groups of every Open edX host that still exists: the default memcached allow-list."""
    return tuple(sorted({g for h in hosts if h.state not in GONE_STATES for g in h.security_group_ids}))


# --- desired state ------------------------------------------------------------------------------------------


def config_hash(conf: str) -> str:
    """Short digest of the rendered memcached.conf, tagged on the instance so a `memcached.*` change shows."""
    return hashlib.sha256(conf.encode()).hexdigest()[:16]


def client_token(*, owner_uid: str, index: int, generation: int) -> str:
    """RunInstances' idempotency token: the same (CR, replica, generation) can never launch twice."""
    token = f"erc-{owner_uid}-{index}-{generation}"
    if len(token) <= CLIENT_TOKEN_LIMIT and token.isascii():
        return token
    return "erc-" + hashlib.sha256(token.encode()).hexdigest()[: CLIENT_TOKEN_LIMIT - 4]


@dataclass(frozen=True)
class DesiredCacheHost:
    """What the spec asks of the cloud, with every lookup (AMI, VPC, Open edX groups) already resolved."""

    owner: Owner
    replicas: int
    image_id: str
    root_device_name: str
    instance_type: str
    subnet_id: str
    vpc_id: str
    port: int
    ingress: tuple[IngressRule, ...]
    user_data: str
    reconfigure_script: str
    config_hash: str
    security_group_name: str
    key_name: str | None = None
    iam_instance_profile: str | None = None
    root_volume_gib: int = 8
    root_volume_encrypted: bool = True
    user_tags: Tags = ()
    adopt_instance_ids: tuple[str, ...] = ()
    replacements: tuple[tuple[int, int], ...] = ()

    def generation(self, index: int) -> int:
        """The launch generation the caller last recorded for a replica (0 before any replacement)."""
        return dict(self.replacements).get(index, 0)

    def client_token(self, index: int, generation: int) -> str:
        return client_token(owner_uid=self.owner.uid, index=index, generation=generation)

    def instance_name(self, index: int) -> str:
        return _fit(f"erc-{self.owner.namespace}-{self.owner.name}-{index}", 256)

    def base_tags(self) -> dict[str, str]:
        return {**dict(self.user_tags), **self.owner.ownership_tags()}

    def managed_instance_tags(self, index: int, *, adopted: bool) -> dict[str, str]:
        """Tags enforced on an instance every pass (not the launch-time generation and config hash)."""
        tags = {**self.base_tags(), INDEX_TAG: str(index)}
        if adopted:
            tags[ADOPTED_TAG] = "true"
        else:
            tags[NAME_TAG] = self.instance_name(index)
        return tags

    def launch_tags(self, index: int, generation: int) -> dict[str, str]:
        return {
            **self.managed_instance_tags(index, adopted=False),
            GENERATION_TAG: str(generation),
            CONFIG_HASH_TAG: self.config_hash,
        }

    def volume_tags(self, index: int) -> dict[str, str]:
        return {**self.base_tags(), INDEX_TAG: str(index), NAME_TAG: self.instance_name(index)}

    def group_tags(self) -> dict[str, str]:
        return {**self.base_tags(), NAME_TAG: self.security_group_name}


def security_group_name(owner: Owner) -> str:
    """Unique per CR incarnation, so a group left behind by `Retain` is never mistaken for ours."""
    return _fit(f"erc-{owner.namespace}-{owner.name}-{owner.uid[:8]}", 255)


def parse_probe_sources(text: str) -> tuple[str, ...]:
    """The operator's probe source setting (comma/space separated security-group ids and IPv4 CIDRs), checked:
    the operator's probes cross each cache host's security group like any client's, so it needs a rule too."""
    sources = []
    for item in text.replace(",", " ").split():
        if item.startswith("sg-"):
            sources.append(item)
            continue
        try:
            sources.append(canonical_cidr(item if "/" in item else f"{item}/{128 if ':' in item else 32}"))
        except ValueError as exc:
            raise ValueError(
                f"probe source {item!r} is neither a security-group id (sg-...) nor a CIDR"
            ) from exc
    return tuple(sources)


def desired_ingress(
    *,
    port: int,
    allow_groups: Iterable[str],
    allow_cidrs: Iterable[str],
    ssh_cidrs: Iterable[str],
    probe_sources: Iterable[str] = (),
) -> tuple[IngressRule, ...]:
    """TCP `port` from each allowed group and CIDR and from the operator's probe sources, TCP 22 from the SSH
    CIDRs, nothing else. The probe-source rules are the operator's own (described as such), kept and
    drift-corrected like the others."""
    rules = {
        IngressRule("tcp", port, port, group_id=g, description=f"memcached from {g}") for g in allow_groups
    }
    rules |= {
        IngressRule("tcp", port, port, cidr_ipv4=canonical_cidr(c), description=f"memcached from {c}")
        for c in allow_cidrs
    }
    rules |= {
        IngressRule("tcp", SSH_PORT, SSH_PORT, cidr_ipv4=canonical_cidr(c), description=f"ssh from {c}")
        for c in ssh_cidrs
    }
    for source in probe_sources:
        described = f"edx-remote-cache operator probes from {source}"
        if source.startswith("sg-"):
            rules.add(IngressRule("tcp", port, port, group_id=source, description=described))
        elif ":" in source:
            rules.add(IngressRule("tcp", port, port, cidr_ipv6=canonical_cidr(source), description=described))
        else:
            rules.add(IngressRule("tcp", port, port, cidr_ipv4=canonical_cidr(source), description=described))
    return tuple(sorted(rules))


def desired_from_spec(
    spec: EdxRemoteCacheSpec,
    *,
    owner: Owner,
    ami_id: str,
    root_device_name: str,
    vpc_id: str,
    edx_security_groups: Iterable[str] = (),
    replacements: Mapping[int, int] | None = None,
    probe_sources: Iterable[str] = (),
) -> DesiredCacheHost:
    """The desired cache host; `edx_security_groups` is the allow-list when `allowFromSecurityGroups` is empty.

    `replacements` is the caller's record of index -> launch generation (see `record_replacements`).
    """
    settings = spec.memcached_settings
    allow_groups = spec.network.allow_from_security_groups or sorted(set(edx_security_groups))
    return DesiredCacheHost(
        owner=owner,
        replicas=spec.instance.replicas,
        image_id=ami_id,
        root_device_name=root_device_name,
        instance_type=spec.instance.instance_type,
        subnet_id=spec.instance.subnet_id,
        vpc_id=vpc_id,
        port=settings.port,
        ingress=desired_ingress(
            port=settings.port,
            allow_groups=allow_groups,
            allow_cidrs=spec.network.allow_from_cidrs,
            ssh_cidrs=spec.network.ssh_from_cidrs,
            probe_sources=probe_sources,
        ),
        user_data=render_user_data(settings),
        reconfigure_script=render_reconfigure_script(settings),
        config_hash=config_hash(render_memcached_conf(settings)),
        security_group_name=security_group_name(owner),
        key_name=spec.instance.key_name,
        iam_instance_profile=spec.instance.iam_instance_profile,
        root_volume_gib=spec.instance.root_volume.size_gi_b,
        root_volume_encrypted=spec.instance.root_volume.encrypted,
        user_tags=_tags(spec.instance.tags),
        adopt_instance_ids=tuple(spec.instance.adopt_instance_ids),
        replacements=tuple(sorted((replacements or {}).items())),
    )


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
    until: Literal["stopped", "running", "visible", "gone"]
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
    grace_seconds: float = LAUNCH_GRACE_SECONDS,
) -> Plan:
    """The actions that bring `observed` to `desired`; empty when they already match.

    `launches` is the caller's record of client token -> when RunInstances was called with it, and `replace`
    the instance ids the caller wants replaced (unhealthy, or no SSM agent for a reconfigure). Disruptive
    changes (instance type, subnet) touch one instance per pass and only while every other replica runs.
    """
    owner = desired.owner
    inputs = _LaunchInputs(launches or {}, frozenset(observed.gone_tokens), now, grace_seconds)
    notes: list[str] = []
    ours = [i for i in observed.instances if owner.owns(i.tag_map)]
    for other in observed.instances:
        if other.tag(OWNER_TAG) == owner.key and not owner.owns(other.tag_map):
            notes.append(f"{other.instance_id} is tagged for an earlier {owner.key}; not touched")
    candidates = _adoption_candidates(desired, observed, ours, notes)

    group, stale_groups = _pick_group(desired, [g for g in observed.security_groups if owner.owns(g.tag_map)])
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
    # One disruptive change at a time, and only while every other replica is serving.
    if p.disruptive and not p.replacements and not p.all_running and p.not_running:
        reason = "the next disruptive change waits until every replica runs"
        p.waits.append(WaitFor(tuple(p.not_running), "running", reason))
    elif p.disruptive and p.all_running and not p.replacements:
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
    if slots.extras:
        if p.all_running:
            for extra in sorted(slots.extras, key=_extra_order):
                actions.append(TerminateInstance(extra.instance_id, _extra_reason(extra, desired)))
        else:
            notes.append("extra instances are kept until every replica is running")
    in_use = {g for i in ours for g in i.security_group_ids}
    actions += [DeleteSecurityGroup(s.group_id) for s in stale_groups if s.group_id not in in_use]
    actions += list(dict.fromkeys(p.waits))
    return Plan(tuple(actions), tuple(notes + p.notes))


def _extra_reason(inst: ObservedInstance, desired: DesiredCacheHost) -> str:
    if inst.index is not None and inst.index >= desired.replicas:
        return f"replicas scaled down to {desired.replicas}"
    return "extra instance for a replica already served"


def _replacement(
    desired: DesiredCacheHost, inst: ObservedInstance, index: int, group_id: str | None, inputs: _LaunchInputs
) -> list[Action]:
    """Launch the next generation first, then terminate the old one (a failed launch leaves the old running)."""
    start = max(desired.generation(index), inst.generation + 1)
    kind, generation, token = _choose_launch(desired, index, start=start, inputs=inputs)
    if kind == "wait":
        return [WaitFor((token,), "visible", f"replacement for replica {index} was launched with {token}")]
    return [
        _run(desired, index, generation, group_id, f"replica {index}: replaces {inst.instance_id}"),
        TerminateInstance(inst.instance_id, f"replaced by generation {generation}"),
    ]


def endpoints(*, desired: DesiredCacheHost, observed: ObservedCloud) -> tuple[str, ...]:
    """`ip:port` of each running replica, ordered by replica index (stable across reconciles)."""
    ours = [i for i in observed.instances if desired.owner.owns(i.tag_map)]
    candidates = {i.instance_id: i for i in ours}
    slots = _assign_slots(desired, ours, candidates)
    return tuple(
        f"{inst.private_ip}:{desired.port}"
        for _, inst in sorted(slots.primaries.items())
        if inst.state == "running" and inst.private_ip
    )


# --- teardown ------------------------------------------------------------------------------------------------


def teardown_plan(*, observed: ObservedCloud, owner: Owner, policy: DeletionPolicy) -> Plan:
    """What deleting the CR does to AWS; an empty plan means finished.

    Delete: terminate launched instances, wait until they are gone, then delete the group (DependencyViolation
    is retryable while interfaces detach). Adopted hosts are released, never destroyed: our group comes off
    and our tags go. Retain: only the ownership tags go; AWS is otherwise untouched.
    """
    ours = [i for i in observed.instances if owner.owns(i.tag_map)]
    groups = [g for g in observed.security_groups if owner.owns(g.tag_map)]
    ownership = (OWNER_TAG, OWNER_UID_TAG)
    if policy == "Retain":
        ids = tuple(i.instance_id for i in ours) + tuple(v for i in ours for v in i.volume_ids)
        ids += tuple(g.group_id for g in groups)
        return Plan((UntagResources(ids, ownership),) if ids else ())
    actions: list[Action] = []
    group_ids = {g.group_id for g in groups}
    launched = [i for i in ours if not i.adopted]
    for inst in ours:
        if inst.adopted:
            if group_ids & set(inst.security_group_ids):
                keep = tuple(g for g in inst.security_group_ids if g not in group_ids)
                actions.append(DetachSecurityGroup(inst.instance_id, inst.network_interface_id, keep))
            actions.append(
                UntagResources((inst.instance_id,), (*ownership, INDEX_TAG, ADOPTED_TAG, CONFIG_HASH_TAG))
            )
    for inst in sorted(launched, key=_extra_order):
        actions.append(TerminateInstance(inst.instance_id, "EdxRemoteCache deleted"))
    pending = tuple(i.instance_id for i in launched) + observed.departing
    if pending:
        actions.append(WaitFor(pending, "gone", "instances must be gone before the security group can go"))
    else:
        actions.extend(DeleteSecurityGroup(g) for g in sorted(group_ids))
    return Plan(tuple(actions))


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
