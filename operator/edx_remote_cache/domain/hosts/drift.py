"""Batch the host-file drift check of a whole region into a few SSM commands (pure: render and parse).

Each resource's Open edX hosts carry files the operator pushed; on every drift interval it must learn whether
they still hold what it wrote. Asking per resource costs ~3 SSM calls per resource per interval (ping, send,
poll); this module lets :mod:`edx_remote_cache.adapters.host_drift` ask for every host of a region at once:

* one **command per ≤ 50 hosts** (SendCommand's InstanceIds limit) whose script carries every host's
  expectations and picks its own by ``$AWS_SSM_INSTANCE_ID`` (set by the SSM agent for Run Command);
* the host compares on its side and **prints only what differs**, so the answer of a healthy host is a few
  bytes and ListCommandInvocations' 2,500-character ``Output`` returns ≤ 50 hosts' answers in one call;
* expectations are the first 32 hex digits (128 bits) of each file's sha256: a change that keeps them is a
  second-preimage attack on SHA-256, not an ansible run, and it keeps 500 files per command in the size cap.

The same command also checks each cache endpoint from the host itself (the app host's vantage, the one the site
is served from): a TCP connect, ``version`` and a short ``stats`` through bash's ``/dev/tcp`` under coreutils
``timeout`` (no package to install): one ``ERC-REACHED index:ms ...`` line for the endpoints that answered and
an ``ERC-REACH`` line per failure. The operator's own probes only tell whether *its* path works; this answer
costs no AWS call of its own — as long as it fits the 2,500 characters ListCommandInvocations returns (past that
the operator reads it again with GetCommandInvocation, one call per host): a line per endpoint did not at 250
endpoints per host (the N=500 bench: 9 calls per interval instead of 5), about 6 characters each does — and as
long as the packer does not split the region's check for nothing (:class:`_Budget`).

A symlinked file is hashed through its link (the push edits its target). The line protocol is the one of
:mod:`edx_remote_cache.domain.hosts.protocol` (``ERC-BEGIN`` … ``ERC-END``, free text in
base64), so a hostile file name cannot forge an answer.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from edx_remote_cache.domain.hosts.protocol import (
    _SHA256,
    MAX_SCRIPT_CHARS,
    ProtocolError,
    _b64text,
    _bash_array,
    _check_path,
    _index,
    _lines,
    _prelude,
    _q,
)

__all__ = [
    "HOSTS_PER_COMMAND",
    "PREFIX_HEX",
    "REACH_TIMEOUT_SECONDS",
    "DriftAnswer",
    "DriftBatch",
    "HostReach",
    "merge_reach",
    "pack_batches",
    "parse_drift_answer",
    "parse_hash_output",
    "render_drift_script",
    "render_hash_script",
]

HOSTS_PER_COMMAND = 50  # SendCommand accepts at most 50 InstanceIds
PREFIX_HEX = 32  # hex digits of sha256 compared on the host (128 bits)
_ARM_CHARS = len("  ) want=(); mine=();;\n")  # one `case` arm around its instance id and two lists
_FIXED_CHARS = 3_400  # prelude and loops: 1,624 rendered, the rest is headroom
# per endpoint, on the host. A quick failure (refused, reset, a short answer) is tried once more after a pause:
# one sample turns CacheHealthy False (the operator's own probes wait for failureThreshold rounds), so a blip
# such as memcached restarting must last through both to count. A timeout is not tried again: 2 s of silence
# is no blip, and a second wait would delay reporting a dropped path (a revoked security-group rule) by 2.5 s.
REACH_TIMEOUT_SECONDS = 2
REACH_RETRY_PAUSE_SECONDS = 0.5
_ENDPOINT = re.compile(r"^[A-Za-z0-9.-]{1,253}:[0-9]{1,5}$")


@dataclass(frozen=True)
class HostReach:
    """Whether one cache endpoint answered `version` and `stats` from an Open edX host, and how fast."""

    endpoint: str
    reachable: bool
    latency_ms: int
    error: str = ""
    # when the operator sent the check that brought this answer (wall clock; 0.0: carried over from status by a
    # restarted operator, time unknown). Not part of the answer's identity: the same answer at another time.
    checked_at: float = field(default=0.0, compare=False)

    def at(self, checked_at: float) -> HostReach:
        return replace(self, checked_at=checked_at)


def merge_reach(
    known: Mapping[str, Sequence[HostReach]],
    fresh: Mapping[str, Sequence[HostReach]],
    *,
    hosts: Sequence[str],
    endpoints: Sequence[str],
    answered_at: Mapping[str, float],
) -> dict[str, tuple[HostReach, ...]]:
    """Each host's latest answer worth believing about each of `endpoints` (older answers about other
    endpoints, replaced or removed, are dropped).

    `answered_at` maps an endpoint to when its current cache first answered (any vantage): a check sent before
    that, or about an endpoint that has not answered since its cache last started, is about something else (a
    cache still booting, the previous owner of a reused private IP) and does not count. A host whose last
    check brought nothing usable (SSM slow, the check cut short, a check too old) keeps what it said before:
    an unanswered check is not news, and dropping the answer for one interval rewrote the status twice.
    """
    out: dict[str, tuple[HostReach, ...]] = {}
    for host in hosts:
        new = {
            r.endpoint: r for r in fresh.get(host, ()) if r.checked_at >= answered_at.get(r.endpoint, _NEVER)
        }
        old = {r.endpoint: r for r in known.get(host, ())}
        merged = tuple(new.get(e) or old[e] for e in endpoints if e in new or e in old)
        if merged:
            out[host] = merged
    return out


_NEVER = float("inf")


@dataclass(frozen=True)
class DriftBatch:
    """One command: the hosts it goes to and what each is expected to hold (path → full sha256)."""

    expected: tuple[tuple[str, tuple[tuple[str, str], ...]], ...]
    reach: tuple[tuple[str, tuple[str, ...]], ...] = ()  # host -> cache endpoints it checks from its side

    @property
    def hosts(self) -> tuple[str, ...]:
        return tuple(host for host, _ in self.expected)

    @property
    def paths(self) -> tuple[str, ...]:
        """Every path once, in first-seen order (the table the host indexes into)."""
        return tuple(dict.fromkeys(path for _, files in self.expected for path, _ in files))

    @property
    def endpoints(self) -> tuple[str, ...]:
        """Every endpoint once, in first-seen order (the table the host indexes into)."""
        return tuple(dict.fromkeys(ep for _, eps in self.reach for ep in eps))

    def reach_of(self, host: str) -> tuple[str, ...]:
        return dict(self.reach).get(host, ())


@dataclass(frozen=True)
class DriftAnswer:
    """One host's answer: ``checked`` files compared, of which ``changed`` differ (path → sha256 or None)."""

    checked: int
    changed: tuple[tuple[str, str | None], ...] = ()
    errors: tuple[tuple[str, str], ...] = ()  # path → why it could not be read
    not_listed: bool = False  # the host could not tell which table is its own (no $AWS_SSM_INSTANCE_ID)
    reach: tuple[HostReach, ...] = ()  # the cache endpoints as this host sees them


