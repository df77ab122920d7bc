"""Host push over SSM: the adapter's retries (Stubber) and real scripts run by the sandbox's SSM agents.

The sandbox tests run every script for real, in a mount+net namespace with the host's sandbox root at /edx,
and check the files, backups and the supervisorctl log on that root.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from pydantic import ValidationError

import edx_remote_cache
from edx_remote_cache.adapters.aws import client_config
from edx_remote_cache.adapters.host_drift import HostDriftChecker
from edx_remote_cache.adapters.host_push import expected_files, push_hosts, revert_hosts
from edx_remote_cache.adapters.ssm import CommandResult, SsmAdapter, SsmError
from edx_remote_cache.domain.hosts import (
    BACKUP_SUFFIX,
    KEEP_BACKUPS,
    MAX_SCRIPT_CHARS,
    HostPlan,
    HostPushResult,
    host_paths,
)
from edx_remote_cache.domain.rewrite import rewrite
from edx_remote_cache.domain.spec import DEFAULT_ANSIBLE_VARS_FILES, DEFAULT_CONFIG_FILES, OpenedxSpec
from edx_remote_cache.sandbox import Sandbox

FIXTURES = Path(edx_remote_cache.__file__).parent / "data" / "edx"

# ---------------------------------------------------------------------------------------- adapter (Stubber)


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


@pytest.fixture
def stubbed() -> Iterator[tuple[SsmAdapter, Stubber, FakeTime]]:
    client = boto3.client(
        "ssm", region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing"
    )
    fake = FakeTime()
    with Stubber(client) as stubber:
        adapter = SsmAdapter(client, sleep=fake.sleep, clock=fake.clock, jitter=lambda lo, hi: 1.0)
        yield adapter, stubber, fake
        stubber.assert_no_pending_responses()


IID = "i-0123456789abcdef0"
CID = "11111111-2222-3333-4444-555555555555"


def _invocation(status: str, code: int = -1, out: str = "", details: str | None = None) -> dict[str, Any]:
    return {
        "CommandId": CID,
        "InstanceId": IID,
        "Status": status,
        "StatusDetails": details or status,
        "ResponseCode": code,
        "StandardOutputContent": out,
        "StandardErrorContent": "",
    }


@pytest.mark.timeout(10)
def test_run_script_waits_out_invocations_not_yet_visible(stubbed: Any) -> None:
    adapter, stubber, fake = stubbed
    stubber.add_response(
        "send_command",
        {"Command": {"CommandId": CID}},
        {
            "InstanceIds": [IID],
            "DocumentName": "AWS-RunShellScript",
            "Comment": "edx-remote-cache",
            "TimeoutSeconds": 30,
            "Parameters": {"commands": ["echo hi"], "executionTimeout": ["20"]},
        },
    )
    stubber.add_client_error("get_command_invocation", "InvocationDoesNotExist", "")
    stubber.add_client_error("get_command_invocation", "InvocationDoesNotExist", "")
    stubber.add_client_error("get_command_invocation", "InvocationDoesNotExist", "")
    stubber.add_response("get_command_invocation", _invocation("InProgress"))
    stubber.add_response("get_command_invocation", _invocation("Success", 0, "hi\n"))
    result = adapter.run_script(IID, "echo hi", timeout=20)
    assert result == CommandResult(CID, "Success", 0, "hi\n", "", "Success", result.duration)
    assert result.ok and result.delivered
    assert fake.sleeps[0] <= 0.2, "the first poll must come quickly (CR → Ready in ≤ 3 s)"
    assert sum(fake.sleeps) < 3


@pytest.mark.timeout(10)
def test_run_script_gives_up_and_cancels_after_its_deadline(stubbed: Any) -> None:
    adapter, stubber, fake = stubbed
    adapter.max_poll = 1.0
    stubber.add_response("send_command", {"Command": {"CommandId": CID}})
    elapsed, delay, polls = 0.0, adapter.first_poll, 0
    while elapsed <= adapter.delivery_timeout + 5 + 30:  # delivery + execution timeout + slack
        elapsed += delay
        delay = min(adapter.max_poll, delay * adapter.backoff)
        polls += 1
    for _ in range(polls):
        stubber.add_response("get_command_invocation", _invocation("InProgress"))
    stubber.add_response("cancel_command", {}, {"CommandId": CID, "InstanceIds": [IID]})
    result = adapter.run_script(IID, "sleep 999", timeout=5)
    assert result.status == "TimedOut" and result.exit_code == -1 and "gave up" in result.stderr
    assert 65 < fake.now < 70


@pytest.mark.timeout(10)
def test_offline_instance_is_an_unreachable_error(stubbed: Any) -> None:
    adapter, stubber, _fake = stubbed
    stubber.add_client_error("send_command", "InvalidInstanceId", "Instances not in a valid state")
    with pytest.raises(SsmError) as info:
        adapter.run_script(IID, "true", timeout=5)
    assert info.value.unreachable and info.value.code == "InvalidInstanceId"


class _ThrottlingSsm(http.server.BaseHTTPRequestHandler):
    """An SSM endpoint on loopback that answers every call with ThrottlingException and counts them."""

    calls = 0

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).calls += 1
        body = json.dumps({"__type": "ThrottlingException", "message": "Rate exceeded"}).encode()
        self.send_response(400)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.timeout(30)
def test_throttling_is_retried_once_by_botocore_and_not_again_by_the_adapter() -> None:
    """One layer of retries: the client's standard mode makes max_attempts attempts, then the adapter reports."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ThrottlingSsm)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = boto3.client(
            "ssm",
            region_name="us-east-1",
            endpoint_url=f"http://127.0.0.1:{server.server_address[1]}",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            config=client_config(max_attempts=2),
        )
        with pytest.raises(SsmError) as info:
            SsmAdapter(client).ping_statuses([IID])
        assert info.value.code == "ThrottlingException"
        # botocore: the first attempt plus max_attempts retries, and no adapter loop multiplying them
        assert _ThrottlingSsm.calls == 1 + 2
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.timeout(10)
def test_ping_statuses_batches_50_ids_and_follows_next_token(stubbed: Any) -> None:
    adapter, stubber, _fake = stubbed
    ids = [f"i-{n:017x}" for n in range(120)]
    online = {"PingStatus": "Online"}
    for start in (0, 50, 100):
        batch = ids[start : start + 50]
        params = {"Filters": [{"Key": "InstanceIds", "Values": batch}], "MaxResults": 50}
        if start == 50:  # this page comes in two parts
            stubber.add_response(
                "describe_instance_information",
                {
                    "InstanceInformationList": [{"InstanceId": i, **online} for i in batch[:30]],
                    "NextToken": "t",
                },
                params,
            )
            stubber.add_response(
                "describe_instance_information",
                {"InstanceInformationList": [{"InstanceId": i, **online} for i in batch[30:]]},
                {**params, "NextToken": "t"},
            )
            continue
        infos = [
            {"InstanceId": i, "PingStatus": "ConnectionLost" if i == ids[3] else "Online"} for i in batch
        ]
        if start == 100:
            infos = infos[:-1]  # the last id is not managed by SSM at all
        stubber.add_response("describe_instance_information", {"InstanceInformationList": infos}, params)
    statuses = adapter.ping_statuses(ids)
    assert statuses[ids[3]] == "ConnectionLost"
    assert statuses[ids[-1]] == "NotRegistered"
    assert sum(s == "Online" for s in statuses.values()) == 118


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------------ sandbox: real scripts

