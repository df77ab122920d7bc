"""The sandbox's Kubernetes API emulator, exercised by a real kopf operator over loopback sockets.

Every test starts a fresh emulator (its own thread and port) and, where it matters, a kopf operator in a
thread with an isolated registry that logs in through ``KubeApi.connection_info()``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import http.client
import json
import logging
import os
import pathlib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import kopf
import pytest

from edx_remote_cache.sandbox.kube import KubeApi, KubeApiError

GROUP, VERSION, PLURAL = "cache.openedx.org", "v1alpha1", "edxremotecaches"
FINALIZER = "kopf.zalando.org/KopfFinalizerMarker"
NS = "default"


def erc(name: str, **spec: Any) -> dict[str, Any]:
    """A valid EdxRemoteCache; keyword arguments replace/extend its spec."""
    base = {
        "region": "us-east-1",
        "instance": {"subnetId": "subnet-0123456789abcdef0"},
        "openedx": {"hosts": ["i-0123456789abcdef0"]},
    }
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "EdxRemoteCache",
        "metadata": {"name": name, "namespace": NS},
        "spec": {**base, **spec},
    }


@dataclasses.dataclass
class Operator:
    """A kopf operator running in its own thread and event loop, against the emulator."""

    registry: kopf.OperatorRegistry
    calls: list[tuple[str, str, dict[str, Any]]] = dataclasses.field(default_factory=list)
    thread: threading.Thread | None = None
    stop_flag: threading.Event = dataclasses.field(default_factory=threading.Event)

    def run(self, **kwargs: Any) -> None:
        ready = threading.Event()
        settings = kopf.OperatorSettings()
        settings.posting.level = logging.INFO

        def main() -> None:
            coro = kopf.operator(
                registry=self.registry,
                settings=settings,
                stop_flag=self.stop_flag,
                ready_flag=ready,
                **kwargs,
            )
            asyncio.run(coro)

        self.thread = threading.Thread(target=main, name="kopf-operator-under-test", daemon=True)
        self.thread.start()
        assert ready.wait(10), "kopf did not start"

    def stop(self) -> None:
        self.stop_flag.set()
        if self.thread is not None:
            self.thread.join(15)
            assert not self.thread.is_alive(), "kopf did not stop"

    def names(self, handler: str) -> list[str]:
        return [name for which, name, _ in self.calls if which == handler]


@pytest.fixture
def kube() -> Iterator[KubeApi]:
    api = KubeApi()
    api.start()
    try:
        yield api
    finally:
        api.stop()
    assert api.errors == [], "the emulator answered 500 on its own bug"


@pytest.fixture
def make_operator(kube: KubeApi) -> Iterator[Callable[..., Operator]]:
    """Build and run kopf operators with the usual create/update/delete recorders (all stopped at teardown)."""
    started: list[Operator] = []

    def make(*, with_handlers: bool = True, **kwargs: Any) -> Operator:
        registry = kopf.OperatorRegistry()
        operator = Operator(registry)

        @kopf.on.login(registry=registry)
        def login(**_: Any) -> kopf.ConnectionInfo:
            return kube.connection_info()

        if with_handlers:

            @kopf.on.create(GROUP, VERSION, PLURAL, registry=registry)
            def created(name: str, body: kopf.Body, **_: Any) -> None:
                operator.calls.append(("create", name, dict(body.metadata)))

            @kopf.on.update(GROUP, VERSION, PLURAL, registry=registry)
            def updated(name: str, body: kopf.Body, **_: Any) -> None:
                operator.calls.append(("update", name, dict(body.metadata)))

            @kopf.on.delete(GROUP, VERSION, PLURAL, registry=registry)
            def deleted(name: str, body: kopf.Body, **_: Any) -> None:
                operator.calls.append(("delete", name, dict(body.metadata)))

        started.append(operator)
        return operator

    yield make
    for operator in started:
        operator.stop()


def start(operator: Operator, **kwargs: Any) -> Operator:
    kwargs.setdefault("clusterwide", True)
    kwargs.setdefault("standalone", True)
    operator.run(**kwargs)
    return operator


def until(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)
    return result


def settled(kube: KubeApi, name: str, quiet: float = 0.4, timeout: float = 10.0) -> dict[str, Any]:
    """The object once its resourceVersion has stayed put for ``quiet`` seconds (the operator is idle)."""
    deadline = time.monotonic() + timeout
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        obj = kube.get(NS, name)
        rv = (obj or {}).get("metadata", {}).get("resourceVersion")
        if rv != last:
            last, since = rv, time.monotonic()
        elif obj is not None and time.monotonic() - since >= quiet:
            return obj
        time.sleep(0.02)
    raise AssertionError(f"{name} kept changing")


def retry_conflicts(action: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Retry an optimistic-concurrency write on 409, as real clients do."""
    for _ in range(100):
        try:
            return action()
        except KubeApiError as exc:
            if exc.code != 409:
                raise
            time.sleep(0.02)
    raise AssertionError("still conflicting after 100 attempts")


