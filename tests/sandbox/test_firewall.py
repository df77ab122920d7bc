"""Security groups compiled to nftables (pure text, no namespace needed), and the compiled text accepted by nft."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from edx_remote_cache.sandbox.firewall import SG_TABLE, Ingress, compile_ingress, fault_ruleset

MEMBERS = {"sg-app": ["10.0.1.5", "10.0.1.4"], "sg-cache": ["10.0.1.9"], "sg-empty": []}


def rules_of(script: str) -> list[str]:
    return [line.strip() for line in script.splitlines() if "comment" in line]


def test_default_deny_established_allowed_and_a_group_source_is_its_members_now() -> None:
    script = compile_ingress([Ingress("sg-cache", "tcp", 11211, 11211, source_group_id="sg-app")], MEMBERS)
    assert "policy drop;" in script and "ct state established,related accept" in script
    assert rules_of(script) == ['ip saddr { 10.0.1.4, 10.0.1.5 } tcp dport 11211 accept comment "sg-cache"']


def test_port_ranges_all_protocols_icmp_and_numbers() -> None:
    script = compile_ingress(
        [
            Ingress("sg-a", "tcp", 8000, 8010, cidr="10.0.0.0/16"),
            Ingress("sg-a", "-1", cidr="192.168.0.0/24"),
            Ingress("sg-a", "icmp", -1, -1, cidr="10.0.0.0/16"),
            Ingress("sg-a", "udp", 0, 65535, cidr="10.0.0.0/16"),
            Ingress("sg-a", "50", cidr="10.0.0.0/16"),
        ],
        MEMBERS,
    )
    assert sorted(rules_of(script)) == sorted(
        [
            'ip saddr 10.0.0.0/16 tcp dport 8000-8010 accept comment "sg-a"',
            'ip saddr 192.168.0.0/24 accept comment "sg-a"',
            'ip saddr 10.0.0.0/16 meta l4proto icmp accept comment "sg-a"',
            'ip saddr 10.0.0.0/16 meta l4proto udp accept comment "sg-a"',
            'ip saddr 10.0.0.0/16 meta l4proto 50 accept comment "sg-a"',
        ]
    )


def test_a_self_referencing_group_admits_its_own_members_and_an_empty_group_admits_nobody() -> None:
    script = compile_ingress(
        [
            Ingress("sg-cache", "tcp", 11211, 11211, source_group_id="sg-cache"),
            Ingress("sg-cache", "tcp", 11211, 11211, source_group_id="sg-empty"),
            Ingress("sg-cache", "tcp", 11211, 11211, source_group_id="sg-deleted"),
        ],
        MEMBERS,
    )
    assert rules_of(script) == ['ip saddr 10.0.1.9 tcp dport 11211 accept comment "sg-cache"']


def test_ipv6_sources_use_ip6_and_garbage_is_skipped() -> None:
    script = compile_ingress(
        [Ingress("sg-a", "tcp", 22, 22, cidr="::/0"), Ingress("sg-a", "tcp", 22, 22, cidr="not-a-cidr")],
        MEMBERS,
    )
    assert rules_of(script) == ['ip6 saddr ::/0 tcp dport 22 accept comment "sg-a"']


def test_the_same_rules_compile_to_the_same_text_whatever_their_order() -> None:
    rules = [
        Ingress("sg-a", "tcp", 1, 2, cidr="10.0.0.0/8"),
        Ingress("sg-b", "udp", 3, 3, cidr="10.1.0.0/16"),
    ]
    assert compile_ingress(rules, MEMBERS) == compile_ingress(list(reversed(rules)), MEMBERS)


@pytest.mark.skipif(shutil.which("nft") is None or shutil.which("unshare") is None, reason="needs nft")
def test_nft_accepts_every_compiled_script() -> None:
    """Checked in a throwaway network namespace (unshare -n): nft -c parses and validates, nothing is applied."""
    scripts = [
        compile_ingress(
            [
                Ingress("sg-cache", "tcp", 11211, 11211, source_group_id="sg-app"),
                Ingress("sg-cache", "tcp", 8000, 8010, cidr="10.0.0.0/16"),
                Ingress("sg-cache", "-1", cidr="192.168.0.0/24"),
                Ingress("sg-cache", "icmp", -1, -1, cidr="10.0.0.0/16"),
                Ingress("sg-cache", "tcp", 22, 22, cidr="::/0"),
            ],
            MEMBERS,
        ),
        fault_ruleset(drop_from=["10.0.1.4", "10.250.0.2"], drop_interfaces=["op"]),
        fault_ruleset(),
    ]
    for script in scripts:
        done = subprocess.run(
            ["unshare", "-n", "nft", "-c", "-f", "-"], input=script, text=True, capture_output=True
        )
        if done.returncode != 0 and "Operation not permitted" in done.stderr:
            pytest.skip("no CAP_NET_ADMIN for a throwaway namespace")
        assert done.returncode == 0, (script, done.stderr)
    assert f"table inet {SG_TABLE}" in scripts[0]
