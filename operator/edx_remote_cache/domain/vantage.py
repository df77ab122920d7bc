"""Whose view of a cache to believe before a destructive action: the second opinion and the breaker. PURE.

The operator probes every cache from its own network position. That position is the one most likely to be
wrong: a fresh EKS install whose pods a network ACL keeps out, a partitioned node. Judged from there alone, a
healthy cache looks dead, and the healing ladder restarts it (flushing it), replaces it and rewrites every Open
edX host: measured on the sandbox, a blocked path cost a restart at +5 s and two replacements by +28 s.

So before anything destructive the operator asks the cache host itself, over SSM (an API path, not the VPC
path that failed): ``systemctl is-active memcached`` and memcached's own ``stats`` on its private address, with
bash's ``/dev/tcp`` and coreutils ``timeout`` (nothing to install on the host). This module renders that script,
reads its answer (:class:`HostOpinion`), and holds the breaker: when at least half (and at least 2) of a
region's endpoints turn unhealthy within one probe window, the observer is more likely broken than the caches
(Kubernetes' node lifecycle controller stops evicting for the same reason), so destructive healing in that
region waits until each failure is confirmed by its own host.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = [
    "OPINION_TIMEOUT_SECONDS",
    "BreakerVerdict",
    "Doubt",
    "HostOpinion",
    "breaker_trips",
    "parse_opinion",
    "render_opinion_script",
]

OPINION_TIMEOUT_SECONDS = 3  # the host's own `stats` round trip; memcached answers in well under 1 ms locally
_DETAIL_BYTES = 200


@dataclass(frozen=True)
class HostOpinion:
    """What the cache host says about its own memcached.

    ``verdict`` is "answers" (stats answered on the private address), "wedged" (the unit is active but stats
    timed out: SIGSTOPped, deadlocked, out of connections) or "down" (the unit is failed / inactive, or the port
    refuses). ``asked`` is False when the host could not be asked (agent offline, SSM error): no confirmation
    either way.
    """

    verdict: str  # "answers" | "wedged" | "down" | "unknown"
    unit: str = "unknown"  # systemd's ActiveState word for memcached.service
    uptime_seconds: int | None = None
    detail: str = ""  # why it did not answer (the host's own error text), or why it could not be asked

    @property
    def asked(self) -> bool:
        return self.verdict != "unknown"

    @property
    def answers(self) -> bool:
        return self.verdict == "answers"

    @property
    def confirms_failure(self) -> bool:
        """The host itself says memcached is down or wedged: a restart (then a replacement) is justified."""
        return self.verdict in ("down", "wedged")

    def describe(self) -> str:
        """For condition messages: no uptime or timings, so an unchanged world keeps an unchanged status."""
        if self.verdict == "answers":
            return f"memcached answers on the cache host itself (systemd {self.unit})"
        if self.verdict == "unknown":
            return f"the cache host could not be asked ({self.detail or 'no answer'})"
        return f"the cache host says memcached is {self.verdict} (systemd {self.unit}; {self.detail or '-'})"


@dataclass(frozen=True)
class Doubt:
    """Why CacheHealthy is Unknown although the operator's probes fail: ProbePathBlocked or HealingSuspended.

    ``served``: another vantage (the cache host itself, the Open edX hosts) sees the cache answer, so the site
    is served and Ready follows that vantage rather than the operator's.
    """

    reason: str
    message: str
    served: bool


def unknown(detail: str) -> HostOpinion:
    return HostOpinion("unknown", detail=detail)


def render_opinion_script(address: str, port: int, *, timeout: int = OPINION_TIMEOUT_SECONDS) -> str:
    """The bash the cache host runs (read-only: one `stats` on its own private address, then `quit`)."""
    ip = str(ipaddress.ip_address(address))  # refuses anything that is not an address: nothing else is pasted
    if not 0 < int(port) < 65536:
        raise ValueError(f"port {port} out of range")
    return f"""\
