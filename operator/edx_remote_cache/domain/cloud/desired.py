"""The desired cache host: what the spec asks for, in the form AWS reports it (tags, rules, launch inputs)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from edx_remote_cache.domain.cloud.model import (
    ADOPTED_TAG,
    CLIENT_TOKEN_LIMIT,
    CONFIG_HASH_TAG,
    GENERATION_TAG,
    INDEX_TAG,
    NAME_TAG,
    SSH_PORT,
    IngressRule,
    Owner,
    Tags,
    _fit,
    _tags,
)
from edx_remote_cache.domain.cloud.normalize import canonical_cidr
from edx_remote_cache.domain.spec import EdxRemoteCacheSpec
from edx_remote_cache.domain.userdata import (
    render_memcached_conf,
    render_reconfigure_script,
    render_user_data,
)

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
