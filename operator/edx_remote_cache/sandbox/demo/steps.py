"""The story's steps: each runs in a worker thread, narrates, checks what it claims, and returns a one-line
summary (or raises :class:`StepFailed`). :class:`~edx_remote_cache.sandbox.demo.story.Demo` runs them in order,
with a timeout each; the waiting helpers here poll with the step's cancel event, so a step never hangs.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edx_remote_cache.sandbox.lms import LmsTraffic

from edx_remote_cache.sandbox.demo.config import (
    DEMO_MARKER_ENV,
    EXAMPLE,
    LOCATION_KEYS,
    NAME,
    NAMESPACE,
    compare_reverted,
    demo_manifest,
    location_diff,
    original_config,
)
from edx_remote_cache.sandbox.demo.display import Display
from edx_remote_cache.sandbox.demo.processes import _listening, marked_processes, sandbox_processes

WARM_HIT_RATIO = (
    0.7  # the traffic step waits for the operator to report a warm cache (the app's keys are skewed)
)


class StepFailed(Exception):
    """A step's check did not hold; the message says which and what was seen."""


class StepCancelled(Exception):
    """The step ran out of time or the user pressed Ctrl-C."""


@dataclass
class DemoTimings:
    ready_seconds: float | None = None
    detect_seconds: float | None = None
    heal_seconds: float | None = None


