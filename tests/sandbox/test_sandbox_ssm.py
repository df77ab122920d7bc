"""The sandbox's SSM Run Command: real scripts on the sandbox hosts, in namespaces without network."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from edx_remote_cache.domain.userdata import MemcachedSettings, render_reconfigure_script, render_user_data
from edx_remote_cache.sandbox import Sandbox
from edx_remote_cache.sandbox.aws import UBUNTU_AMI_ID

pytestmark = pytest.mark.e2e
RUN = "AWS-RunShellScript"


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(with_kube=False, ssm_invocation_delay=0.2) as sb:
        yield sb


def send(sb: Sandbox, instance_ids: list[str], commands: list[str], **extra: Any) -> str:
    reply = sb.client("ssm").send_command(
        InstanceIds=instance_ids, DocumentName=RUN, Parameters={"commands": commands}, **extra
    )
    return str(reply["Command"]["CommandId"])


def wait(sb: Sandbox, command_id: str, instance_id: str, timeout: float = 20) -> dict[str, Any]:
    ssm = sb.client("ssm")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = ssm.get_command_invocation(CommandId=command_id, InstanceId=instance_id)
        except ssm.exceptions.InvocationDoesNotExist:
            result = {"Status": "Pending"}
        if result["Status"] not in ("Pending", "InProgress", "Delayed"):
            return dict(result)
        time.sleep(0.02)
    raise AssertionError(f"{command_id} on {instance_id} did not finish within {timeout} s")


def run(sb: Sandbox, instance_id: str, commands: list[str], **extra: Any) -> dict[str, Any]:
    return wait(sb, send(sb, [instance_id], commands, **extra), instance_id)


def launch_cache_host(sb: Sandbox, settings: MemcachedSettings | None = None) -> str:
    reply = sb.client("ec2").run_instances(
        ImageId=UBUNTU_AMI_ID,
        MinCount=1,
        MaxCount=1,
        SubnetId=sb.subnet_id,
        UserData=render_user_data(settings or MemcachedSettings()),
    )
    return str(reply["Instances"][0]["InstanceId"])


@pytest.mark.timeout(30)
def test_script_edits_the_hosts_lms_yml_and_returns_real_output(sandbox: Sandbox) -> None:
    edx = sandbox.edx_hosts[0]
    lms = sandbox.roots[edx] / "etc/lms.yml"
    assert "CACHES:" in lms.read_text()
    result = run(
        sandbox,
        edx,
        [
            "set -e",
            "sed -i 's/^PLATFORM_NAME: .*/PLATFORM_NAME: Sandbox Academy/' /edx/etc/lms.yml",
            "grep '^PLATFORM_NAME' /edx/etc/lms.yml",
            "echo to-stderr >&2",
        ],
    )
    assert result["Status"] == "Success" and result["StatusDetails"] == "Success"
    assert result["ResponseCode"] == 0
    assert result["StandardOutputContent"] == "PLATFORM_NAME: Sandbox Academy\n"
    assert result["StandardErrorContent"] == "to-stderr\n"
    assert "PLATFORM_NAME: Sandbox Academy" in lms.read_text()
    other = sandbox.roots[sandbox.edx_hosts[1]] / "etc/lms.yml"
    assert "Sandbox Academy" not in other.read_text()  # each host has its own /edx
    assert result["PluginName"] == "aws:runShellScript" and result["ExecutionEndDateTime"]


@pytest.mark.timeout(30)
def test_commands_run_as_one_script_exactly_as_sent(sandbox: Sandbox) -> None:
    edx = sandbox.edx_hosts[0]
    result = run(
        sandbox,
        edx,
        [
            "x=1",
            "if [ $x = 1 ]; then",
            "  echo multi-line works",
            "fi",
            'echo "$AWS_SSM_INSTANCE_ID"',
            "exit 4",
        ],
    )
    assert result["Status"] == "Failed" and result["ResponseCode"] == 4
    assert result["StandardOutputContent"] == f"multi-line works\n{edx}\n"
    assert result["StandardErrorContent"] == "failed to run commands: exit status 4"
    assert "AWS_ENDPOINT_URL" not in run(sandbox, edx, ["env"])["StandardOutputContent"]


@pytest.mark.timeout(30)
def test_invocation_does_not_exist_right_after_send_command(sandbox: Sandbox) -> None:
    ssm = sandbox.client("ssm")
    edx = sandbox.edx_hosts[0]
    command_id = send(sandbox, [edx], ["true"])
    with pytest.raises(ClientError) as exc:
        ssm.get_command_invocation(CommandId=command_id, InstanceId=edx)
    assert exc.value.response["Error"]["Code"] == "InvocationDoesNotExist"
    assert ssm.list_command_invocations(CommandId=command_id)["CommandInvocations"] == []
    assert wait(sandbox, command_id, edx)["Status"] == "Success"
    with pytest.raises(ClientError) as exc:
        ssm.get_command_invocation(CommandId=command_id, InstanceId=sandbox.edx_hosts[1])
    assert exc.value.response["Error"]["Code"] == "InvocationDoesNotExist"


@pytest.mark.timeout(30)
def test_scripts_have_only_the_hosts_own_vpc_network(sandbox: Sandbox) -> None:
    edx = sandbox.edx_hosts[0]
    port = sandbox.aws_endpoint_url.rsplit(":", 1)[1]
    fake = run(sandbox, edx, ["curl -sS http://example.com"])
    assert fake["Status"] == "Failed" and "Could not resolve host" in fake["StandardErrorContent"]
    # the real curl, to the moto server that is listening on the machine's loopback: unreachable from the host
    real = run(sandbox, edx, [f"/usr/bin/curl -sS --max-time 2 http://127.0.0.1:{port}/"])
    assert real["Status"] == "Failed", real
    bash = run(sandbox, edx, [f"exec 3<>/dev/tcp/127.0.0.1/{port}"])
    assert bash["Status"] == "Failed"
    links = run(sandbox, edx, ["cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' '"])
    assert sorted(links["StandardOutputContent"].split()) == ["eth0", "lo"]  # its ENI in the sandbox VPC
    routes = run(sandbox, edx, ["ip route"])["StandardOutputContent"]
    assert "default" not in routes and "10.0.1.0/24 dev eth0" in routes
    stray = run(sandbox, edx, ["exec 3<>/dev/tcp/93.184.216.34/80"])  # anything outside the sandbox
    assert stray["Status"] == "Failed" and "Network is unreachable" in stray["StandardErrorContent"], stray


@pytest.mark.timeout(30)
def test_fake_imds_answers_the_hosts_private_ip(sandbox: Sandbox) -> None:
    edx = sandbox.edx_hosts[0]
    ip = sandbox.client("ec2").describe_instances(InstanceIds=[edx])["Reservations"][0]["Instances"][0][
        "PrivateIpAddress"
    ]
    result = run(
        sandbox,
        edx,
        [
            "TOKEN=$(curl -sS -X PUT http://169.254.169.254/latest/api/token "
            "-H 'X-aws-ec2-metadata-token-ttl-seconds: 300')",
            'curl -sS -H "X-aws-ec2-metadata-token: ${TOKEN}" http://169.254.169.254/latest/meta-data/local-ipv4',
            "echo",
            "curl -sSf http://169.254.169.254/latest/meta-data/local-ipv4 || echo no-token-refused",
        ],
    )
    assert result["StandardOutputContent"].splitlines() == [ip, "no-token-refused"]


@pytest.mark.timeout(30)
def test_output_is_truncated_like_ssm(sandbox: Sandbox) -> None:
    edx = sandbox.edx_hosts[0]
    result = run(
        sandbox, edx, ["head -c 30000 /dev/zero | tr '\\0' o", "head -c 9000 /dev/zero | tr '\\0' e >&2"]
    )
    assert result["StandardOutputContent"] == "o" * 24_000
    assert result["StandardErrorContent"] == "e" * 8_000
    listed = sandbox.client("ssm").list_command_invocations(CommandId=result["CommandId"], Details=True)
    output = listed["CommandInvocations"][0]["CommandPlugins"][0]["Output"]
    assert len(output) <= 2500 and "---Output truncated---" in output and "----------ERROR-------" in output


@pytest.mark.timeout(30)
def test_execution_timeout(sandbox: Sandbox) -> None:
    edx = sandbox.edx_hosts[0]
    began = time.monotonic()
    command_id = sandbox.client("ssm").send_command(
        InstanceIds=[edx],
        DocumentName=RUN,
        Parameters={"commands": ["echo before", "sleep 30"], "executionTimeout": ["1"]},
    )["Command"]["CommandId"]
    result = wait(sandbox, command_id, edx)
    assert time.monotonic() - began < 10
    assert (result["Status"], result["StatusDetails"], result["ResponseCode"]) == (
        "TimedOut",
        "ExecutionTimedOut",
        137,
    )
    assert result["StandardOutputContent"] == "before\n"


@pytest.mark.timeout(30)
def test_offline_agent_leaves_commands_undelivered_until_the_delivery_timeout() -> None:
    with Sandbox(with_kube=False, ssm_invocation_delay=0.05, ssm_timeout_scale=0.02) as sandbox:
        ssm = sandbox.client("ssm")
        edx = sandbox.edx_hosts[0]
        sandbox.faults.agent_offline(edx)
        info = ssm.describe_instance_information(Filters=[{"Key": "InstanceIds", "Values": [edx]}])
        assert info["InstanceInformationList"][0]["PingStatus"] == "ConnectionLost"
        marker = sandbox.roots[edx] / "delivered"
        command_id = send(sandbox, [edx], [f"touch /edx/{marker.name}"], TimeoutSeconds=30)  # 0.6 s scaled
        time.sleep(0.3)
        pending = ssm.get_command_invocation(CommandId=command_id, InstanceId=edx)
        assert (pending["Status"], pending["ResponseCode"]) == ("Pending", -1)
        result = wait(sandbox, command_id, edx)
        assert (result["Status"], result["StatusDetails"]) == ("TimedOut", "DeliveryTimedOut")
        assert not marker.exists()
        command = ssm.list_commands(CommandId=command_id)["Commands"][0]
        assert command["Status"] == "TimedOut" and command["DeliveryTimedOutCount"] == 1
        sandbox.faults.agent_online(edx)
        assert not marker.exists()  # an expired command is never delivered
        assert run(sandbox, edx, [f"touch /edx/{marker.name}"])["Status"] == "Success"
        assert marker.exists()

        # a command sent while offline runs once the agent is back (before its delivery timeout)
        sandbox.faults.agent_offline(edx)
        command_id = send(sandbox, [edx], ["echo late"], TimeoutSeconds=3600)
        time.sleep(0.2)
        assert ssm.get_command_invocation(CommandId=command_id, InstanceId=edx)["Status"] == "Pending"
        sandbox.faults.agent_online(edx)
        assert wait(sandbox, command_id, edx)["StandardOutputContent"] == "late\n"


@pytest.mark.timeout(30)
def test_stopped_instance_takes_no_commands_until_started(sandbox: Sandbox) -> None:
    ssm = sandbox.client("ssm")
    edx = sandbox.edx_hosts[1]
    sandbox.client("ec2").stop_instances(InstanceIds=[edx])
    info = ssm.describe_instance_information(Filters=[{"Key": "InstanceIds", "Values": [edx]}])
    assert info["InstanceInformationList"][0]["PingStatus"] == "ConnectionLost"
    command_id = send(sandbox, [edx], ["echo hi"])
    time.sleep(0.4)
    assert ssm.get_command_invocation(CommandId=command_id, InstanceId=edx)["Status"] == "Pending"
    sandbox.client("ec2").start_instances(InstanceIds=[edx])
    assert wait(sandbox, command_id, edx)["Status"] == "Success"


@pytest.mark.timeout(30)
def test_describe_instance_information_filters_and_pages(sandbox: Sandbox) -> None:
    ssm = sandbox.client("ssm")
    caches = [launch_cache_host(sandbox) for _ in range(4)]
    everything = ssm.describe_instance_information()["InstanceInformationList"]
    assert {i["InstanceId"] for i in everything} == set(sandbox.edx_hosts) | set(caches)
    first = everything[0]
    assert (first["PingStatus"], first["PlatformType"], first["PlatformName"]) == (
        "Online",
        "Linux",
        "Ubuntu",
    )
    assert first["AgentVersion"] and first["ResourceType"] == "EC2Instance"
    page1 = ssm.describe_instance_information(MaxResults=5)
    assert len(page1["InstanceInformationList"]) == 5 and page1["NextToken"]
    page2 = ssm.describe_instance_information(MaxResults=5, NextToken=page1["NextToken"])
    assert len(page2["InstanceInformationList"]) == 1 and "NextToken" not in page2
    paged = {i["InstanceId"] for i in page1["InstanceInformationList"] + page2["InstanceInformationList"]}
    assert paged == {i["InstanceId"] for i in everything}
    only = ssm.describe_instance_information(Filters=[{"Key": "InstanceIds", "Values": caches[:2]}])
    assert {i["InstanceId"] for i in only["InstanceInformationList"]} == set(caches[:2])
    legacy = ssm.describe_instance_information(
        InstanceInformationFilterList=[{"key": "InstanceIds", "valueSet": [sandbox.edx_hosts[0]]}]
    )
    assert [i["InstanceId"] for i in legacy["InstanceInformationList"]] == [sandbox.edx_hosts[0]]
    tagged = ssm.describe_instance_information(Filters=[{"Key": "tag:openedx-role", "Values": ["app"]}])
    assert {i["InstanceId"] for i in tagged["InstanceInformationList"]} == set(sandbox.edx_hosts)
    paginator = ssm.get_paginator("describe_instance_information")
    assert (
        sum(len(p["InstanceInformationList"]) for p in paginator.paginate(PaginationConfig={"PageSize": 5}))
        == 6
    )
    with pytest.raises(ClientError) as exc:
        ssm.describe_instance_information(Filters=[{"Key": "NoSuchKey", "Values": ["x"]}])
    assert exc.value.response["Error"]["Code"] == "InvalidFilterKey"


@pytest.mark.timeout(30)
def test_send_command_validation(sandbox: Sandbox) -> None:
    ssm = sandbox.client("ssm")
    cases: list[tuple[dict[str, Any], str]] = [
        ({"InstanceIds": ["i-0123456789abcdef0"], "Parameters": {"commands": ["true"]}}, "InvalidInstanceId"),
        ({"InstanceIds": [sandbox.edx_hosts[0]], "Parameters": {}}, "InvalidParameters"),
        (
            {"InstanceIds": [sandbox.edx_hosts[0]], "Parameters": {"commands": ["true"], "x": ["1"]}},
            "InvalidParameters",
        ),
        (
            {"InstanceIds": [sandbox.edx_hosts[0]] * 2, "Parameters": {"commands": ["true"]}},
            "DuplicateInstanceId",
        ),
    ]
    for kwargs, code in cases:
        with pytest.raises(ClientError) as exc:
            ssm.send_command(DocumentName=RUN, **kwargs)
        assert exc.value.response["Error"]["Code"] == code, kwargs
    with pytest.raises(ClientError) as exc:
        ssm.send_command(DocumentName="AWS-RunPowerShellScript", InstanceIds=[sandbox.edx_hosts[0]])
    assert exc.value.response["Error"]["Code"] == "InvalidDocument"
    sandbox.client("ec2").terminate_instances(InstanceIds=[sandbox.edx_hosts[1]])
    with pytest.raises(ClientError) as exc:
        ssm.send_command(
            DocumentName=RUN, InstanceIds=[sandbox.edx_hosts[1]], Parameters={"commands": ["true"]}
        )
    assert exc.value.response["Error"]["Code"] == "InvalidInstanceId"


@pytest.mark.timeout(30)
def test_list_commands_and_invocations_across_hosts(sandbox: Sandbox) -> None:
    ssm = sandbox.client("ssm")
    command_id = send(sandbox, sandbox.edx_hosts, ["hostname -I >/dev/null 2>&1; echo $AWS_SSM_INSTANCE_ID"])
    for edx in sandbox.edx_hosts:
        assert wait(sandbox, command_id, edx)["StandardOutputContent"] == f"{edx}\n"
    invocations = ssm.list_command_invocations(CommandId=command_id, Details=True)["CommandInvocations"]
    assert {i["InstanceId"] for i in invocations} == set(sandbox.edx_hosts)
    assert all(i["Status"] == "Success" and i["CommandPlugins"][0]["ResponseCode"] == 0 for i in invocations)
    by_instance = ssm.list_command_invocations(InstanceId=sandbox.edx_hosts[0])["CommandInvocations"]
    assert [i["CommandId"] for i in by_instance] == [command_id]
    command = ssm.list_commands(CommandId=command_id)["Commands"][0]
    assert (command["Status"], command["TargetCount"], command["CompletedCount"], command["ErrorCount"]) == (
        "Success",
        2,
        2,
        0,
    )
    assert command["Parameters"]["commands"] == ["hostname -I >/dev/null 2>&1; echo $AWS_SSM_INSTANCE_ID"]
    failing = send(sandbox, [sandbox.edx_hosts[0]], ["exit 1"])
    wait(sandbox, failing, sandbox.edx_hosts[0])
    assert [c["CommandId"] for c in ssm.list_commands()["Commands"]] == [failing, command_id]
    failed = ssm.list_commands(Filters=[{"key": "Status", "value": "Failed"}])["Commands"]
    assert [c["CommandId"] for c in failed] == [failing]
    with pytest.raises(ClientError):
        ssm.list_commands(CommandId="00000000-0000-0000-0000-000000000000")


@pytest.mark.timeout(30)
def test_cancel_command(sandbox: Sandbox) -> None:
    edx = sandbox.edx_hosts[0]
    command_id = send(sandbox, [edx], ["sleep 20"])
    time.sleep(0.3)
    sandbox.client("ssm").cancel_command(CommandId=command_id)
    assert wait(sandbox, command_id, edx)["Status"] == "Cancelled"


@pytest.mark.timeout(30)
def test_reconfigure_script_rewrites_memcached_conf_and_restarts_memcached(sandbox: Sandbox) -> None:
    cache_id = launch_cache_host(sandbox)
    cache = sandbox.cache_host(cache_id)
    pid = cache.pid
    script = render_reconfigure_script(MemcachedSettings(memory_mib=128, extra_args=(("-t", "3"),)))
    result = run(sandbox, cache_id, script.splitlines())
    assert result["Status"] == "Success", result
    assert cache.pid != pid
    conf = cache.conf_path.read_text()
    assert "-m 128" in conf and f"-l {cache.host.private_ip}" in conf and "@PRIVATE_IP@" not in conf
    cmdline = open(f"/proc/{cache.pid}/cmdline", "rb").read().split(b"\0")  # noqa: SIM115
    assert cmdline[cmdline.index(b"-m") + 1] == b"128" and cmdline[cmdline.index(b"-t") + 1] == b"3"
    assert cmdline[cmdline.index(b"-l") + 1] == cache.host.private_ip.encode()  # the IMDS lookup, resolved
    # the script ran in the host's network namespace: it reaches its own memcached at its private IP
    probe = run(
        sandbox,
        cache_id,
        [f"exec 3<>/dev/tcp/{cache.host.private_ip}/11211 && echo version >&3 && head -c 8 <&3"],
    )
    assert probe["StandardOutputContent"] == "VERSION ", probe
    assert [c["args"] for c in sandbox.systemctl_calls(cache_id)] == [["restart", "memcached"]]
    # the real /etc/memcached.conf of this machine is untouched
    assert "edx-remote-cache" not in open("/etc/memcached.conf", encoding="utf-8").read()  # noqa: SIM115

    # a conf memcached rejects: systemctl (Type=simple) still says 0, the unit is failed, the port refuses
    broken = script.replace("-c 1024\n", "-c 1024\n-o no_such_option\n")
    run(sandbox, cache_id, broken.splitlines())
    assert cache.state == "failed"
    status = run(sandbox, cache_id, ["systemctl is-active memcached"])
    assert status["StandardOutputContent"] == "failed\n"


@pytest.mark.timeout(30)
def test_systemctl_on_an_edx_host_is_recorded(sandbox: Sandbox) -> None:
    edx = sandbox.edx_hosts[0]
    result = run(sandbox, edx, ["systemctl disable --now memcached", "systemctl is-active memcached || true"])
    assert result["StandardOutputContent"] == "inactive\n"
    assert [c["args"] for c in sandbox.systemctl_calls(edx)] == [
        ["disable", "--now", "memcached"],
        ["is-active", "memcached"],
    ]
    assert sandbox.systemctl is not None and sandbox.systemctl.unit_state(edx, "memcached") == (False, False)
    missing = run(sandbox, edx, ["systemctl restart no-such-unit"])
    assert missing["ResponseCode"] == 5 and "not found" in missing["StandardErrorContent"]


@pytest.mark.timeout(30)
def test_processes_a_script_leaves_behind_die_with_it(sandbox: Sandbox) -> None:
    edx = sandbox.edx_hosts[0]
    result = run(sandbox, edx, ["setsid sleep 47.5 > /dev/null 2>&1 &", "echo $!"])
    assert result["Status"] == "Success"
    time.sleep(0.1)
    assert subprocess.run(["pgrep", "-f", "^sleep 47.5$"], capture_output=True, check=False).returncode == 1


@pytest.mark.timeout(30)
def test_fault_agent_registration_delay(sandbox: Sandbox) -> None:
    ssm = sandbox.client("ssm")
    sandbox.faults.delay_agent_registration(0.5)
    cache_id = launch_cache_host(sandbox)
    assert (
        sandbox.cache_host(cache_id).state == "running"
    )  # the instance booted; its agent is not registered yet
    listed = ssm.describe_instance_information()["InstanceInformationList"]
    assert cache_id not in {i["InstanceId"] for i in listed}
    with pytest.raises(ClientError) as exc:
        send(sandbox, [cache_id], ["true"])
    assert exc.value.response["Error"]["Code"] == "InvalidInstanceId"
    time.sleep(0.6)
    assert run(sandbox, cache_id, ["systemctl is-active memcached"])["StandardOutputContent"] == "active\n"
