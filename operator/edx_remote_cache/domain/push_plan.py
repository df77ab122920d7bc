"""Plan a push to an Open edX host and render the bash scripts that carry it out over SSM Run Command.

Pure: no boto3, no sockets, no subprocesses. :mod:`edx_remote_cache.adapters.host_push` sends what this module
renders and hands the output back to the parsers here.

Why the scripts look the way they do:

* **Nothing from the spec or the host is ever interpolated unquoted.** Paths and argv words go through
  :func:`shlex.quote` (the spec validates them too); file content only ever travels base64-encoded; numbers
  are formatted from ints. Output is a line protocol (``ERC-…``) whose free-text fields are base64, so a
  hostile file name or command output cannot forge a line.
* **Reads fit SSM's 24,000-character stdout cap.** Every existing file is concatenated, gzipped and
  base64-encoded; the first command returns the metadata (sha256, uid:gid, mode, size) and the first slice of
  that stream, and further commands return further slices (re-gzipping is deterministic with ``gzip -n``).
  The operator checks every file's sha256 after the transfer, so a file edited mid-read is caught.
* **Writes carry only the change.** The rewrite engine only touches LOCATION lines, so a file's new content is
  sent as a splice of the original (byte ranges copied on the host) and base64 literals for the new lines.
  The host rebuilds the file and checks its sha256 before anything is renamed into place. A write script is
  a few KiB whatever the file size (1 MiB files included) and is capped at :data:`MAX_SCRIPT_CHARS`.
* **One apply script per host does compare-before-write, backup, write, restart, verify and rollback**, so
  a host is never left half-done because the operator lost its connection between steps.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import gzip
import hashlib
import posixpath
import re
import shlex
import zlib
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from edx_remote_cache.domain.rewrite import RewriteError, RewriteResult, is_local_endpoint, revert, rewrite

__all__ = [
    "BACKUP_SUFFIX",
    "ERROR_STATES",
    "HOST_STATES",
    "KEEP_BACKUPS",
    "MAX_FILE_BYTES",
    "MAX_SCRIPT_CHARS",
    "SSM_STDOUT_LIMIT",
    "ApplyOutcome",
    "Copy",
    "Data",
    "FileChange",
    "FileRead",
    "HostPlan",
    "HostPushResult",
    "HostSnapshot",
    "HostState",
    "LocalEndpoints",
    "PlanError",
    "ProtocolError",
    "ReadHeader",
    "ServiceState",
    "StepLog",
    "StreamChunk",
    "TransferError",
    "apply_segments",
    "assemble_snapshot",
    "backup_timestamp",
    "chunk_offsets",
    "host_paths",
    "parse_apply_output",
    "parse_chunk_output",
    "parse_hash_output",
    "parse_read_output",
    "plan_push",
    "plan_revert",
    "render_apply_script",
    "render_chunk_script",
    "render_hash_script",
    "render_read_script",
    "splice_segments",
]

HostState = Literal["Configured", "Pending", "Unreachable", "Conflict", "RolledBack", "Failed"]
HOST_STATES: tuple[HostState, ...] = (
    "Configured",
    "Pending",
    "Unreachable",
    "Conflict",
    "RolledBack",
    "Failed",
)
# What counts against rollout.maxErrors. Unreachable does not: like SSM's "Undeliverable", nothing was sent,
# so it says nothing about whether the change is bad (the host is retried on the next reconcile).
ERROR_STATES: frozenset[str] = frozenset({"Conflict", "RolledBack", "Failed"})

SSM_STDOUT_LIMIT = 24_000  # GetCommandInvocation's StandardOutputContent is cut at 24,000 characters
# The design limit for one rendered script (the whole `commands` parameter). SSM documents are limited to
# 64 KB and SendCommand rejects oversized parameters; 48,000 characters leaves headroom for JSON escaping.
MAX_SCRIPT_CHARS = 48_000
MAX_FILE_BYTES = 4 * 1024 * 1024  # a config file larger than this is refused (1 MiB is tested)
KEEP_BACKUPS = 5  # newest backups kept next to each file; older ones are pruned after a write
BACKUP_SUFFIX = ".erc-bak-"  # shell-safe as is: it is pasted into the scripts between quoted words
STEP_TIMEOUT_SECONDS = 180  # per restart / verify command, enforced on the host with coreutils `timeout`
SYSTEMCTL: tuple[str, ...] = ("systemctl",)
LOCAL_MEMCACHED_UNIT = "memcached"

_PROTOCOL = "1"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_ERROR_MESSAGE_BYTES = 200
_HEADER_CHARS_PER_FILE = 300  # worst case of one ERC-FILE / ERC-ERROR line
_OUTPUT_MARGIN = 400


class ProtocolError(ValueError):
    """Script output that does not follow the ERC line protocol (truncated, or not our script)."""


class TransferError(ValueError):
    """The bytes that arrived are not the bytes the host hashed (a file changed mid-read, or corruption)."""


class PlanError(ValueError):
    """A file the rewrite engine refuses (malformed YAML, unsupported LOCATION shape, bad endpoint)."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        super().__init__(f"{path}: {message}")


# ------------------------------------------------------------------------------------------------ results

# (path, cache alias, entry): how a file spelled the local memcached where a push replaced it, for the revert.
# ``localhost:PORT`` (what a revert writes anyway) is left out, so a stock host records one or two of them.
LocalEndpoints = tuple[tuple[str, str, str], ...]


