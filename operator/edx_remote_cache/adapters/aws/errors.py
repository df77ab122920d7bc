"""AWS error handling, in one place: which codes are terminal, which retryable, which mean "already done".

One table says which codes are terminal and which are retryable, and another which codes mean the desired outcome
already holds for a given call (a duplicate rule on authorize, a missing group on delete), so every action is
idempotent and the planner never sees AWS's error vocabulary. `_call`/`_paginate` are the only ways the other
modules of this package reach boto3, so every error goes through the table.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import botocore.exceptions

from edx_remote_cache.domain.cloud.actions import ActResult

# Nothing changes until a human fixes the spec, the account or the IAM policy: retrying only burns calls.
TERMINAL_CODES = frozenset(
    {
        "AuthFailure",
        "UnauthorizedOperation",
        "AccessDenied",
        "AccessDeniedException",
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "Blocked",
        "OptInRequired",
        "InvalidParameterValue",
        "InvalidParameterCombination",
        "InvalidParameter",
        "MissingParameter",
        "UnknownParameter",
        "ValidationError",
        "ValidationException",
        "InvalidGroup.NotFound",  # an allowFromSecurityGroups entry that does not exist (see _own_group_missing)
        "InvalidSecurityGroupID.NotFound",
        "InvalidGroupId.Malformed",
        "InvalidPermission.Malformed",
        "InvalidInstanceType",
        "InvalidBlockDeviceMapping",
        "InvalidUserData.Malformed",
        "Unsupported",
        "UnsupportedOperation",
        "VcpuLimitExceeded",
        "InstanceLimitExceeded",
        "SecurityGroupLimitExceeded",
        "RulesPerSecurityGroupLimitExceeded",
        "ParameterNotFound",
        "ParameterVersionNotFound",
    }
)
TERMINAL_PREFIXES = ("InvalidAMIID.", "InvalidSubnetID.", "InvalidKeyPair.", "InvalidVpcID.")
# Transient: throttling, AWS-side faults, capacity, state transitions and eventual consistency.
RETRYABLE_CODES = frozenset(
    {
        "RequestLimitExceeded",
        "Throttling",
        "ThrottlingException",
        "TooManyRequestsException",
        "InternalError",
        "InternalFailure",
        "ServiceUnavailable",
        "Unavailable",
        "RequestTimeout",
        "RequestTimeoutException",
        "InsufficientInstanceCapacity",  # AWS says: retry later (or another AZ)
        "InsufficientHostCapacity",
        "InsufficientCapacity",
        "DependencyViolation",  # a group still referenced by a shutting-down interface
        "IncorrectInstanceState",  # the instance is still transitioning
        "IncorrectState",
        "InvalidInstanceID.NotFound",  # just launched, not yet visible
        "InvalidNetworkInterfaceID.NotFound",
        "PendingVerification",
    }
)
# Per call, the codes that mean the desired outcome already holds.
ALREADY_DONE: Mapping[str, frozenset[str]] = {
    "AuthorizeSecurityGroupIngress": frozenset({"InvalidPermission.Duplicate"}),
    "RevokeSecurityGroupIngress": frozenset(
        {"InvalidPermission.NotFound", "InvalidSecurityGroupRuleId.NotFound"}
    ),
    "DeleteSecurityGroup": frozenset({"InvalidGroup.NotFound"}),
    "TerminateInstances": frozenset({"InvalidInstanceID.NotFound"}),
    "DeleteTags": frozenset(
        {"InvalidInstanceID.NotFound", "InvalidGroup.NotFound", "InvalidVolume.NotFound"}
    ),
    "CreateSecurityGroup": frozenset({"InvalidGroup.Duplicate"}),
}
# Per call, codes AWS documents as the caller's mistake for *that* call, terminal whatever the general table says.
# RunInstances with an unknown instance profile: AWS answers InvalidParameterValue ("Invalid IAM Instance Profile
# name"), IAM-backed emulators (moto) NoSuchEntity; retrying either every few minutes only hid it in the log.
TERMINAL_FOR_CALL: Mapping[str, frozenset[str]] = {
    "RunInstances": frozenset({"InvalidParameterValue", "NoSuchEntity", "InvalidSubnetID.NotFound"}),
}
# RunInstances codes that mean this client token can never launch again: move to the next generation.
SPENT_TOKEN_CODES = frozenset({"IdempotentParameterMismatch", "IdempotentInstanceTerminated"})
# Not an AWS code: the call failed on the way (connection refused, reset, read timeout); it may have been carried out.
CONNECTION_ERROR = "ConnectionError"


class AwsError(Exception):
    """An AWS call failed; `partial` is what the plan had already changed before it (record it)."""

    def __init__(self, code: str, message: str, *, operation: str = "", service: str = "") -> None:
        super().__init__(f"{code}: {message}" + (f" (during {operation})" if operation else ""))
        self.code = code
        self.message = message
        self.operation = operation
        self.service = service  # "ec2", "ssm": status says AwsRetrying or SsmRetrying
        self.partial: ActResult | None = None


class TerminalAwsError(AwsError):
    """Retrying cannot help: surface it (Stalled) until the spec, account or permissions change."""


class RetryableAwsError(AwsError):
    """Transient: requeue with backoff."""


def is_terminal_code(code: str) -> bool:
    return code in TERMINAL_CODES or code.startswith(TERMINAL_PREFIXES)


def classify(
    code: str, message: str, *, operation: str = "", http_status: int = 400, service: str = ""
) -> AwsError:
    """The error table in one place.

    Codes in neither table are retryable, 4xx included: a transient code missing from the table must not
    stall a resource forever, and the error shows in status (Reconciling, AwsRetrying) from its first retry.
    """
    if code in TERMINAL_FOR_CALL.get(operation, frozenset()):
        return TerminalAwsError(code, message, operation=operation, service=service)
    if code in RETRYABLE_CODES or http_status >= 500:
        return RetryableAwsError(code, message, operation=operation, service=service)
    if is_terminal_code(code):
        return TerminalAwsError(code, message, operation=operation, service=service)
    return RetryableAwsError(code, message, operation=operation, service=service)


def _service(client: Any) -> str:
    return str(getattr(getattr(getattr(client, "meta", None), "service_model", None), "service_name", ""))


def _error_code(exc: botocore.exceptions.ClientError) -> tuple[str, str, int]:
    error = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 400)
    return error.get("Code", "Unknown"), error.get("Message", str(exc)), int(status)


def _call(client: Any, method: str, **params: Any) -> dict[str, Any] | None:
    """Call `client.method(**params)`; None when AWS says the outcome already holds, else AwsError."""
    operation = client.meta.method_to_api_mapping.get(method, method)
    try:
        return dict(getattr(client, method)(**params))
    except botocore.exceptions.ClientError as exc:
        code, message, status = _error_code(exc)
        if code in ALREADY_DONE.get(operation, frozenset()):
            return None
        raise classify(
            code, message, operation=operation, http_status=status, service=_service(client)
        ) from exc
    except (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError) as exc:
        # the request may have reached AWS: the outcome is unknown (cloud_pass keeps the launch token)
        raise RetryableAwsError(
            CONNECTION_ERROR, str(exc), operation=operation, service=_service(client)
        ) from exc


def _paginate(client: Any, method: str, key: str, **params: Any) -> Iterator[dict[str, Any]]:
    operation = client.meta.method_to_api_mapping.get(method, method)
    try:
        for page in client.get_paginator(method).paginate(**params):
            yield from page.get(key, ())
    except botocore.exceptions.ClientError as exc:
        code, message, status = _error_code(exc)
        raise classify(
            code, message, operation=operation, http_status=status, service=_service(client)
        ) from exc
    except (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError) as exc:
        # the request may have reached AWS: the outcome is unknown (cloud_pass keeps the launch token)
        raise RetryableAwsError(
            CONNECTION_ERROR, str(exc), operation=operation, service=_service(client)
        ) from exc
