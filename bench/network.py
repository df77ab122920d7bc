"""The sandbox VPC's own costs: how long a sandbox takes to start (namespaces, bridge, emulators, two Open edX
hosts) and what one launched instance costs (RunInstances returning with the instance's namespace, veth and nft
table made, and memcached listening on its private IP). At 500 resources the scale scenario pays the second
figure 500 times, so it bounds that scenario's start-up."""

from __future__ import annotations

import statistics
import time
from typing import Any


def _figure(values: list[float], **extra: Any) -> dict[str, Any]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
        **extra,
    }


def run_network(*, starts: int, instances: int) -> dict[str, Any]:
    from edx_remote_cache.domain.userdata import MemcachedSettings, render_user_data
    from edx_remote_cache.sandbox import Sandbox
    from edx_remote_cache.sandbox.aws import UBUNTU_AMI_ID

    start_times: list[float] = []
    launch_ms: list[float] = []
    for index in range(starts):
        began = time.monotonic()
        sb = Sandbox(with_kube=False)
        sb.start()
        start_times.append(time.monotonic() - began)
        try:
            if index == starts - 1:
                ec2 = sb.client("ec2")
                user_data = render_user_data(MemcachedSettings())
                for _ in range(instances):
                    t0 = time.monotonic()
                    launched = ec2.run_instances(
                        ImageId=UBUNTU_AMI_ID,
                        MinCount=1,
                        MaxCount=1,
                        SubnetId=sb.subnet_id,
                        UserData=user_data,
                    )["Instances"][0]["InstanceId"]
                    cache = sb.cache_host(launched)
                    assert cache.state == "running", cache.failure
                    launch_ms.append((time.monotonic() - t0) * 1000.0)
        finally:
            sb.stop()
    return {
        "sandbox_start_seconds": _figure(
            start_times,
            what="Sandbox(with_kube=False).start(): VPC, operator namespace, AWS, SSM, two Open edX hosts",
        ),
        "instance_launch_ms": _figure(
            launch_ms, what="RunInstances with the cache user-data until memcached listens on its private IP"
        ),
    }
