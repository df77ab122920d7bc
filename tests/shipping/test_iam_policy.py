"""manifests/iam-policy.json: every AWS call the operator makes is allowed, and not much else.

A small IAM evaluator (Allow statements only, Action/Resource wildcards, the condition operators the policy
uses) answers "would AWS allow this request?". Three sources of calls are checked against it:

* the operations the operator's code calls (a static scan of operator/edx_remote_cache, sandbox excluded);
* ``tests/fixtures/aws_calls.json`` when present: the boto3 calls recorded by the e2e suite, a JSON list of
  ``{"service": "ec2", "operation": "RunInstances"}`` objects (or ``["ec2", "RunInstances"]`` pairs);
* scenarios a reviewer cares about (cannot terminate someone else's instance, cannot run another document).
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from edx_remote_cache import OWNER_TAG

ROOT = Path(__file__).resolve().parents[2]
POLICY_FILE = ROOT / "manifests" / "iam-policy.json"
PACKAGE = ROOT / "operator" / "edx_remote_cache"
RECORDED_CALLS = ROOT / "tests" / "fixtures" / "aws_calls.json"
POLICY: dict[str, Any] = json.loads(POLICY_FILE.read_text(encoding="utf-8"))

# What the operator needs, and nothing more. Adding an action here is a reviewed decision.
NEEDED_ACTIONS = {
    "ec2:AuthorizeSecurityGroupIngress",
    "ec2:CreateSecurityGroup",
    "ec2:CreateTags",
    "ec2:DeleteSecurityGroup",
    "ec2:DeleteTags",
    "ec2:DescribeImages",
    "ec2:DescribeInstances",
    "ec2:DescribeSecurityGroupRules",
    "ec2:DescribeSecurityGroups",
    "ec2:DescribeSubnets",
    "ec2:GetConsoleOutput",
    "ec2:ModifyInstanceAttribute",
    "ec2:ModifyInstanceMetadataOptions",
    "ec2:ModifyNetworkInterfaceAttribute",
    "ec2:RevokeSecurityGroupIngress",
    "ec2:RunInstances",
    "ec2:StartInstances",
    "ec2:StopInstances",
    "ec2:TerminateInstances",
    "iam:PassRole",
    "ssm:CancelCommand",
    "ssm:DescribeInstanceInformation",
    "ssm:GetCommandInvocation",
    "ssm:GetParameter",
    "ssm:ListCommandInvocations",
    "ssm:SendCommand",
}
# Allowed without a boto3 call of the same name: PassRole rides on RunInstances(IamInstanceProfile=...).
IMPLIED_ACTIONS = {"iam:PassRole"}
# Modules that never run in production and may call anything on moto.
NOT_PRODUCTION = ("sandbox", "demo.py")

ACCOUNT = "111122223333"
REGION = "us-east-1"
OWNER = {f"aws:ResourceTag/{OWNER_TAG}": "openedx/campus"}


def ec2_arn(kind: str, rid: str, account: str = ACCOUNT) -> str:
    return f"arn:aws:ec2:{REGION}:{account}:{kind}/{rid}"


# ---------------------------------------------------------------------------------------------- evaluator


@dataclass
class Request:
    """One authorization request: an action on resources (each with its own tags) plus request context."""

    action: str
    resources: list[tuple[str, Mapping[str, Any]]] = field(default_factory=lambda: [("*", {})])
    context: Mapping[str, Any] = field(default_factory=dict)


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def _like(pattern: str, value: str, *, case: bool = True) -> bool:
    """IAM wildcards: * any run of characters, ? exactly one."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, 0 if case else re.IGNORECASE) is not None


def _condition_holds(operator: str, key: str, wanted: Any, context: Mapping[str, Any]) -> bool:
    wanted = [str(w) for w in _as_list(wanted)]
    present = key in context
    values = [str(v) for v in _as_list(context[key])] if present else []
    qualifier, _, op = operator.rpartition(":")
    match = {
        "StringEquals": lambda w, v: w == v,
        "StringLike": _like,
        "ArnLike": _like,
        "ArnEquals": lambda w, v: w == v,
    }
    if op == "Null":
        return (not present) == (wanted == ["true"])
    if op not in match:
        raise NotImplementedError(f"condition operator {operator} is not modelled: extend the test evaluator")
    test = match[op]
    if qualifier == "ForAllValues":
        return all(any(test(w, v) for w in wanted) for v in values)
    if qualifier == "ForAnyValue":
        return any(test(w, v) for w in wanted for v in values)
    if qualifier:
        raise NotImplementedError(f"condition qualifier {qualifier} is not modelled")
    return present and any(test(w, v) for w in wanted for v in values)


