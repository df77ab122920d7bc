"""The sandbox VPC is a real network: memcached is reached at its private IP through the cache host's security
group, by the Open edX hosts' own Django client and by the operator's probes, and by nobody else; revoked rules,
blocked paths and a partitioned operator fail the way they fail on EC2; and nothing can leave the machine.

Nothing here dials a non-loopback address from this machine's namespace: clients in this process create their
sockets inside a sandbox namespace (tests/conftest.py checks that), and stray dials run in a sandbox namespace.
"""

from __future__ import annotations

import ipaddress
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pymemcache.exceptions import MemcacheError

from edx_remote_cache.sandbox import Sandbox, read_env_file
from edx_remote_cache.sandbox.aws import UBUNTU_AMI_ID
from edx_remote_cache.sandbox.harness import OperatorProcess
from edx_remote_cache.sandbox.netns import NETNS_DIR

from .support import Cache, ec2, instance, memcache, wait_until

pytestmark = pytest.mark.e2e

NS = "e2e-network"
DRIFT = 5  # cache_manifest's driftIntervalSeconds


@pytest.fixture(scope="module")
def cache(sandbox: Sandbox, operator: OperatorProcess) -> Iterator[Cache]:
    created = Cache.create(sandbox, "net", NS)
    created.wait_ready(timeout=30)
    yield created
    created.delete_and_wait(timeout=45)


def ready_endpoint(cache: Cache) -> tuple[str, str, str]:
    """(instance id, endpoint, cache security group id) once Ready."""
    obj = cache.wait_ready(timeout=40)
    [iid] = [i["id"] for i in obj["status"]["instances"] if i["state"] == "running"]
    [endpoint] = obj["status"]["endpoints"]
    groups = [g["GroupId"] for g in instance(cache.sb, iid)["SecurityGroups"]]
    [group] = groups
    return iid, endpoint, group


def reaches(sb: Sandbox, endpoint: str, vantage: str, timeout: float = 1.0) -> bool:
    client = memcache(sb, endpoint, timeout=timeout, vantage=vantage)
    try:
        return bool(client.version())
    except (OSError, MemcacheError):
        return False
    finally:
        client.close()


def launch_outsider(sb: Sandbox) -> str:
    """An instance in the same subnet, in a group no cache rule names."""
    client = ec2(sb)
    group = client.create_security_group(
        GroupName=f"outsider-{time.monotonic_ns()}", Description="x", VpcId=sb.vpc_id
    )
    return str(
        client.run_instances(
            ImageId=UBUNTU_AMI_ID,
            MinCount=1,
            MaxCount=1,
            SubnetId=sb.subnet_id,
            SecurityGroupIds=[group["GroupId"]],
        )["Instances"][0]["InstanceId"]
    )


def root_veths_or_bridges() -> list[str]:
    """veth*/br* links in this machine's own namespace (the sandbox creates links only inside its namespaces)."""
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    names = re.findall(r"^\d+: ([^:@\s]+)", links, flags=re.M)
    return [name for name in names if name.startswith(("veth", "br"))]


def in_namespace(sb: Sandbox, target: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*sb.in_namespace(target), *argv], capture_output=True, text=True, timeout=30, check=False
    )


# -- reachability through security groups ----------------------------------------------------------------------------


