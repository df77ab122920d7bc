"""The read: each managed file's sha256, owner, mode and memcached value nodes, located ON the host.

Why: the config files hold the site's secrets and SSM keeps every command's output in its invocation history
(and copies it to S3/CloudWatch where output delivery is configured). So the file is parsed where it lives,
by the rewrite engine's own locator (``domain/rewrite/locate.py``, sent verbatim with
:mod:`edx_remote_cache.domain.hosts.hostside`), and only each value node's byte range and text come back: a
few hundred bytes per file whatever its size (a 1 MiB lms.yml took 2.4 s and ~60 chunked commands before).

The script needs a Python >= 3.8 with PyYAML: the system ``python3`` (cloud-init depends on both on Ubuntu)
or the edxapp virtualenv's. Without one it reads nothing and says what it tried (:attr:`HostSnapshot.no_python`).
"""

from __future__ import annotations

import base64
import binascii
import functools
import importlib.resources
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edx_remote_cache.domain.hosts.protocol import (
    _SHA256,
    MAX_FILE_BYTES,
    MAX_SCRIPT_CHARS,
    SYSTEMCTL,
    ProtocolError,
    _argv,
    _b64text,
    _check_path,
    _index,
    _lines,
    _prelude,
    _q,
)
from edx_remote_cache.domain.rewrite.locate import Skipped, Target

__all__ = [
    "EDXAPP_PYTHON",
    "FileRead",
    "HostSnapshot",
    "ServiceState",
    "host_program",
    "parse_read_output",
    "python_finder",
    "render_read_script",
]

EDXAPP_PYTHON = "/edx/app/edxapp/venvs/edxapp/bin/python"
PYTHONS: tuple[str, ...] = ("python3", EDXAPP_PYTHON)  # tried in this order
_NOT_ON_HOST = "# erc: not on the host"
_HEREDOC_END = "ERC_PY_END"


@functools.cache
def host_program() -> str:
    """``locate.py`` then ``hostside.py``, both verbatim but for the lines marked ``# erc: not on the host``.

    Reading two of our own package's source files is the only I/O here (once per process): it is what makes
    the host run byte for byte the code the operator's engine runs.
    """
    parts = []
    for package, name in (
        ("edx_remote_cache.domain.rewrite", "locate.py"),
        ("edx_remote_cache.domain.hosts", "hostside.py"),
    ):
        source = importlib.resources.files(package).joinpath(name).read_text(encoding="utf-8")
        if name == "hostside.py":
            source = "\n".join(line for line in source.splitlines() if not line.endswith(_NOT_ON_HOST))
        parts.append(source)
    program = "\n\n".join(parts) + "\n"
    if any(line.strip() == _HEREDOC_END for line in program.splitlines()):
        raise AssertionError(f"the host program contains the heredoc terminator {_HEREDOC_END}")
    return program


def python_finder(*, on_missing: str) -> str:
    """Bash that sets ``erc_py`` to the first Python >= 3.8 with PyYAML, and ``ERC_SRC`` to the program.

    ``on_missing`` runs when there is none, after an ``ERC-NOPYTHON`` line saying what each candidate lacks.
    """
    return f"""\
erc_py=""
erc_why=""
for c in {" ".join(_q(p) for p in PYTHONS)}; do
  if ! command -v "$c" >/dev/null 2>&1; then erc_why+="${{erc_why:+; }}$c: not found"; continue; fi
  if ! "$c" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 8) else 3)' >/dev/null 2>&1; then
    erc_why+="${{erc_why:+; }}$c: older than Python 3.8"; continue
  fi
  if "$c" -c 'import yaml' >/dev/null 2>&1; then erc_py=$c; break; fi
  erc_why+="${{erc_why:+; }}$c: no PyYAML (import yaml fails)"
done
if [ -z "$erc_py" ]; then
  echo "ERC-NOPYTHON $(erc_msg "$erc_why" 800)"
  {on_missing}
fi
ERC_SRC=$(cat <<'{_HEREDOC_END}'
{host_program()}{_HEREDOC_END}
)
"""


def _spec(value: Mapping[str, Any]) -> str:
    """One shell word: base64 of compact JSON (the host program's only argument)."""
    return base64.b64encode(json.dumps(value, separators=(",", ":")).encode("utf-8")).decode("ascii")


def render_read_script(
    paths: Sequence[str],
    *,
    max_file_bytes: int = MAX_FILE_BYTES,
    service: str | None = None,
    systemctl: Sequence[str] = SYSTEMCTL,
) -> str:
    """One command: per path its sha256/owner/mode/size and value nodes (or missing / refused / unparsable).

    ``service`` (a systemd unit) also reports its active/enabled state, for disableLocalMemcached.
    """
    for path in paths:
        _check_path(path)
    parts = [
        _prelude("read"),
        python_finder(on_missing='echo "ERC-END"; exit 0'),
        f'"$erc_py" -c "$ERC_SRC" read {_spec({"paths": list(paths), "max_bytes": int(max_file_bytes)})} '
        '|| echo "ERC-FAIL $(erc_msg "the reader exited with status $?")"',
    ]
    if service is not None:
        unit = _q(service)
        parts.append(f"""\
if command -v {_q(systemctl[0])} >/dev/null 2>&1; then
  active=$({_argv(systemctl)} is-active {unit} 2>/dev/null | head -n1 | tr -cd 'a-z-')
  enabled=$({_argv(systemctl)} is-enabled {unit} 2>/dev/null | head -n1 | tr -cd 'a-z-')
  echo "ERC-SERVICE ${{active:-unknown}} ${{enabled:-unknown}}"
fi
""")
    parts.append('echo "ERC-END"\n')
    script = "\n".join(parts)
    if len(script) > MAX_SCRIPT_CHARS:
        raise ValueError(f"the read script is {len(script)} characters, over the {MAX_SCRIPT_CHARS} allowed")
    return script


