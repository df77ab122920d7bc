"""One region's EC2 Describe calls are paced: at most `per_second` in any one-second window, whatever waits.

Every wait on AWS in this operator re-reads EC2: a pass re-observes after it acts, waits for an instance AWS
launched but does not list yet, looks its subnet and AMI up on the first pass after a restart. Each of those is
bounded on its own (one read per second per waiting object, cloud_pass.py; coalesced region reads, observe.py),
but they add up: the bench's crash-before-RunInstances scenario (bench/ha.py) measured 8 Describe calls in the
new operator's first second for ONE object (DescribeImages, DescribeSubnets, DescribeInstances x3,
DescribeSecurityGroups x2, DescribeInstanceInformation), against issue 19's target of at most 5 per region.

`ReadPacer` sits on botocore's before-call event of the region's EC2 client, after `RegionBackoff` (a held call
is refused before it is paced, and never waits for a slot): a Describe* call that would be the (per_second + 1)-th
in a one-second window sleeps in its worker thread (boto3 calls run in asyncio.to_thread) until the oldest of
them leaves the window. Slots are handed out first come, first served, so a burst is spread, never dropped.

Not SSM: its DescribeInstanceInformation asks whether one push's hosts are online, once per push (~1,000 while
500 objects converge). Paced at 5 a second they held the operator's 32 worker threads asleep and 500 objects
were not Ready after 4 minutes (17 were); the region's back-off still covers SSM when AWS throttles it.

The cost is latency, only while reads come in bursts: a launch's re-observe lands up to a second later. AWS's
own EC2 limit for reads is a bucket of 100 refilled at 20 a second per account and region, so 5 a second leaves
room for the other tools of the account. The coalescing in observe.py keeps 500 objects converging under it (one
read serves every object whose part of the snapshot is stale).
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from typing import Any

DEFAULT_READS_PER_SECOND = 5
PACED_PREFIX = "Describe"


class ReadPacer:
    """At most `per_second` paced calls start in any `window` seconds; thread-safe."""

    def __init__(
        self,
        region: str,
        *,
        per_second: int = DEFAULT_READS_PER_SECOND,
        window: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if per_second < 1:
            raise ValueError("per_second must be at least 1")
        self.region = region
        self._per_second, self._window = per_second, window
        self._clock, self._sleep = clock, sleep
        self._lock = threading.Lock()
        self._starts: collections.deque[float] = collections.deque(maxlen=per_second)
        self.paced_calls = 0  # calls that took a slot (tests)
        self.waited_seconds = 0.0  # total time calls were held back (tests)

    def install(self, client: Any) -> None:
        """Register after `RegionBackoff.install` (register_first there): held calls never take a slot."""
        client.meta.events.register("before-call", self._before_call)

    def _before_call(self, model: Any = None, **_: Any) -> None:
        if model is not None and str(getattr(model, "name", "")).startswith(PACED_PREFIX):
            self.wait()

    def reserve(self) -> float:
        """The time the next call may start (now, or when the oldest of the last `per_second` leaves the
        window); the slot is taken at once, so concurrent callers queue in order."""
        with self._lock:
            now = self._clock()
            start = now
            if len(self._starts) == self._per_second:
                start = max(now, self._starts[0] + self._window)
            self._starts.append(start)
            self.paced_calls += 1
        return start

    def wait(self) -> float:
        """Block until this call's slot; returns the seconds waited."""
        start = self.reserve()
        delay = start - self._clock()
        if delay > 0:
            self._sleep(delay)
            with self._lock:
                self.waited_seconds += delay
            return delay
        return 0.0
