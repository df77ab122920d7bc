"""`edx-remote-cache`: one command, one subcommand per job. Subcommand modules are imported lazily so
`validate` and `rewrite` start fast and production never imports the sandbox."""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import sys

# subcommand module -> what it does; each module has add_parser(subparsers) and run(args) -> int
SUBCOMMANDS = {
    "run": "edx_remote_cache.cli.run",
    "demo": "edx_remote_cache.sandbox.demo",
    "sandbox": "edx_remote_cache.sandbox.cli",
    "validate": "edx_remote_cache.cli.validate",
    "rewrite": "edx_remote_cache.cli.rewrite",
    "probe": "edx_remote_cache.cli.probe",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edx-remote-cache",
        description="Run an Open edX site's memcached on its own EC2 host, and keep it there.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in SUBCOMMANDS.items():
        if only is not None and name != only:
            continue
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:  # e.g. the sandbox extra not installed
            missing = subparsers.add_parser(name, help=f"(unavailable: {exc})")
            missing.set_defaults(func=lambda _args, exc=exc: _unavailable(exc))
            continue
        module.add_parser(subparsers)
    return parser


def _version() -> str:
    """The installed distribution's version (what pip, the image tag and the chart's appVersion say)."""
    try:
        return importlib.metadata.version("edx-remote-cache")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _unavailable(exc: Exception) -> int:
    print(f"edx-remote-cache: this command is unavailable here: {exc}", file=sys.stderr)
    print("install the package with its extras: pip install 'edx-remote-cache[sandbox]'", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Import only the chosen subcommand's module when it is known: keeps start-up fast.
    first = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(only=first if first in SUBCOMMANDS else None)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
