"""`edx-remote-cache run`: the operator process (what the Deployment runs)."""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

from edx_remote_cache import PROBE_SOURCE_ENV


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "run", help="run the operator against the current kubeconfig / in-cluster API"
    )
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "--namespace", "-n", action="append", default=[], help="watch this namespace (repeatable)"
    )
    scope.add_argument(
        "--all-namespaces", "-A", action="store_true", help="watch every namespace (the default)"
    )
    parser.add_argument(
        "--peering", default=None, help="kopf peering name: replicas with the same name elect one"
    )
    parser.add_argument("--standalone", action="store_true", help="no peering (a single replica)")
    parser.add_argument("--priority", type=int, default=None, help="peering priority (highest acts)")
    parser.add_argument(
        "--peering-lifetime",
        type=int,
        default=None,
        help="seconds a replica's peering record stays valid without a keep-alive (kopf default 60): how long"
        " a standby waits before taking over from a replica that died without saying goodbye",
    )
    parser.add_argument(
        "--liveness", default=None, help="kopf liveness endpoint, e.g. http://0.0.0.0:8080/healthz"
    )
    parser.add_argument(
        "--metrics-port", type=int, default=None, help="serve Prometheus /metrics on this port"
    )
    parser.add_argument("--metrics-addr", default="0.0.0.0", help="address for /metrics (default 0.0.0.0)")
    parser.add_argument(
        "--probe-source",
        action="append",
        default=None,
        help="where the operator's probes come from, as security-group ids (sg-...) and/or CIDRs (repeatable or"
        f" comma-separated; default ${PROBE_SOURCE_ENV}): added to every cache security group as the operator's"
        " own rule, so its probes pass the group like a client's (docs/install.md, 'Network path')",
    )
    parser.add_argument("--verbose", "-v", action="store_true")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import kopf

    from edx_remote_cache.app import handlers
    from edx_remote_cache.domain.cloud_plan import parse_probe_sources

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    raw_sources = (
        args.probe_source if args.probe_source is not None else [os.environ.get(PROBE_SOURCE_ENV, "")]
    )
    try:
        probe_sources = parse_probe_sources(" ".join(raw_sources))
    except ValueError as exc:
        raise SystemExit(f"edx-remote-cache run: {exc}") from exc
    if not probe_sources:
        logging.getLogger(__name__).warning(
            "no --probe-source / %s: the operator adds no rule for its own probes, so they reach a cache host "
            "only if its security group already allows the operator's address (docs/install.md, 'Network path')",
            PROBE_SOURCE_ENV,
        )
    handlers.OPTIONS.update(
        probe_sources=probe_sources,
        metrics_port=args.metrics_port,
        metrics_addr=args.metrics_addr,
        peering_lifetime=args.peering_lifetime,
    )
    peering = args.peering or os.environ.get("EDX_REMOTE_CACHE_PEERING")
    kopf.run(
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        standalone=args.standalone or not peering,
        peering_name=peering,
        priority=args.priority if args.priority is not None else 0,
        liveness_endpoint=args.liveness,
        registry=handlers.registry,
    )
    return 0
