"""Operator-level settings: what `edx-remote-cache run` was told, handed to the kopf startup handler.

One frozen value instead of a module-global dict: the CLI builds it from flags (and the environment the Helm
chart sets), `handlers.configure()` stores it once before kopf starts, and the wiring reads it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Settings:
    metrics_port: int | None = None  # serve Prometheus /metrics on this port (None: not served)
    metrics_addr: str = "0.0.0.0"
    peering_lifetime: int | None = None  # seconds a peering record stays valid without a keep-alive
    probe_sources: tuple[str, ...] = ()  # the operator's own source: an ingress rule on every cache group
