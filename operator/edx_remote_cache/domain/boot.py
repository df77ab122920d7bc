"""Boot failures: what a cache host that never answered says about itself, and how often to try again. PURE.

A cache host whose memcached never starts used to be replaced again and again up to the replacement limit, and
the Open edX hosts were pointed at each dead instance in turn: a new instance from the same spec fails the
same way. So a host that has not answered since it started is not healed like a cache that died; the operator
reads what it printed at boot (EC2's console output, which needs no agent, and with SSM memcached's journal and
cloud-init's log), puts the last meaningful lines in the condition message (reason `BootFailed`), and replaces
it at most once per spec generation (`BootLedger`, kept in `status.progress.boot`).

Everything here takes text and returns values; the adapters (adapters/aws/console.py, SSM) fetch the text.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "BOOT_LOG_LIMIT_BYTES",
    "BootDiagnosis",
    "BootLedger",
    "decode_console_output",
    "diagnose",
    "meaningful_lines",
    "render_boot_log_script",
    "split_boot_log",
]

# What the SSM command may print (journal + cloud-init log): the diagnosis needs the tail, not the whole boot.
BOOT_LOG_LIMIT_BYTES = 8000
JOURNAL_MARK = "ERC-JOURNAL"
CLOUD_INIT_MARK = "ERC-CLOUD-INIT"
END_MARK = "ERC-END"
MAX_LINES = 4  # lines quoted in the condition message
MAX_LINE_CHARS = 220

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# "[   12.345678] " (kernel / serial console), "cloud-init[1234]: ", a syslog/journal prefix
# "Jul 01 10:00:08 ip-10-0-1-5 memcached[2345]: ", cloud-init's own "2024-07-01 10:00:08,123 - "
_KERNEL_STAMP = re.compile(r"^\[\s*\d+\.\d+\]\s*")
_JOURNAL_PREFIX = re.compile(
    r"^(?:[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d|\d{4}-\d\d-\d\dT[\d:.+-]+)\s+\S+\s+([\w.@-]+)(?:\[\d+\])?:\s*"
)
_TAG_PREFIX = re.compile(r"^([\w.@-]+)\[\d+\]:\s*")
_PY_LOG_PREFIX = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ - ")

# (cause, pattern): the first cause found names the diagnosis; lines are quoted in this order of weight
_MEMCACHED = (
    r"failed to listen on|Address already in use|Cannot assign requested address|failed to (?:bind|set|create)|"
    r"Cannot set item size|Factor must be greater|Item max size cannot|can't run as root|"
    r"Illegal (?:argument|suboption)|Invalid value for|failed to (?:open|write) (?:the )?pid|"
    r"Cannot (?:enable|set|allocate)|(?:^|\W)memcached: .*(?:error|invalid|cannot|failed)"
)
_MIRROR = (
    r"Temporary failure resolving|Could not resolve|Unable to locate package|Could not connect to|"
    r"Network is unreachable|Connection timed out|connection timed out|Unable to fetch some archives|"
    r"Failed to fetch|Some index files failed to download|Package '\S+' has no installation candidate|"
    r"Version '\S+' for '\S+' was not found"
)
_SYSTEMD = (
    r"Failed to start memcached|memcached\.service: (?:Main process exited|Failed with result|"
    r"Start request repeated)|Unit memcached\.service not found|Job for memcached\.service failed"
)
_CLOUD_INIT = r"no private IPv4 from IMDS|Failed to run module scripts.user|scripts.user.*failed|^E: "
# The boot is over: what the logs say then is the outcome, not a step a retry (another mirror) may still fix
_ENDED = re.compile(
    r"Cloud-init v\. \S+ finished|Failed to run module scripts.user|Failed to start memcached|"
    r"memcached\.service: Failed with result"
)
RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("memcached", re.compile(_MEMCACHED, re.IGNORECASE)),
    ("package-mirror", re.compile(_MIRROR)),
    ("memcached-unit", re.compile(_SYSTEMD)),
    ("user-data", re.compile(_CLOUD_INIT)),
)
CAUSES = {
    "memcached": "memcached refused to start",
    "package-mirror": (
        "apt could not reach a package mirror (the subnet has no route to one: give it a NAT gateway, or an "
        "Ubuntu mirror reachable from the VPC), so memcached was never installed"
    ),
    "memcached-unit": "the memcached service failed to start",
    "user-data": "the cache host's user-data script failed",
}


def decode_console_output(output: str | None) -> str:
    """EC2 GetConsoleOutput's `Output`: base64 on the wire, absent until the instance has written some.

    botocore decodes it already; a log line has spaces and newlines, which strict base64 refuses, so text that
    arrives decoded is returned as is.
    """
    if not output:
        return ""
    try:
        raw = base64.b64decode(output, validate=True)
    except (binascii.Error, ValueError):
        return output
    return raw.decode("utf-8", errors="replace")


def _clean(line: str) -> tuple[str, str]:
    """A log line without its stamps and prefixes, and the program that wrote it ("" when unknown)."""
    line = _ANSI.sub("", line).replace("\r", "").strip()
    line = _KERNEL_STAMP.sub("", line)
    program = ""
    for prefix in (_JOURNAL_PREFIX, _TAG_PREFIX):
        match = prefix.match(line)
        if match:
            program, line = match.group(1), line[match.end() :]
    line = _PY_LOG_PREFIX.sub("", line).strip()
    return line, program


def meaningful_lines(text: str) -> list[tuple[str, str]]:
    """(cause, line) for every line of a boot log that says why memcached is not serving, in log order.

    memcached's own messages win wherever they appear (the journal tags them `memcached[pid]` or
    `systemd-memcached-wrapper[pid]`); then apt's, systemd's and the user-data script's. Kernel chatter,
    `ci-info` tables and apt progress are never quoted.
    """
    out: list[tuple[str, str]] = []
    for raw in text.splitlines():
        line, program = _clean(raw)
        if not line or line.startswith("ci-info"):
            continue
        cause = next((c for c, pattern in RULES if pattern.search(line)), "")
        if not cause and "memcached" in program and program != "systemd":
            cause = "memcached"  # whatever memcached itself printed to its journal
        if cause:
            out.append((cause, line[:MAX_LINE_CHARS]))
    return out


@dataclass(frozen=True)
class BootDiagnosis:
    """Why a cache host never answered, as far as its boot logs tell."""

    instance_id: str
    lines: tuple[str, ...]  # the last meaningful lines, memcached's own first
    cause: str  # a key of CAUSES, or "" when nothing in the logs explains it
    read: tuple[str, ...]  # which logs were read ("console output", "memcached journal", ...)
    unread: tuple[str, ...] = ()  # and which could not be ("console output: not available yet", ...)
    ended: bool = False  # the logs show the boot is over (cloud-init finished or failed, the unit failed)

    @property
    def conclusive(self) -> bool:
        """A failure known before any grace period: memcached itself refused to start, or the boot ended with a
        cause on record. apt's complaints while cloud-init still runs are not (a later mirror may answer)."""
        return self.cause == "memcached" or (bool(self.cause) and self.ended)

    def message(self, endpoint: str, waited_seconds: float) -> str:
        """The condition message: what failed, memcached's (or apt's) own words, where they came from."""
        head = f"{self.instance_id} ({endpoint}) has not answered since it started {waited_seconds:.0f} s ago"
        if self.cause:
            head += f": {CAUSES[self.cause]}"
        if self.lines:
            quoted = " | ".join(self.lines)
            where = f" (from its {', '.join(self.read)})" if self.read else ""
            body = f'; last boot lines{where}: "{quoted}"'
        else:
            body = "; its boot logs say nothing about memcached"
            if self.read:
                body += f" (read: {', '.join(self.read)})"
        if self.unread:
            body += f"; not read: {', '.join(self.unread)}"
        return head + body


