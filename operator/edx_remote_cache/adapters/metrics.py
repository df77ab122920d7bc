"""Prometheus metrics of the operator (`/metrics`). Names follow memcached_exporter where they mirror it."""

from __future__ import annotations

from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_LABELS = ("namespace", "name", "endpoint")


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
        self.hit_ratio = Gauge(
            "edx_remote_cache_memcached_hit_ratio", "get hits / gets", _LABELS, registry=registry
        )
        self.evictions = Gauge(
            "edx_remote_cache_memcached_items_evicted_total", "items evicted", _LABELS, registry=registry
        )
        self.bytes = Gauge(
            "edx_remote_cache_memcached_current_bytes", "bytes used", _LABELS, registry=registry
        )
        self.limit_bytes = Gauge(
            "edx_remote_cache_memcached_limit_bytes", "memory limit", _LABELS, registry=registry
        )
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

    def record_probe(self, namespace: str, name: str, result: Any) -> None:
        labels = (namespace, name, result.endpoint)
        self.up.labels(*labels).set(1 if result.healthy else 0)
        for gauge, value in (
            (self.uptime, result.uptime_seconds),
            (self.curr_connections, result.curr_connections),
            (self.max_connections, result.max_connections),
            (self.hit_ratio, result.hit_ratio),
            (self.evictions, result.evictions),
            (self.bytes, result.bytes),
            (self.limit_bytes, result.limit_maxbytes),
        ):
            if value is not None:
                gauge.labels(*labels).set(value)
        if result.duration_ms is not None:  # the histogram is named for the whole probe, not its first answer
            self.probe_latency.labels(namespace, name).observe(result.duration_ms / 1000)

    def count_aws_call(self, service: str, operation: str) -> None:
        self.aws_calls.labels(service, operation).inc()

    def forget(self, namespace: str, name: str) -> None:
        """Drop a deleted resource's series so /metrics does not report ghosts."""
        for gauge in (self.up, self.uptime, self.curr_connections, self.max_connections, self.hit_ratio,
                      self.evictions, self.bytes, self.limit_bytes):  # fmt: skip
            for labels in list(gauge._metrics):  # prometheus_client has no public "remove by prefix"
                if labels[:2] == (namespace, name):
                    gauge.remove(*labels)


def serve(port: int, registry: CollectorRegistry = REGISTRY, addr: str = "0.0.0.0") -> None:
    start_http_server(port, addr=addr, registry=registry)
