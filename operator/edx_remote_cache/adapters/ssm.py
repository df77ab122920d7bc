"""Thin boto3 adapter for SSM Run Command: run one bash script on one instance and return what it printed.

It hides the parts of SSM that bite: GetCommandInvocation answers ``InvocationDoesNotExist`` for a moment
after SendCommand, DescribeInstanceInformation takes at most 50 instance ids per call, and a command to an
offline agent waits for its delivery timeout. Polling starts at 0.1 s and backs off with jitter, so a short
script on a healthy agent returns in well under a second.

Throttling is not retried here: the client's botocore standard retry mode (``adapters.aws.client_config``,
used by ``make_clients`` and ``from_boto3``) already retries throttling and 5xx answers with backoff, and one
layer is the whole budget (a retry loop here on top of it multiplied one call into dozens of attempts). Paged
reads use boto3's paginators.

The client is injected (``SsmAdapter(boto3.client("ssm"))``); tests pass a sandbox or a Stubber client.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from botocore.exceptions import ClientError

from edx_remote_cache.adapters.ports import THROTTLING_CODES, CommandResult

__all__ = [
    "DOCUMENT",
    "MAX_IDS_PER_CALL",
    "READ_ONLY_COMMENTS",
    "CommandResult",
    "SsmAdapter",
    "SsmError",
]

DOCUMENT = "AWS-RunShellScript"
MAX_IDS_PER_CALL = 50  # DescribeInstanceInformation's InstanceIds filter and SendCommand's InstanceIds
# SendCommand comments: what the SSM console and CloudTrail show for each of the operator's commands. The
# read-only ones change nothing on any host; the bench and the e2e tests count every other command as a change
# (one list, so a new read-only command cannot be counted as a write by one figure and not by another).
COMMENT_DRIFT = "edx-remote-cache drift"
COMMENT_READ = "edx-remote-cache read"
COMMENT_SECOND_OPINION = "edx-remote-cache second opinion (read-only)"
COMMENT_BOOT_DIAGNOSIS = "edx-remote-cache boot diagnosis (read-only)"
COMMENT_APPLY = "edx-remote-cache apply"
COMMENT_HEAL = "edx-remote-cache heal"
COMMENT_RECONFIGURE = "edx-remote-cache: reconfigure memcached"
READ_ONLY_COMMENTS = frozenset({COMMENT_DRIFT, COMMENT_READ, COMMENT_SECOND_OPINION, COMMENT_BOOT_DIAGNOSIS})
TERMINAL_STATUSES = frozenset({"Success", "Failed", "Cancelled", "TimedOut"})
# SendCommand refusals that mean "this instance cannot take commands right now", not "the request is wrong".
UNREACHABLE_CODES = frozenset({"InvalidInstanceId", "UnsupportedPlatformType", "InvalidTarget"})
TRANSIENT_CODES = THROTTLING_CODES | {
    "InternalServerError",
    "InternalError",
    "InternalFailure",
    "ServiceUnavailable",
    "Unavailable",
    "RequestTimeout",
    "ConnectionError",
}


class SsmError(RuntimeError):
    """An SSM API call failed for good (after botocore's retries); ``code`` is AWS's error code."""

    def __init__(self, code: str, message: str, *, operation: str = "") -> None:
        self.code = code
        self.operation = operation
        super().__init__(f"{operation}: {code}: {message}" if operation else f"{code}: {message}")

    @property
    def unreachable(self) -> bool:
        """The instance is not taking commands (agent offline, stopped, not managed)."""
        return self.code in UNREACHABLE_CODES

    @property
    def transient(self) -> bool:
        """AWS is throttling or failing (or the region's calls are held: aws/backoff.py): this says nothing
        about the host, so a host push that meets it is Pending (tried again), not a failure of the rollout."""
        return self.code in TRANSIENT_CODES


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", "Unknown"))


def _message(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Message", str(exc)))


class SsmAdapter:
    """Run scripts through ``AWS-RunShellScript`` and read agent ping status; every wait is bounded."""

    def __init__(
        self,
        client: Any,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        jitter: Callable[[float, float], float] = random.uniform,
        first_poll: float = 0.1,
        backoff: float = 1.3,
        max_poll: float = 2.0,
        delivery_timeout: int = 30,
        appear_grace: float = 30.0,
    ) -> None:
        self.client = client
        self._sleep = sleep
        self._clock = clock
        self._jitter = jitter
        self.first_poll = first_poll
        self.backoff = backoff
        self.max_poll = max_poll
        self.delivery_timeout = max(30, int(delivery_timeout))  # SSM's minimum TimeoutSeconds
        self.appear_grace = appear_grace

    @classmethod
    def from_boto3(
        cls, *, region: str, endpoint_url: str | None = None, session: Any = None, **kwargs: Any
    ) -> SsmAdapter:
        """Build on a boto3 client with the operator's retry configuration (``endpoint_url`` points at the
        sandbox's loopback moto server)."""
        import boto3

        from edx_remote_cache.adapters.aws.clients import client_config  # aws imports this module

        factory = session.client if session is not None else boto3.client
        return cls(
            factory("ssm", region_name=region, endpoint_url=endpoint_url, config=client_config()), **kwargs
        )

    # ------------------------------------------------------------------------------------------ API calls

    def _call(self, operation: str, **params: Any) -> Mapping[str, Any]:
        """One API call (botocore's standard mode has already retried throttling); errors become SsmError."""
        try:
            response: Mapping[str, Any] = getattr(self.client, operation)(**params)
        except ClientError as exc:
            raise SsmError(_code(exc), _message(exc), operation=operation) from None
        return response

    def _items(self, operation: str, key: str, **params: Any) -> Iterator[Mapping[str, Any]]:
        """Every item under ``key`` across the pages of a paginated read (boto3's paginator follows NextToken)."""
        try:
            for page in self.client.get_paginator(operation).paginate(**params):
                yield from page.get(key, ())
        except ClientError as exc:
            raise SsmError(_code(exc), _message(exc), operation=operation) from None

    def ping_statuses(self, instance_ids: Sequence[str]) -> dict[str, str]:
        """instance id → PingStatus (Online, ConnectionLost, Inactive); "NotRegistered" when SSM has no record."""
        ids = list(dict.fromkeys(instance_ids))
        out = {instance_id: "NotRegistered" for instance_id in ids}
        for start in range(0, len(ids), MAX_IDS_PER_CALL):
            for info in self._items(
                "describe_instance_information",
                "InstanceInformationList",
                Filters=[{"Key": "InstanceIds", "Values": ids[start : start + MAX_IDS_PER_CALL]}],
                PaginationConfig={"PageSize": MAX_IDS_PER_CALL},
            ):
                if info.get("InstanceId") in out:
                    out[info["InstanceId"]] = str(info.get("PingStatus", "Unknown"))
        return out

    def send(
        self, instance_id: str, script: str, *, timeout: float, comment: str = "edx-remote-cache"
    ) -> str:
        """SendCommand only; returns the command id (see :meth:`wait`)."""
        return self.send_many([instance_id], script, timeout=timeout, comment=comment)

    def send_many(
        self, instance_ids: Sequence[str], script: str, *, timeout: float, comment: str = "edx-remote-cache"
    ) -> str:
        """One SendCommand to up to 50 instances (they all run ``script``); returns the command id."""
        if not 1 <= len(instance_ids) <= MAX_IDS_PER_CALL:
            raise ValueError(
                f"SendCommand takes 1 to {MAX_IDS_PER_CALL} instance ids, not {len(instance_ids)}"
            )
        response = self._call(
            "send_command",
            InstanceIds=list(instance_ids),
            DocumentName=DOCUMENT,
            Comment=comment[:100],
            TimeoutSeconds=self.delivery_timeout,
            Parameters={"commands": [script], "executionTimeout": [str(max(1, int(timeout)))]},
        )
        return str(response["Command"]["CommandId"])

    def invocations(self, command_id: str) -> list[Mapping[str, Any]]:
        """Every invocation of a command with its short output (ListCommandInvocations, Details=True, paged)."""
        return list(
            self._items(
                "list_command_invocations",
                "CommandInvocations",
                CommandId=command_id,
                Details=True,
                PaginationConfig={"PageSize": MAX_IDS_PER_CALL},
            )
        )

    def cancel(self, command_id: str) -> None:
        """Best effort: stop a command we no longer wait for."""
        with contextlib.suppress(SsmError):
            self._call("cancel_command", CommandId=command_id)

    def sleep(self, seconds: float) -> None:
        """The adapter's (injectable) sleep, jittered ±20 %."""
        self._sleep(seconds * self._jitter(0.8, 1.2))

    def wait(
        self, command_id: str, instance_id: str, *, timeout: float, started: float | None = None
    ) -> CommandResult:
        """Poll GetCommandInvocation until the invocation is terminal or its deadlines pass."""
        started = self._clock() if started is None else started
        appear_by = started + self.appear_grace
        give_up = started + self.delivery_timeout + timeout + 30
        delay = self.first_poll
        while True:
            self._sleep(delay * self._jitter(0.8, 1.2))
            delay = min(self.max_poll, delay * self.backoff)
            try:
                inv = self.client.get_command_invocation(CommandId=command_id, InstanceId=instance_id)
            except ClientError as exc:
                code = _code(exc)
                if code == "InvocationDoesNotExist" and self._clock() < appear_by:
                    continue  # SendCommand has not propagated to the invocation store yet
                raise SsmError(code, _message(exc), operation="get_command_invocation") from None
            status = str(inv.get("Status", ""))
            if status in TERMINAL_STATUSES:
                return CommandResult(
                    command_id=command_id,
                    status=status,
                    exit_code=int(inv.get("ResponseCode", -1)),
                    stdout=str(inv.get("StandardOutputContent", "")),
                    stderr=str(inv.get("StandardErrorContent", "")),
                    status_details=str(inv.get("StatusDetails", "")),
                    duration=self._clock() - started,
                )
            if self._clock() > give_up:
                with contextlib.suppress(SsmError):  # best effort: it may have finished meanwhile
                    self._call("cancel_command", CommandId=command_id, InstanceIds=[instance_id])
                details = str(inv.get("StatusDetails", status))
                return CommandResult(
                    command_id=command_id,
                    status="TimedOut",
                    exit_code=-1,
                    stdout=str(inv.get("StandardOutputContent", "")),
                    stderr=f"gave up waiting after {self._clock() - started:.0f}s (last status {details})",
                    status_details=details,
                    duration=self._clock() - started,
                )

    def run_script(
        self, instance_id: str, script: str, *, timeout: float = 60, comment: str = "edx-remote-cache"
    ) -> CommandResult:
        """Run ``script`` (bash) on one instance; ``timeout`` is its executionTimeout in seconds.

        Raises :class:`SsmError` when SSM refuses the command (``.unreachable`` for an offline instance);
        a script that ran and failed is a :class:`CommandResult` with its exit code and output.
        """
        started = self._clock()
        command_id = self.send(instance_id, script, timeout=timeout, comment=comment)
        return self.wait(command_id, instance_id, timeout=timeout, started=started)
