"""Rendered memcached config and user-data: safe defaults, allow-listed extras, parseable by the sandbox."""

from __future__ import annotations

import subprocess

import pytest

from edx_remote_cache.domain.userdata import (
    USER_DATA_LIMIT,
    ExtraArgError,
    MemcachedSettings,
    extract_memcached_conf,
    parse_extra_args,
    parse_memcached_conf,
    render_memcached_conf,
    render_reconfigure_script,
    render_user_data,
)

SETTINGS = MemcachedSettings(port=11311, memory_mib=3072, max_connections=2048, extra_args=(("-t", "4"),))


def test_conf_listens_on_private_ip_only_with_udp_off() -> None:
    options = dict(parse_memcached_conf(render_memcached_conf(SETTINGS, listen="172.31.5.10")))
    assert options["-l"] == "172.31.5.10"
    assert options["-U"] == "0"
    assert (options["-p"], options["-m"], options["-c"], options["-t"]) == ("11311", "3072", "2048", "4")
    assert "0.0.0.0" not in render_memcached_conf(SETTINGS)


def test_user_data_carries_the_conf_and_reads_ip_from_imdsv2() -> None:
    user_data = render_user_data(SETTINGS)
    assert user_data.startswith("#!/bin/bash\n")
    assert extract_memcached_conf(user_data) == render_memcached_conf(SETTINGS)
    assert "X-aws-ec2-metadata-token" in user_data and "latest/api/token" in user_data
    assert "apt-get install -y -q memcached libmemcached-tools" in user_data
    assert len(user_data.encode()) < USER_DATA_LIMIT
    subprocess.run(["bash", "-n"], input=user_data, text=True, check=True)  # syntactically valid shell


def test_reconfigure_script_carries_the_same_conf() -> None:
    script = render_reconfigure_script(SETTINGS)
    assert extract_memcached_conf(script) == render_memcached_conf(SETTINGS)
    assert script.rstrip().endswith("systemctl restart memcached")
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)


def test_version_pin_is_quoted() -> None:
    user_data = render_user_data(MemcachedSettings(version="1.5.22-2ubuntu0.2"))
    assert "memcached=1.5.22-2ubuntu0.2 libmemcached-tools" in user_data


@pytest.mark.parametrize(
    ("items", "fragment"),
    [
        (["-t 0"], "threads"),
        (["-t 4; rm -rf /"], "one space"),
        (["-o $(reboot)"], "-o option"),
        (["-l 0.0.0.0"], "set by the operator"),
        (["-U 11211"], "set by the operator"),
        (["-I 512m"], "max item size"),
        (["-B gopher"], "ascii, binary or auto"),
        (["--threads=4"], "one space"),
    ],
)
def test_extra_args_outside_allow_list_are_refused(items: list[str], fragment: str) -> None:
    with pytest.raises(ExtraArgError, match=r"^\[0\] ") as info:
        parse_extra_args(items)
    assert fragment in str(info.value)


def test_allowed_extra_args_parse() -> None:
    assert parse_extra_args(["-t 4", "-o modern", "-I 2m", "-f 1.25", "-B ascii"]) == [
        ("-t", "4"),
        ("-o", "modern"),
        ("-I", "2m"),
        ("-f", "1.25"),
        ("-B", "ascii"),
    ]
