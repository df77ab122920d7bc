"""The boto3 adapter against a moto server on 127.0.0.1 (the sandbox's strict one when available).

Each test drives the real loop the operator runs: observe -> desired_from_spec -> diff -> act -> record.
Calls are counted with a botocore `before-call` hook on the operator's clients; out-of-band changes (the
"someone in the console" of each drift case) go through separate, uncounted clients.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from edx_remote_cache import OWNER_TAG, OWNER_UID_TAG
from edx_remote_cache.adapters.aws import (
    AwsClients,
    CloudLookups,
    EdxHostDirectory,
    RegionObserver,
    RetryableAwsError,
    TerminalAwsError,
    act,
    classify,
    describe_edx_hosts,
    observe_region,
)
from edx_remote_cache.adapters.ssm import SsmError
from edx_remote_cache.domain.cloud.actions import (
    ActResult,
    Plan,
    RunInstance,
    WaitFor,
    record_launches,
    record_replacements,
)
from edx_remote_cache.domain.cloud.desired import DesiredCacheHost, client_token, desired_from_spec
from edx_remote_cache.domain.cloud.diff import diff, endpoints
from edx_remote_cache.domain.cloud.model import (
    CONFIG_HASH_TAG,
    GENERATION_TAG,
    INDEX_TAG,
    ObservedCloud,
    Owner,
)
from edx_remote_cache.domain.cloud.normalize import edx_security_groups
from edx_remote_cache.domain.cloud.teardown import teardown_plan
from edx_remote_cache.domain.spec import EdxRemoteCacheSpec, parse_spec
from moto_server import AwsTestServer, aws_test_server

OWNER = Owner("openedx", "cache", "6d1f8a7e-0c1b-4c55-9e39-1e2f3a4b5c6d")
READ_PREFIXES = ("Describe", "Get", "List")


class CallCounter:
    """Every API call the operator's clients make, by operation name (botocore `before-call`)."""

    def __init__(self, clients: AwsClients) -> None:
        self.calls: list[str] = []
        for client in (clients.ec2, clients.ssm):
            client.meta.events.register("before-call", self._on_call)

    def _on_call(self, model: Any, **_: Any) -> None:
        self.calls.append(model.name)

    def reset(self) -> None:
        self.calls.clear()

    @property
    def mutating(self) -> list[str]:
        return [c for c in self.calls if not c.startswith(READ_PREFIXES)]


@dataclass
class FakeOutcome:
    ok: bool = True
    delivered: bool = True
    status: str = "Success"
    exit_code: int = 0
    stderr: str = ""


@dataclass
class FakeSsm:
    """Stands in for edx_remote_cache.adapters.ssm.SsmAdapter: records scripts; `offline` hosts have no agent."""

    scripts: list[tuple[str, str]] = field(default_factory=list)
    offline: set[str] = field(default_factory=set)

    def run_script(
        self, instance_id: str, script: str, *, timeout: float = 60, comment: str = ""
    ) -> FakeOutcome:
        if instance_id in self.offline:
            raise SsmError("InvalidInstanceId", "Instances not in a valid state", operation="send_command")
        self.scripts.append((instance_id, script))
        return FakeOutcome()


@dataclass
class OwnerState:
    """What the reconcile layer keeps in status for one CR."""

    launches: dict[str, float] = field(default_factory=dict)
    replacements: dict[int, int] = field(default_factory=dict)
    replace: set[str] = field(default_factory=set)


