"""The batched host-file drift check: its scripts run by real bash, and the region checker on the sandbox's SSM."""

from __future__ import annotations

import hashlib
import itertools
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from edx_remote_cache.adapters.host_drift import HostDriftChecker
from edx_remote_cache.adapters.host_push import expected_files, push_hosts
from edx_remote_cache.adapters.ssm import SsmAdapter
from edx_remote_cache.domain.hosts import MAX_SCRIPT_CHARS, ProtocolError
from edx_remote_cache.domain.hosts.drift import (
    HOSTS_PER_COMMAND,
    DriftBatch,
    pack_batches,
    parse_drift_answer,
    render_drift_script,
)
from edx_remote_cache.domain.spec import OpenedxSpec
from edx_remote_cache.sandbox import Sandbox

ENDPOINT = "10.0.1.50:11211"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------------------- packing (pure)


def test_hosts_are_packed_fifty_to_a_command_and_every_expectation_is_kept() -> None:
    expected = {f"i-{n:017x}": {"/edx/etc/lms.yml": sha(b"%d" % n)} for n in range(120)}
    batches = pack_batches(expected)
    assert [len(b.hosts) for b in batches] == [HOSTS_PER_COMMAND, HOSTS_PER_COMMAND, 20]
    assert sorted(h for b in batches for h in b.hosts) == sorted(expected)
    for batch in batches:
        assert len(render_drift_script(batch)) <= MAX_SCRIPT_CHARS


def test_two_hosts_with_250_files_each_fit_one_command() -> None:
    """The scale benchmark's shape: 500 resources, each with its own file, on two Open edX hosts."""
    expected = {
        f"i-{h:017x}": {f"/edx/etc/bench/r{i:04d}.yml": sha(b"%d" % i) for i in range(h, 500, 2)}
        for h in range(2)
    }
    (batch,) = pack_batches(expected)
    assert len(render_drift_script(batch)) <= MAX_SCRIPT_CHARS


def _bench_shape(hosts: int, per_host: int) -> tuple[dict[str, dict[str, str]], dict[str, list[str]]]:
    """`per_host` resources on each of `hosts` Open edX hosts, each with its own file and its own cache
    endpoint (the widest private addresses a /8 VPC can hand out)."""
    expected: dict[str, dict[str, str]] = {}
    reach: dict[str, list[str]] = {}
    for i in range(hosts * per_host):
        host = f"i-{i % hosts:017x}"
        expected.setdefault(host, {})[f"/edx/etc/bench/r{i:04d}.yml"] = sha(b"%d" % i)
        reach.setdefault(host, []).append(
            f"10.{200 + i // 65_000}.{(i // 250) % 256 + 100}.{i % 250 + 4}:11211"
        )
    return expected, reach


def test_the_n500_bench_check_with_every_endpoint_fits_one_command() -> None:
    """500 resources on two Open edX hosts, each host checking its 250 caches: one SendCommand, not two (the
    per-region AWS calls of the host-vantage check must not grow with it)."""
    expected, reach = _bench_shape(2, 250)
    (batch,) = pack_batches(expected, reach=reach)
    assert len(render_drift_script(batch)) <= MAX_SCRIPT_CHARS
    assert {h: list(batch.reach_of(h)) for h in batch.hosts} == reach


@pytest.mark.parametrize("max_chars", [6_000, 20_000, MAX_SCRIPT_CHARS])
@pytest.mark.parametrize(("hosts", "per_host", "shared"), [(2, 250, False), (60, 9, True), (7, 40, False)])
def test_packing_never_passes_the_size_cap_and_leaves_no_command_half_empty(
    max_chars: int, hosts: int, per_host: int, shared: bool
) -> None:
    """Every command fits; and a command ends only when the next host would not have fitted in it (within
    the prelude's headroom), so the check is as few SendCommands as the cap allows."""
    expected, reach = _bench_shape(hosts, per_host)
    if shared:  # one site: every host checks the same few caches
        reach = {h: [f"10.0.0.{n}:11211" for n in range(4, 4 + per_host)] for h in expected}
    batches = pack_batches(expected, reach=reach, max_chars=max_chars)
    got: dict[str, dict[str, str]] = {}
    checks: dict[str, list[str]] = {}
    for batch in batches:
        assert len(render_drift_script(batch)) <= max_chars
        for host, files in batch.expected:
            got.setdefault(host, {}).update(files)
            checks.setdefault(host, []).extend(batch.reach_of(host))
    assert got == expected  # every expectation and every endpoint, each once
    assert checks == reach

    def whole(batch: DriftBatch, host: str) -> bool:
        return dict(batch.expected)[host] == tuple(sorted(expected[host].items()))

    for batch, following in itertools.pairwise(batches):
        host = following.hosts[0]
        if (
            len(batch.hosts) >= HOSTS_PER_COMMAND
            or not whole(following, host)
            or not whole(batch, batch.hosts[-1])
        ):
            continue  # the host limit, or a host too big for one command (split over commands of its own)
        merged = DriftBatch(
            (*batch.expected, (host, tuple(sorted(expected[host].items())))),
            (*batch.reach, (host, tuple(reach[host]))),
        )
        assert len(render_drift_script(merged)) > max_chars - 2_000, (len(batch.hosts), max_chars)


