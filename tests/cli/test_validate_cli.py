"""`edx-remote-cache validate`: exit codes and one line per problem naming file, object and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from edx_remote_cache.cli.main import main

ROOT = Path(__file__).resolve().parents[2]

BAD = """\
apiVersion: v1
kind: ConfigMap
metadata: {name: unrelated}
---
apiVersion: cache.openedx.org/v1alpha1
kind: EdxRemoteCache
metadata: {name: broken, namespace: openedx}
spec:
  region: us-east-1
  instance: {subnetId: subnet-0a1b2c3d4e5f60718, instanceType: x9.huge}
  network: {allowFromCidrs: [0.0.0.0/0]}
  openedx: {}
"""


def test_examples_are_valid(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", *map(str, sorted((ROOT / "examples").glob("*.yaml")))]) == 0


def test_invalid_object_lists_every_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    assert main(["validate", str(path)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert f"{path}: openedx/broken: spec.network.allowFromCidrs[0]: " in "\n".join(lines)
    assert any("spec.memcached.memoryMiB" in line for line in lines)
    assert any("spec.openedx.hosts" in line for line in lines)
    assert not any("unrelated" in line for line in lines)


def test_schema_error_reported_once_per_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text(
        BAD.replace("network: {allowFromCidrs: [0.0.0.0/0]}", "network: {allowFromCidrs: [10.1.2]}")
    )
    assert main(["validate", str(path)]) == 1
    out = capsys.readouterr().out
    assert out.count("spec.network.allowFromCidrs[0]") == 1


@pytest.mark.parametrize("content", ["key: [unclosed", None])
def test_unreadable_input_exits_2(
    tmp_path: Path, content: str | None, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "x.yaml"
    if content is not None:
        path.write_text(content)
    assert main(["validate", str(path)]) == 2
    assert str(path) in capsys.readouterr().err


def test_aws_flags_host_ids_ec2_does_not_know_or_that_are_terminated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from moto_server import aws_test_server

    with aws_test_server() as server:
        ec2 = server.clients().ec2
        launched = ec2.run_instances(ImageId=server.ami_id, MinCount=2, MaxCount=2, InstanceType="t3.micro")
        real, gone = (i["InstanceId"] for i in launched["Instances"])
        ec2.terminate_instances(InstanceIds=[gone])
        made_up = "i-0123456789abcdef0"
        path = tmp_path / "site.yaml"
        path.write_text(
            "apiVersion: cache.openedx.org/v1alpha1\nkind: EdxRemoteCache\n"
            "metadata: {name: site, namespace: openedx}\n"
            "spec:\n  region: us-east-1\n  instance: {subnetId: subnet-0a1b2c3d4e5f60718}\n"
            f"  openedx: {{hosts: [{real}, {made_up}, {gone}]}}\n"
        )
        for key, value in {
            "AWS_ENDPOINT_URL": server.endpoint_url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
        }.items():
            monkeypatch.setenv(key, value)
        assert main(["validate", str(path)]) == 0, "offline, the ids are only checked for their form"
        assert main(["validate", "--aws", str(path)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        f"{path}: openedx/site: spec.openedx.hosts[1]: {made_up}: no live instance in us-east-1 (unknown id or terminated)",
        f"{path}: openedx/site: spec.openedx.hosts[2]: {gone}: no live instance in us-east-1 (unknown id or terminated)",
    ]


def test_aws_without_a_reachable_ec2_is_an_error_not_valid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    assert main(["validate", "--aws", str(ROOT / "examples" / "minimal.yaml")]) == 2
    assert "--aws: cannot look the hosts up in EC2" in capsys.readouterr().err