class StorySteps:
    """The steps and what they share; the state is set up by :class:`~edx_remote_cache.sandbox.demo.story.Demo`."""

    d: Display
    workdir: Path
    sb: Any
    op: Any
    traffic: LmsTraffic | None
    timings: DemoTimings
    waiting_for: str
    cr_created: bool
    created_at: float | None
    kill_at: float | None
    cache_instance: str
    security_group: str
    endpoint: str
    loopback_ports: set[int]
    run_id: str
    _local: threading.local
    _live_kube: bool
    _workers: list[threading.Thread]

    # -- waiting (worker threads) ---------------------------------------------------------------------------------------

    def _get(self) -> dict[str, Any] | None:
        obj: dict[str, Any] | None = self.sb.kube.get(NAMESPACE, NAME)
        return obj

    def _wait(self, what: str, check: Callable[[], Any], *, timeout: float, interval: float = 0.05) -> Any:
        """Poll ``check()`` until it returns something truthy; StepFailed after ``timeout``."""
        deadline = time.monotonic() + timeout
        self.waiting_for = what
        try:
            while True:
                cancel = getattr(self._local, "cancel", None)
                if cancel is not None and cancel.is_set():
                    raise StepCancelled(f"stopped while waiting for {what}")
                result = check()
                if result:
                    return result
                proc = self.op.proc if self.op is not None else None
                if proc is not None and proc.poll() is not None:
                    raise StepFailed(
                        f"the operator exited (status {proc.returncode}) while waiting for {what}"
                    )
                if time.monotonic() > deadline:
                    raise StepFailed(f"{what}: not seen within {timeout:.0f} s")
                time.sleep(interval)
        finally:
            self.waiting_for = ""

    def _wait_obj(self, what: str, predicate: Callable[[Mapping[str, Any]], bool], *, timeout: float) -> Any:
        def check() -> Mapping[str, Any] | None:
            obj = self._get()
            return obj if obj is not None and predicate(obj) else None

        return self._wait(what, check, timeout=timeout)

    # -- the steps (each runs in a worker thread and returns a one-line summary) ----------------------------------

    def step_sandbox(self) -> str:
        from edx_remote_cache.sandbox import Sandbox

        self.sb = Sandbox(self.workdir / "sandbox")
        self.sb.start()
        self._live_kube = True
        sb, say = self.sb, self.d.say
        say(f"Kubernetes API   {sb.kube.url}  (the EdxRemoteCache CRD is installed)", indent=3, wrap=True)
        say(
            f"AWS (EC2, SSM)   {sb.aws_endpoint_url}  region {sb.region}, subnet {sb.subnet_id}",
            indent=3,
            wrap=True,
        )
        for index, instance_id in enumerate(sb.edx_hosts, 1):
            say(
                f"Open edX host {index}  {instance_id}  its /edx is {sb.roots[instance_id]}",
                indent=3,
                wrap=True,
            )
        say(
            "Open edX hosts run Koa-era config: every Django CACHES LOCATION is localhost:11211.",
            indent=3,
            wrap=True,
        )
        return f"a Kubernetes API, AWS and {len(sb.edx_hosts)} Open edX hosts are up"

    def step_operator(self) -> str:
        from edx_remote_cache.sandbox.harness import OperatorProcess

        env = {**self.sb.env(), DEMO_MARKER_ENV: self.run_id}
        self.op = OperatorProcess(env, log_path=self.workdir / "operator.log")
        self.op.start(wait=30)
        self.d.say(
            f"pid {self.op.proc.pid}, watching all namespaces; log {self.op.log_path}", indent=3, wrap=True
        )
        return "the operator is live (its /healthz answers)"

    def step_apply(self) -> str:
        import yaml

        from edx_remote_cache.sandbox.harness import is_ready

        sb = self.sb
        manifest = demo_manifest(sb.subnet_id, sb.edx_hosts)
        source = "examples/sandbox-demo.yaml" if EXAMPLE.is_file() else "the built-in demo manifest"
        self.d.say(f"{source}, with the sandbox's subnet and host ids filled in:", indent=3)
        for line in yaml.safe_dump(manifest, sort_keys=False).rstrip().splitlines():
            self.d.say(line, indent=5, styles=("dim",))
        with contextlib.suppress(Exception):  # already there is fine
            sb.kube.create_namespace(NAMESPACE)
        started = time.monotonic()
        sb.kube.create(manifest)
        self.created_at, self.cr_created = started, True
        obj = self._wait_obj("Ready", is_ready, timeout=30)
        ready = time.monotonic() - started
        self.timings.ready_seconds = ready
        status = obj.get("status") or {}
        self.endpoint = (status.get("endpoints") or [""])[0]
        self.security_group = str(status.get("securityGroupId") or "")
        instance = (status.get("instances") or [{}])[0]
        self.cache_instance = str(instance.get("id") or "")
        self._describe_cloud(instance)
        return f"Ready {ready:.1f} s after the apply"

    def _describe_cloud(self, instance: Mapping[str, Any]) -> None:
        say = self.d.say
        say(
            f"cache host      {instance.get('id')} ({instance.get('type')}, private IP {instance.get('privateIp')},"
            f" no public IP); memcached listens on {self.endpoint} in the host's own network namespace",
            indent=3,
            wrap=True,
        )
        try:
            ec2 = self.sb.client("ec2")
            names = {g["GroupId"]: g["GroupName"] for g in ec2.describe_security_groups()["SecurityGroups"]}
            group = ec2.describe_security_groups(GroupIds=[self.security_group])["SecurityGroups"][0]
            rules = []
            for perm in group.get("IpPermissions") or []:
                sources = [
                    f"{names.get(p['GroupId'], p['GroupId'])} ({p['GroupId']})"
                    for p in perm.get("UserIdGroupPairs") or []
                ]
                sources += [r["CidrIp"] for r in perm.get("IpRanges") or []]
                rules.append(
                    f"{perm.get('FromPort')}/{perm.get('IpProtocol')} from {', '.join(sources) or 'nobody'}"
                )
            say(
                f"security group  {self.security_group}: {'; '.join(rules) or 'no ingress'} - nothing else",
                indent=3,
                wrap=True,
            )
        except Exception as exc:  # narration only
            say(f"security group  {self.security_group} ({exc})", indent=3)
        say(
            f"Open edX hosts  {len(self.sb.edx_hosts)}/{len(self.sb.edx_hosts)} re-pointed through SSM Run Command",
            indent=3,
        )

    def step_config(self) -> str:
        from edx_remote_cache.sandbox.edx_hosts import CONFIG_FILES

        sb = self.sb
        first = sb.edx_hosts[0]
        original = original_config("lms.yml").decode()
        current = (sb.roots[first] / "etc" / "lms.yml").read_text(encoding="utf-8")
        diff = location_diff(
            original, current, fromfile="lms.yml (as shipped)", tofile=f"{first}:/edx/etc/lms.yml"
        )
        for line in diff.lines:
            styles: tuple[str, ...] = ()
            if line.startswith("@@"):
                styles = ("cyan",)
            elif line.startswith(("---", "+++")):
                styles = ("bold",)
            elif line.startswith("-"):
                styles = ("red",)
            elif line.startswith("+"):
                styles = ("green",)
            self.d.say(line, indent=3, styles=styles)
        if not diff.changed:
            raise StepFailed("lms.yml was not changed")
        if not diff.only_locations:
            others = sorted({p for p in diff.paths if not LOCATION_KEYS.search(p)})
            raise StepFailed(f"lms.yml changed outside LOCATION entries: {', '.join(others)}")
        if self.endpoint and not all(
            self.endpoint in line
            for line in diff.lines
            if line.startswith("+") and not line.startswith("+++")
        ):
            raise StepFailed(f"lms.yml LOCATION lines do not all point at {self.endpoint}")
        # the other files and the other host, in one line each
        for instance_id in sb.edx_hosts:
            counts = []
            for target, name in CONFIG_FILES.items():
                path = sb.roots[instance_id] / target
                if not path.is_file():
                    continue
                changed = location_diff(
                    original_config(name).decode(),
                    path.read_text(encoding="utf-8"),
                    fromfile=name,
                    tofile=name,
                )
                if changed.changed:
                    if not changed.only_locations:
                        raise StepFailed(f"{instance_id}:/edx/{target} changed outside cache locations")
                    counts.append(f"{Path(target).name} {changed.changed}")
            restarts = [
                " ".join(c.args[1:])
                for c in sb.supervisorctl_calls(instance_id)
                if c.args[:1] == ("restart",)
            ]
            self.d.say(
                f"{instance_id}: lines changed: {', '.join(counts)}; restarted: {', '.join(restarts) or 'nothing'}",
                indent=3,
                wrap=True,
            )
        same = {(sb.roots[i] / "etc" / "lms.yml").read_bytes() for i in sb.edx_hosts}
        if len(same) != 1:
            raise StepFailed("the Open edX hosts' lms.yml differ")
        return (
            f"{diff.changed} LOCATION entries now point at {self.endpoint}; nothing else in lms.yml changed"
        )

    def step_traffic(self) -> str:
        from edx_remote_cache.sandbox.cache_hosts import OWNER_ENV
        from edx_remote_cache.sandbox.lms import LmsTraffic

        sb = self.sb
        first = sb.edx_hosts[0]
        env = {**os.environ, OWNER_ENV: str(os.getpid())}
        config = sb.roots[first] / "etc" / "lms.yml"
        traffic = self.traffic = LmsTraffic(sb.in_namespace(first), config, env=env).start()
        self._wait("the LMS's first cache calls", lambda: traffic.gets > 0 or traffic.errors > 3, timeout=10)
        source = sb.registry.get(first) if sb.registry is not None else None
        self.d.say(
            f"the LMS on {first} ({source.private_ip if source else '?'}): Django's PyMemcacheCache from its"
            f" lms.yml CACHES.default, LOCATION {traffic.address}, through the cache's security group",
            indent=3,
            wrap=True,
        )
        self.d.say("read-through traffic (get; on a miss, set), ~250 gets/s on skewed keys", indent=3)

        def reported() -> float | None:
            """The operator's figure once it has caught up with the app's (probes run every second)."""
            ratio = self.operator_hit_ratio()
            app = traffic.hit_ratio
            if not isinstance(ratio, int | float) or app is None or traffic.snapshot()[0] < 500:
                return None
            return ratio if ratio >= WARM_HIT_RATIO and abs(ratio - app) <= 0.1 else None

        ratio = float(
            self._wait(f"a {WARM_HIT_RATIO:.0%} hit ratio on the operator's probe", reported, timeout=20)
        )
        gets, hits, _misses, errors = traffic.snapshot()
        if errors and not hits:
            raise StepFailed(f"the app could not use the cache: {traffic.last_error}")
        client_ratio = traffic.hit_ratio or 0.0
        self.d.say(
            f"the app saw {hits}/{gets} hits ({client_ratio:.0%}); the operator's probe reads memcached's own"
            f" stats: {ratio:.0%} (its /metrics counters get_hits_total / get_misses_total; status.health gets the"
            " figure with its next heartbeat)",
            indent=3,
            wrap=True,
        )
        return f"hit ratio {ratio:.0%} after {gets} gets"

    def step_detect(self) -> str:
        from edx_remote_cache.sandbox.harness import condition

        if not self.cache_instance:
            raise StepFailed("no cache instance in status.instances")
        self._wait_obj(
            "a healthy probe before breaking things",
            lambda o: condition(o, "CacheHealthy").get("status") == "True",
            timeout=10,
        )
        self.d.say(
            f"SIGKILL memcached on {self.cache_instance} (sandbox fault, as if it crashed or was OOM-killed)",
            indent=3,
            wrap=True,
        )
        started = time.monotonic()
        self.sb.faults.kill_memcached(self.cache_instance)
        self.kill_at = started
        obj = self._wait_obj(
            "CacheHealthy=False", lambda o: condition(o, "CacheHealthy").get("status") == "False", timeout=20
        )
        detect = time.monotonic() - started
        self.timings.detect_seconds = detect
        cond = condition(obj, "CacheHealthy")
        self.d.say(f"CacheHealthy=False ({cond.get('reason')}): {cond.get('message')}", indent=3, wrap=True)
        if self.traffic is not None:
            _, _, _, errors = self.traffic.snapshot()
            self.d.say(
                f"meanwhile the app's cache calls fail ({errors} failed call{'' if errors == 1 else 's'} so far; Django treats them as misses)",
                indent=3,
                wrap=True,
            )
        return f"detected {detect:.1f} s after the kill"

    def step_heal(self) -> str:
        from edx_remote_cache.sandbox.harness import condition, is_ready

        if self.kill_at is None:
            raise StepFailed("nothing was broken")

        def healed(obj: Mapping[str, Any]) -> bool:
            status = obj.get("status") or {}
            return (
                is_ready(obj)
                and status.get("phase") == "Ready"
                and condition(obj, "CacheHealthy").get("status") == "True"
            )

        obj = self._wait_obj("Ready again with CacheHealthy=True", healed, timeout=40)
        heal = time.monotonic() - self.kill_at
        self.timings.heal_seconds = heal
        last = (obj.get("status") or {}).get("lastHeal") or {}
        if last:
            self.d.say(f"status.lastHeal: {last.get('action')} - {last.get('reason')}", indent=3, wrap=True)
        traffic = self.traffic
        if traffic is not None:
            healed_at = time.monotonic()
            with contextlib.suppress(StepFailed):
                self._wait("the app's traffic flowing again", lambda: traffic.last_ok >= healed_at, timeout=5)
                self.d.say(
                    "the app's cache calls work again; the restarted memcached is empty, so it warms up anew",
                    indent=3,
                    wrap=True,
                )
        return f"healed {heal:.1f} s after the kill, without anyone touching it"

    def step_delete(self) -> str:
        from edx_remote_cache.sandbox.edx_hosts import CONFIG_FILES

        sb = self.sb
        if self.traffic is not None:
            self.traffic.stop()
        obj = self._get() or {}
        status = obj.get("status") or {}
        group = self.security_group or str(status.get("securityGroupId") or "")
        instances = [str(i.get("id")) for i in status.get("instances") or [] if i.get("id")]
        self.d.say(
            "the finalizer reverts the hosts first, then terminates the instance and deletes the group",
            indent=3,
            wrap=True,
        )
        started = time.monotonic()
        sb.kube.delete(NAMESPACE, NAME, missing_ok=True)
        self._wait("the object gone (finalizer done)", lambda: self._get() is None, timeout=40)
        gone = time.monotonic() - started
        problems: list[str] = []
        notes: list[str] = []
        for instance_id in sb.edx_hosts:
            for target, name in CONFIG_FILES.items():
                path = sb.roots[instance_id] / target
                if not path.is_file():
                    continue
                verdict, why = compare_reverted(name, original_config(name), path.read_bytes())
                if verdict == "different" or (verdict != "exact" and name == "lms.yml"):
                    problems.append(f"{instance_id}:/edx/{target} is not back to its original bytes ({why})")
                elif verdict == "equivalent":
                    notes.append(f"{Path(target).name}: {why}")
        ec2 = sb.client("ec2")
        states = {}
        if instances:
            found = ec2.describe_instances(InstanceIds=instances)["Reservations"]
            states = {i["InstanceId"]: i["State"]["Name"] for r in found for i in r["Instances"]}
            problems += [f"{i} is {s}, not terminated" for i, s in states.items() if s != "terminated"]
        if group:
            try:
                ec2.describe_security_groups(GroupIds=[group])
                problems.append(f"security group {group} still exists")
            except Exception as exc:
                if "NotFound" not in str(exc):
                    problems.append(f"security group {group}: {exc}")
        if problems:
            raise StepFailed("; ".join(problems))
        files = sum(1 for t in CONFIG_FILES if (sb.roots[sb.edx_hosts[0]] / t).is_file())
        exact = len(sb.edx_hosts) * files - len(notes)
        self.d.say(
            f"{exact} of {len(sb.edx_hosts) * files} config files on the {len(sb.edx_hosts)} hosts are byte for byte"
            " as shipped - lms.yml among them, with every LOCATION localhost:11211 again",
            indent=3,
            wrap=True,
        )
        for note in sorted(set(notes)):
            self.d.say(
                f"{self.d.style('note', 'yellow')} {note} (the operator reverts to localhost; same cache)",
                indent=3,
                wrap=True,
            )
        what = ", ".join(f"{i} {s}" for i, s in states.items()) or "no instance"
        return f"gone after {gone:.1f} s: hosts reverted, {what}, {group or 'group'} deleted"

    def step_cleanup(self) -> str:
        self._live_kube = False
        if self.traffic is not None:
            self.traffic.stop()
        # a step that timed out may still be finishing: let it, so it does not race the teardown
        deadline = time.monotonic() + 10
        for worker in self._workers:
            if worker is not threading.current_thread():
                worker.join(max(0.0, deadline - time.monotonic()))
        pids: list[int] = []
        if self.op is not None and self.op.proc is not None:
            pids.append(self.op.proc.pid)
            self.loopback_ports.add(self.op.liveness_port)
            if self.op.metrics_port:
                self.loopback_ports.add(self.op.metrics_port)
            self.op.stop(timeout=10)
        if self.sb is not None:
            if self.sb.kube is not None:
                self.loopback_ports.add(int(self.sb.kube.port))
            with contextlib.suppress(Exception):
                self.loopback_ports.add(int(self.sb.aws_endpoint_url.rsplit(":", 1)[1].split("/")[0]))
            self.sb.stop()
        left = []
        if self.op is not None and self.op.alive():
            left.append(f"operator pid {self.op.proc.pid}")
        left += [f"memcached pid {pid}" for pid in sandbox_processes(os.getpid())]
        left += [
            f"pid {pid} (operator environment)" for pid in marked_processes(DEMO_MARKER_ENV, self.run_id)
        ]
        left += [
            f"127.0.0.1:{port} still accepts connections"
            for port in sorted(self.loopback_ports)
            if _listening(port)
        ]
        if left:
            raise StepFailed("left running: " + ", ".join(left))
        return f"nothing left running: no memcached, no operator, {len(self.loopback_ports)} loopback ports closed"

    def operator_metrics(self) -> dict[str, float]:
        """This object's memcached series from the operator's /metrics (127.0.0.1, no proxy): name -> value
        (one endpoint: the demo runs one replica). Empty when the operator is not serving them (yet)."""
        import http.client

        from prometheus_client.parser import text_string_to_metric_families

        port = getattr(self.op, "metrics_port", None)
        if not port:
            return {}
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=0.5)
        try:
            conn.request("GET", "/metrics")
            text = conn.getresponse().read().decode("utf-8", "replace")
        except OSError:
            return {}
        finally:
            conn.close()
        found: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            if not family.name.startswith("edx_remote_cache_memcached_"):
                continue
            for sample in family.samples:
                if sample.labels.get("namespace") == NAMESPACE and sample.labels.get("name") == NAME:
                    found[sample.name] = float(sample.value)
        return found

    def operator_hit_ratio(self) -> float | None:
        """The operator's latest probe figure; None while memcached does not answer or before the first probe."""
        series = self.operator_metrics()
        if series.get("edx_remote_cache_memcached_up") != 1.0:
            return None
        hits = series.get("edx_remote_cache_memcached_get_hits_total")
        misses = series.get("edx_remote_cache_memcached_get_misses_total")
        if hits is None or misses is None or hits + misses == 0:
            return None
        return hits / (hits + misses)  # what PromQL would compute from the two counters
