"""What the sandbox network reads from moto's EC2 model: instances with their ENI groups, and each group's ingress.

Moto keeps an instance's groups in two places (the instance and its primary ENI) and does not keep them equal:
an instance launched with ``NetworkInterfaces=[{"Groups": [...]}]`` reports the VPC's default group, and
ModifyInstanceAttribute(Groups) leaves the ENI as it was. On EC2 they are one thing, the primary ENI's groups,
so :func:`align_eni_groups` makes them equal after every call that can set either.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

from edx_remote_cache.sandbox.firewall import Ingress
from edx_remote_cache.sandbox.network import InstanceNet

__all__ = ["align_eni_groups", "observe"]


def _primary_eni(instance: Any) -> Any:
    nics = getattr(instance, "nics", None) or {}
    return nics.get(0)


def align_eni_groups(backends: Iterable[Any], *, eni_wins: bool) -> None:
    """Give every instance and its primary ENI the same groups: the ENI's (``eni_wins``) or the instance's."""
    for backend in backends:
        for instance in list(backend.all_instances()):
            eni = _primary_eni(instance)
            if eni is None:
                continue
            eni_groups = list(getattr(eni, "_group_set", []) or [])
            if eni_wins and eni_groups:
                instance.security_groups = eni_groups
            elif not eni_wins and instance.security_groups:
                eni._group_set = list(instance.security_groups)


def _subnet_cidr(instance: Any) -> str:
    eni = _primary_eni(instance)
    with contextlib.suppress(AttributeError):
        return str(eni.subnet.cidr_block)
    return ""


def _group_ids(instance: Any) -> tuple[str, ...]:
    eni = _primary_eni(instance)
    groups = list(getattr(eni, "_group_set", []) or []) or list(instance.security_groups or [])
    return tuple(sorted({group.id for group in groups}))


def _rules(group: Any) -> list[Ingress]:
    rules = []
    for rule in list(group.ingress_rules):
        protocol = str(rule.ip_protocol or "-1")
        ports = (None, None) if protocol == "-1" else (rule.from_port, rule.to_port)
        cidr = (rule.ip_range or {}).get("CidrIp") or (rule.ip_range or {}).get("CidrIpv6")
        source = (rule.source_group or {}).get("GroupId")
        if cidr or source:
            rules.append(Ingress(group.id, protocol, ports[0], ports[1], cidr=cidr, source_group_id=source))
    return rules


def observe(backends: Iterable[Any]) -> tuple[list[InstanceNet], dict[str, list[Ingress]]]:
    """Every instance (with its ENI's groups) and every group's ingress rules, across the regions in use.
    Moto's dicts may change under a concurrent request: a read that trips over one is simply repeated."""
    for _attempt in range(5):
        try:
            return _observe(list(backends))
        except RuntimeError:  # "dictionary changed size during iteration"
            continue
    return _observe(list(backends))


def _observe(backends: list[Any]) -> tuple[list[InstanceNet], dict[str, list[Ingress]]]:
    instances: list[InstanceNet] = []
    groups: dict[str, list[Ingress]] = {}
    for backend in backends:
        for instance in list(backend.all_instances()):
            instances.append(
                InstanceNet(
                    instance_id=instance.id,
                    state=str(instance.state),
                    private_ip=str(instance.private_ip or ""),
                    subnet_cidr=_subnet_cidr(instance),
                    group_ids=_group_ids(instance),
                )
            )
        for by_id in list(backend.groups.values()):
            for group in list(by_id.values()):
                groups[group.id] = _rules(group)
    return instances, groups
