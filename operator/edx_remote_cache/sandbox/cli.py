"""`edx-remote-cache sandbox`: run the sandbox cloud until SIGTERM/SIGINT, for a developer's shell or a demo."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "main", "run"]


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--env-file",
        type=Path,
        default=Path(".sandbox/env"),
        help="write the environment (KUBECONFIG, AWS_ENDPOINT_URL, ...) here (default: %(default)s)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep the hosts' roots, logs and kubeconfig here (default: a temporary directory, removed at exit)",
    )
    parser.add_argument("--no-kube", action="store_true", help="do not start the Kubernetes API")
    parser.set_defaults(func=run)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "sandbox",
        help="run a local stand-in cloud (AWS, cache hosts, Open edX hosts, Kubernetes) on loopback",
        description="Start the sandbox cloud on 127.0.0.1, write its environment to a file, and stay up until "
        "SIGTERM or Ctrl-C.",
    )
    _configure(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    from edx_remote_cache.sandbox import Sandbox

    stop = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda _signum, _frame: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        started = time.monotonic()
        with Sandbox(args.workdir, with_kube=not args.no_kube) as sandbox:
            env_file = sandbox.write_env_file(args.env_file).resolve()
            print(f"sandbox up in {time.monotonic() - started:.1f} s; environment written to {env_file}")
            print(f"  AWS (EC2, SSM):    {sandbox.aws_endpoint_url}  region {sandbox.region}")
            if sandbox.kube is not None:
                print(f"  Kubernetes API:    {sandbox.kube.url}  (kubeconfig {sandbox.kubeconfig_path})")
            print(f"  subnet:            {sandbox.subnet_id}")
            print(
                f"  Open edX hosts:    {', '.join(sandbox.edx_hosts)}  (security group {sandbox.edx_security_group_id})"
            )
            for instance_id, root in sandbox.roots.items():
                print(f"    {instance_id}: /edx is {root}")
            print(f"  address map:       {sandbox.address_map_path}")
            print()
            print("Point kubectl, boto3 and the operator at it:")
            print(f"  source {env_file}")
            print("  kubectl get edxremotecaches -A")
            print("  edx-remote-cache run --all-namespaces")
            print()
            print("Ctrl-C (or SIGTERM) tears everything down.", flush=True)
            while not stop.wait(0.5):
                pass
            print("stopping the sandbox...", flush=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edx-remote-cache sandbox", description=__doc__)
    _configure(parser)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