class World:
    """A VPC with one Open edX host, the operator's clients, and the reconcile loop the lead will write."""

    def __init__(self, server: AwsTestServer) -> None:
        self.server = server
        self.clients = server.clients()
        self.admin = server.clients()  # out-of-band changes, not counted
        self.calls = CallCounter(self.clients)
        ec2 = self.admin.ec2
        self.vpc_id = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        self.subnet_id = ec2.create_subnet(VpcId=self.vpc_id, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
        self.edx_group = ec2.create_security_group(
            GroupName="openedx-app", Description="app", VpcId=self.vpc_id
        )["GroupId"]
        self.edx_host = self.launch_plain(groups=[self.edx_group], tags={"Role": "openedx-app"})
        self.lookups = CloudLookups(self.clients)
        self.observer = RegionObserver(self.clients.ec2, ttl_seconds=0)
        self.ssm = FakeSsm()
        self.state: dict[str, OwnerState] = {}
        self.clock = 1_000_000.0

    def launch_plain(self, *, groups: list[str], tags: Mapping[str, str]) -> str:
        response = self.admin.ec2.run_instances(
            ImageId=self.server.ami_id,
            MinCount=1,
            MaxCount=1,
            InstanceType="t3.micro",
            SubnetId=self.subnet_id,
            SecurityGroupIds=groups,
            TagSpecifications=[
                {"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}
            ],
        )
        return str(response["Instances"][0]["InstanceId"])

    def spec(self, extra: Mapping[str, Any] | None = None) -> EdxRemoteCacheSpec:
        raw: dict[str, Any] = {
            "region": self.server.region,
            "instance": {
                "subnetId": self.subnet_id,
                "instanceType": "t3.micro",
                "amiParameter": self.server.ami_parameter,
                "tags": {"team": "platform"},
            },
            "network": {"allowFromCidrs": ["10.0.0.0/16"], "sshFromCidrs": ["10.0.9.0/24"]},
            "openedx": {"hosts": [self.edx_host]},
        }
        return parse_spec(_merge(raw, extra or {}))

    def owner_state(self, owner: Owner) -> OwnerState:
        return self.state.setdefault(owner.key, OwnerState())

    def desired(self, spec: EdxRemoteCacheSpec, owner: Owner = OWNER) -> DesiredCacheHost:
        image = self.lookups.image(ami=spec.instance.ami, ami_parameter=spec.instance.ami_parameter)
        hosts = describe_edx_hosts(
            self.clients.ec2, instance_ids=spec.openedx.hosts, selector=spec.openedx.host_selector
        )
        return desired_from_spec(
            spec,
            owner=owner,
            ami_id=image.image_id,
            root_device_name=image.root_device_name,
            vpc_id=self.lookups.vpc_id(spec.instance.subnet_id),
            edx_security_groups=edx_security_groups(hosts),
            replacements=self.owner_state(owner).replacements,
        )

    def observe(self, spec: EdxRemoteCacheSpec | None, owner: Owner = OWNER) -> ObservedCloud:
        adopt = spec.instance.adopt_instance_ids if spec else ()
        return self.observer.observe(owner, adopt_instance_ids=adopt)

    def plan(self, spec: EdxRemoteCacheSpec, owner: Owner = OWNER) -> Plan:
        st = self.owner_state(owner)
        observed = self.observe(spec, owner)
        return diff(
            desired=self.desired(spec, owner),
            observed=observed,
            now=self.clock,
            launches=st.launches,
            replace=st.replace,
            # no memcached in this world: every running instance counts as having answered its probe
            answered={i.instance_id for i in observed.instances if i.state == "running"},
        )

    def execute(self, plan: Plan, owner: Owner = OWNER) -> ActResult:
        st = self.owner_state(owner)
        result = act(plan, clients=self.clients, ssm_runner=self.ssm)
        st.launches = record_launches(st.launches, result, now=self.clock)
        st.replacements = record_replacements(st.replacements, result)
        st.replace = set(result.ssm_unavailable)
        if result.changed:
            self.observer.invalidate(owner)
        self.clock += 1
        return result

    def reconcile(self, spec: EdxRemoteCacheSpec, owner: Owner = OWNER, max_passes: int = 10) -> list[Plan]:
        """Passes until a plan is empty (what the operator does across drift intervals)."""
        plans = []
        for _ in range(max_passes):
            plan = self.plan(spec, owner)
            plans.append(plan)
            if not plan:
                return plans
            self.execute(plan, owner)
        raise AssertionError(f"no convergence in {max_passes} passes: {[_kinds(p) for p in plans]}")

    def teardown(self, policy: str, owner: Owner = OWNER, max_passes: int = 10) -> list[Plan]:
        plans = []
        for _ in range(max_passes):
            plan = teardown_plan(observed=self.observe(None, owner), owner=owner, policy=policy)  # type: ignore[arg-type]
            plans.append(plan)
            if not plan:
                return plans
            self.execute(plan, owner)
        raise AssertionError(f"teardown did not finish: {[_kinds(p) for p in plans]}")

    # --- what AWS holds, read with the uncounted admin client -----------------------------------------------

    def instances(
        self, owner: Owner = OWNER, *, states: tuple[str, ...] = ("pending", "running", "stopping", "stopped")
    ) -> list[dict[str, Any]]:
        response = self.admin.ec2.describe_instances(
            Filters=[
                {"Name": f"tag:{OWNER_TAG}", "Values": [owner.key]},
                {"Name": "instance-state-name", "Values": list(states)},
            ]
        )
        found = [i for r in response["Reservations"] for i in r["Instances"]]
        return sorted(found, key=lambda i: int(_tags(i).get(INDEX_TAG, "999")))

    def instance(self, instance_id: str) -> dict[str, Any]:
        response = self.admin.ec2.describe_instances(InstanceIds=[instance_id])
        return dict(response["Reservations"][0]["Instances"][0])

    def group(self, owner: Owner = OWNER) -> dict[str, Any]:
        groups = self.admin.ec2.describe_security_groups(
            Filters=[{"Name": f"tag:{OWNER_TAG}", "Values": [owner.key]}]
        )
        (group,) = groups["SecurityGroups"]
        return dict(group)

    def ingress_rules(self, group_id: str) -> dict[tuple[Any, ...], str]:
        """(protocol, from, to, source) -> SecurityGroupRuleId."""
        rules = self.admin.ec2.describe_security_group_rules(
            Filters=[{"Name": "group-id", "Values": [group_id]}]
        )
        return {
            (
                r["IpProtocol"],
                r.get("FromPort"),
                r.get("ToPort"),
                r.get("CidrIpv4") or r.get("CidrIpv6") or r.get("ReferencedGroupInfo", {}).get("GroupId"),
            ): r["SecurityGroupRuleId"]
            for r in rules["SecurityGroupRules"]
            if not r["IsEgress"]
        }


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, Mapping) and key in out else value
    return out


def _tags(resource: Mapping[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in resource.get("Tags", ())}


def _kinds(plan: Plan) -> list[str]:
    return [type(a).__name__ for a in plan]


def _groups(instance: Mapping[str, Any]) -> set[str]:
    primary = next(n for n in instance["NetworkInterfaces"] if n["Attachment"]["DeviceIndex"] == 0)
    return {g["GroupId"] for g in primary["Groups"]}


def _desired_rules(world: World) -> set[tuple[Any, ...]]:
    return {
        ("tcp", 11211, 11211, "10.0.0.0/16"),
        ("tcp", 11211, 11211, world.edx_group),
        ("tcp", 22, 22, "10.0.9.0/24"),
    }


@pytest.fixture
def server() -> Iterator[AwsTestServer]:
    with aws_test_server() as srv:
        yield srv


@pytest.fixture
def world(server: AwsTestServer) -> World:
    return World(server)


def _needs_strict(world: World, what: str) -> None:
    if not world.server.strict:
        pytest.skip(f"plain moto does not emulate {what}; needs edx_remote_cache.sandbox.aws")


# --- create, steady state ------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_create_is_hardened_and_a_rerun_makes_zero_mutating_calls(world: World) -> None:
    spec = world.spec()
    world.reconcile(spec)
    (inst,) = world.instances()
    tags = _tags(inst)
    assert tags[OWNER_TAG] == OWNER.key and tags[OWNER_UID_TAG] == OWNER.uid
    assert tags["Name"] == "erc-openedx-cache-0" and tags[INDEX_TAG] == "0" and tags["team"] == "platform"
    assert tags[GENERATION_TAG] == "0" and tags[CONFIG_HASH_TAG] == world.desired(spec).config_hash
    assert inst["ClientToken"] == client_token(owner_uid=OWNER.uid, index=0, generation=0)
    assert inst["MetadataOptions"]["HttpTokens"] == "required"
    assert inst["MetadataOptions"]["HttpPutResponseHopLimit"] == 1
    assert inst["MetadataOptions"]["HttpEndpoint"] == "enabled"
    assert not inst.get("PublicIpAddress")
    assert inst["SubnetId"] == world.subnet_id and inst["InstanceType"] == "t3.micro"
    group = world.group()
    assert _groups(inst) == {group["GroupId"]}
    assert world.ingress_rules(group["GroupId"]).keys() == _desired_rules(world)
    (mapping,) = inst["BlockDeviceMappings"]
    volume = world.admin.ec2.describe_volumes(VolumeIds=[mapping["Ebs"]["VolumeId"]])["Volumes"][0]
    assert volume["Encrypted"] is True and volume["Size"] == 8
    assert _tags(volume)[OWNER_TAG] == OWNER.key
    user_data = world.admin.ec2.describe_instance_attribute(
        InstanceId=inst["InstanceId"], Attribute="userData"
    )
    assert "apt-get install -y -q memcached" in base64.b64decode(user_data["UserData"]["Value"]).decode()

    world.calls.reset()
    plans = world.reconcile(spec)
    assert plans == [Plan()]
    assert world.calls.mutating == []
    desired = world.desired(spec)
    assert endpoints(desired=desired, observed=world.observe(spec)) == (f"{inst['PrivateIpAddress']}:11211",)


# --- drift -----------------------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_drift_stopped_out_of_band_is_started(world: World) -> None:
    spec = world.spec()
    world.reconcile(spec)
    (inst,) = world.instances()
    world.admin.ec2.stop_instances(InstanceIds=[inst["InstanceId"]])
    world.calls.reset()
    world.reconcile(spec)
    assert world.calls.mutating == ["StartInstances"]
    assert world.instance(inst["InstanceId"])["State"]["Name"] == "running"


@pytest.mark.timeout(60)
def test_drift_terminated_out_of_band_relaunches_with_the_next_token(world: World) -> None:
    spec = world.spec()
    world.reconcile(spec)
    (old,) = world.instances()
    world.admin.ec2.terminate_instances(InstanceIds=[old["InstanceId"]])
    world.calls.reset()
    world.reconcile(spec)
    (new,) = world.instances()
    assert new["InstanceId"] != old["InstanceId"]
    assert new["ClientToken"] == client_token(owner_uid=OWNER.uid, index=0, generation=1)
    assert _tags(new)[INDEX_TAG] == "0" and _tags(new)[GENERATION_TAG] == "1"
    assert world.calls.mutating == ["RunInstances"]
    assert world.owner_state(OWNER).replacements == {0: 1}


@pytest.mark.timeout(60)
def test_drift_world_open_and_udp_rules_are_revoked_and_rule_ids_kept(world: World) -> None:
    spec = world.spec()
    world.reconcile(spec)
    group_id = world.group()["GroupId"]
    before = world.ingress_rules(group_id)
    world.admin.ec2.authorize_security_group_ingress(
        GroupId=group_id,
        IpPermissions=[
            {"IpProtocol": "tcp", "FromPort": 11211, "ToPort": 11211, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
            {
                "IpProtocol": "udp",
                "FromPort": 11211,
                "ToPort": 11211,
                "IpRanges": [{"CidrIp": "10.0.0.0/16"}],
            },
        ],
    )
    world.admin.ec2.revoke_security_group_ingress(  # and someone removed the SSH rule
        GroupId=group_id, SecurityGroupRuleIds=[before[("tcp", 22, 22, "10.0.9.0/24")]]
    )
    world.calls.reset()
    world.reconcile(spec)
    assert sorted(world.calls.mutating) == ["AuthorizeSecurityGroupIngress", "RevokeSecurityGroupIngress"]
    after = world.ingress_rules(group_id)
    assert after.keys() == _desired_rules(world)
    for key in _desired_rules(world) - {("tcp", 22, 22, "10.0.9.0/24")}:
        assert after[key] == before[key], f"{key} was revoked and re-added"


@pytest.mark.timeout(60)
def test_rule_ids_are_unchanged_across_forced_reconciles(world: World) -> None:
    spec = world.spec()
    world.reconcile(spec)
    group_id = world.group()["GroupId"]
    before = world.ingress_rules(group_id)
    for _ in range(3):
        world.observer.invalidate()
        world.reconcile(spec)
    assert world.ingress_rules(group_id) == before


@pytest.mark.timeout(60)
def test_observer_with_rule_ids_reports_aws_ids(world: World) -> None:
    spec = world.spec()
    world.reconcile(spec)
    group_id = world.group()["GroupId"]
    observed = RegionObserver(world.clients.ec2, ttl_seconds=60, with_rule_ids=True).observe(OWNER)
    ids = {r.rule_id for r in observed.security_groups[0].ingress}
    assert ids == set(world.ingress_rules(group_id).values())


# --- changes -------------------------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_instance_type_change_stops_modifies_and_starts_the_same_instance(world: World) -> None:
    world.reconcile(world.spec())
    (before,) = world.instances()
    world.calls.reset()
    world.reconcile(world.spec({"instance": {"instanceType": "t3.small"}}))
    (after,) = world.instances()
    assert after["InstanceId"] == before["InstanceId"]
    assert after["InstanceType"] == "t3.small" and after["State"]["Name"] == "running"
    # t3.small has more RAM, so memcached -m changes too: reconfigured once the instance runs again
    assert world.calls.mutating == [
        "StopInstances",
        "ModifyInstanceAttribute",
        "StartInstances",
        "CreateTags",
    ]
    assert [i for i, _ in world.ssm.scripts] == [before["InstanceId"]]


@pytest.mark.timeout(60)
def test_modify_type_while_running_is_a_retryable_error(world: World) -> None:
    _needs_strict(world, "IncorrectInstanceState on a running instance")
    from edx_remote_cache.domain.cloud.actions import ModifyInstanceType

    world.reconcile(world.spec())
    (inst,) = world.instances()
    with pytest.raises(RetryableAwsError) as caught:
        act(Plan((ModifyInstanceType(inst["InstanceId"], "t3.small"),)), clients=world.clients)
    assert caught.value.code == "IncorrectInstanceState"


@pytest.mark.timeout(90)
def test_replicas_1_to_3_to_1(world: World) -> None:
    world.reconcile(world.spec())
    (first,) = world.instances()
    world.reconcile(world.spec({"instance": {"replicas": 3}}))
    three = world.instances()
    assert [_tags(i)[INDEX_TAG] for i in three] == ["0", "1", "2"]
    assert three[0]["InstanceId"] == first["InstanceId"]
    desired = world.desired(world.spec({"instance": {"replicas": 3}}))
    assert endpoints(desired=desired, observed=world.observe(None)) == tuple(
        f"{i['PrivateIpAddress']}:11211" for i in three
    )
    world.calls.reset()
    world.reconcile(world.spec())
    (only,) = world.instances()
    assert only["InstanceId"] == first["InstanceId"]
    assert world.calls.mutating == ["TerminateInstances", "TerminateInstances"]
    assert world.instance(three[2]["InstanceId"])["State"]["Name"] == "terminated"


@pytest.mark.timeout(60)
def test_memcached_change_is_reconfigured_in_place_through_ssm(world: World) -> None:
    world.reconcile(world.spec())
    (inst,) = world.instances()
    spec = world.spec({"memcached": {"maxConnections": 2048}})
    world.reconcile(spec)
    (after,) = world.instances()
    assert after["InstanceId"] == inst["InstanceId"]
    assert [i for i, _ in world.ssm.scripts] == [inst["InstanceId"]]
    assert "-c 2048" in world.ssm.scripts[0][1]
    assert _tags(after)[CONFIG_HASH_TAG] == world.desired(spec).config_hash


@pytest.mark.timeout(60)
def test_memcached_change_on_a_host_without_ssm_replaces_it(world: World) -> None:
    world.reconcile(world.spec())
    (old,) = world.instances()
    world.ssm.offline.add(old["InstanceId"])
    spec = world.spec({"memcached": {"maxConnections": 2048}})
    world.reconcile(spec)
    (new,) = world.instances()
    assert new["InstanceId"] != old["InstanceId"]
    assert _tags(new)[GENERATION_TAG] == "1"
    assert _tags(new)[CONFIG_HASH_TAG] == world.desired(spec).config_hash
    assert world.instance(old["InstanceId"])["State"]["Name"] == "terminated"


# --- adoption and lifecycle --------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_adoption_tags_and_attaches_without_launching_and_delete_releases_it(world: World) -> None:
    host_group = world.admin.ec2.create_security_group(
        GroupName="legacy", Description="x", VpcId=world.vpc_id
    )
    legacy = world.launch_plain(groups=[host_group["GroupId"]], tags={"Name": "legacy-memcached"})
    spec = world.spec({"instance": {"adoptInstanceIds": [legacy]}})
    world.calls.reset()
    world.reconcile(spec)
    assert "RunInstances" not in world.calls.calls
    (inst,) = world.instances()
    assert inst["InstanceId"] == legacy
    tags = _tags(inst)
    assert tags[OWNER_TAG] == OWNER.key and tags[INDEX_TAG] == "0" and tags["Name"] == "legacy-memcached"
    our_group = world.group()["GroupId"]
    assert _groups(inst) == {host_group["GroupId"], our_group}
    assert [i for i, _ in world.ssm.scripts] == [legacy], "adoption brings memcached to the spec's config"
    world.calls.reset()
    assert world.reconcile(spec) == [Plan()] and world.calls.mutating == []

    world.teardown("Delete")
    released = world.instance(legacy)
    assert released["State"]["Name"] == "running", "an adopted host is released, never terminated"
    assert _groups(released) == {host_group["GroupId"]}
    assert OWNER_TAG not in _tags(released)
    gone = world.admin.ec2.describe_security_groups(Filters=[{"Name": "group-id", "Values": [our_group]}])
    assert gone["SecurityGroups"] == []


@pytest.mark.timeout(60)
def test_delete_terminates_then_deletes_the_group(world: World) -> None:
    world.reconcile(world.spec({"instance": {"replicas": 2}}))
    ids = [i["InstanceId"] for i in world.instances()]
    group_id = world.group()["GroupId"]
    plans = world.teardown("Delete")
    assert _kinds(plans[0]) == ["TerminateInstance", "TerminateInstance", "WaitFor"]
    assert _kinds(plans[-2]) == ["DeleteSecurityGroup"] and plans[-1] == Plan()
    assert {world.instance(i)["State"]["Name"] for i in ids} == {"terminated"}
    remaining = world.admin.ec2.describe_security_groups(Filters=[{"Name": "group-id", "Values": [group_id]}])
    assert remaining["SecurityGroups"] == []
    assert (
        OWNER.key not in observe_region(world.clients.ec2)
        or not observe_region(world.clients.ec2)[OWNER.key].instances
    )


@pytest.mark.timeout(60)
def test_delete_of_a_group_still_in_use_is_retryable(world: World) -> None:
    _needs_strict(world, "DependencyViolation on DeleteSecurityGroup")
    from edx_remote_cache.domain.cloud.actions import DeleteSecurityGroup

    world.reconcile(world.spec())
    with pytest.raises(RetryableAwsError) as caught:
        act(Plan((DeleteSecurityGroup(world.group()["GroupId"]),)), clients=world.clients)
    assert caught.value.code == "DependencyViolation"


@pytest.mark.timeout(60)
def test_retain_only_drops_ownership_tags(world: World) -> None:
    world.reconcile(world.spec())
    (inst,) = world.instances()
    group_id = world.group()["GroupId"]
    world.calls.reset()
    world.teardown("Retain")
    assert world.calls.mutating == ["DeleteTags"]
    kept = world.instance(inst["InstanceId"])
    assert kept["State"]["Name"] == "running"
    assert OWNER_TAG not in _tags(kept) and OWNER_UID_TAG not in _tags(kept)
    assert _tags(kept)["Name"] == "erc-openedx-cache-0"
    group = world.admin.ec2.describe_security_groups(GroupIds=[group_id])["SecurityGroups"][0]
    assert OWNER_TAG not in _tags(group)
    assert OWNER.key not in observe_region(world.clients.ec2)


# --- errors, lookups, idempotency ---------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_bad_ami_is_a_terminal_error_with_the_aws_code(world: World) -> None:
    spec = world.spec({"instance": {"ami": "ami-0123456789abcdef0"}})
    with pytest.raises(TerminalAwsError) as caught:
        world.plan(spec)
    assert caught.value.code == "InvalidAMIID.NotFound"
    assert "spec.instance.ami" in str(caught.value)
    assert world.calls.mutating == []
    if world.server.strict:  # the launch itself is refused too (plain moto launches any AMI)
        plan = diff(desired=world.desired(world.spec()), observed=ObservedCloud(), now=0)
        bad = Plan(
            tuple(
                dataclasses.replace(a, image_id="ami-0123456789abcdef0") if isinstance(a, RunInstance) else a
                for a in plan
            )
        )
        with pytest.raises(TerminalAwsError) as launch:
            act(bad, clients=world.clients)
        assert launch.value.code == "InvalidAMIID.NotFound"
        assert launch.value.partial is not None and launch.value.partial.created_group_id


@pytest.mark.timeout(60)
def test_ami_from_ssm_parameter_is_resolved_once(world: World) -> None:
    image = world.lookups.image(ami=None, ami_parameter=world.server.ami_parameter)
    assert image.image_id == world.server.ami_id and image.root_device_name.startswith("/dev/")
    world.calls.reset()
    assert world.lookups.image(ami=None, ami_parameter=world.server.ami_parameter) == image
    assert world.lookups.vpc_id(world.subnet_id) == world.vpc_id
    world.lookups.vpc_id(world.subnet_id)
    assert world.calls.calls == ["DescribeSubnets"], "AMI and subnet lookups are cached"
    with pytest.raises(TerminalAwsError) as caught:
        world.lookups.image(ami=None, ami_parameter="/no/such/parameter")
    assert caught.value.code == "ParameterNotFound" and "amiParameter" in str(caught.value)
    with pytest.raises(TerminalAwsError) as subnet:
        world.lookups.vpc_id("subnet-0123456789abcdef0")
    assert subnet.value.code == "InvalidSubnetID.NotFound"


@pytest.mark.timeout(60)
def test_an_ami_of_the_other_architecture_is_refused_before_any_launch(world: World) -> None:
    image = world.lookups.image(ami=world.server.ami_id, ami_parameter="", architecture="x86_64")
    assert image.architecture == "x86_64"
    with pytest.raises(TerminalAwsError) as caught:
        world.lookups.image(ami=world.server.ami_id, ami_parameter="", architecture="arm64")
    assert f"AMI {world.server.ami_id} is an x86_64 image" in str(caught.value) and "arm64" in str(
        caught.value
    )
    assert world.calls.mutating == []


@pytest.mark.timeout(60)
def test_same_client_token_twice_launches_one_instance(world: World) -> None:
    _needs_strict(world, "ClientToken idempotency (moto launches again)")
    plan = world.plan(world.spec())
    first = world.execute(plan)
    run = dataclasses.replace(plan.of_type(RunInstance)[0], group_id=first.created_group_id)
    again = act(Plan((run,)), clients=world.clients)  # a retry after a crash before status was written
    assert again.launched == first.launched
    assert len(world.instances()) == 1


@pytest.mark.timeout(60)
def test_invisible_new_instance_is_waited_for_not_relaunched(world: World) -> None:
    _needs_strict(world, "eventual consistency of DescribeInstances")
    assert world.server.hide_new_instances(60)
    spec = world.spec()
    world.execute(world.plan(spec))
    world.calls.reset()
    plan = world.plan(spec)
    assert _kinds(plan) == ["WaitFor"] and plan.actions[0].until == "visible"
    assert isinstance(plan.actions[0], WaitFor)
    world.execute(plan)
    assert "RunInstances" not in world.calls.calls


@pytest.mark.timeout(60)
def test_describe_edx_hosts_by_ids_and_selector(world: World) -> None:
    other = world.launch_plain(groups=[world.edx_group], tags={"Role": "openedx-worker"})
    world.calls.reset()
    hosts = describe_edx_hosts(
        world.clients.ec2, instance_ids=[world.edx_host], selector={"Role": "openedx-worker"}
    )
    assert [h.instance_id for h in hosts] == sorted([world.edx_host, other])
    assert all(
        h.security_group_ids == (world.edx_group,) and h.private_ip.startswith("10.0.1.") for h in hosts
    )
    assert world.calls.calls == ["DescribeInstances", "DescribeInstances"]
    (only,) = describe_edx_hosts(world.clients.ec2, instance_ids=[world.edx_host])
    assert only.state == "running"


@pytest.mark.timeout(120)
def test_edx_host_directory_serves_every_resource_from_one_read_per_interval(world: World) -> None:
    hosts = [
        world.edx_host,
        *(world.launch_plain(groups=[world.edx_group], tags={"Role": "openedx-app"}) for _ in range(3)),
    ]
    now = [0.0]
    directory = EdxHostDirectory(world.clients.ec2, ttl_seconds=60, clock=lambda: now[0])
    for host in hosts:  # four resources, one host each: each id is new, so each is read at once
        assert [h.instance_id for h in directory.hosts(instance_ids=[host])] == [host]
    world.calls.reset()
    for _ in range(5):  # steady state within the interval: no call at all
        for host in hosts:
            (found,) = directory.hosts(instance_ids=[host])
            assert found.security_group_ids == (world.edx_group,)
    assert world.calls.calls == []
    now[0] = 61.0  # next interval: every known id is re-read together
    for host in hosts:
        directory.hosts(instance_ids=[host])
    assert world.calls.calls == ["DescribeInstances"]
    world.calls.reset()
    world.clients.ec2.stop_instances(InstanceIds=[hosts[0]])
    now[0] = 122.0
    (stopped,) = directory.hosts(instance_ids=[hosts[0]])
    assert stopped.state in ("stopping", "stopped")


# --- batched observe ------------------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_observe_20_resources_with_exactly_two_calls(world: World) -> None:
    owners = [Owner("tenant", f"site{n:02d}", f"00000000-0000-4000-8000-{n:012d}") for n in range(20)]
    spec = world.spec()
    for owner in owners:
        world.execute(world.plan(spec, owner), owner)

    now = [0.0]
    observer = RegionObserver(world.clients.ec2, ttl_seconds=60, clock=lambda: now[0])
    world.calls.reset()
    observed = {o.key: observer.observe(o) for o in owners}
    assert world.calls.calls == ["DescribeInstances", "DescribeSecurityGroups"]
    assert all(len(c.instances) == 1 and len(c.security_groups) == 1 for c in observed.values())
    for owner in owners:  # steady state across all 20: nothing to do, nothing mutated
        plan = diff(desired=world.desired(spec, owner), observed=observed[owner.key], now=world.clock,
                    launches=world.owner_state(owner).launches)  # fmt: skip
        assert plan == Plan(), owner

    world.calls.reset()
    observer.invalidate(owners[3])
    observer.observe(owners[3])
    observer.observe(owners[4])
    assert world.calls.calls == ["DescribeInstances", "DescribeSecurityGroups"], "only the invalidated owner"
    world.calls.reset()
    now[0] = 61.0
    for owner in owners:
        observer.observe(owner)
    assert world.calls.calls == ["DescribeInstances", "DescribeSecurityGroups"], "one refresh per interval"


@pytest.mark.timeout(120)
def test_owners_invalidated_together_are_read_again_in_one_read(world: World) -> None:
    """While reads are paced, objects converging at once share a read instead of queueing one each."""
    owners = [Owner("tenant", f"site{n:02d}", f"00000000-0000-4000-8000-{n:012d}") for n in range(6)]
    spec = world.spec()
    for owner in owners:
        world.execute(world.plan(spec, owner), owner)
    observer = RegionObserver(world.clients.ec2, ttl_seconds=60, clock=lambda: 0.0)
    before = {o.key: observer.observe(o) for o in owners}
    changed = owners[1:4]
    for owner in changed:  # each one's instance goes away (as after its own mutation), then it is invalidated
        (instance,) = before[owner.key].instances
        world.admin.ec2.terminate_instances(InstanceIds=[instance.instance_id])
        observer.invalidate(owner)

    world.calls.reset()
    after = {o.key: observer.observe(o) for o in [owners[2], *owners]}
    assert world.calls.calls == ["DescribeInstances", "DescribeSecurityGroups"], "one read for the three"
    for owner in owners:
        live = [i for i in after[owner.key].instances if i.state not in ("shutting-down", "terminated")]
        assert len(live) == (0 if owner in changed else 1), (owner.name, after[owner.key].instances)
    world.calls.reset()
    observer.invalidate(owners[5])  # a later change is read again, on its own
    observer.observe(owners[5])
    assert world.calls.calls == ["DescribeInstances", "DescribeSecurityGroups"]


# --- the error table ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "status", "kind"),
    [
        ("InvalidAMIID.NotFound", 400, TerminalAwsError),
        ("InvalidAMIID.Malformed", 400, TerminalAwsError),
        ("UnauthorizedOperation", 403, TerminalAwsError),
        ("InvalidParameterValue", 400, TerminalAwsError),
        ("InvalidParameterCombination", 400, TerminalAwsError),
        ("InvalidSubnetID.NotFound", 400, TerminalAwsError),
        ("InvalidKeyPair.NotFound", 400, TerminalAwsError),
        ("InvalidGroup.NotFound", 400, TerminalAwsError),
        ("VcpuLimitExceeded", 400, TerminalAwsError),
        ("AuthFailure", 401, TerminalAwsError),
        ("InsufficientInstanceCapacity", 500, RetryableAwsError),
        ("RequestLimitExceeded", 503, RetryableAwsError),
        ("Throttling", 400, RetryableAwsError),
        ("ThrottlingException", 400, RetryableAwsError),
        ("InternalError", 500, RetryableAwsError),
        ("ServiceUnavailable", 503, RetryableAwsError),
        ("DependencyViolation", 400, RetryableAwsError),
        ("IncorrectInstanceState", 400, RetryableAwsError),
        ("InvalidInstanceID.NotFound", 400, RetryableAwsError),
        ("SomethingNew", 500, RetryableAwsError),
        ("SomethingNewButClientSide", 400, RetryableAwsError),
    ],
)
@pytest.mark.timeout(10)
def test_error_table(code: str, status: int, kind: type) -> None:
    error = classify(code, "message", operation="RunInstances", http_status=status)
    assert type(error) is kind and error.code == code
