"""Pure tests of the host-push planner: script rendering, output parsing, splices and plans (no I/O)."""

from __future__ import annotations

import base64
import hashlib
import json
import shlex
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import edx_remote_cache
from edx_remote_cache.domain import hosts as pp
from edx_remote_cache.domain.hosts import hostside
from edx_remote_cache.domain.hosts import protocol as hosts_protocol
from edx_remote_cache.domain.hosts.drift import parse_hash_output, render_hash_script
from edx_remote_cache.domain.rewrite.locate import LocateError
from edx_remote_cache.domain.spec import DEFAULT_ANSIBLE_VARS_FILES, DEFAULT_CONFIG_FILES, OpenedxSpec

FIXTURES = Path(edx_remote_cache.__file__).parent / "data" / "edx"
PATHS = pp.host_paths(DEFAULT_CONFIG_FILES, DEFAULT_ANSIBLE_VARS_FILES)
HOSTILE = [
    "/edx/etc/x;touch /edx/PWNED;.yml",
    "/edx/etc/$(touch /edx/PWNED).yml",
    "/edx/etc/`touch /edx/PWNED`.yml",
    "/edx/etc/a\ntouch /edx/PWNED\n.yml",
    '/edx/etc/it\'s "quoted" $HOME.yml',
]


def fixture_files() -> dict[str, bytes]:
    return {path: (FIXTURES / Path(path).name).read_bytes() for path in PATHS}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _b64json(value: object) -> str:
    return base64.b64encode(json.dumps(value, sort_keys=True).encode()).decode()


def fake_read(files: Mapping[str, bytes | None], paths: tuple[str, ...]) -> str:
    """What the read script prints for ``files`` (None = missing), from the host program run in-process."""
    lines = ["ERC-BEGIN 1"]
    for i, path in enumerate(paths):
        content = files.get(path)
        if content is None:
            lines.append(f"ERC-MISSING {i}")
            continue
        try:
            nodes, skipped = hostside.erc_locate(content)
        except LocateError as exc:
            problem = base64.b64encode(hostside.erc_redact(exc.problem).encode()).decode()
            lines.append(f"ERC-PARSE {i} {exc.line or 0} {exc.column or 0} {problem}")
            continue
        lines.append(f"ERC-FILE {i} {sha(content)} 0:0 644 {len(content)}")
        lines += [f"ERC-NODE {i} {_b64json(n)}" for n in nodes]
        lines += [f"ERC-SKIP {i} {_b64json(k)}" for k in skipped]
    return "\n".join([*lines, "ERC-END", ""])


def snapshot_of(files: Mapping[str, bytes | None], paths: tuple[str, ...] = PATHS) -> pp.HostSnapshot:
    return pp.parse_read_output(fake_read(files, paths), paths)


OPENEDX = OpenedxSpec(hosts=["i-0123456789abcdef0"])


def plan(files: Mapping[str, bytes | None], **kwargs: object) -> pp.HostPlan:
    return pp.plan_push(
        snapshot_of(files),
        endpoints=kwargs.pop("endpoints", ["10.0.0.5:11211"]),  # type: ignore[arg-type]
        restart_for=OPENEDX.restart_command_for,
        **kwargs,  # type: ignore[arg-type]
    )


# ------------------------------------------------------------------------------------------------- quoting


@given(st.text(alphabet=st.characters(exclude_characters="\x00"), min_size=1))
def test_every_value_is_one_shell_word(value: str) -> None:
    assert shlex.split(hosts_protocol._q(value)) == [value]


def test_nul_bytes_are_refused() -> None:
    with pytest.raises(ValueError, match="NUL"):
        hosts_protocol._q("a\x00b")


def test_relative_or_unnormalised_paths_are_refused() -> None:
    for bad in ("edx/etc/lms.yml", "/edx/etc/../../etc/passwd.yml", "/edx//etc/lms.yml"):
        with pytest.raises(ValueError, match="absolute"):
            pp.host_paths([bad], [])


