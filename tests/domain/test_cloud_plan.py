"""Table tests of the pure cache-host planner: (desired, observed) -> plan, for every action type."""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edx_remote_cache import OWNER_TAG, OWNER_UID_TAG
from edx_remote_cache.domain.cloud.actions import (
    ActResult,
    AttachSecurityGroup,
    AuthorizeIngress,
    CreateSecurityGroup,
    DeleteSecurityGroup,
    DetachSecurityGroup,
    HardenMetadata,
    ModifyInstanceType,
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
    prune_launches,
    record_launches,
    record_replacements,
)
from edx_remote_cache.domain.cloud.desired import DesiredCacheHost, client_token, desired_from_spec
from edx_remote_cache.domain.cloud.diff import diff, endpoints
from edx_remote_cache.domain.cloud.model import (
    ADOPTED_TAG,
    CONFIG_HASH_TAG,
    GENERATION_TAG,
    INDEX_TAG,
    LAUNCH_GRACE_SECONDS,
    NAME_TAG,
    IngressRule,
    ObservedCloud,
    ObservedInstance,
    ObservedRule,
    ObservedSecurityGroup,
    Owner,
)
from edx_remote_cache.domain.cloud.normalize import (
    edx_security_groups,
    group_by_owner,
    normalize_instance,
    rules_from_ip_permissions,
)
from edx_remote_cache.domain.cloud.teardown import teardown_plan
from edx_remote_cache.domain.spec import parse_spec

pytestmark = pytest.mark.timeout(30)

OWNER = Owner("openedx", "cache", "0b6f1c1e-5d8a-4a4e-9d0e-3f9c5b6a7d21")
GROUP = "sg-0aaaaaaaaaaaaaaa1"
EDX_GROUP = "sg-0eeeeeeeeeeeeeee1"
HOST_GROUP = "sg-0bbbbbbbbbbbbbbb1"
VPC = "vpc-0123456789abcdef0"
SUBNET = "subnet-0123456789abcdef0"
AMI = "ami-0123456789abcdef0"
NOW = 1_000_000.0
BASE_SPEC: dict[str, Any] = {
    "region": "us-east-1",
    "instance": {"subnetId": SUBNET, "instanceType": "t3.medium", "tags": {"team": "platform"}},
    "network": {"allowFromCidrs": ["10.0.0.0/16"], "sshFromCidrs": ["10.9.0.0/24"]},
    "openedx": {"hosts": ["i-0ed00000000000001"]},
}


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, Mapping) and key in out else value
    return out


def make_desired(
    extra: Mapping[str, Any] | None = None, *, replacements: Mapping[int, int] | None = None
) -> DesiredCacheHost:
    spec = parse_spec(_merge(BASE_SPEC, extra or {}))
    return desired_from_spec(
        spec,
        owner=OWNER,
        ami_id=AMI,
        root_device_name="/dev/sda1",
        vpc_id=VPC,
        edx_security_groups=[EDX_GROUP],
        replacements=replacements,
    )


def instance(
    desired: DesiredCacheHost,
    index: int | None,
    *,
    state: str = "running",
    instance_type: str | None = None,
    instance_id: str | None = None,
    generation: int = 0,
    config: str | None = None,
    groups: tuple[str, ...] = (GROUP,),
    subnet: str = SUBNET,
    drop_tags: tuple[str, ...] = (),
    extra_tags: Mapping[str, str] | None = None,
    metadata: str = "required",
) -> ObservedInstance:
    """An instance exactly as the planner would have launched it, adjusted by the arguments."""
    tags = {
        **desired.managed_instance_tags(index or 0, adopted=False),
        GENERATION_TAG: str(generation),
        CONFIG_HASH_TAG: config if config is not None else desired.config_hash,
        **(extra_tags or {}),
    }
    if index is None:
        tags.pop(INDEX_TAG)
    for key in drop_tags:
        tags.pop(key, None)
    return ObservedInstance(
        instance_id=instance_id or f"i-0{(index or 0) + 1:016x}",
        state=state,
        instance_type=instance_type or desired.instance_type,
        tags=tuple(sorted(tags.items())),
        subnet_id=subnet,
        vpc_id=VPC,
        private_ip=f"10.0.1.{10 + (index or 0)}",
        security_group_ids=groups,
        network_interface_id=f"eni-0{(index or 0) + 1:016x}",
        volume_ids=(f"vol-0{(index or 0) + 1:016x}",),
        launch_time=NOW - 3600,
        metadata_http_tokens=metadata,
    )


