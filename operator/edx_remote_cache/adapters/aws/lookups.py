"""Lookups whose answers rarely change, cached per region: the AMI (and its root device and architecture), a
subnet's VPC.

One lookup per key at a time: after a restart every object's first pass asks for the same subnet and AMI at
once, and without it each missed the empty cache (20 objects: 20 DescribeSubnets, 7 DescribeImages, 4
GetParameter in the first second; at 500, a burst of hundreds of reads of one answer).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from edx_remote_cache.adapters.aws.clients import AwsClients
from edx_remote_cache.adapters.aws.errors import TerminalAwsError, _call

AMI_PARAMETER_TTL_SECONDS = 3600.0


@dataclass(frozen=True)
class ImageInfo:
    image_id: str
    root_device_name: str
    architecture: str = "x86_64"  # EC2's name: x86_64 or arm64


class CloudLookups:
    """Lookups whose answers rarely change, cached per region: the AMI (root device, architecture), a subnet's VPC."""

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
        self._guard = threading.Lock()
        self._key_locks: dict[tuple[str, str], threading.Lock] = {}

    @contextlib.contextmanager
    def _one_at_a_time(self, kind: str, key: str) -> Iterator[None]:
        """Callers asking for the same key wait for the first one's answer (then read the cache)."""
        with self._guard:
            lock = self._key_locks.setdefault((kind, key), threading.Lock())
        with lock:
            yield

    def image(self, *, ami: str | None, ami_parameter: str, architecture: str | None = None) -> ImageInfo:
        """An explicit AMI, else the public SSM parameter's current value; terminal error if neither resolves,
        or if the image is not of `architecture` (the instance type's: an arm64 image cannot boot on t3)."""
        image_id = ami or self._parameter(ami_parameter)
        with self._one_at_a_time("image", image_id):
            if image_id not in self._images:
                self._images[image_id] = self._describe_image(image_id)
        info = self._images[image_id]
        if architecture is not None and info.architecture != architecture:
            raise TerminalAwsError(
                "InvalidParameterCombination",
                f"AMI {image_id} is an {info.architecture} image but the instance type runs {architecture}; "
                "use an AMI of that architecture, or remove spec.instance.ami to get Ubuntu 24.04 for the type",
            )
        return info

    def _describe_image(self, image_id: str) -> ImageInfo:
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
            raise TerminalAwsError("InvalidAMIID.NotFound", f"AMI {image_id} does not exist in this region")
        return ImageInfo(
            image_id,
            images[0].get("RootDeviceName") or "/dev/sda1",
            images[0].get("Architecture") or "x86_64",
        )

    def _parameter(self, name: str) -> str:
        with self._one_at_a_time("parameter", name):
            return self._read_parameter(name)

    def _read_parameter(self, name: str) -> str:
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
        with self._one_at_a_time("subnet", subnet_id):
            if subnet_id not in self._vpcs:
                response = _call(self._clients.ec2, "describe_subnets", SubnetIds=[subnet_id])
                subnets = (response or {}).get("Subnets") or []
                if not subnets:
                    raise TerminalAwsError("InvalidSubnetID.NotFound", f"subnet {subnet_id} does not exist")
                self._vpcs[subnet_id] = subnets[0]["VpcId"]
        return self._vpcs[subnet_id]