def test_a_host_too_big_for_one_command_is_split_and_nothing_is_dropped() -> None:
    files = {f"/edx/etc/many/file-{i:05d}-with-a-long-name.yml": sha(b"%d" % i) for i in range(3000)}
    batches = pack_batches(
        {"i-0aaaaaaaaaaaaaaaa": files, "i-0bbbbbbbbbbbbbbbb": {"/edx/etc/lms.yml": sha(b"x")}}
    )
    assert len(batches) > 2
    seen: dict[str, str] = {}
    for batch in batches:
        assert len(render_drift_script(batch)) <= MAX_SCRIPT_CHARS
        for host, part in batch.expected:
            if host == "i-0aaaaaaaaaaaaaaaa":
                assert batch.hosts == (host,)
                seen.update(part)
    assert seen == files


def test_a_relative_path_is_refused() -> None:
    with pytest.raises(ValueError, match="absolute"):
        pack_batches({"i-0aaaaaaaaaaaaaaaa": {"etc/lms.yml": sha(b"")}})


# ------------------------------------------------------------------------------ the script, run by real bash


def run(script: str, instance_id: str | None) -> str:
    env = {"PATH": os.environ["PATH"]}
    if instance_id is not None:
        env["AWS_SSM_INSTANCE_ID"] = instance_id
    done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=20)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    out = {}
    for name in ("lms.yml", "studio.yml", "cms $(touch PWNED).yml"):
        path = tmp_path / name
        path.write_bytes(f"CACHES: {name}\n".encode())
        out[name] = path
    return out


def test_each_host_compares_its_own_table_and_prints_only_what_differs(files: dict[str, Path]) -> None:
    lms, studio, hostile = files["lms.yml"], files["studio.yml"], files["cms $(touch PWNED).yml"]
    batch = pack_batches(
        {
            "i-0aaaaaaaaaaaaaaaa": {str(lms): sha(lms.read_bytes()), str(hostile): sha(hostile.read_bytes())},
            "i-0bbbbbbbbbbbbbbbb": {str(studio): sha(studio.read_bytes())},
        }
    )[0]
    script = render_drift_script(batch)
    quiet = run(script, "i-0aaaaaaaaaaaaaaaa")
    assert parse_drift_answer(quiet, batch, "i-0aaaaaaaaaaaaaaaa").changed == ()
    assert [line for line in quiet.splitlines() if line.startswith("ERC-HASH")] == []  # nothing to say

    lms.write_bytes(b"CACHES: localhost:11211\n")  # ansible put localhost back
    hostile.unlink()
    answer = parse_drift_answer(run(script, "i-0aaaaaaaaaaaaaaaa"), batch, "i-0aaaaaaaaaaaaaaaa")
    assert dict(answer.changed) == {str(lms): sha(lms.read_bytes()), str(hostile): None}
    assert answer.checked == 2
    # the other host's table was untouched by this host's changes
    assert parse_drift_answer(run(script, "i-0bbbbbbbbbbbbbbbb"), batch, "i-0bbbbbbbbbbbbbbbb").changed == ()
    assert not list(lms.parent.glob("PWNED*")) and not Path("PWNED").exists(), "a file name was executed"


def test_an_unreadable_file_is_an_error_not_a_match(files: dict[str, Path]) -> None:
    lms = files["lms.yml"]
    batch = pack_batches({"i-0aaaaaaaaaaaaaaaa": {str(lms): sha(lms.read_bytes())}})[0]
    lms.unlink()
    lms.mkdir()  # a directory where the file was (root ignores chmod 000, a directory it cannot hash)
    answer = parse_drift_answer(run(render_drift_script(batch), None), batch, "i-0aaaaaaaaaaaaaaaa")
    assert answer.errors and answer.errors[0][0] == str(lms) and "not a regular file" in answer.errors[0][1]