def raw(
    kube: KubeApi, method: str, path: str, body: Any = None, content_type: str = "application/json"
) -> Any:
    """One request with access to the response headers (the helpers only return the body)."""
    conn = http.client.HTTPConnection("127.0.0.1", kube.port, timeout=10)
    try:
        payload = None if body is None else json.dumps(body).encode()
        conn.request(method, path, body=payload, headers={"Content-Type": content_type})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), json.loads(response.read() or b"null")
    finally:
        conn.close()


def watch_lines(kube: KubeApi, path: str) -> list[dict[str, Any]]:
    """Read a watch stream to its end (use ``timeoutSeconds`` in the query so that it ends)."""
    conn = http.client.HTTPConnection("127.0.0.1", kube.port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        assert response.status == 200
        return [json.loads(line) for line in response.read().splitlines() if line.strip()]
    finally:
        conn.close()


# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_create_update_delete_with_finalizer(kube: KubeApi, make_operator: Callable[..., Operator]) -> None:
    operator = start(make_operator())

    created = kube.create(erc("c1"))
    meta = created["metadata"]
    assert meta["generation"] == 1 and meta["uid"] and meta["creationTimestamp"].endswith("Z")
    until(lambda: operator.names("create") == ["c1"], what="on.create")
    obj = kube.wait_for(NS, "c1", lambda o: FINALIZER in (o or {}).get("metadata", {}).get("finalizers", []))
    assert obj is not None
    rv_before = int(obj["metadata"]["resourceVersion"])
    assert rv_before > int(meta["resourceVersion"])
    assert obj["metadata"]["generation"] == 1, "finalizers/annotations are metadata: no generation bump"

    kube.patch_spec(NS, "c1", {"paused": True})
    until(lambda: operator.names("update") == ["c1"], what="on.update")
    obj = kube.get(NS, "c1")
    assert obj is not None
    assert obj["metadata"]["generation"] == 2
    assert int(obj["metadata"]["resourceVersion"]) > rv_before
    assert operator.calls[-1][2]["generation"] == 2, "kopf saw the bumped generation"

    answer = kube.delete(NS, "c1")
    assert answer is not None and answer["metadata"]["deletionTimestamp"], "finalizer holds the object"
    until(lambda: operator.names("delete") == ["c1"], what="on.delete")
    assert operator.calls[-1][2]["deletionTimestamp"], "on.delete ran while the object was being deleted"
    kube.wait_for(NS, "c1", lambda o: o is None)

    history = list(kube.iter_history(NS, "c1"))
    versions = [int(v["metadata"]["resourceVersion"]) for v in history]
    assert versions == sorted(set(versions)), "every write got a new, higher resourceVersion"
    assert history[-1]["metadata"].get("finalizers") in (None, [])
    assert operator.names("create") == ["c1"] and operator.names("update") == ["c1"]


@pytest.mark.timeout(60)
def test_status_goes_through_the_subresource_and_is_isolated(
    kube: KubeApi, make_operator: Callable[..., Operator]
) -> None:
    operator = make_operator(with_handlers=False)

    @kopf.on.create(GROUP, VERSION, PLURAL, registry=operator.registry)
    def provision(patch: kopf.Patch, **_: Any) -> None:
        patch.status["phase"] = "Provisioning"
        patch.metadata.setdefault("labels", {})["seen"] = "yes"

    start(operator)
    since = time.time()
    body = erc("c2")
    body["status"] = {"phase": "Ready"}
    created = kube.create(body)
    assert "status" not in created, "status is dropped on create when the status subresource is on"

    obj = kube.wait_for(NS, "c2", lambda o: (o or {}).get("status", {}).get("phase") == "Provisioning")
    assert obj is not None and obj["metadata"]["labels"] == {"seen": "yes"}
    writes = kube.status_writes(since=since)
    assert writes and all(w.path.endswith("/c2/status") and w.method == "PATCH" for w in writes)
    assert all(w.code == 200 for w in writes)
    main_patches = [
        r for r in kube.requests if r.verb == "patch" and r.kind == "EdxRemoteCache" and not r.subresource
    ]
    assert main_patches and not any(r.status_write for r in main_patches)

    # A main-resource write that carries status: the rest applies, status does not change.
    after = kube.patch(NS, "c2", {"metadata": {"labels": {"team": "a"}}, "status": {"phase": "Hacked"}})
    assert after["status"]["phase"] == "Provisioning" and after["metadata"]["labels"]["team"] == "a"
    generation = after["metadata"]["generation"]

    # A status write that carries spec: status applies, spec and generation do not change.
    after = kube.patch(
        NS, "c2", {"spec": {"paused": True}, "status": {"phase": "Ready"}}, subresource="status"
    )
    assert after["status"]["phase"] == "Ready"
    assert after["spec"]["paused"] is False and after["metadata"]["generation"] == generation

    # PUT to /status replaces the status only; PUT to the main resource keeps the stored status.
    # (The operator may write in between a GET and a PUT: then the PUT gets 409 and is retried, as clients do.)
    def put_status() -> dict[str, Any]:
        current = kube.get(NS, "c2")
        assert current is not None
        spec = {**current["spec"], "paused": True}
        return kube.replace({**current, "status": {"phase": "Degraded"}, "spec": spec}, subresource="status")

    def put_main() -> dict[str, Any]:
        current = kube.get(NS, "c2")
        assert current is not None
        return kube.replace({**current, "status": {"phase": "Nope"}})

    replaced = retry_conflicts(put_status)
    assert replaced["status"] == {"phase": "Degraded"} and replaced["spec"]["paused"] is False
    assert retry_conflicts(put_main)["status"] == {"phase": "Degraded"}

    # The status is validated against the CRD too.
    with pytest.raises(KubeApiError) as err:
        kube.patch_status(NS, "c2", {"conditions": [{"type": "Ready", "status": "Maybe"}]})
    assert err.value.code == 422
    assert 'status.conditions[0].status: Unsupported value: "Maybe"' in err.value.message


@pytest.mark.timeout(60)
def test_event_posted_by_a_handler_is_listed(kube: KubeApi, make_operator: Callable[..., Operator]) -> None:
    operator = make_operator(with_handlers=False)

    @kopf.on.create(GROUP, VERSION, PLURAL, registry=operator.registry)
    def announce(body: kopf.Body, **_: Any) -> None:
        kopf.info(body, reason="Provisioning", message="launching the cache host")

    start(operator)
    uid = kube.create(erc("c3"))["metadata"]["uid"]
    events = until(lambda: kube.list_events(NS, involved_name="c3"), what="the event")
    event = next(e for e in events if e["reason"] == "Provisioning")
    assert event["message"] == "launching the cache host" and event["type"] == "Normal"
    assert event["involvedObject"]["uid"] == uid and event["involvedObject"]["kind"] == "EdxRemoteCache"
    assert event["metadata"]["name"].startswith("kopf-event-") and event["metadata"]["namespace"] == NS
    assert kube.list_events("kube-system") == []


@pytest.mark.timeout(60)
def test_schema_validation_defaults_and_pruning(
    kube: KubeApi, make_operator: Callable[..., Operator]
) -> None:
    operator = start(make_operator())

    with pytest.raises(KubeApiError) as err:
        kube.create(erc("bad", network={"allowFromCidrs": ["not-a-cidr"]}))
    assert err.value.code == 422 and err.value.reason == "Invalid"
    assert err.value.message == (
        'EdxRemoteCache.cache.openedx.org "bad" is invalid: spec.network.allowFromCidrs[0]: Invalid value: '
        "\"not-a-cidr\": spec.network.allowFromCidrs[0] in body should match '^([0-9]{1,3}\\.){3}[0-9]{1,3}/[0-9]{1,2}$'"
    )
    assert err.value.body["details"]["causes"][0]["field"] == "spec.network.allowFromCidrs[0]"

    missing = erc("bad2")
    del missing["spec"]["region"]
    missing["spec"]["deletionPolicy"] = "Shred"
    with pytest.raises(KubeApiError) as err:
        kube.create(missing)
    assert err.value.code == 422
    assert "spec.region: Required value" in err.value.message
    assert (
        'spec.deletionPolicy: Unsupported value: "Shred": supported values: "Delete", "Retain"'
        in err.value.message
    )
    assert {c["field"] for c in err.value.body["details"]["causes"]} == {"spec.region", "spec.deletionPolicy"}

    code, headers, obj = raw(
        kube, "POST", f"/apis/{GROUP}/{VERSION}/namespaces/{NS}/{PLURAL}", erc("ok", probe={}, bogus=1)
    )
    assert code == 201
    assert obj["spec"]["probe"] == {"intervalSeconds": 5, "timeoutSeconds": 1, "failureThreshold": 3}
    assert obj["spec"]["instance"]["instanceType"] == "t3.medium" and obj["spec"]["paused"] is False
    assert "network" not in obj["spec"], "defaults fill objects that are present, not absent ones"
    assert "bogus" not in obj["spec"] and 'unknown field \\"spec.bogus\\"' in headers["Warning"]
    code, _, status = raw(
        kube,
        "POST",
        f"/apis/{GROUP}/{VERSION}/namespaces/{NS}/{PLURAL}?fieldValidation=Strict",
        erc("strict", bogus=1),
    )
    assert code == 400 and 'strict decoding error: unknown field "spec.bogus"' in status["message"]

    until(lambda: operator.names("create") == ["ok"], what="on.create of the valid object")
    with pytest.raises(KubeApiError) as err:
        kube.patch_spec(NS, "ok", {"probe": {"intervalSeconds": 0}})
    assert err.value.code == 422
    assert (
        "spec.probe.intervalSeconds: Invalid value: 0: spec.probe.intervalSeconds in body should be greater"
        in (err.value.message)
    )
    versions = list(kube.iter_history(NS, "ok"))
    assert all(
        v["spec"]["probe"]["intervalSeconds"] == 5 and v["metadata"]["generation"] == 1 for v in versions
    )
    time.sleep(0.3)
    assert operator.names("create") == ["ok"] and operator.names("update") == [], (
        "kopf never saw invalid objects"
    )


def test_cel_transition_rules_make_region_and_subnet_immutable(kube: KubeApi) -> None:
    kube.create(erc("moving"))
    with pytest.raises(KubeApiError) as err:
        kube.patch_spec(
            NS, "moving", {"region": "eu-west-1", "instance": {"subnetId": "subnet-0fffffffffffffff0"}}
        )
    assert err.value.code == 422 and err.value.reason == "Invalid"
    assert 'spec.region: Invalid value: "string": spec.region cannot change in place' in err.value.message
    assert "create a new EdxRemoteCache in the new region" in err.value.message
    fields = {c["field"] for c in err.value.body["details"]["causes"]}
    assert fields == {"spec.region", "spec.instance.subnetId"}
    assert kube.get(NS, "moving")["spec"]["region"] == "us-east-1"
    assert kube.patch_spec(NS, "moving", {"paused": True})["metadata"]["generation"] == 2  # the rest changes


@pytest.mark.timeout(60)
def test_watch_honours_resource_version(kube: KubeApi, make_operator: Callable[..., Operator]) -> None:
    operator = start(make_operator())
    kube.create(erc("w1"))
    until(lambda: operator.names("create") == ["w1"], what="on.create")
    settled(kube, "w1")
    base = f"/apis/{GROUP}/{VERSION}/namespaces/{NS}/{PLURAL}"
    listed = kube.request("GET", base)[1]
    since = int(listed["metadata"]["resourceVersion"])

    kube.patch_spec(NS, "w1", {"paused": True})
    kube.create(erc("w2"))
    events = watch_lines(kube, f"{base}?watch=true&resourceVersion={since}&timeoutSeconds=1")
    seen = [(e["type"], e["object"]["metadata"]["name"]) for e in events]
    assert seen[0] == ("MODIFIED", "w1") and events[0]["object"]["spec"]["paused"] is True
    assert ("ADDED", "w2") in seen and ("ADDED", "w1") not in seen  # (the operator's own writes interleave)
    versions = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
    assert all(v > since for v in versions) and versions == sorted(versions)

    fresh = watch_lines(kube, f"{base}?watch=true&timeoutSeconds=1")
    assert {(e["type"], e["object"]["metadata"]["name"]) for e in fresh} == {("ADDED", "w1"), ("ADDED", "w2")}

    # kopf lists, then watches from the list's resourceVersion; after a dropped watch it resumes from the
    # last version it saw, so nothing is replayed and nothing made meanwhile is lost.
    kopf_watches = [
        r
        for r in kube.requests
        if r.verb == "watch" and r.kind == "EdxRemoteCache" and r.user_agent.startswith("kopf/")
    ]
    assert kopf_watches and all("resourceVersion=" in r.query for r in kopf_watches)
    until(lambda: operator.names("create") == ["w1", "w2"], what="on.create of w2")
    assert kube.drop_watches() >= 1
    kube.create(erc("w3"))
    until(
        lambda: operator.names("create") == ["w1", "w2", "w3"], what="on.create after the watch was dropped"
    )
    time.sleep(0.3)
    assert operator.names("create") == ["w1", "w2", "w3"], "no replayed events after reconnecting"


@pytest.mark.timeout(60)
def test_watch_expired_resource_version_answers_410() -> None:
    with KubeApi(watch_history=3) as api:
        for index in range(5):
            api.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"cm{index}"}})
        events = watch_lines(
            api, "/api/v1/namespaces/default/configmaps?watch=true&resourceVersion=1&timeoutSeconds=1"
        )
        assert [e["type"] for e in events] == ["ERROR"]
        assert events[0]["object"]["code"] == 410 and events[0]["object"]["reason"] == "Expired"


