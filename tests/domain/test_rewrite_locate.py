"""locate + render: the contract the host push relies on (locate runs on the host, render in the operator)."""

from __future__ import annotations

import ast
import importlib.resources
import subprocess
import sys
from pathlib import Path

import pytest

from edx_remote_cache.domain.rewrite import locate as locate_module
from edx_remote_cache.domain.rewrite import rewrite
from edx_remote_cache.domain.rewrite.locate import locate
from edx_remote_cache.domain.rewrite.render import render

REMOTE = "172.31.5.10:11211"
MEMCACHED = "django.core.cache.backends.memcached.PyMemcacheCache"
LOCATE_FILE = Path(locate_module.__file__ or "")
FIXTURES = [
    "lms.yml",
    "studio.yml",
    "ecommerce.yml",
    "insights.yml",
    "lms_lilac_pymemcache.yml",
    "server-vars.yml",
]


def fixture(name: str) -> str:
    return (importlib.resources.files("edx_remote_cache") / "data" / "edx" / name).read_text(encoding="utf-8")


def test_locate_is_self_contained_python_38() -> None:
    """The host script embeds the file verbatim: only stdlib + PyYAML, and syntax Python 3.8 can compile."""
    source = LOCATE_FILE.read_text(encoding="utf-8")
    tree = ast.parse(source, feature_version=(3, 8))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported - set(sys.stdlib_module_names) == {"yaml"}
    newer = {"pairwise", "removeprefix", "removesuffix", "cache", "batched"}  # 3.9+ library names
    assert not [n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr in newer]
    assert not [n.arg for n in ast.walk(tree) if isinstance(n, ast.keyword) and n.arg == "strict"]


def test_locate_runs_standalone_without_libyaml(tmp_path: Path) -> None:
    """Run the file alone, as the host does, on a PyYAML without CSafeLoader: same spans as here."""
    doc = fixture("server-vars.yml")
    (tmp_path / "doc.yml").write_text(doc, encoding="utf-8")
    script = (
        "import sys, yaml\n"
        "del yaml.CSafeLoader\n"
        f"ns = {{}}\nexec(compile(open({str(LOCATE_FILE)!r}).read(), 'locate', 'exec'), ns)\n"
        f"found = ns['locate'](open({str(tmp_path / 'doc.yml')!r}).read())\n"
        "print(repr([(t.paths, t.start, t.end, t.entries) for t in found.targets]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    here = [(t.paths, t.start, t.end, t.entries) for t in locate(doc).targets]
    assert out.stdout.strip() == repr(here) and here


@pytest.mark.parametrize("name", FIXTURES)
def test_rendering_each_span_from_its_own_text_gives_the_engines_result(name: str) -> None:
    """What the operator does with the host's output: render each span alone, splice by offsets."""
    doc = fixture(name)
    found = locate(doc)
    expected = rewrite(doc, to=[REMOTE, "172.31.5.11:11211"])
    text = doc
    for target in sorted(found.targets, key=lambda t: t.start, reverse=True):
        assert doc[target.start : target.end] == target.source
        plan = [
            ([REMOTE, "172.31.5.11:11211"] if e in ("localhost:11211", "127.0.0.1:11211") else [e])
            for e in target.entries
        ]
        if plan == [[e] for e in target.entries]:
            continue
        text = text[: target.start] + render(target.source, plan) + text[target.end :]
    assert text == expected.text


def test_block_list_span_is_whole_lines_and_anchor_stays_outside() -> None:
    doc = (
        "memcache_servers: &servers  # shared\n"
        "  # the pool\n"
        "  - localhost:11211   # first\n"
        "  - 10.0.0.9:11211\n"
        "CACHES:\n"
        f"  default: {{BACKEND: {MEMCACHED}, LOCATION: *servers}}\n"
    )
    (target,) = locate(doc).targets
    assert target.source == "  - localhost:11211   # first\n  - 10.0.0.9:11211\n"
    assert (target.shape, target.line, target.column, target.paths) == ("block", 3, 0, ("CACHES.default",))
    assert (
        render(target.source, [[REMOTE, "10.0.0.9:11211"], []])
        == f"  - {REMOTE}   # first\n  - 10.0.0.9:11211\n"
    )


def test_shared_node_is_one_target_with_every_path_in_key_order() -> None:
    doc = (
        "CACHES:\n"
        f"  default: &c {{BACKEND: {MEMCACHED}, LOCATION: &loc [127.0.0.1:11211]}}\n"
        f"  general: {{BACKEND: {MEMCACHED}, LOCATION: *loc}}\n"
        "EDXAPP_MEMCACHE: *loc\n"
    )
    (target,) = locate(doc).targets
    assert target.paths == ("CACHES.default", "CACHES.general", "EDXAPP_MEMCACHE")
    assert target.key_lines == (2, 3, 4)
    assert target.source == "&loc [127.0.0.1:11211]"
    assert render(target.source, [[REMOTE]]) == f"&loc [{REMOTE}]"
