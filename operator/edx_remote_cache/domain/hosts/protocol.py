"""What every host script shares: size limits, bash quoting, the ERC line protocol and its errors.

Nothing from the spec or the host is ever interpolated unquoted: paths and argv words go through
:func:`shlex.quote` (the spec validates them too); numbers are formatted from ints. Output is a line protocol
(``ERC-…``) whose free-text fields are base64, so a hostile file name or command output cannot forge a line.
"""

from __future__ import annotations

import base64
import binascii
import posixpath
import re
import shlex
from collections.abc import Iterable, Sequence

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


class ProtocolError(ValueError):
    """Script output that does not follow the ERC line protocol (truncated, or not our script)."""


class PlanError(ValueError):
    """A file the rewrite engine refuses (malformed YAML, unsupported LOCATION shape, bad endpoint)."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        super().__init__(f"{path}: {message}")


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
