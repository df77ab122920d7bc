"""``edx-remote-cache rewrite`` on real files: in place with a backup, dry runs, checks, all-or-nothing."""

from __future__ import annotations

import argparse
import importlib.resources
import os
import re
import stat
from pathlib import Path

import pytest

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
