"""edx-remote-cache rewrite: point an Open edX host's memcached settings at a remote cache, in place.

Every file is read and rewritten in memory first; nothing is written unless all of them parse, so a typo in
one file never leaves a host half re-pointed. Writes are atomic (temp file + rename) with a backup copy.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import stat
import sys
import tempfile
from dataclasses import dataclass
from typing import Any

from edx_remote_cache.cli.help import add_subcommand
from edx_remote_cache.domain.rewrite import (
    DEFAULT_PORT,
    RewriteError,
    RewriteResult,
    parse_endpoint,
    revert,
    rewrite,
)

__all__ = ["EXIT_CHANGES", "EXIT_ERROR", "EXIT_OK", "add_parser", "default_backup_suffix", "main", "run"]

EXIT_OK = 0
EXIT_CHANGES = 1  # --check found something to change
EXIT_ERROR = 2  # usage or input error; nothing was written


def _endpoint(text: str) -> str:
    try:
        parse_endpoint(text)
    except RewriteError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text.strip()


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1-65535)")
    return int(text)


def _suffix(text: str) -> str:
    if "/" in text or "\0" in text:
        raise argparse.ArgumentTypeError(
            "the backup suffix must not contain '/': backups stay next to the file"
        )
    return text


def default_backup_suffix(now: dt.datetime | None = None) -> str:
    """``.bak-20240131T120000Z``: sorts by time, and never collides with ansible's own ``*.bak`` files."""
    moment = now or dt.datetime.now(dt.UTC)
    return ".bak-" + moment.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help="lms.yml, studio.yml, server-vars.yml, ...")
    parser.add_argument(
        "--to",
        action="append",
        type=_endpoint,
        metavar="HOST:PORT",
        help="remote memcached endpoint; repeat for several (Django shards keys over the list in order)",
    )
    parser.add_argument(
        "--from",
        dest="replace",
        action="append",
        type=_endpoint,
        default=[],
        metavar="HOST:PORT",
        help="also replace this endpoint (e.g. a previous cache host); with --revert: only revert these",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the unified diff, write nothing")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if anything would change")
    parser.add_argument(
        "--revert", action="store_true", help="point memcached caches back at localhost:PORT (no --to)"
    )
    parser.add_argument(
        "--backup-suffix",
        metavar="SUFFIX",
        type=_suffix,
        default=None,
        help="suffix of the backup copy: .bak-<UTC timestamp> when not given; '' for no backup",
    )
    parser.add_argument(
        "--port",
        type=_port,
        default=DEFAULT_PORT,
        metavar="N",
        help="port of the local memcached being moved away from / back to",
    )
    parser.set_defaults(func=run)


