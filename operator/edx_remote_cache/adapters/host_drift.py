"""Has anyone changed the files we pushed? One batched SSM check per region per drift interval.

Every resource tells the checker what its Configured hosts should hold (:meth:`HostDriftChecker.expect`, on
each pass, from its status). When a drift pass asks (:meth:`HostDriftChecker.check`) and the last check is
older than the drift interval, the checker checks **every** expectation of the region at once: one SendCommand
per 50 hosts (see :mod:`edx_remote_cache.domain.hosts.drift`) and one ListCommandInvocations page per 50 answers, plus a
DescribeInstanceInformation only for hosts that did not answer the previous check (new, or offline then).
Every other resource's drift pass in that interval is answered from that check. At 500 resources on two Open
edX hosts that is 2 SSM calls per interval instead of ~2,000.

The same command checks each host's cache endpoints from the host itself (:meth:`HostDriftChecker.expect_reach`
says which; :meth:`HostDriftChecker.vantage` reads the answers): the app host's vantage at no extra AWS call.

A host is reported only for what was compared against the expectation its resource holds now: a host pushed
since the last check is "not checked yet" (not drifted) until the next one, so a push never looks like drift.
Thread-safe. :meth:`HostDriftChecker.expect` and :meth:`HostDriftChecker.reports` never wait (they run on the
event loop); :meth:`HostDriftChecker.refresh` blocks for a whole check, so the operator runs it once per due
check in one worker thread and lets every other drift pass await that one run (see ``Reconciler``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from edx_remote_cache.adapters.host_push import DriftReport, drift_of_host
from edx_remote_cache.adapters.ssm import COMMENT_DRIFT, TERMINAL_STATUSES, SsmAdapter, SsmError
from edx_remote_cache.domain.hosts import ProtocolError
from edx_remote_cache.domain.hosts.drift import (
    DriftBatch,
    HostReach,
    pack_batches,
    parse_drift_answer,
    render_drift_script,
)

__all__ = ["HostDriftChecker"]

log = logging.getLogger(__name__)

CHECK_TIMEOUT = 60  # executionTimeout of the check script, s
WAIT_SECONDS = 45.0  # how long one check waits for answers; a host that has not answered is "not checked"
FIRST_POLL = 1.0  # s: delivery plus hashing a few files; most checks are read with one call
PING_AFTER = 5.0  # s: a host still silent then is pinged (its agent may have gone offline)
POLL_BACKOFF = 1.5
MAX_POLL = 5.0
FORGET_AFTER_INTERVALS = (
    3  # an expectation nobody renewed for this many intervals belongs to a deleted resource
)


@dataclass
class _Seen:
    """What one check learned about a host: the expectation it compared against and the outcome."""

    expected: dict[str, str] = field(default_factory=dict)
    changed: dict[str, str | None] = field(default_factory=dict)
    problem: str = ""  # could not check (offline, failed, unparsable): the push path says why
    reach: tuple[HostReach, ...] = ()  # the cache endpoints as the host saw them


class HostDriftChecker:
    def __init__(
        self,
        ssm: SsmAdapter,
        *,
        ttl_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        wait_seconds: float = WAIT_SECONDS,
        wait_clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._ssm = ssm
        self._ttl = ttl_seconds
        self._clock = clock
        self._wait = wait_seconds
        self._wait_clock = wait_clock  # for the waits within one check (``clock`` paces the checks)
        self._wall_clock = (
            wall_clock  # stamps the hosts' answers (HostReach.checked_at), as the reconciler's clock
        )
        self._wanted_lock = threading.Lock()  # held for microseconds: expect() runs on the event loop
        self._run_lock = threading.Lock()  # held for a whole check
        self._wanted: dict[str, dict[str, tuple[str, float]]] = {}  # host → path → (sha256, renewed at)
        # host → endpoint → renewed at: every object on a host adds its own endpoints (a host may serve several)
        self._reach: dict[str, dict[str, float]] = {}
        self._seen: dict[str, _Seen] = {}
        self._checked_at: float | None = None
        self._answered: set[str] = set()  # hosts whose agent answered the last check: no ping needed
        self._last_took = 0.0  # seconds until every answer of the last check was in

    def expect(self, expected: Mapping[str, Mapping[str, str]]) -> None:
        """Host → path → sha256 that a resource pushed (renewed on each pass; cheap, never waits for a check)."""
        now = self._clock()
        with self._wanted_lock:
            for host, files in expected.items():
                mine = self._wanted.setdefault(host, {})
                for path, sha in files.items():
                    mine[path] = (sha, now)

    def expect_reach(self, reach: Mapping[str, Sequence[str]]) -> None:
        """Host → cache endpoints it should check from its side at the next check (renewed on each pass; the
        endpoints of every object naming the host are checked, each until FORGET_AFTER_INTERVALS unrenewed)."""
        now = self._clock()
        with self._wanted_lock:
            for host, endpoints in reach.items():
                mine = self._reach.setdefault(host, {})
                for endpoint in endpoints:
                    mine[endpoint] = now

    def vantage(self, hosts: Sequence[str]) -> dict[str, tuple[HostReach, ...]]:
        """What the last check's hosts said about their cache endpoints, each answer stamped with when the check
        was sent (hosts not asked, or that did not answer: left out)."""
        seen = self._seen
        return {h: seen[h].reach for h in hosts if h in seen and seen[h].reach}

    def due(self) -> bool:
        """Whether the next :meth:`refresh` would check (the last check is a drift interval old, or none yet)."""
        checked = self._checked_at
        return checked is None or self._clock() - checked >= self._ttl

    def refresh(self) -> None:
        """Run the region's batched check if it is due (blocking; concurrent callers wait for one check)."""
        with self._run_lock:
            if not self.due():
                return  # another caller just ran it
            now, sent_at = self._clock(), self._wall_clock()
            self._checked_at = now
            seen = self._check_all(now)
            for answer in seen.values():
                answer.reach = tuple(r.at(sent_at) for r in answer.reach)
            self._seen = seen

    def reports(self, expected: Mapping[str, Mapping[str, str]]) -> dict[str, DriftReport]:
        """One report per host of ``expected`` from the last check (never blocks)."""
        seen = self._seen
        return {host: _report(host, files, seen.get(host)) for host, files in expected.items()}

    def check(self, expected: Mapping[str, Mapping[str, str]]) -> dict[str, DriftReport]:
        """:meth:`expect`, :meth:`refresh` when due, then :meth:`reports` (for callers that may block)."""
        self.expect(expected)
        self.refresh()
        return self.reports(expected)

    # ------------------------------------------------------------------------------------------- internals

    def _current_wants(self, now: float) -> dict[str, dict[str, str]]:
        with self._wanted_lock:
            return self._prune_wants(now)

    def _prune_wants(self, now: float) -> dict[str, dict[str, str]]:
        horizon = now - FORGET_AFTER_INTERVALS * self._ttl
        wants: dict[str, dict[str, str]] = {}
        for host, files in list(self._wanted.items()):
            kept = {p: v for p, v in files.items() if v[1] >= horizon}
            if kept:
                self._wanted[host] = kept
                wants[host] = {p: sha for p, (sha, _) in kept.items()}
            else:
                del self._wanted[host]
        return wants

    def _current_reach(self, now: float, hosts: Sequence[str]) -> dict[str, tuple[str, ...]]:
        horizon = now - FORGET_AFTER_INTERVALS * self._ttl
        with self._wanted_lock:
            for host, endpoints in list(self._reach.items()):
                kept = {e: at for e, at in endpoints.items() if at >= horizon}
                if kept:
                    self._reach[host] = kept
                else:  # as _prune_wants does: a host nobody renewed is not kept as an empty entry forever
                    del self._reach[host]
            return {h: tuple(sorted(self._reach[h])) for h in hosts if self._reach.get(h)}

    def _check_all(self, now: float) -> dict[str, _Seen]:
        wants = self._current_wants(now)
        if not wants:
            return {}
        reach = self._current_reach(now, list(wants))
        seen = {host: _Seen(expected=dict(files)) for host, files in wants.items()}
        # Hosts that answered the last check are sent to straight away; only the others cost a ping first.
        online = [h for h in wants if h in self._answered] + self._online_of(
            [h for h in wants if h not in self._answered], seen
        )
        sent: list[tuple[str, DriftBatch]] = []
        for batch in pack_batches({h: wants[h] for h in online}, reach=reach):
            sent += self._send(batch, seen)
        self._answered = self._collect(sent, seen)
        return seen

    def _online_of(self, hosts: Sequence[str], seen: dict[str, _Seen]) -> list[str]:
        """The hosts whose agent is Online; the others are marked with why they cannot be checked."""
        if not hosts:
            return []
        try:
            pings = self._ssm.ping_statuses(hosts)
        except SsmError as exc:
            for host in hosts:
                seen[host].problem = f"cannot ask SSM for agent status: {exc}"
            return []
        for host in hosts:
            if pings.get(host) != "Online":
                seen[host].problem = f"SSM agent PingStatus is {pings.get(host, 'NotRegistered')}"
        return [h for h in hosts if pings.get(h) == "Online"]

    def _send(
        self, batch: DriftBatch, seen: dict[str, _Seen], *, retry: bool = True
    ) -> list[tuple[str, DriftBatch]]:
        try:
            command_id = self._ssm.send_many(
                batch.hosts,
                render_drift_script(batch),
                timeout=CHECK_TIMEOUT,
                comment=COMMENT_DRIFT,  # read-only: hashes files
            )
        except SsmError as exc:
            if retry and exc.unreachable:  # one host is gone since the last check: ping, send to the others
                online = set(self._online_of(batch.hosts, seen))
                kept = DriftBatch(tuple((h, f) for h, f in batch.expected if h in online))
                return self._send(kept, seen, retry=False) if kept.expected else []
            for host in batch.hosts:
                seen[host].problem = f"cannot check: {exc}"
            return []
        return [(command_id, batch)]

    def _collect(self, sent: Sequence[tuple[str, DriftBatch]], seen: dict[str, _Seen]) -> set[str]:
        """Poll each command's invocations until every host answered; returns the hosts that did.

        A host still silent after PING_AFTER seconds is pinged once: an agent that went offline since the last
        check is reported as such at once instead of holding every resource's answer for the whole wait.
        """
        waiting = {command_id: (batch, set(batch.hosts)) for command_id, batch in sent}
        answered: set[str] = set()
        unlisted: list[str] = []
        started = self._wait_clock()
        pinged = False
        # wait about as long as the last check took before the first look, so a steady region reads its answers
        # with one ListCommandInvocations page instead of polling while the agents are still hashing
        delay = min(MAX_POLL, max(FIRST_POLL, 1.1 * self._last_took))
        polls = 0
        while waiting:
            polls += 1
            self._ssm.sleep(delay)
            delay = min(MAX_POLL, delay * POLL_BACKOFF)
            late = self._wait_clock() - started >= self._wait
            for command_id, (batch, hosts) in list(waiting.items()):
                try:
                    invocations = {str(i.get("InstanceId")): i for i in self._ssm.invocations(command_id)}
                except SsmError as exc:
                    if late:
                        for host in hosts:
                            seen[host].problem = f"cannot read the check: {exc}"
                        del waiting[command_id]
                    continue
                for host in sorted(hosts):
                    invocation = invocations.get(host) or {}
                    if str(invocation.get("Status")) not in TERMINAL_STATUSES and not late:
                        continue
                    hosts.discard(host)
                    if invocation.get("Status") == "Success":
                        answered.add(host)
                    if self._answer(command_id, batch, host, invocation, seen[host]):
                        unlisted.append(host)
                if not hosts:
                    del waiting[command_id]
                    # answered at the first look: it may have taken less, so creep down; else learn the time
                    took = self._wait_clock() - started
                    self._last_took = 0.9 * took if polls == 1 else took
                elif late:
                    self._ssm.cancel(command_id)
                    del waiting[command_id]
            silent = [h for _, hosts in waiting.values() for h in hosts]
            if silent and not pinged and self._wait_clock() - started >= PING_AFTER:
                pinged = True
                offline = set(silent) - set(self._online_of(silent, seen))
                for command_id, (_, hosts) in list(waiting.items()):
                    hosts -= offline
                    if not hosts:
                        self._ssm.cancel(command_id)
                        del waiting[command_id]
        for host in unlisted:  # an agent that does not say who it is: ask it alone, the old way
            expected = seen[host].expected
            report = drift_of_host(self._ssm, host, expected)
            seen[host].changed = {p: sha for p, sha in report.current if sha != expected.get(p)}
            seen[host].problem = report.reason if report.drifted and not report.current else ""
        return answered

    def _answer(
        self, command_id: str, batch: DriftBatch, host: str, invocation: Mapping | None, seen: _Seen
    ) -> bool:
        """Record one host's answer; True when the host could not tell which table was its own."""
        status = str((invocation or {}).get("Status", "NoAnswer"))
        if status not in TERMINAL_STATUSES:
            seen.problem = f"no answer within {self._wait:.0f}s (status {status})"
            return False
        plugins = (invocation or {}).get("CommandPlugins") or [{}]
        output = str(plugins[0].get("Output", ""))
        if status != "Success":
            seen.problem = f"check command {status}: {plugins[0].get('StatusDetails', '')!s} {output[-300:]}"
            return False
        try:
            answer = parse_drift_answer(output, batch, host)
        except ProtocolError:
            try:  # the short Output is cut at 2,500 characters; the full one has 24,000
                result = self._ssm.wait(command_id, host, timeout=CHECK_TIMEOUT)
                answer = parse_drift_answer(result.stdout, batch, host)
            except (SsmError, ProtocolError) as exc:
                seen.problem = f"cannot read the check: {exc}"
                return False
        if answer.not_listed:
            return True
        seen.changed.update(answer.changed)
        seen.reach += answer.reach
        if answer.errors:
            path, why = answer.errors[0]
            seen.problem = f"{path}: {why}"
        return False


def _report(host: str, files: Mapping[str, str], seen: _Seen | None) -> DriftReport:
    if seen is None or any(seen.expected.get(p) != sha for p, sha in files.items()):
        return DriftReport(host, False, "not checked yet (pushed since the last check)")
    if seen.problem:
        return DriftReport(host, True, seen.problem)
    changed = [(p, seen.changed[p]) for p in files if p in seen.changed]
    if not changed:
        return DriftReport(host, False)
    reason = "changed on the host: " + ", ".join(p for p, _ in changed)
    return DriftReport(host, True, reason, tuple(changed))
