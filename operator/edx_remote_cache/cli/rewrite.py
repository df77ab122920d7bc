"""edx-remote-cache rewrite: point an Open edX host's memcached settings at a remote cache, in place.

A batch is all or nothing: every file is read, parsed and planned first (nothing is written unless all of
them can be), then every file is written (temp file + rename, with a backup copy), and only then is the
report printed. A failed write, SIGINT or SIGTERM during the write phase rolls back what this run wrote;
a closed stdout (`| head`) cannot split a batch because nothing is printed until the batch is done.

(One module on purpose, at ~600 lines: the plan, write and report phases share the undo log and the signal
handlers that roll a batch back; split apart, the all-or-nothing guarantee would span files.)
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import signal
import stat
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, TextIO

from edx_remote_cache.cli.help import add_subcommand
from edx_remote_cache.domain.rewrite import (
    DEFAULT_PORT,
    NodeSplice,
    RewriteError,
    RewriteResult,
    is_local_endpoint,
    parse_endpoint,
    restore,
    revert,
    rewrite,
)
from edx_remote_cache.domain.rewrite.endpoints import endpoint_key
from edx_remote_cache.domain.rewrite.locate import is_templated

__all__ = [
    "EXIT_CHANGES",
    "EXIT_ERROR",
    "EXIT_OK",
    "EXIT_OUTPUT",
    "EXIT_SPLIT",
    "RECORD_SUFFIX",
    "add_parser",
    "default_backup_suffix",
    "main",
    "record_path",
    "run",
]

EXIT_OK = 0
EXIT_CHANGES = 1  # --check found something to change
EXIT_ERROR = 2  # usage or input error, or a write failed and was rolled back; nothing was written
EXIT_OUTPUT = 3  # the batch is complete (all written) but the report could not be printed
EXIT_SPLIT = 4  # a write failed AND rolling back failed: the message names each file and its backup
RECORD_SUFFIX = ".edx-remote-cache.json"  # .FILE<suffix> beside each file: what this tool wrote, for reverts
_RECORD_FORMAT = 1

REVERT_HELP = f"""\
revert: every rewrite records what it wrote in .FILE{RECORD_SUFFIX}, beside the file and its backup.
  --revert swaps exactly those values back -- original spelling, quoting and list shape -- and touches
  nothing else; with --from it swaps back only the values that contain those endpoints. A value changed
  since it was written is refused, never guessed. Without a record, --revert needs --from HOST:PORT (those
  endpoints are pointed back at localhost:PORT); a file with no remote memcached entry is "nothing to do".
templated values ("{{{{ var }}}}") are left as they are, with one warning line each (file:line: key).
"""
EPILOG = (
    REVERT_HELP
    + f"""\
exit codes: {EXIT_OK} done or nothing to do; {EXIT_CHANGES} --check found changes; {EXIT_ERROR} usage or input error,
  or a write failed and the batch was rolled back (nothing written); {EXIT_OUTPUT} the batch completed but the
  report could not be printed (e.g. stdout closed by `| head`); {EXIT_SPLIT} a write failed and so did the roll
  back (the message lists what to restore); 130/143 interrupted by SIGINT/SIGTERM (the message says whether
  the batch was rolled back or had already completed).