@pytest.mark.parametrize("hostile", HOSTILE)
def test_hostile_paths_only_appear_quoted(hostile: str) -> None:
    assert "PWNED" not in pp.render_read_script([hostile])  # the reader's paths travel inside base64 JSON
    for script in [render_hash_script([hostile])]:
        assert hosts_protocol._q(hostile) in script
        assert script.count("PWNED") == hosts_protocol._q(hostile).count("PWNED")


def test_hostile_restart_and_verify_words_only_appear_quoted() -> None:
    content = (FIXTURES / "lms.yml").read_bytes()
    restart = ("/edx/bin/supervisorctl", "restart", "lms;touch /edx/PWNED", "$(touch /edx/PWNED)")
    verify = ("`touch /edx/PWNED`", "a\nb")
    the_plan = pp.plan_push(
        snapshot_of({"/edx/etc/lms.yml": content}, ("/edx/etc/lms.yml",)),
        endpoints=["10.0.0.5:11211"],
        restart_for=lambda _path: restart,
        verify=verify,
    )
    script = pp.render_apply_script(the_plan, timestamp="20261129T101500Z")
    assert " ".join(map(shlex.quote, restart)) in script
    assert " ".join(map(shlex.quote, verify)) in script
    assert script.count("PWNED") == 2 * 2 + 1  # restart and rollback-restart functions, plus verify


def test_file_content_travels_base64_only() -> None:
    hostile = b"CACHES:\n  default:\n    BACKEND: django.core.cache.backends.memcached.MemcachedCache\n"
    hostile += b"    LOCATION: localhost:11211  # $(touch /edx/PWNED) `touch /edx/PWNED`; ' \"\n"
    hostile += b'NOTE: "$(touch /edx/PWNED)"\n'
    the_plan = pp.plan_push(
        snapshot_of({"/edx/etc/lms.yml": hostile}, ("/edx/etc/lms.yml",)),
        endpoints=["10.0.0.5:11211"],
        restart_for=lambda _path: (),
    )
    assert "PWNED" not in pp.render_apply_script(the_plan, timestamp="20261129T101500Z")


# -------------------------------------------------------------------------------------------- read output


def test_read_parser_rejects_truncated_output() -> None:
    output = fake_read(fixture_files(), PATHS)
    with pytest.raises(pp.ProtocolError, match="incomplete"):
        pp.parse_read_output(output[: len(output) // 2], PATHS)


def test_forged_lines_are_rejected() -> None:
    with pytest.raises(pp.ProtocolError):
        pp.parse_read_output("ERC-BEGIN 1\nERC-FILE 7 abc 0:0 644 1\nERC-END\n", ("/a", "/b"))
    with pytest.raises(pp.ProtocolError):
        pp.parse_read_output("hello\n", ("/a", "/b"))
    with pytest.raises(pp.ProtocolError, match="not listed"):
        pp.parse_read_output(f"ERC-BEGIN 1\nERC-NODE 0 {_b64json({})}\nERC-END\n", ("/a",))


def test_hash_output() -> None:
    paths = ("/a.yml", "/b.yml")
    out = parse_hash_output(f"ERC-BEGIN 1\nERC-HASH 0 {'a' * 64}\nERC-MISSING 1\nERC-END\n", paths)
    assert out == {"/a.yml": "a" * 64, "/b.yml": None}
    with pytest.raises(pp.ProtocolError, match="every path"):
        parse_hash_output(f"ERC-BEGIN 1\nERC-HASH 0 {'a' * 64}\nERC-END\n", paths)


# --------------------------------------------------------------------------------------------------- splices

lines = st.lists(st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"") + b"\n"), max_size=40)


