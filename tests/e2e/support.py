"""Helpers shared by the end-to-end tests (the fixtures live in conftest.py).

Everything the tests read from AWS goes through the sandbox's *internal* clients, so the sandbox's call recorder
holds only the operator's own calls (that is what the tests count, and what tests/fixtures/aws_calls.json lists).
"""

from __future__ import annotations

import difflib
import importlib.resources
import json
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pymemcache.client.base import Client as Memcache

from edx_remote_cache import OWNER_UID_TAG
from edx_remote_cache.adapters.probe import parse_endpoint
from edx_remote_cache.adapters.ssm import READ_ONLY_COMMENTS
from edx_remote_cache.domain.conditions import CONDITION_TYPES
from edx_remote_cache.sandbox import Sandbox
from edx_remote_cache.sandbox.harness import cache_manifest, condition, is_ready, wait_for
from edx_remote_cache.sandbox.netns import SocketModule

ROOT = Path(__file__).resolve().parents[2]
STATUS_FIXTURES = ROOT / "tests" / "fixtures" / "status"
RECORD_STATUS_ENV = "EDX_REMOTE_CACHE_RECORD_STATUS"
PAUSE_ANNOTATION = "edx-remote-cache.openedx.org/paused"

# host path (as the operator names it) -> (path under the sandbox host's /edx root, package data file)
MANAGED_FILES: dict[str, tuple[str, str]] = {
    "/edx/etc/lms.yml": ("etc/lms.yml", "lms.yml"),
    "/edx/etc/studio.yml": ("etc/studio.yml", "studio.yml"),
    "/edx/etc/ecommerce.yml": ("etc/ecommerce.yml", "ecommerce.yml"),
    "/edx/etc/insights.yml": ("etc/insights.yml", "insights.yml"),
    "/edx/app/edx_ansible/server-vars.yml": ("app/edx_ansible/server-vars.yml", "server-vars.yml"),
}
BACKUP_MARK = ".erc-bak-"
LOCAL_ENDPOINT = re.compile(r"\b(?:localhost|127\.0\.0\.1):11211\b")
ANY_ENDPOINT = re.compile(r"\b(?:localhost|\d{1,3}(?:\.\d{1,3}){3}):11211\b")  # memcached endpoints


def original(name: str) -> bytes:
    """A config file as the package ships it (what the sandbox's Open edX hosts start with)."""
    return importlib.resources.files("edx_remote_cache").joinpath("data", "edx", name).read_bytes()


def host_file(sb: Sandbox, host: str, rel: str) -> Path:
    return sb.roots[host] / rel


def read_host_files(sb: Sandbox, host: str) -> dict[str, bytes]:
    return {path: host_file(sb, host, rel).read_bytes() for path, (rel, _) in MANAGED_FILES.items()}


def backups(sb: Sandbox, host: str, rel: str) -> list[Path]:
    path = host_file(sb, host, rel)
    return sorted(path.parent.glob(path.name + BACKUP_MARK + "*"))


def _normalise(line: str) -> str:
    """A line with every memcached endpoint (quoted or not) replaced by EP and endpoint lists collapsed."""
    text = re.sub(r"(['\"]?)" + ANY_ENDPOINT.pattern + r"\1", "EP", line)
    return re.sub(r"EP(?:\s*,\s*EP)+", "EP", text)


def assert_only_locations_changed(
    before: bytes, after: bytes, endpoints: Sequence[str], *, what: str
) -> None:
    """``after`` is ``before`` byte for byte except lines holding memcached endpoints, which now name exactly
    ``endpoints`` (and no local memcached any more)."""
    old = before.decode("utf-8").splitlines(keepends=True)
    new = after.decode("utf-8").splitlines(keepends=True)
    matcher = difflib.SequenceMatcher(a=old, b=new, autojunk=False)
    changed = False
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            continue
        changed = True
        removed, added = old[i1:i2], new[j1:j2]
        for line in removed:
            assert LOCAL_ENDPOINT.search(line), f"{what}: a non-LOCATION line changed: {line!r}"
        for line in added:
            assert ANY_ENDPOINT.search(line) and not LOCAL_ENDPOINT.search(line), (
                f"{what}: unexpected line {line!r}"
            )
        assert {_normalise(x) for x in added} == {_normalise(x) for x in removed}, (
            f"{what}: LOCATION lines changed shape:\n{''.join(removed)}--->\n{''.join(added)}"
        )
    assert changed, f"{what}: nothing was re-pointed"
    found = set(ANY_ENDPOINT.findall(after.decode("utf-8")))
    assert found == set(endpoints), f"{what}: endpoints {sorted(found)} != {sorted(endpoints)}"
    if len(endpoints) > 1:  # Django shards over the ordered list: every list keeps the status order
        text = after.decode("utf-8")
        positions = [text.find(e) for e in endpoints]
        assert positions == sorted(positions), f"{what}: endpoints out of order"