def rule_id(rule: IngressRule) -> str:
    digest = hashlib.sha256(repr((rule.protocol, rule.from_port, rule.to_port, rule.source)).encode())
    return "sgr-" + digest.hexdigest()[:17]


def security_group(
    desired: DesiredCacheHost,
    rules: tuple[IngressRule, ...] | None = None,
    *,
    tags: Mapping[str, str] | None = None,
) -> ObservedSecurityGroup:
    rules = desired.ingress if rules is None else rules
    return ObservedSecurityGroup(
        group_id=GROUP,
        name=desired.security_group_name,
        vpc_id=VPC,
        tags=tuple(sorted((tags if tags is not None else desired.group_tags()).items())),
        ingress=tuple(sorted(ObservedRule(r, rule_id(r)) for r in rules)),
    )


def steady(desired: DesiredCacheHost, **group_kw: Any) -> ObservedCloud:
    return ObservedCloud(
        instances=tuple(instance(desired, i) for i in range(desired.replicas)),
        security_groups=(security_group(desired, **group_kw),),
    )


def plan_of(desired: DesiredCacheHost, observed: ObservedCloud, **kw: Any) -> Plan:
    kw.setdefault("now", NOW)
    return diff(desired=desired, observed=observed, **kw)


def kinds(plan: Plan) -> list[str]:
    return [type(a).__name__ for a in plan]


# --- desired state ---------------------------------------------------------------------------------------------


def test_desired_ingress_is_port_from_groups_and_cidrs_and_ssh_only() -> None:
    desired = make_desired()
    assert set(desired.ingress) == {
        IngressRule("tcp", 22, 22, cidr_ipv4="10.9.0.0/24"),
        IngressRule("tcp", 11211, 11211, cidr_ipv4="10.0.0.0/16"),
        IngressRule("tcp", 11211, 11211, group_id=EDX_GROUP),
    }
    assert list(desired.ingress) == sorted(desired.ingress)
    explicit = make_desired(
        {"network": {"allowFromSecurityGroups": [HOST_GROUP]}, "memcached": {"port": 11311}}
    )
    assert IngressRule("tcp", 11311, 11311, group_id=HOST_GROUP) in explicit.ingress
    assert all(r.group_id != EDX_GROUP for r in explicit.ingress), "explicit groups replace the hosts' groups"


def test_client_token_is_deterministic_short_ascii() -> None:
    token = client_token(owner_uid=OWNER.uid, index=2, generation=3)
    assert token == f"erc-{OWNER.uid}-2-3"
    assert token == client_token(owner_uid=OWNER.uid, index=2, generation=3)
    long = client_token(owner_uid="x" * 80, index=15, generation=1234)
    assert len(long) <= 64 and long.isascii()
    assert long != client_token(owner_uid="x" * 80, index=15, generation=1235)


def test_config_hash_follows_memcached_settings_only() -> None:
    assert make_desired().config_hash == make_desired({"instance": {"tags": {"x": "y"}}}).config_hash
    assert make_desired().config_hash != make_desired({"memcached": {"maxConnections": 2048}}).config_hash


# --- diff: one table row per action type ----------------------------------------------------------------------


def test_fresh_create() -> None:
    desired = make_desired()
    plan = plan_of(desired, ObservedCloud())
    assert kinds(plan) == ["CreateSecurityGroup", "AuthorizeIngress", "RunInstance"]
    create, authorize, run = plan.actions
    assert isinstance(create, CreateSecurityGroup) and create.vpc_id == VPC
    assert dict(create.tags)[OWNER_TAG] == OWNER.key and dict(create.tags)[OWNER_UID_TAG] == OWNER.uid
    assert authorize == AuthorizeIngress(None, desired.ingress)
    assert isinstance(run, RunInstance)
    assert (run.index, run.generation, run.group_id) == (0, 0, None)
    assert run.client_token == client_token(owner_uid=OWNER.uid, index=0, generation=0)
    tags = dict(run.tags)
    assert tags[OWNER_TAG] == "openedx/cache" and tags[OWNER_UID_TAG] == OWNER.uid
    assert tags[NAME_TAG] == "erc-openedx-cache-0" and tags[INDEX_TAG] == "0" and tags["team"] == "platform"
    assert tags[CONFIG_HASH_TAG] == desired.config_hash
    assert dict(run.volume_tags)[OWNER_TAG] == OWNER.key
    assert run.root_volume_encrypted and run.root_volume_gib == 8 and run.root_device_name == "/dev/sda1"
    assert run.user_data.startswith("#!/bin/bash")


