"""`edx-remote-cache validate FILE...`: offline checks of EdxRemoteCache manifests, for pre-merge CI in GitOps repos.

Each object is checked against the CRD schema (what the apiserver would reject) and then the spec model (what
the operator would mark Stalled), so a PR fails before Argo CD ever syncs it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from edx_remote_cache import GROUP, KIND
from edx_remote_cache.cli.help import add_subcommand
from edx_remote_cache.domain.crd import CRD_ENV, schema_problems
from edx_remote_cache.domain.spec import SpecError, parse_spec

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


def validate_files(paths: Iterable[str]) -> tuple[list[Problem], list[str], int]:
    """(problems, unreadable-file errors, number of objects checked)."""
    problems: list[Problem] = []
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
                problems += object_problems(doc, path)
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
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    problems, unreadable, checked = validate_files(args.files)
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