def diagnose(
    instance_id: str,
    *,
    console: str | None,
    journal: str | None = None,
    cloud_init: str | None = None,
    ssm_unavailable: str = "",
) -> BootDiagnosis:
    """The diagnosis from what could be read (None: that log could not be read; "": read, empty).

    The lines of the weightiest cause come first (memcached's own words before apt's, systemd's or the
    script's), the last of each: a boot log ends with the failure, and an early transient warning (one mirror
    of several) is not the cause. The console output repeats cloud-init's log on Ubuntu's EC2 images, so the
    same line from both is quoted once.
    """
    sources = (("memcached journal", journal), ("cloud-init log", cloud_init), ("console output", console))
    found: list[tuple[str, str]] = []
    for _, text in sources:
        found += meaningful_lines(text or "")
    read = tuple(name for name, text in sources if text is not None)
    unread: list[str] = []
    if console is not None and not console.strip():
        unread.append("console output: not available yet")
    elif console is None:
        unread.append("console output: could not be read")
    if journal is None and ssm_unavailable:
        unread.append(f"journal and cloud-init log: {ssm_unavailable}")
    cause = next((c for c, _ in RULES if any(f == c for f, _ in found)), "")
    own = _unique_tail(line for c, line in found if c == cause)
    others = _unique_tail(line for c, line in found if c != cause)
    lines = tuple(dict.fromkeys([*own, *others]))[:MAX_LINES]
    ended = any(_ENDED.search(text or "") for _, text in sources)
    return BootDiagnosis(instance_id, lines, cause, read, tuple(unread), ended)