def assert_hosts_point_at(sb: Sandbox, endpoints: Sequence[str], hosts: Iterable[str] | None = None) -> None:
    """Every managed file on every host: only LOCATION lines differ from the package data, backups present."""
    for host in hosts if hosts is not None else sb.edx_hosts:
        for path, (rel, name) in MANAGED_FILES.items():
            current = host_file(sb, host, rel).read_bytes()
            assert_only_locations_changed(original(name), current, endpoints, what=f"{host}:{path}")
            assert backups(sb, host, rel), f"{host}:{path}: no backup next to the file"


def assert_hosts_reverted(sb: Sandbox, hosts: Iterable[str] | None = None) -> None:
    """Every managed file is its original bytes again (127.0.0.1 stays 127.0.0.1); backups are still there."""
    for host in hosts if hosts is not None else sb.edx_hosts:
        for path, (rel, name) in MANAGED_FILES.items():
            current, before = host_file(sb, host, rel).read_bytes(), original(name)
            if current != before:
                assert_local_only_differs(before, current, what=f"{host}:{path}")  # names the changed line
            assert current == before, f"{host}:{path} was not reverted to its original bytes"


def assert_local_only_differs(before: bytes, after: bytes, *, what: str) -> None:
    old = before.decode("utf-8").splitlines(keepends=True)
    new = after.decode("utf-8").splitlines(keepends=True)
    assert len(old) == len(new), what
    for a, b in zip(old, new, strict=True):
        if a != b:
            assert LOCAL_ENDPOINT.search(a) and LOCAL_ENDPOINT.search(b), f"{what}: {a!r} -> {b!r}"


def snapshot_hosts(sb: Sandbox) -> dict[str, dict[str, bytes]]:
    return {host: read_host_files(sb, host) for host in sb.edx_hosts}


def assert_hosts_untouched(sb: Sandbox, before: Mapping[str, Mapping[str, bytes]] | None = None) -> None:
    """Not a byte changed since ``before`` (default: the package's files)."""
    for host in sb.edx_hosts:
        for path, (rel, name) in MANAGED_FILES.items():
            expected = before[host][path] if before is not None else original(name)
            assert host_file(sb, host, rel).read_bytes() == expected, f"{host}:{path} changed"


def reset_hosts(sb: Sandbox) -> None:
    """Put the package's files back and drop backups (between tests that each expect a fresh install)."""
    for host in sb.edx_hosts:
        for rel, name in MANAGED_FILES.values():
            path = host_file(sb, host, rel)
            path.write_bytes(original(name))
            for backup in backups(sb, host, rel):
                backup.unlink()


# ------------------------------------------------------------------------------------------------ memcached


def root_netns_cookie() -> int:
    """SO_NETNS_COOKIE of this machine's own network namespace (the e2e loopback guard compares with it)."""
    import socket
    import struct

    with socket.socket() as sock:
        return int(struct.unpack("Q", sock.getsockopt(socket.SOL_SOCKET, 71, 8))[0])


def memcache(sb: Sandbox, endpoint: str, timeout: float = 2.0, *, vantage: str | None = None) -> Memcache:
    """A client for ``endpoint`` (the private ``ip:port`` EC2 reports) dialing from inside the sandbox VPC:
    from ``vantage`` (an instance id or ``operator``: through the security groups), or by default from the
    cache host itself (an admin on the box: its own filter admits it). Never from this machine's namespace."""
    host, port = parse_endpoint(endpoint)
    if vantage is None:
        owners = [
            iid for iid, c in sb.cache_hosts.items() if c.host.private_ip == host and c.instance_running
        ]
        assert owners, f"{endpoint} is no cache host of the sandbox"
        vantage = owners[-1]
    assert sb.network is not None
    module = SocketModule(sb.network.namespace(vantage))
    return Memcache((host, port), connect_timeout=timeout, timeout=timeout, socket_module=module)