def test_idempotent_rerun_is_empty() -> None:
    desired = make_desired({"instance": {"replicas": 3}})
    plan = plan_of(desired, steady(desired))
    assert plan == Plan()
    assert not plan


def test_stopped_out_of_band_is_started() -> None:
    desired = make_desired()
    observed = ObservedCloud((instance(desired, 0, state="stopped"),), (security_group(desired),))
    assert plan_of(desired, observed).actions == (StartInstance("i-00000000000000001"),)


def test_stopping_waits_for_stopped() -> None:
    desired = make_desired()
    observed = ObservedCloud((instance(desired, 0, state="stopping"),), (security_group(desired),))
    assert kinds(plan_of(desired, observed)) == ["WaitFor"]


def test_terminated_is_relaunched_with_the_next_token() -> None:
    desired = make_desired()
    old = client_token(owner_uid=OWNER.uid, index=0, generation=0)
    observed = ObservedCloud((), (security_group(desired),))  # terminated instances are not observed
    plan = plan_of(desired, observed, launches={old: NOW - 3 * LAUNCH_GRACE_SECONDS})
    (run,) = plan.actions
    assert isinstance(run, RunInstance) and run.generation == 1 and run.group_id == GROUP
    assert run.client_token == client_token(owner_uid=OWNER.uid, index=0, generation=1)
    # the caller recorded generation 1 but its launch is not visible yet: wait, do not launch generation 2
    desired1 = make_desired(replacements={0: 1})
    waiting = plan_of(desired1, observed, launches={old: 0.0, run.client_token: NOW - 5})
    assert kinds(waiting) == ["WaitFor"]


def test_just_launched_invisible_instance_within_grace_is_waited_for() -> None:
    desired = make_desired()
    token = client_token(owner_uid=OWNER.uid, index=0, generation=0)
    observed = ObservedCloud((), (security_group(desired),))
    plan = plan_of(desired, observed, launches={token: NOW - 30})
    assert plan.actions == (WaitFor((token,), "visible", f"replica 0 was launched with {token}"),)
    assert not plan.of_type(RunInstance)
    after_grace = plan_of(desired, observed, launches={token: NOW - LAUNCH_GRACE_SECONDS - 1})
    assert [a.generation for a in after_grace.of_type(RunInstance)] == [1]


def test_type_change_stops_one_instance_then_modifies_and_starts_it() -> None:
    desired = make_desired({"instance": {"replicas": 2, "instanceType": "t3.large"}})
    first = ObservedCloud(
        tuple(instance(desired, i, instance_type="t3.medium") for i in range(2)), (security_group(desired),)
    )
    plan = plan_of(desired, first)
    assert kinds(plan) == ["StopInstance", "WaitFor"]
    assert plan.actions[0] == StopInstance("i-00000000000000001", "instance type t3.medium -> t3.large")

    stopped = ObservedCloud(
        (instance(desired, 0, state="stopped", instance_type="t3.medium"), first.instances[1]),
        first.security_groups,
    )
    plan = plan_of(desired, stopped)
    assert plan.actions[:2] == (
        ModifyInstanceType("i-00000000000000001", "t3.large"),
        StartInstance("i-00000000000000001"),
    )
    assert kinds(plan)[2:] == ["WaitFor"], "replica 1 waits for replica 0 to run again"
    # replica 0 is starting: replica 1 is not touched until it runs
    starting = ObservedCloud(
        (instance(desired, 0, state="pending"), first.instances[1]), first.security_groups
    )
    plan = plan_of(desired, starting)
    assert kinds(plan) == ["WaitFor"] and plan.actions[0].until == "running"
    done0 = ObservedCloud((instance(desired, 0), first.instances[1]), first.security_groups)
    assert plan_of(desired, done0).actions[0] == StopInstance(
        "i-00000000000000002", "instance type t3.medium -> t3.large"
    )