class _Budget:
    """The size one command's script will have, counted as :func:`render_drift_script` writes it.

    Every part is counted exactly (a path or endpoint once in its table, its index in each host's list, one
    `case` arm per host) except the prelude and loops, :data:`_FIXED_CHARS` with headroom. An estimate of 30
    characters per endpoint and 40 per file split the N=500 bench's check (2 hosts, 250 files and endpoints,
    42,208 characters rendered) into two commands: 2 more AWS calls per interval.
    """

    def __init__(self) -> None:
        self.paths: dict[str, int] = {}
        self.endpoints: dict[str, int] = {}
        self.size = _FIXED_CHARS

    def cost(self, host: str, files: Sequence[tuple[str, str]], endpoints: Sequence[str]) -> int:
        return self._add(host, files, endpoints, commit=False)

    def add(self, host: str, files: Sequence[tuple[str, str]], endpoints: Sequence[str]) -> None:
        self.size += self._add(host, files, endpoints, commit=True)

    def _add(
        self, host: str, files: Sequence[tuple[str, str]], endpoints: Sequence[str], *, commit: bool
    ) -> int:
        paths, eps = (self.paths, self.endpoints) if commit else (dict(self.paths), dict(self.endpoints))
        cost = len(_q(host)) + _ARM_CHARS + max(len(files) - 1, 0) + max(len(endpoints) - 1, 0)
        for path, _ in files:
            if path not in paths:
                paths[path] = len(paths)
                cost += len(_q(path)) + 1
            cost += len(str(paths[path])) + 1 + PREFIX_HEX
        for ep in endpoints:
            if ep not in eps:
                eps[ep] = len(eps)
                cost += len(_q(ep)) + 1
            cost += len(str(eps[ep]))
        return cost


