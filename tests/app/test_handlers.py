"""The daemon's cheap view of an object: enough for probing, healing and drift, the status only on first sight."""

from __future__ import annotations

import copy
from typing import Any

import kopf

from edx_remote_cache.app.daemon import daemon_view
from edx_remote_cache.reconciler.reconciler import Reconciler

OBJ: dict[str, Any] = {
    "apiVersion": "cache.openedx.org/v1alpha1",
    "kind": "EdxRemoteCache",
    "metadata": {
        "name": "prod",
        "namespace": "openedx",
        "uid": "0f0e0d0c-0000-4000-8000-000000000001",
        "generation": 3,
        "resourceVersion": "42",
        "annotations": {"edx-remote-cache.openedx.org/paused": "true"},
        "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}],
    },
    "spec": {"region": "us-east-1", "openedx": {"hosts": ["i-0123456789abcdef0"]}},
    "status": {"progress": {"launches": {"0": 1.0}}, "endpoints": ["10.0.1.5:11211"]},
}


def test_the_view_carries_identity_pause_and_spec_and_the_status_only_until_the_state_is_held() -> None:
    reconciler = Reconciler(adapters=None)  # type: ignore[arg-type]  # the view needs no outside system
    body = kopf.Body(copy.deepcopy(OBJ))
    first = daemon_view(body, reconciler)
    assert first["metadata"]["uid"] == OBJ["metadata"]["uid"] and first["metadata"]["generation"] == 3
    assert first["metadata"]["annotations"] == OBJ["metadata"]["annotations"]
    assert first["spec"] == OBJ["spec"] and "managedFields" not in first["metadata"]
    # first sight (e.g. right after an operator restart): the status is what the state is rebuilt from
    assert first["status"] == OBJ["status"]
    assert reconciler.state(first).status["progress"] == OBJ["status"]["progress"]
    later = daemon_view(body, reconciler)
    assert "status" not in later, "the reconciler keeps its own status once it holds the state"
    later["spec"]["region"] = "eu-west-1"
    assert body["spec"]["region"] == "us-east-1", "the view is a copy: nothing writes through to kopf's body"
