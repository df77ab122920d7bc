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