@dataclass(frozen=True)
class HostPushResult:
    """What the last push did to one Open edX host; :meth:`to_status` is its CRD ``status.hosts[]`` item."""

    instance_id: str
    state: HostState
    files: tuple[tuple[str, str], ...] = ()  # (path, sha256) of every managed file present after the push
    command_id: str | None = None
    time: datetime | None = None
    message: str = ""
    diffs: tuple[tuple[str, str], ...] = ()  # (path, unified diff) of the files this push changed
    local_endpoints: LocalEndpoints = ()  # carried from push to push, whatever the state, until a revert

    @property
    def ok(self) -> bool:
        return self.state == "Configured"

    @property
    def file_hashes(self) -> dict[str, str]:
        return dict(self.files)

    @property
    def local_spellings(self) -> dict[str, dict[str, str]]:
        """path -> {alias: local entry} as recorded by the pushes (``revert(local=...)`` per file)."""
        return _by_path(self.local_endpoints)

    def to_status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "instanceId": self.instance_id,
            "state": self.state,
            "files": [{"path": path, "sha256": sha} for path, sha in self.files],
            "message": self.message,
        }
        if self.command_id:
            out["commandId"] = self.command_id
        if self.time is not None:
            out["lastPushTime"] = self.time.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        if self.local_endpoints:
            out["localEndpoints"] = [
                {"path": path, "alias": alias, "endpoint": entry}
                for path, alias, entry in self.local_endpoints
            ]
        return out

    @classmethod
    def from_status(cls, item: Mapping[str, Any]) -> HostPushResult:
        """Rebuild from a CRD status item (diffs are not stored there), e.g. to pass as ``previous``."""
        time = None
        if item.get("lastPushTime"):
            time = datetime.strptime(str(item["lastPushTime"]), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        state = str(item.get("state", "Pending"))
        return cls(
            instance_id=str(item["instanceId"]),
            state=state if state in HOST_STATES else "Pending",  # type: ignore[arg-type]
            files=tuple((str(f["path"]), str(f["sha256"])) for f in item.get("files") or ()),
            command_id=item.get("commandId") or None,
            time=time,
            message=str(item.get("message", "")),
            local_endpoints=_local_endpoints_from_status(item.get("localEndpoints")),
        )


def _by_path(entries: Iterable[tuple[str, str, str]]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for path, alias, entry in entries:
        out.setdefault(path, {})[alias] = entry
    return out


def _local_endpoints_from_status(items: Any) -> LocalEndpoints:
    """Entries a revert could not write back (edited status: not local, not strings) are dropped."""
    out: list[tuple[str, str, str]] = []
    for item in items if isinstance(items, list) else ():
        if not isinstance(item, Mapping):
            continue
        path, alias, entry = item.get("path"), item.get("alias"), item.get("endpoint")
        if (
            isinstance(path, str)
            and isinstance(alias, str)
            and isinstance(entry, str)
            and is_local_endpoint(entry)
        ):
            out.append((path, alias, entry))
    return tuple(out)


# ------------------------------------------------------------------------------------------- bash helpers


def _q(value: str) -> str:
    """Quote one word for bash; NUL cannot be carried by any shell, so it is refused outright."""
    if "\x00" in value:
        raise ValueError(f"{value!r}: NUL bytes cannot be passed to a shell")
    return shlex.quote(value)


def _bash_array(name: str, values: Iterable[str]) -> str:
    return f"{name}=(" + " ".join(_q(v) for v in values) + ")"


def _check_path(path: str) -> str:
    if not path.startswith("/") or posixpath.normpath(path) != path:
        raise ValueError(f"{path!r}: a managed file must be an absolute, normalised path")
    return path


def _argv(words: Sequence[str]) -> str:
    if not words:
        raise ValueError("empty command")
    return " ".join(_q(w) for w in words)


def host_paths(config_files: Iterable[str], ansible_vars_files: Iterable[str]) -> tuple[str, ...]:
    """Every managed path once, config files first (the order restarts happen in)."""
    out: list[str] = []
    for path in (*config_files, *ansible_vars_files):
        if path not in out:
            out.append(_check_path(path))
    return tuple(out)


_PRELUDE = """\
#!/bin/bash
# edx-remote-cache {what} (protocol {protocol}); rendered by the operator, safe to read.
if [ -z "${{BASH_VERSION:-}}" ]; then echo "ERC-RESULT Failed"; echo "bash required" >&2; exit 2; fi
set -u -o pipefail
export LC_ALL=C
umask 077
erc_b64() {{ base64 -w0; }}
erc_msg() {{ printf '%s' "$1" | tail -c "${{2:-{message_bytes}}}" | base64 -w0; }}
erc_err() {{ printf 'ERC-ERROR %s %s\\n' "$1" "$(erc_msg "$2" {message_bytes})"; }}
echo "ERC-BEGIN {protocol}"
"""


def _prelude(what: str) -> str:
    return _PRELUDE.format(what=what, protocol=_PROTOCOL, message_bytes=_ERROR_MESSAGE_BYTES)


# ------------------------------------------------------------------------------------------- read scripts


def _stream_budget(n_paths: int, *, first: bool) -> int:
    """Base64 characters of the gzip stream one command may print (a multiple of 4: decodable alone)."""
    header = _HEADER_CHARS_PER_FILE * n_paths + 200 if first else 8 * n_paths + 100
    budget = SSM_STDOUT_LIMIT - header - _OUTPUT_MARGIN
    if budget < 4000:
        raise ValueError(f"{n_paths} files leave too little room in SSM's output for file content")
    return budget - budget % 4


def _stream_lines(chars: int, offset_expr: str) -> str:
    """Bash that builds the gzip+base64 stream of the included files and prints one slice of it."""
    return f"""\
files=()
for i in ${{included[@]+"${{included[@]}}"}}; do files+=("${{paths[$i]}}"); done
stream=""
if [ "${{#files[@]}}" -gt 0 ]; then
  stream=$(cat -- "${{files[@]}}" | gzip -n -6 | base64 -w0) || {{ echo "ERC-RESULT Failed"; exit 1; }}
fi
list=""
for i in ${{included[@]+"${{included[@]}}"}}; do list+="${{list:+,}}$i"; done
echo "ERC-STREAM ${{#stream}} ${{list:--}}"
offset={offset_expr}
echo "ERC-DATA $offset ${{stream:$offset:{chars}}}"
echo "ERC-END"
"""


def render_read_script(
    paths: Sequence[str],
    *,
    max_file_bytes: int = MAX_FILE_BYTES,
    service: str | None = None,
    systemctl: Sequence[str] = SYSTEMCTL,
) -> str:
    """One command: each path's sha256/owner/mode/size (or missing / error) and the first stream slice.

    ``service`` (a systemd unit) also reports its active/enabled state, for disableLocalMemcached.
    """
    for path in paths:
        _check_path(path)
    parts = [_prelude("read"), _bash_array("paths", paths), "included=()"]
    parts.append(f"""\
for i in "${{!paths[@]}}"; do
  p=${{paths[$i]}}
  if [ -L "$p" ]; then erc_err "$i" "is a symbolic link; only regular files are managed"
  elif [ ! -e "$p" ]; then echo "ERC-MISSING $i"
  elif [ ! -f "$p" ]; then erc_err "$i" "is not a regular file"
  elif ! sum=$( {{ sha256sum < "$p"; }} 2>&1 ); then erc_err "$i" "cannot read: $sum"
  elif ! meta=$(stat -c '%u:%g %a %s' -- "$p" 2>&1); then erc_err "$i" "cannot stat: $meta"
  elif [ "${{meta##* }}" -gt {int(max_file_bytes)} ]; then
    erc_err "$i" "is ${{meta##* }} bytes, more than the {int(max_file_bytes)} bytes a config file may have"
  else
    echo "ERC-FILE $i ${{sum%% *}} $meta"; included+=("$i")
  fi
done
""")
    if service is not None:
        unit = _q(service)
        parts.append(f"""\
if command -v {_q(systemctl[0])} >/dev/null 2>&1; then
  active=$({_argv(systemctl)} is-active {unit} 2>/dev/null | head -n1 | tr -cd 'a-z-')
  enabled=$({_argv(systemctl)} is-enabled {unit} 2>/dev/null | head -n1 | tr -cd 'a-z-')
  echo "ERC-SERVICE ${{active:-unknown}} ${{enabled:-unknown}}"
fi
""")
    parts.append(_stream_lines(_stream_budget(len(paths), first=True), "0"))
    return "\n".join(parts)


def render_chunk_script(paths: Sequence[str], included: Sequence[int], offset: int) -> str:
    """A further slice of the same stream (re-created from the same files; the sha256 check catches edits)."""
    for path in paths:
        _check_path(path)
    if offset < 0 or offset % 4:
        raise ValueError(f"stream offset {offset} must be a non-negative multiple of 4")
    indexes = " ".join(str(int(i)) for i in included)
    return "\n".join(
        [
            _prelude("read chunk"),
            _bash_array("paths", paths),
            f"included=({indexes})",
            _stream_lines(_stream_budget(len(paths), first=False), str(int(offset))),
        ]
    )


def render_hash_script(paths: Sequence[str]) -> str:
    """The cheap drift check: only each file's sha256 (or missing / error)."""
    for path in paths:
        _check_path(path)
    return "\n".join(
        [
            _prelude("hash"),
            _bash_array("paths", paths),
            """\
for i in "${!paths[@]}"; do
  p=${paths[$i]}
  if [ -L "$p" ] || { [ -e "$p" ] && [ ! -f "$p" ]; }; then erc_err "$i" "is not a regular file"
  elif [ ! -e "$p" ]; then echo "ERC-MISSING $i"
  elif ! sum=$( { sha256sum < "$p"; } 2>&1 ); then erc_err "$i" "cannot read: $sum"
  else echo "ERC-HASH $i ${sum%% *}"
  fi
done
echo "ERC-END"
""",
        ]
    )


# --------------------------------------------------------------------------------------- output parsing


@dataclass(frozen=True)
class FileMeta:
    index: int
    sha256: str
    owner: str  # uid:gid
    mode: str  # octal permission bits, as stat %a prints them
    size: int


@dataclass(frozen=True)
class StreamChunk:
    total: int  # length of the whole base64 stream
    included: tuple[int, ...]
    offset: int
    data: str


@dataclass(frozen=True)
class ServiceState:
    active: str  # systemctl is-active: active, inactive, failed, unknown, …
    enabled: str  # systemctl is-enabled: enabled, disabled, masked, unknown, …

    @property
    def running_or_enabled(self) -> bool:
        return self.active in ("active", "activating", "reloading") or self.enabled == "enabled"

    @property
    def exists(self) -> bool:
        return self.enabled not in ("unknown", "not-found", "")


@dataclass(frozen=True)
class ReadHeader:
    files: tuple[FileMeta, ...]
    missing: tuple[int, ...]
    errors: tuple[tuple[int, str], ...]
    service: ServiceState | None
    first: StreamChunk


def _lines(stdout: str, what: str) -> list[list[str]]:
    lines = [line.split(" ") for line in stdout.splitlines() if line.startswith("ERC-")]
    if not lines or lines[0] != ["ERC-BEGIN", _PROTOCOL]:
        raise ProtocolError(f"{what}: output does not start with ERC-BEGIN {_PROTOCOL}: {stdout[:200]!r}")
    if lines[-1] != ["ERC-END"]:
        raise ProtocolError(f"{what}: output is incomplete (no ERC-END; truncated by SSM or the script died)")
    return lines[1:-1]


def _b64text(value: str) -> str:
    try:
        return base64.b64decode(value, validate=True).decode("utf-8", "replace")
    except (binascii.Error, ValueError):
        return value


def _index(value: str, n_paths: int) -> int:
    if not value.isdigit() or int(value) >= n_paths:
        raise ProtocolError(f"file index {value!r} is out of range")
    return int(value)


def _parse_stream(words: list[str], data: list[str]) -> StreamChunk:
    if len(words) != 3 or not words[1].isdigit():
        raise ProtocolError(f"bad ERC-STREAM line: {' '.join(words)!r}")
    included = () if words[2] == "-" else tuple(int(i) for i in words[2].split(","))
    if len(data) not in (2, 3) or not data[1].isdigit():
        raise ProtocolError("bad ERC-DATA line")
    return StreamChunk(int(words[1]), included, int(data[1]), data[2] if len(data) == 3 else "")


def parse_read_output(stdout: str, n_paths: int) -> ReadHeader:
    files: list[FileMeta] = []
    missing: list[int] = []
    errors: list[tuple[int, str]] = []
    service: ServiceState | None = None
    stream: list[str] | None = None
    data: list[str] | None = None
    for words in _lines(stdout, "read"):
        tag = words[0]
        if tag == "ERC-FILE" and len(words) == 6:
            sha, owner, mode, size = words[2:]
            if not _SHA256.match(sha) or not re.fullmatch(r"\d+:\d+", owner) or not size.isdigit():
                raise ProtocolError(f"bad ERC-FILE line: {' '.join(words)!r}")
            files.append(FileMeta(_index(words[1], n_paths), sha, owner, mode, int(size)))
        elif tag == "ERC-MISSING" and len(words) == 2:
            missing.append(_index(words[1], n_paths))
        elif tag == "ERC-ERROR" and len(words) in (2, 3):
            errors.append((_index(words[1], n_paths), _b64text(words[2]) if len(words) == 3 else "error"))
        elif tag == "ERC-SERVICE" and len(words) == 3:
            service = ServiceState(words[1], words[2])
        elif tag == "ERC-STREAM":
            stream = words
        elif tag == "ERC-DATA":
            data = words
        else:
            raise ProtocolError(f"unexpected line in read output: {' '.join(words)[:120]!r}")
    if stream is None or data is None:
        raise ProtocolError("read output has no ERC-STREAM / ERC-DATA")
    first = _parse_stream(stream, data)
    if sorted(first.included) != sorted(f.index for f in files):
        raise ProtocolError("read output: the stream does not hold exactly the files listed")
    return ReadHeader(tuple(files), tuple(missing), tuple(errors), service, first)


def parse_chunk_output(stdout: str) -> StreamChunk:
    stream: list[str] | None = None
    data: list[str] | None = None
    for words in _lines(stdout, "read chunk"):
        if words[0] == "ERC-STREAM":
            stream = words
        elif words[0] == "ERC-DATA":
            data = words
        else:
            raise ProtocolError(f"unexpected line in chunk output: {' '.join(words)[:120]!r}")
    if stream is None or data is None:
        raise ProtocolError("chunk output has no ERC-STREAM / ERC-DATA")
    return _parse_stream(stream, data)


def chunk_offsets(header: ReadHeader, n_paths: int) -> list[int]:
    """Stream offsets still to fetch after the first command (each chunk command returns one slice)."""
    step = _stream_budget(n_paths, first=False)
    return list(range(len(header.first.data), header.first.total, step))


@dataclass(frozen=True)
class FileRead:
    """One file as read from the host, verified against the sha256 the host computed."""

    path: str
    content: bytes
    sha256: str
    owner: str
    mode: str


@dataclass(frozen=True)
class HostSnapshot:
    files: tuple[FileRead, ...]
    missing: tuple[str, ...] = ()
    service: ServiceState | None = None


def assemble_snapshot(
    paths: Sequence[str], header: ReadHeader, chunks: Sequence[StreamChunk]
) -> HostSnapshot:
    """Decode the stream, split it by the listed sizes and check every sha256 (TransferError if any differ)."""
    if header.errors:
        index, message = header.errors[0]
        raise PlanError(paths[index], message)
    text = ""
    for chunk in chunks:
        if chunk.total != header.first.total or chunk.included != header.first.included:
            raise TransferError("files changed while being read (the stream changed between commands)")
        if chunk.offset != len(text):
            raise TransferError(f"stream slice at {chunk.offset} does not follow {len(text)}")
        text += chunk.data
    if len(text) != header.first.total:
        raise TransferError(f"received {len(text)} of {header.first.total} stream characters")
    try:
        raw = gzip.decompress(base64.b64decode(text, validate=True)) if text else b""
    except (binascii.Error, OSError, EOFError, zlib.error) as exc:
        raise TransferError(f"the stream does not decode ({exc}); a file probably changed mid-read") from None
    by_index = {f.index: f for f in header.files}
    files: list[FileRead] = []
    pos = 0
    for index in header.first.included:
        meta = by_index[index]
        content = raw[pos : pos + meta.size]
        pos += meta.size
        if hashlib.sha256(content).hexdigest() != meta.sha256:
            raise TransferError(f"{paths[index]}: sha256 of the bytes received does not match the host's")
        files.append(FileRead(paths[index], content, meta.sha256, meta.owner, meta.mode))
    if pos != len(raw):
        raise TransferError("the stream is longer than the files listed (a file grew mid-read)")
    return HostSnapshot(tuple(files), tuple(paths[i] for i in header.missing), header.service)


def parse_hash_output(stdout: str, paths: Sequence[str]) -> dict[str, str | None]:
    """path → sha256, or None when missing; an unreadable file raises ProtocolError with its message."""
    out: dict[str, str | None] = {}
    for words in _lines(stdout, "hash"):
        if words[0] == "ERC-HASH" and len(words) == 3 and _SHA256.match(words[2]):
            out[paths[_index(words[1], len(paths))]] = words[2]
        elif words[0] == "ERC-MISSING" and len(words) == 2:
            out[paths[_index(words[1], len(paths))]] = None
        elif words[0] == "ERC-ERROR" and len(words) in (2, 3):
            path = paths[_index(words[1], len(paths))]
            raise ProtocolError(f"{path}: {_b64text(words[2]) if len(words) == 3 else 'error'}")
        else:
            raise ProtocolError(f"unexpected line in hash output: {' '.join(words)[:120]!r}")
    if set(out) != set(paths):
        raise ProtocolError("hash output does not cover every path")
    return out


# ------------------------------------------------------------------------------------------------ splices


@dataclass(frozen=True)
class Copy:
    """Bytes [start, start+length) of the original file."""

    start: int
    length: int


@dataclass(frozen=True)
class Data:
    """Literal new bytes (travel base64-encoded)."""

    content: bytes


Segment = Copy | Data


def splice_segments(old: bytes, new: bytes) -> tuple[Segment, ...]:
    """``new`` as copies of ``old`` line ranges plus literal lines, so a write script carries only the change."""
    a, b = old.splitlines(keepends=True), new.splitlines(keepends=True)
    head = 0
    while head < min(len(a), len(b)) and a[head] == b[head]:
        head += 1
    tail = 0
    while tail < min(len(a), len(b)) - head and a[-1 - tail] == b[-1 - tail]:
        tail += 1
    offsets = [0]
    for line in a:
        offsets.append(offsets[-1] + len(line))
    ops: list[tuple[str, int, int, int, int]] = [("equal", 0, head, 0, head)]
    matcher = difflib.SequenceMatcher(None, a[head : len(a) - tail], b[head : len(b) - tail], autojunk=False)
    ops.extend(
        (op, i1 + head, i2 + head, j1 + head, j2 + head) for op, i1, i2, j1, j2 in matcher.get_opcodes()
    )
    ops.append(("equal", len(a) - tail, len(a), len(b) - tail, len(b)))
    segments: list[Segment] = []
    for tag, i1, i2, j1, j2 in ops:
        if tag == "equal" and i2 > i1:
            start, length = offsets[i1], offsets[i2] - offsets[i1]
            last = segments[-1] if segments else None
            if isinstance(last, Copy) and last.start + last.length == start:
                segments[-1] = Copy(last.start, last.length + length)
            else:
                segments.append(Copy(start, length))
        elif tag != "equal" and j2 > j1:
            content = b"".join(b[j1:j2])
            if segments and isinstance(segments[-1], Data):
                segments[-1] = Data(segments[-1].content + content)
            else:
                segments.append(Data(content))
    result = tuple(segments)
    if apply_segments(old, result) != new:  # belt and braces: never ship a splice that does not rebuild `new`
        raise AssertionError("internal error: splice does not reproduce the new content")
    return result


def apply_segments(old: bytes, segments: Iterable[Segment]) -> bytes:
    """What the host's build function produces (the pure twin of the bash, for tests and self-checks)."""
    return b"".join(old[s.start : s.start + s.length] if isinstance(s, Copy) else s.content for s in segments)


# -------------------------------------------------------------------------------------------------- plans


@dataclass(frozen=True)
class FileChange:
    path: str
    old_sha256: str
    new_sha256: str
    segments: tuple[Segment, ...]
    diff: str


@dataclass(frozen=True)
class HostPlan:
    """What one host needs: changed files, the restarts they imply, verify and the local memcached action."""

    changes: tuple[FileChange, ...]
    files_after: tuple[tuple[str, str], ...]  # (path, sha256) of every present file once applied
    restarts: tuple[tuple[str, ...], ...]
    verify: tuple[str, ...] = ()
    memcached: Literal["disable", "enable"] | None = None
    summary: str = ""
    local_endpoints: LocalEndpoints = ()  # what the host result records once applied (see HostPushResult)

    @property
    def is_noop(self) -> bool:
        return not self.changes and self.memcached is None

    @property
    def diffs(self) -> tuple[tuple[str, str], ...]:
        return tuple((c.path, c.diff) for c in self.changes)


RestartFor = Callable[[str], Sequence[str]]


def _plan(
    snapshot: HostSnapshot,
    transform: Callable[[str, str], RewriteResult],
    *,
    restart_for: RestartFor,
    verify: Sequence[str],
    memcached: Literal["disable", "enable"] | None,
    remembered: Iterable[tuple[str, str, str]] = (),
    record_unless: str | None = None,
) -> HostPlan:
    """``record_unless`` (a push's ``localhost:PORT``) records the other local spellings the rewrite replaces.

    They go over ``remembered`` per (path, alias); an alias replaced from ``record_unless`` forgets an older
    spelling, so what is kept always is what the last push that moved that alias off local memcached saw.
    """
    spellings = {(path, alias): entry for path, alias, entry in remembered}
    changes: list[FileChange] = []
    after: list[tuple[str, str]] = []
    restarts: list[tuple[str, ...]] = []
    for file in snapshot.files:
        try:
            text = file.content.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PlanError(file.path, f"is not UTF-8 (byte {exc.start}); refusing to rewrite it") from None
        try:
            result = transform(file.path, text)
        except RewriteError as exc:
            raise PlanError(file.path, str(exc)) from None
        if not result.changed:
            after.append((file.path, file.sha256))
            continue
        if record_unless is not None:
            for alias, entry in result.replaced_local.items():
                spellings[(file.path, alias)] = entry
        new = result.text.encode("utf-8")
        new_sha = hashlib.sha256(new).hexdigest()
        changes.append(
            FileChange(
                file.path,
                file.sha256,
                new_sha,
                splice_segments(file.content, new),
                result.unified_diff(file.path),
            )
        )
        after.append((file.path, new_sha))
        argv = tuple(restart_for(file.path))
        if argv and argv not in restarts:
            restarts.append(argv)
    summary = ", ".join(c.path for c in changes) or "no file changes"
    return HostPlan(
        changes=tuple(changes),
        files_after=tuple(after),
        restarts=tuple(restarts),
        verify=tuple(verify) if changes else (),
        memcached=memcached,
        summary=summary,
        local_endpoints=tuple(sorted((p, a, e) for (p, a), e in spellings.items() if e != record_unless)),
    )


def plan_push(
    snapshot: HostSnapshot,
    *,
    endpoints: Sequence[str],
    replace: Collection[str] = (),
    port: int = 11211,
    restart_for: RestartFor,
    verify: Sequence[str] = (),
    disable_local_memcached: bool = False,
    local_endpoints: Iterable[tuple[str, str, str]] = (),
) -> HostPlan:
    """Re-point every memcached LOCATION that is local (or in ``replace``) at ``endpoints``.

    ``local_endpoints`` (the last result's) are carried into ``HostPlan.local_endpoints`` together with the
    local spellings this push replaces, other than ``localhost:port``.
    """
    service = snapshot.service
    action: Literal["disable"] | None = None
    if disable_local_memcached and service is not None and service.running_or_enabled:
        action = "disable"
    return _plan(
        snapshot,
        lambda _path, text: rewrite(text, to=endpoints, replace=replace, port=port),
        restart_for=restart_for,
        verify=verify,
        memcached=action,
        remembered=local_endpoints,
        record_unless=f"localhost:{port}",
    )


def plan_revert(
    snapshot: HostSnapshot,
    *,
    current: Collection[str] = (),
    port: int = 11211,
    restart_for: RestartFor,
    verify: Sequence[str] = (),
    enable_local_memcached: bool = False,
    local_endpoints: Iterable[tuple[str, str, str]] = (),
) -> HostPlan:
    """Point ``current`` endpoints (or every remote one) back at the local memcached.

    Each (path, alias) in ``local_endpoints`` (what the pushes recorded) gets its own spelling back, anything
    else ``localhost:port``; they are carried into ``HostPlan.local_endpoints`` unchanged.
    """
    remembered = tuple(local_endpoints)
    by_path = _by_path(remembered)
    service = snapshot.service
    action: Literal["enable"] | None = None
    if (
        enable_local_memcached
        and service is not None
        and service.exists
        and (service.enabled != "enabled" or service.active != "active")
    ):
        action = "enable"
    return _plan(
        snapshot,
        lambda path, text: revert(text, current=current, port=port, local=by_path.get(path)),
        restart_for=restart_for,
        verify=verify,
        memcached=action,
        remembered=remembered,
    )


def backup_timestamp(now: datetime) -> str:
    """``20261129T101500Z``: sorts chronologically, so pruning keeps the newest."""
    return now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


# ------------------------------------------------------------------------------------------- apply script

_APPLY_FUNCTIONS = """\
STEP_TIMEOUT={step_timeout}
TS={ts}
tmps=()
swapped=()
cleanup() {{ local t; for t in ${{tmps[@]+"${{tmps[@]}}"}}; do rm -f -- "$t"; done; }}
trap cleanup EXIT
erc_sha() {{ local s; s=$(sha256sum < "$1") || return 1; printf '%s' "${{s%% *}}"; }}
erc_copy() {{ dd if="$1" iflag=skip_bytes,count_bytes skip="$2" count="$3" bs=65536 status=none; }}
erc_data() {{ printf '%s' "$1" | base64 -d; }}
erc_fail() {{ printf 'ERC-FAIL %s\\n' "$(erc_msg "$1" 2000)"; }}
erc_run() {{
  local label=$1 out rc
  shift
  out=$(timeout -k 10 "$STEP_TIMEOUT" "$@" < /dev/null 2>&1)
  rc=$?
  printf 'ERC-STEP %s %s %s\\n' "$label" "$rc" "$(erc_msg "$out" {log_bytes})"
  return $rc
}}
erc_restore() {{
  local i ok=0 r
  for i in ${{swapped[@]+"${{swapped[@]}}"}}; do
    r=$(mktemp -- "${{paths[$i]}}.erc-tmp.XXXXXX") && tmps+=("$r") \\
      && cp -p -- "${{baks[$i]}}" "$r" && mv -f -- "$r" "${{paths[$i]}}" \\
      && [ "$(erc_sha "${{paths[$i]}}")" = "${{old[$i]}}" ] || {{ erc_fail "could not restore ${{paths[$i]}}"; ok=1; }}
  done
  return $ok
}}
erc_prune() {{
  local p=$1 n
  local -a found
  shopt -s nullglob
  found=("$p"{backup_glob})
  shopt -u nullglob
  n=$(( ${{#found[@]}} - {keep} ))
  if [ "$n" -gt 0 ]; then rm -f -- "${{found[@]:0:$n}}"; fi
}}
"""

_APPLY_CHECK = """\
# 1. compare-before-write: every file must still be what the operator read, before any is touched
conflict=0
for i in ${!paths[@]}; do
  p=${paths[$i]}
  if [ -L "$p" ] || [ ! -f "$p" ]; then cur=missing; else cur=$(erc_sha "$p") || cur=unreadable; fi
  if [ "$cur" != "${old[$i]}" ]; then echo "ERC-CONFLICT $i $cur"; conflict=1; fi
done
if [ "$conflict" != 0 ]; then echo "ERC-RESULT Conflict"; echo "ERC-END"; exit 3; fi

# 2. build each new file next to the old one (same owner and mode) and check its sha256
for i in ${!paths[@]}; do
  p=${paths[$i]}
  t=$(mktemp -- "$p.erc-tmp.XXXXXX") || { erc_fail "cannot create a temporary file next to $p"; echo "ERC-RESULT Failed"; echo "ERC-END"; exit 1; }
  tmps+=("$t")
  tmp[$i]=$t
  if ! out=$( { "erc_build_$i" "$p" > "$t"; } 2>&1 ); then
    erc_fail "cannot write the new $p: $out"; echo "ERC-RESULT Failed"; echo "ERC-END"; exit 1
  fi
  got=$(erc_sha "$t")
  if [ "$got" != "${new[$i]}" ]; then echo "ERC-CONFLICT $i rebuilt:$got"; echo "ERC-RESULT Conflict"; echo "ERC-END"; exit 3; fi
  if ! out=$( { chown --reference="$p" -- "$t" && chmod --reference="$p" -- "$t"; } 2>&1 ); then
    erc_fail "cannot copy owner/mode of $p: $out"; echo "ERC-RESULT Failed"; echo "ERC-END"; exit 1
  fi
done

# 3. last look, then back up (hard link: exact bytes, owner, mode, mtime) and rename into place
for i in ${!paths[@]}; do
  if [ "$(erc_sha "${paths[$i]}")" != "${old[$i]}" ]; then echo "ERC-CONFLICT $i changed"; echo "ERC-RESULT Conflict"; echo "ERC-END"; exit 3; fi
done
for i in ${!paths[@]}; do
  p=${paths[$i]}
  b="$p{suffix}$TS"; n=0
  while [ -e "$b" ]; do n=$((n + 1)); b="$p{suffix}$TS.$n"; done
  if ! ln -- "$p" "$b" 2>/dev/null && ! cp -p -- "$p" "$b"; then
    erc_fail "cannot back up $p"; echo "ERC-RESULT Failed"; echo "ERC-END"; exit 1
  fi
  baks[$i]=$b
  echo "ERC-BACKUP $i ${b#"$p{suffix}"}"
done
for i in ${!paths[@]}; do
  if mv -f -- "${tmp[$i]}" "${paths[$i]}"; then
    swapped+=("$i")
  else
    erc_fail "cannot rename the new ${paths[$i]} into place"
    if erc_restore; then echo "ERC-RESULT RolledBack"; echo "ERC-END"; exit 4; fi
    echo "ERC-RESULT Failed"; echo "ERC-END"; exit 5
  fi
done
echo "ERC-WROTE ${#swapped[@]}"
"""


def _build_function(index: int, segments: Sequence[Segment]) -> str:
    body = []
    for seg in segments:
        if isinstance(seg, Copy):
            body.append(f'  erc_copy "$1" {int(seg.start)} {int(seg.length)} || return 1')
        else:
            body.append(f"  erc_data {_q(base64.b64encode(seg.content).decode('ascii'))} || return 1")
    body.append("  return 0")
    return f"erc_build_{index}() {{\n" + "\n".join(body) + "\n}"


def _restart_function(name: str, label: str, restarts: Sequence[Sequence[str]], *, keep_going: bool) -> str:
    """Restarts in order; a push stops at the first failure, a rollback tries every one (best effort)."""
    on_error = "rc=1" if keep_going else "return 1"
    calls = [f"  erc_run {label}.{n} {_argv(argv)} || {on_error}" for n, argv in enumerate(restarts)]
    return f"{name}() {{\n" + "\n".join(["  local rc=0", *calls, "  return $rc"]) + "\n}"


_APPLY_RESTART = """\
# 4. restart what reads the changed files, verify; on failure restore the exact original bytes and restart
if ! erc_restart || ! erc_verify; then
  if erc_restore; then
    erc_rollback_restart || echo "ERC-WARN $(erc_msg "restart after restoring the backups failed")"
    echo "ERC-RESULT RolledBack"; echo "ERC-END"; exit 4
  fi
  echo "ERC-RESULT Failed"; echo "ERC-END"; exit 5
fi
for p in "${paths[@]}"; do erc_prune "$p"; done
"""


def render_apply_script(
    plan: HostPlan,
    *,
    timestamp: str,
    step_timeout: int = STEP_TIMEOUT_SECONDS,
    systemctl: Sequence[str] = SYSTEMCTL,
    unit: str = LOCAL_MEMCACHED_UNIT,
) -> str:
    """The one script that writes, restarts, verifies and rolls back a host; raises if over the size cap."""
    if not re.fullmatch(r"\d{8}T\d{6}Z", timestamp):
        raise ValueError(f"bad backup timestamp {timestamp!r}")
    n_steps = 2 * len(plan.restarts) + (1 if plan.verify else 0) + 2
    log_bytes = max(200, min(2000, 12_000 // n_steps))
    systemctl_q, unit_q = _argv(systemctl), _q(unit)
    parts = [
        _prelude("apply"),
        _bash_array("paths", (_check_path(c.path) for c in plan.changes)),
        _bash_array("old", (c.old_sha256 for c in plan.changes)),
        _bash_array("new", (c.new_sha256 for c in plan.changes)),
        "declare -a tmp=() baks=()",
        _APPLY_FUNCTIONS.format(
            step_timeout=int(step_timeout),
            ts=_q(timestamp),
            log_bytes=log_bytes,
            backup_glob=BACKUP_SUFFIX + "*",
            keep=int(KEEP_BACKUPS),
        ),
        *(_build_function(i, c.segments) for i, c in enumerate(plan.changes)),
        _restart_function("erc_restart", "restart", plan.restarts, keep_going=False),
        _restart_function("erc_rollback_restart", "rollback", plan.restarts, keep_going=True),
        f"erc_verify() {{ erc_run verify {_argv(plan.verify)}; }}"
        if plan.verify
        else "erc_verify() { return 0; }",
    ]
    if plan.memcached == "enable":  # revert: bring local memcached back before the hosts point at it
        parts.append(
            f"erc_run memcached.enable {systemctl_q} enable {unit_q} && "
            f"erc_run memcached.start {systemctl_q} start {unit_q} || "
            'echo "ERC-WARN $(erc_msg "could not re-enable the local memcached")"'
        )
    if plan.changes:
        parts.append(_APPLY_CHECK.replace("{suffix}", BACKUP_SUFFIX))
        parts.append(_APPLY_RESTART)
    if plan.memcached == "disable":  # after a verified push: the hosts no longer need their own memcached
        parts.append(
            f"erc_run memcached.stop {systemctl_q} stop {unit_q} && "
            f"erc_run memcached.disable {systemctl_q} disable {unit_q} || "
            'echo "ERC-WARN $(erc_msg "could not stop and disable the local memcached")"'
        )
    parts.append('echo "ERC-RESULT Configured"\necho "ERC-END"\nexit 0\n')
    script = "\n".join(parts)
    if len(script) > MAX_SCRIPT_CHARS:
        raise PlanError(
            plan.changes[0].path if plan.changes else "-",
            f"the change needs a {len(script)}-character script, over the {MAX_SCRIPT_CHARS} a command may carry",
        )
    return script


def execution_timeout(plan: HostPlan, step_timeout: int = STEP_TIMEOUT_SECONDS) -> int:
    """Seconds the apply script may run: every step at its limit, plus slack for the file work."""
    steps = 2 * len(plan.restarts) + (1 if plan.verify else 0) + (2 if plan.memcached else 0)
    return int(steps * (step_timeout + 10) + 60)


@dataclass(frozen=True)
class StepLog:
    label: str
    exit_code: int
    output: str


@dataclass(frozen=True)
class ApplyOutcome:
    state: HostState
    steps: tuple[StepLog, ...] = ()
    conflicts: tuple[tuple[str, str], ...] = ()  # (path, what the host has now)
    backups: tuple[tuple[str, str], ...] = ()  # (path, backup path)
    warnings: tuple[str, ...] = ()
    failures: tuple[str, ...] = ()
    message: str = field(default="")


def _describe_step(step: StepLog, restarts: Sequence[Sequence[str]], verify: Sequence[str]) -> str:
    kind, _, n = step.label.partition(".")
    argv: Sequence[str] = ()
    if kind in ("restart", "rollback") and n.isdigit() and int(n) < len(restarts):
        argv = restarts[int(n)]
    elif kind == "verify":
        argv = verify
    what = shlex.join(argv) if argv else step.label
    reason = "timed out" if step.exit_code in (124, 137) else f"exit {step.exit_code}"
    output = step.output.strip()
    return f"`{what}` failed ({reason})" + (f": {output[-600:]}" if output else "")


def parse_apply_output(stdout: str, plan: HostPlan, *, exit_code: int | None = None) -> ApplyOutcome:
    """Turn the apply script's lines into a host state and a message a person can act on."""
    paths = [c.path for c in plan.changes]
    try:
        lines = _lines(stdout, "apply")
    except ProtocolError as exc:
        return ApplyOutcome("Failed", message=f"{exc} (exit code {exit_code})")
    steps: list[StepLog] = []
    conflicts: list[tuple[str, str]] = []
    backups: list[tuple[str, str]] = []
    warnings: list[str] = []
    failures: list[str] = []
    state: str | None = None
    for words in lines:
        tag = words[0]
        if tag == "ERC-STEP" and len(words) in (3, 4):
            steps.append(StepLog(words[1], int(words[2]), _b64text(words[3]) if len(words) == 4 else ""))
        elif tag == "ERC-CONFLICT" and len(words) == 3:
            conflicts.append((paths[_index(words[1], len(paths))], words[2]))
        elif tag == "ERC-BACKUP" and len(words) == 3:
            path = paths[_index(words[1], len(paths))]
            backups.append((path, path + BACKUP_SUFFIX + words[2]))
        elif tag == "ERC-WARN" and len(words) == 2:
            warnings.append(_b64text(words[1]))
        elif tag == "ERC-FAIL" and len(words) == 2:
            failures.append(_b64text(words[1]))
        elif tag == "ERC-RESULT" and len(words) == 2 and words[1] in HOST_STATES:
            state = words[1]
        elif tag == "ERC-WROTE":
            continue
        else:
            return ApplyOutcome(
                "Failed", message=f"unexpected line in apply output: {' '.join(words)[:120]!r}"
            )
    if state is None:
        return ApplyOutcome("Failed", message=f"apply script reported no result (exit code {exit_code})")
    failed_steps = [s for s in steps if s.exit_code != 0 and not s.label.startswith("memcached.")]
    memcached_failed = [s for s in steps if s.exit_code != 0 and s.label.startswith("memcached.")]
    parts: list[str] = []
    if state == "Conflict":
        parts.append(
            "changed on the host since it was read, nothing written: "
            + ", ".join(f"{p} (now {w[:12]})" for p, w in conflicts)
        )
    elif state in ("RolledBack", "Failed"):
        parts.extend(_describe_step(s, plan.restarts, plan.verify) for s in failed_steps[:1])
        parts.extend(failures)
        if state == "RolledBack":
            parts.append(f"restored {len(backups)} file(s) from backup and restarted")
    parts.extend(_describe_step(s, plan.restarts, plan.verify) for s in memcached_failed)
    parts.extend(warnings)
    return ApplyOutcome(
        state=state,  # type: ignore[arg-type]
        steps=tuple(steps),
        conflicts=tuple(conflicts),
        backups=tuple(backups),
        warnings=tuple(warnings),
        failures=tuple(failures),
        message="; ".join(parts),
    )
