"""Prometheus metrics of the operator (`/metrics`), named by the exposition rules.

Counters end in `_total`, gauges never do. memcached's own counters (get hits, get misses, evictions) are
exported as counters with memcached's values, as memcached_exporter does, so PromQL computes any ratio over any
window (`rate(..._get_hits_total[5m]) / (rate(..._get_hits_total[5m]) + rate(..._get_misses_total[5m]))`); a
ratio of lifetime counters exported as a gauge hides a cache that went cold an hour ago. A restarted memcached
starts its counters at zero again, which Prometheus's rate() reads as a counter reset.

When an EdxRemoteCache is deleted, `forget` removes every series that carries its namespace and name (the gauges,
memcached's counters, the probe histogram, heals and status writes) with prometheus_client's `remove_by_labels`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

_LABELS = ("namespace", "name", "endpoint")
# memcached `stats` field -> (counter name without _total, help)
MEMCACHED_COUNTERS = {
    "get_hits": ("edx_remote_cache_memcached_get_hits", "get commands that found the key (memcached get_hits)"),
    "get_misses": ("edx_remote_cache_memcached_get_misses", "get commands that missed (memcached get_misses)"),
    "evictions": ("edx_remote_cache_memcached_items_evicted", "items evicted to free memory (memcached evictions)"),
}  # fmt: skip


class MemcachedCounters(Collector):
    """memcached's counters as Prometheus counters: the value memcached reports, not one the operator adds up.

    prometheus_client's Counter can only be incremented, so a counter that mirrors another process's counter is a
    collector that yields the last values read. Thread-safe (probes record from several threads).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[tuple[str, str, str], dict[str, float]] = {}

    def record(self, labels: tuple[str, str, str], stats: dict[str, float]) -> None:
        with self._lock:
            self._values.setdefault(labels, {}).update(stats)

    def remove_by_labels(self, namespace: str, name: str) -> None:
        with self._lock:
            for labels in [k for k in self._values if k[:2] == (namespace, name)]:
                del self._values[labels]

    def describe(self) -> Iterator[CounterMetricFamily]:
        for name, help_text in MEMCACHED_COUNTERS.values():
            yield CounterMetricFamily(name, help_text, labels=_LABELS)

    def collect(self) -> Iterator[CounterMetricFamily]:
        with self._lock:
            snapshot = {labels: dict(values) for labels, values in self._values.items()}
        for field, (name, help_text) in MEMCACHED_COUNTERS.items():
            family = CounterMetricFamily(name, help_text, labels=_LABELS)
            for labels, values in sorted(snapshot.items()):
                if field in values:
                    family.add_metric(list(labels), values[field])
            yield family


class Metrics:
    """All series in one object, so tests can use a private registry instead of the global one."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry
        self.up = Gauge(
            "edx_remote_cache_memcached_up", "1 if the last probe succeeded", _LABELS, registry=registry
        )
        self.uptime = Gauge(
            "edx_remote_cache_memcached_uptime_seconds", "memcached uptime", _LABELS, registry=registry
        )
        self.curr_connections = Gauge(
            "edx_remote_cache_memcached_current_connections", "open connections", _LABELS, registry=registry
        )
        self.max_connections = Gauge(
            "edx_remote_cache_memcached_max_connections", "connection limit", _LABELS, registry=registry
        )
        self.bytes = Gauge(
            "edx_remote_cache_memcached_current_bytes", "bytes used", _LABELS, registry=registry
        )
        self.limit_bytes = Gauge(
            "edx_remote_cache_memcached_limit_bytes", "memory limit", _LABELS, registry=registry
        )
        self.memcached_counters = MemcachedCounters()
        registry.register(self.memcached_counters)
        self.probe_latency = Histogram(
            "edx_remote_cache_probe_duration_seconds",
            "whole probe: connect when needed, version, stats and the canary set/get/delete (pipelined)",
            ("namespace", "name"),
            buckets=(0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=registry,
        )
        self.reconciles = Counter(
            "edx_remote_cache_reconcile_total", "reconcile passes by trigger and outcome", ("trigger", "outcome"),
            registry=registry,
        )  # fmt: skip
        self.reconcile_duration = Histogram(
            "edx_remote_cache_reconcile_duration_seconds",
            "reconcile pass duration",
            ("trigger",),
            registry=registry,
        )
        self.heals = Counter(
            "edx_remote_cache_heal_actions_total", "healing actions taken", ("namespace", "name", "action"),
            registry=registry,
        )  # fmt: skip
        self.probe_path_blocked = Gauge(
            "edx_remote_cache_probe_path_blocked",
            "1 while the operator cannot reach a cache that its own host (and the Open edX hosts) can",
            ("namespace", "name"),
            registry=registry,
        )
        self.healing_suspended = Gauge(
            "edx_remote_cache_healing_suspended",
            "1 while the mass-failure breaker suspends destructive healing in a region",
            ("region",),
            registry=registry,
        )
        self.boot_failures = Counter(
            "edx_remote_cache_boot_failures_total",
            "cache hosts that never answered since they started, diagnosed from their boot logs (BootFailed)",
            ("namespace", "name"),
            registry=registry,
        )
        self.aws_calls = Counter(
            "edx_remote_cache_aws_api_calls_total", "AWS API calls by service and operation", ("service", "operation"),
            registry=registry,
        )  # fmt: skip
        self.status_writes = Counter(
            "edx_remote_cache_status_writes_total",
            "status PATCHes sent",
            ("namespace", "name"),
            registry=registry,
        )

    def _per_object(self) -> tuple[Gauge | Counter | Histogram, ...]:
        """Every labelled metric whose series belong to one EdxRemoteCache."""
        return (
            self.up, self.uptime, self.curr_connections, self.max_connections, self.bytes, self.limit_bytes,
            self.probe_latency, self.heals, self.status_writes, self.probe_path_blocked, self.boot_failures,
        )  # fmt: skip

    def record_probe(self, namespace: str, name: str, result: Any) -> None:
        labels = (namespace, name, result.endpoint)
        self.up.labels(*labels).set(1 if result.healthy else 0)
        for gauge, value in (
            (self.uptime, result.uptime_seconds),
            (self.curr_connections, result.curr_connections),
            (self.max_connections, result.max_connections),
            (self.bytes, result.bytes),
            (self.limit_bytes, result.limit_maxbytes),
        ):
            if value is not None:
                gauge.labels(*labels).set(value)
        counters = {f: getattr(result, f) for f in MEMCACHED_COUNTERS if getattr(result, f, None) is not None}
        if counters:
            self.memcached_counters.record(labels, counters)
        if result.duration_ms is not None:  # the histogram is named for the whole probe, not its first answer
            self.probe_latency.labels(namespace, name).observe(result.duration_ms / 1000)

    def count_aws_call(self, service: str, operation: str) -> None:
        self.aws_calls.labels(service, operation).inc()

    def forget(self, namespace: str, name: str) -> None:
        """Drop every series of a deleted resource so /metrics does not report ghosts."""
        for metric in self._per_object():
            metric.remove_by_labels({"namespace": namespace, "name": name})
        self.memcached_counters.remove_by_labels(namespace, name)


def serve(port: int, registry: CollectorRegistry = REGISTRY, addr: str = "0.0.0.0") -> None:
    start_http_server(port, addr=addr, registry=registry)