def _unique_tail(lines: Iterable[str], keep: int = MAX_LINES) -> list[str]:
    """The last `keep` distinct lines, in log order."""
    out: list[str] = []
    for line in reversed(list(lines)):
        if line not in out:
            out.append(line)
        if len(out) == keep:
            break
    return list(reversed(out))


def render_boot_log_script() -> str:
    """Read-only SSM command: memcached's journal and the tail of cloud-init's output log, bounded.

    Runs on the cache host only (never on an Open edX host); prints nothing of any other file.
    """
    limit = BOOT_LOG_LIMIT_BYTES // 2
    return (
        "#!/bin/bash\n"
        "# edx-remote-cache boot diagnosis (read-only)\n"
        f"echo {JOURNAL_MARK}\n"
        f"journalctl -u memcached -n 50 --no-pager 2>&1 | tail -c {limit}\n"
        f"echo {CLOUD_INIT_MARK}\n"
        f"tail -n 50 /var/log/cloud-init-output.log 2>&1 | tail -c {limit}\n"
        f"echo {END_MARK}\n"
    )


def split_boot_log(stdout: str) -> tuple[str | None, str | None]:
    """(journal, cloud-init log) from the script's output; None for a part that is missing (cut short)."""
    parts: dict[str, list[str]] = {}
    current: str | None = None
    for line in stdout.splitlines():
        if line in (JOURNAL_MARK, CLOUD_INIT_MARK, END_MARK):
            current = line if line != END_MARK else None
            if current is not None:
                parts[current] = []
            continue
        if current is not None:
            parts[current].append(line)
    journal, cloud_init = parts.get(JOURNAL_MARK), parts.get(CLOUD_INIT_MARK)
    return (
        "\n".join(journal) if journal is not None else None,
        "\n".join(cloud_init) if cloud_init is not None else None,
    )


@dataclass(frozen=True)
class BootLedger:
    """`status.progress.boot`: the instances replaced for a boot failure under one spec generation.

    A new instance from the same spec fails the same way, so one replacement per generation is all a boot
    failure gets (it rules out a bad instance or a one-off mirror outage); then the object is Stalled until the
    spec changes. Kept in status so an operator restart does not start the count over.
    """

    generation: int = 0
    replaced: tuple[str, ...] = ()

    @classmethod
    def of(cls, progress: Mapping[str, Any] | None) -> BootLedger:
        boot = (progress or {}).get("boot") or {}
        return cls(int(boot.get("generation") or 0), tuple(str(i) for i in boot.get("replaced") or ()))

    def to_status(self) -> dict[str, Any] | None:
        return {"generation": self.generation, "replaced": list(self.replaced)} if self.replaced else None

    def may_replace(self, generation: int, *, allowed: int = 1) -> bool:
        """Whether a boot failure under `generation` may still be answered with a replacement."""
        return self.generation != generation or len(self.replaced) < allowed

    def after_replacing(self, instance_id: str, generation: int) -> BootLedger:
        if self.generation != generation:
            return BootLedger(generation, (instance_id,))
        return BootLedger(generation, tuple(dict.fromkeys((*self.replaced, instance_id))))