def test_scale_up_1_to_3_launches_the_missing_indexes() -> None:
    one = make_desired()
    three = make_desired({"instance": {"replicas": 3}})
    plan = plan_of(three, steady(one))
    assert [(a.index, a.generation) for a in plan.of_type(RunInstance)] == [(1, 0), (2, 0)]
    assert kinds(plan) == ["RunInstance", "RunInstance"]


def test_scale_down_3_to_1_terminates_highest_index_first() -> None:
    three = make_desired({"instance": {"replicas": 3}})
    one = make_desired()
    plan = plan_of(one, steady(three))
    assert [a.instance_id for a in plan.actions] == ["i-00000000000000003", "i-00000000000000002"]
    assert all(isinstance(a, TerminateInstance) for a in plan)


def test_scale_down_waits_while_the_kept_replica_is_down() -> None:
    three = make_desired({"instance": {"replicas": 3}})
    one = make_desired()
    observed = steady(three)
    observed = ObservedCloud(
        (instance(one, 0, state="stopped"), *observed.instances[1:]), observed.security_groups
    )
    plan = plan_of(one, observed)
    assert kinds(plan) == ["StartInstance"]
    assert any("extra instances are kept" in n for n in plan.notes)


def test_drift_world_open_and_udp_rules_are_revoked_by_id() -> None:
    desired = make_desired()
    world = IngressRule("tcp", 11211, 11211, cidr_ipv4="0.0.0.0/0")
    udp = IngressRule("udp", 11211, 11211, cidr_ipv4="10.0.0.0/16")
    observed = steady(desired, rules=(*desired.ingress, world, udp))
    plan = plan_of(desired, observed)
    assert kinds(plan) == ["RevokeIngress"]
    (revoke,) = plan.actions
    assert isinstance(revoke, RevokeIngress) and revoke.group_id == GROUP
    assert {r.rule for r in revoke.rules} == {world, udp}
    assert set(revoke.rule_ids) == {rule_id(world), rule_id(udp)}


def test_missing_rule_is_authorized_and_matching_rules_keep_their_ids() -> None:
    desired = make_desired()
    missing = desired.ingress[0]
    observed = steady(desired, rules=desired.ingress[1:])
    plan = plan_of(desired, observed)
    assert plan.actions == (AuthorizeIngress(GROUP, (missing,)),)
    assert not plan.of_type(RevokeIngress), "matching rules are never revoked and re-added"


def test_port_change_revokes_old_port_and_reconfigures() -> None:
    old = make_desired()
    new = make_desired({"memcached": {"port": 11311}})
    observed = steady(old)
    plan = plan_of(new, ObservedCloud(observed.instances, observed.security_groups))
    assert kinds(plan) == ["RevokeIngress", "AuthorizeIngress", "ReconfigureMemcached"]


def test_observed_rules_are_normalised_like_aws() -> None:
    raw = [
        {
            "IpProtocol": "6",
            "FromPort": 11211,
            "ToPort": 11211,
            "IpRanges": [{"CidrIp": "10.0.7.1/16", "Description": "edited in console"}],
            "UserIdGroupPairs": [{"GroupId": EDX_GROUP, "UserId": "123456789012"}],
        },
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "10.9.0.0/24"}]},
        {"IpProtocol": "-1", "Ipv6Ranges": [{"CidrIpv6": "0:0::/0"}]},
    ]
    rules = rules_from_ip_permissions(raw)
    desired = make_desired()
    assert set(desired.ingress) <= set(rules)
    assert IngressRule("-1", -1, -1, cidr_ipv6="::/0") in rules
    assert list(rules) == sorted(rules)


def test_memcached_config_change_reconfigures_one_replica_per_pass() -> None:
    desired = make_desired({"instance": {"replicas": 2}, "memcached": {"maxConnections": 4096}})
    observed = ObservedCloud(
        tuple(instance(desired, i, config="0000000000000000") for i in range(2)), (security_group(desired),)
    )
    plan = plan_of(desired, observed)
    assert plan.actions == (
        ReconfigureMemcached("i-00000000000000001", 0, desired.reconfigure_script, desired.config_hash),
    )
    assert "-c 4096" in desired.reconfigure_script


def test_host_without_ssm_is_replaced_next_generation_first_and_kept_until_then() -> None:
    desired = make_desired()
    observed = ObservedCloud((instance(desired, 0, config="0000000000000000"),), (security_group(desired),))
    plan = plan_of(desired, observed, replace={"i-00000000000000001"})
    assert kinds(plan) == ["RunInstance"], "make before break: the old instance keeps serving"
    (run,) = plan.actions
    assert isinstance(run, RunInstance) and run.generation == 1 and run.index == 0