@pytest.mark.timeout(60)
def test_an_outage_closes_the_port_keeps_the_state_and_watches_resume_or_expire() -> None:
    with KubeApi() as api:
        api.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "before"}})
        since = api.emulator.resource_version
        port = api.port
        api.stop_listening()
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
            pass  # clients cannot reach it
        # a write while the operator cannot reach the server (a partition): the helpers still can
        api.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "during"}})
        api.start_listening()
        assert api.port == port and api.listening
        path = "/api/v1/namespaces/default/configmaps?watch=true&timeoutSeconds=1"
        events = watch_lines(api, f"{path}&resourceVersion={since}")  # resumed: exactly what was missed
        assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "during")]

        api.stop_listening()
        api.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "compacted"}})
        api.start_listening(compact=True)
        events = watch_lines(api, f"{path}&resourceVersion={since}")
        assert [e["object"]["code"] for e in events] == [410], "an old resourceVersion must list again"
        current = api.emulator.resource_version
        assert watch_lines(api, f"{path}&resourceVersion={current}") == []  # a fresh list's version is fine
        assert {o["metadata"]["name"] for o in api.list_objects(kind="ConfigMap", namespace="default")} >= {
            "before",
            "during",
            "compacted",
        }


@pytest.mark.timeout(60)
def test_conflicts_and_json_patch_test_failures(
    kube: KubeApi, make_operator: Callable[..., Operator]
) -> None:
    operator = start(make_operator())
    stale = kube.create(erc("k1"))
    until(lambda: operator.names("create") == ["k1"], what="on.create")
    current = settled(kube, "k1")
    assert current["metadata"]["resourceVersion"] != stale["metadata"]["resourceVersion"]

    with pytest.raises(KubeApiError) as err:
        kube.replace(stale)
    assert err.value.code == 409 and "the object has been modified" in err.value.message
    guarded = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": stale["metadata"]["resourceVersion"]},
        {"op": "add", "path": "/metadata/labels", "value": {"x": "y"}},
    ]
    with pytest.raises(KubeApiError) as err:
        kube.patch(NS, "k1", guarded, patch_type="json")
    assert err.value.code == 422, "kopf relies on 422 (not 500) to retry its finalizer patches later"

    same = kube.patch(NS, "k1", {"spec": {"region": "us-east-1"}})
    assert same["metadata"]["resourceVersion"] == current["metadata"]["resourceVersion"], (
        "no-op writes nothing"
    )

    with pytest.raises(KubeApiError) as err:
        kube.create(erc("k1"))
    assert err.value.code == 409 and err.value.reason == "AlreadyExists"
    with pytest.raises(KubeApiError) as err:
        kube.create({**erc("k2"), "metadata": {"name": "k2", "namespace": "nowhere"}})
    assert err.value.code == 404 and err.value.message == 'namespaces "nowhere" not found'