def _split(
    host: str, files: Sequence[tuple[str, str]], endpoints: Sequence[str], max_chars: int
) -> list[DriftBatch]:
    """One host's files and endpoints over as many single-host commands as the cap needs (a part holds at
    least one item, so nothing is ever dropped)."""
    parts: list[tuple[tuple[tuple[str, str], ...], tuple[str, ...]]] = [((), ())]
    steps = [((f,), ()) for f in files] + [((), (e,)) for e in endpoints]
    for more_files, more_eps in steps:
        part_files, part_eps = parts[-1]
        grown = (part_files + more_files, part_eps + more_eps)
        if (part_files or part_eps) and _FIXED_CHARS + _Budget().cost(host, *grown) > max_chars:
            grown = (more_files, more_eps)
            parts.append(grown)
        parts[-1] = grown
    return [DriftBatch(((host, f),), ((host, e),) if e else ()) for f, e in parts]


def pack_batches(
    expected: Mapping[str, Mapping[str, str]],
    *,
    reach: Mapping[str, Sequence[str]] | None = None,
    hosts_per_command: int = HOSTS_PER_COMMAND,
    max_chars: int = MAX_SCRIPT_CHARS,
) -> list[DriftBatch]:
    """Group hosts into as few commands as the host limit and the script size cap allow.

    A host whose own table would not fit one command is split over several (each part is a batch of its own
    with that host alone), so no expectation is ever dropped. `reach`: the cache endpoints each host checks
    from its side (in the first part of a split host only).
    """
    reach = reach or {}
    batches: list[DriftBatch] = []
    current: list[tuple[str, tuple[tuple[str, str], ...]]] = []
    budget = _Budget()

    def endpoints_of(host: str) -> tuple[str, ...]:
        eps = tuple(dict.fromkeys(reach.get(host, ())))
        for ep in eps:
            if not _ENDPOINT.match(ep):
                raise ValueError(f"{ep!r}: an endpoint must be host:port")
        return eps

    def flush() -> None:
        nonlocal current, budget
        if current:
            batches.append(_batch(current))
        current, budget = [], _Budget()

    def _batch(items: Sequence[tuple[str, tuple[tuple[str, str], ...]]]) -> DriftBatch:
        mine = tuple((h, endpoints_of(h)) for h, _ in items if endpoints_of(h))
        return DriftBatch(tuple(items), mine)

    for host in sorted(expected):
        files = tuple(sorted(expected[host].items()))
        if not files:
            continue
        for path, _ in files:
            _check_path(path)
        eps = endpoints_of(host)
        if current and (
            len(current) >= hosts_per_command or budget.size + budget.cost(host, files, eps) > max_chars
        ):
            flush()
        if budget.size + budget.cost(host, files, eps) <= max_chars:
            current.append((host, files))
            budget.add(host, files, eps)
            continue
        # this host alone is too big for one command: its files, then its endpoints, go in parts
        batches.extend(_split(host, files, eps, max_chars))
    flush()
    return batches


def render_drift_script(batch: DriftBatch) -> str:
    """The script every host of ``batch`` runs: find its own table, compare, print only differences."""
    paths = batch.paths
    index = {path: i for i, path in enumerate(paths)}

    eps = {ep: i for i, ep in enumerate(batch.endpoints)}

    def table(files: Iterable[tuple[str, str]]) -> str:
        return " ".join(f"{index[path]}:{sha[:PREFIX_HEX]}" for path, sha in files)

    def mine(host: str) -> str:
        return " ".join(str(eps[ep]) for ep in batch.reach_of(host))

    if len(batch.expected) == 1:  # one host: no need to know who we are
        host = batch.expected[0][0]
        choose = f"want=({table(batch.expected[0][1])}); mine=({mine(host)})"
    else:
        arms = "\n".join(
            f"  {_q(host)}) want=({table(files)}); mine=({mine(host)});;" for host, files in batch.expected
        )
        choose = f"""\
case "${{AWS_SSM_INSTANCE_ID:-}}" in
{arms}
  *) echo "ERC-NOT-LISTED"; echo "ERC-END"; exit 0;;
esac"""
    script = "\n".join(
        [
            _prelude("drift check"),
            _bash_array("paths", paths),
            _bash_array("eps", batch.endpoints),
            choose,
            f"""\
erc_reach() {{
  local t0 out rc ms try
  for try in 1 2; do
    [ "$try" -eq 1 ] || sleep {REACH_RETRY_PAUSE_SECONDS}
    t0=$(date +%s%N)
    out=$(timeout {REACH_TIMEOUT_SECONDS} bash -c 'exec 3<>"/dev/tcp/${{0%:*}}/${{0##*:}}" || exit 3
printf "version\\r\\nstats\\r\\nquit\\r\\n" >&3; cat <&3' "$2" 2>&1); rc=$?
    ms=$(( ($(date +%s%N) - t0) / 1000000 ))
    if [ "$rc" -eq 0 ] && [[ $out == VERSION\\ * ]] && [[ $out == *END* ]]; then reached+=" $1:$ms"; return; fi
    [ "$rc" -ne 124 ] || break
  done
  if [ "$rc" -eq 124 ]; then echo "ERC-REACH $1 fail $ms $(erc_msg "no answer within {REACH_TIMEOUT_SECONDS}s")"
  else echo "ERC-REACH $1 fail $ms $(erc_msg "${{out:-exit $rc}}")"
  fi
}}
for w in "${{want[@]}}"; do
  i=${{w%%:*}}; p=${{paths[$i]}}
  if [ -e "$p" ] && [ ! -f "$p" ]; then erc_err "$i" "is not a regular file"
  elif [ ! -e "$p" ]; then echo "ERC-MISSING $i"
  elif ! sum=$( {{ sha256sum < "$p"; }} 2>&1 ); then erc_err "$i" "cannot read: $sum"
  elif [ "${{sum:0:{PREFIX_HEX}}}" != "${{w#*:}}" ]; then echo "ERC-HASH $i ${{sum%% *}}"
  fi
done
echo "ERC-CHECKED ${{#want[@]}}"
reached=""
for i in "${{mine[@]}}"; do erc_reach "$i" "${{eps[$i]}}"; done
[ -z "$reached" ] || echo "ERC-REACHED$reached"
echo "ERC-END"
""",
        ]
    )
    return script


