"""Faults the sandbox can inject, out of band (the operator's API calls never cause them and are not mixed
with them in the call recorder: EC2 faults go through the API as sandbox-internal calls)."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edx_remote_cache.sandbox.aws import ApiError, Request, Response, ec2_error, json_error
from edx_remote_cache.sandbox.edx_hosts import set_supervisorctl_failing

if TYPE_CHECKING:
    from edx_remote_cache.sandbox import Sandbox

__all__ = ["Faults"]


class Faults:
    """``sandbox.faults``: break things the way production breaks."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._sandbox = sandbox
        self._lock = threading.Lock()
        self._failures: dict[tuple[str, str], list[tuple[str, str, int]]] = {}  # see fail_calls
        self._failing: set[tuple[str, str]] = set()  # calls with a hook installed
        self._storm: _Storm | None = None

    # -- memcached ----------------------------------------------------------------------------------------------------

    def kill_memcached(self, instance_id: str) -> None:
        """SIGKILL the cache host's memcached: its port refuses connections; systemd calls the unit failed."""
        self._sandbox._caches().kill(instance_id)

    def hang_memcached(self, instance_id: str) -> None:
        """SIGSTOP the cache host's memcached: connections are accepted and never answered (probe timeouts)."""
        self._sandbox._caches().hang(instance_id)

    def resume_memcached(self, instance_id: str) -> None:
        """SIGCONT after :meth:`hang_memcached`."""
        self._sandbox._caches().resume(instance_id)

    def break_boot(self, kind: str | None = "port-taken") -> None:
        """Cache hosts that boot from now on fail to start memcached, as a runtime fault would on EC2:
        ``port-taken`` (another program holds memcached's address: memcached's own "failed to listen ...
        Address already in use") or ``no-mirror`` (apt has no route to a package mirror: memcached is never
        installed). ``None`` lets later boots succeed again; hosts already broken stay broken."""
        from edx_remote_cache.sandbox.cache_hosts import BOOT_FAULTS

        if kind is not None and kind not in BOOT_FAULTS:
            raise ValueError(f"unknown boot fault {kind!r}; one of {', '.join(BOOT_FAULTS)}")
        self._sandbox._caches().boot_fault = kind

    # -- EC2 ----------------------------------------------------------------------------------------------------------

    def stop_instance(self, instance_id: str) -> None:
        """Stop the instance (as if someone did it in the console); a cache host's memcached dies with it."""
        self._sandbox._ec2_internal().stop_instances(InstanceIds=[instance_id])

    def start_instance(self, instance_id: str) -> None:
        self._sandbox._ec2_internal().start_instances(InstanceIds=[instance_id])

    def terminate_instance(self, instance_id: str) -> None:
        self._sandbox._ec2_internal().terminate_instances(InstanceIds=[instance_id])

    def fail_calls(
        self,
        operation: str,
        code: str,
        message: str,
        *,
        times: int = 1,
        service: str = "ec2",
        status: int = 400,
    ) -> None:
        """AWS answers the code under test's next ``times`` ``operation`` calls with ``code`` (e.g. RunInstances
        with InsufficientInstanceCapacity); nothing reaches moto, so nothing is launched. ``times=0`` stops it.
        The call recorder keeps each refused call with its error code and time."""
        key = (service, operation)
        with self._lock:
            self._failures[key] = [(code, message, status)] * max(0, times)
            if key in self._failing:
                return
            self._failing.add(key)

        def refuse(request: Request) -> None:
            if request.internal:
                return
            with self._lock:
                queued = self._failures.get(key)
                if not queued:
                    return
                failure = queued.pop(0)
            raise ApiError(*failure)

        self._sandbox._aws().frontend.on_before(service, operation, refuse)

    def hide_new_instances(self, seconds: float) -> None:
        """From now on, each instance the operator launches is invisible to DescribeInstances for ``seconds``
        (``InvalidInstanceID.NotFound`` by id, absent from filtered lists), as EC2's eventual consistency does.
        0 turns it off (instances already hidden stay hidden until their time is up)."""
        self._sandbox._aws().strict.hide_new_for = max(0.0, seconds)

    def hide_instance(self, instance_id: str, seconds: float) -> None:
        """Hide one existing instance from DescribeInstances for ``seconds``."""
        self._sandbox._aws().strict.hide(instance_id, seconds)

    def aws_storm(self, seconds: float, *, codes: tuple[str, ...] = ("Throttling", "5xx")) -> None:
        """For ``seconds``, every call the operator makes to the sandbox AWS (EC2 and SSM; the sandbox's own
        calls pass) is answered with an error instead, taking turns through ``codes``: ``Throttling`` is each
        service's own throttling answer (EC2 ``RequestLimitExceeded`` 503, SSM ``ThrottlingException`` 400),
        ``5xx`` an ``InternalError`` 500 (SSM: ``InternalServerError``). 0 ends a storm early."""
        if self._storm is None:
            self._storm = _Storm()
            self._sandbox._aws().frontend.on_before("*", "*", self._storm)
        self._storm.start(seconds, codes)

    # -- security groups ----------------------------------------------------------------------------------------------

    @staticmethod
    def _permission(
        port: int, cidr: str | None, source_group_id: str | None, protocol: str, to_port: int | None
    ) -> dict[str, Any]:
        if (cidr is None) == (source_group_id is None):
            raise ValueError("give exactly one of cidr= or source_group_id=")
        permission: dict[str, Any] = {"IpProtocol": protocol, "FromPort": port, "ToPort": to_port or port}
        if cidr is not None:
            permission["IpRanges"] = [{"CidrIp": cidr}]
        else:
            permission["UserIdGroupPairs"] = [{"GroupId": source_group_id}]
        return permission

    def add_sg_rule(
        self,
        group_id: str,
        port: int,
        *,
        cidr: str | None = None,
        source_group_id: str | None = None,
        protocol: str = "tcp",
        to_port: int | None = None,
    ) -> None:
        """Add an ingress rule behind the operator's back (e.g. someone opens 11211 to 0.0.0.0/0)."""
        permission = self._permission(port, cidr, source_group_id, protocol, to_port)
        self._sandbox._ec2_internal().authorize_security_group_ingress(
            GroupId=group_id, IpPermissions=[permission]
        )

    def remove_sg_rule(
        self,
        group_id: str,
        port: int,
        *,
        cidr: str | None = None,
        source_group_id: str | None = None,
        protocol: str = "tcp",
        to_port: int | None = None,
    ) -> None:
        """Remove an ingress rule behind the operator's back (e.g. someone closes the Open edX hosts' access).
        As on EC2 the rule's description does not matter (moto would want it repeated, so it is looked up)."""
        permission = self._permission(port, cidr, source_group_id, protocol, to_port)
        ec2 = self._sandbox._ec2_internal()
        for existing in ec2.describe_security_groups(GroupIds=[group_id])["SecurityGroups"][0][
            "IpPermissions"
        ]:
            if (existing.get("IpProtocol"), existing.get("FromPort"), existing.get("ToPort")) != (
                permission["IpProtocol"],
                permission["FromPort"],
                permission["ToPort"],
            ):
                continue
            for key, field in (("IpRanges", "CidrIp"), ("UserIdGroupPairs", "GroupId")):
                for wanted in permission.get(key, ()):
                    for item in existing.get(key, ()):
                        if item.get(field) == wanted[field]:
                            wanted.update({k: v for k, v in item.items() if k == "Description"})
        ec2.revoke_security_group_ingress(GroupId=group_id, IpPermissions=[permission])

    # -- the network (invisible to the EC2 API) ------------------------------------------------------------------------

    def block_path(self, a: str, b: str) -> None:
        """Drop all traffic between two instances (or an instance and ``operator``), both ways, as a network
        ACL or a broken route would: the security groups still allow it, DescribeSecurityGroups shows nothing."""
        self._sandbox._network().block(a, b)

    def unblock_path(self, a: str, b: str) -> None:
        self._sandbox._network().unblock(a, b)

    def partition_operator(self, partitioned: bool = True) -> None:
        """Cut every path between the operator's namespace and the VPC (its API servers stay reachable): the
        operator's probes time out while the Open edX hosts still reach the cache."""
        self._sandbox._network().partition_operator(partitioned)

    def revoke_rule(self, group_id: str, port: int, **source: Any) -> None:
        """Revoke an ingress rule out of band (an alias of :meth:`remove_sg_rule`, named for the network fault):
        new connections it admitted are dropped within the next packet, established ones stay up."""
        self.remove_sg_rule(group_id, port, **source)

    # -- SSM agent ----------------------------------------------------------------------------------------------------

    def agent_offline(self, instance_id: str) -> None:
        """The host's SSM agent loses its connection: PingStatus ConnectionLost; commands stay Pending until
        their delivery timeout (``TimeoutSeconds``), then ``TimedOut``/``DeliveryTimedOut``."""
        self._sandbox._ssm().set_online(instance_id, False)

    def agent_online(self, instance_id: str) -> None:
        self._sandbox._ssm().set_online(instance_id, True)

    def delay_agent_registration(self, seconds: float) -> None:
        """From now on, a new cache host's SSM agent registers only ``seconds`` after boot: until then it is
        absent from DescribeInstanceInformation and SendCommand answers ``InvalidInstanceId``. 0 turns it off."""
        self._sandbox._ssm().registration_delay = max(0.0, seconds)

    # -- host behaviour -----------------------------------------------------------------------------------------------

    def fail_restarts(self, instance_id: str, fail: bool = True, *, exit_code: int = 1) -> None:
        """Make the host's service restarts fail: ``/edx/bin/supervisorctl`` on an Open edX host,
        ``systemctl restart memcached`` on a cache host (memcached is then down, the unit failed)."""
        host = self._sandbox._registry().get(instance_id)
        if host is None:
            raise KeyError(f"{instance_id} is not a sandbox host")
        if host.kind == "edx":
            set_supervisorctl_failing(host.root, fail, exit_code)
        else:
            self._sandbox._caches().set_fail_restarts(instance_id, fail)

    def make_unreadable(self, instance_id: str, path: str, *, how: str = "directory") -> Path:
        """Make a file on the host unreadable, even for root (which ignores permission bits, so chmod 000 would
        not do): ``how="directory"`` puts an empty directory in its place (reads fail with EISDIR),
        ``how="dangling-symlink"`` a symlink to nowhere (ENOENT). ``path`` is as the host sees it:
        ``/edx/etc/lms.yml``, or ``/etc/memcached.conf`` on a cache host. The original is kept for
        :meth:`restore_file`. Returns the path on this machine."""
        target = self._host_path(instance_id, path)
        backup = self._backup_path(target)
        if not os.path.lexists(backup) and os.path.lexists(target):
            os.replace(target, backup)
        elif os.path.lexists(target):
            _remove(target)
        if how == "directory":
            target.mkdir()
        elif how == "dangling-symlink":
            target.symlink_to(target.name + ".sandbox-missing")
        else:
            raise ValueError("how must be 'directory' or 'dangling-symlink'")
        return target

    def restore_file(self, instance_id: str, path: str) -> None:
        """Undo :meth:`make_unreadable`."""
        target = self._host_path(instance_id, path)
        backup = self._backup_path(target)
        if os.path.lexists(target):
            _remove(target)
        if os.path.lexists(backup):
            os.replace(backup, target)

    def _host_path(self, instance_id: str, path: str) -> Path:
        host = self._sandbox._registry().get(instance_id)
        if host is None:
            raise KeyError(f"{instance_id} is not a sandbox host")
        clean = Path(os.path.normpath("/" + path.lstrip("/")))
        if clean.parts[:2] == ("/", "edx"):
            return host.root.joinpath(*clean.parts[2:])
        if clean.parts[:2] == ("/", "etc"):
            return host.etc_upper.joinpath(*clean.parts[2:])
        raise ValueError(f"{path}: the sandbox models /edx/... and /etc/... on a host")

    @staticmethod
    def _backup_path(target: Path) -> Path:
        return target.with_name(f".{target.name}.sandbox-original")


class _Storm:
    """The frontend hook behind :meth:`Faults.aws_storm`."""

    def __init__(self) -> None:
        self.until = 0.0
        self.codes: tuple[str, ...] = ()
        self.answered = 0

    def start(self, seconds: float, codes: tuple[str, ...]) -> None:
        self.codes, self.until = codes, time.monotonic() + max(0.0, seconds)

    def __call__(self, request: Request) -> Response | None:
        if request.internal or time.monotonic() >= self.until or not self.codes:
            return None
        kind = self.codes[self.answered % len(self.codes)]
        self.answered += 1
        ssm = request.service == "ssm"
        if kind == "5xx":
            if ssm:
                return json_error("InternalServerError", "We encountered an internal error", 500)
            return ec2_error("InternalError", "An internal error has occurred", 500)
        if ssm:
            return json_error("ThrottlingException", "Rate exceeded", 400)
        return ec2_error("RequestLimitExceeded", "Request limit exceeded.", 503)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()
