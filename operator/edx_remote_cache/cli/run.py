"""`edx-remote-cache run`: the operator process (what the Deployment runs)."""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

from edx_remote_cache import PROBE_SOURCE_ENV
from edx_remote_cache.cli.help import AWS_ENV, add_subcommand
from edx_remote_cache.domain.crd import CRD_ENV

# kopf's default is 60 s: a standby would wait up to a minute after a SIGKILL. 10 s keeps failover (standby
# acting + healing what broke meanwhile) under 20 s for ~22 keep-alive PATCHes a minute per replica
# (bench: failover_seconds; docs/install.md, "Failover").
PEERING_LIFETIME = 10


def add_parser(subparsers: Any) -> None:
    parser = add_subcommand(
        subparsers,
        "run",
        summary="run the operator against the current kubeconfig / in-cluster API",
        description="Run the operator: watch EdxRemoteCache objects, keep each one's EC2 cache host, security\n"
        "group and Open edX hosts as the spec says, and report in status, events and /metrics.\n"
        "Runs until SIGTERM/SIGINT; kopf peering lets several replicas share the work (one acts).",
        env={
            "KUBECONFIG": "kubeconfig to use outside a cluster (in-cluster config otherwise)",
            "EDX_REMOTE_CACHE_PEERING": "peering name when --peering is not given",
            CRD_ENV: "path of the CRD whose schema the operator validates with",
            PROBE_SOURCE_ENV: "the operator's probe source when --probe-source is not given (sg ids / CIDRs)",
            "AWS_*": AWS_ENV + " (boto3's usual chain)",
        },
        exit_codes={0: "stopped cleanly", 1: "the operator failed (see the log)", 2: "usage error"},
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
        default=PEERING_LIFETIME,
        help="seconds a replica's peering record stays valid without a keep-alive: a standby takes over at most"
        " this long (+ ~1 s) after the active replica died without saying goodbye (SIGKILL, node loss); each"
        " replica re-writes its record every LIFETIME - 5..10 s, at least every 1 s (docs/install.md, 'Failover')",
    )
    parser.add_argument(
        "--liveness", default=None, help="kopf liveness endpoint, e.g. http://0.0.0.0:8080/healthz"
    )
    parser.add_argument(
        "--metrics-port", type=int, default=None, help="serve Prometheus /metrics on this port"
    )
    parser.add_argument("--metrics-addr", default="0.0.0.0", help="address for /metrics")
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="text lines, or one JSON object per line (kopf's JSON formatter) for log collectors",
    )
    parser.add_argument(
        "--probe-source",
        action="append",
        default=None,
        help="where the operator's probes come from, as security-group ids (sg-...) and/or CIDRs (repeatable or"
        f" comma-separated; default ${PROBE_SOURCE_ENV}): added to every cache security group as the operator's"
        " own rule, so its probes pass the group like a client's (docs/install.md, 'Network path')",
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    parser.add_argument(
        "--log-aws-wire-content-including-secrets",
        action="store_true",
        help="DANGEROUS: let -v log botocore's request and response bodies (SSM command scripts and outputs)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import kopf

    from edx_remote_cache.app import handlers
    from edx_remote_cache.app.settings import Settings
    from edx_remote_cache.domain.cloud.desired import parse_probe_sources

    if args.log_format == "json":  # kopf's formatter: one object per line, with the object's reference
        kopf.configure(verbose=args.verbose, debug=args.verbose, log_format=kopf.LogFormat.JSON)
    else:
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
    handlers.configure(
        Settings(
            metrics_port=args.metrics_port,
            metrics_addr=args.metrics_addr,
            peering_lifetime=args.peering_lifetime,
            probe_sources=probe_sources,
        )
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
