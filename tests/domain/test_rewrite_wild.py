"""Config files as they are in the wild (issue 17): templated values, nested vars, template files, reverts.

Fixtures under tests/fixtures/rewrite are written for this project in the shapes real sites use: ansible role
defaults, per-site group_vars, Salt pillars (rendered and not), and a rendered /edx/etc/lms.yml.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edx_remote_cache.domain.rewrite import RewriteError, restore, revert, rewrite

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "rewrite"
REMOTE = "10.0.0.5:11211"
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("name", "changed", "skipped"),
    [
        (
            "role_defaults.yml",
            ["DISCUSSIONS_MEMCACHE", "DISCUSSIONS_SESSION_MEMCACHE"],
            [("DISCUSSIONS_SESSION_MEMCACHE[1]", 9), ("DISCUSSIONS_SERVICE_CONFIG.CACHES", 19)],
        ),
        (
            "site_vars.yml",
            ["EDXAPP_MEMCACHE", "EDXAPP_LMS_ENV_EXTRA.CACHES.default"],
            [
                ("EDXAPP_LMS_ENV_EXTRA.CACHES.default.LOCATION[1]", 14),
                ("EDXAPP_LMS_ENV_EXTRA.CACHES.sessions.BACKEND", 16),
            ],
        ),
        (
            "pillar.sls",
            [
                "edx.ansible_vars.EDXAPP_MEMCACHE",
                "edx.ansible_vars.Edx_Notes_Memcache",
                "edx.ansible_vars.FORUM.forum_memcache",
                "edx.hosts[0].vars.XQUEUE_MEMCACHE",
            ],
            [],
        ),
        ("edx_etc_lms.yml", ["CACHES.celery", "CACHES.default", "CACHES.staticfiles"], []),
    ],
)
def test_wild_files_move_what_can_move_and_name_what_is_skipped(
    name: str, changed: list[str], skipped: list[tuple[str, int]]
) -> None:
    doc = fixture(name)
    result = rewrite(doc, to=[REMOTE])
    assert [c.alias for c in result.changes] == changed
    assert [(s.path, s.line) for s in result.skipped] == skipped
    assert all("templated" in s.reason for s in result.skipped)
    for change in result.changes:  # templated and remote entries stay, in place
        assert [e for e in change.new if e != REMOTE] == [
            e for e in change.old if e not in ("localhost:11211", "127.0.0.1:11211")
        ]
    assert restore(result.text, result.splices[::-1]).text == doc


def test_templated_caches_leaves_the_jinja_bytes_alone() -> None:
    doc = fixture("role_defaults.yml")
    result = rewrite(doc, to=[REMOTE])
    for line in ('  CACHES: "{{ discussions_caches }}"', '  - "{{ DISCUSSIONS_EXTRA_MEMCACHE_HOST }}:11211"'):
        assert line in result.text
    assert f"DISCUSSIONS_MEMCACHE: [ '{REMOTE}' ]" in result.text


@pytest.mark.parametrize(
    ("name", "line", "column"), [("pillar_template.sls", 2, 1), ("role_template.yml", 3, 1)]
)
def test_template_files_are_named_as_such(name: str, line: int, column: int) -> None:
    with pytest.raises(RewriteError) as info:
        rewrite(fixture(name), to=[REMOTE])
    message = str(info.value)
    assert info.value.line == line
    assert "Jinja/Salt template" in message and f"column {column}" in message and "/edx/etc" in message


@pytest.mark.parametrize(
    ("doc", "mark"),
    [
        ("a: 1\n{# a comment #}\nb: 2\n", "{#"),
        ("a: 1\n{{ macro() }}\n", "{{"),
        ("edx:\n  - {{ item }}: 1\n  -\n", None),  # parses? then it is plain YAML and no template error
    ],
)
def test_template_marks_only_when_the_yaml_does_not_parse(doc: str, mark: str | None) -> None:
    if mark is None:
        rewrite(doc, to=[REMOTE])
        return
    with pytest.raises(RewriteError, match=f"'{mark}' at column"):
        rewrite(doc, to=[REMOTE])


def test_plain_malformed_yaml_is_not_called_a_template() -> None:
    with pytest.raises(RewriteError) as info:
        rewrite("a: [\n", to=[REMOTE])
    assert "malformed YAML" in str(info.value) and "template" not in str(info.value)


def test_a_scalar_caches_that_is_not_templated_is_still_refused_without_quoting_it() -> None:
    with pytest.raises(RewriteError) as info:
        rewrite("CACHES: s3cr3t-pasted-here\n", to=[REMOTE])
    assert "CACHES must be a mapping" in str(info.value) and "s3cr3t" not in str(info.value)


def test_exact_restore_keeps_spelling_shape_and_servers_it_never_wrote() -> None:
    doc = fixture("edx_etc_lms.yml")
    pushed = rewrite(doc, to=[REMOTE, "10.0.0.6:11211"])
    back = restore(pushed.text, pushed.splices[::-1])
    assert back.text == doc
    assert "edx-sessions.abc123.0002.use1.cache.amazonaws.com:11211" in pushed.text
    # plain revert() would drop cache-1 and both ElastiCache nodes; restore keeps them
    assert "cache-1.example.com" not in revert(pushed.text).text


def test_restore_refuses_a_value_changed_since_it_was_written() -> None:
    doc = fixture("edx_etc_lms.yml")
    pushed = rewrite(doc, to=[REMOTE])
    edited = pushed.text.replace("LOCATION: '10.0.0.5:11211'", "LOCATION: 'cache-9.example.com:11211'")
    with pytest.raises(RewriteError, match=r"CACHES.staticfiles has changed since"):
        restore(edited, pushed.splices[::-1])
    assert restore(doc, pushed.splices).text == doc  # already reverted: nothing to do


# --------------------------------------------------------------------------------- nested *_MEMCACHE keys

KEYS = st.from_regex(r"[a-z][a-z_]{0,8}", fullmatch=True).filter(lambda k: not k.endswith("_memcache"))
ENTRY = st.sampled_from(["localhost:11211", "127.0.0.1:11211", "cache-1.example.com:11211", "10.0.0.9:11211"])


@st.composite
def nested(draw: st.DrawFn) -> tuple[Any, list[str | int], list[str]]:
    """(document, path to the var, its entries): the var sits under random mappings and lists."""
    name = draw(st.sampled_from(["EDXAPP_MEMCACHE", "edxapp_memcache", "Forum_Memcache", "X_MEMCACHE"]))
    entries = draw(st.lists(ENTRY, min_size=1, max_size=4))
    value: Any = {name: entries, draw(KEYS): draw(st.integers())}
    path: list[str | int] = [name]
    for _ in range(draw(st.integers(0, 5))):
        if draw(st.booleans()):
            key = draw(KEYS)
            value = {key: value, "other_" + key: "keep me"}
            path.insert(0, key)
        else:
            value = ["before", value]
            path.insert(0, 1)
    return value, path, entries


@SETTINGS
@given(nested(), st.sampled_from([2, 4]), st.booleans())
def test_memcache_vars_at_any_depth_are_moved_and_named(
    case: tuple[Any, list[str | int], list[str]], indent: int, flow: bool
) -> None:
    data, path, entries = case
    doc = yaml.safe_dump(data, indent=indent, default_flow_style=flow, sort_keys=False)
    result = rewrite(doc, to=[REMOTE])
    expected: list[str] = []
    for entry in entries:
        for value in [REMOTE] if entry in ("localhost:11211", "127.0.0.1:11211") else [entry]:
            if value not in expected:
                expected.append(value)
    name = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
    if not {"localhost:11211", "127.0.0.1:11211"} & set(entries):
        assert not result.changed
        return
    assert [c.alias for c in result.changes] == [name]
    loaded = yaml.safe_load(result.text)
    inner: Any = loaded
    for step in path:
        inner = inner[step]
    assert inner == expected
    inner_old: Any = data  # nothing else moved
    for step in path[:-1]:
        inner_old = inner_old[step]
    inner_old[path[-1]] = expected
    assert loaded == data
    assert restore(result.text, result.splices[::-1]).text == doc


# ------------------------------------------------------------------ revert o rewrite is the identity

MIXED = st.sampled_from(
    [
        "localhost:11211",
        "127.0.0.1:11211",
        "[::1]:11211",
        "cache-1.example.com:11211",
        "edx.abc123.0001.use1.cache.amazonaws.com:11211",
        "{{ EXTRA_MEMCACHE }}",
        "{{ host }}:11211",
    ]
)


@st.composite
def mixed_doc(draw: st.DrawFn) -> str:
    """CACHES and *_MEMCACHE values mixing local, remote, templated and duplicated entries, in every shape."""
    lines = ["# generated\n", "CACHES:\n"]
    for i in range(draw(st.integers(1, 3))):
        entries = draw(st.lists(MIXED, min_size=1, max_size=4))
        quote = draw(st.sampled_from(["", "'", '"']))
        items = [f"{quote}{e}{quote}" if quote or e[0].isalnum() else f'"{e}"' for e in entries]
        shape = draw(st.sampled_from(["block", "flow", "string"]))
        lines.append(f"  c{i}:\n    BACKEND: django.core.cache.backends.memcached.PyMemcacheCache\n")
        if shape == "block":
            lines.append("    LOCATION:\n" + "".join(f"    - {item}\n" for item in items))
        elif shape == "flow":
            lines.append(f"    LOCATION: [{', '.join(items)}]\n")
        else:
            lines.append(f"    LOCATION: '{';'.join(entries)}'\n")
    nested = draw(st.lists(MIXED, min_size=1, max_size=3))
    lines.append("edx:\n  vars:\n    Forum_Memcache:\n" + "".join(f'    - "{e}"\n' for e in nested))
    return "".join(lines)


@SETTINGS
@given(mixed_doc(), st.booleans())
def test_restore_after_rewrite_is_the_identity(doc: str, with_from: bool) -> None:
    replace = ["cache-1.example.com:11211"] if with_from else []
    once = rewrite(doc, to=[REMOTE, "10.0.0.6:11211"], replace=replace)
    twice = rewrite(once.text, to=["10.0.0.7:11211"], replace=[REMOTE, "10.0.0.6:11211"])
    assert restore(twice.text, [*twice.splices[::-1], *once.splices[::-1]]).text == doc
    assert restore(once.text, once.splices[::-1]).text == doc
    for change in once.changes:  # what was not ours to move is still there, in order
        kept = [e for e in change.old if "{" in e or (e.startswith(("cache-1", "edx.")) and not with_from)]
        assert [e for e in change.new if e in kept] == list(dict.fromkeys(kept))
