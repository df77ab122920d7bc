"""``edx-remote-cache rewrite`` on real files: in place with a backup, dry runs, checks, all-or-nothing."""

from __future__ import annotations

import argparse
import contextlib
import importlib.resources
import io
import os
import re
import signal
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edx_remote_cache.cli.rewrite import add_parser, default_backup_suffix, main
from edx_remote_cache.domain.rewrite import rewrite

REMOTE = "172.31.5.10:11211"
REMOTE2 = "172.31.5.11:11211"


def fixture(name: str) -> str:
    return (importlib.resources.files("edx_remote_cache") / "data" / "edx" / name).read_text(encoding="utf-8")


@pytest.fixture
def site(tmp_path: Path) -> dict[str, Path]:
    """/edx/etc and server-vars.yml of a Koa host, in a temp dir, mode 0640 like the real ones."""
    files = {}
    for name in ["lms.yml", "studio.yml", "server-vars.yml"]:
        path = tmp_path / name
        path.write_text(fixture(name), encoding="utf-8")
        path.chmod(0o640)
        files[name] = path
    return files


def snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    return {
        p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(directory.iterdir()) if p.is_file()
    }


def test_rewrites_in_place_with_backup_and_same_mode(
    site: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    lms = site["lms.yml"]
    original = lms.read_text(encoding="utf-8")

    assert main(["--to", REMOTE, "--to", REMOTE2, str(lms), str(site["server-vars.yml"])]) == 0

    assert lms.read_text(encoding="utf-8") == rewrite(original, to=[REMOTE, REMOTE2]).text
    assert stat.S_IMODE(lms.stat().st_mode) == 0o640
    backups = sorted(lms.parent.glob("lms.yml.bak-*"))
    assert len(backups) == 1
    assert re.fullmatch(r"lms\.yml\.bak-\d{8}T\d{6}Z", backups[0].name)
    assert backups[0].read_text(encoding="utf-8") == original
    assert stat.S_IMODE(backups[0].stat().st_mode) == 0o640
    assert not list(lms.parent.glob(".*.tmp"))  # no temp files left behind
    out = capsys.readouterr().out
    assert f"CACHES.default: localhost:11211 -> {REMOTE}, {REMOTE2}" in out
    assert f"EDXAPP_MEMCACHE: localhost:11211 -> {REMOTE}, {REMOTE2}" in out


def test_second_run_is_nothing_to_do_and_takes_no_backup(
    site: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    lms = str(site["lms.yml"])
    assert main(["--to", REMOTE, lms, "--backup-suffix", ".orig"]) == 0
    before = snapshot(site["lms.yml"].parent)
    capsys.readouterr()
    assert main(["--to", REMOTE, lms, "--backup-suffix", ".orig2"]) == 0
    assert snapshot(site["lms.yml"].parent) == before
    assert capsys.readouterr().out == f"{lms}: nothing to do\n"


def test_backup_suffix_and_no_backup(site: dict[str, Path]) -> None:
    lms, studio = site["lms.yml"], site["studio.yml"]
    original = lms.read_bytes()
    assert main(["--to", REMOTE, "--backup-suffix", ".pre-remote-cache", str(lms)]) == 0
    assert (lms.parent / "lms.yml.pre-remote-cache").read_bytes() == original
    assert main(["--to", REMOTE, "--backup-suffix", "", str(studio)]) == 0
    assert not list(lms.parent.glob("studio.yml?*"))


def test_existing_backup_is_never_overwritten(site: dict[str, Path]) -> None:
    lms = site["lms.yml"]
    (lms.parent / "lms.yml.bak").write_text("older backup\n")
    assert main(["--to", REMOTE, "--backup-suffix", ".bak", str(lms)]) == 0
    assert (lms.parent / "lms.yml.bak").read_text() == "older backup\n"
    assert (lms.parent / "lms.yml.bak.1").read_text(encoding="utf-8") == fixture("lms.yml")


def test_dry_run_prints_the_diff_and_writes_nothing(
    site: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    before = snapshot(site["lms.yml"].parent)
    assert main(["--dry-run", "--to", REMOTE, *map(str, site.values())]) == 0
    assert snapshot(site["lms.yml"].parent) == before
    out = capsys.readouterr().out
    assert f"--- {site['lms.yml']}\n+++ {site['lms.yml']}\n" in out
    assert out.count("\n-        - localhost:11211\n") == 14  # lms + studio
    assert out.count(f"\n+        - {REMOTE}\n") == 14
    assert f"+ECOMMERCE_MEMCACHE: ['{REMOTE}']\n" in out


def test_check_exit_codes_and_writes_nothing(
    site: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    files = [str(p) for p in site.values()]
    before = snapshot(site["lms.yml"].parent)
    assert main(["--check", "--to", REMOTE, *files]) == 1
    assert snapshot(site["lms.yml"].parent) == before
    assert "would change 7 setting(s)" in capsys.readouterr().out
    assert main(["--to", REMOTE, "--backup-suffix", "", *files]) == 0
    assert main(["--check", "--to", REMOTE, *files]) == 0


def test_revert_restores_the_original_bytes(site: dict[str, Path]) -> None:
    originals = {name: path.read_bytes() for name, path in site.items()}
    files = [str(site["lms.yml"]), str(site["studio.yml"])]
    assert main(["--to", REMOTE, "--to", REMOTE2, *files]) == 0
    assert main(["--check", "--revert", *files]) == 1
    assert main(["--revert", "--from", REMOTE, "--from", REMOTE2, *files]) == 0
    assert site["lms.yml"].read_bytes() == originals["lms.yml"]
    assert site["studio.yml"].read_bytes() == originals["studio.yml"]


def test_revert_with_to_is_a_usage_error(site: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--revert", "--to", REMOTE, str(site["lms.yml"])]) == 2
    assert "--to cannot be combined with --revert" in capsys.readouterr().err


def test_one_malformed_file_among_several_writes_nothing(
    site: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    broken = site["lms.yml"].parent / "insights.yml"
    broken.write_text(
        "CACHES:\n  default:\n    BACKEND: x\n   LOCATION: [localhost:11211\n", encoding="utf-8"
    )
    before = snapshot(broken.parent)
    assert main(["--to", REMOTE, str(site["lms.yml"]), str(broken), str(site["studio.yml"])]) == 2
    assert snapshot(broken.parent) == before
    err = capsys.readouterr().err
    assert f"{broken}: line 4: malformed YAML" in err


def test_non_mapping_caches_is_an_input_error(
    site: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    bad = site["lms.yml"].parent / "ecommerce.yml"
    bad.write_text("CACHES: localhost:11211\n", encoding="utf-8")
    assert main(["--to", REMOTE, str(site["lms.yml"]), str(bad)]) == 2
    assert f"{bad}: line 1: CACHES must be a mapping" in capsys.readouterr().err
    assert site["lms.yml"].read_text(encoding="utf-8") == fixture("lms.yml")


@pytest.mark.parametrize("make_bad", ["missing", "directory", "not-utf8"])
def test_unreadable_file_is_exit_2_and_nothing_written(
    site: dict[str, Path], capsys: pytest.CaptureFixture[str], make_bad: str
) -> None:
    bad = site["lms.yml"].parent / "bad.yml"
    if make_bad == "directory":
        bad.mkdir()
    elif make_bad == "not-utf8":
        bad.write_bytes("PLATFORM_NAME: Académie\n".encode("latin-1"))
    before = snapshot(bad.parent)
    assert main(["--to", REMOTE, str(site["lms.yml"]), str(bad)]) == 2
    assert snapshot(bad.parent) == before
    assert str(bad) in capsys.readouterr().err


def test_usage_errors_exit_2(site: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    lms = str(site["lms.yml"])
    assert main([lms]) == 2
    assert "--to HOST:PORT is required" in capsys.readouterr().err
    assert main(["--to", "localhost", lms]) == 2
    assert "missing port" in capsys.readouterr().err
    assert main(["--to", REMOTE, "--port", "0", lms]) == 2
    assert main(["--to", REMOTE]) == 2
    assert site["lms.yml"].read_text(encoding="utf-8") == fixture("lms.yml")


def test_symlinked_config_keeps_the_link(site: dict[str, Path]) -> None:
    link = site["lms.yml"].parent / "lms-link.yml"
    link.symlink_to(site["lms.yml"].name)
    assert main(["--to", REMOTE, str(link), str(site["lms.yml"])]) == 0  # the same file twice: one rewrite
    assert link.is_symlink()
    assert f"- {REMOTE}" in site["lms.yml"].read_text(encoding="utf-8")
    assert len(list(site["lms.yml"].parent.glob("lms.yml.bak-*"))) == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give files to another owner")
def test_owner_is_kept(site: dict[str, Path]) -> None:
    lms = site["lms.yml"]
    os.chown(lms, 1234, 2345)
    assert main(["--to", REMOTE, str(lms)]) == 0
    assert (lms.stat().st_uid, lms.stat().st_gid) == (1234, 2345)
    backup = next(lms.parent.glob("lms.yml.bak-*"))
    assert (backup.stat().st_uid, backup.stat().st_gid) == (1234, 2345)


def test_file_changed_between_read_and_write_is_not_clobbered(
    site: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import edx_remote_cache.cli.rewrite as cli

    lms = site["lms.yml"]
    real_rewrite = cli.rewrite

    def racing_rewrite(text: str, **kwargs: object) -> object:
        lms.write_text(text + "# added by a concurrent ansible run\n", encoding="utf-8")
        return real_rewrite(text, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(cli, "rewrite", racing_rewrite)
    assert main(["--to", REMOTE, str(lms)]) == 2
    assert "changed while it was being rewritten" in capsys.readouterr().err
    assert lms.read_text(encoding="utf-8").endswith("# added by a concurrent ansible run\n")


def test_add_parser_wires_a_subcommand(site: dict[str, Path]) -> None:
    parser = argparse.ArgumentParser(prog="edx-remote-cache")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["rewrite", "--check", "--to", REMOTE, str(site["lms.yml"])])
    assert args.func(args) == 1


def test_default_backup_suffix_is_utc() -> None:
    import datetime as dt

    moment = dt.datetime(2024, 1, 31, 13, 0, 5, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    assert default_backup_suffix(moment) == ".bak-20240131T120005Z"


# ----------------------------------------------------------------------- issue 17: files as in the wild

WILD = Path(__file__).resolve().parents[1] / "fixtures" / "rewrite"


def wild(tmp_path: Path, *names: str) -> list[Path]:
    paths = []
    for name in names:
        path = tmp_path / name
        path.write_bytes((WILD / name).read_bytes())
        paths.append(path)
    return paths


def test_revert_gives_back_exact_bytes_and_keeps_servers_it_never_wrote(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """127.0.0.1 stays 127.0.0.1, cache-1 and both ElastiCache nodes stay; the record says what was ours."""
    lms, site_vars = wild(tmp_path, "edx_etc_lms.yml", "site_vars.yml")
    originals = [lms.read_bytes(), site_vars.read_bytes()]
    assert main(["--to", REMOTE, "--to", REMOTE2, str(lms), str(site_vars)]) == 0
    assert (tmp_path / ".edx_etc_lms.yml.edx-remote-cache.json").exists()
    assert main(["--revert", str(lms), str(site_vars)]) == 0
    assert [lms.read_bytes(), site_vars.read_bytes()] == originals
    capsys.readouterr()
    assert main(["--revert", str(lms), str(site_vars)]) == 0  # again: ours, and nothing left to revert
    assert capsys.readouterr().out == f"{lms}: nothing to do\n{site_vars}: nothing to do\n"


def test_revert_after_two_rewrites_and_revert_from_one_endpoint(tmp_path: Path) -> None:
    (lms,) = wild(tmp_path, "edx_etc_lms.yml")
    original = lms.read_bytes()
    assert main(["--to", REMOTE, str(lms)]) == 0
    assert main(["--from", REMOTE, "--to", REMOTE2, str(lms), "--backup-suffix", ".second"]) == 0
    assert REMOTE not in lms.read_text() and REMOTE2 in lms.read_text()
    assert main(["--revert", "--from", REMOTE2, str(lms)]) == 0  # undoes the second run only
    assert lms.read_text() == rewrite(original.decode(), to=[REMOTE]).text
    assert main(["--revert", str(lms)]) == 0
    assert lms.read_bytes() == original


def test_revert_refuses_a_value_edited_since_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lms, pillar = wild(tmp_path, "edx_etc_lms.yml", "pillar.sls")
    assert main(["--to", REMOTE, str(lms), str(pillar)]) == 0
    lms.write_text(lms.read_text().replace(f"LOCATION: '{REMOTE}'", "LOCATION: 'hand-edited:11211'"))
    before = snapshot(tmp_path)
    assert main(["--revert", str(pillar), str(lms)]) == 2
    assert snapshot(tmp_path) == before
    err = capsys.readouterr().err
    assert f"{lms}: line 27: CACHES.staticfiles has changed since edx-remote-cache wrote it" in err


def test_revert_of_a_file_never_touched_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lms, role = wild(tmp_path, "edx_etc_lms.yml", "role_defaults.yml")
    before = snapshot(tmp_path)
    assert main(["--revert", str(role)]) == 0  # only local entries: nothing to do
    assert (
        main(["--revert", str(lms), str(role)]) == 2
    )  # remote entries it may not own: refuse, say what to pass
    assert snapshot(tmp_path) == before
    err = capsys.readouterr().err
    assert "no record of what edx-remote-cache wrote here" in err and "--from HOST:PORT" in err
    assert "cache-1.example.com:11211" in err
    assert main(["--revert", "--from", "cache-1.example.com:11211", str(lms)]) == 0  # explicit: as told
    assert "- localhost:11211\n        - localhost:11211" not in lms.read_text()


def test_templated_keys_are_warned_once_each_and_the_rest_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (role,) = wild(tmp_path, "role_defaults.yml")
    assert main(["--to", REMOTE, str(role)]) == 0
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        f"{role}:9: warning: DISCUSSIONS_SESSION_MEMCACHE[1]: templated value (Jinja); left as is",
        f"{role}:19: warning: DISCUSSIONS_SERVICE_CONFIG.CACHES: templated value (Jinja); left as is",
    ]
    assert f"  DISCUSSIONS_MEMCACHE: localhost:11211 -> {REMOTE}" in captured.out


def test_a_template_file_is_named_and_nothing_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lms, template = wild(tmp_path, "edx_etc_lms.yml", "pillar_template.sls")
    before = snapshot(tmp_path)
    assert main(["--to", REMOTE, str(lms), str(template)]) == 2
    assert snapshot(tmp_path) == before
    err = capsys.readouterr().err
    assert f"{template}: line 2: this looks like a Jinja/Salt template" in err and "/edx/etc" in err


def test_help_documents_the_record_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    for words in [
        "records what it wrote",
        ".FILE.edx-remote-cache.json",
        "--revert needs --from",
        "3 the batch",
    ]:
        assert words in out


# ------------------------------------------------------------------------------ all-or-nothing batches


class _Flaky:
    """Fails the n-th call of the wrapped filesystem function once (the roll back's own calls succeed)."""

    def __init__(self, real: Any, fail_at: int) -> None:
        self.real, self.fail_at, self.calls = real, fail_at, 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls == self.fail_at:
            raise OSError(28, "No space left on device")
        return self.real(*args, **kwargs)


class _ClosedAfter(io.StringIO):
    def __init__(self, writes: int) -> None:
        super().__init__()
        self.left = writes

    def write(self, text: str) -> int:
        self.left -= 1
        if self.left < 0:
            raise BrokenPipeError(32, "Broken pipe")
        return super().write(text)


NAMES = ["edx_etc_lms.yml", "site_vars.yml", "pillar.sls", "role_defaults.yml"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    names=st.lists(st.sampled_from(NAMES), min_size=1, max_size=4, unique=True),
    where=st.sampled_from(["replace", "link", "stdout"]),
    fail_at=st.integers(1, 12),
    revert_after=st.booleans(),
)
def test_a_batch_is_all_or_nothing_under_a_failure_at_every_position(
    names: list[str], where: str, fail_at: int, revert_after: bool
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        paths = wild(Path(tmp), *names)
        before = {p: p.read_bytes() for p in paths}
        after = {p: rewrite(before[p].decode(), to=[REMOTE]).text.encode() for p in paths}
        if revert_after:  # the revert batch is the one under test
            assert main(["--to", REMOTE, *map(str, paths)]) == 0
            before, after = after, before
        listing = sorted(os.listdir(tmp))
        argv = ["--revert", *map(str, paths)] if revert_after else ["--to", REMOTE, *map(str, paths)]
        err = io.StringIO()
        stdout = _ClosedAfter(fail_at if where == "stdout" else 10**6)
        if where == "stdout":
            with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(err):
                code = main(argv)
        else:
            target = "os.replace" if where == "replace" else "os.link"
            real = os.replace if where == "replace" else os.link
            with (
                mock.patch(target, _Flaky(real, fail_at)),
                contextlib.redirect_stdout(stdout),
                contextlib.redirect_stderr(err),
            ):
                code = main(argv)
        now = {p: p.read_bytes() for p in paths}
        assert "Traceback" not in err.getvalue()
        assert now in (before, after), "a batch must never be split"
        assert not [n for n in os.listdir(tmp) if n.endswith(".tmp")]
        if now == before:
            assert code == 2 and "rolled back" in err.getvalue()
            assert sorted(os.listdir(tmp)) == listing  # backups and records of this run are gone too
        else:
            assert code == (3 if stdout.left < 0 else 0)  # an output error is never 1 ("changes found")


def test_closed_stdout_completes_the_batch_without_a_traceback(tmp_path: Path) -> None:
    """`edx-remote-cache rewrite ... | head -0`: every file written, exit 3 (not 1 = changes found)."""
    paths = wild(tmp_path, *NAMES)
    expected = [rewrite(p.read_text(), to=[REMOTE]).text for p in paths]
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first byte: every write is EPIPE
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "edx_remote_cache.cli.rewrite", "--to", REMOTE, *map(str, paths)],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)
    assert (proc.returncode, "Traceback" in proc.stderr) == (3, False), proc.stderr
    assert [p.read_text() for p in paths] == expected


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_the_writes_rolls_the_batch_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], signum: int
) -> None:
    paths = wild(tmp_path, *NAMES)
    listing = {name: data for name, (data, _mtime) in snapshot(tmp_path).items()}
    real = os.replace
    calls = []

    def replace_then_signal(*args: Any) -> None:
        real(*args)
        calls.append(args)
        if len(calls) == 3:  # mid-batch: two files' records/contents are already in place
            os.kill(os.getpid(), signum)

    with mock.patch("os.replace", replace_then_signal):
        assert main(["--to", REMOTE, *map(str, paths)]) == 128 + signum
    assert {name: data for name, (data, _mtime) in snapshot(tmp_path).items()} == listing
    assert "rolled back, nothing written" in capsys.readouterr().err
