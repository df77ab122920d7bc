"""The sandbox VPC: a real private network of Linux network namespaces, one per EC2 instance.

Layout (every link lives inside namespaces this module creates; the machine's own namespace gets none)::

    <prefix>-vpc   the VPC's router: bridge ``br0`` carrying each subnet's gateway (.1), and ``op`` towards
                   the operator; IPv4 forwarding on, no default route
    <prefix>-op    "the cluster": ``eth0`` at OPERATOR_IP (outside the VPC, like an EKS pod network routed into
                   it), one route: the VPC CIDR via the router
    <prefix>-<instance id>
                   one per instance that is not terminated: ``eth0`` (a veth into ``br0``) at the private IP EC2
                   reports, routes to its subnet, the VPC and the operator's network; the instance's security
                   groups as an nftables table (sandbox/firewall.py), recompiled after every EC2 call that can
                   change them

Safety by construction: no namespace has a default route, so a dial to anything outside the sandbox fails at
once with "network unreachable"; the root namespace gets no address or route in the VPC or operator CIDR (only
``ip netns`` bind mounts under /run/netns). Names are ``erc<pid>s<n>-...`` so a later sandbox can sweep what a
killed one left behind (only namespaces whose owning pid is dead, and only with this prefix).
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import os
import re
import shutil
import threading
from collections.abc import Iterable
from dataclasses import dataclass

from edx_remote_cache.sandbox import netns
from edx_remote_cache.sandbox.firewall import Ingress, compile_ingress, fault_ruleset

__all__ = [
    "OPERATOR_CIDR",
    "OPERATOR_IP",
    "InstanceNet",
    "NetworkSetupError",
    "SandboxNetwork",
    "sweep_dead_sandboxes",
]

OPERATOR_CIDR = "10.250.0.0/30"
ROUTER_OPERATOR_IP = "10.250.0.1"
OPERATOR_IP = "10.250.0.2"
NAME_RE = re.compile(r"^erc(\d+)s\d+-")
_SERIAL = itertools.count(1)


class NetworkSetupError(RuntimeError):
    """The machine cannot give the sandbox its private network; the message says what to do."""


@dataclass(frozen=True)
class InstanceNet:
    """What the network needs to know of one EC2 instance."""

    instance_id: str
    state: str
    private_ip: str
    subnet_cidr: str
    group_ids: tuple[str, ...]


def sweep_dead_sandboxes() -> list[str]:
    """Delete namespaces left by sandboxes whose process died (SIGKILL): ours by name, owner pid gone."""
    removed = []
    with contextlib.suppress(FileNotFoundError):
        for entry in sorted(netns.NETNS_DIR.iterdir()):
            match = NAME_RE.match(entry.name)
            if match and not os.path.exists(f"/proc/{match.group(1)}"):
                netns.run(["ip", "netns", "del", entry.name], check=False)
                if not entry.exists():
                    removed.append(entry.name)
    return removed


def check_capability() -> None:
    """Refuse, in one sentence, where namespaces cannot be made."""
    missing = [tool for tool in ("ip", "nft", "nsenter") if shutil.which(tool) is None]
    if missing:
        raise NetworkSetupError(
            f"the sandbox VPC needs {', '.join(missing)} (Debian: apt-get install iproute2 nftables util-linux; "
            "`make install` does it)"
        )
    if os.geteuid() != 0:
        raise NetworkSetupError(
            "the sandbox VPC creates network namespaces, veths and nftables rules, which needs CAP_NET_ADMIN "
            "and CAP_SYS_ADMIN: run it as root (e.g. `sudo make demo`, or in a container started with "
            "--cap-add NET_ADMIN --cap-add SYS_ADMIN)"
        )


class SandboxNetwork:
    """Creates, reshapes and removes the sandbox VPC's namespaces (see the module docstring)."""

    def __init__(self, vpc_cidr: str) -> None:
        self.vpc_cidr = vpc_cidr
        self.prefix = f"erc{os.getpid()}s{next(_SERIAL)}"
        self.vpc_ns = f"{self.prefix}-vpc"
        self.operator_ns = f"{self.prefix}-op"
        self.operator_ip = OPERATOR_IP
        self.operator_cidr = OPERATOR_CIDR
        self._instances: dict[str, InstanceNet] = {}
        self._applied: dict[str, str] = {}  # namespace -> the nft script last applied
        self._gateways: set[str] = set()
        self._released: set[str] = set()  # private IPs a removed instance held: the next owner is a reuse
        self._veths = itertools.count(1)
        self._bridges: list[netns.PortBridge] = []
        self._blocked: set[frozenset[str]] = set()
        self._partitioned = False
        self._lock = threading.RLock()
        self._started = False

    # -- lifecycle ----------------------------------------------------------------------------------------------------

    def start(self) -> None:
        check_capability()
        sweep_dead_sandboxes()
        self._started = True
        try:
            for name in (self.vpc_ns, self.operator_ns):
                netns.run(["ip", "netns", "add", name])
        except RuntimeError as exc:
            raise NetworkSetupError(
                f"cannot create network namespaces ({exc}); run the sandbox as root"
            ) from exc
        netns.run(
            ["ip", "-batch", "-"],
            netns=self.vpc_ns,
            stdin="link set lo up\n"
            "link add br0 type bridge\n"
            "link set br0 up\n"
            f"link add op type veth peer name eth0 netns {self.operator_ns}\n"
            f"addr add {ROUTER_OPERATOR_IP}/30 dev op\n"
            "link set op up\n",
        )
        netns.run(["sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"], netns=self.vpc_ns)
        netns.run(
            ["ip", "-batch", "-"],
            netns=self.operator_ns,
            stdin="link set lo up\n"
            f"addr add {OPERATOR_IP}/30 dev eth0\n"
            "link set eth0 up\n"
            f"route add {self.vpc_cidr} via {ROUTER_OPERATOR_IP}\n",
        )

    def stop(self) -> None:
        """Remove every namespace (their veths, bridge and nft tables go with them). Idempotent."""
        with self._lock:
            for bridge in self._bridges:
                with contextlib.suppress(OSError):
                    bridge.close()
            self._bridges.clear()
            if not self._started:
                return
            names = [self.namespace(iid) for iid in self._instances] + [self.operator_ns, self.vpc_ns]
            for name in names:
                if netns.netns_path(name).exists():
                    netns.run(["ip", "netns", "del", name], check=False)
            self._instances.clear()
            self._applied.clear()
            self._started = False

    # -- names --------------------------------------------------------------------------------------------------------

    def namespace(self, target: str) -> str:
        """The namespace of ``target``: an instance id, ``operator`` or ``vpc``."""
        if target == "operator":
            return self.operator_ns
        if target == "vpc":
            return self.vpc_ns
        return f"{self.prefix}-{target}"

    def has(self, instance_id: str) -> bool:
        with self._lock:
            return instance_id in self._instances

    def namespaces(self) -> list[str]:
        with self._lock:
            return [self.vpc_ns, self.operator_ns, *(self.namespace(i) for i in self._instances)]

    # -- the emulators, reachable from the operator's namespace --------------------------------------------------------

    def expose_to_operator(self, port: int) -> None:
        """127.0.0.1:``port`` inside the operator's namespace reaches 127.0.0.1:``port`` of this machine."""
        self._bridges.append(netns.PortBridge(port, listen_ns=self.operator_ns, connect_ns=None))

    def expose_from_operator(self, port: int) -> netns.PortBridge:
        """127.0.0.1:``port`` on this machine reaches 127.0.0.1:``port`` in the operator's namespace
        (the operator's liveness and metrics endpoints, for the harness)."""
        bridge = netns.PortBridge(port, listen_ns=None, connect_ns=self.operator_ns)
        self._bridges.append(bridge)
        return bridge

    # -- EC2 → namespaces and filters ---------------------------------------------------------------------------------

    def sync(self, instances: Iterable[InstanceNet], groups: dict[str, list[Ingress]]) -> None:
        """Make the namespaces match EC2: create for new instances, remove for terminated ones, and recompile
        every instance's security-group filter (applied only where the result changed)."""
        with self._lock:
            if not self._started:
                return
            live = {
                i.instance_id: i
                for i in instances
                if i.state not in ("terminated", "shutting-down")
                and i.private_ip
                and ipaddress.ip_address(i.private_ip) in ipaddress.ip_network(self.vpc_cidr)
            }
            for iid in [i for i in self._instances if i not in live]:
                self._remove(iid)
            for iid, inst in live.items():
                if iid not in self._instances:
                    self._create(inst)
                self._instances[iid] = inst
            members: dict[str, list[str]] = {}
            for inst in live.values():
                for gid in inst.group_ids:
                    members.setdefault(gid, []).append(inst.private_ip)
            for iid, inst in live.items():
                rules = [rule for gid in inst.group_ids for rule in groups.get(gid, ())]
                self._apply(self.namespace(iid), compile_ingress(rules, members))

    def _create(self, inst: InstanceNet) -> None:
        name = self.namespace(inst.instance_id)
        subnet = ipaddress.ip_network(inst.subnet_cidr, strict=False)
        gateway = str(subnet.network_address + 1)
        veth = f"v{next(self._veths)}"
        netns.run(["ip", "netns", "add", name])
        # the router forgets the address's previous owner (a reused private IP) before the new one is attached
        commands = f"neigh flush to {inst.private_ip}\n"
        commands += f"link add {veth} type veth peer name eth0 netns {name}\nlink set {veth} master br0 up\n"
        if inst.subnet_cidr not in self._gateways:
            commands += f"addr add {gateway}/{subnet.prefixlen} dev br0\n"
            self._gateways.add(inst.subnet_cidr)
        netns.run(["ip", "-batch", "-"], netns=self.vpc_ns, stdin=commands)
        if inst.private_ip in self._released:  # only a reused address has a previous owner to forget
            self._released.discard(inst.private_ip)
            self._forget_owner(inst.private_ip, subnet)
        # A gratuitous ARP when eth0 comes up, as EC2's VPC makes a reused private IP reachable at once: without
        # it the Open edX hosts' neighbour entry still names the previous owner's MAC for ~30 s (their own check
        # of the cache, status.hosts[].cacheReach, saw the reused address unreachable while the operator reached it).
        netns.run(["sysctl", "-qw", "net.ipv4.conf.eth0.arp_notify=1"], netns=name)
        netns.run(
            ["ip", "-batch", "-"],
            netns=name,
            stdin="link set lo up\n"
            f"addr add {inst.private_ip}/{subnet.prefixlen} dev eth0\n"
            "link set eth0 up\n"
            + (
                f"route add {self.vpc_cidr} via {gateway}\n"
                if subnet != ipaddress.ip_network(self.vpc_cidr)
                else ""
            )
            + f"route add {OPERATOR_CIDR} via {gateway}\n",
        )
        if any(inst.instance_id in pair for pair in self._blocked):
            self._apply_faults()

    def _remove(self, instance_id: str) -> None:
        name = self.namespace(instance_id)
        gone = self._instances.pop(instance_id, None)
        self._applied.pop(name, None)
        # its veth pair goes with the namespace (the bridge's end is deleted with its peer)
        netns.run(["ip", "netns", "del", name], check=False)
        if (
            gone is not None
        ):  # and the router forgets its MAC: the address may come back with another instance
            netns.run(["ip", "neigh", "flush", "to", gone.private_ip], netns=self.vpc_ns, check=False)
            self._released.add(gone.private_ip)

    def _forget_owner(self, address: str, subnet: ipaddress.IPv4Network | ipaddress.IPv6Network) -> None:
        """Every instance on the subnet's link forgets `address`'s previous owner, as EC2 (which answers ARP
        itself) makes a reused private IP reachable at once. The gratuitous ARP alone did not do it: an Open edX
        host that had checked the deleted cache every drift interval kept a REACHABLE entry for the old MAC and
        timed out on the new cache for ~30 s (status.hosts[].cacheReach, UnreachableFromHosts on a healthy cache).
        One `ip` per neighbour, and only for a reused address (a fresh one has no previous owner): at 500
        instances, flushing on every launch was ~125,000 `ip` runs and stalled the scale bench's convergence."""
        for iid, other in self._instances.items():
            if ipaddress.ip_address(other.private_ip) in subnet:
                netns.run(["ip", "neigh", "flush", "to", address], netns=self.namespace(iid), check=False)

    def _apply(self, name: str, script: str) -> None:
        if self._applied.get(name) == script:
            return
        netns.run(["nft", "-f", "-"], netns=name, stdin=script)
        self._applied[name] = script

    # -- network faults -----------------------------------------------------------------------------------------------

    def block(self, a: str, b: str) -> None:
        """Drop traffic between two instances (or an instance and ``operator``) both ways, like a network ACL:
        the EC2 API still shows the security groups allowing it."""
        with self._lock:
            self._blocked.add(frozenset((a, b)))
            self._apply_faults()

    def unblock(self, a: str, b: str) -> None:
        with self._lock:
            self._blocked.discard(frozenset((a, b)))
            self._apply_faults()

    def partition_operator(self, partitioned: bool = True) -> None:
        """Cut (or restore) every path between the operator and the VPC, at the VPC's router."""
        with self._lock:
            self._partitioned = partitioned
            self._apply_faults()

    def _address(self, target: str) -> str | None:
        if target == "operator":
            return self.operator_ip
        inst = self._instances.get(target)
        return inst.private_ip if inst else None

    def _apply_faults(self) -> None:
        drops: dict[str, set[str]] = {}
        for pair in self._blocked:
            a, b = sorted(pair)
            for here, there in ((a, b), (b, a)):
                address = self._address(there)
                if address and (here == "operator" or here in self._instances):
                    drops.setdefault(here, set()).add(address)
        targets = {"operator", *self._instances}
        for target in targets:
            name = self.namespace(target)
            script = fault_ruleset(drop_from=drops.get(target, ()))
            self._apply_fault(name, script)
        router = fault_ruleset(drop_interfaces=("op",) if self._partitioned else ())
        self._apply_fault(self.vpc_ns, router)

    def _apply_fault(self, name: str, script: str) -> None:
        key = f"{name}#fault"
        if self._applied.get(key, fault_ruleset()) == script:
            return
        netns.run(["nft", "-f", "-"], netns=name, stdin=script)
        self._applied[key] = script
