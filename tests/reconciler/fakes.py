"""In-memory stand-ins for every adapter the reconciler is handed: fast, deterministic, no sandbox.

`FakeCloud` keeps EC2 as a list of `ObservedInstance`s and one security group, and carries out a plan's actions
on it the way the boto3 adapter would (only the actions a reconcile of these tests produces). Everything that
reaches the outside world is appended to one `journal`, so a test can assert the order of effects (hosts
reverted before instances terminate) as well as their count.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry

from edx_remote_cache import OWNER_UID_TAG
from edx_remote_cache.adapters.aws import AwsError, ImageInfo
from edx_remote_cache.adapters.host_push import HostPushResult
from edx_remote_cache.adapters.metrics import Metrics
from edx_remote_cache.adapters.ports import StatusUnavailable
from edx_remote_cache.adapters.probe import ProbeResult
from edx_remote_cache.domain import claims
from edx_remote_cache.domain.cloud import actions, model
from edx_remote_cache.reconciler.state import Adapters

REGION = "us-east-1"
SUBNET = "subnet-0123456789abcdef0"
VPC = "vpc-0fake"
EDX_GROUP = "sg-0edx"
EDX_HOSTS = ("i-0aaaaaaaaaaaaaaa1", "i-0aaaaaaaaaaaaaaa2")


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclasses.dataclass
class CommandResult:
    ok: bool = True
    status: str = "Success"
    stdout: str = ""
    stderr: str = ""


class FakeSsm:
    """SSM as the healing ladder uses it: agent ping status and one script run per call.

    The agent of a cache host that is not running is ConnectionLost. The second opinion (the read-only script
    of domain/vantage.py) is answered from `FakeMemcached`: an endpoint that is `down` is down on its host too,
    one that is only `blocked` (the operator's path) answers there. Asks are journalled as ("ask", id), so the
    ("ssm", ...) entries stay the commands that change something.
    """

    def __init__(self, journal: list[tuple[str, ...]], cloud: FakeCloud, memcached: FakeMemcached) -> None:
        self.journal = journal
        self.cloud = cloud
        self.memcached = memcached
        self.ping: dict[str, str] = {}
        self.script_ok = True

    def ping_statuses(self, instance_ids: Sequence[str]) -> dict[str, str]:
        states = {i.instance_id: i.state for i in self.cloud.instances}
        out = {}
        for i in instance_ids:
            default = "Online" if states.get(i, "running") == "running" else "ConnectionLost"
            out[i] = self.ping.get(i, default)
        return out

    def run_script(
        self, instance_id: str, script: str, *, timeout: float = 60, comment: str = ""
    ) -> CommandResult:
        if "second opinion" in script:
            self.journal.append(("ask", instance_id))
            address = re.search(r"\n\s+(\S+) (\d+) 2>&1\)", script)
            assert address is not None, script
            kind = self.memcached.down.get(f"{address.group(1)}:{address.group(2)}")
            if kind is None:
                answer = "ERC-UNIT active\nERC-STATS ok 1234\nERC-END\n"
            elif kind == "timeout":
                answer = "ERC-UNIT active\nERC-STATS fail 124 -\nERC-END\n"
            else:
                answer = "ERC-UNIT failed\nERC-STATS fail 1 Y29ubmVjdGlvbiByZWZ1c2Vk\nERC-END\n"
            return CommandResult(stdout=answer)
        self.journal.append(("ssm", instance_id, script.strip()))
        return CommandResult(ok=self.script_ok, status="Success" if self.script_ok else "Failed")


class FakeObserver:
    def __init__(self, cloud: FakeCloud) -> None:
        self.cloud = cloud
        self.invalidations = 0
        self.fetched_at: float | None = None
        self.reads: list[float] = []  # time.monotonic() of every read EC2 would see (first, after invalidate)
        self._stale = True

    def observe(self, owner: model.Owner, *, adopt_instance_ids: Sequence[str] = ()) -> model.ObservedCloud:
        if self._stale:  # like the region observer: a fresh read only when this owner's part is stale
            self.reads.append(time.monotonic())
            self._stale = False
        return self.cloud.observed()

    def invalidate(self, owner: model.Owner | None = None) -> None:
        self.invalidations += 1
        self._stale = True


class FakeLookups:
    def image(self, *, ami: str | None, ami_parameter: str, architecture: str | None = None) -> ImageInfo:
        return ImageInfo(image_id=ami or "ami-0fake", root_device_name="/dev/sda1")

    def vpc_id(self, subnet_id: str) -> str:
        return VPC


class FakeEdxHosts:
    """EC2's view of the Open edX hosts: every id asked for is running unless `state` says otherwise."""

    def __init__(self) -> None:
        self.state: dict[str, str] = {}  # instance id -> EC2 state; "" = EC2 does not know the id
        self.selected: list[str] = []  # what any hostSelector matches

    def hosts(self, *, instance_ids: Sequence[str] = (), selector: Any = None) -> list[model.EdxHost]:
        ids = dict.fromkeys([*instance_ids, *(self.selected if selector else ())])
        return [
            model.EdxHost(i, f"10.0.1.{n + 10}", (EDX_GROUP,), self.state.get(i, "running"))
            for n, i in enumerate(ids)
            if self.state.get(i, "running")
        ]


class FakeDrift:
    """No drift; `seen` is what the hosts' own check of their cache endpoints says (the app hosts' vantage): an
    answer without a `checked_at` comes from a check sent at the moment it is read, like a check just done."""

    def __init__(self, clock: Clock | None = None) -> None:
        self.seen: dict[str, tuple[Any, ...]] = {}
        self.asked: dict[str, tuple[str, ...]] = {}
        self.clock = clock or Clock()

    def expect(self, expected: Mapping[str, Mapping[str, str]]) -> None:
        pass

    def expect_reach(self, reach: Mapping[str, Sequence[str]]) -> None:
        self.asked.update({h: tuple(eps) for h, eps in reach.items()})

    def vantage(self, hosts: Sequence[str]) -> dict[str, tuple[Any, ...]]:
        now = self.clock()
        return {
            h: tuple(r if r.checked_at else r.at(now) for r in self.seen[h]) for h in hosts if h in self.seen
        }

    def due(self) -> bool:
        return False

    def refresh(self) -> None:
        pass

    def reports(self, expected: Mapping[str, Mapping[str, str]]) -> dict[str, Any]:
        return {}


class FakeStatus:
    """The status subresource: merge-patches applied to one dict per object, every patch kept."""

    def __init__(self, journal: list[tuple[str, ...]]) -> None:
        self.journal = journal
        self.patches: list[dict[str, Any]] = []
        self.current: dict[str, Any] = {}  # the last patched object's status
        self.by_name: dict[str, dict[str, Any]] = {}  # every object's status, by name
        self.unavailable = False  # the API server is away: every write raises StatusUnavailable

    async def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        if self.unavailable:
            raise StatusUnavailable("connection refused")
        self.patches.append(dict(status))
        self.journal.append(("status", name))
        self.current = self.by_name.setdefault(name, {})
        merge_patch(self.current, status)

    def condition(self, ctype: str) -> dict[str, Any]:
        return next((c for c in self.current.get("conditions") or [] if c["type"] == ctype), {})


def merge_patch(target: dict[str, Any], patch: Mapping[str, Any]) -> None:
    """RFC 7386, as the API server applies a status merge patch: null deletes, objects merge, the rest replaces."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(target.get(key), dict):
            merge_patch(target[key], value)
        else:
            target[key] = _plain(value)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items() if v is not None}
    return value


class FakeCloud:
    """EC2 for one owner: instances and a security group, changed by `act` like the real adapter would."""

    def __init__(self, journal: list[tuple[str, ...]]) -> None:
        self.journal = journal
        self.instances: list[model.ObservedInstance] = []
        self.groups: list[model.ObservedSecurityGroup] = []
        self.hidden: set[str] = set()  # launched, not listed yet (EC2's eventual consistency)
        self._ids = itertools.count(1)
        # action type name (RunInstance, ...) -> errors AWS answers the next calls of that type with, in order
        self.errors: dict[str, list[AwsError]] = {}

    def observed(self) -> model.ObservedCloud:
        live = tuple(
            i for i in self.instances if i.state not in model.GONE_STATES and i.instance_id not in self.hidden
        )
        gone = tuple(i.client_token for i in self.instances if i.state in model.GONE_STATES)
        return model.ObservedCloud(instances=live, security_groups=tuple(self.groups), gone_tokens=gone)

    def set_state(self, instance_id: str, state: str) -> None:
        self.instances = [dataclasses.replace(i, state=state) if i.instance_id == instance_id else i
                          for i in self.instances]  # fmt: skip

    def running(self) -> list[model.ObservedInstance]:
        return [i for i in self.instances if i.state == "running"]

    def act(self, plan: actions.Plan, *, clients: Any = None, ssm_runner: Any = None) -> actions.ActResult:
        launched: dict[str, str] = {}
        generations: dict[int, int] = {}
        terminated: list[str] = []
        started: list[str] = []
        created: str | None = None
        mutations = 0
        for action in plan.mutating:
            queued = self.errors.get(type(action).__name__)
            if queued:  # AWS refuses this call: what the plan changed before it is the error's `partial`
                exc = queued.pop(0)
                exc.partial = actions.ActResult(
                    launched=dict(launched), generations=dict(generations), created_group_id=created,
                    started=tuple(started), terminated=tuple(terminated), mutations=mutations,
                )  # fmt: skip
                self.journal.append(("aws-error", type(action).__name__, exc.code))
                raise exc
            mutations += 1
            self.journal.append(("aws", type(action).__name__))
            match action:
                case actions.CreateSecurityGroup():
                    created = f"sg-0{next(self._ids)}"
                    self.groups.append(
                        model.ObservedSecurityGroup(created, action.name, VPC, action.tags, ())
                    )
                case actions.AuthorizeIngress():
                    gid = action.group_id or created
                    self.groups = [
                        dataclasses.replace(g, ingress=g.ingress + tuple(model.ObservedRule(r, f"sgr-{next(self._ids)}")
                                                                         for r in action.rules))
                        if g.group_id == gid else g for g in self.groups
                    ]  # fmt: skip
                case actions.RunInstance() if any(
                    i.client_token == action.client_token for i in self.instances
                ):
                    # ClientToken idempotency: the instance this token already launched, not a second one
                    launched[action.client_token] = next(
                        i.instance_id for i in self.instances if i.client_token == action.client_token
                    )
                    generations[action.index] = action.generation
                case actions.RunInstance():
                    n = next(self._ids)
                    iid = f"i-0c{n:015x}"
                    gid = action.group_id or created or ""
                    self.instances.append(
                        model.ObservedInstance(
                            iid, "running", action.instance_type, action.tags, subnet_id=action.subnet_id,
                            vpc_id=VPC, private_ip=f"10.0.0.{n}", image_id=action.image_id,
                            security_group_ids=(gid,), network_interface_id=f"eni-{n}",
                            client_token=action.client_token, metadata_http_tokens="required",
                        )
                    )  # fmt: skip
                    launched[action.client_token] = iid
                    generations[action.index] = action.generation
                case actions.TerminateInstance():
                    self.set_state(action.instance_id, "terminated")
                    terminated.append(action.instance_id)
                case actions.StartInstance():
                    self.set_state(action.instance_id, "running")
                    started.append(action.instance_id)
                case actions.DeleteSecurityGroup():
                    self.groups = [g for g in self.groups if g.group_id != action.group_id]
                case actions.TagResources() | actions.HardenMetadata():
                    pass
                case _:
                    raise AssertionError(f"the fake cloud does not do {action!r}")
        return actions.ActResult(
            launched=launched, generations=generations, created_group_id=created, started=tuple(started),
            terminated=tuple(terminated), mutations=mutations,
        )  # fmt: skip


class FakeHosts:
    """The host push and revert: every host ends Configured unless told otherwise."""

    def __init__(self, journal: list[tuple[str, ...]]) -> None:
        self.journal = journal
        self.fail: dict[str, str] = {}  # instance id -> the state its pushes end in
        self.fail_reverts: dict[str, str] = {}  # instance id -> the state its reverts end in
        self.pushes: list[tuple[str, tuple[str, ...]]] = []
        self.pointing: dict[str, tuple[str, ...]] = {}  # what each host's files name now (absent: localhost)

    def push_hosts(self, *, hosts: Sequence[str], endpoints: Sequence[str], **_: Any) -> list[HostPushResult]:
        out = []
        for host in hosts:
            self.pushes.append((host, tuple(endpoints)))
            self.journal.append(("push", host, ",".join(endpoints)))
            state = self.fail.get(host, "Configured")
            if state == "Configured":
                self.pointing[host] = tuple(endpoints)
            out.append(HostPushResult(host, state, files=(("/edx/etc/lms.yml", "sha"),),  # type: ignore[arg-type]
                                      time=datetime.now(UTC), message=state.lower()))  # fmt: skip
        return out

    def revert_hosts(
        self, *, hosts: Sequence[str], current_endpoints: Sequence[str] = (), **_: Any
    ) -> list[HostPushResult]:
        out = []
        for host in hosts:
            self.journal.append(("revert", host))
            state = self.fail_reverts.get(host, "Configured")
            # like the real revert: only the endpoints the caller says it wrote go back to localhost
            if state == "Configured" and set(self.pointing.get(host, ())) <= set(current_endpoints):
                self.pointing.pop(host, None)
            out.append(
                HostPushResult(host, state, message="reverted" if state == "Configured" else "offline")
            )  # type: ignore[arg-type]
        return out


class FakeClaims:
    """The cluster-wide claim index (app/claims.py keeps it with kopf): every watched object's claims, read from
    its current status in `FakeStatus` as kopf would re-index it after each status write."""

    def __init__(self, status: FakeStatus) -> None:
        self.status = status
        self.objects: dict[str, dict[str, Any]] = {}  # name -> object as the API holds it

    def watch(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.objects[obj["metadata"]["name"]] = obj
        return obj

    def forget(self, obj: Mapping[str, Any]) -> None:
        self.objects.pop(obj["metadata"]["name"], None)

    def claimants(self, host_id: str) -> list[claims.Claim]:
        found = []
        for name, obj in self.objects.items():
            claim = claims.claims_of({**obj, "status": self.status.by_name.get(name, {})}).get(host_id)
            if claim is not None:
                found.append(claim)
        return found


class FakeMemcached:
    """Probe results per endpoint: healthy unless an endpoint is marked down (on its host too) or blocked (only
    the operator's path: its host still answers the second opinion)."""

    def __init__(self) -> None:
        self.down: dict[str, str] = {}  # endpoint -> error kind
        self.blocked: set[str] = set()  # endpoints only the operator cannot reach (they time out)
        self.rounds = 0

    async def probe_all(self, targets: Sequence[str], **_: Any) -> list[ProbeResult]:
        self.rounds += 1
        out = []
        for endpoint in targets:
            kind = self.down.get(endpoint) or ("timeout" if endpoint in self.blocked else None)
            if kind:
                out.append(ProbeResult(endpoint, reachable=False, error_kind=kind, error=f"{kind} (fake)"))
            else:
                out.append(ProbeResult(endpoint, reachable=True, canary_ok=True, latency_ms=1.0, version="1.6",
                                       get_hits=1, get_misses=0))  # fmt: skip
        return out


@dataclasses.dataclass
class World:
    """Everything a test can look at or break, plus the `Adapters` built on it."""

    journal: list[tuple[str, ...]]
    clock: Clock
    cloud: FakeCloud
    observer: FakeObserver
    ssm: FakeSsm
    status: FakeStatus
    hosts: FakeHosts
    memcached: FakeMemcached
    events: list[tuple[str, str, str]]
    adapters: Adapters
    edx: FakeEdxHosts
    claims: FakeClaims
    drift: FakeDrift = dataclasses.field(default_factory=FakeDrift)

    def reasons(self) -> list[str]:
        return [reason for _, reason, _ in self.events]

    def aws(self) -> list[str]:
        return [entry[1] for entry in self.journal if entry[0] == "aws"]


def world() -> World:
    journal: list[tuple[str, ...]] = []
    clock = Clock()
    cloud = FakeCloud(journal)
    observer = FakeObserver(cloud)
    status = FakeStatus(journal)
    hosts = FakeHosts(journal)
    memcached = FakeMemcached()
    ssm = FakeSsm(journal, cloud, memcached)
    events: list[tuple[str, str, str]] = []
    lookups, edx, drift = FakeLookups(), FakeEdxHosts(), FakeDrift(clock)
    claims_index = FakeClaims(status)

    def record_event(obj: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        events.append((type_, reason, message))

    adapters = Adapters(
        clients=lambda region: None,  # type: ignore[arg-type,return-value]
        observer=lambda region, ttl: observer,  # type: ignore[arg-type,return-value]
        edx_hosts=lambda region, ttl: edx,  # type: ignore[arg-type,return-value]
        lookups=lambda region: lookups,  # type: ignore[arg-type,return-value]
        ssm=lambda region: ssm,  # type: ignore[arg-type,return-value]
        host_drift=lambda region, ttl: drift,  # type: ignore[arg-type,return-value]
        status=status,
        events=record_event,
        metrics=Metrics(CollectorRegistry()),
        clock=clock,
        act=cloud.act,
        push_hosts=hosts.push_hosts,
        revert_hosts=hosts.revert_hosts,
        probe_all=memcached.probe_all,
        probe_source_address=lambda endpoint: "10.0.200.7",  # the operator's pod address
        claims=claims_index,
    )
    return World(
        journal,
        clock,
        cloud,
        observer,
        ssm,
        status,
        hosts,
        memcached,
        events,
        adapters,
        edx,
        claims_index,
        drift,
    )


def cache(
    name: str = "site",
    *,
    uid: str = "uid-1",
    generation: int = 1,
    created: str = "2025-01-01T00:00:00Z",
    **spec: Any,
) -> dict[str, Any]:
    """An EdxRemoteCache as the API hands it to the operator (camelCase spec keys merged in)."""
    body: dict[str, Any] = {
        "region": REGION,
        "instance": {"subnetId": SUBNET},
        "openedx": {"hosts": list(EDX_HOSTS)},
        "probe": {"intervalSeconds": 1, "timeoutSeconds": 0.5, "failureThreshold": 2},
        "driftIntervalSeconds": 5,
    }
    for key, value in spec.items():
        body[key] = (
            {**body[key], **value} if isinstance(value, dict) and isinstance(body.get(key), dict) else value
        )
    return {
        "apiVersion": "edx-remote-cache.openedx.org/v1alpha1",
        "kind": "EdxRemoteCache",
        "metadata": {
            "name": name,
            "namespace": "default",
            "uid": uid,
            "generation": generation,
            "creationTimestamp": created,
        },
        "spec": body,
    }


def owned_by(instance: model.ObservedInstance, uid: str) -> bool:
    return instance.tag_map.get(OWNER_UID_TAG) == uid