"""
)


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
        "--revert",
        action="store_true",
        help=f"give back what earlier rewrites replaced, exactly (from .FILE{RECORD_SUFFIX}; no --to)",
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
        description=(__doc__ or "") + "\n" + REVERT_HELP,
        env={},
        exit_codes={
            EXIT_OK: "done (or nothing to change)",
            EXIT_CHANGES: "--check found something to change",
            EXIT_ERROR: "usage or input error, or a write failed and the batch was rolled back (nothing written)",
            EXIT_OUTPUT: "the batch completed but the report could not be printed (e.g. stdout closed by | head)",
            EXIT_SPLIT: "a write failed and so did the roll back (the message lists what to restore)",
            130: "interrupted by SIGINT (the message says whether the batch was rolled back or had completed)",
            143: "interrupted by SIGTERM (likewise)",
        },
    )
    _configure(parser)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="edx-remote-cache rewrite",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _configure(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors and 0 on --help
        return exc.code if isinstance(exc.code, int) else EXIT_ERROR
    return run(args)


# ------------------------------------------------------------------------------------------------ output


class _Output:
    """stdout/stderr that never raise: a closed pipe ends the report, not the program, and is remembered."""

    def __init__(self) -> None:
        self.broken = False

    def write(self, stream: TextIO, text: str) -> None:
        if self.broken and stream is sys.stdout:
            return
        try:
            stream.write(text)
        except (OSError, ValueError):  # EPIPE, EIO, or a stream closed under us
            if stream is sys.stdout:
                self.broken = True

    def out(self, text: str) -> None:
        self.write(sys.stdout, text + "\n")

    def err(self, text: str) -> None:
        self.write(sys.stderr, text + "\n")

    def finish(self) -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                if stream is sys.stdout:
                    self.broken = True
        if self.broken and sys.stdout is sys.__stdout__:
            # the interpreter flushes stdout again at exit: point it at /dev/null so that is not a traceback
            with contextlib.suppress(OSError, ValueError):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, 1)
                os.close(devnull)


class _Signals:
    """SIGINT/SIGTERM only set a flag while a batch runs; the batch looks at it between steps."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._saved: dict[int, Any] = {}

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self.received = self.received or signum

    @contextlib.contextmanager
    def deferred(self) -> Iterator[_Signals]:
        if threading.current_thread() is not threading.main_thread():  # embedded use: cannot own signals
            yield self
            return
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._saved[signum] = signal.signal(signum, self._handle)
        try:
            yield self
        finally:
            for saved, handler in self._saved.items():
                signal.signal(saved, handler)


# ------------------------------------------------------------------------------------------------ planning


@dataclass
class _File:
    path: str  # as given, for messages
    real: str  # symlinks resolved: the file that gets replaced
    raw: bytes
    result: RewriteResult
    record: bytes | None  # the record file's bytes when read (None: there was none)
    new_record: bytes | None  # what the record must hold after this run (None: no record)
    notes: list[str] = field(default_factory=list)


class _Refused(Exception):
    """A file this run will not write; the message says why and what to do."""


def record_path(real: str) -> str:
    """Hidden, next to the file: survives with it, and no ``lms.yml*`` or ``*.yml`` glob picks it up."""
    directory, name = os.path.split(real)
    return os.path.join(directory, f".{name}{RECORD_SUFFIX}")