def memcached_stats(sb: Sandbox, endpoint: str) -> dict[bytes | str, Any]:
    client = memcache(sb, endpoint)
    try:
        return dict(client.stats())
    finally:
        client.close()


def assert_memcached_works(sb: Sandbox, endpoint: str) -> None:
    client = memcache(sb, endpoint)
    try:
        key = f"e2e-{time.monotonic_ns()}"
        assert client.set(key, b"hello", expire=60)
        assert client.get(key) == b"hello"
    finally:
        client.close()


# ------------------------------------------------------------------------------------------------------ AWS


def ec2(sb: Sandbox) -> Any:
    """An EC2 client whose calls the recorder does not count as the operator's."""
    return sb.aws.client("ec2", internal=True)


def owned_instances(sb: Sandbox, uid: str, *, live_only: bool = True) -> list[dict[str, Any]]:
    found = ec2(sb).describe_instances(Filters=[{"Name": f"tag:{OWNER_UID_TAG}", "Values": [uid]}])
    instances = [i for r in found["Reservations"] for i in r["Instances"]]
    if live_only:
        instances = [i for i in instances if i["State"]["Name"] not in ("terminated", "shutting-down")]
    return instances


def instance(sb: Sandbox, instance_id: str) -> dict[str, Any]:
    found = ec2(sb).describe_instances(InstanceIds=[instance_id])
    return dict(found["Reservations"][0]["Instances"][0])


