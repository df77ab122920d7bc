"""Read scripts and their output.

Reads fit SSM's 24,000-character stdout cap: every existing file is concatenated, gzipped and base64-encoded.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from edx_remote_cache.domain.hosts.protocol import (
    _HEADER_CHARS_PER_FILE,
    _OUTPUT_MARGIN,
    _SHA256,
    MAX_FILE_BYTES,
    SSM_STDOUT_LIMIT,
    SYSTEMCTL,
    PlanError,
    ProtocolError,
    TransferError,
    _argv,
    _b64text,
    _bash_array,
    _check_path,
    _index,
    _lines,
    _prelude,
    _q,
)

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