ENDPOINT = "10.0.1.50:11211"
LOCALS = ("localhost:11211", "127.0.0.1:11211")
PATHS = host_paths(DEFAULT_CONFIG_FILES, DEFAULT_ANSIBLE_VARS_FILES)


def on_host(sb: Sandbox, iid: str, path: str) -> Path:
    """Where the host's ``/edx/...`` lives on this machine."""
    return sb.roots[iid] / Path(path).relative_to("/edx")


def read_all(sb: Sandbox, iid: str) -> dict[str, bytes]:
    return {p: on_host(sb, iid, p).read_bytes() for p in PATHS if on_host(sb, iid, p).is_file()}


def backups(sb: Sandbox, iid: str) -> list[Path]:
    return sorted(sb.roots[iid].rglob(f"*{BACKUP_SUFFIX}*"))


def adapter(sb: Sandbox) -> SsmAdapter:
    return SsmAdapter(sb.client("ssm"))


def sent_to(sb: Sandbox, iid: str, since: float) -> list[str]:
    """Comments of the SendCommand calls made to ``iid`` since ``since`` (read, read chunk, apply, drift)."""
    return [
        c.params.get("Comment", "")
        for c in sb.calls.calls("SendCommand", since=since)
        if iid in c.params.get("InstanceIds", [])
    ]


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_push_repoints_every_file_byte_minimally_and_restarts_only_changed_services(sb: Sandbox) -> None:
    h1, h2 = sb.edx_hosts
    originals = read_all(sb, h1)
    # on the second host studio.yml already points at the cache: nothing of studio's must restart there
    studio = on_host(sb, h2, "/edx/etc/studio.yml")
    studio.write_text(rewrite(studio.read_text(), to=[ENDPOINT]).text)
    since = sb.calls.now()
    started = time.monotonic()
    results = push_hosts(
        ssm=adapter(sb), hosts=[h1, h2], openedx=OpenedxSpec(hosts=[h1, h2]), endpoints=[ENDPOINT]
    )
    elapsed = time.monotonic() - started
    assert [r.state for r in results] == ["Configured", "Configured"], [r.message for r in results]

    after = read_all(sb, h1)
    assert set(after) == set(PATHS)
    for path in PATHS:
        old, new = originals[path].splitlines(keepends=True), after[path].splitlines(keepends=True)
        assert len(old) == len(new), path
        changed = [(a, b) for a, b in zip(old, new, strict=True) if a != b]
        assert changed, path
        for a, b in changed:  # only the endpoint inside a LOCATION / *_MEMCACHE line differs
            local = next(x for x in LOCALS if x.encode() in a)
            assert a.replace(local.encode(), ENDPOINT.encode()) == b, (path, a, b)
    result = results[0]
    assert dict(result.files) == {p: _sha(c) for p, c in after.items()}
    assert {p for p, _ in result.diffs} == set(PATHS) and all(ENDPOINT in d for _, d in result.diffs)
    assert result.command_id and result.time is not None
    assert result.to_status()["files"] == [{"path": p, "sha256": _sha(after[p])} for p in PATHS]

    # backups next to the files hold the exact original bytes, owner and mode
    for path in PATHS:
        (backup,) = on_host(sb, h1, path).parent.glob(Path(path).name + BACKUP_SUFFIX + "*")
        assert backup.read_bytes() == originals[path]
        assert stat.S_IMODE(backup.stat().st_mode) == stat.S_IMODE(on_host(sb, h1, path).stat().st_mode)
    assert [c.args for c in sb.supervisorctl_calls(h1)] == [
        ("restart", "lms", "edxapp_worker:lms_default_1"),
        ("restart", "cms", "edxapp_worker:cms_default_1"),
        ("restart", "ecommerce"),
        ("restart", "insights"),
    ]
    assert all(c.args[1] != "cms" for c in sb.supervisorctl_calls(h2))
    assert "/edx/etc/studio.yml" not in {p for p, _ in results[1].diffs}

    # round trips: one DescribeInstanceInformation for the rollout, a read and an apply per host
    assert sb.calls.count("DescribeInstanceInformation", since=since) == 1
    assert sent_to(sb, h1, since) == ["edx-remote-cache read", "edx-remote-cache apply"]
    assert elapsed < 6, f"two hosts took {elapsed:.2f}s"


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_second_push_writes_and_restarts_nothing(sb: Sandbox) -> None:
    h1 = sb.edx_hosts[0]
    ssm = adapter(sb)
    openedx = OpenedxSpec(hosts=[h1])
    (first,) = push_hosts(ssm=ssm, hosts=[h1], openedx=openedx, endpoints=[ENDPOINT])
    files, calls, baks = read_all(sb, h1), sb.supervisorctl_calls(h1), backups(sb, h1)
    mtimes = {p: on_host(sb, h1, p).stat().st_mtime_ns for p in PATHS}
    since = sb.calls.now()
    (second,) = push_hosts(
        ssm=ssm,
        hosts=[h1],
        openedx=openedx,
        endpoints=[ENDPOINT],
        previous={h1: HostPushResult.from_status(first.to_status())},
    )
    assert second.state == "Configured" and second.message.startswith("up to date")
    assert (second.command_id, second.time, second.files) == (
        first.command_id,
        first.time.replace(microsecond=0) if first.time else None,
        first.files,
    )
    assert sent_to(sb, h1, since) == ["edx-remote-cache read"]
    assert read_all(sb, h1) == files and backups(sb, h1) == baks and sb.supervisorctl_calls(h1) == calls
    assert {p: on_host(sb, h1, p).stat().st_mtime_ns for p in PATHS} == mtimes


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_concurrent_edit_between_read_and_write_is_a_conflict_and_writes_nothing(sb: Sandbox) -> None:
    h1 = sb.edx_hosts[0]
    studio = on_host(sb, h1, "/edx/etc/studio.yml")

    def someone_edits(host: str, plan: HostPlan) -> None:
        assert host == h1 and len(plan.changes) == 5
        with studio.open("a") as handle:
            handle.write("# edited by hand while the operator was planning\n")

    before = read_all(sb, h1)
    before["/edx/etc/studio.yml"] += b"# edited by hand while the operator was planning\n"
    (result,) = push_hosts(
        ssm=adapter(sb),
        hosts=[h1],
        openedx=OpenedxSpec(hosts=[h1]),
        endpoints=[ENDPOINT],
        before_write=someone_edits,
    )
    assert result.state == "Conflict" and "/edx/etc/studio.yml" in result.message, result.message
    assert "/edx/etc/lms.yml" not in result.message  # lms.yml was still as read, only studio.yml conflicts
    assert read_all(sb, h1) == before  # not even lms.yml (checked first) was written
    assert backups(sb, h1) == [] and sb.supervisorctl_calls(h1) == []
    assert not list(sb.roots[h1].rglob("*.erc-tmp.*"))