#!/bin/bash
# edx-remote-cache second opinion (read-only): is memcached up, seen from the cache host itself?
set -u
unit=$(systemctl is-active memcached 2>/dev/null | head -n1)
echo "ERC-UNIT ${{unit:-unknown}}"
out=$(timeout {int(timeout)} bash -c 'exec 3<>"/dev/tcp/$0/$1" && printf "stats\\r\\nquit\\r\\n" >&3 && cat <&3' \\
      {ip} {int(port)} 2>&1)
rc=$?
up=$(printf '%s' "$out" | tr -d '\\r' | awk '$1=="STAT" && $2=="uptime" {{print $3}}')
enc=$(printf '%s' "$out" | tail -c {_DETAIL_BYTES} | base64 | tr -d '\\n')
if [ -n "$up" ]; then echo "ERC-STATS ok $up"
else echo "ERC-STATS fail $rc ${{enc:--}}"
fi
echo "ERC-END"
"""


def parse_opinion(stdout: str) -> HostOpinion:
    """The answer of :func:`render_opinion_script`; an answer that is not ours is "unknown", never "answers"."""
    unit = "unknown"
    stats: list[str] | None = None
    ended = False
    for line in stdout.splitlines():
        words = line.split()
        if not words:
            continue
        if words[0] == "ERC-UNIT" and len(words) == 2:
            unit = words[1]
        elif words[0] == "ERC-STATS" and len(words) >= 2:
            stats = words[1:]
        elif words == ["ERC-END"]:
            ended = True
    if stats is None or not ended:
        return unknown(f"unreadable answer: {stdout.strip()[-120:]!r}")
    if stats[0] == "ok" and len(stats) == 2 and stats[1].isdigit():
        return HostOpinion("answers", unit=unit, uptime_seconds=int(stats[1]))
    rc = stats[1] if len(stats) > 1 else "?"
    detail = _b64(stats[2]) if len(stats) > 2 and stats[2] != "-" else ""
    if rc == "124":  # coreutils timeout: connected (or connecting) and no answer
        return HostOpinion(
            "wedged", unit=unit, detail=f"no answer to stats within the timeout {detail}".strip()
        )
    if unit == "active" and not detail:
        detail = f"stats failed (exit {rc})"
    return HostOpinion("down", unit=unit, detail=detail or f"exit {rc}")


def _b64(text: str) -> str:
    try:
        return base64.b64decode(text, validate=True).decode("utf-8", "replace").strip().replace("\n", " ")
    except (binascii.Error, ValueError):
        return ""


# ---------------------------------------------------------------------------------------------- the breaker


@dataclass(frozen=True)
class BreakerVerdict:
    """Whether destructive healing in a region is suspended, and the figures for the message."""

    tripped: bool
    failing: int  # endpoints that turned unhealthy together (within one window)
    total: int

    def describe(self, region: str, window: float) -> str:
        return (
            f"{self.failing} of {self.total} endpoints in {region} turned unhealthy from the operator's view "
            f"within {window:.0f}s: the observer is more likely broken than the caches, so destructive healing "
            "there is suspended until each failure is confirmed by its own cache host"
        )


def breaker_trips(onsets: Mapping[str, float | None], *, window: float) -> BreakerVerdict:
    """``onsets``: every endpoint of a region -> when it turned unhealthy (None: healthy).

    Tripped while the largest group of still-unhealthy endpoints whose onsets lie within ``window`` of each
    other is at least half of the region's endpoints and at least 2. Stateless: it lifts by itself as soon as
    enough of them answer again (or are healed one by one after their own host confirmed them).
    """
    total = len(onsets)
    times = sorted(t for t in onsets.values() if t is not None)
    best = _largest_cluster(times, window)
    need = max(2, math.ceil(total / 2))
    return BreakerVerdict(tripped=total >= 2 and best >= need, failing=best, total=total)


def _largest_cluster(times: Iterable[float], window: float) -> int:
    ordered = list(times)
    best, start = 0, 0
    for end, t in enumerate(ordered):
        while t - ordered[start] > window:
            start += 1
        best = max(best, end - start + 1)
    return best
