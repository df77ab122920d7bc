"""What the demo's cleanup checks is gone (processes by their environment marker, loopback ports), and a
Ctrl-C that waits while the bounded cleanup finishes."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edx_remote_cache.sandbox.demo.display import Display


@contextlib.contextmanager
def _sigint_deferred(display: Display) -> Iterator[None]:
    """While cleaning up, Ctrl-C (and SIGTERM) only say so: the cleanup itself is bounded and must finish."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def say(_signum: int, _frame: Any) -> None:
        with contextlib.suppress(Exception):
            display.stream.write("\n   (cleaning up, one moment - everything will be stopped)\n")
            display.stream.flush()

    previous = {sig: signal.signal(sig, say) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _proc_environ(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""


def _pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def marked_processes(key: str, value: str) -> list[int]:
    """Live processes (not zombies) whose environment has ``key=value``."""
    marker = f"{key}={value}".encode()
    found = []
    for pid in _pids():
        if pid == os.getpid():
            continue
        if marker in _proc_environ(pid).split(b"\0") and not _zombie(pid):
            found.append(pid)
    return found


def sandbox_processes(owner_pid: int) -> list[int]:
    """Processes (memcached) a sandbox in process ``owner_pid`` started and that still run."""
    from edx_remote_cache.sandbox.cache_hosts import OWNER_ENV

    return marked_processes(OWNER_ENV, str(owner_pid))


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X")


def _listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.3)
        return sock.connect_ex(("127.0.0.1", port)) == 0