def test_a_stopped_instance_being_replaced_goes_with_the_launch() -> None:
    desired = make_desired()
    observed = ObservedCloud((instance(desired, 0, state="stopped"),), (security_group(desired),))
    plan = plan_of(desired, observed, replace={"i-00000000000000001"})
    assert kinds(plan) == ["RunInstance", "TerminateInstance"], "a stopped instance serves nothing to keep"
    assert plan.actions[1] == TerminateInstance("i-00000000000000001", "replaced by generation 1")


OLD = "i-0000000000000000a"
NEW = "i-0000000000000000b"


def _replaced(desired: DesiredCacheHost, *, new_state: str = "running") -> ObservedCloud:
    old = instance(desired, 0, instance_id=OLD)
    new = instance(desired, 0, instance_id=NEW, generation=1, state=new_state)
    return ObservedCloud((old, new), (security_group(desired),))


@pytest.mark.parametrize(
    ("new_state", "answered", "in_use", "expected"),
    [
        ("pending", (), {OLD}, WaitFor((NEW,), "running", "a successor is starting")),
        (
            "running",
            (),
            {OLD},
            WaitFor((NEW,), "answered", f"{OLD} keeps serving until its successor {NEW} answers"),
        ),
        (
            "running",
            {NEW},
            {OLD},
            WaitFor((OLD,), "answered", f"{OLD} is kept until no Open edX host points at it"),
        ),
        (
            "running",
            {NEW},
            (),
            TerminateInstance(OLD, "replaced by generation 1, which answers and serves the hosts"),
        ),
    ],
    ids=["successor-pending", "successor-silent", "hosts-still-on-old", "answered-and-repointed"],
)
def test_the_old_instance_goes_only_after_its_successor_answered_and_the_hosts_moved(
    new_state: str, answered: Any, in_use: Any, expected: Any
) -> None:
    desired = make_desired(replacements={0: 1})
    plan = plan_of(desired, _replaced(desired, new_state=new_state), answered=answered, in_use=in_use)
    assert plan.actions == (expected,)


def test_an_old_instance_that_never_answered_and_serves_no_host_goes_at_once() -> None:
    """A boot that failed: nothing to keep, so make-before-break does not leave it running beside its successor."""
    desired = make_desired(replacements={0: 1})
    plan = plan_of(desired, _replaced(desired, new_state="running"), answered=(), in_use=())
    assert kinds(plan) == ["TerminateInstance"]


def test_adoption_tags_attaches_and_never_launches() -> None:
    host = "i-0abcabcabcabcabc1"
    desired = make_desired({"instance": {"adoptInstanceIds": [host]}})
    untagged = ObservedInstance(
        instance_id=host,
        state="running",
        instance_type="t3.medium",
        tags=(("Name", "legacy-memcached"),),
        subnet_id=SUBNET,
        vpc_id=VPC,
        private_ip="10.0.1.99",
        security_group_ids=(HOST_GROUP,),
        network_interface_id="eni-0abcabcabcabcabc1",
    )
    plan = plan_of(desired, ObservedCloud((untagged,), (security_group(desired),)))
    assert kinds(plan) == ["TagResources", "AttachSecurityGroup", "ReconfigureMemcached"]
    tag, attach, _ = plan.actions
    assert isinstance(tag, TagResources) and tag.resource_ids == (host,)
    tags = dict(tag.tags)
    assert tags[OWNER_TAG] == OWNER.key and tags[INDEX_TAG] == "0" and tags[ADOPTED_TAG] == "true"
    assert NAME_TAG not in tags, "an adopted host keeps its name"
    assert attach == AttachSecurityGroup(host, "eni-0abcabcabcabcabc1", GROUP, (HOST_GROUP,))
    assert not plan.of_type(RunInstance)

    gone = plan_of(desired, ObservedCloud((), (security_group(desired),)))
    assert not gone.of_type(RunInstance)
    assert any("was not found" in n for n in gone.notes)