@pytest.mark.e2e
@pytest.mark.timeout(60)
@pytest.mark.parametrize("failure", ["restart", "verify"])
def test_failed_restart_or_verify_restores_the_exact_bytes_and_rolls_back(sb: Sandbox, failure: str) -> None:
    h1, h2 = sb.edx_hosts
    assert sb.faults is not None
    originals = read_all(sb, h1)
    modes = {p: on_host(sb, h1, p).stat().st_mode for p in PATHS}
    verify: list[str] = []
    if failure == "restart":
        sb.faults.fail_restarts(h1)
    else:
        verify = ["/bin/false"]
    openedx = OpenedxSpec(hosts=[h1, h2], verify_command=verify)
    since = sb.calls.now()
    first, second = push_hosts(ssm=adapter(sb), hosts=[h1, h2], openedx=openedx, endpoints=[ENDPOINT])

    assert first.state == "RolledBack", first.message
    assert read_all(sb, h1) == originals
    assert {p: on_host(sb, h1, p).stat().st_mode for p in PATHS} == modes
    assert dict(first.files) == {p: _sha(c) for p, c in originals.items()}
    assert len(backups(sb, h1)) == len(PATHS)
    calls = sb.supervisorctl_calls(h1)
    if failure == "restart":
        assert "supervisorctl restart lms" in first.message and "spawn error" in first.message
        assert calls[0].rc == 1 and calls[0].args == ("restart", "lms", "edxapp_worker:lms_default_1")
        assert [c.args[1] for c in calls[1:]] == [
            "lms",
            "cms",
            "ecommerce",
            "insights",
        ]  # restarted after restore
        assert "restart after restoring the backups failed" in first.message  # it still fails: say so
    else:
        assert "`/bin/false` failed (exit 1)" in first.message
        assert [c.args[1] for c in calls] == ["lms", "cms", "ecommerce", "insights"] * 2
    # maxErrors 0: the rollout stops before the second host
    assert second.state == "Pending" and "maxErrors=0" in second.message
    assert sb.supervisorctl_calls(h2) == [] and sent_to(sb, h2, since) == []


