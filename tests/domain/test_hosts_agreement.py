"""Issue 20, "one engine, two places": the host's reader and checker agree with the engine byte for byte.

The host runs ``locate.py`` + ``hostside.py`` (sent verbatim); the operator plans from what it printed and sends
splices. Whatever the file, host read -> operator plan -> host splice must give exactly the bytes the in-process
engine (:func:`edx_remote_cache.domain.rewrite.rewrite`) gives, and the host's re-parse check must accept it.
The fixtures also go through the real scripts (bash + the system python3), as on an Open edX host.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import io
import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import edx_remote_cache
from edx_remote_cache.domain import hosts as pp
from edx_remote_cache.domain.hosts import hostside
from edx_remote_cache.domain.rewrite import rewrite
from edx_remote_cache.domain.rewrite.locate import locate

FIXTURES = sorted((Path(edx_remote_cache.__file__).parent / "data" / "edx").glob("*.yml"))
TO = ["10.0.1.50:11211"]


def _snapshot(path: str, data: bytes) -> pp.HostSnapshot:
    """What the host's reader prints for ``data`` (its read function, run here on a temporary copy)."""
    with tempfile.TemporaryDirectory() as folder:
        file = Path(folder) / Path(path).name
        file.write_bytes(data)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            hostside.erc_read({"paths": [str(file)], "max_bytes": pp.MAX_FILE_BYTES})
    return pp.parse_read_output(f"ERC-BEGIN 1\n{out.getvalue()}ERC-END\n", [str(file)])


def _through_the_host(path: str, data: bytes) -> bytes:
    plan = pp.plan_push(_snapshot(path, data), endpoints=TO, restart_for=lambda _p: ())
    if not plan.changes:
        return data
    (change,) = plan.changes
    new = pp.apply_splices(data, change.splices)
    hostside.erc_check(data, new, [s.to_wire() for s in change.splices])  # the host's own re-parse check
    return new


# Calls that parse on Python 3.8 but fail there at run time (Ubuntu 20.04's python3 is 3.8): keyword or method
NEWER_THAN_3_8 = {"strict": "zip(strict=) is 3.10", "removeprefix": "3.9", "removesuffix": "3.9",
                  "pairwise": "3.10", "is_relative_to": "3.9", "readlink": "Path.readlink is 3.9"}  # fmt: skip


def test_the_host_program_is_python_3_8_source_and_fits_a_command() -> None:
    program = pp.host_program()
    tree = ast.parse(program, feature_version=(3, 8))
    newer = [
        f"line {node.lineno}: {name} ({NEWER_THAN_3_8[name]})"
        for node in ast.walk(tree)
        for name in ([k.arg for k in node.keywords if k.arg] if isinstance(node, ast.Call) else [])
        + ([node.attr] if isinstance(node, ast.Attribute) else [])
        if name in NEWER_THAN_3_8
    ]
    assert newer == [], "the host program runs on Python 3.8: " + "; ".join(newer)
    assert not any(line.endswith("# erc: not on the host") for line in program.splitlines())
    assert len(pp.render_read_script(["/edx/etc/lms.yml"] * 40)) < pp.MAX_SCRIPT_CHARS


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda p: p.name)
def test_fixtures_agree_in_process(fixture: Path) -> None:
    data = fixture.read_bytes()
    assert _through_the_host(str(fixture), data) == rewrite(data.decode(), to=TO).text.encode()


def test_fixtures_agree_through_the_real_scripts(tmp_path: Path) -> None:
    paths = []
    for fixture in FIXTURES:
        (tmp_path / fixture.name).write_bytes(fixture.read_bytes())
        paths.append(str(tmp_path / fixture.name))
    read = subprocess.run(
        ["bash", "-c", pp.render_read_script(paths)], capture_output=True, text=True, timeout=60
    )
    assert len(read.stdout) < pp.SSM_STDOUT_LIMIT // 2
    snapshot = pp.parse_read_output(read.stdout, paths)
    for file, fixture in zip(snapshot.files, FIXTURES, strict=True):
        text = fixture.read_text()
        expected = [t.source for t in locate(text).targets]
        assert [t.source for t in file.targets] == expected
        data = fixture.read_bytes()
        assert [data[t.start : t.end].decode() for t in file.targets] == expected  # byte ranges
    plan = pp.plan_push(snapshot, endpoints=TO, restart_for=lambda _p: ())
    script = pp.render_apply_script(plan, timestamp="20260101T000000Z")
    applied = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    outcome = pp.parse_apply_output(applied.stdout, plan, exit_code=applied.returncode)
    assert outcome.state == "Configured", (outcome.message, applied.stderr)
    for fixture in FIXTURES:
        written = (tmp_path / fixture.name).read_bytes()
        assert written == rewrite(fixture.read_text(), to=TO).text.encode()
        assert dict(outcome.new_sha256)[str(tmp_path / fixture.name)] == hashlib.sha256(written).hexdigest()


ENTRY = st.sampled_from(
    ["localhost:11211", "127.0.0.1:11211", "cache-1.example.com:11211", "10.0.0.9:11211", "[::1]:11211"]
)
KEY = st.from_regex(r"[A-Z][A-Z_]{0,8}", fullmatch=True)


@st.composite
def location(draw: st.DrawFn, indent: str) -> str:
    entries = draw(st.lists(ENTRY, min_size=1, max_size=3))
    shape = draw(st.sampled_from(["plain", "quoted", "flow", "block"]))
    comment = draw(st.sampled_from(["", "  # the cache"]))
    if shape == "plain" and not entries[0].startswith("["):  # a plain "[" would start a flow list
        return f" {';'.join(entries)}{comment}\n"
    if shape in ("plain", "quoted"):
        return f" '{';'.join(entries)}'{comment}\n"
    if shape == "flow":
        return f" [{', '.join(repr(e) for e in entries)}]{comment}\n"
    return "\n" + "".join(f"{indent}- {repr(e) if e.startswith('[') else e}{comment}\n" for e in entries)


@st.composite
def document(draw: st.DrawFn) -> str:
    parts = [f"{draw(KEY)}_SECRET: '{draw(st.text(alphabet='abc123', max_size=8))}'\n", "CACHES:\n"]
    for alias in draw(
        st.lists(st.from_regex(r"[a-z]{1,6}", fullmatch=True), min_size=1, max_size=3, unique=True)
    ):
        parts.append(f"  {alias}:\n    BACKEND: django.core.cache.backends.memcached.PyMemcacheCache\n")
        parts.append(f"    LOCATION:{draw(location('      '))}")
    depth = draw(st.integers(0, 2))
    prefix = "".join(f"{'  ' * d}level{d}:\n" for d in range(depth))
    parts.append(f"{prefix}{'  ' * depth}EDXAPP_MEMCACHE:{draw(location('  ' * depth + '  '))}")
    if draw(st.booleans()):
        parts.append("OTHER_MEMCACHE: '{{ EDXAPP_MEMCACHE }}'\n")
    return "".join(parts)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document(), st.booleans())
def test_generated_documents_agree(text: str, bom: bool) -> None:
    text = ("\ufeff" if bom else "") + text
    assert _through_the_host("/edx/etc/lms.yml", text.encode()) == rewrite(text, to=TO).text.encode()