def test_adopted_host_in_steady_state_is_left_alone() -> None:
    host = "i-0abcabcabcabcabc1"
    desired = make_desired({"instance": {"adoptInstanceIds": [host]}})
    tags = {
        **desired.managed_instance_tags(0, adopted=True),
        CONFIG_HASH_TAG: desired.config_hash,
        "Name": "x",
    }
    adopted = ObservedInstance(
        host,
        "running",
        "t3.medium",
        tuple(sorted(tags.items())),
        subnet_id="subnet-0ffffffffffffffff",  # another subnet: noted, never replaced
        vpc_id=VPC,
        security_group_ids=tuple(sorted((HOST_GROUP, GROUP))),
        network_interface_id="eni-1",
        metadata_http_tokens="optional",  # the host's own business
    )
    plan = plan_of(desired, ObservedCloud((adopted,), (security_group(desired),)), replace={host})
    assert plan.actions == ()
    assert any("never replaced" in n for n in plan.notes)


def test_missing_tags_are_added_back() -> None:
    desired = make_desired()
    inst = instance(desired, 0, drop_tags=("team", NAME_TAG))
    group = security_group(desired, tags={**desired.group_tags(), "team": "other"})
    plan = plan_of(desired, ObservedCloud((inst,), (group,)))
    assert plan.actions == (
        TagResources((GROUP,), (("team", "platform"),)),
        TagResources((inst.instance_id,), ((NAME_TAG, "erc-openedx-cache-0"), ("team", "platform"))),
    )


def test_lost_index_tag_fills_the_hole() -> None:
    desired = make_desired()
    inst = instance(desired, None)
    plan = plan_of(desired, ObservedCloud((inst,), (security_group(desired),)))
    assert plan.actions == (TagResources((inst.instance_id,), ((INDEX_TAG, "0"),)),)


def test_security_group_drift_on_a_launched_instance() -> None:
    desired = make_desired()
    extra_group = ObservedCloud(
        (instance(desired, 0, groups=(GROUP, HOST_GROUP)),), (security_group(desired),)
    )
    assert plan_of(desired, extra_group).actions == (
        AttachSecurityGroup("i-00000000000000001", "eni-00000000000000001", GROUP, ()),
    )


def test_deleted_security_group_is_recreated_and_reattached() -> None:
    desired = make_desired()
    plan = plan_of(desired, ObservedCloud((instance(desired, 0, groups=(HOST_GROUP,)),), ()))
    assert kinds(plan) == ["CreateSecurityGroup", "AuthorizeIngress", "AttachSecurityGroup"]
    assert plan.actions[2] == AttachSecurityGroup("i-00000000000000001", "eni-00000000000000001", None, ())


def test_loosened_metadata_options_are_hardened() -> None:
    desired = make_desired()
    observed = ObservedCloud((instance(desired, 0, metadata="optional"),), (security_group(desired),))
    assert plan_of(desired, observed).actions == (HardenMetadata("i-00000000000000001"),)


def test_subnet_change_replaces_one_instance_per_pass() -> None:
    desired = make_desired({"instance": {"replicas": 2, "subnetId": "subnet-0fedcba9876543210"}})
    observed = steady(desired)
    plan = plan_of(desired, observed)
    assert kinds(plan) == ["RunInstance"], "the old one keeps serving until its successor answers"
    moved = make_desired(
        {"instance": {"replicas": 2, "subnetId": "subnet-0fedcba9876543210"}}, replacements={0: 1}
    )
    new = instance(moved, 0, instance_id=NEW, generation=1, subnet="subnet-0fedcba9876543210")
    during = ObservedCloud((*observed.instances, new), observed.security_groups)
    serving = {i.instance_id for i in observed.instances}  # the old ones answer
    assert kinds(plan_of(moved, during, answered=serving)) == ["WaitFor"], "replica 1 waits for replica 0"
    after = plan_of(moved, during, answered={NEW, *serving})
    assert kinds(after) == ["RunInstance", "TerminateInstance"], "replica 0 settled: replica 1's turn"
    run, terminate = after.actions
    assert isinstance(run, RunInstance) and run.index == 1
    assert terminate == TerminateInstance(
        "i-00000000000000001", "replaced by generation 1, which answers and serves the hosts"
    )


def test_duplicate_for_one_index_keeps_the_newest_generation() -> None:
    desired = make_desired()
    old = instance(desired, 0, instance_id="i-0000000000000000a")
    new = instance(desired, 0, instance_id="i-0000000000000000b", generation=1)
    plan = plan_of(desired, ObservedCloud((old, new), (security_group(desired),)), answered={new.instance_id})
    assert plan.actions == (
        TerminateInstance(
            "i-0000000000000000a", "replaced by generation 1, which answers and serves the hosts"
        ),
    )