def _load_record(real: str) -> tuple[bytes | None, list[dict[str, Any]]]:
    try:
        with open(record_path(real), "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        return None, []
    except OSError as exc:
        raise _Refused(f"cannot read {record_path(real)}: {exc.strerror or exc}") from None
    try:
        data = json.loads(raw.decode("utf-8"))
        runs = data["runs"]
        if data.get("format") != _RECORD_FORMAT or not isinstance(runs, list):
            raise ValueError("unknown format")
        for run_ in runs:
            for node in run_["nodes"]:
                _splice_of(node)
    except (ValueError, KeyError, TypeError, AttributeError):
        raise _Refused(
            f"{record_path(real)} is not a record this version of edx-remote-cache wrote; move it away "
            "(and pass --from HOST:PORT to revert without it)"
        ) from None
    return raw, runs


def _splice_of(node: dict[str, Any]) -> NodeSplice:
    fields = (node["path"], node["original"], node["written"])
    if not all(isinstance(f, str) for f in fields) or not all(isinstance(e, str) for e in node["entries"]):
        raise ValueError("bad node")
    return NodeSplice(*fields, tuple(node["entries"]))


def _record_bytes(real: str, runs: list[dict[str, Any]], *, keep: bool = False) -> bytes | None:
    """The record's new bytes; an emptied record is kept (``keep``) so a second revert knows the file is
    ours and has nothing left to revert, instead of refusing for lack of a record."""
    if not runs and not keep:
        return None
    data = {"format": _RECORD_FORMAT, "file": os.path.basename(real), "runs": runs}
    return (json.dumps(data, indent=1, ensure_ascii=False) + "\n").encode("utf-8")


def _plan_file(path: str, real: str, args: argparse.Namespace, to: list[str], backup: str) -> _File:
    try:
        with open(real, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise _Refused(f"cannot read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Refused(f"not UTF-8 text (byte {exc.start})") from None
    record, runs = _load_record(real)
    replace: list[str] = list(args.replace or [])
    try:
        if not args.revert:
            result = rewrite(text, to=to, replace=replace, port=args.port)
            if result.changed:
                nodes = [{**vars(s), "entries": list(s.entries)} for s in result.splices]
                now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                runs = [*runs, {"at": now, "backup": backup or None, "nodes": nodes}]
            return _File(path, real, raw, result, record, _record_bytes(real, runs))
        if record is not None:
            return _revert_recorded(path, real, raw, text, record, runs, replace)
        if replace:
            return _File(path, real, raw, revert(text, current=replace, port=args.port), record, None)
        result = revert(text, port=args.port)  # only to see whether anything remote is there at all
    except RewriteError as exc:
        raise _Refused(str(exc)) from None
    remote = sorted({e for c in result.changes for e in c.old if not is_local_endpoint(e)})
    if remote:
        raise _Refused(
            f"no record of what edx-remote-cache wrote here ({record_path(real)} is "
            f"missing), so {', '.join(remote)} may not be ours to remove: pass --from HOST:PORT for each "
            f"endpoint to point back at localhost:{args.port}, or restore a backup copy"
        )
    return _File(path, real, raw, RewriteResult(text, text, ()), record, record)


def _revert_recorded(
    path: str,
    real: str,
    raw: bytes,
    text: str,
    record: bytes | None,
    runs: list[dict[str, Any]],
    replace: list[str],
) -> _File:
    """Undo the recorded runs newest first (all of them, or the nodes that wrote a ``--from`` endpoint)."""
    wanted = {endpoint_key(e) for e in replace}
    undo: list[NodeSplice] = []
    kept_runs: list[dict[str, Any]] = []
    for run_ in runs:
        kept = []
        for node in run_["nodes"]:
            splice = _splice_of(node)
            if not wanted or any(endpoint_key(e) in wanted for e in splice.entries if not is_templated(e)):
                undo.append(splice)
            else:
                kept.append(node)
        if kept:
            kept_runs.append({**run_, "nodes": kept})
    return _File(
        path, real, raw, restore(text, undo[::-1]), record, _record_bytes(real, kept_runs, keep=True)
    )


# ------------------------------------------------------------------------------------------------- writing


class _Batch:
    """Writes files one step at a time and remembers how to undo each step (for an all-or-nothing batch)."""

    def __init__(self, signals: _Signals) -> None:
        self.signals = signals
        self._undo: list[tuple[str, Callable[[], None]]] = []

    def step(self, description: str, do: Callable[[], Callable[[], None]]) -> None:
        if self.signals.received:
            raise _Interrupted(self.signals.received)
        self._undo.append((description, do()))

    def rollback(self) -> list[str]:
        """Undo every step, newest first; returns what could not be undone (empty: nothing is left)."""
        failed = []
        while self._undo:
            description, undo = self._undo.pop()
            try:
                undo()
            except OSError as exc:
                failed.append(f"{description}: {exc.strerror or exc}")
        return failed


class _Interrupted(Exception):
    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


def _write_file(batch: _Batch, item: _File, suffix: str) -> str | None:
    """Backup, record, then the file: a crash between them leaves a record whose values are not in the
    file, which a revert skips, rather than a rewritten file nobody recorded."""
    with open(item.real, "rb") as fh:
        if fh.read() != item.raw:
            raise RewriteError("the file changed while it was being rewritten; run again")
        st = os.fstat(fh.fileno())
    backup: list[str] = []
    if suffix and item.result.changed:

        def make_backup() -> Callable[[], None]:
            backup.append(_write_new(item.real + suffix, item.raw, st, exclusive=True))
            return lambda: os.unlink(backup[0])

        batch.step(f"{item.path}: backup", make_backup)
    if item.new_record != item.record:
        batch.step(
            f"{item.path}: record", lambda: _put(record_path(item.real), item.new_record, item.record, st)
        )
    if item.result.changed:
        new = item.result.text.encode("utf-8")
        batch.step(f"{item.path}", lambda: _put(item.real, new, item.raw, st))
    return backup[0] if backup else None


def _put(path: str, data: bytes | None, before: bytes | None, like: os.stat_result) -> Callable[[], None]:
    """Make ``path`` hold ``data`` (None: absent); return how to give it back ``before``."""
    if data is None:
        os.unlink(path)
    else:
        _write_new(path, data, like, exclusive=False)

    def undo() -> None:
        if before is None:
            os.unlink(path)
        else:
            _write_new(path, before, like, exclusive=False)

    return undo


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


# ---------------------------------------------------------------------------------------------------- run


def run(args: argparse.Namespace) -> int:
    output = _Output()
    with _Signals().deferred() as signals:
        status = _run(args, output, signals)
    output.finish()
    if output.broken and status in (EXIT_OK, EXIT_CHANGES):
        return EXIT_OUTPUT
    return status


def _run(args: argparse.Namespace, output: _Output, signals: _Signals) -> int:
    def error(message: str) -> int:
        output.err(f"edx-remote-cache rewrite: error: {message}")
        return EXIT_ERROR

    to: list[str] = list(args.to or [])
    if args.revert and to:
        return error("--to cannot be combined with --revert; use --from to revert only some endpoints")
    if not args.revert and not to:
        return error("--to HOST:PORT is required (or --revert)")
    dry = args.dry_run or args.check
    suffix = default_backup_suffix() if args.backup_suffix is None else args.backup_suffix

    files: list[_File] = []
    seen: set[str] = set()
    for path in args.files:  # 1. read, parse and plan everything before writing anything
        real = os.path.realpath(path)
        if real in seen:
            continue
        seen.add(real)
        try:
            files.append(_plan_file(path, real, args, to, suffix))
        except _Refused as exc:
            return error(f"{path}: {exc}")
        if signals.received:
            output.err(f"edx-remote-cache rewrite: interrupted ({_name(signals.received)}); nothing written")
            return 128 + signals.received
    writes = [f for f in files if f.result.changed or f.new_record != f.record]
    if not dry:  # catch the common write failure before the first file is touched
        for item in writes:
            directory = os.path.dirname(item.real) or "."
            if not os.access(directory, os.W_OK | os.X_OK):
                return error(f"{item.path}: cannot write: directory {directory} is not writable")

    backups: dict[str, str | None] = {}
    if not dry:  # 2. write everything, or roll back
        batch = _Batch(signals)
        try:
            for item in writes:
                backups[item.path] = _write_file(batch, item, suffix)
        except (OSError, RewriteError, _Interrupted) as exc:
            failed = batch.rollback()
            if failed:
                output.err("edx-remote-cache rewrite: error: the batch could not be rolled back completely:")
                for line in failed:
                    output.err(f"  {line} (restore it from its backup)")
                return EXIT_SPLIT
            if isinstance(exc, _Interrupted):
                output.err(f"edx-remote-cache rewrite: interrupted ({exc}); rolled back, nothing written")
                return 128 + exc.signum
            message = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            path = next((f.path for f in writes if f.path not in backups), "?")
            return error(f"{path}: not written: {message}; the batch was rolled back, nothing written")

    status = EXIT_OK  # 3. report
    for item in files:
        result = item.result
        for skipped in result.skipped:
            output.err(f"{item.path}:{skipped.line}: warning: {skipped.path}: {skipped.reason}")
        if not result.changed:
            output.out(f"{item.path}: nothing to do")
            continue
        output.out(f"{item.path}: {'would change' if dry else 'changing'} {len(result.changes)} setting(s)")
        for change in result.changes:
            output.out(f"  {change.alias}: {', '.join(change.old)} -> {', '.join(change.new)}")
        if args.dry_run:
            output.write(sys.stdout, result.unified_diff(item.path))
        if args.check:
            status = EXIT_CHANGES
        if not dry:
            backup = backups.get(item.path)
            output.out(f"  written{f' (backup: {backup})' if backup else ''}")
    if signals.received:  # arrived after the last write: the batch is complete, say so
        output.err(
            f"edx-remote-cache rewrite: interrupted ({_name(signals.received)}) after the batch completed"
        )
        return 128 + signals.received
    return status


def _name(signum: int) -> str:
    return signal.Signals(signum).name


if __name__ == "__main__":
    sys.exit(main())
