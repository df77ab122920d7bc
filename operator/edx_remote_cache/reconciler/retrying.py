"""Retryable errors, told the truth about: what failed, which attempt this is, and when the next one comes.

A retryable AWS (or SSM) error used to show only in the operator log, the object sitting at "applying changes"
while the pass came back on a fixed timer. Now every one is in status from its first occurrence (Reconciling=True,
reason AwsRetrying or SsmRetrying, the code, the message, the attempt and the next retry time, plus the same as
data in `status.retry`), and the retries back off exponentially from RETRY_BASE_SECONDS to RETRY_CAP_SECONDS so a
capacity shortage neither hammers AWS nor waits minutes after it clears. A pass that gets through clears it.

Launch tokens are recorded before RunInstances (a crash right after never launches twice), so a refused call left
a token behind for a launch that never happened: the next pass waited out the launch grace period on it and then
moved to the next generation, as if an instance had been replaced. `unmade_launches` names those tokens.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

from edx_remote_cache.adapters.aws import CONNECTION_ERROR, AwsError
from edx_remote_cache.domain.cloud.actions import ActResult
from edx_remote_cache.domain.conditions import rfc3339

RETRY_BASE_SECONDS = 2.0  # the first retry of an error episode
RETRY_CAP_SECONDS = 180.0  # a shortage that lasts still gets a try every 3 minutes, never a silent 5


def retry_delay(attempt: int) -> float:
    """Seconds before attempt ``attempt + 1``: 2, 4, 8, ... capped at RETRY_CAP_SECONDS."""
    return float(min(RETRY_CAP_SECONDS, RETRY_BASE_SECONDS * 2 ** max(0, attempt - 1)))


class RetryRecord(NamedTuple):
    """The current error episode of one object (in memory; `status.retry` is its public face)."""

    service: str  # "AWS" or "SSM"
    code: str
    message: str
    operation: str
    attempt: int  # 1 on the first failure of the episode
    next_at: float  # clock time of the next attempt
    generation: int  # the episode ends with a new spec generation too

    @classmethod
    def after(
        cls, previous: RetryRecord | None, exc: AwsError, *, now: float, generation: int
    ) -> RetryRecord:
        """The record after ``exc``: the attempt counts on while the generation stays the same."""
        same = previous is not None and previous.generation == generation
        attempt = previous.attempt + 1 if same and previous is not None else 1
        service = "SSM" if exc.service == "ssm" else "AWS"
        return cls(
            service, exc.code, exc.message, exc.operation, attempt, now + retry_delay(attempt), generation
        )

    @property
    def reason(self) -> str:
        return "SsmRetrying" if self.service == "SSM" else "AwsRetrying"

    @property
    def delay(self) -> float:
        return retry_delay(self.attempt)

    def describe(self, clock_now: float) -> str:
        """The Reconciling message: code, call, AWS's message, attempt and when the next one comes."""
        during = f" during {self.operation}" if self.operation else ""
        when = rfc3339(datetime.fromtimestamp(self.next_at, tz=UTC))
        wait = max(0.0, self.next_at - clock_now)
        return (
            f"{self.service} {self.code}{during}: {self.message}; attempt {self.attempt}, "
            f"next retry in {wait:.0f}s at {when}"
        )

    def to_status(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "code": self.code,
            "operation": self.operation,
            "message": self.message,
            "attempt": self.attempt,
            "nextRetryTime": rfc3339(datetime.fromtimestamp(self.next_at, tz=UTC)),
        }


def unmade_launches(tokens: Sequence[str], exc: AwsError, partial: ActResult | None) -> set[str]:
    """Tokens of ``tokens`` (the RunInstances of one act, in plan order) for which no instance can exist.

    Launched ones (in ``partial``) are kept, and so is the token of a RunInstances whose outcome is unknown
    (the connection failed: AWS may have launched, and the same token makes the retry harmless). A RunInstances
    AWS answered with an error launched nothing; the ones after it were never called.
    """
    done: Mapping[str, str] = partial.launched if partial is not None else {}
    spent = set(partial.spent_tokens) if partial is not None else set()
    pending = [t for t in tokens if t not in done and t not in spent]
    unknown = exc.operation == "RunInstances" and exc.code == CONNECTION_ERROR
    return set(pending[1:] if unknown else pending)
