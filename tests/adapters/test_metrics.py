"""/metrics as a Prometheus user reads it: names by the exposition rules, and no series of deleted objects."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from edx_remote_cache.adapters.metrics import Metrics
from edx_remote_cache.adapters.probe import ProbeResult


def _probe(endpoint: str, hits: int, misses: int, evictions: int) -> ProbeResult:
    return ProbeResult(
        endpoint=endpoint, reachable=True, canary_ok=True, version="1.6.24", uptime_seconds=60,
        curr_connections=3, max_connections=1024, get_hits=hits, get_misses=misses, evictions=evictions,
        bytes=1000, limit_maxbytes=64 << 20, duration_ms=2.0,
    )  # fmt: skip


def _series(registry: CollectorRegistry) -> list[tuple[str, dict[str, str], float]]:
    text = generate_latest(registry).decode()
    return [(s.name, s.labels, s.value) for f in text_string_to_metric_families(text) for s in f.samples]


def test_counters_end_in_total_gauges_do_not_and_memcached_counters_are_counters() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.record_probe("openedx", "campus", _probe("10.0.0.5:11211", hits=90, misses=10, evictions=4))
    metrics.reconciles.labels("spec", "ok").inc()
    text = generate_latest(registry).decode()
    for family in text_string_to_metric_families(text):
        exposed = f"{family.name}_total" if family.type == "counter" else family.name
        assert (family.type == "counter") == exposed.endswith("_total"), (family.name, family.type)
    labels = 'endpoint="10.0.0.5:11211",name="campus",namespace="openedx"'
    assert "# TYPE edx_remote_cache_memcached_get_hits_total counter" in text
    assert f"edx_remote_cache_memcached_get_hits_total{{{labels}}} 90.0" in text
    assert f"edx_remote_cache_memcached_get_misses_total{{{labels}}} 10.0" in text
    assert f"edx_remote_cache_memcached_items_evicted_total{{{labels}}} 4.0" in text
    assert "hit_ratio" not in text, "the ratio is PromQL's job, over the window the user picks"
    # the exported value is memcached's own counter, not a sum of what the operator saw
    metrics.record_probe("openedx", "campus", _probe("10.0.0.5:11211", hits=95, misses=12, evictions=4))
    assert f"edx_remote_cache_memcached_get_hits_total{{{labels}}} 95.0" in generate_latest(registry).decode()


def test_forget_removes_every_series_of_the_deleted_object_and_only_those() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    for name in ("campus", "staging"):
        metrics.record_probe("openedx", name, _probe(f"{name}:11211", hits=1, misses=1, evictions=0))
        metrics.heals.labels("openedx", name, "restart").inc()
        metrics.status_writes.labels("openedx", name).inc()
    metrics.count_aws_call("ec2", "RunInstances")

    metrics.forget("openedx", "campus")

    left = _series(registry)
    assert not [s for s in left if s[1].get("name") == "campus"], "a deleted object leaves no series behind"
    staging = {s[0] for s in left if s[1].get("name") == "staging"}
    assert {
        "edx_remote_cache_memcached_up",
        "edx_remote_cache_memcached_get_hits_total",
        "edx_remote_cache_probe_duration_seconds_count",
        "edx_remote_cache_heal_actions_total",
        "edx_remote_cache_status_writes_total",
    } <= staging
    assert (
        "edx_remote_cache_aws_api_calls_total",
        {"operation": "RunInstances", "service": "ec2"},
        1.0,
    ) in left