def _statement_allows(
    statement: Mapping[str, Any], action: str, resource: str, context: Mapping[str, Any]
) -> bool:
    if statement["Effect"] != "Allow":
        return False
    if not any(_like(a, action, case=False) for a in _as_list(statement["Action"])):
        return False
    if not any(_like(r, resource) for r in _as_list(statement["Resource"])):
        return False
    return all(
        _condition_holds(operator, key, wanted, context)
        for operator, block in statement.get("Condition", {}).items()
        for key, wanted in block.items()
    )


def allowed(request: Request, policy: Mapping[str, Any] = POLICY) -> bool:
    """Every resource of the request must be allowed by some statement (no Deny statements exist)."""
    for resource, resource_context in request.resources:
        context = {**request.context, **resource_context}
        if not any(_statement_allows(s, request.action, resource, context) for s in policy["Statement"]):
            return False
    return True


def granted_at_all(action: str, policy: Mapping[str, Any] = POLICY) -> bool:
    """The action appears in some Allow statement (whatever its resources and conditions)."""
    return any(
        s["Effect"] == "Allow" and any(_like(a, action, case=False) for a in _as_list(s["Action"]))
        for s in policy["Statement"]
    )


def policy_actions(policy: Mapping[str, Any] = POLICY) -> set[str]:
    return {a for s in policy["Statement"] for a in _as_list(s["Action"])}


# ------------------------------------------------------------------------------------------ policy shape


def test_policy_is_valid_iam_json() -> None:
    assert POLICY["Version"] == "2012-10-17"
    sids = [s["Sid"] for s in POLICY["Statement"]]
    assert len(sids) == len(set(sids)), "statement ids must be unique"
    for statement in POLICY["Statement"]:
        assert set(statement) <= {"Sid", "Effect", "Action", "Resource", "Condition"}, statement["Sid"]
        assert re.fullmatch(r"[A-Za-z0-9]+", statement["Sid"])


def test_policy_grants_exactly_the_needed_actions() -> None:
    actions = policy_actions()
    assert not [a for a in actions if "*" in a or "?" in a], "no wildcard actions (no ec2:*, no *)"
    assert actions == NEEDED_ACTIONS


def test_no_statement_uses_not_action_or_not_resource_or_deny() -> None:
    for statement in POLICY["Statement"]:
        assert statement["Effect"] == "Allow"
        assert "NotAction" not in statement and "NotResource" not in statement


def test_only_iam_action_is_pass_role_to_ec2() -> None:
    iam = [s for s in POLICY["Statement"] if any(a.startswith("iam:") for a in _as_list(s["Action"]))]
    assert [a for s in iam for a in _as_list(s["Action"])] == ["iam:PassRole"]
    assert iam[0]["Condition"] == {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}}
    assert iam[0]["Resource"] != "*"


def test_resource_star_only_where_aws_has_no_resource_level_permissions() -> None:
    read_only_or_unscoped = {
        "ec2:DescribeImages",
        "ec2:DescribeInstances",
        "ec2:DescribeSecurityGroupRules",
        "ec2:DescribeSecurityGroups",
        "ec2:DescribeSubnets",
        "ssm:CancelCommand",
        "ssm:DescribeInstanceInformation",
        "ssm:GetCommandInvocation",
        "ssm:ListCommandInvocations",  # no resource-level permissions in SSM's authorization reference
    }
    for statement in POLICY["Statement"]:
        if "*" in _as_list(statement["Resource"]):
            assert set(_as_list(statement["Action"])) <= read_only_or_unscoped, statement["Sid"]


def test_conditions_name_the_operators_owner_tag() -> None:
    keys = {key for s in POLICY["Statement"] for block in s.get("Condition", {}).values() for key in block}
    tag_keys = {k.split("/", 1)[1] for k in keys if k.startswith(("aws:ResourceTag/", "aws:RequestTag/"))}
    assert tag_keys == {OWNER_TAG}


def test_every_condition_operator_is_modelled_by_this_evaluator() -> None:
    for statement in POLICY["Statement"]:
        for operator, block in statement.get("Condition", {}).items():
            for key, wanted in block.items():
                _condition_holds(operator, key, wanted, {})  # raises NotImplementedError when unknown


