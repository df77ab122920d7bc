"""`edx-remote-cache validate FILE...`: offline checks of EdxRemoteCache manifests, for pre-merge CI in GitOps repos.

Each object is checked against the CRD schema (what the apiserver would reject) and then the spec model (what
the operator would mark Stalled), so a PR fails before Argo CD ever syncs it. With `--aws` (and credentials from
the standard chain) every `openedx.hosts` id is also looked up in its region's EC2, one batched DescribeInstances
per region: an id EC2 does not know, or a terminated host, is a problem too (the operator reports it as
HostNotFound; a made-up id would otherwise only show up there).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from edx_remote_cache import GROUP, KIND
from edx_remote_cache.cli.help import add_subcommand
from edx_remote_cache.domain.crd import CRD_ENV, schema_problems
from edx_remote_cache.domain.spec import EdxRemoteCacheSpec, SpecError, parse_spec

EXIT_OK, EXIT_INVALID, EXIT_UNREADABLE = 0, 1, 2


@dataclass(frozen=True)
class Problem:
    file: str
    obj: str
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.obj}: {self.path}: {self.message}"


def is_edx_remote_cache(doc: Any) -> bool:
    return (
        isinstance(doc, Mapping)
        and doc.get("kind") == KIND
        and str(doc.get("apiVersion", "")).startswith(f"{GROUP}/")
    )


def object_problems(doc: Mapping[str, Any], file: str) -> list[Problem]:
    meta = doc.get("metadata") or {}
    obj = f"{meta.get('namespace', 'default')}/{meta.get('name', '<no name>')}"
    found = [Problem(file, obj, path, message) for path, message in schema_problems(doc)]
    if not meta.get("name"):
        found.append(Problem(file, obj, "metadata.name", "every object needs a name; add metadata.name"))
    seen = {p.path for p in found}
    try:
        parse_spec(doc.get("spec"))
    except SpecError as exc:
        found += [Problem(file, obj, p.path, p.message) for p in exc.problems if p.path not in seen]
    return found


def unknown_host_problems(
    specs: Iterable[tuple[str, str, EdxRemoteCacheSpec]], ec2_for: Callable[[str], Any]
) -> list[Problem]:
    """(file, object, spec) of valid objects -> one Problem per listed host id EC2 does not have."""
    from edx_remote_cache.adapters.aws import EdxHostDirectory
    from edx_remote_cache.reconciler.cloud_pass import unaccounted_hosts

    specs = list(specs)
    found: dict[str, list[Any]] = {}
    for region in sorted({spec.region for _, _, spec in specs}):
        ids = sorted({iid for _, _, spec in specs if spec.region == region for iid in spec.openedx.hosts})
        if ids:
            found[region] = EdxHostDirectory(ec2_for(region), ttl_seconds=float("inf")).hosts(
                instance_ids=ids
            )
    problems = []
    for file, obj, spec in specs:
        index = {iid: n for n, iid in enumerate(spec.openedx.hosts)}
        for message in unaccounted_hosts(spec.openedx.hosts, found.get(spec.region, []), region=spec.region):
            iid = message.split(":", 1)[0]
            problems.append(Problem(file, obj, f"spec.openedx.hosts[{index[iid]}]", message))
    return problems


def validate_files(
    paths: Iterable[str], *, ec2_for: Callable[[str], Any] | None = None
) -> tuple[list[Problem], list[str], int]:
    """(problems, unreadable-file errors, number of objects checked); ``ec2_for(region)``: also ask EC2."""
    problems: list[Problem] = []
    valid: list[tuple[str, str, EdxRemoteCacheSpec]] = []
    unreadable: list[str] = []
    checked = 0
    for path in paths:
        try:
            docs = list(yaml.safe_load_all(Path(path).read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError) as exc:
            unreadable.append(f"{path}: cannot read: {exc}")
            continue
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            unreadable.append(f"{path}:{where}: not valid YAML: {getattr(exc, 'problem', exc)}")
            continue
        for doc in docs:
            if is_edx_remote_cache(doc):
                checked += 1
                found = object_problems(doc, path)
                problems += found
                if not found and ec2_for is not None:
                    meta = doc.get("metadata") or {}
                    obj = f"{meta.get('namespace', 'default')}/{meta.get('name')}"
                    valid.append((path, obj, parse_spec(doc.get("spec"))))
    if valid and ec2_for is not None:
        problems += unknown_host_problems(valid, ec2_for)
    return problems, unreadable, checked


def add_parser(subparsers: Any) -> None:
    parser = add_subcommand(
        subparsers,
        "validate",
        summary="check EdxRemoteCache manifests offline (CRD schema + operator rules)",
        description="Check EdxRemoteCache manifests offline, for pre-merge CI in a GitOps repository: each object\n"
        "against the CRD schema (what the apiserver would refuse) and the operator's own rules (what it\n"
        "would mark Stalled, e.g. an amiParameter of the other architecture than the instance type).\n"
        "Other kinds in the files are skipped. No cluster and no AWS access needed.",
        env={CRD_ENV: "path of the CRD to validate against (default: the checkout's crds/)"},
        exit_codes={
            EXIT_OK: "every EdxRemoteCache is valid",
            EXIT_INVALID: "at least one is not (each problem printed as FILE: NS/NAME: PATH: MESSAGE)",
            EXIT_UNREADABLE: "a file could not be read or is not YAML",
        },
    )
    parser.add_argument(
        "files", nargs="+", metavar="FILE", help="YAML files; multi-document; other kinds skipped"
    )
    parser.add_argument(
        "--aws",
        action="store_true",
        help="also look every openedx.hosts id up in EC2 (standard credential chain; AWS_ENDPOINT_URL honoured)",
    )
    parser.set_defaults(func=run)


def _ec2_for(region: str) -> Any:
    from edx_remote_cache.adapters.aws import make_clients

    return make_clients(region).ec2


def run(args: argparse.Namespace) -> int:
    try:
        problems, unreadable, checked = validate_files(args.files, ec2_for=_ec2_for if args.aws else None)
    except Exception as exc:  # no credentials, no network, access denied: say so, never "valid"
        if not args.aws:
            raise
        print(f"--aws: cannot look the hosts up in EC2: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_UNREADABLE
    for line in unreadable:
        print(line, file=sys.stderr)
    for problem in problems:
        print(problem)
    if unreadable:
        return EXIT_UNREADABLE
    if problems:
        return EXIT_INVALID
    print(f"{checked} EdxRemoteCache object(s) valid", file=sys.stderr)
    return EXIT_OK