@pytest.mark.timeout(60)
def test_deleting_a_namespace_finalizes_its_objects(
    kube: KubeApi, make_operator: Callable[..., Operator]
) -> None:
    operator = start(make_operator())
    kube.create_namespace("team-a")
    kube.create({**erc("n1"), "metadata": {"name": "n1", "namespace": "team-a"}})
    kube.wait_for("team-a", "n1", lambda o: FINALIZER in (o or {}).get("metadata", {}).get("finalizers", []))

    kube.delete(None, "team-a", kind="Namespace")
    until(lambda: operator.names("delete") == ["n1"], what="on.delete through the namespace deletion")
    kube.wait_for(None, "team-a", lambda o: o is None, kind="Namespace")
    assert kube.get("team-a", "n1") is None


@pytest.mark.timeout(60)
def test_peering_with_two_replicas(kube: KubeApi, make_operator: Callable[..., Operator]) -> None:
    kube.create({"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": "default"}})
    low, high = make_operator(), make_operator()
    start(low, standalone=False, peering_name="default", priority=0)
    start(high, standalone=False, peering_name="default", priority=100)

    def peers() -> dict[str, Any]:
        return (kube.get(None, "default", kind="ClusterKopfPeering") or {}).get("status") or {}

    until(
        lambda: sorted(p["priority"] for p in peers().values()) == [0, 100],
        what="both replicas in the peering",
    )
    time.sleep(1.0)  # let the low-priority replica see the other one and pause
    kube.create(erc("p1"))
    until(lambda: high.names("create") == ["p1"], what="the high-priority replica to handle it")
    time.sleep(0.5)
    assert low.names("create") == []


