"""Security groups as packet filters: an instance's effective ingress compiled to an nftables table (pure text).

EC2 semantics, as the sandbox enforces them in each instance's network namespace:

* default deny for new inbound connections; replies to traffic the instance started, and further packets of a
  connection that was allowed, pass (``ct state established,related``) -- security groups are stateful;
* a rule allows one protocol (``tcp``/``udp``/``icmp``/a number, or ``-1`` for all) on a port range from one
  source: a CIDR, or a security group, meaning the private IPs of every instance whose ENI is in that group
  *now* (a group with no members allows nothing; a group may name itself);
* egress is not filtered (every group the operator makes keeps AWS's default allow-all egress).

The table is replaced atomically (one ``nft -f`` transaction), so a revoked rule takes effect for the next
connection at once, and connections already established stay up -- as EC2's connection tracking does.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = ["FAULT_TABLE", "SG_TABLE", "Ingress", "compile_ingress", "fault_ruleset"]

SG_TABLE = "erc_sg"
FAULT_TABLE = "erc_fault"
_PROTOCOLS = {"tcp": "tcp", "6": "tcp", "udp": "udp", "17": "udp", "icmp": "icmp", "1": "icmp"}


@dataclass(frozen=True)
class Ingress:
    """One ingress permission of a security group, with exactly one source (as moto stores them)."""

    group_id: str  # the group the rule belongs to (a comment in the ruleset)
    protocol: str
    from_port: int | None = None
    to_port: int | None = None
    cidr: str | None = None
    source_group_id: str | None = None


def _match(rule: Ingress) -> str | None:
    """The nft match for protocol and ports (None: a protocol nft cannot name, which the rule then skips)."""
    proto = str(rule.protocol).lower()
    if proto in ("-1", "all"):
        return ""
    name = _PROTOCOLS.get(proto)
    if name in ("tcp", "udp"):
        low, high = rule.from_port, rule.to_port
        if low is None or high is None or (low <= 0 and high >= 65535) or low < 0:
            return f"meta l4proto {name}"
        return f"{name} dport {low}" if low == high else f"{name} dport {low}-{high}"
    if name == "icmp":
        return "meta l4proto icmp"
    if proto.isdigit() and 0 <= int(proto) <= 255:
        return f"meta l4proto {int(proto)}"
    return None


def _sources(addresses: Sequence[str]) -> list[str]:
    """``ip saddr ...``/``ip6 saddr ...`` matches for a list of addresses or CIDRs (empty: nothing matches)."""
    v4, v6 = [], []
    for text in addresses:
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError:
            continue
        (v6 if net.version == 6 else v4).append(
            str(net.network_address) if net.num_addresses == 1 else str(net)
        )
    out = []
    for family, items in (("ip", sorted(set(v4))), ("ip6", sorted(set(v6)))):
        if items:
            out.append(
                f"{family} saddr {items[0]}"
                if len(items) == 1
                else f"{family} saddr {{ {', '.join(items)} }}"
            )
    return out


def compile_ingress(rules: Iterable[Ingress], members: Mapping[str, Sequence[str]]) -> str:
    """The nft script that (re)defines this instance's ingress filter; ``members`` maps a group id to the private
    IPs of the instances in it."""
    lines = [
        f"table inet {SG_TABLE}",
        f"delete table inet {SG_TABLE}",
        f"table inet {SG_TABLE} {{",
        "  chain ingress {",
        "    type filter hook input priority 0; policy drop;",
        "    ct state established,related accept",
        '    iifname "lo" accept',
    ]
    for rule in sorted(set(rules), key=repr):
        match = _match(rule)
        if match is None:
            continue
        if rule.cidr is not None:
            sources = _sources([rule.cidr])
        elif rule.source_group_id is not None:
            sources = _sources(members.get(rule.source_group_id, ()))
        else:
            sources = []
        for source in sources:
            body = " ".join(part for part in (source, match) if part)
            lines.append(f'    {body} accept comment "{rule.group_id}"')
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"


def fault_ruleset(*, drop_from: Iterable[str] = (), drop_interfaces: Iterable[str] = ()) -> str:
    """The sandbox's fault filter (what a network ACL or a broken link would do, invisible to the EC2 API):
    drop packets from ``drop_from`` arriving at this namespace, and anything routed through ``drop_interfaces``.
    Dropped, not rejected, so a dial times out as across a real partition."""
    lines = [f"table inet {FAULT_TABLE}", f"delete table inet {FAULT_TABLE}", f"table inet {FAULT_TABLE} {{"]
    sources = _sources(list(drop_from))
    if sources:
        lines += ["  chain input {", "    type filter hook input priority -10; policy accept;"]
        lines += [f"    {source} drop" for source in sources]
        lines.append("  }")
    interfaces = sorted(set(drop_interfaces))
    if interfaces:
        names = ", ".join(f'"{name}"' for name in interfaces)
        lines += ["  chain forward {", "    type filter hook forward priority -10; policy accept;"]
        lines += [f"    iifname {{ {names} }} drop", f"    oifname {{ {names} }} drop", "  }"]
    lines.append("}")
    return "\n".join(lines) + "\n"