def test_resources_of_an_earlier_cr_with_the_same_name_are_not_touched() -> None:
    desired = make_desired()
    foreign = instance(desired, 0, instance_id="i-0000000000000dead", extra_tags={OWNER_UID_TAG: "old-uid"})
    observed = steady(desired)
    plan = plan_of(desired, ObservedCloud((*observed.instances, foreign), observed.security_groups))
    assert plan.actions == ()
    assert any("earlier" in n for n in plan.notes)


def test_endpoints_are_ordered_by_index() -> None:
    desired = make_desired({"instance": {"replicas": 3}})
    observed = steady(desired)
    shuffled = ObservedCloud(tuple(reversed(observed.instances)), observed.security_groups)
    assert endpoints(desired=desired, observed=shuffled) == (
        "10.0.1.10:11211",
        "10.0.1.11:11211",
        "10.0.1.12:11211",
    )
    stopped1 = ObservedCloud(
        (observed.instances[0], instance(desired, 1, state="stopped"), observed.instances[2]),
        observed.security_groups,
    )
    assert endpoints(desired=desired, observed=stopped1) == ("10.0.1.10:11211", "10.0.1.12:11211")


# --- teardown ----------------------------------------------------------------------------------------------------


def test_teardown_delete_terminates_waits_then_deletes_the_group() -> None:
    desired = make_desired({"instance": {"replicas": 2}})
    observed = steady(desired)
    plan = teardown_plan(observed=observed, owner=OWNER, policy="Delete")
    assert kinds(plan) == ["TerminateInstance", "TerminateInstance", "WaitFor"]
    assert [a.instance_id for a in plan.of_type(TerminateInstance)] == [
        "i-00000000000000002",
        "i-00000000000000001",
    ]
    shutting = ObservedCloud((), observed.security_groups, departing=("i-00000000000000001",))
    assert kinds(teardown_plan(observed=shutting, owner=OWNER, policy="Delete")) == ["WaitFor"]
    gone = ObservedCloud((), observed.security_groups)
    assert teardown_plan(observed=gone, owner=OWNER, policy="Delete").actions == (DeleteSecurityGroup(GROUP),)
    assert teardown_plan(observed=ObservedCloud(), owner=OWNER, policy="Delete") == Plan()


def test_teardown_delete_releases_adopted_hosts() -> None:
    host = "i-0abcabcabcabcabc1"
    desired = make_desired({"instance": {"adoptInstanceIds": [host]}})
    tags = {**desired.managed_instance_tags(0, adopted=True), CONFIG_HASH_TAG: desired.config_hash}
    adopted = ObservedInstance(
        host, "running", "t3.medium", tuple(sorted(tags.items())),
        security_group_ids=(GROUP, HOST_GROUP), network_interface_id="eni-1",
    )  # fmt: skip
    plan = teardown_plan(
        observed=ObservedCloud((adopted,), (security_group(desired),)), owner=OWNER, policy="Delete"
    )
    assert kinds(plan) == ["DetachSecurityGroup", "UntagResources", "DeleteSecurityGroup"]
    assert plan.actions[0] == DetachSecurityGroup(host, "eni-1", (HOST_GROUP,))
    assert not plan.of_type(TerminateInstance)


def test_teardown_retain_only_drops_ownership_tags() -> None:
    desired = make_desired()
    plan = teardown_plan(observed=steady(desired), owner=OWNER, policy="Retain")
    assert plan.actions == (
        UntagResources(("i-00000000000000001", "vol-00000000000000001", GROUP), (OWNER_TAG, OWNER_UID_TAG)),
    )
    assert teardown_plan(observed=ObservedCloud(), owner=OWNER, policy="Retain") == Plan()


# --- observed-state normalisation and the caller's records -----------------------------------------------------


