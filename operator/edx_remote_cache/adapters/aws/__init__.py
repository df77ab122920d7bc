"""Thin boto3 adapter for the cache host: one batched read per region, cached lookups, and plan execution.

AWS error handling lives here and only here. One table says which codes are terminal and which are retryable,
and another says which codes mean "already done" for a given call (a duplicate rule on authorize, a missing
group on delete), so every action is idempotent and the planner never sees AWS's error vocabulary.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import boto3
import botocore.exceptions
from botocore.config import Config

from edx_remote_cache import OWNER_TAG
from edx_remote_cache.adapters.ssm import SsmError
from edx_remote_cache.domain.cloud_plan import (
    CONFIG_HASH_TAG,
    GONE_STATES,
    Action,
    ActResult,
    AttachSecurityGroup,
    AuthorizeIngress,
    CreateSecurityGroup,
    DeleteSecurityGroup,
    DetachSecurityGroup,
    EdxHost,
    HardenMetadata,
    IngressRule,
    ModifyInstanceType,
    ObservedCloud,
    ObservedRule,
    Owner,
    Plan,
    ReconfigureMemcached,
    RevokeIngress,
    RunInstance,
    StartInstance,
    StopInstance,
    TagResources,
    TerminateInstance,
    UntagResources,
    WaitFor,
    edx_host_from_instance,
    group_by_owner,
    normalize_instance,
    rule_from_security_group_rule,
)

DEFAULT_MAX_ATTEMPTS = 5
PAGE_SIZE = 1000  # the EC2 maximum: 500 cache hosts fit in one page
FILTER_VALUES_LIMIT = 200  # EC2 rejects more values in one filter
LIVE_STATES = ("pending", "running", "stopping", "stopped", "shutting-down")
AMI_PARAMETER_TTL_SECONDS = 3600.0

# --- errors ------------------------------------------------------------------------------------------------

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
# RunInstances codes that mean this client token can never launch again: move to the next generation.
SPENT_TOKEN_CODES = frozenset({"IdempotentParameterMismatch", "IdempotentInstanceTerminated"})


class AwsError(Exception):
    """An AWS call failed; `partial` is what the plan had already changed before it (record it)."""

    def __init__(self, code: str, message: str, *, operation: str = "") -> None:
        super().__init__(f"{code}: {message}" + (f" (during {operation})" if operation else ""))
        self.code = code
        self.message = message
        self.operation = operation
        self.partial: ActResult | None = None


class TerminalAwsError(AwsError):
    """Retrying cannot help: surface it (Stalled) until the spec, account or permissions change."""


class RetryableAwsError(AwsError):
    """Transient: requeue with backoff."""


def is_terminal_code(code: str) -> bool:
    return code in TERMINAL_CODES or code.startswith(TERMINAL_PREFIXES)


def classify(code: str, message: str, *, operation: str = "", http_status: int = 400) -> AwsError:
    """The error table in one place.

    Codes in neither table are retryable, 4xx included: a transient code missing from the table must not
    stall a resource forever, and the error still shows in status on every retry.
    """
    if code in RETRYABLE_CODES or http_status >= 500:
        return RetryableAwsError(code, message, operation=operation)
    if is_terminal_code(code):
        return TerminalAwsError(code, message, operation=operation)
    return RetryableAwsError(code, message, operation=operation)


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
        raise classify(code, message, operation=operation, http_status=status) from exc
    except (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError) as exc:
        raise RetryableAwsError("ConnectionError", str(exc), operation=operation) from exc


def _paginate(client: Any, method: str, key: str, **params: Any) -> Iterator[dict[str, Any]]:
    operation = client.meta.method_to_api_mapping.get(method, method)
    try:
        for page in client.get_paginator(method).paginate(**params):
            yield from page.get(key, ())
    except botocore.exceptions.ClientError as exc:
        code, message, status = _error_code(exc)
        raise classify(code, message, operation=operation, http_status=status) from exc
    except (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError) as exc:
        raise RetryableAwsError("ConnectionError", str(exc), operation=operation) from exc


# --- clients -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AwsClients:
    """The boto3 clients for one region."""

    ec2: Any
    ssm: Any


def client_config(max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> Config:
    return Config(
        retries={"mode": "standard", "max_attempts": max_attempts}, connect_timeout=5, read_timeout=30
    )


def make_clients(
    region: str,
    *,
    endpoint_url: str | None = None,
    session: boto3.session.Session | None = None,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
) -> AwsClients:
    session = session or boto3.session.Session()
    config = client_config(max_attempts)
    return AwsClients(
        ec2=session.client("ec2", region_name=region, endpoint_url=endpoint_url, config=config),
        ssm=session.client("ssm", region_name=region, endpoint_url=endpoint_url, config=config),
    )


def _aws_tags(tags: Iterable[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in tags]


def _chunks(values: Sequence[str], size: int = FILTER_VALUES_LIMIT) -> Iterator[list[str]]:
    for start in range(0, len(values), size):
        yield list(values[start : start + size])


# --- observe ---------------------------------------------------------------------------------------------------


def _describe_instances(
    ec2: Any, filters: list[dict[str, Any]], *, terminated: bool = False
) -> list[dict[str, Any]]:
    """Paginated; terminated instances only when asked (their client tokens tell a gone launch from a slow one)."""
    states = [*LIVE_STATES, "terminated"] if terminated else list(LIVE_STATES)
    filters = [*filters, {"Name": "instance-state-name", "Values": states}]
    reservations = _paginate(
        ec2, "describe_instances", "Reservations", Filters=filters, PaginationConfig={"PageSize": PAGE_SIZE}
    )
    return [inst for r in reservations for inst in r.get("Instances", ())]


def _security_group_rules(ec2: Any, group_ids: Sequence[str]) -> dict[str, list[ObservedRule]]:
    rules: dict[str, list[ObservedRule]] = {g: [] for g in group_ids}
    for chunk in _chunks(sorted(group_ids)):
        for raw in _paginate(
            ec2,
            "describe_security_group_rules",
            "SecurityGroupRules",
            Filters=[{"Name": "group-id", "Values": chunk}],
            PaginationConfig={"PageSize": PAGE_SIZE},
        ):
            if not raw.get("IsEgress"):
                rules.setdefault(raw["GroupId"], []).append(rule_from_security_group_rule(raw))
    return rules


def observe_region(
    ec2: Any, *, owner: Owner | None = None, with_rule_ids: bool = False
) -> dict[str, ObservedCloud]:
    """Everything every EdxRemoteCache owns in the region, grouped by owner key: two paginated calls.

    Filtered by the ownership tag key (or, with `owner`, its value). `with_rule_ids` adds one batched
    DescribeSecurityGroupRules; planning does not need it (the executor looks ids up when it revokes).
    """
    tag_filter = (
        {"Name": f"tag:{OWNER_TAG}", "Values": [owner.key]}
        if owner
        else {"Name": "tag-key", "Values": [OWNER_TAG]}
    )
    instances = _describe_instances(ec2, [tag_filter], terminated=True)
    groups = list(
        _paginate(
            ec2,
            "describe_security_groups",
            "SecurityGroups",
            Filters=[tag_filter],
            PaginationConfig={"PageSize": PAGE_SIZE},
        )
    )
    rules = _security_group_rules(ec2, [g["GroupId"] for g in groups]) if with_rule_ids and groups else None
    return group_by_owner(instances=instances, security_groups=groups, rules=rules)


class RegionObserver:
    """Coalesces reads: every resource asking within `ttl_seconds` (the drift interval) shares one read.

    `invalidate(owner)` after a mutation makes that owner's next observe a fresh (owner-filtered) read, so a
    resource never plans from a snapshot older than its own last change. Thread-safe.
    """

    def __init__(
        self,
        ec2: Any,
        *,
        ttl_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        with_rule_ids: bool = False,
    ) -> None:
        self._ec2 = ec2
        self._ttl = ttl_seconds
        self._clock = clock
        self._with_rule_ids = with_rule_ids
        self._lock = threading.Lock()
        self._snapshot: dict[str, ObservedCloud] | None = None
        self._fetched_at = 0.0
        self._stale: set[str] = set()

    @property
    def fetched_at(self) -> float | None:
        """When the shared snapshot was read (the observer's clock); None before the first read."""
        return self._fetched_at if self._snapshot is not None else None

    def observe(self, owner: Owner, *, adopt_instance_ids: Sequence[str] = ()) -> ObservedCloud:
        """What `owner` has, plus any `adopt_instance_ids` not yet tagged (one extra call while adopting)."""
        with self._lock:
            now = self._clock()
            if self._snapshot is None or now - self._fetched_at >= self._ttl:
                self._snapshot = observe_region(self._ec2, with_rule_ids=self._with_rule_ids)
                self._fetched_at = now
                self._stale.clear()
            elif owner.key in self._stale:
                fresh = observe_region(self._ec2, owner=owner, with_rule_ids=self._with_rule_ids)
                self._snapshot[owner.key] = fresh.get(owner.key, ObservedCloud())
                self._stale.discard(owner.key)
            cloud = self._snapshot.get(owner.key, ObservedCloud())
        known = {i.instance_id for i in cloud.instances}
        missing = [i for i in adopt_instance_ids if i not in known]
        if not missing:
            return cloud
        raw = _describe_instances(self._ec2, [{"Name": "instance-id", "Values": missing}])
        candidates = tuple(normalize_instance(i) for i in raw if i["State"]["Name"] not in GONE_STATES)
        return dataclasses.replace(cloud, instances=cloud.instances + candidates)

    def invalidate(self, owner: Owner | None = None) -> None:
        """Forget `owner`'s part of the snapshot (or all of it)."""
        with self._lock:
            if owner is None:
                self._snapshot = None
            else:
                self._stale.add(owner.key)


def describe_edx_hosts(
    ec2: Any, *, instance_ids: Sequence[str] = (), selector: Mapping[str, str] | None = None
) -> list[EdxHost]:
    """The Open edX hosts named by id and/or selected by tags (union): one DescribeInstances per criterion."""
    raw: dict[str, dict[str, Any]] = {}
    if instance_ids:
        for chunk in _chunks(list(instance_ids)):
            for inst in _describe_instances(ec2, [{"Name": "instance-id", "Values": chunk}]):
                raw[inst["InstanceId"]] = inst
    if selector:
        filters = [{"Name": f"tag:{k}", "Values": [v]} for k, v in sorted(selector.items())]
        for inst in _describe_instances(ec2, filters):
            raw[inst["InstanceId"]] = inst
    return [edx_host_from_instance(inst) for _, inst in sorted(raw.items())]


class EdxHostDirectory:
    """The Open edX hosts of every resource in a region, read together: one batched DescribeInstances per TTL.

    Each resource names its hosts by id and/or a tag selector. The directory remembers every id and selector it
    was asked for, re-reads them all at once when the TTL (the drift interval) has passed, and reads an id or a
    selector it has never seen straight away, so a spec change is never answered from an old snapshot.
    Thread-safe.
    """

    def __init__(self, ec2: Any, *, ttl_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._ec2 = ec2
        self._ttl = ttl_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._raw: dict[str, dict[str, Any]] = {}
        self._ids: set[str] = set()
        self._selected: dict[tuple[tuple[str, str], ...], tuple[str, ...]] = {}
        self._fetched_at: float | None = None

    def _read_ids(self, ids: Sequence[str]) -> None:
        for chunk in _chunks(sorted(ids)):
            for inst in _describe_instances(self._ec2, [{"Name": "instance-id", "Values": chunk}]):
                self._raw[inst["InstanceId"]] = inst

    def _read_selector(self, key: tuple[tuple[str, str], ...]) -> None:
        found = _describe_instances(self._ec2, [{"Name": f"tag:{k}", "Values": [v]} for k, v in key])
        for inst in found:
            self._raw[inst["InstanceId"]] = inst
        self._selected[key] = tuple(inst["InstanceId"] for inst in found)

    def hosts(
        self, *, instance_ids: Sequence[str] = (), selector: Mapping[str, str] | None = None
    ) -> list[EdxHost]:
        key = tuple(sorted((selector or {}).items()))
        with self._lock:
            now = self._clock()
            if self._fetched_at is None or now - self._fetched_at >= self._ttl:
                self._raw = {}
                self._read_ids(sorted(self._ids))
                for known in list(self._selected):
                    self._read_selector(known)
                self._fetched_at = now
            missing = sorted(set(instance_ids) - self._ids)
            if missing:
                self._ids.update(missing)
                self._read_ids(missing)
            if key and key not in self._selected:
                self._read_selector(key)
            wanted = set(instance_ids) | set(self._selected.get(key, ()) if key else ())
            raw = {i: self._raw[i] for i in wanted if i in self._raw}
        return [edx_host_from_instance(inst) for _, inst in sorted(raw.items())]


# --- cached lookups ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageInfo:
    image_id: str
    root_device_name: str


class CloudLookups:
    """Lookups whose answers rarely change, cached per region: the AMI (and its root device), a subnet's VPC."""

    def __init__(
        self,
        clients: AwsClients,
        *,
        parameter_ttl_seconds: float = AMI_PARAMETER_TTL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clients = clients
        self._parameter_ttl = parameter_ttl_seconds
        self._clock = clock
        self._images: dict[str, ImageInfo] = {}
        self._parameters: dict[str, tuple[float, str]] = {}
        self._vpcs: dict[str, str] = {}

    def image(self, *, ami: str | None, ami_parameter: str) -> ImageInfo:
        """An explicit AMI, else the public SSM parameter's current value; terminal error if neither resolves."""
        image_id = ami or self._parameter(ami_parameter)
        if image_id not in self._images:
            try:
                response = _call(self._clients.ec2, "describe_images", ImageIds=[image_id])
            except TerminalAwsError as exc:
                raise TerminalAwsError(
                    exc.code,
                    f"AMI {image_id} cannot be used in this region ({exc.message}); set spec.instance.ami to an "
                    "AMI id of this region or fix spec.instance.amiParameter",
                    operation=exc.operation,
                ) from exc
            images = (response or {}).get("Images") or []
            if not images:
                raise TerminalAwsError(
                    "InvalidAMIID.NotFound", f"AMI {image_id} does not exist in this region"
                )
            self._images[image_id] = ImageInfo(image_id, images[0].get("RootDeviceName") or "/dev/sda1")
        return self._images[image_id]

    def _parameter(self, name: str) -> str:
        cached = self._parameters.get(name)
        now = self._clock()
        if cached and now - cached[0] < self._parameter_ttl:
            return cached[1]
        try:
            response = _call(self._clients.ssm, "get_parameter", Name=name)
        except TerminalAwsError as exc:
            raise TerminalAwsError(
                exc.code,
                f"cannot resolve the AMI from SSM parameter {name} ({exc.message}); set spec.instance.ami or "
                "spec.instance.amiParameter to a parameter that exists in this region",
                operation=exc.operation,
            ) from exc
        value = str(((response or {}).get("Parameter") or {}).get("Value", "")).strip()
        if not value.startswith("ami-"):
            raise TerminalAwsError(
                "InvalidParameterValue", f"SSM parameter {name} holds {value!r}, which is not an AMI id"
            )
        self._parameters[name] = (now, value)
        return value

    def vpc_id(self, subnet_id: str) -> str:
        if subnet_id not in self._vpcs:
            response = _call(self._clients.ec2, "describe_subnets", SubnetIds=[subnet_id])
            subnets = (response or {}).get("Subnets") or []
            if not subnets:
                raise TerminalAwsError("InvalidSubnetID.NotFound", f"subnet {subnet_id} does not exist")
            self._vpcs[subnet_id] = subnets[0]["VpcId"]
        return self._vpcs[subnet_id]


# --- act ---------------------------------------------------------------------------------------------------------


RECONFIGURE_TIMEOUT_SECONDS = 120.0


class CommandOutcome(Protocol):
    """What `edx_remote_cache.adapters.ssm.CommandResult` offers the executor."""

    @property
    def ok(self) -> bool: ...
    @property
    def delivered(self) -> bool: ...
    @property
    def status(self) -> str: ...
    @property
    def exit_code(self) -> int: ...
    @property
    def stderr(self) -> str: ...


class SsmRunner(Protocol):
    """Runs a bash script on one instance through SSM Run Command (`edx_remote_cache.adapters.ssm.SsmAdapter`).

    Raises `SsmError` when SSM refuses; `.unreachable` means the agent is offline or the host is not managed.
    """

    def run_script(
        self, instance_id: str, script: str, *, timeout: float = ..., comment: str = ...
    ) -> CommandOutcome: ...


class _SpentToken(Exception):
    pass


@dataclass
class _Progress:
    launched: dict[str, str] = field(default_factory=dict)
    spent: list[str] = field(default_factory=list)
    generations: dict[int, int] = field(default_factory=dict)
    group_id: str | None = None
    started: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    terminated: list[str] = field(default_factory=list)
    reconfigured: list[str] = field(default_factory=list)
    ssm_unavailable: list[str] = field(default_factory=list)
    deleted_groups: list[str] = field(default_factory=list)
    waiting: list[WaitFor] = field(default_factory=list)
    mutations: int = 0

    def result(self) -> ActResult:
        return ActResult(
            launched=dict(self.launched),
            spent_tokens=tuple(self.spent),
            generations=dict(self.generations),
            created_group_id=self.group_id,
            started=tuple(self.started),
            stopped=tuple(self.stopped),
            terminated=tuple(self.terminated),
            reconfigured=tuple(self.reconfigured),
            ssm_unavailable=tuple(self.ssm_unavailable),
            deleted_groups=tuple(self.deleted_groups),
            waiting=tuple(self.waiting),
            mutations=self.mutations,
        )


class _Executor:
    def __init__(self, clients: AwsClients, ssm_runner: SsmRunner | None) -> None:
        self.ec2 = clients.ec2
        self.ssm_runner = ssm_runner
        self.progress = _Progress()

    def mutate(self, method: str, **params: Any) -> dict[str, Any] | None:
        response = _call(self.ec2, method, **params)
        self.progress.mutations += 1
        return response

    def group(self, group_id: str | None) -> str:
        resolved = group_id or self.progress.group_id
        if resolved is None:
            raise ValueError("plan refers to the new security group before CreateSecurityGroup")
        return resolved

    def own_group_missing(self, exc: AwsError) -> AwsError:
        """A group we created a moment ago may not be visible yet: that is retryable, unlike a user's typo."""
        created_here = self.progress.group_id is not None
        if created_here and exc.code in ("InvalidGroup.NotFound", "InvalidSecurityGroupID.NotFound"):
            return RetryableAwsError(exc.code, exc.message, operation=exc.operation)
        return exc

    def run(self, action: Action) -> None:
        handler = getattr(self, f"_{type(action).__name__}")
        handler(action)

    def _CreateSecurityGroup(self, a: CreateSecurityGroup) -> None:
        spec = [{"ResourceType": "security-group", "Tags": _aws_tags(a.tags)}]
        response = self.mutate(
            "create_security_group",
            GroupName=a.name,
            Description=a.description,
            VpcId=a.vpc_id,
            TagSpecifications=spec,
        )
        if response is not None:
            self.progress.group_id = response["GroupId"]
            return
        # Already exists (created by an earlier pass not yet visible to the tag filter): find it, re-tag it.
        found = _call(
            self.ec2,
            "describe_security_groups",
            Filters=[{"Name": "group-name", "Values": [a.name]}, {"Name": "vpc-id", "Values": [a.vpc_id]}],
        )
        groups = (found or {}).get("SecurityGroups") or []
        if not groups:
            raise RetryableAwsError("InvalidGroup.Duplicate", f"group {a.name} exists but is not visible yet")
        self.progress.group_id = groups[0]["GroupId"]
        self.mutate("create_tags", Resources=[self.progress.group_id], Tags=_aws_tags(a.tags))

    def _AuthorizeIngress(self, a: AuthorizeIngress) -> None:
        group_id = self.group(a.group_id)
        try:
            response = self.mutate(
                "authorize_security_group_ingress",
                GroupId=group_id,
                IpPermissions=[r.to_ip_permission() for r in a.rules],
            )
            # One duplicate fails the whole batch (reported as "already done"): add the rules one by one.
            if response is None and len(a.rules) > 1:
                for rule in a.rules:
                    self._authorize_one(group_id, rule)
        except AwsError as exc:
            raise self.own_group_missing(exc) from exc

    def _authorize_one(self, group_id: str, rule: IngressRule) -> None:
        self.mutate(
            "authorize_security_group_ingress", GroupId=group_id, IpPermissions=[rule.to_ip_permission()]
        )

    def _RevokeIngress(self, a: RevokeIngress) -> None:
        ids = list(a.rule_ids)
        unnamed = [r.rule for r in a.rules if not r.rule_id]
        if unnamed:
            response = _call(
                self.ec2,
                "describe_security_group_rules",
                Filters=[{"Name": "group-id", "Values": [a.group_id]}],
            )
            by_rule = {
                (o := rule_from_security_group_rule(raw)).rule: o.rule_id
                for raw in (response or {}).get("SecurityGroupRules", ())
                if not raw.get("IsEgress")
            }
            ids += [rid for rule in unnamed if (rid := by_rule.get(rule))]
        if ids:
            response = self.mutate(
                "revoke_security_group_ingress", GroupId=a.group_id, SecurityGroupRuleIds=ids
            )
            # One id already gone fails the whole batch (reported as "already done"): revoke the rest singly.
            if response is None and len(ids) > 1:
                for rid in ids:
                    self.mutate(
                        "revoke_security_group_ingress", GroupId=a.group_id, SecurityGroupRuleIds=[rid]
                    )

    def _RunInstance(self, a: RunInstance) -> None:
        ebs: dict[str, Any] = {
            "VolumeSize": a.root_volume_gib,
            "VolumeType": "gp3",
            "DeleteOnTermination": True,
        }
        if a.root_volume_encrypted:
            ebs["Encrypted"] = True
        params: dict[str, Any] = {
            "ImageId": a.image_id,
            "InstanceType": a.instance_type,
            "MinCount": 1,
            "MaxCount": 1,
            "ClientToken": a.client_token,
            "UserData": a.user_data,
            "MetadataOptions": {
                "HttpTokens": "required",
                "HttpPutResponseHopLimit": 1,
                "HttpEndpoint": "enabled",
            },
            "BlockDeviceMappings": [{"DeviceName": a.root_device_name, "Ebs": ebs}],
            "NetworkInterfaces": [
                {
                    "DeviceIndex": 0,
                    "SubnetId": a.subnet_id,
                    "Groups": [self.group(a.group_id)],
                    "AssociatePublicIpAddress": False,
                    "DeleteOnTermination": True,
                }
            ],
            "TagSpecifications": [
                {"ResourceType": "instance", "Tags": _aws_tags(a.tags)},
                {"ResourceType": "volume", "Tags": _aws_tags(a.volume_tags)},
            ],
        }
        if a.key_name:
            params["KeyName"] = a.key_name
        if a.iam_instance_profile:
            key = "Arn" if a.iam_instance_profile.startswith("arn:") else "Name"
            params["IamInstanceProfile"] = {key: a.iam_instance_profile}
        try:
            response = self.mutate("run_instances", **params) or {}
        except AwsError as exc:
            if exc.code in SPENT_TOKEN_CODES:
                self.progress.spent.append(a.client_token)
                raise _SpentToken from exc
            raise self.own_group_missing(exc) from exc
        instance = (response.get("Instances") or [{}])[0]
        if (instance.get("State") or {}).get("Name") in GONE_STATES:
            # AWS hands back the original (now terminated) instance for a reused token.
            self.progress.spent.append(a.client_token)
            raise _SpentToken
        self.progress.launched[a.client_token] = instance["InstanceId"]
        self.progress.generations[a.index] = a.generation

    def _StartInstance(self, a: StartInstance) -> None:
        self.mutate("start_instances", InstanceIds=[a.instance_id])
        self.progress.started.append(a.instance_id)

    def _StopInstance(self, a: StopInstance) -> None:
        self.mutate("stop_instances", InstanceIds=[a.instance_id])
        self.progress.stopped.append(a.instance_id)

    def _ModifyInstanceType(self, a: ModifyInstanceType) -> None:
        self.mutate(
            "modify_instance_attribute", InstanceId=a.instance_id, InstanceType={"Value": a.instance_type}
        )

    def _TerminateInstance(self, a: TerminateInstance) -> None:
        self.mutate("terminate_instances", InstanceIds=[a.instance_id])
        self.progress.terminated.append(a.instance_id)

    def _TagResources(self, a: TagResources) -> None:
        self.mutate("create_tags", Resources=list(a.resource_ids), Tags=_aws_tags(a.tags))

    def _UntagResources(self, a: UntagResources) -> None:
        tags = [{"Key": k} for k in a.keys]
        for chunk in _chunks(list(a.resource_ids)):
            try:
                self.mutate("delete_tags", Resources=chunk, Tags=tags)
            except RetryableAwsError as exc:
                if not exc.code.endswith(".NotFound") or len(chunk) == 1:
                    raise
                for resource in chunk:  # one resource of the batch is gone: untag the others
                    self.mutate("delete_tags", Resources=[resource], Tags=tags)

    def _set_groups(self, instance_id: str, network_interface_id: str, group_ids: Sequence[str]) -> None:
        groups = list(dict.fromkeys(group_ids))
        if network_interface_id:
            self.mutate(
                "modify_network_interface_attribute", NetworkInterfaceId=network_interface_id, Groups=groups
            )
        else:
            self.mutate("modify_instance_attribute", InstanceId=instance_id, Groups=groups)

    def _AttachSecurityGroup(self, a: AttachSecurityGroup) -> None:
        try:
            self._set_groups(
                a.instance_id, a.network_interface_id, [*a.keep_group_ids, self.group(a.group_id)]
            )
        except AwsError as exc:
            raise self.own_group_missing(exc) from exc

    def _DetachSecurityGroup(self, a: DetachSecurityGroup) -> None:
        keep = list(a.keep_group_ids)
        if not keep:  # an interface needs one group: fall back to the VPC's default group
            keep = [self._default_group(a.instance_id)]
        self._set_groups(a.instance_id, a.network_interface_id, keep)

    def _default_group(self, instance_id: str) -> str:
        found = _call(self.ec2, "describe_instances", InstanceIds=[instance_id]) or {}
        vpc_id = found["Reservations"][0]["Instances"][0]["VpcId"]
        groups = _call(
            self.ec2,
            "describe_security_groups",
            Filters=[{"Name": "vpc-id", "Values": [vpc_id]}, {"Name": "group-name", "Values": ["default"]}],
        )
        return str((groups or {})["SecurityGroups"][0]["GroupId"])

    def _HardenMetadata(self, a: HardenMetadata) -> None:
        self.mutate(
            "modify_instance_metadata_options",
            InstanceId=a.instance_id,
            HttpTokens="required",
            HttpPutResponseHopLimit=1,
            HttpEndpoint="enabled",
        )

    def _ReconfigureMemcached(self, a: ReconfigureMemcached) -> None:
        if self.ssm_runner is None:
            self.progress.ssm_unavailable.append(a.instance_id)
            return
        try:
            outcome = self.ssm_runner.run_script(
                a.instance_id,
                a.script,
                timeout=RECONFIGURE_TIMEOUT_SECONDS,
                comment="edx-remote-cache: reconfigure memcached",
            )
        except SsmError as exc:
            if exc.unreachable:
                self.progress.ssm_unavailable.append(a.instance_id)
                return
            raise RetryableAwsError(exc.code, str(exc), operation="SendCommand") from exc
        self.progress.mutations += 1
        if not outcome.delivered:
            self.progress.ssm_unavailable.append(a.instance_id)
            return
        if not outcome.ok:
            raise RetryableAwsError(
                "ReconfigureFailed",
                f"memcached reconfigure on {a.instance_id} ended {outcome.status} (exit {outcome.exit_code}): "
                f"{outcome.stderr[-400:]}",
                operation="SendCommand",
            )
        self.mutate(
            "create_tags", Resources=[a.instance_id], Tags=[{"Key": CONFIG_HASH_TAG, "Value": a.config_hash}]
        )
        self.progress.reconfigured.append(a.instance_id)

    def _DeleteSecurityGroup(self, a: DeleteSecurityGroup) -> None:
        self.mutate("delete_security_group", GroupId=a.group_id)
        self.progress.deleted_groups.append(a.group_id)

    def _WaitFor(self, a: WaitFor) -> None:
        self.progress.waiting.append(a)


def act(plan: Plan, *, clients: AwsClients, ssm_runner: SsmRunner | None = None) -> ActResult:
    """Execute `plan` in order and report what changed.

    Stops early (without raising) when a client token turns out to be spent, so a replacement never
    terminates the old instance without its successor; the caller records `spent_tokens` and the next diff
    moves to the next generation. An AwsError carries what had changed before it in `.partial`.
    """
    executor = _Executor(clients, ssm_runner)
    for action in plan.actions:
        try:
            executor.run(action)
        except _SpentToken:
            break
        except AwsError as exc:
            exc.partial = executor.progress.result()
            raise
    return executor.progress.result()
