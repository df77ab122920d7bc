"""kopf wiring: thin handlers that call into reconcile.Reconciler. No logic lives here.

create/update/resume → reconcile; delete → teardown (finalizer); one daemon per resource runs the probe loop,
the healing ladder and the drift re-observation every `driftIntervalSeconds`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import kopf

from edx_remote_cache import GROUP, PLURAL, VERSION
from edx_remote_cache.adapters.aws import (
    AwsClients,
    CloudLookups,
    EdxHostDirectory,
    RegionObserver,
    make_clients,
)
from edx_remote_cache.adapters.host_drift import HostDriftChecker
from edx_remote_cache.adapters.kube_status import KubernetesStatusWriter
from edx_remote_cache.adapters.metrics import Metrics, serve
from edx_remote_cache.adapters.probe import close_pooled_connections
from edx_remote_cache.adapters.ssm import SsmAdapter
from edx_remote_cache.reconciler.reconciler import Adapters, Reconciler, RequeueError

log = logging.getLogger(__name__)
registry = kopf.OperatorRegistry()
OPTIONS: dict[str, Any] = {
    "metrics_port": None,
    "metrics_addr": "0.0.0.0",
    "peering_lifetime": None,
    "probe_sources": (),
}
RESOURCE = (GROUP, VERSION, PLURAL)
ANNOTATION_PREFIX = "edx-remote-cache.openedx.org"


_T = TypeVar("_T")


class _Regional:
    """Per-region adapters, built once and shared by every resource (one batched observe per region).

    Snapshots are keyed by (region, drift interval): resources sharing one must agree on how old it may get.
    """

    def __init__(self, metrics: Metrics) -> None:
        self._lock = threading.Lock()
        self._built: dict[tuple[Any, ...], Any] = {}
        self._metrics = metrics
        import boto3

        self._session = boto3.session.Session()  # one session: building the EC2 model per client is slow

    def _once(self, key: tuple[Any, ...], build: Callable[[], _T]) -> _T:
        """The adapter for ``key``, built on first use (``build`` must not call back into this object)."""
        with self._lock:
            if key not in self._built:
                self._built[key] = build()
            built: _T = self._built[key]
            return built

    def _count(self, event_name: str, **_: Any) -> None:
        # event name: "before-call.<service>.<Operation>"
        _prefix, service, operation = event_name.split(".", 2)
        self._metrics.count_aws_call(service, operation)

    def _make_clients(self, region: str) -> AwsClients:
        clients = make_clients(region, session=self._session)  # honours AWS_ENDPOINT_URL
        for client in (clients.ec2, clients.ssm):
            client.meta.events.register("before-call", self._count)
        return clients

    def clients(self, region: str) -> AwsClients:
        return self._once(("clients", region), lambda: self._make_clients(region))

    def observer(self, region: str, ttl: float) -> RegionObserver:
        ec2 = self.clients(region).ec2
        return self._once(("observer", region, ttl), lambda: RegionObserver(ec2, ttl_seconds=ttl))

    def edx_hosts(self, region: str, ttl: float) -> EdxHostDirectory:
        ec2 = self.clients(region).ec2
        return self._once(("edx_hosts", region, ttl), lambda: EdxHostDirectory(ec2, ttl_seconds=ttl))

    def lookups(self, region: str) -> CloudLookups:
        clients = self.clients(region)
        return self._once(("lookups", region), lambda: CloudLookups(clients))

    def ssm(self, region: str) -> SsmAdapter:
        client = self.clients(region).ssm
        return self._once(("ssm", region), lambda: SsmAdapter(client))

    def host_drift(self, region: str, ttl: float) -> HostDriftChecker:
        ssm = self.ssm(region)
        return self._once(("host_drift", region, ttl), lambda: HostDriftChecker(ssm, ttl_seconds=ttl))


def _post_event(obj: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
    try:
        kopf.event(kopf.Body(dict(obj)), type=type_, reason=reason, message=message[:1000])  # type: ignore[arg-type]
    except Exception:  # events are best effort: never fail a pass because of one
        log.debug("could not post event %s", reason, exc_info=True)


def build_reconciler() -> Reconciler:
    metrics = Metrics()
    regional = _Regional(metrics)
    return Reconciler(
        Adapters(
            clients=regional.clients,
            observer=regional.observer,
            edx_hosts=regional.edx_hosts,
            lookups=regional.lookups,
            ssm=regional.ssm,
            host_drift=regional.host_drift,
            status=KubernetesStatusWriter(),
            probe_sources=tuple(OPTIONS["probe_sources"]),
            events=_post_event,
            metrics=metrics,
        )
    )


def _snapshot(body: kopf.Body) -> dict[str, Any]:
    return copy.deepcopy(dict(body))


_VIEW_METADATA = ("name", "namespace", "uid", "generation", "resourceVersion", "deletionTimestamp")


def _daemon_view(body: kopf.Body, reconciler: Reconciler) -> dict[str, Any]:
    """What one probe round needs of the object: identity, annotations (pause) and spec (healing reconciles).

    A full deep copy every round was ~6 % of the operator's CPU at 500 resources. The status is only copied
    the first time: afterwards the reconciler keeps its own (it writes it).
    """
    meta = body.get("metadata") or {}
    view: dict[str, Any] = {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": {k: meta[k] for k in _VIEW_METADATA if k in meta}
        | {"annotations": dict(meta.get("annotations") or {}), "labels": dict(meta.get("labels") or {})},
        "spec": copy.deepcopy(dict(body.get("spec") or {})),
    }
    if not reconciler.knows(view):
        view["status"] = copy.deepcopy(dict(body.get("status") or {}))
    return view


@kopf.on.login(registry=registry)
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In-cluster service account first, else $KUBECONFIG / ~/.kube/config (the sandbox writes one)."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup(registry=registry)
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{ANNOTATION_PREFIX}/finalizer"
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 300
    settings.execution.max_workers = 32
    # every blocking adapter call (boto3, SSM polling, status PATCHes) goes through asyncio.to_thread: the
    # default pool (cpu + 4 threads) queued one resource's first pass for ~50 s at 500 resources
    asyncio.get_running_loop().set_default_executor(
        concurrent.futures.ThreadPoolExecutor(max_workers=32, thread_name_prefix="edx-remote-cache")
    )
    if OPTIONS.get("peering_lifetime"):
        settings.peering.lifetime = max(2, int(OPTIONS["peering_lifetime"]))
    memo.reconciler = build_reconciler()
    if OPTIONS.get("metrics_port"):
        serve(
            int(OPTIONS["metrics_port"]),
            registry=memo.reconciler.a.metrics.registry,
            addr=OPTIONS["metrics_addr"],
        )


@kopf.on.cleanup(registry=registry)
async def cleanup(**_: Any) -> None:
    """Close the probes' pooled memcached connections on the way out (a clean FIN rather than a reset)."""
    close_pooled_connections()