def test_a_location_change_carries_only_the_location_lines() -> None:
    files = fixture_files()
    the_plan = plan(files)
    assert [c.path for c in the_plan.changes] == list(PATHS)
    for change in the_plan.changes:
        assert all("10.0.0.5:11211" in s.new and "10.0.0.5" not in s.old for s in change.splices)
        assert sum(len(s.new) for s in change.splices) < 400, change.path
        assert pp.apply_splices(files[change.path], change.splices).count(b"localhost:11211") == 0


# ----------------------------------------------------------------------------------------------------- plans


def test_plan_restarts_only_the_changed_files_services_in_order_without_duplicates() -> None:
    files = fixture_files()
    the_plan = plan(
        {"/edx/etc/studio.yml": files["/edx/etc/studio.yml"], "/edx/etc/lms.yml": files["/edx/etc/lms.yml"]}
    )
    assert the_plan.restarts == (
        ("/edx/bin/supervisorctl", "restart", "lms", "edxapp_worker:lms_default_1"),
        ("/edx/bin/supervisorctl", "restart", "cms", "edxapp_worker:cms_default_1"),
    )
    shared = pp.plan_push(
        snapshot_of(files),
        endpoints=["10.0.0.5:11211"],
        restart_for=lambda _path: ("/edx/bin/supervisorctl", "restart", "all"),
    )
    assert shared.restarts == (("/edx/bin/supervisorctl", "restart", "all"),)


def test_second_plan_is_a_noop_and_files_after_are_the_new_hashes() -> None:
    first = plan(fixture_files())
    files_after = {c.path: pp.apply_splices(fixture_files()[c.path], c.splices) for c in first.changes}
    new_sums = {p: sha(c) for p, c in files_after.items()}
    assert dict(first.files_after(new_sums)) == new_sums
    second = plan(dict(files_after))
    assert second.is_noop and not second.restarts and not second.verify
    assert second.files_after({}) == first.files_after(new_sums)


def test_verify_runs_only_when_something_changed() -> None:
    assert plan(fixture_files(), verify=("/usr/bin/true",)).verify == ("/usr/bin/true",)
    moved = {
        c.path: pp.apply_splices(fixture_files()[c.path], c.splices) for c in plan(fixture_files()).changes
    }
    assert plan(dict(moved), verify=("/usr/bin/true",)).verify == ()


def test_disable_local_memcached_only_when_it_runs_or_is_enabled() -> None:
    snapshot = snapshot_of(fixture_files())
    kwargs = {"endpoints": ["10.0.0.5:11211"], "restart_for": OPENEDX.restart_command_for}
    on = pp.HostSnapshot(snapshot.files, (), pp.ServiceState("active", "enabled"))
    off = pp.HostSnapshot(snapshot.files, (), pp.ServiceState("inactive", "disabled"))
    assert pp.plan_push(on, disable_local_memcached=True, **kwargs).memcached == "disable"  # type: ignore[arg-type]
    assert pp.plan_push(off, disable_local_memcached=True, **kwargs).memcached is None  # type: ignore[arg-type]
    assert pp.plan_push(on, **kwargs).memcached is None  # type: ignore[arg-type]
    back = pp.plan_revert(off, enable_local_memcached=True, restart_for=OPENEDX.restart_command_for)
    assert back.memcached == "enable"


def test_revert_restores_the_original_bytes() -> None:
    files = fixture_files()
    pushed = {c.path: pp.apply_splices(files[c.path], c.splices) for c in plan(files).changes}
    back = pp.plan_revert(
        snapshot_of(dict(pushed)), current=["10.0.0.5:11211"], restart_for=OPENEDX.restart_command_for
    )
    reverted = {c.path: pp.apply_splices(pushed[c.path], c.splices) for c in back.changes}
    # localhost files come back byte for byte; insights.yml said 127.0.0.1 and comes back as localhost
    for path, content in reverted.items():
        if b"127.0.0.1:11211" not in files[path]:
            assert content == files[path], path