@pytest.mark.timeout(60)
def test_kubeconfig_for_clients_and_kopf_run(kube: KubeApi, tmp_path: pathlib.Path) -> None:
    import kubernetes

    config = kube.write_kubeconfig(tmp_path / "kubeconfig")
    client = kubernetes.config.new_client_from_config(config_file=str(config))
    namespaces = kubernetes.client.CoreV1Api(client).list_namespace()
    assert "default" in {ns.metadata.name for ns in namespaces.items}
    kube.create(erc("k8s"))
    custom = kubernetes.client.CustomObjectsApi(client)
    listed = custom.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL)
    assert [item["metadata"]["name"] for item in listed["items"]] == ["k8s"]
    patched = custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, NS, PLURAL, "k8s", {"status": {"phase": "X"}}
    )
    assert patched["status"] == {"phase": "X"}
    client.close()

    # `kopf run` in its own process logs in with its default handler (the kubernetes client reads KUBECONFIG).
    handlers = tmp_path / "handlers.py"
    handlers.write_text(
        "import kopf\n"
        f"@kopf.on.create('{GROUP}', '{VERSION}', '{PLURAL}')\n"
        "def created(patch, **_):\n"
        "    patch.status['phase'] = 'Seen'\n"
    )
    env = {**os.environ, "KUBECONFIG": str(config), "HOME": str(tmp_path)}
    cmd = [sys.executable, "-m", "kopf", "run", "--all-namespaces", "--standalone", str(handlers)]
    process = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        kube.wait_for(NS, "k8s", lambda o: (o or {}).get("status", {}).get("phase") == "Seen", timeout=20)
    finally:
        process.terminate()
        output = process.communicate(timeout=15)[0]
    assert "Activity 'login_via_client' succeeded" in output