# --------------------------------------------------------------------------------- what a reviewer checks

LAUNCH_RESOURCES = [
    (ec2_arn("instance", "*"), {}),
    (ec2_arn("volume", "*"), {}),
    (ec2_arn("network-interface", "*"), {}),
    (ec2_arn("subnet", "subnet-0a1b2c3d4e5f60718"), {}),
    (ec2_arn("security-group", "sg-0badc0ffee1234567"), OWNER),
    (f"arn:aws:ec2:{REGION}::image/ami-0123456789abcdef0", {}),
]


def test_launching_a_cache_host_requires_the_owner_tag_on_the_instance() -> None:
    tagged = {f"aws:RequestTag/{OWNER_TAG}": "openedx/campus"}
    assert allowed(Request("ec2:RunInstances", LAUNCH_RESOURCES, tagged))
    assert not allowed(Request("ec2:RunInstances", LAUNCH_RESOURCES, {}))


def test_launching_into_someone_elses_security_group_is_denied() -> None:
    tagged = {f"aws:RequestTag/{OWNER_TAG}": "openedx/campus"}
    foreign_group = [*LAUNCH_RESOURCES[:4], (ec2_arn("security-group", "sg-0123456789abcdef0"), {})]
    assert not allowed(Request("ec2:RunInstances", foreign_group, tagged))


def test_tags_may_be_written_at_launch_but_not_on_arbitrary_resources() -> None:
    instance = ec2_arn("instance", "i-0123456789abcdef0")
    assert allowed(Request("ec2:CreateTags", [(instance, {})], {"ec2:CreateAction": "RunInstances"}))
    foreign = Request(
        "ec2:CreateTags", [(instance, {})], {"aws:TagKeys": ["team"], "aws:RequestTag/team": "x"}
    )
    assert not allowed(foreign)


def test_adopting_an_unowned_instance_means_tagging_it_as_ours() -> None:
    instance = ec2_arn("instance", "i-0feedface0000001")
    claim = {f"aws:RequestTag/{OWNER_TAG}": "openedx/campus", "aws:RequestTag/team": "learning"}
    assert allowed(Request("ec2:CreateTags", [(instance, {})], claim))
    owned_by_other = {f"aws:ResourceTag/{OWNER_TAG}": "other/cache"}
    # already owned (by anyone) is re-tagging, allowed only as the owner: the operator checks the value first
    assert allowed(Request("ec2:CreateTags", [(instance, owned_by_other)], claim))
    assert not allowed(Request("ec2:CreateTags", [(instance, {})], {"aws:RequestTag/team": "learning"}))


@pytest.mark.parametrize(
    "action",
    [
        "ec2:TerminateInstances",
        "ec2:StopInstances",
        "ec2:StartInstances",
        "ec2:ModifyInstanceAttribute",
        "ec2:ModifyInstanceMetadataOptions",
        "ec2:GetConsoleOutput",  # an Open edX host's console is none of the operator's business
    ],
)
def test_instance_changes_only_on_owner_tagged_instances(action: str) -> None:
    instance = ec2_arn("instance", "i-0c0ffee1234567890")
    assert allowed(Request(action, [(instance, OWNER)]))
    assert not allowed(Request(action, [(instance, {"aws:ResourceTag/Name": "openedx-app-1"})]))


@pytest.mark.parametrize(
    "action",
    ["ec2:DeleteSecurityGroup", "ec2:AuthorizeSecurityGroupIngress", "ec2:RevokeSecurityGroupIngress"],
)
def test_security_group_changes_only_on_owner_tagged_groups(action: str) -> None:
    assert allowed(Request(action, [(ec2_arn("security-group", "sg-0badc0ffee1234567"), OWNER)]))
    assert not allowed(Request(action, [(ec2_arn("security-group", "sg-0123456789abcdef0"), {})]))


def test_new_security_groups_must_carry_the_owner_tag() -> None:
    group = (ec2_arn("security-group", "*"), {})
    vpc = (ec2_arn("vpc", "vpc-0a1b2c3d4e5f60718"), {})
    assert allowed(
        Request("ec2:CreateSecurityGroup", [group, vpc], {f"aws:RequestTag/{OWNER_TAG}": "openedx/c"})
    )
    assert not allowed(Request("ec2:CreateSecurityGroup", [group, vpc], {}))