def test_a_host_that_cannot_tell_who_it_is_says_so(files: dict[str, Path]) -> None:
    lms, studio = files["lms.yml"], files["studio.yml"]
    batch = pack_batches(
        {"i-0aaaaaaaaaaaaaaaa": {str(lms): sha(b"")}, "i-0bbbbbbbbbbbbbbbb": {str(studio): sha(b"")}}
    )[0]
    assert parse_drift_answer(run(render_drift_script(batch), None), batch, "i-0aaaaaaaaaaaaaaaa").not_listed


def test_truncated_or_foreign_answers_are_refused(files: dict[str, Path]) -> None:
    lms = files["lms.yml"]
    batch = DriftBatch((("i-0aaaaaaaaaaaaaaaa", ((str(lms), sha(b"other")),)),))
    out = run(render_drift_script(batch), "i-0aaaaaaaaaaaaaaaa")
    assert parse_drift_answer(out, batch, "i-0aaaaaaaaaaaaaaaa").changed
    with pytest.raises(ProtocolError, match="incomplete"):
        parse_drift_answer(out[: out.index("ERC-CHECKED")], batch, "i-0aaaaaaaaaaaaaaaa")
    with pytest.raises(ProtocolError, match="compared 1 file"):
        parse_drift_answer(out, batch, "i-0bbbbbbbbbbbbbbbb")  # another host's answer


# ------------------------------------------------------------------------------ the region checker (sandbox)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def calls(sb: Sandbox, since: float) -> list[str]:
    return [c.operation for c in sb.calls.calls(service="ssm", since=since)]


def pushed_and_checker(
    sb: Sandbox, **options: float
) -> tuple[str, str, dict[str, dict[str, str]], Clock, HostDriftChecker]:
    """Both Open edX hosts pushed for real; a checker with a hand-driven clock (one interval = +60 s)."""
    h1, h2 = sb.edx_hosts
    ssm = SsmAdapter(sb.client("ssm"))
    pushed = push_hosts(ssm=ssm, hosts=[h1, h2], openedx=OpenedxSpec(hosts=[h1, h2]), endpoints=[ENDPOINT])
    clock = Clock()
    return (
        h1,
        h2,
        expected_files(pushed),
        clock,
        HostDriftChecker(ssm, ttl_seconds=60, clock=clock, **options),
    )


@pytest.mark.e2e
@pytest.mark.timeout(90)
def test_one_batched_check_per_interval_answers_every_resource(sb: Sandbox) -> None:
    h1, h2, expected, clock, checker = pushed_and_checker(sb)
    # two resources: one pushed lms.yml+… to h1, the other to h2
    first, second = {h1: expected[h1]}, {h2: expected[h2]}
    checker.expect(second)

    since = sb.calls.now()
    report = checker.check(first)
    assert not report[h1].drifted, report[h1]
    ops = calls(sb, since)
    assert ops.count("SendCommand") == 1 and ops.count("DescribeInstanceInformation") == 1, ops
    assert "GetCommandInvocation" not in ops, "answers come from ListCommandInvocations"
    (command,) = sb.calls.calls("SendCommand", since=since)
    assert sorted(command.params["InstanceIds"]) == sorted([h1, h2])

    since = sb.calls.now()
    assert not checker.check(second)[h2].drifted  # the second resource: answered from the same check
    assert calls(sb, since) == []

    lms = sb.roots[h1] / "etc" / "lms.yml"  # an ansible run puts localhost back on h1
    lms.write_text(lms.read_text().replace(ENDPOINT, "localhost:11211"))
    assert not checker.check(first)[h1].drifted, "inside the interval nothing is asked again"
    clock.now += 60
    since = sb.calls.now()
    report = checker.check(first)
    ops = calls(sb, since)
    # both agents answered last time: no ping, one command, its answers (one page, unless SSM was slow)
    assert ops[0] == "SendCommand" and set(ops[1:]) == {"ListCommandInvocations"}, ops
    assert report[h1].drifted and "/edx/etc/lms.yml" in report[h1].reason
    assert dict(report[h1].current) == {"/edx/etc/lms.yml": sha(lms.read_bytes())}
    assert not checker.check(second)[h2].drifted


