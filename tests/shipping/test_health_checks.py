"""GitOps health of an EdxRemoteCache: what Argo CD and Flux show a team that applies caches from git.

* Argo CD: ``manifests/argocd/health.lua`` runs in Lua 5.1 (lupa) with only the libraries Argo CD gives a
  custom health script (base, table, ``os.time``/``os.date``; no string, no math), against every status
  fixture in ``tests/fixtures/status/`` and against statuses computed by the operator's own conditions code.
* Flux: the ``healthCheckExprs`` of ``manifests/flux/edx-remote-cache.yaml`` are evaluated with cel-python in
  the order Flux's StatusEvaluator uses (observedGeneration check, then inProgress, failed, current, else
  InProgress); an evaluation error is kstatus "Unknown".

The expected outcome of each fixture lives in ``tests/fixtures/status/expected.yaml``.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "status"
HEALTH_LUA = ROOT / "manifests" / "argocd" / "health.lua"
ARGOCD_CM_PATCH = ROOT / "manifests" / "argocd" / "argocd-cm-patch.yaml"
FLUX_KUSTOMIZATIONS = ROOT / "manifests" / "flux" / "edx-remote-cache.yaml"
ARGOCD_KEY = "resource.customizations.health.cache.openedx.org_EdxRemoteCache"
ARGOCD_STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}


def _fixture_names() -> list[str]:
    return sorted(p.stem for p in FIXTURES.glob("*.yaml") if p.name != "expected.yaml")


def _load_fixture(name: str) -> dict[str, Any]:
    return yaml.safe_load((FIXTURES / f"{name}.yaml").read_text(encoding="utf-8"))


EXPECTED: dict[str, dict[str, str]] = yaml.safe_load((FIXTURES / "expected.yaml").read_text(encoding="utf-8"))


# ------------------------------------------------------------------------------------------- Argo CD (Lua)


def argocd_health(obj: dict[str, Any]) -> dict[str, str]:
    """Run health.lua the way Argo CD runs a custom health script from argocd-cm (useOpenLibs off)."""
    lua51 = pytest.importorskip("lupa.lua51", reason="pip install lupa (test extra) to run the Argo CD Lua")
    runtime = lua51.LuaRuntime(unpack_returned_tuples=True)
    # Argo CD opens only base, package, table and a "safe" os with time() and date(): drop the rest, including
    # the string metatable, so ("x"):sub(1) fails here exactly as it does in Argo CD.
    runtime.execute(
        """
        local safe_os = {time = os.time, date = os.date}
        debug.setmetatable("", nil)
        string, math, io, debug, coroutine = nil, nil, nil, nil, nil
        os = safe_os
        """
    )
    runtime.globals().obj = runtime.table_from(obj, recursive=True)
    result = runtime.execute(HEALTH_LUA.read_text(encoding="utf-8"))
    assert lua51.lua_type(result) == "table", "health.lua must return a table"
    out = {"status": result["status"], "message": result["message"]}
    assert out["status"] in ARGOCD_STATUSES, f"Argo CD would replace {out['status']!r} with Unknown"
    assert isinstance(out["message"], str)
    return out


def test_the_argocd_cm_patch_carries_exactly_health_lua() -> None:
    patch = yaml.safe_load(ARGOCD_CM_PATCH.read_text(encoding="utf-8"))
    assert patch["kind"] == "ConfigMap"
    assert patch["metadata"] == {
        "name": "argocd-cm",
        "namespace": "argocd",
        "labels": {"app.kubernetes.io/name": "argocd-cm", "app.kubernetes.io/part-of": "argocd"},
    }
    assert patch["data"][ARGOCD_KEY] == HEALTH_LUA.read_text(encoding="utf-8"), (
        "argocd-cm-patch.yaml drifted from health.lua: re-embed the script"
    )


def test_health_lua_needs_no_library_argocd_does_not_open() -> None:
    source = HEALTH_LUA.read_text(encoding="utf-8")
    code = "\n".join(line.split("--", 1)[0] for line in source.splitlines())
    for forbidden in (
        "string.",
        "math.",
        "io.",
        "require",
        "loadstring",
        "dofile",
        ":sub(",
        ":find(",
        ":match(",
    ):
        assert forbidden not in code, (
            f"health.lua uses {forbidden!r}, which Argo CD's sandbox does not provide"
        )


@pytest.mark.parametrize("name", _fixture_names())
def test_every_status_fixture_has_an_expected_outcome(name: str) -> None:
    assert name in EXPECTED, f"add {name!r} to tests/fixtures/status/expected.yaml (argocd: ..., flux: ...)"
    assert set(EXPECTED[name]) == {"argocd", "flux"}


@pytest.mark.parametrize("name", _fixture_names())
def test_status_fixtures_are_valid_edxremotecaches(name: str) -> None:
    from edx_remote_cache.domain.crd import schema_problems

    assert schema_problems(_load_fixture(name)) == []


@pytest.mark.parametrize("name", _fixture_names())
def test_argocd_shows_the_expected_health(name: str) -> None:
    if name not in EXPECTED:
        pytest.fail(f"no expected outcome for {name!r} in expected.yaml")
    health = argocd_health(_load_fixture(name))
    assert health["status"] == EXPECTED[name]["argocd"], health


def _condition(obj: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next(c for c in obj["status"]["conditions"] if c["type"] == ctype)


@pytest.mark.parametrize(
    "name", [n for n in _fixture_names() if EXPECTED.get(n, {}).get("argocd") == "Degraded"]
)
def test_a_degraded_cache_tells_the_user_why_in_argo(name: str) -> None:
    obj = _load_fixture(name)
    health = argocd_health(obj)
    stalled = _condition(obj, "Stalled")
    explaining = stalled if stalled["status"] == "True" else _condition(obj, "Ready")
    assert explaining["message"] in health["message"]


def test_argo_says_which_generation_it_waits_for() -> None:
    health = argocd_health(_load_fixture("generation-not-observed"))
    assert health == {
        "status": "Progressing",
        "message": "Waiting for the operator to observe generation 3 (status is for generation 2)",
    }


def test_argo_tolerates_objects_without_metadata_generation_or_conditions() -> None:
    assert argocd_health({"metadata": {}, "status": {}})["status"] == "Progressing"
    assert (
        argocd_health({"metadata": {"generation": 1}, "status": {"conditions": []}})["status"]
        == "Progressing"
    )
    bare_ready = {"metadata": {}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    assert argocd_health(bare_ready) == {"status": "Healthy", "message": ""}


# ---------------------------------------------------------------------------------------------- Flux (CEL)


def _flux_exprs() -> dict[str, str]:
    docs = [d for d in yaml.safe_load_all(FLUX_KUSTOMIZATIONS.read_text(encoding="utf-8")) if d]
    exprs = [
        e
        for d in docs
        for e in d["spec"].get("healthCheckExprs", [])
        if e["apiVersion"] == "cache.openedx.org/v1alpha1" and e["kind"] == "EdxRemoteCache"
    ]
    assert len(exprs) == 1, "exactly one healthCheckExprs entry for EdxRemoteCache"
    return {k: " ".join(v.split()) for k, v in exprs[0].items() if k in ("inProgress", "failed", "current")}


def _cel_go_has(expr: str, obj: dict[str, Any]) -> str:
    """cel-go errors on has(x.f) when the top-level x is absent ("no such attribute"); cel-python says false.

    Rewriting has(x.f) to an expression that reads x.f reproduces cel-go for the absent x (and only then)."""
    for top in ("status", "metadata", "spec"):
        if top not in obj:
            expr = re.sub(rf"has\(\s*({top}(?:\.\w+)+)\s*\)", r"(\1 == \1)", expr)
    return expr


def flux_health(obj: dict[str, Any]) -> str:
    """Flux's StatusEvaluator.Evaluate (fluxcd/pkg runtime/cel), with cel-python as the CEL engine."""
    celpy = pytest.importorskip(
        "celpy", reason="pip install cel-python (test extra) to evaluate the Flux CEL"
    )
    observed = (
        obj.get("status", {}).get("observedGeneration") if isinstance(obj.get("status"), dict) else None
    )
    generation = obj.get("metadata", {}).get("generation")
    if observed is not None and generation is not None and observed != generation:
        return "InProgress"
    env = celpy.Environment()
    activation = {k: celpy.json_to_cel(v) for k, v in obj.items()}
    exprs = _flux_exprs()
    for key, result in (("inProgress", "InProgress"), ("failed", "Failed"), ("current", "Current")):
        if key not in exprs:
            continue
        program = env.program(env.compile(_cel_go_has(exprs[key], obj)))
        try:
            value = program.evaluate(activation)
        except celpy.CELEvalError:
            return "Unknown"
        if isinstance(value, celpy.CELEvalError):
            return "Unknown"
        assert isinstance(value, celpy.celtypes.BoolType), f"{key} must evaluate to a bool, got {value!r}"
        if value:
            return result
    return "InProgress"


