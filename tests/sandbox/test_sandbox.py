"""The sandbox cloud as a whole: start/stop (fast, leaving nothing behind), env file, cache hosts, faults, CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pymemcache.client.base import Client as Memcache

from edx_remote_cache.domain.userdata import MemcachedSettings, render_user_data
from edx_remote_cache.sandbox import Sandbox, read_env_file
from edx_remote_cache.sandbox.aws import UBUNTU_AMI_ID
from edx_remote_cache.sandbox.netns import SocketModule, netns_path

pytestmark = pytest.mark.e2e

ENV_KEYS = {
    "KUBECONFIG",
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
    "EDX_REMOTE_CACHE_PROBE_SOURCE",
    "SANDBOX_VPC_CIDR",
    "SANDBOX_OPERATOR_IP",
    "SANDBOX_NETNS_PREFIX",
    "SANDBOX_SUBNET_ID",
    "SANDBOX_EDX_HOSTS",
    "SANDBOX_EDX_SECURITY_GROUP",
    "SANDBOX_ROOTS",
}


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(with_kube=False, ssm_invocation_delay=0.05) as sb:
        yield sb


def launch(sb: Sandbox, user_data: str | None = None, **extra: object) -> str:
    kwargs: dict[str, object] = {
        "ImageId": UBUNTU_AMI_ID,
        "MinCount": 1,
        "MaxCount": 1,
        "SubnetId": sb.subnet_id,
    }
    if user_data is not None:
        kwargs["UserData"] = user_data
    kwargs.update(extra)
    return str(sb.client("ec2").run_instances(**kwargs)["Instances"][0]["InstanceId"])


def run_ssm(sb: Sandbox, instance_id: str, commands: list[str], timeout: float = 20) -> dict[str, object]:
    ssm = sb.client("ssm")
    command_id = ssm.send_command(
        InstanceIds=[instance_id], DocumentName="AWS-RunShellScript", Parameters={"commands": commands}
    )["Command"]["CommandId"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = ssm.get_command_invocation(CommandId=command_id, InstanceId=instance_id)
        except ssm.exceptions.InvocationDoesNotExist:
            result = {"Status": "Pending"}
        if result["Status"] not in ("Pending", "InProgress", "Delayed"):
            return dict(result)
        time.sleep(0.02)
    raise AssertionError(f"command on {instance_id} did not finish in {timeout} s")


def memcache(sb: Sandbox, instance_id: str, timeout: float = 2.0, *, vantage: str | None = None) -> Memcache:
    """A client of the cache host's memcached at its private IP, dialing from inside the sandbox VPC: from the
    host itself by default (its own filter admits it), or from ``vantage`` (an instance id or ``operator``)."""
    cache = sb.cache_host(instance_id)
    assert sb.network is not None
    module = SocketModule(sb.network.namespace(vantage or instance_id))
    address = (cache.host.private_ip, cache.conf_port)
    return Memcache(address, connect_timeout=timeout, timeout=timeout, socket_module=module)


def listening_ports() -> set[int]:
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table, encoding="ascii") as handle:
            for line in handle.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A":  # LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def pgrep(pattern: str) -> set[int]:
    found = subprocess.run(["pgrep", "-f", "--", pattern], capture_output=True, text=True, check=False)
    return {int(p) for p in found.stdout.split()}


def edx_mounts() -> list[str]:
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        return [line for line in handle if " /edx " in line or "sandbox-etc" in line]


# -- start / stop -------------------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_start_and_stop_are_fast_and_leave_nothing_behind() -> None:
    threads_before = {t.ident for t in threading.enumerate()}
    timings = []
    for _ in range(2):  # the first cycle in a process also pays for importing moto (~1 s)
        began = time.monotonic()
        sb = Sandbox(with_kube=True)
        sb.start()
        started = time.monotonic() - began
        instance_id = launch(sb, render_user_data(MemcachedSettings()))
        cache = sb.cache_host(instance_id)
        pids, ports = {cache.pid}, {int(sb.aws_endpoint_url.rsplit(":", 1)[1])}
        assert sb.network is not None
        namespaces = sb.network.namespaces()
        assert all(netns_path(name).exists() for name in namespaces)
        ports.add(int(sb.kube.url.rsplit(":", 1)[1].split("/")[0]))
        run_ssm(sb, sb.edx_hosts[0], ["setsid sleep 61.25 & echo started"])  # a script leaves a daemon behind
        workdir = sb.workdir
        stopping = time.monotonic()
        sb.stop()
        timings.append((started, time.monotonic() - stopping))
        assert not any(pid and alive(pid) for pid in pids)
        assert not pids & pgrep("memcached")
        assert not ports & listening_ports()
        assert not any(netns_path(name).exists() for name in namespaces)
        assert not workdir.exists()
        assert not edx_mounts()
        assert not pgrep("^sleep 61.25$")
    deadline = time.monotonic() + 3
    while {t.ident for t in threading.enumerate()} - threads_before and time.monotonic() < deadline:
        time.sleep(0.05)
    left = [t.name for t in threading.enumerate() if t.ident not in threads_before]
    assert not left, f"threads left running: {left}"
    warm_start, warm_stop = timings[-1]
    print(f"start/stop timings (s): {timings}")
    assert warm_start + warm_stop < 3.0, timings


@pytest.mark.timeout(30)
def test_env_file_has_every_key(tmp_path: Path) -> None:
    with Sandbox(tmp_path / "work", with_kube=True) as sb:
        env_file = sb.write_env_file(tmp_path / "env")
        env = read_env_file(env_file)
        assert set(env) >= ENV_KEYS, ENV_KEYS - set(env)
        assert env == sb.env()
        assert env["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1:")
        assert "EDX_REMOTE_CACHE_ADDRESS_MAP" not in env
        assert env["SANDBOX_VPC_CIDR"] == "10.0.0.0/16"
        assert env["EDX_REMOTE_CACHE_PROBE_SOURCE"] == f"{env['SANDBOX_OPERATOR_IP']}/32"
        assert env["SANDBOX_EDX_HOSTS"].split(",") == sb.edx_hosts
        assert dict(item.split("=", 1) for item in env["SANDBOX_ROOTS"].split(",")) == {
            k: str(v) for k, v in sb.roots.items()
        }
        assert Path(env["KUBECONFIG"]).is_file()
        # `source FILE` exports everything to child processes
        shown = subprocess.run(
            ["bash", "-c", f"source {env_file}; env"], capture_output=True, text=True, check=True
        ).stdout
        assert f"AWS_ENDPOINT_URL={env['AWS_ENDPOINT_URL']}" in shown.splitlines()
    assert (tmp_path / "work").is_dir()  # a workdir we were given is kept


@pytest.mark.timeout(30)
def test_two_sandboxes_in_one_process_do_not_see_each_other(sandbox: Sandbox) -> None:
    with Sandbox(with_kube=False) as other:
        assert other.aws_endpoint_url != sandbox.aws_endpoint_url
        mine = launch(sandbox, render_user_data(MemcachedSettings()))
        reservations = other.client("ec2").describe_instances()["Reservations"]
        theirs = {i["InstanceId"] for r in reservations for i in r["Instances"]}
        assert theirs == set(other.edx_hosts) and mine not in theirs
        assert other.cache_hosts == {} and mine in sandbox.cache_hosts
        assert run_ssm(other, other.edx_hosts[0], ["echo other"])["StandardOutputContent"] == "other\n"
    with pytest.raises(RuntimeError, match="already running"):
        sandbox.start()


@pytest.mark.timeout(30)
def test_edx_hosts_look_like_a_native_install(sandbox: Sandbox) -> None:
    reservations = sandbox.client("ec2").describe_instances(InstanceIds=sandbox.edx_hosts)["Reservations"]
    instances = [i for r in reservations for i in r["Instances"]]
    assert len(instances) == 2
    for instance in instances:
        tags = {t["Key"]: t["Value"] for t in instance["Tags"]}
        assert tags["openedx-role"] == "app" and tags["Name"].startswith("openedx-app-")
        assert [g["GroupId"] for g in instance["SecurityGroups"]] == [sandbox.edx_security_group_id]
        assert instance["SubnetId"] == sandbox.subnet_id
    for root in sandbox.roots.values():
        for name in ("etc/lms.yml", "etc/studio.yml", "etc/ecommerce.yml", "etc/insights.yml"):
            assert (root / name).stat().st_size > 0
        assert (root / "app/edx_ansible/server-vars.yml").is_file()
        assert os.access(root / "bin/supervisorctl", os.X_OK)


# -- cache hosts ----------------------------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_user_data_starts_a_real_memcached_on_the_instances_private_ip(sandbox: Sandbox) -> None:
    settings = MemcachedSettings(port=11311, memory_mib=96, max_connections=512, extra_args=(("-t", "2"),))
    instance_id = launch(sandbox, render_user_data(settings))
    cache = sandbox.cache_host(instance_id)
    assert cache.state == "running", cache.failure
    private_ip = sandbox.client("ec2").describe_instances(InstanceIds=[instance_id])["Reservations"][0][
        "Instances"
    ][0]["PrivateIpAddress"]
    assert cache.endpoint == f"{private_ip}:11311"
    client = memcache(sandbox, instance_id)
    client.set("greeting", b"hello")
    assert client.get("greeting") == b"hello"
    stats = client.stats("settings")
    assert int(stats[b"maxbytes"]) == 96 * 1024 * 1024
    assert int(stats[b"maxconns"]) == 512
    assert int(stats[b"num_threads"]) == 2
    assert int(stats[b"udpport"]) == 0
    client.close()
    cmdline = Path(f"/proc/{cache.pid}/cmdline").read_bytes().split(b"\0")
    assert b"-P" not in cmdline and b"10.0.1.0" not in cmdline
    assert cmdline[cmdline.index(b"-l") + 1] == private_ip.encode()  # from the conf, as user-data renders it
    assert b"127.0.0.1" not in cmdline and b"0.0.0.0" not in cmdline
    if os.geteuid() == 0:
        assert cmdline[cmdline.index(b"-u") + 1] in (b"memcache", b"root")


@pytest.mark.timeout(30)
def test_broken_memcached_conf_fails_the_host_and_nothing_listens(sandbox: Sandbox) -> None:
    good = render_user_data(MemcachedSettings())
    broken = good.replace(
        "-c 1024\n", "-c 1024\n-o no_such_option\n"
    )  # by hand: the renderer would refuse it
    assert broken != good
    instance_id = launch(sandbox, broken)
    cache = sandbox.cache_host(instance_id)
    assert cache.state == "failed"
    assert cache.failure and "no_such_option" in cache.failure
    assert cache.pid is None
    with pytest.raises(ConnectionRefusedError):
        memcache(sandbox, instance_id).version()


@pytest.mark.timeout(30)
def test_stop_start_and_terminate_follow_the_instance(sandbox: Sandbox) -> None:
    ec2 = sandbox.client("ec2")
    instance_id = launch(sandbox, render_user_data(MemcachedSettings()))
    cache = sandbox.cache_host(instance_id)
    first_pid = cache.pid
    assert first_pid is not None and sandbox.network is not None
    namespace = netns_path(sandbox.network.namespace(instance_id))
    ec2.stop_instances(InstanceIds=[instance_id])
    assert not alive(first_pid)
    assert namespace.exists()  # a stopped instance keeps its ENI and private IP
    with pytest.raises(ConnectionRefusedError):
        memcache(sandbox, instance_id).version()
    ec2.start_instances(InstanceIds=[instance_id])
    assert cache.pid is not None and cache.pid != first_pid
    assert memcache(sandbox, instance_id).version()  # the same private IP:port again
    second_pid = cache.pid
    ec2.reboot_instances(InstanceIds=[instance_id])
    assert not alive(second_pid) and cache.pid is not None
    second_pid = cache.pid
    ec2.terminate_instances(InstanceIds=[instance_id])
    assert not alive(second_pid)
    assert not namespace.exists()  # terminated: its namespace is gone


@pytest.mark.timeout(30)
def test_instances_without_memcached_user_data_are_not_cache_hosts(sandbox: Sandbox) -> None:
    instance_id = launch(sandbox, "#!/bin/bash\necho hello\n")
    time.sleep(0.05)
    assert instance_id not in sandbox.cache_hosts
    assert sandbox.network is not None and sandbox.network.has(instance_id)  # still an instance in the VPC


# -- faults ---------------------------------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_fault_kill_memcached_refuses_connections_until_restarted(sandbox: Sandbox) -> None:
    instance_id = launch(sandbox, render_user_data(MemcachedSettings()))
    cache = sandbox.cache_host(instance_id)
    pid = cache.pid
    assert pid is not None
    sandbox.faults.kill_memcached(instance_id)
    assert not alive(pid)
    with pytest.raises(ConnectionRefusedError):
        memcache(sandbox, instance_id).version()
    status = run_ssm(sandbox, instance_id, ["systemctl is-active memcached"])
    assert (status["StandardOutputContent"], status["ResponseCode"]) == ("failed\n", 3)
    restarted = run_ssm(
        sandbox, instance_id, ["systemctl restart memcached", "systemctl is-active memcached"]
    )
    assert restarted["Status"] == "Success", restarted
    client = memcache(sandbox, instance_id)
    assert client.version()
    client.close()


@pytest.mark.timeout(30)
def test_fault_hang_memcached_times_out_until_resumed(sandbox: Sandbox) -> None:
    instance_id = launch(sandbox, render_user_data(MemcachedSettings()))
    sandbox.faults.hang_memcached(instance_id)
    client = memcache(sandbox, instance_id, timeout=0.3)
    with pytest.raises(TimeoutError):
        client.version()
    client.close()
    sandbox.faults.resume_memcached(instance_id)
    client = memcache(sandbox, instance_id)
    assert client.version()
    client.close()


@pytest.mark.timeout(30)
def test_fault_stop_and_terminate_out_of_band_are_not_recorded_as_operator_calls(sandbox: Sandbox) -> None:
    instance_id = launch(sandbox, render_user_data(MemcachedSettings()))
    pid = sandbox.cache_host(instance_id).pid
    assert pid is not None
    mark = sandbox.calls.now()
    sandbox.faults.stop_instance(instance_id)
    assert not alive(pid)
    state = sandbox.client("ec2").describe_instances(InstanceIds=[instance_id])["Reservations"][0][
        "Instances"
    ][0]
    assert state["State"]["Name"] == "stopped"
    sandbox.faults.start_instance(instance_id)
    assert sandbox.cache_host(instance_id).state == "running"
    sandbox.faults.terminate_instance(instance_id)
    assert sandbox.cache_host(instance_id).pid is None
    assert sandbox.calls.count(mutating=True, since=mark) == 0
    assert sandbox.calls.count("StopInstances", since=mark, include_internal=True) == 1


@pytest.mark.timeout(30)
def test_fault_security_group_rules_out_of_band(sandbox: Sandbox) -> None:
    ec2 = sandbox.client("ec2")
    group = sandbox.edx_security_group_id

    def rules() -> list[tuple[int, str]]:
        permissions = ec2.describe_security_groups(GroupIds=[group])["SecurityGroups"][0]["IpPermissions"]
        return sorted((p["FromPort"], r["CidrIp"]) for p in permissions for r in p.get("IpRanges", []))

    sandbox.faults.add_sg_rule(group, 11211, cidr="0.0.0.0/0")
    assert (11211, "0.0.0.0/0") in rules()
    sandbox.faults.remove_sg_rule(group, 11211, cidr="0.0.0.0/0")
    sandbox.faults.remove_sg_rule(group, 443, cidr="0.0.0.0/0")
    assert rules() == []
    with pytest.raises(ValueError):
        sandbox.faults.add_sg_rule(group, 22)


@pytest.mark.timeout(30)
def test_fault_failing_restarts(sandbox: Sandbox) -> None:
    edx = sandbox.edx_hosts[0]
    ok = run_ssm(sandbox, edx, ["/edx/bin/supervisorctl restart lms edxapp_worker:lms_default_1"])
    assert ok["Status"] == "Success" and "lms: started" in str(ok["StandardOutputContent"])
    sandbox.faults.fail_restarts(edx)
    failed = run_ssm(sandbox, edx, ["/edx/bin/supervisorctl restart lms"])
    assert failed["Status"] == "Failed" and failed["ResponseCode"] == 1
    sandbox.faults.fail_restarts(edx, False)
    calls = sandbox.supervisorctl_calls(edx)
    assert [c.args for c in calls] == [
        ("restart", "lms", "edxapp_worker:lms_default_1"),
        ("restart", "lms"),
    ]
    assert [c.rc for c in calls] == [0, 1]

    cache_id = launch(sandbox, render_user_data(MemcachedSettings()))
    sandbox.faults.fail_restarts(cache_id)
    result = run_ssm(sandbox, cache_id, ["systemctl restart memcached"])
    assert result["Status"] == "Failed" and "Job for memcached.service failed" in str(
        result["StandardErrorContent"]
    )
    assert sandbox.cache_host(cache_id).state == "failed"
    sandbox.faults.fail_restarts(cache_id, False)
    assert run_ssm(sandbox, cache_id, ["systemctl restart memcached"])["Status"] == "Success"
    assert sandbox.cache_host(cache_id).state == "running"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("how", ["directory", "dangling-symlink"])
def test_fault_unreadable_config_fails_even_for_root(sandbox: Sandbox, how: str) -> None:
    edx = sandbox.edx_hosts[0]
    original = (sandbox.roots[edx] / "etc/lms.yml").read_bytes()
    sandbox.faults.make_unreadable(edx, "/edx/etc/lms.yml", how=how)
    result = run_ssm(sandbox, edx, ["id -u", "cat /edx/etc/lms.yml > /dev/null"])
    assert result["Status"] == "Failed"
    assert "/edx/etc/lms.yml" in str(result["StandardErrorContent"])
    sandbox.faults.restore_file(edx, "/edx/etc/lms.yml")
    assert (sandbox.roots[edx] / "etc/lms.yml").read_bytes() == original
    assert run_ssm(sandbox, edx, ["cat /edx/etc/lms.yml > /dev/null"])["Status"] == "Success"


@pytest.mark.timeout(30)
def test_fault_unreadable_memcached_conf_fails_the_restart(sandbox: Sandbox) -> None:
    cache_id = launch(sandbox, render_user_data(MemcachedSettings()))
    sandbox.faults.make_unreadable(cache_id, "/etc/memcached.conf")
    run_ssm(sandbox, cache_id, ["systemctl restart memcached"])
    cache = sandbox.cache_host(cache_id)
    assert cache.state == "failed" and "memcached.conf" in str(cache.failure)
    sandbox.faults.restore_file(cache_id, "/etc/memcached.conf")
    run_ssm(sandbox, cache_id, ["systemctl restart memcached"])
    assert cache.state == "running"


# -- CLI ------------------------------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_cli_writes_the_env_file_and_tears_down_on_sigterm(tmp_path: Path) -> None:
    env_file = tmp_path / "env"
    process = subprocess.Popen(
        [sys.executable, "-m", "edx_remote_cache.sandbox.cli", "--env-file", str(env_file), "--no-kube"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not env_file.exists() and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.05)
        assert env_file.exists(), (
            process.communicate(timeout=5)[0] if process.poll() is not None else "no env file"
        )
        env = read_env_file(env_file)
        port = int(env["AWS_ENDPOINT_URL"].rsplit(":", 1)[1])
        workdir = Path(env["SANDBOX_ROOTS"].split(",")[0].split("=", 1)[1]).parents[
            2
        ]  # <workdir>/hosts/<id>/root
        namespaces = list(Path("/run/netns").glob(env["SANDBOX_NETNS_PREFIX"] + "-*"))
        assert len(namespaces) == 4  # the VPC's router, the operator and the two Open edX hosts
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, output
    assert f"source {env_file}" in output and "edx-remote-cache run --all-namespaces" in output
    assert not any(p.exists() for p in namespaces)
    assert port not in listening_ports()
    assert not workdir.exists()