def test_send_command_runs_only_aws_run_shell_script() -> None:
    instance = (ec2_arn("instance", "i-0123456789abcdef0"), {})
    shell = (f"arn:aws:ssm:{REGION}::document/AWS-RunShellScript", {})
    assert allowed(Request("ssm:SendCommand", [shell, instance]))
    for document in ("AWS-RunPowerShellScript", "AWS-ApplyPatchBaseline"):
        other = (f"arn:aws:ssm:{REGION}::document/{document}", {})
        assert not allowed(Request("ssm:SendCommand", [other, instance])), document
    own_document = (f"arn:aws:ssm:{REGION}:{ACCOUNT}:document/AWS-RunShellScript", {})
    assert not allowed(Request("ssm:SendCommand", [own_document, instance])), (
        "an account's look-alike document"
    )


def test_ssm_parameters_only_the_public_canonical_ami_ids() -> None:
    from edx_remote_cache.domain.spec import DEFAULT_AMI_PARAMETERS

    for parameter in DEFAULT_AMI_PARAMETERS.values():  # both architectures' default
        public = f"arn:aws:ssm:{REGION}::parameter{parameter}"
        assert allowed(Request("ssm:GetParameter", [(public, {})])), parameter
    secret = f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter/prod/edxapp/DATABASE_PASSWORD"
    assert not allowed(Request("ssm:GetParameter", [(secret, {})]))


def test_pass_role_only_the_cache_host_role_only_to_ec2() -> None:
    role = f"arn:aws:iam::{ACCOUNT}:role/edx-remote-cache-host"
    assert allowed(Request("iam:PassRole", [(role, {})], {"iam:PassedToService": "ec2.amazonaws.com"}))
    assert not allowed(Request("iam:PassRole", [(role, {})], {"iam:PassedToService": "lambda.amazonaws.com"}))
    admin = f"arn:aws:iam::{ACCOUNT}:role/OrganizationAccountAccessRole"
    assert not allowed(Request("iam:PassRole", [(admin, {})], {"iam:PassedToService": "ec2.amazonaws.com"}))


def test_nothing_outside_ec2_ssm_and_pass_role() -> None:
    for action in ("s3:GetObject", "iam:CreateRole", "ec2:CreateVpc", "ssm:GetParameters", "sts:AssumeRole"):
        assert not granted_at_all(action), action


# ------------------------------------------------------------------------ calls the operator's code makes


def _service_operations() -> dict[str, dict[str, str]]:
    """{"ec2"|"ssm": {python_name: OperationName}} from botocore's bundled models (no network)."""
    import botocore
    import botocore.session

    session = botocore.session.get_session()
    return {
        service: {botocore.xform_name(op): op for op in session.get_service_model(service).operation_names}
        for service in ("ec2", "ssm")
    }


def _waiter_operations(service: str, waiter: str) -> set[str]:
    import botocore.session

    model = botocore.session.get_session().get_waiter_model(service)
    return {model.get_waiter(name).operation for name in model.waiter_names if _snake(name) == waiter}


def _snake(name: str) -> str:
    import botocore

    return botocore.xform_name(name)


def _production_modules() -> list[Path]:
    return sorted(
        p
        for p in PACKAGE.rglob("*.py")
        if not any(part in NOT_PRODUCTION for part in p.relative_to(PACKAGE).parts)
    )


