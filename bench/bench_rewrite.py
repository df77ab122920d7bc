"""Benchmark: rewrite + unified diff of a ~64 KiB lms.yml (target ≤ 50 ms median).

Usage: ``PYTHONPATH=operator .venv/bin/python bench/bench_rewrite.py [--rounds 50] [--json]``.
The input is the packaged Koa ``lms.yml`` fixture padded with realistic extra settings (per-site LTI and
enterprise blocks, long JSON strings, nested lists) up to 64 KiB, so the parse cost is that of a big real site.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))

from edx_remote_cache.domain.rewrite import rewrite

METRIC = "rewrite_ms_64k"
FIXTURE = Path(__file__).resolve().parents[1] / "operator" / "edx_remote_cache" / "data" / "edx" / "lms.yml"
TARGET_BYTES = 64 * 1024


def _extra_block(n: int) -> str:
    """One site's worth of settings as to_nice_yaml writes them (4-space mappings, dash at key column)."""
    return (
        f"LTI_TOOL_{n:03d}:\n"
        f"    consumer_key: lti-consumer-{n:03d}\n"
        f"    description: 'Outil LTI n°{n} — évaluation par les pairs'\n"
        "    enabled: true\n"
        f"    launch_url: https://tool{n}.example.org/lti/launch\n"
        "    scopes:\n"
        "    - https://purl.imsglobal.org/spec/lti-ags/scope/lineitem\n"
        "    - https://purl.imsglobal.org/spec/lti-ags/scope/score\n"
        f'    settings: \'{{"deep_linking": true, "tool_id": {n}, "redirect_uris": '
        f'["https://tool{n}.example.org/a", "https://tool{n}.example.org/b"], '
        f'"public_jwk_url": "https://tool{n}.example.org/.well-known/jwks.json"}}\'\n'
        "    timeout: '30'\n"
        f"ENTERPRISE_CUSTOMER_{n:03d}:\n"
        f"    NAME: Établissement {n}\n"
        "    SSO:\n"
        "        enabled: false\n"
        f"        idp_entity_id: https://idp{n}.example.org/saml\n"
        "    contact: null\n"
    )


def build_input(target_bytes: int = TARGET_BYTES) -> str:
    text = FIXTURE.read_text(encoding="utf-8")
    blocks = []
    n = 0
    while len((text + "".join(blocks)).encode()) < target_bytes:
        blocks.append(_extra_block(n))
        n += 1
    return text + "".join(blocks)


def measure(text: str, rounds: int) -> list[float]:
    to = ["172.31.5.10:11211", "172.31.5.11:11211"]
    rewrite(text, to=to).unified_diff("lms.yml")  # warm up imports and caches
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        result = rewrite(text, to=to)
        result.unified_diff("/edx/etc/lms.yml")
        times.append((time.perf_counter() - start) * 1000)
    assert len(result.changes) == 7, result.changes
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = parser.parse_args(argv)
    text = build_input()
    times = measure(text, args.rounds)
    figures = {
        "median": round(statistics.median(times), 2),
        "min": round(min(times), 2),
        "max": round(max(times), 2),
    }
    if args.json:
        print(json.dumps({METRIC: figures}))
    else:
        print(
            f"{METRIC}: median {figures['median']} ms (min {figures['min']}, max {figures['max']}) "
            f"over {args.rounds} rounds, input {len(text.encode())} bytes"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