def test_unparsable_files_are_named_with_line_and_no_content_and_bad_endpoints_are_refused() -> None:
    secret = b"SECRET_KEY: 'hunter2-canary'\nCACHES: [\n"
    snapshot = snapshot_of(
        {"/edx/etc/lms.yml": secret, "/edx/etc/studio.yml": fixture_files()["/edx/etc/studio.yml"]}
    )
    ((path, message),) = snapshot.errors
    assert path == "/edx/etc/lms.yml" and "line 3" in message and "hunter2" not in message
    assert [f.path for f in snapshot.files] == ["/edx/etc/studio.yml"]
    with pytest.raises(pp.PlanError, match="endpoint"):
        plan({"/edx/etc/lms.yml": fixture_files()["/edx/etc/lms.yml"]}, endpoints=["10.0.0.5:11211;touch /x"])
    with pytest.raises(hostside.ErcRefused, match="UTF-8"):
        hostside.erc_locate(b"\xff\xfe")


# ------------------------------------------------------------------------------------------------ apply script


def test_apply_script_size_cap() -> None:
    huge = [f"10.0.{i // 250}.{i % 250}:11211" for i in range(3000)]
    with pytest.raises(pp.PlanError, match="over the"):
        pp.render_apply_script(plan(fixture_files(), endpoints=huge), timestamp="20261129T101500Z")


def test_apply_script_of_a_normal_push_is_small() -> None:
    script = pp.render_apply_script(plan(fixture_files()), timestamp="20261129T101500Z")
    assert len(script) - len(pp.host_program()) < 8_000  # the program the host runs, plus a few KiB
    assert script.startswith("#!/bin/bash\n")


def test_backup_timestamp() -> None:
    assert pp.backup_timestamp(datetime(2026, 11, 29, 10, 15, 0, tzinfo=UTC)) == "20261129T101500Z"
    with pytest.raises(ValueError):
        pp.render_apply_script(plan(fixture_files()), timestamp="2026-11-29; rm -rf /")


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_apply_output_rolled_back_names_the_failing_command_and_its_output() -> None:
    the_plan = plan(fixture_files())
    output = "\n".join(
        [
            "ERC-BEGIN 1",
            f"ERC-BACKUP 0 {base64.b64encode(b'/edx/etc/lms.yml.erc-bak-20261129T101500Z').decode()}",
            "ERC-WROTE 5",
            "ERC-STEP restart.0 0 ",
            f"ERC-STEP restart.1 1 {b64('cms: ERROR (spawn error)')}",
            "ERC-STEP rollback.0 0 ",
            "ERC-RESULT RolledBack",
            "ERC-END",
        ]
    )
    outcome = pp.parse_apply_output(output, the_plan, exit_code=4)
    assert outcome.state == "RolledBack"
    assert "supervisorctl restart cms" in outcome.message and "spawn error" in outcome.message
    assert outcome.backups == (("/edx/etc/lms.yml", "/edx/etc/lms.yml.erc-bak-20261129T101500Z"),)


def test_apply_output_conflict_and_garbage() -> None:
    the_plan = plan(fixture_files())
    conflict = pp.parse_apply_output(
        f"ERC-BEGIN 1\nERC-CONFLICT 1 {'b' * 64}\nERC-RESULT Conflict\nERC-END\n", the_plan, exit_code=3
    )
    assert conflict.state == "Conflict" and "/edx/etc/studio.yml" in conflict.message
    assert pp.parse_apply_output("ERC-BEGIN 1\n", the_plan, exit_code=1).state == "Failed"
    assert pp.parse_apply_output("ERC-BEGIN 1\nERC-END\n", the_plan, exit_code=0).state == "Failed"
    forged = "ERC-BEGIN 1\nERC-RESULT Configured\nERC-RESULT Bogus\nERC-END\n"
    assert pp.parse_apply_output(forged, the_plan, exit_code=0).state == "Failed"


# -------------------------------------------------------------------------------------------------- results