@pytest.mark.timeout(60)
def test_start_and_stop_are_fast_and_leave_nothing_behind() -> None:
    started = time.perf_counter()
    api = KubeApi()
    api.start()
    start_seconds = time.perf_counter() - started
    port, thread = api.port, api.thread
    assert thread is not None and thread.is_alive()

    # An operator keeps a watch open while the emulator goes away.
    registry = kopf.OperatorRegistry()
    operator = Operator(registry)

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return api.connection_info()

    @kopf.on.create(GROUP, VERSION, PLURAL, registry=registry)
    def created(name: str, **_: Any) -> None:
        operator.calls.append(("create", name, {}))

    start(operator)
    try:
        api.create(erc("s1"))
        until(lambda: operator.names("create") == ["s1"], what="on.create")
        until(
            lambda: any(r.verb == "watch" and r.kind == "EdxRemoteCache" for r in api.requests),
            what="a watch",
        )

        stopping = time.perf_counter()
        api.stop()
        stop_seconds = time.perf_counter() - stopping
    finally:
        operator.stop()
    assert start_seconds < 1.0 and stop_seconds < 1.0, (start_seconds, stop_seconds)
    assert not thread.is_alive() and not api.running
    assert not any(t.name == "edx-remote-cache-kube-api" for t in threading.enumerate())
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))  # the port is free again
    with socket.socket() as client, pytest.raises(ConnectionRefusedError):
        client.connect(("127.0.0.1", port))
    api.stop()  # idempotent