@pytest.mark.e2e
@pytest.mark.timeout(90)
def test_offline_agent_is_unreachable_and_gets_nothing(sb: Sandbox) -> None:
    h1, h2 = sb.edx_hosts
    assert sb.faults is not None
    sb.faults.agent_offline(h1)
    originals = read_all(sb, h1)
    since = sb.calls.now()
    first, second = push_hosts(
        ssm=adapter(sb), hosts=[h1, h2], openedx=OpenedxSpec(hosts=[h1, h2]), endpoints=[ENDPOINT]
    )
    assert first.state == "Unreachable" and "ConnectionLost" in first.message
    assert sent_to(sb, h1, since) == [] and read_all(sb, h1) == originals
    assert second.state == "Configured"  # nothing was sent to h1, so it does not count against maxErrors
    assert first.to_status() == {
        "instanceId": h1,
        "state": "Unreachable",
        "files": [],
        "lastPushTime": first.to_status()["lastPushTime"],
        "message": first.message,
    }


@pytest.mark.e2e
@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["directory", "dangling-symlink"])
def test_unreadable_file_fails_the_host_and_writes_nothing(sb: Sandbox, how: str) -> None:
    h1 = sb.edx_hosts[0]
    assert sb.faults is not None
    sb.faults.make_unreadable(h1, "/edx/etc/studio.yml", how=how)
    before = read_all(sb, h1)
    (result,) = push_hosts(ssm=adapter(sb), hosts=[h1], openedx=OpenedxSpec(hosts=[h1]), endpoints=[ENDPOINT])
    assert (
        result.state == "Failed"
        and "/edx/etc/studio.yml" in result.message
        and "nothing was written" in result.message
    )
    assert read_all(sb, h1) == before and backups(sb, h1) == [] and sb.supervisorctl_calls(h1) == []


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_missing_files_are_skipped(sb: Sandbox) -> None:
    h1 = sb.edx_hosts[0]
    for path in ("/edx/etc/ecommerce.yml", "/edx/etc/insights.yml"):
        on_host(sb, h1, path).unlink()
    (result,) = push_hosts(ssm=adapter(sb), hosts=[h1], openedx=OpenedxSpec(hosts=[h1]), endpoints=[ENDPOINT])
    assert result.state == "Configured"
    assert [p for p, _ in result.files] == [
        "/edx/etc/lms.yml",
        "/edx/etc/studio.yml",
        "/edx/app/edx_ansible/server-vars.yml",
    ]
    assert not on_host(sb, h1, "/edx/etc/ecommerce.yml").exists()
    assert [c.args[1] for c in sb.supervisorctl_calls(h1)] == ["lms", "cms"]


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_hostile_values_never_execute(sb: Sandbox) -> None:
    h1 = sb.edx_hosts[0]
    hostile_paths = [
        "/edx/etc/$(touch /edx/PWNED1).yml",
        "/edx/etc/x;touch /edx/PWNED2;.yml",
        "/edx/etc/`touch /edx/PWNED3`.yml",
        "/edx/etc/a\ntouch /edx/PWNED4\n.yml",
        "/edx/etc/q'\"$(touch /edx/PWNED5)'.yml",
    ]
    restart = [
        "/edx/bin/supervisorctl",
        "restart",
        "lms;touch /edx/PWNED6",
        "$(touch /edx/PWNED7)",
        "`touch /edx/PWNED8`",
        "x\ntouch /edx/PWNED9",
    ]
    verify = [
        "/edx/bin/supervisorctl",
        "status",
        "$(touch /edx/PWNED10)",
        ";touch /edx/PWNED11",
        "'`touch /edx/PWNED12`'",
    ]
    content = (
        "# $(touch /edx/PWNED13) `touch /edx/PWNED14`; touch /edx/PWNED15\n"
        "CACHES:\n  default:\n    BACKEND: django.core.cache.backends.memcached.MemcachedCache\n"
        '    KEY_PREFIX: "$(touch /edx/PWNED16)\'"\n'
        "    LOCATION:\n    - localhost:11211  # `touch /edx/PWNED17`\n"
    )
    for path in hostile_paths:  # "/" inside a hostile name makes directories: create them too
        on_host(sb, h1, path).parent.mkdir(parents=True, exist_ok=True)
        on_host(sb, h1, path).write_text(content)
    # the spec refuses every one of these; model_construct skips validation to prove the quoting alone holds
    with pytest.raises(ValidationError):
        OpenedxSpec(hosts=[h1], config_files=hostile_paths[:1])
    with pytest.raises(ValidationError):
        OpenedxSpec(hosts=[h1], verify_command=verify)
    openedx = OpenedxSpec.model_construct(
        hosts=[h1],
        config_files=hostile_paths,
        ansible_vars_files=[],
        restart_commands={p: restart for p in hostile_paths},
        verify_command=verify,
    )
    (result,) = push_hosts(ssm=adapter(sb), hosts=[h1], openedx=openedx, endpoints=[ENDPOINT])
    assert result.state == "Configured", result.message
    for path in hostile_paths:
        assert on_host(sb, h1, path).read_text() == content.replace("localhost:11211", ENDPOINT)
    calls = sb.supervisorctl_calls(h1)
    assert calls[0].args[:4] == (
        "restart",
        "lms;touch /edx/PWNED6",
        "$(touch /edx/PWNED7)",
        "`touch /edx/PWNED8`",
    )
    assert calls[1].args == (
        "status",
        "$(touch /edx/PWNED10)",
        ";touch /edx/PWNED11",
        "'`touch /edx/PWNED12`'",
    )
    # hostile endpoints and replace values are refused before anything is sent
    since = sb.calls.now()
    bad = [
        push_hosts(
            ssm=adapter(sb), hosts=[h1], openedx=openedx, endpoints=["10.0.0.5:11211;touch /edx/PWNED18"]
        ),
        push_hosts(ssm=adapter(sb), hosts=[h1], openedx=openedx, endpoints=["$(touch /edx/PWNED19):11211"]),
        push_hosts(
            ssm=adapter(sb),
            hosts=[h1],
            openedx=openedx,
            endpoints=[ENDPOINT],
            replace=["`touch /edx/PWNED20`"],
        ),
    ]
    assert [r[0].state for r in bad] == ["Failed"] * 3
    assert "edx-remote-cache apply" not in sent_to(sb, h1, since)
    host = sb.registry.get(h1) if sb.registry else None
    assert host is not None
    # positive control: a script that does run `touch /edx/...` leaves exactly such a marker where we look
    assert adapter(sb).run_script(h1, "touch /edx/PWNED0", timeout=10).ok
    assert (sb.roots[h1] / "PWNED0").exists()
    names = {f"PWNED{n}" for n in range(1, 21)}
    markers = [
        p for p in (*host.dir.rglob("*"), *Path("/edx").glob("*"), *Path.cwd().glob("*")) if p.name in names
    ]
    assert markers == []