def test_flux_health_check_expressions_cover_all_three_outcomes() -> None:
    assert set(_flux_exprs()) == {"inProgress", "failed", "current"}


@pytest.mark.parametrize("name", _fixture_names())
def test_flux_reports_the_expected_status(name: str) -> None:
    if name not in EXPECTED:
        pytest.fail(f"no expected outcome for {name!r} in expected.yaml")
    assert flux_health(_load_fixture(name)) == EXPECTED[name]["flux"]


def test_the_cel_engine_matches_cel_go_on_flux_s_own_examples() -> None:
    """Cases from fluxcd/pkg's status_evaluator_test.go: an object without status is an error, not false."""
    celpy = pytest.importorskip("celpy")
    env = celpy.Environment()
    expr = "has(status.observedGeneration) && metadata.generation != status.observedGeneration"
    program = env.program(env.compile(_cel_go_has(expr, {"metadata": {"generation": 2}})))
    with pytest.raises(celpy.CELEvalError):
        value = program.evaluate({"metadata": celpy.json_to_cel({"generation": 2})})
        if isinstance(value, celpy.CELEvalError):
            raise value
    program = env.program(env.compile(_cel_go_has(expr, {"status": {}})))
    assert (
        program.evaluate({"status": celpy.json_to_cel({}), "metadata": celpy.json_to_cel({"generation": 2})})
        is not True
    )