def _raw_instance(instance_id: str, state: str, owner: str | None, groups: list[str]) -> dict[str, Any]:
    tags = [{"Key": OWNER_TAG, "Value": owner}, {"Key": OWNER_UID_TAG, "Value": OWNER.uid}] if owner else []
    return {
        "InstanceId": instance_id,
        "State": {"Name": state},
        "InstanceType": "t3.medium",
        "Tags": tags,
        "SecurityGroups": [{"GroupId": "sg-0000000000000ffff"}],  # moto's stale view; the interface wins
        "NetworkInterfaces": [
            {
                "NetworkInterfaceId": "eni-2",
                "Attachment": {"DeviceIndex": 1},
                "Groups": [{"GroupId": "sg-x"}],
            },
            {
                "NetworkInterfaceId": "eni-1",
                "Attachment": {"DeviceIndex": 0},
                "Groups": [{"GroupId": g} for g in groups],
            },
        ],
        "BlockDeviceMappings": [{"DeviceName": "/dev/sda1", "Ebs": {"VolumeId": "vol-1"}}],
        "PrivateIpAddress": "10.0.1.5",
        "MetadataOptions": {"HttpTokens": "required"},
    }


def test_group_by_owner_drops_terminated_and_lists_shutting_down_as_departing() -> None:
    raw = [
        _raw_instance("i-1", "running", OWNER.key, [GROUP]),
        _raw_instance("i-2", "shutting-down", OWNER.key, [GROUP]),
        _raw_instance("i-3", "terminated", OWNER.key, [GROUP]),
        _raw_instance("i-4", "running", "other/cache", [GROUP]),
        _raw_instance("i-5", "running", None, [GROUP]),
    ]
    groups = [
        {"GroupId": GROUP, "GroupName": "g", "VpcId": VPC, "Tags": [{"Key": OWNER_TAG, "Value": OWNER.key}]}
    ]
    found = group_by_owner(instances=raw, security_groups=groups)
    assert set(found) == {OWNER.key, "other/cache"}
    mine = found[OWNER.key]
    assert [i.instance_id for i in mine.instances] == ["i-1"] and mine.departing == ("i-2",)
    assert mine.security_groups[0].group_id == GROUP
    inst = normalize_instance(raw[0])
    assert inst.security_group_ids == (GROUP,) and inst.network_interface_id == "eni-1"
    assert inst.volume_ids == ("vol-1",)


def test_edx_security_groups_skip_gone_hosts() -> None:
    from edx_remote_cache.domain.cloud.model import EdxHost

    hosts = [
        EdxHost("i-1", "10.0.0.1", ("sg-b", "sg-a"), "running"),
        EdxHost("i-2", "10.0.0.2", ("sg-a",), "stopped"),
        EdxHost("i-3", "10.0.0.3", ("sg-z",), "terminated"),
    ]
    assert edx_security_groups(hosts) == ("sg-a", "sg-b")


def test_caller_records() -> None:
    t0 = client_token(owner_uid=OWNER.uid, index=0, generation=0)
    t1 = client_token(owner_uid=OWNER.uid, index=0, generation=1)
    result = ActResult(launched={t1: "i-1"}, spent_tokens=(t0,), generations={0: 1}, mutations=1)
    launches = record_launches({t0: NOW - 10}, result, now=NOW)
    assert launches == {t0: 0.0, t1: NOW}
    assert record_replacements({0: 0, 1: 2}, result) == {0: 1, 1: 2}
    assert prune_launches(launches, owner_uid=OWNER.uid, replacements={0: 1}) == {t1: NOW}
    assert result.changed and not ActResult().changed


# --- property: applying the rule actions always lands exactly on the desired rules ---------------------------

_rules = st.builds(
    IngressRule,
    protocol=st.sampled_from(["tcp", "udp", "-1"]),
    from_port=st.sampled_from([22, 11211, 11311]),
    to_port=st.sampled_from([22, 11211]),
    cidr_ipv4=st.sampled_from(["0.0.0.0/0", "10.0.0.0/16", "10.9.0.0/24"]),
)


@given(st.frozensets(_rules, max_size=8))
def test_rule_actions_converge_to_desired(observed_rules: frozenset[IngressRule]) -> None:
    desired = make_desired()
    observed = steady(desired, rules=tuple(observed_rules))
    rules = {r.rule for r in observed.security_groups[0].ingress}
    kept_ids = {r.rule_id for r in observed.security_groups[0].ingress if r.rule in set(desired.ingress)}
    for action in plan_of(desired, observed):
        if isinstance(action, RevokeIngress):
            assert not kept_ids & set(action.rule_ids)
            rules -= {r.rule for r in action.rules}
        elif isinstance(action, AuthorizeIngress):
            assert not rules & set(action.rules)
            rules |= set(action.rules)
    assert rules == set(desired.ingress)
