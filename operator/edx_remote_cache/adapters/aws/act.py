"""Plan execution: each planned action as one idempotent EC2 call (or an SSM command), in plan order."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from edx_remote_cache.adapters.aws.clients import AwsClients, _chunks
from edx_remote_cache.adapters.aws.errors import (
    SPENT_TOKEN_CODES,
    AwsError,
    RetryableAwsError,
    _call,
)
from edx_remote_cache.adapters.ports import SsmRunner
from edx_remote_cache.adapters.ssm import COMMENT_RECONFIGURE, SsmError
from edx_remote_cache.domain.cloud import actions
from edx_remote_cache.domain.cloud.model import CONFIG_HASH_TAG, GONE_STATES, IngressRule
from edx_remote_cache.domain.cloud.normalize import rule_from_security_group_rule

RECONFIGURE_TIMEOUT_SECONDS = 120.0


def _aws_tags(tags: Iterable[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in tags]


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
    waiting: list[actions.WaitFor] = field(default_factory=list)
    mutations: int = 0

    def result(self) -> actions.ActResult:
        return actions.ActResult(
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
            raise ValueError("plan refers to the new security group before actions.CreateSecurityGroup")
        return resolved

    def own_group_missing(self, exc: AwsError) -> AwsError:
        """A group we created a moment ago may not be visible yet: that is retryable, unlike a user's typo."""
        created_here = self.progress.group_id is not None
        if created_here and exc.code in ("InvalidGroup.NotFound", "InvalidSecurityGroupID.NotFound"):
            return RetryableAwsError(exc.code, exc.message, operation=exc.operation)
        return exc

    def run(self, action: actions.Action) -> None:
        handler = getattr(self, f"_{type(action).__name__}")
        handler(action)

    def _CreateSecurityGroup(self, a: actions.CreateSecurityGroup) -> None:
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

    def _AuthorizeIngress(self, a: actions.AuthorizeIngress) -> None:
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

    def _RevokeIngress(self, a: actions.RevokeIngress) -> None:
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

    def _RunInstance(self, a: actions.RunInstance) -> None:
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

    def _StartInstance(self, a: actions.StartInstance) -> None:
        self.mutate("start_instances", InstanceIds=[a.instance_id])
        self.progress.started.append(a.instance_id)

    def _StopInstance(self, a: actions.StopInstance) -> None:
        self.mutate("stop_instances", InstanceIds=[a.instance_id])
        self.progress.stopped.append(a.instance_id)

    def _ModifyInstanceType(self, a: actions.ModifyInstanceType) -> None:
        self.mutate(
            "modify_instance_attribute", InstanceId=a.instance_id, InstanceType={"Value": a.instance_type}
        )

    def _TerminateInstance(self, a: actions.TerminateInstance) -> None:
        self.mutate("terminate_instances", InstanceIds=[a.instance_id])
        self.progress.terminated.append(a.instance_id)

    def _TagResources(self, a: actions.TagResources) -> None:
        self.mutate("create_tags", Resources=list(a.resource_ids), Tags=_aws_tags(a.tags))

    def _UntagResources(self, a: actions.UntagResources) -> None:
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

    def _AttachSecurityGroup(self, a: actions.AttachSecurityGroup) -> None:
        try:
            self._set_groups(
                a.instance_id, a.network_interface_id, [*a.keep_group_ids, self.group(a.group_id)]
            )
        except AwsError as exc:
            raise self.own_group_missing(exc) from exc

    def _DetachSecurityGroup(self, a: actions.DetachSecurityGroup) -> None:
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

    def _HardenMetadata(self, a: actions.HardenMetadata) -> None:
        self.mutate(
            "modify_instance_metadata_options",
            InstanceId=a.instance_id,
            HttpTokens="required",
            HttpPutResponseHopLimit=1,
            HttpEndpoint="enabled",
        )

    def _ReconfigureMemcached(self, a: actions.ReconfigureMemcached) -> None:
        if self.ssm_runner is None:
            self.progress.ssm_unavailable.append(a.instance_id)
            return
        try:
            outcome = self.ssm_runner.run_script(
                a.instance_id,
                a.script,
                timeout=RECONFIGURE_TIMEOUT_SECONDS,
                comment=COMMENT_RECONFIGURE,
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

    def _DeleteSecurityGroup(self, a: actions.DeleteSecurityGroup) -> None:
        self.mutate("delete_security_group", GroupId=a.group_id)
        self.progress.deleted_groups.append(a.group_id)

    def _WaitFor(self, a: actions.WaitFor) -> None:
        self.progress.waiting.append(a)


def act(plan: actions.Plan, *, clients: AwsClients, ssm_runner: SsmRunner | None = None) -> actions.ActResult:
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
