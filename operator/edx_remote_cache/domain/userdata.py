"""Pure rendering of the cache host's memcached config and its cloud-init user-data.

The seed listened on 0.0.0.0; we listen on the instance's private IP only, with UDP off (-U 0: the 2018
amplification attacks). The private IP is only known at boot, so the script reads it from IMDSv2.
The sandbox starts a real memcached from the very config this module renders, so a bad flag fails a test.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

CONF_PATH = "/etc/memcached.conf"
CONF_BEGIN = "# >>> edx-remote-cache memcached.conf >>>"
CONF_END = "# <<< edx-remote-cache memcached.conf <<<"
PRIVATE_IP_PLACEHOLDER = "@PRIVATE_IP@"
USER_DATA_LIMIT = 16 * 1024  # EC2 rejects larger user-data

_O_OPTIONS = re.compile(
    r"^(modern|slab_reassign|lru_crawler|lru_maintainer|no_inline_ascii_resp|no_lru_crawler|"
    r"no_lru_maintainer|slab_automove=[0-2]|hash_algorithm=(murmur3|jenkins|xxh3)|"
    r"idle_timeout=[0-9]{1,6}|watcher_logbuf_size=[0-9]{1,6}|worker_logbuf_size=[0-9]{1,6})$"
)


# flag -> (value pattern, human description of what is allowed)
EXTRA_ARG_RULES: dict[str, tuple[re.Pattern[str], str, tuple[int, int] | None]] = {
    "-t": (re.compile(r"^[0-9]{1,3}$"), "threads, an integer 1-64", (1, 64)),
    "-R": (re.compile(r"^[0-9]{1,4}$"), "requests per event, an integer 1-1000", (1, 1000)),
    "-B": (re.compile(r"^(ascii|binary|auto)$"), "protocol: ascii, binary or auto", None),
    "-I": (re.compile(r"^[0-9]{1,4}[km]$"), "max item size like 1m or 512k (1k-128m)", None),
    "-f": (re.compile(r"^[1-3]\.[0-9]{1,3}$"), "growth factor like 1.25", None),
    "-n": (re.compile(r"^[0-9]{1,7}$"), "minimum item space in bytes, 1-1048576", (1, 1048576)),
    "-o": (_O_OPTIONS, "an -o option such as modern, slab_reassign, slab_automove=1", None),
}
# Flags the operator owns: allowing them in extraArgs would override what the spec and security rules set.
RESERVED_FLAGS = {"-l", "-p", "-U", "-m", "-c", "-u", "-d", "-P", "-S", "-s", "-a", "-Z"}


class ExtraArgError(ValueError):
    """An extraArgs item outside the allow-list; the message says what is allowed."""


def parse_extra_arg(item: str) -> tuple[str, str]:
    """Validate one `extraArgs` item ("FLAG VALUE", e.g. "-t 4") against the allow-list."""
    parts = item.split(" ")
    if len(parts) != 2 or not all(parts):
        raise ExtraArgError(f"{item!r}: write one option and its value separated by one space, e.g. '-t 4'")
    flag, value = parts
    if flag in RESERVED_FLAGS:
        raise ExtraArgError(f"{flag} is set by the operator from the spec; remove it from extraArgs")
    rule = EXTRA_ARG_RULES.get(flag)
    if rule is None:
        allowed = ", ".join(sorted(EXTRA_ARG_RULES))
        raise ExtraArgError(f"{flag} is not an allowed memcached option; allowed: {allowed}")
    pattern, description, bounds = rule
    if not pattern.match(value) or (bounds and not bounds[0] <= int(value) <= bounds[1]):
        raise ExtraArgError(f"{flag} {value!r}: expected {description}")
    if flag == "-I":
        size = _item_size_bytes(value)
        if not 1024 <= size <= 128 * 1024 * 1024:
            raise ExtraArgError(f"-I {value!r}: expected {description}")
    return flag, value


def parse_extra_args(items: Sequence[str]) -> list[tuple[str, str]]:
    """Validate every `extraArgs` item; the error names the item's index."""
    parsed = []
    for index, item in enumerate(items):
        try:
            parsed.append(parse_extra_arg(item))
        except ExtraArgError as exc:
            raise ExtraArgError(f"[{index}] {exc}") from None
    return parsed


@dataclass(frozen=True)
class MemcachedSettings:
    """What the cache host's memcached runs with; derived from spec.memcached."""

    port: int = 11211
    memory_mib: int = 64
    max_connections: int = 1024
    extra_args: tuple[tuple[str, str], ...] = ()
    version: str | None = None


# memcached's own defaults that its start-up checks compare -I against (1.6: slab_chunk_max = 512 KiB)
SLAB_CHUNK_MAX_BYTES = 512 * 1024


def _item_size_bytes(value: str) -> int:
    return int(value[:-1]) * (1024 if value.endswith("k") else 1024 * 1024)