def tags(resource: Mapping[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in resource.get("Tags") or []}


def security_group(sb: Sandbox, group_id: str) -> dict[str, Any] | None:
    client = ec2(sb)
    try:
        groups = client.describe_security_groups(GroupIds=[group_id])["SecurityGroups"]
    except client.exceptions.ClientError as exc:
        if "NotFound" in str(exc):
            return None
        raise
    return dict(groups[0]) if groups else None


def mutations(sb: Sandbox, since: float | None = None) -> list[Any]:
    """The operator's mutating AWS calls (a SendCommand that only reads or hashes files is not one)."""
    return [
        c
        for c in sb.calls.calls(mutating=True, since=since)
        if not (c.operation == "SendCommand" and c.params.get("Comment") in READ_ONLY_COMMENTS)
    ]


def operations(calls: Iterable[Any]) -> list[str]:
    return [c.operation for c in calls]


def wait_until(predicate: Callable[[], Any], *, timeout: float, interval: float = 0.1, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


# ----------------------------------------------------------------------------------------------- the object


class Cache:
    """One EdxRemoteCache in the sandbox's Kubernetes API, with the waits the tests need."""

    def __init__(self, sb: Sandbox, name: str, namespace: str) -> None:
        self.sb, self.name, self.namespace = sb, name, namespace

    @classmethod
    def create(cls, sb: Sandbox, name: str, namespace: str, **spec: Any) -> Cache:
        if sb.kube.get(None, namespace, kind="Namespace") is None:
            sb.kube.create_namespace(namespace)
        manifest = cache_manifest(
            name, subnet_id=sb.subnet_id, hosts=spec.pop("hosts", sb.edx_hosts), namespace=namespace, **spec
        )
        sb.kube.create(manifest)
        return cls(sb, name, namespace)

    def get(self) -> dict[str, Any] | None:
        return self.sb.kube.get(self.namespace, self.name)

    @property
    def obj(self) -> dict[str, Any]:
        obj = self.get()
        assert obj is not None, f"{self.namespace}/{self.name} is gone"
        return obj

    @property
    def status(self) -> dict[str, Any]:
        return dict(self.obj.get("status") or {})

    @property
    def uid(self) -> str:
        return str(self.obj["metadata"]["uid"])

    def condition(self, ctype: str) -> Mapping[str, Any]:
        return condition(self.get(), ctype)

    def wait(self, predicate: Callable[[Mapping[str, Any]], bool], *, timeout: float, what: str) -> dict:
        return dict(wait_for(self.get, predicate, timeout=timeout, what=f"{self.name}: {what}"))

    def wait_ready(self, *, timeout: float = 30.0, generation: int | None = None) -> dict[str, Any]:
        def ready(obj: Mapping[str, Any]) -> bool:
            if generation is not None and obj["metadata"].get("generation") != generation:
                return False
            return is_ready(obj)

        return self.wait(ready, timeout=timeout, what="Ready")

    def patch_spec(self, spec: Mapping[str, Any]) -> int:
        obj = self.sb.kube.patch_spec(self.namespace, self.name, spec)
        return int(obj["metadata"]["generation"])

    def annotate(self, annotations: Mapping[str, str | None]) -> None:
        self.sb.kube.patch(self.namespace, self.name, {"metadata": {"annotations": dict(annotations)}})

    def delete(self) -> None:
        self.sb.kube.delete(self.namespace, self.name, missing_ok=True)

    def wait_gone(self, *, timeout: float = 45.0) -> None:
        wait_until(lambda: self.get() is None, timeout=timeout, what=f"{self.name} to be deleted")

    def events(self) -> list[dict[str, Any]]:
        return self.sb.kube.list_events(self.namespace, involved_name=self.name)

    def event_reasons(self) -> list[str]:
        return [e.get("reason", "") for e in self.events()]

    def status_writes(self, since: float | None = None) -> list[Any]:
        return [
            r for r in self.sb.kube.status_writes(since=since)
            if r.name == self.name and r.namespace == self.namespace
        ]  # fmt: skip

    def endpoints(self) -> list[str]:
        return list(self.status.get("endpoints") or [])

    def instance_ids(self) -> list[str]:
        return [i["id"] for i in self.status.get("instances") or []]

    def host_states(self) -> dict[str, str]:
        return {h["instanceId"]: h["state"] for h in self.status.get("hosts") or []}

    def ready_history(self) -> list[str]:
        """The Ready condition's status through every stored version of the object, repeats collapsed."""
        seen: list[str] = []
        for version in self.sb.kube.iter_history(self.namespace, self.name):
            status = condition(version, "Ready").get("status")
            if status and (not seen or seen[-1] != status):
                seen.append(status)
        return seen

    def delete_and_wait(self, *, timeout: float = 45.0) -> None:
        self.delete()
        self.wait_gone(timeout=timeout)


def assert_conditions_complete(obj: Mapping[str, Any]) -> None:
    """All seven conditions, each for the object's generation."""
    generation = obj["metadata"]["generation"]
    conditions = obj["status"]["conditions"]
    assert [c["type"] for c in conditions] == list(CONDITION_TYPES)
    for c in conditions:
        assert c["observedGeneration"] == generation, c
        assert c["status"] in ("True", "False", "Unknown"), c
        assert c["reason"] and c["lastTransitionTime"], c
    assert obj["status"]["observedGeneration"] == generation


# ------------------------------------------------------------------------------------- recorded fixtures


def record_status_fixture(name: str, obj: Mapping[str, Any], comment: str) -> None:
    """With $EDX_REMOTE_CACHE_RECORD_STATUS=1, keep a real status for the Argo CD / Flux health tests."""
    if os.environ.get(RECORD_STATUS_ENV) != "1":
        return
    meta = obj.get("metadata") or {}
    keep = ("name", "namespace", "uid", "generation", "creationTimestamp", "deletionTimestamp", "finalizers")
    metadata = {k: meta[k] for k in keep if k in meta}
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k == PAUSE_ANNOTATION}
    if annotations:  # kopf's own annotations are noise; the pause is what health checks may read
        metadata["annotations"] = annotations
    clean = {
        "apiVersion": obj.get("apiVersion"),
        "kind": obj.get("kind"),
        "metadata": metadata,
        "spec": obj.get("spec"),
        "status": obj.get("status"),
    }
    text = f"# {comment}\n# Recorded from a real sandbox run by tests/e2e ({RECORD_STATUS_ENV}=1).\n"
    text += yaml.safe_dump(json.loads(json.dumps(clean)), sort_keys=False, allow_unicode=True)
    (STATUS_FIXTURES / f"sandbox-{name}.yaml").write_text(text, encoding="utf-8")
