"""Issue 20, the host push's own edges: a host without Python + PyYAML fails preflight having read nothing,
a symlinked file is edited through its target. The canary test (no byte of a config file leaves the host
through a whole Kubernetes life on the real operator) is tests/e2e/test_host_secrets.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edx_remote_cache.adapters.host_drift import HostDriftChecker
from edx_remote_cache.adapters.host_push import expected_files, push_hosts, revert_hosts
from edx_remote_cache.adapters.ssm import SsmAdapter
from edx_remote_cache.domain.hosts import EDXAPP_PYTHON, host_paths
from edx_remote_cache.domain.spec import DEFAULT_ANSIBLE_VARS_FILES, DEFAULT_CONFIG_FILES, OpenedxSpec
from edx_remote_cache.sandbox import Sandbox

PATHS = host_paths(DEFAULT_CONFIG_FILES, DEFAULT_ANSIBLE_VARS_FILES)
A = "10.0.1.50:11211"


def on_host(sb: Sandbox, iid: str, path: str) -> Path:
    return sb.roots[iid] / Path(path).relative_to("/edx")


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_a_host_without_python_and_yaml_fails_preflight_and_nothing_is_read(sb: Sandbox) -> None:
    h1 = sb.edx_hosts[0]
    host = sb.registry.get(h1) if sb.registry else None
    assert host is not None
    fake = host.bin_dir / "python3"  # first on the agent's PATH: a python3 that cannot import yaml
    fake.write_text('#!/bin/sh\ncase "$2" in *yaml*) exit 1;; esac\nexit 0\n')
    fake.chmod(0o755)
    try:
        before = {p: on_host(sb, h1, p).read_bytes() for p in PATHS}
        (result,) = push_hosts(
            ssm=SsmAdapter(sb.client("ssm")), hosts=[h1], openedx=OpenedxSpec(hosts=[h1]), endpoints=[A]
        )
        assert result.state == "Failed"
        assert "python3: no PyYAML" in result.message and f"{EDXAPP_PYTHON}: not found" in result.message
        assert "nothing was read" in result.message
        assert {p: on_host(sb, h1, p).read_bytes() for p in PATHS} == before
        # the edxapp virtualenv's python is the fallback
        venv = on_host(sb, h1, EDXAPP_PYTHON)
        venv.parent.mkdir(parents=True, exist_ok=True)
        venv.write_text('#!/bin/sh\nexec /usr/bin/python3 "$@"\n')
        venv.chmod(0o755)
        (result,) = push_hosts(
            ssm=SsmAdapter(sb.client("ssm")), hosts=[h1], openedx=OpenedxSpec(hosts=[h1]), endpoints=[A]
        )
        assert result.state == "Configured", result.message
    finally:
        fake.unlink()


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_a_symlinked_file_is_edited_through_its_target_keeping_its_owner_and_mode(sb: Sandbox) -> None:
    h1 = sb.edx_hosts[0]
    lms = on_host(sb, h1, "/edx/etc/lms.yml")
    real = lms.with_name("lms.real.yml")
    lms.rename(real)
    real.chmod(0o640)
    lms.symlink_to("lms.real.yml")
    original = real.read_bytes()
    ssm = SsmAdapter(sb.client("ssm"))
    openedx = OpenedxSpec(hosts=[h1])
    (result,) = push_hosts(ssm=ssm, hosts=[h1], openedx=openedx, endpoints=[A])
    assert result.state == "Configured", result.message
    assert lms.is_symlink() and real.read_bytes() == original.replace(b"localhost:11211", A.encode())
    assert oct(real.stat().st_mode & 0o777) == oct(0o640)
    assert list(real.parent.glob("lms.real.yml.erc-bak-*"))  # the backup sits beside the target
    assert not HostDriftChecker(ssm, ttl_seconds=60).check(expected_files([result]))[h1].drifted
    (back,) = revert_hosts(ssm=ssm, hosts=[h1], openedx=openedx, current_endpoints=[A], previous={h1: result})
    assert back.state == "Configured" and real.read_bytes() == original and lms.is_symlink()