@pytest.mark.timeout(60)
def test_api_rules_selectors_pages_dry_run_and_finalizers(kube: KubeApi) -> None:
    """The apiserver rules that kopf and kubectl lean on, checked directly over HTTP."""
    for index in range(5):
        labels = {"i": str(index), "even": "true" if index % 2 == 0 else "false"}
        kube.create(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"cm{index}", "labels": labels}}
        )
    names = [
        o["metadata"]["name"]
        for o in kube.list_objects(kind="ConfigMap", label_selector="even=true,i notin (4)")
    ]
    assert names == ["cm0", "cm2"]
    names = [
        o["metadata"]["name"]
        for o in kube.list_objects(kind="ConfigMap", field_selector="metadata.name!=cm0")
    ]
    assert names == ["cm1", "cm2", "cm3", "cm4"]
    path = "/api/v1/namespaces/default/configmaps"
    _, page = kube.request("GET", path, query={"limit": "2"})
    assert [i["metadata"]["name"] for i in page["items"]] == ["cm0", "cm1"]
    assert page["metadata"]["remainingItemCount"] == 3
    _, page = kube.request("GET", path, query={"limit": "2", "continue": page["metadata"]["continue"]})
    assert [i["metadata"]["name"] for i in page["items"]] == ["cm2", "cm3"]

    # Objects leaving/entering a watch's label selection arrive as DELETED/ADDED.
    since = kube.request("GET", path)[1]["metadata"]["resourceVersion"]
    kube.patch(NS, "cm2", {"metadata": {"labels": {"even": "false"}}}, kind="ConfigMap")
    kube.patch(NS, "cm3", {"metadata": {"labels": {"even": "true"}}}, kind="ConfigMap")
    events = watch_lines(
        kube, f"{path}?watch=1&labelSelector=even%3Dtrue&resourceVersion={since}&timeoutSeconds=1"
    )
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("DELETED", "cm2"),
        ("ADDED", "cm3"),
    ]
    query = "watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true"
    events = watch_lines(kube, f"{path}?{query}&timeoutSeconds=1")
    assert [e["type"] for e in events] == ["ADDED"] * 5 + ["BOOKMARK"]
    assert events[-1]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}

    code, _ = kube.request("POST", path, {"metadata": {"name": "dry"}}, query={"dryRun": "All"})
    assert code == 201 and kube.get(NS, "dry", kind="ConfigMap") is None
    generated = kube.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"generateName": "gen-"}})
    assert generated["metadata"]["name"].startswith("gen-") and len(generated["metadata"]["name"]) == 9
    created = kube.create(erc("f1"))
    with pytest.raises(KubeApiError) as err:
        kube.replace({**created, "metadata": {"name": "f1", "namespace": NS}})
    assert err.value.message.endswith(
        "metadata.resourceVersion: Invalid value: 0x0: must be specified for an update"
    )

    # Finalizers: deletion waits for them, no new ones while deleting, the last one removed deletes.
    kube.patch(NS, "f1", {"metadata": {"finalizers": ["example.com/hold"]}})
    assert kube.delete(NS, "f1")["metadata"]["deletionTimestamp"]  # type: ignore[index]
    with pytest.raises(KubeApiError) as err:
        kube.patch(NS, "f1", {"metadata": {"finalizers": ["example.com/hold", "example.com/more"]}})
    assert err.value.code == 422 and "no new finalizers can be added" in err.value.message
    with pytest.raises(KubeApiError) as err:
        kube.create(erc("f1"))
    assert err.value.code == 409
    kube.patch(NS, "f1", {"metadata": {"finalizers": None}})
    assert kube.get(NS, "f1") is None
    assert kube.create(erc("f1"))["metadata"]["generation"] == 1, "a new object under the old name"