# --------------------------------------------------------------------------------------- output parsing


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
class ParseProblem:
    """Why the host's locator refused a file: where, and PyYAML's/the locator's problem with quotes redacted."""

    line: int
    column: int
    problem: str

    def describe(self, path: str) -> str:
        where = f"line {self.line}, column {self.column}" if self.column else f"line {self.line}"
        return f"{path}: {where}: {self.problem}" if self.line else f"{path}: {self.problem}"


@dataclass(frozen=True)
class FileRead:
    """One present file as the host saw it: metadata and value nodes (``Target`` offsets are BYTES here)."""

    path: str
    sha256: str
    owner: str  # uid:gid
    mode: str  # octal permission bits, as stat %a prints them
    size: int
    targets: tuple[Target, ...] = ()
    skipped: tuple[Skipped, ...] = ()
    link_target: str | None = None  # the file a symlink at ``path`` points to (edited in its place)


@dataclass(frozen=True)
class HostSnapshot:
    files: tuple[FileRead, ...]
    missing: tuple[str, ...] = ()
    service: ServiceState | None = None
    errors: tuple[tuple[str, str], ...] = ()  # (path, why it cannot be read): the host is refused
    no_python: str = ""  # what each Python candidate lacks, when none can run the reader
    failure: str = ""  # the reader itself failed (its own message, never file content)


def _json(value: str) -> Any:
    try:
        return json.loads(base64.b64decode(value, validate=True).decode("utf-8"))
    except (binascii.Error, ValueError) as exc:
        raise ProtocolError(f"undecodable field in read output: {exc}") from None


def _target(data: Mapping[str, Any]) -> Target:
    try:
        return Target(
            paths=tuple(str(p) for p in data["paths"]),
            key_lines=tuple(int(n) for n in data["key_lines"]),
            kind=str(data["kind"]),
            shape=str(data["shape"]),
            start=int(data["start"]),
            end=int(data["end"]),
            line=int(data["line"]),
            column=int(data["column"]),
            source=str(data["source"]),
            entries=tuple(str(e) for e in data["entries"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"bad ERC-NODE record: {type(exc).__name__}") from None


def parse_read_output(stdout: str, paths: Sequence[str]) -> HostSnapshot:
    """The read script's lines, checked: every present file is listed once, nodes only for listed files."""
    files: dict[int, dict[str, Any]] = {}
    missing: list[int] = []
    errors: list[tuple[str, str]] = []
    service: ServiceState | None = None
    no_python = failure = ""
    n = len(paths)
    for words in _lines(stdout, "read"):
        tag = words[0]
        if tag == "ERC-FILE" and len(words) == 6:
            sha, owner, mode, size = words[2:]
            if not _SHA256.match(sha) or not re.fullmatch(r"\d+:\d+", owner) or not size.isdigit():
                raise ProtocolError(f"bad ERC-FILE line: {' '.join(words)!r}")
            index = _index(words[1], n)
            files[index] = {"sha256": sha, "owner": owner, "mode": mode, "size": int(size), "targets": []}
            files[index]["skipped"] = []
        elif tag in ("ERC-NODE", "ERC-SKIP", "ERC-LINK") and len(words) == 3:
            index = _index(words[1], n)
            if index not in files:
                raise ProtocolError(f"{tag} for a file that was not listed")
            if tag == "ERC-NODE":
                files[index]["targets"].append(_target(_json(words[2])))
            elif tag == "ERC-SKIP":
                item = _json(words[2])
                files[index]["skipped"].append(
                    Skipped(str(item["path"]), int(item["line"]), str(item["reason"]))
                )
            else:
                files[index]["link_target"] = _b64text(words[2])
        elif tag == "ERC-PARSE" and len(words) == 5 and words[2].isdigit() and words[3].isdigit():
            index = _index(words[1], n)
            errors.append(
                (
                    paths[index],
                    ParseProblem(int(words[2]), int(words[3]), _b64text(words[4])).describe(paths[index]),
                )
            )
        elif tag == "ERC-MISSING" and len(words) == 2:
            missing.append(_index(words[1], n))
        elif tag == "ERC-ERROR" and len(words) in (2, 3):
            index = _index(words[1], n)
            errors.append(
                (paths[index], f"{paths[index]} {_b64text(words[2]) if len(words) == 3 else 'error'}")
            )
        elif tag == "ERC-SERVICE" and len(words) == 3:
            service = ServiceState(words[1], words[2])
        elif tag == "ERC-NOPYTHON" and len(words) in (1, 2):
            no_python = _b64text(words[1]) if len(words) == 2 else "no python"
        elif tag == "ERC-FAIL" and len(words) == 2:
            failure = _b64text(words[1])
        else:
            raise ProtocolError(f"unexpected line in read output: {' '.join(words)[:120]!r}")
    reads = tuple(
        FileRead(
            paths[i],
            f["sha256"],
            f["owner"],
            f["mode"],
            f["size"],
            tuple(f["targets"]),
            tuple(f["skipped"]),
            f.get("link_target"),
        )
        for i, f in sorted(files.items())
    )
    return HostSnapshot(reads, tuple(paths[i] for i in missing), service, tuple(errors), no_python, failure)
