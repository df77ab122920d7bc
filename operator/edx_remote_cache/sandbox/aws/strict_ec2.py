"""Where AWS is stricter than moto's EC2, as before/after hooks on the frontend (see the package docstring)."""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edx_remote_cache.sandbox.aws.frontend import (
    ApiError,
    AwsFrontend,
    Request,
    Response,
    _indexed,
)

if TYPE_CHECKING:
    from edx_remote_cache.sandbox.aws.server import AwsServer

_INSTANCE_ID = re.compile(r"<instanceId>(i-[0-9a-f]+)</instanceId>")


@dataclass
class _TokenEntry:
    lock: threading.Lock = field(default_factory=threading.Lock)
    fingerprint: str | None = None
    response: bytes | None = None


class Ec2Strictness:
    """The hooks that make moto's EC2 behave like AWS where moto is kinder (see the package docstring)."""

    def __init__(self, server: AwsServer) -> None:
        self.server = server
        self._tokens: dict[tuple[str, str], _TokenEntry] = {}
        self._tokens_lock = threading.Lock()
        self._lock = threading.Lock()
        self.hide_new_for = 0.0  # seconds a newly launched instance stays out of DescribeInstances
        self._visible_at: dict[str, float] = {}

    def install(self, frontend: AwsFrontend) -> None:
        frontend.on_before("ec2", "RunInstances", self._run_instances_before)
        frontend.on_after("ec2", "RunInstances", self._run_instances_after)
        frontend.on_before("ec2", "ModifyInstanceAttribute", self._modify_instance_attribute)
        frontend.on_before("ec2", "DeleteSecurityGroup", self._delete_security_group)
        frontend.on_before("ec2", "DescribeInstances", self._describe_instances_before)
        frontend.on_after("ec2", "DescribeInstances", self._describe_instances_after)

    # -- invisibility ---------------------------------------------------------------------------------------------

    def hide(self, instance_id: str, seconds: float) -> None:
        with self._lock:
            self._visible_at[instance_id] = time.monotonic() + seconds

    def hidden(self) -> set[str]:
        now = time.monotonic()
        with self._lock:
            for iid in [i for i, t in self._visible_at.items() if t <= now]:
                del self._visible_at[iid]
            return set(self._visible_at)

    def _describe_instances_before(self, request: Request) -> Response | None:
        if request.internal:
            return None
        asked = _indexed(request.params, "InstanceId")
        missing = [i for i in asked if i in self.hidden()]
        if missing:
            if len(missing) > 1:
                raise ApiError(
                    "InvalidInstanceID.NotFound", f"The instance IDs '{', '.join(missing)}' do not exist"
                )
            raise ApiError("InvalidInstanceID.NotFound", f"The instance ID '{missing[0]}' does not exist")
        return None

    def _describe_instances_after(self, request: Request, status: int, body: bytes) -> bytes | None:
        hidden = set() if request.internal else self.hidden()
        if not hidden or not any(i.encode() in body for i in hidden):
            return None
        root = ET.fromstring(body)
        ns = root.tag[1:].partition("}")[0] if root.tag.startswith("{") else ""

        def q(tag: str) -> str:
            return f"{{{ns}}}{tag}" if ns else tag

        reservations = root.find(q("reservationSet"))
        for reservation in list(reservations if reservations is not None else []):
            instances = reservation.find(q("instancesSet"))
            if instances is None:
                continue
            for item in list(instances):
                if item.findtext(q("instanceId")) in hidden:
                    instances.remove(item)
            if len(instances) == 0 and reservations is not None:
                reservations.remove(reservation)
        return ET.tostring(root, encoding="utf-8", xml_declaration=True, default_namespace=ns or None)

    # -- RunInstances: AMI exists, ClientToken idempotency ----------------------------------------------------------

    @staticmethod
    def _fingerprint(params: Mapping[str, Any]) -> str:
        return hashlib.sha256(json.dumps(sorted(params.items()), default=str).encode()).hexdigest()

    def _run_instances_before(self, request: Request) -> Response | None:
        image_id = request.params.get("ImageId")
        if image_id and image_id not in self.server.ec2_backend(request.region).amis:
            raise ApiError("InvalidAMIID.NotFound", f"The image id '[{image_id}]' does not exist")
        token = request.params.get("ClientToken")
        if not token:
            return None
        with self._tokens_lock:
            entry = self._tokens.setdefault((request.region, token), _TokenEntry())
        entry.lock.acquire()  # a concurrent twin waits here until the first launch has answered
        request.cleanups.append(entry.lock.release)
        fingerprint = self._fingerprint(request.params)
        if entry.response is None:  # first use (or the first use failed): launch, and remember the answer
            entry.fingerprint = fingerprint
            request.state["token_entry"] = entry
            return None
        if entry.fingerprint != fingerprint:
            raise ApiError(
                "IdempotentParameterMismatch",
                "Arguments on this idempotent request are inconsistent with arguments used in previous request(s).",
            )
        return 200, [("Content-Type", "text/xml")], entry.response

    def _run_instances_after(self, request: Request, status: int, body: bytes) -> bytes | None:
        entry = request.state.get("token_entry")
        if isinstance(entry, _TokenEntry):
            entry.response = body
        if self.hide_new_for > 0 and not request.internal:
            for iid in _INSTANCE_ID.findall(body.decode(errors="replace")):
                self.hide(iid, self.hide_new_for)
        return None

    # -- state rules ------------------------------------------------------------------------------------------------

    def _modify_instance_attribute(self, request: Request) -> Response | None:
        params = request.params
        attribute = str(params.get("Attribute", ""))
        changes = [a for a in ("InstanceType", "UserData") if f"{a}.Value" in params]
        if attribute in ("instanceType", "userData"):
            changes.append(attribute)
        if not changes:
            return None
        iid = str(params.get("InstanceId", ""))
        instance = self.server.ec2_backend(request.region).get_instance_by_id(iid)
        if instance is not None and instance.state != "stopped":
            raise ApiError("IncorrectInstanceState", f"The instance '{iid}' is not in the 'stopped' state.")
        return None

    def _delete_security_group(self, request: Request) -> Response | None:
        backend = self.server.ec2_backend(request.region)
        group_id = request.params.get("GroupId")
        if not group_id and request.params.get("GroupName"):
            group = backend.get_security_group_by_name_or_id(request.params["GroupName"])
            group_id = group.id if group is not None else None
        if not group_id:
            return None
        for instance in backend.all_instances():
            if instance.state != "terminated" and any(g.id == group_id for g in instance.security_groups):
                raise ApiError("DependencyViolation", f"resource {group_id} has a dependent object")
        for eni in backend.enis.values():
            attached = getattr(eni, "instance", None)
            if attached is not None and attached.state == "terminated":
                continue
            if any(getattr(g, "id", g) == group_id for g in eni.group_set):
                raise ApiError("DependencyViolation", f"resource {group_id} has a dependent object")
        for vpc_groups in backend.groups.values():
            for other in vpc_groups.values():
                if other.id == group_id:
                    continue
                for rule in [*other.ingress_rules, *other.egress_rules]:
                    if (rule.source_group or {}).get("GroupId") == group_id:
                        raise ApiError("DependencyViolation", f"resource {group_id} has a dependent object")
        return None
