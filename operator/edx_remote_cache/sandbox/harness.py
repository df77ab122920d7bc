"""Run the real operator process against a running Sandbox: shared by the e2e suite, the demo and the benchmarks.

The operator runs exactly as in production (`edx-remote-cache run`), as a child process with the sandbox's
environment (KUBECONFIG, AWS_ENDPOINT_URL, its probe source), so every test exercises the production code path.
When the environment names a sandbox VPC (``SANDBOX_NETNS_PREFIX``) the process runs in the operator's network
namespace, as ``edx-remote-cache sandbox exec ... operator -- edx-remote-cache run`` would start it: its probes
cross the cache hosts' security groups, and its liveness/metrics ports are bridged back to this machine's
127.0.0.1 so callers reach them at the same URLs.
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from edx_remote_cache import GROUP, KIND, VERSION
from edx_remote_cache.sandbox.netns import PortBridge, nsenter_argv

Predicate = Callable[[Mapping[str, Any]], bool]
_SERIAL = itertools.count(1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class OperatorProcess:
    """`edx-remote-cache run` in a child process; kill() is a crash (SIGKILL), stop() a graceful shutdown."""

    def __init__(
        self,
        env: Mapping[str, str],
        *,
        log_path: Path,
        args: Sequence[str] = ("--all-namespaces", "--standalone"),
        metrics: bool = True,
    ) -> None:
        # POD_ID: kopf's peering identity. Without it kopf resolves this machine's hostname (a DNS lookup
        # that may leave loopback); it also tells replicas of one test apart in peering objects and logs.
        pod_id = f"edx-remote-cache-sandbox-{os.getpid()}-{next(_SERIAL)}"
        self.env = {"POD_ID": pod_id, **os.environ, **env, "PYTHONUNBUFFERED": "1"}
        self.log_path = log_path
        self.liveness_port = free_port()
        self.metrics_port = free_port() if metrics else None
        self.args = list(args)
        self.proc: subprocess.Popen[bytes] | None = None
        prefix = self.env.get("SANDBOX_NETNS_PREFIX")
        self.netns = f"{prefix}-op" if prefix else None
        self._bridges: list[PortBridge] = []

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def start(self, *, wait: float = 30.0) -> OperatorProcess:
        cmd = [*nsenter_argv(self.netns), sys.executable, "-m", "edx_remote_cache.cli.main", "run", *self.args,
               "--liveness", f"http://127.0.0.1:{self.liveness_port}/healthz"]  # fmt: skip
        if self.metrics_port:
            cmd += ["--metrics-port", str(self.metrics_port), "--metrics-addr", "127.0.0.1"]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if self.netns is not None and not self._bridges:
            ports = [self.liveness_port] + ([self.metrics_port] if self.metrics_port else [])
            self._bridges = [PortBridge(p, listen_ns=None, connect_ns=self.netns) for p in ports]
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child for its lifetime
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"operator exited with {self.proc.returncode}; see {self.log_path}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.liveness_port}/healthz", timeout=1):
                    return self
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"operator not live after {wait}s; see {self.log_path}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """A crash: no cleanup, no finalizer work, no status write."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self._close_bridges()

    def _close_bridges(self) -> None:
        for bridge in self._bridges:
            bridge.close()
        self._bridges = []

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._close_bridges()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> OperatorProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def cache_manifest(
    name: str,
    *,
    subnet_id: str,
    hosts: Sequence[str],
    region: str = "us-east-1",
    namespace: str = "default",
    **spec: Any,
) -> dict[str, Any]:
    """An EdxRemoteCache for the sandbox; keyword arguments are merged into spec (camelCase keys)."""
    body: dict[str, Any] = {
        "region": region,
        "instance": {"subnetId": subnet_id},
        "openedx": {"hosts": list(hosts)},
        "probe": {"intervalSeconds": 1, "timeoutSeconds": 0.5, "failureThreshold": 2},
        "driftIntervalSeconds": 5,
    }
    for key, value in spec.items():
        if isinstance(value, dict) and isinstance(body.get(key), dict):
            body[key] = {**body[key], **value}
        else:
            body[key] = value
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": body,
    }


def condition(obj: Mapping[str, Any] | None, ctype: str) -> Mapping[str, Any]:
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == ctype:
            return cond
    return {}


def is_ready(obj: Mapping[str, Any] | None) -> bool:
    status = (obj or {}).get("status") or {}
    generation = ((obj or {}).get("metadata") or {}).get("generation")
    return condition(obj, "Ready").get("status") == "True" and status.get("observedGeneration") == generation


def wait_for(
    get: Callable[[], Mapping[str, Any] | None],
    predicate: Predicate,
    *,
    timeout: float,
    interval: float = 0.1,
    what: str = "condition",
) -> Mapping[str, Any]:
    """Poll `get()` until `predicate` holds; the TimeoutError carries the last object seen."""
    deadline = time.monotonic() + timeout
    last: Mapping[str, Any] | None = None
    while time.monotonic() < deadline:
        last = get()
        if last is not None and predicate(last):
            return last
        time.sleep(interval)
    status = (last or {}).get("status")
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}; last status: {status}")