@pytest.mark.parametrize("name", _fixture_names())
def test_argo_and_flux_agree(name: str) -> None:
    """Same object, same verdict in both tools (Suspended is a flavour of Current; Unknown of InProgress)."""
    same = {
        "Healthy": {"Current"},
        "Suspended": {"Current"},
        "Progressing": {"InProgress", "Unknown"},
        "Degraded": {"Failed"},
    }
    obj = _load_fixture(name)
    assert flux_health(obj) in same[argocd_health(obj)["status"]]


# --------------------------------------------------------- statuses written by the operator's own code


def _status_from_facts(**facts: Any) -> dict[str, Any]:
    conditions = pytest.importorskip("edx_remote_cache.domain.conditions")
    f = conditions.Facts(**facts)
    now = datetime(2025, 3, 4, 10, 0, tzinfo=UTC)
    return {
        "apiVersion": "cache.openedx.org/v1alpha1",
        "kind": "EdxRemoteCache",
        "metadata": {"name": "campus", "namespace": "openedx", "generation": f.generation},
        "spec": {"paused": f.paused},
        "status": {
            "phase": conditions.compute_phase(f),
            "observedGeneration": f.generation,
            "conditions": conditions.compute_conditions(f, previous=[], now=now),
        },
    }


HEALTHY_PARTS = dict(
    instances_running=1, security_group_ready=True, hosts_total=2, hosts_configured=2, cache_healthy=True
)

