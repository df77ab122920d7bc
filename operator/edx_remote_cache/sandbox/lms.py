""" "The LMS" of an emulated Open edX host: Django's own cache framework, configured from the host's current
``lms.yml``/``studio.yml`` CACHES, run inside the host's network namespace (``sandbox exec <host> -- python -m
edx_remote_cache.sandbox.lms ...``). So a set/get from here takes the path the site's own client takes on EC2:
from the app server's private IP, through the cache host's security group, to memcached's private IP.

Mapping, and why: Open edX (koa) configures ``django.core.cache.backends.memcached.MemcachedCache``
(python-memcached), which Django 4.1 removed; each such alias becomes ``PyMemcacheCache`` with the same
LOCATION, KEY_PREFIX, TIMEOUT and VERSION, as the Django upgrade notes prescribe. ``KEY_FUNCTION`` names
edx-platform's ``util.memcache.safe_key`` (not installed here) and is dropped: the keys used here are safe as they
are. python-memcached gives up on a server after its socket timeout and treats it as dead (get is a miss, set is
False); the same behaviour here is ``ignore_exc`` with a 1 s connect/read timeout, so a blocked path shows within
a second or two instead of after the kernel's two-minute SYN retries.

    python -m edx_remote_cache.sandbox.lms check --config /.../etc/lms.yml --config /.../etc/studio.yml
        one JSON line per memcached alias: {"file", "alias", "location", "ok", "error"}; exit 0 iff all ok
    python -m edx_remote_cache.sandbox.lms traffic --config /.../etc/lms.yml [--alias default] [--rate 250]
        read-through traffic (get; on a miss, set) on skewed keys; a JSON line of counters every 0.2 s;
        the config is re-read when the file changes (the operator rewrites it)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

__all__ = ["MEMCACHED_BACKENDS", "LmsTraffic", "caches_from_config", "main"]

MEMCACHED_BACKENDS = {
    "django.core.cache.backends.memcached.MemcachedCache": "django.core.cache.backends.memcached.PyMemcacheCache",
    "django.core.cache.backends.memcached.PyMemcacheCache": "django.core.cache.backends.memcached.PyMemcacheCache",
    "django.core.cache.backends.memcached.PyLibMCCache": "django.core.cache.backends.memcached.PyMemcacheCache",
}
CLIENT_OPTIONS = {"connect_timeout": 1.0, "timeout": 1.0, "ignore_exc": True, "no_delay": True}


def caches_from_config(text: str, *, ignore_exc: bool = True) -> dict[str, dict[str, Any]]:
    """The memcached aliases of an lms.yml/studio.yml CACHES, as Django settings for PyMemcacheCache
    (``ignore_exc=False``: errors raise, so the traffic loop can count them rather than see misses)."""
    data = yaml.safe_load(text) or {}
    caches: dict[str, dict[str, Any]] = {}
    for alias, entry in sorted((data.get("CACHES") or {}).items()):
        if not isinstance(entry, dict) or entry.get("BACKEND") not in MEMCACHED_BACKENDS:
            continue
        location = entry.get("LOCATION")
        config: dict[str, Any] = {
            "BACKEND": MEMCACHED_BACKENDS[entry["BACKEND"]],
            "LOCATION": list(location) if isinstance(location, list | tuple) else location,
            "OPTIONS": {**CLIENT_OPTIONS, "ignore_exc": ignore_exc},
        }
        for key in ("KEY_PREFIX", "VERSION"):
            if key in entry:
                config[key] = entry[key] if key == "KEY_PREFIX" else int(entry[key])
        if "TIMEOUT" in entry:
            config["TIMEOUT"] = None if entry["TIMEOUT"] is None else int(entry["TIMEOUT"])
        caches[str(alias)] = config
    return caches


def _handler(caches: dict[str, dict[str, Any]]) -> Any:
    from django.conf import settings

    if not settings.configured:
        settings.configure(CACHES={}, USE_TZ=True)
    from django.core.cache import CacheHandler

    return CacheHandler(caches)


def _location(config: dict[str, Any]) -> str:
    location = config.get("LOCATION")
    return ",".join(location) if isinstance(location, list) else str(location)


def _set_and_get(handler: Any, path: Path, alias: str, config: dict[str, Any]) -> dict[str, Any]:
    key, value = f"lms-check:{os.getpid()}:{alias}:{time.monotonic_ns()}", f"{path.name}:{alias}"
    started, error = time.monotonic(), ""
    cache = handler[alias]
    try:
        cache.set(key, value, 60)  # Django's set returns nothing; a dead server just stores nothing
        got = cache.get(key)  # ignore_exc: a dead server is a miss, as Django's memcached caches do
        ok = got == value
        if not ok:
            error = f"get after set returned {got!r} (memcached unreachable or refusing)"
    except Exception as exc:  # anything but a dead server (a bad LOCATION): report, do not crash
        ok, error = False, f"{type(exc).__name__}: {exc}"
    finally:
        cache.close()
    line = {"file": path.name, "alias": alias, "location": _location(config), "ok": ok, "error": error}
    return {**line, "seconds": round(time.monotonic() - started, 3)}


def check(paths: list[Path]) -> int:
    """Set and get one key through every memcached alias of each file, all at once (as the LMS's request
    threads would), so one check costs one timeout however many aliases fail; one JSON line per alias."""
    from concurrent.futures import ThreadPoolExecutor

    jobs = []
    for path in paths:
        caches = caches_from_config(path.read_text(encoding="utf-8"))
        handler = _handler(caches)
        jobs += [(handler, path, alias, config) for alias, config in caches.items()]
    with ThreadPoolExecutor(max_workers=max(1, len(jobs))) as pool:
        lines = list(pool.map(lambda job: _set_and_get(*job), jobs))
    for line in lines:
        print(json.dumps(line), flush=True)
    return 0 if all(line["ok"] for line in lines) else 1


def traffic(path: Path, alias: str, rate: float, seed: int) -> int:
    """Read-through traffic as an app server makes it, until SIGTERM; counters as JSON lines on stdout."""
    rng = random.Random(seed)
    payload = "x" * 512
    counters = {"gets": 0, "hits": 0, "misses": 0, "errors": 0}
    signature: tuple[int, int] | None = None
    cache: Any = None
    location, last_error, last_report = "", "", 0.0
    batch, pause = 5, 5 / rate
    while True:
        try:
            stat = path.stat()
            if (stat.st_mtime_ns, stat.st_size) != signature:
                signature = (stat.st_mtime_ns, stat.st_size)
                caches = caches_from_config(path.read_text(encoding="utf-8"), ignore_exc=False)
                if cache is not None:
                    cache.close()
                cache = _handler(caches)[alias] if alias in caches else None
                location = _location(caches[alias]) if alias in caches else ""
        except (OSError, yaml.YAMLError) as exc:  # caught mid-rewrite: keep the last config
            last_error = f"{type(exc).__name__}: {exc}"
        for _ in range(batch if cache is not None else 0):
            key = f"demo:course-block:{int(rng.expovariate(1 / 80)) % 3000}"
            try:
                value = cache.get(key, default=None)
                counters["gets"] += 1
                if value is None:
                    counters["misses"] += 1
                    cache.set(key, payload, 600)
                else:
                    counters["hits"] += 1
            except Exception as exc:
                counters["errors"] += 1
                last_error = f"{type(exc).__name__}: {exc}"
        now = time.monotonic()
        if now - last_report >= 0.2:
            print(json.dumps({**counters, "location": location, "last_error": last_error}), flush=True)
            last_report = now
        time.sleep(pause)


class LmsTraffic:
    """Drives ``traffic`` mode in an Open edX host's namespace from the sandbox process and keeps its counters
    (the demo's traffic step): ``prefix`` is the namespace prefix (``Sandbox.in_namespace``), ``config`` the
    host's lms.yml on this machine's filesystem."""

    def __init__(
        self, prefix: Sequence[str], config: Path, *, env: dict[str, str], rate: float = 250.0
    ) -> None:
        self.argv = [*prefix, sys.executable, "-m", "edx_remote_cache.sandbox.lms", "traffic",
                     "--config", str(config), "--rate", str(rate)]  # fmt: skip
        self.env = env
        self.gets = self.hits = self.misses = self.errors = 0
        self.last_ok = 0.0
        self.last_error = ""
        self.address = ""  # the LOCATION the LMS is using (the cache host's private IP:port)
        self._process: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> LmsTraffic:
        self._process = subprocess.Popen(
            self.argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=self.env
        )
        self._thread = threading.Thread(target=self._read, name="demo-lms-traffic", daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for line in self._process.stdout:
            with contextlib.suppress(ValueError):
                data = json.loads(line)
                with self._lock:
                    if data["gets"] > self.gets:
                        self.last_ok = time.monotonic()
                    self.gets, self.hits = int(data["gets"]), int(data["hits"])
                    self.misses, self.errors = int(data["misses"]), int(data["errors"])
                    self.last_error, self.address = str(data["last_error"]), str(data["location"])

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(5)
        if self._thread is not None:
            self._thread.join(5)

    @property
    def hit_ratio(self) -> float | None:
        with self._lock:
            total = self.hits + self.misses
            return self.hits / total if total else None

    def snapshot(self) -> tuple[int, int, int, int]:
        with self._lock:
            return self.gets, self.hits, self.misses, self.errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edx_remote_cache.sandbox.lms", description=__doc__)
    sub = parser.add_subparsers(dest="mode", required=True)
    one = sub.add_parser("check")
    one.add_argument("--config", type=Path, action="append", required=True)
    loop = sub.add_parser("traffic")
    loop.add_argument("--config", type=Path, required=True)
    loop.add_argument("--alias", default="default")
    loop.add_argument("--rate", type=float, default=250.0)
    loop.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    if args.mode == "check":
        return check(args.config)
    return traffic(args.config, args.alias, args.rate, args.seed)


if __name__ == "__main__":
    sys.exit(main())
