"""Issue 20: a parse error names file, line, column and key path, never the faulty line's text beyond the key.

Each document below is broken on a line that holds a secret. PyYAML's own error text includes a snippet of the
line (``str(exc)``) and, with the pure-Python loader (hosts without libyaml), quotes alias, anchor and tag names
from it; the host prints the message into SSM's invocation history. So: neither the in-process engine, nor the
host program, nor the real read script (bash + the system python3) may say the secret, and each must say where.
"""

from __future__ import annotations

import base64
import binascii
import subprocess
from pathlib import Path

import pytest
import yaml

from edx_remote_cache.domain import hosts as pp
from edx_remote_cache.domain.rewrite import RewriteError, rewrite
from edx_remote_cache.domain.rewrite import locate as locate_module
from edx_remote_cache.domain.rewrite.locate import LocateError, locate

SECRET = "hunter2-s3cr3t-Canary"
TO = ["10.0.1.50:11211"]

# (document, line, key path in the message); the column is checked against the loader's own mark
BROKEN = {
    "unclosed quote": (f"A: 1\nCACHES:\n  default:\n    PASSWORD: '{SECRET}\n", 5, "CACHES.default.PASSWORD"),
    "value with a colon": (f"A: 1\nDB:\n  PASSWORD: {SECRET}: x\n", 3, "DB (after PASSWORD)"),
    "undefined alias": (f"A: 1\nDB:\n  PASSWORD: *{SECRET}\n", 3, "DB.PASSWORD"),
    "undefined tag": (f"A: 1\nDB:\n  PASSWORD: !{SECRET}!x y\n", 3, "DB.PASSWORD"),
    "duplicate anchor": (f"DB:\n  USER: &{SECRET} a\n  PASSWORD: &{SECRET} b\n", 3, "DB.PASSWORD"),
    "bad escape": (f'A: 1\nDB:\n  PASSWORD: "\\q{SECRET}"\n', 3, "DB.PASSWORD"),
    "stray brace": (f"A: 1\nL:\n  - a\n  - {{{SECRET}\n", 5, "L[1].{…}"),
    "list item in a mapping": (f"A: 1\nDB:\n  - PASSWORD: {SECRET}\n  B: 2\n", 4, "DB[0] (after PASSWORD)"),
    "unclosed flow list": (f"SECRET_KEY: '{SECRET}'\nCACHES: [\n", 3, "CACHES[0]"),
    "bad indentation": (f"DB:\n  PASSWORD: x\n {SECRET}\n", 3, "DB (after PASSWORD)"),
}


@pytest.fixture(params=["libyaml", "pure-python"])
def loader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both loaders a host may have: libyaml's CSafeLoader, or PyYAML's SafeLoader where libyaml is missing."""
    if request.param == "pure-python":
        monkeypatch.setattr(locate_module, "_Loader", yaml.SafeLoader)
    return str(request.param)


@pytest.mark.parametrize("case", BROKEN)
def test_a_parse_error_says_where_and_never_the_secret(case: str, loader: str) -> None:
    doc, line, key_path = BROKEN[case]
    with pytest.raises(LocateError) as info:
        locate(doc)
    error = info.value
    assert SECRET not in str(error) and SECRET not in error.problem and SECRET not in error.key_path
    assert error.line == line and error.column, str(error)
    assert f"column {error.column}" in str(error)
    assert error.key_path == key_path and f"key path {key_path}" in str(error), str(error)


def yaml_error(doc: str) -> yaml.YAMLError:
    try:
        list(yaml.compose_all(doc, Loader=yaml.SafeLoader))
    except yaml.YAMLError as exc:
        return exc
    raise AssertionError("the document parses")


def test_pyyaml_itself_would_have_printed_the_secret() -> None:  # the control: what the redaction is for
    assert SECRET in str(yaml_error(BROKEN["unclosed quote"][0]))  # the mark's snippet of the line
    assert SECRET in str(yaml_error(BROKEN["undefined alias"][0]).problem)  # the alias name, quoted
    assert locate_module.redact("expected ',' or '}', but got '<stream end>'") == (
        "expected ',' or '}', but got '<stream end>'"  # token names and indicators say nothing of the file
    )
    assert locate_module.redact(f"found undefined alias '{SECRET}'") == "found undefined alias '…'"


def test_the_rewrite_engine_names_the_key_path_and_not_the_secret() -> None:
    doc, line, key_path = BROKEN["unclosed flow list"]
    with pytest.raises(RewriteError) as info:
        rewrite(doc, to=TO)
    assert info.value.line == line and key_path in str(info.value) and SECRET not in str(info.value)


def _decoded_words(stdout: str) -> list[str]:
    out = [stdout]
    for word in stdout.split():
        try:
            out.append(base64.b64decode(word, validate=True).decode("utf-8", "replace"))
        except (binascii.Error, ValueError):
            continue
    return out


def test_the_real_read_script_reports_file_line_column_and_key_path_and_prints_no_secret(
    tmp_path: Path,
) -> None:
    paths = []
    for n, (doc, _line, _key) in enumerate(BROKEN.values()):
        (tmp_path / f"f{n}.yml").write_text(doc, encoding="utf-8")
        paths.append(str(tmp_path / f"f{n}.yml"))
    read = subprocess.run(
        ["bash", "-c", pp.render_read_script(paths)], capture_output=True, text=True, timeout=60
    )
    assert [w for w in _decoded_words(read.stdout + read.stderr) if SECRET in w] == []
    snapshot = pp.parse_read_output(read.stdout, paths)
    assert [p for p, _ in snapshot.errors] == paths and snapshot.files == ()
    for (path, message), (_doc, line, key_path) in zip(snapshot.errors, BROKEN.values(), strict=True):
        assert message.startswith(f"{path}: line {line}, column ") and f"key path {key_path}" in message, (
            message
        )
