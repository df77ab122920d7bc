"""What the demo applies and what it checks in the hosts' config files: the manifest (the example with the
sandbox's ids templated in), the LOCATION-only diff of lms.yml, and the byte-for-byte revert comparison.

Pure text work (no sandbox needed), so the checks are tested fast on their own.
"""

from __future__ import annotations

import difflib
import importlib.resources
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NAME = "campus"
NAMESPACE = "openedx"
EXAMPLE = Path(__file__).resolve().parents[4] / "examples" / "sandbox-demo.yaml"
DEMO_MARKER_ENV = "EDX_REMOTE_CACHE_DEMO_RUN"  # set in the operator's environment: lets a test find leftovers


_KEY = re.compile(r"^(?P<key>[^\s#:'\"-][^:#]*?|'[^']*'|\"[^\"]*\")\s*:(\s|$)")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def yaml_key_path(lines: Sequence[str], index: int) -> str:
    """The dotted key path of ``lines[index]`` in block-style YAML, e.g. ``CACHES.default.LOCATION`` for an item
    of that list. Good enough for config files like Open edX's (no flow mappings spanning lines)."""
    path: list[str] = []
    text = lines[index]
    stripped = text.strip()
    is_item = stripped.startswith("- ") or stripped == "-"
    match = None if is_item else _KEY.match(stripped)
    if match:
        path.append(match.group("key").strip("'\""))
    # a sequence item may sit at its key's indentation ("LOCATION:\n- x"); a key's parent is strictly less indented
    limit = _indent(text) + (1 if is_item else 0)
    for j in range(index - 1, -1, -1):
        above = lines[j]
        content = above.strip()
        if not content or content.startswith("#") or content.startswith("-"):
            continue
        depth = _indent(above)
        if depth >= limit:
            continue
        key = _KEY.match(content)
        if key is None:
            continue
        path.append(key.group("key").strip("'\""))
        limit = depth
        if depth == 0:
            break
    return ".".join(reversed(path))


_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
LOCATION_KEYS = re.compile(r"(^|\.)(LOCATION|[A-Z_]*MEMCACHE)$")


@dataclass(frozen=True)
class LocationDiff:
    """A zero-context unified diff whose hunk headers name the YAML key each change is under."""

    lines: tuple[str, ...]
    changed: int  # lines added (= lines removed for a pure rewrite)
    paths: tuple[str, ...]  # key path of every changed line, in order
    only_locations: bool  # every changed line is a LOCATION entry (or an ansible *_MEMCACHE list)


def location_diff(original: str, current: str, *, fromfile: str, tofile: str) -> LocationDiff:
    """Diff two versions of an Open edX YAML config; hunks are annotated like ``@@ -61 +61 @@ CACHES.x.LOCATION``."""
    old, new = original.splitlines(), current.splitlines()
    out: list[str] = []
    paths: list[str] = []
    added = 0
    old_no = new_no = 0
    for raw in difflib.unified_diff(old, new, fromfile=fromfile, tofile=tofile, n=0, lineterm=""):
        hunk = _HUNK.match(raw)
        if hunk:
            old_no, new_no = int(hunk.group(1)), int(hunk.group(3))
            old_count = int(hunk.group(2)) if hunk.group(2) is not None else 1
            where = yaml_key_path(old, old_no - 1) if old_count else yaml_key_path(new, new_no - 1)
            out.append(f"{raw} {where}")
            continue
        if raw.startswith(("---", "+++")):
            out.append(raw)
            continue
        if raw.startswith("-"):
            paths.append(yaml_key_path(old, old_no - 1))
            old_no += 1
        elif raw.startswith("+"):
            paths.append(yaml_key_path(new, new_no - 1))
            new_no += 1
            added += 1
        out.append(raw)
    only = bool(paths) and all(LOCATION_KEYS.search(p) for p in paths)
    return LocationDiff(tuple(out), added, tuple(paths), only)


_ENDPOINT = re.compile(r"(\[[0-9A-Fa-f:]+\]|[A-Za-z0-9_.-]+):(\d{2,5})")


def _endpoints(text: str) -> list[str]:
    return [m.group(0) for m in _ENDPOINT.finditer(text)]


def _is_local(host: str) -> bool:
    """127.0.0.0/8, ::1 and the localhost names: a cache location on the app server itself."""
    import ipaddress

    if host.lower() in ("localhost", "localhost.localdomain", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def compare_reverted(name: str, original: bytes, current: bytes) -> tuple[str, str]:
    """How a config file came back after a revert: ``exact`` (the original bytes), ``equivalent`` (only cache
    locations differ, and every one is local again, e.g. 127.0.0.1:11211 -> localhost:11211) or ``different``;
    with a short explanation."""
    if original == current:
        return "exact", ""
    diff = location_diff(original.decode(), current.decode(), fromfile=name, tofile=name)
    added = [
        e
        for line in diff.lines
        if line.startswith("+") and not line.startswith("+++")
        for e in _endpoints(line)
    ]
    removed = [
        e
        for line in diff.lines
        if line.startswith("-") and not line.startswith("---")
        for e in _endpoints(line)
    ]
    if not diff.only_locations:
        others = sorted({p for p in diff.paths if not LOCATION_KEYS.search(p)})
        return "different", f"changed outside cache locations: {', '.join(others) or '?'}"
    remote = [e for e in added if not _is_local(e.rsplit(":", 1)[0].strip("[]"))]
    if remote:
        return "different", f"still points at {', '.join(sorted(set(remote)))}"
    pairs = sorted({f"{a} came back as {b}" for a, b in zip(removed, added, strict=False) if a != b})
    return "equivalent", "; ".join(pairs) or "cache locations respelled"


def demo_manifest(subnet_id: str, hosts: Sequence[str], *, example: Path | None = EXAMPLE) -> dict[str, Any]:
    """The EdxRemoteCache the demo applies: ``examples/sandbox-demo.yaml`` with the sandbox's subnet and hosts
    templated in (the same object built in code when the package runs without its source tree)."""
    import yaml

    if example is not None and example.is_file():
        doc: dict[str, Any] = yaml.safe_load(example.read_text(encoding="utf-8"))
    else:
        from edx_remote_cache.sandbox.harness import cache_manifest

        doc = cache_manifest(NAME, namespace=NAMESPACE, subnet_id=subnet_id, hosts=hosts)
    spec = doc.setdefault("spec", {})
    spec.setdefault("instance", {})["subnetId"] = subnet_id
    spec.setdefault("openedx", {})["hosts"] = list(hosts)
    return doc


def original_config(name: str) -> bytes:
    """A config file as the package ships it (what every sandbox host starts with)."""
    return importlib.resources.files("edx_remote_cache").joinpath("data", "edx", name).read_bytes()
