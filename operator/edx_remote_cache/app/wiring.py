"""Wiring: builds the reconciler's adapters from settings, once per operator process.

Per-region adapters are built on first use and shared by every resource of the region, so one batched
DescribeInstances (and one host-file drift command) serves them all.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import kopf

from edx_remote_cache.adapters.aws import (
    AwsClients,
    CloudLookups,
    EdxHostDirectory,
    RegionObserver,
    make_clients,
)
from edx_remote_cache.adapters.host_drift import HostDriftChecker
from edx_remote_cache.adapters.kube_status import KubernetesStatusWriter
from edx_remote_cache.adapters.metrics import Metrics
from edx_remote_cache.adapters.ports import HostClaims
from edx_remote_cache.adapters.ssm import SsmAdapter
from edx_remote_cache.app.settings import Settings
from edx_remote_cache.domain.claims import NO_RIVALS
from edx_remote_cache.reconciler.reconciler import Adapters, Reconciler

log = logging.getLogger(__name__)

_T = TypeVar("_T")


class Regional:
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


def post_event(obj: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
    try:
        kopf.event(kopf.Body(dict(obj)), type=type_, reason=reason, message=message[:1000])  # type: ignore[arg-type]
    except Exception:  # events are best effort: never fail a pass because of one
        log.debug("could not post event %s", reason, exc_info=True)


def build_reconciler(settings: Settings, *, claims: HostClaims = NO_RIVALS) -> Reconciler:
    metrics = Metrics()
    regional = Regional(metrics)
    return Reconciler(
        Adapters(
            clients=regional.clients,
            observer=regional.observer,
            edx_hosts=regional.edx_hosts,
            lookups=regional.lookups,
            ssm=regional.ssm,
            host_drift=regional.host_drift,
            status=KubernetesStatusWriter(),
            probe_sources=settings.probe_sources,
            events=post_event,
            metrics=metrics,
            claims=claims,
        )
    )
