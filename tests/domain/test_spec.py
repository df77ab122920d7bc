"""The spec model: defaults, and a bad spec always yields the field path and the fix."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from edx_remote_cache.domain.spec import (
    DEFAULT_AMI_PARAMETERS,
    SpecError,
    instance_architecture,
    parse_spec,
)

MINIMAL: dict[str, Any] = {
    "region": "us-east-1",
    "instance": {"subnetId": "subnet-0a1b2c3d4e5f60718"},
    "openedx": {"hosts": ["i-0123456789abcdef0"]},
}


def with_(path: str, value: Any) -> dict[str, Any]:
    spec = copy.deepcopy(MINIMAL)
    node = spec
    *parents, leaf = path.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    if value is _DELETE:
        node.pop(leaf)
    else:
        node[leaf] = value
    return spec


_DELETE = object()


def test_minimal_spec_gets_documented_defaults() -> None:
    spec = parse_spec(MINIMAL)
    assert spec.instance.instance_type == "t3.medium"
    assert spec.memcached.port == 11211
    assert spec.memory_mib == 3072  # 75% of t3.medium's 4 GiB
    assert spec.openedx.config_files[0] == "/edx/etc/lms.yml"
    assert spec.openedx.restart_command_for("/edx/etc/lms.yml")[:2] == ("/edx/bin/supervisorctl", "restart")
    assert spec.probe.interval_seconds == 5 and spec.probe.failure_threshold == 3
    assert spec.deletion_policy == "Delete" and spec.revert_hosts_on_delete and not spec.paused
    settings = spec.memcached_settings
    assert (settings.port, settings.memory_mib, settings.max_connections) == (11211, 3072, 1024)


BAD_SPECS = [
    # (description, spec, expected path, words the message must contain)
    ("public cidr", with_("network", {"allowFromCidrs": ["0.0.0.0/0"]}), "spec.network.allowFromCidrs[0]", "allowPublic"),
    ("public ssh", with_("network", {"sshFromCidrs": ["0.0.0.0/0"]}), "spec.network.sshFromCidrs[0]", "allowPublic"),
    ("bad cidr", with_("network", {"allowFromCidrs": ["10.0.0.0/8", "10.1.2"]}), "spec.network.allowFromCidrs[1]", "IPv4 CIDR"),
    ("host bits", with_("network", {"allowFromCidrs": ["10.0.0.1/8"]}), "spec.network.allowFromCidrs[0]", "10.0.0.0/16"),
    ("unknown type", with_("instance.instanceType", "x9.huge"), "spec.memcached.memoryMiB", "set spec.memcached.memoryMiB"),
    ("memory > ram", with_("memcached", {"memoryMiB": 8192}), "spec.memcached.memoryMiB", "4096 MiB"),
    ("no hosts", with_("openedx", {}), "spec.openedx.hosts", "hostSelector"),
    ("bad host id", with_("openedx", {"hosts": ["i-XYZ"]}), "spec.openedx.hosts[0]", "i-0123456789abcdef0"),
    ("bad subnet", with_("instance.subnetId", "sub-1"), "spec.instance.subnetId", "subnet-0123456789abcdef0"),
    ("missing subnet", with_("instance.subnetId", _DELETE), "spec.instance.subnetId", "required"),
    ("missing region", {k: v for k, v in MINIMAL.items() if k != "region"}, "spec.region", "required"),
    ("bad region", with_("region", "mars"), "spec.region", "us-east-1"),
    ("typo", with_("instance.instnceType", "t3.small"), "spec.instance.instnceType", "spelling"),
    ("reserved flag", with_("memcached", {"extraArgs": ["-t 4", "-l 0.0.0.0"]}), "spec.memcached.extraArgs[1]", "set by the operator"),
    ("unknown flag", with_("memcached", {"extraArgs": ["-X 1"]}), "spec.memcached.extraArgs[0]", "allowed"),
    ("shell in restart", with_("openedx.restartCommands", {"/edx/etc/lms.yml": ["echo", "$(id)"]}), "spec.openedx.restartCommands[/edx/etc/lms.yml][1]", "without a shell"),
    ("shell in verify", with_("openedx.verifyCommand", ["curl", "x;rm"]), "spec.openedx.verifyCommand[1]", "without a shell"),
    ("restart for unknown file", with_("openedx.restartCommands", {"/edx/etc/other.yml": ["true"]}), "spec.openedx.restartCommands[/edx/etc/other.yml]", "configFiles"),
    ("relative path", with_("openedx.configFiles", ["etc/lms.yml"]), "spec.openedx.configFiles[0]", "/edx/etc/lms.yml"),
    ("dotdot path", with_("openedx.configFiles", ["/edx/etc/../../etc/shadow.yml"]), "spec.openedx.configFiles[0]", ".."),
    ("port too low", with_("memcached", {"port": 80}), "spec.memcached.port", "at least 1024"),
    ("interval zero", with_("probe", {"intervalSeconds": 0}), "spec.probe.intervalSeconds", "at least 1"),
    ("policy", with_("deletionPolicy", "Orphan"), "spec.deletionPolicy", "Orphan"),
    ("replicas", with_("instance.replicas", 0), "spec.instance.replicas", "at least 1"),
    ("adopt count", with_("instance.adoptInstanceIds", ["i-0aaaaaaaaaaaaaaaa", "i-0bbbbbbbbbbbbbbbb"]), "spec.instance.adoptInstanceIds", "replicas"),
    ("adopt a host", with_("instance.adoptInstanceIds", ["i-0123456789abcdef0"]), "spec.instance.adoptInstanceIds", "own instance"),
    ("reserved tag", with_("instance.tags", {"aws:cloudformation": "x"}), "spec.instance.tags", "reserved"),
    ("not a bool", with_("paused", "maybe"), "spec.paused", "true or false"),
]  # fmt: skip


@pytest.mark.parametrize(("spec", "path", "words"), [c[1:] for c in BAD_SPECS], ids=[c[0] for c in BAD_SPECS])
def test_bad_spec_names_field_and_fix(spec: dict[str, Any], path: str, words: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(spec)
    by_path = {p.path: p.message for p in info.value.problems}
    assert path in by_path, f"expected a problem at {path}, got {by_path}"
    assert words in by_path[path]


def test_every_problem_is_reported_not_just_the_first() -> None:
    spec = with_("network", {"allowFromCidrs": ["nope"], "sshFromCidrs": ["also-nope"]})
    spec["probe"] = {"timeoutSeconds": 0}
    with pytest.raises(SpecError) as info:
        parse_spec(spec)
    assert {p.path for p in info.value.problems} >= {
        "spec.network.allowFromCidrs[0]",
        "spec.network.sshFromCidrs[0]",
        "spec.probe.timeoutSeconds",
    }


def test_no_spec_at_all() -> None:
    with pytest.raises(SpecError, match="has no spec"):
        parse_spec(None)


def test_allow_public_permits_world_cidr() -> None:
    spec = parse_spec(with_("network", {"allowFromCidrs": ["0.0.0.0/0"], "allowPublic": True}))
    assert spec.network.allow_from_cidrs == ["0.0.0.0/0"]


def test_unknown_type_with_explicit_memory_is_fine() -> None:
    spec = with_("instance.instanceType", "x9.huge")
    spec["memcached"] = {"memoryMiB": 1000}
    assert parse_spec(spec).memory_mib == 1000


@pytest.mark.parametrize(
    ("instance_type", "architecture"),
    [
        ("t3.medium", "x86_64"), ("r6i.large", "x86_64"), ("g5.xlarge", "x86_64"), ("g4dn.xlarge", "x86_64"),
        ("m7i-flex.large", "x86_64"), ("t4g.small", "arm64"), ("m7g.large", "arm64"), ("c7gn.large", "arm64"),
        ("r8g.large", "arm64"), ("x2gd.large", "arm64"), ("g5g.xlarge", "arm64"), ("a1.large", "arm64"),
    ],
)  # fmt: skip
def test_architecture_follows_the_instance_family(instance_type: str, architecture: str) -> None:
    assert instance_architecture(instance_type) == architecture


def test_default_image_is_ubuntu_24_04_of_the_instance_types_architecture() -> None:
    assert parse_spec(MINIMAL).instance.ami_parameter == (
        "/aws/service/canonical/ubuntu/server/24.04/stable/current/amd64/hvm/ebs-gp3/ami-id"
    )
    graviton = parse_spec(with_("instance.instanceType", "t4g.medium"))
    assert graviton.instance.ami_parameter == DEFAULT_AMI_PARAMETERS["arm64"]
    assert "/24.04/" in graviton.instance.ami_parameter and "/arm64/" in graviton.instance.ami_parameter


def test_the_20_04_default_stored_by_older_crds_now_means_ubuntu_24_04() -> None:
    old = "/aws/service/canonical/ubuntu/server/20.04/stable/current/amd64/hvm/ebs-gp2/ami-id"
    spec = with_("instance.amiParameter", old)
    spec["instance"]["instanceType"] = "m7g.large"
    assert parse_spec(spec).instance.ami_parameter == DEFAULT_AMI_PARAMETERS["arm64"]


def test_an_ami_parameter_of_the_other_architecture_is_refused() -> None:
    spec = with_("instance.instanceType", "c7g.large")
    spec["instance"]["amiParameter"] = DEFAULT_AMI_PARAMETERS["x86_64"]
    with pytest.raises(SpecError) as caught:
        parse_spec(spec)
    (problem,) = caught.value.problems
    assert problem.path == "spec.instance.amiParameter"
    assert "x86_64 image but c7g.large runs arm64" in problem.message
    assert DEFAULT_AMI_PARAMETERS["arm64"] in problem.message
    own = with_(
        "instance.amiParameter", "/my-org/golden-memcached-ami"
    )  # says nothing: cannot tell, accepted
    assert parse_spec(own).instance.ami_parameter == "/my-org/golden-memcached-ami"