def _docstring_nodes(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                out.add(id(body[0].value))
    return out


def operations_used(paths: Iterable[Path], base: Path = PACKAGE) -> dict[str, set[str]]:
    """{"ec2:RunInstances": {"aws.py", ...}} for every EC2/SSM operation the code names.

    Catches ``client.run_instances(...)``, ``_call(client, "run_instances")``, ``"RunInstances"`` string
    constants, ``get_paginator("describe_instances")`` and ``get_waiter("instance_running")``. EC2 and SSM
    share no operation name today; one that both had would be attributed to both."""
    models = _service_operations()
    by_python: dict[str, list[str]] = {}
    by_camel: dict[str, list[str]] = {}
    for svc, ops in models.items():
        for py, op in ops.items():
            by_python.setdefault(py, []).append(f"{svc}:{op}")
            by_camel.setdefault(op, []).append(f"{svc}:{op}")
    found: dict[str, set[str]] = {}

    def note(names: Iterable[str], where: str) -> None:
        for name in names:
            found.setdefault(name, set()).add(where)

    for path in paths:
        where = str(path.relative_to(base))
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = _docstring_nodes(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                attr = node.func.attr
                if attr in by_python:
                    note(by_python[attr], where)
                first = node.args[0] if node.args else None
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    if attr == "get_paginator" and first.value in by_python:
                        note(by_python[first.value], where)
                    if attr == "get_waiter":
                        for svc in models:
                            note((f"{svc}:{op}" for op in _waiter_operations(svc, first.value)), where)
            elif (
                isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
            ):
                note(by_python.get(node.value, []) + by_camel.get(node.value, []), where)
    return found


def test_every_operation_the_operator_calls_is_allowed() -> None:
    used = operations_used(_production_modules())
    if not used:
        pytest.skip("no production module calls EC2 or SSM yet (aws.py, ssm.py, host_push.py not written)")
    missing = sorted(
        f"{op} (used in {', '.join(sorted(where))})" for op, where in used.items() if not granted_at_all(op)
    )
    assert not missing, "manifests/iam-policy.json does not allow:\n  " + "\n  ".join(missing)


def test_every_granted_action_is_used_by_the_operator() -> None:
    expected = ("aws.py", "ssm.py")
    present = [name for name in expected if (PACKAGE / name).is_file()]
    if len(present) < len(expected):
        pytest.skip(f"waiting for {sorted(set(expected) - set(present))}: cannot tell unused grants yet")
    used = set(operations_used(_production_modules())) | IMPLIED_ACTIONS
    unused = sorted(policy_actions() - used)
    assert not unused, (
        "manifests/iam-policy.json grants actions no production code calls (least privilege: drop them, "
        f"or add them to IMPLIED_ACTIONS with a reason): {unused}"
    )


def test_the_static_scan_finds_calls_however_they_are_written(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        '"""Docstrings mentioning RebootInstances do not count."""\n'
        "def f(ec2, ssm, _call):\n"
        "    ec2.run_instances(MinCount=1)\n"
        '    _call(ec2, "terminate_instances", InstanceIds=[])\n'
        '    ssm.get_paginator("list_command_invocations")\n'
        '    ec2.get_waiter("instance_running")\n'
        '    return "DescribeSubnets"\n',
        encoding="utf-8",
    )
    used = set(operations_used([sample], base=tmp_path))
    assert {
        "ec2:RunInstances",
        "ec2:TerminateInstances",
        "ssm:ListCommandInvocations",
        "ec2:DescribeInstances",
        "ec2:DescribeSubnets",
    } <= used
    assert "ec2:RebootInstances" not in used


def _recorded_calls() -> list[str]:
    raw = json.loads(RECORDED_CALLS.read_text(encoding="utf-8"))
    calls = []
    for item in raw:
        service, operation = (item["service"], item["operation"]) if isinstance(item, dict) else item
        calls.append(f"{service.lower()}:{operation}")
    return calls


def test_calls_recorded_by_the_e2e_suite_are_allowed() -> None:
    if not RECORDED_CALLS.is_file():
        pytest.skip(
            f"{RECORDED_CALLS.relative_to(ROOT)} is absent: record the e2e suite's boto3 calls there "
            '(a JSON list of {"service": "ec2", "operation": "RunInstances"}) to check them here'
        )
    ignored = {"sts:GetCallerIdentity"}  # needs no permission
    calls = sorted(set(_recorded_calls()) - ignored)
    assert calls, "aws_calls.json lists no calls"
    missing = [c for c in calls if not granted_at_all(c)]
    assert not missing, f"recorded calls the policy does not allow: {missing}"


def test_evaluator_matches_iam_semantics_on_known_cases() -> None:
    assert _like("ec2:Describe*", "ec2:describeinstances", case=False)
    assert not _like("arn:aws:ssm:*::parameter/aws/*", "arn:aws:ssm:us-east-1:1:parameter/aws/x")
    assert _condition_holds("Null", "k", "true", {}) and not _condition_holds("Null", "k", "true", {"k": "v"})
    assert _condition_holds("ForAllValues:StringLike", "aws:TagKeys", ["a/*"], {})  # vacuously true
    assert not _condition_holds("StringLike", "k", "?*", {}) and not _condition_holds(
        "StringLike", "k", "?*", {"k": ""}
    )
    with pytest.raises(NotImplementedError):
        _condition_holds("NumericLessThan", "k", "1", {"k": "0"})