@pytest.mark.e2e
@pytest.mark.timeout(90)
def test_offline_agents_new_pushes_and_forgotten_resources(sb: Sandbox) -> None:
    h1, h2, expected, clock, checker = pushed_and_checker(sb)
    assert sb.faults is not None
    sb.faults.agent_offline(h2)
    report = checker.check(expected)
    assert not report[h1].drifted
    assert report[h2].drifted and "PingStatus" in report[h2].reason and report[h2].current == ()

    # a host pushed again since the last check is not judged against the old expectation
    moved = {h1: {p: sha(b"new content") for p in expected[h1]}}
    report = checker.check(moved)
    assert not report[h1].drifted and "not checked yet" in report[h1].reason

    # a resource that stops renewing its expectations (deleted) is dropped after three intervals
    sb.faults.agent_online(h2)
    for _ in range(4):
        clock.now += 60
        checker.check({h1: expected[h1]})
    since = sb.calls.now()
    clock.now += 60
    checker.check({h1: expected[h1]})
    (command,) = sb.calls.calls("SendCommand", since=since)
    assert command.params["InstanceIds"] == [h1]


@pytest.mark.e2e
@pytest.mark.timeout(90)
def test_an_agent_that_goes_offline_after_answering_is_reported_without_the_whole_wait(sb: Sandbox) -> None:
    h1, h2, expected, clock, checker = pushed_and_checker(sb, wait_seconds=40)
    assert not any(r.drifted for r in checker.check(expected).values())
    assert sb.faults is not None
    sb.faults.agent_offline(h2)  # SSM still takes commands for it; they would wait for the delivery timeout
    clock.now += 60
    started = time.monotonic()
    report = checker.check(expected)
    took = time.monotonic() - started
    assert not report[h1].drifted
    # reported as offline by the ping, or as undeliverable by SSM (the sandbox's delivery timeout is short)
    assert report[h2].drifted and report[h2].current == ()
    assert "ConnectionLost" in report[h2].reason or "DeliveryTimedOut" in report[h2].reason, report[h2]
    assert took < 15, f"an offline agent held the check for {took:.1f}s"
    # next interval: it did not answer, so it is pinged before anything is sent to it
    since = sb.calls.now()
    clock.now += 60
    assert checker.check(expected)[h2].drifted
    (command,) = sb.calls.calls("SendCommand", since=since)
    assert command.params["InstanceIds"] == [h1]


@pytest.mark.e2e
@pytest.mark.timeout(90)
def test_a_slow_region_learns_when_to_look_and_reads_its_answers_in_one_call() -> None:
    with Sandbox(with_kube=False, ssm_invocation_delay=1.6) as slow:
        _, _, expected, clock, checker = pushed_and_checker(slow)
        looks = []
        for _ in range(3):
            since = slow.calls.now()
            assert not any(r.drifted for r in checker.check(expected).values())
            looks.append(calls(slow, since).count("ListCommandInvocations"))
            clock.now += 60
        assert looks[0] > 1, (
            "the first check had to poll (answers appear after 1.6 s, the first look is at 1 s)"
        )
        assert looks[1:] == [1, 1], looks

        # expect() and reports() run on the operator's event loop: they must not wait for a running check
        clock.now += 60
        running = threading.Thread(target=checker.refresh)
        running.start()
        time.sleep(0.3)
        assert running.is_alive(), "the check should still be waiting for the slow agents"
        started = time.monotonic()
        checker.expect(expected)
        checker.reports(expected)
        assert time.monotonic() - started < 0.05, "expect/reports waited for the running check"
        running.join(timeout=30)


# ------------------------------------------------------------------ the app host's vantage, run by real bash


class _Memcached(threading.Thread):
    """A loopback stand-in that answers `version` and `stats` like memcached (or accepts and stays silent)."""

    def __init__(self, *, silent: bool = False, drop_first: int = 0) -> None:
        super().__init__(daemon=True)
        import socket

        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.silent = silent
        self.drop_first = drop_first  # connections closed unanswered first (a blip: memcached restarting)
        self.held: list[object] = []

    def run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            if self.silent:
                self.held.append(conn)  # accepted, never answered: a wedged memcached
                continue
            if self.drop_first:
                self.drop_first -= 1
                conn.close()
                continue
            with conn:
                data = b""
                while b"quit" not in data:
                    chunk = conn.recv(1024)
                    if not chunk:
                        break
                    data += chunk
                conn.sendall(b"VERSION 1.6.21\r\nSTAT pid 1\r\nSTAT curr_connections 2\r\nEND\r\n")