def memcached_refusals(settings: MemcachedSettings) -> list[str]:
    """What memcached itself would refuse to start with, although each flag passed the allow-list.

    Known before launch, so the spec is refused up front: launched, the cache host's memcached fails at boot,
    and a replacement from the same spec fails the same way. Checked against a real memcached binary in
    tests/domain/test_userdata.py (its messages are quoted).
    """
    out = []
    args = dict(settings.extra_args)
    if "-f" in args and float(args["-f"]) <= 1.0:
        out.append(f"-f {args['-f']}: memcached says 'Factor must be greater than 1'")
    if "-I" in args:
        size = _item_size_bytes(args["-I"])
        if size * 2 > settings.memory_mib * 1024 * 1024:
            out.append(
                f"-I {args['-I']}: memcached says 'Cannot set item size limit higher than 1/2 of memory max' "
                f"(memory is {settings.memory_mib} MiB: raise memoryMiB or lower -I)"
            )
        if size < SLAB_CHUNK_MAX_BYTES:
            out.append(
                f"-I {args['-I']}: memcached refuses an item size limit below its 512k slab chunk size"
            )
    return out


def render_memcached_conf(settings: MemcachedSettings, *, listen: str = PRIVATE_IP_PLACEHOLDER) -> str:
    """The /etc/memcached.conf body (Debian format: one option per line)."""
    lines = [
        "# Managed by edx-remote-cache: edits are overwritten on the next reconcile.",
        "-u memcache",
        f"-l {listen}",
        f"-p {settings.port}",
        "-U 0",
        f"-m {settings.memory_mib}",
        f"-c {settings.max_connections}",
        "-P /var/run/memcached/memcached.pid",
    ]
    lines += [f"{flag} {value}" for flag, value in settings.extra_args]
    return "\n".join(lines) + "\n"


def _config_block(settings: MemcachedSettings) -> str:
    conf = render_memcached_conf(settings)
    return (
        "TOKEN=$(curl -sS -X PUT http://169.254.169.254/latest/api/token "
        "-H 'X-aws-ec2-metadata-token-ttl-seconds: 300')\n"
        'PRIVATE_IP=$(curl -sS -H "X-aws-ec2-metadata-token: ${TOKEN}" '
        "http://169.254.169.254/latest/meta-data/local-ipv4)\n"
        "case \"${PRIVATE_IP}\" in *[!0-9.]*|'') echo 'no private IPv4 from IMDS' >&2; exit 1;; esac\n"
        f"cat > {CONF_PATH}.new <<'EDX_REMOTE_CACHE_CONF'\n"
        f"{CONF_BEGIN}\n{conf}{CONF_END}\n"
        "EDX_REMOTE_CACHE_CONF\n"
        f'sed -i "s/{PRIVATE_IP_PLACEHOLDER}/${{PRIVATE_IP}}/" {CONF_PATH}.new\n'
        f"mv {CONF_PATH}.new {CONF_PATH}\n"
    )


def render_user_data(settings: MemcachedSettings) -> str:
    """cloud-init user-data (a shell script) that installs and configures memcached at first boot."""
    package = "memcached" if not settings.version else f"memcached={shlex.quote(settings.version)}"
    script = (
        "#!/bin/bash\n"
        "# edx-remote-cache: memcached cache host bootstrap\n"
        "set -euo pipefail\n"
        "export DEBIAN_FRONTEND=noninteractive\n"
        "apt-get update -q\n"
        f"apt-get install -y -q {package} libmemcached-tools\n"
        + _config_block(settings)
        + "systemctl enable memcached\n"
        "systemctl restart memcached\n"
    )
    if len(script.encode()) > USER_DATA_LIMIT:
        raise ValueError(
            f"user-data is {len(script.encode())} bytes, over the EC2 limit of {USER_DATA_LIMIT}"
        )
    return script


def render_reconfigure_script(settings: MemcachedSettings) -> str:
    """Shell run through SSM when spec.memcached changes (user-data only runs at first boot)."""
    return "#!/bin/bash\nset -euo pipefail\n" + _config_block(settings) + "systemctl restart memcached\n"


def extract_memcached_conf(user_data: str) -> str | None:
    """The memcached.conf carried by a rendered user-data or reconfigure script, or None."""
    start = user_data.find(CONF_BEGIN + "\n")
    end = user_data.find(CONF_END, start)
    if start < 0 or end < 0:
        return None
    return user_data[start + len(CONF_BEGIN) + 1 : end]


def parse_memcached_conf(conf: str) -> list[tuple[str, str | None]]:
    """Options of a Debian memcached.conf as (flag, value) pairs, in order; comments skipped."""
    options: list[tuple[str, str | None]] = []
    for raw in conf.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        flag, _, value = line.partition(" ")
        options.append((flag, value.strip() or None))
    return options