def test_host_result_status_shape_and_round_trip() -> None:
    result = pp.HostPushResult(
        "i-0123456789abcdef0",
        "Configured",
        (("/edx/etc/lms.yml", "a" * 64),),
        "c0ffee00-0000-0000-0000-000000000000",
        datetime(2026, 11, 29, 10, 15, 0, tzinfo=UTC),
        "updated /edx/etc/lms.yml",
        (("/edx/etc/lms.yml", "--- diff"),),
    )
    status = result.to_status()
    assert status == {
        "instanceId": "i-0123456789abcdef0",
        "state": "Configured",
        "files": [{"path": "/edx/etc/lms.yml", "sha256": "a" * 64}],
        "commandId": "c0ffee00-0000-0000-0000-000000000000",
        "lastPushTime": "2026-11-29T10:15:00Z",
        "message": "updated /edx/etc/lms.yml",
    }
    again = pp.HostPushResult.from_status(status)
    assert again == pp.HostPushResult(**{**result.__dict__, "diffs": ()})
    assert "commandId" not in pp.HostPushResult("i-0123456789abcdef0", "Pending").to_status()


# ---------------------------------------------------------------------------------- local spellings and revert

INSIGHTS_SPELLINGS = (
    ("/edx/app/edx_ansible/server-vars.yml", "INSIGHTS_MEMCACHE", "127.0.0.1:11211"),
    ("/edx/etc/insights.yml", "CACHES.default", "127.0.0.1:11211"),
)


def applied(files: Mapping[str, bytes], the_plan: pp.HostPlan) -> dict[str, bytes]:
    return {**files, **{c.path: pp.apply_splices(files[c.path], c.splices) for c in the_plan.changes}}


def test_push_records_only_the_spellings_a_revert_would_not_write_anyway() -> None:
    pushed = plan(fixture_files())
    assert pushed.local_endpoints == INSIGHTS_SPELLINGS  # localhost:11211 everywhere else: nothing to record


def test_revert_with_the_recorded_spellings_restores_every_file_byte_for_byte() -> None:
    files = fixture_files()
    pushed = plan(files)
    moved = applied(files, pushed)
    back = pp.plan_revert(
        snapshot_of(moved),
        current=["10.0.0.5:11211"],
        restart_for=OPENEDX.restart_command_for,
        local_endpoints=pushed.local_endpoints,
    )
    assert {c.path for c in back.changes} == set(PATHS)
    assert applied(moved, back) == files
    assert dict(back.files_after({p: sha(c) for p, c in applied(moved, back).items()})) == {
        p: sha(c) for p, c in files.items()
    }
    assert back.local_endpoints == pushed.local_endpoints  # carried, not consumed
    again = pp.plan_revert(
        snapshot_of(files),
        current=["10.0.0.5:11211"],
        restart_for=OPENEDX.restart_command_for,
        local_endpoints=pushed.local_endpoints,
    )
    assert again.is_noop


def test_later_pushes_carry_the_spellings_and_a_new_local_spelling_replaces_an_old_one() -> None:
    files = fixture_files()
    first = plan(files)
    moved = applied(files, first)
    # nothing to do: the records survive
    assert plan(moved, local_endpoints=first.local_endpoints).local_endpoints == INSIGHTS_SPELLINGS
    # re-target (a scale-up): the file changes again but no local entry is replaced; the records survive
    scaled = plan(
        moved,
        endpoints=["10.0.0.5:11211", "10.0.0.6:11211"],
        replace=["10.0.0.5:11211"],
        local_endpoints=first.local_endpoints,
    )
    assert scaled.changes and scaled.local_endpoints == INSIGHTS_SPELLINGS
    # someone put insights.yml back on localhost: that is what it was before this push, the old record goes
    insights = "/edx/etc/insights.yml"
    edited = {**moved, insights: moved[insights].replace(b"10.0.0.5:11211", b"localhost:11211")}
    repushed = plan(edited, local_endpoints=first.local_endpoints)
    assert [c.path for c in repushed.changes] == [insights]
    assert repushed.local_endpoints == INSIGHTS_SPELLINGS[:1]
    # … and on [::1] instead: that spelling is recorded instead of the old one
    edited[insights] = moved[insights].replace(b"10.0.0.5:11211", b"'[::1]:11211'")
    repushed = plan(edited, local_endpoints=first.local_endpoints)
    assert repushed.local_endpoints == (INSIGHTS_SPELLINGS[0], (insights, "CACHES.default", "[::1]:11211"))


