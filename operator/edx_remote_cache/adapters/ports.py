"""The ports: what the reconciler and the adapters need from each other, declared once.

Each outside system is reached through one of these shapes; the adapters here implement them
(`ssm.SsmAdapter` is the `SsmRunner`, `kube_status.KubernetesStatusWriter` the `StatusWriter`, the app's
kopf event poster the `EventSink`) and tests/reconciler implements them with in-memory fakes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from edx_remote_cache.domain.claims import Claim


@dataclass(frozen=True)
class CommandResult:
    """One invocation's outcome as GetCommandInvocation reports it (output already truncated by SSM)."""

    command_id: str
    status: str  # Success, Failed, TimedOut, Cancelled (or DeliveryTimedOut when it never reached the agent)
    exit_code: int  # the script's exit status; -1 when it did not run to completion
    stdout: str
    stderr: str
    status_details: str = ""
    duration: float = 0.0  # seconds from SendCommand to the terminal status

    @property
    def ok(self) -> bool:
        return self.status == "Success" and self.exit_code == 0

    @property
    def delivered(self) -> bool:
        """False when the agent never picked the command up (nothing ran on the host)."""
        return self.status_details not in ("Delivery Timed Out", "Undeliverable", "DeliveryTimedOut")


class SsmRunner(Protocol):
    """Runs bash on one instance through SSM Run Command, and reads agent ping status.

    `run_script` raises `ssm.SsmError` when SSM refuses; `.unreachable` means the agent is offline or the host
    is not managed. `ping_statuses` answers Online, ConnectionLost, Inactive or NotRegistered per instance.
    """

    def ping_statuses(self, instance_ids: Sequence[str]) -> Mapping[str, str]: ...

    def run_script(
        self, instance_id: str, script: str, *, timeout: float = ..., comment: str = ...
    ) -> CommandResult: ...


# What AWS answers when a caller should slow down (botocore's standard mode lists the same codes): shared by
# the region backoff (aws/backoff.py) and the SSM adapter (a host push meeting one is Pending, not failed).
THROTTLING_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "RequestThrottled",
        "EC2ThrottledException",
        "SlowDown",
        "BandwidthLimitExceeded",
        "LimitExceededException",
        "PriorRequestNotComplete",
    }
)


class StatusUnavailable(Exception):
    """The Kubernetes API could not take a status write right now (unreachable, 5xx, 429): nothing was written;
    the same status can be written later. Any other failure (a 422, a bug) is raised as itself."""


class StatusWriter(Protocol):
    """Merge-patches an EdxRemoteCache's `status` subresource; raises StatusUnavailable when the API is away."""

    async def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None: ...


class EventSink(Protocol):
    """Posts a Kubernetes Event about an object (best effort: never raises)."""

    def __call__(self, obj: Mapping[str, Any], type_: str, reason: str, message: str) -> None: ...


class HostClaims(Protocol):
    """Every watched EdxRemoteCache's claim on one Open edX host (domain/claims.py decides who owns it).

    The operator keeps it as a kopf index over all objects (app/claims.py); tests/reconciler fakes it.
    """

    def claimants(self, host_id: str) -> Sequence[Claim]: ...
