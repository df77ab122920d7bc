"""AWS answers -> model values, normalised to one canonical form (protocol names, canonical CIDRs, one rule per
source, sorted tags) so an unchanged resource compares equal and plans nothing."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from edx_remote_cache import OWNER_TAG
from edx_remote_cache.domain.cloud.model import (
    GONE_STATES,
    EdxHost,
    IngressRule,
    ObservedCloud,
    ObservedInstance,
    ObservedRule,
    ObservedSecurityGroup,
    _tags,
)

# --- security group rules -------------------------------------------------------------------------------

_PROTOCOL_NAMES = {"-1": "-1", "all": "-1", "6": "tcp", "17": "udp", "1": "icmp", "58": "icmpv6"}


def normalize_protocol(protocol: str | int) -> str:
    """AWS's spelling of an IP protocol: names for tcp/udp/icmp/icmpv6, `-1` for all, numbers otherwise."""
    text = str(protocol).strip().lower()
    return _PROTOCOL_NAMES.get(text, text)


def canonical_cidr(cidr: str) -> str:
    """`10.0.0.1/16` -> `10.0.0.0/16`, IPv6 compressed: both sides of a diff must spell a CIDR one way."""
    return str(ipaddress.ip_network(cidr.strip(), strict=False))


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


def edx_host_from_instance(raw: Mapping[str, Any]) -> EdxHost:
    inst = normalize_instance(raw)
    return EdxHost(inst.instance_id, inst.private_ip, inst.security_group_ids, inst.state)


def edx_security_groups(hosts: Iterable[EdxHost]) -> tuple[str, ...]:
    """The groups of every Open edX host that still exists: the default memcached allow-list."""
    return tuple(sorted({g for h in hosts if h.state not in GONE_STATES for g in h.security_group_ids}))
