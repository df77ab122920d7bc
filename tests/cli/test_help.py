"""Every production subcommand explains itself in --help: what it does, defaults, environment, exit codes."""

from __future__ import annotations

import importlib.metadata
import re

import pytest

from edx_remote_cache.cli.main import main


def _help(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--help"])
    assert exited.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", ["run", "validate", "rewrite", "probe"])
def test_help_has_a_description_defaults_environment_and_exit_codes(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    text = _help(capsys, command)
    _usage, _, rest = text.partition("\n\n")
    assert rest.strip() and not rest.lstrip().startswith(("positional", "options")), "a description first"
    assert "environment variables:" in text and "exit codes:" in text
    assert re.search(r"^  0 +\S", text, re.MULTILINE), "exit code 0 explained"
    assert "``" not in text and ":func:" not in text, "no RST markup in a terminal"
    if command != "validate":
        assert "(default: " in text


def test_run_help_names_the_variables_it_reads(capsys: pytest.CaptureFixture[str]) -> None:
    text = _help(capsys, "run")
    for variable in ("KUBECONFIG", "EDX_REMOTE_CACHE_PEERING", "EDX_REMOTE_CACHE_CRD", "AWS_REGION"):
        assert variable in text
    assert "--log-format {text,json}" in text and "(default: text)" in text


def test_version_is_the_installed_distributions(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert (
        capsys.readouterr().out.strip()
        == f"edx-remote-cache {importlib.metadata.version('edx-remote-cache')}"
    )


def test_json_log_format_writes_one_json_object_per_line() -> None:
    """kopf's JSON formatter, as `run --log-format json` configures it (checked without starting kopf)."""
    import json
    import logging

    import kopf

    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    try:
        kopf.configure(log_format=kopf.LogFormat.JSON)
        handler = root.handlers[-1]
        record = logging.LogRecord(
            "edx_remote_cache", logging.INFO, __file__, 1, "cache host %s ready", ("i-1",), None
        )
        line = handler.format(record)
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
    data = json.loads(line)
    assert data["message"] == "cache host i-1 ready" and data["severity"] == "info"