def parse_drift_answer(stdout: str, batch: DriftBatch, host: str) -> DriftAnswer:
    """One host's output of :func:`render_drift_script` (ProtocolError when truncated or not ours)."""
    paths = batch.paths
    mine = dict(dict(batch.expected).get(host, ()))
    endpoints = batch.endpoints
    changed: list[tuple[str, str | None]] = []
    errors: list[tuple[str, str]] = []
    reach: list[HostReach] = []
    checked: int | None = None
    for words in _lines(stdout, "drift check"):
        if words == ["ERC-NOT-LISTED"]:
            return DriftAnswer(0, not_listed=True)
        if words[0] == "ERC-HASH" and len(words) == 3 and len(words[2]) == 64:
            changed.append((paths[_index(words[1], len(paths))], words[2]))
        elif words[0] == "ERC-MISSING" and len(words) == 2:
            changed.append((paths[_index(words[1], len(paths))], None))
        elif words[0] == "ERC-ERROR" and len(words) in (2, 3):
            path = paths[_index(words[1], len(paths))]
            errors.append((path, _b64text(words[2]) if len(words) == 3 else "error"))
        elif words[0] == "ERC-CHECKED" and len(words) == 2 and words[1].isdigit():
            checked = int(words[1])
        elif words[0] == "ERC-REACHED" and len(words) > 1:  # the endpoints that answered, as index:ms
            for item in words[1:]:
                index, _, ms = item.partition(":")
                if not ms.isdigit():
                    raise ProtocolError(f"unexpected reach item in drift output: {item[:40]!r}")
                reach.append(HostReach(endpoints[_index(index, len(endpoints))], True, int(ms), ""))
        elif (
            words[0] == "ERC-REACH"
            and len(words) in (4, 5)
            and words[2] in ("ok", "fail")
            and words[3].isdigit()
        ):
            ep = endpoints[_index(words[1], len(endpoints))]
            error = _b64text(words[4]).strip() if len(words) == 5 else ("" if words[2] == "ok" else "failed")
            reach.append(HostReach(ep, words[2] == "ok", int(words[3]), error))
        else:
            raise ProtocolError(f"unexpected line in drift output: {' '.join(words)[:120]!r}")
    if checked != len(mine):
        raise ProtocolError(f"drift check compared {checked} file(s), {len(mine)} expected")
    foreign = [p for p, _ in (*changed, *errors) if p not in mine]
    if foreign:
        raise ProtocolError(f"drift check reported a file this host was not asked about: {foreign[0]}")
    if {r.endpoint for r in reach} != set(batch.reach_of(host)):
        raise ProtocolError("drift check did not report every endpoint this host was asked to reach")
    return DriftAnswer(checked, tuple(changed), tuple(errors), reach=tuple(reach))


# ------------------------------------------------------------------------- one host, the old way


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
  if [ -e "$p" ] && [ ! -f "$p" ]; then erc_err "$i" "is not a regular file"
  elif [ ! -e "$p" ]; then echo "ERC-MISSING $i"
  elif ! sum=$( { sha256sum < "$p"; } 2>&1 ); then erc_err "$i" "cannot read: $sum"
  else echo "ERC-HASH $i ${sum%% *}"
  fi
done
echo "ERC-END"
""",
        ]
    )


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
