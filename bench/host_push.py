"""What one Open edX host push costs over SSM: the bytes SSM returns (issue 20) and the first push's time.

Why these figures: everything a command prints stays in SSM's invocation history, so ``push_ssm_bytes`` (stdout
+ stderr of every command of one host's push, as the operator's SSM adapter received them) is both what the
push costs and how much of the host left it. Before issue 20 the operator read every config file whole
(gzip + base64 slices); now the host prints only each file's sha256/owner/mode and its memcached value nodes,
so the figure no longer grows with the files. ``first_push_seconds`` is one host's first push (preflight, read,
plan, apply with restarts) from ``push_hosts`` to its result, on the sandbox (SSM's invocation delay 0.2 s).

Scenarios, on a ``Sandbox(with_kube=False)`` (its two Open edX hosts, real bash + python3 + SSM agent):
``default`` is the packaged lms/studio/ecommerce/insights.yml + server-vars.yml; ``1mib`` is only lms.yml grown to
1 MiB (the same shape as tests/adapters/test_host_push.py's big_config). Each rep puts fresh files on both hosts
and pushes each host alone; ``*_noop`` is a second push to a host already pointing at the cache (read only).

Run alone: ``.venv/bin/python bench/host_push.py --json [--reps N]``; ``--operator-path DIR`` (bench/run.py
passes its own) measures another copy of the package, e.g. the code before issue 20, for the before figure.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ENDPOINT = "10.0.1.50:11211"
# host path -> package data file (what the sandbox's hosts start with)
DEFAULT_FILES = {
    "/edx/etc/lms.yml": "lms.yml",
    "/edx/etc/studio.yml": "studio.yml",
    "/edx/etc/ecommerce.yml": "ecommerce.yml",
    "/edx/etc/insights.yml": "insights.yml",
    "/edx/app/edx_ansible/server-vars.yml": "server-vars.yml",
}


def _data(name: str) -> bytes:
    import importlib.resources

    return importlib.resources.files("edx_remote_cache").joinpath("data", "edx", name).read_bytes()


def big_lms() -> bytes:
    """A 1 MiB lms.yml: the packaged one plus long, not trivially compressible string settings."""
    base = _data("lms.yml")
    lines = [base, b"EXTRA_SETTINGS:\n"]
    size, i = len(base) + 16, 0
    while size < 1024 * 1024 - 300:
        digest = hashlib.sha256(b"%d" % i).hexdigest()[: 8 + i % 24].encode()
        line = b"  SETTING_%05d: 'https://courses.example.org/asset-v1:Org%d+C%d+2026_T%d/%s?v=%d'\n" % (
            i, i % 97, i % 13, i % 4, digest, i * 7919 % 100003,
        )  # fmt: skip
        lines.append(line)
        size += len(line)
        i += 1
    data = b"".join(lines)
    return data + b"#" * (1024 * 1024 - len(data) - 1) + b"\n"


class CountingSsm:
    """The real SSM adapter, counting what SSM returned (stdout + stderr bytes) and the commands sent."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.bytes = 0
        self.commands = 0

    def ping_statuses(self, hosts: Sequence[str]) -> Any:
        return self.inner.ping_statuses(hosts)

    def run_script(self, host: str, script: str, **kwargs: Any) -> Any:
        result = self.inner.run_script(host, script, **kwargs)
        self.commands += 1
        self.bytes += len(result.stdout.encode()) + len(result.stderr.encode())
        return result


def _put(sb: Any, host: str, files: dict[str, bytes]) -> None:
    root = sb.roots[host]
    for path, data in files.items():
        target = root / Path(path).relative_to("/edx")
        for old in target.parent.glob(target.name + ".erc-bak-*"):
            old.unlink()
        target.write_bytes(data)


def _figure(values: list[float], **extra: Any) -> dict[str, Any]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values),
            **extra}  # fmt: skip


def run_host_push(*, reps: int) -> dict[str, Any]:
    from edx_remote_cache.adapters.host_push import push_hosts
    from edx_remote_cache.adapters.ssm import SsmAdapter
    from edx_remote_cache.domain.spec import OpenedxSpec
    from edx_remote_cache.sandbox import Sandbox

    scenarios = {
        "default": {path: _data(name) for path, name in DEFAULT_FILES.items()},
        "1mib": {"/edx/etc/lms.yml": big_lms()},
    }
    figures: dict[str, Any] = {}
    details: dict[str, Any] = {"reps": reps, "endpoint": ENDPOINT, "ssm_invocation_delay": 0.2}
    with Sandbox(with_kube=False) as sb:
        ssm = SsmAdapter(sb.client("ssm"))
        for scenario, files in scenarios.items():
            openedx = OpenedxSpec(hosts=list(sb.edx_hosts), config_files=[p for p in files if "/etc/" in p],
                                  ansible_vars_files=[p for p in files if "/etc/" not in p])  # fmt: skip
            seconds: list[float] = []
            sent: list[float] = []
            noop: list[float] = []
            commands: list[int] = []
            for _ in range(reps):
                for host in sb.edx_hosts:
                    _put(sb, host, files)
                    counting = CountingSsm(ssm)
                    began = time.monotonic()
                    (result,) = push_hosts(ssm=counting, hosts=[host], openedx=openedx, endpoints=[ENDPOINT])
                    seconds.append(time.monotonic() - began)
                    if result.state != "Configured":
                        raise RuntimeError(f"{scenario}: {host} {result.state}: {result.message[:300]}")
                    sent.append(counting.bytes)
                    commands.append(counting.commands)
                    again = CountingSsm(ssm)
                    push_hosts(ssm=again, hosts=[host], openedx=openedx, endpoints=[ENDPOINT])
                    noop.append(again.bytes)
            size = sum(len(d) for d in files.values())
            suffix = "" if scenario == "default" else f"_{scenario}"
            what = f"{len(files)} file(s), {size} bytes on the host"
            figures[f"push_ssm_bytes{suffix}"] = _figure(
                sent, what=f"SSM stdout+stderr per host push; {what}"
            )
            figures[f"push_ssm_bytes{suffix}_noop"] = _figure(
                noop, what=f"the same, host already pushed; {what}"
            )
            figures[f"first_push_seconds{suffix}"] = _figure(seconds, what=f"one host's first push; {what}")
            details[scenario] = {"file_bytes": size, "commands_per_push": statistics.median(commands)}
    return {**figures, "host_push": details}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3, help="fresh pushes per host and scenario (3)")
    parser.add_argument("--json", action="store_true", help="one JSON line on stdout")
    args = parser.parse_args(argv)
    result = run_host_push(reps=args.reps)
    if args.json:
        print(json.dumps(result))
    else:
        for name, value in result.items():
            print(name, json.dumps(value))
    return 0


if __name__ == "__main__":
    sys.exit(main())