def test_each_host_checks_the_cache_endpoints_from_its_own_side(files: dict[str, Path]) -> None:
    import socket

    good, hung = _Memcached(), _Memcached(silent=True)
    good.start()
    hung.start()
    with socket.create_server(("127.0.0.1", 0)) as closed_sock:
        closed = closed_sock.getsockname()[1]
    up, refused, wedged = f"127.0.0.1:{good.port}", f"127.0.0.1:{closed}", f"127.0.0.1:{hung.port}"
    lms, studio = files["lms.yml"], files["studio.yml"]
    batch = pack_batches(
        {
            "i-0aaaaaaaaaaaaaaaa": {str(lms): sha(lms.read_bytes())},
            "i-0bbbbbbbbbbbbbbbb": {str(studio): sha(studio.read_bytes())},
        },
        reach={"i-0aaaaaaaaaaaaaaaa": [up, refused, wedged], "i-0bbbbbbbbbbbbbbbb": [up]},
    )[0]
    script = render_drift_script(batch)
    started = time.monotonic()
    answer = parse_drift_answer(run(script, "i-0aaaaaaaaaaaaaaaa"), batch, "i-0aaaaaaaaaaaaaaaa")
    assert time.monotonic() - started < 6, "every endpoint is bounded by its small timeout"
    seen = {r.endpoint: r for r in answer.reach}
    assert seen[up].reachable and seen[up].error == "" and 0 <= seen[up].latency_ms < 2000
    assert not seen[refused].reachable and "refused" in seen[refused].error.lower()
    assert not seen[wedged].reachable and seen[wedged].error == "no answer within 2s"
    assert seen[wedged].latency_ms >= 1900
    assert answer.changed == (), "the file check is unchanged"
    other = parse_drift_answer(run(script, "i-0bbbbbbbbbbbbbbbb"), batch, "i-0bbbbbbbbbbbbbbbb")
    assert [(r.endpoint, r.reachable) for r in other.reach] == [(up, True)], "each host checks its own list"
    good.sock.close()
    hung.sock.close()


def test_a_blip_on_the_hosts_side_is_tried_again_before_it_counts(files: dict[str, Path]) -> None:
    flaky = _Memcached(drop_first=1)
    flaky.start()
    endpoint = f"127.0.0.1:{flaky.port}"
    lms = files["lms.yml"]
    host = "i-0aaaaaaaaaaaaaaaa"
    [batch] = pack_batches({host: {str(lms): sha(lms.read_bytes())}}, reach={host: [endpoint]})
    answer = parse_drift_answer(run(render_drift_script(batch), host), batch, host)
    assert [(r.endpoint, r.reachable) for r in answer.reach] == [(endpoint, True)], answer.reach
    flaky.sock.close()


def test_an_endpoint_that_is_not_host_port_is_refused() -> None:
    with pytest.raises(ValueError, match="host:port"):
        pack_batches(
            {"i-0aaaaaaaaaaaaaaaa": {"/edx/etc/lms.yml": sha(b"")}}, reach={"i-0aaaaaaaaaaaaaaaa": ["$(x):1"]}
        )


def test_endpoints_that_answer_cost_a_few_characters_each_so_the_short_output_holds_them(
    files: dict[str, Path],
) -> None:
    """ListCommandInvocations returns 2,500 characters of each answer; past that the operator pays a
    GetCommandInvocation per host. A line per endpoint passed it at 250 endpoints per host (the N=500 bench):
    endpoints that answered share one line, about 6 characters each."""
    servers = [_Memcached() for _ in range(40)]
    for server in servers:
        server.start()
    endpoints = [f"127.0.0.1:{s.port}" for s in servers]
    lms = files["lms.yml"]
    host = "i-0aaaaaaaaaaaaaaaa"
    [batch] = pack_batches({host: {str(lms): sha(lms.read_bytes())}}, reach={host: endpoints})
    out = run(render_drift_script(batch), host)
    answer = parse_drift_answer(out, batch, host)
    assert sorted(r.endpoint for r in answer.reach if r.reachable) == sorted(endpoints)
    reach_chars = sum(len(line) + 1 for line in out.splitlines() if line.startswith("ERC-REACH"))
    assert reach_chars <= 12 + 8 * len(endpoints), reach_chars  # 250 endpoints: ~2,000, within 2,500
    for server in servers:
        server.sock.close()