def test_memcached_is_reached_at_its_private_ip_by_the_edx_hosts_and_the_operator_only(
    sandbox: Sandbox, cache: Cache
) -> None:
    iid, endpoint, group = ready_endpoint(cache)
    host, port = endpoint.rsplit(":", 1)
    assert host == sandbox.cache_host(iid).host.private_ip and ipaddress.ip_address(
        host
    ) in ipaddress.ip_network("10.0.1.0/24")
    for edx in sandbox.edx_hosts:
        assert reaches(sandbox, endpoint, edx), f"{edx} cannot reach {endpoint}"
    assert reaches(sandbox, endpoint, "operator")
    outsider = launch_outsider(sandbox)
    try:
        assert not reaches(sandbox, endpoint, outsider)  # same subnet, no rule: dropped, a timeout
    finally:
        ec2(sandbox).terminate_instances(InstanceIds=[outsider])
    # memcached listens on the private IP only: not on 0.0.0.0 nor on the host's loopback
    listening = {line.split()[3] for line in in_namespace(sandbox, iid, "ss", "-Htln").stdout.splitlines()}
    assert listening == {f"{host}:{port}"}
    # the operator's probe-source rule is its own, described as such, port only
    rules = ec2(sandbox).describe_security_groups(GroupIds=[group])["SecurityGroups"][0]["IpPermissions"]
    operator_rules = [
        (p["FromPort"], p["ToPort"], r)
        for p in rules
        for r in p.get("IpRanges", [])
        if r["CidrIp"] == f"{sandbox.network.operator_ip}/32"
    ]
    assert operator_rules == [
        (
            int(port),
            int(port),
            {
                "CidrIp": f"{sandbox.network.operator_ip}/32",
                "Description": operator_rules[0][2].get("Description"),
            },
        )
    ]
    assert "operator probes" in str(operator_rules[0][2].get("Description"))


def test_the_operator_without_its_probe_source_rule_cannot_probe_and_drift_restores_the_rule(
    sandbox: Sandbox, cache: Cache
) -> None:
    _, endpoint, group = ready_endpoint(cache)
    port = int(endpoint.rsplit(":", 1)[1])
    sandbox.faults.revoke_rule(group, port, cidr=f"{sandbox.network.operator_ip}/32")
    revoked = time.monotonic()
    assert not reaches(sandbox, endpoint, "operator")  # a new connection from the operator: dropped
    assert reaches(sandbox, endpoint, sandbox.edx_hosts[0])  # the site is unaffected
    wait_until(
        lambda: reaches(sandbox, endpoint, "operator"), timeout=DRIFT * 3 + 10, what="probe rule restored"
    )
    print(f"probe-source rule restored {time.monotonic() - revoked:.1f} s after the revoke")
    cache.wait_ready(timeout=30)


def test_the_lms_sets_and_gets_through_every_alias_and_fails_fast_while_the_app_rule_is_revoked(
    sandbox: Sandbox, cache: Cache
) -> None:
    _, endpoint, group = ready_endpoint(cache)
    port = int(endpoint.rsplit(":", 1)[1])
    for edx in sandbox.edx_hosts:
        results = sandbox.lms_check(edx)
        assert {r["file"] for r in results} == {"lms.yml", "studio.yml"}
        assert all(r["ok"] and r["location"] == endpoint for r in results), results

    sandbox.faults.revoke_rule(group, port, source_group_id=sandbox.edx_security_group_id)
    revoked = time.monotonic()
    failing = sandbox.lms_check(sandbox.edx_hosts[0])
    seconds = time.monotonic() - revoked
    assert not any(r["ok"] for r in failing), failing
    # fast: each alias gives up after its 1 s connect timeout, as Django gives up on a dead memcached
    assert max(r["seconds"] for r in failing) < 3.0, failing
    print(f"LMS check with the rule revoked: {len(failing)} aliases failed in {seconds:.1f} s")

    def lms_ok() -> bool:
        return all(r["ok"] for r in sandbox.lms_check(sandbox.edx_hosts[0]))

    wait_until(lms_ok, timeout=DRIFT * 3 + 15, what="the app rule restored by the drift pass")
    cache.wait_ready(timeout=30)


