"""charts/edx-remote-cache renders the same operator as manifests/, for default and non-default values.

There is no helm binary here, so this file carries a small renderer for the subset of Go templates the chart
is allowed to use: ``{{ .Values.x }}``, ``$``, pipelines, ``if``/``else if``/``else``/``end``, ``range``,
``with``, ``define``/``include``, trim markers, comments, and the functions in ``FUNCTIONS``. Anything else
raises ``TemplateError``, so a template that grows past the subset fails here instead of being mis-rendered.
The renderer's own semantics are pinned by ``test_renderer_*`` against outputs Go's text/template + sprig give.
When ``helm_sdkpy`` (real Helm, Python >= 3.12) is importable, ``helm lint`` runs on the chart as well.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "edx-remote-cache"
MANIFESTS = ROOT / "manifests"
RELEASE_NAMESPACE = "edx-remote-cache"


# ------------------------------------------------------------------------------------ Go template subset


class TemplateError(Exception):
    """The template uses something outside the supported subset, or fails the way Helm would."""


_ACTION = re.compile(r"\{\{(- )?(.*?)( -)?\}\}", re.DOTALL)
_TOKEN = re.compile(
    r"""\s*(?:
        (?P<string>"(?:[^"\\]|\\.)*")
      | (?P<raw>`[^`]*`)
      | (?P<number>-?\d+(?:\.\d+)?)
      | (?P<pipe>\|)
      | (?P<lparen>\()
      | (?P<rparen>\))
      | (?P<field>(?:\$|\.)?(?:\.?[A-Za-z_][A-Za-z0-9_]*)+|\$|\.)
    )""",
    re.VERBOSE,
)


@dataclass
class Node:
    kind: str  # text | action | if | range | with
    text: str = ""
    pipeline: str = ""
    body: list[Node] = field(default_factory=list)
    branches: list[tuple[str, list[Node]]] = field(default_factory=list)  # if: (pipeline, body) ...
    otherwise: list[Node] = field(default_factory=list)


def _lex(source: str) -> list[tuple[str, str]]:
    """[("text", ...), ("action", ...)] with trim markers applied to neighbouring text."""
    out: list[tuple[str, str]] = []
    pos = 0
    trim_next = False
    for match in _ACTION.finditer(source):
        text = source[pos : match.start()]
        if trim_next:
            text = text.lstrip(" \t\r\n")
        if match.group(1):
            text = text.rstrip(" \t\r\n")
        out.append(("text", text))
        body = match.group(2).strip()
        if not (body.startswith("/*") and body.endswith("*/")):
            out.append(("action", body))
        trim_next = bool(match.group(3))
        pos = match.end()
    tail = source[pos:]
    out.append(("text", tail.lstrip(" \t\r\n") if trim_next else tail))
    return [t for t in out if t != ("text", "")]


def _parse(tokens: list[tuple[str, str]], defines: dict[str, list[Node]]) -> list[Node]:
    stack: list[tuple[Node, list[Node]]] = []
    root: list[Node] = []
    current = root
    for kind, value in tokens:
        if kind == "text":
            current.append(Node("text", text=value))
            continue
        word, _, rest = value.partition(" ")
        rest = rest.strip()
        if word in ("if", "range", "with"):
            node = Node(word, pipeline=rest)
            if word == "if":
                node.branches.append((rest, []))
                body = node.branches[0][1]
            else:
                body = node.body
            current.append(node)
            stack.append((node, current))
            current = body
        elif word == "define":
            node = Node("define", pipeline=json.loads(rest))
            stack.append((node, current))
            current = node.body
        elif word == "else":
            if not stack:
                raise TemplateError("else without if/range/with")
            node = stack[-1][0]
            if rest.startswith("if ") and node.kind == "if":
                node.branches.append((rest[3:].strip(), []))
                current = node.branches[-1][1]
            elif not rest:
                current = node.otherwise
            else:
                raise TemplateError(f"unsupported else form: {value!r}")
        elif word == "end":
            if not stack:
                raise TemplateError("end without a block")
            node, current = stack.pop()
            if node.kind == "define":
                defines[node.pipeline] = node.body
        elif (
            word in ("template", "block", "break", "continue") or ":=" in value or "=" in value.split('"')[0]
        ):
            raise TemplateError(f"unsupported action {value!r}: keep the chart inside the tested subset")
        else:
            current.append(Node("action", pipeline=value))
    if stack:
        raise TemplateError(f"unclosed {stack[-1][0].kind}")
    return root


def _empty(value: Any) -> bool:
    return (
        value is None
        or value is False
        or (value == 0 and not isinstance(value, bool))
        or value in ("", [], {})
    )


def _truth(value: Any) -> bool:
    return not _empty(value)


def _go_string(value: Any) -> str:
    if value is None:
        return ""  # Helm renders "<no value>" as an empty string
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, dict | list):
        raise TemplateError(f"printing a {type(value).__name__} directly: use toYaml")
    return str(value)


def _to_yaml(value: Any) -> str:
    if value is None:
        return "null"
    return (
        yaml.safe_dump(value, default_flow_style=False, sort_keys=True, width=10_000)
        .rstrip("\n")
        .removesuffix("\n...")
    )


def _indent(width: int, text: str) -> str:
    pad = " " * int(width)
    return "\n".join(pad + line for line in str(text).split("\n"))


def _printf(fmt: str, *args: Any) -> str:
    parts = re.split(r"(%[sdvq])", fmt)
    values = iter(args)
    out = []
    for part in parts:
        if part in ("%s", "%d", "%v"):
            out.append(_go_string(next(values)))
        elif part == "%q":
            out.append(json.dumps(_go_string(next(values))))
        elif "%" in part.replace("%%", ""):
            raise TemplateError(f"printf verb in {fmt!r} is not supported")
        else:
            out.append(part.replace("%%", "%"))
    return "".join(out)


def _and(*args: Any) -> Any:
    for arg in args:
        if not _truth(arg):
            return arg
    return args[-1]


def _or(*args: Any) -> Any:
    for arg in args:
        if _truth(arg):
            return arg
    return args[-1]


def _required(message: str, value: Any) -> Any:
    if _empty(value):
        raise TemplateError(message)
    return value


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "default": lambda default, value=None: default if _empty(value) else value,
    "quote": lambda *values: " ".join(json.dumps(_go_string(v)) for v in values),
    "toYaml": _to_yaml,
    "nindent": lambda width, text: "\n" + _indent(width, text),
    "indent": _indent,
    "printf": _printf,
    "trunc": lambda n, text: str(text)[: int(n)],
    "trimSuffix": lambda suffix, text: str(text).removesuffix(suffix),
    "contains": lambda sub, text: sub in str(text),
    "join": lambda sep, items: sep.join(_go_string(i) for i in items or []),
    "not": lambda value: not _truth(value),
    "and": _and,
    "or": _or,
    "eq": lambda a, *others: any(a == o for o in others),
    "ne": lambda a, b: a != b,
    "empty": _empty,
    "required": _required,
}


@dataclass
class Template:
    """Parsed templates of one chart; render(name, context) like Helm's engine."""

    files: dict[str, list[Node]]
    defines: dict[str, list[Node]]

    @classmethod
    def load(cls, chart: Path) -> Template:
        defines: dict[str, list[Node]] = {}
        files = {}
        for path in sorted((chart / "templates").iterdir()):
            if path.is_file():
                files[path.name] = _parse(_lex(path.read_text(encoding="utf-8")), defines)
        return cls(files, defines)

    def render(self, name: str, context: Mapping[str, Any]) -> str:
        return self._nodes(self.files[name], context, context)

    # evaluation -------------------------------------------------------------------------------------
    def _nodes(self, nodes: list[Node], dot: Any, root: Any) -> str:
        out = []
        for node in nodes:
            if node.kind == "text":
                out.append(node.text)
            elif node.kind == "action":
                out.append(_go_string(self._pipeline(node.pipeline, dot, root)))
            elif node.kind == "if":
                for pipeline, body in node.branches:
                    if _truth(self._pipeline(pipeline, dot, root)):
                        out.append(self._nodes(body, dot, root))
                        break
                else:
                    out.append(self._nodes(node.otherwise, dot, root))
            elif node.kind == "with":
                value = self._pipeline(node.pipeline, dot, root)
                out.append(
                    self._nodes(node.body, value, root)
                    if _truth(value)
                    else self._nodes(node.otherwise, dot, root)
                )
            elif node.kind == "range":
                value = self._pipeline(node.pipeline, dot, root)
                items = [value[k] for k in sorted(value)] if isinstance(value, dict) else list(value or [])
                if items:
                    out.extend(self._nodes(node.body, item, root) for item in items)
                else:
                    out.append(self._nodes(node.otherwise, dot, root))
        return "".join(out)

    def _pipeline(self, text: str, dot: Any, root: Any) -> Any:
        tokens = self._tokens(text)
        value, rest = self._parse_pipeline(tokens, dot, root)
        if rest:
            raise TemplateError(f"unexpected {rest[0]!r} in {text!r}")
        return value

    @staticmethod
    def _tokens(text: str) -> list[tuple[str, str]]:
        tokens, pos = [], 0
        text = text.strip()
        while pos < len(text):
            match = _TOKEN.match(text, pos)
            if not match or match.end() == pos:
                raise TemplateError(f"cannot parse {text[pos:]!r}")
            kind = match.lastgroup or ""
            tokens.append((kind, match.group(kind)))
            pos = match.end()
            while pos < len(text) and text[pos].isspace():
                pos += 1
        return tokens

    def _parse_pipeline(self, tokens: list[tuple[str, str]], dot: Any, root: Any) -> tuple[Any, list]:
        value: Any = None
        first = True
        while True:
            command: list[tuple[str, str]] = []
            depth = 0
            while tokens and not (depth == 0 and tokens[0][0] in ("pipe", "rparen")):
                if tokens[0][0] == "lparen":
                    depth += 1
                elif tokens[0][0] == "rparen":
                    depth -= 1
                command.append(tokens.pop(0))
            value = self._command(command, dot, root, piped=None if first else (value,))
            first = False
            if tokens and tokens[0][0] == "pipe":
                tokens.pop(0)
                continue
            return value, tokens

    def _command(
        self, tokens: list[tuple[str, str]], dot: Any, root: Any, piped: tuple[Any, ...] | None
    ) -> Any:
        if not tokens:
            raise TemplateError("empty command")
        head_kind, head = tokens[0]
        args = self._operands(tokens[1:], dot, root)
        if (head_kind == "field" and head in FUNCTIONS) or head == "include":
            args = args + list(piped or ())
            if head == "include":
                name, context = args
                if name not in self.defines:
                    raise TemplateError(f"include of undefined template {name!r}")
                return self._nodes(self.defines[name], context, context)
            return FUNCTIONS[head](*args)
        if (
            head_kind == "field"
            and re.fullmatch(r"[A-Za-z_]\w*", head)
            and head not in ("true", "false", "nil")
        ):
            raise TemplateError(f"function {head!r} is not in the supported subset")
        if args or piped:
            raise TemplateError(f"{head!r} is not a function")
        return self._operands(tokens, dot, root)[0]

    def _operands(self, tokens: list[tuple[str, str]], dot: Any, root: Any) -> list[Any]:
        out: list[Any] = []
        while tokens:
            kind, text = tokens.pop(0)
            if kind == "lparen":
                inner, tokens = self._parse_pipeline(tokens, dot, root)
                if not tokens or tokens[0][0] != "rparen":
                    raise TemplateError("unbalanced parentheses")
                tokens = tokens[1:]
                out.append(inner)
            elif kind == "string":
                out.append(json.loads(text))
            elif kind == "raw":
                out.append(text[1:-1])
            elif kind == "number":
                out.append(float(text) if "." in text else int(text))
            elif kind == "field":
                out.append(self._field(text, dot, root))
            else:
                raise TemplateError(f"unexpected {text!r}")
        return out

    @staticmethod
    def _field(text: str, dot: Any, root: Any) -> Any:
        if text in ("true", "false"):
            return text == "true"
        if text == "nil":
            return None
        if text == ".":
            return dot
        if text.startswith("$"):
            value, path = root, text[1:]
        elif text.startswith("."):
            value, path = dot, text
        else:
            raise TemplateError(f"function {text!r} is not in the supported subset")
        for name in [p for p in path.split(".") if p]:
            if value is None:
                raise TemplateError(f"nil pointer evaluating {text}")
            if not isinstance(value, Mapping):
                raise TemplateError(f"can't evaluate field {name} in {type(value).__name__}")
            value = value.get(name)
        return value


def _deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def helm_context(
    values: Mapping[str, Any] | None = None, *, release: str = "edx-remote-cache"
) -> dict[str, Any]:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))
    defaults = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    return {
        "Values": _deep_merge(defaults, values or {}),
        "Release": {"Name": release, "Namespace": RELEASE_NAMESPACE, "Service": "Helm", "IsInstall": True},
        "Chart": {"Name": chart["name"], "Version": chart["version"], "AppVersion": chart["appVersion"]},
        "Capabilities": {},
    }


@dataclass
class Rendered:
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
    """Like `helm template`: every non-partial template, split into documents, empty documents dropped."""
    template = Template.load(CHART)
    context = helm_context(values, release=release)
    texts, objects = {}, []
    for name in template.files:
        if name.startswith("_") or name == "NOTES.txt":
            continue
        text = template.render(name, context)
        texts[name] = text
        for doc in yaml.safe_load_all(text):
            if doc:
                objects.append(doc)
    return Rendered(texts, objects, template.render("NOTES.txt", context))


# ----------------------------------------------------------------------------- manifests/ for comparison


def _kustomize_build(directory: Path) -> list[dict[str, Any]]:
    """The kustomize features manifests/ uses: resources (files, dirs) and JSON6902 patches with a target."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text(encoding="utf-8"))
    objects: list[dict[str, Any]] = []
    for entry in kustomization.get("resources", []):
        path = (directory / entry).resolve()
        if path.is_dir():
            objects.extend(_kustomize_build(path))
        else:
            objects.extend(d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d)
    for patch in kustomization.get("patches", []):
        ops = yaml.safe_load((directory / patch["path"]).read_text(encoding="utf-8"))
        target = patch["target"]
        for obj in objects:
            if obj["kind"] == target["kind"] and obj["metadata"]["name"] == target["name"]:
                for op in ops:
                    *parents, last = [p for p in op["path"].split("/") if p]
                    node: Any = obj
                    for part in parents:
                        node = node[int(part)] if isinstance(node, list) else node[part]
                    assert op["op"] in ("replace", "add"), op
                    node[int(last) if isinstance(node, list) else last] = op["value"]
    return objects


def _manifest(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, kind
    return found[0]


CLUSTER_MANIFESTS = _kustomize_build(MANIFESTS)
NAMESPACED_MANIFESTS = _kustomize_build(MANIFESTS / "namespaced")


def _container(deployment: Mapping[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def _rules(role: Mapping[str, Any]) -> list[tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]]:
    return sorted(
        (tuple(sorted(r["apiGroups"])), tuple(sorted(r["resources"])), tuple(sorted(r["verbs"])))
        for r in role["rules"]
    )


def _labels_match(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# ------------------------------------------------------------------------------------- renderer semantics


def _render_string(source: str, values: Mapping[str, Any] | None = None) -> str:
    defines: dict[str, list[Node]] = {}
    nodes = _parse(_lex(source), defines)
    template = Template({"t": nodes}, defines)
    return template.render("t", helm_context(values))


def test_renderer_trims_whitespace_like_go() -> None:
    assert _render_string("a\n  {{- 1 }}\nb") == "a1\nb"
    assert _render_string("a {{ 1 -}}  \n\n b") == "a 1b"
    assert _render_string("{{/* comment */}}x") == "x"
    assert _render_string("x\n{{- /* comment */ -}}\ny") == "xy"


def test_renderer_branches_ranges_and_withs_like_go() -> None:
    source = "{{ if .Values.a }}A{{ else if .Values.b }}B{{ else }}C{{ end }}"
    assert _render_string(source, {"a": 1}) == "A"
    assert _render_string(source, {"a": 0, "b": "x"}) == "B"
    assert _render_string(source, {"a": [], "b": ""}) == "C"
    assert _render_string(
        "{{ range .Values.l }}[{{ . }}|{{ $.Release.Name }}]{{ end }}", {"l": ["x", "y"]}
    ) == ("[x|edx-remote-cache][y|edx-remote-cache]")
    assert _render_string("{{ range .Values.l }}x{{ else }}none{{ end }}", {"l": []}) == "none"
    assert _render_string("{{ with .Values.m }}{{ .k }}{{ end }}", {"m": {"k": "v"}}) == "v"
    assert _render_string("{{ with .Values.m }}{{ .k }}{{ end }}", {"m": {}}) == ""


def test_renderer_functions_match_sprig() -> None:
    assert _render_string('{{ .Values.missing | default "d" }}') == "d"
    assert _render_string('{{ .Values.s | default "d" }}', {"s": "v"}) == "v"
    assert _render_string("{{ .Values.s | quote }}", {"s": 'a"b'}) == '"a\\"b"'
    assert _render_string("{{ .Values.n | quote }}", {"n": 2}) == '"2"'
    assert _render_string("k:\n  {{- toYaml .Values.m | nindent 2 }}", {"m": {"b": 1, "a": [1, 2]}}) == (
        "k:\n  a:\n  - 1\n  - 2\n  b: 1"
    )
    assert _render_string('{{ printf "%s-%s" "a" "b" | trunc 3 | trimSuffix "-" }}') == "a-b"
    assert _render_string('{{ printf "%s-%s" "ab" "c" | trunc 3 | trimSuffix "-" }}') == "ab"
    assert _render_string('{{ if contains "cache" .Release.Name }}y{{ end }}') == "y"
    assert _render_string('{{ .Values.x | default (printf "%s" "p") }}') == "p"
    assert _render_string("{{ .Values.missing }}") == ""
    assert _render_string('{{ join ", " .Values.l }}', {"l": ["a", "b"]}) == "a, b"
    assert _render_string("{{ if and .Values.a (not .Values.b) }}y{{ end }}", {"a": True, "b": False}) == "y"


def test_renderer_refuses_what_it_does_not_model() -> None:
    for source in ("{{ lower .Values.x }}", "{{ $x := 1 }}", '{{ template "x" . }}', "{{ .Values.m.k.j }}"):
        with pytest.raises(TemplateError):
            _render_string(source, {"m": {}})


def test_every_chart_template_stays_inside_the_rendered_subset() -> None:
    template = Template.load(CHART)
    for values in ({}, NON_DEFAULT_VALUES, SERVICE_MONITOR_VALUES):
        context = helm_context(values)
        for name in template.files:
            if not name.startswith("_"):
                template.render(name, context)


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


def test_real_helm_lints_the_chart(tmp_path: Path) -> None:
    """Real Helm (Go templates, `helm lint`) via helm-sdkpy, when installed: it needs Python >= 3.12.

    Lint renders every template with the chart's values.yaml, so each value set gets its own chart copy."""
    helm = pytest.importorskip("helm_sdkpy", reason="helm-sdkpy (real Helm, Python >= 3.12) is not installed")
    import asyncio

    defaults = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    for index, values in enumerate(({}, NON_DEFAULT_VALUES, SERVICE_MONITOR_VALUES)):
        chart = tmp_path / f"chart{index}"
        shutil.copytree(CHART, chart)
        (chart / "values.yaml").write_text(yaml.safe_dump(_deep_merge(defaults, values)), encoding="utf-8")
        result = asyncio.run(helm.Lint(helm.Configuration()).run(str(chart)))
        # Helm's severities: 1 info (e.g. "icon is recommended"), 2 warning, 3 error
        problems = [m for m in result.get("Messages") or [] if m.get("Severity", 0) >= 2]
        assert not result.get("Errors") and not problems, result
