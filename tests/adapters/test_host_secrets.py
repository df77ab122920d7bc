"""Issue 20: no byte of a config file leaves the host except the cache addresses.

A canary secret is planted at the top of every sandbox config file; then the host push lives a whole life on
the sandbox (create, a forced drift repair, a replica change, a failed restart with rollback, delete). The
sandbox's SSM agent records every parameter sent and every byte printed (untruncated); the canary must appear
in none of it (plain, base64, gzip+base64), nor in the results' status, messages and diffs, nor in any log
line at DEBUG (botocore's included). The same run also proves the reader-less preflight and a symlinked file.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import gzip
import logging
import re
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from edx_remote_cache.adapters.host_drift import HostDriftChecker
from edx_remote_cache.adapters.host_push import expected_files, push_hosts, revert_hosts
from edx_remote_cache.adapters.ssm import SsmAdapter
from edx_remote_cache.domain.hosts import EDXAPP_PYTHON, HostPushResult, host_paths
from edx_remote_cache.domain.spec import DEFAULT_ANSIBLE_VARS_FILES, DEFAULT_CONFIG_FILES, OpenedxSpec
from edx_remote_cache.sandbox import Sandbox

CANARY = "erc-canary-7f3a9c1e5b2d4f60"
SECRETS = f"SECRET_KEY: '{CANARY}'\nAWS_SECRET_ACCESS_KEY: {CANARY}-aws\n"
PATHS = host_paths(DEFAULT_CONFIG_FILES, DEFAULT_ANSIBLE_VARS_FILES)
A, B, C = "10.0.1.50:11211", "10.0.1.51:11211", "10.0.1.52:11211"
_B64 = re.compile(r"[A-Za-z0-9+/_-]{12,}={0,2}")


def on_host(sb: Sandbox, iid: str, path: str) -> Path:
    return sb.roots[iid] / Path(path).relative_to("/edx")


def plant(sb: Sandbox, iid: str) -> None:
    for path in PATHS:
        file = on_host(sb, iid, path)
        file.write_bytes(SECRETS.encode() + file.read_bytes())


def _decodings(text: str) -> Iterator[bytes]:
    """``text`` itself, and every base64 token in it decoded, and gunzipped when it is a gzip stream."""
    yield text.encode("utf-8", "replace")
    for token in _B64.findall(text):
        for candidate in (token, token + "=" * (-len(token) % 4)):
            try:
                raw = base64.b64decode(candidate, altchars=b"-_" if "-" in token or "_" in token else None)
            except (binascii.Error, ValueError):
                continue
            yield raw
            with contextlib.suppress(OSError, EOFError, zlib.error):
                yield gzip.decompress(raw)


def leaks(texts: Iterable[str]) -> list[str]:
    return [t[:200] for t in texts if any(CANARY.encode() in d for d in _decodings(t))]


def test_the_leak_finder_finds_the_canary_in_every_encoding() -> None:  # the control: a finder that can fail
    secret = SECRETS.encode()
    assert leaks([SECRETS])
    assert leaks([f"ERC-NODE 0 {base64.b64encode(secret).decode()}"])
    assert leaks([f"ERC-DATA 0 {base64.b64encode(gzip.compress(b'x' * 100 + secret)).decode()}"])
    assert not leaks(["ERC-BEGIN 1", base64.b64encode(b"localhost:11211").decode()])


def _everything(sb: Sandbox) -> list[str]:
    assert sb.ssm is not None
    out: list[str] = []
    for inv in sb.ssm.invocations():
        out += [inv["FullStdout"], inv["FullStderr"], inv["StandardOutputContent"], inv["Comment"]]
        out += [word for words in inv["Parameters"].values() for word in words]
    for call in sb.calls.calls("SendCommand"):
        out.append(repr(call.params))
    return out


@pytest.mark.e2e
@pytest.mark.timeout(240)
def test_a_whole_life_on_the_sandbox_leaks_no_byte_of_the_config_files(
    sb: Sandbox, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, botocore's wire logging included
    h1, h2 = sb.edx_hosts
    for host in (h1, h2):
        plant(sb, host)
    assert sb.faults is not None
    ssm = SsmAdapter(sb.client("ssm"))
    openedx = OpenedxSpec(hosts=[h1, h2], rollout={"maxConcurrency": 2, "maxErrors": 2})
    results: list[HostPushResult] = []

    # create
    first = push_hosts(ssm=ssm, hosts=[h1, h2], openedx=openedx, endpoints=[A])
    assert [r.state for r in first] == ["Configured", "Configured"], [r.message for r in first]
    results += first
    # a forced drift repair: ansible puts localhost back, the check sees it, a push repairs it
    lms = on_host(sb, h1, "/edx/etc/lms.yml")
    lms.write_text(lms.read_text().replace(A, "localhost:11211"))
    checker = HostDriftChecker(ssm, ttl_seconds=60)
    assert checker.check(expected_files(first))[h1].drifted
    previous = {r.instance_id: r for r in first}
    repaired = push_hosts(ssm=ssm, hosts=[h1], openedx=openedx, endpoints=[A], previous=previous)
    assert repaired[0].state == "Configured" and [p for p, _ in repaired[0].diffs] == ["/edx/etc/lms.yml"]
    results += repaired
    # a replica change: [A] becomes [A, B]
    grown = push_hosts(ssm=ssm, hosts=[h1, h2], openedx=openedx, endpoints=[A, B], replace=[A])
    assert [r.state for r in grown] == ["Configured", "Configured"], [r.message for r in grown]
    assert CANARY.encode() in lms.read_bytes() and B.encode() in lms.read_bytes()
    results += grown
    # a failed restart with rollback
    sb.faults.fail_restarts(h1)
    failed = push_hosts(ssm=ssm, hosts=[h1], openedx=openedx, endpoints=[C, B], replace=[A, B])
    assert failed[0].state == "RolledBack", failed[0].message
    sb.faults.fail_restarts(h1, False)
    results += failed
    # delete
    reverted = revert_hosts(
        ssm=ssm,
        hosts=[h1, h2],
        openedx=openedx,
        current_endpoints=[A, B],
        previous={r.instance_id: r for r in grown},
    )
    assert [r.state for r in reverted] == ["Configured", "Configured"], [r.message for r in reverted]
    assert A.encode() not in lms.read_bytes() and lms.read_bytes().startswith(SECRETS.encode())
    results += reverted

    recorded = _everything(sb)
    assert len(recorded) > 50 and any("ERC-NODE" in t for t in recorded)  # we did look at the outputs
    assert leaks(recorded) == []
    status = [repr(r.to_status()) for r in results] + [r.message for r in results]
    status += [d for r in results for _, d in r.diffs]
    assert leaks(status) == []
    assert any("botocore" in r.name for r in caplog.records)  # DEBUG logging was on
    assert leaks(r.getMessage() for r in caplog.records) == []
    assert leaks([caplog.text]) == []


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