def big_config() -> bytes:
    """A 1 MiB lms.yml: the real file plus many long string settings (compressible like real YAML, not trivially)."""
    base = (FIXTURES / "lms.yml").read_bytes()
    lines = [base, b"EXTRA_SETTINGS:\n"]
    size, i = len(base) + 16, 0
    while size < 1024 * 1024 - 300:
        digest = hashlib.sha256(b"%d" % i).hexdigest()[: 8 + i % 24].encode()
        line = b"  SETTING_%05d: 'https://courses.example.org/asset-v1:Org%d+C%d+2026_T%d/%s?v=%d'\n" % (
            i,
            i % 97,
            i % 13,
            i % 4,
            digest,
            i * 7919 % 100003,
        )
        lines.append(line)
        size += len(line)
        i += 1
    data = b"".join(lines)
    return data + b"#" * (1024 * 1024 - len(data) - 1) + b"\n"


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_a_1_mib_file_is_planned_from_a_few_hundred_bytes_of_output(sb: Sandbox) -> None:
    h1 = sb.edx_hosts[0]
    big = big_config()
    assert len(big) == 1024 * 1024
    on_host(sb, h1, "/edx/etc/lms.yml").write_bytes(big)
    openedx = OpenedxSpec(hosts=[h1], config_files=["/edx/etc/lms.yml"], ansible_vars_files=[])
    since = sb.calls.now()
    (result,) = push_hosts(ssm=adapter(sb), hosts=[h1], openedx=openedx, endpoints=[ENDPOINT])
    assert result.state == "Configured", result.message
    expected = big.replace(b"- localhost:11211", b"- " + ENDPOINT.encode())  # its 7 LOCATION entries
    assert expected.count(ENDPOINT.encode()) == 7
    written = on_host(sb, h1, "/edx/etc/lms.yml").read_bytes()
    assert written == expected and dict(result.files)["/edx/etc/lms.yml"] == _sha(expected)
    (backup,) = on_host(sb, h1, "/edx/etc/lms.yml").parent.glob("lms.yml" + BACKUP_SUFFIX + "*")
    assert backup.read_bytes() == big
    assert sent_to(sb, h1, since) == ["edx-remote-cache read", "edx-remote-cache apply"]
    for call in sb.calls.calls("SendCommand", since=since):
        assert len(call.params["Parameters"]["commands"][0]) <= MAX_SCRIPT_CHARS
    assert sb.ssm is not None
    reads = [i for i in sb.ssm.invocations(h1) if i["Comment"] == "edx-remote-cache read"]
    assert len(reads[0]["StandardOutputContent"]) < 3000  # 7 nodes, not 1 MiB of gzip+base64


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_a_file_edited_between_read_and_apply_is_a_conflict(sb: Sandbox) -> None:
    h1 = sb.edx_hosts[0]
    lms = on_host(sb, h1, "/edx/etc/lms.yml")

    def ansible_runs(host: str, plan: HostPlan) -> None:
        lms.write_bytes(lms.read_bytes() + b"# appended by ansible\n")

    (result,) = push_hosts(
        ssm=adapter(sb),
        hosts=[h1],
        openedx=OpenedxSpec(hosts=[h1]),
        endpoints=[ENDPOINT],
        before_write=ansible_runs,
    )
    assert result.state == "Conflict" and "/edx/etc/lms.yml" in result.message
    assert backups(sb, h1) == [] and ENDPOINT.encode() not in lms.read_bytes()


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_revert_restores_localhost_bytes_and_reenables_local_memcached(sb: Sandbox) -> None:
    h1 = sb.edx_hosts[0]
    assert sb.systemctl is not None
    originals = read_all(sb, h1)
    openedx = OpenedxSpec(hosts=[h1], disable_local_memcached=True)
    ssm = adapter(sb)
    (pushed,) = push_hosts(ssm=ssm, hosts=[h1], openedx=openedx, endpoints=[ENDPOINT])
    assert pushed.state == "Configured" and "disabled the local memcached" in pushed.message
    assert sb.systemctl.unit_state(h1, "memcached") == (False, False)
    calls_before = len(sb.supervisorctl_calls(h1))
    # someone turns it back on: the next (otherwise idempotent) push turns it off again, restarting nothing
    sb.systemctl({"host": h1, "args": ["enable", "--now", "memcached"]})
    (again,) = push_hosts(ssm=ssm, hosts=[h1], openedx=openedx, endpoints=[ENDPOINT])
    assert again.state == "Configured" and again.message.startswith(
        "stopped and disabled the local memcached"
    )
    assert sb.systemctl.unit_state(h1, "memcached") == (False, False)
    assert len(sb.supervisorctl_calls(h1)) == calls_before

    reverting = time.time()
    (reverted,) = revert_hosts(ssm=ssm, hosts=[h1], openedx=openedx, current_endpoints=[ENDPOINT])
    assert reverted.state == "Configured" and "re-enabled the local memcached" in reverted.message
    assert sb.systemctl.unit_state(h1, "memcached") == (True, True)
    after = read_all(sb, h1)
    for path, original in originals.items():
        if b"127.0.0.1:11211" in original:  # 127.0.0.1 comes back spelled localhost: the only difference
            assert after[path] == original.replace(b"127.0.0.1:11211", b"localhost:11211"), path
        else:
            assert after[path] == original, path
    enable = [
        c["args"]
        for c in sb.systemctl_calls(h1)
        if c["time"] >= reverting and c["args"][0] in ("enable", "start")
    ]
    assert enable == [["enable", "memcached"], ["start", "memcached"]]
    assert len(sb.supervisorctl_calls(h1)) == calls_before + 4
    (again,) = revert_hosts(ssm=ssm, hosts=[h1], openedx=openedx, current_endpoints=[ENDPOINT])
    assert again.message.startswith("up to date")


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_drift_check_sees_localhost_put_back_and_a_push_repairs_it(sb: Sandbox) -> None:
    h1, h2 = sb.edx_hosts
    ssm = adapter(sb)
    openedx = OpenedxSpec(hosts=[h1, h2])
    results = push_hosts(ssm=ssm, hosts=[h1, h2], openedx=openedx, endpoints=[ENDPOINT])
    expected = expected_files(results)
    clock = [0.0]
    checker = HostDriftChecker(ssm, ttl_seconds=60, clock=lambda: clock[0])

    def check(expected: dict[str, dict[str, str]]) -> dict[str, Any]:
        clock[0] += 60  # a new drift interval: the region is checked again
        return checker.check(expected)

    since = sb.calls.now()
    assert {h: r.drifted for h, r in check(expected).items()} == {h1: False, h2: False}
    assert sent_to(sb, h1, since) == ["edx-remote-cache drift"]

    lms = on_host(sb, h1, "/edx/etc/lms.yml")  # an ansible run puts localhost back
    lms.write_text(lms.read_text().replace(ENDPOINT, "localhost:11211"))
    report = check(expected)
    assert report[h1].drifted and "/edx/etc/lms.yml" in report[h1].reason and not report[h2].drifted

    (repaired,) = push_hosts(ssm=ssm, hosts=[h1], openedx=openedx, endpoints=[ENDPOINT])
    assert repaired.state == "Configured" and [p for p, _ in repaired.diffs] == ["/edx/etc/lms.yml"]
    report = check(expected_files([repaired, results[1]]))
    assert {h: r.drifted for h, r in report.items()} == {h1: False, h2: False}
    assert sb.faults is not None
    sb.faults.agent_offline(h2)
    assert check({h2: expected[h2]})[h2].drifted  # cannot confirm: push again


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_only_the_newest_backups_are_kept(sb: Sandbox) -> None:
    h1 = sb.edx_hosts[0]
    lms = on_host(sb, h1, "/edx/etc/lms.yml")
    old = [lms.with_name(f"lms.yml{BACKUP_SUFFIX}2025010{n}T000000Z") for n in range(1, 8)]
    for path in old:
        path.write_bytes(b"old backup\n")
    (result,) = push_hosts(ssm=adapter(sb), hosts=[h1], openedx=OpenedxSpec(hosts=[h1]), endpoints=[ENDPOINT])
    assert result.state == "Configured"
    kept = sorted(lms.parent.glob(f"lms.yml{BACKUP_SUFFIX}*"))
    assert len(kept) == KEEP_BACKUPS and kept[:-1] == old[-(KEEP_BACKUPS - 1) :]
    assert kept[-1].read_bytes() == (FIXTURES / "lms.yml").read_bytes()  # this push's backup survives


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_hosts_in_parallel_with_max_concurrency(sb: Sandbox) -> None:
    h1, h2 = sb.edx_hosts
    openedx = OpenedxSpec(hosts=[h1, h2], rollout={"maxConcurrency": 2, "maxErrors": 1})
    assert sb.faults is not None
    sb.faults.fail_restarts(h1)
    first, second = push_hosts(ssm=adapter(sb), hosts=[h1, h2], openedx=openedx, endpoints=[ENDPOINT])
    assert (first.state, second.state) == ("RolledBack", "Configured")


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_revert_with_the_pushes_results_gives_back_the_exact_original_bytes(sb: Sandbox) -> None:
    h1 = sb.edx_hosts[0]
    ssm = adapter(sb)
    openedx = OpenedxSpec(hosts=[h1])
    shipped = {p: (FIXTURES / Path(p).name).read_bytes() for p in PATHS}
    assert read_all(sb, h1) == shipped
    (pushed,) = push_hosts(ssm=ssm, hosts=[h1], openedx=openedx, endpoints=[ENDPOINT])
    assert pushed.state == "Configured", pushed.message
    recorded = (
        ("/edx/app/edx_ansible/server-vars.yml", "INSIGHTS_MEMCACHE", "127.0.0.1:11211"),
        ("/edx/etc/insights.yml", "CACHES.default", "127.0.0.1:11211"),
    )
    assert pushed.local_endpoints == recorded
    assert b"127.0.0.1:11211" not in on_host(sb, h1, "/edx/etc/insights.yml").read_bytes()

    # the spellings live in the status: they survive an idempotent push and a push to an offline host
    status = pushed.to_status()
    (again,) = push_hosts(
        ssm=ssm,
        hosts=[h1],
        openedx=openedx,
        endpoints=[ENDPOINT],
        previous={h1: HostPushResult.from_status(status)},
    )
    assert again.message.startswith("up to date") and again.to_status() == {
        **status,
        "message": again.message,
    }
    assert sb.faults is not None
    sb.faults.agent_offline(h1)
    (offline,) = push_hosts(
        ssm=ssm,
        hosts=[h1],
        openedx=openedx,
        endpoints=[ENDPOINT],
        previous={h1: HostPushResult.from_status(status)},
    )
    assert (
        offline.state == "Unreachable" and offline.to_status()["localEndpoints"] == status["localEndpoints"]
    )
    sb.faults.agent_online(h1)

    # delete: what the reconcile layer passes, rebuilt from status.hosts[]
    previous = {h["instanceId"]: HostPushResult.from_status(h) for h in [offline.to_status()]}
    (reverted,) = revert_hosts(
        ssm=ssm, hosts=[h1], openedx=openedx, current_endpoints=[ENDPOINT], previous=previous
    )
    assert reverted.state == "Configured", reverted.message
    assert read_all(sb, h1) == shipped  # insights.yml and server-vars.yml included, byte for byte
    assert dict(reverted.files) == {p: _sha(c) for p, c in shipped.items()}
    (twice,) = revert_hosts(
        ssm=ssm, hosts=[h1], openedx=openedx, current_endpoints=[ENDPOINT], previous=previous
    )
    assert (
        twice.state == "Configured" and twice.message.startswith("up to date") and read_all(sb, h1) == shipped
    )