@kopf.on.resume(*RESOURCE, registry=registry)
@kopf.on.create(*RESOURCE, registry=registry)
@kopf.on.update(*RESOURCE, registry=registry)
async def reconcile(body: kopf.Body, memo: kopf.Memo, reason: str, **_: Any) -> None:
    try:
        await memo.reconciler.reconcile(_snapshot(body), trigger="spec" if reason != "resume" else "resume")
    except RequeueError as exc:
        raise kopf.TemporaryError(str(exc), delay=exc.delay) from exc


@kopf.on.delete(*RESOURCE, registry=registry)
async def delete(body: kopf.Body, memo: kopf.Memo, retry: int, **_: Any) -> None:
    try:
        await memo.reconciler.teardown(_snapshot(body), retry=retry)
    except RequeueError as exc:
        raise kopf.TemporaryError(str(exc), delay=exc.delay) from exc


@kopf.daemon(*RESOURCE, registry=registry, cancellation_timeout=10.0)
async def watch(body: kopf.Body, memo: kopf.Memo, stopped: kopf.DaemonStopped, **_: Any) -> None:
    """Probe every probe.intervalSeconds, heal when needed, re-observe for drift every driftIntervalSeconds."""
    reconciler: Reconciler = memo.reconciler
    last_drift = time.monotonic()
    while not stopped:
        obj = _daemon_view(body, reconciler)
        if (obj.get("metadata") or {}).get("deletionTimestamp"):
            return
        state = reconciler.state(obj)
        spec = state.spec
        interval = spec.probe.interval_seconds if spec else 0.5  # no spec yet: the first reconcile is due
        try:
            results = await reconciler.probe_once(obj)
            failing = [r for r in results if not r.healthy]
            if spec is not None and failing:
                # A failing cache is re-checked at once so failureThreshold probes take ~threshold x timeout, not
                # threshold x interval: a timeout has already cost its wait; anything else waits one timeout.
                timed_out = all(r.error_kind == "timeout" for r in failing)
                interval = 0.0 if timed_out else min(interval, spec.probe.timeout_seconds)
            await reconciler.heal(obj)
            if spec is not None and reconciler.drift_due(obj, last_drift):
                last_drift = time.monotonic()
                try:
                    await reconciler.reconcile(obj, trigger="drift")
                except RequeueError:
                    last_drift = time.monotonic() - spec.drift_interval_seconds + 2  # come back soon
        except Exception:  # the daemon must outlive any one failure; the next round retries
            log.exception("probe/heal/drift round failed for %s", obj["metadata"].get("name"))
        await stopped.wait(interval)
