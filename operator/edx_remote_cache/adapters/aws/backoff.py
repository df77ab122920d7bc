"""One region's AWS calls back off together when AWS throttles or fails (5xx, connection errors).

botocore's standard retry mode retries each call (up to 5 attempts, exponential backoff), but every call starts
afresh: with N resources whose passes each call AWS, a throttling storm is answered with N times the calls, and
AWS throttles per account and region, not per resource. `RegionBackoff` sits on botocore's events of a region's
EC2 and SSM clients and keeps one score for the region:

* an attempt answered with throttling, a 5xx or no answer at all holds the region for a while that doubles with
  each such answer in a row (1 s, 2 s, 4 s ... capped at `cap` s, with jitter);
* while held, a new call fails at once with the last error's code (no request sent), so the error table still
  says "retryable" and the reconciler requeues; the message says until when calls are held;
* after the hold, one call at a time tries (half-open): its success releases the region, its failure holds it
  again for longer;
* botocore's own retries of a call are not sent while the region is held either: the call ends at once.

So a storm costs the first attempts of the calls in flight when it began, then one attempt per hold: the e2e
test (tests/e2e/test_outages.py) counts them per second (measured: 23 calls in a 60 s storm with three objects,
at most 3 in a second). While AWS answers, botocore's standard retries stay the one retry layer per call.
"""

from __future__ import annotations

import datetime
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from botocore.awsrequest import AWSResponse, HTTPHeaders
from botocore.exceptions import ClientError

from edx_remote_cache.adapters.ports import THROTTLING_CODES

log = logging.getLogger(__name__)

HELD_STATUS = 503
# A trial call's longest life: 5 attempts of (5 s connect + 30 s read) plus botocore's sleeps (clients.py)
TRIAL_EXPIRES = 240.0


class RegionBackoff:
    """The region's hold; thread-safe (boto3 calls run in worker threads). `install` it on every client of the
    region, before any other before-call handler (a held call must not count as an AWS call in /metrics)."""

    def __init__(
        self,
        region: str,
        *,
        base: float = 1.0,
        cap: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.region = region
        self._base, self._cap = base, cap
        self._clock, self._jitter = clock, jitter
        self._lock = threading.Lock()
        self.failures = 0  # attempts in a row answered with throttling / 5xx / nothing
        self.held_until = 0.0
        self._trial: object | None = None  # the one call allowed through after a hold (its context)
        self._trial_since = 0.0
        self._last_error = ("Throttling", "")
        self.held_calls = 0  # calls refused without a request (metrics/tests)

    def install(self, client: Any) -> None:
        events = client.meta.events
        events.register_first("before-call", self._before_call)
        events.register_first("before-send", self._before_send)
        events.register("needs-retry", self._attempt_done)
        events.register("after-call", self._call_done)
        events.register("after-call-error", self._call_done)

    # -- decisions (pure on the state; called under the lock) ------------------------------------------------

    def _hold_seconds(self) -> float:
        full = min(self._cap, self._base * 2 ** max(0, self.failures - 1))
        return (
            full / 2 + self._jitter() * full / 2
        )  # "equal jitter": never less than half, replicas spread out

    def retry_at(self) -> datetime.datetime:
        """Wall-clock time when calls are let through again (for messages and status)."""
        wait = max(0.0, self.held_until - self._clock())
        return datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=wait)

    # -- botocore event handlers --------------------------------------------------------------------------

    def _before_call(
        self, context: dict[str, Any] | None = None, **_: Any
    ) -> tuple[AWSResponse, dict] | None:
        with self._lock:
            if self.failures == 0:
                return None
            now = self._clock()
            if self._trial is not None and now - self._trial_since > TRIAL_EXPIRES:
                self._trial = None  # never heard back from it: do not hold the region forever
            if now >= self.held_until and self._trial is None:
                self._trial = context if context is not None else object()
                self._trial_since = now
                return None
            self.held_calls += 1
            parsed = self._held_answer()
        return AWSResponse("", HELD_STATUS, HTTPHeaders(), None), parsed

    def _before_send(self, event_name: str = "", **_: Any) -> None:
        """Before each HTTP attempt: botocore's own retry of a call is not sent while the region is held (a
        storm would otherwise cost every in-flight call its full set of attempts); the call ends at once."""
        with self._lock:
            if self.failures == 0 or self._clock() >= self.held_until:
                return
            self.held_calls += 1
            parsed = self._held_answer()
        raise HeldCall(parsed, event_name.rsplit(".", 1)[-1])

    def _held_answer(self) -> dict[str, Any]:
        """The error a held call gets: the last code AWS gave (so the error table says retryable)."""
        code, message = self._last_error
        until = self.retry_at().strftime("%H:%M:%SZ")
        text = (
            f"{message or code} (AWS answered {code} {self.failures} time(s) in a row in {self.region}: "
            f"calls held until {until})"
        )
        return {
            "Error": {"Code": code, "Message": text},
            "ResponseMetadata": {"HTTPStatusCode": HELD_STATUS, "HTTPHeaders": {}},
        }

    def _attempt_done(
        self,
        response: tuple[Any, dict[str, Any]] | None = None,
        caught_exception: Exception | None = None,
        **_: Any,
    ) -> None:
        """After each HTTP attempt (botocore's needs-retry event; returns None so botocore decides)."""
        if isinstance(caught_exception, HeldCall):
            return  # not sent: says nothing new about AWS
        failed = _failure(response, caught_exception)
        with self._lock:
            if failed is None:
                if self.failures:
                    log.info("AWS answers again in %s: calls released", self.region)
                self.failures, self.held_until = 0, 0.0
                return
            self.failures += 1
            self._last_error = failed
            self.held_until = max(self.held_until, self._clock() + self._hold_seconds())
            if self.failures == 1:
                log.warning("AWS answered %s in %s: the region's calls back off", failed[0], self.region)

    def _call_done(self, context: dict[str, Any] | None = None, **_: Any) -> None:
        with self._lock:
            if self._trial is not None and (context is None or self._trial is context):
                self._trial = None


class HeldCall(ClientError):
    """An attempt not sent because the region is held; a ClientError so callers treat it like AWS's answer,
    and one botocore does not retry."""


def _failure(response: tuple[Any, dict[str, Any]] | None, exc: Exception | None) -> tuple[str, str] | None:
    """(code, message) when an attempt says AWS is overloaded or away; None for anything else."""
    if exc is not None:
        return ("ConnectionError", str(exc))
    if response is None:
        return None
    http, parsed = response
    status = int(getattr(http, "status_code", 200) or 200)
    error = (parsed or {}).get("Error") or {}
    code = str(error.get("Code") or "")
    if code in THROTTLING_CODES or status == 429 or status >= 500:
        return (code or f"HTTP{status}", str(error.get("Message") or ""))
    return None
