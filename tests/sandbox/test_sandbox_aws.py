"""The sandbox's AWS: moto on loopback, as strict as AWS where moto is kinder, with a call recorder."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from botocore.exceptions import ClientError

from edx_remote_cache.domain.userdata import MemcachedSettings, render_user_data
from edx_remote_cache.sandbox import Sandbox
from edx_remote_cache.sandbox.aws import (
    UBUNTU_AMI_ID,
    UBUNTU_AMI_PARAMETER,
    UBUNTU_ARM64_AMI_ID,
    UBUNTU_ARM64_AMI_PARAMETER,
)

pytestmark = pytest.mark.e2e


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(with_kube=False) as sb:
        yield sb


def error_code(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return str(exc.value.response["Error"]["Code"])


def launch(sb: Sandbox, **extra: object) -> dict[str, object]:
    kwargs: dict[str, object] = {
        "ImageId": UBUNTU_AMI_ID,
        "MinCount": 1,
        "MaxCount": 1,
        "SubnetId": sb.subnet_id,
    }
    kwargs.update(extra)
    return dict(sb.client("ec2").run_instances(**kwargs))


def all_instance_ids(sb: Sandbox) -> list[str]:
    reservations = sb.client("ec2").describe_instances()["Reservations"]
    return [i["InstanceId"] for r in reservations for i in r["Instances"]]


@pytest.mark.timeout(30)
def test_moto_listens_on_loopback_only(sandbox: Sandbox) -> None:
    assert sandbox.aws_endpoint_url.startswith("http://127.0.0.1:")
    assert sandbox.aws is not None and sandbox.aws._server is not None
    assert sandbox.aws._server.get_host_and_port()[0] == "127.0.0.1"


@pytest.mark.timeout(30)
def test_ubuntu_ami_parameter_resolves_to_an_existing_image(sandbox: Sandbox) -> None:
    ami = sandbox.client("ssm").get_parameter(Name=UBUNTU_AMI_PARAMETER)["Parameter"]["Value"]
    images = sandbox.client("ec2").describe_images(ImageIds=[ami])["Images"]
    assert [i["ImageId"] for i in images] == [UBUNTU_AMI_ID]
    assert "noble-24.04-amd64" in images[0]["Name"] and images[0]["Architecture"] == "x86_64"
    arm = sandbox.client("ssm").get_parameter(Name=UBUNTU_ARM64_AMI_PARAMETER)["Parameter"]["Value"]
    (arm_image,) = sandbox.client("ec2").describe_images(ImageIds=[arm])["Images"]
    assert arm == UBUNTU_ARM64_AMI_ID and arm_image["Architecture"] == "arm64"
    with pytest.raises(ClientError) as exc:
        launch(sandbox, ImageId="ami-0123456789abcdef0")
    assert error_code(exc) == "InvalidAMIID.NotFound"


@pytest.mark.timeout(30)
def test_client_token_is_idempotent(sandbox: Sandbox) -> None:
    before = set(all_instance_ids(sandbox))
    first = launch(sandbox, ClientToken="erc-token-1")
    again = launch(sandbox, ClientToken="erc-token-1")
    first_ids = [i["InstanceId"] for i in first["Instances"]]  # type: ignore[union-attr]
    assert [i["InstanceId"] for i in again["Instances"]] == first_ids  # type: ignore[union-attr]
    assert again["ReservationId"] == first["ReservationId"]
    assert set(all_instance_ids(sandbox)) - before == set(first_ids)
    with pytest.raises(ClientError) as exc:
        launch(sandbox, ClientToken="erc-token-1", InstanceType="t3.large")
    assert error_code(exc) == "IdempotentParameterMismatch"
    other = launch(sandbox, ClientToken="erc-token-2")
    assert other["Instances"][0]["InstanceId"] not in first_ids  # type: ignore[index]


@pytest.mark.timeout(30)
def test_concurrent_retries_with_one_client_token_launch_once(sandbox: Sandbox) -> None:
    user_data = render_user_data(MemcachedSettings())
    results: list[str] = []

    def go() -> None:
        reply = launch(sandbox, ClientToken="erc-concurrent", UserData=user_data)
        results.append(reply["Instances"][0]["InstanceId"])  # type: ignore[index]

    threads = [threading.Thread(target=go) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(results)) == 1
    assert len(sandbox.cache_hosts) == 1


@pytest.mark.timeout(30)
def test_instance_type_change_needs_a_stopped_instance(sandbox: Sandbox) -> None:
    ec2 = sandbox.client("ec2")
    instance_id = launch(sandbox, InstanceType="t3.medium")["Instances"][0]["InstanceId"]  # type: ignore[index]
    with pytest.raises(ClientError) as exc:
        ec2.modify_instance_attribute(InstanceId=instance_id, InstanceType={"Value": "t3.large"})
    assert error_code(exc) == "IncorrectInstanceState"
    with pytest.raises(ClientError) as exc:
        ec2.modify_instance_attribute(InstanceId=instance_id, Attribute="instanceType", Value="t3.large")
    assert error_code(exc) == "IncorrectInstanceState"
    ec2.stop_instances(InstanceIds=[instance_id])
    ec2.modify_instance_attribute(InstanceId=instance_id, InstanceType={"Value": "t3.large"})
    described = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    assert described["InstanceType"] == "t3.large"


@pytest.mark.timeout(30)
def test_security_group_in_use_cannot_be_deleted(sandbox: Sandbox) -> None:
    ec2 = sandbox.client("ec2")
    vpc = sandbox.vpc_id
    group = ec2.create_security_group(GroupName="cache", Description="cache", VpcId=vpc)["GroupId"]
    instance_id = launch(sandbox, SecurityGroupIds=[group])["Instances"][0]["InstanceId"]  # type: ignore[index]
    with pytest.raises(ClientError) as exc:
        ec2.delete_security_group(GroupId=group)
    assert error_code(exc) == "DependencyViolation"
    ec2.stop_instances(InstanceIds=[instance_id])  # a stopped instance still holds its groups
    with pytest.raises(ClientError) as exc:
        ec2.delete_security_group(GroupId=group)
    assert error_code(exc) == "DependencyViolation"
    ec2.terminate_instances(InstanceIds=[instance_id])
    ec2.delete_security_group(GroupId=group)

    referenced = ec2.create_security_group(GroupName="referenced", Description="r", VpcId=vpc)["GroupId"]
    ec2.authorize_security_group_ingress(
        GroupId=sandbox.edx_security_group_id,
        IpPermissions=[
            {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "UserIdGroupPairs": [{"GroupId": referenced}]}
        ],
    )
    with pytest.raises(ClientError) as exc:
        ec2.delete_security_group(GroupId=referenced)
    assert error_code(exc) == "DependencyViolation"


@pytest.mark.timeout(30)
def test_fault_new_instances_are_invisible_for_a_while(sandbox: Sandbox) -> None:
    ec2 = sandbox.client("ec2")
    sandbox.faults.hide_new_instances(0.6)
    instance_id = launch(
        sandbox, TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "k", "Value": "v"}]}]
    )["Instances"][0]["InstanceId"]  # type: ignore[index]
    with pytest.raises(ClientError) as exc:
        ec2.describe_instances(InstanceIds=[instance_id])
    assert error_code(exc) == "InvalidInstanceID.NotFound"
    assert instance_id in str(exc.value)
    filtered = ec2.describe_instances(Filters=[{"Name": "tag:k", "Values": ["v"]}])["Reservations"]
    assert filtered == []
    assert instance_id not in all_instance_ids(sandbox)
    assert set(sandbox.edx_hosts) <= set(all_instance_ids(sandbox))  # older instances stay visible
    time.sleep(0.7)
    assert ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0][
        "InstanceId"
    ] == (instance_id)
    sandbox.faults.hide_new_instances(0)
    later = launch(sandbox)["Instances"][0]["InstanceId"]  # type: ignore[index]
    assert later in all_instance_ids(sandbox)
    sandbox.faults.hide_instance(sandbox.edx_hosts[0], 0.5)
    assert sandbox.edx_hosts[0] not in all_instance_ids(sandbox)


@pytest.mark.timeout(30)
def test_call_recorder_counts_what_the_code_under_test_did(sandbox: Sandbox) -> None:
    ec2 = sandbox.client("ec2")
    start = sandbox.calls.now()
    assert sandbox.calls.count(since=start) == 0
    for _ in range(3):
        ec2.describe_instances()
    instance_id = launch(sandbox)["Instances"][0]["InstanceId"]  # type: ignore[index]
    ec2.create_tags(Resources=[instance_id], Tags=[{"Key": "a", "Value": "b"}])
    middle = sandbox.calls.now()
    with pytest.raises(ClientError):
        ec2.describe_instances(InstanceIds=["i-0000000000000dead"])
    sandbox.faults.stop_instance(instance_id)  # sandbox-internal: not the operator's
    assert sandbox.calls.count("DescribeInstances", since=start, until=middle) == 3
    assert sandbox.calls.count("DescribeInstances", since=middle) == 1
    assert sandbox.calls.count(mutating=True, since=start) == 2
    assert [c.operation for c in sandbox.calls.calls(mutating=True, since=start)] == [
        "RunInstances",
        "CreateTags",
    ]
    failed = sandbox.calls.calls("DescribeInstances", since=middle)[0]
    assert failed.status == 400 and failed.error_code == "InvalidInstanceID.NotFound"
    assert failed.params["InstanceId.1"] == "i-0000000000000dead"
    tagged = sandbox.calls.calls("CreateTags", since=start)[0]
    assert (
        tagged.service == "ec2"
        and tagged.region == "us-east-1"
        and tagged.params["ResourceId.1"] == instance_id
    )
    assert sandbox.calls.count("StopInstances", include_internal=True, since=start) == 1
    sandbox.client("ssm").get_parameter(Name=UBUNTU_AMI_PARAMETER)
    ssm_call = sandbox.calls.calls(service="ssm", since=start)[-1]
    assert ssm_call.operation == "GetParameter" and ssm_call.params == {"Name": UBUNTU_AMI_PARAMETER}
