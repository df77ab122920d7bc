"""The operator's probe source: parsed and checked once, then a rule of its own on every cache security group."""

from __future__ import annotations

import pytest

from edx_remote_cache.domain.cloud.desired import desired_ingress, parse_probe_sources
from edx_remote_cache.domain.cloud.model import IngressRule


def test_probe_sources_are_group_ids_and_canonical_cidrs() -> None:
    assert parse_probe_sources("sg-0abc, 10.0.64.5/18  10.250.0.2") == (
        "sg-0abc",
        "10.0.64.0/18",
        "10.250.0.2/32",
    )
    assert parse_probe_sources("") == ()
    with pytest.raises(ValueError, match="neither a security-group id"):
        parse_probe_sources("eks-cluster")


def test_each_probe_source_is_a_memcached_port_rule_described_as_the_operators() -> None:
    rules = desired_ingress(
        port=11211,
        allow_groups=["sg-app"],
        allow_cidrs=[],
        ssh_cidrs=[],
        probe_sources=("sg-eks", "10.250.0.2/32"),
    )
    probe_rules = [r for r in rules if "operator probes" in r.description]
    assert sorted(probe_rules) == sorted(
        [
            IngressRule("tcp", 11211, 11211, group_id="sg-eks"),
            IngressRule("tcp", 11211, 11211, cidr_ipv4="10.250.0.2/32"),
        ]
    )
    assert len(rules) == 3  # the app group's rule, and only the port: nothing else opened


def test_without_a_probe_source_the_desired_rules_are_unchanged() -> None:
    plain = desired_ingress(port=11211, allow_groups=["sg-app"], allow_cidrs=[], ssh_cidrs=[])
    assert plain == desired_ingress(
        port=11211, allow_groups=["sg-app"], allow_cidrs=[], ssh_cidrs=[], probe_sources=()
    )
    assert [r.source for r in plain] == ["sg-app"]