def add_parser(subparsers: Any) -> None:
    """Add the ``rewrite`` subcommand to an ``argparse`` subparsers object (sets ``func=run``)."""
    parser = add_subcommand(
        subparsers,
        "rewrite",
        summary="repoint memcached in Open edX YAML config (CACHES LOCATION, *_MEMCACHE vars)",
        description=__doc__ or "",
        env={},
        exit_codes={
            EXIT_OK: "done (or nothing to change)",
            EXIT_CHANGES: "--check found something to change",
            EXIT_ERROR: "usage or input error; nothing was written",
        },
    )
    _configure(parser)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edx-remote-cache rewrite", description=__doc__)
    _configure(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors and 0 on --help
        return exc.code if isinstance(exc.code, int) else EXIT_ERROR
    return run(args)


@dataclass
class _File:
    path: str  # as given, for messages
    real: str  # symlinks resolved: the file that gets replaced
    raw: bytes
    result: RewriteResult


def _error(message: str) -> int:
    print(f"edx-remote-cache rewrite: error: {message}", file=sys.stderr)
    return EXIT_ERROR


def run(args: argparse.Namespace) -> int:
    to: list[str] = list(args.to or [])
    replace: list[str] = list(args.replace or [])
    if args.revert and to:
        return _error("--to cannot be combined with --revert; use --from to revert only some endpoints")
    if not args.revert and not to:
        return _error("--to HOST:PORT is required (or --revert)")

    files: list[_File] = []
    seen: set[str] = set()
    for path in args.files:  # parse everything before writing anything
        real = os.path.realpath(path)
        if real in seen:
            continue
        seen.add(real)
        try:
            with open(real, "rb") as fh:
                raw = fh.read()
        except OSError as exc:
            return _error(f"{path}: cannot read: {exc.strerror or exc}")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            return _error(f"{path}: not UTF-8 text (byte {exc.start})")
        try:
            if args.revert:
                result = revert(text, current=replace, port=args.port)
            else:
                result = rewrite(text, to=to, replace=replace, port=args.port)
        except RewriteError as exc:
            return _error(f"{path}: {exc}")
        files.append(_File(path, real, raw, result))

    dry = args.dry_run or args.check
    suffix = default_backup_suffix() if args.backup_suffix is None else args.backup_suffix
    if not dry:  # catch the common write failure before the first file is touched
        for item in files:
            directory = os.path.dirname(item.real) or "."
            if item.result.changed and not os.access(directory, os.W_OK | os.X_OK):
                return _error(f"{item.path}: cannot write: directory {directory} is not writable")
    status = EXIT_OK
    for item in files:
        result = item.result
        if not result.changed:
            print(f"{item.path}: nothing to do")
            continue
        print(f"{item.path}: {'would change' if dry else 'changing'} {len(result.changes)} setting(s)")
        for change in result.changes:
            print(f"  {change.alias}: {', '.join(change.old)} -> {', '.join(change.new)}")
        if args.dry_run:
            sys.stdout.write(result.unified_diff(item.path))
        if args.check:
            status = EXIT_CHANGES
        if dry:
            continue
        try:
            backup = _write(item, suffix)
        except (OSError, RewriteError) as exc:
            message = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            return _error(f"{item.path}: not written: {message}")
        print(f"  written{f' (backup: {backup})' if backup else ''}")
    return status


def _write(item: _File, suffix: str) -> str | None:
    """Atomically replace the file, keeping mode and owner; refuse if it changed since it was read."""
    with open(item.real, "rb") as fh:
        if fh.read() != item.raw:
            raise RewriteError("the file changed while it was being rewritten; run again")
        st = os.fstat(fh.fileno())
    backup = _write_new(item.real + suffix, item.raw, st, exclusive=True) if suffix else None
    _write_new(item.real, item.result.text.encode("utf-8"), st, exclusive=False)
    return backup


def _write_new(path: str, data: bytes, like: os.stat_result, *, exclusive: bool) -> str:
    directory, name = os.path.split(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory or ".")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fchmod(fh.fileno(), stat.S_IMODE(like.st_mode))
            if (like.st_uid, like.st_gid) != (os.geteuid(), os.getegid()):
                with contextlib.suppress(PermissionError):  # only root may give files away
                    os.fchown(fh.fileno(), like.st_uid, like.st_gid)
            os.fsync(fh.fileno())
        if exclusive:
            os.utime(tmp, ns=(like.st_atime_ns, like.st_mtime_ns))
            target = _link_unused(tmp, path)
            os.unlink(tmp)
        else:
            os.replace(tmp, path)
            target = path
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory or ".")
    return target


def _link_unused(source: str, path: str) -> str:
    """Give ``source`` the name ``path`` (or ``path.1``, ...): never overwrites an earlier backup."""
    for counter in range(1000):
        target = f"{path}.{counter}" if counter else path
        try:
            os.link(source, target)
        except FileExistsError:
            continue
        return target
    raise FileExistsError(f"{path}: too many backups with this name")


def _fsync_dir(directory: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


if __name__ == "__main__":
    sys.exit(main())
