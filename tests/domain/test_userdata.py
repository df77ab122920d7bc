"""Rendered memcached config and user-data: safe defaults, allow-listed extras, parseable by the sandbox."""

from __future__ import annotations

import subprocess

import pytest

from edx_remote_cache.domain.userdata import (
    USER_DATA_LIMIT,
    ExtraArgError,
    MemcachedSettings,
    extract_memcached_conf,
    memcached_refusals,
    parse_extra_arg,
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


# memcached's own start-up checks against what the allow-list lets through: the spec refuses up front exactly
# what the real binary (the one the sandbox's cache hosts run) would refuse at boot.
@pytest.mark.parametrize(
    ("memory_mib", "extra"),
    [
        (64, ("-f 1.0",)),
        (64, ("-f 1.25",)),
        (64, ("-I 32m",)),
        (64, ("-I 33m",)),
        (64, ("-I 64m",)),
        (1024, ("-I 64m",)),
        (64, ("-I 512k",)),
        (64, ("-I 511k",)),
        (64, ("-I 1k",)),
        (64, ("-n 1048576", "-t 64", "-B auto", "-o modern")),
    ],
)
def test_the_spec_refuses_what_memcached_itself_refuses(memory_mib: int, extra: tuple[str, ...]) -> None:
    settings = MemcachedSettings(memory_mib=memory_mib, extra_args=tuple(parse_extra_arg(a) for a in extra))
    argv = ["memcached", "-u", "nobody", "-l", "127.0.0.1", "-p", "0", "-U", "0", "-m", str(memory_mib)]
    argv += [word for a in extra for word in a.split(" ")]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=1)
        refused, said = True, done.stderr + done.stdout
    except subprocess.TimeoutExpired:  # still running after a second: it started
        refused, said = False, ""
    ours = memcached_refusals(settings)
    assert bool(ours) == refused, (
        f"memcached {'refused' if refused else 'started'} ({said.strip()}); we say {ours}"
    )


def test_validate_names_the_field_and_the_fix() -> None:
    from edx_remote_cache.domain.spec import SpecError, parse_spec

    spec = {
        "region": "us-east-1",
        "instance": {"subnetId": "subnet-0123456789abcdef0", "instanceType": "t3.micro"},
        "memcached": {"memoryMiB": 64, "extraArgs": ["-I 64m"]},
        "network": {"allowFromCidrs": ["10.0.0.0/16"]},
        "openedx": {"hosts": ["i-0ed00000000000001"]},
    }
    with pytest.raises(SpecError) as caught:
        parse_spec(spec)
    assert "spec.memcached.extraArgs" in str(caught.value) and "raise memoryMiB or lower -I" in str(
        caught.value
    )
