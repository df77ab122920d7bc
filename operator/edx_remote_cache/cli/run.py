"""`edx-remote-cache run`: the operator process (what the Deployment runs)."""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any


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
    parser.add_argument("--verbose", "-v", action="store_true")
    parser.add_argument(
        "--log-aws-wire-content-including-secrets",
        action="store_true",
        help="DANGEROUS: let -v log botocore's request and response bodies (SSM command scripts and outputs)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import kopf

    from edx_remote_cache.app import handlers

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # botocore's DEBUG logs whole request and response bodies (SSM scripts and command output): never by default
    if args.log_aws_wire_content_including_secrets:
        logging.getLogger(__name__).warning(
            "--log-aws-wire-content-including-secrets: AWS request and response bodies will be logged"
        )
    else:
        for name in ("botocore", "boto3", "urllib3", "s3transfer"):
            logging.getLogger(name).setLevel(logging.INFO)
    handlers.OPTIONS.update(
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
