"""`spec.region` and `spec.instance.subnetId` cannot change in place: the API refuses it (the CRD's CEL
transition rule, evaluated by the sandbox like the apiserver), and so does the operator when an API without
CEL lets it through: Stalled, no AWS call, while the cache that still serves the site keeps being probed."""

from __future__ import annotations

import pytest

from edx_remote_cache.sandbox import Sandbox
from edx_remote_cache.sandbox.harness import OperatorProcess, condition
from edx_remote_cache.sandbox.kube import KubeApiError
from edx_remote_cache.sandbox.kube.cel import without_cel

from .support import Cache, assert_hosts_point_at, assert_hosts_reverted, mutations

pytestmark = pytest.mark.e2e

NS = "e2e-immutable"


@pytest.mark.timeout(120)
def test_a_region_change_is_refused_by_the_api_and_by_the_operator(
    sandbox: Sandbox, operator: OperatorProcess
) -> None:
    cache = Cache.create(sandbox, "pinned", NS)
    cache.wait_ready(timeout=30)
    [iid] = cache.instance_ids()
    endpoints = cache.endpoints()

    with pytest.raises(KubeApiError) as err:
        cache.patch_spec({"region": "eu-west-1"})
    assert err.value.code == 422 and "spec.region cannot change in place" in err.value.message

    since = sandbox.calls.now()
    with without_cel():  # an apiserver without CEL (before 1.25) lets it through
        generation = cache.patch_spec({"region": "eu-west-1"})
    obj = cache.wait(
        lambda o: (
            condition(o, "Stalled").get("status") == "True"
            and (o.get("status") or {}).get("observedGeneration") == generation
        ),
        timeout=20,
        what="Stalled on the region change",
    )
    stalled = condition(obj, "Stalled")
    assert (
        stalled["reason"] == "ImmutableField" and "spec.region us-east-1 -> eu-west-1" in stalled["message"]
    )
    assert obj["status"]["region"] == "us-east-1" and obj["status"]["endpoints"] == endpoints

    sandbox.faults.hang_memcached(iid)  # the cache that still serves the site is still watched
    try:
        cache.wait(
            lambda o: condition(o, "CacheHealthy").get("status") == "False",
            timeout=15,
            what="the hung cache reported while stalled",
        )
    finally:
        sandbox.faults.resume_memcached(iid)
    cache.wait(
        lambda o: condition(o, "CacheHealthy").get("status") == "True", timeout=15, what="healthy again"
    )
    assert mutations(sandbox, since=since) == [], "a stalled object changed AWS"
    assert condition(cache.obj, "Stalled")["status"] == "True"

    with without_cel():
        generation = cache.patch_spec({"region": "us-east-1"})
    cache.wait_ready(timeout=30, generation=generation)
    assert cache.instance_ids() == [iid], "changing it back reuses the running cache"
    assert_hosts_point_at(sandbox, endpoints)
    cache.delete_and_wait()
    assert_hosts_reverted(sandbox)