OPERATOR_SCENARIOS = {
    "nothing observed yet": (dict(generation=1), "Progressing", "InProgress"),
    "launching": (
        dict(generation=1, converging=True, security_group_ready=True),
        "Progressing",
        "InProgress",
    ),
    "waiting for hosts": (
        dict(generation=1, instances_running=1, security_group_ready=True, hosts_total=2, hosts_configured=1),
        "Progressing",
        "InProgress",
    ),
    "all good": (dict(generation=5, **HEALTHY_PARTS), "Healthy", "Current"),
    "cold cache after replacement": (
        dict(generation=5, cold_cache=True, **HEALTHY_PARTS),
        "Healthy",
        "Current",
    ),
    "healing": (
        dict(
            generation=5,
            healing="replacing i-0abc (unreachable for 5m)",
            **{**HEALTHY_PARTS, "cache_healthy": False},
        ),
        "Progressing",
        "InProgress",
    ),
    "cache down, nothing left to try": (
        dict(generation=5, **{**HEALTHY_PARTS, "cache_healthy": False}),
        "Degraded",
        "Failed",
    ),
    "host unreachable": (
        dict(generation=5, host_problems=("i-0abc: Unreachable (agent ConnectionLost)",), **HEALTHY_PARTS),
        "Degraded",
        "Failed",
    ),
    "invalid spec": (
        dict(generation=2, spec_error="spec.instance.instanceType: unknown"),
        "Degraded",
        "Failed",
    ),
    "AWS says no": (
        dict(
            generation=2, terminal_error="UnauthorizedOperation: not authorized to perform ec2:RunInstances"
        ),
        "Degraded",
        "Failed",
    ),
    "paused and fine": (dict(generation=3, paused=True, **HEALTHY_PARTS), "Suspended", "Current"),
    "paused and broken": (
        dict(generation=3, paused=True, **{**HEALTHY_PARTS, "cache_healthy": False}),
        "Degraded",
        "Failed",
    ),
    "deleting": (dict(generation=3, deleting=True, **HEALTHY_PARTS), "Progressing", "InProgress"),
}


@pytest.mark.parametrize("scenario", sorted(OPERATOR_SCENARIOS))
def test_statuses_the_operator_writes_map_to_the_right_gitops_health(scenario: str) -> None:
    facts, argocd, flux = OPERATOR_SCENARIOS[scenario]
    obj = _status_from_facts(**facts)
    if facts.get("deleting"):
        obj["metadata"]["deletionTimestamp"] = "2025-03-04T11:00:00Z"
    assert argocd_health(obj)["status"] == argocd, obj["status"]["conditions"]
    assert flux_health(obj) == flux, obj["status"]["conditions"]


def _retrying_status() -> dict[str, Any]:
    message = (
        "AWS InsufficientInstanceCapacity during RunInstances: We currently do not have sufficient t3.micro "
        "capacity; attempt 3, next retry in 8s at 2025-03-04T10:00:08Z"
    )
    return _status_from_facts(
        generation=2,
        converging=True,
        retry_reason="AwsRetrying",
        retry_message=message,
        security_group_ready=True,
    )


def test_a_retrying_aws_error_is_progressing_in_argo_with_the_code_attempt_and_next_retry() -> None:
    obj = _retrying_status()
    health = argocd_health(obj)
    assert health["status"] == "Progressing"
    assert health["message"].startswith(_condition(obj, "Reconciling")["message"])
    assert "InsufficientInstanceCapacity" in health["message"] and "attempt 3" in health["message"]
    assert flux_health(obj) == "InProgress"


def test_a_terminal_run_instances_error_is_degraded_in_argo_naming_the_code() -> None:
    obj = _status_from_facts(
        generation=2,
        terminal_error="InvalidParameterValue: Value (nope) for parameter iamInstanceProfile.name is invalid. "
        "Invalid IAM Instance Profile name (during RunInstances)",
    )
    health = argocd_health(obj)
    assert health["status"] == "Degraded"
    assert health["message"].startswith("Stalled: InvalidParameterValue: Value (nope)")
    assert _condition(obj, "Stalled")["reason"] == "InvalidParameterValue"
    assert flux_health(obj) == "Failed"


def test_a_host_another_object_manages_is_degraded_in_argo_naming_the_owner() -> None:
    obj = _status_from_facts(
        generation=1,
        instances_running=1,
        security_group_ready=True,
        hosts_total=2,
        hosts_configured=1,
        cache_healthy=True,
        hosts_claimed=("i-0abc: managed by openedx/campus (created earlier)",),
    )
    health = argocd_health(obj)
    assert health["status"] == "Degraded"
    assert "managed by openedx/campus" in health["message"]
    assert _condition(obj, "HostsConfigured")["reason"] == "HostClaimed"
    assert flux_health(obj) == "Failed"