def test_a_custom_port_records_against_its_own_localhost() -> None:
    doc = b"CACHES:\n  default: {BACKEND: x.memcached.PyMemcacheCache, LOCATION: [localhost:11311]}\n"
    files = {"/edx/etc/lms.yml": doc}
    assert plan(files, port=11311).local_endpoints == ()
    assert plan(
        {"/edx/etc/lms.yml": doc.replace(b"localhost", b"127.0.0.1")}, port=11311
    ).local_endpoints == (("/edx/etc/lms.yml", "CACHES.default", "127.0.0.1:11311"),)


def test_local_spellings_round_trip_through_the_status() -> None:
    files = fixture_files()
    pushed = plan(files)
    result = pp.HostPushResult(
        "i-0123456789abcdef0",
        "Configured",
        pushed.files_after({}),
        "c0ffee00-0000-0000-0000-000000000000",
        datetime(2026, 11, 29, 10, 15, 0, tzinfo=UTC),
        "updated",
        local_endpoints=pushed.local_endpoints,
    )
    status = result.to_status()
    assert status["localEndpoints"] == [
        {
            "path": "/edx/app/edx_ansible/server-vars.yml",
            "alias": "INSIGHTS_MEMCACHE",
            "endpoint": "127.0.0.1:11211",
        },
        {"path": "/edx/etc/insights.yml", "alias": "CACHES.default", "endpoint": "127.0.0.1:11211"},
    ]
    assert status["files"] == [{"path": p, "sha256": s} for p, s in pushed.files_after({})]  # unchanged shape
    again = pp.HostPushResult.from_status(status)
    assert again == result
    assert again.local_spellings == {
        "/edx/app/edx_ansible/server-vars.yml": {"INSIGHTS_MEMCACHE": "127.0.0.1:11211"},
        "/edx/etc/insights.yml": {"CACHES.default": "127.0.0.1:11211"},
    }
    moved = applied(files, pushed)
    back = pp.plan_revert(
        snapshot_of(moved),
        current=["10.0.0.5:11211"],
        restart_for=OPENEDX.restart_command_for,
        local_endpoints=again.local_endpoints,
    )
    assert applied(moved, back) == files
    # nothing recorded: no field (older statuses read as nothing recorded)
    assert "localEndpoints" not in pp.HostPushResult("i-0123456789abcdef0", "Pending").to_status()


def test_status_entries_a_revert_could_not_write_are_dropped() -> None:
    good = {"path": "/edx/etc/insights.yml", "alias": "CACHES.default", "endpoint": "127.0.0.1:11211"}
    item = {
        "instanceId": "i-0123456789abcdef0",
        "state": "Configured",
        "localEndpoints": [
            good,
            {**good, "endpoint": "10.0.0.5:11211"},
            {**good, "endpoint": "127.0.0.1:11211; rm -rf /"},
            {"path": "/edx/etc/lms.yml", "alias": "CACHES.default"},
            {**good, "alias": 7},
            "127.0.0.1:11211",
        ],
    }
    assert pp.HostPushResult.from_status(item).local_endpoints == (
        ("/edx/etc/insights.yml", "CACHES.default", "127.0.0.1:11211"),
    )
    assert pp.HostPushResult.from_status({**item, "localEndpoints": {"x": "y"}}).local_endpoints == ()