def test_a_revoked_rule_blocks_new_connections_within_a_second(sandbox: Sandbox, cache: Cache) -> None:
    _, endpoint, group = ready_endpoint(cache)
    port = int(endpoint.rsplit(":", 1)[1])
    edx = sandbox.edx_hosts[1]
    established = memcache(sandbox, endpoint, vantage=edx)
    assert established.version()
    started = time.monotonic()
    sandbox.faults.revoke_rule(group, port, source_group_id=sandbox.edx_security_group_id)
    elapsed = time.monotonic() - started
    assert elapsed < 1.0, f"the revoke took {elapsed:.2f} s to reach the filter"
    assert not reaches(sandbox, endpoint, edx, timeout=0.5)
    assert established.version()  # connection tracking: what was allowed stays up, as on EC2
    established.close()
    wait_until(lambda: reaches(sandbox, endpoint, edx), timeout=DRIFT * 3 + 10, what="rule restored")
    cache.wait_ready(timeout=30)


# -- network faults --------------------------------------------------------------------------------------------------


def test_a_blocked_path_fails_one_host_only_and_the_security_groups_never_show_it(
    sandbox: Sandbox, cache: Cache
) -> None:
    iid, endpoint, group = ready_endpoint(cache)
    before = ec2(sandbox).describe_security_groups(GroupIds=[group])["SecurityGroups"][0]["IpPermissions"]
    blocked, other = sandbox.edx_hosts
    sandbox.faults.block_path(blocked, iid)
    try:
        assert not reaches(sandbox, endpoint, blocked)
        assert reaches(sandbox, endpoint, other) and reaches(sandbox, endpoint, "operator")
        assert not any(r["ok"] for r in sandbox.lms_check(blocked, ("lms.yml",)))
        after = ec2(sandbox).describe_security_groups(GroupIds=[group])["SecurityGroups"][0]["IpPermissions"]
        assert after == before
    finally:
        sandbox.faults.unblock_path(blocked, iid)
    assert reaches(sandbox, endpoint, blocked)


def test_a_partitioned_operator_loses_its_probes_while_the_site_keeps_its_cache(
    sandbox: Sandbox, cache: Cache
) -> None:
    _, endpoint, _ = ready_endpoint(cache)
    sandbox.faults.partition_operator()
    try:
        assert not reaches(sandbox, endpoint, "operator")
        assert all(r["ok"] for r in sandbox.lms_check(sandbox.edx_hosts[0], ("lms.yml",)))
        cache.wait(
            lambda o: any(
                c["type"] == "CacheHealthy" and c["status"] == "Unknown"  # its host still answers it
                for c in (o.get("status") or {}).get("conditions") or []
            ),
            timeout=15,
            what="CacheHealthy=Unknown while partitioned",
        )
    finally:
        sandbox.faults.partition_operator(False)
    cache.wait_ready(timeout=60)


# -- EC2 model -------------------------------------------------------------------------------------------------------


def test_describe_instances_reports_the_eni_groups(sandbox: Sandbox) -> None:
    client = ec2(sandbox)
    group = client.create_security_group(GroupName="eni-groups", Description="x", VpcId=sandbox.vpc_id)[
        "GroupId"
    ]
    launched = client.run_instances(
        ImageId=UBUNTU_AMI_ID,
        MinCount=1,
        MaxCount=1,
        NetworkInterfaces=[{"DeviceIndex": 0, "SubnetId": sandbox.subnet_id, "Groups": [group]}],
    )["Instances"][0]["InstanceId"]
    try:
        described = instance(sandbox, launched)
        assert [g["GroupId"] for g in described["SecurityGroups"]] == [group]
        assert [g["GroupId"] for g in described["NetworkInterfaces"][0]["Groups"]] == [group]
        client.modify_instance_attribute(InstanceId=launched, Groups=[sandbox.edx_security_group_id])
        described = instance(sandbox, launched)
        assert [g["GroupId"] for g in described["NetworkInterfaces"][0]["Groups"]] == [
            sandbox.edx_security_group_id
        ]
    finally:
        client.terminate_instances(InstanceIds=[launched])
    assert not sandbox.network.has(launched)


# -- safety and the contract -----------------------------------------------------------------------------------------


