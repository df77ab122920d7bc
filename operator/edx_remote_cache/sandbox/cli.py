"""`edx-remote-cache sandbox`: run the sandbox cloud until SIGTERM/SIGINT, for a developer's shell or a demo;
`edx-remote-cache sandbox exec --env-file FILE TARGET -- CMD [ARG...]`: run CMD in the network namespace of an
instance of that sandbox (its id) or of the operator (``operator``), on this machine's filesystem, with the
sandbox's environment; CMD's exit status is passed through (the process is CMD itself, via nsenter)."""

from __future__ import annotations

import argparse
import os
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
    actions = parser.add_subparsers(dest="sandbox_action", metavar="ACTION")
    execute = actions.add_parser(
        "exec",
        help="run a command in an instance's (or the operator's) network namespace",
        description="Run CMD in TARGET's network namespace of the sandbox whose env file is given. TARGET is an "
        "EC2 instance id or `operator`. The filesystem is this machine's; the environment is yours plus the "
        "env file's. The exit status is CMD's.",
    )
    execute.add_argument("--env-file", type=Path, default=Path(".sandbox/env"), help="(default: %(default)s)")
    execute.add_argument("target", metavar="TARGET", help="an instance id, or `operator`")
    execute.add_argument("argv", metavar="-- CMD [ARG...]", nargs=argparse.REMAINDER)
    execute.set_defaults(func=run_exec)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "sandbox",
        help="run a local stand-in cloud (AWS, cache hosts, Open edX hosts, Kubernetes) with a private VPC",
        description="Start the sandbox cloud (emulators on 127.0.0.1, instances in network namespaces of a "
        "private VPC), write its environment to a file, and stay up until SIGTERM or Ctrl-C.",
    )
    _configure(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    from edx_remote_cache.sandbox import Sandbox
    from edx_remote_cache.sandbox.network import NetworkSetupError, check_capability

    try:
        check_capability()
    except NetworkSetupError as exc:
        print(f"edx-remote-cache sandbox: {exc}", file=sys.stderr)
        return 2

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
            assert sandbox.network is not None
            print(f"  VPC:               {sandbox.vpc_id} {sandbox.env()['SANDBOX_VPC_CIDR']} (namespaces "
                  f"{sandbox.network.prefix}-*)")  # fmt: skip
            print(f"  operator:          {sandbox.network.operator_ip} (its own namespace, outside the VPC)")
            print()
            print("Point kubectl, boto3 and the operator at it:")
            print(f"  source {env_file}")
            print("  kubectl get edxremotecaches -A")
            print(
                f"  edx-remote-cache sandbox exec --env-file {env_file} operator -- edx-remote-cache run --all-namespaces"
            )
            print()
            print("Ctrl-C (or SIGTERM) tears everything down.", flush=True)
            while not stop.wait(0.5):
                pass
            print("stopping the sandbox...", flush=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def run_exec(args: argparse.Namespace) -> int:
    from edx_remote_cache.sandbox import read_env_file
    from edx_remote_cache.sandbox.netns import netns_path

    command = list(args.argv)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        print("edx-remote-cache sandbox exec: give the command after `--`", file=sys.stderr)
        return 2
    try:
        env = read_env_file(args.env_file)
    except OSError as exc:
        print(f"edx-remote-cache sandbox exec: cannot read the env file: {exc}", file=sys.stderr)
        return 2
    prefix = env.get("SANDBOX_NETNS_PREFIX")
    if not prefix:
        print(f"edx-remote-cache sandbox exec: {args.env_file} names no sandbox VPC", file=sys.stderr)
        return 2
    name = f"{prefix}-op" if args.target == "operator" else f"{prefix}-{args.target}"
    path = netns_path(name)
    if not path.exists():
        print(
            f"edx-remote-cache sandbox exec: {args.target} has no network namespace in this sandbox "
            "(not a live instance, or the sandbox is not running)",
            file=sys.stderr,
        )
        return 2
    sys.stdout.flush()
    os.execvpe("nsenter", ["nsenter", f"--net={path}", "--", *command], {**os.environ, **env})
    return 127  # not reached


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edx-remote-cache sandbox", description=__doc__)
    _configure(parser)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
