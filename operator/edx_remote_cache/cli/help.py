"""One shape for every subcommand's --help: what it does, its options with their defaults, the environment
variables it reads and its exit codes, so a user never has to open the README to script it."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

AWS_ENV = "AWS_REGION, AWS_PROFILE, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_ROLE_ARN/AWS_WEB_IDENTITY_TOKEN_FILE"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown after each option; the description and epilog keep their line breaks."""


def epilog(env: Mapping[str, str], exit_codes: Mapping[int, str]) -> str:
    width = max((len(name) for name in env), default=0) + 2
    lines = ["environment variables:"]
    lines += [f"  {name:<{width}}{meaning}" for name, meaning in env.items()] or ["  (none)"]
    lines += ["", "exit codes:"]
    lines += [f"  {code:<3} {meaning}" for code, meaning in sorted(exit_codes.items())]
    return "\n".join(lines)


def add_subcommand(
    subparsers: Any,
    name: str,
    *,
    summary: str,
    description: str,
    env: Mapping[str, str],
    exit_codes: Mapping[int, str],
) -> argparse.ArgumentParser:
    """A subparser whose --help carries `description`, option defaults, `env` and `exit_codes`."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name,
        help=summary,
        description=description,
        epilog=epilog(env, exit_codes),
        formatter_class=HelpFormatter,
    )
    return parser