def test_nothing_routes_out_and_the_root_namespace_holds_no_sandbox_address(sandbox: Sandbox) -> None:
    vpc, operator_net = (
        ipaddress.ip_network("10.0.0.0/16"),
        ipaddress.ip_network(sandbox.network.operator_cidr),
    )
    root_routes = subprocess.run(
        ["ip", "-o", "route", "show", "table", "all"], capture_output=True, text=True
    ).stdout
    root_addrs = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True).stdout
    for line in (root_routes + root_addrs).splitlines():
        for word in line.replace("/", " /").split():
            try:
                address = ipaddress.ip_address(word)
            except ValueError:
                continue
            assert address not in vpc and address not in operator_net, line
    assert not root_veths_or_bridges()
    for name in sandbox.network.namespaces():
        routes = subprocess.run(
            ["ip", "-n", name, "route", "show", "table", "all"], capture_output=True, text=True
        )
        assert "default" not in routes.stdout, (name, routes.stdout)
    # a stray dial, from an instance and from the operator: refused by the kernel at once, no packet sent
    code = "import socket\ntry:\n socket.create_connection(('93.184.216.34', 80), timeout=5)\nexcept OSError as e: print(e)"
    for target in (sandbox.edx_hosts[0], "operator"):
        started = time.monotonic()
        out = in_namespace(sandbox, target, sys.executable, "-c", code).stdout
        assert "Network is unreachable" in out and time.monotonic() - started < 3, out


def test_sandbox_exec_runs_in_the_targets_namespace_and_passes_the_exit_status(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    env_file = sandbox.write_env_file(tmp_path / "env")
    env = read_env_file(env_file)
    assert (
        "EDX_REMOTE_CACHE_ADDRESS_MAP" not in env
        and env["SANDBOX_OPERATOR_IP"] == sandbox.network.operator_ip
    )

    def sandbox_exec(target: str, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "edx_remote_cache.cli.main",
                "sandbox",
                "exec",
                "--env-file",
                str(env_file),
                target,
                "--",
                *argv,
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    assert sandbox_exec("operator", "sh", "-c", "exit 7").returncode == 7
    assert f"inet {env['SANDBOX_OPERATOR_IP']}/" in sandbox_exec("operator", "ip", "-o", "addr").stdout
    edx = sandbox.edx_hosts[0]
    private_ip = instance(sandbox, edx)["PrivateIpAddress"]
    assert f"inet {private_ip}/" in sandbox_exec(edx, "ip", "-o", "addr").stdout
    assert sandbox_exec(edx, "nft", "list", "table", "inet", "erc_sg").returncode == 0
    # the same AWS and Kubernetes URLs work inside the operator's namespace and here
    url = env["AWS_ENDPOINT_URL"]
    probe = "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5); print('ok')"
    assert sandbox_exec("operator", sys.executable, "-c", probe, url).stdout.strip() == "ok"
    missing = sandbox_exec("i-00000000000000000", "true")
    assert missing.returncode == 2 and "no network namespace" in missing.stderr


def test_teardown_after_sigkill_leaves_nothing_once_the_next_sandbox_starts(tmp_path: Path) -> None:
    env_file = tmp_path / "env"
    process = subprocess.Popen(
        [sys.executable, "-m", "edx_remote_cache.sandbox.cli", "--env-file", str(env_file), "--no-kube"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(env_file.exists, timeout=30, what="the sandbox's env file")
        prefix = read_env_file(env_file)["SANDBOX_NETNS_PREFIX"]
        assert list(NETNS_DIR.glob(f"{prefix}-*"))
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)
    assert list(NETNS_DIR.glob(f"{prefix}-*"))  # a SIGKILL leaves them ...
    with Sandbox(with_kube=False):
        assert not list(NETNS_DIR.glob(f"{prefix}-*"))  # ... and the next sandbox sweeps them
    assert not root_veths_or_bridges()
